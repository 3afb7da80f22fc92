//! Runs removals (src/db/removals.rs): every process deletes the history of removed
//! applications and endpoints a batch at a time, the removal that waited longest first, so
//! that one tenant's large removal neither holds a long transaction nor holds up another's.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::db::removals::{self, BATCH, RemovalState};

/// Pause between batches, so a large removal leaves the database to normal traffic too.
const PAUSE: Duration = Duration::from_millis(20);
/// Pause when a removal waits for a request under way to its endpoint (or a batch
/// failed): the removal goes to the back of the queue meanwhile.
const WAIT: Duration = Duration::from_millis(250);
/// How often an idle process looks for removals queued by others (or left by a process
/// that stopped).
const POLL: Duration = Duration::from_secs(5);

/// Wakes this process's remover when a removal is queued here.
#[derive(Clone)]
pub struct Removals(Arc<Notify>);

impl Removals {
    pub fn spawn(pool: PgPool, cancel: CancellationToken) -> Self {
        let wake = Arc::new(Notify::new());
        tokio::spawn(run(pool, wake.clone(), cancel));
        Self(wake)
    }

    /// A removal was queued: start on it now rather than at the next poll.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

async fn run(pool: PgPool, wake: Arc<Notify>, cancel: CancellationToken) {
    loop {
        let batch = async {
            let mut conn = pool.acquire().await?;
            removals::step(&mut conn, BATCH).await
        };
        let pause = match batch.await {
            Ok(Some(batch)) => {
                let r = &batch.removal;
                if r.state == RemovalState::Done {
                    info!(removal = %r.id, app = %r.app_id, batches = r.batches,
                          messages = r.removed.messages, deliveries = r.removed.deliveries,
                          attempts = r.removed.attempts, "removal finished");
                }
                if batch.waiting { WAIT } else { PAUSE }
            }
            Ok(None) => {
                tokio::select! {
                    _ = wake.notified() => {},
                    _ = tokio::time::sleep(POLL) => {},
                    _ = cancel.cancelled() => return,
                }
                continue;
            }
            Err(e) => {
                warn!(error = %e, "a removal batch failed; trying again");
                WAIT
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {},
            _ = cancel.cancelled() => return,
        }
    }
}
