use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Receiver, TestServer, all_delivered, count, spawn_app, spawn_app_with};

#[tokio::test]
async fn delivers_a_signed_standard_webhook() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let app_id = app.create_app().await;
    let (_, secret) = app
        .create_endpoint(
            &app_id,
            json!({"url": receiver.url(), "headers": {"x-tenant": "acme"}}),
        )
        .await;
    let payload = json!({"b": 1, "a": "é", "list": [3, 2, 1]});
    let msg = app.send(&app_id, "invoice.paid", payload.clone()).await;

    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let r = &got[0];
    assert!(r.verify(&secret), "standardwebhooks rejects the signature");
    assert_eq!(r.header("webhook-id"), msg);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("x-tenant"), "acme");
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 30);

    // The body is {"type","timestamp","data"} with the payload as given.
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["type"], "invoice.paid");
    assert_eq!(body["data"], payload);
    let stamp = body["timestamp"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(stamp).is_ok(),
        "{stamp}"
    );
    let text = std::str::from_utf8(&r.body).unwrap();
    assert!(
        text.starts_with(r#"{"type":"invoice.paid","timestamp":""#),
        "{text}"
    );
}

#[tokio::test]
async fn fans_out_by_event_type_and_skips_disabled_endpoints() {
    let app = spawn_app().await;
    let all = Receiver::start().await;
    let invoices = Receiver::start().await;
    let disabled = Receiver::start().await;
    let (app_id, _, _) = app.app_with_endpoint(&all).await;
    app.create_endpoint(
        &app_id,
        json!({"url": invoices.url(), "event_types": ["invoice.paid", "invoice.voided"]}),
    )
    .await;
    app.create_endpoint(&app_id, json!({"url": disabled.url(), "disabled": true}))
        .await;

    let paid = app.send(&app_id, "invoice.paid", json!({})).await;
    let created = app.send(&app_id, "user.created", json!({})).await;
    let m = app
        .wait_for_message(&app_id, &paid, Duration::from_secs(10), all_delivered)
        .await;
    assert_eq!(m["deliveries"].as_array().unwrap().len(), 2);
    let m = app
        .wait_for_message(&app_id, &created, Duration::from_secs(10), all_delivered)
        .await;
    assert_eq!(m["deliveries"].as_array().unwrap().len(), 1);

    assert_eq!(all.count(), 2);
    assert_eq!(invoices.count(), 1);
    assert_eq!(invoices.received()[0].header("webhook-id"), paid);
    assert_eq!(disabled.count(), 0);
}

#[tokio::test]
async fn a_hanging_endpoint_does_not_hold_up_the_others() {
    // 4 workers; the slow endpoint may only occupy 2 of them.
    let app = spawn_app_with(&[
        ("HERALD_WORKER_CONCURRENCY", "4"),
        ("HERALD_ENDPOINT_CONCURRENCY", "2"),
        ("HERALD_REQUEST_TIMEOUT", "10s"),
    ])
    .await;
    let slow = Receiver::slow(Duration::from_secs(3)).await;
    let fast = Receiver::start().await;
    let slow_app = app.create_app().await;
    let fast_app = app.create_app().await;
    app.create_endpoint(&slow_app, json!({"url": slow.url()}))
        .await;
    app.create_endpoint(&fast_app, json!({"url": fast.url()}))
        .await;

    for i in 0..10 {
        app.send(&slow_app, "slow.event", json!({"i": i})).await;
    }
    slow.wait_for(2, Duration::from_secs(5)).await;
    let started = Instant::now();
    for i in 0..10 {
        app.send(&fast_app, "fast.event", json!({"i": i})).await;
    }
    fast.wait_for(10, Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    // The cap held: never more than two requests at the slow endpoint at once.
    assert_eq!(slow.count(), 2);
}

#[tokio::test]
async fn notify_wakes_the_workers_without_waiting_for_the_poll() {
    let app = spawn_app_with(&[("HERALD_POLL_INTERVAL", "60s")]).await;
    let receiver = Receiver::start().await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    // Let the listener settle, then send: only NOTIFY can deliver within the window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        app.send(&app_id, "ping", json!({})).await;
    }
    receiver.wait_for(3, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_poll_finds_deliveries_no_one_announced() {
    let app = spawn_app_with(&[("HERALD_POLL_INTERVAL", "200ms")]).await;
    let receiver = Receiver::start().await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&app_id, "ping", json!({})).await;
    receiver.wait_for(1, Duration::from_secs(5)).await;
    // Queue the delivery again behind the API's back, without NOTIFY.
    sqlx::query("update delivery set state = 'pending', next_attempt_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    let got = receiver.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[1].header("webhook-id"), msg);
}

/// An application whose one endpoint takes one request at a time, with a poll of 60 s:
/// nothing but a completion can wake the workers for what waits behind the cap.
async fn one_request_at_a_time() -> (TestServer, Receiver, String) {
    let app = spawn_app_with(&[("HERALD_POLL_INTERVAL", "60s")]).await;
    let receiver = Receiver::start().await;
    let app_id = app.create_app().await;
    app.create_endpoint(&app_id, json!({"url": receiver.url(), "max_in_flight": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    (app, receiver, app_id)
}

#[tokio::test]
async fn an_endpoint_at_its_cap_drains_without_waiting_for_the_poll() {
    // Each delivery can only start once the previous one is recorded.
    let (app, receiver, app_id) = one_request_at_a_time().await;
    for i in 0..5 {
        app.send(&app_id, "queued", json!({"i": i})).await;
    }
    // Generous for a loaded machine, and still far below the 60 s poll that a missed
    // wake-up would wait for. (This test used to fail about once in 40 runs: see the next.)
    receiver.wait_for(5, Duration::from_secs(20)).await;
}

/// The same with messages arriving while the endpoint drains: each arrival wakes a claim
/// that may run while a completion is being recorded. A claim that fills the endpoint
/// must leave it marked full whatever the order, or the next completion there wakes
/// nobody and the rest waits for the poll. With the completer unmarking endpoints after
/// its commit, a claim right after the commit could mark the endpoint first and have its
/// mark erased: `--stress-count 100` of these two tests failed 6 times that way (2 to 9
/// requests of 5 or 60 arrived in 20 s), and none since the unmark moved before the commit.
#[tokio::test]
async fn an_endpoint_at_its_cap_drains_while_messages_keep_arriving() {
    let (app, receiver, app_id) = one_request_at_a_time().await;
    let senders = (0..4).map(|s| {
        let (app, app_id) = (&app, &app_id);
        async move {
            for i in 0..15 {
                app.send(app_id, "queued", json!({"s": s, "i": i})).await;
            }
        }
    });
    futures_util::future::join_all(senders).await;
    receiver.wait_for(60, Duration::from_secs(20)).await;
}

/// Direct dispatch hands deliveries to this process's workers at insert time, under a
/// lease. When more arrive than there are workers, those that wait for one must neither
/// outwait their lease (the sweep would hand them to another claim, and the receiver would
/// get a copy that no attempt records) nor be offered more work as if the workers were
/// free. Here one worker, receivers that outlast the 250 ms timeout (so each attempt holds
/// the worker for it), and 40 sends at once: 10 s of work for leases of 5.5 s.
#[tokio::test]
async fn direct_sends_that_wait_for_a_worker_never_outlive_their_lease() {
    const SENDS: usize = 40;
    let app = spawn_app_with(&[
        ("HERALD_WORKER_CONCURRENCY", "1"),
        ("HERALD_REQUEST_TIMEOUT", "250ms"),
        // One attempt per message within the test.
        ("HERALD_RETRY_SCHEDULE", "1h"),
    ])
    .await;
    let receiver = Receiver::slow(Duration::from_secs(1)).await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    futures_util::future::join_all((0..SENDS).map(|i| app.send(&app_id, "crowd", json!({"i": i}))))
        .await;

    let got = receiver.wait_for(SENDS, Duration::from_secs(40)).await;
    // Whatever was in flight has timed out and been recorded by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = receiver.received().len().max(got.len());
    let recorded = count(&app.pool, "select count(*) from attempt").await;
    let ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(
        got as i64, recorded,
        "{got} requests arrived but {recorded} attempts were recorded"
    );
    assert_eq!(distinct.len(), SENDS, "every message arrived once");
    assert_eq!(ids.len(), SENDS, "a message arrived twice");
}

/// Headers refused today may sit on endpoints stored before the rule: they are left out of
/// the request, the others still go.
#[tokio::test]
async fn stored_headers_that_are_refused_now_are_not_sent() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;
    sqlx::query(
        "update herald.endpoint
            set headers = '{\"x-tenant\": \"acme\", \"upgrade\": \"h2c\", \"proxy-authorization\": \"x\"}'
          where id = $1::uuid",
    )
    .bind(ep.trim_start_matches("ep_"))
    .execute(&app.pool)
    .await
    .unwrap();
    app.send(&app_id, "a.b", json!({})).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("x-tenant"), "acme");
    assert!(got[0].headers.get("upgrade").is_none());
    assert!(got[0].headers.get("proxy-authorization").is_none());
}
