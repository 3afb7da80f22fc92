//! The `burst sse` scenario and its control: the burst with live-feed subscribers
//! connected throughout (see `sse`), then again with the same bytes streamed by a minimal
//! server in this process (see `loopback`), to tell Herald's cost from the bytes'.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{DB_NAME, Run};
use crate::loopback::Blaster;
use crate::pg::{commit_timestamps, psql_output};
use crate::process::{TOKEN, open_files_limit};
use crate::results::{SSE_DROP_TARGET_PCT, ScenarioResult, SseResult};
use crate::sse::{self, Subscribers};
use crate::stats::{Latency, round};

/// The burst again, with live-feed subscribers connected throughout.
pub const BURST_SSE: &str = "burst sse";
/// The control of `burst sse`: the same bytes from a minimal server (see `loopback`).
pub const BURST_SSE_CONTROL: &str = "burst sse control";

/// [`Run::commit_lags`]: the fields of [`SseResult`] named `commit_lag*`.
#[derive(Default)]
struct CommitLags {
    lag: Option<Latency>,
    samples: u64,
    transactions: u64,
    early: u64,
    unavailable: Option<String>,
}

/// Webhooks a scenario delivered: every message accepted, to every endpoint, but the lost.
pub(super) fn delivered(result: &ScenarioResult) -> u64 {
    ((result.messages as u64).saturating_sub(result.send_errors) * result.fan_out as u64)
        .saturating_sub(result.lost as u64)
}

impl Run {
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

    /// The burst, with `subscribers` live-feed subscriptions to its application open from
    /// before the first message to after the last attempt event: the feed's lag (attempt
    /// → subscriber), whether every subscriber got every attempt, and what the
    /// subscriptions cost the deliveries against `baseline` (the plain burst's delivered/s).
    pub(super) async fn burst_sse(
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
    pub(super) async fn burst_sse_control(
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
        let blaster = Blaster::start(event_bytes, Duration::from_millis(25), move || {
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
    fn commit_lags(&self, stats: &[sse::Stats], epoch_us: i64) -> CommitLags {
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
        let committed = match commit_timestamps(&self.server_url, DB_NAME, &xids) {
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
            if let Some(limit) = open_files_limit(&pid) {
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
}
