//! A message's page: its payload, its deliveries and every attempt, with the replay form
//! (in `replay.rs`) showing this page again.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;

use super::session::Session;
use super::view::{AttemptRow, DeliveryRow, rows, stamp};
use super::{Layout, PageResult, render};
use crate::db::attempts::Of;
use crate::db::messages::Message;
use crate::db::{self, ListParams};
use crate::error::ApiError;
use crate::http::{ServerState, path_id};

pub(super) fn routes() -> Router<ServerState> {
    Router::new().route("/apps/{app}/messages/{msg}", get(message))
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    layout: Layout,
    app_id: String,
    app_name: String,
    id: String,
    event_type: String,
    created: String,
    idempotency_key: String,
    payload: String,
    /// Its channels, comma-separated; empty when it has none.
    channels: String,
    /// When the payload was erased; empty if it was not.
    payload_erased: String,
    deliveries: Vec<DeliveryRow>,
    attempts: Vec<AttemptRow>,
    flash: Option<String>,
}

async fn message(
    State(state): State<ServerState>,
    session: Session,
    Path((app_key, msg)): Path<(String, String)>,
) -> PageResult {
    message_page(&state, &session, &app_key, &msg, None).await
}

pub(super) async fn message_page(
    state: &ServerState,
    session: &Session,
    app_key: &str,
    msg: &str,
    flash: Option<String>,
) -> PageResult {
    let app = state.app(app_key).await?;
    let id = path_id(msg, "message")?;
    let message: Message = db::messages::find(&state.pool, app.id, id)
        .await?
        .ok_or(ApiError::NotFound("message"))?;
    let deliveries = db::messages::deliveries(&state.pool, message.id).await?;
    let attempts = db::attempts::list(
        &state.pool,
        app.id,
        Of::Message(message.id),
        &Default::default(),
        ListParams::MAX_LIMIT,
    )
    .await?;
    render(MessagePage {
        layout: Layout::new(state, session, format!("Message {}", message.id), "apps")
            .live(format!("app={}", app.id)),
        flash,
        app_id: app.id.to_string(),
        app_name: app.name,
        id: message.id.to_string(),
        event_type: message.event_type,
        created: stamp(message.created_at),
        idempotency_key: message.idempotency_key.unwrap_or_default(),
        payload: super::view::pretty(&message.payload),
        channels: message.channels.join(", "),
        payload_erased: message.payload_erased_at.map(stamp).unwrap_or_default(),
        deliveries: deliveries.into_iter().map(DeliveryRow::from).collect(),
        attempts: rows(attempts),
    })
}
