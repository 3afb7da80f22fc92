//! What one subscriber saw: its counts, lags and the (xid, arrival) of its `attempt`
//! events, kept compactly.

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// `attempt` events.
    pub attempts: u64,
    /// Other events with data (`message.created`, ...).
    pub other_events: u64,
    /// `event: lagged` frames.
    pub lagged: u64,
    /// `attempt` events whose `created_at` or `duration_ms` could not be read.
    pub unparsed: u64,
    /// Arrival − (created_at + duration_ms) of each `attempt` event, in microseconds.
    pub lags_us: Vec<u32>,
    /// Events that arrived before created_at + duration_ms (counted as 0 in `lags_us`).
    pub early: u64,
    /// (xid, arrival) of each `attempt` event with an xid in its `id:` line.
    pub arrivals: Arrivals,
    /// `attempt` events without a readable xid (or arriving too late to record).
    pub no_xid: u64,
    /// Why the subscription failed, if it did.
    pub error: Option<String>,
    /// The server ended the stream before it was stopped.
    pub ended: bool,
    /// Bytes read after the response head.
    pub bytes: u64,
}

/// The (xid, arrival) of every `attempt` event one subscriber received, in 8 bytes an
/// event at most and usually far fewer: an xid is kept as its offset from the
/// subscriber's first (events come in xid order, so offsets stay small), an arrival in µs
/// since [`super::Subscribers::epoch_us`] (71 minutes fit), and events of one transaction that
/// arrived in one read, the common case, collapse into one entry and a repeat count.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// The first xid.
    base: i64,
    /// (xid − base + 2³¹, arrival); a `(REPEAT, n)` entry repeats the entry before it n
    /// more times.
    entries: Vec<(u32, u32)>,
}

impl Arrivals {
    const REPEAT: u32 = u32::MAX;
    const BIAS: i64 = 1 << 31;

    /// Records an event; false if its xid is too far (2³¹) from the first one's.
    pub fn push(&mut self, xid: i64, arrival_us: u32) -> bool {
        if self.entries.is_empty() {
            self.base = xid;
        }
        let offset = xid - self.base + Self::BIAS;
        if !(0..i64::from(Self::REPEAT)).contains(&offset) {
            return false;
        }
        let entry = (offset as u32, arrival_us);
        let len = self.entries.len();
        match self.entries.last() {
            Some(&(Self::REPEAT, n)) if n < u32::MAX && self.entries[len - 2] == entry => {
                self.entries[len - 1].1 += 1;
            }
            Some(&last) if last == entry => self.entries.push((Self::REPEAT, 1)),
            _ => self.entries.push(entry),
        }
        true
    }

    /// (xid, arrival in µs since the epoch, how many events), in the order received.
    pub fn runs(&self) -> impl Iterator<Item = (i64, u32, u32)> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            let (offset, at) = *self.entries.get(i)?;
            i += 1;
            let mut count = 1;
            if let Some(&(Self::REPEAT, n)) = self.entries.get(i) {
                count += n;
                i += 1;
            }
            Some((self.base + i64::from(offset) - Self::BIAS, at, count))
        })
    }

    /// Bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(u32, u32)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_run_length() {
        let mut a = Arrivals::default();
        for (xid, at) in [
            (100, 5),
            (100, 5),
            (100, 5),
            (101, 5),
            (101, 9),
            (99, 9),
            (99, 9),
        ] {
            assert!(a.push(xid, at));
        }
        assert_eq!(
            a.runs().collect::<Vec<_>>(),
            vec![(100, 5, 3), (101, 5, 1), (101, 9, 1), (99, 9, 2)]
        );
        // Runs of three or more cost two entries; single events one.
        assert_eq!(a.entries.len(), 6);
        assert!(a.push(100 + (1 << 31) - 2, 0));
        assert!(!a.push(100 + (1 << 31) - 1, 0));
        assert!(a.push(100 - (1 << 31), 0));
        assert!(!a.push(99 - (1 << 31), 0));
        assert_eq!(a.runs().last(), Some((100 - (1 << 31), 0, 1)));
        assert_eq!(Arrivals::default().runs().count(), 0);
    }
}
