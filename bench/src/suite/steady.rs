//! The `steady` scenario: an open loop at a fixed rate, sampling the backlog (accepted,
//! not yet received) once a second to tell whether Herald keeps up.

use std::time::{Duration, Instant};

use serde_json::json;

use super::Run;
use crate::driver::{Load, Message};
use crate::results::ScenarioResult;

impl Run {
    pub(super) async fn steady(
        &mut self,
        rate: f64,
        length: Duration,
    ) -> anyhow::Result<ScenarioResult> {
        let load = Load {
            count: ((rate * length.as_secs_f64()) as usize) / self.scale,
            concurrency: 256,
            rate: Some(rate),
            payload_bytes: 256,
            message: Message::FILLER,
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
}
