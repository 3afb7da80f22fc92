//! The HTTP surface: REST under `/api/v1` (bearer auth), health probes, and the pages.

mod admin_ws;
mod apps;
mod endpoints;
mod health;
mod messages;
mod pages;
mod session;
mod stats;
mod stream;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use sqlx::PgPool;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::db;
use crate::delivery::{Direct, Recoveries};
use crate::domain::AppId;
use crate::error::{AppError, AppResult};
use crate::feed::Feed;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub pool: PgPool,
    pub config: Config,
    /// Hands freshly accepted deliveries to this process's workers.
    pub direct: Direct,
    pub feed: Feed,
    /// Runs recovers (bulk replays) in the background.
    pub recoveries: Recoveries,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        pool: PgPool,
        config: Config,
        direct: Direct,
        feed: Feed,
        recoveries: Recoveries,
    ) -> Self {
        Self(Arc::new(Inner {
            pool,
            config,
            direct,
            feed,
            recoveries,
        }))
    }

    /// The application named by a `{app}` path segment: its id or its uid.
    async fn app(&self, key: &str) -> AppResult<db::apps::App> {
        db::apps::find(&self.pool, key)
            .await?
            .ok_or(AppError::NotFound("application"))
    }

    async fn app_id(&self, key: &str) -> AppResult<AppId> {
        Ok(self.app(key).await?.id)
    }
}

pub fn router(state: AppState) -> Router {
    // Room for the envelope around a payload of the largest allowed size; the payload
    // itself is measured separately so its limit is exact.
    let body_limit = state.config.max_payload_bytes + 64 * 1024;
    let api = Router::new()
        .merge(apps::routes())
        .merge(endpoints::routes())
        .merge(messages::routes())
        .merge(stream::routes())
        .merge(stats::routes())
        .merge(admin_ws::routes())
        .fallback(|| async { AppError::NotFound("route") })
        .layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .layer(DefaultBodyLimit::max(body_limit));
    Router::new()
        .nest("/api/v1", api)
        .merge(health::routes())
        .merge(pages::routes())
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The admin token as a bearer token, or, for reads only, the dashboard's session cookie
/// (its pages follow the feed with `EventSource`, which cannot set headers). Writes through
/// the dashboard go through its own CSRF-checked forms instead.
async fn require_admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let bearer = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let allowed = match bearer {
        Some(token) => session::is_admin_token(&state.config, token),
        None => {
            (request.method() == Method::GET || request.method() == Method::HEAD)
                && session::session(&state.config, request.headers()).is_some()
        }
    };
    if allowed {
        next.run(request).await
    } else {
        axum::response::IntoResponse::into_response(AppError::Unauthorized)
    }
}

/// Parses an id from a path segment; one that cannot be an id names nothing that exists.
fn path_id<T: std::str::FromStr>(raw: &str, what: &'static str) -> AppResult<T> {
    raw.parse().map_err(|_| AppError::NotFound(what))
}
