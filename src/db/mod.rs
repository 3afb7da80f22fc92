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

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Every Herald table lives in this schema, so Herald can share a database with the
/// application that feeds it.
pub const SCHEMA: &str = "herald";

pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)?
        .options([
            ("search_path", SCHEMA),
            ("plan_cache_mode", "force_generic_plan"),
        ])
        .application_name("herald");
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
    sqlx::migrate!("./migrations").run(pool).await?;
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
