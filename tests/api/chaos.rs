//! Long scenarios with real processes (`make chaos`; `make test` skips them). Each reports
//! accepted, delivered, lost and duplicate counts, and asserts that nothing was lost.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Receiver, fresh_database};
use crate::process::Process;

/// What a scenario saw, printed so a run can be read without a debugger.
struct Tally {
    accepted: Vec<String>,
    received: HashMap<String, usize>,
}

impl Tally {
    fn lost(&self) -> Vec<&String> {
        self.accepted
            .iter()
            .filter(|id| !self.received.contains_key(*id))
            .collect()
    }

    fn duplicates(&self) -> usize {
        self.received.values().map(|n| n - 1).sum()
    }

    fn report(&self, scenario: &str) {
        eprintln!(
            "{scenario}: accepted {}, delivered {}, lost {}, duplicates {}",
            self.accepted.len(),
            self.received.len(),
            self.lost().len(),
            self.duplicates()
        );
    }
}

fn tally(accepted: Vec<String>, receiver: &Receiver) -> Tally {
    let mut received = HashMap::new();
    for r in receiver.received() {
        *received
            .entry(r.header("webhook-id").to_owned())
            .or_insert(0) += 1;
    }
    Tally { accepted, received }
}

/// docs/architecture.md §2.1: nothing accepted is lost on kill -9. Herald is killed three times while 3,000
/// messages are sent and delivered, and restarted each time. Every message answered 202 is
/// delivered; duplicates are bounded by what was in flight at the kills (the workers).
#[tokio::test]
#[ignore = "long: make chaos"]
async fn kill_9_three_times_under_load_loses_nothing() {
    const MESSAGES: usize = 3000;
    const WORKERS: usize = 64;
    let db_url = fresh_database().await;
    let env = [("HERALD_WORKER_CONCURRENCY", "64")];
    // A receiver that takes a little time, so that many requests are in flight at a kill.
    let receiver = Receiver::slow(Duration::from_millis(20)).await;
    let mut herald = Process::start(&db_url, &env).await;
    let (app_id, _, _) = herald.app_with_endpoint(&receiver.url()).await;

    let mut accepted = Vec::new();
    let kills = [MESSAGES / 4, MESSAGES / 2, 3 * MESSAGES / 4];
    for i in 0..MESSAGES {
        if kills.contains(&i) {
            herald.signal("-KILL");
            herald.wait_exit(Duration::from_secs(10)).await;
            herald = Process::start(&db_url, &env).await;
        }
        let sent = herald.send(&app_id, "order.placed", json!({"i": i})).await;
        if let Some(id) = sent["id"].as_str() {
            accepted.push(id.to_owned());
        }
    }
    assert_eq!(
        accepted.len(),
        MESSAGES,
        "sends between kills are all accepted"
    );

    // Leases of the killed processes expire (2 x timeout + 5 s), then the rest goes out.
    let t = settle(accepted, &receiver).await;
    t.report("kill -9 x3");
    assert!(t.lost().is_empty(), "lost: {:?}", t.lost());
    assert!(
        t.duplicates() <= kills.len() * WORKERS,
        "{} duplicates, more than was in flight at the kills",
        t.duplicates()
    );
}

/// docs/architecture.md §2.1: nothing accepted is lost on a PostgreSQL restart. The test cluster is stopped
/// with `-m immediate` (a crash) in the middle of a stream of sends and started again 3 s
/// later. Herald reconnects by itself; `/readyz` says the database is away; sends during
/// the outage fail cleanly with 503 within seconds; every accepted message is delivered.
#[tokio::test]
#[ignore = "long: make chaos (restarts the test cluster)"]
async fn a_database_restart_under_load_loses_nothing() {
    let (Ok(pg_dir), Ok(pg_port)) = (
        std::env::var("HERALD_TEST_PG_DIR"),
        std::env::var("HERALD_TEST_PG_PORT"),
    ) else {
        panic!("run with `make chaos`: it owns the cluster this test restarts");
    };
    let db_url = fresh_database().await;
    let receiver = Receiver::start().await;
    let herald = Process::start(&db_url, &[]).await;
    let (app_id, _, _) = herald.app_with_endpoint(&receiver.url()).await;

    let addr = herald.addr;
    let http = reqwest::Client::new();
    let sender = {
        let http = http.clone();
        let app_id = app_id.clone();
        tokio::spawn(async move {
            let (mut accepted, mut unavailable, mut slowest) = (Vec::new(), 0, Duration::ZERO);
            for i in 0..1500 {
                let started = std::time::Instant::now();
                let r = http
                    .post(format!("http://{addr}/api/v1/apps/{app_id}/messages"))
                    .bearer_auth(crate::helpers::TOKEN)
                    .json(&json!({"event_type": "order.placed", "payload": {"i": i}}))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .expect("Herald answers, even without its database");
                slowest = slowest.max(started.elapsed());
                match r.status().as_u16() {
                    202 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        accepted.push(body["id"].as_str().unwrap().to_owned());
                    }
                    503 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        assert_eq!(body["code"], "unavailable", "{body}");
                        unavailable += 1;
                    }
                    other => panic!("send answered {other}: {}", r.text().await.unwrap()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (accepted, unavailable, slowest)
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let pg = |args: &[&str]| {
        let ok = std::process::Command::new("scripts/pg.sh")
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "scripts/pg.sh {args:?}");
    };
    pg(&["crash", &pg_dir]);
    let down = std::time::Instant::now();
    let mut saw_unready = false;
    // Longer than the pool's 5 s wait for a connection: a send that waits for the database
    // that long is refused with 503, and one that arrives while it is back succeeds. (A 3 s
    // outage relied on a send being mid-statement at the crash.)
    while down.elapsed() < Duration::from_secs(7) {
        if let Ok(r) = http.get(format!("http://{addr}/readyz")).send().await
            && r.status().as_u16() == 503
        {
            saw_unready = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pg(&["start", &pg_dir, &pg_port, "test"]);

    let (accepted, unavailable, slowest) = sender.await.unwrap();
    assert!(saw_unready, "/readyz never said the database was away");
    assert!(
        unavailable > 0,
        "no send fell in the outage; the test proves nothing"
    );
    assert!(slowest < Duration::from_secs(10), "a send took {slowest:?}");

    let t = settle(accepted, &receiver).await;
    t.report(&format!(
        "database restart ({unavailable} sends refused with 503)"
    ));
    assert!(t.lost().is_empty(), "lost: {:?}", t.lost());
    let ready = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200, "Herald reconnected by itself");
}

/// Scaling out: three processes share one database. With a healthy receiver nothing is
/// lost or sent twice and every process delivers a share; when one is killed, the others
/// take over its leases.
#[tokio::test]
#[ignore = "long: make chaos"]
async fn three_processes_share_the_load_and_take_over_from_a_dead_one() {
    const MESSAGES: usize = 3000;
    let db_url = fresh_database().await;
    let receiver = Receiver::slow(Duration::from_millis(5)).await;
    let env = [("HERALD_WORKER_CONCURRENCY", "32")];
    let mut processes = vec![
        Process::start(&db_url, &env).await,
        Process::start(&db_url, &env).await,
        Process::start(&db_url, &env).await,
    ];
    let (app_id, _, _) = processes[0].app_with_endpoint(&receiver.url()).await;

    // Round-robin over the three, as a load balancer would.
    let mut accepted = Vec::new();
    for i in 0..MESSAGES / 2 {
        let sent = processes[i % 3]
            .send(&app_id, "order.placed", json!({"i": i}))
            .await;
        accepted.push(sent["id"].as_str().unwrap().to_owned());
    }
    wait_delivered(&accepted, &receiver).await;
    let healthy = tally(accepted.clone(), &receiver);
    healthy.report("three processes, healthy");
    assert_eq!(
        healthy.duplicates(),
        0,
        "a healthy cluster sends nothing twice"
    );
    let shares: Vec<f64> =
        futures_util::future::join_all(processes.iter().map(|p| attempts_made(p.addr))).await;
    eprintln!("attempts per process: {shares:?}");
    assert!(
        shares.iter().all(|s| *s >= MESSAGES as f64 / 2.0 / 10.0),
        "each process carries a share: {shares:?}"
    );

    // Messages queued from SQL (no direct dispatch): whichever process claims first sends.
    let pool = herald::db::connect(&db_url, 1).await.unwrap();
    let queued: Vec<String> = sqlx::query_scalar(
        "select herald.message_ref((herald.send_message($1, 'queued.item',
                                   json_build_object('i', g))).id)
           from generate_series(1, 600) g",
    )
    .bind(&app_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut all = accepted.clone();
    all.extend(queued);
    wait_delivered(&all, &receiver).await;
    let after: Vec<f64> =
        futures_util::future::join_all(processes.iter().map(|p| attempts_made(p.addr))).await;
    let claimed: Vec<f64> = after.iter().zip(&shares).map(|(a, b)| a - b).collect();
    eprintln!("queued deliveries claimed per process: {claimed:?}");
    assert!(
        claimed.iter().all(|c| *c > 0.0),
        "every process claims: {claimed:?}"
    );
    assert_eq!(tally(all.clone(), &receiver).duplicates(), 0);
    accepted = all;

    // Kill one while the second half is sent to the other two and delivered.
    let victim = processes.remove(2);
    let mut victim = victim;
    for i in MESSAGES / 2..MESSAGES {
        if i == MESSAGES / 2 + 200 {
            victim.signal("-KILL");
            victim.wait_exit(Duration::from_secs(10)).await;
        }
        let target = if i < MESSAGES / 2 + 200 {
            // The victim takes its share until it dies.
            match i % 3 {
                0 => &victim,
                1 => &processes[0],
                _ => &processes[1],
            }
        } else {
            &processes[i % 2]
        };
        let sent = target.send(&app_id, "order.placed", json!({"i": i})).await;
        accepted.push(sent["id"].as_str().unwrap().to_owned());
    }
    wait_delivered(&accepted, &receiver).await;
    let t = tally(accepted, &receiver);
    t.report("three processes, one killed");
    assert!(t.lost().is_empty(), "lost: {:?}", t.lost());
    assert!(
        t.duplicates() <= 32,
        "more duplicates than the victim had in flight"
    );
}

async fn wait_delivered(accepted: &[String], receiver: &Receiver) {
    assert!(
        settle(accepted.to_vec(), receiver).await.lost().is_empty(),
        "not all delivered in time"
    );
}

/// The tally once every accepted message has arrived, or after two minutes (leases of
/// killed processes expire after 2 x timeout + 5 s, then the rest goes out).
async fn settle(accepted: Vec<String>, receiver: &Receiver) -> Tally {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let t = tally(accepted.clone(), receiver);
        if t.lost().is_empty() || tokio::time::Instant::now() > deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `herald_attempts_total` summed over outcomes, from a process's `/metrics`.
async fn attempts_made(addr: std::net::SocketAddr) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("herald_attempts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the chaos receiver does with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Fail500,
    /// 429 with `Retry-After: 1`.
    TooMany,
    /// Reads the request and never answers (past Herald's 2 s timeout).
    Hang,
    /// Resets the connection without an answer.
    Reset,
    /// 200, with a body that trickles in over about a second.
    SlowBody,
    /// 301 to somewhere else: must not be followed.
    Moved,
    Ok,
}

struct Seen {
    webhook_id: String,
    behaviour: Behaviour,
    at: std::time::Instant,
}

/// A receiver on a raw socket, so that it can also hang, reset and trickle.
async fn chaos_receiver(
    choose: impl Fn() -> Behaviour + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Seen>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>> = Default::default();
    let log = seen.clone();
    let choose = std::sync::Arc::new(choose);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (log, choose) = (log.clone(), choose.clone());
            tokio::spawn(async move {
                // The request: headers, then content-length bytes of body.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                        .unwrap_or("")
                        .trim()
                        .to_owned()
                };
                let length: usize = header("content-length").parse().unwrap_or(0);
                while buf.len() < head_end + length {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let behaviour = choose();
                log.lock().unwrap().push(Seen {
                    webhook_id: header("webhook-id"),
                    behaviour,
                    at: std::time::Instant::now(),
                });
                let reply = |status: &str, extra: &str| {
                    format!(
                        "HTTP/1.1 {status}\r\n{extra}content-length: 0\r\nconnection: close\r\n\r\n"
                    )
                };
                match behaviour {
                    Behaviour::Fail500 => {
                        let _ = socket
                            .write_all(reply("500 Internal Server Error", "").as_bytes())
                            .await;
                    }
                    Behaviour::TooMany => {
                        let r = reply("429 Too Many Requests", "retry-after: 1\r\n");
                        let _ = socket.write_all(r.as_bytes()).await;
                    }
                    Behaviour::Hang => {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    Behaviour::Reset => {
                        let _ = socket.set_zero_linger();
                        drop(socket);
                    }
                    Behaviour::SlowBody => {
                        let head =
                            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\n";
                        let _ = socket.write_all(head.as_bytes()).await;
                        for _ in 0..10 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            if socket.write_all(b"x").await.is_err() {
                                return;
                            }
                        }
                    }
                    Behaviour::Moved => {
                        let r = reply(
                            "301 Moved Permanently",
                            "location: http://127.0.0.1:9/elsewhere\r\n",
                        );
                        let _ = socket.write_all(r.as_bytes()).await;
                    }
                    Behaviour::Ok => {
                        let _ = socket
                            .write_all(reply("204 No Content", "").as_bytes())
                            .await;
                    }
                }
            });
        }
    });
    (url, seen)
}

/// A receiver answering a random mix of failures: the outcomes follow the retry rules
/// exactly, and everything retryable is delivered in the end. A second endpoint answers
/// 410 Gone once and is disabled.
#[tokio::test]
#[ignore = "long: make chaos"]
async fn receiver_chaos_follows_the_retry_rules_and_delivers_everything_retryable() {
    use rand::Rng;
    const MESSAGES: usize = 60;
    let db_url = fresh_database().await;
    let env = [("HERALD_RETRY_SCHEDULE", "exponential:100ms,1.5,1s,40")];
    let herald = Process::start(&db_url, &env).await;
    let mix = [
        (Behaviour::Fail500, 20),
        (Behaviour::TooMany, 10),
        (Behaviour::Hang, 3),
        (Behaviour::Reset, 10),
        (Behaviour::SlowBody, 10),
        (Behaviour::Moved, 10),
        (Behaviour::Ok, 37),
    ];
    let (url, seen) = chaos_receiver(move || {
        let mut roll = rand::rng().random_range(0..100);
        for (b, weight) in mix {
            if roll < weight {
                return b;
            }
            roll -= weight;
        }
        Behaviour::Ok
    })
    .await;
    let gone = Receiver::with(std::sync::Arc::new(|_| crate::helpers::Reply::status(410))).await;
    let (app_id, _, _) = herald.app_with_endpoint(&url).await;
    herald.add_endpoint(&app_id, &gone.url()).await;
    let mut accepted = Vec::new();
    for i in 0..MESSAGES {
        let sent = herald.send(&app_id, "order.placed", json!({"i": i})).await;
        accepted.push(sent["id"].as_str().unwrap().to_owned());
    }

    // Everything the chaos receiver can eventually take is delivered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let delivered = |seen: &[Seen]| -> std::collections::HashSet<String> {
        seen.iter()
            .filter(|s| matches!(s.behaviour, Behaviour::Ok | Behaviour::SlowBody))
            .map(|s| s.webhook_id.clone())
            .collect()
    };
    loop {
        let done = delivered(&seen.lock().unwrap()).len();
        if done == MESSAGES {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} of {MESSAGES} delivered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen: Vec<Seen> = std::mem::take(&mut *seen.lock().unwrap());
    let count = |b: Behaviour| seen.iter().filter(|s| s.behaviour == b).count();
    eprintln!(
        "receiver chaos: {} requests: 500 x{}, 429 x{}, hang x{}, reset x{}, slow body x{}, 301 x{}, ok x{}",
        seen.len(),
        count(Behaviour::Fail500),
        count(Behaviour::TooMany),
        count(Behaviour::Hang),
        count(Behaviour::Reset),
        count(Behaviour::SlowBody),
        count(Behaviour::Moved),
        count(Behaviour::Ok)
    );
    // Retry-After is honoured: the try after a 429 comes at least a second later.
    for (i, s) in seen.iter().enumerate() {
        if s.behaviour != Behaviour::TooMany {
            continue;
        }
        if let Some(next) = seen[i + 1..].iter().find(|n| n.webhook_id == s.webhook_id) {
            let waited = next.at - s.at;
            assert!(
                waited >= Duration::from_millis(950),
                "retried {waited:?} after a 429"
            );
        }
    }
    // Each success ended its delivery: nothing was sent again after it.
    let mut done = std::collections::HashSet::new();
    for s in seen.iter() {
        assert!(!done.contains(&s.webhook_id), "sent again after a success");
        if matches!(s.behaviour, Behaviour::Ok | Behaviour::SlowBody) {
            done.insert(s.webhook_id.clone());
        }
    }
    let hangs = count(Behaviour::Hang);

    // What the attempts recorded: redirects not followed, timeouts, resets.
    let pool = herald::db::connect(&db_url, 1).await.unwrap();
    let kinds: Vec<(String, i64)> = sqlx::query_as(
        "select coalesce(error_kind, 'none'), count(*) from attempt group by 1 order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    eprintln!("attempts by error kind: {kinds:?}");
    let kind = |k: &str| kinds.iter().find(|(n, _)| n == k).map_or(0, |(_, c)| *c);
    assert!(kind("redirect") > 0 && kind("http_status") > 0);
    // Hangs are rare in the mix; when one happened, it was recorded as a timeout.
    assert!(kind("timeout") > 0 || hangs == 0);
    // The 410 endpoint: disabled with the reason; asked again only by the requests already
    // in flight when the first 410 came back (the rest die without a request).
    let disabled: (bool, Option<String>) =
        sqlx::query_as("select disabled, disabled_reason from endpoint where url = $1")
            .bind(gone.url())
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(disabled.0 && disabled.1.unwrap().contains("410"));
    let tally = tally(accepted, &gone);
    eprintln!(
        "410 endpoint: asked {} times",
        tally.received.values().sum::<usize>()
    );
}
