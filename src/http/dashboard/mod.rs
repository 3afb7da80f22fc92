//! The dashboard: server-rendered pages (askama) that work without JavaScript. A little
//! plain JS (`assets/live.js`) subscribes to the feed and updates them live. Everything is
//! embedded in the binary: no CDN, since Herald often runs where there is no internet.
//!
//! This module holds the routes, the headers every page gets, the assets, the layout and
//! how a page (or its error) is rendered; each page lives in a module of its own with the
//! forms it posts, `view` holds what they share, and `session`/`login` who may see them.

mod apps;
mod dead;
mod endpoint;
mod login;
mod message;
mod overview;
mod replay;
pub(super) mod session;
mod tokens;
pub(super) mod view;

use askama::Template;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY as CONTENT_SECURITY_POLICY_HEADER, CONTENT_TYPE,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Router, middleware};

use super::ServerState;
use crate::db::replays::Refused;
use crate::error::ApiError;
use session::Session;

pub fn routes() -> Router<ServerState> {
    Router::new()
        .merge(overview::routes())
        .merge(login::routes())
        .merge(apps::routes())
        .merge(endpoint::routes())
        .merge(message::routes())
        .merge(replay::routes())
        .merge(dead::routes())
        .merge(tokens::routes())
        .route("/assets/herald.css", get(css))
        .route("/assets/live.js", get(js))
        .layer(middleware::map_response(page_headers))
}

/// Scripts, styles and everything else from this origin only (the pages have no inline
/// script or style, and `live.js` talks to this origin's feed and WebSocket); no framing;
/// no URL (with ids in it) sent to other sites. Pages show secrets, payloads and response
/// bodies: none is kept in a cache (assets say their own `Cache-Control`).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    base-uri 'none'; frame-ancestors 'none'";

async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_SECURITY_POLICY_HEADER,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    // `same-origin`: ids stay out of other sites' logs, and forms still carry a real
    // `Origin` (with `no-referrer` a browser sends `Origin: null`, which the CSRF check
    // refuses).
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

const CSS: &str = include_str!("../../../assets/herald.css");
const JS: &str = include_str!("../../../assets/live.js");

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// What every page's layout needs.
struct Layout {
    title: String,
    nav: &'static str,
    csrf: String,
    /// The feed query this page follows live (`app=…&endpoint=…`), if any.
    stream: Option<String>,
    /// The feed position when the page was rendered: the live script resumes from here,
    /// so nothing that happens between render and subscription is missed.
    from: String,
}

impl Layout {
    fn new(
        state: &ServerState,
        session: &Session,
        title: impl Into<String>,
        nav: &'static str,
    ) -> Self {
        Self {
            title: title.into(),
            nav,
            csrf: session.csrf.clone(),
            stream: None,
            from: state.feed.head().to_string(),
        }
    }

    fn live(mut self, query: impl Into<String>) -> Self {
        self.stream = Some(query.into());
        self
    }
}

/// An error shown as a page rather than JSON.
pub struct PageError(pub(in crate::http) StatusCode, pub(in crate::http) String);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        let status = e.status();
        let message = match &e {
            ApiError::Database(_) | ApiError::Internal(_) => {
                tracing::error!(error = format!("{e:#}"), "dashboard page failed");
                "Something went wrong on our side; it has been logged.".to_owned()
            }
            other => other.to_string(),
        };
        Self(status, message)
    }
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Database(e).into()
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let html = ErrorPage {
            status: self.0.as_u16(),
            message: &self.1,
        }
        .render()
        .unwrap_or_else(|_| "error".into());
        (self.0, Html(html)).into_response()
    }
}

pub(super) type PageResult = Result<Response, PageError>;

pub(super) fn render(page: impl Template) -> PageResult {
    let html = page
        .render()
        .map_err(|e| PageError::from(ApiError::Internal(e.into())))?;
    Ok(Html(html).into_response())
}

/// A replay or recover the state of things refuses, shown as a page.
impl From<Refused> for PageError {
    fn from(r: Refused) -> Self {
        ApiError::from(r).into()
    }
}
