//! `herald-bench suite`: the ceiling, a `herald serve` process, and the scenarios, in one run.
//!
//! [`run`] picks the scenarios; [`Run`] is the driver they share (an application on the
//! receiver, a load, and [`Run::measure`]); each scenario beyond the closed loops
//! (`burst`, `low load`, `fan-out`) has a module of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use herald::domain::SigningSecret;
use serde_json::json;

use crate::driver::{self, Api, Load, Message};
use crate::pg::{pgbench_ceiling, recreate_database};
use crate::process::{HeraldProcess, TOKEN, cpu_seconds, peak_rss_mb, reset_peak_rss};
use crate::receiver::{Behaviour, Receiver};
use crate::results::{CpuSeconds, Report, ScenarioResult};
use crate::stats::{Latency, round};

mod burst_sse;
pub mod compare;
mod history;
mod slow;
mod soak;
mod steady;
mod validation;

use burst_sse::BURST_SSE;
use validation::{BURST_UNVALIDATED, BURST_VALIDATED};

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
    /// Rounds of each of `burst validated` and `burst unvalidated`; 0 skips them.
    pub validation_rounds: usize,
}

/// The database `herald serve` runs on.
const DB_NAME: &str = "herald_bench";

pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let ceiling = if settings.ceiling_secs > 0 {
        let tps = pgbench_ceiling(&settings.server_url, settings.ceiling_secs)?;
        eprintln!("ceiling: pgbench, 64 clients, one-row insert per transaction: {tps:.0} tps");
        Some(tps)
    } else {
        None
    };

    let db_url = recreate_database(&settings.server_url, DB_NAME)?;
    let mut herald = settings.start_herald(&db_url, &[], "herald.log").await?;
    let receiver = Receiver::start("127.0.0.1:0".parse()?).await?;
    let mut run = Run::on(settings, &herald, receiver);

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
    let (history, soak) = (wanted(history::HISTORY_BURST), wanted(soak::HISTORY_SOAK));
    // Either of the pair selects both: one alone measures nothing.
    let validation =
        settings.validation_rounds > 0 && (wanted(BURST_VALIDATED) || wanted(BURST_UNVALIDATED));
    let mut burst_rate = None;
    // The plain burst is also the baseline of `burst sse`, run right before it, and of
    // `history burst`; before the validation pair, it warms Herald up, so that the pair's
    // first round does not pay for a fresh process.
    if wanted("burst") || sse || history || validation {
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
    if validation {
        let rounds = run
            .validation_pair(settings.validation_rounds, 10_000, 64)
            .await?;
        scenarios.extend(rounds);
    }
    herald.stop();
    if history {
        let receiver = run.receiver.clone();
        scenarios.push(history::burst_on_history(settings, receiver, burst_rate).await?);
    }
    if soak {
        scenarios.push(soak::soak(settings, run.receiver.clone()).await?);
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
            message: Message::FILLER,
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

    /// Drives the load, waits for every delivery to the `paths` endpoints, and measures.
    async fn measure(
        &mut self,
        name: &str,
        app: &str,
        paths: &[String],
        load: &Load,
        offered: String,
    ) -> anyhow::Result<ScenarioResult> {
        eprintln!("{name}: {} messages, {offered}", load.count);
        reset_peak_rss(self.herald_pid);
        let cpu_before = cpu_seconds(self.herald_pid);
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
        let cpu_after = cpu_seconds(self.herald_pid);
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
            validation: None,
        })
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

impl Settings {
    /// `herald serve` on `db_url`, with `env` beside `--herald-env` (and over it), logging
    /// to `log` in the output directory.
    async fn start_herald(
        &self,
        db_url: &str,
        env: &[(&str, &str)],
        log: &str,
    ) -> anyhow::Result<HeraldProcess> {
        HeraldProcess::start(
            &self.herald_bin,
            &self.out_dir,
            &self.herald_env,
            db_url,
            env,
            log,
        )
        .await
    }
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
