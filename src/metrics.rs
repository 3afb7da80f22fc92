//! Prometheus metrics for `GET /metrics`, in the OpenMetrics text format that
//! `prometheus-client` encodes.
//!
//! Two kinds: what this process's workers did (a counter per outcome and a latency
//! histogram, kept by the worker pool for its lifetime), and gauges: the queue in the
//! database as the background reader last saw it, and, read at scrape time, SSE
//! subscribers and worker saturation. Aggregates only: no
//! label names an application, endpoint or URL.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::domain::AttemptOutcome;
use crate::probe::QueueReading;

/// The media type of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const PREFIX: &str = "herald";

/// Attempt latency buckets, in seconds: 1 ms to 30 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The outcomes an attempt is recorded under (as in `attempt.outcome`).

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The worker pool's counters, and the encoder for the whole exposition.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    attempts: Family<OutcomeLabel, Counter>,
    attempt_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let attempts = Family::<OutcomeLabel, Counter>::default();
        // Every outcome is exposed from the start, at 0, so rates work before the first one.
        for outcome in AttemptOutcome::ALL {
            let outcome = outcome.as_str();
            attempts.get_or_create_owned(&OutcomeLabel { outcome });
        }
        registry.register(
            "attempts",
            "Delivery attempts made by this process, by outcome",
            attempts.clone(),
        );
        let attempt_duration = Histogram::new(DURATION_BUCKETS);
        registry.register_with_unit(
            "attempt_duration",
            "How long delivery attempts took, from sending the request to reading the response",
            Unit::Seconds,
            attempt_duration.clone(),
        );
        Self {
            registry,
            attempts,
            attempt_duration,
        }
    }

    /// One attempt made: `outcome` is `succeeded`, `retrying` or `dead`.
    pub fn record_attempt(&self, outcome: AttemptOutcome, took: Duration) {
        let outcome = outcome.as_str();
        self.attempts.get_or_create(&OutcomeLabel { outcome }).inc();
        self.attempt_duration.observe(took.as_secs_f64());
    }

    /// The full exposition: the counters above, then the gauges read for this scrape.
    pub fn encode(&self, scrape: &Scrape) -> String {
        let mut gauges = Registry::with_prefix(PREFIX);
        if let Some(QueueReading { stats: queue, age }) = scrape.queue {
            gauges.register(
                "queue_depth",
                "Deliveries waiting to be sent (state pending), in all processes",
                ConstGauge::new(queue.pending),
            );
            gauges.register(
                "deliveries_in_flight",
                "Deliveries being sent (state in_flight), in all processes",
                ConstGauge::new(queue.in_flight),
            );
            gauges.register_with_unit(
                "oldest_pending_age",
                "Age of the oldest pending delivery, 0 when none is pending",
                Unit::Seconds,
                ConstGauge::new(queue.oldest_pending_age_seconds),
            );
            gauges.register_with_unit(
                "oldest_message_age",
                "Age of the oldest message kept: alert when it exceeds HERALD_RETENTION by more \
                 than a few partition intervals (retention is not running)",
                Unit::Seconds,
                ConstGauge::new(queue.oldest_message_age_seconds),
            );
            gauges.register_with_unit(
                "queue_gauges_age",
                "Time since the queue and history gauges above were read from the database",
                Unit::Seconds,
                ConstGauge::new(age.as_secs_f64()),
            );
        }
        gauges.register(
            "sse_subscribers",
            "Live feed subscribers connected to this process",
            ConstGauge::new(scrape.sse_subscribers as i64),
        );
        gauges.register(
            "worker_in_flight",
            "Requests this process's workers have in flight",
            ConstGauge::new(scrape.worker_in_flight as i64),
        );
        gauges.register(
            "worker_concurrency",
            "Requests this process's workers may have in flight at once",
            ConstGauge::new(scrape.worker_concurrency as i64),
        );
        let saturation = if scrape.worker_concurrency == 0 {
            0.0
        } else {
            scrape.worker_in_flight as f64 / scrape.worker_concurrency as f64
        };
        gauges.register(
            "worker_saturation",
            "worker_in_flight / worker_concurrency: 1 means every worker is busy",
            ConstGauge::new(saturation),
        );

        let mut out = String::new();
        encode_registry(&mut out, &self.registry).expect("writing to a String cannot fail");
        encode_registry(&mut out, &gauges).expect("writing to a String cannot fail");
        encode_eof(&mut out).expect("writing to a String cannot fail");
        out
    }
}

/// Values read when `/metrics` is scraped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scrape {
    /// `None` when the database has not answered lately: those gauges are left out.
    pub queue: Option<QueueReading>,
    pub sse_subscribers: usize,
    pub worker_in_flight: usize,
    pub worker_concurrency: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::dashboard::QueueStats;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    }

    #[test]
    fn encodes_counters_histogram_and_gauges() {
        let metrics = Metrics::new();
        metrics.record_attempt(AttemptOutcome::Succeeded, Duration::from_millis(3));
        metrics.record_attempt(AttemptOutcome::Succeeded, Duration::from_millis(40));
        metrics.record_attempt(AttemptOutcome::Dead, Duration::from_secs(2));
        let text = metrics.encode(&Scrape {
            queue: Some(QueueReading {
                stats: QueueStats {
                    pending: 7,
                    in_flight: 2,
                    oldest_pending_age_seconds: 1.5,
                    oldest_message_age_seconds: 3600.0,
                },
                age: Duration::from_millis(250),
            }),
            sse_subscribers: 1,
            worker_in_flight: 2,
            worker_concurrency: 8,
        });
        assert_eq!(
            line(&text, "herald_attempts_total{outcome=\"succeeded\"}"),
            "herald_attempts_total{outcome=\"succeeded\"} 2"
        );
        assert!(text.contains("herald_attempts_total{outcome=\"retrying\"} 0\n"));
        assert!(text.contains("herald_attempts_total{outcome=\"dead\"} 1\n"));
        assert!(text.contains("herald_attempt_duration_seconds_count 3\n"));
        assert!(text.contains("herald_attempt_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("herald_attempt_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("herald_queue_depth 7\n"));
        assert!(text.contains("herald_deliveries_in_flight 2\n"));
        assert!(text.contains("herald_oldest_pending_age_seconds 1.5\n"));
        assert!(text.contains("herald_oldest_message_age_seconds 3600.0\n"));
        assert!(text.contains("herald_queue_gauges_age_seconds 0.25\n"));
        assert!(text.contains("herald_sse_subscribers 1\n"));
        assert!(text.contains("herald_worker_in_flight 2\n"));
        assert!(text.contains("herald_worker_concurrency 8\n"));
        assert!(text.contains("herald_worker_saturation 0.25\n"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
    }

    #[test]
    fn leaves_out_the_queue_when_the_database_did_not_answer() {
        let text = Metrics::new().encode(&Scrape {
            queue: None,
            worker_concurrency: 8,
            ..Scrape::default()
        });
        assert!(!text.contains("herald_queue_depth"));
        assert!(!text.contains("herald_oldest_pending_age"));
        assert!(text.contains("herald_worker_saturation 0.0\n"));
    }
}
