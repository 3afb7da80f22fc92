//! Time limits on every request but the long-lived ones: the client has
//! `HERALD_BODY_TIMEOUT` to send its body, and the whole exchange, up to the last byte of
//! the answer, has `HERALD_HTTP_TIMEOUT`. The live feed (an SSE answer) and the
//! WebSocket (an upgrade) are meant to stay open: once their answer has started, their
//! body is not bounded. (The request head is bounded in the accept loop, app.rs.)

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as _, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::ServerState;
use crate::error::ApiError;

pub async fn limit(State(state): State<ServerState>, request: Request, next: Next) -> Response {
    let config = &state.config;
    let started = Instant::now();
    let body_timed_out = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = until(body, started + config.body_timeout, body_timed_out.clone());
    let deadline = started + config.http_timeout;
    let response =
        match tokio::time::timeout_at(deadline, next.run(Request::from_parts(parts, body))).await {
            Ok(response) => response,
            Err(_) => {
                return close(ApiError::Timeout(format!(
                    "the request took longer than {} (HERALD_HTTP_TIMEOUT); a write may still \
                 have been stored: retry a send with the same Idempotency-Key",
                    secs(config.http_timeout)
                )));
            }
        };
    // Whatever the handler made of a body cut short, the caller is told why.
    if body_timed_out.load(Ordering::Relaxed) {
        return close(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {} (HERALD_BODY_TIMEOUT)",
            secs(config.body_timeout)
        )));
    }
    if long_lived(&response) {
        return response;
    }
    // A client reading the answer slowly holds the connection as surely as one sending
    // slowly: the answer's body is cut off at the same deadline.
    let (parts, body) = response.into_parts();
    let body = until(body, deadline, Arc::new(AtomicBool::new(false)));
    Response::from_parts(parts, body)
}

/// An SSE stream or a switch to the WebSocket protocol.
fn long_lived(response: &Response) -> bool {
    response.status() == StatusCode::SWITCHING_PROTOCOLS
        || response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// The error answer, and the connection closed after it: what is left of a request body on
/// it could not be told from the next request.
fn close(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `body` until `deadline`; past it, one error (and `timed_out` set) and nothing more.
fn until(body: Body, deadline: Instant, timed_out: Arc<AtomicBool>) -> Body {
    if body.is_end_stream() {
        return body;
    }
    Body::new(Deadline {
        inner: body,
        sleep: Box::pin(tokio::time::sleep_until(deadline)),
        timed_out,
        done: false,
    })
}

struct Deadline {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    timed_out: Arc<AtomicBool>,
    done: bool,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        ready!(self.sleep.as_mut().poll(cx));
        self.done = true;
        self.timed_out.store(true, Ordering::Relaxed);
        Poll::Ready(Some(Err(axum::Error::new("timed out"))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}
