use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test]
async fn create_get_list_delete_by_id_and_uid() {
    let app = spawn_app().await;
    let (status, created) = app
        .post("/apps", json!({"name": "Acme", "uid": "acme"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("app_"));
    assert_eq!(created["uid"], "acme");
    assert_eq!(created["name"], "Acme");
    assert!(created["created_at"].is_string());

    let (status, by_id) = app.get(&format!("/apps/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let (_, by_uid) = app.get("/apps/acme").await;
    assert_eq!(by_id, by_uid);

    let (status, removal) = app.delete("/apps/acme").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{removal}");
    assert_eq!(removal["app_id"], id);
    assert_eq!(removal["state"], "queued");
    let (status, err) = app.get(&format!("/apps/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["code"], "not_found");
}

#[tokio::test]
async fn lists_page_with_a_cursor() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, a) = app.post("/apps", json!({"name": format!("app {i}")})).await;
        ids.push(a["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/apps?limit=2&cursor={c}"),
            None => "/apps?limit=2".to_owned(),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK);
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    let (status, err) = app.get("/apps?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let (status, _) = app.get("/apps?cursor=nonsense").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// An id with its hex digits in upper case names the same application on every call, the
/// send included (`herald.enqueue` matches ids in lower case only).
#[tokio::test]
async fn an_upper_case_id_names_the_same_application_everywhere() {
    let app = spawn_app().await;
    let receiver = crate::helpers::Receiver::start().await;
    let (id, _, _) = app.app_with_endpoint(&receiver).await;
    let upper = format!("app_{}", id["app_".len()..].to_ascii_uppercase());
    assert_ne!(upper, id);

    let (status, found) = app.get(&format!("/apps/{upper}")).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["id"], id.as_str());
    let (status, endpoints) = app.get(&format!("/apps/{upper}/endpoints")).await;
    assert_eq!(status, StatusCode::OK, "{endpoints}");
    assert_eq!(endpoints["data"].as_array().unwrap().len(), 1);

    let (status, msg) = app
        .post(
            &format!("/apps/{upper}/messages"),
            json!({"event_type": "order.paid", "payload": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{msg}");
    receiver
        .wait_for(1, std::time::Duration::from_secs(10))
        .await;
    let (status, listed) = app.get(&format!("/apps/{id}/messages")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["data"][0]["id"], msg["id"]);
}

#[tokio::test]
async fn an_application_carries_its_own_portal_brand() {
    let app = spawn_app().await;
    let brand = json!({"product_name": "Acme Billing", "accent_color": "#0a7", "logo_url": "https://cdn.example.com/logo.svg"});
    let (status, created) = app
        .post("/apps", json!({"name": "Acme", "portal_brand": brand}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["portal_brand"], brand);
    let id = created["id"].as_str().unwrap();
    let (status, renamed) = app
        .patch(&format!("/apps/{id}"), json!({"name": "Acme Inc"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(
        (renamed["name"].clone(), renamed["portal_brand"].clone()),
        (json!("Acme Inc"), brand)
    );
    let (_, cleared) = app
        .patch(&format!("/apps/{id}"), json!({"portal_brand": null}))
        .await;
    assert_eq!(cleared["portal_brand"], Value::Null);
    for bad in [
        json!({"portal_brand": {"accent_color": "red"}}),
        json!({"portal_brand": {"logo_url": "javascript:alert(1)"}}),
        json!({"portal_brand": {"colour": "#fff"}}),
        json!({"name": " "}),
    ] {
        let (status, err) = app.patch(&format!("/apps/{id}"), bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {err}");
    }
    app.stop().await;
}
