//! Who may reach what under `/api/v1`: one table, [`ROUTES`], says what every route needs,
//! and one layer, [`authorize`], holds every request to it after `authenticate` has said
//! who is asking. The OpenAPI document states the same table (`openapi::finish`), and a
//! test checks that the router, the document and the table name the same routes, so a new
//! route cannot be served before it says what it needs.
//!
//! A credential is an [`Access`]: the admin token, the dashboard's session and a token with
//! the `admin` scope and no application are the operator; any other token has its scopes,
//! and perhaps one application. A route that names `{app}` lets an application-bound
//! credential in only for its own application (any other answers 404, as if it did not
//! exist); the few routes that do not name one (`Reach::Narrowed`) narrow what they answer
//! to the credential's application themselves.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use axum::RequestPartsExt;
use axum::extract::{MatchedPath, RawPathParams, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::dashboard::session::{self, Revoked};

use super::{AuthBy, app_key};
use crate::db;
use crate::domain::{AppId, TokenId};
use crate::error::ApiError;

/// What a token may do (`admin`: everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    MessagesSend,
    MessagesRead,
    EndpointsManage,
    Replay,
    Admin,
}

impl Scope {
    pub const ALL: &'static [Scope] = &[
        Scope::MessagesSend,
        Scope::MessagesRead,
        Scope::EndpointsManage,
        Scope::Replay,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::MessagesSend => "messages:send",
            Scope::MessagesRead => "messages:read",
            Scope::EndpointsManage => "endpoints:manage",
            Scope::Replay => "replay",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.iter().copied().find(|scope| scope.as_str() == s)
    }

    /// What a person choosing scopes is told about each.
    pub fn description(self) -> &'static str {
        match self {
            Scope::MessagesSend => "send messages",
            Scope::MessagesRead => "read messages, attempts and the live stream",
            Scope::EndpointsManage => "create, change and delete endpoints",
            Scope::Replay => "replay messages, retry deliveries, recover endpoints",
            Scope::Admin => "everything, including applications and tokens",
        }
    }
}

/// The application an application-bound credential reaches, as a path may name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundApp {
    pub id: AppId,
    pub uid: Option<String>,
}

/// Who is asking: inserted into every authenticated request's extensions.
#[derive(Debug, Clone)]
pub struct Access {
    pub by: AuthBy,
    scopes: Vec<Scope>,
    app: Option<BoundApp>,
    /// When the credential stops being valid, if it does on its own.
    expires_at: Option<DateTime<Utc>>,
    /// The API token it is, if it is one: a long-lived stream checks now and then that it
    /// has not been revoked.
    token: Option<TokenId>,
    /// For a portal link, when it was made: a long-lived stream checks now and then that
    /// the application's links were not revoked since.
    portal_issued: Option<DateTime<Utc>>,
    /// For the dashboard's session, its cookie and this process's logged-out sessions: a
    /// long-lived stream checks now and then that it was not logged out since.
    session: Option<SessionCheck>,
}

/// A dashboard session's cookie, with where its logout would be recorded. Its `Debug` names
/// neither: the cookie is a credential.
#[derive(Clone)]
struct SessionCheck {
    cookie: String,
    revoked: Arc<Revoked>,
}

impl std::fmt::Debug for SessionCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCheck")
    }
}

/// The actor of changes made in the customer portal.
pub const PORTAL_ACTOR: &str = "portal";

/// How often a stream or channel opened with an API token or a portal link checks that it
/// still stands.
const RECHECK: Duration = Duration::from_secs(30);

impl Access {
    /// The admin token, the dashboard's session, or an admin token without an application.
    pub fn operator(by: AuthBy) -> Self {
        Access {
            by,
            scopes: vec![Scope::Admin],
            app: None,
            expires_at: None,
            token: None,
            portal_issued: None,
            session: None,
        }
    }

    /// The dashboard's session of `cookie` (which [`session::session`] accepted): the
    /// operator, until the cookie expires or is logged out.
    pub fn dashboard_session(cookie: String, revoked: Arc<Revoked>) -> Self {
        let mut access = Self::operator(AuthBy::Session).until(session::expiry(&cookie));
        access.session = Some(SessionCheck { cookie, revoked });
        access
    }

    /// A credential limited to `scopes` and, with `app`, to one application.
    pub fn limited(by: AuthBy, scopes: Vec<Scope>, app: Option<BoundApp>) -> Self {
        Access {
            by,
            scopes,
            app,
            expires_at: None,
            token: None,
            portal_issued: None,
            session: None,
        }
    }

    /// The same credential, valid until `at`.
    pub fn until(mut self, at: Option<DateTime<Utc>>) -> Self {
        self.expires_at = at;
        self
    }

    /// The same credential, as a portal link made at `at`.
    pub fn portal_link(mut self, at: DateTime<Utc>) -> Self {
        self.portal_issued = Some(at);
        self
    }

    /// The same credential, as the API token `id`.
    pub fn token(mut self, id: TokenId) -> Self {
        self.token = Some(id);
        self
    }

    /// Resolves when the credential stops being valid: at its expiry, or (for an API token,
    /// a portal link or the dashboard's session) within [`RECHECK`] of its revocation or
    /// logout. Never, for the admin token. A stream or channel that outlives its request
    /// ends with it.
    pub async fn ended(&self, pool: &PgPool) {
        let revocable =
            self.token.is_some() || self.portal_issued.is_some() || self.session.is_some();
        if self.expires_at.is_none() && !revocable {
            return std::future::pending().await;
        }
        loop {
            let left = self
                .expires_at
                .map(|at| (at - Utc::now()).to_std().unwrap_or_default());
            let wait = match (left, revocable) {
                (Some(left), true) => left.min(RECHECK),
                (Some(left), false) => left,
                (None, _) => RECHECK,
            };
            tokio::time::sleep(wait).await;
            if self.expires_at.is_some_and(|at| at <= Utc::now()) {
                return;
            }
            if let Some(id) = self.token
                && matches!(db::tokens::stands(pool, id).await, Ok(false))
            {
                return;
            }
            if let (Some(issued), Some(app)) = (self.portal_issued, &self.app)
                && matches!(db::apps::portal_ended(pool, app.id, issued).await, Ok(true))
            {
                return;
            }
            if let Some(s) = &self.session
                && s.revoked.has(&s.cookie)
            {
                return;
            }
        }
    }

    /// Who the operational events of a change made with this credential name
    /// (`endpoint.created` and the like): a portal session or an API token, the operator's
    /// own changes being none of the customers' doing.
    pub fn actor(&self) -> Option<String> {
        match (self.by, self.token) {
            (AuthBy::Portal, _) => Some(PORTAL_ACTOR.to_owned()),
            // An admin token without an application is the operator's.
            (_, Some(_)) if self.is_operator() => None,
            (_, Some(token)) => Some(format!("token {token}")),
            _ => None,
        }
    }

    pub fn is_operator(&self) -> bool {
        self.app.is_none() && self.scopes.contains(&Scope::Admin)
    }

    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }

    /// The one application this credential reaches, if it is bound to one.
    pub fn app(&self) -> Option<AppId> {
        self.app.as_ref().map(|a| a.id)
    }

    /// Whether an `{app}` path segment (an id or a uid) names an application this
    /// credential reaches.
    pub fn reaches(&self, key: &str) -> bool {
        let Some(bound) = &self.app else {
            return true;
        };
        match app_key(key) {
            Ok(key) => key == bound.id.to_string() || bound.uid.as_deref() == Some(&*key),
            Err(_) => false,
        }
    }

    /// Refuses, as not found, an application other than the bound one.
    pub fn check_app(&self, app: AppId) -> Result<(), ApiError> {
        match self.app() {
            Some(bound) if bound != app => Err(ApiError::NotFound("application")),
            _ => Ok(()),
        }
    }
}

/// How a route holds an application-bound credential to its application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The path's `{app}` must be the credential's application (checked here).
    Path,
    /// The route names no application; the handler answers only with the credential's.
    Narrowed,
    /// The operator only: no application-bound credential, whatever its scopes.
    Operator,
    /// Not any application's: the same for every credential let in (the event-type
    /// catalog, the contract every application's messages follow).
    Shared,
}

/// What a route needs: a scope (`None`: any), reached as `reach` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub scope: Option<Scope>,
    pub reach: Reach,
}

const fn in_app(scope: Scope) -> Need {
    Need {
        scope: Some(scope),
        reach: Reach::Path,
    }
}

const fn narrowed(scope: Option<Scope>) -> Need {
    Need {
        scope,
        reach: Reach::Narrowed,
    }
}

/// Any credential: what every application shares.
const SHARED: Need = Need {
    scope: None,
    reach: Reach::Shared,
};

const OPERATOR: Need = Need {
    scope: Some(Scope::Admin),
    reach: Reach::Operator,
};

/// Every route under `/api/v1` that needs a credential, with what it needs. A route
/// missing here lets in only the operator.
pub const ROUTES: &[(Method, &str, Need)] = &[
    (Method::POST, "/apps", OPERATOR),
    (Method::GET, "/apps", narrowed(None)),
    (
        Method::GET,
        "/apps/{app}",
        Need {
            scope: None,
            reach: Reach::Path,
        },
    ),
    (Method::PATCH, "/apps/{app}", in_app(Scope::Admin)),
    (Method::DELETE, "/apps/{app}", in_app(Scope::Admin)),
    (
        Method::POST,
        "/apps/{app}/portal",
        in_app(Scope::EndpointsManage),
    ),
    (
        Method::DELETE,
        "/apps/{app}/portal",
        in_app(Scope::EndpointsManage),
    ),
    (
        Method::POST,
        "/apps/{app}/messages",
        in_app(Scope::MessagesSend),
    ),
    (
        Method::POST,
        "/apps/{app}/messages/dry-run",
        in_app(Scope::EndpointsManage),
    ),
    (
        Method::GET,
        "/apps/{app}/messages",
        in_app(Scope::MessagesRead),
    ),
    (
        Method::GET,
        "/apps/{app}/messages/{msg}",
        in_app(Scope::MessagesRead),
    ),
    (
        Method::GET,
        "/apps/{app}/messages/{msg}/attempts",
        in_app(Scope::MessagesRead),
    ),
    (
        Method::POST,
        "/apps/{app}/messages/{msg}/replay",
        in_app(Scope::Replay),
    ),
    (
        Method::DELETE,
        "/apps/{app}/messages/{msg}/payload",
        in_app(Scope::Admin),
    ),
    (
        Method::POST,
        "/apps/{app}/endpoints",
        in_app(Scope::EndpointsManage),
    ),
    (
        Method::GET,
        "/apps/{app}/endpoints",
        in_app(Scope::EndpointsManage),
    ),
    (
        Method::GET,
        "/apps/{app}/endpoints/{ep}",
        in_app(Scope::EndpointsManage),
    ),
    (
        Method::PATCH,
        "/apps/{app}/endpoints/{ep}",
        in_app(Scope::EndpointsManage),
    ),
    (
        Method::DELETE,
        "/apps/{app}/endpoints/{ep}",
        in_app(Scope::EndpointsManage),
    ),
    (
        Method::GET,
        "/apps/{app}/endpoints/{ep}/secret",
        in_app(Scope::EndpointsManage),
    ),
    (
        Method::GET,
        "/apps/{app}/endpoints/{ep}/headers",
        in_app(Scope::EndpointsManage),
    ),
    (
        Method::POST,
        "/apps/{app}/endpoints/{ep}/secret/rotate",
        in_app(Scope::EndpointsManage),
    ),
    (
        Method::GET,
        "/apps/{app}/endpoints/{ep}/attempts",
        in_app(Scope::MessagesRead),
    ),
    (
        Method::POST,
        "/apps/{app}/endpoints/{ep}/recover",
        in_app(Scope::Replay),
    ),
    (
        Method::GET,
        "/removals/{id}",
        narrowed(Some(Scope::EndpointsManage)),
    ),
    (Method::POST, "/tokens", OPERATOR),
    (Method::GET, "/tokens", OPERATOR),
    (Method::DELETE, "/tokens/{id}", OPERATOR),
    (Method::GET, "/stream", narrowed(Some(Scope::MessagesRead))),
    (Method::GET, "/stats", OPERATOR),
    (Method::GET, "/admin/ws", narrowed(Some(Scope::Replay))),
    (Method::POST, "/event-types", OPERATOR),
    (Method::GET, "/event-types", SHARED),
    (Method::GET, "/event-types/{name}", SHARED),
    (Method::PATCH, "/event-types/{name}", OPERATOR),
    (Method::DELETE, "/event-types/{name}", OPERATOR),
];

/// What the route at `path` (as routed, below `/api/v1`) needs for `method`; the operator
/// alone for a route the table does not list.
pub fn need(method: &Method, path: &str) -> Need {
    static BY_ROUTE: LazyLock<HashMap<(Method, &'static str), Need>> = LazyLock::new(|| {
        ROUTES
            .iter()
            .map(|(method, path, need)| ((method.clone(), *path), *need))
            .collect()
    });
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    BY_ROUTE
        .get(&(method.clone(), path))
        .copied()
        .unwrap_or(OPERATOR)
}

/// The route layer: holds an authenticated request to what its route needs.
pub async fn authorize(mut request: Request, next: Next) -> Response {
    let Some(access) = request.extensions().get::<Access>().cloned() else {
        return ApiError::Unauthorized.into_response();
    };
    if access.is_operator() {
        return next.run(request).await;
    }
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().strip_prefix("/api/v1").unwrap_or(p.as_str()))
        .unwrap_or("");
    let need = need(request.method(), path);
    match need.reach {
        Reach::Operator => {
            return ApiError::Forbidden(
                "only the admin token, or a token with the admin scope and no application, \
                 may use this route"
                    .into(),
            )
            .into_response();
        }
        Reach::Path => {
            let (mut parts, body) = request.into_parts();
            let foreign = match parts.extract::<RawPathParams>().await {
                Ok(params) => params
                    .iter()
                    .any(|(name, value)| name == "app" && !access.reaches(value)),
                Err(_) => true,
            };
            if foreign {
                return ApiError::NotFound("application").into_response();
            }
            request = Request::from_parts(parts, body);
        }
        Reach::Narrowed | Reach::Shared => {}
    }
    match need.scope {
        Some(scope) if !access.allows(scope) => ApiError::Forbidden(format!(
            "this token lacks the {} scope this route needs",
            scope.as_str()
        ))
        .into_response(),
        _ => next.run(request).await,
    }
}
