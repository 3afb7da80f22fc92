//! SQL, close to where it is used: one module per table family, functions taking an
//! executor so callers choose the transaction.

pub mod apps;
pub mod attempts;
pub mod dashboard;
pub mod deliveries;
pub mod endpoints;
pub mod events;
pub mod listen;
pub mod messages;
pub mod replays;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// Every Herald table lives in this schema, so Herald can share a database with the
/// application that feeds it.
pub const SCHEMA: &str = "herald";

/// Herald's advisory locks take PostgreSQL's two-key form under these first keys, so they
/// collide neither with one-key locks (sqlx's own migration lock among them) nor with the
/// two-key locks of an application sharing the database under first keys of its own.
/// Per idempotency key (second key: a hash of the application id and the key, taken in
/// `herald.enqueue`, migration 0010): "hrld" in ASCII.
pub const IDEMPOTENCY_LOCKS: i32 = 0x6872_6c64;
/// Herald-wide locks, one per second key: "hrlm".
pub const HERALD_LOCKS: i32 = 0x6872_6c6d;
const MIGRATIONS_LOCK: i32 = 1;

/// A pool with no idempotency window of its own: `herald.enqueue` then honours keys for its
/// default, 24 hours. For tools and tests; the server uses [`connect_with_window`].
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    pool(options(url)?, max_connections).await
}

/// Herald's pools: every connection also carries `herald.idempotency_window`, which
/// `herald.enqueue` reads (a setting rather than an argument, so that the function a
/// backend calls from its own transaction keeps its signature).
pub async fn connect_with_window(
    url: &str,
    max_connections: u32,
    idempotency_window: Duration,
) -> anyhow::Result<PgPool> {
    let window = format!("{} milliseconds", idempotency_window.as_millis());
    let options = options(url)?.options([("herald.idempotency_window", window)]);
    pool(options, max_connections).await
}

fn options(url: &str) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)?
        .options([
            ("search_path", SCHEMA),
            ("plan_cache_mode", "force_generic_plan"),
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
    // between tries holding nothing open, and sqlx's lock is left off. (Processes of a
    // release before 0009 take sqlx's lock, not ours: on a database migrated past theirs
    // they apply nothing.)
    while !sqlx::query_scalar::<_, bool>("select pg_try_advisory_lock($1, $2)")
        .bind(HERALD_LOCKS)
        .bind(MIGRATIONS_LOCK)
        .fetch_one(&mut conn)
        .await?
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop_interrupted_index_builds(&mut conn).await?;
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_locking(false);
    migrator.run(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// An index build with CONCURRENTLY that is interrupted (process killed, database
/// restarted) leaves an invalid index behind and its migration unrecorded, so the migration
/// runs again and would stop at "already exists". No Herald process builds one now (we hold
/// the migrations lock), so whatever invalid index is left is such a remnant: drop it.
/// Partitioned indexes are left alone: theirs is a state a migration may leave on purpose.
async fn drop_interrupted_index_builds(conn: &mut PgConnection) -> anyhow::Result<()> {
    let remnants: Vec<String> = sqlx::query_scalar(
        "select format('%I.%I', n.nspname, c.relname)
           from pg_index i
           join pg_class c on c.oid = i.indexrelid
           join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = $1 and c.relkind = 'i' and not i.indisvalid",
    )
    .bind(SCHEMA)
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
pub struct PageParams {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

impl PageParams {
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
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_spaces_are_the_ones_the_sql_and_the_readme_name() {
        assert_eq!((IDEMPOTENCY_LOCKS, HERALD_LOCKS), (1752329316, 1752329325));
        assert_eq!(&IDEMPOTENCY_LOCKS.to_be_bytes(), b"hrld");
        let enqueue = include_str!("../../migrations/0010_idempotency_window.sql");
        assert!(enqueue.contains(&format!("pg_advisory_xact_lock({IDEMPOTENCY_LOCKS}, ")));
        let readme = include_str!("../../README.md");
        assert!(readme.contains(&format!("`{IDEMPOTENCY_LOCKS}`")));
        assert!(readme.contains(&format!("`{HERALD_LOCKS}`")));
    }
}
