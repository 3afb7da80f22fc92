//! A slice of the event log, as one read takes it: the settled events after a position, rendered as frames, and
//! for a client catching up, only as many as its budget has room for.

use std::collections::HashMap;

use sqlx::PgConnection;
use uuid::Uuid;

use super::event::{EVENT_OVERHEAD, Event};
use crate::db::events::{self, Filter, Logged};
use crate::domain::{EventKind, Position};

/// Events the reader fetches per query, and a catching-up subscriber per page.
const SLICE: i64 = 500;

/// One read of the log: the settled events after a position, rendered (`None` where the
/// event's subject was deleted since), and whether unsettled ones came after them.
pub(super) struct Slice {
    pub(super) events: Vec<(Position, Option<Event>)>,
    fetched: usize,
    /// Settled events were left out to keep the page within a size.
    pub(super) cut: bool,
}

impl Slice {
    /// `wanted` says, once the events are read, whether to render them at all: unrendered
    /// events keep their positions but carry no event.
    pub(super) async fn after(
        conn: &mut PgConnection,
        from: Position,
        filter: &Filter,
        wanted: impl FnOnce() -> bool,
    ) -> sqlx::Result<Self> {
        let rows = events::after(&mut *conn, from, filter, SLICE).await?;
        let fetched = rows.len();
        let settled: Vec<Logged> = rows.into_iter().take_while(|r| r.settled).collect();
        let data = if wanted() {
            events::render(conn, &settled).await?
        } else {
            vec![None; settled.len()]
        };
        Ok(Self::of(settled, data, fetched, false))
    }

    /// Like [`Slice::after`], but only the first events whose rendering is estimated to fit
    /// in `room` bytes (at least one): a client catching up never has a whole page of
    /// megabyte messages read for it at once. Payload sizes are asked of the database
    /// first, which reads them without sending them.
    pub(super) async fn fitting(
        conn: &mut PgConnection,
        from: Position,
        filter: &Filter,
        room: usize,
    ) -> sqlx::Result<Self> {
        let rows = events::after(&mut *conn, from, filter, SLICE).await?;
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
                if settled[end].kind == EventKind::MessageCreated {
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
                let event = data.map(|data| Event::framed(row, position, data));
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
    pub(super) fn waiting(&self) -> bool {
        self.events.len() < self.fetched
    }

    /// The page was full of settled events: read on at once.
    pub(super) fn more(&self) -> bool {
        self.fetched as i64 == SLICE && !self.waiting()
    }
}

/// Roughly what an event's frame will take once rendered, before it is: a message's
/// payload and its envelope; an attempt with a response body of up to 4 KiB, all of it
/// escaped at worst; the small rest.
fn estimated_size(row: &Logged, payloads: &HashMap<Uuid, i64>) -> usize {
    EVENT_OVERHEAD
        + match row.kind {
            EventKind::MessageCreated => {
                let payload = payloads.get(&row.ref_id).copied().unwrap_or(0);
                usize::try_from(payload).unwrap_or(0) + 1024
            }
            EventKind::Attempt => 32 * 1024,
            _ => 4 * 1024,
        }
}
