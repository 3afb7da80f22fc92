//! What this process holds, and finding it a worker: the deliveries held per endpoint,
//! the endpoints it left full, a worker permit for a held delivery within its lease, and
//! giving back what found none.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, warn};

use super::Shared;
use crate::db::deliveries::{self, Claimed};
use crate::domain::{DeliveryId, EndpointId};

/// The per-endpoint bookkeeping. Its two maps keep one invariant: **a due row held back by
/// the cap of an endpoint this process fills does not wait for the poll: the next
/// completion this process makes there wakes the dispatcher.**
///
/// - `in_flight` maps an endpoint to how many of its deliveries this process holds, and its
///   cap. A delivery counts from its claim (or direct insert) until its completion is
///   queued, waiting for a worker included; only [`Held`] changes a count, and an endpoint
///   holding none has no entry. Direct dispatch offers no endpoint whose count reached its
///   cap, so what is sent there is queued, never handed to a worker here.
/// - `capped` holds every endpoint where this process may have left due rows queued for
///   lack of room: one its claim filled (marked before any row of that claim can
///   complete), one its offer named busy (marked before the insert commits), one its insert
///   queued. Only a worker whose request there ended unmarks, once it counted the delivery
///   finished (the claim counts this process's finished requests out of the room, so
///   that is when the room is made, not when the completion commits), and it wakes the
///   dispatcher if it unmarked.
///
/// So a mark always precedes the room it waits for, and an unmark never erases a mark made
/// after the room: every claim from then on sees the room, and marks again what it fills;
/// the wake makes sure one runs.
#[derive(Default)]
pub(super) struct Capacity {
    capped: Mutex<HashSet<EndpointId>>,
    /// Endpoint → (deliveries held, cap).
    in_flight: Mutex<HashMap<EndpointId, (i32, i32)>>,
}

impl Capacity {
    /// Marks the endpoints whose room `rows`, one claim's rows, took up entirely.
    pub(super) fn note_capped(&self, rows: &[Claimed]) {
        let mut taken: HashMap<EndpointId, (i64, i64)> = HashMap::new();
        for row in rows {
            let entry = taken.entry(row.endpoint_id).or_insert((0, row.room));
            entry.0 += 1;
        }
        let mut capped = self.capped.lock().expect("capped set poisoned");
        capped.extend(
            taken
                .into_iter()
                .filter(|(_, (n, room))| n >= room)
                .map(|(endpoint, _)| endpoint),
        );
    }

    /// Marks endpoints where deliveries were queued for lack of room.
    pub(super) fn mark_capped(&self, endpoints: &[EndpointId]) {
        if !endpoints.is_empty() {
            let mut capped = self.capped.lock().expect("capped set poisoned");
            capped.extend(endpoints.iter().copied());
        }
    }

    /// Forgets `endpoint` as full, where a request just ended; true if it was.
    pub(super) fn uncap_one(&self, endpoint: EndpointId) -> bool {
        self.capped
            .lock()
            .expect("capped set poisoned")
            .remove(&endpoint)
    }

    /// Endpoints where this process holds as many deliveries as their cap.
    /// Each endpoint this process holds deliveries of, with the room left under its cap
    /// (none left: the endpoint is busy).
    pub(super) fn rooms(&self) -> Vec<(EndpointId, i32)> {
        self.in_flight
            .lock()
            .expect("in-flight map poisoned")
            .iter()
            .map(|(endpoint, (n, cap))| (*endpoint, (cap - n).max(0)))
            .collect()
    }

    fn count_in_flight(&self, endpoint: EndpointId, cap: i32, delta: i32) {
        let mut in_flight = self.in_flight.lock().expect("in-flight map poisoned");
        let entry = in_flight.entry(endpoint).or_insert((0, cap));
        entry.0 += delta;
        entry.1 = cap;
        if entry.0 <= 0 {
            in_flight.remove(&endpoint);
        }
    }
}

/// A delivery this process holds under a lease, from its claim (or direct insert) until
/// its completion is queued: counted among the endpoint's requests in flight the whole
/// time, waiting for a worker included.
pub(super) struct Held {
    pub(super) row: Claimed,
    shared: Arc<Shared>,
}

impl Held {
    pub(super) fn take(shared: &Arc<Shared>, row: Claimed) -> Self {
        shared
            .capacity
            .count_in_flight(row.endpoint_id, row.max_in_flight, 1);
        Self {
            row,
            shared: shared.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shared
            .capacity
            .count_in_flight(self.row.endpoint_id, self.row.max_in_flight, -1);
    }
}

impl Shared {
    /// A worker for a held delivery, if one frees up by `start_by` and the pool is not
    /// stopping.
    pub(super) async fn permit_until(&self, start_by: Instant) -> Option<OwnedSemaphorePermit> {
        let permit = tokio::select! {
            // The semaphore is never closed.
            p = tokio::time::timeout_at(start_by.into(), self.permits.clone().acquire_owned()) => {
                p.ok().and_then(Result::ok)
            }
            _ = self.cancel.cancelled() => None,
        };
        // A permit that was free at once is handed over even past the deadline (the claim
        // or the insert itself may have taken that long): too late is too late.
        permit.filter(|_| Instant::now() < start_by)
    }

    /// Returns held deliveries that were never sent to the queue at once, rather than let
    /// their leases run out.
    pub(super) async fn give_back(&self, held: Vec<Held>) {
        let rows: Vec<(DeliveryId, i32)> = held
            .iter()
            .map(|h| (h.row.id, h.row.attempt_count))
            .collect();
        drop(held);
        let released = async {
            let mut conn = self.pool.acquire().await?;
            deliveries::release(&mut conn, self.worker_id, &rows).await
        };
        match released.await {
            Ok(n) => debug!(
                count = n,
                "gave back deliveries no worker was free for in time"
            ),
            Err(e) => {
                warn!(error = %e, count = rows.len(), "giving back deliveries failed; their leases will expire")
            }
        }
        self.wake.notify_one();
    }
}
