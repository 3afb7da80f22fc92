//! `GET /api/v1/openapi.json`: every route is in the document, and every operation in the
//! document is served and answers with a status it declares.

use std::collections::BTreeSet;
use std::time::Duration;

use herald::domain::{RemovalId, TokenId};
use serde_json::{Value, json};

use crate::helpers::{Receiver, TOKEN, TestServer, spawn_app};

/// The routes of docs/architecture.md §4, plus `/stats`, the document itself and the probes.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/stats"),
    ("get", "/api/v1/stream"),
    ("get", "/api/v1/admin/ws"),
    ("post", "/api/v1/apps"),
    ("get", "/api/v1/apps"),
    ("get", "/api/v1/apps/{app}"),
    ("patch", "/api/v1/apps/{app}"),
    ("post", "/api/v1/apps/{app}/portal"),
    ("delete", "/api/v1/apps/{app}/portal"),
    ("post", "/api/v1/apps/{app}/endpoints"),
    ("get", "/api/v1/apps/{app}/endpoints"),
    ("get", "/api/v1/apps/{app}/endpoints/{ep}"),
    ("patch", "/api/v1/apps/{app}/endpoints/{ep}"),
    ("delete", "/api/v1/apps/{app}/endpoints/{ep}"),
    ("get", "/api/v1/apps/{app}/endpoints/{ep}/secret"),
    ("get", "/api/v1/apps/{app}/endpoints/{ep}/headers"),
    ("post", "/api/v1/apps/{app}/endpoints/{ep}/secret/rotate"),
    ("get", "/api/v1/apps/{app}/endpoints/{ep}/attempts"),
    ("post", "/api/v1/apps/{app}/endpoints/{ep}/recover"),
    ("post", "/api/v1/apps/{app}/messages"),
    ("post", "/api/v1/apps/{app}/messages/dry-run"),
    ("get", "/api/v1/apps/{app}/messages"),
    ("get", "/api/v1/apps/{app}/messages/{msg}"),
    ("get", "/api/v1/apps/{app}/messages/{msg}/attempts"),
    ("post", "/api/v1/apps/{app}/messages/{msg}/replay"),
    ("delete", "/api/v1/apps/{app}/messages/{msg}/payload"),
    // Last: it takes the doomed endpoint with it.
    ("delete", "/api/v1/apps/{app}"),
    // The removal the delete before queued.
    ("get", "/api/v1/removals/{id}"),
    ("post", "/api/v1/tokens"),
    ("get", "/api/v1/tokens"),
    // The token the post before created.
    ("delete", "/api/v1/tokens/{id}"),
    ("post", "/api/v1/event-types"),
    ("get", "/api/v1/event-types"),
    ("get", "/api/v1/event-types/{name}"),
    ("patch", "/api/v1/event-types/{name}"),
    ("delete", "/api/v1/event-types/{name}"),
];

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

#[tokio::test]
async fn every_route_is_documented_and_every_documented_operation_is_served() {
    let app = spawn_app().await;
    let answer = app
        .http
        .get(format!("http://{}/api/v1/openapi.json", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "the document needs no token");
    let doc: Value = answer.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."));
    assert_eq!(doc, serde_json::to_value(herald::http::openapi()).unwrap());

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| (m.to_string(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, expected,
        "the document and the routes differ (left: documented)"
    );

    // Real objects to fill the paths with; deletes get their own.
    let receiver = Receiver::start().await;
    let (app_id, ep, _secret) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&app_id, "invoice.paid", json!({"n": 1})).await;
    let (doomed_app, doomed_ep, _) = app.app_with_endpoint(&receiver).await;
    let doomed_msg = app.send(&doomed_app, "invoice.paid", json!({"n": 3})).await;

    // The `{id}` of a route: what the call before it made (a removal, a token).
    let mut made = String::new();
    for (method, template) in ROUTES {
        let (app_key, ep_key, msg_key) = if *method == "delete" {
            (doomed_app.as_str(), doomed_ep.as_str(), doomed_msg.as_str())
        } else {
            (app_id.as_str(), ep.as_str(), msg.as_str())
        };
        let response = call(
            &app,
            method,
            template,
            [app_key, ep_key, msg_key, &made],
            &receiver,
        )
        .await;
        let status = response.status().as_u16().to_string();
        let declared = &doc["paths"][template][method]["responses"];
        assert!(
            declared.get(&status).is_some(),
            "{method} {template} answered {status}, which it does not declare"
        );
        if *template == "/api/v1/stream" {
            // Endless: its headers are the answer.
            continue;
        }
        let body = response.text().await.unwrap();
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if let Some(id) = answer["id"]
            .as_str()
            .filter(|id| id.starts_with(RemovalId::PREFIX) || id.starts_with(TokenId::PREFIX))
        {
            made = id.to_owned();
        }
        assert!(
            !body.contains("route not found") && status != "405",
            "{method} {template} is documented but not served: {status} {body}"
        );
        if *template != "/api/v1/admin/ws" {
            assert!(
                status.starts_with('2'),
                "{method} {template}: {status} {body}"
            );
        }
    }
}

/// `method template` with `{app}`, `{ep}`, `{msg}` and `{id}` filled in, as an admin, with a
/// valid body where the operation takes one.
async fn call(
    app: &TestServer,
    method: &str,
    template: &str,
    [app_key, ep, msg, id]: [&str; 4],
    receiver: &Receiver,
) -> reqwest::Response {
    let path = template
        .replace("{app}", app_key)
        .replace("{ep}", ep)
        .replace("{msg}", msg)
        .replace("{id}", id)
        .replace("{name}", "documented.type");
    let mut request = app
        .http
        .request(
            method.to_uppercase().parse().unwrap(),
            format!("http://{}{path}", app.addr),
        )
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(10));
    if let Some(body) = example_body(method, template, receiver) {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

fn example_body(method: &str, path: &str, receiver: &Receiver) -> Option<Value> {
    Some(match (method, path.rsplit('/').next().unwrap()) {
        ("post", "apps") => json!({"name": "documented"}),
        ("post", "endpoints") => json!({"url": receiver.url()}),
        ("patch", "{app}") => json!({"name": "patched"}),
        ("post", "event-types") => json!({"name": "documented.type", "schema": {"type": "object"}}),
        ("patch", "{name}") => json!({"description": "patched"}),
        ("patch", _) => json!({"description": "patched"}),
        ("post", "portal") => json!({"expires_in": 600}),
        ("post", "messages" | "dry-run") => {
            json!({"event_type": "invoice.paid", "payload": {"n": 2}})
        }
        ("post", "recover") => json!({"since": "2020-01-01T00:00:00Z"}),
        ("post", "tokens") => json!({"name": "documented", "scopes": ["admin"]}),
        _ => return None,
    })
}

/// Tenant isolation on every route that takes an id: application A's endpoint and message
/// under application B's path are not found, whatever the method, and A's are untouched.
#[tokio::test]
async fn every_route_refuses_the_ids_of_another_application() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (a, ep, secret) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&a, "invoice.paid", json!({"n": 1})).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let b = app.create_app().await;

    let mut checked = 0;
    for (method, template) in ROUTES {
        if !template.contains("{ep}") && !template.contains("{msg}") {
            continue;
        }
        let response = call(&app, method, template, [&b, &ep, &msg, ""], &receiver).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 404, "{method} {template} under another app: {body}");
        assert_eq!(body["code"], "not_found");
        checked += 1;
    }
    assert_eq!(checked, 12, "every route with an {{ep}} or {{msg}}");

    // Nothing of A's changed, and nothing was sent again.
    let (_, endpoint) = app.get(&format!("/apps/{a}/endpoints/{ep}")).await;
    assert_eq!(endpoint["description"], "");
    let (_, current) = app.get(&format!("/apps/{a}/endpoints/{ep}/secret")).await;
    assert_eq!(current["secret"], secret.as_str());
    let (_, message) = app.get(&format!("/apps/{a}/messages/{msg}")).await;
    assert_eq!(message["payload"], json!({"n": 1}), "not erased");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 1);
}

/// The catalog is in the document's `webhooks` as it is when the document is asked for, and
/// what it publishes is usable: a JSON Schema validator resolving refs as the document lays
/// them out accepts the examples and what Herald really sends, and refuses what breaks the
/// type's schema, its `$defs` included.
#[tokio::test]
async fn the_catalog_is_published_as_webhooks_whose_schemas_accept_what_herald_sends() {
    let app = spawn_app().await;
    let document = || async {
        let answer = app
            .http
            .get(format!("http://{}/api/v1/openapi.json", app.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        answer.json::<Value>().await.unwrap()
    };
    assert!(
        document().await.get("webhooks").is_none(),
        "an empty catalog publishes no webhooks"
    );

    let paid = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["invoice", "amount", "customer"],
        "properties": {
            "invoice": {"type": "string"},
            "amount": {"$ref": "#/$defs/money"},
            "customer": {"$ref": "#/$defs/customer"},
        },
        "$defs": {
            "money": {"type": "integer", "minimum": 0},
            "customer": {
                "type": "object",
                "required": ["id"],
                "properties": {"id": {"type": "string"}, "credit": {"$ref": "#/$defs/money"}},
            },
        },
    });
    let example =
        json!({"invoice": "in_1", "amount": 4200, "customer": {"id": "cus_1", "credit": 0}});
    for (body, status) in [
        (
            json!({"name": "invoice.paid", "description": "An invoice was paid.\nIn full.",
                   "schema": paid, "examples": [example]}),
            201,
        ),
        (
            json!({"name": "invoice.voided", "description": "An invoice was voided.",
                   "deprecated": true, "examples": [{"anything": true}]}),
            201,
        ),
        (
            json!({"name": "invoice.legacy", "schema": {"type": "object"}, "archived": true}),
            201,
        ),
    ] {
        let (got, created) = app.post("/event-types", body).await;
        assert_eq!(got.as_u16(), status, "{created}");
    }

    let doc = document().await;
    let webhooks = doc["webhooks"].as_object().expect("webhooks");
    let names: Vec<&str> = webhooks.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["invoice.paid", "invoice.voided"],
        "not the archived one"
    );
    let post = &webhooks["invoice.paid"]["post"];
    assert_eq!(post["summary"], "An invoice was paid.");
    assert_eq!(post["description"], "An invoice was paid.\nIn full.");
    assert!(post.get("deprecated").is_none());
    assert_eq!(webhooks["invoice.voided"]["post"]["deprecated"], true);
    let headers: Vec<&str> = post["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "header" && p["required"] == true)
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        headers,
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
    );
    let media = &post["requestBody"]["content"]["application/json"];
    assert_eq!(media["examples"]["example1"]["value"]["data"], example);
    // The routes' part is the document served when the catalog is empty.
    let mut routes_only = doc.clone();
    routes_only.as_object_mut().unwrap().remove("webhooks");
    let schemas = routes_only["components"]["schemas"]
        .as_object_mut()
        .unwrap();
    schemas.retain(|name, _| !name.starts_with("invoice."));
    assert_eq!(
        routes_only,
        serde_json::to_value(herald::http::openapi()).unwrap()
    );

    // The schema of a webhook's body, resolved in the document as a tool would.
    let body_schema = |name: &str| {
        let mut root = doc.clone();
        root["$ref"] =
            format!("#/webhooks/{name}/post/requestBody/content/application~1json/schema").into();
        jsonschema::draft202012::new(&root).expect("the published schema compiles")
    };
    let paid_body = body_schema("invoice.paid");
    let example_body = &media["examples"]["example1"]["value"];
    assert!(paid_body.is_valid(example_body), "{example_body}");
    let with_data = |data: Value| json!({"type": "invoice.paid", "timestamp": "2026-01-01T00:00:00.000000Z", "data": data});
    let mut negative = example.clone();
    negative["amount"] = json!(-1);
    assert!(!paid_body.is_valid(&with_data(negative)));
    let mut bad_credit = example.clone();
    bad_credit["customer"]["credit"] = json!(-1);
    assert!(
        !paid_body.is_valid(&with_data(bad_credit)),
        "a ref inside a def is followed"
    );
    let mut other_type = with_data(example.clone());
    other_type["type"] = json!("invoice.voided");
    assert!(!paid_body.is_valid(&other_type));
    let voided_body = body_schema("invoice.voided");
    let voided_example = &webhooks["invoice.voided"]["post"]["requestBody"]["content"]["application/json"]
        ["examples"]["example1"]["value"];
    assert!(voided_body.is_valid(voided_example), "{voided_example}");

    // What a receiver really gets matches the body's schema and the headers' patterns.
    let receiver = Receiver::start().await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    app.send(&app_id, "invoice.paid", example.clone()).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let received = &receiver.received()[0];
    let sent: Value = serde_json::from_slice(&received.body).unwrap();
    assert!(paid_body.is_valid(&sent), "{sent}");
    for parameter in post["parameters"].as_array().unwrap() {
        let name = parameter["name"].as_str().unwrap();
        let value = received.header(name);
        let value = match parameter["schema"]["type"].as_str() {
            Some("integer") => json!(value.parse::<i64>().expect("an integer")),
            _ => json!(value),
        };
        assert!(
            jsonschema::draft202012::new(&parameter["schema"])
                .unwrap()
                .is_valid(&value),
            "{name}: {value}"
        );
    }

    // Changes show at once: archived, a type leaves the document.
    let (status, _) = app
        .patch("/event-types/invoice.voided", json!({"archived": true}))
        .await;
    assert_eq!(status, 200);
    let doc = document().await;
    let names: Vec<&str> = doc["webhooks"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, ["invoice.paid"]);
}
