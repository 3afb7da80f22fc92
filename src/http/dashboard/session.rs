//! Dashboard sessions: the admin token is exchanged once for a signed, expiring cookie
//! (HttpOnly, SameSite=Strict), and every form that changes state carries a CSRF token
//! derived from that cookie. The [`Session`] extractor lets a page in only with one, and
//! [`Checked`] lets a form action in only with its token.
//!
//! Both are HMACs keyed by the admin token, so they need no storage, work on every Herald
//! process behind a load balancer, and all die when the token is rotated. Each session has a
//! random id: logging out revokes that id in this process at once and, through
//! `pg_notify`, in every other process sharing the database (each keeps the ids it was told
//! of, in memory, until their cookies would have expired anyway).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::extract::{Form, FromRequest, FromRequestParts, Request};
use axum::http::header::{COOKIE, ORIGIN};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::PageError;
use crate::config::Config;
use crate::http::ServerState;

pub const COOKIE_NAME: &str = "herald_session";
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

pub(crate) fn mac(config: &Config, purpose: &str, value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(config.admin_token.expose().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(purpose.as_bytes());
    mac.update(b":");
    mac.update(value.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares MACs of both sides under a key of this process, so the comparison runs over
/// 32 bytes whatever was presented: neither the length nor a prefix of the secret shows in
/// its timing.
pub(crate) fn same(a: &str, b: &str) -> bool {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(rand::random);
    let digest = |s: &str| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(s.as_bytes());
        mac.finalize().into_bytes()
    };
    bool::from(digest(a).ct_eq(&digest(b)))
}

/// Whether `presented` is the admin token (constant time).
pub fn is_admin_token(config: &Config, presented: &str) -> bool {
    same(presented, config.admin_token.expose())
}

/// The channel on which processes tell each other of a logout: `<session id>.<expiry>`.
pub const REVOKED_CHANNEL: &str = "herald_session_revoked";

/// A fresh session cookie's value: `<id>.<expiry>.<mac>`.
fn new_session(config: &Config) -> String {
    let id = hex(&rand::random::<[u8; 16]>());
    let expires = Utc::now().timestamp() + LIFETIME.as_secs() as i64;
    let body = format!("{id}.{expires}");
    let tag = mac(config, "session", &body);
    format!("{body}.{tag}")
}

/// The `Set-Cookie` header that logs a browser in.
pub fn login_cookie(config: &Config) -> HeaderValue {
    let secure = if config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let value = format!(
        "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        new_session(config),
        LIFETIME.as_secs()
    );
    HeaderValue::from_str(&value).expect("cookie is plain ASCII")
}

/// The `Set-Cookie` header that logs a browser out.
pub fn logout_cookie() -> HeaderValue {
    HeaderValue::from_static("herald_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Sessions logged out before their cookie expired: id → expiry (Unix seconds).
#[derive(Default)]
pub struct Revoked(Mutex<HashMap<String, i64>>);

/// More than any real number of logouts within a cookie's lifetime; only a logged-in admin
/// (or the database) can add one.
const MAX_REVOKED: usize = 100_000;

impl Revoked {
    /// `session` is a cookie value from [`session`], or `<id>.<expiry>` as notified.
    pub fn revoke(&self, session: &str) {
        let mut parts = session.split('.');
        let (Some(id), Some(Ok(expires))) = (parts.next(), parts.next().map(str::parse::<i64>))
        else {
            return;
        };
        let now = Utc::now().timestamp();
        let mut revoked = self.0.lock().expect("revoked lock");
        revoked.retain(|_, &mut e| e > now);
        if revoked.len() < MAX_REVOKED && expires > now {
            revoked.insert(id.to_owned(), expires);
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.0.lock().expect("revoked lock").contains_key(id)
    }

    /// Whether the session of `cookie` (a value [`session`] accepted) was logged out since.
    pub fn has(&self, cookie: &str) -> bool {
        cookie
            .split_once('.')
            .is_some_and(|(id, _)| self.contains(id))
    }
}

impl std::fmt::Debug for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Revoked")
    }
}

/// When the session of `cookie` (a value [`session`] accepted) expires.
pub fn expiry(cookie: &str) -> Option<DateTime<Utc>> {
    let (_, rest) = cookie.split_once('.')?;
    let (expires, _) = rest.split_once('.')?;
    DateTime::from_timestamp(expires.parse().ok()?, 0)
}

/// What a logout tells the other processes: the session's id and expiry, not its MAC.
pub fn revocation_notice(session: &str) -> &str {
    session.rsplit_once('.').map_or(session, |(body, _)| body)
}

/// The valid, unexpired, not logged-out session cookie the request carries, if any.
pub fn session(config: &Config, revoked: &Revoked, headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())?;
    let (body, tag) = value.rsplit_once('.')?;
    let (id, expires) = body.split_once('.')?;
    let valid = same(tag, &mac(config, "session", body))
        && expires
            .parse::<i64>()
            .is_ok_and(|t| t > Utc::now().timestamp())
        && !revoked.contains(id);
    valid.then_some(value)
}

/// The CSRF token a page embeds in its forms for this session.
pub fn csrf_token(config: &Config, session: &str) -> String {
    mac(config, "csrf", session)
}

/// A state-changing dashboard request is genuine when it carries the session's CSRF token
/// and, if the browser says where it comes from, comes from our own origin.
pub fn csrf_ok(config: &Config, headers: &HeaderMap, session: &str, token: &str) -> bool {
    let origin_ok = headers
        .get(ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_none_or(|o| config.origin_allowed(o));
    origin_ok && same(token, &csrf_token(config, session))
}

pub struct Session {
    pub(super) csrf: String,
    pub(super) cookie: String,
}

impl FromRequestParts<ServerState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ServerState) -> Result<Self, Response> {
        match session(&state.config, &state.revoked_sessions, &parts.headers) {
            Some(cookie) => Ok(Self {
                csrf: csrf_token(&state.config, &cookie),
                cookie,
            }),
            None => {
                let next = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let next =
                    url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>();
                Err(Redirect::to(&format!("/login?next={next}")).into_response())
            }
        }
    }
}

impl Session {
    fn check_csrf(
        &self,
        state: &ServerState,
        headers: &HeaderMap,
        token: &str,
    ) -> Result<(), PageError> {
        if csrf_ok(&state.config, headers, &self.cookie, token) {
            Ok(())
        } else {
            Err(PageError(
                StatusCode::FORBIDDEN,
                "This form is stale or did not come from this dashboard. Go back, reload and try again."
                    .into(),
            ))
        }
    }
}

/// A form of a dashboard action: it carries the session's CSRF token in its `csrf` field,
/// `#[serde(default)]` so that a missing token is simply a wrong one (403), not a
/// malformed form.
pub(super) trait CsrfForm: DeserializeOwned {
    fn csrf(&self) -> &str;
}

/// A form with nothing but its token.
#[derive(serde::Deserialize)]
pub(super) struct TokenOnly {
    #[serde(default)]
    csrf: String,
}

impl CsrfForm for TokenOnly {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// A form this session's own dashboard sent: the session, and the form once its token and
/// origin checked out. In that order: no session goes to the login page, a malformed form
/// gets axum's answer, a wrong token 403.
pub(super) struct Checked<F> {
    pub(super) session: Session,
    pub(super) form: F,
}

impl<F: CsrfForm> FromRequest<ServerState> for Checked<F> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &ServerState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let headers = parts.headers.clone();
        let Form(form) = Form::<F>::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        session
            .check_csrf(state, &headers, form.csrf())
            .map_err(IntoResponse::into_response)?;
        Ok(Self { session, form })
    }
}

/// Follows other processes' logouts until `pool` (the process's main pool) is closed at
/// shutdown. Runs on a connection of its own, so it takes none from the API. A notice sent
/// while it reconnects is missed: that cookie then stays valid here until it expires.
pub async fn follow_revocations(
    database_url: String,
    pool: sqlx::PgPool,
    revoked: std::sync::Arc<Revoked>,
) {
    let closed = pool.close_event();
    tokio::pin!(closed);
    loop {
        let listen = listen(&database_url, &revoked);
        tokio::select! {
            _ = &mut closed => return,
            Err(e) = listen => {
                tracing::warn!(error = %e, "not following logouts of other processes; retrying");
            }
        }
        tokio::select! {
            _ = &mut closed => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn listen(database_url: &str, revoked: &Revoked) -> Result<Infallible, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(database_url).await?;
    listener.listen(REVOKED_CHANNEL).await?;
    loop {
        revoked.revoke(listener.recv().await?.payload());
    }
}
