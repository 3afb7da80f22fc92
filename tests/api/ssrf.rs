use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{Receiver, Reply, spawn_app_with};

const STRICT: [(&str, &str); 2] = [
    ("HERALD_ALLOW_PRIVATE_TARGETS", "false"),
    ("HERALD_RETRY_SCHEDULE", "none"),
];

#[tokio::test]
async fn private_address_literals_are_refused_when_the_endpoint_is_created() {
    let app = spawn_app_with(&STRICT).await;
    let app_id = app.create_app().await;
    for url in [
        "http://127.0.0.1/hook",
        "http://10.0.0.8/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.1.1/",
        "http://[::1]/",
        "http://[fd00::1]/",
        "http://[::ffff:127.0.0.1]/",
        // Other spellings of 127.0.0.1: decimal, octal, hexadecimal, shortened.
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.0.0.1/",
        "http://017700000001/",
        "http://127.1/",
        "http://[0:0:0:0:0:ffff:7f00:1]/",
    ] {
        let (status, err) = app
            .post(&format!("/apps/{app_id}/endpoints"), json!({"url": url}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {err}");
    }
}

/// `localhost` is a name, so only its resolved address can betray it: the check must
/// apply to the address actually connected to.
#[tokio::test]
async fn a_name_resolving_to_loopback_is_blocked_at_connect_time() {
    let app = spawn_app_with(&STRICT).await;
    let receiver = Receiver::start().await;
    let app_id = app.create_app().await;
    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    app.create_endpoint(&app_id, json!({"url": url})).await;
    let msg = app.send_until_dead(&app_id, "probe").await;
    let attempts = app.attempts(&app_id, &msg).await;
    assert_eq!(attempts[0]["error_kind"], "blocked", "{:#}", attempts[0]);
    assert_eq!(receiver.count(), 0);
}

/// An endpoint stored while private targets were allowed is still refused once they
/// are not.
#[tokio::test]
async fn a_stored_private_literal_is_blocked_at_send_time() {
    let app = spawn_app_with(&STRICT).await;
    let receiver = Receiver::start().await;
    let app_id = app.create_app().await;
    let (ep, _) = app
        .create_endpoint(&app_id, json!({"url": "https://example.com/hook"}))
        .await;
    sqlx::query("update endpoint set url = $1 where id = $2")
        .bind(receiver.url())
        .bind(ep.parse::<herald::domain::EndpointId>().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    let msg = app.send_until_dead(&app_id, "probe").await;
    assert_eq!(
        app.attempts(&app_id, &msg).await[0]["error_kind"],
        "blocked"
    );
    assert_eq!(receiver.count(), 0);
}

/// A receiver that redirects to a private address (here, another local receiver standing in
/// for 169.254.169.254) gets a failed attempt, and the target of the redirect gets nothing:
/// redirects are never followed. Names that resolve to private addresses are covered in
/// `src/delivery/client.rs`, where the test controls DNS.
#[tokio::test]
async fn a_redirect_to_a_private_address_is_not_followed() {
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "none")]).await;
    let inside = Receiver::start().await;
    let location = format!("{}/latest/meta-data", inside.url());
    let receiver = Receiver::answering(Reply::status(302).with_header("location", location)).await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send_until_dead(&app_id, "probe").await;
    let attempts = app.attempts(&app_id, &msg).await;
    assert_eq!(attempts[0]["error_kind"], "redirect", "{:#}", attempts[0]);
    assert_eq!(receiver.count(), 1);
    assert_eq!(inside.count(), 0);
}
