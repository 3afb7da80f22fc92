//! The operational outbox (migration 0025): facts about customers' endpoints, written by
//! the state changes' own transactions, turned here into messages of the operator's
//! application.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{AppId, EndpointId, short_url};

/// Facts looked at per transaction; a coalesced group takes all of its own at once.
pub const BATCH: i64 = 500;
/// Deliveries listed in one `delivery.dead` or `delivery.recovered` message; `count` says
/// how many there were in all.
pub const LISTED: i64 = 50;

/// The kinds sent at most once per endpoint per coalescing window: they repeat with every
/// delivery, every failed batch or every change. The others happen once per change.
pub fn coalesced(kind: &str) -> bool {
    matches!(
        kind,
        "delivery.dead" | "delivery.recovered" | "endpoint.failing" | "endpoint.updated"
    )
}

#[derive(Debug, sqlx::FromRow)]
struct Fact {
    id: i64,
    kind: String,
    target_id: Uuid,
    endpoint_id: EndpointId,
}

/// A fact's fields, or a coalesced group's, as the payload needs them.
#[derive(Debug, sqlx::FromRow)]
struct Told {
    app_id: AppId,
    app_uid: Option<String>,
    /// The (last) fact's own fields.
    data: Json<Map<String, Value>>,
    count: i64,
    first_at: DateTime<Utc>,
    /// The first [`LISTED`] facts' fields (coalesced groups).
    listed: Json<Vec<Map<String, Value>>>,
    /// Every `changed` of the group's `endpoint.updated` facts.
    changed: Json<Vec<Value>>,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dispatched {
    /// Facts looked at (sent, or left for their window).
    pub facts: usize,
    /// Messages queued for the operational applications.
    pub messages: usize,
    /// Facts whose operational application is gone, dropped.
    pub dropped: usize,
}

/// Takes up to [`BATCH`] facts that may go now (rows another process holds are skipped, and
/// so are coalesced kinds whose endpoint had a message of that kind less than `window`
/// ago), and in one transaction queues their messages to the operational application each
/// was recorded for, and deletes them. A coalesced group goes out as one message standing
/// for all of its facts there are, counted.
pub async fn dispatch(pool: &PgPool, window: Duration) -> sqlx::Result<Dispatched> {
    let secs = window.as_secs_f64();
    let mut tx = pool.begin().await?;
    let facts: Vec<Fact> = sqlx::query_as(
        "select o.id, o.kind, o.target_id, o.endpoint_id
           from operational_event o
          where not exists (select 1 from operational_notice n
                             where n.endpoint_id = o.endpoint_id and n.kind = o.kind
                               and n.sent_at > now() - make_interval(secs => $2))
          order by o.id
          limit $1
            for update of o skip locked",
    )
    .bind(BATCH)
    .bind(secs)
    .fetch_all(&mut *tx)
    .await?;
    let mut done = Dispatched {
        facts: facts.len(),
        ..Dispatched::default()
    };
    // By endpoint and kind: every process locks notices in this one order.
    let mut groups: BTreeMap<(EndpointId, String, Uuid), Vec<i64>> = BTreeMap::new();
    for fact in facts {
        groups
            .entry((fact.endpoint_id, fact.kind, fact.target_id))
            .or_default()
            .push(fact.id);
    }
    for ((endpoint, kind, target), ids) in groups {
        let told: Vec<Told> = if coalesced(&kind) {
            // Taken by one process at a time, which checks the window again under the lock.
            sqlx::query(
                "insert into operational_notice (endpoint_id, kind, sent_at)
                 values ($1, $2, '-infinity') on conflict do nothing",
            )
            .bind(endpoint)
            .bind(&kind)
            .execute(&mut *tx)
            .await?;
            let open: bool = sqlx::query_scalar(
                "select sent_at <= now() - make_interval(secs => $3) from operational_notice
                  where endpoint_id = $1 and kind = $2
                    for update",
            )
            .bind(endpoint)
            .bind(&kind)
            .bind(secs)
            .fetch_one(&mut *tx)
            .await?;
            if !open {
                continue;
            }
            // Every fact of the group that no other process holds, deleted and summed up
            // in one statement, however many there are.
            let told: Vec<Told> = sqlx::query_as(
                "with gone as (
                     delete from operational_event
                      where id in (select id from operational_event
                                    where endpoint_id = $1 and kind = $2 and target_id = $3
                                      for update skip locked)
                     returning id, app_id, data, created_at
                 )
                 select g.app_id, a.uid as app_uid, g.data, s.count, s.first_at,
                        coalesce((select jsonb_agg(f.data order by f.id)
                                    from (select id, data from gone order by id limit $4) f),
                                 '[]') as listed,
                        coalesce((select jsonb_agg(distinct c)
                                    from gone, jsonb_array_elements(
                                              coalesce(gone.data->'changed', '[]')) c),
                                 '[]') as changed
                   from (select count(*) as count, min(created_at) as first_at from gone) s
                   join lateral (select * from gone order by id desc limit 1) g on true
                   left join application a on a.id = g.app_id",
            )
            .bind(endpoint)
            .bind(&kind)
            .bind(target)
            .bind(LISTED)
            .fetch_all(&mut *tx)
            .await?;
            if !told.is_empty() {
                sqlx::query(
                    "update operational_notice set sent_at = now()
                      where endpoint_id = $1 and kind = $2",
                )
                .bind(endpoint)
                .bind(&kind)
                .execute(&mut *tx)
                .await?;
            }
            told
        } else {
            sqlx::query_as(
                "with gone as (delete from operational_event where id = any($1)
                               returning id, app_id, data, created_at)
                 select g.app_id, a.uid as app_uid, g.data, 1::int8 as count,
                        g.created_at as first_at, '[]'::jsonb as listed,
                        '[]'::jsonb as changed
                   from gone g left join application a on a.id = g.app_id
                  order by g.id",
            )
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
        };
        for told in told {
            let body = payload(&kind, endpoint, told);
            let sent = super::messages::send(
                &mut *tx,
                &AppId(target).to_string(),
                &kind,
                &body.to_string(),
                &[],
                None,
                None,
            )
            .await?;
            if sent.is_some() {
                done.messages += 1;
            } else {
                // Its application was removed since: nobody is left to tell.
                done.dropped += 1;
            }
        }
    }
    tx.commit().await?;
    Ok(done)
}

/// Drops notices older than any window (the next fact goes out either way), skipping any a
/// dispatcher holds; its own transaction.
pub async fn prune_notices(pool: &PgPool, window: Duration) -> sqlx::Result<u64> {
    sqlx::query(
        "delete from operational_notice
          where (endpoint_id, kind) in (
                select endpoint_id, kind from operational_notice
                 where sent_at < now() - make_interval(secs => $1) - interval '1 hour'
                 limit 1000
                   for update skip locked)",
    )
    .bind(window.as_secs_f64())
    .execute(pool)
    .await
    .map(|done| done.rows_affected())
}

/// A fact (or a coalesced group) as its message's payload: what every operational message
/// says (the application, the endpoint and its URL as lists show it), then the fact's own
/// fields; for a coalesced kind, how many facts it stands for and since when, and for
/// deliveries the first [`LISTED`] of them.
fn payload(kind: &str, endpoint: EndpointId, told: Told) -> Value {
    let mut out = Map::new();
    out.insert("app_id".into(), json!(told.app_id.to_string()));
    out.insert("app_uid".into(), json!(told.app_uid));
    out.insert("endpoint_id".into(), json!(endpoint.to_string()));
    for (k, v) in told.data.0 {
        let v = match (k.as_str(), v) {
            ("url", Value::String(url)) => json!(short_url(&url)),
            (_, v) => v,
        };
        out.insert(k, v);
    }
    if coalesced(kind) {
        out.insert("count".into(), json!(told.count));
        out.insert("first_at".into(), json!(told.first_at));
    }
    if kind.starts_with("delivery.") {
        for key in [
            "delivery_id",
            "message_id",
            "event_type",
            "attempts",
            "last_error",
        ] {
            out.remove(key);
        }
        let listed = told
            .listed
            .0
            .into_iter()
            .map(|mut d| {
                d.remove("url");
                Value::Object(d)
            })
            .collect();
        out.insert("deliveries".into(), Value::Array(listed));
    }
    if kind == "endpoint.updated" {
        out.insert("changed".into(), Value::Array(told.changed.0));
    }
    Value::Object(out)
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
