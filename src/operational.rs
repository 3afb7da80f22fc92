//! Operational webhooks: what happens to customers' endpoints, sent to the operator's own
//! application (`HERALD_OPERATIONAL_APP`) as ordinary messages, signed, retried and shown
//! like any other.
//!
//! The facts are written by the state changes' own transactions (triggers of migration
//! 0025, into `operational_event`); every process runs a dispatcher that turns them into
//! messages ([`db::operational::dispatch`]), woken by the triggers' NOTIFY and every few
//! seconds. Repeats are coalesced: `delivery.dead`, `delivery.recovered`,
//! `endpoint.failing` and `endpoint.updated` go out at most once per endpoint per
//! `HERALD_OPERATIONAL_COALESCE` (default 1 minute); what happens meanwhile waits for the
//! window's end and goes out then, as one message with `count`, `first_at` and, for
//! deliveries, the first 50 of them.
//!
//! Herald's own event types are written into the catalog at start, with their schemas, so
//! the operator's tooling sees their payloads as it sees any other type's.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db;

/// The channel the triggers notify.
const CHANNEL: &str = "herald_operational";
/// How often a dispatcher looks without being woken (facts held for their window, facts
/// of a process that stopped, notices missed while reconnecting).
const POLL: Duration = Duration::from_secs(2);
/// How often old notices are pruned.
const PRUNE: Duration = Duration::from_secs(600);
/// How long a wake-up waits for more facts to come, so that a burst of them (a disabled
/// endpoint's backlog dying) is one pass.
const GATHER: Duration = Duration::from_millis(100);

/// Runs this process's dispatcher until `cancel`, if operational webhooks are on.
pub fn spawn(database_url: String, pool: PgPool, window: Duration, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut listener = None;
        let mut last_prune = std::time::Instant::now();
        loop {
            if listener.is_none() {
                match sqlx::postgres::PgListener::connect(&database_url).await {
                    Ok(mut l) => {
                        if l.listen(CHANNEL).await.is_ok() {
                            listener = Some(l);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "operational dispatcher cannot listen"),
                }
            }
            loop {
                match db::operational::dispatch(&pool, window).await {
                    Ok(done) => {
                        if done.dropped > 0 {
                            tracing::warn!(
                                facts = done.dropped,
                                "operational events dropped: their operational application \
                                 was removed"
                            );
                        }
                        if done.facts < db::operational::BATCH as usize {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "operational dispatch failed; retrying");
                        break;
                    }
                }
            }
            if last_prune.elapsed() > PRUNE {
                last_prune = std::time::Instant::now();
                if let Err(e) = db::operational::prune_notices(&pool, window).await {
                    tracing::warn!(error = %e, "pruning operational notices failed");
                }
            }
            let woken = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                woke = tokio::time::timeout(POLL, woken) => {
                    if let Ok(Err(_)) = woke {
                        listener = None;
                    }
                    tokio::time::sleep(GATHER).await;
                }
            }
        }
    });
}

/// Description prefix of Herald's own event types: what [`install_event_types`] may
/// overwrite (an operator's type of the same name is left alone).
pub const OWN: &str = "Herald operational event:";

/// Writes Herald's operational event types into the catalog, or brings them up to date;
/// returns whether anything changed.
pub async fn install_event_types(pool: &PgPool) -> sqlx::Result<bool> {
    let mut changed = false;
    for (name, description, schema, example) in event_types() {
        let description = format!("{OWN} {description}");
        let done = sqlx::query(
            "insert into event_type as t (name, description, schema, examples)
             values ($1, $2, $3, jsonb_build_array($4::jsonb))
             on conflict (name) do update
                set description = excluded.description, schema = excluded.schema,
                    examples = excluded.examples, updated_at = now()
              where t.description like $5 || '%'
                and (t.description, t.schema, t.examples)
                    is distinct from (excluded.description, excluded.schema, excluded.examples)",
        )
        .bind(name)
        .bind(&description)
        .bind(sqlx::types::Json(&schema))
        .bind(sqlx::types::Json(&example))
        .bind(OWN)
        .execute(pool)
        .await?;
        changed |= done.rows_affected() > 0;
    }
    if changed {
        crate::catalog::announce(pool).await?;
    }
    Ok(changed)
}

/// Name, description, JSON Schema and an example of each operational event type.
pub fn event_types() -> Vec<(&'static str, &'static str, Value, Value)> {
    let id =
        |prefix: &str| json!({"type": "string", "pattern": format!("^{prefix}_[0-9a-f]{{32}}$")});
    let time = json!({"type": "string", "format": "date-time"});
    let common = |extra: Value, required: &[&str]| -> Value {
        let mut properties = json!({
            "app_id": id("app"),
            "app_uid": {"type": ["string", "null"]},
            "endpoint_id": id("ep"),
            "url": {"type": "string", "description": "The endpoint's URL, without credentials."},
            "at": time.clone(),
        });
        properties
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let mut all = vec!["app_id", "app_uid", "endpoint_id", "url", "at"];
        all.extend_from_slice(required);
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": all,
            "properties": properties,
        })
    };
    let coalesced = json!({
        "count": {"type": "integer", "minimum": 1,
                  "description": "Facts this message stands for: repeats within the coalescing window are sent together."},
        "first_at": time.clone(),
    });
    let by = json!({"type": ["string", "null"],
                    "description": "`portal`, or `token tok_…`: who made the change."});
    let endpoint = json!({
        "type": "object",
        "required": ["description", "event_types", "channels", "disabled"],
        "properties": {
            "description": {"type": "string"},
            "event_types": {"type": "array", "items": {"type": "string"}},
            "channels": {"type": "array", "items": {"type": "string"}},
            "filter": {"type": ["object", "null"]},
            "disabled": {"type": "boolean"},
            "rate_limit": {"type": ["integer", "null"]},
            "max_in_flight": {"type": ["integer", "null"]},
        }
    });
    let delivery = json!({
        "type": "object",
        "required": ["delivery_id", "message_id", "event_type", "attempts", "at"],
        "properties": {
            "delivery_id": id("dlv"),
            "message_id": id("msg"),
            "event_type": {"type": "string"},
            "attempts": {"type": "integer"},
            "last_error": {"type": ["string", "null"]},
            "at": time.clone(),
        }
    });
    let deliveries = |extra: &Value| {
        let mut p = coalesced.clone();
        p.as_object_mut().unwrap().extend(
            json!({"deliveries": {"type": "array", "items": delivery.clone(), "maxItems": db::operational::LISTED}})
                .as_object()
                .unwrap()
                .clone(),
        );
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };
    let base = json!({
        "app_id": "app_0193d2e0c8a97d3e9b1f2a4c5d6e7f80",
        "app_uid": "acme",
        "endpoint_id": "ep_0193d2e0c8a97d3e9b1f2a4c5d6e7f81",
        "url": "https://customer.example/webhooks",
        "at": "2026-12-02T10:00:00Z",
    });
    let with = |extra: Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let shown = json!({"description": "", "event_types": ["invoice.*"], "channels": [],
                       "filter": null, "disabled": false, "rate_limit": null, "max_in_flight": null});
    let a_delivery = json!({"delivery_id": "dlv_0193d2e0c8a97d3e9b1f2a4c5d6e7f82",
                            "message_id": "msg_0193d2e0c8a97d3e9b1f2a4c5d6e7f83",
                            "event_type": "invoice.paid", "attempts": 8,
                            "last_error": "HTTP 500", "at": "2026-12-02T10:00:00Z"});
    vec![
        (
            "endpoint.disabled",
            "a customer's endpoint was disabled: by Herald (failing continuously, or 410 Gone), by a customer or by the operator.",
            common(
                json!({"reason": {"type": ["string", "null"]}, "by": by.clone()}),
                &["reason"],
            ),
            with(json!({"reason": "failing continuously since 2026-11-27T10:00:00Z", "by": null})),
        ),
        (
            "endpoint.failing",
            "a customer's endpoint that was not failing failed (`why`: `first_failure`: its first failure, the first after a success, or the first after it was enabled again), or at least HERALD_OPERATIONAL_FAILING_SHARE of its attempts in the current minute and the four before failed (`failure_share`). Coalesced.",
            common(
                {
                    let mut p = coalesced.clone();
                    p.as_object_mut().unwrap().extend(
                        json!({
                            "why": {"enum": ["first_failure", "failure_share"]},
                            "failing_since": {"type": ["string", "null"], "format": "date-time"},
                            "failed": {"type": "integer"},
                            "attempts": {"type": "integer"},
                        })
                        .as_object()
                        .unwrap()
                        .clone(),
                    );
                    p
                },
                &["why", "count", "first_at"],
            ),
            with(
                json!({"why": "first_failure", "failing_since": "2026-12-02T10:00:00Z",
                        "count": 1, "first_at": "2026-12-02T10:00:00Z"}),
            ),
        ),
        (
            "delivery.dead",
            "deliveries to a customer's endpoint exhausted their retries. Coalesced: `count` deliveries, the first 50 listed. (A disabled endpoint's deliveries are not told one by one: endpoint.disabled says it.)",
            common(deliveries(&json!({})), &["count", "first_at", "deliveries"]),
            with(json!({"count": 1, "first_at": "2026-12-02T10:00:00Z",
                        "deliveries": [a_delivery.clone()]})),
        ),
        (
            "delivery.recovered",
            "deliveries to a customer's endpoint succeeded after a failed attempt. Coalesced as delivery.dead is.",
            common(deliveries(&json!({})), &["count", "first_at", "deliveries"]),
            with(json!({"count": 1, "first_at": "2026-12-02T10:00:00Z",
                        "deliveries": [a_delivery]})),
        ),
        (
            "endpoint.created",
            "a customer created an endpoint, through the portal or with an API token.",
            common(
                json!({"by": by.clone(), "endpoint": endpoint.clone()}),
                &["by", "endpoint"],
            ),
            with(json!({"by": "portal", "endpoint": shown.clone()})),
        ),
        (
            "endpoint.updated",
            "a customer changed an endpoint, through the portal or with an API token; `changed` names the settings, `endpoint` shows them after the last change. Coalesced: `count` changes, `changed` all that they changed.",
            common(
                {
                    let mut p = coalesced.clone();
                    p.as_object_mut().unwrap().extend(
                        json!({"by": by.clone(), "endpoint": endpoint.clone(),
                               "changed": {"type": "array", "items": {"type": "string"}}})
                        .as_object()
                        .unwrap()
                        .clone(),
                    );
                    p
                },
                &["by", "endpoint", "changed", "count", "first_at"],
            ),
            with(json!({"by": "token tok_0193d2e0c8a97d3e9b1f2a4c5d6e7f84",
                        "endpoint": shown.clone(), "changed": ["event_types"],
                        "count": 1, "first_at": "2026-12-02T10:00:00Z"})),
        ),
        (
            "endpoint.deleted",
            "a customer deleted an endpoint, through the portal or with an API token.",
            common(json!({"by": by, "endpoint": endpoint}), &["by", "endpoint"]),
            with(json!({"by": "portal", "endpoint": shown})),
        ),
    ]
}
