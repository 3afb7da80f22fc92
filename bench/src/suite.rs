//! `herald-bench suite`: the ceiling, a `herald serve` process, and the scenarios, in one run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use herald::domain::SigningSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::driver::{self, Api, Load};
use crate::receiver::{Behaviour, Receiver};
use crate::sse::Subscribers;
use crate::stats::Latency;

mod history;
pub use history::{
    BURST_RATIO_TARGET_PCT, DROP_TARGET_SECS, HistoryResult, SOAK_FLAT_PCT, SoakResult,
    VIEW_P99_TARGET_MS,
};

pub struct Settings {
    /// A superuser connection to the cluster (any database).
    pub server_url: String,
    pub herald_bin: PathBuf,
    pub out_dir: PathBuf,
    /// Divides every message count, for a quick run.
    pub scale: usize,
    pub ceiling_secs: u32,
    pub verify_signatures: bool,
    /// Extra environment for `herald serve` (`KEY=VALUE`).
    pub herald_env: Vec<(String, String)>,
    /// Run only the scenarios whose names contain one of these.
    pub only: Vec<String>,
    /// Live-feed subscribers during the `burst sse` scenario; 0 skips it.
    pub sse_subscribers: usize,
    /// Messages of history the `history` scenario loads (divided by `scale`).
    pub history_messages: usize,
    /// Length of the `history soak` scenario.
    pub soak_secs: u64,
}

/// The burst again, with live-feed subscribers connected throughout.
pub const BURST_SSE: &str = "burst sse";
/// The control of `burst sse`: the same bytes from a minimal server (see `loopback`).
pub const BURST_SSE_CONTROL: &str = "burst sse control";
/// p99 of the feed's lag (the attempt's commit → the event at a subscriber) at most this.
pub const SSE_LAG_P99_TARGET_MS: f64 = 100.0;
/// Deliveries/s with subscribers at most this much below the plain burst's.
pub const SSE_DROP_TARGET_PCT: f64 = 10.0;

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

/// [`Run::commit_lags`]: the fields of [`SseResult`] named `commit_lag*`.
#[derive(Default)]
struct CommitLags {
    lag: Option<Latency>,
    samples: u64,
    transactions: u64,
    early: u64,
    unavailable: Option<String>,
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

const TOKEN: &str = "bench-admin-token-0123456789";
/// The database `herald serve` runs on.
const DB_NAME: &str = "herald_bench";

pub async fn run(settings: Settings) -> anyhow::Result<Report> {
    let ceiling = if settings.ceiling_secs > 0 {
        let tps = pgbench_ceiling(&settings.server_url, settings.ceiling_secs)?;
        eprintln!("ceiling: pgbench, 64 clients, one-row insert per transaction: {tps:.0} tps");
        Some(tps)
    } else {
        None
    };

    let db_url = recreate_database(&settings.server_url, DB_NAME)?;
    let mut herald = HeraldProcess::start(&settings, &db_url, &[], "herald.log").await?;
    let receiver = Receiver::start("127.0.0.1:0".parse()?).await?;
    let mut run = Run::on(&settings, &herald, receiver);

    // `=name` selects that scenario alone; anything else, every name containing it.
    let wanted = |name: &str| {
        settings.only.is_empty()
            || settings.only.iter().any(|o| match o.strip_prefix('=') {
                Some(exact) => name == exact,
                None => name.contains(o.as_str()),
            })
    };
    let mut scenarios = Vec::new();
    let sse = settings.sse_subscribers > 0 && wanted(BURST_SSE);
    let (history, soak) = (
        wanted(history::HISTORY_BURST),
        wanted(history::HISTORY_SOAK),
    );
    let mut burst_rate = None;
    // The plain burst is also the baseline of `burst sse`, run right before it, and of
    // `history burst`.
    if wanted("burst") || sse || history {
        let burst = run.closed("burst", 10_000, 64, 1).await?;
        burst_rate = Some(burst.delivered_per_s);
        scenarios.push(burst);
    }
    if sse {
        let feed = run
            .burst_sse(10_000, 64, settings.sse_subscribers, burst_rate)
            .await?;
        let event_bytes = feed.sse.as_ref().map(|f| f.bytes_per_event as usize);
        scenarios.push(feed);
        scenarios.push(
            run.burst_sse_control(
                10_000,
                64,
                settings.sse_subscribers,
                burst_rate,
                event_bytes,
            )
            .await?,
        );
    }
    let mut baseline = None;
    if wanted("low load") || wanted("slow") {
        let low = run.closed("low load", 3_000, 4, 1).await?;
        baseline = Some(low.latency.p99_ms);
        scenarios.push(low);
    }
    if wanted("fan-out") {
        scenarios.push(run.closed("fan-out", 2_000, 64, 10).await?);
    }
    if wanted("steady") {
        scenarios.push(run.steady(1_000.0, Duration::from_secs(30)).await?);
    }
    if let Some(baseline) = baseline.filter(|_| wanted("slow")) {
        scenarios.push(run.slow_neighbour(3_000, 4, baseline).await?);
    }
    herald.stop();
    if history {
        let receiver = run.receiver.clone();
        scenarios.push(history::burst_on_history(&settings, receiver, burst_rate).await?);
    }
    if soak {
        scenarios.push(history::soak(&settings, run.receiver.clone()).await?);
    }

    Ok(Report {
        commit: git_commit(),
        when: now_rfc3339(),
        ceiling_tps: ceiling,
        herald_env: settings.herald_env.clone(),
        scenarios,
    })
}

struct Run {
    api: Api,
    receiver: Receiver,
    herald_pid: u32,
    herald_addr: std::net::SocketAddr,
    /// The cluster, for counting attempts in `herald_bench`.
    server_url: String,
    scale: usize,
    verify: bool,
}

impl Run {
    /// The scenarios' driver against `herald`, delivering to `receiver`.
    fn on(settings: &Settings, herald: &HeraldProcess, receiver: Receiver) -> Self {
        Self {
            api: Api::new(&format!("http://{}", herald.addr), TOKEN),
            receiver,
            herald_pid: herald.child.id(),
            herald_addr: herald.addr,
            server_url: settings.server_url.clone(),
            scale: settings.scale.max(1),
            verify: settings.verify_signatures,
        }
    }

    /// An application whose endpoints all point at the receiver; returns its id and the
    /// receiver paths of its endpoints.
    async fn setup(&self, name: &str, fan_out: usize) -> anyhow::Result<(String, Vec<String>)> {
        let paths: Vec<String> = (0..fan_out)
            .map(|i| format!("{name}-{i}").replace(' ', "_"))
            .collect();
        let urls: Vec<String> = paths.iter().map(|p| self.receiver.url(p)).collect();
        let (app, secrets) = self.api.app_with_endpoints(name, &urls).await?;
        for (path, secret) in paths.iter().zip(secrets) {
            let secret = if self.verify {
                Some(SigningSecret::parse(&secret).map_err(anyhow::Error::msg)?)
            } else {
                None
            };
            self.receiver.set(
                path,
                Behaviour {
                    secret,
                    ..Default::default()
                },
            );
        }
        Ok((app, paths))
    }

    /// `count` messages (divided by `--scale`) from `concurrency` senders, each sending its
    /// next as soon as its last is accepted.
    fn closed_loop(&self, count: usize, concurrency: usize) -> Load {
        Load {
            count: count / self.scale,
            concurrency,
            rate: None,
            payload_bytes: 256,
        }
    }

    async fn closed(
        &mut self,
        name: &'static str,
        count: usize,
        concurrency: usize,
        fan_out: usize,
    ) -> anyhow::Result<ScenarioResult> {
        let load = self.closed_loop(count, concurrency);
        let (app, paths) = self.setup(name, fan_out).await?;
        self.measure(
            name,
            &app,
            &paths,
            &load,
            format!("closed loop, {concurrency} senders"),
        )
        .await
    }

    async fn steady(&mut self, rate: f64, length: Duration) -> anyhow::Result<ScenarioResult> {
        let load = Load {
            count: ((rate * length.as_secs_f64()) as usize) / self.scale,
            concurrency: 256,
            rate: Some(rate),
            payload_bytes: 256,
        };
        let (app, paths) = self.setup("steady", 1).await?;
        // Sample the backlog (accepted, not yet received) once a second while driving.
        let sampler = {
            let receiver = self.receiver.clone();
            let path = paths[0].clone();
            let expected_rate = rate;
            let total = load.count as i64;
            tokio::spawn(async move {
                let start = Instant::now();
                let mut samples = Vec::new();
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let t = start.elapsed().as_secs_f64();
                    let offered = ((t * expected_rate) as i64).min(total);
                    samples.push((
                        t.round() as i64,
                        offered - receiver.distinct_at(&path) as i64,
                    ));
                    if t > total as f64 / expected_rate {
                        return samples;
                    }
                }
            })
        };
        let mut result = self
            .measure(
                "steady",
                &app,
                &paths,
                &load,
                format!("open loop, {rate} msg/s"),
            )
            .await?;
        let before_202 = result.notes["arrived_before_202"].clone();
        let samples = sampler.await?;
        let third = samples.len() / 3;
        let mean =
            |s: &[(i64, i64)]| s.iter().map(|x| x.1 as f64).sum::<f64>() / s.len().max(1) as f64;
        let (early_mean, late) = (
            mean(&samples[..third]),
            mean(&samples[samples.len() - third..]),
        );
        // Flat: the backlog at the end is no bigger than at the start, give or take 100 ms of load.
        let flat = late <= early_mean.max(0.0) + rate * 0.1;
        result.notes = json!({"backlog_samples": samples, "backlog_flat": flat,
                              "backlog_mean_first_third": early_mean, "backlog_mean_last_third": late,
                              "arrived_before_202": before_202});
        Ok(result)
    }

    /// The healthy endpoint's latency while a neighbour takes 2 s per request.
    async fn slow_neighbour(
        &mut self,
        count: usize,
        concurrency: usize,
        baseline_p99: f64,
    ) -> anyhow::Result<ScenarioResult> {
        let (app, paths) = self.setup("slow neighbour", 2).await?;
        let slow = paths[1].clone();
        self.receiver.set(
            &slow,
            Behaviour {
                delay: Duration::from_secs(2),
                ..Default::default()
            },
        );
        let load = self.closed_loop(count, concurrency);
        let healthy = vec![paths[0].clone()];
        let mut result = self
            .measure(
                "slow endpoint",
                &app,
                &healthy,
                &load,
                format!(
                    "closed loop, {concurrency} senders; every message also goes to a 2 s endpoint"
                ),
            )
            .await?;
        let slow_received = self.receiver.distinct_at(&slow);
        let early = result.notes["arrived_before_202"].clone();
        // The slow endpoint's backlog would take minutes to drain; drop it with the app.
        self.api.delete(&format!("/apps/{app}")).await?;
        result.fan_out = 2;
        result.notes = json!({
            "measured": "healthy endpoint only",
            "baseline_p99_ms": baseline_p99,
            "ratio_to_baseline": result.latency.p99_ms / baseline_p99.max(0.001),
            "slow_endpoint_received": slow_received,
            "arrived_before_202": early,
        });
        Ok(result)
    }

    /// The burst, with `subscribers` live-feed subscriptions to its application open from
    /// before the first message to after the last attempt event: the feed's lag (attempt
    /// → subscriber), whether every subscriber got every attempt, and what the
    /// subscriptions cost the deliveries against `baseline` (the plain burst's delivered/s).
    /// The server notices a client that went away only when it next writes to it (an
    /// event or a keep-alive comment, every 15 s by default). The scenarios after
    /// `burst sse` must not pay for its thousand closed streams: wait until Herald's
    /// `/metrics` shows none left.
    async fn wait_for_streams_closed(&self) {
        let url = format!("http://{}/metrics", self.herald_addr);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let open = async {
                let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
                text.lines()
                    .find_map(|l| l.strip_prefix("herald_sse_subscribers "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            };
            if open.await == Some(0.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("burst sse: Herald still counts open streams after 60 s; going on");
    }

    async fn burst_sse(
        &mut self,
        count: usize,
        concurrency: usize,
        subscribers: usize,
        baseline: Option<f64>,
    ) -> anyhow::Result<ScenarioResult> {
        let name = BURST_SSE;
        self.check_open_files(subscribers)?;
        let load = self.closed_loop(count, concurrency);
        let (app, paths) = self.setup(name, 1).await?;
        let stream = format!("/api/v1/stream?app={app}");
        let subs = Subscribers::start(self.herald_addr, &stream, TOKEN, subscribers)?;
        let connect = subs.wait_connected(Duration::from_secs(60)).await?;
        eprintln!(
            "{name}: {subscribers} subscribers to {stream} connected in {:.2}s",
            connect.as_secs_f64()
        );
        // Let the connections' setup work finish before the clock starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu_before = subs.cpu_seconds();
        let mut result = self
            .measure(
                name,
                &app,
                &paths,
                &load,
                format!("closed loop, {concurrency} senders, {subscribers} SSE subscribers"),
            )
            .await?;
        let subscriber_cpu = subs.cpu_seconds() - cpu_before;

        // Every delivered webhook is at least one attempt; retries would add more.
        let delivered = delivered(&result);
        let in_db = self.attempts_in_db(&app, delivered).await;
        subs.wait_for(in_db.unwrap_or(delivered)).await;
        let epoch_us = subs.epoch_us;
        let stats = subs.stop().await?;
        self.wait_for_streams_closed().await;
        let commit = self.commit_lags(&stats, epoch_us);

        let max_received = stats.iter().map(|s| s.attempts).max().unwrap_or(0);
        let expected = in_db.unwrap_or(max_received);
        let mut lags: Vec<u32> = Vec::with_capacity(stats.iter().map(|s| s.lags_us.len()).sum());
        let events: u64 = stats.iter().map(|s| s.attempts + s.other_events).sum();
        let bytes: u64 = stats.iter().map(|s| s.bytes).sum();
        let mut sse = SseResult {
            subscribers,
            stream,
            connect_secs: (connect.as_secs_f64() * 1000.0).round() / 1000.0,
            attempts_expected: expected,
            attempts_received_min: stats.iter().map(|s| s.attempts).min().unwrap_or(0),
            attempts_received_max: max_received,
            missing: 0,
            subscribers_missing_some: 0,
            extra: 0,
            lagged_frames: 0,
            subscribers_lagged: 0,
            other_events_per_subscriber: 0.0,
            unparsed: 0,
            early: 0,
            stream_errors: 0,
            first_error: None,
            commit_lag: commit.lag,
            commit_lag_samples: commit.samples,
            commit_lag_transactions: commit.transactions,
            commit_lag_early: commit.early,
            commit_lag_unavailable: commit.unavailable,
            attempts_without_xid: stats.iter().map(|s| s.no_xid).sum(),
            lag: Latency::default(),
            lag_samples: 0,
            baseline_delivered_per_s: baseline,
            delivered_change_pct: baseline
                .filter(|b| *b > 0.0)
                .map(|b| round(100.0 * (result.delivered_per_s - b) / b)),
            subscriber_cpu_s: round(subscriber_cpu),
            bytes_per_subscriber: bytes / subscribers.max(1) as u64,
            bytes_per_event: round(bytes as f64 / events.max(1) as f64),
            lag_target_met: None,
            throughput_target_met: None,
        };
        let mut other_events = 0;
        for mut s in stats {
            sse.missing += expected.saturating_sub(s.attempts);
            sse.subscribers_missing_some += usize::from(s.attempts < expected);
            sse.extra += s.attempts.saturating_sub(expected);
            sse.lagged_frames += s.lagged;
            sse.subscribers_lagged += usize::from(s.lagged > 0);
            sse.unparsed += s.unparsed;
            sse.early += s.early;
            other_events += s.other_events;
            if s.error.is_some() || s.ended {
                sse.stream_errors += 1;
                if sse.first_error.is_none() {
                    sse.first_error = Some(
                        s.error
                            .unwrap_or_else(|| "the server ended the stream".into()),
                    );
                }
            }
            lags.append(&mut s.lags_us);
        }
        sse.other_events_per_subscriber = round(other_events as f64 / subscribers.max(1) as f64);
        sse.lag_samples = lags.len() as u64;
        sse.lag = Latency::of_micros(&mut lags);
        sse.lag_target_met = sse.lag_verdict().0;
        sse.throughput_target_met = sse.delivered_change_pct.map(|c| c > -SSE_DROP_TARGET_PCT);
        result.sse = Some(sse);
        Ok(result)
    }

    /// The burst again, while a minimal server in this process (see `loopback`) streams
    /// what Herald's feed would, two events of `event_bytes` per delivery, every 25 ms, to
    /// as many subscribers of the same client: what those bytes cost on this machine
    /// without Herald doing any of the work.
    async fn burst_sse_control(
        &mut self,
        count: usize,
        concurrency: usize,
        subscribers: usize,
        baseline: Option<f64>,
        event_bytes: Option<usize>,
    ) -> anyhow::Result<ScenarioResult> {
        let name = BURST_SSE_CONTROL;
        // What Herald's frames averaged at 304f0b9, should `burst sse` have read nothing.
        let event_bytes = event_bytes.filter(|b| *b > 0).unwrap_or(512);
        // A client socket and a server socket per subscriber, both in this process.
        self.check_open_files(2 * subscribers)?;
        let load = self.closed_loop(count, concurrency);
        let (app, paths) = self.setup(name, 1).await?;
        let receiver = self.receiver.clone();
        let blaster =
            crate::loopback::Blaster::start(event_bytes, Duration::from_millis(25), move || {
                receiver.distinct()
            })?;
        let subs = Subscribers::start(blaster.addr, "/", TOKEN, subscribers)?;
        subs.wait_connected(Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu_before = (subs.cpu_seconds(), blaster.cpu_seconds());
        let mut result = self
            .measure(
                name,
                &app,
                &paths,
                &load,
                format!(
                    "closed loop, {concurrency} senders, {subscribers} subscribers to a \
                     minimal server sending the feed's bytes ({event_bytes} an event)"
                ),
            )
            .await?;
        let cpu = (
            subs.cpu_seconds() - cpu_before.0,
            blaster.cpu_seconds() - cpu_before.1,
        );
        subs.wait_for(delivered(&result)).await;
        let skipped = blaster.skipped();
        let stats = subs.stop().await?;
        blaster.stop().await;
        let mut lags: Vec<u32> = stats
            .iter()
            .flat_map(|s| s.lags_us.iter().copied())
            .collect();
        let lag = Latency::of_micros(&mut lags);
        let change = baseline
            .filter(|b| *b > 0.0)
            .map(|b| round(100.0 * (result.delivered_per_s - b) / b));
        result.notes["control"] = json!({
            "event_bytes": event_bytes,
            "bytes_per_subscriber": stats.iter().map(|s| s.bytes).sum::<u64>()
                / subscribers.max(1) as u64,
            "attempts_received_min": stats.iter().map(|s| s.attempts).min().unwrap_or(0),
            "skipped_chunks": skipped,
            "delivered_change_pct": change,
            "server_cpu_s": round(cpu.1),
            "subscribers_cpu_s": round(cpu.0),
            "build_to_arrival_ms": {"p50": lag.p50_ms, "p99": lag.p99_ms, "max": lag.max_ms},
        });
        Ok(result)
    }

    /// Commit → arrival of every `attempt` event the subscribers recorded with an xid:
    /// each distinct xid's commit timestamp is read from PostgreSQL
    /// (`pg_xact_commit_timestamp`, which needs `track_commit_timestamp`).
    fn commit_lags(&self, stats: &[crate::sse::Stats], epoch_us: i64) -> CommitLags {
        let mut xids: Vec<i64> = stats
            .iter()
            .flat_map(|s| s.arrivals.runs().map(|r| r.0))
            .collect();
        xids.sort_unstable();
        xids.dedup();
        let held: usize = stats.iter().map(|s| s.arrivals.heap_bytes()).sum();
        eprintln!(
            "{BURST_SSE}: {} transactions in the subscribers' attempt events; \
             their (xid, arrival) records held {:.1} MB",
            xids.len(),
            held as f64 / 1e6
        );
        let mut out = CommitLags {
            transactions: xids.len() as u64,
            ..Default::default()
        };
        if xids.is_empty() {
            out.unavailable = Some("no attempt event carried a transaction id".into());
            return out;
        }
        let committed = match commit_timestamps(&self.server_url, &xids) {
            Ok(c) => c,
            Err(e) => {
                out.unavailable = Some(format!("{e:#}"));
                return out;
            }
        };
        let mut lags: Vec<(u32, u32)> = Vec::new();
        for s in stats {
            for (xid, at, n) in s.arrivals.runs() {
                // Every xid is in `committed` (checked there).
                let lag = epoch_us + i64::from(at) - committed[&xid];
                if lag < 0 {
                    out.early += u64::from(n);
                }
                lags.push((lag.clamp(0, i64::from(u32::MAX)) as u32, n));
                out.samples += u64::from(n);
            }
        }
        out.lag = Some(Latency::of_weighted_micros(&mut lags));
        out
    }

    /// Fails early when either side could run out of file descriptors: each holds one
    /// socket per subscriber, beside the driver's, the workers' and PostgreSQL's.
    fn check_open_files(&self, subscribers: usize) -> anyhow::Result<()> {
        let needed = subscribers as u64 + 1024;
        for (who, pid) in [
            ("herald-bench", "self".to_owned()),
            ("herald serve", self.herald_pid.to_string()),
        ] {
            if let Some(limit) = crate::sse::open_files_limit(&pid) {
                anyhow::ensure!(
                    limit >= needed,
                    "{who} may open only {limit} files, fewer than the {needed} that \
                     {subscribers} SSE subscribers need; raise the hard limit (ulimit -Hn)"
                );
            }
        }
        Ok(())
    }

    /// How many attempts the application `app` has in the database, once that stops
    /// growing and is at least `at_least` (or after 20 s); `None` if it cannot be read.
    async fn attempts_in_db(&self, app: &str, at_least: u64) -> Option<u64> {
        let uuid = app
            .strip_prefix("app_")
            .filter(|u| u.bytes().all(|b| b.is_ascii_hexdigit()))?;
        let sql = format!("select count(*) from herald.attempt where app_id = '{uuid}'::uuid");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut previous = None;
        loop {
            let n = match psql_output(&self.server_url, DB_NAME, &sql) {
                Ok(out) => out.parse::<u64>().ok()?,
                Err(e) => {
                    eprintln!("counting attempts: {e:#}");
                    return None;
                }
            };
            if (n >= at_least && previous == Some(n)) || Instant::now() > deadline {
                return Some(n);
            }
            previous = Some(n);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Drives the load, waits for every delivery to the `paths` endpoints, and measures.
    async fn measure(
        &mut self,
        name: &'static str,
        app: &str,
        paths: &[String],
        load: &Load,
        offered: String,
    ) -> anyhow::Result<ScenarioResult> {
        eprintln!("{name}: {} messages, {offered}", load.count);
        reset_peak_rss(self.herald_pid);
        let cpu_before = self.cpu();
        let duplicates_before = self.receiver.counts.duplicates.load(Ordering::Relaxed);
        let out = driver::drive(&self.api, app, load).await;

        // Wait until everything arrived, or until nothing has moved for a while.
        let expected = out.accepted.len() * paths.len();
        let received = |r: &Receiver| paths.iter().map(|p| r.distinct_at(p)).sum::<usize>();
        let mut last = (received(&self.receiver), Instant::now());
        while last.0 < expected && last.1.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = received(&self.receiver);
            if now != last.0 {
                last = (now, Instant::now());
            }
        }

        let mut latencies = Vec::with_capacity(expected);
        let mut last_arrival = out.started;
        let mut lost = 0;
        let mut before_202 = 0usize;
        for (id, accepted_at) in &out.accepted {
            for path in paths {
                match self.receiver.arrival(path, id) {
                    // A webhook can beat the 202 back to the driver: that counts as 0.
                    Some(at) => {
                        if at < *accepted_at {
                            before_202 += 1;
                        }
                        latencies.push(at.saturating_duration_since(*accepted_at));
                        last_arrival = last_arrival.max(at);
                    }
                    None => lost += 1,
                }
            }
        }
        let cpu_after = self.cpu();
        let delivered = latencies.len();
        let notes = json!({ "arrived_before_202": before_202 });
        let send_secs = out.finished.duration_since(out.started).as_secs_f64();
        let deliver_secs = last_arrival
            .saturating_duration_since(out.started)
            .as_secs_f64();
        Ok(ScenarioResult {
            name: name.to_owned(),
            messages: load.count,
            fan_out: paths.len(),
            offered,
            accepted_per_s: round(out.accepted.len() as f64 / send_secs.max(1e-9)),
            delivered_per_s: round(delivered as f64 / deliver_secs.max(1e-9)),
            latency: Latency::of(&mut latencies),
            duplicates: self.receiver.counts.duplicates.load(Ordering::Relaxed) - duplicates_before,
            lost,
            send_errors: out.errors,
            peak_rss_mb: peak_rss_mb(self.herald_pid),
            cpu_seconds: CpuSeconds {
                herald: round(cpu_after.herald - cpu_before.herald),
                postgres: round(cpu_after.postgres - cpu_before.postgres),
                bench: round(cpu_after.bench - cpu_before.bench),
            },
            notes,
            sse: None,
            history: None,
            soak: None,
        })
    }
}

impl Run {
    fn cpu(&self) -> CpuSeconds {
        let mut postgres = 0.0;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "postgres" {
                    postgres += cpu_of(&pid.to_string());
                }
            }
        }
        CpuSeconds {
            herald: cpu_of(&self.herald_pid.to_string()),
            postgres,
            bench: cpu_of("self"),
        }
    }
}

/// utime + stime of a process (or `self/task/{tid}`: a thread), in seconds (USER_HZ is
/// 100 on Linux).
pub(crate) fn cpu_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Webhooks a scenario delivered: every message accepted, to every endpoint, but the lost.
fn delivered(result: &ScenarioResult) -> u64 {
    ((result.messages as u64).saturating_sub(result.send_errors) * result.fan_out as u64)
        .saturating_sub(result.lost as u64)
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

struct HeraldProcess {
    child: Child,
    addr: std::net::SocketAddr,
}

impl HeraldProcess {
    /// `herald serve` on `db_url`, with `env` beside `--herald-env` (and over it), logging
    /// to `log` in the output directory.
    async fn start(
        settings: &Settings,
        db_url: &str,
        env: &[(&str, &str)],
        log: &str,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        std::fs::create_dir_all(&settings.out_dir)?;
        let log_path = settings.out_dir.join(log);
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(std::fs::canonicalize(&settings.herald_bin)?);
        // Only what is set here: no inherited HERALD_* and no developer's .env (herald
        // looks for one in its working directory and above).
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(std::env::temp_dir())
            .env("DATABASE_URL", db_url)
            .env("HERALD_LISTEN", addr.to_string())
            .env("HERALD_ADMIN_TOKEN", TOKEN)
            .env("HERALD_ALLOW_PRIVATE_TARGETS", "true")
            .env("HERALD_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &settings.herald_env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", settings.herald_bin.display()))?;
        let mut process = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("http://{addr}/readyz")).await
                && r.status().is_success()
            {
                return Ok(process);
            }
            if let Some(status) = process.child.try_wait()? {
                bail!("herald exited with {status}; see {}", log_path.display());
            }
            if Instant::now() > deadline {
                process.stop();
                bail!("herald did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Linux resets a process's peak RSS (VmHWM) when 5 is written to its clear_refs.
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    round(kb / 1024.0)
}

/// Connection parts of a postgres:// URL, for the command-line tools.
struct Conn {
    host: String,
    port: String,
    user: String,
}

fn conn(url: &str) -> anyhow::Result<Conn> {
    let u = reqwest::Url::parse(url)?;
    Ok(Conn {
        host: u.host_str().unwrap_or("127.0.0.1").to_owned(),
        port: u.port().unwrap_or(5432).to_string(),
        user: if u.username().is_empty() {
            "postgres".into()
        } else {
            u.username().into()
        },
    })
}

fn psql(url: &str, db: &str, sql: &str) -> anyhow::Result<()> {
    psql_output(url, db, sql).map(drop)
}

/// Runs `sql` and returns what it printed, unaligned and without headers. `sql` goes in on
/// psql's standard input, so its length has no limit.
fn psql_output(url: &str, db: &str, sql: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let c = conn(url)?;
    let mut child = Command::new("psql")
        .args([
            "-h",
            &c.host,
            "-p",
            &c.port,
            "-U",
            &c.user,
            "-d",
            db,
            "-q",
            "-t",
            "-A",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running psql")?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = format!("{sql};\n");
    // psql reads all of its input before it answers, so writing first cannot deadlock.
    let written = stdin.write_all(input.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().context("running psql")?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    written.context("writing to psql")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// PostgreSQL's commit timestamp of each of `xids` (full transaction ids, as in the
/// feed's event ids), in µs since the Unix epoch, from the herald database; an error says
/// why not, for all of them: a commit timestamp is unknown when `track_commit_timestamp`
/// was off at the commit, or once it is too old to be kept.
fn commit_timestamps(
    server_url: &str,
    xids: &[i64],
) -> anyhow::Result<std::collections::HashMap<i64, i64>> {
    let tracked = psql_output(server_url, DB_NAME, "show track_commit_timestamp")?;
    if tracked != "on" {
        bail!(
            "track_commit_timestamp is {tracked:?} on this cluster; scripts/pg.sh turns it \
             on when it starts the bench cluster, but a cluster that was already running \
             must be restarted (scripts/pg.sh stop target/pgbench)"
        );
    }
    let list: Vec<String> = xids.iter().map(i64::to_string).collect();
    // The xid (32 bits) of an xid8 is its low half; the text cast keeps to PostgreSQL 15's
    // parser, which has no xid8 -> xid cast.
    let sql = format!(
        "select x, (extract(epoch from pg_xact_commit_timestamp((x % 4294967296)::text::xid)) \
         * 1000000)::bigint from unnest('{{{}}}'::bigint[]) x",
        list.join(",")
    );
    let out = psql_output(server_url, DB_NAME, &sql).context("reading commit timestamps")?;
    let mut committed = std::collections::HashMap::with_capacity(xids.len());
    let mut unknown = 0;
    for line in out.lines().filter(|l| !l.is_empty()) {
        let (x, at) = line
            .split_once('|')
            .with_context(|| format!("unexpected psql output {line:?}"))?;
        let x: i64 = x.parse().with_context(|| format!("xid in {line:?}"))?;
        match at {
            "" => unknown += 1,
            at => {
                committed.insert(x, at.parse().with_context(|| format!("time in {line:?}"))?);
            }
        }
    }
    if unknown > 0 {
        bail!(
            "PostgreSQL has no commit timestamp for {unknown} of the {} transactions \
             (committed while track_commit_timestamp was off, or too old)",
            xids.len()
        );
    }
    if let Some(x) = xids.iter().find(|x| !committed.contains_key(x)) {
        bail!("psql returned no row for xid {x}");
    }
    Ok(committed)
}

fn recreate_database(server_url: &str, name: &str) -> anyhow::Result<String> {
    psql(
        server_url,
        "postgres",
        &format!("drop database if exists {name} with (force)"),
    )?;
    psql(server_url, "postgres", &format!("create database {name}"))?;
    let mut u = reqwest::Url::parse(server_url)?;
    u.set_path(name);
    Ok(u.to_string())
}

/// pgbench on the same cluster: 64 clients, each transaction one durable one-row insert.
fn pgbench_ceiling(server_url: &str, seconds: u32) -> anyhow::Result<f64> {
    let db = "herald_bench_ceiling";
    recreate_database(server_url, db)?;
    psql(
        server_url,
        db,
        "create table ceiling (id bigserial primary key, v int not null, at timestamptz not null default now())",
    )?;
    let script = std::env::temp_dir().join("herald-ceiling.sql");
    std::fs::write(
        &script,
        "\\set v random(1, 1000000)\ninsert into ceiling (v) values (:v);\n",
    )?;
    let c = conn(server_url)?;
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-c",
            "64",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .args(["-h", &c.host, "-p", &c.port, "-U", &c.user, db])
        .output()
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|n| n.parse().ok());
    match tps {
        Some(t) => Ok(t),
        None => bail!(
            "pgbench printed no tps:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn now_rfc3339() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn write_outputs(report: &Report, out_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out_dir)?;
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(out_dir.join("latest.json"), &json)?;
    std::fs::write(
        out_dir.join(format!(
            "{}-{}.json",
            report.when.replace(':', ""),
            report.commit
        )),
        &json,
    )?;
    std::fs::write(out_dir.join("latency.svg"), crate::report::svg(report))?;
    Ok(())
}
