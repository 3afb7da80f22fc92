//! API tokens: created by the admin, shown once, stored as a hash,
//! listed without their secret, revoked at once in every process.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestServer, answer, spawn_app, spawn_app_on};

/// `GET path` with `token` as the bearer.
async fn get_as(app: &TestServer, token: &str, path: &str) -> (StatusCode, Value) {
    answer(app.http.get(app.url(path)).bearer_auth(token).send().await).await
}

async fn create(app: &TestServer, body: Value) -> Value {
    let (status, token) = app.post("/tokens", body).await;
    assert_eq!(status, StatusCode::CREATED, "{token}");
    token
}

#[tokio::test]
async fn an_admin_token_is_shown_once_stored_hashed_and_revoked_at_once_everywhere() {
    let one = spawn_app().await;
    let two = spawn_app_on(one.db_url.clone(), &[]).await;
    let created = create(&one, json!({"name": "deploys", "scopes": ["admin"]})).await;
    let secret = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("hrld_") && secret.len() == 5 + 64,
        "{secret}"
    );
    assert!(id.starts_with("tok_"));
    assert_eq!(created["name"], "deploys");
    assert_eq!(created["scopes"], json!(["admin"]));
    assert_eq!(created["app_id"], Value::Null);

    // Only its hash is stored.
    let holding: i64 = sqlx::query_scalar(
        "select count(*) from herald.api_token t
          where row_to_json(t)::text like '%' || $1 || '%'",
    )
    .bind(&secret[5..])
    .fetch_one(&one.pool)
    .await
    .unwrap();
    assert_eq!(holding, 0, "the secret is stored as is");

    // It works where the admin token does, on every process.
    for server in [&one, &two] {
        let (status, apps) = get_as(server, &secret, "/apps").await;
        assert_eq!(status, StatusCode::OK, "{apps}");
    }
    let (status, list) = one.get("/tokens").await;
    assert_eq!(status, StatusCode::OK);
    let listed = &list.as_array().unwrap()[0];
    assert_eq!(listed["id"], id.as_str());
    assert!(
        listed.get("token").is_none(),
        "a list shows no secret: {listed}"
    );
    assert!(listed["last_used_at"].is_string(), "{listed}");

    // Revoked on one process, refused by the other at its next request.
    assert_eq!(
        one.delete(&format!("/tokens/{id}")).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, err) = get_as(&two, &secret, "/apps").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    assert_eq!(
        one.delete(&format!("/tokens/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        one.delete("/tokens/tok_nonsense").await.0,
        StatusCode::NOT_FOUND
    );
    two.stop().await;
    one.stop().await;
}

#[tokio::test]
async fn narrower_expired_unknown_and_malformed_tokens_are_refused() {
    let app = spawn_app().await;
    let tenant = app.create_app().await;

    // Scopes below admin, or an application, do not reach the operator's routes: 403, not
    // 401 (tests/api/access.rs goes over every route).
    for body in [
        json!({"name": "sender", "scopes": ["messages:send"]}),
        json!({"name": "tenant admin", "scopes": ["admin"], "app": tenant}),
    ] {
        let secret = create(&app, body.clone()).await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, err) = get_as(&app, &secret, "/tokens").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}: {err}");
        assert_eq!(err["code"], "forbidden");
    }

    // Expired: 401 once its time has passed.
    let expires_at = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let short = create(
        &app,
        json!({"name": "short", "scopes": ["admin"], "expires_at": expires_at}),
    )
    .await;
    let short = short["token"].as_str().unwrap();
    assert_eq!(get_as(&app, short, "/apps").await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        get_as(&app, short, "/apps").await.0,
        StatusCode::UNAUTHORIZED
    );

    // A token nobody made.
    let forged = format!("hrld_{}", "0".repeat(64));
    assert_eq!(
        get_as(&app, &forged, "/apps").await.0,
        StatusCode::UNAUTHORIZED
    );

    for (body, says) in [
        (json!({"name": "x", "scopes": []}), "at least one scope"),
        (
            json!({"name": "x", "scopes": ["everything"]}),
            "is not one of",
        ),
        (json!({"name": " ", "scopes": ["admin"]}), "name must be"),
        (
            json!({"name": "x\0", "scopes": ["admin"]}),
            "must not contain NUL",
        ),
        (
            json!({"name": "x", "scopes": ["admin"], "app": "nobody"}),
            "is not an application",
        ),
        (
            json!({"name": "x", "scopes": ["admin"], "expires_at": "2001-01-01T00:00:00Z"}),
            "in the future",
        ),
    ] {
        let (status, err) = app.post("/tokens", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {err}");
        assert!(err["message"].as_str().unwrap().contains(says), "{err}");
    }
    app.stop().await;
}
