use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald::config::Config;
use herald::server::Server;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-admin-token-0123456789";

/// The server every test starts from: fast retries, quick polling, loopback allowed.
pub fn base_env() -> HashMap<String, String> {
    [
        ("HERALD_LISTEN", "127.0.0.1:0"),
        ("HERALD_ADMIN_TOKEN", TOKEN),
        ("HERALD_ALLOW_PRIVATE_TARGETS", "true"),
        ("HERALD_PORTAL_ALLOW_PRIVATE_TARGETS", "true"),
        ("HERALD_RETRY_SCHEDULE", "50ms,100ms,150ms"),
        ("HERALD_POLL_INTERVAL", "50ms"),
        ("HERALD_REQUEST_TIMEOUT", "2s"),
        ("HERALD_SHUTDOWN_GRACE", "5s"),
        ("HERALD_DB_POOL_SIZE", "5"),
        ("HERALD_WORKER_CONCURRENCY", "8"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A fresh, empty database on the test cluster; returns its URL.
pub async fn fresh_database() -> String {
    let server = std::env::var("HERALD_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .expect("run the tests with `make test` (it provides HERALD_TEST_DATABASE_URL)");
    let name = format!("herald_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = PgConnection::connect(&server).await.expect("test cluster");
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&name);
    url.to_string()
}

/// A fresh database with Herald's migrations up to `version` only, as an older release
/// left it (for upgrade tests), and a pool on it.
pub async fn database_at(version: i64) -> (String, PgPool) {
    let url = fresh_database().await;
    let pool = herald::db::connect(&url, 2).await.unwrap();
    sqlx::query("create schema herald")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::migrate!("./migrations")
        .run_to(version, &pool)
        .await
        .unwrap();
    (url, pool)
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub db_url: String,
    pub pool: PgPool,
    pub http: reqwest::Client,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestServer {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestServer {
    spawn_app_on(fresh_database().await, overrides).await
}

/// Starts Herald in-process on an existing database.
pub async fn spawn_app_on(db_url: String, overrides: &[(&str, &str)]) -> TestServer {
    let mut env = base_env();
    env.insert("DATABASE_URL".into(), db_url.clone());
    for (k, v) in overrides {
        env.insert(k.to_string(), v.to_string());
    }
    let config = Config::from_lookup(|k| env.get(k).cloned()).expect("test config");
    let app = Server::build(config).await.expect("the server starts");
    let addr = app.local_addr();
    let pool = app.pool().clone();
    let cancel = app.cancel_token();
    let task = tokio::spawn(app.run());
    TestServer {
        addr,
        db_url,
        pool,
        http: reqwest::Client::new(),
        cancel,
        task: Some(task),
    }
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/api/v1{path}", self.addr)
    }

    /// A request with the admin token, and a JSON body if given; returns status and body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::DELETE, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn create_app(&self) -> String {
        let (status, app) = self.post("/apps", json!({"name": "Acme"})).await;
        assert_eq!(status, StatusCode::CREATED, "{app}");
        app["id"].as_str().unwrap().to_owned()
    }

    /// Creates an endpoint; returns (id, secret).
    pub async fn create_endpoint(&self, app: &str, body: Value) -> (String, String) {
        let (status, ep) = self.post(&format!("/apps/{app}/endpoints"), body).await;
        assert_eq!(status, StatusCode::CREATED, "{ep}");
        (
            ep["id"].as_str().unwrap().to_owned(),
            ep["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// A fresh application with one endpoint that delivers to `receiver`; returns
    /// (application id, endpoint id, signing secret).
    pub async fn app_with_endpoint(&self, receiver: &Receiver) -> (String, String, String) {
        let app = self.create_app().await;
        let (ep, secret) = self
            .create_endpoint(&app, json!({"url": receiver.url()}))
            .await;
        (app, ep, secret)
    }

    /// The application "Acme" with uid `acme` (for sends by uid) and one endpoint that
    /// delivers to `receiver`; returns the application's id.
    pub async fn acme_with_endpoint(&self, receiver: &Receiver) -> String {
        let (_, created) = self
            .post("/apps", json!({"name": "Acme", "uid": "acme"}))
            .await;
        let app_id = created["id"].as_str().unwrap().to_owned();
        self.create_endpoint(&app_id, json!({"url": receiver.url()}))
            .await;
        app_id
    }

    pub async fn send(&self, app: &str, event_type: &str, payload: Value) -> String {
        let (status, msg) = self
            .post(
                &format!("/apps/{app}/messages"),
                json!({"event_type": event_type, "payload": payload}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{msg}");
        msg["id"].as_str().unwrap().to_owned()
    }

    /// Sends `event_type` with an empty payload and waits (10 s at most) until its every
    /// delivery is dead; returns the message's id.
    pub async fn send_until_dead(&self, app: &str, event_type: &str) -> String {
        let msg = self.send(app, event_type, json!({})).await;
        self.wait_for_message(app, &msg, Duration::from_secs(10), all_dead)
            .await;
        msg
    }

    /// Polls a message until `done` holds for it, or fails after `within`.
    pub async fn wait_for_message(
        &self,
        app: &str,
        msg: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, m) = self.get(&format!("/apps/{app}/messages/{msg}")).await;
            if done(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "timed out; last state: {m:#}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn attempts(&self, app: &str, msg: &str) -> Vec<Value> {
        let (status, page) = self
            .get(&format!("/apps/{app}/messages/{msg}/attempts"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["data"].as_array().unwrap().clone()
    }

    /// Shuts down as on SIGTERM and waits until it has.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub fn all_delivered(m: &Value) -> bool {
    deliveries_in(m, "succeeded")
}

pub fn all_dead(m: &Value) -> bool {
    deliveries_in(m, "dead")
}

pub fn deliveries_in(m: &Value, state: &str) -> bool {
    m["deliveries"]
        .as_array()
        .is_some_and(|d| !d.is_empty() && d.iter().all(|d| d["state"] == state))
}

pub async fn answer(r: reqwest::Result<reqwest::Response>) -> (StatusCode, Value) {
    let r = r.expect("request reaches the server");
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// One request as a receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Verifies with the independent `standardwebhooks` crate, not Herald's own code.
    pub fn verify(&self, secret: &str) -> bool {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&self.body, &self.headers)
            .is_ok()
    }
}

/// What the receiver answers to its n-th request (0-based): a status, extra headers, a
/// body, and how long to wait first.
pub type Responder = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

#[derive(Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Default::default()
        }
    }

    pub fn with_body(self, body: impl Into<String>) -> Self {
        Self {
            body: body.into(),
            ..self
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Waits `delay` before answering.
    pub fn after(self, delay: Duration) -> Self {
        Self { delay, ..self }
    }
}

/// A real HTTP server on port 0 that records every request.
pub struct Receiver {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start() -> Self {
        Self::with(Arc::new(|_| Reply::status(204))).await
    }

    /// Answers 200 to everything, after `delay`.
    pub async fn slow(delay: Duration) -> Self {
        Self::answering(Reply::status(200).after(delay)).await
    }

    /// Gives every request the same `reply`.
    pub async fn answering(reply: Reply) -> Self {
        Self::with(Arc::new(move |_| reply.clone())).await
    }

    pub async fn with(responder: Responder) -> Self {
        let requests: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = requests.clone();
        let handler = move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            let responder = responder.clone();
            async move {
                let n = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(Received {
                        path: uri.path().to_owned(),
                        headers,
                        body,
                        at: Instant::now(),
                    });
                    seen.len() - 1
                };
                let reply = responder(n);
                tokio::time::sleep(reply.delay).await;
                let mut response: Response = (
                    StatusCode::from_u16(reply.status).unwrap(),
                    reply.body.clone(),
                )
                    .into_response();
                for (k, v) in reply.headers {
                    response.headers_mut().insert(k, v.parse().unwrap());
                }
                response
            }
        };
        let router = axum::Router::new().fallback(handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "receiver got {} of {n} requests",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.received()
    }
}

/// One server-sent event (or keep-alive comment) as a client parsed it.
#[derive(Clone, Debug, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
    /// A `:` comment line (keep-alive) rather than an event.
    pub comment: bool,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// A real SSE client over HTTP: reads the response body as it arrives and parses frames.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
    pub last_id: Option<String>,
    /// HTTP chunks read so far: what the server wrote in one piece.
    pub chunks: usize,
}

impl SseClient {
    /// Connects to `/api/v1/stream?{query}`, resuming after `last_id` if given.
    pub async fn connect(app: &TestServer, query: &str, last_id: Option<&str>) -> Self {
        Self::connect_to(app.addr, query, last_id).await
    }

    pub async fn connect_to(addr: SocketAddr, query: &str, last_id: Option<&str>) -> Self {
        Self::connect_as(addr, TOKEN, query, last_id).await
    }

    /// Connects with `token` as the bearer instead of the admin token.
    pub async fn connect_as(
        addr: SocketAddr,
        token: &str,
        query: &str,
        last_id: Option<&str>,
    ) -> Self {
        let mut request = reqwest::Client::new()
            .get(format!("http://{addr}/api/v1/stream?{query}"))
            .bearer_auth(token);
        if let Some(id) = last_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("stream connects");
        assert_eq!(response.status().as_u16(), 200, "stream refused");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Self {
            response,
            buffer: String::new(),
            last_id: last_id.map(str::to_owned),
            chunks: 0,
        }
    }

    /// The next frame, comments included; `None` if nothing came within `within` or the
    /// stream ended.
    pub async fn next_frame(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                for line in frame.lines() {
                    if line.starts_with(':') {
                        event.comment = true;
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "id" => event.id = Some(value.to_owned()),
                            "event" => event.event = value.to_owned(),
                            "data" => {
                                if !event.data.is_empty() {
                                    event.data.push('\n');
                                }
                                event.data.push_str(value);
                            }
                            _ => {}
                        }
                    }
                }
                if event.id.is_some() {
                    self.last_id.clone_from(&event.id);
                }
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.chunks += 1;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event, skipping keep-alive comments.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.next_frame(left).await?;
            if !frame.comment || !frame.event.is_empty() || !frame.data.is_empty() {
                return Some(frame);
            }
        }
    }

    /// Collects events until `done` holds for the collection, failing after `within`.
    pub async fn collect_until(
        &mut self,
        within: Duration,
        done: impl Fn(&[SseEvent]) -> bool,
    ) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = Vec::new();
        while !done(&got) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(e) => got.push(e),
                None => panic!(
                    "stream gave {} events before timing out: {:?}",
                    got.len(),
                    got.iter().map(|e| &e.event).collect::<Vec<_>>()
                ),
            }
        }
        got
    }
}

/// The one number a query such as `select count(*) ...` answers.
pub async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Checks `holds` every `every` until it does; fails with `failure` once `within` has passed.
pub async fn poll_until<F: Future<Output = bool>>(
    within: Duration,
    every: Duration,
    failure: &str,
    holds: impl Fn() -> F,
) {
    let deadline = Instant::now() + within;
    while !holds().await {
        assert!(Instant::now() < deadline, "{failure}");
        tokio::time::sleep(every).await;
    }
}

/// Takes every connection of `pool` that is or becomes free within half a second (some
/// are held for good by listeners), so that the next query must wait for one.
pub async fn exhaust(pool: &PgPool) -> Vec<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    let mut held = Vec::new();
    while let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_millis(500), pool.acquire()).await
    {
        held.push(conn);
    }
    assert!(!held.is_empty(), "no connection of the pool came free");
    held
}
