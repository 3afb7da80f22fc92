use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Receiver, Reply, all_dead, all_delivered, spawn_app, spawn_app_with};

#[tokio::test]
async fn failures_are_retried_until_a_2xx() {
    let app = spawn_app().await;
    let receiver = Receiver::with(Arc::new(|n| match n {
        0 => Reply::status(500),
        1 => Reply::status(400).with_body("bad"),
        _ => Reply::status(200),
    }))
    .await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&app_id, "retry.me", json!({})).await;
    let m = app
        .wait_for_message(&app_id, &msg, Duration::from_secs(10), all_delivered)
        .await;
    assert_eq!(m["deliveries"][0]["attempt_count"], 3);

    let attempts = app.attempts(&app_id, &msg).await;
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["response_status"].as_i64().unwrap(),
                a["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (3, 200, "succeeded".into()),
            (2, 400, "retrying".into()),
            (1, 500, "retrying".into())
        ]
    );
    assert_eq!(attempts[1]["response_body"], "bad");
    assert_eq!(attempts[1]["error_kind"], "http_status");
    assert!(attempts[1]["next_attempt_at"].is_string());
    // Every try carries the same webhook-id and a fresh signature.
    let got = receiver.received();
    assert!(got.iter().all(|r| r.header("webhook-id") == msg));
}

#[tokio::test]
async fn the_delivery_is_dead_when_the_schedule_runs_out() {
    let app = spawn_app().await;
    let receiver = Receiver::answering(Reply::status(503)).await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&app_id, "always.fails", json!({})).await;
    let m = app
        .wait_for_message(&app_id, &msg, Duration::from_secs(10), all_dead)
        .await;
    // 50ms,100ms,150ms: three retries after the first try.
    assert_eq!(m["deliveries"][0]["attempt_count"], 4);
    assert_eq!(m["deliveries"][0]["last_error"], "HTTP 503");
    let attempts = app.attempts(&app_id, &msg).await;
    assert_eq!(attempts[0]["outcome"], "dead");
    assert_eq!(attempts.len(), 4);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.count(), 4);
}

#[tokio::test]
async fn a_redirect_is_a_failure_and_is_not_followed() {
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "none")]).await;
    let receiver =
        Receiver::answering(Reply::status(302).with_header("location", "/elsewhere")).await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send_until_dead(&app_id, "moved").await;
    let attempts = app.attempts(&app_id, &msg).await;
    assert_eq!(attempts[0]["response_status"], 302);
    assert_eq!(attempts[0]["error_kind"], "redirect");
    let paths: Vec<String> = receiver.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/hook"]);
}

#[tokio::test]
async fn gone_disables_the_endpoint_and_says_why() {
    let app = spawn_app().await;
    let receiver = Receiver::answering(Reply::status(410)).await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;
    app.send_until_dead(&app_id, "bye").await;
    let (_, endpoint) = app.get(&format!("/apps/{app_id}/endpoints/{ep}")).await;
    assert_eq!(endpoint["disabled"], true);
    assert!(
        endpoint["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410")
    );
    assert_eq!(receiver.count(), 1, "no retry after 410");

    // A disabled endpoint is not sent anything new.
    let later = app.send(&app_id, "bye", json!({})).await;
    let (_, m) = app.get(&format!("/apps/{app_id}/messages/{later}")).await;
    assert_eq!(m["deliveries"], json!([]));
}

#[tokio::test]
async fn retry_after_is_honoured_on_429_and_503() {
    let app = spawn_app().await;
    let receiver = Receiver::with(Arc::new(|n| match n {
        0 => Reply::status(429).with_header("retry-after", "1"),
        _ => Reply::status(204),
    }))
    .await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    app.send(&app_id, "slow.down", json!({})).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let gap = got[1].at - got[0].at;
    // The schedule alone would retry after ~50ms; the receiver asked for 1s.
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
}

#[tokio::test]
async fn keeps_only_the_first_4_kib_of_a_response_body() {
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "none")]).await;
    let receiver = Receiver::answering(Reply::status(500).with_body("x".repeat(10_000))).await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send_until_dead(&app_id, "big.answer").await;
    let attempts = app.attempts(&app_id, &msg).await;
    assert_eq!(attempts[0]["response_body"].as_str().unwrap().len(), 4096);
}

#[tokio::test]
async fn a_receiver_that_hangs_times_out() {
    let app = spawn_app_with(&[
        ("HERALD_REQUEST_TIMEOUT", "300ms"),
        ("HERALD_RETRY_SCHEDULE", "none"),
    ])
    .await;
    let receiver = Receiver::slow(Duration::from_secs(5)).await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send_until_dead(&app_id, "hang").await;
    let attempts = app.attempts(&app_id, &msg).await;
    assert_eq!(attempts[0]["error_kind"], "timeout");
    assert_eq!(attempts[0]["response_status"], json!(null));
    assert!(attempts[0]["duration_ms"].as_i64().unwrap() >= 300);
}

#[tokio::test]
async fn a_refused_connection_is_recorded_as_connect() {
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "none")]).await;
    // Bind then drop: nothing listens on this port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app_id = app.create_app().await;
    app.create_endpoint(&app_id, json!({"url": format!("http://127.0.0.1:{port}/")}))
        .await;
    let msg = app.send_until_dead(&app_id, "nobody.home").await;
    assert_eq!(
        app.attempts(&app_id, &msg).await[0]["error_kind"],
        "connect"
    );
}

#[tokio::test]
async fn an_endpoint_failing_for_too_long_is_disabled() {
    let app = spawn_app_with(&[
        ("HERALD_DISABLE_AFTER", "200ms"),
        ("HERALD_RETRY_SCHEDULE", "300ms,300ms"),
    ])
    .await;
    let receiver = Receiver::answering(Reply::status(500)).await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;
    app.send_until_dead(&app_id, "fail").await;
    let (_, endpoint) = app.get(&format!("/apps/{app_id}/endpoints/{ep}")).await;
    assert_eq!(endpoint["disabled"], true, "{endpoint}");
    assert!(
        endpoint["disabled_reason"]
            .as_str()
            .unwrap()
            .starts_with("failing continuously since")
    );
}
