//! `GET /metrics` as Prometheus scrapes it: unauthenticated, OpenMetrics text, counting
//! what the workers did and showing the queue, the feed and the workers as they are.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    Receiver, Reply, SseClient, TestApp, all_delivered, deliveries_in, spawn_app_with,
};

const WAIT: Duration = Duration::from_secs(10);

/// One scrape, without credentials, as Prometheus makes it.
async fn scrape(app: &TestApp) -> String {
    let response = reqwest::Client::new()
        .get(format!("http://{}/metrics", app.addr))
        .send()
        .await
        .expect("metrics answer");
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

/// The value of one series, named with its labels exactly as exposed.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn attempts(text: &str, outcome: &str) -> f64 {
    value(
        text,
        &format!("herald_attempts_total{{outcome=\"{outcome}\"}}"),
    )
}

/// An app with one endpoint at `receiver`.
async fn app_sending_to(app: &TestApp, receiver: &Receiver) -> String {
    app.app_with_endpoint(receiver).await.0
}

#[tokio::test]
async fn counts_attempts_by_outcome_and_shows_the_queue() {
    // A failed attempt waits an hour for its retry, so it stays pending.
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "1h")]).await;

    let before = scrape(&app).await;
    for outcome in ["succeeded", "retrying", "dead"] {
        assert_eq!(attempts(&before, outcome), 0.0, "{before}");
    }
    assert_eq!(value(&before, "herald_attempt_duration_seconds_count"), 0.0);
    assert_eq!(value(&before, "herald_queue_depth"), 0.0);
    assert_eq!(value(&before, "herald_oldest_pending_age_seconds"), 0.0);
    assert_eq!(value(&before, "herald_sse_subscribers"), 0.0);

    let ok = Receiver::start().await;
    let failing = Receiver::with(Arc::new(|_| Reply::status(500))).await;
    let gone = Receiver::with(Arc::new(|_| Reply::status(410))).await;
    let ok_app = app_sending_to(&app, &ok).await;
    let failing_app = app_sending_to(&app, &failing).await;
    let gone_app = app_sending_to(&app, &gone).await;

    for n in 0..2 {
        let msg = app.send(&ok_app, "order.paid", json!({"n": n})).await;
        app.wait_for_message(&ok_app, &msg, WAIT, all_delivered)
            .await;
    }
    let msg = app.send(&failing_app, "order.paid", json!({})).await;
    app.wait_for_message(&failing_app, &msg, WAIT, |m: &Value| {
        deliveries_in(m, "pending") && m["deliveries"][0]["attempt_count"] == 1
    })
    .await;
    let msg = app.send(&gone_app, "order.paid", json!({})).await;
    app.wait_for_message(&gone_app, &msg, WAIT, |m: &Value| deliveries_in(m, "dead"))
        .await;
    let _stream = SseClient::connect(&app, "", None).await;

    let after = scrape(&app).await;
    assert_eq!(attempts(&after, "succeeded"), 2.0, "{after}");
    assert_eq!(attempts(&after, "retrying"), 1.0, "{after}");
    assert_eq!(attempts(&after, "dead"), 1.0, "{after}");
    assert_eq!(value(&after, "herald_attempt_duration_seconds_count"), 4.0);
    assert_eq!(
        value(
            &after,
            "herald_attempt_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        4.0
    );
    assert!(value(&after, "herald_attempt_duration_seconds_sum") > 0.0);
    assert_eq!(value(&after, "herald_queue_depth"), 1.0, "{after}");
    assert_eq!(value(&after, "herald_deliveries_in_flight"), 0.0);
    assert!(value(&after, "herald_oldest_pending_age_seconds") > 0.0);
    assert_eq!(value(&after, "herald_sse_subscribers"), 1.0);
    assert_eq!(value(&after, "herald_worker_concurrency"), 8.0);
    assert_eq!(value(&after, "herald_worker_in_flight"), 0.0);
    assert_eq!(value(&after, "herald_worker_saturation"), 0.0);

    // Aggregates only: nothing names a tenant or where it is sent.
    for private in [&ok_app, &failing_app, &gone_app] {
        assert!(!after.contains(private.as_str()));
    }
    for receiver in [&ok, &failing, &gone] {
        assert!(!after.contains(&receiver.addr.to_string()));
    }
}

#[tokio::test]
async fn shows_requests_in_flight_and_how_long_they_took() {
    // The receiver holds the request long enough to be seen in flight, well within the
    // request timeout.
    let app = spawn_app_with(&[("HERALD_REQUEST_TIMEOUT", "10s")]).await;
    let slow = Receiver::slow(Duration::from_secs(2)).await;
    let app_id = app_sending_to(&app, &slow).await;

    let msg = app.send(&app_id, "order.paid", json!({})).await;
    slow.wait_for(1, WAIT).await;
    let during = scrape(&app).await;
    assert_eq!(value(&during, "herald_worker_in_flight"), 1.0, "{during}");
    assert_eq!(value(&during, "herald_worker_saturation"), 1.0 / 8.0);
    assert_eq!(value(&during, "herald_deliveries_in_flight"), 1.0);
    assert_eq!(value(&during, "herald_queue_depth"), 0.0);
    assert_eq!(value(&during, "herald_attempt_duration_seconds_count"), 0.0);

    app.wait_for_message(&app_id, &msg, WAIT, all_delivered)
        .await;
    let after = scrape(&app).await;
    assert_eq!(value(&after, "herald_worker_in_flight"), 0.0, "{after}");
    assert_eq!(value(&after, "herald_deliveries_in_flight"), 0.0);
    assert_eq!(attempts(&after, "succeeded"), 1.0);
    // The attempt took the receiver's 2 s: past the 1 s bucket, inside the 2.5 s one.
    let bucket = |le: &str| {
        value(
            &after,
            &format!("herald_attempt_duration_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    assert_eq!(bucket("1.0"), 0.0, "{after}");
    assert_eq!(bucket("2.5"), 1.0, "{after}");
    let sum = value(&after, "herald_attempt_duration_seconds_sum");
    assert!((1.0..=2.5).contains(&sum), "{after}");
}
