//! The worker's side of the outbox: claim due rows under a lease, complete them fenced.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection, PgExecutor, PgPool, Row};
use uuid::Uuid;

use crate::domain::{
    AppId, AttemptId, AttemptOutcome, AttemptTrigger, DeliveryId, DeliveryState, EndpointId,
    MessageId,
};

/// A claimed delivery with everything needed to send it, fetched in the claim itself.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    pub id: DeliveryId,
    /// Already incremented: the number of the attempt about to be made. Also the fence.
    pub attempt_count: i32,
    /// `claim_next` returns it as text (its signature predates the typed columns).
    #[sqlx(try_from = "String")]
    pub trigger: AttemptTrigger,
    /// Attempts made before the last replay: the retry schedule counts from here.
    pub retry_base: i32,
    pub message_id: MessageId,
    pub app_id: AppId,
    pub event_type: String,
    pub payload: String,
    /// The message's payload was erased: there is nothing to send.
    #[sqlx(skip)]
    pub payload_erased: bool,
    pub message_created_at: DateTime<Utc>,
    pub endpoint_id: EndpointId,
    pub url: String,
    pub headers: Json<BTreeMap<String, String>>,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    /// Valid signing secrets, newest first.
    pub secrets: Vec<String>,
    /// Room the endpoint had under its cap when this claim started.
    pub room: i64,
    /// The endpoint's cap on requests in flight.
    pub max_in_flight: i32,
    /// The endpoint's requests per second, if limited.
    pub rate_limit: Option<i32>,
}

/// Most endpoints one claim considers. With more endpoints than this having due work,
/// successive claims walk them round-robin (see [`ClaimCursor`]).
const ENDPOINTS_PER_CLAIM: i64 = 128;

/// Where the next claim's walk over endpoints starts: just after this endpoint, or at the
/// first one.
pub type ClaimCursor = Option<EndpointId>;

/// What one claim took, and where its walk over endpoints stopped.
#[derive(Debug, Default)]
pub struct ClaimBatch {
    pub rows: Vec<Claimed>,
    /// The last endpoint walked when the walk stopped early, at [`ENDPOINTS_PER_CLAIM`]
    /// endpoints with due rows or at four times as many probes (migration 0038), even when
    /// it took nothing: more may have due rows after it. `None` when the walk reached the
    /// last one.
    pub walk_end: ClaimCursor,
}

/// Claims up to `limit` due deliveries, endpoint by endpoint (`herald.claim_next`,
/// migrations 0005 to 0038): it walks the endpoints that have due rows (in id order from
/// `after`, a loose index scan reading one entry an endpoint, at most
/// [`ENDPOINTS_PER_CLAIM`] of them), gives each no more rows than its cap
/// leaves room for (counting what every worker has in flight there, under a lock on the
/// endpoint) and its rate limit has tokens for, and takes its oldest due rows first. Rows
/// and endpoints other workers hold are skipped, never waited for. `finished` are the
/// worker's deliveries whose request is over but whose completion is not written yet:
/// still in flight in the table, they take no room at their endpoint (migration 0034).
pub async fn claim(
    db: &PgPool,
    worker: Uuid,
    lease: Duration,
    limit: i64,
    default_max_in_flight: i32,
    after: ClaimCursor,
    finished: &[DeliveryId],
) -> sqlx::Result<ClaimBatch> {
    let rows = sqlx::query("select * from herald.claim_next($1, $2, $3, $4, $5, $6, $7)")
        .bind(worker)
        .bind(lease.as_secs_f64())
        .bind(limit)
        .bind(default_max_in_flight)
        .bind(ENDPOINTS_PER_CLAIM)
        .bind(after.map_or(Uuid::nil(), |e| e.0))
        .bind(finished)
        .fetch_all(db)
        .await?;
    let mut batch = ClaimBatch::default();
    for row in &rows {
        // Every row carries the walk's end; a claim that took nothing although its walk
        // stopped early returns one row with nothing else.
        batch.walk_end = row.try_get::<Option<Uuid>, _>("walk_end")?.map(EndpointId);
        if row.try_get::<Option<Uuid>, _>("id")?.is_some() {
            batch.rows.push(Claimed::from_row(row)?);
        }
    }
    if let Err(e) = mark_erased(db, &mut batch.rows).await {
        // Claimed but not checked: handed back, rather than held until their leases run
        // out. If that fails too, the leases do expire and the sweep hands them back.
        let rows: Vec<(DeliveryId, i32)> =
            batch.rows.iter().map(|r| (r.id, r.attempt_count)).collect();
        if let Ok(mut conn) = db.acquire().await {
            let _ = release(&mut conn, worker, &rows).await;
        }
        return Err(e);
    }
    Ok(batch)
}

/// Marks the claimed rows whose message's payload was erased. An erasure stops the
/// deliveries that were still to be sent, but one can still come back to the queue after
/// it (a lease that ran out, a replay racing the erasure); the claim reads the payload as
/// JSON `null` then, which must not be sent as if the sender had sent it. Only rows whose
/// payload is `null` are looked up, so an ordinary claim costs nothing more.
async fn mark_erased(db: impl PgExecutor<'_>, rows: &mut [Claimed]) -> sqlx::Result<()> {
    let nulls: Vec<MessageId> = rows
        .iter()
        .filter(|r| r.payload == "null")
        .map(|r| r.message_id)
        .collect();
    if nulls.is_empty() {
        return Ok(());
    }
    let erased: HashSet<MessageId> = sqlx::query_scalar(
        "select id from message where id = any($1) and payload_erased_at is not null",
    )
    .bind(&nulls)
    .fetch_all(db)
    .await?
    .into_iter()
    .collect();
    for row in rows {
        row.payload_erased = erased.contains(&row.message_id);
    }
    Ok(())
}

/// Returns deliveries whose lease ran out (their worker died or lost the database) to
/// `pending`, keeping their due time, so the next claim takes them again. The dead
/// worker's late completion, if any, is fenced out.
pub async fn reclaim_expired(db: impl PgExecutor<'_>) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "update delivery
            set state = 'pending', locked_by = null, lease_expires_at = null, updated_at = now()
          where state = 'in_flight' and lease_expires_at <= now()
            and id >= (select floor_id from live_floor)",
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Returns held deliveries that were never sent to `pending`, as if never claimed (the
/// attempt number goes back too, and so do the rate-limit tokens the claim spent on them),
/// so any worker may claim them at once. Fenced like a
/// completion. Returns how many went back.
pub async fn release(
    db: &mut PgConnection,
    worker: Uuid,
    rows: &[(DeliveryId, i32)],
) -> sqlx::Result<u64> {
    let (ids, counts): (Vec<DeliveryId>, Vec<i32>) = rows.iter().copied().unzip();
    // A rate-limited endpoint gets back the tokens its claim spent on them.
    let released: i64 = sqlx::query_scalar(
        "with released as (
             update delivery d
                set state = 'pending', locked_by = null, lease_expires_at = null,
                    attempt_count = d.attempt_count - 1, updated_at = now()
               from unnest($2::uuid[], $3::int[]) as u(id, attempt_count)
              where d.id = u.id and d.locked_by = $1 and d.attempt_count = u.attempt_count
                and d.state = 'in_flight'
             returning d.endpoint_id
         ), refunded as (
             update endpoint e
                set rate_tokens = least(e.rate_limit::float8, e.rate_tokens + r.n)
               from (select endpoint_id, count(*) as n from released group by endpoint_id) r
              where e.id = r.endpoint_id and e.rate_limit is not null
         )
         select count(*) from released",
    )
    .bind(worker)
    .bind(ids)
    .bind(counts)
    .fetch_one(&mut *db)
    .await?;
    if released > 0 {
        // Due now: wake the workers of every process, not only this one's.
        sqlx::query("select pg_notify('herald_delivery', '')")
            .execute(&mut *db)
            .await?;
    }
    Ok(released as u64)
}

/// The end of one attempt, as the worker decided it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub delivery_id: DeliveryId,
    pub attempt_count: i32,
    pub message_id: MessageId,
    pub endpoint_id: EndpointId,
    pub app_id: AppId,
    /// `Succeeded`, `Pending` (retry at `next_attempt_at`) or `Dead`.
    pub state: DeliveryState,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// `None` when no request was made (the endpoint was disabled).
    pub attempt: Option<AttemptRecord>,
    pub endpoint_effect: EndpointEffect,
}

#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub id: AttemptId,
    pub trigger: AttemptTrigger,
    pub outcome: AttemptOutcome,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub duration_ms: i32,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointEffect {
    None,
    Succeeded,
    Failed,
    /// The receiver answered 410 Gone: it asked never to be called again.
    Gone,
}

/// Writes a batch of completions in one transaction. Each is fenced on (worker, attempt
/// number): a worker whose lease expired and whose row was claimed again writes nothing,
/// so it can never overwrite a newer attempt. Returns the deliveries actually completed.
pub async fn complete(
    tx: &mut PgConnection,
    worker: Uuid,
    batch: &[Completion],
    disable_after: Duration,
) -> sqlx::Result<Vec<DeliveryId>> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut counts = Vec::with_capacity(batch.len());
    let mut states = Vec::with_capacity(batch.len());
    let mut next_at = Vec::with_capacity(batch.len());
    let mut errors = Vec::with_capacity(batch.len());
    // Rows are locked in id order, as an erasure locks a message's deliveries: two writers
    // that take the same rows in one order cannot deadlock.
    let mut sorted: Vec<&Completion> = batch.iter().collect();
    sorted.sort_by_key(|c| c.delivery_id.0);
    for c in sorted {
        ids.push(c.delivery_id);
        counts.push(c.attempt_count);
        states.push(c.state);
        next_at.push(c.next_attempt_at);
        errors.push(c.last_error.as_deref());
    }
    let (Some(&oldest), Some(&newest)) = (ids.first(), ids.last()) else {
        return Ok(Vec::new());
    };
    let completed: Vec<DeliveryId> = sqlx::query_scalar(
        "update delivery d
            set state = u.state,
                next_attempt_at = coalesce(u.next_attempt_at, d.next_attempt_at),
                locked_by = null,
                lease_expires_at = null,
                last_error = u.last_error,
                updated_at = now()
           from unnest($2::uuid[], $3::int[], $4::delivery_state[], $5::timestamptz[],
                       $6::text[])
                as u(id, attempt_count, state, next_attempt_at, last_error)
          where d.id = u.id and d.locked_by = $1 and d.attempt_count = u.attempt_count
            and d.state = 'in_flight'
            -- The batch's own bounds: only the partitions its rows are in are read.
            and d.id between $7 and $8
         returning d.id",
    )
    .bind(worker)
    .bind(&ids)
    .bind(&counts)
    .bind(&states)
    .bind(&next_at)
    .bind(&errors)
    .bind(oldest)
    .bind(newest)
    .fetch_all(&mut *tx)
    .await?;

    let written: HashSet<DeliveryId> = completed.iter().copied().collect();
    let fenced: Vec<&Completion> = batch
        .iter()
        .filter(|c| written.contains(&c.delivery_id))
        .collect();
    insert_attempts(&mut *tx, &fenced).await?;
    apply_endpoint_effects(&mut *tx, &fenced, disable_after).await?;
    Ok(completed)
}

async fn insert_attempts(tx: &mut PgConnection, fenced: &[&Completion]) -> sqlx::Result<()> {
    let with_attempt: Vec<(&Completion, &AttemptRecord)> = fenced
        .iter()
        .filter_map(|c| c.attempt.as_ref().map(|a| (*c, a)))
        .collect();
    if with_attempt.is_empty() {
        return Ok(());
    }
    let mut cols = AttemptColumns::default();
    for (c, a) in with_attempt {
        cols.push(c, a);
    }
    let (oldest, newest) = match (cols.message_id.iter().min(), cols.message_id.iter().max()) {
        (Some(oldest), Some(newest)) => (*oldest, *newest),
        _ => return Ok(()),
    };
    // An attempt in flight while its message's payload was erased ends here: it is
    // recorded without the response body, and is not retried (the delivery is dead). The
    // delivery rows are locked by now (the fenced update), and the erasure waits for those
    // locks, so either it committed before this statement's snapshot, or it has not begun
    // stopping deliveries yet and will see this attempt and this state.
    sqlx::query(
        "with erased as (
             -- The bounds are the batch's own: they prune the partitions (every one of
             -- them would be probed for every id) down to the few its messages are in.
             select m.id from message m
              where m.id = any($3::uuid[]) and m.id between $17 and $18
                and m.payload_erased_at is not null
         ), stopped as (
             -- Almost always none are erased: the first test, which reads no row, is then
             -- a one-time filter and nothing below runs. Otherwise only the erased
             -- messages' deliveries are looked up, by id; `(…) is true` keeps the planner
             -- off the pending index (0033). (Testing the batch's every id against the
             -- state made this a scan of the whole partition whenever its statistics were
             -- older than its rows: 10 to 20 ms a batch in a fan-out.)
             update delivery d
                set state = 'dead', last_error = $16, updated_at = now()
              where exists (select 1 from erased)
                and d.id = any (array(select u.delivery_id
                                        from unnest($2::uuid[], $3::uuid[])
                                             as u(delivery_id, message_id)
                                       where u.message_id in (select id from erased)))
                and (d.state = 'pending') is true
         )
         insert into attempt (id, delivery_id, message_id, endpoint_id, app_id, attempt, trigger,
                              outcome, response_status, response_body, error_kind, error,
                              duration_ms, created_at, next_attempt_at)
         select id, delivery_id, message_id, endpoint_id, app_id, attempt,
                trigger,
                case when x.erased and outcome = 'retrying' then 'dead' else outcome end,
                response_status,
                case when x.erased then null else response_body end,
                error_kind, error, duration_ms, created_at,
                case when x.erased then null else next_attempt_at end
           from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::uuid[], $6::int[],
                       $7::attempt_trigger[], $8::attempt_outcome[], $9::int[], $10::text[],
                       $11::text[], $12::text[],
                       $13::int[], $14::timestamptz[], $15::timestamptz[])
                as u(id, delivery_id, message_id, endpoint_id, app_id, attempt, trigger, outcome,
                     response_status, response_body, error_kind, error, duration_ms,
                     created_at, next_attempt_at)
          cross join lateral (select u.message_id in (select id from erased) as erased) x",
    )
    .bind(cols.id)
    .bind(cols.delivery_id)
    .bind(cols.message_id)
    .bind(cols.endpoint_id)
    .bind(cols.app_id)
    .bind(cols.attempt)
    .bind(cols.trigger)
    .bind(cols.outcome)
    .bind(cols.response_status)
    .bind(cols.response_body)
    .bind(cols.error_kind)
    .bind(cols.error)
    .bind(cols.duration_ms)
    .bind(cols.created_at)
    .bind(cols.next_attempt_at)
    .bind(crate::db::messages::PAYLOAD_ERASED)
    .bind(oldest)
    .bind(newest)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Column-wise buffers for one multi-row insert through `unnest`.
#[derive(Default)]
struct AttemptColumns<'a> {
    id: Vec<AttemptId>,
    delivery_id: Vec<DeliveryId>,
    message_id: Vec<MessageId>,
    endpoint_id: Vec<EndpointId>,
    app_id: Vec<AppId>,
    attempt: Vec<i32>,
    trigger: Vec<AttemptTrigger>,
    outcome: Vec<AttemptOutcome>,
    response_status: Vec<Option<i32>>,
    response_body: Vec<Option<&'a str>>,
    error_kind: Vec<Option<&'static str>>,
    error: Vec<Option<&'a str>>,
    duration_ms: Vec<i32>,
    created_at: Vec<DateTime<Utc>>,
    next_attempt_at: Vec<Option<DateTime<Utc>>>,
}

impl<'a> AttemptColumns<'a> {
    fn push(&mut self, c: &'a Completion, a: &'a AttemptRecord) {
        self.id.push(a.id);
        self.delivery_id.push(c.delivery_id);
        self.message_id.push(c.message_id);
        self.endpoint_id.push(c.endpoint_id);
        self.app_id.push(c.app_id);
        self.attempt.push(c.attempt_count);
        self.trigger.push(a.trigger);
        self.outcome.push(a.outcome);
        self.response_status.push(a.response_status);
        self.response_body.push(a.response_body.as_deref());
        self.error_kind.push(a.error_kind);
        self.error.push(a.error.as_deref());
        self.duration_ms.push(a.duration_ms);
        self.created_at.push(a.started_at);
        self.next_attempt_at.push(c.next_attempt_at);
    }
}

/// Tracks each endpoint's run of failures: a success ends it, a 410 or a run longer than
/// `disable_after` disables the endpoint with the reason.
async fn apply_endpoint_effects(
    tx: &mut PgConnection,
    fenced: &[&Completion],
    disable_after: Duration,
) -> sqlx::Result<()> {
    // The latest word per endpoint wins, except that a 410 anywhere in the batch sticks.
    let mut effects: BTreeMap<EndpointId, (EndpointEffect, DateTime<Utc>)> = BTreeMap::new();
    for c in fenced {
        let at = c.attempt.as_ref().map_or_else(Utc::now, |a| a.started_at);
        if c.endpoint_effect == EndpointEffect::None {
            continue;
        }
        let entry = effects
            .entry(c.endpoint_id)
            .or_insert((c.endpoint_effect, at));
        if entry.0 != EndpointEffect::Gone {
            *entry = (c.endpoint_effect, at);
        }
    }
    if effects.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(effects.len());
    let mut kinds = Vec::with_capacity(effects.len());
    let mut ats = Vec::with_capacity(effects.len());
    for (id, (effect, at)) in effects {
        ids.push(id);
        kinds.push(match effect {
            EndpointEffect::Succeeded => "ok",
            EndpointEffect::Gone => "gone",
            _ => "failed",
        });
        ats.push(at);
    }
    sqlx::query(
        "update endpoint e
            set failing_since = case when u.kind = 'ok' then null
                                     else coalesce(e.failing_since, u.at) end,
                disabled = e.disabled
                           or u.kind = 'gone'
                           or (u.kind = 'failed'
                               and coalesce(e.failing_since, u.at)
                                   < now() - make_interval(secs => $4)),
                disabled_reason = case
                    when e.disabled then e.disabled_reason
                    when u.kind = 'gone' then 'the endpoint answered 410 Gone'
                    when u.kind = 'failed'
                         and coalesce(e.failing_since, u.at) < now() - make_interval(secs => $4)
                        then 'failing continuously since '
                             || to_char(coalesce(e.failing_since, u.at) at time zone 'UTC',
                                        'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                end,
                updated_at = now()
           from unnest($1::uuid[], $2::text[], $3::timestamptz[]) as u(id, kind, at)
          where e.id = u.id
            -- write only what changes: most batches change nothing
            and case u.kind
                    when 'ok' then e.failing_since is not null
                    when 'gone' then not e.disabled
                    else not e.disabled
                         and (e.failing_since is null
                              or e.failing_since < now() - make_interval(secs => $4))
                end",
    )
    .bind(ids)
    .bind(kinds)
    .bind(ats)
    .bind(disable_after.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    Ok(())
}
