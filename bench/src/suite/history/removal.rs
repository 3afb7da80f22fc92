//! The end of `history burst`: deleting the history's application while another sends.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

use serde_json::json;

use super::sql;
use crate::results::RemovalResult;
use crate::stats::{Latency, round};
use crate::suite::Run;

/// The removal's sampling of open transactions, and the neighbour's sends before it.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const NEIGHBOUR_SENDS: usize = 300;

impl Run {
    /// Deletes `app` and follows its removal to the end, sending to a neighbouring
    /// application meanwhile, one message at a time.
    pub(super) async fn remove(&self, server: &str, app: &str) -> anyhow::Result<RemovalResult> {
        let neighbour = self.api.post("/apps", json!({"name": "neighbour"})).await?;
        let neighbour = neighbour["id"]
            .as_str()
            .context("no application id")?
            .to_owned();
        let mut before = Vec::with_capacity(NEIGHBOUR_SENDS);
        for i in 0..NEIGHBOUR_SENDS {
            before.push(self.timed_send(&neighbour, i).await?);
        }

        let (stop, stopped) = mpsc::channel::<()>();
        let at = server.to_owned();
        let sampler = std::thread::spawn(move || {
            let mut longest: f64 = 0.0;
            while stopped.recv_timeout(SAMPLE_EVERY).is_err() {
                let open = sql(
                    &at,
                    "select coalesce(max(extract(epoch from clock_timestamp() - xact_start)), 0)
                       from pg_stat_activity
                      where application_name = 'herald' and state <> 'idle'
                        and xact_start is not null",
                );
                if let Some(secs) = open.ok().and_then(|s| s.parse::<f64>().ok()) {
                    longest = longest.max(secs * 1000.0);
                }
            }
            longest
        });

        let started = Instant::now();
        let id = self.api.queue_removal(&format!("/apps/{app}")).await?;
        let answer_ms = round(started.elapsed().as_secs_f64() * 1000.0);
        let mut during = Vec::new();
        let done = loop {
            for _ in 0..20 {
                during.push(self.timed_send(&neighbour, during.len()).await?);
            }
            if let Some(done) = self.api.removal_done(&id).await? {
                break done;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(3600),
                "removal {id} did not finish within an hour"
            );
        };
        let removal_secs = round(started.elapsed().as_secs_f64());
        let _ = stop.send(());
        let longest_transaction_ms = round(sampler.join().unwrap_or(0.0));
        let count = |k: &str| done["removed"][k].as_u64().unwrap_or(0);
        let result = RemovalResult {
            answer_ms,
            removal_secs,
            batches: done["batches"].as_u64().unwrap_or(0),
            messages: count("messages"),
            deliveries: count("deliveries"),
            attempts: count("attempts"),
            longest_transaction_ms,
            neighbour_sends_during: during.len(),
            neighbour_before: Latency::of(&mut before),
            neighbour_during: Latency::of(&mut during),
        };
        eprintln!(
            "history: removal answered in {answer_ms} ms, done in {removal_secs} s \
             ({} batches), longest transaction {longest_transaction_ms} ms; neighbour p99 \
             {:.1} ms before, {:.1} ms during",
            result.batches, result.neighbour_before.p99_ms, result.neighbour_during.p99_ms
        );
        Ok(result)
    }

    async fn timed_send(&self, app: &str, n: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.api
            .post(
                &format!("/apps/{app}/messages"),
                json!({"event_type": "neighbour.ping", "payload": {"n": n}}),
            )
            .await?;
        Ok(started.elapsed())
    }
}
