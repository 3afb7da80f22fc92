use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

use crate::domain::{AppId, AttemptId, DeliveryId, EndpointId, MessageId};

/// One HTTP try, as REST lists and the live feed show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Attempt {
    pub id: AttemptId,
    pub delivery_id: DeliveryId,
    pub message_id: MessageId,
    pub endpoint_id: EndpointId,
    pub app_id: AppId,
    pub event_type: String,
    pub attempt: i32,
    /// `scheduled` or `replay`.
    pub trigger: String,
    /// `succeeded`, `retrying` or `dead`.
    pub outcome: String,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub duration_ms: i32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

macro_rules! select_attempts {
    ($($where:tt)+) => {
        concat!(
            "select a.id, a.delivery_id, a.message_id, a.endpoint_id, a.app_id, m.event_type,
                    a.attempt, a.trigger::text as trigger, a.outcome::text as outcome,
                    a.response_status, a.response_body, a.error_kind, a.error, a.duration_ms,
                    a.created_at, a.next_attempt_at
               from attempt a join message m on m.id = a.message_id
              where ",
            $($where)+
        )
    };
}

macro_rules! list_attempts {
    ($key:literal) => {
        select_attempts!(concat!(
            $key,
            " = $1 and a.app_id = $2 and ($3::uuid is null or a.id < $3)
              order by a.id desc limit $4"
        ))
    };
}

/// Which attempts to list.
#[derive(Debug, Clone, Copy)]
pub enum Of {
    Message(MessageId),
    Endpoint(EndpointId),
}

/// Attempts of one message or one endpoint, newest first.
pub async fn list(
    db: impl PgExecutor<'_>,
    app_id: AppId,
    of: Of,
    before: Option<AttemptId>,
    limit: i64,
) -> sqlx::Result<Vec<Attempt>> {
    let (sql, key) = match of {
        Of::Message(id) => (list_attempts!("a.message_id"), id.0),
        Of::Endpoint(id) => (list_attempts!("a.endpoint_id"), id.0),
    };
    sqlx::query_as(sql)
        .bind(key)
        .bind(app_id)
        .bind(before)
        .bind(limit + 1)
        .fetch_all(db)
        .await
}

/// The attempts with these ids, in no particular order (the live feed renders its events
/// with this, so a feed `attempt` is exactly what the REST lists show).
pub async fn by_ids(db: impl PgExecutor<'_>, ids: &[AttemptId]) -> sqlx::Result<Vec<Attempt>> {
    sqlx::query_as(select_attempts!("a.id = any($1)"))
        .bind(ids)
        .fetch_all(db)
        .await
}

/// The latest attempts of every application, newest first (the dashboard's overview).
pub async fn recent(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<Attempt>> {
    sqlx::query_as(select_attempts!("true order by a.id desc limit $1"))
        .bind(limit)
        .fetch_all(db)
        .await
}
