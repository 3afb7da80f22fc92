//! `/tokens`: the API tokens, the form that creates one (its secret shown once, on the page
//! that answers it) and a revoke button on each. Both forms go through the same
//! `actions` as `POST` and `DELETE /api/v1/tokens`, so the page accepts exactly what the
//! API does.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Redirect;
use axum::routing::{get, post};
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use super::session::{Checked, CsrfForm, Session, TokenOnly};
use super::view::stamp;
use super::{Layout, PageError, PageResult, render};
use crate::db::{self, dashboard};
use crate::domain::TokenId;
use crate::error::{ApiError, ApiResult};
use crate::http::access::Scope;
use crate::http::actions::{self, NewToken};
use crate::http::{ServerState, path_id};

pub(super) fn routes() -> Router<ServerState> {
    Router::new()
        .route("/tokens", get(tokens).post(create))
        .route("/tokens/{id}/revoke", post(revoke))
}

/// Tokens the page lists, newest first; an admin makes them one at a time, so more than
/// this is unlikely, and the API lists them all.
const SHOWN_TOKENS: i64 = 500;

/// Applications the form suggests for its application field, which takes any id or uid.
const SUGGESTED_APPS: i64 = 100;

/// The expiry choices the form offers: its value is a number of days, empty for never.
const EXPIRIES: &[(&str, &str)] = &[
    ("", "never"),
    ("1", "in 1 day"),
    ("30", "in 30 days"),
    ("90", "in 90 days"),
    ("365", "in 1 year"),
];

struct TokenRow {
    id: String,
    name: String,
    /// Empty: every application its scopes allow.
    app_id: String,
    app_name: String,
    app_removed: bool,
    scopes: String,
    expires: String,
    expired: bool,
    created: String,
    last_used: String,
}

impl From<dashboard::TokenSummary> for TokenRow {
    fn from(t: dashboard::TokenSummary) -> Self {
        let token = t.token;
        Self {
            id: token.id.to_string(),
            name: token.name,
            app_id: token.app_id.map(|a| a.to_string()).unwrap_or_default(),
            app_name: t.app_name.unwrap_or_default(),
            app_removed: t.app_removed,
            scopes: token.scopes.join(", "),
            expires: token.expires_at.map_or_else(|| "never".into(), stamp),
            expired: token.expires_at.is_some_and(|at| at <= Utc::now()),
            created: stamp(token.created_at),
            last_used: token.last_used_at.map_or_else(|| "never".into(), stamp),
        }
    }
}

struct AppChoice {
    id: String,
    label: String,
}

struct ScopeChoice {
    value: &'static str,
    description: &'static str,
    checked: bool,
}

struct ExpiryChoice {
    value: &'static str,
    label: &'static str,
    selected: bool,
}

/// A token just created: the one time its secret is shown.
struct Created {
    id: String,
    name: String,
    secret: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    layout: Layout,
    tokens: Vec<TokenRow>,
    /// There are more tokens than the page lists.
    more: bool,
    apps: Vec<AppChoice>,
    /// The create form's values: empty, or as sent when it is shown again with `error`.
    name: String,
    app: String,
    scopes: Vec<ScopeChoice>,
    expiries: Vec<ExpiryChoice>,
    error: Option<String>,
    created: Option<Created>,
}

/// The create form. Its scopes are checkboxes sharing one name, which axum's `Form`
/// (serde_urlencoded) cannot gather into a `Vec`: the form is read as its list of pairs.
/// A missing `csrf` is an empty one, so it is refused as a wrong token (403).
#[derive(Default, Deserialize)]
#[serde(from = "Vec<(String, String)>")]
struct CreateForm {
    csrf: String,
    name: String,
    /// An application's id or uid; empty: every application.
    app: String,
    scopes: Vec<String>,
    /// Days, as [`EXPIRIES`] offers them; empty: never.
    expires_in_days: String,
}

impl From<Vec<(String, String)>> for CreateForm {
    fn from(pairs: Vec<(String, String)>) -> Self {
        let mut form = Self::default();
        for (key, value) in pairs {
            match key.as_str() {
                "csrf" => form.csrf = value,
                "name" => form.name = value,
                "app" => form.app = value,
                "scopes" => form.scopes.push(value),
                "expires_in_days" => form.expires_in_days = value,
                _ => {}
            }
        }
        form
    }
}

impl CsrfForm for CreateForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The page, with the create form filled from `form` (empty for a fresh one).
async fn tokens_page(
    state: &ServerState,
    session: &Session,
    form: &CreateForm,
    error: Option<String>,
    created: Option<Created>,
) -> PageResult {
    let mut tokens = dashboard::tokens(&state.pool, SHOWN_TOKENS + 1).await?;
    let more = tokens.len() as i64 > SHOWN_TOKENS;
    tokens.truncate(SHOWN_TOKENS as usize);
    let mut apps = db::apps::list(&state.pool, None, None, SUGGESTED_APPS).await?;
    apps.truncate(SUGGESTED_APPS as usize);
    render(TokensPage {
        layout: Layout::new(state, session, "Tokens", "tokens"),
        tokens: tokens.into_iter().map(TokenRow::from).collect(),
        more,
        apps: apps
            .into_iter()
            .map(|a| AppChoice {
                id: a.id.to_string(),
                label: match a.uid {
                    Some(uid) => format!("{} ({uid})", a.name),
                    None => a.name,
                },
            })
            .collect(),
        name: form.name.clone(),
        app: form.app.clone(),
        scopes: Scope::ALL
            .iter()
            .map(|&s| ScopeChoice {
                value: s.as_str(),
                description: s.description(),
                checked: form.scopes.iter().any(|f| f == s.as_str()),
            })
            .collect(),
        expiries: EXPIRIES
            .iter()
            .map(|&(value, label)| ExpiryChoice {
                value,
                label,
                selected: form.expires_in_days == value,
            })
            .collect(),
        error,
        created,
    })
}

async fn tokens(State(state): State<ServerState>, session: Session) -> PageResult {
    tokens_page(&state, &session, &CreateForm::default(), None, None).await
}

async fn create(
    State(state): State<ServerState>,
    Checked { session, form }: Checked<CreateForm>,
) -> PageResult {
    match create_token(&state, &form).await {
        Ok(created) => {
            let fresh = CreateForm::default();
            tokens_page(&state, &session, &fresh, None, Some(created)).await
        }
        // What the API refuses with a 422, the form shows above itself, filled as it was
        // sent.
        Err(ApiError::Invalid(why)) => {
            let mut page = tokens_page(&state, &session, &form, Some(why), None).await?;
            *page.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(page)
        }
        Err(e) => Err(e.into()),
    }
}

async fn create_token(state: &ServerState, form: &CreateForm) -> ApiResult<Created> {
    let new = NewToken {
        name: &form.name,
        app: Some(form.app.trim()).filter(|a| !a.is_empty()),
        scopes: &form.scopes,
        expires_at: expires_at(&form.expires_in_days)?,
    };
    let (token, secret) = actions::create_token(state, new).await?;
    Ok(Created {
        id: token.id.to_string(),
        name: token.name,
        secret,
    })
}

/// The expiry the form chose, as a time: one of [`EXPIRIES`] only.
fn expires_at(days: &str) -> ApiResult<Option<DateTime<Utc>>> {
    if days.is_empty() {
        return Ok(None);
    }
    EXPIRIES
        .iter()
        .find(|(value, _)| *value == days)
        .and_then(|(value, _)| value.parse().ok())
        .map(|days| Some(Utc::now() + Duration::days(days)))
        .ok_or_else(|| ApiError::Invalid(format!("expiry {days:?} is not one of the choices")))
}

/// Answers 303 See Other: the browser then gets the list, and a reload does not post the
/// revoke again.
async fn revoke(
    State(state): State<ServerState>,
    Path(id): Path<String>,
    Checked { .. }: Checked<TokenOnly>,
) -> Result<Redirect, PageError> {
    let id: TokenId = path_id(&id, "token")?;
    actions::revoke_token(&state, id).await?;
    Ok(Redirect::to("/tokens"))
}
