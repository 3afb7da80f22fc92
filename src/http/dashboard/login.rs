//! Logging in (the admin token, exchanged for a session cookie) and out (the cookie
//! revoked here and, through `pg_notify`, on every other process).

use askama::Template;
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::header::{LOCATION, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use serde::Deserialize;

use super::session::{self, Checked, TokenOnly};
use super::{PageResult, render};
use crate::http::ServerState;
use crate::http::throttle::ClientAddr;

pub(super) fn routes() -> Router<ServerState> {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    next: String,
    error: Option<String>,
}

#[derive(Deserialize)]
struct NextParam {
    next: Option<String>,
}

/// Only a path on this site: `next` must not become an open redirect. Browsers drop tabs
/// and newlines from a `Location` and read `\` as `/`, so `/\t/evil.example` would leave
/// the site: anything but printable ASCII without spaces or backslashes, after a single
/// leading `/`, goes to the overview instead. A request's own path and query always pass.
fn safe_next(next: Option<String>) -> String {
    next.filter(|n| {
        let rest = n.strip_prefix('/');
        rest.is_some_and(|rest| !rest.starts_with('/'))
            && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
    })
    .unwrap_or_else(|| "/".into())
}

async fn login_form(
    State(state): State<ServerState>,
    headers: HeaderMap,
    Query(q): Query<NextParam>,
) -> PageResult {
    let next = safe_next(q.next);
    if session::session(&state.config, &state.revoked_sessions, &headers).is_some() {
        return Ok(Redirect::to(&next).into_response());
    }
    render(LoginPage { next, error: None })
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(
    State(state): State<ServerState>,
    client: ClientAddr,
    Form(form): Form<LoginForm>,
) -> PageResult {
    let next = safe_next(form.next);
    if let Err(blocked) = state.auth_throttle.check(client) {
        let secs = blocked.retry_after_secs();
        let mut page = render(LoginPage {
            next,
            error: Some(format!(
                "Too many wrong tokens from your address: try again in {secs} s."
            )),
        })?;
        *page.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        page.headers_mut().insert(RETRY_AFTER, secs.into());
        return Ok(page);
    }
    if !session::is_admin_token(&state.config, form.token.trim()) {
        crate::http::auth_failed(&state, client, "token at login");
        let mut page = render(LoginPage {
            next,
            error: Some("That is not this Herald's admin token.".into()),
        })?;
        *page.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(page);
    }
    Ok((
        StatusCode::SEE_OTHER,
        [
            (SET_COOKIE, session::login_cookie(&state.config)),
            (
                LOCATION,
                next.parse().expect("a checked path is a header value"),
            ),
        ],
    )
        .into_response())
}

async fn logout(
    State(state): State<ServerState>,
    Checked { session, .. }: Checked<TokenOnly>,
) -> PageResult {
    // The cookie a browser drops could have been copied: it must stop working here and on
    // every other process, not merely leave this browser.
    state.revoked_sessions.revoke(&session.cookie);
    if let Err(e) = sqlx::query("select pg_notify($1, $2)")
        .bind(session::REVOKED_CHANNEL)
        .bind(session::revocation_notice(&session.cookie))
        .execute(&state.pool)
        .await
    {
        tracing::warn!(error = %e, "logout not announced to other processes");
    }
    Ok((
        StatusCode::SEE_OTHER,
        [
            (SET_COOKIE, session::logout_cookie()),
            (LOCATION, "/login".parse().expect("static")),
        ],
    )
        .into_response())
}
