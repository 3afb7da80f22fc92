use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;

use crate::helpers::{SseClient, spawn_app, spawn_app_with};

#[tokio::test]
async fn endpoint_crud() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let base = format!("/apps/{app_id}/endpoints");

    let (status, ep) = app
        .post(
            &base,
            json!({"url": "https://example.com/hook", "description": "billing",
                   "event_types": ["invoice.paid"], "headers": {"x-tenant": "acme"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ep}");
    let id = ep["id"].as_str().unwrap();
    assert!(id.starts_with("ep_"));
    assert_eq!(ep["url"], "https://example.com/hook");
    assert_eq!(ep["event_types"], json!(["invoice.paid"]));
    assert_eq!(ep["disabled"], false);
    let secret = ep["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));

    // The secret is shown to its owner on request, never in plain listings.
    let (_, shown) = app.get(&format!("{base}/{id}")).await;
    assert!(shown.get("secret").is_none());
    let (_, s) = app.get(&format!("{base}/{id}/secret")).await;
    assert_eq!(s["secret"], secret);

    let (status, patched) = app
        .patch(
            &format!("{base}/{id}"),
            json!({"url": "https://example.org/new", "event_types": [], "disabled": true,
                   "max_in_flight": 3, "rate_limit": 50}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["url"], "https://example.org/new");
    assert_eq!(patched["event_types"], json!([]));
    assert_eq!(patched["disabled"], true);
    assert_eq!(patched["max_in_flight"], 3);
    assert_eq!(patched["rate_limit"], 50);
    assert_eq!(patched["description"], "billing");
    for bad in [json!(0), json!(10_001), json!(1.5), json!("10")] {
        let (status, err) = app
            .patch(&format!("{base}/{id}"), json!({"rate_limit": bad}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {err}");
    }

    let (_, patched) = app
        .patch(
            &format!("{base}/{id}"),
            json!({"disabled": false, "max_in_flight": null, "rate_limit": null}),
        )
        .await;
    assert_eq!(patched["disabled"], false);
    assert_eq!(patched["disabled_reason"], json!(null));
    assert_eq!(patched["max_in_flight"], json!(null));
    assert_eq!(patched["rate_limit"], json!(null));

    let (status, list) = app.get(&base).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    let (status, removal) = app.delete(&format!("{base}/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{removal}");
    assert_eq!(removal["endpoint_id"], id);
    let (status, _) = app.get(&format!("{base}/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_given_secret_is_kept_and_rotation_returns_a_new_one() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let given = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let (id, secret) = app
        .create_endpoint(
            &app_id,
            json!({"url": "https://example.com", "secret": given}),
        )
        .await;
    assert_eq!(secret, given);
    let path = format!("/apps/{app_id}/endpoints/{id}/secret/rotate");
    let (status, rotated) = app.post(&path, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let new = rotated["secret"].as_str().unwrap();
    assert!(new.starts_with("whsec_") && new != given);
    let (_, current) = app
        .get(&format!("/apps/{app_id}/endpoints/{id}/secret"))
        .await;
    assert_eq!(current["secret"], new);
}

#[tokio::test]
async fn tenants_cannot_reach_each_others_endpoints() {
    let app = spawn_app().await;
    let a = app.create_app().await;
    let b = app.create_app().await;
    let (ep, _) = app
        .create_endpoint(&a, json!({"url": "https://example.com"}))
        .await;
    let (status, _) = app.get(&format!("/apps/{b}/endpoints/{ep}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get(&format!("/apps/{b}/endpoints/{ep}/secret")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.delete(&format!("/apps/{b}/endpoints/{ep}")).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = app.get(&format!("/apps/{a}/endpoints/{ep}")).await;
    assert_eq!(status, StatusCode::OK);
}

/// Custom header values are the receiver's credentials: every read shows them as `••••`,
/// only `GET .../headers` shows them, and a read written back is refused, not stored.
#[tokio::test]
async fn custom_header_values_are_shown_only_on_request() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let other = app.create_app().await;
    let base = format!("/apps/{app_id}/endpoints");
    const TOKEN_VALUE: &str = "Bearer rcv-s3cr3t-0123456789";
    let headers = json!({"authorization": TOKEN_VALUE, "x-tenant": "acme"});

    let (status, created) = app
        .post(
            &base,
            json!({"url": "https://example.com/hook", "headers": headers}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let redacted = json!({"authorization": "••••", "x-tenant": "••••"});
    assert_eq!(created["headers"], redacted);
    let (_, shown) = app.get(&format!("{base}/{id}")).await;
    assert_eq!(shown["headers"], redacted);
    let (_, list) = app.get(&base).await;
    assert_eq!(list["data"][0]["headers"], redacted);
    let (status, patched) = app
        .patch(&format!("{base}/{id}"), json!({"description": "billing"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["headers"], redacted);
    for read in [&created, &shown, &list, &patched] {
        assert!(!read.to_string().contains("s3cr3t"), "{read}");
    }

    let (status, clear) = app.get(&format!("{base}/{id}/headers")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(clear["headers"], headers);
    let (status, _) = app
        .get(&format!("/apps/{other}/endpoints/{id}/headers"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // What a read shows, sent back as it is, would replace the credential with the marker.
    let (status, err) = app
        .patch(
            &format!("{base}/{id}"),
            json!({"headers": shown["headers"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(err["message"].as_str().unwrap().contains("GET .../headers"));
    let (_, clear) = app.get(&format!("{base}/{id}/headers")).await;
    assert_eq!(clear["headers"], headers);
}

/// A URL with a user name or password is refused with a reason; one stored before the rule
/// is shown without them.
#[tokio::test]
async fn endpoint_urls_with_credentials_are_refused_and_old_ones_shown_without() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let base = format!("/apps/{app_id}/endpoints");
    for url in [
        "https://user:hunter2@example.com/hook",
        "https://user@example.com/hook",
    ] {
        let (status, err) = app.post(&base, json!({"url": url})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {err}");
        assert_eq!(err["code"], "invalid");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("user name or password"),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
    let (id, _) = app
        .create_endpoint(&app_id, json!({"url": "https://example.com/hook"}))
        .await;
    let (status, _) = app
        .patch(
            &format!("{base}/{id}"),
            json!({"url": "https://user:hunter2@example.com/hook"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // A row from before the rule.
    sqlx::query("update herald.endpoint set url = 'https://olduser:hunter2@example.com/hook'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (_, shown) = app.get(&format!("{base}/{id}")).await;
    assert_eq!(shown["url"], "https://***@example.com/hook");
    let (_, list) = app.get(&base).await;
    assert_eq!(list["data"][0]["url"], "https://***@example.com/hook");
}

/// Disabling an endpoint through the REST API is announced on the live feed at once, as
/// disabling it from the dashboard is: with a poll a minute apart, only the write waking
/// the feed's reader can show it within seconds.
#[tokio::test]
async fn a_rest_patch_that_disables_an_endpoint_is_announced_on_the_feed_promptly() {
    let app = spawn_app_with(&[("HERALD_POLL_INTERVAL", "60s")]).await;
    let app_id = app.create_app().await;
    let (ep, _) = app
        .create_endpoint(&app_id, json!({"url": "https://example.com/hook"}))
        .await;
    let mut stream = SseClient::connect(&app, &format!("endpoint={ep}"), None).await;

    let (status, _) = app
        .patch(
            &format!("/apps/{app_id}/endpoints/{ep}"),
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let event = stream
        .next(Duration::from_secs(5))
        .await
        .expect("the disable is announced within 5 s");
    assert_eq!(event.event, "endpoint.disabled");
    let disabled = event.json();
    assert_eq!(disabled["id"], ep.as_str());
    assert_eq!(disabled["disabled"], true);
    assert_eq!(disabled["disabled_reason"], "disabled by an operator");
}

/// An application has at most `HERALD_MAX_ENDPOINTS_PER_APP` endpoints, however many are
/// asked for at once; removing one makes room; other applications are not held to its count.
#[tokio::test]
async fn an_application_has_at_most_the_endpoints_the_limit_allows() {
    let app = spawn_app_with(&[("HERALD_MAX_ENDPOINTS_PER_APP", "3")]).await;
    let a = app.create_app().await;
    let b = app.create_app().await;
    let base = format!("/apps/{a}/endpoints");

    // Ten at once: three are created, the rest refused.
    let attempts = (0..10).map(|i| {
        app.post(
            &base,
            json!({"url": format!("https://example.com/hook/{i}")}),
        )
    });
    let answers = futures_util::future::join_all(attempts).await;
    let created: Vec<&serde_json::Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(created.len(), 3, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["code"], "endpoint_limit");
        assert!(body["message"].as_str().unwrap().contains("3 endpoints"));
    }
    let (_, listed) = app.get(&base).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 3);

    // Another application has its own three.
    for i in 0..3 {
        app.create_endpoint(&b, json!({"url": format!("https://example.com/b/{i}")}))
            .await;
    }

    // Removing one makes room for one.
    let gone = created[0]["id"].as_str().unwrap();
    let (status, body) = app.delete(&format!("{base}/{gone}")).await;
    assert!(status.is_success(), "{status} {body}");
    let (status, body) = app
        .post(&base, json!({"url": "https://example.com/again"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = app
        .post(&base, json!({"url": "https://example.com/one-more"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}
