//! Every kind of bad input gets a clear 4xx in the `{"code","message"}` shape.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TOKEN, TestServer, answer, count, spawn_app};

fn assert_error((status, body): (StatusCode, Value), expected: StatusCode) {
    assert_eq!(status, expected, "{body}");
    assert!(body["code"].is_string(), "no code in {body}");
    assert!(
        !body["message"].as_str().unwrap_or_default().is_empty(),
        "no message in {body}"
    );
}

/// Refused as unprocessable, in the error shape.
fn assert_422(answer: (StatusCode, Value)) {
    assert_error(answer, StatusCode::UNPROCESSABLE_ENTITY);
}

/// Refused as not found, in the error shape.
fn assert_404(answer: (StatusCode, Value)) {
    assert_error(answer, StatusCode::NOT_FOUND);
}

/// Posts each (path, body); every one is refused with `expected`, in the error shape.
async fn posts_refused(app: &TestServer, expected: StatusCode, cases: &[(&str, Value)]) {
    for (path, body) in cases {
        assert_error(app.post(path, body.clone()).await, expected);
    }
}

async fn post_raw(app: &TestServer, path: &str, body: &'static str) -> (StatusCode, Value) {
    answer(
        app.http
            .post(app.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await,
    )
    .await
}

#[tokio::test]
async fn malformed_missing_and_mistyped_bodies() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let messages = format!("/apps/{app_id}/messages");

    assert_error(
        post_raw(&app, "/apps", "{\"name\": ").await,
        StatusCode::BAD_REQUEST,
    );
    assert_error(
        post_raw(&app, &messages, "not json").await,
        StatusCode::BAD_REQUEST,
    );
    let endpoints = format!("/apps/{app_id}/endpoints");
    posts_refused(
        &app,
        StatusCode::UNPROCESSABLE_ENTITY,
        &[
            ("/apps", json!({})),
            ("/apps", json!({"name": 42})),
            (&messages, json!({"event_type": "a.b"})),
            (&messages, json!({"event_type": ["a"], "payload": {}})),
            (&endpoints, json!({"url": 7})),
            (&endpoints, json!({"description": "no url"})),
        ],
    )
    .await;
    let no_type = answer(
        app.http
            .post(app.url("/apps"))
            .bearer_auth(TOKEN)
            .body(r#"{"name": "x"}"#)
            .send()
            .await,
    )
    .await;
    assert_error(no_type, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let bad_uid = json!({"name": "x", "uid": "has space"});
    assert_422(app.post("/apps", bad_uid).await);
}

#[tokio::test]
async fn event_types_outside_the_alphabet_or_too_long() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let messages = format!("/apps/{app_id}/messages");
    for bad in [
        "invoice paid",
        "invoice/paid",
        "",
        "ünïcode",
        &"a".repeat(257),
    ] {
        assert_422(
            app.post(&messages, json!({"event_type": bad, "payload": {}}))
                .await,
        );
        assert_422(
            app.post(
                &format!("/apps/{app_id}/endpoints"),
                json!({"url": "https://example.com", "event_types": [bad]}),
            )
            .await,
        );
    }
    let (s, _) = app
        .post(
            &messages,
            json!({"event_type": "a".repeat(256), "payload": {}}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn urls_that_are_not_http_or_do_not_parse() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let path = format!("/apps/{app_id}/endpoints");
    for bad in [
        "ftp://example.com/x",
        "example.com/hook",
        "http://",
        "javascript:alert(1)",
        "::",
    ] {
        assert_422(app.post(&path, json!({"url": bad})).await);
    }
    let (ep, _) = app
        .create_endpoint(&app_id, json!({"url": "https://example.com"}))
        .await;
    assert_422(
        app.patch(&format!("{path}/{ep}"), json!({"url": "gopher://x"}))
            .await,
    );
}

#[tokio::test]
async fn secrets_that_are_not_base64_or_the_wrong_size() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let path = format!("/apps/{app_id}/endpoints");
    for bad in [
        "whsec_%%%not-base64%%%",
        "whsec_AAAAAAAAAAAAAAAAAAAAAA==",        // 16 bytes
        "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",      // no prefix
        &format!("whsec_{}", "QUFB".repeat(22)), // 66 bytes
    ] {
        assert_422(
            app.post(&path, json!({"url": "https://example.com", "secret": bad}))
                .await,
        );
    }
    let (ep, _) = app
        .create_endpoint(&app_id, json!({"url": "https://example.com"}))
        .await;
    assert_422(
        app.post(
            &format!("{path}/{ep}/secret/rotate"),
            json!({"secret": "whsec_short"}),
        )
        .await,
    );
}

#[tokio::test]
async fn payloads_over_the_limit_get_413() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let messages = format!("/apps/{app_id}/messages");
    // Just over 1 MiB of payload: within the body allowance, over the payload limit.
    let big = "x".repeat(1024 * 1024);
    assert_error(
        app.post(
            &messages,
            json!({"event_type": "big", "payload": {"blob": big}}),
        )
        .await,
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    // Far over: refused while reading the body.
    let huge = "x".repeat(3 * 1024 * 1024);
    assert_error(
        app.post(
            &messages,
            json!({"event_type": "big", "payload": {"blob": huge}}),
        )
        .await,
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    let (_, list) = app.get(&messages).await;
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn unknown_apps_endpoints_and_messages_get_404() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    for path in [
        "/apps/app_0192f3a0000070008000000000000000".to_owned(),
        "/apps/no-such-uid".to_owned(),
        format!("/apps/{app_id}/endpoints/ep_0192f3a0000070008000000000000000"),
        format!("/apps/{app_id}/endpoints/garbage"),
        format!("/apps/{app_id}/messages/msg_0192f3a0000070008000000000000000"),
        format!("/apps/{app_id}/messages/msg_0192f3a0000070008000000000000000/attempts"),
        "/apps/nope/messages".to_owned(),
        "/no/such/route".to_owned(),
    ] {
        assert_404(app.get(&path).await);
    }
    let message = json!({"event_type": "a", "payload": {}});
    assert_404(app.post("/apps/nope/messages", message).await);
}

#[tokio::test]
async fn a_missing_or_wrong_token_gets_401() {
    let app = spawn_app().await;
    let url = app.url("/apps");
    for request in [
        app.http.get(&url),
        app.http.get(&url).bearer_auth("wrong-token-wrong-token"),
        app.http.get(&url).header("authorization", TOKEN),
        app.http.post(&url).json(&json!({"name": "x"})),
    ] {
        assert_error(answer(request.send().await).await, StatusCode::UNAUTHORIZED);
    }
    let (_, list) = app.get("/apps").await;
    assert_eq!(
        list["data"],
        json!([]),
        "nothing was created without a token"
    );
}

#[tokio::test]
async fn a_duplicate_uid_gets_409() {
    let app = spawn_app().await;
    let (s, _) = app.post("/apps", json!({"name": "a", "uid": "same"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_error(
        app.post("/apps", json!({"name": "b", "uid": "same"})).await,
        StatusCode::CONFLICT,
    );
}

/// Found by the fuzzer (`make chaos`): PostgreSQL text cannot hold U+0000, and a name with
/// one was a 500. Any field, path or filter that carries one is now a 4xx.
#[tokio::test]
async fn text_with_a_nul_character_is_refused_not_a_500() {
    let app = spawn_app().await;
    assert_422(app.post("/apps", json!({"name": "a\u{0}b"})).await);
    let app_id = app.create_app().await;
    let endpoint = json!({"url": "https://example.com/", "description": "x\u{0}"});
    let message = json!({"event_type": "a.b", "payload": {}, "idempotency_key": "k\u{0}"});
    posts_refused(
        &app,
        StatusCode::UNPROCESSABLE_ENTITY,
        &[
            (&format!("/apps/{app_id}/endpoints"), endpoint),
            (&format!("/apps/{app_id}/messages"), message),
        ],
    )
    .await;
    assert_404(app.get("/apps/x%00y").await);
    let message = json!({"event_type": "a.b", "payload": {}});
    assert_404(app.post("/apps/x%00y/messages", message).await);
}

/// Also from the fuzzer: what the API document calls valid is accepted. `1.0` is the
/// integer 1 in JSON Schema, an optional body may be `null`, and header values are ASCII.
#[tokio::test]
async fn what_the_document_calls_valid_is_accepted() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let (ep, _) = app
        .create_endpoint(
            &app_id,
            json!({"url": "https://example.com/", "max_in_flight": 3.0}),
        )
        .await;
    let path = format!("/apps/{app_id}/endpoints/{ep}");
    let (s, b) = app.get(&path).await;
    assert_eq!((s, &b["max_in_flight"]), (StatusCode::OK, &json!(3)));
    assert_422(app.patch(&path, json!({"max_in_flight": 2.5})).await);
    assert_422(
        app.patch(&path, json!({"headers": {"x-note": "caf\u{e9}"}}))
            .await,
    );
    let (s, b) = post_raw(&app, &format!("{path}/secret/rotate"), "null").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_422(post_raw(&app, &format!("{path}/secret/rotate"), "{\"secret\": 5}").await);
    let (s, b) = app.get("/apps?cursor=").await;
    assert_eq!(s, StatusCode::OK, "an empty cursor is the first page: {b}");

    // A wrong method on a known route: 405 in the error shape, with Allow.
    let r = app
        .http
        .put(app.url("/apps"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.headers()["allow"].to_str().unwrap().contains("POST"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
}

/// Custom headers: none that governs the connection (hop-by-hop, `expect`) or that Herald
/// sets, and bounded in number, length and total, each refusal saying why.
#[tokio::test]
async fn custom_headers_refuse_hop_by_hop_and_oversized_ones() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let base = format!("/apps/{app_id}/endpoints");
    let create = |headers: Value| {
        let body = json!({"url": "https://example.com/hook", "headers": headers});
        let base = base.clone();
        let app = &app;
        async move { app.post(&base, body).await }
    };
    for name in [
        "te",
        "Trailer",
        "upgrade",
        "keep-alive",
        "proxy-authorization",
        "Proxy-Connection",
        "expect",
        "connection",
        "transfer-encoding",
    ] {
        let (status, err) = create(json!({name: "x"})).await;
        assert_eq!(status, 422, "{name}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains("hop-by-hop"),
            "{name}: {err}"
        );
    }
    for name in ["host", "content-length", "Webhook-Signature"] {
        let (status, err) = create(json!({name: "x"})).await;
        assert_eq!(status, 422, "{name}: {err}");
        assert!(err["message"].as_str().unwrap().contains("set by Herald"));
    }

    let (status, err) = create(json!({"Authorization": "a", "authorization": "b"})).await;
    assert_eq!(status, 422, "two spellings of one name: {err}");
    assert!(err["message"].as_str().unwrap().contains("twice"), "{err}");

    let (status, _) = create(json!({"authorization": "a".repeat(4096)})).await;
    assert_eq!(status, 201, "a 4 KiB value is fine");
    let (status, err) = create(json!({"authorization": "a".repeat(4097)})).await;
    assert_eq!(status, 422);
    assert!(
        err["message"].as_str().unwrap().contains("at most 4096"),
        "{err}"
    );
    let (status, err) = create(json!({"x-a": "a".repeat(3500), "x-b": "b".repeat(3500)})).await;
    assert_eq!(status, 422);
    assert!(
        err["message"].as_str().unwrap().contains("at most 6144"),
        "{err}"
    );
    let (status, err) = create(json!({"x-".to_owned() + &"n".repeat(300): "v"})).await;
    assert_eq!(status, 422);
    assert!(
        err["message"].as_str().unwrap().contains("at most 256"),
        "{err}"
    );
    let many: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("x-h{i}"), json!("v"))).collect();
    let (status, err) = create(Value::Object(many)).await;
    assert_eq!(status, 422);
    assert!(
        err["message"].as_str().unwrap().contains("at most 20"),
        "{err}"
    );
}

/// A payload nested deeper than PostgreSQL parses is refused before anything is stored: it
/// ran PostgreSQL out of stack (54001), which failed the other sends of its batch with a
/// 503. The same depth in a string is only text.
#[tokio::test]
async fn a_payload_nested_too_deep_gets_422() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let send = async |payload: &str| {
        let body = format!(r#"{{"event_type": "deep", "payload": {payload}}}"#);
        answer(
            app.http
                .post(app.url(&format!("/apps/{app_id}/messages")))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await,
        )
        .await
    };
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert_422(send(&nested(200_000)).await);
    assert_422(send(&nested(129)).await);
    let (status, body) = send(&nested(128)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = send(&format!("\"{}\"", "[".repeat(200_000))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Counted in the database: the test's serde_json reads no answer that deep.
    assert_eq!(
        count(&app.pool, "select count(*) from herald.message").await,
        2
    );
}
