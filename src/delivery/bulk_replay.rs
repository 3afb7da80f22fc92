//! Bulk replay (`POST .../recover`, the API's "recover"; not crash recovery, which is the
//! lease sweep's): an endpoint's dead deliveries in a window go back to pending in batches,
//! with progress for whoever asked. A recover is stored with a cursor and a lease, so when
//! its process stops part-way any process takes it over and carries on after the last batch
//! that committed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use uuid::Uuid;

use crate::db::replays::{self, Recovery, RecoveryProgress, Refused};
use crate::domain::{AppId, EndpointId};

/// Pause between batches, so a large recover leaves the database to normal traffic too.
const PAUSE: Duration = Duration::from_millis(20);
/// How often a process looks for recovers whose runner stopped.
const TAKEOVER_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct BulkReplays(Arc<Inner>);

struct Inner {
    pool: PgPool,
    /// This process's identity in `recovery.locked_by`.
    runner: Uuid,
    /// Deliveries queued per batch (one short transaction each).
    batch: i64,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// A recover that was accepted: its total, and its progress as batches commit.
pub struct Started {
    pub recovery: Recovery,
    pub progress: mpsc::UnboundedReceiver<RecoveryProgress>,
}

impl BulkReplays {
    pub fn spawn(pool: PgPool, batch: usize, cancel: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            pool,
            runner: Uuid::now_v7(),
            batch: batch as i64,
            tasks: TaskTracker::new(),
            cancel,
        });
        tokio::spawn(take_over(inner.clone()));
        Self(inner)
    }

    /// Records a recover and starts running it here. The work belongs to the server from
    /// now on: dropping the progress receiver (a client that went away) does not stop it.
    pub async fn start(
        &self,
        app: AppId,
        endpoint: EndpointId,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> sqlx::Result<Result<Started, Refused>> {
        let mut conn = self.0.pool.acquire().await?;
        let recovery =
            match replays::create_recovery(&mut conn, app, endpoint, since, until, self.0.runner)
                .await?
            {
                Ok(r) => r,
                Err(refused) => return Ok(Err(refused)),
            };
        info!(recovery = %recovery.id, total = recovery.total, %endpoint, "recover started");
        let (tx, progress) = mpsc::unbounded_channel();
        self.0
            .tasks
            .spawn(run(self.0.clone(), recovery.id, Some(tx)));
        Ok(Ok(Started { recovery, progress }))
    }

    /// Resolves once every recover running here has stopped after the cancellation token
    /// fired, having handed its lease back: a restart then resumes it at once.
    pub async fn join(&self) {
        self.0.tasks.close();
        self.0.tasks.wait().await;
    }
}

/// Runs one recover batch by batch until it is finished, its lease is lost, or the process
/// shuts down (then the lease is given back, for the next start or another process).
async fn run(
    inner: Arc<Inner>,
    id: Uuid,
    progress: Option<mpsc::UnboundedSender<RecoveryProgress>>,
) {
    loop {
        if inner.cancel.is_cancelled() {
            release(&inner, id).await;
            return;
        }
        let batch = async {
            let mut conn = inner.pool.acquire().await?;
            replays::recover_batch(&mut conn, id, inner.runner, inner.batch).await
        };
        match batch.await {
            Ok(Some(p)) => {
                let finished = p.finished;
                if finished {
                    info!(recovery = %id, queued = p.queued, "recover finished");
                }
                if let Some(tx) = &progress {
                    // A receiver that went away only stops the reports, not the work.
                    let _ = tx.send(p);
                }
                if finished {
                    return;
                }
            }
            Ok(None) => {
                warn!(recovery = %id, "recover lease lost; another process runs it");
                return;
            }
            Err(e) => {
                warn!(recovery = %id, error = %e, "recover batch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PAUSE) => {},
            _ = inner.cancel.cancelled() => {},
        }
    }
}

async fn release(inner: &Inner, id: Uuid) {
    if let Err(e) = replays::release_recovery(&inner.pool, id, inner.runner).await {
        warn!(recovery = %id, error = %e, "could not hand back a recover; its lease will expire");
    }
}

/// Resumes recovers nobody is running: left by a process that stopped, or given back at
/// shutdown.
async fn take_over(inner: Arc<Inner>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TAKEOVER_EVERY) => {},
            _ = inner.cancel.cancelled() => return,
        }
        loop {
            match replays::claim_abandoned_recovery(&inner.pool, inner.runner).await {
                Ok(Some(id)) => {
                    info!(recovery = %id, "resuming a recover");
                    inner.tasks.spawn(run(inner.clone(), id, None));
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "looking for abandoned recovers failed");
                    break;
                }
            }
        }
    }
}
