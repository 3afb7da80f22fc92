//! `GET /api/v1/admin/ws`: the admin channel (docs/architecture.md §4, "The admin WebSocket"). Commands
//! `replay`, `retry` and `recover`, each answered with `ack`, `progress` (recover), `done`
//! or `error`, then the `attempt` frames its work causes, tagged with its `req`.
//!
//! The work belongs to the server once acknowledged: a client that goes away stops only the
//! reports. A slow client holds up only itself: the feed it follows catches up on its own.

use std::collections::HashMap;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::ORIGIN;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tracing::debug;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::access::Access;
use super::openapi::ErrorBody;
use super::{AuthBy, ServerState, actions};
use crate::db::events::Filter;
use crate::db::replays::{self, RecoveryProgress};
use crate::domain::{
    AppId, AttemptOutcome, AttemptTrigger, DeliveryId, EndpointId, EventKind, MessageId, Window,
};
use crate::error::ApiError;

pub fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new().routes(routes!(upgrade))
}

/// How often the server pings; a client silent for three of these is dropped.
const PING_EVERY: Duration = Duration::from_secs(20);
/// Frames waiting to be written to one client.
const OUTBOX: usize = 256;

/// The `replay` scope (`access::authorize` checked the credential), and only from the
/// dashboard's own origin: a page elsewhere cannot drive this channel with an admin's
/// cookie. A browser always sends `Origin` here; a cookie without one is refused too.
#[utoipa::path(
    get,
    path = "/admin/ws",
    tag = "feed",
    description = "The admin WebSocket: `replay`, `retry` and `recover` commands as JSON text \
                   frames, answered with `ack`, `progress`, `done` or `error`, then the \
                   `attempt` frames they cause.",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, body = ErrorBody, description = "Not a WebSocket upgrade request."),
        (status = 403, body = ErrorBody, description = "From a foreign `Origin`."),
    )
)]
pub(super) async fn upgrade(
    State(state): State<ServerState>,
    headers: HeaderMap,
    Extension(access): Extension<Access>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return ApiError::BadRequest(rejection.body_text()).into_response(),
    };
    // Only a token that authenticated may go without an Origin: an `Authorization` header
    // of any other kind next to a cookie is still a cookie login.
    let by_bearer = access.by == AuthBy::Bearer;
    let origin = headers.get(ORIGIN).and_then(|o| o.to_str().ok());
    let allowed = match origin {
        Some(o) => state.config.origin_allowed(o),
        None => by_bearer,
    };
    if !allowed {
        return ApiError::Forbidden(format!(
            "the admin channel accepts connections from {} only",
            state.config.public_url
        ))
        .into_response();
    }
    // The frame too: tungstenite would otherwise buffer a frame of up to 16 MiB, as its
    // header declares, before it counted the message.
    ws.max_message_size(64 * 1024)
        .max_frame_size(64 * 1024)
        .on_upgrade(move |socket| serve(state, access, socket))
}

/// What a command's background work reports to the connection.
enum Report {
    Progress(String, RecoveryProgress),
}

async fn serve(state: ServerState, access: Access, socket: WebSocket) {
    let (mut sink, mut incoming) = socket.split();
    let (out, mut outbox) = mpsc::channel::<Message>(OUTBOX);
    let writer = tokio::spawn(async move {
        while let Some(frame) = outbox.recv().await {
            if sink.send(frame).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let filter = Filter {
        app: access.app(),
        ..Filter::default()
    };
    let mut feed = state.feed.subscribe(filter, None);
    let (report, mut reports) = mpsc::unbounded_channel::<Report>();
    // Deliveries this connection's commands queued, with the command's `req`: their
    // attempts are sent here as they happen.
    let mut watched: HashMap<DeliveryId, String> = HashMap::new();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut silent_pings = 0;
    // The channel closes when its credential ends (an expired or revoked token, a portal
    // link past its time); work already acknowledged goes on.
    let ended = access.ended(&state.pool);
    tokio::pin!(ended);

    loop {
        tokio::select! {
            // Registrations first: a batch's attempts must never be seen before its ids.
            biased;
            () = &mut ended => {
                debug!("admin channel closed: its credential ended");
                break;
            }
            Some(Report::Progress(req, p)) = reports.recv() => {
                for id in &p.batch {
                    watched.insert(*id, req.clone());
                }
                let frame = if p.finished {
                    json!({"req": req, "type": "done", "queued": p.queued})
                } else {
                    json!({"req": req, "type": "progress", "done": p.queued, "total": p.total})
                };
                if send(&out, frame).await.is_err() {
                    break;
                }
            }
            frame = incoming.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        let e = error(None, "bad_request", "frames are JSON text".into());
                        if send(&out, e).await.is_err() { break; }
                        continue;
                    }
                    Some(Ok(Message::Pong(_) | Message::Ping(_))) => {
                        silent_pings = 0;
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                };
                silent_pings = 0;
                let answers = command(&state, &access, text.as_str(), &report, &mut watched).await;
                let mut gone = false;
                for a in answers {
                    if send(&out, a).await.is_err() {
                        gone = true;
                        break;
                    }
                }
                if gone {
                    break;
                }
            }
            item = feed.recv() => {
                let Some(item) = item else { break };
                for e in item.events().iter().filter(|e| e.kind == EventKind::Attempt) {
                    if let Some(frame) = attempt_frame(&e.data, &mut watched)
                        && send(&out, frame).await.is_err()
                    {
                        break;
                    }
                }
            }
            _ = ping.tick() => {
                silent_pings += 1;
                if silent_pings > 3 || out.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(out);
    let _ = writer.await;
    debug!("admin channel closed");
}

async fn send(out: &mpsc::Sender<Message>, frame: Value) -> Result<(), ()> {
    out.send(Message::Text(frame.to_string().into()))
        .await
        .map_err(|_| ())
}

fn error(req: Option<&str>, code: &str, message: String) -> Value {
    json!({"req": req, "type": "error", "code": code, "message": message})
}

/// The attempt frame for a watched delivery, tagged with its command's `req`. A delivery
/// stops being watched once it succeeded or died.
fn attempt_frame(data: &str, watched: &mut HashMap<DeliveryId, String>) -> Option<Value> {
    let Ok(Value::Object(mut attempt)) = serde_json::from_str::<Value>(data) else {
        return None;
    };
    // An earlier, scheduled attempt of the same delivery may still be on its way through
    // the feed: only the replay's own attempts are this command's.
    let trigger = attempt.get("trigger").and_then(Value::as_str);
    if trigger.and_then(AttemptTrigger::parse) != Some(AttemptTrigger::Replay) {
        return None;
    }
    let delivery: DeliveryId = attempt.get("delivery_id")?.as_str()?.parse().ok()?;
    let outcome = attempt.get("outcome").and_then(Value::as_str);
    let req = if outcome.and_then(AttemptOutcome::parse) == Some(AttemptOutcome::Retrying) {
        watched.get(&delivery)?.clone()
    } else {
        watched.remove(&delivery)?
    };
    let mut frame = Map::new();
    frame.insert("type".into(), "attempt".into());
    frame.insert("req".into(), req.into());
    frame.append(&mut attempt);
    Some(Value::Object(frame))
}

/// Runs one command frame; returns the frames to answer with.
async fn command(
    state: &ServerState,
    access: &Access,
    text: &str,
    report: &mpsc::UnboundedSender<Report>,
    watched: &mut HashMap<DeliveryId, String>,
) -> Vec<Value> {
    let frame: Value = match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) => {
            return vec![error(
                None,
                "bad_request",
                "a command is a JSON object".into(),
            )];
        }
        Err(e) => return vec![error(None, "bad_request", format!("not JSON: {e}"))],
    };
    let req = match frame.get("req") {
        Some(Value::String(r)) if !r.is_empty() && r.len() <= 200 => r.clone(),
        _ => {
            return vec![error(
                None,
                "bad_request",
                "every command needs a \"req\": a string of 1 to 200 characters".into(),
            )];
        }
    };
    let fail = |code: &str, message: String| vec![error(Some(&req), code, message)];
    let op = frame.get("op").and_then(Value::as_str).unwrap_or("");
    let field = |name: &str| frame.get(name).and_then(Value::as_str);
    let app = match field("app").map(|a| a.parse::<AppId>()) {
        None => None,
        Some(Ok(app)) => Some(app),
        Some(Err(_)) => return fail("invalid", "app is not an application id".into()),
    };
    // An application-bound credential's commands reach its application only: what belongs
    // to another is not found, as over REST.
    let app = match (access.app(), app) {
        (Some(bound), Some(asked)) if bound != asked => {
            return fail("not_found", "application not found".into());
        }
        (Some(bound), _) => Some(bound),
        (None, asked) => asked,
    };
    // A portal's commands are changes made through it, and count against its limit.
    if access.by == AuthBy::Portal
        && matches!(op, "replay" | "retry" | "recover")
        && let Some(app) = app
        && let Err(blocked) = state.portal_writes.spend(app)
    {
        let secs = blocked.retry_after_secs();
        return fail(
            "too_many_requests",
            format!("too many changes in a short time; retry after {secs} s"),
        );
    }

    match op {
        "replay" => {
            let Some(message) = field("message_id").and_then(|m| m.parse::<MessageId>().ok())
            else {
                return fail("invalid", "replay needs a message_id (msg_…)".into());
            };
            let endpoint = match field("endpoint_id").map(|e| e.parse::<EndpointId>()) {
                None => None,
                Some(Ok(e)) => Some(e),
                Some(Err(_)) => return fail("invalid", "endpoint_id is not an endpoint id".into()),
            };
            let done = actions::replay_message(state, message, app, endpoint).await;
            replayed(&req, done, watched)
        }
        "retry" => {
            let Some(delivery) = field("delivery_id").and_then(|d| d.parse::<DeliveryId>().ok())
            else {
                return fail("invalid", "retry needs a delivery_id (dlv_…)".into());
            };
            let done = async {
                let mut conn = state.pool.acquire().await?;
                replays::retry_delivery(&mut conn, delivery, app).await
            };
            replayed(&req, done.await, watched)
        }
        "recover" => {
            let Some(endpoint) = field("endpoint_id").and_then(|e| e.parse::<EndpointId>().ok())
            else {
                return fail("invalid", "recover needs an endpoint_id (ep_…)".into());
            };
            let Window { since, until } = match Window::parse(field("since"), field("until")) {
                Ok(w) => w,
                Err(message) => return fail("invalid", message),
            };
            let owner = match replays::endpoint_owner(&state.pool, endpoint, app).await {
                Ok(Some(owner)) => owner,
                Ok(None) => return fail("not_found", "endpoint not found".into()),
                Err(e) => return internal(&req, e),
            };
            match state
                .bulk_replays
                .start(owner, endpoint, since, until)
                .await
            {
                Ok(Ok(started)) => {
                    let total = started.recovery.total;
                    let mut progress = started.progress;
                    let report = report.clone();
                    let tag = req.clone();
                    tokio::spawn(async move {
                        while let Some(p) = progress.recv().await {
                            if report.send(Report::Progress(tag.clone(), p)).is_err() {
                                break;
                            }
                        }
                    });
                    vec![
                        json!({"req": req, "type": "ack"}),
                        json!({"req": req, "type": "progress", "done": 0, "total": total}),
                    ]
                }
                Ok(Err(refused)) => fail(refused.code(), refused.message()),
                Err(e) => internal(&req, e),
            }
        }
        "" => fail(
            "unknown_op",
            "a command needs an \"op\": replay, retry or recover".into(),
        ),
        other => fail(
            "unknown_op",
            format!("unknown op {other:?}: use replay, retry or recover"),
        ),
    }
}

fn replayed(
    req: &str,
    done: sqlx::Result<replays::Replayed>,
    watched: &mut HashMap<DeliveryId, String>,
) -> Vec<Value> {
    match done {
        Ok(Ok(queued)) => {
            for id in &queued {
                watched.insert(*id, req.to_owned());
            }
            vec![
                json!({"req": req, "type": "ack"}),
                json!({"req": req, "type": "done", "queued": queued.len()}),
            ]
        }
        Ok(Err(refused)) => vec![error(Some(req), refused.code(), refused.message())],
        Err(e) => internal(req, e),
    }
}

fn internal(req: &str, e: sqlx::Error) -> Vec<Value> {
    tracing::error!(error = %e, "admin command failed");
    vec![error(Some(req), "internal", "internal error".into())]
}
