//! Deleting an application or an endpoint: the answer comes at once and says what was
//! queued; from then on it is not found and nothing more is sent to it; its history goes
//! in the background, a batch of at most a thousand rows of each kind per transaction,
//! with nothing of it left and nothing of another tenant's touched.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Receiver, TOKEN, TestServer, all_delivered, spawn_app, spawn_app_on};

const WAIT: Duration = Duration::from_secs(10);

/// Adds `n` delivered messages to `endpoint`, each with its delivery and attempt, in SQL.
async fn fill(pool: &PgPool, app: &str, endpoint: &str, n: i64) {
    sqlx::query(
        "with m as (
             insert into herald.message (id, app_id, event_type, payload)
             select herald.uuid_v7(), substring($1 from 5)::uuid, 'filled', '{}'
               from generate_series(1, $3)
             returning id, app_id),
         d as (
             insert into herald.delivery (id, message_id, endpoint_id, state, attempt_count)
             select herald.uuid_v7_at(m.id), m.id, substring($2 from 4)::uuid, 'succeeded', 1
               from m
             returning id, message_id, endpoint_id)
         insert into herald.attempt (delivery_id, message_id, endpoint_id, app_id, attempt,
                                     trigger, outcome, response_status, duration_ms,
                                     created_at)
         select d.id, d.message_id, d.endpoint_id, m.app_id, 1, 'scheduled', 'succeeded', 200,
                1, now()
           from d join m on m.id = d.message_id",
    )
    .bind(app)
    .bind(endpoint)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// What the database still holds of an application and its endpoints, table by table.
async fn rows_of(pool: &PgPool, app: &str, endpoints: &[&str]) -> Vec<(&'static str, i64)> {
    let endpoints: Vec<uuid::Uuid> = endpoints
        .iter()
        .map(|e| uuid::Uuid::parse_str(&e[3..]).unwrap())
        .collect();
    let mut found = vec![];
    for (table, sql) in [
        (
            "application",
            "select count(*) from herald.application where id = $1",
        ),
        (
            "message",
            "select count(*) from herald.message where app_id = $1",
        ),
        (
            "idempotency_key",
            "select count(*) from herald.idempotency_key where app_id = $1",
        ),
        (
            "endpoint",
            "select count(*) from herald.endpoint where id = any($2)",
        ),
        (
            "delivery",
            "select count(*) from herald.delivery where endpoint_id = any($2)",
        ),
        (
            "attempt",
            "select count(*) from herald.attempt where endpoint_id = any($2)",
        ),
        (
            "attempt_minute",
            "select count(*) from herald.attempt_minute where endpoint_id = any($2)",
        ),
    ] {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(uuid::Uuid::parse_str(&app[4..]).unwrap())
            .bind(&endpoints)
            .fetch_one(pool)
            .await
            .unwrap();
        found.push((table, n));
    }
    found
}

async fn send_keyed(app: &TestServer, to: &str, key: &str) -> Value {
    let (status, msg) = crate::helpers::answer(
        app.http
            .post(app.url(&format!("/apps/{to}/messages")))
            .bearer_auth(TOKEN)
            .header("idempotency-key", key)
            .json(&json!({"event_type": "order.paid", "payload": {}}))
            .send()
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{msg}");
    msg
}

async fn finished(app: &TestServer, removal: &Value, within: Duration) -> Value {
    let path = format!("/removals/{}", removal["id"].as_str().unwrap());
    let deadline = Instant::now() + within;
    loop {
        let (status, now) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{now}");
        if now["state"] == "done" {
            assert!(now["finished_at"].is_string(), "{now}");
            return now;
        }
        assert!(Instant::now() < deadline, "removal not finished: {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two processes share the database, so both removers are at it: the counts must still be
/// exact (each batch holds the removal's row).
#[tokio::test]
async fn removing_an_application_hides_it_at_once_and_deletes_its_history_in_batches() {
    let receiver = Receiver::start().await;
    let one = spawn_app().await;
    let two = spawn_app_on(one.db_url.clone(), &[]).await;
    let (status, created) = one
        .post("/apps", json!({"name": "Acme", "uid": "acme"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let app = created["id"].as_str().unwrap().to_owned();
    let (ep, _) = one
        .create_endpoint(&app, json!({"url": receiver.url()}))
        .await;
    let (other, other_ep, _) = one.app_with_endpoint(&receiver).await;

    // One message through the API, with a key; 2,500 more of history in SQL.
    let keyed = send_keyed(&one, "acme", "order-1").await;
    let msg = keyed["id"].as_str().unwrap();
    one.wait_for_message(&app, msg, WAIT, all_delivered).await;
    fill(&one.pool, &app, &ep, 2_500).await;
    fill(&one.pool, &other, &other_ep, 10).await;
    let others_before = rows_of(&one.pool, &other, &[&other_ep]).await;

    let (status, removal) = one.delete("/apps/acme").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{removal}");
    assert!(removal["id"].as_str().unwrap().starts_with("rmv_"));
    assert_eq!(removal["app_id"], app.as_str());
    assert_eq!(removal["endpoint_id"], Value::Null);
    assert_eq!(
        removal["state"], "queued",
        "the request removes nothing itself"
    );
    assert_eq!(
        removal["removed"],
        json!({"messages": 0, "deliveries": 0, "attempts": 0})
    );

    // Gone at once, by id and uid, for every route and for the SQL send.
    for path in [
        "/apps/acme".to_owned(),
        format!("/apps/{app}"),
        format!("/apps/{app}/endpoints/{ep}"),
        format!("/apps/{app}/messages/{msg}"),
    ] {
        assert_eq!(one.get(&path).await.0, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) = one
        .post(
            &format!("/apps/{app}/messages"),
            json!({"event_type": "order.paid", "payload": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let sent = sqlx::query("select herald.send_message($1, 'order.paid', '{}')")
        .bind(&app)
        .execute(&one.pool)
        .await;
    assert!(
        sent.is_err(),
        "a send in SQL to a removed application fails"
    );
    let (_, apps) = one.get("/apps").await;
    assert!(
        apps["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["id"] != app.as_str()),
        "{apps}"
    );
    assert_eq!(one.delete("/apps/acme").await.0, StatusCode::NOT_FOUND);

    // The uid is free for a new application, whose key starts afresh.
    let (status, again) = one
        .post("/apps", json!({"name": "Acme again", "uid": "acme"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_ne!(again["id"], app.as_str());

    let done = finished(&one, &removal, Duration::from_secs(60)).await;
    assert_eq!(
        done["removed"],
        json!({"messages": 2_501, "deliveries": 2_501, "attempts": 2_501}),
        "{done}"
    );
    // 2,501 rows of each kind at most 1,000 per batch.
    assert!(done["batches"].as_i64().unwrap() >= 3, "{done}");
    for (table, n) in rows_of(&one.pool, &app, &[&ep]).await {
        assert_eq!(n, 0, "{table} still holds the removed application's rows");
    }
    assert_eq!(
        rows_of(&one.pool, &other, &[&other_ep]).await,
        others_before
    );
    let (_, dashboard_apps) = two.get("/apps").await;
    assert_eq!(dashboard_apps["data"].as_array().unwrap().len(), 2);

    let resent = send_keyed(&one, "acme", "order-1").await;
    assert_ne!(resent["id"], msg, "the new application's key is its own");
    two.stop().await;
    one.stop().await;
}

/// The endpoint's request that is under way when it is removed completes (it cannot be
/// called back), and its attempt is removed after it; the next deliveries are never sent.
/// The application's messages and its other endpoint's deliveries stay.
#[tokio::test]
async fn removing_an_endpoint_waits_for_its_request_in_flight_and_sends_nothing_more() {
    let slow = Receiver::slow(Duration::from_secs(2)).await;
    let fast = Receiver::start().await;
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let (gone, _) = app
        .create_endpoint(&app_id, json!({"url": slow.url(), "max_in_flight": 1}))
        .await;
    let (kept, _) = app
        .create_endpoint(&app_id, json!({"url": fast.url()}))
        .await;
    let mut messages = vec![];
    for i in 0..3 {
        messages.push(app.send(&app_id, "order.paid", json!({"n": i})).await);
    }
    slow.wait_for(1, WAIT).await;
    fast.wait_for(3, WAIT).await;

    let (status, removal) = app
        .delete(&format!("/apps/{app_id}/endpoints/{gone}"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{removal}");
    assert_eq!(removal["endpoint_id"], gone.as_str());
    assert_eq!(removal["state"], "queued");
    let (status, _) = app.get(&format!("/apps/{app_id}/endpoints/{gone}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = app.get(&format!("/apps/{app_id}/endpoints")).await;
    let listed: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [kept.as_str()]);

    let done = finished(&app, &removal, Duration::from_secs(30)).await;
    assert_eq!(
        done["removed"],
        json!({"messages": 0, "deliveries": 3, "attempts": 1}),
        "the attempt of the request that was in flight goes too: {done}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(slow.count(), 1, "nothing was sent after the removal");
    for (table, n) in rows_of(&app.pool, &app_id, &[&gone]).await {
        let expected = match table {
            "application" => 1,
            "message" => 3,
            _ => 0,
        };
        assert_eq!(n, expected, "{table}");
    }
    for msg in &messages {
        let (status, m) = app.get(&format!("/apps/{app_id}/messages/{msg}")).await;
        assert_eq!(status, StatusCode::OK);
        let deliveries = m["deliveries"].as_array().unwrap();
        assert_eq!(deliveries.len(), 1, "{m}");
        assert_eq!(deliveries[0]["endpoint_id"], kept.as_str());
        assert_eq!(deliveries[0]["state"], "succeeded");
    }
    let (status, _) = app.get("/removals/rmv_nonsense").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}
