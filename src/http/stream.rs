//! `GET /api/v1/stream`: the live feed as server-sent events.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use crate::db::events::Filter;
use crate::domain::{EndpointId, EventType, Position};
use crate::error::{AppError, AppResult, Query};
use crate::feed::Item;

pub fn routes() -> Router<AppState> {
    Router::new().route("/stream", get(stream))
}

#[derive(Debug, Deserialize)]
pub struct StreamParams {
    app: Option<String>,
    endpoint: Option<String>,
    event_type: Option<String>,
    outcome: Option<String>,
    /// For clients that cannot set the `Last-Event-ID` header (a page's first
    /// `EventSource`); the header wins when both are given.
    last_event_id: Option<String>,
}

async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<StreamParams>,
) -> AppResult<Response> {
    let filter = filter(&state, &params).await?;
    let from = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .or(params.last_event_id)
        .filter(|id| !id.trim().is_empty())
        .map(|id| {
            id.parse::<Position>().map_err(|_| {
                AppError::BadRequest(format!(
                    "Last-Event-ID {id:?} is not an event id from this stream"
                ))
            })
        })
        .transpose()?;
    if let Some(from) = from
        && let Some(oldest) = state.feed.oldest().await?
        && from < oldest
    {
        return Err(AppError::UnknownEventId(format!(
            "events after {from} are no longer kept (the feed keeps {}); \
             reconnect without Last-Event-ID and read past state through the REST API",
            humantime(state.config.feed_retention)
        )));
    }
    let items = state.feed.subscribe(filter, from);
    let events = futures_util::stream::unfold(items, |mut items| async move {
        let item = items.recv().await?;
        Some((Ok::<_, Infallible>(sse_event(item)), items))
    });
    Ok((
        // Proxies such as nginx buffer responses unless told not to.
        [("x-accel-buffering", "no")],
        Sse::new(events).keep_alive(KeepAlive::new().interval(state.config.sse_keep_alive)),
    )
        .into_response())
}

fn sse_event(item: Item) -> SseEvent {
    match item {
        Item::Event(e) => SseEvent::default()
            .id(e.position.to_string())
            .event(&e.kind)
            .data(&e.data),
        // No id: the client's Last-Event-ID stays at the last event it really got.
        Item::Lagged { resume_from } => SseEvent::default().event("lagged").data(
            json!({
                "message": "this client fell behind the live feed; the events it missed follow",
                "resume_from": resume_from.map(|p| p.to_string()),
            })
            .to_string(),
        ),
    }
}

async fn filter(state: &AppState, params: &StreamParams) -> AppResult<Filter> {
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
                .map_err(|_| AppError::BadRequest(format!("endpoint {e:?} is not an endpoint id")))
        })
        .transpose()?;
    let event_type = params
        .event_type
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| EventType::parse(t).map(|t| t.as_str().to_owned()))
        .transpose()
        .map_err(AppError::BadRequest)?;
    let outcome = match params.outcome.as_deref().filter(|o| !o.is_empty()) {
        None => None,
        Some(o @ ("succeeded" | "retrying" | "dead")) => Some(o.to_owned()),
        Some(o) => {
            return Err(AppError::BadRequest(format!(
                "outcome {o:?} is not one of succeeded, retrying, dead"
            )));
        }
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
