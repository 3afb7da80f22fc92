//! The admin WebSocket over a real connection (tokio-tungstenite), and its REST twins.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::helpers::{
    Receiver, Reply, TOKEN, TestServer, all_delivered, count, deliveries_in, poll_until, spawn_app,
    spawn_app_with,
};
use crate::process::Process;

const WAIT: Duration = Duration::from_secs(15);

struct Admin {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// Opens the channel with the given headers; returns the HTTP status when refused.
async fn open(app: &TestServer, headers: &[(&str, &str)]) -> Result<Admin, u16> {
    let mut request = format!("ws://{}/api/v1/admin/ws", app.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name: axum::http::HeaderName = k.parse().unwrap();
        request.headers_mut().insert(name, v.parse().unwrap());
    }
    match connect_async(request).await {
        Ok((ws, _)) => Ok(Admin { ws }),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("unexpected handshake failure: {e}"),
    }
}

async fn admin(app: &TestServer) -> Admin {
    let bearer = format!("Bearer {TOKEN}");
    open(app, &[("authorization", &bearer)]).await.unwrap()
}

impl Admin {
    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next JSON frame (pings are answered by the library).
    async fn next(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("the connection is up")
                .unwrap();
            if let Message::Text(t) = frame {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    /// Frames until `done` holds for the last one.
    async fn until(&mut self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let f = self.next().await;
            let stop = done(&f);
            got.push(f);
            if stop {
                return got;
            }
        }
    }

    /// Asks for a recover of `ep`'s dead deliveries since `since`, tagged `req`.
    async fn recover(&mut self, req: &str, ep: &str, since: &str) {
        self.send(json!({"req": req, "op": "recover", "endpoint_id": ep, "since": since}))
            .await;
    }

    async fn error_for(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        let answer = self.next().await;
        assert_eq!(answer["type"], "error", "{answer}");
        answer
    }
}

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |f| f["type"] == kind
}

#[tokio::test]
async fn the_channel_is_for_admins_on_our_origin_only() {
    let app = spawn_app().await;
    assert_eq!(open(&app, &[]).await.err(), Some(401));
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        open(
            &app,
            &[
                ("authorization", &bearer),
                ("origin", "https://evil.example")
            ]
        )
        .await
        .err(),
        Some(403)
    );
    // The dashboard's cookie works only with the dashboard's own Origin.
    let login = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("http://{}/login", app.addr))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(open(&app, &[("cookie", &cookie)]).await.err(), Some(403));
    // An `Authorization` header that is not a bearer token that authenticated does not
    // make a cookie login exempt from the Origin check.
    for authorization in ["Basic eDp4", "Bearer not-the-token"] {
        for origin in [None, Some("https://evil.example")] {
            let mut headers = vec![
                ("cookie", cookie.as_str()),
                ("authorization", authorization),
            ];
            headers.extend(origin.map(|o| ("origin", o)));
            let refused = open(&app, &headers).await.err();
            assert!(
                matches!(refused, Some(401 | 403)),
                "{authorization} {origin:?}: {refused:?}"
            );
        }
    }
    assert_eq!(
        open(
            &app,
            &[("cookie", &cookie), ("origin", "https://evil.example")]
        )
        .await
        .err(),
        Some(403)
    );
    let ours = format!("http://{}", app.addr);
    assert!(
        open(&app, &[("cookie", &cookie), ("origin", &ours)])
            .await
            .is_ok()
    );
    // Without a configured public URL, `localhost` on our port is us too; another port is not.
    let localhost = format!("http://localhost:{}", app.addr.port());
    assert!(
        open(&app, &[("cookie", &cookie), ("origin", &localhost)])
            .await
            .is_ok()
    );
    let elsewhere = format!("http://localhost:{}", app.addr.port() + 1);
    assert_eq!(
        open(&app, &[("cookie", &cookie), ("origin", &elsewhere)])
            .await
            .err(),
        Some(403)
    );
    assert!(
        open(&app, &[("authorization", &bearer), ("origin", &ours)])
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_replay_resends_with_the_same_webhook_id_and_its_attempt_comes_back() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, ep, secret) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&app_id, "invoice.paid", json!({"n": 1})).await;
    app.wait_for_message(&app_id, &msg, WAIT, all_delivered)
        .await;

    // webhook-timestamp counts seconds: let one pass so the replay's is visibly new.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut ws = admin(&app).await;
    ws.send(json!({"req": "r1", "op": "replay", "message_id": msg}))
        .await;
    let frames = ws.until(is("attempt")).await;
    assert_eq!(frames[0], json!({"req": "r1", "type": "ack"}));
    assert_eq!(frames[1], json!({"req": "r1", "type": "done", "queued": 1}));
    let attempt = frames.last().unwrap();
    assert_eq!(attempt["req"], "r1");
    assert_eq!(attempt["message_id"], msg.as_str());
    assert_eq!(attempt["endpoint_id"], ep.as_str());
    assert_eq!(attempt["trigger"], "replay");
    assert_eq!(attempt["outcome"], "succeeded");

    // The receiver got it twice: same webhook-id, each signed with its own timestamp.
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(got[1].header("webhook-id"), msg);
    assert!(got[0].verify(&secret) && got[1].verify(&secret));
    assert_ne!(
        got[0].header("webhook-timestamp"),
        got[1].header("webhook-timestamp")
    );
    assert_ne!(
        got[0].header("webhook-signature"),
        got[1].header("webhook-signature")
    );
    let listed = app.attempts(&app_id, &msg).await;
    assert_eq!(listed[0]["trigger"], "replay");
    assert_eq!(listed[1]["trigger"], "scheduled");

    // The same over REST, to one endpoint.
    let (status, body) = app
        .post(
            &format!("/apps/{app_id}/messages/{msg}/replay"),
            json!({"endpoint_id": ep}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queued"], 1);
    receiver.wait_for(3, WAIT).await;
}

#[tokio::test]
async fn retry_sends_a_waiting_delivery_now() {
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "1h")]).await;
    let receiver =
        Receiver::with(Arc::new(|n| Reply::status(if n == 0 { 500 } else { 204 }))).await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&app_id, "a.b", json!({})).await;
    let m = app
        .wait_for_message(&app_id, &msg, WAIT, |m| {
            m["deliveries"][0]["attempt_count"] == 1 && deliveries_in(m, "pending")
        })
        .await;
    let delivery = m["deliveries"][0]["id"].as_str().unwrap().to_owned();

    let mut ws = admin(&app).await;
    ws.send(json!({"req": "now", "op": "retry", "delivery_id": delivery}))
        .await;
    let frames = ws.until(is("attempt")).await;
    assert_eq!(frames[1]["type"], "done");
    assert_eq!(frames.last().unwrap()["outcome"], "succeeded");
    app.wait_for_message(&app_id, &msg, WAIT, all_delivered)
        .await;
}

#[tokio::test]
async fn bad_commands_get_error_frames_and_the_connection_stays_up() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_a, _, _) = app.app_with_endpoint(&receiver).await;
    let (_, ep_b, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&app_a, "a.b", json!({})).await;
    app.wait_for_message(&app_a, &msg, WAIT, all_delivered)
        .await;
    let mut ws = admin(&app).await;

    ws.send_raw("{not json").await;
    assert_eq!(ws.next().await["code"], "bad_request");
    ws.send_raw("[1, 2]").await;
    assert_eq!(ws.next().await["code"], "bad_request");
    let e = ws
        .error_for(json!({"op": "replay", "message_id": msg}))
        .await;
    assert_eq!(e["code"], "bad_request", "no req");
    let e = ws.error_for(json!({"req": "1"})).await;
    assert_eq!(
        (e["req"].clone(), e["code"].clone()),
        (json!("1"), json!("unknown_op"))
    );
    let e = ws.error_for(json!({"req": "2", "op": "explode"})).await;
    assert_eq!(e["code"], "unknown_op");
    let e = ws
        .error_for(json!({"req": "3", "op": "replay", "message_id": "msg_nope"}))
        .await;
    assert_eq!(e["code"], "invalid");
    let e = ws
        .error_for(json!({"req": "4", "op": "replay", "message_id": "msg_0000000000007000800000000000000a"}))
        .await;
    assert_eq!(e["code"], "not_found");
    // An endpoint of another application.
    let e = ws
        .error_for(json!({"req": "5", "op": "replay", "message_id": msg, "endpoint_id": ep_b}))
        .await;
    assert_eq!(e["code"], "not_found");
    // The message of another application.
    let e = ws
        .error_for(json!({"req": "6", "op": "replay", "message_id": msg,
                          "app": app.create_app().await}))
        .await;
    assert_eq!(e["code"], "not_found");
    let e = ws
        .error_for(json!({"req": "7", "op": "retry", "delivery_id": "dlv_0000000000007000800000000000000a"}))
        .await;
    assert_eq!(e["code"], "not_found");
    let e = ws
        .error_for(json!({"req": "8", "op": "recover", "endpoint_id": ep_b, "since": "yesterday"}))
        .await;
    assert_eq!(e["code"], "invalid");

    // A disabled endpoint is refused, clearly.
    let (_, ep_a) = {
        let (_, page) = app.get(&format!("/apps/{app_a}/endpoints")).await;
        ((), page["data"][0]["id"].as_str().unwrap().to_owned())
    };
    app.patch(
        &format!("/apps/{app_a}/endpoints/{ep_a}"),
        json!({"disabled": true}),
    )
    .await;
    let e = ws
        .error_for(json!({"req": "9", "op": "replay", "message_id": msg, "endpoint_id": ep_a}))
        .await;
    assert_eq!(e["code"], "endpoint_disabled");
    let (status, body) = app
        .post(
            &format!("/apps/{app_a}/messages/{msg}/replay"),
            json!({"endpoint_id": ep_a}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["code"].clone()),
        (409, json!("endpoint_disabled"))
    );

    // Still up: a good command works.
    app.patch(
        &format!("/apps/{app_a}/endpoints/{ep_a}"),
        json!({"disabled": false}),
    )
    .await;
    ws.send(json!({"req": "ok", "op": "replay", "message_id": msg}))
        .await;
    let frames = ws.until(is("attempt")).await;
    assert_eq!(frames.last().unwrap()["req"], "ok");
}

/// 1,000 dead deliveries: the recover streams its progress, ends with queued 1000, and
/// the receiver then gets every one of them.
#[tokio::test]
async fn a_recover_of_a_thousand_dead_deliveries_reports_progress_and_sends_them_all() {
    const N: usize = 1000;
    let app = spawn_app_with(&[
        ("HERALD_RETRY_SCHEDULE", "none"),
        ("HERALD_WORKER_CONCURRENCY", "32"),
    ])
    .await;
    let (receiver, mut ws) = recover_dead(&app, N, "rec").await;
    let frames = ws.until(is("done")).await;
    assert_eq!(frames[0]["type"], "ack");
    let progress: Vec<&Value> = frames.iter().filter(|f| f["type"] == "progress").collect();
    assert!(progress.len() >= 2, "{frames:?}");
    assert_eq!(progress[0]["total"], N);
    assert_eq!(frames.last().unwrap()["queued"], N);

    let got = receiver.wait_for(2 * N, Duration::from_secs(60)).await;
    let replayed: HashSet<&str> = got[N..].iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(replayed.len(), N, "each dead delivery once");
    // Their attempts come back on the socket, tagged with the command.
    let mut tagged = frames.iter().filter(|f| f["type"] == "attempt").count();
    while tagged < N {
        let f = ws.next().await;
        if f["type"] == "attempt" {
            assert_eq!(f["req"], "rec");
            tagged += 1;
        }
    }
}

/// Two recovers of the same window at the same moment queue each delivery once.
#[tokio::test]
async fn recovering_one_window_twice_at_once_does_not_double_the_sends() {
    const N: usize = 300;
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "none")]).await;
    let Dead {
        receiver,
        app_id,
        ep,
        since,
    } = dead_deliveries(&app, N).await;

    let path = format!("/apps/{app_id}/endpoints/{ep}/recover");
    let body = json!({"since": since});
    let (a, b) = tokio::join!(app.post(&path, body.clone()), app.post(&path, body));
    assert_eq!((a.0.as_u16(), b.0.as_u16()), (202, 202));
    receiver.wait_for(2 * N, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.count(), 2 * N, "a delivery was sent twice");
}

/// A window that starts before 1970 holds every dead delivery (`uuid_v7_floor` took such a
/// time for one above every id until migration 0037, and the recover queued none).
#[tokio::test]
async fn a_recover_since_before_1970_takes_every_dead_delivery() {
    const N: usize = 3;
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "none")]).await;
    let Dead {
        receiver,
        app_id,
        ep,
        ..
    } = dead_deliveries(&app, N).await;
    let (status, body) = app
        .post(
            &format!("/apps/{app_id}/endpoints/{ep}/recover"),
            json!({"since": "1969-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status.as_u16(), 202, "{body}");
    assert_eq!(body["queued"], N, "{body}");
    // The N failed requests, then the N recovered ones.
    receiver.wait_for(2 * N, Duration::from_secs(10)).await;
}

async fn wait_dead(app: &TestServer, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let dead = count(
            &app.pool,
            "select count(*) from herald.delivery where state = 'dead'",
        )
        .await;
        if dead as usize == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{dead} of {n} dead");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fails every request while `failing` holds, then answers 204.
async fn switchable_receiver() -> (Receiver, Arc<AtomicUsize>) {
    let failing = Arc::new(AtomicUsize::new(1));
    let flag = failing.clone();
    let receiver = Receiver::with(Arc::new(move |_| {
        Reply::status(if flag.load(Ordering::SeqCst) == 1 {
            500
        } else {
            204
        })
    }))
    .await;
    (receiver, failing)
}

#[tokio::test]
async fn a_client_that_goes_away_does_not_cancel_acknowledged_work() {
    const N: usize = 200;
    let app = spawn_app_with(&[
        ("HERALD_RETRY_SCHEDULE", "none"),
        ("HERALD_RECOVER_BATCH", "10"),
    ])
    .await;
    let (receiver, mut ws) = recover_dead(&app, N, "bye").await;
    assert_eq!(ws.next().await["type"], "ack");
    drop(ws);
    receiver.wait_for(2 * N, Duration::from_secs(30)).await;
}

/// The process running a recover is stopped part-way and started again: the recover
/// resumes after its last committed batch. Every dead delivery is sent exactly once more.
#[tokio::test]
async fn a_recover_survives_a_restart_part_way() {
    const N: usize = 400;
    let db_url = crate::helpers::fresh_database().await;
    let env = [
        ("HERALD_RETRY_SCHEDULE", "none"),
        // Small batches, so that the recover is still running when the process stops.
        ("HERALD_RECOVER_BATCH", "4"),
    ];
    let first = Process::start(&db_url, &env).await;
    let (receiver, failing) = switchable_receiver().await;
    let (app_id, ep, _) = first.app_with_endpoint(&receiver.url()).await;
    let since = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    for i in 0..N {
        first.send(&app_id, "order.failed", json!({"i": i})).await;
    }
    let pool = herald::db::connect(&db_url, 2).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    poll_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        "deliveries did not die",
        async || count("select count(*) from delivery where state = 'dead'").await >= N as i64,
    )
    .await;
    failing.store(0, Ordering::SeqCst);

    let started = first
        .api(
            reqwest::Method::POST,
            &format!("/apps/{app_id}/endpoints/{ep}/recover"),
            json!({"since": since}),
        )
        .await;
    assert_eq!(started["queued"], N);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut first = first;
    first.signal("-TERM");
    assert!(first.wait_exit(Duration::from_secs(20)).await);
    let part = count("select queued::bigint from recovery").await;
    assert!(
        part > 0 && part < N as i64,
        "stopped with {part} of {N} queued: the test needs a recover caught part-way"
    );

    let _second = Process::start(&db_url, &env).await;
    let got = receiver.wait_for(2 * N, Duration::from_secs(60)).await;
    poll_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        "the recover never finished",
        async || count("select count(*) from recovery where finished_at is null").await == 0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.count(),
        2 * N,
        "something was sent more than twice"
    );
    let mut per_id = std::collections::HashMap::new();
    for r in &got {
        *per_id.entry(r.header("webhook-id").to_owned()).or_insert(0) += 1;
    }
    assert_eq!(per_id.len(), N);
    assert!(
        per_id.values().all(|n| *n == 2),
        "each once failed, once replayed"
    );
    assert_eq!(count("select queued::bigint from recovery").await, N as i64);
}

#[tokio::test]
async fn the_server_pings_to_keep_the_channel_alive() {
    let app = spawn_app().await;
    let mut ws = admin(&app).await;
    let frame = tokio::time::timeout(Duration::from_secs(5), ws.ws.next())
        .await
        .expect("a frame")
        .unwrap()
        .unwrap();
    assert!(matches!(frame, Message::Ping(_)), "{frame:?}");
    // The library answered with a pong; the channel still works.
    ws.send(json!({"req": "p", "op": "nope"})).await;
    assert_eq!(ws.next().await["code"], "unknown_op");
}

/// An application whose `n` messages all died at a receiver that has since recovered.
struct Dead {
    receiver: Receiver,
    app_id: String,
    ep: String,
    /// A minute before the first message: a recover window that holds them all.
    since: String,
}

async fn dead_deliveries(app: &TestServer, n: usize) -> Dead {
    let (receiver, failing) = switchable_receiver().await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;
    let since = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    for i in 0..n {
        app.send(&app_id, "order.failed", json!({"i": i})).await;
    }
    wait_dead(app, n).await;
    failing.store(0, Ordering::SeqCst);
    Dead {
        receiver,
        app_id,
        ep,
        since,
    }
}

/// `n` dead deliveries (as [`dead_deliveries`]) and a channel that has asked to recover them,
/// tagged `req`.
async fn recover_dead(app: &TestServer, n: usize, req: &str) -> (Receiver, Admin) {
    let Dead {
        receiver,
        ep,
        since,
        ..
    } = dead_deliveries(app, n).await;
    let mut ws = admin(app).await;
    ws.recover(req, &ep, &since).await;
    (receiver, ws)
}

/// A recover of 100,000 dead deliveries streams its progress to the end while normal
/// traffic to another application keeps flowing. (The recovered deliveries are then sent
/// at the endpoint's pace; this test stops once they are all queued.)
#[tokio::test]
#[ignore = "long: make chaos"]
async fn a_recover_of_100k_streams_progress_and_leaves_room_for_normal_traffic() {
    const DEAD: i64 = 100_000;
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;
    insert_dead(&app, &app_id, &ep, DEAD).await;
    let other = Receiver::start().await;
    let (other_app, _, _) = app.app_with_endpoint(&other).await;

    let mut ws = admin(&app).await;
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    ws.recover("big", &ep, &since).await;
    let started = std::time::Instant::now();
    // Normal traffic meanwhile: one message every 20 ms, its delivery time measured.
    let sender = {
        let app = reqwest::Client::new();
        let url = format!("http://{}/api/v1/apps/{other_app}/messages", ws_addr(&ws));
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..150 {
                let at = std::time::Instant::now();
                let r = app
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .json(&json!({"event_type": "normal", "payload": {"i": i}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
                let body: Value = r.json().await.unwrap();
                sent.push((body["id"].as_str().unwrap().to_owned(), at));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        })
    };
    let frames = ws.until(is("done")).await;
    let took = started.elapsed();
    let progress = frames.iter().filter(|f| f["type"] == "progress").count();
    assert_eq!(frames.last().unwrap()["queued"], DEAD);
    assert!(progress > 100, "only {progress} progress frames");

    let sent = sender.await.unwrap();
    let got = other.wait_for(sent.len(), Duration::from_secs(30)).await;
    let mut latencies: Vec<Duration> = sent
        .iter()
        .map(|(id, at)| {
            let r = got.iter().find(|r| r.header("webhook-id") == id).unwrap();
            r.at - *at
        })
        .collect();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "recover of {DEAD}: queued in {took:?} with {progress} progress frames; \
         normal traffic meanwhile: p50 {:?}, p99 {p99:?}",
        latencies[latencies.len() / 2]
    );
    assert!(
        p99 < Duration::from_secs(1),
        "normal traffic starved: p99 {p99:?}"
    );
}

fn ws_addr(ws: &Admin) -> std::net::SocketAddr {
    match ws.ws.get_ref() {
        MaybeTlsStream::Plain(s) => s.peer_addr().unwrap(),
        _ => unreachable!("plain ws"),
    }
}

#[tokio::test]
async fn a_replay_while_an_attempt_is_in_flight_is_refused() {
    let app = spawn_app().await;
    let receiver = Receiver::slow(Duration::from_millis(1500)).await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&app_id, "a.b", json!({})).await;
    receiver.wait_for(1, WAIT).await; // the request is now in flight
    let mut ws = admin(&app).await;
    let e = ws
        .error_for(json!({"req": "busy", "op": "replay", "message_id": msg, "endpoint_id": ep}))
        .await;
    assert_eq!(e["code"], "in_flight", "{e}");
    app.wait_for_message(&app_id, &msg, WAIT, all_delivered)
        .await;
}

/// A client that never reads its socket: its frames pile up in its own buffers only. The
/// recover it asked for, and the workers, carry on at full speed.
#[tokio::test]
async fn a_client_that_never_reads_does_not_hold_up_the_work() {
    const DEAD: i64 = 3000;
    let app = spawn_app_with(&[("HERALD_WORKER_CONCURRENCY", "32")]).await;
    // Every attempt keeps the first 4 KiB of this body, and its frame carries them: 3,000
    // frames of about 4.7 KB are 14 MB, several times what the kernel buffers between the
    // two sockets (at most 4 MB sent and unread here), so the connection's writer must block.
    let body = "x".repeat(8192);
    let receiver = Receiver::answering(Reply::status(200).with_body(body)).await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;
    insert_dead(&app, &app_id, &ep, DEAD).await;
    let mut ws = admin(&app).await;
    let since = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    ws.recover("r", &ep, &since).await;
    // ...and never reads again, while its attempt frames are produced.
    receiver
        .wait_for(DEAD as usize, Duration::from_secs(60))
        .await;
    // Other requests are served meanwhile.
    let (status, _) = app.get("/apps").await;
    assert_eq!(status, 200);
    drop(ws);
}

/// `n` dead deliveries for the endpoint, written directly: sending them through the API and
/// letting them fail would take far longer than the recovers that use them.
async fn insert_dead(app: &TestServer, app_id: &str, ep: &str, n: i64) {
    let app_uuid = app_id.trim_start_matches("app_");
    let ep_uuid = ep.trim_start_matches("ep_");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "with m as (
             insert into herald.message (app_id, event_type, payload)
             select '{app_uuid}', 'order.failed', json_build_object('i', g)
               from generate_series(1, {n}) g
             returning id)
         insert into herald.delivery (id, message_id, endpoint_id, state, attempt_count,
                                      last_error)
         select herald.uuid_v7_at(id), id, '{ep_uuid}', 'dead', 10, 'HTTP 500' from m"
    )))
    .execute(&app.pool)
    .await
    .unwrap();
}

/// Messages accepted while an endpoint is disabled get no delivery for it, so enabling it
/// again sends none of them (what the dashboard and the API say). A recover of a window
/// sends them: every message of the window the endpoint, as subscribed now, never got,
/// since it was created, once, and neither what it already got nor other event types.
#[tokio::test]
async fn a_recover_sends_what_arrived_while_the_endpoint_was_disabled() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let app_id = app.create_app().await;
    // Sent before the endpoint existed: never the endpoint's to recover.
    app.send(&app_id, "invoice.paid", json!({"n": "before"}))
        .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let (ep, _) = app
        .create_endpoint(
            &app_id,
            json!({"url": receiver.url(), "event_types": ["invoice.paid"]}),
        )
        .await;
    let first = app.send(&app_id, "invoice.paid", json!({"n": 0})).await;
    receiver.wait_for(1, WAIT).await;

    let ep_path = format!("/apps/{app_id}/endpoints/{ep}");
    assert_eq!(app.patch(&ep_path, json!({"disabled": true})).await.0, 200);
    let mut missed = HashSet::new();
    for n in 1..=3 {
        missed.insert(app.send(&app_id, "invoice.paid", json!({"n": n})).await);
    }
    app.send(&app_id, "other.type", json!({"n": "other"})).await;
    assert_eq!(app.patch(&ep_path, json!({"disabled": false})).await.0, 200);
    let after = app.send(&app_id, "invoice.paid", json!({"n": 4})).await;
    receiver.wait_for(2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = |r: &Receiver| -> Vec<String> {
        r.received()
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect()
    };
    assert_eq!(
        ids(&receiver),
        [first.clone(), after.clone()],
        "enabling sent nothing missed"
    );

    let (status, started) = app
        .post(&format!("{ep_path}/recover"), json!({"since": since}))
        .await;
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["queued"], 3, "{started}");
    receiver.wait_for(5, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = ids(&receiver);
    assert_eq!(got.len(), 5, "{got:?}");
    let recovered: HashSet<String> = got[2..].iter().cloned().collect();
    assert_eq!(recovered, missed);

    // A second recover of the same window finds nothing left to send.
    let (status, again) = app
        .post(&format!("{ep_path}/recover"), json!({"since": since}))
        .await;
    assert_eq!((status.as_u16(), again["queued"].as_i64()), (202, Some(0)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 5);

    // Had those deliveries died (as if the receiver were still failing), a recover of the
    // same window would find them: they belong to it, like their messages.
    let died = sqlx::query(
        "update herald.delivery set state = 'dead'
          where trigger = 'replay' and endpoint_id = (select id from herald.endpoint)",
    )
    .execute(&app.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(died, 3);
    let until = chrono::Utc::now();
    let (status, third) = app
        .post(
            &format!("{ep_path}/recover"),
            json!({"since": since, "until": until - chrono::Duration::milliseconds(1)}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), third["queued"].as_i64()),
        (202, Some(3)),
        "{third}"
    );
    receiver.wait_for(8, WAIT).await;
}

#[tokio::test]
async fn an_erased_message_is_neither_replayed_nor_retried() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&app_id, "invoice.paid", json!({"n": 1})).await;
    let m = app
        .wait_for_message(&app_id, &msg, WAIT, all_delivered)
        .await;
    let delivery = m["deliveries"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.delete(&format!("/apps/{app_id}/messages/{msg}/payload"))
            .await
            .0,
        200
    );

    let mut ws = admin(&app).await;
    let refused = ws
        .error_for(json!({"req": "r", "op": "replay", "message_id": msg}))
        .await;
    assert_eq!(refused["code"], "payload_erased", "{refused}");
    let refused = ws
        .error_for(json!({"req": "t", "op": "retry", "delivery_id": delivery}))
        .await;
    assert_eq!(refused["code"], "payload_erased", "{refused}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 1);
}

#[tokio::test]
async fn an_application_tokens_commands_reach_its_application_only() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (a, a_ep, _) = app.app_with_endpoint(&receiver).await;
    let (b, b_ep, _) = app.app_with_endpoint(&receiver).await;
    let a_msg = app.send(&a, "invoice.paid", json!({})).await;
    let b_msg = app.send(&b, "invoice.paid", json!({})).await;
    let a_done = app.wait_for_message(&a, &a_msg, WAIT, all_delivered).await;
    let b_done = app.wait_for_message(&b, &b_msg, WAIT, all_delivered).await;
    let delivery = |m: &Value| m["deliveries"][0]["id"].as_str().unwrap().to_owned();
    let (a_dlv, b_dlv) = (delivery(&a_done), delivery(&b_done));
    let (status, created) = app
        .post(
            "/tokens",
            json!({"name": "replayer", "app": a, "scopes": ["replay"]}),
        )
        .await;
    assert_eq!(status.as_u16(), 201, "{created}");
    let bearer = format!("Bearer {}", created["token"].as_str().unwrap());
    let mut ws = open(&app, &[("authorization", &bearer)]).await.unwrap();

    let since = "2020-01-01T00:00:00Z";
    for (n, command) in [
        json!({"op": "replay", "message_id": b_msg}),
        json!({"op": "replay", "message_id": b_msg, "app": b}),
        json!({"op": "replay", "message_id": a_msg, "app": b}),
        json!({"op": "retry", "delivery_id": b_dlv}),
        json!({"op": "recover", "endpoint_id": b_ep, "since": since}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut command = command;
        command["req"] = json!(format!("x{n}"));
        ws.send(command.clone()).await;
        let answer = ws.next().await;
        assert_eq!(answer["type"], "error", "{command}: {answer}");
        assert_eq!(answer["code"], "not_found", "{command}: {answer}");
    }
    // Nothing was sent to B's endpoint again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.attempts(&b, &b_msg).await.len(), 1);

    // Its own application's work goes through.
    for command in [
        json!({"req": "own1", "op": "replay", "message_id": a_msg}),
        json!({"req": "own2", "op": "retry", "delivery_id": a_dlv}),
        json!({"req": "own3", "op": "recover", "endpoint_id": a_ep, "since": since}),
    ] {
        ws.send(command.clone()).await;
        let answer = loop {
            let frame = ws.next().await;
            if frame["req"] == command["req"] {
                break frame;
            }
        };
        assert!(
            answer["type"] == "ack" || answer["code"] == "in_flight",
            "{command}: {answer}"
        );
    }
    app.stop().await;
}
