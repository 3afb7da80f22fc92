use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{Receiver, all_delivered, spawn_app};

#[tokio::test]
async fn send_answers_202_and_the_message_shows_its_deliveries_and_attempts() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;

    let payload = json!({"invoice": "in_1", "amount": 4200, "nested": {"z": 1, "a": [1, 2]}});
    let (status, msg) = app
        .post(
            &format!("/apps/{app_id}/messages"),
            json!({"event_type": "invoice.paid", "payload": payload}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{msg}");
    let id = msg["id"].as_str().unwrap();
    assert!(id.starts_with("msg_") && !id.contains('.'));
    assert_eq!(msg["event_type"], "invoice.paid");
    assert_eq!(msg["payload"], payload);
    assert!(msg["created_at"].is_string());

    let m = app
        .wait_for_message(&app_id, id, Duration::from_secs(10), all_delivered)
        .await;
    let deliveries = m["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["endpoint_id"], ep);
    assert_eq!(deliveries[0]["attempt_count"], 1);
    assert_eq!(deliveries[0]["last_error"], json!(null));

    let attempts = app.attempts(&app_id, id).await;
    assert_eq!(attempts.len(), 1);
    let a = &attempts[0];
    assert_eq!(a["message_id"], id);
    assert_eq!(a["endpoint_id"], ep);
    assert_eq!(a["app_id"], app_id);
    assert_eq!(a["event_type"], "invoice.paid");
    assert_eq!(a["attempt"], 1);
    assert_eq!(a["trigger"], "scheduled");
    assert_eq!(a["outcome"], "succeeded");
    assert_eq!(a["response_status"], 204);
    assert!(a["duration_ms"].is_number());
    assert!(a["id"].as_str().unwrap().starts_with("atm_"));

    let (status, by_endpoint) = app
        .get(&format!("/apps/{app_id}/endpoints/{ep}/attempts"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_endpoint["data"][0]["id"], a["id"]);
}

#[tokio::test]
async fn messages_list_newest_first_with_a_cursor() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(app.send(&app_id, "thing.happened", json!({"i": i})).await);
    }
    sent.reverse();
    let (_, first) = app.get(&format!("/apps/{app_id}/messages?limit=3")).await;
    let (_, second) = app
        .get(&format!(
            "/apps/{app_id}/messages?limit=3&cursor={}",
            first["next_cursor"].as_str().unwrap()
        ))
        .await;
    assert_eq!(second["next_cursor"], json!(null));
    let listed: Vec<&str> = first["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["data"].as_array().unwrap())
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, sent);
}

#[tokio::test]
async fn messages_of_one_tenant_are_invisible_to_another() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let b = app.create_app().await;
    let msg = app.send(&a, "x.y", json!({})).await;
    let (status, _) = app.get(&format!("/apps/{b}/messages/{msg}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get(&format!("/apps/{b}/messages/{msg}/attempts")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = app.get(&format!("/apps/{b}/messages")).await;
    assert_eq!(list["data"], json!([]));
}

/// With every database connection taken, a send fails with 503. The connection could also
/// have dropped after a commit, so the answer does not promise that nothing was stored: it
/// says to retry with the same idempotency key.
#[tokio::test]
async fn a_send_the_database_cannot_take_says_to_retry_with_the_idempotency_key() {
    let app = crate::helpers::spawn_app_with(&[("HERALD_DB_POOL_SIZE", "2")]).await;
    let app_id = app.create_app().await;
    let held = crate::helpers::exhaust(&app.pool).await;
    let (status, err) = app
        .post(
            &format!("/apps/{app_id}/messages"),
            json!({"event_type": "order.paid", "payload": {}}),
        )
        .await;
    drop(held);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert_eq!(err["code"], "unavailable");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("Idempotency-Key"), "{message}");
    assert!(!message.contains("nothing was stored"), "{message}");
}
