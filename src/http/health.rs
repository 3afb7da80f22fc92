use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ServerState;
use crate::metrics::{self, Scrape};

pub fn routes() -> OpenApiRouter<ServerState> {
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

/// Ready when the database answered the last check (made every second in the
/// background, on a connection of its own; this call does not touch the database).
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
async fn ready(State(state): State<ServerState>) -> (StatusCode, &'static str) {
    if state.probe.ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
    }
}

/// Prometheus metrics, unauthenticated like the probes: aggregates only. The queue gauges
/// are what the background reader last saw (every `HERALD_METRICS_INTERVAL`); while the
/// database does not answer for three intervals they are left out and the rest is still
/// served.
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
async fn metrics(State(state): State<ServerState>) -> impl IntoResponse {
    let direct = &state.direct;
    let body = direct.metrics().encode(&Scrape {
        queue: state.probe.queue(),
        sse_subscribers: state.feed.subscribers(),
        worker_in_flight: direct.in_flight(),
        worker_concurrency: direct.concurrency(),
    });
    ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], body)
}
