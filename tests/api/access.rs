//! Issue 16's matrix: every operation of the API document, as the document lists them (so a
//! new route is in the matrix the day it is added), against application-bound tokens with
//! another application's ids (404, nothing changed), each missing scope (403), and revoked
//! and expired tokens (401); and each scope, alone, let in where the document says.

use std::time::Duration;

use axum::http::StatusCode;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Receiver, SseClient, TestServer, all_delivered, answer, spawn_app_with};

const NON_ADMIN: &[&str] = &[
    "messages:send",
    "messages:read",
    "endpoints:manage",
    "replay",
];

/// One operation of the document.
#[derive(Debug, Clone)]
struct Op {
    method: Method,
    path: String,
    /// `x-herald-scope`: a scope, or `any`.
    scope: String,
    /// `x-herald-reach`: `path`, `narrowed`, `operator` or `shared`.
    reach: String,
}

impl Op {
    /// A body the operation would accept, so that what refuses it is the access check.
    fn body(&self) -> Option<Value> {
        if self.method != Method::POST && self.method != Method::PATCH {
            return None;
        }
        Some(match self.path.as_str() {
            "/apps" => json!({"name": "Another"}),
            "/tokens" => json!({"name": "t", "scopes": ["admin"]}),
            "/event-types" => json!({"name": "other.type"}),
            "/event-types/{name}" => json!({"description": "changed"}),
            "/apps/{app}/messages" | "/apps/{app}/messages/dry-run" => {
                json!({"event_type": "invoice.paid", "payload": {}})
            }
            "/apps/{app}/endpoints" => json!({"url": "https://example.com/hook"}),
            "/apps/{app}/endpoints/{ep}" => json!({"description": "changed"}),
            "/apps/{app}" => json!({"name": "Renamed"}),
            p if p.ends_with("/recover") => json!({"since": "2020-01-01T00:00:00Z"}),
            _ => json!({}),
        })
    }

    /// Can be called with a plain request and answers at once (not the stream's endless
    /// body, not the WebSocket's upgrade, tested apart below).
    fn plain(&self) -> bool {
        self.path != "/stream" && self.path != "/admin/ws"
    }
}

/// What each route must need, as issue 16 defines the scopes (`messages:read`: messages,
/// attempts, the stream; `replay`: replay, retry, recover; `admin`: everything, including
/// tokens), written out here so that the server's table cannot quietly drift from it.
const EXPECTED: &[(&str, &str, &str, &str)] = &[
    ("POST", "/apps", "admin", "operator"),
    ("GET", "/apps", "any", "narrowed"),
    ("GET", "/apps/{app}", "any", "path"),
    ("PATCH", "/apps/{app}", "admin", "path"),
    ("DELETE", "/apps/{app}", "admin", "path"),
    ("POST", "/apps/{app}/portal", "endpoints:manage", "path"),
    ("DELETE", "/apps/{app}/portal", "endpoints:manage", "path"),
    ("POST", "/apps/{app}/messages", "messages:send", "path"),
    // It shows the application's endpoints.
    (
        "POST",
        "/apps/{app}/messages/dry-run",
        "endpoints:manage",
        "path",
    ),
    ("GET", "/apps/{app}/messages", "messages:read", "path"),
    ("GET", "/apps/{app}/messages/{msg}", "messages:read", "path"),
    (
        "GET",
        "/apps/{app}/messages/{msg}/attempts",
        "messages:read",
        "path",
    ),
    (
        "POST",
        "/apps/{app}/messages/{msg}/replay",
        "replay",
        "path",
    ),
    (
        "DELETE",
        "/apps/{app}/messages/{msg}/payload",
        "admin",
        "path",
    ),
    ("POST", "/apps/{app}/endpoints", "endpoints:manage", "path"),
    ("GET", "/apps/{app}/endpoints", "endpoints:manage", "path"),
    (
        "GET",
        "/apps/{app}/endpoints/{ep}",
        "endpoints:manage",
        "path",
    ),
    (
        "PATCH",
        "/apps/{app}/endpoints/{ep}",
        "endpoints:manage",
        "path",
    ),
    (
        "DELETE",
        "/apps/{app}/endpoints/{ep}",
        "endpoints:manage",
        "path",
    ),
    (
        "GET",
        "/apps/{app}/endpoints/{ep}/secret",
        "endpoints:manage",
        "path",
    ),
    (
        "GET",
        "/apps/{app}/endpoints/{ep}/headers",
        "endpoints:manage",
        "path",
    ),
    (
        "POST",
        "/apps/{app}/endpoints/{ep}/secret/rotate",
        "endpoints:manage",
        "path",
    ),
    (
        "GET",
        "/apps/{app}/endpoints/{ep}/attempts",
        "messages:read",
        "path",
    ),
    (
        "POST",
        "/apps/{app}/endpoints/{ep}/recover",
        "replay",
        "path",
    ),
    ("GET", "/removals/{id}", "endpoints:manage", "narrowed"),
    ("POST", "/tokens", "admin", "operator"),
    ("GET", "/tokens", "admin", "operator"),
    ("DELETE", "/tokens/{id}", "admin", "operator"),
    ("GET", "/stream", "messages:read", "narrowed"),
    ("GET", "/stats", "admin", "operator"),
    ("GET", "/admin/ws", "replay", "narrowed"),
    ("POST", "/event-types", "admin", "operator"),
    ("GET", "/event-types", "any", "shared"),
    ("GET", "/event-types/{name}", "any", "shared"),
    ("PATCH", "/event-types/{name}", "admin", "operator"),
    ("DELETE", "/event-types/{name}", "admin", "operator"),
];

/// The event type every `{name}` is filled with.
const EVENT_TYPE: &str = "invoice.paid";

async fn operations(server: &TestServer) -> Vec<Op> {
    let doc: Value = server
        .http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ops = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(path) = path.strip_prefix("/api/v1") else {
            continue;
        };
        for (method, op) in item.as_object().unwrap() {
            if op["security"] == json!([{}]) {
                continue; // needs no token
            }
            let scope = op["x-herald-scope"].as_str();
            let reach = op["x-herald-reach"].as_str();
            let (Some(scope), Some(reach)) = (scope, reach) else {
                panic!("{method} {path} does not say what it needs: {op}");
            };
            let required = &op["security"][0]["bearer"];
            let expected = if scope == "any" {
                json!([])
            } else {
                json!([scope])
            };
            assert_eq!(
                required, &expected,
                "{method} {path}: security and scope differ"
            );
            let method_upper = method.to_uppercase();
            let pinned = EXPECTED
                .iter()
                .find(|(m, p, _, _)| *m == method_upper && *p == path)
                .unwrap_or_else(|| {
                    panic!("{method} {path} is not in EXPECTED: what should it need?")
                });
            assert_eq!(
                (scope, reach),
                (pinned.2, pinned.3),
                "{method} {path} needs what the issue does not say"
            );
            ops.push(Op {
                method: method.to_uppercase().parse().unwrap(),
                path: path.to_owned(),
                scope: scope.to_owned(),
                reach: reach.to_owned(),
            });
        }
    }
    assert!(
        ops.len() >= 25,
        "the document lists only {} operations",
        ops.len()
    );
    ops
}

/// An application with an endpoint, a delivered message and a finished-or-queued removal.
struct Tenant {
    app: String,
    ep: String,
    msg: String,
    removal: String,
}

async fn tenant(server: &TestServer, receiver: &Receiver) -> Tenant {
    let (app, ep, _) = server.app_with_endpoint(receiver).await;
    let msg = server.send(&app, "invoice.paid", json!({"n": 1})).await;
    server
        .wait_for_message(&app, &msg, Duration::from_secs(10), all_delivered)
        .await;
    let (doomed, _) = server
        .create_endpoint(&app, json!({"url": receiver.url()}))
        .await;
    let (status, removal) = server
        .delete(&format!("/apps/{app}/endpoints/{doomed}"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{removal}");
    Tenant {
        app,
        ep,
        msg,
        removal: removal["id"].as_str().unwrap().to_owned(),
    }
}

/// `path` with its parameters taken from `outer` (the application) and `inner` (the ids
/// below it).
fn fill(path: &str, outer: &Tenant, inner: &Tenant, token_id: &str) -> String {
    let id = if path.starts_with("/tokens") {
        token_id
    } else {
        &inner.removal
    };
    path.replace("{app}", &outer.app)
        .replace("{ep}", &inner.ep)
        .replace("{msg}", &inner.msg)
        .replace("{id}", id)
        .replace("{name}", EVENT_TYPE)
}

async fn call(server: &TestServer, token: &str, op: &Op, path: &str) -> (StatusCode, Value) {
    let mut request = server
        .http
        .request(op.method.clone(), server.url(path))
        .bearer_auth(token);
    if let Some(body) = op.body() {
        request = request.json(&body);
    }
    answer(request.send().await).await
}

async fn token(server: &TestServer, body: Value) -> (String, String) {
    let (status, created) = server.post("/tokens", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}: {created}");
    (
        created["token"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    )
}

/// What another tenant could have changed of `t`: its endpoints (with their secrets), its
/// message with its payload, and its attempts.
async fn snapshot(server: &TestServer, t: &Tenant) -> Vec<Value> {
    let mut seen = vec![];
    for path in [
        format!("/apps/{}", t.app),
        format!("/apps/{}/endpoints", t.app),
        format!("/apps/{}/endpoints/{}/secret", t.app, t.ep),
        format!("/apps/{}/endpoints/{}/headers", t.app, t.ep),
        format!("/apps/{}/messages/{}", t.app, t.msg),
        format!("/apps/{}/messages/{}/attempts", t.app, t.msg),
    ] {
        let (status, body) = server.get(&path).await;
        seen.push(json!({"path": path, "status": status.as_u16(), "body": body}));
    }
    seen
}

#[tokio::test]
async fn every_route_holds_tokens_to_their_application_and_scopes() {
    let server = spawn_app_with(&[("HERALD_AUTH_FAILURE_LIMIT", "100000")]).await;
    let receiver = Receiver::start().await;
    let ops = operations(&server).await;
    let a = tenant(&server, &receiver).await;
    let b = tenant(&server, &receiver).await;
    let (_, some_token) = token(&server, json!({"name": "x", "scopes": ["admin"]})).await;
    let (status, _) = server
        .post("/event-types", json!({"name": EVENT_TYPE}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let before = snapshot(&server, &b).await;

    // A token bound to A with every scope, admin included, against B's ids: 404 where the
    // path names an application, 403 where the route is the operator's.
    let all: Vec<&str> = NON_ADMIN.iter().copied().chain(["admin"]).collect();
    let (a_all, _) = token(&server, json!({"name": "a", "app": a.app, "scopes": all})).await;
    for op in ops.iter().filter(|op| op.plain()) {
        let foreign = fill(&op.path, &b, &b, &some_token);
        let (status, body) = call(&server, &a_all, op, &foreign).await;
        let expected = match op.reach.as_str() {
            "operator" => StatusCode::FORBIDDEN,
            "shared" => StatusCode::OK,
            "path" | "narrowed" if op.path != "/apps" => StatusCode::NOT_FOUND,
            _ => StatusCode::OK,
        };
        assert_eq!(status, expected, "{} {foreign}: {body}", op.method);
        // A's application with B's ids below it.
        if op.reach == "path" && op.path != "/apps/{app}" && op.path.matches('{').count() > 1 {
            let mixed = fill(&op.path, &a, &b, &some_token);
            let (status, body) = call(&server, &a_all, op, &mixed).await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "{} {mixed}: {body}",
                op.method
            );
        }
    }
    // Its list of applications is its own; its stream refuses B.
    let (_, listed) = answer(
        server
            .http
            .get(server.url("/apps"))
            .bearer_auth(&a_all)
            .send()
            .await,
    )
    .await;
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|app| app["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [a.app.as_str()]);
    let stream = server
        .http
        .get(server.url(&format!("/stream?app={}", b.app)))
        .bearer_auth(&a_all)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        before,
        snapshot(&server, &b).await,
        "B was changed through A's token"
    );

    // Each missing scope: 403 on A's own ids, for every route that needs it.
    for op in &ops {
        let path = fill(&op.path, &a, &a, &some_token);
        let (scopes, bound): (Vec<&str>, bool) = match (op.reach.as_str(), op.scope.as_str()) {
            (_, "any") => continue,
            ("operator", _) => (NON_ADMIN.to_vec(), false),
            (_, "admin") => (NON_ADMIN.to_vec(), true),
            (_, needed) => (
                NON_ADMIN.iter().copied().filter(|s| *s != needed).collect(),
                true,
            ),
        };
        let body = if bound {
            json!({"name": "short of one", "app": a.app, "scopes": scopes})
        } else {
            json!({"name": "short of one", "scopes": scopes})
        };
        let (lacking, _) = token(&server, body).await;
        // The stream and the channel refuse before they start: a plain request will do.
        let (status, body) = call(&server, &lacking, op, &path).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{} {path}: {body}",
            op.method
        );
        assert_eq!(body["code"], "forbidden");
    }

    // Revoked and expired tokens: 401 everywhere.
    let (revoked, revoked_id) = token(&server, json!({"name": "gone", "scopes": ["admin"]})).await;
    assert_eq!(
        server.delete(&format!("/tokens/{revoked_id}")).await.0,
        StatusCode::NO_CONTENT
    );
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let (expired, _) = token(
        &server,
        json!({"name": "short", "scopes": ["admin"], "expires_at": soon}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for op in &ops {
        let path = fill(&op.path, &a, &a, &some_token);
        for dead in [&revoked, &expired] {
            let (status, body) = call(&server, dead, op, &path).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{} {path}: {body}",
                op.method
            );
        }
    }

    // Each scope alone is let in where the document says it is enough: on a fresh
    // application, with deletions last (the application's own the very last).
    let c = tenant(&server, &receiver).await;
    let mut plain: Vec<&Op> = ops.iter().filter(|op| op.plain()).collect();
    plain.sort_by_key(|op| (op.method == Method::DELETE, op.path == "/apps/{app}"));
    for op in plain {
        if op.reach == "operator" {
            continue;
        }
        let scope = if op.scope == "any" {
            "messages:send"
        } else {
            &op.scope
        };
        let (only, _) = token(
            &server,
            json!({"name": "just enough", "app": c.app, "scopes": [scope]}),
        )
        .await;
        let path = fill(&op.path, &c, &c, &some_token);
        let (status, body) = call(&server, &only, op, &path).await;
        assert!(
            status.is_success()
                || status == StatusCode::UNPROCESSABLE_ENTITY
                || (status == StatusCode::CONFLICT && op.path.ends_with("/replay")),
            "{} {path} with {scope} alone: {status} {body}",
            op.method
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn an_application_tokens_stream_is_its_applications_whatever_the_query_says() {
    let server = spawn_app_with(&[]).await;
    let receiver = Receiver::start().await;
    let (a, _, _) = server.app_with_endpoint(&receiver).await;
    let (b, _, _) = server.app_with_endpoint(&receiver).await;
    let (reader, _) = token(
        &server,
        json!({"name": "reader", "app": a, "scopes": ["messages:read"]}),
    )
    .await;
    let mut stream = SseClient::connect_as(server.addr, &reader, "", None).await;
    let mut asked = SseClient::connect_as(server.addr, &reader, &format!("app={a}"), None).await;
    let b_msg = server
        .send(&b, "invoice.paid", json!({"tenant": "b"}))
        .await;
    let a_msg = server
        .send(&a, "invoice.paid", json!({"tenant": "a"}))
        .await;
    for s in [&mut stream, &mut asked] {
        let events = s
            .collect_until(Duration::from_secs(10), |events| {
                events
                    .iter()
                    .any(|e| e.event == "attempt" && e.data.contains(&a_msg))
            })
            .await;
        for e in &events {
            assert!(!e.data.contains(&b), "B's event on A's stream: {e:?}");
            assert!(!e.data.contains(&b_msg), "B's message on A's stream: {e:?}");
        }
        assert!(
            events.iter().any(|e| e.data.contains(&a_msg)),
            "A's own message is missing: {events:?}"
        );
    }
    server.stop().await;
}

/// A stream and a channel opened with a token end when the token does: at its expiry, or
/// within 30 s of its revocation (each open one checks that often).
#[tokio::test]
async fn streams_and_channels_end_with_their_token() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let server = spawn_app_with(&[("HERALD_SSE_KEEP_ALIVE", "200ms")]).await;
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let (short, _) = token(
        &server,
        json!({"name": "short", "scopes": ["messages:read", "replay"], "expires_at": soon}),
    )
    .await;
    let (revoked, revoked_id) = token(
        &server,
        json!({"name": "gone", "scopes": ["messages:read"]}),
    )
    .await;
    let open_stream = |secret: String| {
        let url = server.url("/stream");
        async move {
            let response = reqwest::Client::new()
                .get(url)
                .bearer_auth(secret)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response
        }
    };
    let until_end = |mut response: reqwest::Response, within: u64| async move {
        tokio::time::timeout(Duration::from_secs(within), async {
            while let Ok(Some(_)) = response.chunk().await {}
        })
        .await
        .is_ok()
    };
    let expiring = open_stream(short.clone()).await;
    let doomed = open_stream(revoked.clone()).await;
    let mut request = format!("ws://{}/api/v1/admin/ws", server.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {short}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    assert!(
        until_end(expiring, 6).await,
        "the stream outlived its token's expiry"
    );
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(closed.is_ok(), "the channel outlived its token's expiry");

    assert_eq!(
        server.delete(&format!("/tokens/{revoked_id}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert!(
        until_end(doomed, 40).await,
        "the stream outlived its token's revocation"
    );
    server.stop().await;
}
