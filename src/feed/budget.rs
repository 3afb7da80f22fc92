//! What waits for one subscriber, bounded in bytes: its budget, the charge each queued
//! item carries until the client has written it out or let go of it, and the queue itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};

use super::event::Item;

/// The bytes queued for one subscriber and not yet written out, against its budget.
pub(super) struct Budget {
    held: AtomicUsize,
    pub(super) limit: usize,
    /// Wakes the subscriber's follower when the client has taken something.
    room: Notify,
    /// Every subscriber's `held` in this process, summed.
    total: Arc<AtomicUsize>,
}

impl Budget {
    pub(super) fn new(limit: usize, total: Arc<AtomicUsize>) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicUsize::new(0),
            limit,
            room: Notify::new(),
            total,
        })
    }

    pub(super) fn held(&self) -> usize {
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
    pub(super) fn hold(self: &Arc<Self>, bytes: usize) -> Held {
        self.held.fetch_add(bytes, Ordering::AcqRel);
        self.total.fetch_add(bytes, Ordering::Relaxed);
        Held {
            budget: self.clone(),
            bytes,
        }
    }

    /// Waits until `bytes` more fit.
    pub(super) async fn room_for(&self, bytes: usize) {
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
    pub(super) items: mpsc::UnboundedReceiver<Queued>,
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
pub(super) struct Out {
    pub(super) tx: mpsc::UnboundedSender<Queued>,
    pub(super) budget: Arc<Budget>,
}

impl Out {
    pub(super) fn send(&self, item: Item, held: Held) -> Result<(), Gone> {
        self.tx.send(Queued { item, held }).map_err(|_| Gone)
    }

    /// Queues `item` if it fits the budget; gives it back if it does not.
    pub(super) fn offer(&self, item: Item) -> Result<Option<Item>, Gone> {
        let bytes = item.pinned();
        if !self.budget.fits(bytes) {
            return Ok(Some(item));
        }
        let held = self.budget.hold(bytes);
        self.send(item, held).map(|()| None)
    }
}

/// The subscriber's client went away: stop feeding it.
pub(super) struct Gone;
