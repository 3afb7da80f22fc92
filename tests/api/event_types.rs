//! The event-type catalog (issue 17, first slice): types with descriptions, JSON Schemas
//! checked when stored (and the examples against them), read by any credential, written by
//! the operator.

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{answer, spawn_app};

fn invoice_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["id", "amount"],
        "properties": {"id": {"type": "string"}, "amount": {"type": "integer", "minimum": 0}}
    })
}

#[tokio::test]
async fn a_type_is_stored_with_its_schema_listed_changed_and_removed() {
    let app = spawn_app().await;
    let (status, created) = app
        .post(
            "/event-types",
            json!({
                "name": "invoice.paid",
                "description": "An invoice was paid.",
                "schema": invoice_schema(),
                "examples": [{"id": "in_1", "amount": 4200}]
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["schema"], invoice_schema());
    assert_eq!(created["deprecated"], false);
    assert_eq!(created["archived"], false);
    let (status, dup) = app
        .post("/event-types", json!({"name": "invoice.paid"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{dup}");
    for name in ["invoice.voided", "customer.created", "a"] {
        assert_eq!(
            app.post("/event-types", json!({"name": name})).await.0,
            StatusCode::CREATED
        );
    }

    // Listed by name, in pages.
    let (_, page) = app.get("/event-types?limit=2").await;
    let names: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "customer.created"]);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, next) = app
        .get(&format!("/event-types?limit=2&cursor={cursor}"))
        .await;
    let names: Vec<&str> = next["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["invoice.paid", "invoice.voided"]);

    // Changed: deprecated, then its schema removed (null), then archived.
    let (status, changed) = app
        .patch("/event-types/invoice.paid", json!({"deprecated": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        (changed["deprecated"].clone(), changed["schema"].clone()),
        (json!(true), invoice_schema())
    );
    // A new schema that the stored example does not satisfy is refused, saying where.
    let (status, err) = app
        .patch(
            "/event-types/invoice.paid",
            json!({"schema": {"type": "object", "properties": {"amount": {"type": "string"}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("examples[0]"),
        "{err}"
    );
    assert!(
        err["message"].as_str().unwrap().contains("/amount"),
        "{err}"
    );
    let (_, cleared) = app
        .patch("/event-types/invoice.paid", json!({"schema": null}))
        .await;
    assert_eq!(cleared["schema"], Value::Null);
    let (_, archived) = app
        .patch("/event-types/invoice.paid", json!({"archived": true}))
        .await;
    assert_eq!(archived["archived"], true);

    assert_eq!(
        app.delete("/event-types/invoice.voided").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get("/event-types/invoice.voided").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete("/event-types/invoice.voided").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/event-types/no%20such").await.0,
        StatusCode::NOT_FOUND
    );
    app.stop().await;
}

#[tokio::test]
async fn a_broken_schema_or_a_bad_example_is_refused_with_where() {
    let app = spawn_app().await;
    for (body, says) in [
        (json!({"name": "x", "schema": {"type": "objekt"}}), "/type"),
        (
            json!({"name": "x", "schema": {"properties": {"a": {"minimum": "zero"}}}}),
            "/properties/a/minimum",
        ),
        (json!({"name": "x", "schema": {"pattern": "("}}), "schema"),
        // A remote reference is never fetched: the schema cannot be used.
        (
            json!({"name": "x", "schema": {"$ref": "http://169.254.169.254/schema.json"}}),
            "cannot be used",
        ),
        (
            json!({"name": "x", "schema": invoice_schema(), "examples": [{"id": 1, "amount": 1}]}),
            "examples[0]",
        ),
        (
            json!({"name": "x", "schema": invoice_schema(), "examples": [{"id": "a", "amount": 1}, {"id": "b"}]}),
            "examples[1]",
        ),
        (json!({"name": "invoice.*"}), "name"),
        (json!({"name": ""}), "name"),
        (
            json!({"name": "x", "description": "d".repeat(4097)}),
            "description",
        ),
        (json!({"name": "x", "colour": "red"}), "unknown field"),
    ] {
        let (status, err) = app.post("/event-types", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {err}");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    assert!(
        app.get("/event-types").await.1["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    app.stop().await;
}

#[tokio::test]
async fn any_token_reads_the_catalog_and_only_the_operator_writes_it() {
    let app = spawn_app().await;
    let tenant = app.create_app().await;
    app.post(
        "/event-types",
        json!({"name": "invoice.paid", "schema": invoice_schema()}),
    )
    .await;
    let (_, created) = app
        .post(
            "/tokens",
            json!({"name": "t", "app": tenant, "scopes": ["admin"]}),
        )
        .await;
    let secret = created["token"].as_str().unwrap();
    let as_token = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = app.http.request(method, app.url(path)).bearer_auth(secret);
        if let Some(b) = body {
            r = r.json(&b);
        }
        async move { answer(r.send().await).await }
    };
    let (status, one) = as_token(reqwest::Method::GET, "/event-types/invoice.paid", None).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["schema"], invoice_schema());
    assert_eq!(
        as_token(reqwest::Method::GET, "/event-types", None).await.0,
        StatusCode::OK
    );
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            "/event-types",
            Some(json!({"name": "mine"})),
        ),
        (
            reqwest::Method::PATCH,
            "/event-types/invoice.paid",
            Some(json!({"archived": true})),
        ),
        (reqwest::Method::DELETE, "/event-types/invoice.paid", None),
    ] {
        let (status, err) = as_token(method.clone(), path, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {err}");
    }
    assert_eq!(
        app.get("/event-types/invoice.paid").await.1["archived"],
        false
    );
    app.stop().await;
}

#[tokio::test]
async fn a_send_is_checked_against_its_types_schema_before_anything_is_stored() {
    let one = crate::helpers::spawn_app().await;
    let two = crate::helpers::spawn_app_on(one.db_url.clone(), &[]).await;
    let app = one.create_app().await;
    async fn send_to(
        server: &crate::helpers::TestServer,
        app: &str,
        event_type: &str,
        payload: Value,
    ) -> (StatusCode, Value) {
        let body = json!({"event_type": event_type, "payload": payload});
        server.post(&format!("/apps/{app}/messages"), body).await
    }
    one.post(
        "/event-types",
        json!({"name": "invoice.paid", "schema": invoice_schema()}),
    )
    .await;

    let (status, _) = send_to(
        &one,
        &app,
        "invoice.paid",
        json!({"id": "in_1", "amount": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, err) = send_to(
        &one,
        &app,
        "invoice.paid",
        json!({"id": "in_2", "amount": -5}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("/amount") && message.contains("minimum"),
        "{message}"
    );
    let (status, err) = send_to(&one, &app, "invoice.paid", json!({"amount": 5})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(err["message"].as_str().unwrap().contains("id"), "{err}");
    // A type the catalog does not have is accepted (HERALD_REQUIRE_EVENT_TYPES is off).
    assert_eq!(
        send_to(&one, &app, "other.thing", json!([1, 2])).await.0,
        StatusCode::ACCEPTED
    );
    // Nothing refused was stored.
    let (_, listed) = one.get(&format!("/apps/{app}/messages")).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);

    // The other process holds the same catalog, and follows its changes.
    let (status, err) = send_to(&two, &app, "invoice.paid", json!({"id": 7, "amount": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    one.patch("/event-types/invoice.paid", json!({"archived": true}))
        .await;
    let refused = async {
        for _ in 0..100 {
            let (status, err) =
                send_to(&two, &app, "invoice.paid", json!({"id": "a", "amount": 1})).await;
            if status == StatusCode::UNPROCESSABLE_ENTITY {
                return err;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the other process still sends an archived type");
    };
    let err = refused.await;
    assert!(
        err["message"].as_str().unwrap().contains("archived"),
        "{err}"
    );
    // On the process that archived it, at once.
    let (status, _) = send_to(&one, &app, "invoice.paid", json!({"id": "a", "amount": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    two.stop().await;
    one.stop().await;
}

#[tokio::test]
async fn with_require_event_types_only_catalogued_types_are_sent() {
    let app = crate::helpers::spawn_app_with(&[("HERALD_REQUIRE_EVENT_TYPES", "true")]).await;
    let tenant = app.create_app().await;
    let path = format!("/apps/{tenant}/messages");
    let (status, err) = app
        .post(&path, json!({"event_type": "invoice.paid", "payload": {}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("not in the catalog")
    );
    app.post("/event-types", json!({"name": "invoice.paid"}))
        .await;
    let (status, _) = app
        .post(&path, json!({"event_type": "invoice.paid", "payload": {}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    app.stop().await;
}
