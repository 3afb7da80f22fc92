use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::db::dashboard;
use crate::metrics::{self, Scrape};

/// How long a scrape waits for the queue numbers before leaving them out.
const QUEUE_STATS_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(alive))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

/// Alive: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    security(()),
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain"))
)]
async fn alive() -> &'static str {
    "ok"
}

/// Ready when the database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    security(()),
    responses(
        (status = 200, description = "`ready`", body = String, content_type = "text/plain"),
        (status = 503, description = "The database does not answer", body = String, content_type = "text/plain"),
    )
)]
async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match sqlx::query("select 1").execute(&state.pool).await {
        Ok(_) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}

/// Prometheus metrics, unauthenticated like the probes: aggregates only. If the database
/// does not answer in time, the queue gauges are left out and the rest is still served.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    security(()),
    responses((
        status = 200,
        description = "Prometheus text exposition",
        body = String,
        content_type = "application/openmetrics-text"
    ))
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let queue = match tokio::time::timeout(QUEUE_STATS_TIMEOUT, dashboard::queue(&state.pool)).await
    {
        Ok(Ok(stats)) => Some(stats),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: reading the queue failed");
            None
        }
        Err(_) => {
            tracing::warn!("metrics: reading the queue timed out");
            None
        }
    };
    let direct = &state.direct;
    let body = direct.metrics().encode(&Scrape {
        queue,
        sse_subscribers: state.feed.subscribers(),
        worker_in_flight: direct.in_flight(),
        worker_concurrency: direct.concurrency(),
    });
    ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], body)
}
