//! The worker pool: one dispatcher claims due deliveries in batches and spawns a task per
//! request; one completer writes finished attempts back in batches. Wake-ups come from
//! `LISTEN herald_delivery`, with a poll as the fallback.
//!
//! This file starts the pool and runs the dispatcher. The rest, in the order a delivery
//! meets it: [`direct`] hands over what the API has just stored without a claim;
//! [`capacity`] counts what this process holds per endpoint and finds it a worker;
//! [`send`] makes one attempt; [`complete`] writes the attempts back.

mod capacity;
mod complete;
mod direct;
mod send;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use uuid::Uuid;

use self::capacity::{Capacity, Held};
use self::complete::complete;
pub use self::direct::Direct;
use super::RetrySchedule;
use crate::config::Config;
use crate::db;
use crate::db::deliveries::{self, ClaimCursor, Claimed, Completion};
use crate::domain::DeliveryId;
use crate::metrics::Metrics;

/// The channel deliveries are announced on (by `herald.send_message`).
pub const CHANNEL: &str = "herald_delivery";
/// Largest claim or completion batch.
const MAX_BATCH: usize = 256;
/// Time kept, at the end of a lease, for a finished attempt's completion to be written.
const COMPLETION_MARGIN: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub endpoint_concurrency: i32,
    pub lease: Duration,
    /// The longest one request may take (the client's timeout).
    pub request_timeout: Duration,
    pub poll_interval: Duration,
    pub retry_schedule: RetrySchedule,
    pub disable_after: Duration,
    pub allow_private_targets: bool,
    /// `HERALD_PORTAL_ALLOW_PRIVATE_TARGETS` (only ever true with the above): whether an
    /// endpoint whose URL a portal customer set may reach private addresses too.
    pub portal_allow_private_targets: bool,
    pub shutdown_grace: Duration,
}

impl WorkerSettings {
    /// How long after its lease began a delivery may still be sent: the request and the
    /// write of its completion must both end before the lease does, or the sweep hands the
    /// row to another worker and the receiver gets a copy that no attempt records.
    fn send_window(&self) -> Duration {
        self.lease
            .saturating_sub(self.request_timeout)
            .saturating_sub(COMPLETION_MARGIN)
    }
}

impl From<&Config> for WorkerSettings {
    fn from(c: &Config) -> Self {
        Self {
            concurrency: c.worker_concurrency,
            endpoint_concurrency: c.endpoint_concurrency,
            lease: c.lease(),
            request_timeout: c.request_timeout,
            poll_interval: c.poll_interval,
            retry_schedule: c.retry_schedule.clone(),
            disable_after: c.disable_after,
            allow_private_targets: c.allow_private_targets,
            portal_allow_private_targets: c.portal_allow_private_targets,
            shutdown_grace: c.shutdown_grace,
        }
    }
}

pub struct WorkerPool {
    dispatcher: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

struct Shared {
    pool: PgPool,
    client: reqwest::Client,
    /// Only when private targets are allowed but not to portal customers: a client that
    /// reaches public addresses only, for the endpoints whose URL a customer set.
    portal_client: Option<reqwest::Client>,
    settings: WorkerSettings,
    /// This process's identity in `delivery.locked_by`.
    worker_id: Uuid,
    wake: Notify,
    /// One permit per request in flight.
    permits: Arc<Semaphore>,
    /// Every delivery task, claimed or dispatched directly, for the shutdown drain.
    tasks: TaskTracker,
    done: mpsc::Sender<Completion>,
    cancel: CancellationToken,
    /// Fired once in-flight sends finished or ran out of grace: the completer then writes
    /// what is queued and stops.
    drained: CancellationToken,
    /// This process's deliveries per endpoint, and the endpoints it left full.
    capacity: Capacity,
    /// Deliveries whose request is over and whose completion is not written yet (queued
    /// for the completer or in its batch): in flight in the table, but holding no room at
    /// their endpoint, so the claim counts them out.
    finished: Mutex<HashSet<DeliveryId>>,
    /// Deliveries handed over by direct dispatch that wait for a worker: each is as good
    /// as a taken permit for the next offer.
    direct_waiting: AtomicUsize,
    /// Attempts made by this pool, for `/metrics`.
    metrics: Metrics,
}

impl WorkerPool {
    pub fn spawn(
        pool: PgPool,
        client: reqwest::Client,
        portal_client: Option<reqwest::Client>,
        settings: WorkerSettings,
        cancel: CancellationToken,
    ) -> Self {
        let (done, done_rx) = mpsc::channel(settings.concurrency * 2);
        let shared = Arc::new(Shared {
            pool,
            client,
            portal_client,
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            settings,
            worker_id: Uuid::now_v7(),
            wake: Notify::new(),
            tasks: TaskTracker::new(),
            done,
            cancel: cancel.clone(),
            drained: CancellationToken::new(),
            capacity: Capacity::default(),
            finished: Mutex::default(),
            direct_waiting: AtomicUsize::new(0),
            metrics: Metrics::new(),
        });
        info!(worker_id = %shared.worker_id, concurrency = shared.settings.concurrency, "worker pool started");
        let wake = shared.clone();
        tokio::spawn(db::listen::forward(
            shared.pool.clone(),
            CHANNEL,
            move || wake.wake.notify_one(),
            cancel.clone(),
        ));
        let completer = tokio::spawn(complete(shared.clone(), done_rx));
        let dispatcher = tokio::spawn(dispatch(shared.clone(), cancel, completer));
        Self { dispatcher, shared }
    }

    /// The handle the API uses to send what it has just accepted without a claim.
    pub fn direct(&self) -> Direct {
        Direct(self.shared.clone())
    }

    /// Resolves once the pool has stopped (after the cancellation token fired and in-flight
    /// sends finished or ran out of grace).
    pub async fn join(self) {
        if let Err(e) = self.dispatcher.await {
            error!(error = %e, "worker dispatcher panicked");
        }
    }
}

/// The dispatcher: claims (`claim_loop`, started again should it panic) until shutdown,
/// then drains the sends in flight and stops the completer.
async fn dispatch(
    shared: Arc<Shared>,
    cancel: CancellationToken,
    completer: tokio::task::JoinHandle<()>,
) {
    let looping = shared.clone();
    crate::respawn::respawning("worker dispatcher", move || {
        claim_loop(looping.clone(), cancel.clone())
    })
    .await;
    drain(&shared, completer).await;
}

/// Sweeps expired leases, claims due rows while workers are free (round-robin over the
/// endpoints) and hands each to a worker; rests, until a wake-up, the poll or a
/// rate-limited endpoint's next token, once every endpoint with due rows has been looked
/// at. Returns at shutdown.
async fn claim_loop(shared: Arc<Shared>, cancel: CancellationToken) {
    let permits = shared.permits.clone();
    let mut cursor: ClaimCursor = None;
    // Whether the claims since the last full batch began at the first endpoint: only then
    // has a walk that reaches the end seen every endpoint.
    let mut lap_from_start = true;
    let mut next_sweep = Instant::now();
    // When a rate-limited endpoint that just sent may have its next token: no notification
    // announces a refilled bucket, so the dispatcher looks again then.
    let mut rate_wake: Option<Instant> = None;

    while !cancel.is_cancelled() {
        if Instant::now() >= next_sweep {
            match deliveries::reclaim_expired(&shared.pool).await {
                Ok(0) => {}
                Ok(n) => warn!(count = n, "took back deliveries whose lease expired"),
                Err(e) => warn!(error = %e, "sweeping expired leases failed"),
            }
            next_sweep = Instant::now() + shared.settings.poll_interval;
        }
        let free = permits.available_permits();
        if free == 0 {
            tokio::select! {
                p = permits.clone().acquire_owned() => drop(p),
                _ = cancel.cancelled() => break,
            }
            continue;
        }
        let limit = free.min(MAX_BATCH);
        // The claimed rows' leases begin no earlier than this.
        let start_by = Instant::now() + shared.settings.send_window();
        if cursor.is_none() {
            lap_from_start = true;
        }
        let finished: Vec<DeliveryId> = shared
            .finished
            .lock()
            .expect("finished set poisoned")
            .iter()
            .copied()
            .collect();
        let claimed = deliveries::claim(
            &shared.pool,
            shared.worker_id,
            shared.settings.lease,
            limit as i64,
            shared.settings.endpoint_concurrency,
            cursor,
            &finished,
        )
        .await;
        let more_due = match claimed {
            Ok(batch) => {
                let rows = batch.rows;
                let full = rows.len() == limit;
                shared.capacity.note_capped(&rows);
                if let Some(next) = next_token(&rows, shared.settings.poll_interval) {
                    rate_wake = Some(rate_wake.map_or(next, |at| at.min(next)));
                }
                // Round-robin over the endpoints with due rows: a full batch resumes after
                // the last endpoint it served; an unfilled one after the last endpoint its
                // walk reached, even if it took nothing there (endpoints at their cap or
                // out of tokens must not hide the ones behind them), until a walk reaches
                // the end.
                cursor = if full {
                    rows.iter().map(|r| r.endpoint_id).max()
                } else {
                    batch.walk_end
                };
                if full {
                    // Rows may be due anywhere again: this lap must come round to the
                    // start before the dispatcher may rest.
                    lap_from_start = false;
                }
                // Held from now on, waiting for a worker included.
                let mut held: VecDeque<Held> = rows
                    .into_iter()
                    .map(|row| Held::take(&shared, row))
                    .collect();
                while !held.is_empty() {
                    // Direct dispatch may have taken permits since `free` was read; then
                    // this waits for one, but never past the time the sends could still
                    // end within their leases: what is left goes back to the queue.
                    match shared.permit_until(start_by).await {
                        Some(permit) => {
                            let next = held.pop_front().expect("not empty");
                            shared.spawn_delivery(next, permit);
                        }
                        None => {
                            shared.give_back(held.into()).await;
                            break;
                        }
                    }
                }
                // Rest only once the walks since the start have reached the end: every
                // endpoint with due rows has been looked at since the last full batch.
                full || cursor.is_some() || !lap_from_start
            }
            Err(e) => {
                warn!(error = %e, "claiming deliveries failed");
                // The next try walks from the first endpoint: none is left unvisited.
                cursor = None;
                false
            }
        };
        if more_due {
            continue;
        }
        let poll = Instant::now() + shared.settings.poll_interval;
        let until = rate_wake.map_or(poll, |at| at.min(poll));
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(until.into()) => {}
            _ = cancel.cancelled() => break,
        }
        if rate_wake.is_some_and(|at| at <= Instant::now()) {
            rate_wake = None;
        }
    }
}

/// Stops claiming; gives in-flight sends a bounded time to finish. Whatever is cut off
/// keeps its lease, which expires and lets another worker try again.
async fn drain(shared: &Shared, completer: tokio::task::JoinHandle<()>) {
    shared.tasks.close();
    let in_flight = shared.tasks.len();
    if in_flight > 0 {
        info!(in_flight, "shutting down: waiting for in-flight deliveries");
    }
    if tokio::time::timeout(shared.settings.shutdown_grace, shared.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            abandoned = shared.tasks.len(),
            "shutdown grace ran out; abandoned deliveries will be retried after their lease"
        );
    }
    // The completer writes what is queued, then stops.
    shared.drained.cancel();
    let _ = completer.await;
    info!("worker pool stopped");
}

/// When the fastest rate-limited endpoint among `rows` has its next token: one token's time
/// from now, between 10 ms and the poll interval.
fn next_token(rows: &[Claimed], poll: Duration) -> Option<Instant> {
    let per_second = rows.iter().filter_map(|r| r.rate_limit).max()?;
    let wait = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
    Some(
        Instant::now()
            + wait.clamp(
                Duration::from_millis(10),
                poll.max(Duration::from_millis(10)),
            ),
    )
}
