use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use sqlx::PgExecutor;

use crate::domain::{AppId, DeliveryId, EndpointId, MessageId};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Message {
    pub id: MessageId,
    #[serde(skip)]
    pub app_id: AppId,
    pub event_type: String,
    /// The exact JSON text the sender gave.
    #[serde(serialize_with = "raw_json")]
    pub payload: String,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeliveryStatus {
    pub id: DeliveryId,
    pub endpoint_id: EndpointId,
    pub state: String,
    pub attempt_count: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

macro_rules! message_columns {
    () => {
        "id, app_id, event_type, payload::text as payload, idempotency_key, created_at"
    };
}

/// Stores the message and one delivery per matching enabled endpoint in one statement (so
/// one transaction), and wakes the workers. Same function a backend sharing the database
/// calls inside its own transaction; a repeated idempotency key returns the original.
/// `app` is an application id or uid; `None` when there is no such application.
pub async fn send(
    db: impl PgExecutor<'_>,
    app: &str,
    event_type: &str,
    payload: &str,
    idempotency_key: Option<&str>,
) -> sqlx::Result<Option<Message>> {
    sqlx::query_as(concat!(
        "select ",
        message_columns!(),
        " from herald.send_message($1, $2, $3::json, $4)"
    ))
    .bind(app)
    .bind(event_type)
    .bind(payload)
    .bind(idempotency_key)
    .fetch_one(db)
    .await
    .map(Some)
    .or_else(|e| match &e {
        // herald.send_message raises no_data_found for an unknown application.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("P0002") => Ok(None),
        _ => Err(e),
    })
}

pub async fn find(
    db: impl PgExecutor<'_>,
    app_id: AppId,
    id: MessageId,
) -> sqlx::Result<Option<Message>> {
    sqlx::query_as(concat!(
        "select ",
        message_columns!(),
        " from message where app_id = $1 and id = $2"
    ))
    .bind(app_id)
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Newest first.
pub async fn list(
    db: impl PgExecutor<'_>,
    app_id: AppId,
    before: Option<MessageId>,
    limit: i64,
) -> sqlx::Result<Vec<Message>> {
    sqlx::query_as(concat!(
        "select ",
        message_columns!(),
        " from message
          where app_id = $1 and ($2::uuid is null or id < $2)
          order by id desc limit $3"
    ))
    .bind(app_id)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(db)
    .await
}

pub async fn deliveries(
    db: impl PgExecutor<'_>,
    id: MessageId,
) -> sqlx::Result<Vec<DeliveryStatus>> {
    sqlx::query_as(
        "select id, endpoint_id, state::text as state, attempt_count,
                case when state = 'pending' then next_attempt_at end as next_attempt_at,
                last_error
           from delivery where message_id = $1 order by id",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

pub fn raw_json<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    let raw: &RawValue = serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
    raw.serialize(s)
}
