//! An endpoint's page: its settings, success rate and attempts (filterable), with the
//! forms that rotate its secret and disable or enable it.

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use serde::Deserialize;

use super::session::{Checked, CsrfForm, Session, TokenOnly};
use super::view::{AttemptRow, EndpointRow, PAGE_ROWS, bad_filter, percent, query_of, rows};
use super::{Layout, PageResult, render};
use crate::db::attempts::Of;
use crate::db::dashboard::{self, Rate};
use crate::db::endpoints::EndpointFields;
use crate::db::{self, ListParams};
use crate::domain::{AttemptId, SigningSecret, short_url};
use crate::error::ApiError;
use crate::http::search::AttemptFilters;
use crate::http::{ServerState, actions, path_id};

pub(super) fn routes() -> Router<ServerState> {
    Router::new()
        .route("/apps/{app}/endpoints/{ep}", get(endpoint))
        .route("/apps/{app}/endpoints/{ep}/rotate", post(rotate))
        .route("/apps/{app}/endpoints/{ep}/state", post(set_state))
}

#[derive(Template)]
#[template(path = "endpoint.html")]
struct EndpointPage {
    layout: Layout,
    app_id: String,
    app_name: String,
    endpoint: EndpointRow,
    rate: String,
    rate_counts: Rate,
    attempts: Vec<AttemptRow>,
    /// The filter form's values.
    outcome: String,
    status: String,
    filtered: bool,
    /// The query of the next page's link: the same filters and the cursor.
    older: Option<String>,
    /// Shown once, right after a rotation from this page.
    new_secret: Option<String>,
    flash: Option<String>,
}

/// Which of an endpoint's attempts its page shows.
#[derive(Default)]
struct AttemptView {
    filter: AttemptFilters,
    cursor: Option<AttemptId>,
}

async fn endpoint_page(
    state: &ServerState,
    session: &Session,
    app_key: &str,
    ep: &str,
    view: AttemptView,
    new_secret: Option<String>,
    flash: Option<String>,
) -> PageResult {
    let app = state.app(app_key).await?;
    let id = path_id(ep, "endpoint")?;
    let search = view.filter.search(view.cursor)?;
    let endpoint = db::endpoints::find(&state.pool, app.id, id)
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
    let rate = dashboard::endpoint_rate(&state.pool, endpoint.id).await?;
    let mut attempts = db::attempts::list(
        &state.pool,
        app.id,
        Of::Endpoint(endpoint.id),
        &search,
        PAGE_ROWS,
    )
    .await?;
    let AttemptFilters { outcome, status } = view.filter;
    let older = if attempts.len() as i64 > PAGE_ROWS {
        attempts.truncate(PAGE_ROWS as usize);
        attempts.last().map(|a| {
            let cursor = a.id.to_string();
            query_of([
                ("outcome", outcome.as_deref()),
                ("status", status.as_deref()),
                ("cursor", Some(cursor.as_str())),
            ])
        })
    } else {
        None
    };
    let filtered = outcome.is_some() || status.is_some();
    let mut layout = Layout::new(state, session, short_url(&endpoint.url), "apps");
    // New attempts are added live only to the unfiltered newest page: the feed cannot say
    // which of them a filter would show.
    if !filtered && view.cursor.is_none() {
        layout = layout.live(format!("endpoint={}", endpoint.id));
    }
    render(EndpointPage {
        layout,
        app_id: app.id.to_string(),
        app_name: app.name,
        endpoint: endpoint.into(),
        rate: percent(rate.percent()),
        rate_counts: rate,
        attempts: rows(attempts),
        outcome: outcome.unwrap_or_default(),
        status: status.unwrap_or_default(),
        filtered,
        older,
        new_secret,
        flash,
    })
}

/// The page as a form posted on it answers: the newest attempts, unfiltered, and what the
/// form did.
pub(super) async fn form_answer(
    state: &ServerState,
    session: &Session,
    app: &str,
    ep: &str,
    new_secret: Option<String>,
    flash: String,
) -> PageResult {
    let view = AttemptView::default();
    endpoint_page(state, session, app, ep, view, new_secret, Some(flash)).await
}

async fn endpoint(
    State(state): State<ServerState>,
    session: Session,
    Path((app, ep)): Path<(String, String)>,
    Query(page): Query<ListParams>,
    Query(filter): Query<AttemptFilters>,
) -> PageResult {
    let view = AttemptView {
        filter: filter.without_empty(),
        cursor: page.cursor::<AttemptId>().map_err(bad_filter)?,
    };
    endpoint_page(&state, &session, &app, &ep, view, None, None).await
}

async fn rotate(
    State(state): State<ServerState>,
    Path((app, ep)): Path<(String, String)>,
    Checked { session, .. }: Checked<TokenOnly>,
) -> PageResult {
    let app_id = state.app_id(&app).await?;
    let id = path_id(&ep, "endpoint")?;
    db::endpoints::find(&state.pool, app_id, id)
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
    let secret = SigningSecret::generate();
    db::endpoints::rotate_to(&state.pool, id, &secret, state.config.secret_grace_period).await?;
    let shown = secret.expose().to_owned();
    form_answer(
        &state,
        &session,
        &app,
        &ep,
        Some(shown),
        "Secret rotated.".into(),
    )
    .await
}

#[derive(Deserialize)]
struct StateForm {
    #[serde(default)]
    csrf: String,
    disabled: bool,
}

impl CsrfForm for StateForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

async fn set_state(
    State(state): State<ServerState>,
    Path((app, ep)): Path<(String, String)>,
    Checked { session, form }: Checked<StateForm>,
) -> PageResult {
    let app_id = state.app_id(&app).await?;
    let id = path_id(&ep, "endpoint")?;
    let fields = EndpointFields {
        disabled: Some(form.disabled),
        ..EndpointFields::default()
    };
    actions::update_endpoint(&state, app_id, id, fields, None).await?;
    let flash = if form.disabled {
        "Endpoint disabled."
    } else {
        "Endpoint enabled: new messages are sent to it again. Messages sent while it was disabled were not queued for it; recover a time window to send them."
    };
    form_answer(&state, &session, &app, &ep, None, flash.into()).await
}
