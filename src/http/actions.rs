//! The operations the REST API, the dashboard's forms and the admin channel perform alike,
//! each one function here that every surface calls, so what an operation does besides its
//! write cannot differ by where it was asked for (the dashboard's disable once woke the
//! feed and the REST PATCH did not), nor what it accepts (a token is checked here for
//! `POST /api/v1/tokens` and the Tokens page alike). Reading the request and shaping the
//! answer stay with each surface. Rotating a secret is `db::endpoints::rotate_to`, and a recover
//! `BulkReplays::start`: both already one call.

use chrono::{DateTime, Utc};

use super::ServerState;
use super::access::Scope;
use crate::db;
use crate::db::endpoints::{Endpoint, EndpointFields};
use crate::db::replays::Replayed;
use crate::db::tokens::Token;
use crate::domain::{AppId, EndpointId, MessageId, TokenId};
use crate::error::{ApiError, ApiResult};

/// Changes an endpoint of `app`. A change that disables it is announced on the feed (the
/// `feed_endpoint_disabled` trigger writes the event): waking this process's feed reader
/// shows it to this process's subscribers at once, not at the next NOTIFY or poll.
///
/// `actor` names a customer making the change (a portal session or an API token), for the
/// `endpoint.updated` operational event its transaction records.
pub async fn update_endpoint(
    state: &ServerState,
    app: AppId,
    id: EndpointId,
    fields: EndpointFields,
    actor: Option<&str>,
) -> ApiResult<Endpoint> {
    let mut tx = state.pool.begin().await?;
    if let Some(actor) = actor {
        db::operational::act_as(&mut tx, actor).await?;
    }
    let endpoint = db::endpoints::update(&mut *tx, app, id, fields)
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
    tx.commit().await?;
    state.feed.poke();
    Ok(endpoint)
}

/// Sends a message again, to one endpoint or to every one subscribed to it; `app`, when
/// known, must own the message.
pub async fn replay_message(
    state: &ServerState,
    message: MessageId,
    app: Option<AppId>,
    endpoint: Option<EndpointId>,
) -> sqlx::Result<Replayed> {
    let mut conn = state.pool.acquire().await?;
    db::replays::replay_message(&mut conn, message, app, endpoint).await
}

/// A token as `POST /api/v1/tokens` and the dashboard's Tokens form ask for it, before it
/// is checked.
pub struct NewToken<'a> {
    pub name: &'a str,
    /// An application's id or uid.
    pub app: Option<&'a str>,
    pub scopes: &'a [String],
    pub expires_at: Option<DateTime<Utc>>,
}

/// Checks a new token (what is wrong with it is an `Invalid`, a 422) and creates it;
/// returns it with its secret, which nothing else ever sees again. Logs its id, never the
/// secret.
pub async fn create_token(state: &ServerState, new: NewToken<'_>) -> ApiResult<(Token, String)> {
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > 256 {
        return Err(ApiError::Invalid("name must be 1 to 256 characters".into()));
    }
    // PostgreSQL's text cannot hold it: refused here, it is a message the Tokens form can
    // show, not a database error.
    if name.contains('\0') {
        return Err(ApiError::Invalid(
            "name must not contain NUL (\\u0000) characters".into(),
        ));
    }
    if new.scopes.is_empty() {
        return Err(ApiError::Invalid(
            "scopes must name at least one scope".into(),
        ));
    }
    if let Some(bad) = new.scopes.iter().find(|s| Scope::parse(s).is_none()) {
        let known: Vec<_> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        return Err(ApiError::Invalid(format!(
            "scope {bad:?} is not one of {}",
            known.join(", ")
        )));
    }
    let mut scopes = new.scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    if new.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::Invalid("expires_at must be in the future".into()));
    }
    let app = match new.app {
        // Only "no such application" is the caller's mistake; a database that is away
        // stays a 503.
        Some(key) => Some(state.app_id(key).await.map_err(|e| match e {
            ApiError::NotFound(_) => {
                ApiError::Invalid(format!("app {key:?} is not an application here"))
            }
            other => other,
        })?),
        None => None,
    };
    let secret = db::tokens::new_secret();
    let token =
        db::tokens::create(&state.pool, name, app, &scopes, new.expires_at, &secret).await?;
    tracing::info!(token = %token.id, scopes = ?token.scopes, "API token created");
    Ok((token, secret))
}

/// Revokes a token: every process refuses it from its next request on.
pub async fn revoke_token(state: &ServerState, id: TokenId) -> ApiResult<()> {
    if db::tokens::delete(&state.pool, id).await? {
        tracing::info!(token = %id, "API token revoked");
        Ok(())
    } else {
        Err(ApiError::NotFound("token"))
    }
}
