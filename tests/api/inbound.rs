//! What a client gets to hold, on real sockets: a request head, a request body and an
//! ordinary request each have a time limit, connections beyond the cap wait, and a client
//! that does not let go cannot keep the process from stopping.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Receiver, SseClient, TOKEN, TestServer, exhaust, spawn_app_with};

/// Reads until the server closes the connection (or resets it), giving up after `within`;
/// returns what it said and how long it took, or `None` if it kept the connection open.
async fn until_closed(tcp: &mut TcpStream, within: Duration) -> Option<(String, Duration)> {
    let started = Instant::now();
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((
                    String::from_utf8_lossy(&said).into_owned(),
                    started.elapsed(),
                ));
            }
            Ok(Ok(n)) => said.extend_from_slice(&buf[..n]),
        }
    }
}

/// A connection that has sent the head of a `POST /api/v1/apps` announcing a 100-byte body
/// and then `sent` of it.
async fn slow_post(app: &TestServer, sent: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/apps HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n",
        app.addr
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(sent).await.unwrap();
    tcp
}

#[tokio::test]
async fn half_a_request_head_is_disconnected_after_the_header_timeout() {
    let app = spawn_app_with(&[("HERALD_HEADER_TIMEOUT", "1s")]).await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: herald\r\n")
        .await
        .unwrap();
    let (_, took) = until_closed(&mut tcp, Duration::from_secs(5))
        .await
        .expect("the half-sent head was still connected after 5 s");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    assert!(took < Duration::from_secs(3), "closed after {took:?}");

    // A connection that sends nothing at all is closed the same way.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    assert!(
        until_closed(&mut idle, Duration::from_secs(3))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn a_body_sent_a_byte_a_second_is_cut_off_after_the_body_timeout() {
    let app = spawn_app_with(&[("HERALD_BODY_TIMEOUT", "2s")]).await;
    let mut tcp = slow_post(&app, b"{").await;
    let (mut read, mut write) = tcp.split();
    let trickle = async {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
    };
    let started = Instant::now();
    let mut said = Vec::new();
    let answer = async {
        let _ = tokio::time::timeout(Duration::from_secs(6), read.read_to_end(&mut said)).await;
    };
    tokio::select! {
        _ = trickle => {}
        _ = answer => {}
    }
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&said);
    assert!(
        took < Duration::from_secs(4),
        "still reading after {took:?}: {said}"
    );
    assert!(said.starts_with("HTTP/1.1 408"), "{said}");
    assert!(said.contains("\"code\":\"request_timeout\""), "{said}");
    // Nothing half-sent was taken for an application.
    let (_, apps) = app.get("/apps").await;
    assert_eq!(apps["data"], json!([]));
}

#[tokio::test]
async fn a_slow_request_times_out_while_the_live_feed_stays_open() {
    let app = spawn_app_with(&[
        ("HERALD_HTTP_TIMEOUT", "1s"),
        ("HERALD_SSE_KEEP_ALIVE", "300ms"),
    ])
    .await;
    let app_id = app.create_app().await;
    let mut stream = SseClient::connect(&app, "", None).await;
    // Every connection taken: a send waits for one (up to 5 s) and so outlasts the limit.
    let held = exhaust(&app.pool).await;
    let started = Instant::now();
    let (status, err) = app
        .post(
            &format!("/apps/{app_id}/messages"),
            json!({"event_type": "order.paid", "payload": {}}),
        )
        .await;
    let took = started.elapsed();
    drop(held);
    assert_eq!(status.as_u16(), 503, "{err}");
    assert_eq!(err["code"], "timeout", "{err}");
    assert!(err["message"].as_str().unwrap().contains("Idempotency-Key"));
    assert!(took < Duration::from_secs(3), "answered after {took:?}");

    // The stream has been open for well over the limit and still gets its keep-alives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        assert!(
            stream.next_frame(Duration::from_secs(1)).await.is_some(),
            "the live feed was cut off"
        );
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_while_the_workers_deliver() {
    let mut app = spawn_app_with(&[
        ("HERALD_MAX_CONNECTIONS", "2"),
        ("HERALD_HEADER_TIMEOUT", "30s"),
    ])
    .await;
    // Set up on connections that close after each call, so none of them keeps a slot.
    app.http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let receiver = Receiver::start().await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let idle = [
        TcpStream::connect(app.addr).await.unwrap(),
        TcpStream::connect(app.addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let probe = || async {
        reqwest::Client::new()
            .get(format!("http://{}/healthz", app.addr))
            .timeout(Duration::from_secs(1))
            .send()
            .await
    };
    assert!(probe().await.is_err(), "a third connection was served");

    // The workers still deliver: a message queued through SQL (the outbox function)
    // reaches the receiver while the API is full.
    sqlx::query("select herald.send_message($1, 'order.paid', '{}')")
        .bind(&app_id)
        .execute(&app.pool)
        .await
        .unwrap();
    receiver.wait_for(1, Duration::from_secs(5)).await;

    drop(idle);
    let served = probe().await.expect("served once a slot is free");
    assert_eq!(served.status().as_u16(), 200);
}

#[tokio::test]
async fn a_client_that_does_not_let_go_cannot_hold_up_shutdown() {
    let app = spawn_app_with(&[
        ("HERALD_SHUTDOWN_GRACE", "1s"),
        ("HERALD_BODY_TIMEOUT", "60s"),
        ("HERALD_HTTP_TIMEOUT", "60s"),
    ])
    .await;
    // A request whose body never ends: the server is reading it when shutdown starts.
    let _stuck = slow_post(&app, b"{").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("still running 10 s after shutdown was asked for");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "stopped after {took:?}");
}
