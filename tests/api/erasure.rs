//! `DELETE /apps/{app}/messages/{msg}/payload`: the payload and the attempts' response
//! bodies go, the history stays, and nothing of the message is ever sent again.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::dashboard::Browser;
use crate::helpers::{
    Receiver, Reply, SseClient, TOKEN, TestServer, all_dead, all_delivered, spawn_app,
    spawn_app_with,
};

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "4242-4242-4242-4242";

async fn erase(app: &TestServer, app_id: &str, msg: &str) -> (StatusCode, Value) {
    crate::helpers::answer(
        app.http
            .delete(app.url(&format!("/apps/{app_id}/messages/{msg}/payload")))
            .bearer_auth(TOKEN)
            .send()
            .await,
    )
    .await
}

/// Rows anywhere in the database that still hold the secret, table by table.
async fn secret_rows(app: &TestServer) -> Vec<(String, i64)> {
    let mut found = vec![];
    for table in ["message", "delivery", "attempt", "event"] {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select count(*) from herald.{table} t where row_to_json(t)::text like '%' || $1 || '%'"
        )))
        .bind(SECRET)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if n > 0 {
            found.push((table.to_owned(), n));
        }
    }
    found
}

#[tokio::test]
async fn an_erased_message_keeps_its_history_and_shows_its_payload_nowhere() {
    let app = spawn_app().await;
    // The first message is not erased, and its receipt holds nothing secret.
    let receiver = Receiver::with(Arc::new(|n| {
        Reply::status(200).with_body(match n {
            0 => "receipt".to_owned(),
            _ => format!("receipt for card {SECRET}"),
        })
    }))
    .await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;

    // A position in the feed from before the message: where a client resumes from.
    let mut live = SseClient::connect(&app, &format!("app={app_id}"), None).await;
    let before = app.send(&app_id, "card.saved", json!({"n": 0})).await;
    let events = live
        .collect_until(WAIT, |got| got.iter().any(|e| e.event == "message.created"))
        .await;
    let resume_from = events.last().unwrap().id.clone().unwrap();
    drop(live);

    let msg = app
        .send(&app_id, "card.saved", json!({"card": SECRET}))
        .await;
    app.wait_for_message(&app_id, &msg, WAIT, all_delivered)
        .await;
    assert_eq!(
        app.attempts(&app_id, &msg).await[0]["response_body"],
        format!("receipt for card {SECRET}")
    );

    let (status, erased) = erase(&app, &app_id, &msg).await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    assert_eq!(erased["message_id"], msg.as_str());
    assert_eq!(erased["attempt_bodies_erased"], 1);
    assert_eq!(erased["deliveries_stopped"], 0);
    let erased_at = erased["payload_erased_at"].as_str().unwrap().to_owned();
    chrono::DateTime::parse_from_rfc3339(&erased_at).unwrap();

    // The API: the payload is null and says since when; the history is all there.
    let (_, m) = app.get(&format!("/apps/{app_id}/messages/{msg}")).await;
    assert_eq!(m["payload"], Value::Null, "{m}");
    assert_eq!(m["payload_erased_at"], erased_at.as_str());
    assert_eq!(m["event_type"], "card.saved");
    assert!(m["created_at"].is_string());
    assert_eq!(m["deliveries"][0]["state"], "succeeded");
    assert_eq!(m["deliveries"][0]["endpoint_id"], ep.as_str());
    let attempts = app.attempts(&app_id, &msg).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["response_status"], 200);
    assert_eq!(attempts[0]["outcome"], "succeeded");
    assert_eq!(attempts[0]["response_body"], Value::Null);
    assert!(attempts[0]["duration_ms"].is_number());
    let (_, list) = app.get(&format!("/apps/{app_id}/messages")).await;
    let listed: Vec<(Value, Value)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["payload"].clone(), m["payload_erased_at"].clone()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (Value::Null, json!(erased_at)),
            (json!({"n": 0}), Value::Null)
        ]
    );

    // Again: nothing more to remove, and the first erasure's time.
    let (status, again) = erase(&app, &app_id, &msg).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again,
        json!({"message_id": msg, "payload_erased_at": erased_at,
               "attempt_bodies_erased": 0, "deliveries_stopped": 0})
    );

    // The dashboard.
    let mut browser = Browser::new(&app);
    browser.login().await;
    let page = browser
        .page(&format!("/apps/{app_id}/messages/{msg}"))
        .await;
    assert!(page.contains("Payload erased at"), "{page}");
    assert!(!page.contains(SECRET));

    // The live feed, resumed from before the message: its events come again, rendered from
    // the rows as they are now.
    let mut resumed = SseClient::connect(&app, &format!("app={app_id}"), Some(&resume_from)).await;
    let replayed = resumed
        .collect_until(WAIT, |got| {
            got.iter()
                .any(|e| e.event == "attempt" && e.json()["message_id"] == msg.as_str())
        })
        .await;
    let created = replayed
        .iter()
        .find(|e| e.event == "message.created" && e.json()["id"] == msg.as_str())
        .expect("the message's event comes again");
    assert_eq!(created.json()["payload"], Value::Null);
    assert_eq!(created.json()["payload_erased_at"], erased_at.as_str());
    for e in &replayed {
        assert!(!e.data.contains(SECRET), "{} {}", e.event, e.data);
    }
    assert!(
        !replayed
            .iter()
            .any(|e| e.event == "message.created" && e.json()["id"] == before.as_str()),
        "resumed after the first message"
    );

    // Nothing of it is left in the database either.
    assert_eq!(secret_rows(&app).await, vec![]);
}

#[tokio::test]
async fn erasing_stops_a_pending_retry_and_refuses_replays() {
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "1500ms,1500ms")]).await;
    let receiver =
        Receiver::answering(Reply::status(500).with_body(format!("no card {SECRET} today"))).await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;
    let msg = app
        .send(&app_id, "card.saved", json!({"card": SECRET}))
        .await;
    receiver.wait_for(1, WAIT).await;
    let m = app
        .wait_for_message(&app_id, &msg, WAIT, |m| {
            m["deliveries"][0]["state"] == "pending" && m["deliveries"][0]["attempt_count"] == 1
        })
        .await;
    assert!(m["deliveries"][0]["next_attempt_at"].is_string());

    let (status, erased) = erase(&app, &app_id, &msg).await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    assert_eq!(erased["deliveries_stopped"], 1);
    assert_eq!(erased["attempt_bodies_erased"], 1);

    let (_, m) = app.get(&format!("/apps/{app_id}/messages/{msg}")).await;
    let delivery = &m["deliveries"][0];
    assert_eq!(delivery["state"], "dead", "{m}");
    assert_eq!(delivery["last_error"], "payload erased");
    assert_eq!(delivery["next_attempt_at"], Value::Null);

    // Replay, of the message or to its endpoint, is refused: there is nothing to send.
    for body in [json!({}), json!({"endpoint_id": ep})] {
        let (status, refused) = app
            .post(&format!("/apps/{app_id}/messages/{msg}/replay"), body)
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{refused}");
        assert_eq!(refused["code"], "payload_erased");
    }
    // A recover of the endpoint passes over it.
    let (status, recovered) = app
        .post(
            &format!("/apps/{app_id}/endpoints/{ep}/recover"),
            json!({"since": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{recovered}");
    assert_eq!(recovered["queued"], 0);

    // Past the retry's time, nothing more arrived.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(receiver.count(), 1);
    let (_, m) = app.get(&format!("/apps/{app_id}/messages/{msg}")).await;
    assert_eq!(m["deliveries"][0]["state"], "dead");
    assert_eq!(m["deliveries"][0]["attempt_count"], 1);
    assert_eq!(app.attempts(&app_id, &msg).await.len(), 1);
    assert_eq!(secret_rows(&app).await, vec![]);
}

/// The request was on its way when the payload was erased: it finishes and is recorded,
/// but without the body it brought back, and it is not retried.
#[tokio::test]
async fn an_attempt_in_flight_during_the_erasure_ends_it_without_its_body() {
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "100ms,100ms")]).await;
    let receiver = Receiver::answering(
        Reply::status(500)
            .with_body(format!("no card {SECRET} today"))
            .after(Duration::from_millis(800)),
    )
    .await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app
        .send(&app_id, "card.saved", json!({"card": SECRET}))
        .await;
    receiver.wait_for(1, WAIT).await;

    let (status, erased) = erase(&app, &app_id, &msg).await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    assert_eq!(erased["deliveries_stopped"], 0, "it was in flight");

    let m = app.wait_for_message(&app_id, &msg, WAIT, all_dead).await;
    assert_eq!(m["deliveries"][0]["last_error"], "payload erased");
    let attempts = app.attempts(&app_id, &msg).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["response_status"], 500);
    assert_eq!(attempts[0]["outcome"], "dead");
    assert_eq!(attempts[0]["response_body"], Value::Null);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 1);
    assert_eq!(secret_rows(&app).await, vec![]);
}

/// However a delivery of an erased message comes back to the queue (here: a worker that
/// died mid-send, its lease run out), it is never sent with the erased payload's `null`
/// in its place.
#[tokio::test]
async fn a_delivery_of_an_erased_message_that_comes_back_is_not_sent() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app
        .send(&app_id, "card.saved", json!({"card": SECRET}))
        .await;
    app.wait_for_message(&app_id, &msg, WAIT, all_delivered)
        .await;
    let (status, _) = erase(&app, &app_id, &msg).await;
    assert_eq!(status, StatusCode::OK);

    // As if a worker of another process had claimed it and died.
    let id: uuid::Uuid = msg.strip_prefix("msg_").unwrap().parse().unwrap();
    sqlx::query(
        "update herald.delivery
            set state = 'in_flight', locked_by = gen_random_uuid(),
                lease_expires_at = now() - interval '1 second',
                attempt_count = attempt_count + 1
          where message_id = $1",
    )
    .bind(id)
    .execute(&app.pool)
    .await
    .unwrap();

    let m = app.wait_for_message(&app_id, &msg, WAIT, all_dead).await;
    assert_eq!(m["deliveries"][0]["last_error"], "payload erased");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 1, "sent once, before the erasure");
    assert_eq!(app.attempts(&app_id, &msg).await.len(), 1);
}

#[tokio::test]
async fn erasing_what_does_not_exist_is_not_found() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    for msg in ["msg_0192f3a0000070008000000000000000", "nope", "msg_"] {
        let (status, body) = erase(&app, &app_id, msg).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{msg}: {body}");
        assert_eq!(body["code"], "not_found");
    }
    let receiver = Receiver::start().await;
    let (other, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app
        .send(&other, "card.saved", json!({"card": SECRET}))
        .await;
    for app_key in ["app_0192f3a0000070008000000000000000", "no-such-uid"] {
        let (status, body) = erase(&app, app_key, &msg).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{app_key}: {body}");
    }
    let (_, m) = app.get(&format!("/apps/{other}/messages/{msg}")).await;
    assert_eq!(m["payload"], json!({"card": SECRET}));
}
