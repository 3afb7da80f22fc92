//! The benchmark's results, as `latest.json` holds them and the report reads them: one
//! [`ScenarioResult`] per scenario, with what the `burst sse` and `history` scenarios add,
//! and the targets they are judged by. Written by the suite, read by `report`.

use serde::{Deserialize, Serialize};

use crate::stats::{Latency, round};

/// p99 of the feed's lag (the attempt's commit → the event at a subscriber) at most this.
pub const SSE_LAG_P99_TARGET_MS: f64 = 100.0;
/// Deliveries/s with subscribers at most this much below the plain burst's.
pub const SSE_DROP_TARGET_PCT: f64 = 10.0;
/// `history burst` and `history soak` targets (issue 14).
pub const BURST_RATIO_TARGET_PCT: f64 = 90.0;
pub const VIEW_P99_TARGET_MS: f64 = 50.0;
pub const DROP_TARGET_SECS: f64 = 1.0;
/// The soak's database is flat if its second half's largest sample is within this of
/// its smallest.
pub const SOAK_FLAT_PCT: f64 = 15.0;

#[derive(Debug, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub name: String,
    pub messages: usize,
    pub fan_out: usize,
    pub offered: String,
    pub accepted_per_s: f64,
    pub delivered_per_s: f64,
    pub latency: Latency,
    pub duplicates: u64,
    pub lost: usize,
    pub send_errors: u64,
    pub peak_rss_mb: f64,
    /// CPU seconds spent during the scenario by herald, by PostgreSQL and by this
    /// benchmark (driver and receiver): who the machine's two cores worked for.
    pub cpu_seconds: CpuSeconds,
    pub notes: serde_json::Value,
    /// The live-feed subscribers' view (the `burst sse` scenario only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse: Option<SseResult>,
    /// The history it ran on and what it cost (the `history burst` scenario only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryResult>,
    /// The database's size under load with a short retention (`history soak` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakResult>,
}

/// What the live-feed subscribers of `burst sse` saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SseResult {
    pub subscribers: usize,
    /// What they subscribed to.
    pub stream: String,
    pub connect_secs: f64,
    /// `attempt` events each subscriber should get: the attempts of the scenario's
    /// application in the database (or, failing that, the most any subscriber got).
    pub attempts_expected: u64,
    pub attempts_received_min: u64,
    pub attempts_received_max: u64,
    /// Expected `attempt` events a subscriber never got, summed over subscribers.
    pub missing: u64,
    pub subscribers_missing_some: usize,
    /// `attempt` events beyond the expected, summed (repeats would show here).
    pub extra: u64,
    /// `event: lagged` frames, summed, and how many subscribers got at least one.
    pub lagged_frames: u64,
    pub subscribers_lagged: usize,
    /// Other events (`message.created`, ...) per subscriber, on average.
    pub other_events_per_subscriber: f64,
    /// `attempt` events whose times could not be read.
    pub unparsed: u64,
    /// Events stamped before their request ended (clock trouble; should be 0).
    pub early: u64,
    /// Streams that broke or that the server ended before the end.
    pub stream_errors: usize,
    pub first_error: Option<String>,
    /// Arrival at a subscriber − PostgreSQL's commit timestamp of the transaction that
    /// wrote the event (`track_commit_timestamp`; the xid is in the event's id), over
    /// every `attempt` event every subscriber received with an xid: the feed's lag, as
    /// the target defines it. `None` when unavailable; see `commit_lag_unavailable`.
    #[serde(default)]
    pub commit_lag: Option<Latency>,
    #[serde(default)]
    pub commit_lag_samples: u64,
    /// Distinct transactions among those events.
    #[serde(default)]
    pub commit_lag_transactions: u64,
    /// Events stamped before their commit timestamp (counted as 0; should be 0).
    #[serde(default)]
    pub commit_lag_early: u64,
    /// Why there is no commit lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_lag_unavailable: Option<String>,
    /// `attempt` events whose `id:` gave no transaction id (not in `commit_lag`).
    #[serde(default)]
    pub attempts_without_xid: u64,
    /// Arrival at a subscriber − (created_at + duration_ms), over every `attempt` event
    /// every subscriber received: request end → arrival, an upper bound of commit →
    /// arrival (the attempt commits after its request ends, once its completion batch
    /// does).
    pub lag: Latency,
    pub lag_samples: u64,
    /// The plain burst's deliveries/s in the same run, and the change against it.
    pub baseline_delivered_per_s: Option<f64>,
    pub delivered_change_pct: Option<f64>,
    /// CPU seconds of the subscribers' own thread during the burst (part of `bench`).
    pub subscriber_cpu_s: f64,
    /// Bytes of the stream each subscriber read, on average, and per event.
    #[serde(default)]
    pub bytes_per_subscriber: u64,
    #[serde(default)]
    pub bytes_per_event: f64,
    /// The commit lag's p99 within the target; without a commit lag, `true` if the upper
    /// bound's p99 is within it and `None` (unknown) if not. (Runs before the commit lag
    /// judged by the upper bound alone, `false` included.)
    #[serde(default)]
    pub lag_target_met: Option<bool>,
    pub throughput_target_met: Option<bool>,
}

impl SseResult {
    /// Whether the lag target is met ([`SseResult::lag_target_met`]), and by which measure.
    pub fn lag_verdict(&self) -> (Option<bool>, &'static str) {
        match self.commit_lag {
            Some(c) if self.commit_lag_samples > 0 => {
                (Some(c.p99_ms <= SSE_LAG_P99_TARGET_MS), "commit -> arrival")
            }
            _ if self.lag_samples > 0 && self.lag.p99_ms <= SSE_LAG_P99_TARGET_MS => {
                (Some(true), "its upper bound, request end -> arrival")
            }
            _ => (
                None,
                "neither measure (no commit lag; the upper bound is above it)",
            ),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct CpuSeconds {
    pub herald: f64,
    pub postgres: f64,
    pub bench: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub commit: String,
    pub when: String,
    pub ceiling_tps: Option<f64>,
    pub herald_env: Vec<(String, String)>,
    pub scenarios: Vec<ScenarioResult>,
}

/// What `history burst` ran on, and the views and the drop measured on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResult {
    pub partition_interval: String,
    /// Messages loaded, each with one succeeded delivery and one attempt.
    pub messages: u64,
    /// Message partitions (each a message/delivery pair) once loaded.
    pub partitions: u64,
    pub load_secs: f64,
    /// `vacuum (analyze)` of the three tables after the load.
    pub vacuum_analyze_secs: f64,
    /// Then a checkpoint and the wait for autovacuum to leave the database alone, so that
    /// the burst measures the history, not the load's aftermath (absent from older runs).
    #[serde(default)]
    pub settle_secs: f64,
    /// Sizes (pg_total_relation_size over every partition) after the load.
    pub sizes: TableSizes,
    /// The empty-database burst of the same run, and this burst as a share of it.
    pub baseline_delivered_per_s: Option<f64>,
    pub burst_ratio_pct: Option<f64>,
    pub views: Vec<ViewTiming>,
    pub drop: DropResult,
    /// Absent from runs before it was measured.
    #[serde(default)]
    pub removal: Option<RemovalResult>,
}

/// Deleting the history's application at the end: the answer, the background removal,
/// the longest transaction Herald held meanwhile, and another application's sends before
/// and during it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovalResult {
    pub answer_ms: f64,
    pub removal_secs: f64,
    pub batches: u64,
    pub messages: u64,
    pub deliveries: u64,
    pub attempts: u64,
    /// Herald's longest open transaction, sampled every `SAMPLE_EVERY` (in
    /// `suite::history::removal`).
    pub longest_transaction_ms: f64,
    /// Sequential sends to an application of its own, before and during the removal.
    pub neighbour_before: Latency,
    pub neighbour_during: Latency,
    pub neighbour_sends_during: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct TableSizes {
    pub message_mb: f64,
    pub delivery_mb: f64,
    pub attempt_mb: f64,
}

impl TableSizes {
    pub fn total_mb(&self) -> f64 {
        round(self.message_mb + self.delivery_mb + self.attempt_mb)
    }
}

/// One view, requested `requests` times in a row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewTiming {
    pub name: String,
    /// The route, `{app}` and `{ep}` standing for the history's application and endpoint.
    pub path: String,
    pub requests: usize,
    /// The untimed first request.
    pub first_ms: f64,
    pub latency: Latency,
    /// Answers other than 2xx, and the first of them.
    pub failures: usize,
    pub failure: Option<String>,
}

/// Dropping the oldest message/delivery pair and the oldest attempt partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropResult {
    pub message_suffix: String,
    pub attempt_suffix: String,
    pub messages_removed: u64,
    pub deliveries_removed: u64,
    pub attempts_removed: u64,
    pub before: TableSizes,
    pub after: TableSizes,
    /// Each `herald.drop_history_partition` call, commit included, and what it said.
    pub message_drop_secs: f64,
    pub attempt_drop_secs: f64,
    pub message_said: String,
    pub attempt_said: String,
}

/// The database's size under steady load with a retention of minutes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakResult {
    pub env: Vec<(String, String)>,
    pub rate: f64,
    pub secs: u64,
    /// (seconds since the load started, pg_database_size in MB).
    pub samples: Vec<(f64, f64)>,
    pub second_half_min_mb: f64,
    pub second_half_max_mb: f64,
    pub flat: bool,
    /// Message partitions at the end.
    pub partitions_at_end: u64,
}
