use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::{
    AppId, AttemptId, AttemptOutcome, AttemptTrigger, DeliveryId, EndpointId, MessageId,
};

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
    pub trigger: AttemptTrigger,
    pub outcome: AttemptOutcome,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub duration_ms: i32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The message is looked up per attempt (`lateral ... offset 0`): a join lets a generic
/// plan hash every message of every partition to keep a page of attempts (the overview's
/// 50 newest took 2 s with 3 million messages). An attempt whose message is gone (it
/// outlives it by at most the retry span, see migration 0016) is not listed.
macro_rules! select_attempts {
    ($($where:tt)+) => {
        concat!(
            "select a.id, a.delivery_id, a.message_id, a.endpoint_id, a.app_id, m.event_type,
                    a.attempt, a.trigger, a.outcome,
                    a.response_status, a.response_body, a.error_kind, a.error, a.duration_ms,
                    a.created_at, a.next_attempt_at
               from attempt a
              cross join lateral (select m.event_type from message m
                                   where m.id = a.message_id offset 0) m
              where ",
            $($where)+
        )
    };
}

/// Which attempts of a message or an endpoint a list shows.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub outcome: Option<AttemptOutcome>,
    /// Response status codes in this range, both ends included (one code: both ends equal).
    pub status: Option<(i32, i32)>,
    /// Attempts before this one (the page's cursor).
    pub before: Option<AttemptId>,
}

impl Search {
    /// Only 2xx succeeds, so a status outside 200-299 is a failure's.
    fn failures_only(&self) -> bool {
        matches!(
            self.outcome,
            Some(AttemptOutcome::Retrying | AttemptOutcome::Dead)
        ) || self
            .status
            .is_some_and(|(low, high)| high < 200 || low > 299)
    }

    /// Asks for nothing that can exist: a success with a failure's status.
    fn matches_nothing(&self) -> bool {
        self.outcome == Some(AttemptOutcome::Succeeded)
            && self
                .status
                .is_some_and(|(low, high)| high < 200 || low > 299)
    }
}

/// The page's bound is written on the index's own key, `(endpoint_id, id) < ($1, $3)`,
/// not as `a.id < $3`: a generic plan takes a bare id range for a narrow one and walks the
/// primary key past every other endpoint's attempts (see db/messages.rs, `list`).
macro_rules! list_attempts {
    ($key:literal $(, $and:literal)?) => {
        select_attempts!(concat!(
            "(", $key, ", a.id) >= ($1, '00000000-0000-0000-0000-000000000000')
              and (", $key, ", a.id) < ($1, $3) and a.app_id = $2",
            $($and,)?
            " and ($5::attempt_outcome is null or a.outcome = $5)
              and ($6::int is null or a.response_status between $6 and $7)
              order by ", $key, " desc, a.id desc limit $4"
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
///
/// A message has a handful of attempts: its index `(message_id, id)` serves every filter.
/// An endpoint has its whole history, walked newest first through `(endpoint_id, id)`
/// until a page matches: cheap when most attempts match (a success filter on a healthy
/// endpoint, a 2xx status), while filters that only failures can match take the partial
/// index of failures (migration 0011), which the planner may only use when the
/// statement itself says `outcome <> 'succeeded'` (the pool plans generically: a
/// parameter proves nothing).
pub async fn list(
    db: impl PgExecutor<'_>,
    app_id: AppId,
    of: Of,
    search: &Search,
    limit: i64,
) -> sqlx::Result<Vec<Attempt>> {
    if search.matches_nothing() {
        return Ok(Vec::new());
    }
    let failures = search.failures_only();
    let (sql, key) = match (of, failures) {
        (Of::Message(id), false) => (list_attempts!("a.message_id"), id.0),
        (Of::Message(id), true) => (
            list_attempts!("a.message_id", " and a.outcome <> 'succeeded'"),
            id.0,
        ),
        (Of::Endpoint(id), false) => (list_attempts!("a.endpoint_id"), id.0),
        (Of::Endpoint(id), true) => (
            list_attempts!("a.endpoint_id", " and a.outcome <> 'succeeded'"),
            id.0,
        ),
    };
    let (low, high) = search.status.unzip();
    sqlx::query_as(sql)
        .bind(key)
        .bind(app_id)
        .bind(search.before.map_or(Uuid::max(), |a| a.0))
        .bind(limit + 1)
        .bind(search.outcome)
        .bind(low)
        .bind(high)
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
