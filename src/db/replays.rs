//! Sending again on request: replay a message, retry one delivery now, and recover an
//! endpoint's dead deliveries in a time window, in resumable batches.
//!
//! Every form puts delivery rows back to `pending`, due now, with trigger `replay` and a
//! fresh retry schedule (`retry_base`); the row, and so the `webhook-id`, stays the same.
//! A delivery in flight is left alone: it is being attempted at this very moment. A
//! message whose payload was erased has nothing to send: replaying it or retrying one of
//! its deliveries is refused (`payload_erased`), and a recover passes over it.

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{AppId, DeliveryId, DeliveryState, EndpointId, MessageId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    NotFound(&'static str),
    EndpointDisabled,
    InFlight,
    /// The message's payload was erased: there is nothing to send.
    PayloadErased,
}

impl Refused {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::EndpointDisabled => "endpoint_disabled",
            Self::InFlight => "in_flight",
            Self::PayloadErased => "payload_erased",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::NotFound(what) => format!("{what} not found"),
            Self::EndpointDisabled => {
                "the endpoint is disabled: enable it first, then replay".to_owned()
            }
            Self::InFlight => {
                "an attempt of this delivery is in flight right now; its outcome will follow"
                    .to_owned()
            }
            Self::PayloadErased => {
                "the message's payload was erased: there is nothing to send".to_owned()
            }
        }
    }
}

pub type Replayed = Result<Vec<DeliveryId>, Refused>;

/// Wakes the workers of every process: replayed rows are due now.
async fn notify_workers(db: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("select pg_notify('herald_delivery', '')")
        .execute(db)
        .await?;
    Ok(())
}

/// Checks that `endpoint` belongs to `app` and can be sent to.
async fn usable_endpoint(
    db: &mut PgConnection,
    app: AppId,
    endpoint: EndpointId,
) -> sqlx::Result<Result<(), Refused>> {
    let disabled: Option<bool> =
        sqlx::query_scalar("select disabled from endpoint where id = $1 and app_id = $2")
            .bind(endpoint)
            .bind(app)
            .fetch_optional(&mut *db)
            .await?;
    Ok(match disabled {
        None => Err(Refused::NotFound("endpoint")),
        Some(true) => Err(Refused::EndpointDisabled),
        Some(false) => Ok(()),
    })
}

/// Sends `message` again: to `endpoint`, or to every enabled endpoint subscribed to its
/// event type. `app`, when given, must be the message's application. Returns the
/// deliveries queued (an endpoint that joined after the message gets a new one).
pub async fn replay_message(
    db: &mut PgConnection,
    message: MessageId,
    app: Option<AppId>,
    endpoint: Option<EndpointId>,
) -> sqlx::Result<Replayed> {
    // The message's row lock makes replays of one message (and its erasure) take turns:
    // the insert below adds a delivery only where none exists, which one partition's
    // unique index (message_id, endpoint_id) would otherwise refuse to the second of two
    // replays racing to a new endpoint. The lock leaves sends and claims alone (their
    // foreign key checks take KEY SHARE).
    let mut tx = db.begin().await?;
    super::plan_on_indexes(&mut tx).await?;
    let owner: Option<(AppId, bool)> = sqlx::query_as(
        "select app_id, payload_erased_at is not null from message
          where id = $1 and ($2::uuid is null or app_id = $2)
            for no key update",
    )
    .bind(message)
    .bind(app)
    .fetch_optional(&mut *tx)
    .await?;
    let app = match owner {
        None => return Ok(Err(Refused::NotFound("message"))),
        Some((_, true)) => return Ok(Err(Refused::PayloadErased)),
        Some((app, false)) => app,
    };
    if let Some(endpoint) = endpoint {
        if let Err(refused) = usable_endpoint(&mut tx, app, endpoint).await? {
            return Ok(Err(refused));
        }
        let state: Option<DeliveryState> = sqlx::query_scalar(
            "select state from delivery where message_id = $1 and endpoint_id = $2",
        )
        .bind(message)
        .bind(endpoint)
        .fetch_optional(&mut *tx)
        .await?;
        if state == Some(DeliveryState::InFlight) {
            return Ok(Err(Refused::InFlight));
        }
    }
    // Its deliveries become live: the claim looks for them from the live floor on
    // (migration 0016).
    sqlx::query("select herald.live_from($1)")
        .bind(message)
        .execute(&mut *tx)
        .await?;
    // Existing deliveries go back to pending; an endpoint that joined after the message
    // gets a new one, whose id carries the message's time (it shares its partition).
    let queued: Vec<DeliveryId> = sqlx::query_scalar(
        "with target as (
             select m.id as message_id, e.id as endpoint_id
               from message m
               join endpoint e on e.app_id = m.app_id
              where m.id = $1 and m.payload_erased_at is null and not e.disabled
                and case when $2::uuid is null
                         then herald.route_miss(e.app_id, e.event_types, e.channels, e.filter,
                                                m.event_type, m.channels, m.payload) is null
                         else e.id = $2 end
         ), again as (
             update delivery d
                set state = 'pending', next_attempt_at = now(), trigger = 'replay',
                    retry_base = d.attempt_count, last_error = null, updated_at = now()
               from target t
              where d.message_id = t.message_id and d.endpoint_id = t.endpoint_id
                and d.state <> 'in_flight'
             returning d.id
         ), added as (
             insert into delivery (id, message_id, endpoint_id, state, trigger,
                                   next_attempt_at)
             select uuid_v7_at(t.message_id), t.message_id, t.endpoint_id, 'pending',
                    'replay', now()
               from target t
              where not exists (select 1 from delivery d
                                 where d.message_id = t.message_id
                                   and d.endpoint_id = t.endpoint_id)
             returning id
         )
         select id from again union all select id from added",
    )
    .bind(message)
    .bind(endpoint)
    .fetch_all(&mut *tx)
    .await?;
    notify_workers(&mut tx).await?;
    tx.commit().await?;
    Ok(Ok(queued))
}

/// Sends one delivery again now, whatever its state or schedule (but not while an attempt
/// of it is in flight). `app`, when given, must be the delivery's application.
pub async fn retry_delivery(
    db: &mut PgConnection,
    delivery: DeliveryId,
    app: Option<AppId>,
) -> sqlx::Result<Replayed> {
    let mut tx = db.begin().await?;
    let found: Option<(DeliveryState, bool, bool)> = sqlx::query_as(
        "select d.state, e.disabled, m.payload_erased_at is not null
           from delivery d
           join message m on m.id = d.message_id
           join endpoint e on e.id = d.endpoint_id
          where d.id = $1 and ($2::uuid is null or m.app_id = $2)",
    )
    .bind(delivery)
    .bind(app)
    .fetch_optional(&mut *tx)
    .await?;
    match found {
        None => return Ok(Err(Refused::NotFound("delivery"))),
        Some((_, _, true)) => return Ok(Err(Refused::PayloadErased)),
        Some((_, true, _)) => return Ok(Err(Refused::EndpointDisabled)),
        Some((DeliveryState::InFlight, ..)) => return Ok(Err(Refused::InFlight)),
        Some(_) => {}
    }
    // Live again: see replay_message.
    sqlx::query("select herald.live_from($1)")
        .bind(delivery)
        .execute(&mut *tx)
        .await?;
    let queued: Vec<DeliveryId> = sqlx::query_scalar(
        "update delivery d
            set state = 'pending', next_attempt_at = now(), trigger = 'replay',
                retry_base = d.attempt_count, last_error = null, updated_at = now()
          where d.id = $1 and d.state <> 'in_flight'
            and not exists (select 1 from message m
                             where m.id = d.message_id and m.payload_erased_at is not null)
         returning d.id",
    )
    .bind(delivery)
    .fetch_all(&mut *tx)
    .await?;
    if queued.is_empty() {
        // An attempt was claimed between the check and the update.
        return Ok(Err(Refused::InFlight));
    }
    notify_workers(&mut tx).await?;
    tx.commit().await?;
    Ok(Ok(queued))
}

/// A recover as stored.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Recovery {
    pub id: Uuid,
    pub total: i32,
}

/// Records a recover of `endpoint` over `[since, until)`, leased to `worker`, which runs
/// it with [`recover_batch`]: the endpoint's dead deliveries created in the window, and the
/// window's messages it has no delivery for (sent while it was disabled, or before it
/// subscribed to their type), created since the endpoint was. `total` counts both.
pub async fn create_recovery(
    db: &mut PgConnection,
    app: AppId,
    endpoint: EndpointId,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    worker: Uuid,
) -> sqlx::Result<Result<Recovery, Refused>> {
    if let Err(refused) = usable_endpoint(db, app, endpoint).await? {
        return Ok(Err(refused));
    }
    let recovery: Recovery = sqlx::query_as(
        "insert into recovery (app_id, endpoint_id, since, until, total, locked_by,
                               lease_expires_at)
         select $1, $2, $3, $4,
                (select count(*) from delivery d
                  where d.endpoint_id = $2 and d.state = 'dead'
                    and d.id >= uuid_v7_floor($3) and d.id < uuid_v7_floor($4)
                    and not exists (select 1 from message m
                                     where m.id = d.message_id
                                       and m.payload_erased_at is not null))
                + (select count(*)
                     from endpoint e
                     join message m on m.app_id = e.app_id
                    where e.id = $2
                      and m.id >= uuid_v7_floor(greatest($3, e.created_at))
                      and m.id < uuid_v7_floor($4)
                      and m.payload_erased_at is null
                      and herald.route_miss(e.app_id, e.event_types, e.channels, e.filter,
                                            m.event_type, m.channels, m.payload) is null
                      and not exists (select 1 from delivery d
                                       where d.message_id = m.id and d.endpoint_id = e.id)),
                $5, now() + interval '30 seconds'
         returning id, total",
    )
    .bind(app)
    .bind(endpoint)
    .bind(since)
    .bind(until)
    .bind(worker)
    .fetch_one(&mut *db)
    .await?;
    Ok(Ok(recovery))
}

/// How far a recover has got.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct RecoveryProgress {
    pub queued: i32,
    pub total: i32,
    pub finished: bool,
    /// The deliveries this batch queued.
    #[sqlx(skip)]
    pub batch: Vec<DeliveryId>,
}

/// Queues the next `limit` deliveries of a recover and moves its cursor past them, in one
/// transaction: a restart between batches resumes after the last one that committed.
/// First the endpoint's dead deliveries (rows another recover holds are skipped, not
/// waited for: that one queues them), then new deliveries for the messages it never got
/// (`limit` messages looked at per batch; one another recover created meanwhile is left
/// alone). `None` when `worker` no longer holds the recover.
pub async fn recover_batch(
    db: &mut PgConnection,
    recovery: Uuid,
    worker: Uuid,
    limit: i64,
) -> sqlx::Result<Option<RecoveryProgress>> {
    let mut tx = db.begin().await?;
    super::plan_on_indexes(&mut tx).await?;
    // What the batch queues becomes live: see replay_message. The window's start bounds it.
    sqlx::query("select herald.live_from(uuid_v7_floor(since)) from recovery where id = $1")
        .bind(recovery)
        .execute(&mut *tx)
        .await?;
    let dead: Option<(i32, i32, bool, i64, Vec<Uuid>)> = sqlx::query_as(
        "with r as (
             select * from recovery
              where id = $1 and locked_by = $2 and finished_at is null
                for update
         ), batch as (
             select d.id
               from r
               join delivery d on d.endpoint_id = r.endpoint_id
              where not r.dead_done
                and d.state = 'dead'
                and d.id > coalesce(r.cursor, uuid_v7_floor(r.since))
                and d.id < uuid_v7_floor(r.until)
                and not exists (select 1 from message m
                                 where m.id = d.message_id and m.payload_erased_at is not null)
              order by d.id
              limit $3
                for update of d skip locked
         ), requeued as (
             update delivery d
                set state = 'pending', next_attempt_at = now(), trigger = 'replay',
                    retry_base = d.attempt_count, last_error = null, updated_at = now()
              where d.id = any(array(select id from batch)) and d.state = 'dead'
             returning d.id
         )
         update recovery
            set cursor = coalesce((select id from batch order by id desc limit 1), cursor),
                queued = queued + (select count(*) from requeued),
                dead_done = dead_done or (select count(*) from batch) < $3,
                lease_expires_at = now() + interval '30 seconds'
          where id = (select id from r)
         returning queued, total, dead_done, (select count(*) from batch),
                   array(select id from requeued)",
    )
    .bind(recovery)
    .bind(worker)
    .bind(limit)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((mut queued, total, dead_done, looked_at, mut batch)) = dead else {
        return Ok(None);
    };
    let mut finished = false;
    if dead_done && looked_at < limit {
        // The window's bounds first, as values: bound from a joined row, the scan below
        // could not be a plain index range that stops at its limit.
        let (app, endpoint, after, until): (AppId, EndpointId, Uuid, Uuid) = sqlx::query_as(
            "select r.app_id, r.endpoint_id,
                    coalesce(r.missing_cursor, uuid_v7_floor(greatest(r.since, e.created_at))),
                    uuid_v7_floor(r.until)
               from recovery r
               join endpoint e on e.id = r.endpoint_id
              where r.id = $1",
        )
        .bind(recovery)
        .fetch_one(&mut *tx)
        .await?;
        // A new delivery's id carries its message's time, not now's: it belongs to the
        // window (a later recover of the window finds it if it dies) and to its message's
        // partition. The messages' row locks make this and a replay of one of them take
        // turns, as in `replay_message`.
        let missing: (i32, bool, Vec<Uuid>) = sqlx::query_as(
            "with scanned as (
                 select m.id, m.event_type, m.channels, m.payload, m.payload_erased_at
                   from message m
                  where m.app_id = $2 and m.id > $4 and m.id < $5
                  order by m.id
                  limit $6
                    for no key update
             ), created as (
                 insert into delivery (id, message_id, endpoint_id, state, trigger,
                                       next_attempt_at)
                 select uuid_v7_at(s.id), s.id, $3, 'pending', 'replay', now()
                   from scanned s
                   join endpoint e on e.id = $3
                  where herald.route_miss(e.app_id, e.event_types, e.channels, e.filter,
                                          s.event_type, s.channels, s.payload) is null
                    and s.payload_erased_at is null
                    and not exists (select 1 from delivery d
                                     where d.message_id = s.id and d.endpoint_id = $3)
                 returning id
             )
             update recovery
                set missing_cursor = coalesce((select id from scanned order by id desc limit 1),
                                              missing_cursor),
                    queued = queued + (select count(*) from created),
                    finished_at = case when (select count(*) from scanned) < $6 then now() end
              where id = $1
             returning queued, finished_at is not null, array(select id from created)",
        )
        .bind(recovery)
        .bind(app)
        .bind(endpoint)
        .bind(after)
        .bind(until)
        .bind(limit - looked_at)
        .fetch_one(&mut *tx)
        .await?;
        queued = missing.0;
        finished = missing.1;
        batch.extend(missing.2);
    }
    if !batch.is_empty() {
        notify_workers(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(Some(RecoveryProgress {
        queued,
        total,
        finished,
        batch: batch.into_iter().map(DeliveryId).collect(),
    }))
}

/// Takes over a recover whose runner stopped (its process died or shut down mid-way).
pub async fn claim_abandoned_recovery(
    db: impl PgExecutor<'_>,
    worker: Uuid,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "update recovery
            set locked_by = $1, lease_expires_at = now() + interval '30 seconds'
          where id = (select id from recovery
                       where finished_at is null
                         and (lease_expires_at is null or lease_expires_at < now())
                       order by id limit 1
                         for update skip locked)
         returning id",
    )
    .bind(worker)
    .fetch_optional(db)
    .await
}

/// The application `endpoint` belongs to, if it exists, is not being removed, and is
/// `app`'s when given.
pub async fn endpoint_owner(
    db: impl PgExecutor<'_>,
    endpoint: EndpointId,
    app: Option<AppId>,
) -> sqlx::Result<Option<AppId>> {
    sqlx::query_scalar(
        "select app_id from endpoint
          where id = $1 and ($2::uuid is null or app_id = $2) and removed_at is null",
    )
    .bind(endpoint)
    .bind(app)
    .fetch_optional(db)
    .await
}

/// Gives a recover back (at shutdown) so that the next process to look takes it at once.
pub async fn release_recovery(
    db: impl PgExecutor<'_>,
    recovery: Uuid,
    worker: Uuid,
) -> sqlx::Result<()> {
    sqlx::query(
        "update recovery set locked_by = null, lease_expires_at = null
          where id = $1 and locked_by = $2",
    )
    .bind(recovery)
    .bind(worker)
    .execute(db)
    .await?;
    Ok(())
}
