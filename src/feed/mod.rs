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
//!
//! Here: the `Feed` handle and subscribing. `reader` reads the log and broadcasts it,
//! `page` is one read of it, `follow` feeds one subscriber, `budget` bounds what
//! waits for it, and `event` is what they all pass around.

mod budget;
mod event;
mod follow;
mod reader;
mod slice;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::budget::{Budget, Out};
pub use self::budget::{Held, Queued, Subscription};
pub use self::event::{Batch, Event, Item, Text};
use crate::db::events::{self, Filter};
use crate::domain::Position;

/// The NOTIFY channel the event log's triggers announce on.
pub const CHANNEL: &str = "herald_feed";

#[derive(Clone)]
pub struct Feed(Arc<Shared>);

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
        tokio::spawn(reader::read(shared.clone(), start));
        tokio::spawn(reader::prune(pool, retention, cancel));
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
    /// followed: not if it is older than the newest event pruned (which it missed, even
    /// when the log after it is empty now). Pruning is the only delete and moves that mark
    /// in the same statement, so nothing after a position at or past it is gone. The
    /// oldest event kept says nothing more, and would refuse positions this server hands
    /// out itself: a head (a page's `data-from`, `seq` 0) that no kept event precedes, in a
    /// new log or one pruned empty, as soon as an event commits after it.
    pub async fn can_resume_from(&self, from: Position) -> sqlx::Result<bool> {
        Ok(from >= events::pruned_up_to(&self.0.pool).await?)
    }

    /// Events matching `filter`: those after `from` (taken from the log), then live ones,
    /// in order and each once. Without `from`, only what happens from now on. The stream
    /// ends when the process shuts down or the receiver is dropped.
    pub fn subscribe(&self, filter: Filter, from: Option<Position>) -> Subscription {
        let (tx, items) = mpsc::unbounded_channel();
        let out = Out {
            tx,
            budget: Budget::new(self.0.client_buffer, self.0.buffered.clone()),
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
                _ = follow::follow(&shared, filter, start, live, out) => {},
                _ = gone.closed() => {},
                _ = cancel.cancelled() => {},
            }
            shared.subscribers.fetch_sub(1, Ordering::Relaxed);
        });
        Subscription { items }
    }
}
