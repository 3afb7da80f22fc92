//! A time window `[since, until)`, as a recover takes it from the REST API, the admin
//! channel and the dashboard's form (which reads its own `datetime-local` value, until now).

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

impl Window {
    /// `since` is required; `until` defaults to now. Both RFC 3339.
    pub fn parse(since: Option<&str>, until: Option<&str>) -> Result<Self, String> {
        let parse = |name: &str, v: &str| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| format!("{name} must be an RFC 3339 time, e.g. 2026-11-24T00:00:00Z"))
        };
        let since = parse("since", since.ok_or("recover needs since (RFC 3339)")?)?;
        let until = match until {
            Some(u) => parse("until", u)?,
            None => Utc::now(),
        };
        Self::new(since, until).ok_or_else(|| "until must be after since".into())
    }

    /// `None` unless `since` comes before `until`.
    pub fn new(since: DateTime<Utc>, until: DateTime<Utc>) -> Option<Self> {
        (since < until).then_some(Self { since, until })
    }
}
