//! `herald-bench`: measures Herald's delivery speed on this machine.
//!
//! - `suite`: everything `make bench` reports (ceiling, the scenarios, table, JSON, SVG).
//! - `receive`: the counting receiver on its own.
//! - `drive`: the load driver on its own, against a running Herald.
//! - `report`: the table and chart of a saved run.

mod driver;
mod loopback;
mod pg;
mod process;
mod receiver;
mod report;
mod results;
mod sse;
mod stats;
mod suite;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole benchmark against a PostgreSQL cluster.
    Suite {
        /// Superuser connection to the cluster to benchmark on.
        #[arg(long, env = "DATABASE_URL")]
        database_url: String,
        #[arg(long, default_value = "target/release/herald")]
        herald: PathBuf,
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Divide every message count by this (a quick smoke run).
        #[arg(long, default_value_t = 1)]
        scale: usize,
        /// Seconds of pgbench for the ceiling; 0 skips it.
        #[arg(long, default_value_t = 15)]
        ceiling_secs: u32,
        /// Have the receiver verify every signature.
        #[arg(long)]
        verify: bool,
        /// Extra environment for `herald serve`, as KEY=VALUE (repeatable).
        #[arg(long = "herald-env", value_parser = parse_kv)]
        herald_env: Vec<(String, String)>,
        /// Run only scenarios whose names contain this, or with `=name` only that one
        /// (repeatable). `burst sse` and `history burst` also run `burst`, their baseline, and
        /// so does the validation pair (either of `burst validated` and `burst unvalidated`
        /// selects both).
        #[arg(long)]
        only: Vec<String>,
        /// Live-feed (SSE) subscribers during `burst sse`; 0 skips that scenario.
        #[arg(long, default_value_t = 1000)]
        sse_subscribers: usize,
        /// Messages of history the `history` scenario loads through SQL (divided by
        /// --scale).
        #[arg(long, default_value_t = 3_000_000)]
        history_messages: usize,
        /// Seconds of steady load in `history soak` (not divided by --scale).
        #[arg(long, default_value_t = 360)]
        soak_secs: u64,
        /// Rounds of each of `burst validated` and `burst unvalidated`, alternating; 0
        /// skips them.
        #[arg(long, default_value_t = 4)]
        validation_rounds: usize,
        /// Another build of Herald to compare this one with: the selected scenarios run
        /// with each in turn (`make bench ARGS="--baseline <commit>"` builds that commit
        /// and passes its binary here).
        #[arg(long)]
        baseline_herald: Option<PathBuf>,
        /// What to call the baseline in the results (its commit).
        #[arg(long, default_value = "baseline")]
        baseline_name: String,
        /// Rounds of the selected scenarios with each binary, the order swapped each round.
        #[arg(long, default_value_t = 2)]
        baseline_rounds: usize,
        /// What to call this build in a comparison, when `--herald` is not this tree's
        /// (default: this tree's commit).
        #[arg(long)]
        current_name: Option<String>,
    },
    /// Print the table and redraw the chart of a saved run.
    Report {
        #[arg(default_value = "bench/results/latest.json")]
        json: PathBuf,
    },
    /// Run the counting receiver until Ctrl-C; endpoints are /e/{name}.
    Receive {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Answer every request after this many milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Share of requests to answer with 500 (0.0 to 1.0).
        #[arg(long, default_value_t = 0.0)]
        fail_share: f64,
        /// Verify every signature with this secret.
        #[arg(long)]
        secret: Option<String>,
    },
    /// Send messages to one application of a running Herald.
    Drive {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "HERALD_ADMIN_TOKEN")]
        token: String,
        /// Application id or uid; when absent, one is created with `fan_out` endpoints
        /// pointing at `receiver`.
        #[arg(long)]
        app: Option<String>,
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        receiver: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Offer this many messages per second (open loop) instead of a closed loop.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 256)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 1)]
        fan_out: usize,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A thousand SSE subscribers need a socket each here and in `herald serve`, which
    // inherits this limit.
    if let Err(e) = process::raise_open_files_limit() {
        eprintln!("could not raise the open-file limit: {e}");
    }
    match cli.command {
        Cmd::Suite {
            database_url,
            herald,
            out,
            scale,
            ceiling_secs,
            verify,
            herald_env,
            only,
            sse_subscribers,
            history_messages,
            soak_secs,
            validation_rounds,
            baseline_herald,
            baseline_name,
            baseline_rounds,
            current_name,
        } => {
            let settings = suite::Settings {
                server_url: database_url,
                herald_bin: herald,
                out_dir: out.clone(),
                scale,
                ceiling_secs,
                verify_signatures: verify,
                herald_env,
                only,
                sse_subscribers,
                history_messages,
                soak_secs,
                validation_rounds,
            };
            if let Some(baseline) = baseline_herald {
                let comparison = suite::compare::compare(
                    settings,
                    baseline,
                    baseline_name,
                    current_name,
                    baseline_rounds,
                )
                .await?;
                let written = suite::compare::write(&comparison, &out)?;
                for run in &comparison.runs {
                    println!("round {} {:?}:", run.round, run.side);
                    println!("{}", report::table(&run.report));
                }
                println!("{}", suite::compare::table(&comparison));
                println!("wrote {}", written.display());
                let failed: Vec<&str> = comparison
                    .scenarios
                    .iter()
                    .filter(|s| s.lost > 0 || s.duplicates > 0)
                    .map(|s| s.name.as_str())
                    .collect();
                anyhow::ensure!(
                    failed.is_empty(),
                    "lost or duplicated deliveries in {failed:?}"
                );
                return Ok(());
            }
            let report = suite::run(&settings).await?;
            suite::write_outputs(&report, &out)?;
            println!("{}", report::table(&report));
            println!("wrote {0}/latest.json and {0}/latency.svg", out.display());
            let failed: Vec<&str> = report
                .scenarios
                .iter()
                .filter(|s| {
                    s.lost > 0
                        || s.duplicates > 0
                        || s.sse.as_ref().is_some_and(|f| f.missing > 0)
                        || s.validation
                            .as_ref()
                            .is_some_and(|v| !v.checked() || s.send_errors > 0)
                })
                .map(|s| s.name.as_str())
                .collect();
            anyhow::ensure!(
                failed.is_empty(),
                "lost or duplicated deliveries, attempt events missing from the live feed, or a \
                 validation round that did not validate as its name says or refused a message, \
                 in {failed:?}"
            );
        }
        Cmd::Report { json } => {
            let report: results::Report = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
            println!("{}", report::table(&report));
            let svg = json.with_file_name("latency.svg");
            std::fs::write(&svg, report::svg(&report))?;
            println!("wrote {}", svg.display());
        }
        Cmd::Receive {
            listen,
            delay_ms,
            fail_share,
            secret,
        } => {
            let r = receiver::Receiver::start(listen).await?;
            let secret = secret
                .map(|s| herald::domain::SigningSecret::parse(&s))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            r.set_default(receiver::Behaviour {
                delay: Duration::from_millis(delay_ms),
                fail_share,
                secret,
            });
            println!(
                "receiving on http://{}/e/{{name}}; Ctrl-C prints the counts",
                r.addr
            );
            tokio::signal::ctrl_c().await?;
            let c = &r.counts;
            println!(
                "requests {} distinct {} duplicates {} failed on purpose {} bad signatures {}",
                c.requests.load(Ordering::Relaxed),
                r.distinct(),
                c.duplicates.load(Ordering::Relaxed),
                c.failed_on_purpose.load(Ordering::Relaxed),
                c.bad_signatures.load(Ordering::Relaxed)
            );
        }
        Cmd::Drive {
            url,
            token,
            app,
            receiver,
            count,
            concurrency,
            rate,
            payload_bytes,
            fan_out,
        } => {
            let api = driver::Api::new(&url, &token);
            let app = match app {
                Some(a) => a,
                None => {
                    let urls: Vec<String> = (0..fan_out)
                        .map(|i| format!("{}/e/drive-{i}", receiver.trim_end_matches('/')))
                        .collect();
                    api.app_with_endpoints("herald-bench drive", &urls).await?.0
                }
            };
            let out = driver::drive(
                &api,
                &app,
                &driver::Load {
                    count,
                    concurrency,
                    rate,
                    payload_bytes,
                    message: driver::Message::FILLER,
                },
            )
            .await;
            let secs = out.finished.duration_since(out.started).as_secs_f64();
            println!(
                "app {app}: accepted {} in {secs:.2}s ({:.0}/s), errors {}",
                out.accepted.len(),
                out.accepted.len() as f64 / secs,
                out.errors
            );
        }
    }
    Ok(())
}
