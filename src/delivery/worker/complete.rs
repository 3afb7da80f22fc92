//! The completer: writes finished attempts back in batches, on a connection of its own.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::{MAX_BATCH, Shared};
use crate::db::deliveries::{self, Completion};

/// Writes completions in batches until the pool has drained.
pub(super) async fn complete(shared: Arc<Shared>, mut done: mpsc::Receiver<Completion>) {
    // A connection of its own: under load the pool's connections are queued for by every
    // API request, and each wait here would delay the record of every attempt in the batch.
    let mut conn: Option<PgConnection> = None;
    loop {
        let first = tokio::select! {
            c = done.recv() => c,
            _ = shared.drained.cancelled() => done.try_recv().ok(),
        };
        let Some(first) = first else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match done.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        // Nothing here makes room at an endpoint: each of these deliveries left its room
        // when its request ended (counted finished, see `deliver`), and the commit only
        // turns "finished" into "written". So the completer neither unmarks a full endpoint
        // nor wakes the dispatcher: an unmark here could erase the mark of a claim that
        // filled the endpoint again since, and the next request to end there would find
        // nothing to wake for.
        //
        // A bug in the write must not stop the completer, or no attempt of this process
        // would be recorded again while it goes on sending: the batch is logged and left
        // to its leases (retried when they expire), and the next batch starts on a new
        // connection.
        let written = AssertUnwindSafe(write_completions(&shared, &mut conn, &batch))
            .catch_unwind()
            .await;
        if written.is_err() {
            error!(
                count = batch.len(),
                "writing completions panicked; these deliveries will be retried after their lease"
            );
            conn = None;
        }
        // Written (or left to their leases, in flight again as far as anyone can tell):
        // no longer finished and unwritten.
        {
            let mut finished = shared.finished.lock().expect("finished set poisoned");
            for c in &batch {
                finished.remove(&c.delivery_id);
            }
        }
    }
}

/// Retries a failed write a few times; if the database stays away, the rows keep their
/// leases, which expire, and the deliveries are attempted again (at-least-once).
async fn write_completions(shared: &Shared, conn: &mut Option<PgConnection>, batch: &[Completion]) {
    let mut wait = Duration::from_millis(100);
    for _ in 0..8 {
        let written = async {
            let c = match conn {
                Some(c) => c,
                None => {
                    conn.insert(PgConnection::connect_with(&shared.pool.connect_options()).await?)
                }
            };
            let mut tx = c.begin().await?;
            let completed = deliveries::complete(
                &mut tx,
                shared.worker_id,
                batch,
                shared.settings.disable_after,
            )
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(completed)
        }
        .await;
        match written {
            Ok(completed) => {
                if completed.len() < batch.len() {
                    let completed: HashSet<_> = completed.into_iter().collect();
                    for c in batch.iter().filter(|c| !completed.contains(&c.delivery_id)) {
                        warn!(delivery_id = %c.delivery_id, attempt = c.attempt_count,
                            "lease lost before completion: a newer attempt owns this delivery, or it was deleted");
                    }
                }
                return;
            }
            Err(e) => {
                warn!(error = %e, count = batch.len(), "recording attempts failed; retrying");
                *conn = None;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    error!(
        count = batch.len(),
        "could not record attempts; they will be retried when their leases expire"
    );
}
