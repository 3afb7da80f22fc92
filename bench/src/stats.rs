//! Percentiles over latency samples.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Nearest-rank percentiles; sorts `samples` in place.
    pub fn of(samples: &mut [Duration]) -> Self {
        Self::nearest_rank(samples, ms)
    }

    /// The same, over samples in microseconds (cheaper to keep by the million).
    pub fn of_micros(samples: &mut [u32]) -> Self {
        Self::nearest_rank(samples, |us| f64::from(us) / 1000.0)
    }

    fn nearest_rank<T: Copy + Ord>(samples: &mut [T], ms: impl Fn(T) -> f64) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            ms(samples[rank - 1])
        };
        Self {
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: ms(samples[samples.len() - 1]),
        }
    }
}

impl Latency {
    /// The same, over (µs, how many samples) pairs; sorts `samples` in place.
    pub fn of_weighted_micros(samples: &mut [(u32, u32)]) -> Self {
        let total: u64 = samples.iter().map(|s| u64::from(s.1)).sum();
        if total == 0 {
            return Self::default();
        }
        samples.sort_unstable();
        let ms = |us: u32| f64::from(us) / 1000.0;
        let at = |q: f64| {
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for &(us, n) in samples.iter() {
                seen += u64::from(n);
                if seen >= rank {
                    return ms(us);
                }
            }
            unreachable!("rank {rank} of {total}")
        };
        Self {
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// `x` to one decimal, as the results keep their numbers.
pub fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut s: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let l = Latency::of(&mut s);
        assert_eq!(
            (l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(Latency::of(&mut []).max_ms, 0.0);
        let mut us: Vec<u32> = (1..=100).rev().map(|m| m * 1000).collect();
        let l = Latency::of_micros(&mut us);
        assert_eq!(
            (l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        // The same hundred samples as runs of one, out of order, and an empty run.
        let mut runs: Vec<(u32, u32)> = (1..=100).rev().map(|m| (m * 1000, 1)).collect();
        runs.push((0, 0));
        let l = Latency::of_weighted_micros(&mut runs);
        assert_eq!(
            (l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        let mut runs = vec![(4000, 1), (2000, 40), (1000, 50), (3000, 9)];
        let l = Latency::of_weighted_micros(&mut runs);
        assert_eq!(
            (l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
            (1.0, 2.0, 3.0, 4.0)
        );
        let mut runs = vec![(3000, 98), (1000, 1), (7000, 1)];
        let l = Latency::of_weighted_micros(&mut runs);
        assert_eq!(
            (l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms),
            (3.0, 3.0, 3.0, 7.0)
        );
        assert_eq!(Latency::of_weighted_micros(&mut [(5, 0)]).max_ms, 0.0);
    }
}
