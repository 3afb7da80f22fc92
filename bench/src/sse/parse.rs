//! The subscribers' wire format: HTTP/1.1 chunked transfer decoding ([`Body`]) and the
//! SSE frames within ([`Parser`]), which read only what [`Stats`] counts.

use std::sync::LazyLock;

use memchr::memmem::FinderRev;

use super::seen::Stats;

/// Undoes HTTP/1.1 chunked transfer encoding (or passes the bytes through).
pub(super) struct Body {
    chunked: bool,
    state: Chunk,
    /// The decoded body not yet parsed.
    pub(super) data: Vec<u8>,
    /// The last chunk was seen.
    pub(super) done: bool,
}

#[derive(Clone, Copy)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// This many data bytes to go.
    Data(usize),
    /// This many bytes of the CRLF after the data to go.
    Crlf(usize),
}

impl Body {
    pub(super) fn new(chunked: bool) -> Self {
        Self {
            chunked,
            state: Chunk::Size,
            data: Vec::with_capacity(4096),
            done: false,
        }
    }

    /// Decodes what it can of `input`; returns how many bytes it used (an incomplete
    /// chunk-size line is left for the next call).
    pub(super) fn feed(&mut self, input: &[u8]) -> usize {
        if !self.chunked {
            self.data.extend_from_slice(input);
            return input.len();
        }
        let mut rest = input;
        while !rest.is_empty() && !self.done {
            match self.state {
                Chunk::Size => {
                    let Some(nl) = find_byte(b'\n', rest) else {
                        break;
                    };
                    let line = &rest[..nl];
                    rest = &rest[nl + 1..];
                    let hex = line
                        .split(|&b| b == b';' || b == b'\r')
                        .next()
                        .unwrap_or(b"");
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| usize::from_str_radix(h.trim(), 16).ok());
                    match size {
                        Some(0) => self.done = true,
                        Some(n) => self.state = Chunk::Data(n),
                        // Not chunked after all: nothing sensible to do but stop.
                        None => self.done = true,
                    }
                }
                Chunk::Data(left) => {
                    let n = left.min(rest.len());
                    self.data.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    self.state = if n == left {
                        Chunk::Crlf(2)
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::Crlf(left) => {
                    let n = left.min(rest.len());
                    rest = &rest[n..];
                    self.state = if n == left {
                        Chunk::Size
                    } else {
                        Chunk::Crlf(left - n)
                    };
                }
            }
        }
        input.len() - rest.len()
    }
}

/// Reads events line by line; a frame may come in any number of pieces, and one piece may
/// hold any number of frames.
pub(super) struct Parser {
    /// [`super::Subscribers::epoch_us`].
    epoch_us: i64,
    frame: Frame,
}

/// The event being read.
#[derive(Default)]
struct Frame {
    kind: Kind,
    has_data: bool,
    /// The transaction id from the `id:` line (`<xid>-<seq>`); `lagged` frames have none.
    xid: Option<i64>,
    /// created_at + duration_ms of an `attempt` event, in µs since the epoch.
    request_end_us: Option<i64>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No `event:` field (yet).
    #[default]
    Unnamed,
    Attempt,
    Lagged,
    Other,
}

impl Parser {
    pub(super) fn new(epoch_us: i64) -> Self {
        Self {
            epoch_us,
            frame: Frame::default(),
        }
    }

    /// Consumes every complete line of `buf`, counting the events they end.
    pub(super) fn parse(&mut self, buf: &mut Vec<u8>, arrived_us: i64, stats: &mut Stats) {
        let mut pos = 0;
        while let Some(nl) = find_byte(b'\n', &buf[pos..]) {
            let line = &buf[pos..pos + nl];
            pos += nl + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let frame = &mut self.frame;
            if line.is_empty() {
                self.dispatch(arrived_us, stats);
            } else if let Some(kind) = line.strip_prefix(b"event:") {
                frame.kind = match kind.strip_prefix(b" ").unwrap_or(kind) {
                    b"attempt" => Kind::Attempt,
                    b"lagged" => Kind::Lagged,
                    _ => Kind::Other,
                };
            } else if line.starts_with(b"data:") {
                frame.has_data = true;
                if matches!(frame.kind, Kind::Attempt | Kind::Unnamed) {
                    frame.request_end_us = request_end_us(line);
                }
            } else if let Some(id) = line.strip_prefix(b"id:") {
                frame.xid = xid_of(id.strip_prefix(b" ").unwrap_or(id));
            }
            // `:` comments (keep-alives) need nothing.
        }
        buf.drain(..pos);
    }

    fn dispatch(&mut self, arrived_us: i64, stats: &mut Stats) {
        let frame = std::mem::take(&mut self.frame);
        match frame.kind {
            Kind::Attempt => {
                stats.attempts += 1;
                match frame.request_end_us {
                    Some(end) => {
                        let lag = arrived_us - end;
                        if lag < 0 {
                            stats.early += 1;
                        }
                        stats.lags_us.push(lag.clamp(0, i64::from(u32::MAX)) as u32);
                    }
                    None => stats.unparsed += 1,
                }
                let since_epoch = u32::try_from(arrived_us - self.epoch_us).ok();
                match (frame.xid, since_epoch) {
                    (Some(xid), Some(at)) if stats.arrivals.push(xid, at) => {}
                    _ => stats.no_xid += 1,
                }
            }
            Kind::Lagged => stats.lagged += 1,
            Kind::Other | Kind::Unnamed => {
                if frame.has_data {
                    stats.other_events += 1;
                }
            }
        }
    }
}

/// The transaction id of an event id, `<xid>-<seq>` (both decimal).
fn xid_of(id: &[u8]) -> Option<i64> {
    let n = id.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 18 || id.get(n) != Some(&b'-') {
        return None;
    }
    Some(
        id[..n]
            .iter()
            .fold(0i64, |v, &b| v * 10 + i64::from(b - b'0')),
    )
}

/// created_at + duration_ms of an attempt's data line, in µs since the epoch: when its
/// HTTP request ended (to the millisecond below), which is before its commit.
fn request_end_us(data: &[u8]) -> Option<i64> {
    const CREATED: &[u8] = b"\"created_at\":\"";
    const DURATION: &[u8] = b"\"duration_ms\":";
    // Built once: building a searcher per event cost more than the search.
    static FIND_CREATED: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(CREATED));
    static FIND_DURATION: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(DURATION));
    let c = FIND_CREATED.rfind(data)?;
    let ts = &data[c + CREATED.len()..];
    let created = parse_rfc3339_us(&ts[..find_byte(b'"', ts)?])?;
    let d = FIND_DURATION.rfind(&data[..c])?;
    let digits = &data[d + DURATION.len()..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    let ms = digits[..n]
        .iter()
        .fold(0i64, |v, &b| v * 10 + i64::from(b - b'0'));
    Some(created + ms * 1000)
}

/// RFC 3339 (`2026-11-24T00:05:23.123456Z`, or with a `±HH:MM` offset) to µs since the
/// epoch; digits beyond microseconds are ignored.
fn parse_rfc3339_us(s: &[u8]) -> Option<i64> {
    let num = |from: usize, to: usize| -> Option<i64> {
        s.get(from..to)?.iter().try_fold(0i64, |v, &b| {
            b.is_ascii_digit().then(|| v * 10 + i64::from(b - b'0'))
        })
    };
    if s.len() < 20
        || s[4] != b'-'
        || s[7] != b'-'
        || !matches!(s[10], b'T' | b't' | b' ')
        || s[13] != b':'
        || s[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut i = 19;
    let mut micros = 0;
    if s[i] == b'.' {
        i += 1;
        let mut scale = 100_000;
        while i < s.len() && s[i].is_ascii_digit() {
            micros += i64::from(s[i] - b'0') * scale;
            scale /= 10;
            i += 1;
        }
    }
    let offset = match *s.get(i)? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let o = (num(i + 1, i + 3)? * 60 + num(i + 4, i + 6)?) * 60;
            if sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3_600 + mi * 60 + sec - offset) * 1_000_000 + micros)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The first `b` in `hay` (SIMD: scanning every byte for newlines is most of what the
/// subscribers' thread does).
fn find_byte(b: u8, hay: &[u8]) -> Option<usize> {
    memchr::memchr(b, hay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339_us(b"1970-01-01T00:00:00Z"), Some(0));
        // date -u -d 2026-11-24T00:05:23Z +%s
        assert_eq!(
            parse_rfc3339_us(b"2026-11-24T00:05:23.123456Z"),
            Some(1_795_478_723_123_456)
        );
        assert_eq!(
            parse_rfc3339_us(b"2026-11-24T01:05:23.1+01:00"),
            Some(1_795_478_723_100_000)
        );
        assert_eq!(
            parse_rfc3339_us(b"2024-02-29T23:59:59.999999999Z"),
            Some(1_709_251_199_999_999)
        );
        assert_eq!(parse_rfc3339_us(b"2026-11-24 nonsense"), None);
    }

    const ATTEMPT: &str = r#"{"id":"atm_1","response_body":"{\"created_at\":\"1999-01-01T00:00:00Z\"}","duration_ms":12,"created_at":"2026-11-24T00:05:23.123456Z","next_attempt_at":null}"#;

    /// The counts of a parsed stream: attempts, other events, lagged, unparsed, no xid.
    fn counts(s: &Stats) -> (u64, u64, u64, u64, u64) {
        (s.attempts, s.other_events, s.lagged, s.unparsed, s.no_xid)
    }

    /// Feeds `wire` (a chunked body) in pieces of `piece` bytes, stamping every piece
    /// `arrived`.
    fn parse_in_pieces(wire: &[u8], piece: usize, epoch: i64, arrived: i64) -> Stats {
        let (mut body, mut parser, mut stats) =
            (Body::new(true), Parser::new(epoch), Stats::default());
        let mut pending: Vec<u8> = Vec::new();
        for part in wire.chunks(piece) {
            pending.extend_from_slice(part);
            let used = body.feed(&pending);
            pending.drain(..used);
            parser.parse(&mut body.data, arrived, &mut stats);
        }
        assert!(body.done, "piece {piece}");
        stats
    }

    /// One HTTP chunk per event, as axum sends them.
    fn one_chunk_each(events: &[String]) -> Vec<u8> {
        let mut wire = Vec::new();
        for e in events {
            wire.extend_from_slice(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes());
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }

    /// A chunked stream cut at every possible place parses the same.
    #[test]
    fn chunked_stream_in_any_pieces() {
        let events = [
            format!("id: 1-0\nevent: attempt\ndata: {ATTEMPT}\n\n"),
            ":\n\n".to_owned(),
            "id: 1-1\nevent: message.created\ndata: {\"id\":\"msg_1\"}\n\n".to_owned(),
            "event: lagged\ndata: {\"message\":\"behind\"}\n\n".to_owned(),
            format!("id: 2-0\nevent: attempt\ndata: {ATTEMPT}\n\n"),
        ];
        let wire = one_chunk_each(&events);
        let arrived = 1_795_478_723_135_456 + 500; // created + 12 ms + 0.5 ms
        let epoch = arrived - 7;
        for piece in 1..wire.len() {
            let stats = parse_in_pieces(&wire, piece, epoch, arrived);
            assert_eq!(counts(&stats), (2, 1, 1, 0, 0), "piece {piece}");
            assert_eq!(stats.lags_us, vec![500, 500], "piece {piece}");
            let runs: Vec<_> = stats.arrivals.runs().collect();
            assert_eq!(runs, vec![(1, 7, 1), (2, 7, 1)], "piece {piece}");
        }
    }

    /// Several frames in one HTTP chunk (and one frame over two chunks), with CRLF or LF
    /// line ends, ids with or without the space, a `lagged` frame (no id) and an attempt
    /// without an id, cut at every place.
    #[test]
    fn many_frames_per_chunk() {
        let xid = 9_007_199_254_740_993i64; // beyond 2^53: no float on the way
        let big = format!("{xid}-3");
        let one = format!(
            "id: 41-0\r\nevent: attempt\r\ndata: {ATTEMPT}\r\n\r\n\
             id:41-1\nevent: attempt\ndata: {ATTEMPT}\n\n\
             event: lagged\ndata: {{\"message\":\"behind\"}}\n\n\
             :\n\n\
             id: 41-2\nevent: message.created\ndata: {{\"id\":\"msg_1\"}}\n\n\
             event: attempt\nid: 42-0\ndata: {ATTEMPT}\n\n\
             event: attempt\ndata: {ATTEMPT}\n\n\
             id: nonsense\nevent: attempt\ndata: {ATTEMPT}\n\nid: {big}\nevent: att"
        );
        let two = format!("empt\ndata: {ATTEMPT}\n\nid: 42-1\nevent: attempt\ndata: {ATTEMPT}\n\n");
        let wire = one_chunk_each(&[one, two]);
        let arrived = 1_795_478_723_135_456;
        for piece in 1..wire.len() {
            let stats = parse_in_pieces(&wire, piece, arrived - 5, arrived);
            assert_eq!(counts(&stats), (7, 1, 1, 0, 3), "piece {piece}");
            assert_eq!(stats.lags_us, vec![0; 7], "piece {piece}");
            let runs: Vec<_> = stats.arrivals.runs().collect();
            // No id, a malformed one, and one 2^31 or more from the first xid (which
            // cannot be recorded) are counted in no_xid; the two 42s then run together.
            assert_eq!(runs, vec![(41, 5, 2), (42, 5, 2)], "piece {piece}");
        }
    }

    #[test]
    fn event_ids() {
        assert_eq!(xid_of(b"123-0"), Some(123));
        assert_eq!(xid_of(b"18446744073-17"), Some(18_446_744_073));
        assert_eq!(xid_of(b"123"), None);
        assert_eq!(xid_of(b"-1"), None);
        assert_eq!(xid_of(b"abc-1"), None);
        assert_eq!(xid_of(b""), None);
        assert_eq!(xid_of(b"1234567890123456789-1"), None);
    }
}
