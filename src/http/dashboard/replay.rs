//! The replay and recover forms: the plain-form twins of the REST API's and the admin
//! channel's commands, answered with the page they were sent from, showing what started.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::session::{Checked, CsrfForm};
use super::view::form_time_value;
use super::{PageError, PageResult, dead, endpoint, message};
use crate::domain::{EndpointId, MessageId, Window};
use crate::http::{ServerState, actions, path_id};

pub(super) fn routes() -> Router<ServerState> {
    Router::new()
        .route("/apps/{app}/messages/{msg}/replay", post(replay))
        .route("/apps/{app}/endpoints/{ep}/recover", post(recover))
}

#[derive(Deserialize)]
struct ReplayForm {
    #[serde(default)]
    csrf: String,
    /// Empty: every subscribed endpoint.
    #[serde(default)]
    endpoint_id: String,
}

impl CsrfForm for ReplayForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

async fn replay(
    State(state): State<ServerState>,
    Path((app, msg)): Path<(String, String)>,
    Checked { session, form }: Checked<ReplayForm>,
) -> PageResult {
    let app_id = state.app_id(&app).await?;
    let message: MessageId = path_id(&msg, "message")?;
    let endpoint: Option<EndpointId> = match form.endpoint_id.trim() {
        "" => None,
        e => Some(path_id(e, "endpoint")?),
    };
    let queued = actions::replay_message(&state, message, Some(app_id), endpoint).await??;
    let flash = format!(
        "Replay queued to {} endpoint(s); its attempts appear below.",
        queued.len()
    );
    message::message_page(&state, &session, &app, &msg, Some(flash)).await
}

#[derive(Deserialize)]
struct RecoverForm {
    #[serde(default)]
    csrf: String,
    since: String,
    /// `dead` when sent from the dead-letter page, which is then shown again.
    #[serde(default)]
    back: String,
}

impl CsrfForm for RecoverForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `since` from a form: RFC 3339, or a `datetime-local` value read as UTC.
fn form_time(value: &str) -> Result<DateTime<Utc>, PageError> {
    let value = value.trim();
    form_time_value(value).ok_or_else(|| {
        PageError(
            StatusCode::BAD_REQUEST,
            format!("{value:?} is not a time like 2026-11-24T08:00 (UTC)"),
        )
    })
}

async fn recover(
    State(state): State<ServerState>,
    Path((app, ep)): Path<(String, String)>,
    Checked { session, form }: Checked<RecoverForm>,
) -> PageResult {
    let app_id = state.app_id(&app).await?;
    let endpoint: EndpointId = path_id(&ep, "endpoint")?;
    let window = Window::new(form_time(&form.since)?, Utc::now()).ok_or_else(|| {
        PageError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the time to recover from must be in the past".to_owned(),
        )
    })?;
    let started = state
        .bulk_replays
        .start(app_id, endpoint, window.since, window.until)
        .await??;
    let flash = format!(
        "Recover started: {} to send (dead, or never queued), in the background.",
        started.recovery.total
    );
    if form.back == "dead" {
        dead::dead_page(&state, &session, None, Some(flash)).await
    } else {
        endpoint::form_answer(&state, &session, &app, &ep, None, flash).await
    }
}
