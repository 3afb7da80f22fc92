//! What the feed carries: an event rendered once as its SSE frame and shared by every
//! subscriber, the items a subscription yields, and what each of them pins in memory (the
//! measure every subscriber's byte budget is charged in).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::db::events::{Filter, Logged};
use crate::domain::{AppId, AttemptOutcome, EndpointId, EventKind, Position};

/// What an event costs besides its frame (its fields, its `Arc`), and the least any queued
/// item is charged: a flood of tiny items is bounded too.
pub(super) const EVENT_OVERHEAD: usize = 256;

/// One event, rendered once and shared by every subscriber.
#[derive(Debug)]
pub struct Event {
    /// The whole SSE frame (`id:`, `event:`, `data:`, blank line).
    pub frame: Bytes,
    pub position: Position,
    pub kind: EventKind,
    pub app_id: AppId,
    pub endpoint_id: Option<EndpointId>,
    pub event_type: Option<String>,
    pub outcome: Option<AttemptOutcome>,
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
    /// Renders an event of the log, with its data as JSON, as its SSE frame.
    pub(super) fn framed(row: Logged, position: Position, data: String) -> Self {
        let head = format!("id: {position}\nevent: {}\ndata: ", row.kind.as_str());
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
    }

    pub(super) fn matches(&self, f: &Filter) -> bool {
        f.matches(
            self.app_id,
            self.endpoint_id,
            self.event_type.as_deref(),
            self.outcome,
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
    pub(super) fn pinned(&self) -> usize {
        match self {
            Self::Events(events) => events.iter().map(|e| e.pinned()).sum(),
            Self::Batch(batch) => batch.pinned(),
            Self::Lagged { .. } => EVENT_OVERHEAD,
        }
    }
}

impl Event {
    pub(super) fn pinned(&self) -> usize {
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
    pub(super) fn new(events: Vec<Arc<Event>>) -> Self {
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
