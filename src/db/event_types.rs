//! The event-type catalog (migration 0022): one row per type a sender publishes.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use sqlx::types::Json;

/// An event type as the catalog holds it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EventTypeRow {
    pub name: String,
    pub description: String,
    /// A JSON Schema (2020-12) that payloads of this type must satisfy; `null`: any.
    #[schema(schema_with = crate::http::event_types::schema_value)]
    pub schema: Option<Json<serde_json::Value>>,
    #[schema(value_type = Vec<serde_json::Value>)]
    pub examples: Json<Vec<serde_json::Value>>,
    pub deprecated: bool,
    /// Archived types are refused on send.
    pub archived: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a create or an update sets; `None` leaves a field as it is (`schema: Some(None)`
/// removes the schema).
#[derive(Debug, Default)]
pub struct EventTypeFields {
    pub description: Option<String>,
    pub schema: Option<Option<serde_json::Value>>,
    pub examples: Option<Vec<serde_json::Value>>,
    pub deprecated: Option<bool>,
    pub archived: Option<bool>,
}

pub async fn create(
    db: impl PgExecutor<'_>,
    name: &str,
    f: EventTypeFields,
) -> sqlx::Result<EventTypeRow> {
    sqlx::query_as(
        "insert into event_type (name, description, schema, examples, deprecated, archived)
         values ($1, coalesce($2, ''), $3, coalesce($4, '[]'), coalesce($5, false),
                 coalesce($6, false))
         returning *",
    )
    .bind(name)
    .bind(f.description)
    .bind(f.schema.flatten().map(Json))
    .bind(f.examples.map(Json))
    .bind(f.deprecated)
    .bind(f.archived)
    .fetch_one(db)
    .await
}

pub async fn find(db: impl PgExecutor<'_>, name: &str) -> sqlx::Result<Option<EventTypeRow>> {
    sqlx::query_as("select * from event_type where name = $1")
        .bind(name)
        .fetch_optional(db)
        .await
}

/// Types after `after` by name, at most `limit` (and one more, to tell there is a next page).
pub async fn list(
    db: impl PgExecutor<'_>,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<EventTypeRow>> {
    sqlx::query_as(
        "select * from event_type where ($1::text is null or name > $1) order by name limit $2",
    )
    .bind(after)
    .bind(limit + 1)
    .fetch_all(db)
    .await
}

pub async fn update(
    db: impl PgExecutor<'_>,
    name: &str,
    f: EventTypeFields,
) -> sqlx::Result<Option<EventTypeRow>> {
    sqlx::query_as(
        "update event_type
            set description = coalesce($2, description),
                schema = case when $3 then $4 else schema end,
                examples = coalesce($5, examples),
                deprecated = coalesce($6, deprecated),
                archived = coalesce($7, archived),
                updated_at = now()
          where name = $1
         returning *",
    )
    .bind(name)
    .bind(f.description)
    .bind(f.schema.is_some())
    .bind(f.schema.flatten().map(Json))
    .bind(f.examples.map(Json))
    .bind(f.deprecated)
    .bind(f.archived)
    .fetch_optional(db)
    .await
}

pub async fn delete(db: impl PgExecutor<'_>, name: &str) -> sqlx::Result<bool> {
    let done = sqlx::query("delete from event_type where name = $1")
        .bind(name)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}
