use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{Receiver, spawn_app};

#[tokio::test]
async fn after_a_rotation_both_secrets_sign_during_the_grace_period() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, ep, old) = app.app_with_endpoint(&receiver).await;

    app.send(&app_id, "before.rotation", json!({})).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("webhook-signature").split(' ').count(), 1);

    let (_, rotated) = app
        .post(
            &format!("/apps/{app_id}/endpoints/{ep}/secret/rotate"),
            json!({}),
        )
        .await;
    let new = rotated["secret"].as_str().unwrap().to_owned();
    app.send(&app_id, "after.rotation", json!({})).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let r = &got[1];
    let signatures: Vec<&str> = r.header("webhook-signature").split(' ').collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    assert!(signatures.iter().all(|s| s.starts_with("v1,")));
    assert!(r.verify(&new), "a receiver on the new secret accepts it");
    assert!(
        r.verify(&old),
        "a receiver still on the old secret accepts it"
    );
}

#[tokio::test]
async fn a_rotated_out_secret_stops_signing_after_its_grace_period() {
    let app = crate::helpers::spawn_app_with(&[("HERALD_SECRET_GRACE_PERIOD", "0s")]).await;
    let receiver = Receiver::start().await;
    let (app_id, ep, old) = app.app_with_endpoint(&receiver).await;
    let (_, rotated) = app
        .post(
            &format!("/apps/{app_id}/endpoints/{ep}/secret/rotate"),
            json!({}),
        )
        .await;
    app.send(&app_id, "after.rotation", json!({})).await;
    let r = &receiver.wait_for(1, Duration::from_secs(10)).await[0];
    assert!(r.verify(rotated["secret"].as_str().unwrap()));
    assert!(!r.verify(&old));
}

#[tokio::test]
async fn herald_verify_checks_a_captured_request() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, _, secret) = app.app_with_endpoint(&receiver).await;
    app.send(&app_id, "captured", json!({"a": 1})).await;
    let r = receiver
        .wait_for(1, Duration::from_secs(10))
        .await
        .remove(0);

    let dir = std::env::temp_dir().join(format!("herald-verify-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = dir.join("body.json");
    std::fs::write(&body, &r.body).unwrap();
    let tampered = dir.join("tampered.json");
    std::fs::write(
        &tampered,
        String::from_utf8_lossy(&r.body).replace("1", "2"),
    )
    .unwrap();

    let run = |body: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["verify", "--id", r.header("webhook-id")])
            .args(["--timestamp", r.header("webhook-timestamp")])
            .args(["--signature", r.header("webhook-signature")])
            .arg("--body")
            .arg(body)
            .env("HERALD_VERIFY_SECRET", &secret)
            .output()
            .unwrap()
    };
    let ok = run(&body);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "valid");
    let bad = run(&tampered);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).starts_with("invalid"));
    std::fs::remove_dir_all(dir).ok();
}
