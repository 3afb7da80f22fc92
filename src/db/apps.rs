use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

use sqlx::types::Json;

use crate::domain::{AppId, Brand};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Application {
    pub id: AppId,
    pub uid: Option<String>,
    pub name: String,
    /// How its customer portal presents itself; `null`: as `HERALD_PORTAL_*` say.
    #[schema(value_type = Option<Brand>)]
    pub portal_brand: Option<Json<Brand>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Portal links made until then are refused (`DELETE /apps/{app}/portal`).
    #[serde(skip)]
    #[sqlx(default)]
    pub portal_revoked_at: Option<DateTime<Utc>>,
}

impl Application {
    /// Whether a portal link made at `issued_at` was revoked since (`DELETE
    /// /apps/{app}/portal` ends the links made until then).
    pub fn portal_link_revoked(&self, issued_at: DateTime<Utc>) -> bool {
        self.portal_revoked_at.is_some_and(|at| issued_at <= at)
    }
}

pub async fn create(
    db: impl PgExecutor<'_>,
    name: &str,
    uid: Option<&str>,
    brand: Option<&Brand>,
) -> sqlx::Result<Application> {
    sqlx::query_as(
        "insert into application (id, name, uid, portal_brand) values ($1, $2, $3, $4)
         returning *",
    )
    .bind(AppId::new())
    .bind(name)
    .bind(uid)
    .bind(brand.map(Json))
    .fetch_one(db)
    .await
}

/// Changes an application's name and/or portal brand (`Some(None)` clears the brand).
pub async fn update(
    db: impl PgExecutor<'_>,
    id: AppId,
    name: Option<&str>,
    brand: Option<Option<&Brand>>,
) -> sqlx::Result<Option<Application>> {
    sqlx::query_as(
        "update application
            set name = coalesce($2, name),
                portal_brand = case when $3 then $4 else portal_brand end,
                updated_at = now()
          where id = $1 and removed_at is null
         returning *",
    )
    .bind(id)
    .bind(name)
    .bind(brand.is_some())
    .bind(brand.flatten().map(Json))
    .fetch_optional(db)
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

/// Ends every portal link of `app` made until `at`; false when there is no such application.
pub async fn revoke_portal(
    db: impl PgExecutor<'_>,
    app: AppId,
    at: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "update application set portal_revoked_at = greatest(portal_revoked_at, $2)
          where id = $1 and removed_at is null",
    )
    .bind(app)
    .bind(at)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether a portal link of `app` made at `issued_at` no longer stands: its links were
/// revoked since, or the application was removed.
pub async fn portal_ended(
    db: impl PgExecutor<'_>,
    app: AppId,
    issued_at: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let found = find(db, &app.to_string()).await?;
    Ok(found.is_none_or(|a| a.portal_link_revoked(issued_at)))
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
