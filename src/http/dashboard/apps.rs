//! `/apps` and an application's page: its endpoints and its messages, searchable.

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use chrono::Utc;

use super::session::{Checked, Session, TokenOnly};
use super::view::{
    EndpointRow, PAGE_ROWS, bad_filter, form_time_text, form_time_value, query_of, stamp,
};
use super::{Layout, PageResult, render};
use crate::db::dashboard;
use crate::db::{self, ListParams};
use crate::domain::MessageId;
use crate::http::ServerState;
use crate::http::search::MessageFilters;

pub(super) fn routes() -> Router<ServerState> {
    Router::new()
        .route("/apps", get(apps))
        .route("/apps/{app}", get(app))
        .route("/apps/{app}/portal", post(open_portal))
}

/// "Open portal": a fresh link to the application's customer portal, as
/// `POST /api/v1/apps/{app}/portal` makes them, followed at once.
async fn open_portal(
    State(state): State<ServerState>,
    Path(app): Path<String>,
    Checked { .. }: Checked<TokenOnly>,
) -> PageResult {
    let app = state.app_id(&app).await?;
    let expires_at = Utc::now() + crate::http::portal::link::DEFAULT_LIFETIME;
    let scopes = crate::http::portal::link::GRANTABLE;
    let session = crate::http::portal::link::sign(&state.config, app, scopes, expires_at, None);
    tracing::info!(%app, "portal opened from the dashboard");
    Ok(Redirect::to(&format!("/portal/{session}/")).into_response())
}

struct AppRow {
    id: String,
    name: String,
    uid: String,
    endpoints: i64,
    disabled_endpoints: i64,
    created: String,
}

#[derive(Template)]
#[template(path = "apps.html")]
struct AppsPage {
    layout: Layout,
    apps: Vec<AppRow>,
}

async fn apps(State(state): State<ServerState>, session: Session) -> PageResult {
    let apps = dashboard::apps(&state.pool, 500).await?;
    render(AppsPage {
        layout: Layout::new(&state, &session, "Applications", "apps"),
        apps: apps
            .into_iter()
            .map(|a| AppRow {
                id: a.id.to_string(),
                name: a.name,
                uid: a.uid.unwrap_or_default(),
                endpoints: a.endpoints,
                disabled_endpoints: a.disabled_endpoints,
                created: stamp(a.created_at),
            })
            .collect(),
    })
}

struct MessageRow {
    id: String,
    event_type: String,
    at: String,
}

#[derive(Template)]
#[template(path = "app.html")]
struct AppPage {
    layout: Layout,
    id: String,
    name: String,
    uid: String,
    endpoints: Vec<EndpointRow>,
    messages: Vec<MessageRow>,
    /// The filter form's values, as it shows them.
    filter: MessageFilters,
    filtered: bool,
    /// The query of the next page's link: the same filters and the cursor.
    older: Option<String>,
}

async fn app(
    State(state): State<ServerState>,
    session: Session,
    Path(key): Path<String>,
    Query(page): Query<ListParams>,
    Query(filter): Query<MessageFilters>,
) -> PageResult {
    let app = state.app(&key).await?;
    let cursor = page.cursor::<MessageId>().map_err(bad_filter)?;
    let mut filter = filter.without_empty();
    let search = filter.search(cursor, form_time_value)?;
    // The form shows the times it was given in the form it takes them.
    for value in [&mut filter.since, &mut filter.until] {
        if let Some(at) = value.as_deref().and_then(form_time_value) {
            *value = Some(form_time_text(at));
        }
    }
    let endpoints = db::endpoints::list(&state.pool, app.id, None, ListParams::MAX_LIMIT).await?;
    let mut messages = match &search {
        Some(search) => db::messages::list(&state.pool, app.id, search, PAGE_ROWS).await?,
        None => vec![],
    };
    let older = if messages.len() as i64 > PAGE_ROWS {
        messages.truncate(PAGE_ROWS as usize);
        messages.last().map(|m| {
            let cursor = m.id.to_string();
            query_of([
                ("event_type", filter.event_type.as_deref()),
                ("since", filter.since.as_deref()),
                ("until", filter.until.as_deref()),
                ("idempotency_key", filter.idempotency_key.as_deref()),
                ("cursor", Some(cursor.as_str())),
            ])
        })
    } else {
        None
    };
    let filtered = filter.event_type.is_some()
        || filter.since.is_some()
        || filter.until.is_some()
        || filter.idempotency_key.is_some();
    render(AppPage {
        layout: Layout::new(&state, &session, app.name.clone(), "apps"),
        id: app.id.to_string(),
        name: app.name,
        uid: app.uid.unwrap_or_default(),
        endpoints: endpoints.into_iter().map(EndpointRow::from).collect(),
        messages: messages
            .into_iter()
            .map(|m| MessageRow {
                id: m.id.to_string(),
                event_type: m.event_type,
                at: stamp(m.created_at),
            })
            .collect(),
        filter,
        filtered,
        older,
    })
}
