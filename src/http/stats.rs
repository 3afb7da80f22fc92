//! `GET /api/v1/stats`: queue health in one call (the dashboard refreshes it live).

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;

use super::AppState;
use crate::db::dashboard::{self, QueueStats};
use crate::error::{AppResult, Json};

pub fn routes() -> Router<AppState> {
    Router::new().route("/stats", get(stats))
}

#[derive(Serialize)]
struct Stats {
    #[serde(flatten)]
    queue: QueueStats,
    /// Live feed subscribers on the process that answered.
    feed_subscribers: usize,
}

async fn stats(State(state): State<AppState>) -> AppResult<Json<Stats>> {
    Ok(Json(Stats {
        queue: dashboard::queue(&state.pool).await?,
        feed_subscribers: state.feed.subscribers(),
    }))
}
