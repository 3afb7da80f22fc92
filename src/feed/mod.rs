//! The live feed: one reader per process follows the event log (`herald.event`) in commit-
//! safe order and broadcasts each event to this process's subscribers (SSE streams, the
//! admin WebSocket). Every process reads the same log, so a subscriber on process A sees
//! what process B did; NOTIFY only wakes readers up early.
//!
//! Subscribers never hold anything up: the broadcast buffer is bounded, and a subscriber
//! that falls behind it is told so and catches up from the log itself, at its own pace.
//! What waits for one client is bounded in bytes, not items (an item may carry hundreds of
//! events of a megabyte each): a client over its budget is told it lagged, exactly as one
//! that fell off the broadcast buffer, and catches up from the log no faster than it reads.
//!
//! Fan-out is by batch, not by event: the reader publishes each read of the log as one
//! message, with every event already rendered as an SSE frame, so a thousand subscribers
//! cost a thousand wake-ups per read, not per event, and no event is serialised twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::db::events::{self, Filter, Logged};
use crate::domain::{AppId, EndpointId, Position};

/// The NOTIFY channel the event log's triggers announce on.
pub const CHANNEL: &str = "herald_feed";
/// Events the reader fetches per query, and a catching-up subscriber per page.
const PAGE: i64 = 500;
/// What an event costs besides its frame (its fields, its `Arc`), and the least any queued
/// item is charged: a flood of tiny items is bounded too.
const EVENT_OVERHEAD: usize = 256;

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
    pub data: Text,
}

/// An event's data: a slice of its frame, not a second copy of it.
#[derive(Debug, Clone)]
pub struct Text(Bytes);

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(&self.0).expect("sliced out of a String at its boundaries")
    }
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

    /// The bytes this item keeps alive for as long as a subscriber holds it, whoever else
    /// shares them: a batch shared by a thousand subscribers is charged to each, since any
    /// one of them alone would keep it.
    fn pinned(&self) -> usize {
        match self {
            Self::Events(events) => events.iter().map(|e| e.pinned()).sum(),
            Self::Batch(batch) => batch.pinned(),
            Self::Lagged { .. } => EVENT_OVERHEAD,
        }
    }
}

impl Event {
    fn pinned(&self) -> usize {
        self.frame.len() + EVENT_OVERHEAD
    }
}

/// One read of the log (or a part of it), as the reader broadcasts it.
#[derive(Debug, Clone)]
pub struct Batch {
    pub events: Arc<[Arc<Event>]>,
    /// Every event's frame, in order, in one buffer.
    pub frames: Bytes,
}

impl Batch {
    fn new(events: Vec<Arc<Event>>) -> Self {
        // A single event's frame is the batch's: no second copy of a big message.
        let frames = match events.as_slice() {
            [one] => one.frame.clone(),
            _ => {
                let mut frames =
                    BytesMut::with_capacity(events.iter().map(|e| e.frame.len()).sum());
                for e in &events {
                    frames.extend_from_slice(&e.frame);
                }
                frames.freeze()
            }
        };
        Self {
            events: events.into(),
            frames,
        }
    }

    fn pinned(&self) -> usize {
        let events: usize = self.events.iter().map(|e| e.pinned()).sum();
        let shared = matches!(&*self.events, [one] if one.frame.as_ptr() == self.frames.as_ptr());
        if shared {
            events
        } else {
            events + self.frames.len()
        }
    }
}

/// The bytes queued for one subscriber and not yet written out, against its budget.
struct Budget {
    held: AtomicUsize,
    limit: usize,
    /// Wakes the subscriber's follower when the client has taken something.
    room: Notify,
    /// Every subscriber's `held` in this process, summed.
    total: Arc<AtomicUsize>,
}

impl Budget {
    fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Whether `bytes` more fit. A client holding nothing may always take one item,
    /// however big, or an event larger than the budget could never be sent.
    fn fits(&self, bytes: usize) -> bool {
        let held = self.held();
        held == 0 || held + bytes <= self.limit
    }

    /// Only the subscriber's follower adds to `held` (clients only take away), so what
    /// `fits` saw still holds here.
    fn hold(self: &Arc<Self>, bytes: usize) -> Held {
        self.held.fetch_add(bytes, Ordering::AcqRel);
        self.total.fetch_add(bytes, Ordering::Relaxed);
        Held {
            budget: self.clone(),
            bytes,
        }
    }

    /// Waits until `bytes` more fit.
    async fn room_for(&self, bytes: usize) {
        while !self.fits(bytes) {
            // `notify_one` keeps a permit when nobody waits: a release between the check
            // and this wait is not missed.
            self.room.notified().await;
        }
    }
}

/// Bytes charged to a subscriber's budget until this is dropped: when the client has
/// written them out (the SSE stream keeps it with the bytes it hands the server) or let go
/// of the item.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Budget({} of {})", self.held(), self.limit)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
        self.budget.total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.budget.room.notify_one();
    }
}

/// An item taken from a subscription, still charged to the subscriber until dropped.
#[derive(Debug)]
pub struct Queued {
    item: Item,
    held: Held,
}

impl Queued {
    pub fn into_parts(self) -> (Item, Held) {
        (self.item, self.held)
    }
}

impl std::ops::Deref for Queued {
    type Target = Item;
    fn deref(&self) -> &Item {
        &self.item
    }
}

/// What a subscriber reads: its items, in order, until the process shuts down.
pub struct Subscription {
    items: mpsc::UnboundedReceiver<Queued>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Option<Queued> {
        self.items.recv().await
    }

    pub fn try_recv(&mut self) -> Option<Queued> {
        self.items.try_recv().ok()
    }
}

/// Where a subscriber's items go: the queue is unbounded in items because the budget
/// bounds it in bytes.
struct Out {
    tx: mpsc::UnboundedSender<Queued>,
    budget: Arc<Budget>,
}

impl Out {
    fn send(&self, item: Item, held: Held) -> Result<(), Gone> {
        self.tx.send(Queued { item, held }).map_err(|_| Gone)
    }

    /// Queues `item` if it fits the budget; gives it back if it does not.
    fn offer(&self, item: Item) -> Result<Option<Item>, Gone> {
        let bytes = item.pinned();
        if !self.budget.fits(bytes) {
            return Ok(Some(item));
        }
        let held = self.budget.hold(bytes);
        self.send(item, held).map(|()| None)
    }
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
    /// Bytes that may wait for one subscriber before it is told it lagged.
    pub client_buffer: usize,
}

impl From<&crate::config::Config> for FeedSettings {
    fn from(c: &crate::config::Config) -> Self {
        Self {
            poll_interval: c.poll_interval,
            retention: c.feed_retention,
            buffer: c.feed_buffer,
            interval: c.feed_interval,
            client_buffer: c.feed_client_buffer,
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
    client_buffer: usize,
    /// Bytes queued for all of this process's subscribers.
    buffered: Arc<AtomicUsize>,
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
            client_buffer,
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
            client_buffer,
            buffered: Arc::default(),
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

    /// Bytes queued for this process's subscribers and not yet written out (each charged
    /// what it holds, see [`Item`]).
    pub fn buffered_bytes(&self) -> usize {
        self.0.buffered.load(Ordering::Relaxed)
    }

    /// Where the log ends for a new subscriber: nothing at or before this is sent live.
    pub fn head(&self) -> Position {
        *self.0.head.borrow()
    }

    /// Whether a client that has seen everything up to `from` can be given all that
    /// followed: not if it is older than the oldest event kept (what lay between may have
    /// been pruned), nor older than the newest event pruned (which it missed, even when the
    /// log after it is empty now).
    pub async fn can_resume_from(&self, from: Position) -> sqlx::Result<bool> {
        let pool = &self.0.pool;
        let before_oldest = events::oldest(pool)
            .await?
            .is_some_and(|oldest| from < oldest);
        Ok(!before_oldest && from >= events::pruned_up_to(pool).await?)
    }

    /// Events matching `filter`: those after `from` (taken from the log), then live ones,
    /// in order and each once. Without `from`, only what happens from now on. The stream
    /// ends when the process shuts down or the receiver is dropped.
    pub fn subscribe(&self, filter: Filter, from: Option<Position>) -> Subscription {
        let (tx, items) = mpsc::unbounded_channel();
        let out = Out {
            tx,
            budget: Arc::new(Budget {
                held: AtomicUsize::new(0),
                limit: self.0.client_buffer,
                room: Notify::new(),
                total: self.0.buffered.clone(),
            }),
        };
        let start = from.unwrap_or_else(|| self.head());
        // Subscribed before this returns, so that nothing after `head` is missed; one
        // that catches up first subscribes before its last read of the log instead.
        let live = from.is_none().then(|| self.0.live.subscribe());
        let shared = self.0.clone();
        shared.subscribers.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let cancel = shared.cancel.clone();
            // A client that went away is let go at once, not at the next event for it.
            let gone = out.tx.clone();
            tokio::select! {
                _ = follow(&shared, filter, start, live, out) => {},
                _ = gone.closed() => {},
                _ = cancel.cancelled() => {},
            }
            shared.subscribers.fetch_sub(1, Ordering::Relaxed);
        });
        Subscription { items }
    }
}

/// Feeds one subscriber: catch-up from the log when needed (no `live` yet), then the live
/// broadcast. Positions only move forward, so an event seen both ways is sent once.
async fn follow(
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

struct Gone;

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
                Page::fitting(&mut conn, *last, filter, room).await
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

/// One read of the log: the settled events after a position, rendered (`None` where the
/// event's subject was deleted since), and whether unsettled ones came after them.
struct Page {
    events: Vec<(Position, Option<Event>)>,
    fetched: usize,
    /// Settled events were left out to keep the page within a size.
    cut: bool,
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
        Ok(Self::of(settled, data, fetched, false))
    }

    /// Like [`Page::after`], but only the first events whose rendering is estimated to fit
    /// in `room` bytes (at least one): a client catching up never has a whole page of
    /// megabyte messages read for it at once. Payload sizes are asked of the database
    /// first, which reads them without sending them.
    async fn fitting(
        conn: &mut PgConnection,
        from: Position,
        filter: &Filter,
        room: usize,
    ) -> sqlx::Result<Self> {
        let rows = events::after(&mut *conn, from, filter, PAGE).await?;
        let fetched = rows.len();
        let mut settled: Vec<Logged> = rows.into_iter().take_while(|r| r.settled).collect();
        // Payloads are measured in growing chunks, not all at once: where only a few big
        // ones fit, the next page starts right after them, and measuring the whole page
        // every time would read the same payloads hundreds of times over.
        let mut sizes = HashMap::new();
        let mut estimate = 0;
        let mut fit = 0;
        let mut chunk = 4;
        'measure: while fit < settled.len() {
            let mut end = fit;
            let mut messages: Vec<Uuid> = Vec::new();
            while end < settled.len() && messages.len() < chunk {
                if settled[end].kind == "message.created" {
                    messages.push(settled[end].ref_id);
                }
                end += 1;
            }
            if !messages.is_empty() {
                sizes.extend(events::payload_sizes(&mut *conn, &messages).await?);
            }
            for row in &settled[fit..end] {
                let first = estimate == 0;
                estimate += estimated_size(row, &sizes);
                if !first && estimate > room {
                    break 'measure;
                }
                fit += 1;
            }
            chunk *= 2;
        }
        let cut = fit < settled.len();
        settled.truncate(fit);
        let data = events::render(conn, &settled).await?;
        Ok(Self::of(settled, data, fetched, cut))
    }

    fn of(settled: Vec<Logged>, data: Vec<Option<String>>, fetched: usize, cut: bool) -> Self {
        let events = settled
            .into_iter()
            .zip(data)
            .map(|(row, data)| {
                let position = row.position();
                let event = data.map(|data| {
                    let head = format!("id: {position}\nevent: {}\ndata: ", row.kind);
                    let start = head.len();
                    let frame = Bytes::from(format!("{head}{data}\n\n"));
                    Event {
                        data: Text(frame.slice(start..start + data.len())),
                        frame,
                        position,
                        kind: row.kind,
                        app_id: row.app_id,
                        endpoint_id: row.endpoint_id,
                        event_type: row.event_type,
                        outcome: row.outcome,
                    }
                });
                (position, event)
            })
            .collect();
        Self {
            events,
            fetched,
            cut,
        }
    }

    /// Events exist that have not settled yet (or were cut off: read on, either way).
    fn waiting(&self) -> bool {
        self.events.len() < self.fetched
    }

    /// The page was full of settled events: read on at once.
    fn more(&self) -> bool {
        self.fetched as i64 == PAGE && !self.waiting()
    }
}

/// Roughly what an event's frame will take once rendered, before it is: a message's
/// payload and its envelope; an attempt with a response body of up to 4 KiB, all of it
/// escaped at worst; the small rest.
fn estimated_size(row: &Logged, payloads: &HashMap<Uuid, i64>) -> usize {
    EVENT_OVERHEAD
        + match row.kind.as_str() {
            "message.created" => {
                let payload = payloads.get(&row.ref_id).copied().unwrap_or(0);
                usize::try_from(payload).unwrap_or(0) + 1024
            }
            "attempt" => 32 * 1024,
            _ => 4 * 1024,
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
