//! Retention: each process keeps the history partitioned and within `HERALD_RETENTION`
//! (src/db/history.rs, migration 0016), one process at a time. A process that finds
//! another at it skips its turn; one that dies half-way leaves each step done or undone.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::db::history::{self, Layout, Step};

/// Makes sure the partitions for now and the near future exist before returning (a
/// failure is logged: rows then wait in the default partition, nothing is lost), then
/// keeps at it until `cancel`.
pub async fn spawn(pool: PgPool, layout: Layout, cancel: CancellationToken) {
    run(&pool, layout).await;
    let every = (layout.interval / 5).clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => run(&pool, layout).await,
            }
        }
    });
}

async fn run(pool: &PgPool, layout: Layout) {
    match history::manage(pool, layout).await {
        Ok(steps) => {
            for step in steps {
                match step {
                    Step::Did(what) => info!("history: {what}"),
                    Step::Kept(what) => warn!("history: {what}"),
                    Step::Busy => {}
                }
            }
        }
        // Its locks were busy (it gives way to sends and claims): the next turn tries again.
        Err(e) if history::lock_timed_out(&e) => {
            info!("history: the tables were busy; trying again at the next turn")
        }
        Err(e) => warn!(error = %e, "history: could not manage the partitions; trying again later"),
    }
}
