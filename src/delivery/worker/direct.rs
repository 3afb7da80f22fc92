//! Direct dispatch: the handle through which the API, as it stores a message, hands this
//! process's workers the deliveries the database claimed for them, without waiting for the
//! dispatcher's next claim.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Shared;
use super::capacity::Held;
use crate::db::deliveries::Claimed;
use crate::db::messages::{DirectOffer, Sent};
use crate::domain::AttemptTrigger;
use crate::domain::{DeliveryId, EndpointId};
use crate::metrics::Metrics;

/// Direct dispatch (`herald.enqueue`): the API offers this process's workers when it stores
/// a message, and hands over the deliveries the database gave them.
#[derive(Clone)]
pub struct Direct(pub(super) Arc<Shared>);

impl Direct {
    /// `None` when no worker is free or the pool is stopping: the message then goes
    /// through the queue like any other.
    pub fn offer(&self) -> Option<DirectOffer> {
        let shared = &self.0;
        let free = shared
            .permits
            .available_permits()
            .saturating_sub(shared.direct_waiting.load(Ordering::Acquire));
        if shared.cancel.is_cancelled() || free == 0 {
            return None;
        }
        let free = i32::try_from(free).unwrap_or(i32::MAX);
        let rooms: Vec<(EndpointId, i32)> = shared
            .capacity
            .rooms()
            .into_iter()
            .map(|(endpoint, room)| (endpoint, room.min(free)))
            .collect();
        let offer = DirectOffer {
            made_at: Instant::now(),
            worker: shared.worker_id,
            lease: shared.settings.lease,
            room: shared.settings.endpoint_concurrency.min(free),
            rooms,
        };
        // What is sent to a full endpoint is queued, and only a completion there can make
        // room for it. Mark it before the send commits: marked after, a completion landing
        // in between would find nothing to wake for, and the delivery would wait for the
        // poll.
        shared.capacity.mark_capped(&offer.busy_endpoints());
        Some(offer)
    }

    /// Requests this process's workers have in flight (permits taken).
    pub fn in_flight(&self) -> usize {
        self.concurrency()
            .saturating_sub(self.0.permits.available_permits())
    }

    /// How many requests this process's workers may have in flight at once.
    pub fn concurrency(&self) -> usize {
        self.0.settings.concurrency
    }

    /// The pool's attempt counters, and the encoder for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// Sends the deliveries claimed for this process at insert time. Endpoints whose
    /// delivery was queued instead (full, or with a backlog) are noted as capped, so the
    /// completions that make room there wake the dispatcher.
    pub fn dispatch(&self, sent: &Sent) {
        self.0.capacity.mark_capped(&sent.queued_for);
        let message = &sent.message;
        for d in &sent.claimed {
            let row = Claimed {
                id: DeliveryId(d.id),
                attempt_count: 1,
                trigger: AttemptTrigger::Scheduled,
                retry_base: 0,
                message_id: message.id,
                app_id: message.app_id,
                event_type: message.event_type.clone(),
                payload: message.payload.clone(),
                payload_erased: false,
                message_created_at: message.created_at,
                endpoint_id: EndpointId(d.endpoint_id),
                url: d.url.clone(),
                headers: sqlx::types::Json(d.headers.clone()),
                disabled: false,
                disabled_reason: None,
                secrets: d.secrets.clone(),
                room: i64::MAX,
                max_in_flight: d
                    .max_in_flight
                    .unwrap_or(self.0.settings.endpoint_concurrency),
                // herald.enqueue never sends to a rate-limited endpoint directly.
                rate_limit: None,
            };
            let held = Held::take(&self.0, row);
            // The leases began no earlier than the offer.
            let start_by =
                sent.offered_at.unwrap_or_else(Instant::now) + self.0.settings.send_window();
            let shared = self.0.clone();
            shared.direct_waiting.fetch_add(1, Ordering::AcqRel);
            self.0.tasks.spawn(async move {
                // The offer saw a free worker; if others took it meanwhile, wait for one,
                // but never past the time the send could still end within the lease.
                let permit = shared.permit_until(start_by).await;
                shared.direct_waiting.fetch_sub(1, Ordering::AcqRel);
                match permit {
                    Some(permit) => shared.spawn_delivery(held, permit),
                    None => shared.give_back(vec![held]).await,
                }
            });
        }
    }
}
