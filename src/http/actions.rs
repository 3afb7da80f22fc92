//! The operations the REST API, the dashboard's forms and the admin channel perform alike,
//! each one function here that every surface calls, so what an operation does besides its
//! write cannot differ by where it was asked for (the dashboard's disable once woke the
//! feed and the REST PATCH did not). Reading the request and shaping the answer stay with
//! each surface. Rotating a secret is `db::endpoints::rotate_to`, and a recover
//! `BulkReplays::start`: both already one call.

use super::ServerState;
use crate::db;
use crate::db::endpoints::{Endpoint, EndpointFields};
use crate::db::replays::Replayed;
use crate::domain::{AppId, EndpointId, MessageId};
use crate::error::{ApiError, ApiResult};

/// Changes an endpoint of `app`. A change that disables it is announced on the feed (the
/// `feed_endpoint_disabled` trigger writes the event): waking this process's feed reader
/// shows it to this process's subscribers at once, not at the next NOTIFY or poll.
pub async fn update_endpoint(
    state: &ServerState,
    app: AppId,
    id: EndpointId,
    fields: EndpointFields,
) -> ApiResult<Endpoint> {
    let endpoint = db::endpoints::update(&state.pool, app, id, fields)
        .await?
        .ok_or(ApiError::NotFound("endpoint"))?;
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
