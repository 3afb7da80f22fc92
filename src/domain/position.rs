//! Where an event sits in the live feed: `<xid>-<seq>`, the writing transaction's id and
//! the event's number within the log (see migrations/0002_feed.sql for why both). This is
//! the SSE `id:` and what `Last-Event-ID` gives back.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub xid: i64,
    pub seq: i64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.xid, self.seq)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPosition;

impl FromStr for Position {
    type Err = InvalidPosition;

    fn from_str(s: &str) -> Result<Self, InvalidPosition> {
        let (xid, seq) = s.split_once('-').ok_or(InvalidPosition)?;
        let number = |n: &str| {
            n.parse::<i64>()
                .ok()
                .filter(|v| *v >= 0 && n.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(InvalidPosition)
        };
        Ok(Self {
            xid: number(xid)?,
            seq: number(seq)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders_by_transaction_first() {
        let p = Position { xid: 812, seq: 40 };
        assert_eq!(p.to_string().parse(), Ok(p));
        assert!(Position { xid: 811, seq: 41 } < p);
        assert!(Position { xid: 812, seq: 39 } < p);
        for bad in [
            "",
            "12",
            "12-",
            "-3",
            "1--2",
            "+1-2",
            "1-2-3",
            "a-1",
            "99999999999999999999-1",
        ] {
            assert!(bad.parse::<Position>().is_err(), "{bad:?}");
        }
    }
}
