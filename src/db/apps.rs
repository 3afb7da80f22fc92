use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

use crate::domain::AppId;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Application {
    pub id: AppId,
    pub uid: Option<String>,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn create(
    db: impl PgExecutor<'_>,
    name: &str,
    uid: Option<&str>,
) -> sqlx::Result<Application> {
    sqlx::query_as("insert into application (id, name, uid) values ($1, $2, $3) returning *")
        .bind(AppId::new())
        .bind(name)
        .bind(uid)
        .fetch_one(db)
        .await
}

/// `key` is an application's id (`app_…`) or its uid. One queued for removal is not found.
pub async fn find(db: impl PgExecutor<'_>, key: &str) -> sqlx::Result<Option<Application>> {
    let id = key.parse::<AppId>().ok();
    sqlx::query_as(
        "select * from application where (id = $1 or uid = $2) and removed_at is null limit 1",
    )
    .bind(id)
    .bind(key)
    .fetch_optional(db)
    .await
}

/// Applications after `after`, oldest first; with `only`, that one at most.
pub async fn list(
    db: impl PgExecutor<'_>,
    after: Option<AppId>,
    only: Option<AppId>,
    limit: i64,
) -> sqlx::Result<Vec<Application>> {
    sqlx::query_as(
        "select * from application
          where removed_at is null and ($1::uuid is null or id > $1)
            and ($2::uuid is null or id = $2)
          order by id limit $3",
    )
    .bind(after)
    .bind(only)
    .bind(limit + 1)
    .fetch_all(db)
    .await
}
