//! `GET /metrics` as Prometheus scrapes it: unauthenticated, OpenMetrics text, counting
//! what the workers did and showing the queue, the feed and the workers as they are.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    Receiver, Reply, SseClient, TestServer, all_delivered, deliveries_in, poll_until,
    spawn_app_with,
};

const WAIT: Duration = Duration::from_secs(10);
/// The queue gauges are read in the background; these tests read them often, and wait
/// for the next reading before looking.
const FRESH_GAUGES: (&str, &str) = ("HERALD_METRICS_INTERVAL", "100ms");
const GAUGES_CAUGHT_UP: Duration = Duration::from_millis(300);

/// One scrape, without credentials, as Prometheus makes it.
async fn scrape(app: &TestServer) -> String {
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
async fn app_sending_to(app: &TestServer, receiver: &Receiver) -> String {
    app.app_with_endpoint(receiver).await.0
}

#[tokio::test]
async fn counts_attempts_by_outcome_and_shows_the_queue() {
    // A failed attempt waits an hour for its retry, so it stays pending.
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "1h"), FRESH_GAUGES]).await;

    let before = scrape(&app).await;
    for outcome in ["succeeded", "retrying", "dead"] {
        assert_eq!(attempts(&before, outcome), 0.0, "{before}");
    }
    assert_eq!(value(&before, "herald_attempt_duration_seconds_count"), 0.0);
    assert_eq!(value(&before, "herald_queue_depth"), 0.0);
    assert_eq!(value(&before, "herald_oldest_pending_age_seconds"), 0.0);
    assert_eq!(value(&before, "herald_oldest_message_age_seconds"), 0.0);
    assert_eq!(value(&before, "herald_sse_subscribers"), 0.0);

    let ok = Receiver::start().await;
    let failing = Receiver::answering(Reply::status(500)).await;
    let gone = Receiver::answering(Reply::status(410)).await;
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

    tokio::time::sleep(GAUGES_CAUGHT_UP).await;
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
    // The oldest message kept is the first one sent here, seconds ago.
    let history = value(&after, "herald_oldest_message_age_seconds");
    assert!(history > 0.0 && history < 60.0, "{after}");
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
    let app = spawn_app_with(&[("HERALD_REQUEST_TIMEOUT", "10s"), FRESH_GAUGES]).await;
    let slow = Receiver::slow(Duration::from_secs(2)).await;
    let app_id = app_sending_to(&app, &slow).await;

    let msg = app.send(&app_id, "order.paid", json!({})).await;
    slow.wait_for(1, WAIT).await;
    tokio::time::sleep(GAUGES_CAUGHT_UP).await;
    let during = scrape(&app).await;
    assert_eq!(value(&during, "herald_worker_in_flight"), 1.0, "{during}");
    assert_eq!(value(&during, "herald_worker_saturation"), 1.0 / 8.0);
    assert_eq!(value(&during, "herald_deliveries_in_flight"), 1.0);
    assert_eq!(value(&during, "herald_queue_depth"), 0.0);
    assert_eq!(value(&during, "herald_attempt_duration_seconds_count"), 0.0);

    app.wait_for_message(&app_id, &msg, WAIT, all_delivered)
        .await;
    tokio::time::sleep(GAUGES_CAUGHT_UP).await;
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

/// Calls of the queue-gauge statement (`count(*)` over the queue) in one database, as
/// `pg_stat_statements` (loaded by scripts/pg.sh) counts them.
async fn queue_reads(app: &TestServer) -> i64 {
    sqlx::query_scalar(
        "select coalesce(sum(calls), 0)::int8 from public.pg_stat_statements s
           join pg_database d on d.oid = s.dbid
          where d.datname = current_database()
            and s.query like '%as oldest_pending_age_seconds%'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Prometheus (or anyone: the route is public) scraping as fast as it can costs the
/// database one queue count per interval, not one per scrape.
#[tokio::test]
async fn a_flood_of_scrapes_reads_the_queue_once_per_interval() {
    let app = spawn_app_with(&[("HERALD_METRICS_INTERVAL", "1s")]).await;
    sqlx::query("create extension if not exists pg_stat_statements schema public")
        .execute(&app.pool)
        .await
        .unwrap();
    let before = queue_reads(&app).await;
    let flood = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let scrapers = (0..4).map(|_| async {
        let mut n = 0;
        while started.elapsed() < flood {
            let r = app.http.get(format!("http://{}/metrics", app.addr)).send();
            assert!(r.await.unwrap().text().await.unwrap().ends_with("# EOF\n"));
            n += 1;
        }
        n
    });
    let scrapes: usize = futures_util::future::join_all(scrapers)
        .await
        .into_iter()
        .sum();
    let reads = queue_reads(&app).await - before;
    assert!(scrapes >= 100, "only {scrapes} scrapes in {flood:?}");
    // One read per second of the flood, give or take the one in progress at each end.
    assert!(
        (1..=5).contains(&reads),
        "{scrapes} scrapes made {reads} queue reads"
    );
}

/// The probes answer from what the background reader saw, on connections of their own:
/// with every connection of the shared pool taken (sends waiting for one), `/metrics` still
/// serves the queue gauges and `/readyz` still says ready, at once.
#[tokio::test]
async fn probes_answer_at_once_while_the_shared_pool_is_exhausted() {
    let app = spawn_app_with(&[FRESH_GAUGES]).await;
    let held = crate::helpers::exhaust(&app.pool).await;
    tokio::time::sleep(GAUGES_CAUGHT_UP).await;

    let started = std::time::Instant::now();
    let text = scrape(&app).await;
    let ready = reqwest::get(format!("http://{}/readyz", app.addr))
        .await
        .unwrap();
    let took = started.elapsed();
    drop(held);
    assert_eq!(value(&text, "herald_queue_depth"), 0.0, "{text}");
    assert!(
        value(&text, "herald_queue_gauges_age_seconds") < 1.0,
        "{text}"
    );
    assert_eq!(ready.status().as_u16(), 200);
    assert!(
        took < Duration::from_millis(500),
        "the probes took {took:?}"
    );
}

/// `/readyz` still says whether the database answers: refused connections make it 503
/// within a few seconds, and it is ready again once they are allowed.
#[tokio::test]
async fn readyz_follows_the_database() {
    let app = spawn_app_with(&[]).await;
    let name: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let ready = || async {
        reqwest::get(format!("http://{}/readyz", app.addr))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(ready().await, 200);
    let admin = |sql: String| async move {
        let url = std::env::var("HERALD_TEST_DATABASE_URL")
            .or_else(|_| std::env::var("DATABASE_URL"))
            .unwrap();
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    };
    admin(format!("alter database {name} allow_connections false")).await;
    admin(format!(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = '{name}'"
    ))
    .await;
    let wait_for = |status: u16| async move {
        let failure = format!("/readyz never answered {status}");
        poll_until(
            Duration::from_secs(8),
            Duration::from_millis(100),
            &failure,
            async || ready().await == status,
        )
        .await;
    };
    wait_for(503).await;
    admin(format!("alter database {name} allow_connections true")).await;
    wait_for(200).await;
}
