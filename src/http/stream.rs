//! `GET /api/v1/stream`: the live feed as server-sent events.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::HeaderName;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ServerState;
use super::access::Access;
use super::openapi::ErrorBody;
use crate::db::events::Filter;
use crate::domain::{AttemptOutcome, EndpointId, EventType, Position};
use crate::error::{ApiError, ApiResult, Query};
use crate::feed::{Held, Item, Queued, Subscription};

pub fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new().routes(routes!(stream))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Only this application's events (its id or uid).
    app: Option<String>,
    /// Only this endpoint's events.
    #[param(pattern = "^(ep_[0-9a-fA-F]{32})?$")]
    endpoint: Option<String>,
    /// Only messages of this event type.
    #[param(pattern = "^([A-Za-z0-9_.-]{1,256})?$")]
    event_type: Option<String>,
    /// Only attempts with this outcome: `succeeded`, `retrying` or `dead`.
    #[param(pattern = "^(succeeded|retrying|dead)?$")]
    outcome: Option<String>,
    /// For clients that cannot set the `Last-Event-ID` header (a page's first
    /// `EventSource`); the header wins when both are given. Two numbers of at most 18
    /// digits, as the stream's ids are (a longer one names no event: 400).
    #[param(pattern = "^([0-9]{1,18}-[0-9]{1,18})?$")]
    last_event_id: Option<String>,
}

/// The live feed as server-sent events: `message.created`, `attempt`, `delivery.dead` and
/// `endpoint.disabled`, each with an `id:` to resume from with `Last-Event-ID`.
#[utoipa::path(
    get,
    path = "/stream",
    tag = "feed",
    params(
        StreamParams,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = "^([0-9]{1,18}-[0-9]{1,18})?$",
            description = "Resume after this event: an `id:` of this stream, two numbers of at most 18 digits"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`. Each event's `data` is \
            JSON: an attempt as the REST API shows it for `attempt`, and for the others the ids \
            of what they concern.", body = serde_json::Value, content_type = "text/event-stream"),
        (status = 404, body = ErrorBody, description = "The `app` filter names no application \
            (or, for a token bound to one application, another one: its stream is always its \
            application's)."),
        (status = 410, body = ErrorBody, description = "`unknown_last_event_id`: events after it are no longer kept."),
    )
)]
pub(super) async fn stream(
    State(state): State<ServerState>,
    Extension(access): Extension<Access>,
    headers: HeaderMap,
    Query(params): Query<StreamParams>,
) -> ApiResult<Response> {
    let mut filter = filter(&state, &params).await?;
    // An application-bound credential's stream is its application's, whatever was asked.
    if let Some(bound) = access.app() {
        access.check_app(filter.app.unwrap_or(bound))?;
        filter.app = Some(bound);
    }
    // The query's value is checked even when the header wins.
    if let Some(id) = params.last_event_id.as_deref().filter(|id| !id.is_empty())
        && id.parse::<Position>().is_err()
    {
        return Err(ApiError::BadRequest(format!(
            "last_event_id {id:?} is not an event id from this stream"
        )));
    }
    let from = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .filter(|id| !id.is_empty())
        .or(params.last_event_id)
        .filter(|id| !id.is_empty())
        .map(|id| {
            id.parse::<Position>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "Last-Event-ID {id:?} is not an event id from this stream"
                ))
            })
        })
        .transpose()?;
    if let Some(from) = from
        && !state.feed.can_resume_from(from).await?
    {
        return Err(ApiError::UnknownEventId(format!(
            "events after {from} are no longer kept (the feed keeps {}); \
             reconnect without Last-Event-ID and read past state through the REST API",
            humantime(state.config.feed_retention)
        )));
    }
    let items = state.feed.subscribe(filter, from);
    // A stream ends when its credential does: an expired or revoked token, a portal link
    // past its time.
    let pool = state.pool.clone();
    let ended = async move { access.ended(&pool).await };
    let body = Body::from_stream(frames(items, state.config.sse_keep_alive).take_until(ended));
    Ok((
        [
            (CONTENT_TYPE, "text/event-stream"),
            (CACHE_CONTROL, "no-cache"),
            // Proxies such as nginx buffer responses unless told not to.
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}

/// Most bytes copied into one write to a client when small items queue up for it.
const CHUNK: usize = 64 * 1024;

/// The stream's bytes: a whole batch's shared frames as they are, other items' frames
/// joined into one write while they wait, and a keep-alive comment after `keep_alive` of
/// silence. Each write keeps its items charged to the subscriber until the server has
/// written it out and dropped it, so bytes stuck behind a client that does not read count
/// against its budget.
fn frames(
    items: Subscription,
    keep_alive: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    // An item taken while joining that is better written on its own, next.
    let held: Option<Queued> = None;
    futures_util::stream::unfold((items, held), move |(mut items, held)| async move {
        let first = match held {
            Some(item) => item,
            None => match tokio::time::timeout(keep_alive, items.recv()).await {
                Ok(Some(item)) => item,
                Ok(None) => return None,
                Err(_) => return Some((Ok(Bytes::from_static(b":\n\n")), (items, None))),
            },
        };
        let (first, charge) = first.into_parts();
        if let Item::Batch(batch) = first {
            return Some((Ok(written(batch.frames, vec![charge])), (items, None)));
        }
        let mut chunk = Vec::new();
        let mut charges = vec![charge];
        append(&mut chunk, first);
        let mut held = None;
        while chunk.len() < CHUNK {
            match items.try_recv() {
                Some(item) if matches!(*item, Item::Batch(_)) => {
                    held = Some(item);
                    break;
                }
                Some(item) => {
                    let (item, charge) = item.into_parts();
                    append(&mut chunk, item);
                    charges.push(charge);
                }
                None => break,
            }
        }
        Some((Ok(written(chunk.into(), charges)), (items, held)))
    })
}

/// Bytes handed to the server, with what they are charged to.
struct Written {
    bytes: Bytes,
    _charges: Vec<Held>,
}

impl AsRef<[u8]> for Written {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

fn written(bytes: Bytes, charges: Vec<Held>) -> Bytes {
    Bytes::from_owner(Written {
        bytes,
        _charges: charges,
    })
}

fn append(chunk: &mut Vec<u8>, item: Item) {
    match item {
        Item::Events(events) => {
            for e in events {
                chunk.extend_from_slice(&e.frame);
            }
        }
        Item::Batch(batch) => chunk.extend_from_slice(&batch.frames),
        // No id: the client's Last-Event-ID stays at the last event it really got.
        Item::Lagged { resume_from } => {
            let data = json!({
                "message": "this client fell behind the live feed; the events it missed follow",
                "resume_from": resume_from.map(|p| p.to_string()),
            });
            chunk.extend_from_slice(format!("event: lagged\ndata: {data}\n\n").as_bytes());
        }
    }
}

async fn filter(state: &ServerState, params: &StreamParams) -> ApiResult<Filter> {
    let app = match params.app.as_deref().filter(|a| !a.is_empty()) {
        Some(key) => Some(state.app_id(key).await?),
        None => None,
    };
    let endpoint = params
        .endpoint
        .as_deref()
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.parse::<EndpointId>()
                .map_err(|_| ApiError::BadRequest(format!("endpoint {e:?} is not an endpoint id")))
        })
        .transpose()?;
    let event_type = params
        .event_type
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| EventType::parse(t).map(|t| t.as_str().to_owned()))
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let outcome = match params.outcome.as_deref().filter(|o| !o.is_empty()) {
        None => None,
        Some(o) => Some(AttemptOutcome::parse(o).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "outcome {o:?} is not one of succeeded, retrying, dead"
            ))
        })?),
    };
    Ok(Filter {
        app,
        endpoint,
        event_type,
        outcome,
    })
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
