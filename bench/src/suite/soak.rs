//! The `history soak` scenario: steady load with a retention of two minutes, sampling
//! the database's size to tell whether it stays flat.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Run, Settings};
use crate::driver::{Load, Message};
use crate::pg::{psql_output, recreate_database};
use crate::receiver::Receiver;
use crate::results::{SOAK_FLAT_PCT, ScenarioResult, SoakResult};
use crate::stats::round;

pub const HISTORY_SOAK: &str = "history soak";
/// The soak's database.
const SOAK_DB: &str = "herald_soak";
const SOAK_RATE: f64 = 200.0;
const SOAK_SAMPLE_EVERY: Duration = Duration::from_secs(10);
const SOAK_ENV: [(&str, &str); 4] = [
    ("HERALD_RETENTION", "2m"),
    ("HERALD_PARTITION_INTERVAL", "15s"),
    ("HERALD_RETRY_SCHEDULE", "1s,2s"),
    ("HERALD_IDEMPOTENCY_WINDOW", "1m"),
];

/// `history soak`: steady load for `--soak-secs` on a fresh database with a retention
/// of two minutes in 15 s partitions, sampling the database's size.
pub(super) async fn soak(
    settings: &Settings,
    receiver: Receiver,
) -> anyhow::Result<ScenarioResult> {
    let server = settings.server_url.clone();
    let db_url = recreate_database(&server, SOAK_DB)?;
    let mut herald = settings
        .start_herald(&db_url, &SOAK_ENV, "herald-soak.log")
        .await?;
    let mut run = Run::on(settings, &herald, receiver);
    let (app, paths) = run.setup(HISTORY_SOAK, 1).await?;
    let secs = settings.soak_secs;
    let load = Load {
        count: (SOAK_RATE * secs as f64) as usize,
        concurrency: 256,
        rate: Some(SOAK_RATE),
        payload_bytes: 256,
        message: Message::FILLER,
    };
    // Samples on a thread of its own (psql blocks) until told to stop.
    let (stop, stopped) = mpsc::channel::<()>();
    let sampler = std::thread::spawn(move || {
        let start = Instant::now();
        let mut samples = Vec::new();
        loop {
            if let Ok(bytes) = psql_output(
                &server,
                SOAK_DB,
                "select pg_database_size(current_database())",
            )
            .and_then(|s| Ok(s.parse::<f64>()?))
            {
                samples.push((round(start.elapsed().as_secs_f64()), round(bytes / 1e6)));
            }
            if !matches!(
                stopped.recv_timeout(SOAK_SAMPLE_EVERY),
                Err(mpsc::RecvTimeoutError::Timeout)
            ) {
                return samples;
            }
        }
    });
    let offered =
        format!("open loop, {SOAK_RATE} msg/s for {secs} s; retention 2m, 15 s partitions");
    let measured = run
        .measure(HISTORY_SOAK, &app, &paths, &load, offered)
        .await;
    let _ = stop.send(());
    let samples = sampler.join().expect("the sampler does not panic");
    let partitions = psql_output(
        &settings.server_url,
        SOAK_DB,
        "select count(*) from herald.history_partition where kind = 'message'",
    )
    .map(|n| n.parse().unwrap_or(0));
    herald.stop();
    let mut result = measured?;
    let half: Vec<f64> = samples
        .iter()
        .filter(|s| s.0 >= secs as f64 / 2.0 && s.0 <= secs as f64)
        .map(|s| s.1)
        .collect();
    let min = half.iter().copied().fold(f64::INFINITY, f64::min);
    let max = half.iter().copied().fold(0.0, f64::max);
    result.soak = Some(SoakResult {
        env: SOAK_ENV
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        rate: SOAK_RATE,
        secs,
        samples,
        second_half_min_mb: if half.is_empty() { 0.0 } else { min },
        second_half_max_mb: max,
        flat: !half.is_empty() && max <= min * (1.0 + SOAK_FLAT_PCT / 100.0),
        partitions_at_end: partitions?,
    });
    Ok(result)
}
