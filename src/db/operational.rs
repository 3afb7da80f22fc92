//! The operational outbox (migration 0025): facts about customers' endpoints, written by
//! the state changes' own transactions, turned here into messages of the operator's
//! application, a batch per transaction.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use crate::domain::{AppId, EndpointId, redact_userinfo};

/// Facts taken per transaction.
pub const BATCH: i64 = 500;
/// Deliveries listed in one `delivery.dead` or `delivery.recovered` message; `count` says
/// how many there were in all.
pub const LISTED: usize = 50;

/// The kinds sent at most once per endpoint per coalescing window: they repeat with every
/// delivery or every failed batch. The others happen once per change.
pub fn coalesced(kind: &str) -> bool {
    matches!(
        kind,
        "delivery.dead" | "delivery.recovered" | "endpoint.failing"
    )
}

#[derive(Debug, sqlx::FromRow)]
struct Fact {
    id: i64,
    kind: String,
    app_id: AppId,
    app_uid: Option<String>,
    endpoint_id: EndpointId,
    data: Json<Map<String, Value>>,
    created_at: DateTime<Utc>,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dispatched {
    /// Facts taken (sent, or held for their window).
    pub facts: usize,
    /// Messages queued for the operational application.
    pub messages: usize,
}

/// Takes the facts that are due (rows another process holds are skipped), and in the same
/// transaction queues their messages to `operational` (a uid) and deletes them. Facts of a
/// coalesced kind whose endpoint had a message of that kind less than `window` ago are held
/// until the window ends, then go out as one message that counts them. `None` when the
/// operational application does not exist: nothing is taken then.
pub async fn dispatch(
    pool: &PgPool,
    operational: &str,
    window: Duration,
) -> sqlx::Result<Option<Dispatched>> {
    let mut tx = pool.begin().await?;
    let facts: Vec<Fact> = sqlx::query_as(
        "select o.id, o.kind, o.app_id, a.uid as app_uid, o.endpoint_id, o.data, o.created_at
           from operational_event o
           left join application a on a.id = o.app_id
          where o.due_at <= now()
          order by o.due_at, o.id
          limit $1
            for update of o skip locked",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if facts.is_empty() {
        return Ok(Some(Dispatched::default()));
    }
    let mut done = Dispatched {
        facts: facts.len(),
        messages: 0,
    };
    // By endpoint and kind, so notices are locked in one order by every process.
    let mut groups: BTreeMap<(EndpointId, String), Vec<Fact>> = BTreeMap::new();
    for fact in facts {
        groups
            .entry((fact.endpoint_id, fact.kind.clone()))
            .or_default()
            .push(fact);
    }
    let secs = window.as_secs_f64();
    for ((endpoint, kind), facts) in groups {
        let ids: Vec<i64> = facts.iter().map(|f| f.id).collect();
        let payloads = if coalesced(&kind) {
            let held: Option<DateTime<Utc>> = sqlx::query_scalar(
                "select sent_at + make_interval(secs => $3) from operational_notice
                  where endpoint_id = $1 and kind = $2
                    and sent_at > now() - make_interval(secs => $3)
                    for update",
            )
            .bind(endpoint)
            .bind(&kind)
            .bind(secs)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(until) = held {
                sqlx::query("update operational_event set due_at = $2 where id = any($1)")
                    .bind(&ids)
                    .bind(until)
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            sqlx::query(
                "insert into operational_notice (endpoint_id, kind, sent_at)
                 values ($1, $2, now())
                 on conflict (endpoint_id, kind) do update set sent_at = now()",
            )
            .bind(endpoint)
            .bind(&kind)
            .execute(&mut *tx)
            .await?;
            vec![summary(&kind, &facts)]
        } else {
            facts.iter().map(|f| payload(f, &f.data.0)).collect()
        };
        for body in payloads {
            let sent = super::messages::send(
                &mut *tx,
                operational,
                &kind,
                &body.to_string(),
                &[],
                None,
                None,
            )
            .await?;
            if sent.is_none() {
                return Ok(None);
            }
            done.messages += 1;
        }
        sqlx::query("delete from operational_event where id = any($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
    }
    // Notices older than any window are of no use: the next fact is sent either way.
    sqlx::query(
        "delete from operational_notice
          where sent_at < now() - make_interval(secs => $1) - interval '1 hour'",
    )
    .bind(secs)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(done))
}

/// A fact as its message's payload: what every operational message says (the application,
/// the endpoint and its URL without credentials), then the fact's own fields.
fn payload(fact: &Fact, data: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    out.insert("app_id".into(), json!(fact.app_id.to_string()));
    out.insert("app_uid".into(), json!(fact.app_uid));
    out.insert("endpoint_id".into(), json!(fact.endpoint_id.to_string()));
    for (k, v) in data {
        let v = match (k.as_str(), v) {
            ("url", Value::String(url)) => json!(redact_userinfo(url)),
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    Value::Object(out)
}

/// Facts of one coalesced kind for one endpoint as one message: the latest fact's fields,
/// how many facts there were and since when, and, for deliveries, the first [`LISTED`].
fn summary(kind: &str, facts: &[Fact]) -> Value {
    let last = facts.last().expect("a group has a fact");
    let mut body = payload(last, &last.data.0);
    let object = body.as_object_mut().expect("an object");
    object.insert("count".into(), json!(facts.len()));
    object.insert("first_at".into(), json!(facts[0].created_at));
    if kind.starts_with("delivery.") {
        for key in [
            "delivery_id",
            "message_id",
            "event_type",
            "attempts",
            "last_error",
        ] {
            object.remove(key);
        }
        let listed: Vec<Value> = facts
            .iter()
            .take(LISTED)
            .map(|f| {
                let mut d = f.data.0.clone();
                d.remove("url");
                Value::Object(d)
            })
            .collect();
        object.insert("deliveries".into(), Value::Array(listed));
    }
    body
}

/// Names who makes the endpoint changes of `db`'s transaction, for the operational triggers
/// (`endpoint.created`, `.updated`, `.deleted`): `portal`, or `token tok_…`. Transaction
/// local: it ends with the transaction.
pub async fn act_as(db: &mut PgConnection, actor: &str) -> sqlx::Result<()> {
    sqlx::query("select set_config('herald.actor', $1, true)")
        .bind(actor)
        .execute(db)
        .await
        .map(|_| ())
}
