//! The worker pool: one dispatcher claims due deliveries in batches and spawns a task per
//! request; one completer writes finished attempts back in batches. Wake-ups come from
//! `LISTEN herald_delivery`, with a poll as the fallback.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use super::client::BlockedTarget;
use super::outcome::parse_retry_after;
use super::signature::signature_header;
use super::{RetrySchedule, Verdict, decide};
use crate::config::Config;
use crate::db;
use crate::db::deliveries::{
    self, AttemptRecord, ClaimCursor, Claimed, Completion, EndpointEffect,
};
use crate::db::messages::{DirectOffer, Sent};
use crate::domain::{
    AttemptId, DeliveryId, EndpointId, SigningSecret, is_public_ip, refused_header,
};
use crate::metrics::Metrics;

/// The channel deliveries are announced on (by `herald.send_message`).
pub const CHANNEL: &str = "herald_delivery";
/// Bytes of a response body kept on the attempt.
const RESPONSE_BODY_LIMIT: usize = 4096;
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
    /// Endpoints whose last claim filled their cap: their completions must wake the
    /// dispatcher, since rows may be waiting for exactly that room.
    capped: Mutex<HashSet<EndpointId>>,
    /// This process's deliveries held per endpoint (waiting for a worker or in flight),
    /// with the endpoint's cap: direct dispatch stays off endpoints this process already
    /// fills.
    in_flight: Mutex<HashMap<EndpointId, (i32, i32)>>,
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
        settings: WorkerSettings,
        cancel: CancellationToken,
    ) -> Self {
        let (done, done_rx) = mpsc::channel(settings.concurrency * 2);
        let shared = Arc::new(Shared {
            pool,
            client,
            permits: Arc::new(Semaphore::new(settings.concurrency)),
            settings,
            worker_id: Uuid::now_v7(),
            wake: Notify::new(),
            tasks: TaskTracker::new(),
            done,
            cancel: cancel.clone(),
            drained: CancellationToken::new(),
            capped: Mutex::new(HashSet::new()),
            in_flight: Mutex::new(HashMap::new()),
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

/// Direct dispatch (`herald.enqueue`): the API offers this process's workers when it stores
/// a message, and hands over the deliveries the database gave them.
#[derive(Clone)]
pub struct Direct(Arc<Shared>);

impl Direct {
    /// `None` when no worker is free or the pool is stopping: the message then goes
    /// through the queue like any other.
    pub fn offer(&self) -> Option<DirectOffer> {
        let shared = &self.0;
        if shared.cancel.is_cancelled()
            || shared.permits.available_permits() <= shared.direct_waiting.load(Ordering::Acquire)
        {
            return None;
        }
        let busy_endpoints: Vec<EndpointId> = shared
            .in_flight
            .lock()
            .expect("in-flight map poisoned")
            .iter()
            .filter(|(_, (n, cap))| n >= cap)
            .map(|(endpoint, _)| *endpoint)
            .collect();
        // What is sent to a full endpoint is queued, and only a completion there can make
        // room for it. Mark it before the send commits: marked after, a completion landing
        // in between would find nothing to wake for, and the delivery would wait for the
        // poll.
        if !busy_endpoints.is_empty() {
            let mut capped = shared.capped.lock().expect("capped set poisoned");
            capped.extend(busy_endpoints.iter().copied());
        }
        Some(DirectOffer {
            made_at: Instant::now(),
            worker: shared.worker_id,
            lease: shared.settings.lease,
            busy_endpoints,
        })
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
        if !sent.queued_for.is_empty() {
            let mut capped = self.0.capped.lock().expect("capped set poisoned");
            capped.extend(sent.queued_for.iter().copied());
        }
        let message = &sent.message;
        for d in &sent.claimed {
            let row = Claimed {
                id: DeliveryId(d.id),
                attempt_count: 1,
                trigger: "scheduled".into(),
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

async fn dispatch(
    shared: Arc<Shared>,
    cancel: CancellationToken,
    completer: tokio::task::JoinHandle<()>,
) {
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
        let claimed = deliveries::claim(
            &shared.pool,
            shared.worker_id,
            shared.settings.lease,
            limit as i64,
            shared.settings.endpoint_concurrency,
            cursor,
        )
        .await;
        let more_due = match claimed {
            Ok(batch) => {
                let rows = batch.rows;
                let full = rows.len() == limit;
                shared.note_capped(&rows);
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

    // Stop claiming; give in-flight sends a bounded time to finish. Whatever is cut off
    // keeps its lease, which expires and lets another worker try again.
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

/// A delivery this process holds under a lease, from its claim (or direct insert) until
/// its completion is queued: counted among the endpoint's requests in flight the whole
/// time, waiting for a worker included.
struct Held {
    row: Claimed,
    shared: Arc<Shared>,
}

impl Held {
    fn take(shared: &Arc<Shared>, row: Claimed) -> Self {
        shared.count_in_flight(row.endpoint_id, row.max_in_flight, 1);
        Self {
            row,
            shared: shared.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shared
            .count_in_flight(self.row.endpoint_id, self.row.max_in_flight, -1);
    }
}

impl Shared {
    fn note_capped(&self, rows: &[Claimed]) {
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

    fn count_in_flight(&self, endpoint: EndpointId, cap: i32, delta: i32) {
        let mut in_flight = self.in_flight.lock().expect("in-flight map poisoned");
        let entry = in_flight.entry(endpoint).or_insert((0, cap));
        entry.0 += delta;
        entry.1 = cap;
        if entry.0 <= 0 {
            in_flight.remove(&endpoint);
        }
    }

    /// Forgets the endpoints of `batch` as full; true if any was.
    fn uncap(&self, batch: &[Completion]) -> bool {
        let mut capped = self.capped.lock().expect("capped set poisoned");
        if capped.is_empty() {
            return false;
        }
        let before = capped.len();
        for c in batch {
            capped.remove(&c.endpoint_id);
        }
        capped.len() < before
    }

    /// A worker for a held delivery, if one frees up by `start_by` and the pool is not
    /// stopping.
    async fn permit_until(&self, start_by: Instant) -> Option<OwnedSemaphorePermit> {
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
    async fn give_back(&self, held: Vec<Held>) {
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

    fn spawn_delivery(self: &Arc<Self>, held: Held, permit: OwnedSemaphorePermit) {
        let row = &held.row;
        let span = info_span!("deliver", message_id = %row.message_id,
            endpoint_id = %row.endpoint_id, attempt = row.attempt_count);
        self.tasks
            .spawn(self.clone().deliver(held, permit).instrument(span));
    }

    async fn deliver(self: Arc<Self>, held: Held, _permit: OwnedSemaphorePermit) {
        let row = &held.row;
        let completion = if row.disabled {
            let reason = row.disabled_reason.as_deref().unwrap_or("disabled");
            Completion {
                state: "dead",
                next_attempt_at: None,
                last_error: Some(format!("endpoint disabled: {reason}")),
                attempt: None,
                endpoint_effect: EndpointEffect::None,
                ..completion_base(row)
            }
        } else if row.payload_erased {
            // Like a disabled endpoint: nothing is sent, and the delivery ends with why.
            Completion {
                state: "dead",
                next_attempt_at: None,
                last_error: Some(db::messages::PAYLOAD_ERASED.to_owned()),
                attempt: None,
                endpoint_effect: EndpointEffect::None,
                ..completion_base(row)
            }
        } else {
            self.attempt(row).await
        };
        drop(held);
        if self.done.send(completion).await.is_err() {
            warn!("completer gone; the lease will expire and the delivery will be retried");
        }
    }

    async fn attempt(&self, row: &Claimed) -> Completion {
        let started_at = Utc::now();
        let clock = Instant::now();
        let result = self.send(row, started_at.timestamp()).await;
        let took = clock.elapsed();
        let duration_ms = i32::try_from(took.as_millis()).unwrap_or(i32::MAX);

        let (status, retry_after, body, failure) = match result {
            Ok(r) => {
                let failure = match r.status {
                    200..=299 => None,
                    300..=399 => Some((
                        "redirect",
                        format!("HTTP {} (redirects are not followed)", r.status),
                    )),
                    s => Some(("http_status", format!("HTTP {s}"))),
                };
                (Some(r.status), r.retry_after, Some(r.body), failure)
            }
            Err(f) => (None, None, None, Some((f.kind, f.message))),
        };
        let verdict = decide(
            status,
            retry_after,
            row.attempt_count - row.retry_base,
            &self.settings.retry_schedule,
        );
        let (state, outcome, next_attempt_at, effect) = match verdict {
            Verdict::Succeeded => ("succeeded", "succeeded", None, EndpointEffect::Succeeded),
            Verdict::Retry(delay) => (
                "pending",
                "retrying",
                Some(Utc::now() + delay),
                EndpointEffect::Failed,
            ),
            Verdict::Dead => ("dead", "dead", None, EndpointEffect::Failed),
            Verdict::Gone => ("dead", "dead", None, EndpointEffect::Gone),
        };
        let (error_kind, error) = match failure {
            Some((kind, message)) => (Some(kind), Some(message)),
            None => (None, None),
        };
        self.metrics.record_attempt(outcome, took);
        match verdict {
            Verdict::Succeeded => debug!(status, duration_ms, "delivered"),
            _ => info!(
                status,
                duration_ms,
                error = error.as_deref(),
                outcome,
                "attempt failed"
            ),
        }
        Completion {
            state,
            next_attempt_at,
            last_error: error.clone(),
            attempt: Some(AttemptRecord {
                id: AttemptId::new(),
                trigger: if row.trigger == "replay" {
                    "replay"
                } else {
                    "scheduled"
                },
                outcome,
                response_status: status.map(i32::from),
                response_body: body,
                error_kind,
                error,
                duration_ms,
                started_at,
            }),
            endpoint_effect: effect,
            ..completion_base(row)
        }
    }

    async fn send(&self, row: &Claimed, timestamp: i64) -> Result<Response, Failure> {
        let url = reqwest::Url::parse(&row.url).map_err(|e| Failure {
            kind: "invalid_url",
            message: e.to_string(),
        })?;
        // IP literals skip DNS, so the resolver's check never sees them: check here.
        if !self.settings.allow_private_targets {
            let literal = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
                _ => None,
            };
            if let Some(ip) = literal.filter(|ip| !is_public_ip(*ip)) {
                return Err(Failure {
                    kind: "blocked",
                    message: format!("{ip} is not a public address"),
                });
            }
        }
        let body = envelope(row);
        let msg_id = row.message_id.to_string();
        let secrets: Vec<SigningSecret> = row
            .secrets
            .iter()
            .filter_map(|s| SigningSecret::parse(s).ok())
            .collect();
        let mut headers = HeaderMap::new();
        // Rows stored before a header rule existed may still carry what it refuses.
        for (name, value) in row
            .headers
            .iter()
            .filter(|(n, _)| refused_header(n).is_none())
        {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("webhook-id", header_value(&msg_id));
        headers.insert("webhook-timestamp", header_value(&timestamp.to_string()));
        headers.insert(
            "webhook-signature",
            header_value(&signature_header(
                &secrets,
                &msg_id,
                timestamp,
                body.as_bytes(),
            )),
        );

        let mut response = self
            .client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(Failure::from_reqwest)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let mut kept = Vec::new();
        while kept.len() < RESPONSE_BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = RESPONSE_BODY_LIMIT - kept.len();
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                // The status already decided the attempt; a body cut short changes nothing.
                Ok(None) | Err(_) => break,
            }
        }
        let body = String::from_utf8_lossy(&kept).replace('\0', "");
        Ok(Response {
            status,
            retry_after,
            body,
        })
    }
}

struct Response {
    status: u16,
    retry_after: Option<Duration>,
    body: String,
}

/// Why no response arrived.
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    fn from_reqwest(e: reqwest::Error) -> Self {
        // reqwest's text names the URL, and a webhook URL is often a credential itself
        // (Slack's and Discord's carry the key in the path): the endpoint is named by id,
        // in the span, and never by its URL, in the log or in the stored error.
        let e = e.without_url();
        let chain = error_chain(&e);
        let kind = if source_is::<BlockedTarget>(&e) {
            "blocked"
        } else if e.is_timeout() {
            "timeout"
        } else if chain.contains("certificate") || chain.contains("tls") || chain.contains("ssl") {
            "tls"
        } else if e.is_connect() {
            "connect"
        } else {
            "request"
        };
        Self {
            kind,
            message: chain,
        }
    }
}

fn source_is<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<T>() {
            return true;
        }
        current = err.source();
    }
    false
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut current = e.source();
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ").to_lowercase()
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("ids, timestamps and signatures are ASCII")
}

/// The exact bytes that are signed and sent:
/// `{"type":<event_type>,"timestamp":<RFC 3339>,"data":<payload as given>}`.
fn envelope(row: &Claimed) -> String {
    let event_type = serde_json::to_string(&row.event_type).expect("a string serialises");
    let timestamp = row
        .message_created_at
        .to_rfc3339_opts(SecondsFormat::Micros, true);
    format!(
        r#"{{"type":{event_type},"timestamp":"{timestamp}","data":{}}}"#,
        row.payload
    )
}

fn completion_base(row: &Claimed) -> Completion {
    Completion {
        delivery_id: row.id,
        attempt_count: row.attempt_count,
        message_id: row.message_id,
        endpoint_id: row.endpoint_id,
        app_id: row.app_id,
        state: "pending",
        next_attempt_at: None,
        last_error: None,
        attempt: None,
        endpoint_effect: EndpointEffect::None,
    }
}

/// Writes completions in batches until the pool has drained.
async fn complete(shared: Arc<Shared>, mut done: mpsc::Receiver<Completion>) {
    // A connection of its own: under load the pool's connections are queued for by every
    // API request, and each wait here would delay the record of every attempt in the batch.
    let mut conn: Option<PgConnection> = None;
    loop {
        let first = tokio::select! {
            c = done.recv() => c,
            _ = shared.drained.cancelled() => done.try_recv().ok(),
        };
        let Some(first) = first else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match done.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        // Unmark the endpoints before the commit, not after: a claim that runs right after
        // the commit can fill an endpoint again and mark it, and an unmark landing after
        // that mark would erase it, so that no later completion there would wake anyone
        // and its queue would wait for the poll. Every claim from the commit on sees the
        // room made, and marks what it fills; the wake below makes sure one runs.
        let room_made = shared.uncap(&batch);
        write_completions(&shared, &mut conn, &batch).await;
        if room_made {
            // Room was made at a full endpoint: rows held back by its cap can go now.
            shared.wake.notify_one();
        }
    }
}

/// Retries a failed write a few times; if the database stays away, the rows keep their
/// leases, which expire, and the deliveries are attempted again (at-least-once).
async fn write_completions(shared: &Shared, conn: &mut Option<PgConnection>, batch: &[Completion]) {
    let mut wait = Duration::from_millis(100);
    for _ in 0..8 {
        let written = async {
            let c = match conn {
                Some(c) => c,
                None => {
                    conn.insert(PgConnection::connect_with(&shared.pool.connect_options()).await?)
                }
            };
            let mut tx = c.begin().await?;
            let completed = deliveries::complete(
                &mut tx,
                shared.worker_id,
                batch,
                shared.settings.disable_after,
            )
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(completed)
        }
        .await;
        match written {
            Ok(completed) => {
                if completed.len() < batch.len() {
                    let completed: HashSet<_> = completed.into_iter().collect();
                    for c in batch.iter().filter(|c| !completed.contains(&c.delivery_id)) {
                        warn!(delivery_id = %c.delivery_id, attempt = c.attempt_count,
                            "lease lost before completion: a newer attempt owns this delivery, or it was deleted");
                    }
                }
                return;
            }
            Err(e) => {
                warn!(error = %e, count = batch.len(), "recording attempts failed; retrying");
                *conn = None;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    error!(
        count = batch.len(),
        "could not record attempts; they will be retried when their leases expire"
    );
}
