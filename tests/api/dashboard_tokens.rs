//! The dashboard's Tokens page, as a browser without JavaScript uses it: the list (never a
//! secret in it), the create form (the secret shown once, refused as the API refuses it)
//! and the revoke buttons.

use axum::http::StatusCode;
use regex::Regex;
use serde_json::{Value, json};

use crate::dashboard::Browser;
use crate::helpers::{TestServer, answer, spawn_app};

/// `method path` under /api/v1 with `token` as the bearer.
async fn as_token(
    app: &TestServer,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> StatusCode {
    let mut request = app.http.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    answer(request.send().await).await.0
}

/// The secrets a page shows.
fn secrets(html: &str) -> Vec<String> {
    Regex::new("hrld_[0-9a-f]{64}")
        .unwrap()
        .find_iter(html)
        .map(|m| m.as_str().to_owned())
        .collect()
}

async fn listed_tokens(app: &TestServer) -> Vec<Value> {
    let (status, list) = app.get("/tokens").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array().unwrap().clone()
}

#[tokio::test]
async fn the_tokens_page_lists_tokens_without_their_secrets() {
    let app = spawn_app().await;
    let (_, acme) = app
        .post("/apps", json!({"name": "Acme Corp", "uid": "acme"}))
        .await;
    let acme_id = acme["id"].as_str().unwrap();
    let (status, bound) = app
        .post(
            "/tokens",
            json!({"name": "acme reader", "scopes": ["messages:read", "messages:send"], "app": "acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{bound}");
    let (_, everywhere) = app
        .post(
            "/tokens",
            json!({"name": "deploys", "scopes": ["admin"], "expires_at": "2999-01-01T00:00:00Z"}),
        )
        .await;

    let mut browser = Browser::new(&app);
    // Without a session: the login page, for reading and for creating alike.
    let r = browser.get("/tokens").await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?next=%2Ftokens");
    let r = browser
        .post_form("/tokens", &[("name", "x"), ("scopes", "admin")])
        .await;
    assert_eq!(r.status(), 303);
    assert_eq!(listed_tokens(&app).await.len(), 2);

    browser.login().await;
    let html = browser.page("/tokens").await;
    for token in [&bound, &everywhere] {
        assert!(html.contains(token["id"].as_str().unwrap()), "{html}");
        let secret = token["token"].as_str().unwrap();
        assert!(!html.contains(secret), "a list shows no secret");
    }
    assert!(secrets(&html).is_empty(), "{html}");
    for says in [
        "acme reader",
        "Acme Corp",
        acme_id,
        "messages:read, messages:send",
        "deploys",
        "all applications",
        "2999-01-01 00:00:00 UTC",
        "never",
        "/revoke",
        "aria-current=\"page\">Tokens</a>",
    ] {
        assert!(html.contains(says), "the page shows {says:?}");
    }
    // Every scope is offered, with what it allows.
    for (scope, description) in [
        ("messages:send", "send messages"),
        ("admin", "everything, including applications and tokens"),
    ] {
        assert!(html.contains(&format!("value=\"{scope}\"")), "{scope}");
        assert!(html.contains(description), "{description}");
    }
    app.stop().await;
}

/// The secret is on the page that answers the form and nowhere after; it reaches what its
/// scopes allow in its application and nothing else, until it is revoked from the page.
#[tokio::test]
async fn a_token_created_on_the_page_is_shown_once_works_as_scoped_and_is_revoked_there() {
    let app = spawn_app().await;
    let acme = app.create_app().await;
    let other = app.create_app().await;
    let mut browser = Browser::new(&app);
    browser.login().await;
    let csrf = browser.csrf("/tokens").await;

    let created = browser
        .post_form(
            "/tokens",
            &[
                ("csrf", &csrf),
                ("name", "acme reader"),
                ("app", &acme),
                ("scopes", "messages:read"),
                ("scopes", "messages:send"),
                ("expires_in_days", "30"),
            ],
        )
        .await;
    assert_eq!(created.status(), 200);
    assert_eq!(created.headers()["cache-control"], "no-store");
    let html = created.text().await.unwrap();
    let shown = secrets(&html);
    assert_eq!(shown.len(), 1, "the secret is shown once: {html}");
    let secret = &shown[0];
    assert!(html.contains("it will not be shown again"));

    // It is the token the API lists, as the form asked for it.
    let listed = listed_tokens(&app).await;
    assert_eq!(listed.len(), 1);
    let token = &listed[0];
    let id = token["id"].as_str().unwrap();
    assert!(html.contains(id));
    assert_eq!(token["name"], "acme reader");
    assert_eq!(token["app_id"], acme.as_str());
    assert_eq!(token["scopes"], json!(["messages:read", "messages:send"]));
    let expires: chrono::DateTime<chrono::Utc> =
        token["expires_at"].as_str().unwrap().parse().unwrap();
    let in_days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!(
        (29.9..=30.0).contains(&in_days),
        "expires in {in_days} days"
    );

    // What its scopes allow, in its application only.
    use reqwest::Method;
    let messages = format!("/apps/{acme}/messages");
    let send = json!({"event_type": "a.b", "payload": {}});
    for (method, path, body, status) in [
        (Method::GET, messages.clone(), None, StatusCode::OK),
        (
            Method::POST,
            messages.clone(),
            Some(send.clone()),
            StatusCode::ACCEPTED,
        ),
        (
            Method::GET,
            format!("/apps/{acme}/endpoints"),
            None,
            StatusCode::FORBIDDEN,
        ),
        (
            Method::GET,
            format!("/apps/{other}/messages"),
            None,
            StatusCode::NOT_FOUND,
        ),
        (Method::GET, "/tokens".into(), None, StatusCode::FORBIDDEN),
    ] {
        let got = as_token(&app, secret, method.clone(), &path, body).await;
        assert_eq!(got, status, "{method} {path}");
    }

    // The list shows it afterwards, without its secret.
    let page = browser.page("/tokens").await;
    assert!(page.contains(id) && page.contains("acme reader"));
    assert!(
        !page.contains(secret.as_str()),
        "the secret is shown once only"
    );
    assert!(secrets(&page).is_empty());

    // Revoked from the page: back to the list, without it; the API refuses it at once.
    let revoked = browser
        .post_form(&format!("/tokens/{id}/revoke"), &[("csrf", &csrf)])
        .await;
    assert_eq!(revoked.status(), 303);
    assert_eq!(revoked.headers()["location"], "/tokens");
    assert_eq!(
        as_token(&app, secret, Method::GET, &messages, None).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(!browser.page("/tokens").await.contains(id));
    assert!(listed_tokens(&app).await.is_empty());
    // It is gone: revoking it again finds nothing.
    let again = browser
        .post_form(&format!("/tokens/{id}/revoke"), &[("csrf", &csrf)])
        .await;
    assert_eq!(again.status(), 404);
    app.stop().await;
}

#[tokio::test]
async fn token_forms_need_the_csrf_token_and_our_origin() {
    let app = spawn_app().await;
    let (_, token) = app
        .post("/tokens", json!({"name": "deploys", "scopes": ["admin"]}))
        .await;
    let secret = token["token"].as_str().unwrap();
    let revoke = format!("/tokens/{}/revoke", token["id"].as_str().unwrap());
    let mut browser = Browser::new(&app);
    browser.login().await;
    let csrf = browser.csrf("/tokens").await;
    let missing = browser
        .post_form("/tokens", &[("name", "forged"), ("scopes", "admin")])
        .await;
    assert_eq!(missing.status(), 403);
    let wrong_token = "0".repeat(64);
    let wrong = browser
        .post_form(
            "/tokens",
            &[
                ("csrf", wrong_token.as_str()),
                ("name", "forged"),
                ("scopes", "admin"),
            ],
        )
        .await;
    assert_eq!(wrong.status(), 403);
    assert!(secrets(&wrong.text().await.unwrap()).is_empty());
    let foreign = browser
        .post_form_from(
            "/tokens",
            &[
                ("csrf", csrf.as_str()),
                ("name", "forged"),
                ("scopes", "admin"),
            ],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(foreign.status(), 403);
    for form in [vec![], vec![("csrf", wrong_token.as_str())]] {
        assert_eq!(browser.post_form(&revoke, &form).await.status(), 403);
    }
    let foreign = browser
        .post_form_from(&revoke, &[("csrf", &csrf)], Some("https://evil.example"))
        .await;
    assert_eq!(foreign.status(), 403);

    // Nothing was created, nothing revoked.
    let listed = listed_tokens(&app).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        as_token(&app, secret, reqwest::Method::GET, "/apps", None).await,
        StatusCode::OK
    );
    app.stop().await;
}

/// What the API refuses with a 422, the form refuses with a 422 and its reason, filled in
/// as it was sent; nothing is created.
#[tokio::test]
async fn an_invalid_token_form_is_shown_again_with_why() {
    let app = spawn_app().await;
    let acme = app.create_app().await;
    let mut browser = Browser::new(&app);
    browser.login().await;
    let csrf = browser.csrf("/tokens").await;
    let long = "x".repeat(257);
    for (form, says) in [
        (
            vec![("name", "no scopes"), ("app", acme.as_str())],
            "scopes must name at least one scope",
        ),
        (
            vec![("name", "bad scope"), ("scopes", "everything")],
            "is not one of",
        ),
        (vec![("name", "  "), ("scopes", "admin")], "name must be"),
        (
            vec![("name", long.as_str()), ("scopes", "admin")],
            "name must be",
        ),
        (
            vec![("name", "nul\0"), ("scopes", "admin")],
            "must not contain NUL",
        ),
        (
            vec![("name", "nobody's"), ("scopes", "admin"), ("app", "nobody")],
            "is not an application here",
        ),
        (
            vec![
                ("name", "forever-ish"),
                ("scopes", "admin"),
                ("expires_in_days", "100000"),
            ],
            "is not one of the choices",
        ),
    ] {
        let mut sent = vec![("csrf", csrf.as_str())];
        sent.extend(form.iter().copied());
        let r = browser.post_form("/tokens", &sent).await;
        assert_eq!(r.status(), 422, "{form:?}");
        let html = r.text().await.unwrap();
        assert!(html.contains(says), "{form:?}: {html}");
        assert!(html.contains("Create token"), "the form is shown again");
        assert!(secrets(&html).is_empty());
    }
    // The form comes back as it was sent.
    let r = browser
        .post_form(
            "/tokens",
            &[
                ("csrf", &csrf),
                ("name", "no scopes"),
                ("app", &acme),
                ("expires_in_days", "90"),
            ],
        )
        .await;
    let html = r.text().await.unwrap();
    assert!(html.contains("value=\"no scopes\""), "{html}");
    assert!(
        html.contains(&format!("name=\"app\" value=\"{acme}\"")),
        "{html}"
    );
    assert!(html.contains("<option value=\"90\" selected>"), "{html}");
    let r = browser
        .post_form(
            "/tokens",
            &[
                ("csrf", &csrf),
                ("name", "bad scope"),
                ("scopes", "everything"),
                ("scopes", "replay"),
            ],
        )
        .await;
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("name=\"scopes\" value=\"replay\" checked")
    );

    // The API says the same of the same request.
    let (status, err) = app
        .post(
            "/tokens",
            json!({"name": "no scopes", "scopes": [], "app": acme}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["message"], "scopes must name at least one scope");
    assert!(listed_tokens(&app).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_token_name_is_escaped_on_the_page() {
    let app = spawn_app().await;
    let evil = "<script>alert('x')</script>";
    let (_, evil_app) = app.post("/apps", json!({"name": evil})).await;
    let evil_app = evil_app["id"].as_str().unwrap().to_owned();
    let mut browser = Browser::new(&app);
    browser.login().await;
    let csrf = browser.csrf("/tokens").await;
    let created = browser
        .post_form(
            "/tokens",
            &[
                ("csrf", &csrf),
                ("name", evil),
                ("app", &evil_app),
                ("scopes", "replay"),
            ],
        )
        .await;
    assert_eq!(created.status(), 200);
    let refused = browser
        .post_form("/tokens", &[("csrf", &csrf), ("name", evil)])
        .await;
    assert_eq!(refused.status(), 422);
    let escaped =
        |html: &str| html.contains("&lt;script&gt;alert") || html.contains("&#60;script&#62;alert");
    for html in [
        created.text().await.unwrap(),
        refused.text().await.unwrap(),
        browser.page("/tokens").await,
    ] {
        assert!(!html.contains("<script>alert"), "unescaped: {html}");
        assert!(escaped(&html), "the name is shown, escaped: {html}");
    }
    app.stop().await;
}
