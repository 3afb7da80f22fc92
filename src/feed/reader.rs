//! The process's one reader of the event log, which broadcasts each read to the live
//! subscribers in batches they can hold, and the pruning of events past their retention.

use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Shared;
use super::event::{Batch, Event};
use super::slice::Slice;
use crate::db::events::{self, Filter};
use crate::domain::Position;

/// The process's one reader of the log.
pub(super) async fn read(shared: Arc<Shared>, start: Position) {
    let cancel = shared.cancel.clone();
    let mut cursor = start;
    // While events wait to settle, look again soon, backing off; otherwise wait for a
    // wake-up or the poll. The reader keeps its own connection: it never queues for one
    // behind catching-up subscribers.
    let mut recheck = Duration::ZERO;
    let mut conn: Option<PoolConnection<Postgres>> = None;
    loop {
        let read_at = tokio::time::Instant::now();
        let page = async {
            if conn.is_none() {
                conn = Some(shared.pool.acquire().await?);
            }
            let c = conn.as_mut().expect("just acquired");
            // Nobody watching: move past the events without rendering them. Counted after
            // the read, so a subscriber that arrived during it gets this page; one that
            // arrives later caught up from the log past these events anyway.
            let watched = || shared.live.receiver_count() > 0;
            Slice::after(c, cursor, &Filter::default(), watched).await
        };
        let page = match page.await {
            Ok(page) => page,
            Err(e) => {
                warn!(error = %e, "feed reader cannot read the event log; retrying");
                conn = None;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        let (waiting, more) = (page.waiting(), page.more());
        let progressed = !page.events.is_empty();
        if let Some((newest, _)) = page.events.last() {
            cursor = *newest;
        }
        let events: Vec<Arc<Event>> = page
            .events
            .into_iter()
            .filter_map(|(_, e)| e.map(Arc::new))
            .collect();
        // Batches small enough that a subscriber can hold two within its budget: one being
        // written, one waiting.
        let batches = batches(events, shared.client_buffer / 2);
        if batches.is_empty() {
            // Unwatched reads render nothing; still, give way once per read.
            tokio::task::yield_now().await;
        }
        for batch in batches {
            // No receivers is fine: nobody is watching.
            let _ = shared.live.send(batch);
            // Let subscribers take this batch before the next one pushes the oldest out.
            tokio::task::yield_now().await;
        }
        shared.head.send_replace(cursor);
        if more {
            continue;
        }
        let wait = if waiting {
            recheck = if progressed || recheck.is_zero() {
                Duration::from_millis(2)
            } else {
                (recheck * 2).min(Duration::from_millis(50))
            };
            recheck
        } else {
            recheck = Duration::ZERO;
            shared.poll_interval
        };
        tokio::select! {
            _ = shared.wake.notified() => {},
            _ = tokio::time::sleep(wait) => {},
            _ = cancel.cancelled() => return,
        }
        // Whatever commits from now until the interval is up comes in the next read.
        if !shared.interval.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep_until(read_at + shared.interval) => {},
                _ = cancel.cancelled() => return,
            }
        }
    }
}

/// Cuts a read of the log into batches that each pin at most `limit` bytes (or hold a
/// single event).
fn batches(events: Vec<Arc<Event>>, limit: usize) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut group: Vec<Arc<Event>> = Vec::new();
    // A batch of several events pins each frame twice: on its own and joined.
    let mut pinned = 0;
    for e in events {
        let cost = e.pinned() + e.frame.len();
        if !group.is_empty() && pinned + cost > limit {
            batches.push(Batch::new(std::mem::take(&mut group)));
            pinned = 0;
        }
        pinned += cost;
        group.push(e);
    }
    if !group.is_empty() {
        batches.push(Batch::new(group));
    }
    batches
}

/// Deletes events older than `retention`, a batch at a time, every minute. Several
/// processes may prune at once; they only contend for the same old rows.
pub(super) async fn prune(pool: PgPool, retention: Duration, cancel: CancellationToken) {
    const BATCH: i64 = 10_000;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {},
            _ = cancel.cancelled() => return,
        }
        loop {
            match events::prune(&pool, retention, BATCH).await {
                Ok(n) if n as i64 == BATCH && !cancel.is_cancelled() => continue,
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %e, "pruning the event log failed");
                    break;
                }
            }
        }
    }
}
