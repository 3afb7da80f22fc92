//! The HTTP surface: REST under `/api/v1` (bearer auth), health probes, and the pages.

pub mod access;
mod actions;
mod admin_ws;
mod apps;
mod dashboard;
pub(crate) mod endpoints;
pub mod event_types;
mod health;
mod messages;
mod openapi;
mod paging;
pub mod portal;
mod removals;
mod search;
mod sends;
mod stats;
mod stream;
mod throttle;
mod timeouts;
mod tokens;

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use sqlx::PgPool;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::db;
use crate::delivery::{BulkReplays, Direct};
use crate::domain::AppId;
use crate::error::{ApiError, ApiResult};
use crate::feed::Feed;
use crate::probe::Probe;
use crate::removal::Removals;
use access::Access;
use dashboard::session;

#[derive(Clone)]
pub struct ServerState(Arc<Inner>);

pub struct Inner {
    pub pool: PgPool,
    pub config: Config,
    /// Hands freshly accepted deliveries to this process's workers.
    pub direct: Direct,
    pub feed: Feed,
    /// Runs recovers (bulk replays) in the background.
    pub bulk_replays: BulkReplays,
    /// Deletes removed applications' and endpoints' history in the background.
    pub removals: Removals,
    /// Failed tokens per client address.
    pub auth_throttle: throttle::AuthThrottle,
    /// Changes made through each application's portal, per minute.
    pub portal_writes: throttle::PortalWrites,
    /// Dashboard sessions logged out here or in another process.
    pub revoked_sessions: Arc<session::Revoked>,
    /// What `/readyz` and `/metrics` report, read in the background.
    pub probe: Probe,
    /// The event-type catalog, to check sends against.
    pub catalog: Arc<crate::catalog::Catalog>,
    /// Stores sends in batches (group commit).
    pub sends: sends::Sends,
}

impl std::ops::Deref for ServerState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// What the server's handlers share with the process's background work.
pub struct Services {
    pub direct: Direct,
    pub feed: Feed,
    pub bulk_replays: BulkReplays,
    pub removals: Removals,
    pub probe: Probe,
    pub catalog: Arc<crate::catalog::Catalog>,
}

impl ServerState {
    pub fn new(pool: PgPool, config: Config, services: Services) -> Self {
        let Services {
            direct,
            feed,
            bulk_replays,
            removals,
            probe,
            catalog,
        } = services;
        let auth_throttle =
            throttle::AuthThrottle::new(config.auth_failure_limit, config.auth_failure_window);
        let portal_writes = throttle::PortalWrites::new(
            config.portal_write_limit,
            std::time::Duration::from_secs(60),
        );
        let revoked_sessions = Arc::new(session::Revoked::default());
        let sends = sends::Sends::start(pool.clone(), direct.clone());
        tokio::spawn(session::follow_revocations(
            config.database_url.expose().to_owned(),
            pool.clone(),
            revoked_sessions.clone(),
        ));
        Self(Arc::new(Inner {
            pool,
            config,
            auth_throttle,
            portal_writes,
            revoked_sessions,
            direct,
            feed,
            bulk_replays,
            removals,
            probe,
            catalog,
            sends,
        }))
    }

    /// The catalog event types must be in (`HERALD_REQUIRE_EVENT_TYPES`), if they must.
    pub(crate) fn required_catalog(&self) -> Option<&crate::catalog::Catalog> {
        self.config.require_event_types.then_some(&*self.catalog)
    }

    /// The application named by a `{app}` path segment: its id or its uid.
    async fn app(&self, key: &str) -> ApiResult<db::apps::Application> {
        db::apps::find(&self.pool, &app_key(key)?)
            .await?
            .ok_or(ApiError::NotFound("application"))
    }

    async fn app_id(&self, key: &str) -> ApiResult<AppId> {
        Ok(self.app(key).await?.id)
    }
}

/// Everything under `/api/v1` that needs a credential (`access::ROUTES` says which).
fn api_routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new()
        .merge(apps::routes())
        .merge(endpoints::routes())
        .merge(messages::routes())
        .merge(removals::routes())
        .merge(tokens::routes())
        .merge(event_types::routes())
        .merge(portal::link::routes())
        .merge(stream::routes())
        .merge(stats::routes())
        .merge(admin_ws::routes())
}

/// What under `/api/v1` needs no token: the document itself.
fn public_api_routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new().routes(routes!(openapi::document))
}

/// The API document, as `GET /api/v1/openapi.json` serves it: every route the router
/// below serves except the dashboard's pages.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, api) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api/v1", api_routes().merge(public_api_routes()))
        .merge(health::routes())
        .split_for_parts();
    openapi::finish(api)
}

pub fn router(state: ServerState) -> Router {
    // Room for the envelope around a payload of the largest allowed size; the payload
    // itself is measured separately so its limit is exact.
    let body_limit = state.config.max_payload_bytes + 64 * 1024;
    let api = Router::from(api_routes())
        .route_layer(middleware::from_fn(access::authorize))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(body_limit))
        .merge(public_api_routes());
    Router::new()
        .nest("/api/v1", api)
        .merge(health::routes())
        .merge(dashboard::routes())
        .merge(portal::routes(&state))
        .layer(Extension(Arc::new(openapi())))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            timeouts::limit,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// The span of one request: its method and path, with a portal session (a credential in
/// the URL) left out, and no query.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %loggable_path(request.uri().path()),
    )
}

/// `path` as logs may show it: `/portal/<session>/…` becomes `/portal/…/…`.
pub fn loggable_path(path: &str) -> Cow<'_, str> {
    match path.strip_prefix("/portal/") {
        Some(rest) => {
            let tail = rest.split_once('/').map_or("", |(_, tail)| tail);
            Cow::Owned(format!("/portal/…/{tail}"))
        }
        None => Cow::Borrowed(path),
    }
}

/// How `authenticate` let a request in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthBy {
    /// A bearer token that authenticated: the admin token or an API token.
    Bearer,
    /// The dashboard's session cookie.
    Session,
    /// A customer portal session (in the URL of the portal's own pages).
    Portal,
}

/// Says who is asking, as an [`access::Access`] in the request's extensions, for
/// `access::authorize` to hold to what the route needs: the admin token or an API token as
/// a bearer token, or, for reads only, the dashboard's session cookie (its pages follow the
/// feed with `EventSource`, which cannot set headers). Writes through the dashboard go
/// through its own CSRF-checked forms instead. A bearer token is checked only while its
/// address has failed fewer than `HERALD_AUTH_FAILURE_LIMIT` times.
async fn authenticate(
    State(state): State<ServerState>,
    mut request: Request,
    next: Next,
) -> Response {
    let bearer = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let access = match bearer {
        Some(token) => {
            let client = throttle::ClientAddr::of(request.extensions());
            if let Err(blocked) = state.auth_throttle.check(client) {
                tracing::debug!(%client, "bearer token refused unchecked: too many failures");
                return ApiError::TooManyRequests(blocked.retry_after_secs()).into_response();
            }
            if session::is_admin_token(&state.config, token) {
                Some(Access::operator(AuthBy::Bearer))
            } else if token.starts_with(db::tokens::PREFIX) {
                match db::tokens::authenticate(&state.pool, token).await {
                    Ok(Some(t)) => Some(token_access(t)),
                    Ok(None) => {
                        auth_failed(&state, client, "API token (unknown, revoked or expired)");
                        None
                    }
                    Err(e) => return ApiError::from(e).into_response(),
                }
            } else {
                auth_failed(&state, client, "bearer token");
                None
            }
        }
        None => (request.method() == Method::GET || request.method() == Method::HEAD)
            .then(|| session::session(&state.config, &state.revoked_sessions, request.headers()))
            .flatten()
            .map(|cookie| Access::dashboard_session(cookie, state.revoked_sessions.clone())),
    };
    if let Some(access) = access {
        request.extensions_mut().insert(access);
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// What an API token reaches. A scope this build does not know (stored by a newer one)
/// grants nothing.
fn token_access(token: db::tokens::Credential) -> Access {
    let scopes = token
        .scopes
        .iter()
        .filter_map(|s| access::Scope::parse(s))
        .collect();
    let app = token.app_id.map(|id| access::BoundApp {
        id,
        uid: token.app_uid.clone(),
    });
    Access::limited(AuthBy::Bearer, scopes, app)
        .until(token.expires_at)
        .token(token.id)
}

/// Counts and logs a token that did not match; never logs the token itself.
fn auth_failed(state: &ServerState, client: throttle::ClientAddr, what: &'static str) {
    match state.auth_throttle.failed(client) {
        Ok(()) => tracing::warn!(%client, "authentication failed: wrong {what}"),
        Err(blocked) => tracing::warn!(
            %client,
            retry_after_secs = blocked.retry_after_secs(),
            "authentication failed: wrong {what}; this address is refused until the window ends"
        ),
    }
}

/// A JSON body the caller may leave out: empty, or `null`, means the defaults.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Null) => return Ok(T::default()),
        Ok(serde_json::Value::Object(_)) => {}
        Ok(_) => return Err(ApiError::Invalid("the body must be a JSON object".into())),
        Err(_) => {}
    }
    match serde_json::from_slice::<Option<T>>(body) {
        Ok(value) => Ok(value.unwrap_or_default()),
        Err(e) if e.is_data() => Err(ApiError::Invalid(e.to_string())),
        Err(e) => Err(ApiError::BadRequest(e.to_string())),
    }
}

/// An `{app}` path segment as the database may be asked about it: text there cannot hold
/// NUL, and a key with one names nothing. An id is spelt the one way `herald.enqueue`
/// matches it (lower-case hex), so every call finds the application a `GET` finds; uids
/// cannot start with `app_`, so nothing else is rewritten.
fn app_key(key: &str) -> ApiResult<Cow<'_, str>> {
    if key.contains('\0') {
        return Err(ApiError::NotFound("application"));
    }
    Ok(match key.parse::<AppId>() {
        Ok(id) => Cow::Owned(id.to_string()),
        Err(_) => Cow::Borrowed(key),
    })
}

/// Parses an id from a path segment; one that cannot be an id names nothing that exists.
fn path_id<T: std::str::FromStr>(raw: &str, what: &'static str) -> ApiResult<T> {
    raw.parse().map_err(|_| ApiError::NotFound(what))
}

/// For `#[serde(default, deserialize_with = "crate::http::present")]` on an
/// `Option<Option<T>>` field: tells a field left out (`None`) from one sent as `null`
/// (`Some(None)`), so that an update can clear what it names and keep what it does not.
pub(crate) fn present<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}
