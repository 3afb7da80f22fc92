//! The feed's log (`herald.event`, written by triggers): reading it in commit-safe order
//! and rendering each event from the row it is about.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::db::attempts;
use crate::db::messages::raw_json;
use crate::domain::{
    AppId, AttemptId, AttemptOutcome, DeliveryId, EndpointId, EventKind, MessageId, Position,
};

/// What an event carries besides its rendered data; enough to filter on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Logged {
    pub xid: i64,
    pub seq: i64,
    pub kind: EventKind,
    pub app_id: AppId,
    pub endpoint_id: Option<EndpointId>,
    pub event_type: Option<String>,
    pub outcome: Option<AttemptOutcome>,
    pub ref_id: Uuid,
    /// Every transaction that could still write before this event has ended.
    pub settled: bool,
}

impl Logged {
    pub fn position(&self) -> Position {
        Position {
            xid: self.xid,
            seq: self.seq,
        }
    }
}

/// Which events a reader wants; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub app: Option<AppId>,
    pub endpoint: Option<EndpointId>,
    pub event_type: Option<String>,
    pub outcome: Option<AttemptOutcome>,
}

impl Filter {
    /// The same test as the SQL in [`after`], for events already in memory.
    pub fn matches(
        &self,
        app: AppId,
        endpoint: Option<EndpointId>,
        event_type: Option<&str>,
        outcome: Option<AttemptOutcome>,
    ) -> bool {
        self.app.is_none_or(|a| a == app)
            && self.endpoint.is_none_or(|e| Some(e) == endpoint)
            && self
                .event_type
                .as_deref()
                .is_none_or(|t| Some(t) == event_type)
            && self.outcome.is_none_or(|o| Some(o) == outcome)
    }
}

/// Up to `limit` events after `from`, in feed order, with whether each has settled.
/// Only a prefix of settled events may be emitted: the first unsettled one, and all after
/// it, must wait (their position is not yet final).
pub async fn after(
    db: impl PgExecutor<'_>,
    from: Position,
    filter: &Filter,
    limit: i64,
) -> sqlx::Result<Vec<Logged>> {
    sqlx::query_as(
        "select e.xid::text::bigint as xid, e.seq, e.kind, e.app_id,
                e.endpoint_id, e.event_type, e.outcome, e.ref_id,
                e.xid < pg_snapshot_xmin(pg_current_snapshot()) as settled
           from event e
          where (e.xid, e.seq) > ($1::text::xid8, $2)
            and ($3::uuid is null or e.app_id = $3)
            and ($4::uuid is null or e.endpoint_id = $4)
            and ($5::text is null or e.event_type = $5)
            and ($6::attempt_outcome is null or e.outcome = $6)
          order by e.xid, e.seq
          limit $7",
    )
    .bind(from.xid.to_string())
    .bind(from.seq)
    .bind(filter.app)
    .bind(filter.endpoint)
    .bind(filter.event_type.as_deref())
    .bind(filter.outcome)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The position just before every event that has not settled yet: where a reader that
/// wants only what happens from now on starts.
pub async fn head(db: impl PgExecutor<'_>) -> sqlx::Result<Position> {
    let xid: i64 =
        sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
            .fetch_one(db)
            .await?;
    Ok(Position { xid, seq: 0 })
}

/// Deletes up to `batch` events older than `keep`, and moves the pruned-up-to mark past
/// the newest of them in the same statement; returns how many went.
pub async fn prune(
    db: impl PgExecutor<'_>,
    keep: std::time::Duration,
    batch: i64,
) -> sqlx::Result<u64> {
    let gone: i64 = sqlx::query_scalar(
        "with gone as (
              delete from event
               where ctid = any(array(select ctid from event
                                       where created_at < now() - make_interval(secs => $1)
                                       limit $2))
              returning xid, seq),
              newest as (select xid, seq from gone order by xid desc, seq desc limit 1),
              marked as (
              update event_pruned p set xid = n.xid, seq = n.seq
                from newest n
               where (n.xid, n.seq) > (p.xid, p.seq))
         select count(*) from gone",
    )
    .bind(keep.as_secs_f64())
    .bind(batch)
    .fetch_one(db)
    .await?;
    Ok(gone as u64)
}

/// The newest event ever pruned: a resume from before it may have missed it.
pub async fn pruned_up_to(db: impl PgExecutor<'_>) -> sqlx::Result<Position> {
    let (xid, seq): (i64, i64) = sqlx::query_as("select xid::text::bigint, seq from event_pruned")
        .fetch_one(db)
        .await?;
    Ok(Position { xid, seq })
}

/// Each message's payload length in bytes, measured by the database without sending the
/// payloads: a catching-up reader sizes its reads with it.
pub async fn payload_sizes(
    db: impl PgExecutor<'_>,
    messages: &[Uuid],
) -> sqlx::Result<HashMap<Uuid, i64>> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "select id, octet_length(payload::text)::bigint from message where id = any($1)",
    )
    .bind(messages)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// `message.created` data: the message as the API shows it, with its application.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct CreatedMessage {
    pub id: MessageId,
    pub app_id: AppId,
    pub event_type: String,
    #[serde(serialize_with = "raw_json")]
    pub payload: String,
    pub created_at: DateTime<Utc>,
    /// Rendered when read, not when logged: a payload erased since shows as `null` here,
    /// also to a client resuming from before the erasure.
    pub payload_erased_at: Option<DateTime<Utc>>,
}

/// `delivery.dead` data.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct DeadDelivery {
    pub id: DeliveryId,
    pub message_id: MessageId,
    pub endpoint_id: EndpointId,
    pub app_id: AppId,
    pub event_type: String,
    pub attempt_count: i32,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

fn short_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::domain::short_url(url))
}

/// `endpoint.disabled` data.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct DisabledEndpoint {
    pub id: EndpointId,
    pub app_id: AppId,
    /// Without its query: a webhook URL's query is often its key, and
    /// the feed goes to every dashboard. The endpoint itself, read through the API, has
    /// it whole.
    #[serde(serialize_with = "short_url")]
    pub url: String,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Renders each event's data as JSON, fetching the rows they are about in one query per
/// kind. An event whose row is gone (its application was deleted) renders as `None`.
pub async fn render(db: &mut PgConnection, events: &[Logged]) -> sqlx::Result<Vec<Option<String>>> {
    let mut data: HashMap<Uuid, String> = HashMap::new();
    let ids = ids_of(events, EventKind::Attempt);
    if !ids.is_empty() {
        let ids: Vec<AttemptId> = ids.into_iter().map(AttemptId).collect();
        for a in attempts::by_ids(&mut *db, &ids).await? {
            data.insert(a.id.0, json(&a));
        }
    }
    render_kind::<CreatedMessage>(db, events, &mut data).await?;
    render_kind::<DeadDelivery>(db, events, &mut data).await?;
    render_kind::<DisabledEndpoint>(db, events, &mut data).await?;
    Ok(events
        .iter()
        .map(|e| data.get(&e.ref_id).cloned())
        .collect())
}

/// The data of one kind of event: the row it is about, read by its id.
trait Rendered: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Serialize + Send + Unpin {
    const KIND: EventKind;
    /// Reads the rows whose ids are `$1`.
    const SQL: &'static str;
    fn id(&self) -> Uuid;
}

impl Rendered for CreatedMessage {
    const KIND: EventKind = EventKind::MessageCreated;
    const SQL: &'static str = "select id, app_id, event_type, payload::text as payload, created_at,
                payload_erased_at
           from message where id = any($1)";
    fn id(&self) -> Uuid {
        self.id.0
    }
}

impl Rendered for DeadDelivery {
    const KIND: EventKind = EventKind::DeliveryDead;
    const SQL: &'static str =
        "select d.id, d.message_id, d.endpoint_id, m.app_id, m.event_type, d.attempt_count,
                d.last_error, d.updated_at
           from delivery d join message m on m.id = d.message_id
          where d.id = any($1)";
    fn id(&self) -> Uuid {
        self.id.0
    }
}

impl Rendered for DisabledEndpoint {
    const KIND: EventKind = EventKind::EndpointDisabled;
    const SQL: &'static str = "select id, app_id, url, disabled, disabled_reason, updated_at
           from endpoint where id = any($1)";
    fn id(&self) -> Uuid {
        self.id.0
    }
}

/// Renders into `data`, under its id, the row each of `events` of `T`'s kind is about;
/// reads nothing when there are none.
async fn render_kind<T: Rendered>(
    db: &mut PgConnection,
    events: &[Logged],
    data: &mut HashMap<Uuid, String>,
) -> sqlx::Result<()> {
    let ids = ids_of(events, T::KIND);
    if ids.is_empty() {
        return Ok(());
    }
    let rows: Vec<T> = sqlx::query_as(T::SQL)
        .bind(&ids)
        .fetch_all(&mut *db)
        .await?;
    for row in rows {
        data.insert(row.id(), json(&row));
    }
    Ok(())
}

/// The ids of the rows `events` of `kind` are about.
fn ids_of(events: &[Logged], kind: EventKind) -> Vec<Uuid> {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.ref_id)
        .collect()
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("event data always serialises")
}
