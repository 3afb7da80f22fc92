//! One attempt at one delivery: the envelope, the headers and their signature, the request,
//! the response (status, `Retry-After`, the start of the body) or why none came, and the
//! completion that records the verdict.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Shared;
use super::capacity::Held;
use crate::db;
use crate::db::deliveries::{AttemptRecord, Claimed, Completion, EndpointEffect};
use crate::delivery::client;
use crate::delivery::outcome::parse_retry_after;
use crate::delivery::signature::signature_header;
use crate::delivery::{Verdict, decide};
use crate::domain::{AttemptId, AttemptOutcome, DeliveryState, SigningSecret, refused_header};

/// Bytes of a response body kept on the attempt.
const RESPONSE_BODY_LIMIT: usize = 4096;

impl Shared {
    /// Sends a held delivery on its own task, in a span naming it, on the worker `permit`.
    pub(super) fn spawn_delivery(self: &Arc<Self>, held: Held, permit: OwnedSemaphorePermit) {
        let row = &held.row;
        let span = info_span!("deliver", message_id = %row.message_id,
            endpoint_id = %row.endpoint_id, attempt = row.attempt_count);
        self.tasks
            .spawn(self.clone().deliver(held, permit).instrument(span));
    }

    /// Attempts the delivery (or ends it unsent) and queues its completion.
    async fn deliver(self: Arc<Self>, held: Held, _permit: OwnedSemaphorePermit) {
        let row = &held.row;
        let completion = if row.disabled {
            let reason = row.disabled_reason.as_deref().unwrap_or("disabled");
            unsent(row, format!("endpoint disabled: {reason}"))
        } else if row.payload_erased {
            // Like a disabled endpoint: nothing is sent, and the delivery ends with why.
            unsent(row, db::messages::PAYLOAD_ERASED.to_owned())
        } else {
            self.attempt(row).await
        };
        // The request is over: from now on the claim counts it out of the endpoint's room,
        // though the row stays in flight until the completer writes it. If the endpoint
        // was left full, a claim may take its next rows now rather than after that write.
        let endpoint = held.row.endpoint_id;
        self.finished
            .lock()
            .expect("finished set poisoned")
            .insert(held.row.id);
        drop(held);
        if self.capacity.uncap_one(endpoint) {
            self.wake.notify_one();
        }
        if self.done.send(completion).await.is_err() {
            warn!("completer gone; the lease will expire and the delivery will be retried");
        }
    }

    async fn attempt(&self, row: &Claimed) -> Completion {
        let started_at = Utc::now();
        let clock = Instant::now();
        let result = self.send(row, started_at.timestamp()).await;
        let took = clock.elapsed();
        let duration_ms = i32::try_from(took.as_millis()).unwrap_or(i32::MAX);

        let (status, retry_after, body, failure) = match result {
            Ok(r) => {
                let failure = match r.status {
                    200..=299 => None,
                    300..=399 => Some((
                        "redirect",
                        format!("HTTP {} (redirects are not followed)", r.status),
                    )),
                    s => Some(("http_status", format!("HTTP {s}"))),
                };
                (Some(r.status), r.retry_after, Some(r.body), failure)
            }
            Err(f) => (None, None, None, Some((f.kind, f.message))),
        };
        let verdict = decide(
            status,
            retry_after,
            row.attempt_count - row.retry_base,
            &self.settings.retry_schedule,
        );
        let (state, outcome, next_attempt_at, effect) = match verdict {
            Verdict::Succeeded => (
                DeliveryState::Succeeded,
                AttemptOutcome::Succeeded,
                None,
                EndpointEffect::Succeeded,
            ),
            Verdict::Retry(delay) => (
                DeliveryState::Pending,
                AttemptOutcome::Retrying,
                Some(Utc::now() + delay),
                EndpointEffect::Failed,
            ),
            Verdict::Dead => (
                DeliveryState::Dead,
                AttemptOutcome::Dead,
                None,
                EndpointEffect::Failed,
            ),
            Verdict::Gone => (
                DeliveryState::Dead,
                AttemptOutcome::Dead,
                None,
                EndpointEffect::Gone,
            ),
        };
        let (error_kind, error) = match failure {
            Some((kind, message)) => (Some(kind), Some(message)),
            None => (None, None),
        };
        self.metrics.record_attempt(outcome, took);
        match verdict {
            Verdict::Succeeded => debug!(status, duration_ms, "delivered"),
            _ => info!(
                status,
                duration_ms,
                error = error.as_deref(),
                outcome = outcome.as_str(),
                "attempt failed"
            ),
        }
        Completion {
            state,
            next_attempt_at,
            last_error: error.clone(),
            attempt: Some(AttemptRecord {
                id: AttemptId::new(),
                trigger: row.trigger,
                outcome,
                response_status: status.map(i32::from),
                response_body: body,
                error_kind,
                error,
                duration_ms,
                started_at,
            }),
            endpoint_effect: effect,
            ..completion_base(row)
        }
    }

    /// Whether the URL `row` is sent to is the endpoint's current one and was set through the
    /// API (not by a portal customer), read now: asked only when private targets are allowed
    /// to the operator but not to the portal. A URL changed since the claim, or a database
    /// that does not answer, counts as the portal's: the attempt then reaches public
    /// addresses only, and at worst fails as `blocked` and is retried.
    async fn url_set_by_operator(&self, row: &Claimed) -> bool {
        sqlx::query_scalar::<_, bool>(
            "select not url_by_portal from endpoint where id = $1 and url = $2",
        )
        .bind(row.endpoint_id)
        .bind(&row.url)
        .fetch_optional(&self.pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
    }

    async fn send(&self, row: &Claimed, timestamp: i64) -> Result<Response, Failure> {
        let url = reqwest::Url::parse(&row.url).map_err(|e| Failure {
            kind: "invalid_url",
            message: e.to_string(),
        })?;
        let (client, public_only) = match &self.portal_client {
            None => (&self.client, !self.settings.allow_private_targets),
            Some(portal) if !self.url_set_by_operator(row).await => (portal, true),
            Some(_) => (&self.client, false),
        };
        if public_only {
            client::refuse_private_literal(&url).map_err(|e| Failure {
                kind: "blocked",
                message: e.to_string(),
            })?;
        }
        let body = envelope(row);
        let msg_id = row.message_id.to_string();
        let secrets: Vec<SigningSecret> = row
            .secrets
            .iter()
            .filter_map(|s| SigningSecret::parse(s).ok())
            .collect();
        let mut headers = HeaderMap::new();
        // Rows stored before a header rule existed may still carry what it refuses.
        for (name, value) in row
            .headers
            .iter()
            .filter(|(n, _)| refused_header(n).is_none())
        {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("webhook-id", header_value(&msg_id));
        headers.insert("webhook-timestamp", header_value(&timestamp.to_string()));
        headers.insert(
            "webhook-signature",
            header_value(&signature_header(
                &secrets,
                &msg_id,
                timestamp,
                body.as_bytes(),
            )),
        );

        let mut response = client
            .post(url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(Failure::from_reqwest)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let mut kept = Vec::new();
        while kept.len() < RESPONSE_BODY_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = RESPONSE_BODY_LIMIT - kept.len();
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                // The status already decided the attempt; a body cut short changes nothing.
                Ok(None) | Err(_) => break,
            }
        }
        let body = String::from_utf8_lossy(&kept).replace('\0', "");
        Ok(Response {
            status,
            retry_after,
            body,
        })
    }
}

struct Response {
    status: u16,
    retry_after: Option<Duration>,
    body: String,
}

/// Why no response arrived.
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    fn from_reqwest(e: reqwest::Error) -> Self {
        // reqwest's text names the URL, and a webhook URL is often a credential itself
        // (Slack's and Discord's carry the key in the path): the endpoint is named by id,
        // in the span, and never by its URL, in the log or in the stored error.
        let e = e.without_url();
        let chain = error_chain(&e);
        let kind = if client::is_blocked(&e) {
            "blocked"
        } else if e.is_timeout() {
            "timeout"
        } else if chain.contains("certificate") || chain.contains("tls") || chain.contains("ssl") {
            "tls"
        } else if e.is_connect() {
            "connect"
        } else {
            "request"
        };
        Self {
            kind,
            message: chain,
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut current = e.source();
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ").to_lowercase()
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("ids, timestamps and signatures are ASCII")
}

/// The exact bytes that are signed and sent:
/// `{"type":<event_type>,"timestamp":<RFC 3339>,"data":<payload as given>}`.
fn envelope(row: &Claimed) -> String {
    let event_type = serde_json::to_string(&row.event_type).expect("a string serialises");
    let timestamp = row
        .message_created_at
        .to_rfc3339_opts(SecondsFormat::Micros, true);
    format!(
        r#"{{"type":{event_type},"timestamp":"{timestamp}","data":{}}}"#,
        row.payload
    )
}

/// A delivery that ends without an attempt, dead, with why.
fn unsent(row: &Claimed, why: String) -> Completion {
    Completion {
        state: DeliveryState::Dead,
        last_error: Some(why),
        ..completion_base(row)
    }
}

fn completion_base(row: &Claimed) -> Completion {
    Completion {
        delivery_id: row.id,
        attempt_count: row.attempt_count,
        message_id: row.message_id,
        endpoint_id: row.endpoint_id,
        app_id: row.app_id,
        state: DeliveryState::Pending,
        next_attempt_at: None,
        last_error: None,
        attempt: None,
        endpoint_effect: EndpointEffect::None,
    }
}
