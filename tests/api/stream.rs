//! The live feed over real SSE connections: ordering, resume, filters, several processes,
//! slow clients.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::domain::Position;
use rand::Rng;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dashboard::Browser;
use crate::helpers::{
    Receiver, SseClient, SseEvent, TOKEN, TestServer, all_delivered, poll_until, spawn_app,
    spawn_app_with,
};
use crate::process::Process;

const WAIT: Duration = Duration::from_secs(10);

fn position(e: &SseEvent) -> Position {
    e.id.as_deref()
        .expect("every event has an id")
        .parse()
        .expect("ids are feed positions")
}

/// Positions only ever increase along a stream.
fn assert_in_order(events: &[SseEvent]) {
    for pair in events.windows(2) {
        assert!(
            position(&pair[0]) < position(&pair[1]),
            "out of order: {:?} then {:?}",
            pair[0].id,
            pair[1].id
        );
    }
}

/// Sends a message from outside Herald, the way a backend sharing the database does.
async fn send_sql(conn: &mut PgConnection, app: &str, payload: Value) -> String {
    sqlx::query_scalar(
        "select herald.message_ref(id) from herald.send_message($1, 'race.step', $2::json)",
    )
    .bind(app)
    .bind(payload.to_string())
    .fetch_one(conn)
    .await
    .unwrap()
}

/// Prunes the feed's log with a retention of one day; returns how many events went.
async fn prune_past_a_day(app: &TestServer) -> u64 {
    herald::db::events::prune(&app.pool, Duration::from_secs(86400), 1000)
        .await
        .unwrap()
}

/// A new application with uid `uid`, and a stream of its events only.
async fn watched_app(app: &TestServer, uid: &str) -> SseClient {
    app_with_uid(app, uid).await;
    SseClient::connect(app, &format!("app={uid}"), None).await
}

async fn app_with_uid(app: &TestServer, uid: &str) -> String {
    let (status, body) = app.post("/apps", json!({"name": uid, "uid": uid})).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Reads a raw SSE stream until it holds `n` `message.created` frames and ends on a frame
/// boundary (30 s at most); returns what it read.
async fn read_messages(stream: &mut tokio::net::TcpStream, n: usize) -> String {
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let created = |raw: &[u8]| {
        String::from_utf8_lossy(raw)
            .matches("event: message.created")
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while created(&raw) < n || !String::from_utf8_lossy(&raw).ends_with("\n\n") {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let read = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .expect("the stalled client gets the rest")
            .unwrap();
        assert!(read > 0, "stream closed");
        raw.extend_from_slice(&buf[..read]);
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// The ids of the `message.created` frames in raw SSE text, in order.
fn created_ids(text: &str) -> Vec<&str> {
    text.split("\n\n")
        .filter(|frame| frame.contains("event: message.created"))
        .filter_map(|frame| frame.split("\"id\":\"").nth(1))
        .map(|rest| &rest[..36])
        .collect()
}

#[tokio::test]
async fn a_delivery_shows_up_live_as_message_created_then_attempt() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;
    let mut stream = SseClient::connect(&app, "", None).await;

    let msg = app.send(&app_id, "invoice.paid", json!({"n": 1})).await;
    let events = stream
        .collect_until(WAIT, |got| got.iter().any(|e| e.event == "attempt"))
        .await;
    assert_eq!(events[0].event, "message.created");
    let created = events[0].json();
    assert_eq!(created["id"], msg.as_str());
    assert_eq!(created["app_id"], app_id.as_str());
    assert_eq!(created["payload"], json!({"n": 1}));
    let attempt = events.last().unwrap().json();
    assert_eq!(attempt["message_id"], msg.as_str());
    assert_eq!(attempt["endpoint_id"], ep.as_str());
    assert_eq!(attempt["outcome"], "succeeded");
    assert_eq!(attempt["response_status"], 204);
    assert_eq!(attempt["trigger"], "scheduled");
    assert_in_order(&events);

    // The feed's attempt is exactly what the REST API lists.
    let listed = app.attempts(&app_id, &msg).await;
    assert_eq!(listed[0], attempt);

    // Shutting down ends open streams instead of waiting on them.
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("shutdown is not held up by an open stream");
    assert!(stream.next(Duration::from_secs(2)).await.is_none());
}

/// The hazard the feed's ordering exists for: transaction A inserts an event first but
/// commits last. A reader going by sequence number alone would send B's event, move its
/// cursor past A's, and never send A's.
#[tokio::test]
async fn an_event_that_commits_late_is_neither_skipped_nor_reordered() {
    let app = spawn_app().await;
    let mut stream = watched_app(&app, "late").await;

    let mut a = PgConnection::connect(&app.db_url).await.unwrap();
    let mut b = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("begin").execute(&mut a).await.unwrap();
    let first = send_sql(&mut a, "late", json!({"tx": "a"})).await;
    let second = send_sql(&mut b, "late", json!({"tx": "b"})).await; // commits at once

    // B's event is committed but must wait: A, still open, could commit before it.
    let early = stream.next(Duration::from_millis(500)).await;
    assert!(early.is_none(), "emitted before A ended: {early:?}");

    sqlx::query("commit").execute(&mut a).await.unwrap();
    let events = stream.collect_until(WAIT, |got| got.len() == 2).await;
    let ids: Vec<Value> = events.iter().map(|e| e.json()["id"].clone()).collect();
    assert_eq!(ids, [json!(first), json!(second)]);
    assert_in_order(&events);

    // Resuming after A's event gives B's, and only B's.
    let mut resumed = SseClient::connect(&app, "app=late", events[0].id.as_deref()).await;
    let again = resumed.next(WAIT).await.unwrap();
    assert_eq!(again.json()["id"], second.as_str());
    assert_eq!(again.id, events[1].id);
    assert!(resumed.next(Duration::from_millis(300)).await.is_none());
}

/// Writers commit (and roll back) in random order with random delays while one client
/// keeps dropping its connection and resuming from its Last-Event-ID. It must see every
/// committed message once, in the same order as a client that never disconnected.
#[tokio::test]
async fn a_client_resuming_amid_concurrent_writers_misses_nothing_and_sees_nothing_twice() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 40;
    let app = spawn_app().await;
    let mut steady = watched_app(&app, "race").await;
    // Where the feed is now: the resuming client starts there, so that even a reconnect
    // before its first event resumes rather than starting over.
    let start: String =
        sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot())::text || '-0'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let mut resuming = SseClient::connect(&app, "app=race", Some(&start)).await;

    let committed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let db_url = app.db_url.clone();
        let committed = committed.clone();
        writers.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&db_url).await.unwrap();
            for i in 0..PER_WRITER {
                sqlx::query("begin").execute(&mut conn).await.unwrap();
                let id = send_sql(&mut conn, "race", json!({"w": w, "i": i})).await;
                let (delay, keep) = {
                    let mut rng = rand::rng();
                    (rng.random_range(0..12u64), rng.random_bool(0.9))
                };
                tokio::time::sleep(Duration::from_millis(delay)).await;
                if keep {
                    sqlx::query("commit").execute(&mut conn).await.unwrap();
                    committed.lock().unwrap().insert(id);
                } else {
                    sqlx::query("rollback").execute(&mut conn).await.unwrap();
                }
            }
        }));
    }

    let mut seen: Vec<SseEvent> = Vec::new();
    let mut reconnects = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let writers_done = writers.iter().all(|w| w.is_finished());
        let target = committed.lock().unwrap().len();
        if writers_done && seen.len() >= target {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "resuming client stalled"
        );
        // Read a few events, then hang up and come back where it left off.
        let take = rand::rng().random_range(1..15);
        for _ in 0..take {
            match resuming.next(Duration::from_millis(200)).await {
                Some(e) => seen.push(e),
                None => break,
            }
        }
        let last = resuming.last_id.clone();
        resuming = SseClient::connect(&app, "app=race", last.as_deref()).await;
        reconnects += 1;
    }
    // Anything extra would arrive now.
    while let Some(e) = resuming.next(Duration::from_millis(300)).await {
        seen.push(e);
    }

    let committed = committed.lock().unwrap().clone();
    let seen_ids: Vec<String> = seen
        .iter()
        .map(|e| e.json()["id"].as_str().unwrap().to_owned())
        .collect();
    let distinct: HashSet<String> = seen_ids.iter().cloned().collect();
    assert_eq!(distinct.len(), seen_ids.len(), "an event came twice");
    assert_eq!(
        distinct, committed,
        "the resuming client's events differ from what committed"
    );
    assert_in_order(&seen);
    assert!(reconnects > 10, "only {reconnects} reconnects");

    let steady_events = steady
        .collect_until(WAIT, |got| got.len() >= committed.len())
        .await;
    let steady_ids: Vec<String> = steady_events
        .iter()
        .map(|e| e.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(steady_ids, seen_ids, "two clients saw different orders");
}

#[tokio::test]
async fn filters_narrow_the_stream() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let app_a = app.create_app().await;
    let app_b = app.create_app().await;
    let (ep_a, _) = app
        .create_endpoint(&app_a, json!({"url": receiver.url()}))
        .await;
    app.create_endpoint(&app_b, json!({"url": receiver.url()}))
        .await;

    let mut by_app = SseClient::connect(&app, &format!("app={app_a}"), None).await;
    let mut by_endpoint = SseClient::connect(&app, &format!("endpoint={ep_a}"), None).await;
    let mut by_type = SseClient::connect(&app, "event_type=user.deleted", None).await;
    let mut by_outcome = SseClient::connect(&app, "outcome=succeeded", None).await;

    let a_created = app.send(&app_a, "user.created", json!({})).await;
    let a_deleted = app.send(&app_a, "user.deleted", json!({})).await;
    let b_deleted = app.send(&app_b, "user.deleted", json!({})).await;
    for (a, m) in [
        (&app_a, &a_created),
        (&app_a, &a_deleted),
        (&app_b, &b_deleted),
    ] {
        app.wait_for_message(a, m, WAIT, all_delivered).await;
    }

    async fn drain(stream: &mut SseClient) -> Vec<(String, String)> {
        let mut got = Vec::new();
        while let Some(e) = stream.next(Duration::from_millis(500)).await {
            let data = e.json();
            let message = data["message_id"].as_str().or(data["id"].as_str());
            got.push((e.event.clone(), message.unwrap().to_owned()));
        }
        got.sort();
        got
    }
    // Every event of `kinds` for each of `messages`, in `drain`'s order.
    let each = |kinds: &[&str], messages: &[&String]| {
        let mut expected: Vec<(String, String)> = kinds
            .iter()
            .flat_map(|k| messages.iter().map(|m| (k.to_string(), m.to_string())))
            .collect();
        expected.sort();
        expected
    };
    let both = ["attempt", "message.created"];
    assert_eq!(
        drain(&mut by_app).await,
        each(&both, &[&a_created, &a_deleted])
    );
    assert_eq!(
        drain(&mut by_endpoint).await,
        each(&["attempt"], &[&a_created, &a_deleted])
    );
    assert_eq!(
        drain(&mut by_type).await,
        each(&both, &[&a_deleted, &b_deleted])
    );
    let outcomes = drain(&mut by_outcome).await;
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes.iter().all(|(kind, _)| kind == "attempt"));
}

#[tokio::test]
async fn a_dead_delivery_and_a_disabled_endpoint_are_announced() {
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "none")]).await;
    let receiver = Receiver::with(Arc::new(|n| {
        crate::helpers::Reply::status(if n == 0 { 500 } else { 410 })
    }))
    .await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;
    let mut stream = SseClient::connect(&app, &format!("app={app_id}"), None).await;

    let first = app.send(&app_id, "a.b", json!({})).await;
    let got = stream
        .collect_until(WAIT, |g| g.iter().any(|e| e.event == "delivery.dead"))
        .await;
    let dead = got.last().unwrap().json();
    assert_eq!(dead["message_id"], first.as_str());
    assert_eq!(dead["endpoint_id"], ep.as_str());
    assert!(
        got.iter()
            .any(|e| e.event == "attempt" && e.json()["outcome"] == "dead")
    );

    app.send(&app_id, "a.b", json!({})).await; // answered 410 Gone
    let got = stream
        .collect_until(WAIT, |g| g.iter().any(|e| e.event == "endpoint.disabled"))
        .await;
    let disabled = got.last().unwrap().json();
    assert_eq!(disabled["id"], ep.as_str());
    assert_eq!(disabled["disabled"], true);
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410")
    );
}

/// Process A serves the stream and may not reach private addresses; process B sends.
/// An attempt that succeeded against the loopback receiver can only be B's.
#[tokio::test]
async fn a_stream_on_one_process_shows_what_another_process_did() {
    let db_url = crate::helpers::fresh_database().await;
    let a = Process::start(&db_url, &[("HERALD_ALLOW_PRIVATE_TARGETS", "false")]).await;
    let b = Process::start(&db_url, &[]).await;
    let receiver = Receiver::start().await;
    let app = b
        .api(reqwest::Method::POST, "/apps", json!({"name": "Acme"}))
        .await;
    let app_id = app["id"].as_str().unwrap();
    b.api(
        reqwest::Method::POST,
        &format!("/apps/{app_id}/endpoints"),
        json!({"url": receiver.url()}),
    )
    .await;
    let mut stream = SseClient::connect_to(a.addr, "", None).await;

    let msg = b.send(app_id, "cross.process", json!({})).await;
    let msg = msg["id"].as_str().unwrap();
    let events = stream
        .collect_until(WAIT, |g| g.iter().any(|e| e.event == "attempt"))
        .await;
    assert_eq!(events[0].event, "message.created");
    assert_eq!(events[0].json()["id"], msg);
    let attempt = events.last().unwrap().json();
    assert_eq!(attempt["message_id"], msg);
    assert_eq!(attempt["outcome"], "succeeded", "{attempt}");
    assert_eq!(receiver.count(), 1);
}

/// A client that stops reading fills its socket, then its buffer, then falls off the
/// live feed. Meanwhile the workers and another client carry on at full speed; when it
/// reads again it is told it lagged and still gets every event, once, in order.
#[tokio::test]
async fn a_client_that_stops_reading_holds_up_nobody_and_still_gets_everything() {
    const MESSAGES: usize = 200;
    let app = spawn_app_with(&[
        ("HERALD_FEED_BUFFER", "1"),
        ("HERALD_WORKER_CONCURRENCY", "16"),
    ])
    .await;
    let receiver = Receiver::start().await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;

    let mut stalled = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "GET /api/v1/stream?app={app_id} HTTP/1.0\r\nhost: herald\r\n\
                 authorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut healthy = SseClient::connect(&app, &format!("app={app_id}"), None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Big payloads fill the stalled client's socket buffers quickly.
    let filler = "x".repeat(128 * 1024);
    let mut sent = Vec::new();
    for i in 0..MESSAGES {
        sent.push(
            app.send(&app_id, "bulk.item", json!({"i": i, "filler": filler}))
                .await,
        );
    }
    receiver.wait_for(MESSAGES, Duration::from_secs(30)).await;
    let live = healthy
        .collect_until(Duration::from_secs(30), |g| {
            g.iter().filter(|e| e.event == "attempt").count() == MESSAGES
        })
        .await;
    let live: Vec<SseEvent> = live.into_iter().filter(|e| e.event != "lagged").collect();
    assert_eq!(live.len(), 2 * MESSAGES);
    assert_in_order(&live);

    // Now the stalled client reads everything that was kept for it.
    let text = read_messages(&mut stalled, MESSAGES).await;
    assert!(
        text.contains("event: lagged"),
        "the stalled client was never told it fell behind"
    );
    assert_eq!(created_ids(&text), sent, "every message, once, in order");
}

#[tokio::test]
async fn resume_refuses_ids_it_cannot_honour_and_streams_need_the_token() {
    let app = spawn_app_with(&[("HERALD_SSE_KEEP_ALIVE", "200ms")]).await;
    let app_id = app.create_app().await;
    app.send(&app_id, "a.b", json!({})).await;

    let get = |query: &str, last_id: Option<&str>, token: bool| {
        let mut r = app.http.get(app.url(&format!("/stream?{query}")));
        if token {
            r = r.bearer_auth(TOKEN);
        }
        if let Some(id) = last_id {
            r = r.header("last-event-id", id);
        }
        r.send()
    };
    let status = |r: reqwest::Result<reqwest::Response>| r.unwrap().status().as_u16();
    assert_eq!(status(get("", None, false).await), 401);
    assert_eq!(status(get("", Some("yesterday"), true).await), 400);
    // Before the newest event pruned: that one, at least, is gone.
    sqlx::query("update herald.event set created_at = now() - interval '2 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(prune_past_a_day(&app).await, 1);
    let r = get("", Some("1-1"), true).await.unwrap();
    assert_eq!(r.status().as_u16(), 410);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unknown_last_event_id");
    assert_eq!(status(get("outcome=maybe", None, true).await), 400);
    assert_eq!(status(get("endpoint=nope", None, true).await), 400);
    assert_eq!(
        status(get("event_type=%3Cscript%3E", None, true).await),
        400
    );
    assert_eq!(status(get("app=no-such-app", None, true).await), 404);

    // A quiet stream still sends keep-alive comments.
    let mut stream = SseClient::connect(&app, &format!("app={app_id}"), None).await;
    let frame = stream.next_frame(Duration::from_secs(2)).await.unwrap();
    assert!(frame.comment, "{frame:?}");
}

#[tokio::test]
async fn events_older_than_the_retention_are_pruned_and_cannot_be_resumed_from() {
    let app = spawn_app().await;
    let mut stream = watched_app(&app, "old").await;
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    let first = send_sql(&mut conn, "old", json!({"n": 1})).await;
    send_sql(&mut conn, "old", json!({"n": 2})).await;
    let events = stream.collect_until(WAIT, |g| g.len() == 2).await;
    assert_eq!(events[0].json()["id"], first.as_str());

    // The first event is two days old; the second is recent.
    sqlx::query(
        "update herald.event set created_at = now() - interval '2 days'
          where ref_id = (select id from herald.message order by id limit 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let pruned = prune_past_a_day(&app).await;
    assert_eq!(pruned, 1);

    // Resuming from before the pruned event would skip it: refused.
    let r = app
        .http
        .get(app.url("/stream?app=old"))
        .bearer_auth(TOKEN)
        .header("last-event-id", format!("{}-0", position(&events[0]).xid))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 410);
    // From the pruned event itself nothing was missed: pruning marks the newest event it
    // deleted, and nothing after it went.
    let mut resumed = SseClient::connect(&app, "app=old", events[0].id.as_deref()).await;
    let next = resumed.next(WAIT).await.unwrap();
    assert_eq!(next.id, events[1].id);
    assert!(resumed.next(Duration::from_millis(300)).await.is_none());
    // From the oldest kept event on, resuming works.
    let mut resumed = SseClient::connect(&app, "app=old", events[1].id.as_deref()).await;
    let third = send_sql(&mut conn, "old", json!({"n": 3})).await;
    let next = resumed.next(WAIT).await.unwrap();
    assert_eq!(next.json()["id"], third.as_str());
}

/// A client that goes away while nothing happens is let go once a keep-alive finds its
/// connection closed: it must not stay counted (and fed) until the next event.
#[tokio::test]
async fn a_client_that_leaves_while_all_is_quiet_is_let_go() {
    let app = spawn_app_with(&[("HERALD_SSE_KEEP_ALIVE", "200ms")]).await;
    let stream = SseClient::connect(&app, "", None).await;
    assert_eq!(gauge(&app, "feed_subscribers").await, 1);
    drop(stream);
    gauge_back_to_zero(
        &app,
        "feed_subscribers",
        "the subscriber is still counted 5 s after it left",
    )
    .await;
}

/// A gauge of `/stats`.
async fn gauge(app: &TestServer, name: &str) -> u64 {
    let (_, stats) = app.get("/stats").await;
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("/stats reports {name}"))
}

/// Waits up to 5 s for the `/stats` gauge `name` to come back to 0; fails with `failure`.
async fn gauge_back_to_zero(app: &TestServer, name: &str, failure: &str) {
    let zero = async || gauge(app, name).await == 0;
    poll_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        failure,
        zero,
    )
    .await;
}

/// `HERALD_FEED_INTERVAL` spaces the reader's reads of the log, so that what commits in
/// between reaches a client as one write: eight messages committed 30 ms apart, with reads at
/// least 300 ms apart, come in at most three pieces (two reads, or three if one read finds
/// the last few not yet settled), not eight.
#[tokio::test]
async fn with_a_feed_interval_events_that_commit_close_together_come_in_one_write() {
    let app = spawn_app_with(&[("HERALD_FEED_INTERVAL", "300ms")]).await;
    let mut stream = watched_app(&app, "spaced").await;
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..8 {
        sent.push(send_sql(&mut conn, "spaced", json!({"i": i})).await);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let events = stream.collect_until(WAIT, |got| got.len() == 8).await;
    let ids: Vec<Value> = events.iter().map(|e| e.json()["id"].clone()).collect();
    assert_eq!(ids, sent.iter().map(|s| json!(s)).collect::<Vec<_>>());
    assert_in_order(&events);
    assert!(
        stream.chunks <= 3,
        "8 events came in {} writes despite the interval",
        stream.chunks
    );
}

/// What waits for one client is bounded in bytes: a client that does not read while big
/// messages go by (fewer of them than any count of items would catch) is told it lagged
/// once it reads again, and gets every message from the log; meanwhile the bytes held for
/// subscribers stay within their budgets. A client that reads gets everything live.
#[tokio::test]
async fn a_client_that_stops_reading_is_held_to_its_byte_budget() {
    const MESSAGES: usize = 40;
    const BUDGET: u64 = 1 << 20;
    let app = spawn_app_with(&[("HERALD_FEED_CLIENT_BUFFER_BYTES", &BUDGET.to_string())]).await;
    app_with_uid(&app, "big").await;
    let buffered = || gauge(&app, "feed_buffered_bytes");

    let mut stalled = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "GET /api/v1/stream?app=big HTTP/1.0\r\nhost: herald\r\n\
                 authorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut healthy = SseClient::connect(&app, "app=big", None).await;
    let reader = tokio::spawn(async move {
        healthy
            .collect_until(Duration::from_secs(60), |got| {
                got.iter().filter(|e| e.event == "message.created").count() == MESSAGES
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // 40 messages of 256 KiB: 10 MiB for the stalled client, far fewer items than it
    // could queue before, far more bytes than its budget and its socket's buffers.
    let filler = "x".repeat(256 * 1024);
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    let mut sent = Vec::new();
    let mut most = 0;
    for i in 0..MESSAGES {
        sent.push(send_sql(&mut conn, "big", json!({"i": i, "filler": filler})).await);
        most = most.max(buffered().await);
    }
    let live = reader.await.unwrap();
    let created: Vec<Value> = live
        .iter()
        .filter(|e| e.event == "message.created")
        .map(|e| e.json()["id"].clone())
        .collect();
    assert_eq!(
        created, sent,
        "the reading client got every message, in order"
    );
    for _ in 0..20 {
        most = most.max(buffered().await);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Two subscribers, each within its budget (or one item over an empty one); and the
    // gauge does count: the stalled client holds at least a message.
    assert!(most >= 256 * 1024, "only {most} bytes were ever held");
    assert!(
        most <= 2 * BUDGET + 2 * 300 * 1024,
        "{most} bytes were held for two clients with {BUDGET} bytes each"
    );

    // The stalled client reads at last: told it lagged, then every message once, in order.
    let text = read_messages(&mut stalled, MESSAGES).await;
    assert!(
        text.contains("event: lagged"),
        "the stalled client held {MESSAGES} big messages and was never told it fell behind"
    );
    assert_eq!(created_ids(&text), sent, "every message, once, in order");
    drop(stalled);
    gauge_back_to_zero(
        &app,
        "feed_buffered_bytes",
        "bytes still held for clients gone",
    )
    .await;
}

/// Pruning can leave nothing in the log after a client's position: the events it missed
/// are gone without a trace there. The mark pruning leaves behind still refuses the resume.
#[tokio::test]
async fn a_resume_past_which_everything_was_pruned_is_refused() {
    let app = spawn_app().await;
    let mut stream = watched_app(&app, "gone").await;
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    send_sql(&mut conn, "gone", json!({"n": 1})).await;
    send_sql(&mut conn, "gone", json!({"n": 2})).await;
    let events = stream.collect_until(WAIT, |g| g.len() == 2).await;
    drop(stream);

    sqlx::query("update herald.event set created_at = now() - interval '2 days'")
        .execute(&mut conn)
        .await
        .unwrap();
    let pruned = prune_past_a_day(&app).await;
    assert_eq!(pruned, 2, "the log is empty now");

    let resume = |last: String| {
        app.http
            .get(app.url("/stream?app=gone"))
            .bearer_auth(TOKEN)
            .header("last-event-id", last)
            .send()
    };
    // The client saw the first event only: the second was pruned before it came back.
    let r = resume(events[0].id.clone().unwrap()).await.unwrap();
    assert_eq!(r.status().as_u16(), 410);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unknown_last_event_id");
    // A client that saw both missed nothing.
    let r = resume(events[1].id.clone().unwrap()).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// A page's live script resumes from the feed's head as it was when the page was rendered
/// (`data-from`), and what commits before the script connects must still come. The log may
/// hold nothing before that head: a new installation, or one quiet for longer than the
/// retention, whose every event was pruned. Only an event pruned after the head would be
/// missed, and none was.
#[tokio::test]
async fn a_page_resumes_from_its_rendered_head_when_nothing_is_kept_before_it() {
    let app = spawn_app().await;
    let mut stream = watched_app(&app, "page").await;
    let mut browser = Browser::new(&app);
    browser.login().await;
    let rendered_from = |html: String| {
        html.split("data-from=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a live page says where its script resumes from")
            .to_owned()
    };
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();

    // A new installation: no event yet when the page is rendered, one before it connects.
    let from = rendered_from(browser.page("/").await);
    let first = send_sql(&mut conn, "page", json!({"n": 1})).await;
    let mut resumed = SseClient::connect(&app, "app=page", Some(&from)).await;
    assert_eq!(
        resumed.next(WAIT).await.unwrap().json()["id"],
        first.as_str()
    );
    stream.collect_until(WAIT, |g| g.len() == 1).await;

    // Quiet for longer than the retention: everything the page's head covers is pruned.
    sqlx::query("update herald.event set created_at = now() - interval '2 days'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(prune_past_a_day(&app).await, 1, "the log is empty now");
    let from = rendered_from(browser.page("/").await);
    let second = send_sql(&mut conn, "page", json!({"n": 2})).await;
    let mut resumed = SseClient::connect(&app, "app=page", Some(&from)).await;
    let next = resumed.next(WAIT).await.unwrap();
    assert_eq!(next.json()["id"], second.as_str());
    assert!(resumed.next(Duration::from_millis(300)).await.is_none());
}

/// Attempts written by one statement, several to a message (a fan-out's completions), each
/// get one feed event with their own message's event type, endpoint and application.
#[tokio::test]
async fn attempts_to_shared_messages_each_get_their_event_with_its_type() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    for _ in 0..2 {
        app.create_endpoint(&app_id, json!({"url": receiver.url()}))
            .await;
    }
    let mut sent = Vec::new();
    for event_type in [
        "invoice.paid",
        "user.deleted",
        "invoice.paid",
        "user.created",
    ] {
        sent.push(app.send(&app_id, event_type, json!({})).await);
    }
    for msg in &sent {
        app.wait_for_message(&app_id, msg, WAIT, all_delivered)
            .await;
    }
    // Twelve attempts (four messages, three endpoints) written again by one statement.
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let copies: Vec<uuid::Uuid> = sqlx::query_scalar(
        "insert into herald.attempt (id, delivery_id, message_id, endpoint_id, app_id, attempt,
                                     trigger, outcome, response_status, response_body,
                                     error_kind, error, duration_ms, created_at,
                                     next_attempt_at)
         select herald.uuid_v7(), delivery_id, message_id, endpoint_id, app_id, attempt + 1,
                trigger, outcome, response_status, response_body, error_kind, error,
                duration_ms, now(), next_attempt_at
           from herald.attempt
         returning id",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(copies.len(), 12);
    let (events, typed): (i64, i64) = sqlx::query_as(
        "select count(*),
                count(*) filter (where e.event_type = m.event_type
                                   and e.endpoint_id = a.endpoint_id
                                   and e.app_id = a.app_id)
           from herald.event e
           join herald.attempt a on a.id = e.ref_id
           join herald.message m on m.id = a.message_id
          where e.kind = 'attempt' and e.ref_id = any($1)",
    )
    .bind(&copies)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(
        (events, typed),
        (12, 12),
        "one event per attempt, with its own type"
    );
    tx.rollback().await.unwrap();
    app.stop().await;
}
