//! The customer portal over HTTP, without JavaScript: links signed by the API, pages and
//! forms limited to one application, refused links, escaping, and the headers that let
//! another site frame it (tests/api/browser.rs frames it in a real browser).

use std::time::Duration;

use axum::http::StatusCode;
use reqwest::redirect::Policy;
use serde_json::{Value, json};

use crate::helpers::{Receiver, Reply, TOKEN, TestServer, all_delivered, answer, spawn_app_with};

/// A portal session in a client that keeps no cookies (as a framed page in a browser that
/// blocks third-party cookies).
pub struct PortalClient {
    pub http: reqwest::Client,
    /// `http://host:port/portal/<session>` (no trailing slash).
    pub base: String,
}

impl PortalClient {
    pub async fn open(server: &TestServer, app: &str) -> Self {
        let (status, link) = server.post(&format!("/apps/{app}/portal"), json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{link}");
        Self::at(link["url"].as_str().unwrap())
    }

    pub fn at(url: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            base: url.trim_end_matches('/').to_owned(),
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    pub async fn csrf(&self) -> String {
        let (_, html) = self.get("/").await;
        let at = html.find("name=\"csrf\" value=\"").expect("a form") + 19;
        html[at..at + 64].to_owned()
    }

    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
        let csrf = self.csrf().await;
        let mut fields = vec![("csrf", csrf.as_str())];
        fields.extend_from_slice(form);
        self.post_raw(path, &fields, None).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> (StatusCode, String) {
        let mut r = self.http.post(format!("{}{path}", self.base)).form(form);
        if let Some(origin) = origin {
            r = r.header("origin", origin);
        }
        let r = r.send().await.unwrap();
        (r.status(), r.text().await.unwrap())
    }
}

fn endpoint_id_in(html: &str) -> String {
    let at = html.find("<code>ep_").expect("an endpoint id") + 6;
    html[at..at + 35].to_owned()
}

#[tokio::test]
async fn a_portal_link_is_made_by_whoever_manages_that_applications_endpoints() {
    let server = spawn_app_with(&[]).await;
    let a = server.create_app().await;
    let b = server.create_app().await;
    let (status, link) = server
        .post(
            &format!("/apps/{a}/portal"),
            json!({"expires_in": 600, "return_url": "https://acme.example/settings"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{link}");
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("http://{}/portal/", server.addr)),
        "{url}"
    );
    let expires: chrono::DateTime<chrono::Utc> =
        link["expires_at"].as_str().unwrap().parse().unwrap();
    let left = expires - chrono::Utc::now();
    assert!(left > chrono::Duration::seconds(590) && left <= chrono::Duration::seconds(600));
    // Without a body: an hour.
    let r = server
        .http
        .post(server.url(&format!("/apps/{a}/portal")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let token = |scopes: Value| {
        let server = &server;
        let a = a.clone();
        async move {
            let (_, t) = server
                .post("/tokens", json!({"name": "t", "app": a, "scopes": scopes}))
                .await;
            t["token"].as_str().unwrap().to_owned()
        }
    };
    let manager = token(json!(["endpoints:manage"])).await;
    let reader = token(json!(["messages:read"])).await;
    let post_as = |secret: String, app: String| {
        let server = &server;
        async move {
            answer(
                server
                    .http
                    .post(server.url(&format!("/apps/{app}/portal")))
                    .bearer_auth(secret)
                    .json(&json!({}))
                    .send()
                    .await,
            )
            .await
            .0
        }
    };
    assert_eq!(
        post_as(manager.clone(), a.clone()).await,
        StatusCode::CREATED
    );
    assert_eq!(post_as(manager, b.clone()).await, StatusCode::NOT_FOUND);
    assert_eq!(post_as(reader, a.clone()).await, StatusCode::FORBIDDEN);

    for bad in [
        json!({"expires_in": 10}),
        json!({"expires_in": 30 * 86400}),
        json!({"return_url": "javascript:alert(1)"}),
        json!({"return_url": "not a url"}),
        json!({"lifetime": 60}),
    ] {
        let (status, err) = server.post(&format!("/apps/{a}/portal"), bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {err}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_customer_manages_their_endpoints_and_sees_their_messages_in_the_portal() {
    let server = spawn_app_with(&[("HERALD_PORTAL_FRAME_ANCESTORS", "https://saas.example")]).await;
    let receiver = Receiver::answering(Reply::status(200).with_body("thanks <b>herald</b>")).await;
    let app = server.create_app().await;
    let portal = PortalClient::open(&server, &app).await;

    // The first page, and the headers that let only the listed origin frame it.
    let r = portal
        .http
        .get(format!("{}/", portal.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("frame-ancestors https://saas.example"),
        "{csp}"
    );
    assert_eq!(r.headers()["referrer-policy"], "same-origin");
    assert!(
        r.headers().get("set-cookie").is_none(),
        "the portal sets no cookie"
    );
    assert!(r.headers().get("x-frame-options").is_none());
    let html = r.text().await.unwrap();
    assert!(html.contains("Your endpoints"), "{html}");
    // The operator's dashboard still may not be framed.
    let dash = server
        .http
        .get(format!("http://{}/login", server.addr))
        .send()
        .await
        .unwrap();
    assert!(
        dash.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );

    // Create an endpoint: its secret is shown, and the API sees it.
    let url = receiver.url();
    let (status, page) = portal
        .post(
            "/endpoints",
            &[
                ("url", &url),
                ("description", "Billing hooks"),
                ("event_types", "invoice.paid, invoice.voided"),
                ("rate_limit", ""),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("whsec_"),
        "the new endpoint's secret is shown"
    );
    let ep = endpoint_id_in(&page);
    let (_, listed) = server.get(&format!("/apps/{app}/endpoints")).await;
    assert_eq!(listed["data"][0]["id"], ep.as_str());
    assert_eq!(listed["data"][0]["description"], "Billing hooks");
    assert_eq!(
        listed["data"][0]["event_types"],
        json!(["invoice.paid", "invoice.voided"])
    );

    // A bad URL comes back with why, and nothing is created.
    let (status, page) = portal
        .post("/endpoints", &[("url", "ftp://nope"), ("rate_limit", "")])
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("form-error"), "{page}");
    assert_eq!(
        server.get(&format!("/apps/{app}/endpoints")).await.1["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Edit, disable, enable, reveal, rotate.
    let path = format!("/endpoints/{ep}");
    let (status, page) = portal
        .post(
            &path,
            &[
                ("url", &url),
                ("description", "Renamed"),
                ("event_types", ""),
                ("rate_limit", "50"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (_, shown) = server.get(&format!("/apps/{app}/endpoints/{ep}")).await;
    assert_eq!(
        (
            shown["description"].clone(),
            shown["rate_limit"].clone(),
            shown["event_types"].clone()
        ),
        (json!("Renamed"), json!(50), json!([]))
    );
    portal
        .post(&format!("{path}/state"), &[("disabled", "true")])
        .await;
    assert_eq!(
        server.get(&format!("/apps/{app}/endpoints/{ep}")).await.1["disabled"],
        true
    );
    portal
        .post(&format!("{path}/state"), &[("disabled", "false")])
        .await;
    assert_eq!(
        server.get(&format!("/apps/{app}/endpoints/{ep}")).await.1["disabled"],
        false
    );
    let (_, secret) = server
        .get(&format!("/apps/{app}/endpoints/{ep}/secret"))
        .await;
    let (_, page) = portal.post(&format!("{path}/secret"), &[]).await;
    assert!(
        page.contains(secret["secret"].as_str().unwrap()),
        "reveal shows the secret"
    );
    let (_, page) = portal.post(&format!("{path}/rotate"), &[]).await;
    let (_, rotated) = server
        .get(&format!("/apps/{app}/endpoints/{ep}/secret"))
        .await;
    assert_ne!(rotated, secret);
    assert!(page.contains(rotated["secret"].as_str().unwrap()));

    // A message sent through the API shows up with its attempt and the endpoint's answer.
    let msg = server
        .send(&app, "invoice.paid", json!({"amount": 42}))
        .await;
    server
        .wait_for_message(&app, &msg, Duration::from_secs(10), all_delivered)
        .await;
    let (_, list) = portal.get("/messages").await;
    assert!(list.contains(&msg), "{list}");
    let (status, page) = portal.get(&format!("/messages/{msg}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("&#34;amount&#34;: 42"), "{page}");
    assert!(
        page.contains("thanks &#60;b&#62;herald&#60;/b&#62;"),
        "the answer, escaped: {page}"
    );
    assert!(page.contains("succeeded"));

    // Replay and recover without JavaScript.
    let (status, page) = portal
        .post(&format!("/messages/{msg}/replay"), &[("endpoint_id", "")])
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Sending again to 1 endpoint"), "{page}");
    receiver.wait_for(2, Duration::from_secs(10)).await;
    let (status, page) = portal
        .post(&format!("{path}/recover"), &[("since", "2020-01-01T00:00")])
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Resending"), "{page}");

    // Delete (confirmed only).
    let (status, _) = portal.post(&format!("{path}/delete"), &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, page) = portal
        .post(&format!("{path}/delete"), &[("confirm", "yes")])
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        server.get(&format!("/apps/{app}/endpoints/{ep}")).await.0,
        StatusCode::NOT_FOUND
    );
    server.stop().await;
}

#[tokio::test]
async fn forms_need_the_sessions_token_and_this_origin() {
    let server = spawn_app_with(&[]).await;
    let app = server.create_app().await;
    let portal = PortalClient::open(&server, &app).await;
    let form = [("url", "https://example.com/hook"), ("rate_limit", "")];
    let csrf = portal.csrf().await;
    let mut with_token = vec![("csrf", csrf.as_str())];
    with_token.extend_from_slice(&form);
    for (fields, origin) in [
        (form.to_vec(), None),
        (
            {
                let mut f = vec![("csrf", "0".repeat(64).leak() as &str)];
                f.extend_from_slice(&form);
                f
            },
            None,
        ),
        (with_token.clone(), Some("https://evil.example")),
    ] {
        let (status, page) = portal.post_raw("/endpoints", &fields, origin).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    }
    // Another application's session token is not this one's.
    let other = PortalClient::open(&server, &server.create_app().await).await;
    let theirs = other.csrf().await;
    let mut fields = vec![("csrf", theirs.as_str())];
    fields.extend_from_slice(&form);
    assert_eq!(
        portal.post_raw("/endpoints", &fields, None).await.0,
        StatusCode::FORBIDDEN
    );
    assert!(
        server.get(&format!("/apps/{app}/endpoints")).await.1["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The right token from our own origin goes through.
    let origin = format!("http://{}", server.addr);
    assert_eq!(
        portal
            .post_raw("/endpoints", &with_token, Some(&origin))
            .await
            .0,
        StatusCode::OK
    );
    server.stop().await;
}

#[tokio::test]
async fn tampered_expired_and_other_applications_links_are_refused_with_a_page() {
    let server = spawn_app_with(&[("HERALD_ALLOW_PRIVATE_TARGETS", "true")]).await;
    let receiver = Receiver::start().await;
    let (a, _, _) = server.app_with_endpoint(&receiver).await;
    let (b, b_ep, _) = server.app_with_endpoint(&receiver).await;
    let b_msg = server.send(&b, "invoice.paid", json!({})).await;
    server
        .wait_for_message(&b, &b_msg, Duration::from_secs(10), all_delivered)
        .await;
    let portal = PortalClient::open(&server, &a).await;

    // Tampered: a character of the signature changed, or the application swapped.
    let session = portal.base.rsplit('/').next().unwrap().to_owned();
    let last = session.chars().last().unwrap();
    let flipped = format!(
        "{}{}",
        &session[..session.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let swapped = session.replacen(&a, &b, 1);
    for s in [flipped, swapped, "nonsense".into(), format!("{session}x")] {
        let client = PortalClient::at(&format!("http://{}/portal/{s}", server.addr));
        let (status, page) = client.get("/").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{s}");
        assert!(page.contains("This link is not valid"), "{page}");
        let (status, _) = client
            .post_raw("/endpoints", &[("url", "https://x.example")], None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = client.get("/stream").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    // Expired: signed for a moment that has passed.
    let config = herald::config::Config::from_lookup(|k| match k {
        "DATABASE_URL" => Some(server.db_url.clone()),
        "HERALD_ADMIN_TOKEN" => Some(TOKEN.into()),
        _ => None,
    })
    .unwrap();
    let past = chrono::Utc::now() - chrono::Duration::seconds(5);
    let all = herald::http::portal::link::GRANTABLE;
    let expired = herald::http::portal::link::sign(&config, a.parse().unwrap(), all, past, None);
    let client = PortalClient::at(&format!("http://{}/portal/{expired}", server.addr));
    let (status, page) = client.get("/").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("This link has expired"), "{page}");

    // A's session with B's ids: not found, and nothing of B changes.
    let before = (
        server.get(&format!("/apps/{b}/endpoints/{b_ep}")).await,
        server
            .get(&format!("/apps/{b}/endpoints/{b_ep}/secret"))
            .await,
        server.attempts(&b, &b_msg).await.len(),
    );
    for path in [format!("/endpoints/{b_ep}"), format!("/messages/{b_msg}")] {
        let (status, page) = portal.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {page}");
    }
    for (path, form) in [
        (
            format!("/endpoints/{b_ep}"),
            vec![("url", "https://evil.example/"), ("rate_limit", "")],
        ),
        (
            format!("/endpoints/{b_ep}/state"),
            vec![("disabled", "true")],
        ),
        (
            format!("/endpoints/{b_ep}/delete"),
            vec![("confirm", "yes")],
        ),
        (format!("/endpoints/{b_ep}/secret"), vec![]),
        (format!("/endpoints/{b_ep}/rotate"), vec![]),
        (format!("/endpoints/{b_ep}/test"), vec![]),
        (
            format!("/endpoints/{b_ep}/recover"),
            vec![("since", "2020-01-01T00:00")],
        ),
        (
            format!("/messages/{b_msg}/replay"),
            vec![("endpoint_id", "")],
        ),
        (
            format!("/messages/{b_msg}/replay"),
            vec![("endpoint_id", b_ep.as_str())],
        ),
    ] {
        let (status, page) = portal.post(&path, &form).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {page}");
        assert!(!page.contains("whsec_"), "{path} showed a secret");
    }
    let (status, _) = portal.get(&format!("/stream?app={b}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = (
        server.get(&format!("/apps/{b}/endpoints/{b_ep}")).await,
        server
            .get(&format!("/apps/{b}/endpoints/{b_ep}/secret"))
            .await,
        server.attempts(&b, &b_msg).await.len(),
    );
    assert_eq!(before, after, "B changed through A's portal");

    // An application removed since the link was made.
    assert_eq!(
        server.delete(&format!("/apps/{a}")).await.0,
        StatusCode::ACCEPTED
    );
    let (status, page) = portal.get("/").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("no longer exists"), "{page}");
    server.stop().await;
}

#[tokio::test]
async fn what_customers_and_brands_supply_comes_out_escaped() {
    let server = spawn_app_with(&[]).await;
    let evil = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";
    let receiver = Receiver::answering(Reply::status(500).with_body(evil)).await;
    let (status, created) = server
        .post(
            "/apps",
            json!({"name": evil, "portal_brand": {"product_name": evil}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let app = created["id"].as_str().unwrap().to_owned();
    let (ep, _) = server
        .create_endpoint(&app, json!({"url": receiver.url(), "description": evil}))
        .await;
    let msg = server
        .send(&app, "invoice.paid", json!({"note": evil}))
        .await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let portal = PortalClient::open(&server, &app).await;
    let (_, form_page) = portal
        .post(
            "/endpoints",
            &[
                ("url", "https://example.com/x"),
                ("description", evil),
                ("event_types", evil),
                ("rate_limit", evil),
            ],
        )
        .await;
    for (what, page) in [
        ("endpoints", portal.get("/").await.1),
        ("endpoint", portal.get(&format!("/endpoints/{ep}")).await.1),
        ("message", portal.get(&format!("/messages/{msg}")).await.1),
        ("messages", portal.get("/messages").await.1),
        ("refused form", form_page),
    ] {
        assert!(!page.contains("<script>alert"), "{what}: raw script");
        assert!(!page.contains("<img src=x"), "{what}: raw tag");
        assert!(
            page.contains("&#60;script&#62;"),
            "{what}: the text is shown, escaped"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn the_dashboard_opens_an_applications_portal_with_a_fresh_link() {
    let server = spawn_app_with(&[]).await;
    let app = server.create_app().await;
    let mut browser = crate::dashboard::Browser::new(&server);
    browser.login().await;
    let page = format!("/apps/{app}");
    let csrf = browser.csrf(&page).await;
    assert!(browser.page(&page).await.contains("Open portal"));
    let r = browser
        .post_form(&format!("/apps/{app}/portal"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), 303);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/portal/"), "{location}");
    // It opens without the operator's cookie: the link alone is the session.
    let portal = PortalClient::at(&format!("http://{}{location}", server.addr));
    let (status, html) = portal.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Your endpoints"));
    // Without the form's token, nothing is opened.
    let r = browser.post_form(&format!("/apps/{app}/portal"), &[]).await;
    assert_eq!(r.status(), 403);
    server.stop().await;
}

#[tokio::test]
async fn the_portals_channel_replays_its_applications_messages_only() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let server = spawn_app_with(&[]).await;
    let receiver = Receiver::start().await;
    let (a, _, _) = server.app_with_endpoint(&receiver).await;
    let (b, _, _) = server.app_with_endpoint(&receiver).await;
    let a_msg = server.send(&a, "invoice.paid", json!({})).await;
    let b_msg = server.send(&b, "invoice.paid", json!({})).await;
    server
        .wait_for_message(&a, &a_msg, Duration::from_secs(10), all_delivered)
        .await;
    server
        .wait_for_message(&b, &b_msg, Duration::from_secs(10), all_delivered)
        .await;
    let portal = PortalClient::open(&server, &a).await;
    let ws_url = format!("{}/ws", portal.base.replacen("http://", "ws://", 1));
    let open = |origin: Option<String>| {
        let ws_url = ws_url.clone();
        async move {
            let mut request = ws_url.into_client_request().unwrap();
            if let Some(o) = origin {
                request.headers_mut().insert("origin", o.parse().unwrap());
            }
            tokio_tungstenite::connect_async(request).await
        }
    };
    // A page elsewhere cannot drive it, nor a client that says no origin.
    assert!(open(Some("https://evil.example".into())).await.is_err());
    assert!(open(None).await.is_err());
    let (mut ws, _) = open(Some(format!("http://{}", server.addr))).await.unwrap();
    let mut answer = async |command: Value| {
        ws.send(Message::Text(command.to_string().into()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["req"] == command["req"] {
                    return v;
                }
            }
        }
    };
    let refused = answer(json!({"req": "1", "op": "replay", "message_id": b_msg})).await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    let refused = answer(json!({"req": "2", "op": "replay", "message_id": b_msg, "app": b})).await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    let done = answer(json!({"req": "3", "op": "replay", "message_id": a_msg})).await;
    assert_eq!(done["type"], "ack", "{done}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.attempts(&b, &b_msg).await.len(),
        1,
        "B's message was sent again"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_test_event_goes_to_the_one_endpoint_it_was_sent_from() {
    let server = spawn_app_with(&[]).await;
    let picky = Receiver::start().await;
    let everything = Receiver::start().await;
    let app = server.create_app().await;
    let (ep, secret) = server
        .create_endpoint(
            &app,
            json!({"url": picky.url(), "event_types": ["invoice.paid"]}),
        )
        .await;
    server
        .create_endpoint(&app, json!({"url": everything.url()}))
        .await;
    let portal = PortalClient::open(&server, &app).await;
    let (status, page) = portal.post(&format!("/endpoints/{ep}/test"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Test event msg_"), "{page}");
    let got = picky.wait_for(1, Duration::from_secs(10)).await;
    assert!(got[0].verify(&secret), "signed like any other");
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["type"], "herald.test");
    assert!(body.to_string().contains(&ep), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        everything.count(),
        0,
        "a test event reached another endpoint"
    );
    assert_eq!(picky.count(), 1);
    // A disabled endpoint is not sent one.
    server
        .patch(
            &format!("/apps/{app}/endpoints/{ep}"),
            json!({"disabled": true}),
        )
        .await;
    let (status, page) = portal.post(&format!("/endpoints/{ep}/test"), &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
    server.stop().await;
}

#[tokio::test]
async fn a_link_grants_no_more_than_the_token_that_made_it() {
    let server = spawn_app_with(&[]).await;
    let receiver = Receiver::start().await;
    let (app, ep, _) = server.app_with_endpoint(&receiver).await;
    let msg = server
        .send(&app, "invoice.paid", json!({"secret": "payload"}))
        .await;
    server
        .wait_for_message(&app, &msg, Duration::from_secs(10), all_delivered)
        .await;
    let (_, manager) = server
        .post(
            "/tokens",
            json!({"name": "m", "app": app, "scopes": ["endpoints:manage"]}),
        )
        .await;
    let (status, link) = answer(
        server
            .http
            .post(server.url(&format!("/apps/{app}/portal")))
            .bearer_auth(manager["token"].as_str().unwrap())
            .send()
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{link}");
    let portal = PortalClient::at(link["url"].as_str().unwrap());
    let (status, home) = portal.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!home.contains("/messages\""), "no Messages link: {home}");
    assert!(!home.contains("data-stream="), "no live attempts");
    let (_, page) = portal.get(&format!("/endpoints/{ep}")).await;
    assert!(!page.contains(&msg), "attempts are shown: {page}");
    assert!(!page.contains("/recover"), "recover is offered");
    for path in [
        "/messages".to_owned(),
        format!("/messages/{msg}"),
        "/stream".to_owned(),
        "/ws".to_owned(),
    ] {
        let (status, body) = portal.get(&path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert!(!body.contains("payload"), "{path}");
    }
    for (path, form) in [
        (format!("/messages/{msg}/replay"), vec![("endpoint_id", "")]),
        (
            format!("/endpoints/{ep}/recover"),
            vec![("since", "2020-01-01T00:00")],
        ),
    ] {
        assert_eq!(
            portal.post(&path, &form).await.0,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    assert_eq!(receiver.count(), 1, "something was sent again");
    // Managing endpoints still works.
    let (status, _) = portal
        .post(&format!("/endpoints/{ep}/state"), &[("disabled", "true")])
        .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn saving_an_endpoint_keeps_the_credentials_of_its_url() {
    let server = spawn_app_with(&[]).await;
    let app = server.create_app().await;
    let (ep, _) = server
        .create_endpoint(&app, json!({"url": "https://example.com/hook"}))
        .await;
    // Stored before URLs with credentials were refused.
    sqlx::query(
        "update herald.endpoint set url = 'https://user:pw@example.com/hook' where id = $1",
    )
    .bind(ep.parse::<herald::domain::EndpointId>().unwrap())
    .execute(&server.pool)
    .await
    .unwrap();
    let portal = PortalClient::open(&server, &app).await;
    let (_, page) = portal.get(&format!("/endpoints/{ep}")).await;
    assert!(!page.contains("user:pw"), "the page shows the credentials");
    let shown = herald::domain::redact_userinfo("https://user:pw@example.com/hook");
    let (status, page) = portal
        .post(
            &format!("/endpoints/{ep}"),
            &[
                ("url", &shown),
                ("description", "new"),
                ("event_types", ""),
                ("rate_limit", ""),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let url: String = sqlx::query_scalar("select url from herald.endpoint where id = $1")
        .bind(ep.parse::<herald::domain::EndpointId>().unwrap())
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(url, "https://user:pw@example.com/hook");
    server.stop().await;
}

#[tokio::test]
async fn the_live_feed_of_a_portal_ends_with_its_link() {
    let server = spawn_app_with(&[("HERALD_SSE_KEEP_ALIVE", "200ms")]).await;
    let app = server.create_app().await;
    let config = herald::config::Config::from_lookup(|k| match k {
        "DATABASE_URL" => Some(server.db_url.clone()),
        "HERALD_ADMIN_TOKEN" => Some(TOKEN.into()),
        _ => None,
    })
    .unwrap();
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    let all = herald::http::portal::link::GRANTABLE;
    let session = herald::http::portal::link::sign(&config, app.parse().unwrap(), all, soon, None);
    let mut response = reqwest::get(format!("http://{}/portal/{session}/stream", server.addr))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(6), async {
        while let Ok(Some(_)) = response.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its link");
    assert!(
        chrono::Utc::now().timestamp() >= soon.timestamp(),
        "it ended early"
    );
    server.stop().await;
}

#[tokio::test]
async fn customers_cannot_aim_endpoints_at_private_addresses_unless_both_settings_allow() {
    let server = spawn_app_with(&[("HERALD_PORTAL_ALLOW_PRIVATE_TARGETS", "false")]).await;
    let app = server.create_app().await;
    let portal = PortalClient::open(&server, &app).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
    ] {
        let (status, page) = portal
            .post("/endpoints", &[("url", url), ("rate_limit", "")])
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {page}");
    }
    assert!(
        server.get(&format!("/apps/{app}/endpoints")).await.1["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The API, for the operator, still may.
    server
        .create_endpoint(&app, json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    server.stop().await;
}

/// A host name is resolved only when the worker connects: one that a portal customer set is
/// sent to with a client that reaches public addresses only, while the operator's endpoints
/// (the tests allow private targets) still reach the same address.
#[tokio::test]
async fn a_customers_host_name_that_resolves_to_a_private_address_is_never_called() {
    let server = spawn_app_with(&[("HERALD_PORTAL_ALLOW_PRIVATE_TARGETS", "false")]).await;
    let receiver = Receiver::start().await;
    let app = server.create_app().await;
    let portal = PortalClient::open(&server, &app).await;
    let by_name = receiver.url().replace("127.0.0.1", "localhost");
    let (status, page) = portal
        .post(
            "/endpoints",
            &[("url", by_name.as_str()), ("rate_limit", "")],
        )
        .await;
    assert!(
        status.is_success() || status.is_redirection(),
        "{status}: {page}"
    );
    let msg = server.send(&app, "invoice.paid", json!({})).await;
    let m = server
        .wait_for_message(&app, &msg, Duration::from_secs(10), |m| {
            m["deliveries"][0]["last_error"].is_string()
        })
        .await;
    let (_, attempts) = server
        .get(&format!("/apps/{app}/messages/{msg}/attempts"))
        .await;
    assert_eq!(
        attempts["data"][0]["error_kind"], "blocked",
        "{attempts:#} {m:#}"
    );
    assert_eq!(
        receiver.count(),
        0,
        "the customer's endpoint reached a private address"
    );

    // The operator's endpoint at the same name is sent to (and the customer's URL, set
    // again through the API, is the operator's from then on).
    let ep = m["deliveries"][0]["endpoint_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = server
        .patch(
            &format!("/apps/{app}/endpoints/{ep}"),
            json!({"url": by_name}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let msg = server.send(&app, "invoice.paid", json!({})).await;
    server
        .wait_for_message(&app, &msg, Duration::from_secs(10), all_delivered)
        .await;
    assert!(
        receiver
            .received()
            .iter()
            .any(|r| r.header("webhook-id") == msg),
        "the operator's URL is sent to"
    );
    server.stop().await;
}

#[tokio::test]
async fn many_endpoints_come_in_pages() {
    let server = spawn_app_with(&[]).await;
    let app = server.create_app().await;
    let mut ids = vec![];
    for n in 0..55 {
        let (ep, _) = server
            .create_endpoint(&app, json!({"url": format!("https://example.com/{n}")}))
            .await;
        ids.push(ep);
    }
    let portal = PortalClient::open(&server, &app).await;
    let (_, first) = portal.get("/").await;
    assert!(
        first.contains(&ids[49]) && !first.contains(&ids[50]),
        "50 on the first page"
    );
    let at = first.find("/?after=").expect("a link to the next page");
    let query = &first[at + 2..first[at..].find('"').unwrap() + at];
    let (status, second) = portal.get(&format!("/?{query}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(second.contains(&ids[50]) && second.contains(&ids[54]) && !second.contains(&ids[49]));
    assert!(!second.contains("/?after="), "no page after the last");
    assert_eq!(
        portal.get("/?after=nonsense").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    server.stop().await;
}

/// A portal link made with `endpoints:manage` only.
async fn manager_portal(server: &TestServer, app: &str) -> PortalClient {
    let (_, manager) = server
        .post(
            "/tokens",
            json!({"name": "m", "app": app, "scopes": ["endpoints:manage"]}),
        )
        .await;
    let (status, link) = answer(
        server
            .http
            .post(server.url(&format!("/apps/{app}/portal")))
            .bearer_auth(manager["token"].as_str().unwrap())
            .send()
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{link}");
    PortalClient::at(link["url"].as_str().unwrap())
}

/// The part of `html` about event type `name` on the event-types page.
fn type_section<'a>(html: &'a str, name: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"type-{name}\""))
        .unwrap_or_else(|| panic!("{name} is not shown: {html}"));
    let end = html[start..].find("</section>").unwrap() + start;
    &html[start..end]
}

#[tokio::test]
async fn the_portal_describes_the_catalogs_event_types_and_offers_them_in_the_forms() {
    let server = spawn_app_with(&[]).await;
    let app = server.create_app().await;
    let portal = manager_portal(&server, &app).await;
    let (_, home) = portal.get("/").await;
    assert!(
        !home.contains(">Event types</a>"),
        "no catalog, no link: {home}"
    );
    assert!(!home.contains("name=\"type:"), "no boxes");
    assert!(home.contains("invoice.*"), "the wildcard hint");

    for body in [
        json!({
            "name": "invoice.paid",
            "description": "An invoice was <script>alert(1)</script> paid & settled.",
            "schema": {
                "type": "object",
                "required": ["amount"],
                "properties": {"amount": {"$ref": "#/$defs/money"}, "note": {"type": "string"}},
                "$defs": {"money": {"type": "integer", "minimum": 0}},
            },
            "examples": [{"amount": 4200, "note": "<b>thanks</b>"}, {"amount": 1}],
        }),
        json!({"name": "invoice.voided", "description": "An invoice was voided.", "deprecated": true}),
        json!({"name": "invoice.legacy", "description": "Gone.", "archived": true}),
    ] {
        let (status, created) = server.post("/event-types", body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
    }

    let (_, home) = portal.get("/").await;
    assert!(
        home.contains("/event-types\">Event types</a>"),
        "in the nav: {home}"
    );
    let (status, page) = portal.get("/event-types").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a link with endpoints:manage only opens it"
    );
    let paid = type_section(&page, "invoice.paid");
    assert!(
        paid.contains(
            "An invoice was &#60;script&#62;alert(1)&#60;/script&#62; paid &#38; settled."
        ),
        "the description, escaped: {paid}"
    );
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(
        paid.contains("&#34;$defs&#34;") && paid.contains("&#34;minimum&#34;: 0"),
        "the schema, pretty-printed: {paid}"
    );
    assert!(
        paid.contains("&#34;type&#34;: &#34;invoice.paid&#34;")
            && paid.contains("&#34;amount&#34;: 4200")
            && paid.contains("&#60;b&#62;thanks&#60;/b&#62;"),
        "the first example, as the body received: {paid}"
    );
    assert!(
        !paid.contains("&#34;amount&#34;: 1\n"),
        "only the first example"
    );
    assert!(!paid.contains("deprecated"));
    let voided = type_section(&page, "invoice.voided");
    assert!(voided.contains("deprecated"), "{voided}");
    assert!(voided.contains("no fixed shape"), "{voided}");
    assert!(
        !page.contains("invoice.legacy"),
        "archived types are not shown"
    );

    // The endpoint form offers each type as a box, and takes boxes and text together.
    assert!(
        home.contains("name=\"type:invoice.paid\"")
            && home.contains("name=\"type:invoice.voided\"")
    );
    assert!(!home.contains("invoice.legacy"));
    let (status, page) = portal
        .post(
            "/endpoints",
            &[
                ("url", "https://example.com/hooks"),
                ("type:invoice.paid", "on"),
                ("event_types", "customer.created, invoice.paid"),
                ("rate_limit", ""),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ep = endpoint_id_in(&page);
    let (_, endpoint) = server.get(&format!("/apps/{app}/endpoints/{ep}")).await;
    assert_eq!(
        endpoint["event_types"],
        json!(["invoice.paid", "customer.created"])
    );
    let (_, edit) = portal.get(&format!("/endpoints/{ep}")).await;
    assert!(
        edit.contains("name=\"type:invoice.paid\" value=\"on\" checked"),
        "{edit}"
    );
    assert!(!edit.contains("name=\"type:invoice.voided\" value=\"on\" checked"));
    assert!(
        edit.contains("name=\"event_types\" value=\"customer.created\""),
        "the rest as text: {edit}"
    );
    // Unticked and emptied: every type again.
    let (status, page) = portal
        .post(
            &format!("/endpoints/{ep}"),
            &[
                ("url", "https://example.com/hooks"),
                ("event_types", ""),
                ("rate_limit", ""),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (_, endpoint) = server.get(&format!("/apps/{app}/endpoints/{ep}")).await;
    assert_eq!(endpoint["event_types"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn many_event_types_come_in_pages() {
    let server = spawn_app_with(&[]).await;
    let app = server.create_app().await;
    for n in 0..55 {
        let (status, _) = server
            .post("/event-types", json!({"name": format!("t{n:02}")}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let portal = PortalClient::open(&server, &app).await;
    let (_, first) = portal.get("/event-types").await;
    assert!(
        first.contains("type-t49") && !first.contains("type-t50"),
        "50 on the first page"
    );
    assert!(first.contains("/event-types?after=t49\""), "{first}");
    let (status, second) = portal.get("/event-types?after=t49").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        second.contains("type-t50") && second.contains("type-t54") && !second.contains("type-t49")
    );
    assert!(!second.contains("?after="), "no page after the last");
    assert_eq!(
        portal.get("/event-types?after=no%20such%20page").await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    server.stop().await;
}

/// `DELETE /apps/{app}/portal` ends every link of the application made until then (pages,
/// forms, the feed and the channel alike); links made afterwards and other applications'
/// links still work; it needs what making a link needs.
#[tokio::test]
async fn revoking_an_applications_links_ends_those_made_until_then() {
    let server = spawn_app_with(&[]).await;
    let a = server.create_app().await;
    let b = server.create_app().await;
    let old = PortalClient::open(&server, &a).await;
    let other = PortalClient::open(&server, &b).await;
    assert_eq!(old.get("/").await.0, StatusCode::OK);

    // A token of the application that may read messages but not manage endpoints may not.
    let (_, reader) = server
        .post(
            "/tokens",
            json!({"name": "r", "app": a, "scopes": ["messages:read"]}),
        )
        .await;
    let (status, body) = answer(
        server
            .http
            .delete(server.url(&format!("/apps/{a}/portal")))
            .bearer_auth(reader["token"].as_str().unwrap())
            .send()
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(old.get("/").await.0, StatusCode::OK, "still open");

    let (status, body) = server.delete(&format!("/apps/{a}/portal")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, page) = old.get("/").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("withdrawn"), "{page}");
    let (status, _) = old
        .post_raw("/endpoints", &[("url", "https://x.example")], None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(old.get("/stream").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(old.get("/ws").await.0, StatusCode::UNAUTHORIZED);

    // A link made afterwards opens; another application's was never touched.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let fresh = PortalClient::open(&server, &a).await;
    assert_eq!(fresh.get("/").await.0, StatusCode::OK);
    assert_eq!(other.get("/").await.0, StatusCode::OK);

    let (status, body) = server
        .delete("/apps/app_00000000000000000000000000000000/portal")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "not_found");
    server.stop().await;
}

/// A portal's live feed, opened before its application's links were ended, closes soon
/// after (a stream checks every 30 seconds that its credential still stands).
#[tokio::test]
async fn the_live_feed_of_a_portal_ends_when_its_links_are_revoked() {
    let server = spawn_app_with(&[("HERALD_SSE_KEEP_ALIVE", "1s")]).await;
    let app = server.create_app().await;
    let portal = PortalClient::open(&server, &app).await;
    let mut response = reqwest::get(format!("{}/stream", portal.base))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = server.delete(&format!("/apps/{app}/portal")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let ended = tokio::time::timeout(Duration::from_secs(45), async {
        while let Ok(Some(_)) = response.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its revoked link");
    server.stop().await;
}

/// A customer adding endpoints in the portal meets the same limit, told in their words.
#[tokio::test]
async fn the_portal_adds_no_endpoint_past_the_applications_limit() {
    let server = spawn_app_with(&[("HERALD_MAX_ENDPOINTS_PER_APP", "1")]).await;
    let app = server.create_app().await;
    let portal = PortalClient::open(&server, &app).await;
    let (status, page) = portal
        .post("/endpoints", &[("url", "https://one.example/hook")])
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (status, page) = portal
        .post("/endpoints", &[("url", "https://two.example/hook")])
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{page}");
    assert!(page.contains("the most allowed"), "{page}");
    let (_, listed) = server.get(&format!("/apps/{app}/endpoints")).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    server.stop().await;
}

/// One application's portal may make `HERALD_PORTAL_WRITE_LIMIT` changes a minute; the next
/// is refused with a page that says when to try again, and other portals are not held up.
#[tokio::test]
async fn a_portal_makes_no_more_changes_a_minute_than_the_limit() {
    let server = spawn_app_with(&[("HERALD_PORTAL_WRITE_LIMIT", "3")]).await;
    let a = server.create_app().await;
    let b = server.create_app().await;
    let portal = PortalClient::open(&server, &a).await;
    for i in 0..3 {
        let (status, page) = portal
            .post(
                "/endpoints",
                &[("url", &format!("https://{i}.example/hook"))],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
    }
    let (status, page) = portal
        .post("/endpoints", &[("url", "https://more.example/hook")])
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{page}");
    assert!(page.contains("Too many changes"), "{page}");
    // Reading is not a change.
    assert_eq!(portal.get("/").await.0, StatusCode::OK);
    let (_, listed) = server.get(&format!("/apps/{a}/endpoints")).await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 3);

    let other = PortalClient::open(&server, &b).await;
    let (status, page) = other
        .post("/endpoints", &[("url", "https://b.example/hook")])
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    server.stop().await;
}
