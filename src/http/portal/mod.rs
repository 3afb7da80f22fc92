//! The customer portal: pages a SaaS shows its own customers, in an iframe on its site or
//! as a page of their own, each session limited to one application (docs/architecture.md,
//! "The customer portal"). Everything under `/portal/<session>/` is the portal: the signed
//! session in the path is the credential (`link`), so no cookie is needed, and every
//! page, form, the live feed and the replay channel check it on every request.
//!
//! The pages are askama, work without JavaScript and follow the feed with the dashboard's
//! `live.js`, pointed at the portal's own stream and channel. Forms carry a CSRF token
//! derived from the session and must come from this origin. Pages may be framed only by
//! the origins in `HERALD_PORTAL_FRAME_ANCESTORS`, and send no referrer to other sites.

mod forms;
pub mod link;
mod pages;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{FromRequestParts, RawPathParams, Request, State, WebSocketUpgrade};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router, middleware};

use super::access::{Access, BoundApp, Scope};
use super::dashboard::PageError;
use super::dashboard::session::{csrf_ok, csrf_token};
use super::{AuthBy, ServerState};
use crate::db;
use crate::domain::Brand;
use crate::error::Query;
use link::{Link, Refusal};

pub fn routes(state: &ServerState) -> Router<ServerState> {
    Router::new()
        .route("/portal/{s}", get(pages::endpoints))
        .route("/portal/{s}/", get(pages::endpoints))
        .route("/portal/{s}/brand.css", get(brand_css))
        .route("/portal/{s}/endpoints", post(forms::create_endpoint))
        .route(
            "/portal/{s}/endpoints/{ep}",
            get(pages::endpoint).post(forms::update_endpoint),
        )
        .route("/portal/{s}/endpoints/{ep}/state", post(forms::set_state))
        .route(
            "/portal/{s}/endpoints/{ep}/delete",
            post(forms::delete_endpoint),
        )
        .route(
            "/portal/{s}/endpoints/{ep}/secret",
            post(forms::reveal_secret),
        )
        .route(
            "/portal/{s}/endpoints/{ep}/rotate",
            post(forms::rotate_secret),
        )
        .route("/portal/{s}/endpoints/{ep}/recover", post(forms::recover))
        .route("/portal/{s}/endpoints/{ep}/test", post(forms::send_test))
        .route("/portal/{s}/event-types", get(pages::event_types))
        .route("/portal/{s}/messages", get(pages::messages))
        .route("/portal/{s}/messages/{msg}", get(pages::message))
        .route("/portal/{s}/messages/{msg}/replay", post(forms::replay))
        .route("/portal/{s}/stream", get(stream))
        .route("/portal/{s}/ws", get(channel))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            portal_headers,
        ))
}

/// A portal request whose session checked out: the application it may reach, and what its
/// pages need to link and post back.
pub struct Portal {
    pub link: Link,
    pub app: db::apps::Application,
    /// `/portal/<session>`: every link and form action starts with it.
    pub base: String,
    pub csrf: String,
    pub brand: Brand,
    session: String,
}

impl Portal {
    /// Whether this session may do what `scope` allows (what its link was made with).
    pub fn allows(&self, scope: Scope) -> bool {
        self.link.scopes.contains(&scope)
    }

    /// Refuses, as a page, what this session's link does not allow.
    pub fn require(&self, scope: Scope) -> Result<(), Failed> {
        if self.allows(scope) {
            return Ok(());
        }
        let message = match scope {
            Scope::MessagesRead => "This link does not show messages.",
            Scope::Replay => "This link does not allow sending messages again.",
            _ => "This link does not allow that.",
        };
        Err(self.fail()(PageError(
            StatusCode::FORBIDDEN,
            message.into(),
        )))
    }

    /// What the portal's stream and channel may reach: this application, with the scopes
    /// of its link.
    fn access(&self) -> Access {
        Access::limited(
            AuthBy::Portal,
            self.link.scopes.clone(),
            Some(BoundApp {
                id: self.app.id,
                uid: self.app.uid.clone(),
            }),
        )
        .until(Some(self.link.expires_at))
        .portal_link(self.link.issued_at)
    }

    /// Whether a form is this session's own, from this origin.
    fn form_ok(&self, state: &ServerState, headers: &HeaderMap, token: &str) -> bool {
        csrf_ok(&state.config, headers, &csrf_subject(&self.session), token)
    }
}

/// The page for a link whose application's links were ended since it was made.
const REVOKED: &str =
    "This link has been withdrawn. Open the page you came from again to get a new one.";

fn csrf_subject(session: &str) -> String {
    format!("portal:{session}")
}

impl FromRequestParts<ServerState> for Portal {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ServerState) -> Result<Self, Response> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let session = params
            .iter()
            .find(|(name, _)| *name == "s")
            .map(|(_, value)| value.to_owned())
            .unwrap_or_default();
        let link = link::verify(&state.config, &session).map_err(|refusal| {
            let message = match refusal {
                Refusal::Invalid => {
                    "This link is not valid: it may have been changed or cut short. Open the \
                     page you came from again to get a new one."
                }
                Refusal::Expired => {
                    "This link has expired. Open the page you came from again to get a new one."
                }
            };
            Failed(PageError(StatusCode::UNAUTHORIZED, message.into()), None).into_response()
        })?;
        let app = db::apps::find(&state.pool, &link.app.to_string())
            .await
            .map_err(|e| Failed::from(e).into_response())?
            .ok_or_else(|| {
                let message = "The account this link was made for no longer exists.";
                Failed(PageError(StatusCode::UNAUTHORIZED, message.into()), None).into_response()
            })?;
        if app.portal_link_revoked(link.issued_at) {
            let refused = PageError(StatusCode::UNAUTHORIZED, REVOKED.into());
            return Err(Failed(refused, None).into_response());
        }
        let brand = app.portal_brand.as_ref().map_or_else(
            || state.config.portal_brand.clone(),
            |b| b.0.or(&state.config.portal_brand),
        );
        Ok(Portal {
            base: format!("/portal/{session}"),
            csrf: csrf_token(&state.config, &csrf_subject(&session)),
            link,
            app,
            brand,
            session,
        })
    }
}

/// An error as a portal page: what went wrong, in words for a customer, with the way back
/// into the portal when there is one.
pub struct Failed(PageError, Option<String>);

impl<E: Into<PageError>> From<E> for Failed {
    fn from(e: E) -> Self {
        Failed(e.into(), None)
    }
}

impl Portal {
    /// An error as a page of this portal, with the way back into it.
    pub fn fail(&self) -> impl Fn(PageError) -> Failed + '_ {
        move |e| Failed(e, Some(self.base.clone()))
    }
}

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        let page = pages::ErrorPage {
            status: self.0.0.as_u16(),
            message: &self.0.1,
            base: self.1.as_deref(),
        };
        let html = askama::Template::render(&page).unwrap_or_else(|_| "error".into());
        (self.0.0, Html(html)).into_response()
    }
}

pub type PortalResult = Result<Response, Failed>;

/// Framing by the origins the operator listed only; no referrer to other sites (the
/// session is in the URL); nothing cached; scripts, styles and connections from this origin only; images
/// from here or over https (a brand's logo).
async fn portal_headers(
    State(state): State<ServerState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: data:; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors {}",
        state.config.portal_frame_ancestors
    );
    let headers = response.headers_mut();
    if let Ok(policy) = HeaderValue::from_str(&policy) {
        headers.insert(CONTENT_SECURITY_POLICY, policy);
    }
    // `same-origin`, not `no-referrer`: a browser sends `Origin: null` with the forms of a
    // page that sends no referrer, and the forms' origin check needs the real one.
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The brand's accent colour as a style sheet: the pages have no inline style.
async fn brand_css(portal: Portal) -> Response {
    let accent = portal.brand.accent_color.as_deref().unwrap_or("#2f5fd0");
    (
        [(CONTENT_TYPE, "text/css; charset=utf-8")],
        format!(
            ":root {{ --accent: {accent}; }}\n.top {{ border-bottom: 3px solid var(--accent); }}\n"
        ),
    )
        .into_response()
}

/// The live feed of this application only, as `GET /api/v1/stream` serves it.
async fn stream(
    State(state): State<ServerState>,
    portal: Portal,
    headers: HeaderMap,
    query: Query<super::stream::StreamParams>,
) -> Response {
    if let Err(refused) = portal.require(Scope::MessagesRead) {
        return refused.into_response();
    }
    // The stream ends when the link does (`Access::ended`): the page's reconnect is then
    // refused, and the page says the link expired.
    super::stream::stream(State(state), Extension(portal.access()), headers, query)
        .await
        .into_response()
}

/// Replay and recover of this application's messages and endpoints, as the admin channel
/// runs them, from the portal's own pages only.
async fn channel(
    State(state): State<ServerState>,
    portal: Portal,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(refused) = portal.require(Scope::Replay) {
        return refused.into_response();
    }
    super::admin_ws::upgrade(State(state), headers, Extension(portal.access()), ws).await
}
