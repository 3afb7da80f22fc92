//! The live feed: one reader per process follows the event log (`herald.event`) in commit-
//! safe order and broadcasts each event to this process's subscribers (SSE streams, the
//! admin WebSocket). Every process reads the same log, so a subscriber on process A sees
//! what process B did; NOTIFY only wakes readers up early.
//!
//! Subscribers never hold anything up: the broadcast buffer is bounded, and a subscriber
//! that falls behind it is told so and catches up from the log itself, at its own pace.
//!
//! Fan-out is by batch, not by event: the reader publishes each read of the log as one
//! message, with every event already rendered as an SSE frame, so a thousand subscribers
//! cost a thousand wake-ups per read, not per event, and no event is serialised twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
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
    /// The whole SSE frame (`id:`, `event:`, `data:`, blank line).
    pub frame: Bytes,
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
    /// Matching events, in feed order.
    Events(Vec<Arc<Event>>),
    /// A whole read of the log, every event of which the subscriber wants: its frames come
    /// already joined, the same bytes for every such subscriber, to be written as they are.
    Batch(Batch),
    /// The subscriber fell behind the live buffer; what follows comes from the log,
    /// starting right after `resume_from` (the last event it was given), so nothing is
    /// lost or repeated.
    Lagged { resume_from: Option<Position> },
}

#[derive(Clone)]
pub struct Feed(Arc<Shared>);

impl Item {
    /// The events this item carries (none for `Lagged`).
    pub fn events(&self) -> &[Arc<Event>] {
        match self {
            Self::Events(events) => events,
            Self::Batch(batch) => &batch.events,
            Self::Lagged { .. } => &[],
        }
    }
}

/// One read of the log, as the reader broadcasts it.
#[derive(Debug, Clone)]
pub struct Batch {
    pub events: Arc<[Arc<Event>]>,
    /// Every event's frame, in order, in one buffer.
    pub frames: Bytes,
}

#[derive(Debug, Clone, Copy)]
pub struct FeedSettings {
    /// Fallback wake-up when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// Events older than this are pruned.
    pub retention: Duration,
    /// Reads of the log (each up to 500 events) buffered for live subscribers; one
    /// further behind catches up from the log.
    pub buffer: usize,
    /// Shortest time between two reads of the log.
    pub interval: Duration,
}

impl From<&crate::config::Config> for FeedSettings {
    fn from(c: &crate::config::Config) -> Self {
        Self {
            poll_interval: c.poll_interval,
            retention: c.feed_retention,
            buffer: c.feed_buffer,
            interval: c.feed_interval,
        }
    }
}

struct Shared {
    pool: PgPool,
    live: broadcast::Sender<Batch>,
    /// The position of the last event the reader published.
    head: watch::Sender<Position>,
    wake: Notify,
    poll_interval: Duration,
    interval: Duration,
    subscribers: AtomicUsize,
    cancel: CancellationToken,
}

impl Feed {
    /// Starts this process's reader (and the pruning of events older than `retention`).
    /// The reader's starting point is fixed before this returns, so that no subscriber can
    /// come before it: one that did could miss what happened in between.
    pub async fn spawn(
        pool: PgPool,
        settings: FeedSettings,
        cancel: CancellationToken,
    ) -> sqlx::Result<Self> {
        let FeedSettings {
            poll_interval,
            retention,
            buffer,
            interval,
        } = settings;
        let start = events::head(&pool).await?;
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            live: broadcast::channel(buffer).0,
            head: watch::Sender::new(start),
            wake: Notify::new(),
            poll_interval,
            interval,
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
        tokio::spawn(read(shared.clone(), start));
        tokio::spawn(prune(pool, retention, cancel));
        Ok(Self(shared))
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
            // A client that went away is let go at once, not at the next event for it.
            let gone = out.clone();
            tokio::select! {
                _ = follow(&shared, filter, start, from.is_some(), live, out) => {},
                _ = gone.closed() => {},
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
    mut live: broadcast::Receiver<Batch>,
    out: mpsc::Sender<Item>,
) {
    let mut last = start;
    let mut sent_any = catch_up_first;
    if catch_up_first && catch_up(shared, &filter, &mut last, &out).await.is_err() {
        return;
    }
    loop {
        match live.recv().await {
            Ok(batch) => {
                let wanted = |e: &Arc<Event>| e.position > last && e.matches(&filter);
                if batch.events.iter().all(wanted) {
                    // The common case of a subscriber following everything: no copy.
                    last = batch.events.last().map_or(last, |e| e.position);
                    sent_any = true;
                    if out.send(Item::Batch(batch)).await.is_err() {
                        return;
                    }
                    continue;
                }
                let matching: Vec<Arc<Event>> =
                    batch.events.iter().filter(|e| wanted(e)).cloned().collect();
                if let Some(newest) = batch.events.last() {
                    last = last.max(newest.position);
                }
                if !matching.is_empty() {
                    sent_any = true;
                    if out.send(Item::Events(matching)).await.is_err() {
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
        let page = loop {
            let page = async {
                let mut conn = shared.pool.acquire().await?;
                Page::after(&mut conn, *last, filter, || true).await
            };
            match page.await {
                Ok(page) => break page,
                Err(e) => {
                    warn!(error = %e, "feed catch-up failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if out.is_closed() {
                        return Err(Gone);
                    }
                }
            }
        };
        let more = page.more();
        if let Some((newest, _)) = page.events.last() {
            *last = *newest;
        }
        let matching: Vec<Arc<Event>> = page
            .events
            .into_iter()
            .filter_map(|(_, e)| e.map(Arc::new))
            .collect();
        if !matching.is_empty() && out.send(Item::Events(matching)).await.is_err() {
            return Err(Gone);
        }
        if !more {
            return Ok(());
        }
    }
}

/// One read of the log: the settled events after a position, rendered (`None` where the
/// event's subject was deleted since), and whether unsettled ones came after them.
struct Page {
    events: Vec<(Position, Option<Event>)>,
    fetched: usize,
}

impl Page {
    /// `wanted` says, once the events are read, whether to render them at all: unrendered
    /// events keep their positions but carry no event.
    async fn after(
        conn: &mut PgConnection,
        from: Position,
        filter: &Filter,
        wanted: impl FnOnce() -> bool,
    ) -> sqlx::Result<Self> {
        let rows = events::after(&mut *conn, from, filter, PAGE).await?;
        let fetched = rows.len();
        let settled: Vec<Logged> = rows.into_iter().take_while(|r| r.settled).collect();
        let data = if wanted() {
            events::render(conn, &settled).await?
        } else {
            vec![None; settled.len()]
        };
        let events = settled
            .into_iter()
            .zip(data)
            .map(|(row, data)| {
                let position = row.position();
                let event = data.map(|data| Event {
                    frame: Bytes::from(format!(
                        "id: {position}\nevent: {}\ndata: {data}\n\n",
                        row.kind
                    )),
                    position,
                    kind: row.kind,
                    app_id: row.app_id,
                    endpoint_id: row.endpoint_id,
                    event_type: row.event_type,
                    outcome: row.outcome,
                    data,
                });
                (position, event)
            })
            .collect();
        Ok(Self { events, fetched })
    }

    /// Events exist that have not settled yet.
    fn waiting(&self) -> bool {
        self.events.len() < self.fetched
    }

    /// The page was full of settled events: read on at once.
    fn more(&self) -> bool {
        self.fetched as i64 == PAGE && !self.waiting()
    }
}

/// The process's one reader of the log.
async fn read(shared: Arc<Shared>, start: Position) {
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
            Page::after(c, cursor, &Filter::default(), watched).await
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
        let events: Arc<[Arc<Event>]> = page
            .events
            .into_iter()
            .filter_map(|(_, e)| e.map(Arc::new))
            .collect();
        if !events.is_empty() {
            let mut frames = BytesMut::with_capacity(events.iter().map(|e| e.frame.len()).sum());
            for e in events.iter() {
                frames.extend_from_slice(&e.frame);
            }
            let frames = frames.freeze();
            // No receivers is fine: nobody is watching.
            let _ = shared.live.send(Batch { events, frames });
        }
        shared.head.send_replace(cursor);
        // Let subscribers take this batch before the next one pushes the oldest out.
        tokio::task::yield_now().await;
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
