//! The benchmark's results, as `latest.json` holds them and the report reads them: one
//! [`ScenarioResult`] per scenario, with what the `burst sse` and `history` scenarios add,
//! and the targets they are judged by. Written by the suite, read by `report`.

use serde::{Deserialize, Serialize};

use crate::stats::{Latency, round};

/// p99 of the feed's lag (the attempt's commit → the event at a subscriber) at most this.
pub const SSE_LAG_P99_TARGET_MS: f64 = 100.0;
/// Deliveries/s with subscribers at most this much below the plain burst's.
pub const SSE_DROP_TARGET_PCT: f64 = 10.0;
/// Validation may cost the burst at most this much (issue 17): the median deliveries/s of
/// `burst validated` at least this much below `burst unvalidated`'s in the same run.
pub const VALIDATION_COST_TARGET_PCT: f64 = 10.0;
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
    /// Which side of the validation pair this round was, and its checks (`burst validated`
    /// and `burst unvalidated` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationRound>,
}

/// One round of `burst validated` or `burst unvalidated`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValidationRound {
    pub round: usize,
    /// Sent as a type whose schema is in the catalog, so every payload was validated.
    pub validated: bool,
    pub event_type: String,
    /// Every payload's length, as sent.
    pub payload_bytes: usize,
    /// CPU milliseconds per delivered message (from CPU seconds to 0.01 s).
    pub herald_cpu_ms_per_delivery: f64,
    pub postgres_cpu_ms_per_delivery: f64,
    /// What Herald answered, right after the round, to a payload that the schema refuses
    /// sent with the round's type: 422 if validated, 202 if not, or the round did not
    /// measure what its name says.
    pub refused_payload_status: u16,
    /// Validated rounds: what it answered to a payload whose only fault is a `format` (an
    /// e-mail address that is not one): 422 if Herald asserts formats, 202 if not.
    pub bad_format_status: Option<u16>,
    /// Validated rounds: Herald's check of one payload (parse into a `serde_json::Value`,
    /// validate) done by the benchmark in its own process right after the round, µs per
    /// payload, and of that the parse (see `suite::validation::check_cost_us`).
    #[serde(default)]
    pub check_us: Option<f64>,
    #[serde(default)]
    pub check_parse_us: Option<f64>,
}

impl ValidationRound {
    /// The round validated, or did not, as its name says.
    pub fn checked(&self) -> bool {
        self.refused_payload_status == if self.validated { 422 } else { 202 }
    }
}

/// The validation pair of a run, over its rounds: medians and the verdict.
///
/// The verdict is by the rounds' ratios (validated / unvalidated delivered/s of the same
/// round, two bursts run back to back), not by the ratio of the sides' medians: the
/// machine's speed can step within a run, and a step weighs on one round's ratio but can
/// shift one side's median more than the other's. Both are reported.
#[derive(Debug, Clone)]
pub struct ValidationAb {
    /// Rounds with both sides.
    pub rounds: usize,
    /// Medians over the rounds of each side: (unvalidated, validated).
    pub delivered_per_s: (f64, f64),
    pub herald_cpu_ms_per_delivery: (f64, f64),
    pub postgres_cpu_ms_per_delivery: (f64, f64),
    /// Medians over the validated rounds of [`ValidationRound::check_us`] and
    /// [`ValidationRound::check_parse_us`].
    pub check_us: Option<f64>,
    pub check_parse_us: Option<f64>,
    /// Medians of the rounds' validated / unvalidated CPU ms per delivery. PostgreSQL does
    /// the same work on both sides: its ratio's distance from 1 is the noise.
    pub herald_cpu_ratio: f64,
    pub postgres_cpu_ratio: f64,
    /// Each round's validated / unvalidated delivered/s, in round order.
    pub round_ratios: Vec<f64>,
    /// The median of [`Self::round_ratios`].
    pub ratio: f64,
    /// Their mean, and its standard error (sample standard deviation / √rounds; 0 for
    /// one round): about how far the mean may be from what more rounds would give.
    pub ratio_mean: f64,
    pub ratio_stderr: f64,
    /// What validation cost: 100 × (1 − [`Self::ratio`]).
    pub cost_pct: f64,
    /// Every round checked, none lost, duplicated or refused a message.
    pub sound: bool,
}

impl ValidationAb {
    pub fn of(scenarios: &[ScenarioResult]) -> Option<Self> {
        let rounds: Vec<(&ScenarioResult, &ValidationRound)> = scenarios
            .iter()
            .filter_map(|s| s.validation.as_ref().map(|v| (s, v)))
            .collect();
        let side = |validated: bool, f: &dyn Fn(&ScenarioResult, &ValidationRound) -> f64| {
            median(
                rounds
                    .iter()
                    .filter(|(_, v)| v.validated == validated)
                    .map(|(s, v)| f(s, v))
                    .collect(),
            )
        };
        let pair = |f: &dyn Fn(&ScenarioResult, &ValidationRound) -> f64| {
            Some((side(false, f)?, side(true, f)?))
        };
        // Each round's validated / unvalidated value of `f`, in round order.
        let ratios = |f: &dyn Fn(&ScenarioResult, &ValidationRound) -> f64| -> Vec<f64> {
            let side = |round: usize, validated: bool| {
                rounds
                    .iter()
                    .find(|(_, v)| v.round == round && v.validated == validated)
                    .map(|(s, v)| f(s, v))
            };
            let mut numbers: Vec<usize> = rounds.iter().map(|(_, v)| v.round).collect();
            numbers.dedup();
            numbers
                .iter()
                .filter_map(|&r| Some(side(r, true)? / side(r, false)?.max(1e-9)))
                .map(|x| (x * 1000.0).round() / 1000.0)
                .collect()
        };
        let round_ratios = ratios(&|s, _| s.delivered_per_s);
        let ratio = median(round_ratios.clone())?;
        let n = round_ratios.len() as f64;
        let ratio_mean = round_ratios.iter().sum::<f64>() / n;
        let ratio_stderr = if n > 1.0 {
            let var = round_ratios
                .iter()
                .map(|r| (r - ratio_mean).powi(2))
                .sum::<f64>()
                / (n - 1.0);
            (var / n).sqrt()
        } else {
            0.0
        };
        Some(Self {
            rounds: round_ratios.len(),
            delivered_per_s: pair(&|s, _| s.delivered_per_s)?,
            herald_cpu_ms_per_delivery: pair(&|_, v| v.herald_cpu_ms_per_delivery)?,
            postgres_cpu_ms_per_delivery: pair(&|_, v| v.postgres_cpu_ms_per_delivery)?,
            check_us: median(rounds.iter().filter_map(|(_, v)| v.check_us).collect()),
            check_parse_us: median(
                rounds
                    .iter()
                    .filter_map(|(_, v)| v.check_parse_us)
                    .collect(),
            ),
            herald_cpu_ratio: median(ratios(&|_, v| v.herald_cpu_ms_per_delivery))?,
            postgres_cpu_ratio: median(ratios(&|_, v| v.postgres_cpu_ms_per_delivery))?,
            round_ratios,
            ratio,
            ratio_mean,
            ratio_stderr,
            cost_pct: round(100.0 * (1.0 - ratio)),
            sound: rounds.iter().all(|(s, v)| {
                v.checked() && s.lost == 0 && s.duplicates == 0 && s.send_errors == 0
            }),
        })
    }

    pub fn target_met(&self) -> bool {
        self.cost_pct <= VALIDATION_COST_TARGET_PCT
    }
}

/// The median (the mean of the middle two of an even count); `None` of nothing.
fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(xs[n / 2]),
        _ => Some((xs[n / 2 - 1] + xs[n / 2]) / 2.0),
    }
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
