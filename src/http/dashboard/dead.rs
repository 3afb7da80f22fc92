//! `/dead`: the dead letters, newest first, and the endpoints with the most of them.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;

use super::session::Session;
use super::view::ago;
use super::{Layout, PageError, PageResult, render};
use crate::db::ListParams;
use crate::db::dashboard;
use crate::db::events::DeadDelivery;
use crate::domain::{DeliveryId, short_url};
use crate::http::ServerState;

pub(super) fn routes() -> Router<ServerState> {
    Router::new().route("/dead", get(dead))
}

struct DeadRow {
    id: String,
    app_id: String,
    message_id: String,
    endpoint_id: String,
    event_type: String,
    attempt_count: i32,
    last_error: String,
    at: String,
}

impl From<DeadDelivery> for DeadRow {
    fn from(d: DeadDelivery) -> Self {
        Self {
            id: d.id.to_string(),
            app_id: d.app_id.to_string(),
            message_id: d.message_id.to_string(),
            endpoint_id: d.endpoint_id.to_string(),
            event_type: d.event_type,
            attempt_count: d.attempt_count,
            last_error: d.last_error.unwrap_or_default(),
            at: ago(d.updated_at),
        }
    }
}

#[derive(Template)]
#[template(path = "dead.html")]
struct DeadPage {
    layout: Layout,
    endpoints: Vec<DeadEndpointRow>,
    rows: Vec<DeadRow>,
    next_cursor: Option<String>,
    flash: Option<String>,
}

struct DeadEndpointRow {
    id: String,
    app_id: String,
    url: String,
    /// "1000+" past what is counted.
    dead: String,
}

async fn dead(
    State(state): State<ServerState>,
    session: Session,
    Query(page): Query<ListParams>,
) -> PageResult {
    let before = page
        .cursor::<DeliveryId>()
        .map_err(|e| PageError(StatusCode::BAD_REQUEST, e))?;
    dead_page(&state, &session, before, None).await
}

pub(super) async fn dead_page(
    state: &ServerState,
    session: &Session,
    before: Option<DeliveryId>,
    flash: Option<String>,
) -> PageResult {
    let limit = 100;
    let mut rows = dashboard::dead_letters(&state.pool, before, limit).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|d| d.id.to_string())
    } else {
        None
    };
    let endpoints = dashboard::dead_by_endpoint(&state.pool, 50).await?;
    render(DeadPage {
        layout: Layout::new(state, session, "Dead letters", "dead").live(""),
        endpoints: endpoints
            .into_iter()
            .map(|e| DeadEndpointRow {
                id: e.id.to_string(),
                app_id: e.app_id.to_string(),
                url: short_url(&e.url),
                dead: if e.dead >= dashboard::DEAD_COUNTED {
                    format!("{}+", e.dead)
                } else {
                    e.dead.to_string()
                },
            })
            .collect(),
        rows: rows.into_iter().map(DeadRow::from).collect(),
        next_cursor,
        flash,
    })
}
