use axum::http::StatusCode;
use serde_json::json;

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

    assert_eq!(app.delete("/apps/acme").await, StatusCode::NO_CONTENT);
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
