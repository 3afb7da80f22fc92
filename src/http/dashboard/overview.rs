//! `/`: the queue, the last hour's throughput and success rate, and the latest attempts.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::routing::get;

use super::session::Session;
use super::view::{AttemptRow, Bar, chart, duration_text, percent, rows};
use super::{Layout, PageResult, render};
use crate::db;
use crate::db::dashboard::{self, QueueStats, Rate};
use crate::http::ServerState;

pub(super) fn routes() -> Router<ServerState> {
    Router::new().route("/", get(overview))
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    layout: Layout,
    queue: QueueStats,
    oldest: String,
    hour_total: i64,
    hour_rate: String,
    bars: Vec<Bar>,
    rate_line: String,
    minutes_json: String,
    attempts: Vec<AttemptRow>,
}

async fn overview(State(state): State<ServerState>, session: Session) -> PageResult {
    let queue = dashboard::queue(&state.pool).await?;
    let minutes = dashboard::throughput(&state.pool, 60).await?;
    let hour = minutes.iter().fold(Rate::default(), |r, m| Rate {
        succeeded: r.succeeded + m.succeeded,
        total: r.total + m.total,
    });
    let (bars, rate_line) = chart(&minutes);
    let attempts = db::attempts::recent(&state.pool, 50).await?;
    render(Overview {
        layout: Layout::new(&state, &session, "Overview", "overview").live(""),
        oldest: if queue.pending > 0 {
            duration_text(queue.oldest_pending_age_seconds)
        } else {
            "–".into()
        },
        queue,
        hour_total: hour.total,
        hour_rate: percent(hour.percent()),
        bars,
        rate_line,
        minutes_json: serde_json::to_string(&minutes).unwrap_or_default(),
        attempts: rows(attempts),
    })
}
