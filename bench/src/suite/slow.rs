//! The `slow endpoint` scenario: one healthy endpoint's latency while its neighbour on
//! the same application takes 2 s per request.

use std::time::Duration;

use serde_json::json;

use super::Run;
use crate::receiver::Behaviour;
use crate::results::ScenarioResult;

impl Run {
    /// The healthy endpoint's latency while a neighbour takes 2 s per request.
    pub(super) async fn slow_neighbour(
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
}
