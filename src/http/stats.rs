//! `GET /api/v1/stats`: queue health in one call (the dashboard refreshes it live).

use axum::extract::State;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ServerState;
use crate::db::dashboard::{self, QueueStats};
use crate::error::{ApiResult, Json};

pub fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new().routes(routes!(stats))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Stats {
    #[serde(flatten)]
    queue: QueueStats,
    /// Live feed subscribers on the process that answered.
    feed_subscribers: usize,
    /// Bytes of events waiting to be written to those subscribers (each charged what it
    /// holds, so a batch shared by several counts once for each).
    feed_buffered_bytes: usize,
}

/// Queue depth and the age of the oldest pending delivery.
#[utoipa::path(get, path = "/stats", tag = "feed", responses((status = 200, body = Stats)))]
async fn stats(State(state): State<ServerState>) -> ApiResult<Json<Stats>> {
    Ok(Json(Stats {
        queue: dashboard::queue(&state.pool).await?,
        feed_subscribers: state.feed.subscribers(),
        feed_buffered_bytes: state.feed.buffered_bytes(),
    }))
}
