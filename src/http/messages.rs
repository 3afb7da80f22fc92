use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{
    AppParam, AttemptsList, EndpointsList, ErrorBody, MessageParams, MessagesList,
};
use super::paging::ListQuery;
use super::search::{self, AttemptFilters, MessageFilters};
use super::{ServerState, actions, optional_body, path_id};
use crate::db::attempts::{Attempt, Of};
use crate::db::messages::{DeliveryStatus, Erased, Message};
use crate::db::{self, Listing};
use crate::domain::{AttemptId, DeliveryId, EndpointId, EventType, MessageId, routing};
use crate::error::{ApiError, ApiResult, Json, Query};

pub fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .routes(routes!(send, list))
        .routes(routes!(dry_run))
        .routes(routes!(show))
        .routes(routes!(attempts))
        .routes(routes!(replay))
        .routes(routes!(erase_payload))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct SendMessage {
    #[schema(value_type = EventType)]
    event_type: String,
    /// Any JSON; receivers get exactly this text.
    #[schema(value_type = serde_json::Value)]
    payload: Box<RawValue>,
    /// Sending the same key again within `HERALD_IDEMPOTENCY_WINDOW` (default 24 h) answers
    /// the first message and queues nothing; after it, the key sends a new message.
    #[schema(min_length = 1, max_length = 256)]
    idempotency_key: Option<String>,
    /// Reaches endpoints subscribed to one of these, and endpoints subscribed to no
    /// channel. At most 10, each 1 to 128 characters of `[A-Za-z0-9_.:-]`.
    #[schema(max_items = 10, examples(json!(["eu"])))]
    #[serde(default)]
    channels: Vec<String>,
}

/// What a send and a dry-run both check, before anything is read or stored: the event type,
/// the payload's size and its type's schema, and the channels.
struct Checked<'a> {
    event_type: EventType,
    payload: &'a str,
    channels: Vec<String>,
}

fn check_idempotency_key(key: &str) -> ApiResult<()> {
    if key.is_empty() || key.len() > 256 {
        return Err(ApiError::Invalid(
            "idempotency key must be 1 to 256 characters".into(),
        ));
    }
    // PostgreSQL's text cannot hold it; refused here, it fails no batch of sends.
    if key.contains('\0') {
        return Err(ApiError::Invalid(
            "idempotency key must not contain NUL".into(),
        ));
    }
    Ok(())
}

/// Deepest nesting of arrays and objects a payload may have. serde_json reads a raw
/// payload at any depth, but PostgreSQL parses it again as it stores it, recursively: a
/// payload of a few hundred thousand `[` (well under the size limit) ran it out of stack
/// (54001), and the send failed with whatever shared its batch. 128 is serde_json's own
/// limit for parsed values, which the event-type schemas are checked with.
const MAX_PAYLOAD_DEPTH: usize = 128;

/// Whether the JSON text `raw` (already known to be well-formed) nests arrays and objects
/// more than `max` levels deep. Brackets inside strings do not count.
fn nests_deeper_than(raw: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in raw.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn check<'a>(state: &ServerState, body: &'a SendMessage) -> ApiResult<Checked<'a>> {
    let event_type = EventType::parse(&body.event_type).map_err(ApiError::Invalid)?;
    let payload = body.payload.get();
    if payload.len() > state.config.max_payload_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "payload is {} bytes; the limit is {}",
            payload.len(),
            state.config.max_payload_bytes
        )));
    }
    if nests_deeper_than(payload, MAX_PAYLOAD_DEPTH) {
        return Err(ApiError::Invalid(format!(
            "payload nests arrays and objects more than {MAX_PAYLOAD_DEPTH} levels deep"
        )));
    }
    let channels = routing::channels(&body.channels, routing::MAX_MESSAGE_CHANNELS)
        .map_err(ApiError::Invalid)?;
    // A dry-run ignores the key, but a body a send would refuse is refused here too.
    if let Some(k) = &body.idempotency_key {
        check_idempotency_key(k)?;
    }
    check_against_catalog(state, &event_type, payload)?;
    Ok(Checked {
        event_type,
        payload,
        channels,
    })
}

/// Sends a message to every enabled endpoint of the application that it reaches: subscribed
/// to its event type (or a pattern of it), to one of its channels (or to none), and with a
/// filter its payload contains (or none). Answers 202 only after the message and all its deliveries are committed: from
/// here on nothing is lost.
#[utoipa::path(
    post,
    path = "/apps/{app}/messages",
    tag = "messages",
    params(
        AppParam,
        ("Idempotency-Key" = Option<String>, Header, nullable = false, description = "Same as `idempotency_key` in the body"),
    ),
    request_body = SendMessage,
    responses((status = 202, body = Message))
)]
async fn send(
    State(state): State<ServerState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    Json(body): Json<SendMessage>,
) -> ApiResult<(StatusCode, Json<Message>)> {
    // What is checked is kept; the payload is moved out of the body below, not copied.
    let Checked {
        event_type,
        channels,
        ..
    } = check(&state, &body)?;
    let header_key = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::Invalid("Idempotency-Key must be visible ASCII".into()))
        })
        .transpose()?;
    let key = match (body.idempotency_key, header_key) {
        (Some(b), Some(h)) if b != h => {
            return Err(ApiError::Invalid(
                "idempotency_key and the Idempotency-Key header differ".into(),
            ));
        }
        (b, h) => b.or(h),
    };
    if let Some(k) = &key {
        check_idempotency_key(k)?;
    }
    // Stored with the sends that arrive meanwhile, in one statement: the application is
    // looked up in it, and endpoints with no backlog get their delivery claimed by this
    // process's workers right there.
    // The deliveries claimed for this process are handed to its workers by the batch's
    // writer, right after the commit, whether or not this request is still waiting.
    let sent = state
        .sends
        .send(db::messages::Outgoing {
            app: super::app_key(&app)?.into_owned(),
            event_type: event_type.as_str().to_owned(),
            payload: Box::<str>::from(body.payload).into(),
            channels,
            idempotency_key: key,
        })
        .await?
        .ok_or(ApiError::NotFound("application"))?;
    // Committed: from here on nothing is lost, even if this process dies.
    state.feed.poke();
    Ok((StatusCode::ACCEPTED, Json(sent.message)))
}

/// One endpoint in a dry-run's answer.
#[derive(Serialize, utoipa::ToSchema)]
struct RouteOutcome {
    #[schema(value_type = String, examples("ep_0193d2e0c8a97d3e9b1f2a4c5d6e7f80"))]
    endpoint_id: EndpointId,
    /// As lists show it: without credentials, query or fragment.
    url: String,
    description: String,
    /// Whether the message would get a delivery to this endpoint.
    reached: bool,
    /// Why not: `disabled`, `event_type` (it subscribes to other types), `channel` (to
    /// other channels) or `filter` (the payload does not contain its filter).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The same, for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// What a dry-run answers.
#[derive(Serialize, utoipa::ToSchema)]
struct DryRun {
    /// Endpoints the message would reach, of all the application's.
    reached: i64,
    /// A page of the application's endpoints, oldest first, each reached or not and why.
    endpoints: Vec<RouteOutcome>,
    /// Pass as `cursor` (with the same body) for the next page; `null` on the last.
    next_cursor: Option<String>,
}

impl From<db::messages::Route> for RouteOutcome {
    fn from(r: db::messages::Route) -> Self {
        let list = |items: &[String]| items.join(", ");
        let detail = match r.missed.as_deref() {
            None => None,
            Some("disabled") => Some(format!(
                "disabled: {}",
                r.disabled_reason.as_deref().unwrap_or("no reason given")
            )),
            Some("event_type") => Some(format!(
                "subscribes to event types {}",
                list(&r.event_types)
            )),
            Some("channel") => Some(format!("subscribes to channels {}", list(&r.channels))),
            Some("filter") => Some(format!(
                "the payload does not contain its filter {}",
                r.filter
                    .as_ref()
                    .map(|f| f.0.to_string())
                    .unwrap_or_default()
            )),
            Some(other) => Some(other.to_owned()),
        };
        Self {
            endpoint_id: r.id,
            url: crate::domain::short_url(&r.url),
            description: r.description,
            reached: r.missed.is_none(),
            reason: r.missed,
            detail,
        }
    }
}

/// Which endpoints a message would reach, and why each other would not, without storing or
/// sending anything. It shows the application's endpoints, so it takes `endpoints:manage`. The body is a send's; it is checked as a send's is (schema, archived
/// types, channels), so a dry-run that answers 200 is a send that would be accepted.
#[utoipa::path(
    post,
    path = "/apps/{app}/messages/dry-run",
    tag = "messages",
    params(AppParam, EndpointsList),
    request_body = SendMessage,
    responses((status = 200, body = DryRun))
)]
async fn dry_run(
    State(state): State<ServerState>,
    Path(app): Path<String>,
    ListQuery { limit, cursor }: ListQuery<EndpointId>,
    Json(body): Json<SendMessage>,
) -> ApiResult<Json<DryRun>> {
    let checked = check(&state, &body)?;
    let app_id = state.app_id(&app).await?;
    let mut conn = state.pool.acquire().await?;
    let (reached, rows) = db::messages::dry_run(
        &mut conn,
        app_id,
        checked.event_type.as_str(),
        &checked.channels,
        checked.payload,
        cursor,
        limit,
    )
    .await?;
    let page = Listing::from_rows(rows, limit, |r| r.id.to_string());
    Ok(Json(DryRun {
        reached,
        endpoints: page.data.into_iter().map(RouteOutcome::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Refuses, before anything is stored, a payload its type's schema does not accept, a type
/// the catalog archived, and (with `HERALD_REQUIRE_EVENT_TYPES`) a type it does not have.
fn check_against_catalog(
    state: &ServerState,
    event_type: &EventType,
    payload: &str,
) -> ApiResult<()> {
    let entry = state
        .catalog
        .usable(event_type.as_str(), state.config.require_event_types)
        .map_err(ApiError::Invalid)?;
    if let Some(validator) = entry.as_ref().and_then(|e| e.validator.as_ref()) {
        let value: serde_json::Value =
            serde_json::from_str(payload).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if let Err(e) = validator.validate(&value) {
            let at = super::event_types::location(&e);
            return Err(ApiError::Invalid(format!(
                "payload does not match the schema of {} at {at}: {e}",
                event_type.as_str()
            )));
        }
    }
    Ok(())
}

/// Lists an application's messages, newest first, optionally only those of one event
/// type, time window or idempotency key. Pass the same filters with `cursor` for the
/// next page.
#[utoipa::path(
    get,
    path = "/apps/{app}/messages",
    tag = "messages",
    params(AppParam, MessagesList, MessageFilters),
    responses(
        (status = 200, body = Listing<Message>),
        (status = 422, body = ErrorBody, description = "A filter's value is invalid."),
    )
)]
async fn list(
    State(state): State<ServerState>,
    Path(app): Path<String>,
    ListQuery { limit, cursor }: ListQuery<MessageId>,
    Query(filters): Query<MessageFilters>,
) -> ApiResult<Json<Listing<Message>>> {
    let app_id = state.app_id(&app).await?;
    let Some(search) = filters.search(cursor, search::rfc3339)? else {
        return Ok(Json(Listing::from_rows(vec![], limit, |_| String::new())));
    };
    let rows = db::messages::list(&state.pool, app_id, &search, limit).await?;
    Ok(Json(Listing::from_rows(rows, limit, |m| m.id.to_string())))
}

/// A message with one delivery per endpoint it was bound for.
#[derive(Serialize, utoipa::ToSchema)]
struct MessageWithDeliveries {
    #[serde(flatten)]
    message: Message,
    deliveries: Vec<DeliveryStatus>,
}

async fn find(state: &ServerState, app: &str, msg: &str) -> ApiResult<Message> {
    let app_id = state.app_id(app).await?;
    let id = path_id(msg, "message")?;
    db::messages::find(&state.pool, app_id, id)
        .await?
        .ok_or(ApiError::NotFound("message"))
}

/// One message with its deliveries.
#[utoipa::path(
    get,
    path = "/apps/{app}/messages/{msg}",
    tag = "messages",
    params(MessageParams),
    responses((status = 200, body = MessageWithDeliveries))
)]
async fn show(
    State(state): State<ServerState>,
    Path((app, msg)): Path<(String, String)>,
) -> ApiResult<Json<MessageWithDeliveries>> {
    let message = find(&state, &app, &msg).await?;
    let deliveries = db::messages::deliveries(&state.pool, message.id).await?;
    Ok(Json(MessageWithDeliveries {
        message,
        deliveries,
    }))
}

/// The message's attempts at every endpoint, newest first, optionally only those of one
/// outcome or status. Pass the same filters with `cursor` for the next page.
#[utoipa::path(
    get,
    path = "/apps/{app}/messages/{msg}/attempts",
    tag = "messages",
    params(MessageParams, AttemptsList, AttemptFilters),
    responses(
        (status = 200, body = Listing<Attempt>),
        (status = 422, body = ErrorBody, description = "A filter's value is invalid."),
    )
)]
async fn attempts(
    State(state): State<ServerState>,
    Path((app, msg)): Path<(String, String)>,
    list: ListQuery<AttemptId>,
    Query(filters): Query<AttemptFilters>,
) -> ApiResult<Json<Listing<Attempt>>> {
    let message = find(&state, &app, &msg).await?;
    let of = Of::Message(message.id);
    search::list_attempts(&state, message.app_id, of, list, &filters).await
}

/// Optional: an empty body replays to every endpoint.
#[derive(Deserialize, Default, utoipa::ToSchema)]
struct ReplayBody {
    endpoint_id: Option<EndpointId>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Queued {
    queued: usize,
    deliveries: Vec<DeliveryId>,
}

/// Sends the message again (same `webhook-id`, new timestamp and signature), to one
/// endpoint or to every enabled endpoint subscribed to its event type.
#[utoipa::path(
    post,
    path = "/apps/{app}/messages/{msg}/replay",
    tag = "messages",
    params(MessageParams),
    request_body(content = Option<ReplayBody>, description = "Optional"),
    responses(
        (status = 202, body = Queued),
        (status = 409, body = ErrorBody, description = "`endpoint_disabled`, `in_flight`, or `payload_erased` (there is nothing to send)."),
    )
)]
async fn replay(
    State(state): State<ServerState>,
    Path((app, msg)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Queued>)> {
    let message = find(&state, &app, &msg).await?;
    // The body is optional: none means "to every endpoint".
    let body: ReplayBody = optional_body(&body)?;
    let queued =
        actions::replay_message(&state, message.id, Some(message.app_id), body.endpoint_id)
            .await??;
    Ok((
        StatusCode::ACCEPTED,
        Json(Queued {
            queued: queued.len(),
            deliveries: queued,
        }),
    ))
}

/// Erases the message's payload and the response bodies of its attempts, for good. What
/// stays is what happened: the message's id, event type and time, its deliveries and its
/// attempts with their status codes, errors and durations; the payload reads as `null`
/// from then on, with `payload_erased_at` set, everywhere (this API, the live feed, the
/// dashboard). Deliveries still to be sent (pending or retrying) end `dead` with
/// `last_error` "payload erased"; an attempt already in flight finishes and is recorded
/// without its response body, and is not retried. Replaying the message or retrying its
/// deliveries is refused from then on (409 `payload_erased`), and recovers pass over it.
/// Erasing again changes nothing and answers the first erasure's time, with nothing
/// removed.
#[utoipa::path(
    delete,
    path = "/apps/{app}/messages/{msg}/payload",
    tag = "messages",
    params(MessageParams),
    responses((status = 200, body = Erased, description = "What was removed"))
)]
async fn erase_payload(
    State(state): State<ServerState>,
    Path((app, msg)): Path<(String, String)>,
) -> ApiResult<Json<Erased>> {
    let app_id = state.app_id(&app).await?;
    let id = path_id(&msg, "message")?;
    let mut conn = state.pool.acquire().await?;
    let erased = db::messages::erase_payload(&mut conn, app_id, id)
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    Ok(Json(erased))
}

#[cfg(test)]
mod tests {
    use super::nests_deeper_than;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert!(!nests_deeper_than(r#"{"a": [1, {"b": []}]}"#, 4));
        assert!(nests_deeper_than(r#"{"a": [1, {"b": []}]}"#, 3));
        assert!(!nests_deeper_than(r#"{"a": "[[[[[[{{{{"}"#, 1));
        // An escaped quote does not end the string.
        assert!(!nests_deeper_than(r#"["\"[[[[", "\\"]"#, 1));
        assert!(nests_deeper_than(r#"["\\", [[]]]"#, 2));
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(nests_deeper_than(&deep, 128));
        let limit = format!("{}{}", "[".repeat(128), "]".repeat(128));
        assert!(!nests_deeper_than(&limit, 128));
    }
}
