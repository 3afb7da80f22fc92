//! SQL, close to where it is used: one module per table family, functions taking an
//! executor so callers choose the transaction.

pub mod apps;
pub mod attempts;
pub mod dashboard;
pub mod deliveries;
pub mod endpoints;
pub mod event_types;
pub mod events;
pub mod history;
pub mod listen;
pub mod messages;
pub mod operational;
pub mod removals;
pub mod replays;
pub mod tokens;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// Every Herald table lives in this schema, so Herald can share a database with the
/// application that feeds it.
pub const SCHEMA: &str = "herald";

/// Herald's advisory locks take PostgreSQL's two-key form under this first key ("hrlm" in
/// ASCII), so they collide neither with one-key locks (sqlx's own migration lock among
/// them) nor with the two-key locks of an application sharing the database.
pub const HERALD_LOCKS: i32 = 0x6872_6c6d;
const MIGRATIONS_LOCK: i32 = 1;

/// The indexes Herald's migrations build with `create index concurrently` (each alone in a
/// `-- no-transaction` migration). A build interrupted on the server leaves its index
/// invalid and its migration unrecorded; [`migrate`] drops such a remnant, and only these.
const CONCURRENT_INDEXES: &[&str] = &[
    "message_event_type",
    "attempt_endpoint_failed",
    "message_erased",
    "message_idempotency_key",
    "endpoint_routes",
];

/// A pool with no idempotency window of its own: `herald.enqueue` then honours keys for its
/// default, 24 hours. For tools and tests; the server uses [`connect_with_window`].
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    pool(options(url)?, max_connections).await
}

/// Herald's main pool: every connection also carries `herald.idempotency_window`, which
/// `herald.enqueue` reads (a setting rather than an argument, so that the function a
/// backend calls from its own transaction keeps its signature).
///
/// With `operational` (HERALD_OPERATIONAL_APP's uid and HERALD_OPERATIONAL_FAILING_SHARE),
/// they carry `herald.operational_app` and `herald.operational_failing_share` too: the
/// operational triggers (migration 0025) record facts only on a connection that has them.
pub async fn connect_with_window(
    url: &str,
    max_connections: u32,
    idempotency_window: Duration,
    operational: Option<(&str, f64)>,
) -> anyhow::Result<PgPool> {
    let window = format!("{} milliseconds", idempotency_window.as_millis());
    let mut options = options(url)?.options([("herald.idempotency_window", window)]);
    if let Some((app, share)) = operational {
        options = options.options([
            ("herald.operational_app", app.to_owned()),
            ("herald.operational_failing_share", share.to_string()),
        ]);
    }
    pool(options, max_connections).await
}

fn options(url: &str) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)?
        .options([
            ("search_path", SCHEMA),
            ("plan_cache_mode", "force_generic_plan"),
            // Herald's statements each touch a handful of rows, but a generic plan over
            // partitioned history adds up every partition's estimate, and past
            // jit_above_cost PostgreSQL compiled the overview's 50 newest attempts (1 ms of
            // work) for 370 ms on every call.
            ("jit", "off"),
        ])
        .application_name("herald"))
}

async fn pool(options: PgConnectOptions, max_connections: u32) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        // A request must fail fast, not hang, when the database is away: 503 after this.
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?)
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    // The migrations' bookkeeping table goes in the first schema of search_path, so the
    // schema must exist before the migrator runs.
    sqlx::query("create schema if not exists herald")
        .execute(pool)
        .await?;
    // A connection of its own, closed at the end: its session lock goes with it whatever
    // fails on the way.
    let mut conn = pool.acquire().await?.detach();
    // Several processes may start at once. A migration that creates an index concurrently
    // waits for every transaction open in the database, a statement blocked on a lock among
    // them: a process waiting in pg_advisory_lock (as sqlx's own migration lock waits) for
    // the one building the index would deadlock with it. So the others poll a lock of ours,
    // holding nothing open between tries, and sqlx's lock is left off.
    let waiting_since = std::time::Instant::now();
    let mut said = Duration::ZERO;
    while !sqlx::query_scalar::<_, bool>("select pg_try_advisory_lock($1, $2)")
        .bind(HERALD_LOCKS)
        .bind(MIGRATIONS_LOCK)
        .fetch_one(&mut conn)
        .await?
    {
        // The holder may be a build whose process died: the server finishes it first.
        if waiting_since.elapsed() >= said + Duration::from_secs(10) {
            said = waiting_since.elapsed();
            tracing::info!(
                waited_secs = said.as_secs(),
                "waiting for another process's migrations"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop_interrupted_index_builds(&mut conn).await?;
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_locking(false);
    migrator.run(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// A `create index concurrently` that fails or is cancelled on the server leaves its index
/// invalid and its migration unrecorded; the migration, run again, would skip the index
/// (`if not exists`) and leave it invalid for good. So an invalid index that is one of
/// Herald's own concurrent builds, and that no session is building right now, is dropped
/// before the migrations run. (A build whose process was killed goes on in the server and
/// ends valid: the migration then finds it there.)
async fn drop_interrupted_index_builds(conn: &mut PgConnection) -> anyhow::Result<()> {
    let names: Vec<String> = CONCURRENT_INDEXES.iter().map(|n| n.to_string()).collect();
    let remnants: Vec<String> = sqlx::query_scalar(
        "select format('%I.%I', n.nspname, c.relname)
           from pg_index i
           join pg_class c on c.oid = i.indexrelid
           join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = $1 and c.relname = any($2) and not i.indisvalid
            and not exists (select 1 from pg_stat_progress_create_index p
                             where p.index_relid = i.indexrelid)",
    )
    .bind(SCHEMA)
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    for index in remnants {
        tracing::warn!(%index, "dropping an index whose concurrent build was interrupted");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop index concurrently if exists {index}"
        )))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// `limit` and `cursor` of every list call.
#[derive(Debug, serde::Deserialize)]
pub struct ListParams {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

impl ListParams {
    pub const DEFAULT_LIMIT: i64 = 50;
    pub const MAX_LIMIT: i64 = 250;

    pub fn limit(&self) -> Result<i64, String> {
        match self.limit {
            None => Ok(Self::DEFAULT_LIMIT),
            Some(n) if (1..=Self::MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(format!("limit must be between 1 and {}", Self::MAX_LIMIT)),
        }
    }

    pub fn cursor<T: FromStr>(&self) -> Result<Option<T>, String> {
        self.cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(|c| c.parse().map_err(|_| format!("cursor {c:?} is not valid")))
            .transpose()
    }
}

/// `{"data": [...], "next_cursor": ...}`. Queries fetch `limit + 1` rows; the extra one
/// only tells whether another page exists.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Listing<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Listing<T> {
    pub fn from_rows(mut rows: Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(cursor_of)
        } else {
            None
        };
        Self {
            data: rows,
            next_cursor,
        }
    }
}

/// Has the rest of the transaction plan every statement on an index wherever there is one,
/// the foreign keys' own included, as the sends do (migration 0035): for transactions that
/// insert or delete history rows outside those functions (replays, recovers, removals,
/// test events).
/// A foreign key's check (a delivery inserted) or action (a message deleted) is planned
/// once per connection and kept, and Herald's plans are generic: planned while a partition
/// was vacuumed empty (`reltuples` 0), it would scan the partition for every row until the
/// next analyze, however full it grew meanwhile. `jit` off with it, as Herald's connections
/// have it anyway: a table without an index (`live_floor`) keeps its scan at the disabled
/// plan's cost, which would otherwise have it compiled at every call.
pub(crate) async fn plan_on_indexes(tx: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("select set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)")
        .execute(&mut *tx)
        .await?;
    Ok(())
}
