//! The live feed: one reader per process follows the event log (`herald.event`) in commit-
//! safe order and broadcasts each event to this process's subscribers (SSE streams, the
//! admin WebSocket). Every process reads the same log, so a subscriber on process A sees
//! what process B did; NOTIFY only wakes readers up early.
//!
//! Subscribers never hold anything up: the broadcast buffer is bounded, and a subscriber
//! that falls behind it is told so and catches up from the log itself, at its own pace.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::db::events::{self, Filter, Logged};
use crate::domain::{AppId, EndpointId, Position};

/// The NOTIFY channel the event log's triggers announce on.
pub const CHANNEL: &str = "herald_feed";
/// Events the reader fetches per query, and a catching-up subscriber per page.
const PAGE: i64 = 500;
/// Events waiting to be written to one client.
const CLIENT_BUFFER: usize = 64;

/// One event, rendered once and shared by every subscriber.
#[derive(Debug)]
pub struct Event {
    pub position: Position,
    /// `message.created`, `attempt`, `delivery.dead` or `endpoint.disabled`.
    pub kind: String,
    pub app_id: AppId,
    pub endpoint_id: Option<EndpointId>,
    pub event_type: Option<String>,
    pub outcome: Option<String>,
    /// The event's data as JSON.
    pub data: String,
}

impl Event {
    fn matches(&self, f: &Filter) -> bool {
        f.matches(
            self.app_id,
            self.endpoint_id,
            self.event_type.as_deref(),
            self.outcome.as_deref(),
        )
    }
}

/// What a subscription yields.
#[derive(Debug, Clone)]
pub enum Item {
    Event(Arc<Event>),
    /// The subscriber fell behind the live buffer; what follows comes from the log,
    /// starting right after `resume_from` (the last event it was given), so nothing is
    /// lost or repeated.
    Lagged {
        resume_from: Option<Position>,
    },
}

#[derive(Clone)]
pub struct Feed(Arc<Shared>);

#[derive(Debug, Clone, Copy)]
pub struct FeedSettings {
    /// Fallback wake-up when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// Events older than this are pruned.
    pub retention: Duration,
    /// Events buffered for live subscribers; one further behind catches up from the log.
    pub buffer: usize,
}

impl From<&crate::config::Config> for FeedSettings {
    fn from(c: &crate::config::Config) -> Self {
        Self {
            poll_interval: c.poll_interval,
            retention: c.feed_retention,
            buffer: c.feed_buffer,
        }
    }
}

struct Shared {
    pool: PgPool,
    live: broadcast::Sender<Arc<Event>>,
    /// The position of the last event the reader published.
    head: watch::Sender<Position>,
    wake: Notify,
    poll_interval: Duration,
    subscribers: AtomicUsize,
    cancel: CancellationToken,
}

impl Feed {
    /// Starts this process's reader (and the pruning of events older than `retention`).
    pub fn spawn(pool: PgPool, settings: FeedSettings, cancel: CancellationToken) -> Self {
        let FeedSettings {
            poll_interval,
            retention,
            buffer,
        } = settings;
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            live: broadcast::channel(buffer).0,
            head: watch::Sender::new(Position::default()),
            wake: Notify::new(),
            poll_interval,
            subscribers: AtomicUsize::new(0),
            cancel: cancel.clone(),
        });
        let woken = shared.clone();
        tokio::spawn(crate::db::listen::forward(
            pool.clone(),
            CHANNEL,
            move || woken.wake.notify_one(),
            cancel.clone(),
        ));
        tokio::spawn(read(shared.clone()));
        tokio::spawn(prune(pool, retention, cancel));
        Self(shared)
    }

    /// Tells the reader that this process just committed events (NOTIFY would say so too,
    /// but not every writer sends one).
    pub fn poke(&self) {
        self.0.wake.notify_one();
    }

    /// Live SSE/WebSocket subscribers in this process.
    pub fn subscribers(&self) -> usize {
        self.0.subscribers.load(Ordering::Relaxed)
    }

    /// Where the log ends for a new subscriber: nothing at or before this is sent live.
    pub fn head(&self) -> Position {
        *self.0.head.borrow()
    }

    /// The oldest event still kept; a resume from before it would have a gap.
    pub async fn oldest(&self) -> sqlx::Result<Option<Position>> {
        events::oldest(&self.0.pool).await
    }

    /// Events matching `filter`: those after `from` (taken from the log), then live ones,
    /// in order and each once. Without `from`, only what happens from now on. The stream
    /// ends when the process shuts down or the receiver is dropped.
    pub fn subscribe(&self, filter: Filter, from: Option<Position>) -> mpsc::Receiver<Item> {
        let (out, items) = mpsc::channel(CLIENT_BUFFER);
        let live = self.0.live.subscribe();
        let start = from.unwrap_or_else(|| self.head());
        let shared = self.0.clone();
        shared.subscribers.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let cancel = shared.cancel.clone();
            tokio::select! {
                _ = follow(&shared, filter, start, from.is_some(), live, out) => {},
                _ = cancel.cancelled() => {},
            }
            shared.subscribers.fetch_sub(1, Ordering::Relaxed);
        });
        items
    }
}

/// Feeds one subscriber: catch-up from the log when needed, then the live broadcast.
/// Positions only move forward, so an event seen both ways is sent once.
async fn follow(
    shared: &Shared,
    filter: Filter,
    start: Position,
    catch_up_first: bool,
    mut live: broadcast::Receiver<Arc<Event>>,
    out: mpsc::Sender<Item>,
) {
    let mut last = start;
    let mut sent_any = catch_up_first;
    if catch_up_first && catch_up(shared, &filter, &mut last, &out).await.is_err() {
        return;
    }
    loop {
        match live.recv().await {
            Ok(event) => {
                if event.position <= last {
                    continue;
                }
                last = event.position;
                if event.matches(&filter) {
                    sent_any = true;
                    if out.send(Item::Event(event)).await.is_err() {
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                debug!(missed, "feed subscriber lagged; catching up from the log");
                let resume_from = sent_any.then_some(last);
                if out.send(Item::Lagged { resume_from }).await.is_err()
                    || catch_up(shared, &filter, &mut last, &out).await.is_err()
                {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

struct Gone;

/// Sends every settled event after `last` that matches, page by page, moving `last`. Stops
/// at the first unsettled event: the live broadcast will carry it once it settles.
async fn catch_up(
    shared: &Shared,
    filter: &Filter,
    last: &mut Position,
    out: &mpsc::Sender<Item>,
) -> Result<(), Gone> {
    loop {
        let rows = loop {
            match events::after(&shared.pool, *last, filter, PAGE).await {
                Ok(rows) => break rows,
                Err(e) => {
                    warn!(error = %e, "feed catch-up failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if out.is_closed() {
                        return Err(Gone);
                    }
                }
            }
        };
        let full = rows.len() as i64 == PAGE;
        let settled: Vec<Logged> = rows.into_iter().take_while(|r| r.settled).collect();
        let complete = full && settled.len() as i64 == PAGE;
        for event in render(&shared.pool, settled).await {
            *last = event.position;
            if let Some(event) = event.event
                && out.send(Item::Event(Arc::new(event))).await.is_err()
            {
                return Err(Gone);
            }
        }
        if !complete {
            return Ok(());
        }
    }
}

/// A log row with its rendered event; `event` is `None` when its subject was deleted.
struct Rendered {
    position: Position,
    event: Option<Event>,
}

async fn render(pool: &PgPool, rows: Vec<Logged>) -> Vec<Rendered> {
    let data = loop {
        match events::render(pool, &rows).await {
            Ok(data) => break data,
            Err(e) => {
                warn!(error = %e, "rendering feed events failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    rows.into_iter()
        .zip(data)
        .map(|(row, data)| Rendered {
            position: row.position(),
            event: data.map(|data| Event {
                position: row.position(),
                kind: row.kind,
                app_id: row.app_id,
                endpoint_id: row.endpoint_id,
                event_type: row.event_type,
                outcome: row.outcome,
                data,
            }),
        })
        .collect()
}

/// The process's one reader of the log.
async fn read(shared: Arc<Shared>) {
    let cancel = shared.cancel.clone();
    let mut cursor = loop {
        match events::head(&shared.pool).await {
            Ok(p) => break p,
            Err(e) => {
                warn!(error = %e, "feed reader cannot start; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                    _ = cancel.cancelled() => return,
                }
            }
        }
    };
    shared.head.send_replace(cursor);
    // While events wait to settle, look again soon, backing off; otherwise wait for a
    // wake-up or the poll.
    let mut recheck = Duration::ZERO;
    loop {
        let rows = match events::after(&shared.pool, cursor, &Filter::default(), PAGE).await {
            Ok(rows) => rows,
            Err(e) => {
                warn!(error = %e, "feed reader cannot read the event log; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        let fetched = rows.len() as i64;
        let settled: Vec<Logged> = rows.into_iter().take_while(|r| r.settled).collect();
        let waiting = (settled.len() as i64) < fetched;
        let progressed = !settled.is_empty();
        for rendered in render(&shared.pool, settled).await {
            cursor = rendered.position;
            if let Some(event) = rendered.event {
                // No receivers is fine: nobody is watching.
                let _ = shared.live.send(Arc::new(event));
            }
            shared.head.send_replace(cursor);
            // Let subscribers move each event along before the next one pushes the
            // oldest out of the buffer.
            tokio::task::yield_now().await;
        }
        if fetched == PAGE && !waiting {
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
    }
}

/// Deletes events older than `retention`, a batch at a time, every minute. Several
/// processes may prune at once; they only contend for the same old rows.
async fn prune(pool: PgPool, retention: Duration, cancel: CancellationToken) {
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
