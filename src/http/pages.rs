//! Server-rendered pages (askama).

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use crate::error::AppError;

pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(index))
}

#[derive(Template)]
#[template(path = "index.html")]
struct Index<'a> {
    version: &'static str,
    public_url: &'a str,
}

async fn index(State(state): State<AppState>) -> Response {
    let page = Index {
        version: env!("CARGO_PKG_VERSION"),
        public_url: &state.config.public_url,
    };
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => AppError::Internal(e.into()).into_response(),
    }
}
