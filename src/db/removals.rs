//! Removing an application or an endpoint with its history (migration 0019). The request
//! marks it removed and queues a removal in one short transaction: from its commit the
//! application or endpoint is not found, nothing new is sent to it, and an application's
//! uid can be taken again. [`step`] then deletes the history a batch at a time, each batch a
//! transaction of its own, and the application's or endpoint's row last, with whatever was
//! written meanwhile. A process that stops half-way leaves the batches it committed; the
//! next one to look carries on.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{AppId, EndpointId, RemovalId};

/// Rows of each kind deleted per batch.
pub const BATCH: i64 = 1_000;

/// Where a removal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RemovalState {
    /// No batch has run yet.
    Queued,
    /// Some batches have run.
    Running,
    /// Everything is gone.
    Done,
}

/// What a removal has deleted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Removed {
    pub messages: i64,
    pub deliveries: i64,
    pub attempts: i64,
}

/// A removal of an application (`endpoint_id` null) or of one endpoint, with its history.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Removal {
    pub id: RemovalId,
    pub app_id: AppId,
    pub endpoint_id: Option<EndpointId>,
    pub state: RemovalState,
    pub requested_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Transactions it took so far, each deleting at most a thousand rows of each kind.
    pub batches: i64,
    pub removed: Removed,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: RemovalId,
    app_id: AppId,
    endpoint_id: Option<EndpointId>,
    requested_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    batches: i64,
    messages: i64,
    deliveries: i64,
    attempts: i64,
}

impl From<Row> for Removal {
    fn from(r: Row) -> Self {
        let state = match (r.finished_at, r.batches) {
            (Some(_), _) => RemovalState::Done,
            (None, 0) => RemovalState::Queued,
            (None, _) => RemovalState::Running,
        };
        Removal {
            id: r.id,
            app_id: r.app_id,
            endpoint_id: r.endpoint_id,
            state,
            requested_at: r.requested_at,
            finished_at: r.finished_at,
            batches: r.batches,
            removed: Removed {
                messages: r.messages,
                deliveries: r.deliveries,
                attempts: r.attempts,
            },
        }
    }
}

/// Disabled with this reason, so that a delivery claimed before the mark was seen ends
/// without a request ("endpoint disabled: removed").
const REASON: &str = "removed";

/// Marks an application and its endpoints removed and queues the removal of their history.
/// `None` when it was already removed.
pub async fn queue_app(db: &mut PgConnection, app: AppId) -> sqlx::Result<Option<Removal>> {
    let mut tx = db.begin().await?;
    let marked = sqlx::query(
        "update application set removed_at = now(), uid = null, updated_at = now()
          where id = $1 and removed_at is null",
    )
    .bind(app)
    .execute(&mut *tx)
    .await?;
    if marked.rows_affected() == 0 {
        return Ok(None);
    }
    mark_endpoints(&mut tx, app, None).await?;
    let removal = insert(&mut tx, app, None).await?;
    tx.commit().await?;
    Ok(Some(removal))
}

/// Marks an endpoint removed and queues the removal of its deliveries and attempts (the
/// messages stay: they are the application's). `None` when it is not `app`'s or was
/// already removed.
pub async fn queue_endpoint(
    pool: &PgPool,
    app: AppId,
    endpoint: EndpointId,
    actor: Option<&str>,
) -> sqlx::Result<Option<Removal>> {
    let mut tx = pool.begin().await?;
    if let Some(actor) = actor {
        super::operational::act_as(&mut tx, actor).await?;
    }
    if mark_endpoints(&mut tx, app, Some(endpoint)).await? == 0 {
        return Ok(None);
    }
    let removal = insert(&mut tx, app, Some(endpoint)).await?;
    tx.commit().await?;
    Ok(Some(removal))
}

/// Marks `app`'s endpoints (or only `endpoint`) removed and disables them; says how many.
async fn mark_endpoints(
    tx: &mut PgConnection,
    app: AppId,
    endpoint: Option<EndpointId>,
) -> sqlx::Result<u64> {
    let marked = sqlx::query(
        "update endpoint set removed_at = now(), disabled = true, disabled_reason = $3,
                updated_at = now()
          where app_id = $1 and ($2::uuid is null or id = $2) and removed_at is null",
    )
    .bind(app)
    .bind(endpoint)
    .bind(REASON)
    .execute(&mut *tx)
    .await?;
    Ok(marked.rows_affected())
}

async fn insert(
    tx: &mut PgConnection,
    app: AppId,
    endpoint: Option<EndpointId>,
) -> sqlx::Result<Removal> {
    let row: Row = sqlx::query_as(
        "insert into removal (id, app_id, endpoint_id) values ($1, $2, $3) returning *",
    )
    .bind(RemovalId::new())
    .bind(app)
    .bind(endpoint)
    .fetch_one(&mut *tx)
    .await?;
    Ok(row.into())
}

pub async fn find(db: impl PgExecutor<'_>, id: RemovalId) -> sqlx::Result<Option<Removal>> {
    let row: Option<Row> = sqlx::query_as("select * from removal where id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(row.map(Removal::from))
}

/// What one batch did.
#[derive(Debug)]
pub struct Batch {
    /// The removal after the batch.
    pub removal: Removal,
    /// Deleted by this batch.
    pub deleted: Removed,
    /// Nothing could be deleted yet: a request to the endpoint is under way, and its
    /// attempt must be removed with the rest.
    pub waiting: bool,
}

/// Runs one batch of the removal that waited longest and that no other process is running.
/// `None` when there is none.
pub async fn step(db: &mut PgConnection, limit: i64) -> sqlx::Result<Option<Batch>> {
    let mut tx = db.begin().await?;
    // By index, the foreign keys' cascades from the messages to their deliveries included.
    super::plan_on_indexes(&mut tx).await?;
    // Locked for the batch: another process takes another removal, or none.
    let row: Option<Row> = sqlx::query_as(
        "select * from removal where finished_at is null
          order by updated_at limit 1 for update skip locked",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let whole_app = row.endpoint_id.is_none();
    let endpoints: Vec<Uuid> = sqlx::query_scalar(
        "select id from endpoint where app_id = $1 and ($2::uuid is null or id = $2)",
    )
    .bind(row.app_id)
    .bind(row.endpoint_id)
    .fetch_all(&mut *tx)
    .await?;

    // Deliveries first, so that claims stop finding them. One whose request may be under
    // way stays until it ends: its attempt is written after it. Whether one is under way
    // is read before the deletion: nothing new is claimed at a removed (disabled)
    // endpoint, so when none is, the deletion takes every row it counts. Read after, a
    // request that ended between the two statements left its row to the endpoint's
    // cascade, uncounted (a test saw 2 deliveries removed of 3).
    let in_flight: bool = sqlx::query_scalar(
        "select exists (select 1 from delivery d
                         where d.endpoint_id = any ($1) and d.state = 'in_flight'
                           and d.lease_expires_at >= now())",
    )
    .bind(&endpoints)
    .fetch_one(&mut *tx)
    .await?;
    let deliveries = delete_per_endpoint(&mut tx, DELIVERIES, &endpoints, limit).await?;
    let attempts = delete_per_endpoint(&mut tx, ATTEMPTS, &endpoints, limit).await?;
    let rollups = delete_per_endpoint(&mut tx, ROLLUPS, &endpoints, limit).await?;
    let deliveries_left = deliveries == limit || in_flight;
    let mut deliveries = deliveries;
    if !deliveries_left {
        // What the deletion spared is a row claimed since the check, at an endpoint that
        // is disabled, where no request is made: counted here rather than left to the
        // cascade of the endpoint's or the messages' deletion.
        deliveries += sqlx::query("delete from delivery where endpoint_id = any ($1)")
            .bind(&endpoints)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
    }
    // An application's messages once its deliveries are gone: deleting a message deletes
    // its deliveries with it, uncounted, an in-flight one among them.
    let (messages, keys) = if whole_app && !deliveries_left {
        (
            delete_some(&mut tx, MESSAGES, row.app_id.0, limit).await?,
            delete_some(&mut tx, KEYS, row.app_id.0, limit).await?,
        )
    } else {
        (0, 0)
    };
    let finished =
        !deliveries_left && attempts < limit && rollups < limit && messages < limit && keys < limit;
    let mut stragglers = 0;
    if finished {
        // The row last, in the batch's transaction: its foreign keys take whatever was
        // written since (a send that read the application before it was marked), and
        // the statement waits for a completion that was committing.
        if whole_app {
            sqlx::query("delete from application where id = $1")
                .bind(row.app_id)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query("delete from endpoint where id = $1")
                .bind(row.endpoint_id)
                .execute(&mut *tx)
                .await?;
        }
        // Attempts reference nothing (migration 0016): theirs go in a statement after the
        // row's, so that it also sees an attempt whose completion that deletion waited for.
        sqlx::query("delete from attempt_minute where endpoint_id = any ($1)")
            .bind(&endpoints)
            .execute(&mut *tx)
            .await?;
        stragglers = sqlx::query("delete from attempt where endpoint_id = any ($1)")
            .bind(&endpoints)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
    }
    let deleted = Removed {
        messages,
        deliveries,
        attempts: attempts + stragglers,
    };
    let row: Row = sqlx::query_as(
        "update removal
            set batches = batches + 1, messages = messages + $2,
                deliveries = deliveries + $3, attempts = attempts + $4, updated_at = now(),
                finished_at = case when $5 then now() end
          where id = $1
          returning *",
    )
    .bind(row.id)
    .bind(deleted.messages)
    .bind(deleted.deliveries)
    .bind(deleted.attempts)
    .bind(finished)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let nothing = deleted == Removed::default() && rollups == 0 && keys == 0;
    Ok(Some(Batch {
        removal: row.into(),
        deleted,
        waiting: nothing && !finished,
    }))
}

/// Forgets finished removals older than `retention`.
pub async fn prune(db: impl PgExecutor<'_>, retention: std::time::Duration) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "delete from removal
          where finished_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

// A batch's deletions. A partitioned table's batch is the oldest rows of one key, and its
// first and last ids bound the delete: PostgreSQL then reads the partitions the batch
// spans, where a list of ids alone would be looked up in every partition.

/// The oldest `$2` rows of `$table` whose `$key` is `$1` (and that meet `$filter`).
macro_rules! oldest_first {
    ($table:literal, $key:literal, $filter:literal) => {
        concat!(
            "with batch as materialized (
                 select t.id from ",
            $table,
            " t
                  where t.",
            $key,
            " = $1 ",
            $filter,
            "
                  order by t.id limit $2)
             delete from ",
            $table,
            "
              where id >= (select b.id from batch b order by b.id limit 1)
                and id <= (select b.id from batch b order by b.id desc limit 1)
                and id in (select b.id from batch b)"
        )
    };
}

const DELIVERIES: &str = oldest_first!(
    "delivery",
    "endpoint_id",
    "and (t.state <> 'in_flight' or t.lease_expires_at < now())"
);
const ATTEMPTS: &str = oldest_first!("attempt", "endpoint_id", "");
const MESSAGES: &str = oldest_first!("message", "app_id", "");

const ROLLUPS: &str = "
    delete from attempt_minute
     where endpoint_id = $1
       and minute in (select r.minute from attempt_minute r where r.endpoint_id = $1
                      order by r.minute limit $2)";

const KEYS: &str = "
    delete from idempotency_key
     where app_id = $1
       and key in (select k.key from idempotency_key k where k.app_id = $1 limit $2)";

/// Deletes up to `limit` rows keyed by `key` with `sql`, and says how many went.
async fn delete_some(
    tx: &mut PgConnection,
    sql: &'static str,
    key: Uuid,
    limit: i64,
) -> sqlx::Result<i64> {
    let done = sqlx::query(sql).bind(key).bind(limit).execute(tx).await?;
    Ok(done.rows_affected() as i64)
}

/// [`delete_some`] for each endpoint in turn, up to `limit` rows in all.
async fn delete_per_endpoint(
    tx: &mut PgConnection,
    sql: &'static str,
    endpoints: &[Uuid],
    limit: i64,
) -> sqlx::Result<i64> {
    let mut deleted = 0;
    for &endpoint in endpoints {
        deleted += delete_some(tx, sql, endpoint, limit - deleted).await?;
        if deleted == limit {
            break;
        }
    }
    Ok(deleted)
}
