//! One subscriber's task: it catches up from the log when it must, then follows the live
//! broadcast, and goes back to the log whenever it falls behind the broadcast or its budget.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::Shared;
use super::budget::{Gone, Out};
use super::event::{Batch, Event, Item};
use super::slice::Slice;
use crate::db::events::Filter;
use crate::domain::Position;

/// Feeds one subscriber: catch-up from the log when needed (no `live` yet), then the live
/// broadcast. Positions only move forward, so an event seen both ways is sent once.
pub(super) async fn follow(
    shared: &Shared,
    filter: Filter,
    start: Position,
    live: Option<broadcast::Receiver<Batch>>,
    out: Out,
) {
    let mut last = start;
    let mut sent_any = live.is_none();
    let mut live = match live {
        Some(live) => live,
        None => match catch_up(shared, &filter, &mut last, &mut sent_any, &out).await {
            Ok(live) => live,
            Err(Gone) => return,
        },
    };
    loop {
        let lagged = match live.recv().await {
            Ok(batch) => {
                let wanted = |e: &Arc<Event>| e.position > last && e.matches(&filter);
                let item = if batch.events.iter().all(wanted) {
                    // The common case of a subscriber following everything: no copy.
                    Some(Item::Batch(batch.clone()))
                } else {
                    let matching: Vec<Arc<Event>> =
                        batch.events.iter().filter(|e| wanted(e)).cloned().collect();
                    (!matching.is_empty()).then_some(Item::Events(matching))
                };
                match item.map(|item| out.offer(item)).transpose() {
                    Err(Gone) => return,
                    // Over budget: dropped, and read again from the log once there is room.
                    Ok(Some(Some(_))) => true,
                    Ok(sent) => {
                        sent_any |= sent.is_some();
                        if let Some(newest) = batch.events.last() {
                            last = last.max(newest.position);
                        }
                        false
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                debug!(missed, "feed subscriber lagged; catching up from the log");
                true
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if lagged {
            // Let go of the live buffer while catching up: this client should not keep
            // batches alive there for as long as it takes to read the log.
            drop(live);
            let resume_from = sent_any.then_some(last);
            let marker = Item::Lagged { resume_from };
            let held = out.budget.hold(marker.pinned());
            if out.send(marker, held).is_err() {
                return;
            }
            live = match catch_up(shared, &filter, &mut last, &mut sent_any, &out).await {
                Ok(live) => live,
                Err(Gone) => return,
            };
        }
    }
}

/// Sends every settled event after `last` that matches, as the client makes room for it,
/// moving `last`. Stops at the first unsettled event: the live broadcast will carry it once
/// it settles. Returns the live subscription to go on with, taken before the last read of
/// the log, so that nothing falls between the two.
async fn catch_up(
    shared: &Shared,
    filter: &Filter,
    last: &mut Position,
    sent_any: &mut bool,
    out: &Out,
) -> Result<broadcast::Receiver<Batch>, Gone> {
    loop {
        // Nothing more is read for a client until it has taken at least half of what it
        // holds, and then no more than what fits.
        out.budget.room_for(out.budget.limit / 2).await;
        let room = out.budget.limit.saturating_sub(out.budget.held());
        let live = shared.live.subscribe();
        let page = loop {
            let page = async {
                let mut conn = shared.pool.acquire().await?;
                Slice::fitting(&mut conn, *last, filter, room).await
            };
            match page.await {
                Ok(page) => break page,
                Err(e) => {
                    warn!(error = %e, "feed catch-up failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if out.tx.is_closed() {
                        return Err(Gone);
                    }
                }
            }
        };
        let done = !page.cut && !page.more();
        if let Some((newest, _)) = page.events.last() {
            *last = *newest;
        }
        let matching: Vec<Arc<Event>> = page
            .events
            .into_iter()
            .filter_map(|(_, e)| e.map(Arc::new))
            .collect();
        if !matching.is_empty() {
            let item = Item::Events(matching);
            let held = out.budget.hold(item.pinned());
            out.send(item, held)?;
            *sent_any = true;
        }
        if done {
            return Ok(live);
        }
    }
}
