//! Restarts, signals and crashes: nothing accepted is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use herald::db::deliveries::{self, AttemptRecord, Completion, EndpointEffect};
use herald::domain::{AttemptId, AttemptOutcome, AttemptTrigger, DeliveryId, DeliveryState};
use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{Receiver, Reply, TOKEN, all_delivered, fresh_database, spawn_app_on};
use crate::process::Process;

async fn db(url: &str) -> PgPool {
    herald::db::connect(url, 2).await.unwrap()
}

/// A fresh, migrated database with application `a`, one endpoint (no Herald running, so
/// nothing claims but the test) and `messages` messages queued for it.
async fn one_endpoint(rate_limit: Option<i32>, messages: usize) -> PgPool {
    let pool = db(&fresh_database().await).await;
    herald::db::migrate(&pool).await.unwrap();
    sqlx::query("insert into application (name, uid) values ('a', 'a')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into endpoint (app_id, url, rate_limit)
         select id, 'http://127.0.0.1:9/', $1 from application",
    )
    .bind(rate_limit)
    .execute(&pool)
    .await
    .unwrap();
    for _ in 0..messages {
        sqlx::query("select herald.send_message('a', 'x', '{}')")
            .execute(&pool)
            .await
            .unwrap();
    }
    pool
}

#[tokio::test]
async fn a_restart_in_the_middle_of_the_retry_schedule_resumes_it() {
    let db_url = fresh_database().await;
    let schedule = [("HERALD_RETRY_SCHEDULE", "1s,1s")];
    let receiver = Receiver::with(Arc::new(|n| match n {
        0 => Reply::status(500),
        _ => Reply::status(204),
    }))
    .await;
    let first = spawn_app_on(db_url.clone(), &schedule).await;
    let app_id = first.create_app().await;
    first
        .create_endpoint(&app_id, json!({"url": receiver.url()}))
        .await;
    let msg = first.send(&app_id, "survives.restart", json!({})).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    first
        .wait_for_message(&app_id, &msg, Duration::from_secs(5), |m| {
            m["deliveries"][0]["state"] == "pending" && m["deliveries"][0]["attempt_count"] == 1
        })
        .await;
    first.stop().await;

    // While nothing runs, the schedule lives in the database.
    let pool = db(&db_url).await;
    let (state, next): (String, DateTime<Utc>) =
        sqlx::query_as("select state::text, next_attempt_at from delivery")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "pending");
    assert!(next > Utc::now() - chrono::Duration::seconds(2));
    assert_eq!(receiver.count(), 1);

    let second = spawn_app_on(db_url, &schedule).await;
    let m = second
        .wait_for_message(&app_id, &msg, Duration::from_secs(10), all_delivered)
        .await;
    assert_eq!(m["deliveries"][0]["attempt_count"], 2);
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    assert!(got[1].at - got[0].at >= Duration::from_millis(900));
}

#[tokio::test]
async fn sigterm_lets_in_flight_sends_finish_and_records_them() {
    let db_url = fresh_database().await;
    let receiver = Receiver::slow(Duration::from_millis(1500)).await;
    let mut p = Process::start(&db_url, &[]).await;
    let (app_id, _, _) = p.app_with_endpoint(&receiver.url()).await;
    p.send(&app_id, "in.flight", json!({})).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    p.signal("-TERM");
    assert!(p.wait_exit(Duration::from_secs(10)).await, "{}", p.logs());
    assert!(
        got[0].at.elapsed() >= Duration::from_millis(1400),
        "exited before the send finished"
    );

    let pool = db(&db_url).await;
    let (state, status): (String, Option<i32>) = sqlx::query_as(
        "select d.state::text, a.response_status from delivery d join attempt a on a.delivery_id = d.id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), status), ("succeeded", Some(200)));
}

#[tokio::test]
async fn kill_9_mid_send_loses_nothing() {
    let db_url = fresh_database().await;
    // The first request never gets an answer in time; later ones succeed at once.
    let receiver = Receiver::with(Arc::new(|n| {
        Reply::status(204).after(if n == 0 {
            Duration::from_secs(60)
        } else {
            Duration::ZERO
        })
    }))
    .await;
    // Request timeout 1s: a lease of 2 x 1s + 5s.
    let fast = [("HERALD_REQUEST_TIMEOUT", "1s")];
    let mut first = Process::start(&db_url, &fast).await;
    let (app_id, _, _) = first.app_with_endpoint(&receiver.url()).await;
    let msg = first.send(&app_id, "crash.test", json!({"n": 1})).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    first.signal("-KILL");
    first.wait_exit(Duration::from_secs(5)).await;

    let second = Process::start(&db_url, &fast).await;
    let got = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got[0].header("webhook-id"), msg["id"].as_str().unwrap());
    assert_eq!(got[1].header("webhook-id"), got[0].header("webhook-id"));
    let pool = db(&db_url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (state, count): (String, i32) =
            sqlx::query_as("select state::text, attempt_count from delivery")
                .fetch_one(&pool)
                .await
                .unwrap();
        if state == "succeeded" {
            assert_eq!(count, 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {state}: {}",
            second.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn no_secret_ever_reaches_the_logs() {
    let db_url = fresh_database().await;
    let receiver =
        Receiver::with(Arc::new(|n| Reply::status(if n == 0 { 500 } else { 204 }))).await;
    let mut p = Process::start(
        &db_url,
        &[("RUST_LOG", "trace"), ("HERALD_LOG_FORMAT", "json")],
    )
    .await;
    let given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let app = p
        .api(reqwest::Method::POST, "/apps", json!({"name": "Acme"}))
        .await;
    let app_id = app["id"].as_str().unwrap();
    let ep = p
        .api(
            reqwest::Method::POST,
            &format!("/apps/{app_id}/endpoints"),
            json!({"url": receiver.url(), "secret": given}),
        )
        .await;
    let ep_id = ep["id"].as_str().unwrap();
    let rotated = p
        .api(
            reqwest::Method::POST,
            &format!("/apps/{app_id}/endpoints/{ep_id}/secret/rotate"),
            json!({}),
        )
        .await;
    let new = rotated["secret"].as_str().unwrap().to_owned();
    let msg = p.send(app_id, "log.test", json!({})).await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    // An API token used, and a portal link opened (its session is in the URL).
    let token = p
        .api(
            reqwest::Method::POST,
            "/tokens",
            json!({"name": "logged", "scopes": ["messages:read"], "app": app_id}),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let http = reqwest::Client::new();
    let used = http
        .get(format!("http://{}/api/v1/apps/{app_id}/messages", p.addr))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(used.status(), 200);
    let link = p
        .api(
            reqwest::Method::POST,
            &format!("/apps/{app_id}/portal"),
            json!({}),
        )
        .await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(http.get(&link).send().await.unwrap().status(), 200);
    let session = link
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let signature = session.rsplit('.').next().unwrap().to_owned();
    p.signal("-TERM");
    p.wait_exit(Duration::from_secs(10)).await;

    let logs = p.logs();
    assert!(
        logs.contains(msg["id"].as_str().unwrap()),
        "the logs say nothing useful"
    );
    assert!(
        logs.contains("/portal/…/"),
        "the portal's requests are not logged"
    );
    for secret in [
        TOKEN,
        given,
        &given[6..],
        &new,
        &new[6..],
        &token,
        &token[5..],
        &signature,
    ] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
    }
}

/// Webhook URLs are often credentials themselves (Slack's and Discord's carry the key in the
/// path, others in the query): a failed attempt's log line names the endpoint by id, and
/// neither the log nor the stored error text carries the URL.
#[tokio::test]
async fn a_failed_attempt_logs_and_stores_no_part_of_the_endpoint_url() {
    let db_url = fresh_database().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut p = Process::start(
        &db_url,
        &[
            ("RUST_LOG", "info,herald=trace"),
            ("HERALD_RETRY_SCHEDULE", "1h"),
        ],
    )
    .await;
    let (path_key, query_key) = ("T0PSECRETPATHKEY", "T0PSECRETQUERYKEY");
    let url = format!("http://127.0.0.1:{port}/hooks/{path_key}?token={query_key}");
    let (app_id, ep_id, _) = p.app_with_endpoint(&url).await;
    let msg = p.send(&app_id, "log.test", json!({})).await;
    let msg_id = msg["id"].as_str().unwrap();
    let attempts = loop {
        let attempts = p
            .api(
                reqwest::Method::GET,
                &format!("/apps/{app_id}/messages/{msg_id}/attempts"),
                json!(null),
            )
            .await;
        if attempts["data"].as_array().is_some_and(|a| !a.is_empty()) {
            break attempts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let message = p
        .api(
            reqwest::Method::GET,
            &format!("/apps/{app_id}/messages/{msg_id}"),
            json!(null),
        )
        .await;
    p.signal("-TERM");
    p.wait_exit(Duration::from_secs(10)).await;

    let attempt = &attempts["data"][0];
    assert_eq!(attempt["outcome"], "retrying", "{attempt}");
    assert!(attempt["error"].as_str().is_some(), "{attempt}");
    let logs = p.logs();
    assert!(
        logs.contains("attempt failed") && logs.contains(&ep_id),
        "the failure is logged with its endpoint id"
    );
    for (what, text) in [
        ("the log", logs),
        ("the attempt", attempt.to_string()),
        ("the delivery", message["deliveries"].to_string()),
    ] {
        for key in [path_key, query_key] {
            assert!(!text.contains(key), "{what} carries the endpoint's URL");
        }
        assert!(
            !text.contains("/hooks/"),
            "{what} carries the endpoint's URL"
        );
    }
}

/// Deliveries a worker claimed but could not start in time go back as if never claimed:
/// pending, their attempt number and their endpoint's rate-limit tokens restored.
#[tokio::test]
async fn released_deliveries_go_back_as_if_never_claimed() {
    let pool = one_endpoint(Some(5), 2).await;
    let worker = uuid::Uuid::now_v7();
    let claimed = deliveries::claim(&pool, worker, Duration::from_secs(60), 10, 10, None, &[])
        .await
        .unwrap()
        .rows;
    assert_eq!(claimed.len(), 2);
    let tokens = || async {
        sqlx::query_scalar::<_, f64>("select rate_tokens from endpoint")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert!((tokens().await - 3.0).abs() < 0.5, "the claim spent 2 of 5");

    let rows: Vec<(DeliveryId, i32)> = claimed.iter().map(|r| (r.id, r.attempt_count)).collect();
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        deliveries::release(&mut conn, worker, &rows).await.unwrap(),
        2
    );
    // Fenced: a second release (or another worker's) changes nothing.
    assert_eq!(
        deliveries::release(&mut conn, worker, &rows).await.unwrap(),
        0
    );
    let states: Vec<(String, i32)> =
        sqlx::query_as("select state::text, attempt_count from delivery order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(states, vec![("pending".to_owned(), 0); 2]);
    assert!(tokens().await >= 4.99, "the tokens came back");
}

/// A request that is over takes no room at its endpoint, though its row stays in flight
/// until its completion is written: the claim counts out its own worker's finished
/// deliveries, and only those.
#[tokio::test]
async fn a_finished_request_leaves_room_before_its_completion_is_written() {
    let pool = one_endpoint(None, 2).await;
    sqlx::query("update endpoint set max_in_flight = 1")
        .execute(&pool)
        .await
        .unwrap();
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let lease = Duration::from_secs(60);
    let claim = |worker, finished: Vec<DeliveryId>| {
        let pool = pool.clone();
        async move {
            deliveries::claim(&pool, worker, lease, 10, 10, None, &finished)
                .await
                .unwrap()
                .rows
        }
    };
    let first = claim(a, vec![]).await;
    assert_eq!(first.len(), 1, "the cap lets one go");
    assert!(claim(a, vec![]).await.is_empty(), "the endpoint is full");
    let done = vec![first[0].id];
    assert!(
        claim(b, done.clone()).await.is_empty(),
        "another worker's finished deliveries are not its to count out"
    );
    let second = claim(a, done.clone()).await;
    assert_eq!(second.len(), 1, "the finished request left its room");
    assert!(
        claim(a, done).await.is_empty(),
        "the room is the finished request's, and the next row took it"
    );
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_cannot_overwrite_a_newer_attempt() {
    let pool = one_endpoint(None, 1).await;

    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let lease = Duration::from_secs(60);
    let claimed_a = deliveries::claim(&pool, a, lease, 10, 10, None, &[])
        .await
        .unwrap()
        .rows;
    assert_eq!(claimed_a.len(), 1);
    assert_eq!(claimed_a[0].attempt_count, 1);
    // A live lease is skipped by everyone else.
    assert!(
        deliveries::claim(&pool, b, lease, 10, 10, None, &[])
            .await
            .unwrap()
            .rows
            .is_empty()
    );

    sqlx::query("update delivery set lease_expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(deliveries::reclaim_expired(&pool).await.unwrap(), 1);
    let claimed_b = deliveries::claim(&pool, b, lease, 10, 10, None, &[])
        .await
        .unwrap()
        .rows;
    assert_eq!(claimed_b.len(), 1);
    assert_eq!(claimed_b[0].attempt_count, 2);

    let completion = |row: &deliveries::Claimed, state: DeliveryState| Completion {
        delivery_id: row.id,
        attempt_count: row.attempt_count,
        message_id: row.message_id,
        endpoint_id: row.endpoint_id,
        app_id: row.app_id,
        state,
        next_attempt_at: None,
        last_error: None,
        attempt: Some(AttemptRecord {
            id: AttemptId::new(),
            trigger: AttemptTrigger::Scheduled,
            outcome: if state == DeliveryState::Succeeded {
                AttemptOutcome::Succeeded
            } else {
                AttemptOutcome::Dead
            },
            response_status: Some(200),
            response_body: None,
            error_kind: None,
            error: None,
            duration_ms: 1,
            started_at: Utc::now(),
        }),
        endpoint_effect: EndpointEffect::None,
    };
    let mut tx = pool.begin().await.unwrap();
    let stale = deliveries::complete(
        &mut tx,
        a,
        &[completion(&claimed_a[0], DeliveryState::Succeeded)],
        lease,
    )
    .await
    .unwrap();
    let current = deliveries::complete(
        &mut tx,
        b,
        &[completion(&claimed_b[0], DeliveryState::Dead)],
        lease,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stale, Vec::<DeliveryId>::new());
    assert_eq!(current, vec![claimed_b[0].id]);
    let (state, attempts): (String, i64) =
        sqlx::query_as("select d.state::text, (select count(*) from attempt) from delivery d")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("dead", 1));
}

#[tokio::test]
async fn shutdown_is_bounded_even_when_a_receiver_hangs() {
    let db_url = fresh_database().await;
    let receiver = Receiver::slow(Duration::from_secs(60)).await;
    let mut p = Process::start(
        &db_url,
        &[
            ("HERALD_REQUEST_TIMEOUT", "30s"),
            ("HERALD_SHUTDOWN_GRACE", "1s"),
        ],
    )
    .await;
    let (app_id, _, _) = p.app_with_endpoint(&receiver.url()).await;
    p.send(&app_id, "stuck", json!({})).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let asked = Instant::now();
    p.signal("-TERM");
    assert!(p.wait_exit(Duration::from_secs(10)).await, "{}", p.logs());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );
    // The abandoned delivery keeps its lease, to be retried once it expires.
    let pool = db(&db_url).await;
    let state: String = sqlx::query_scalar("select state::text from delivery")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "in_flight");
}
