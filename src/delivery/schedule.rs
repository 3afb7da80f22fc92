//! When to try a failed delivery again. The schedule is persisted as each delivery's
//! `next_attempt_at`, so it survives restarts; this module only computes the next gap.

use std::fmt;
use std::time::Duration;

use backon::{BackoffBuilder, ConstantBuilder, ExponentialBuilder};

use crate::config::parse_duration;

/// Either explicit steps (the default, close to the Standard Webhooks example) or an
/// exponential curve. Both add jitter, drawn by `backon`, so that endpoints which failed
/// together do not all retry in the same instant.
#[derive(Clone)]
pub enum RetrySchedule {
    /// `steps[k]` is the wait before retry k+1; after the last step the delivery is dead.
    Steps(Vec<Duration>),
    /// `retries` waits growing from `min` by `factor`, capped at `max`, each with up to
    /// 100% jitter (backon's `ExponentialBuilder`).
    Exponential {
        min: Duration,
        factor: f32,
        max: Duration,
        retries: usize,
    },
}

impl RetrySchedule {
    pub const DEFAULT: &'static str = "5s,5m,30m,2h,5h,10h,14h,20h,24h";

    /// `5s,5m,30m` (steps), `exponential:<min>,<factor>,<max>,<retries>`, or `none` (one
    /// try only).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim() == "none" {
            return Ok(Self::Steps(Vec::new()));
        }
        if let Some(spec) = s.strip_prefix("exponential:") {
            let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
            let [min, factor, max, retries] = parts[..] else {
                return Err("expected exponential:<min>,<factor>,<max>,<retries>".into());
            };
            let factor: f32 = factor
                .parse()
                .ok()
                .filter(|f: &f32| *f >= 1.0)
                .ok_or("the exponential factor must be a number of at least 1")?;
            let retries: usize = retries
                .parse()
                .map_err(|_| "the number of retries must be a whole number")?;
            return Ok(Self::Exponential {
                min: parse_duration(min)?,
                factor,
                max: parse_duration(max)?,
                retries,
            });
        }
        let steps = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::Steps(steps))
    }

    /// Total number of tries: the first, immediate one plus every retry.
    pub fn max_attempts(&self) -> i32 {
        let retries = match self {
            Self::Steps(steps) => steps.len(),
            Self::Exponential { retries, .. } => *retries,
        };
        i32::try_from(retries).unwrap_or(i32::MAX - 1) + 1
    }

    /// The longest a delivery can take from its first try to its last: every wait at its
    /// largest jitter (steps: +10%; exponential: up to double, each capped at `max`
    /// before the jitter, as backon applies it).
    pub fn span(&self) -> Duration {
        match self {
            Self::Steps(steps) => steps.iter().map(|s| *s + *s / 10).sum(),
            Self::Exponential {
                min,
                factor,
                max,
                retries,
            } => {
                let mut total = Duration::ZERO;
                let mut delay = *min;
                for _ in 0..*retries {
                    let capped = delay.min(*max);
                    total = total.saturating_add(capped.saturating_mul(2));
                    if capped == *max {
                        // The rest are all `max`: no need to grow further.
                        delay = *max;
                    } else {
                        delay = Duration::try_from_secs_f32(delay.as_secs_f32() * factor)
                            .unwrap_or(*max);
                    }
                }
                total
            }
        }
    }

    /// The wait after failed attempt number `attempt` (1-based), or `None` when that was
    /// the last one and the delivery is dead.
    pub fn delay_after(&self, attempt: i32) -> Option<Duration> {
        let retry = usize::try_from(attempt).ok().filter(|a| *a >= 1)?;
        match self {
            Self::Steps(steps) => {
                let step = *steps.get(retry - 1)?;
                // Jitter of up to +10%: step - step/10 + [step/10, step/5).
                let tenth = step / 10;
                let jittered_tenth = ConstantBuilder::new()
                    .with_delay(tenth)
                    .with_jitter()
                    .with_max_times(1)
                    .build()
                    .next()
                    .unwrap_or(tenth);
                Some(step - tenth + jittered_tenth)
            }
            Self::Exponential {
                min,
                factor,
                max,
                retries,
            } => ExponentialBuilder::new()
                .with_min_delay(*min)
                .with_factor(*factor)
                .with_max_delay(*max)
                .with_max_times(*retries)
                .with_jitter()
                .build()
                .nth(retry - 1),
        }
    }
}

impl fmt::Debug for RetrySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Steps(steps) => write!(f, "Steps({steps:?})"),
            Self::Exponential {
                min,
                factor,
                max,
                retries,
            } => write!(
                f,
                "Exponential({min:?} x{factor} up to {max:?}, {retries} retries)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_steps_follow_the_standard_webhooks_table_with_bounded_jitter() {
        let s = RetrySchedule::parse(RetrySchedule::DEFAULT).unwrap();
        assert_eq!(s.max_attempts(), 10);
        let expected = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400];
        for (i, secs) in expected.iter().enumerate() {
            let base = Duration::from_secs(*secs);
            let d = s.delay_after(i as i32 + 1).unwrap();
            assert!(d >= base && d <= base + base / 10, "retry {i}: {d:?}");
        }
        // 75 h 35 m 5 s of waits, plus at most 10% jitter.
        assert_eq!(
            s.span(),
            Duration::from_secs(272105) + Duration::from_secs(272105) / 10
        );
        assert_eq!(RetrySchedule::parse("none").unwrap().span(), Duration::ZERO);
        let e = RetrySchedule::parse("exponential:1s,2,5s,4").unwrap();
        // 1 + 2 + 4 + 5 (capped), each up to doubled.
        assert_eq!(e.span(), Duration::from_secs(24));
        assert_eq!(s.delay_after(10), None);
        assert_eq!(s.delay_after(0), None);
    }

    #[test]
    fn jitter_varies() {
        let s = RetrySchedule::parse("10s").unwrap();
        let draws: std::collections::HashSet<_> = (0..20).map(|_| s.delay_after(1)).collect();
        assert!(draws.len() > 1);
    }

    #[test]
    fn exponential_grows_and_stops() {
        let s = RetrySchedule::parse("exponential:1s,2,10s,5").unwrap();
        assert_eq!(s.max_attempts(), 6);
        let d1 = s.delay_after(1).unwrap();
        let d4 = s.delay_after(4).unwrap();
        assert!(d1 >= Duration::from_secs(1) && d1 < Duration::from_secs(2));
        assert!(d4 >= Duration::from_secs(8) && d4 < Duration::from_secs(16));
        assert_eq!(s.delay_after(6), None);
    }

    #[test]
    fn rejects_nonsense() {
        assert!(RetrySchedule::parse("5x").is_err());
        assert_eq!(RetrySchedule::parse("none").unwrap().max_attempts(), 1);
        assert!(RetrySchedule::parse("exponential:1s,2").is_err());
        assert!(RetrySchedule::parse("exponential:1s,0.5,1m,3").is_err());
    }
}
