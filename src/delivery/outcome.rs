//! What an attempt's result means for its delivery: pure, so every rule is unit-tested.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::RetrySchedule;

/// Bounds on a receiver's `Retry-After`: never sooner than this...
const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);
/// ...and never later than this, whatever it asks.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Succeeded,
    Retry(Duration),
    Dead,
    /// 410 Gone: the delivery is dead and the endpoint is disabled.
    Gone,
}

/// `status` is `None` when no response arrived (timeout, refused connection, blocked).
pub fn decide(
    status: Option<u16>,
    retry_after: Option<Duration>,
    attempt: i32,
    schedule: &RetrySchedule,
) -> Verdict {
    match status {
        Some(200..=299) => return Verdict::Succeeded,
        Some(410) => return Verdict::Gone,
        _ => {}
    }
    let Some(scheduled) = schedule.delay_after(attempt) else {
        return Verdict::Dead;
    };
    match (status, retry_after) {
        (Some(429 | 502 | 503 | 504), Some(asked)) => {
            Verdict::Retry(asked.clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX))
        }
        _ => Verdict::Retry(scheduled),
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule::Steps(vec![Duration::from_secs(10), Duration::from_secs(100)])
    }

    #[test]
    fn only_2xx_succeeds() {
        let s = schedule();
        assert_eq!(decide(Some(200), None, 1, &s), Verdict::Succeeded);
        assert_eq!(decide(Some(204), None, 1, &s), Verdict::Succeeded);
        for status in [Some(301), Some(302), Some(400), Some(500), None] {
            assert!(
                matches!(decide(status, None, 1, &s), Verdict::Retry(_)),
                "{status:?}"
            );
        }
    }

    #[test]
    fn gone_disables_even_on_the_last_attempt() {
        assert_eq!(decide(Some(410), None, 1, &schedule()), Verdict::Gone);
        assert_eq!(decide(Some(410), None, 3, &schedule()), Verdict::Gone);
    }

    #[test]
    fn retry_after_is_honoured_only_where_it_means_something_and_clamped() {
        let s = schedule();
        let asked = Some(Duration::from_secs(42));
        for status in [429, 502, 503, 504] {
            assert_eq!(
                decide(Some(status), asked, 1, &s),
                Verdict::Retry(Duration::from_secs(42))
            );
        }
        let Verdict::Retry(d) = decide(Some(500), asked, 1, &s) else {
            panic!()
        };
        assert!(d >= Duration::from_secs(10) && d <= Duration::from_secs(11));
        assert_eq!(
            decide(Some(429), Some(Duration::from_secs(86400)), 1, &s),
            Verdict::Retry(RETRY_AFTER_MAX)
        );
        assert_eq!(
            decide(Some(503), Some(Duration::ZERO), 1, &s),
            Verdict::Retry(RETRY_AFTER_MIN)
        );
    }

    #[test]
    fn the_schedule_running_out_means_dead() {
        let s = schedule();
        assert!(matches!(decide(Some(500), None, 2, &s), Verdict::Retry(_)));
        assert_eq!(decide(Some(500), None, 3, &s), Verdict::Dead);
        assert_eq!(
            decide(Some(503), Some(Duration::from_secs(5)), 3, &s),
            Verdict::Dead
        );
    }

    #[test]
    fn parses_retry_after_forms() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
