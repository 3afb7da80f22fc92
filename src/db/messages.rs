use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{AppId, DeliveryId, DeliveryState, EndpointId, MessageId};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Message {
    pub id: MessageId,
    #[serde(skip)]
    pub app_id: AppId,
    pub event_type: String,
    /// What it was sent to, besides the endpoints subscribed to no channel.
    pub channels: Vec<String>,
    /// The exact JSON text the sender gave; `null` once erased.
    #[serde(serialize_with = "raw_json")]
    #[schema(value_type = serde_json::Value)]
    pub payload: String,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When the payload (and its attempts' response bodies) was erased; `null` if it was
    /// not.
    pub payload_erased_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeliveryStatus {
    pub id: DeliveryId,
    pub endpoint_id: EndpointId,
    pub state: DeliveryState,
    pub attempt_count: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

macro_rules! message_columns {
    () => {
        "id, app_id, event_type, coalesce(channels, '{}') as channels, payload::text as payload,
         idempotency_key, created_at, payload_erased_at"
    };
}

/// Lets `send` insert deliveries already claimed by this process (`herald.enqueue`):
/// the worker that will send them, its lease, and the endpoints it already fills.
#[derive(Debug, Clone)]
pub struct DirectOffer {
    /// When the offer was made: the leases of what it claims begin no earlier.
    pub made_at: Instant,
    pub worker: Uuid,
    pub lease: Duration,
    /// How many deliveries this process can take at an endpoint it holds none of: its free
    /// workers, at most the endpoint cap (`send_many`'s limit per endpoint).
    pub room: i32,
    /// The endpoints it holds deliveries of, with the room left there (none: busy).
    pub rooms: Vec<(EndpointId, i32)>,
}

impl DirectOffer {
    /// Endpoints where this process already has as many requests in flight as their cap.
    pub fn busy_endpoints(&self) -> Vec<EndpointId> {
        self.rooms
            .iter()
            .filter(|(_, room)| *room <= 0)
            .map(|(endpoint, _)| *endpoint)
            .collect()
    }

    /// The worker and lease seconds `herald.enqueue` and `herald.enqueue_many` take; both
    /// null without an offer.
    fn lease(offer: Option<&Self>) -> (Option<Uuid>, Option<f64>) {
        offer.map_or((None, None), |d| {
            (Some(d.worker), Some(d.lease.as_secs_f64()))
        })
    }
}

/// A delivery `send` inserted already claimed, with what sending it needs beyond the
/// message itself.
#[derive(Debug, Deserialize)]
pub struct DirectDelivery {
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub max_in_flight: Option<i32>,
}

#[derive(sqlx::FromRow)]
struct Enqueued {
    #[sqlx(flatten)]
    message: Message,
    claimed: Json<Vec<DirectDelivery>>,
    pending_endpoints: Vec<Uuid>,
}

impl Enqueued {
    fn sent(self, offered_at: Option<Instant>) -> Sent {
        Sent {
            message: self.message,
            claimed: self.claimed.0,
            offered_at,
            queued_for: self.pending_endpoints.into_iter().map(EndpointId).collect(),
        }
    }
}

/// What `send` stored: the message, the deliveries claimed for this process, and the
/// endpoints whose deliveries were queued instead.
pub struct Sent {
    pub message: Message,
    pub claimed: Vec<DirectDelivery>,
    /// When the direct offer was made, if one was.
    pub offered_at: Option<Instant>,
    pub queued_for: Vec<EndpointId>,
}

/// Stores the message and one delivery per matching enabled endpoint in one statement (so
/// one transaction); deliveries not claimed directly are announced to the workers. Same
/// function a backend sharing the database calls inside its own transaction; a key repeated
/// within the idempotency window returns the original and queues nothing. `app` is an
/// application id or uid; `None` when there is no such application.
pub async fn send(
    db: impl PgExecutor<'_>,
    app: &str,
    event_type: &str,
    payload: &str,
    channels: &[String],
    idempotency_key: Option<&str>,
    direct: Option<DirectOffer>,
) -> sqlx::Result<Option<Sent>> {
    let offered_at = direct.as_ref().map(|d| d.made_at);
    let (worker, lease) = DirectOffer::lease(direct.as_ref());
    let busy_endpoints = direct
        .as_ref()
        .map(DirectOffer::busy_endpoints)
        .unwrap_or_default();
    sqlx::query_as::<_, Enqueued>(
        "select (q.message).id, (q.message).app_id, (q.message).event_type,
                coalesce((q.message).channels, '{}') as channels,
                (q.message).payload::text as payload, (q.message).idempotency_key,
                (q.message).created_at, (q.message).payload_erased_at, q.claimed,
                q.pending_endpoints
           from herald.enqueue($1, $2, $3::json, $4, $5, $6, $7, $8) q",
    )
    .bind(app)
    .bind(event_type)
    .bind(payload)
    .bind(idempotency_key)
    .bind(worker)
    .bind(lease)
    .bind(busy_endpoints)
    .bind(channels)
    .fetch_one(db)
    .await
    .map(|e| Some(e.sent(offered_at)))
    .or_else(|e| match &e {
        // herald.enqueue raises no_data_found for an unknown application.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("P0002") => Ok(None),
        _ => Err(e),
    })
}

/// One message of `send_many`'s batch: what `send` takes for one.
#[derive(Debug)]
pub struct Outgoing {
    /// An application id or uid.
    pub app: String,
    pub event_type: String,
    pub payload: String,
    pub channels: Vec<String>,
    pub idempotency_key: Option<String>,
}

/// One row of `herald.enqueue_batch`'s answer: a message's own (no endpoint), or one of
/// its deliveries.
#[derive(sqlx::FromRow)]
struct BatchRow {
    /// The message's place in the batch, from 1: on a message's own row, and on the
    /// deliveries of a message with a key.
    ord: Option<i32>,
    message_id: MessageId,
    app_id: Option<AppId>,
    created_at: Option<DateTime<Utc>>,
    /// A message with a key, whole: it may be an earlier one with that key.
    #[sqlx(flatten)]
    keyed: KeyedColumns,
    endpoint_id: Option<Uuid>,
    direct: Option<bool>,
    delivery_id: Option<Uuid>,
    url: Option<String>,
    headers: Option<Json<BTreeMap<String, String>>>,
    secrets: Option<Vec<String>>,
    max_in_flight: Option<i32>,
}

#[derive(sqlx::FromRow)]
struct KeyedColumns {
    event_type: Option<String>,
    channels: Option<Vec<String>>,
    payload: Option<String>,
    idempotency_key: Option<String>,
    payload_erased_at: Option<DateTime<Utc>>,
}

/// `send` for many messages in one statement, so one transaction (`herald.enqueue_batch`):
/// each gets what `send` would give it alone, in the order given, and `None` where its
/// application does not exist. The direct offer is shared: the deliveries it claims all go
/// to this process's workers, no more at an endpoint than the offer has room for there.
pub async fn send_many<'a>(
    db: impl PgExecutor<'_>,
    batch: impl ExactSizeIterator<Item = &'a Outgoing>,
    direct: Option<DirectOffer>,
) -> sqlx::Result<Vec<Option<Sent>>> {
    let batch: Vec<&Outgoing> = batch.collect();
    let offered_at = direct.as_ref().map(|d| d.made_at);
    let (worker, lease) = DirectOffer::lease(direct.as_ref());
    let room = direct.as_ref().map_or(0, |d| d.room);
    let (room_endpoints, rooms): (Vec<EndpointId>, Vec<i32>) =
        direct.into_iter().flat_map(|d| d.rooms).unzip();
    let len = batch.len();
    let mut apps = Vec::with_capacity(len);
    let mut event_types = Vec::with_capacity(len);
    let mut payloads = Vec::with_capacity(len);
    let mut channels = Vec::with_capacity(len);
    let mut keys = Vec::with_capacity(len);
    for m in &batch {
        apps.push(m.app.as_str());
        event_types.push(m.event_type.as_str());
        payloads.push(m.payload.as_str());
        // A channel has no spaces (`routing::channels`).
        channels.push(m.channels.join(" "));
        keys.push(m.idempotency_key.as_deref());
    }
    let rows = sqlx::query_as::<_, BatchRow>(
        "select q.ord, q.message_id, q.app_id, q.created_at, (q.keyed).event_type,
                coalesce((q.keyed).channels, '{}') as channels,
                (q.keyed).payload::text as payload, (q.keyed).idempotency_key,
                (q.keyed).payload_erased_at, q.endpoint_id, q.direct, q.delivery_id, q.url,
                q.headers, q.secrets, q.max_in_flight
           from herald.enqueue_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) q",
    )
    .bind(apps)
    .bind(event_types)
    .bind(payloads)
    .bind(channels)
    .bind(keys)
    .bind(worker)
    .bind(lease)
    .bind(room)
    .bind(room_endpoints)
    .bind(rooms)
    .fetch_all(db)
    .await?;
    let mut sent: Vec<Option<Sent>> = std::iter::repeat_with(|| None).take(len).collect();
    // Each message's place by its id, for the deliveries that come with the id only.
    let mut places: HashMap<MessageId, usize> = HashMap::with_capacity(len);
    let mut deliveries: Vec<BatchRow> = Vec::new();
    for row in rows {
        if row.endpoint_id.is_some() {
            deliveries.push(row);
            continue;
        }
        let Some(i) = row
            .ord
            .and_then(|o| usize::try_from(o - 1).ok())
            .filter(|i| *i < len)
        else {
            continue;
        };
        let (Some(app_id), Some(created_at)) = (row.app_id, row.created_at) else {
            continue;
        };
        let k = row.keyed;
        let message = match k.payload {
            Some(payload) => Message {
                id: row.message_id,
                app_id,
                event_type: k.event_type.unwrap_or_default(),
                channels: k.channels.unwrap_or_default(),
                payload,
                idempotency_key: k.idempotency_key,
                created_at,
                payload_erased_at: k.payload_erased_at,
            },
            None => {
                let m = batch[i];
                Message {
                    id: row.message_id,
                    app_id,
                    event_type: m.event_type.clone(),
                    channels: m.channels.clone(),
                    payload: m.payload.clone(),
                    idempotency_key: None,
                    created_at,
                    payload_erased_at: None,
                }
            }
        };
        places.insert(row.message_id, i);
        sent[i] = Some(Sent {
            message,
            claimed: Vec::new(),
            offered_at,
            queued_for: Vec::new(),
        });
    }
    for row in deliveries {
        let place = match row.ord {
            Some(o) => usize::try_from(o - 1).ok(),
            None => places.get(&row.message_id).copied(),
        };
        if let Some(s) = place.and_then(|i| sent.get_mut(i)).and_then(Option::as_mut) {
            s.add(row);
        }
    }
    Ok(sent)
}

impl Sent {
    /// One of `send_many`'s delivery rows: claimed for this process, or queued.
    fn add(&mut self, row: BatchRow) {
        let Some(endpoint_id) = row.endpoint_id else {
            return;
        };
        if row.direct != Some(true) {
            self.queued_for.push(EndpointId(endpoint_id));
            return;
        }
        let (Some(id), Some(url)) = (row.delivery_id, row.url) else {
            // Not expected (the statement reads both for every delivery it claims). Claimed
            // and leased, it is sent once its lease runs out; said, not hidden.
            tracing::error!(%endpoint_id, "a delivery claimed by a batch came without its id or URL");
            return;
        };
        self.claimed.push(DirectDelivery {
            id,
            endpoint_id,
            url,
            headers: row.headers.map(|h| h.0).unwrap_or_default(),
            secrets: row.secrets.unwrap_or_default(),
            max_in_flight: row.max_in_flight,
        });
    }
}

/// The event type of a test event (`send_test`).
pub const TEST_EVENT_TYPE: &str = "herald.test";

/// Sends a test event (`herald.test`, with `payload`) to one endpoint of `app` only, as
/// an ordinary message through the outbox: stored, signed, retried and shown like any
/// other. In one transaction: the message is enqueued, the deliveries it made for other
/// endpoints are dropped before anyone could see them, and the endpoint gets one whether
/// or not it subscribes to the type (the `replay` path, so its attempt says `replay`).
pub async fn send_test(
    db: &mut PgConnection,
    app: AppId,
    endpoint: EndpointId,
    payload: &str,
) -> sqlx::Result<Result<MessageId, crate::db::replays::Refused>> {
    let mut tx = db.begin().await?;
    super::plan_on_indexes(&mut tx).await?;
    let Some(sent) = send(
        &mut *tx,
        &app.to_string(),
        TEST_EVENT_TYPE,
        payload,
        &[],
        None,
        None,
    )
    .await?
    else {
        return Ok(Err(crate::db::replays::Refused::NotFound("application")));
    };
    let id = sent.message.id;
    sqlx::query("delete from delivery where message_id = $1 and endpoint_id <> $2")
        .bind(id)
        .bind(endpoint)
        .execute(&mut *tx)
        .await?;
    if let Err(refused) =
        crate::db::replays::replay_message(&mut tx, id, Some(app), Some(endpoint)).await?
    {
        return Ok(Err(refused));
    }
    tx.commit().await?;
    Ok(Ok(id))
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

/// Which messages a list shows. Every bound is an id bound: ids are UUIDv7, so a time
/// range is an id range, the indexes' last column (and, once history is partitioned by
/// id, what prunes partitions).
#[derive(Debug, Clone)]
pub struct Search {
    pub event_type: Option<String>,
    pub idempotency_key: Option<String>,
    /// Ids at or after this one.
    pub from: Uuid,
    /// Ids before this one: the earlier of `until` and the page's cursor.
    pub before: Uuid,
}

impl Default for Search {
    fn default() -> Self {
        Self {
            event_type: None,
            idempotency_key: None,
            from: Uuid::nil(),
            before: Uuid::max(),
        }
    }
}

macro_rules! list_messages {
    ($($where:literal)+) => {
        concat!("select ", message_columns!(), " from message where ", $($where,)+ " limit $4")
    };
}

/// Newest first. One statement per combination of filters rather than `($n is null or
/// ...)`, and the id range written as a range of the index's own key, for how the pool
/// plans: generically (`plan_cache_mode = force_generic_plan`). A generic plan cannot turn
/// an optional condition into an index condition, and it takes a bare `id` range for a
/// narrow one and walks the primary key, filtering out every other application's and
/// type's messages (measured: a whole 500,000-message table for a type that has none).
/// Written as `(app_id, id) >= ($1, $2)` the bound fits only the index it is meant for,
/// and positions its scan there: a page costs its own rows.
pub async fn list(
    db: impl PgExecutor<'_>,
    app_id: AppId,
    search: &Search,
    limit: i64,
) -> sqlx::Result<Vec<Message>> {
    let sql = match (&search.event_type, &search.idempotency_key) {
        // `message_app` (app_id, id).
        (None, None) => list_messages!(
            "(app_id, id) >= ($1, $2) and (app_id, id) < ($1, $3)
             order by app_id desc, id desc"
        ),
        // `message_event_type` (app_id, event_type, id), migration 0010.
        (Some(_), None) => list_messages!(
            "app_id = $1 and (event_type, id) >= ($5, $2) and (event_type, id) < ($5, $3)
             order by event_type desc, id desc"
        ),
        // `message_idempotency` (app_id, idempotency_key), unique: a key names one
        // message, so its equality alone bounds the walk.
        (None, Some(_)) => list_messages!(
            "app_id = $1 and idempotency_key = $5 and id >= $2 and id < $3
             order by id desc"
        ),
        (Some(_), Some(_)) => list_messages!(
            "app_id = $1 and idempotency_key = $5 and id >= $2 and id < $3
               and event_type = $6
             order by id desc"
        ),
    };
    let mut query = sqlx::query_as(sql)
        .bind(app_id)
        .bind(search.from)
        .bind(search.before)
        .bind(limit + 1);
    if let Some(key) = &search.idempotency_key {
        query = query.bind(key);
    }
    if let Some(event_type) = &search.event_type {
        query = query.bind(event_type);
    }
    query.fetch_all(db).await
}

pub async fn deliveries(
    db: impl PgExecutor<'_>,
    id: MessageId,
) -> sqlx::Result<Vec<DeliveryStatus>> {
    sqlx::query_as(
        "select id, endpoint_id, state, attempt_count,
                case when state = 'pending' then next_attempt_at end as next_attempt_at,
                last_error
           from delivery where message_id = $1 order by id",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

/// The `last_error` of a delivery stopped because its message's payload was erased.
pub const PAYLOAD_ERASED: &str = "payload erased";

/// What erasing a message's payload removed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Erased {
    pub message_id: MessageId,
    /// When the payload was erased: the first erasure's time, however often it is asked.
    pub payload_erased_at: DateTime<Utc>,
    /// Response bodies removed from the message's attempts by this call.
    pub attempt_bodies_erased: u64,
    /// Deliveries that were still to be sent (pending or retrying) and are now `dead`,
    /// with `last_error` "payload erased", by this call.
    pub deliveries_stopped: u64,
}

/// Erases a message's payload (it becomes JSON `null`) and the response bodies of its
/// attempts, and stops its deliveries that were still to be sent: an erased payload is
/// never sent again. Its id, event type, times, deliveries and attempts stay. Asking again
/// changes nothing and answers the first erasure's time. `None` when `app` has no such
/// message.
pub async fn erase_payload(
    db: &mut PgConnection,
    app_id: AppId,
    id: MessageId,
) -> sqlx::Result<Option<Erased>> {
    let mut tx = db.begin().await?;
    // The message first, then its deliveries: the order in which deleting its application
    // locks them, so the two never deadlock.
    let found: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "select payload_erased_at from message where app_id = $1 and id = $2
            for no key update",
    )
    .bind(app_id)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let erased_at = match found {
        None => return Ok(None),
        Some(Some(at)) => at,
        Some(None) => {
            sqlx::query_scalar(
                "update message set payload = 'null', payload_erased_at = now()
                  where id = $1
                 returning payload_erased_at",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    // Waits for any worker writing the outcome of an attempt of this message: the
    // statements below then see that attempt and the delivery's new state. A worker that
    // completes later sees the erasure (db/deliveries.rs, `insert_attempts`).
    // In id order, as a completion batch locks them (db/deliveries.rs, `complete`): two
    // writers that take the same rows in one order cannot deadlock.
    sqlx::query("select 1 from delivery where message_id = $1 order by id for no key update")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let stopped = sqlx::query(
        // `(…) is true`: a test the planner cannot match against the pending index's
        // predicate, so the rows are found by their message, never by reading every pending
        // row (migration 0033 says why).
        "update delivery
            set state = 'dead', last_error = $2, updated_at = now()
          where message_id = $1 and (state = 'pending') is true",
    )
    .bind(id)
    .bind(PAYLOAD_ERASED)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let bodies = sqlx::query(
        "update attempt set response_body = null
          where message_id = $1 and response_body is not null",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Some(Erased {
        message_id: id,
        payload_erased_at: erased_at,
        attempt_bodies_erased: bodies,
        deliveries_stopped: stopped,
    }))
}

pub fn raw_json<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    let raw: &RawValue = serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
    raw.serialize(s)
}

/// One endpoint as a dry-run sees it: whether a message would reach it, and if not why.
#[derive(Debug, sqlx::FromRow)]
pub struct Route {
    pub id: EndpointId,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub channels: Vec<String>,
    pub filter: Option<Json<serde_json::Value>>,
    pub disabled_reason: Option<String>,
    /// `disabled`, `event_type`, `channel` or `filter`; `None`: reached.
    pub missed: Option<String>,
}

/// What a message would reach, without sending it: how many endpoints in all (asked as
/// `herald.enqueue` asks, by the routing index), and a page of the application's
/// endpoints after `after`, each with why it would be missed (`herald.route_miss`).
pub async fn dry_run(
    db: &mut PgConnection,
    app: AppId,
    event_type: &str,
    channels: &[String],
    payload: &str,
    after: Option<EndpointId>,
    limit: i64,
) -> sqlx::Result<(i64, Vec<Route>)> {
    let reached: i64 = sqlx::query_scalar(
        "select count(*) from endpoint e
          where e.app_id = $1 and not e.disabled
            and e.routes && herald.type_routes($1, $2)
            and e.routes && herald.channel_routes($1, $3)
            and (e.filter is null or e.filter <@ (select herald.jsonb_or_null($4::json)))",
    )
    .bind(app)
    .bind(event_type)
    .bind(channels)
    .bind(payload)
    .fetch_one(&mut *db)
    .await?;
    let routes = sqlx::query_as(
        "select e.id, e.url, e.description, e.event_types, e.channels, e.filter,
                e.disabled_reason,
                case when e.disabled then 'disabled'
                     else herald.route_miss(e.app_id, e.event_types, e.channels, e.filter,
                                            $2, $3, $4::json) end as missed
           from endpoint e
          where e.app_id = $1 and e.removed_at is null and ($5::uuid is null or e.id > $5)
          order by e.id
          limit $6",
    )
    .bind(app)
    .bind(event_type)
    .bind(channels)
    .bind(payload)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&mut *db)
    .await?;
    Ok((reached, routes))
}
