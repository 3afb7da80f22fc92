//! The dashboard as a browser without JavaScript sees it: login, pages, forms, escaping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::redirect::Policy;
use serde_json::json;

use crate::helpers::{
    Receiver, Reply, SseClient, TOKEN, TestServer, all_dead, all_delivered, poll_until, spawn_app,
    spawn_app_on, spawn_app_with,
};

const WAIT: Duration = Duration::from_secs(10);

/// A browser session: keeps the cookie, never follows redirects (tests look at them).
pub struct Browser<'a> {
    app: &'a TestServer,
    http: reqwest::Client,
    cookie: Option<String>,
}

impl<'a> Browser<'a> {
    pub fn new(app: &'a TestServer) -> Self {
        Self {
            app,
            http: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.app.addr)
    }

    pub async fn login(&mut self) {
        let r = self
            .post_form("/login", &[("token", TOKEN), ("next", "/apps")])
            .await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/apps");
        let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(attribute), "{set}");
        }
        self.cookie = Some(set.split(';').next().unwrap().to_owned());
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        let mut r = self.http.get(self.url(path));
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        r.send().await.unwrap()
    }

    pub async fn page(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        r.text().await.unwrap()
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.post_form_from(path, form, None).await
    }

    pub async fn post_form_from(
        &self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> reqwest::Response {
        let mut r = self.http.post(self.url(path)).form(form);
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send().await.unwrap()
    }

    /// The CSRF token a page's forms carry.
    pub async fn csrf(&self, path: &str) -> String {
        let html = self.page(path).await;
        let at = html
            .find("name=\"csrf\" value=\"")
            .expect("page has a form")
            + 19;
        html[at..at + 64].to_owned()
    }
}

/// Asserts a 200 answer whose page says `text`.
async fn assert_page_says(response: reqwest::Response, text: &str) {
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains(text));
}

#[tokio::test]
async fn pages_need_a_login_that_exchanges_the_token_for_a_strict_cookie() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    let r = browser.get("/apps").await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?next=%2Fapps");
    assert!(browser.page("/login").await.contains("Admin token"));

    let wrong = browser
        .post_form("/login", &[("token", "not-the-token-at-all")])
        .await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    // `next` must stay on this site.
    let r = browser
        .post_form("/login", &[("token", TOKEN), ("next", "//evil.example/")])
        .await;
    assert_eq!(r.headers()["location"], "/");

    browser.login().await;
    for path in ["/", "/apps", "/dead", "/tokens"] {
        browser.page(path).await;
    }
    // A forged cookie is no session.
    let forged = Browser {
        cookie: Some("herald_session=99999999999.00ff".into()),
        ..Browser::new(&app)
    };
    assert_eq!(forged.get("/").await.status(), 303);

    // The cookie lets the page read the API (the live feed) but not write through it.
    let stats = browser.get("/api/v1/stats").await;
    assert_eq!(stats.status(), 200);
    let writing = browser.post_form("/api/v1/apps", &[("name", "x")]).await;
    assert_eq!(writing.status(), 401);
    let mut stream = browser.get("/api/v1/stream").await;
    assert_eq!(stream.status(), 200);
    drop(stream.chunk());

    let csrf = browser.csrf("/").await;
    let out = browser.post_form("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
}

/// Every page forbids framing, foreign scripts and styles, referrers and caching (they show
/// secrets), the login page and a rotation's result included.
#[tokio::test]
async fn pages_are_not_cached_framed_or_given_foreign_scripts() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let (ep, _) = app
        .create_endpoint(&app_id, json!({"url": "https://example.com/hook"}))
        .await;
    let mut browser = Browser::new(&app);
    let check = |path: &str, r: &reqwest::Response| {
        let h = r.headers();
        assert_eq!(h["cache-control"], "no-store", "{path}");
        assert_eq!(h["referrer-policy"], "same-origin", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        for directive in [
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
    };
    check("/login", &browser.get("/login").await);
    browser.login().await;
    let endpoint = format!("/apps/{app_id}/endpoints/{ep}");
    for path in [
        "/",
        "/apps",
        &format!("/apps/{app_id}"),
        &endpoint,
        "/dead",
        "/tokens",
    ] {
        let r = browser.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        check(path, &r);
    }
    let csrf = browser.csrf(&endpoint).await;
    let rotated = browser
        .post_form(&format!("{endpoint}/rotate"), &[("csrf", &csrf)])
        .await;
    assert_eq!(rotated.status(), 200);
    check("rotate", &rotated);
    assert!(rotated.text().await.unwrap().contains("whsec_"));
    // The pages keep to that policy: no inline script, style or handler for it to block.
    for path in ["/", &endpoint, "/tokens"] {
        let html = browser.page(path).await;
        assert!(
            !html.contains("<script>") && !html.contains("<style"),
            "{path}"
        );
        assert!(
            !html.contains(" style=") && !html.contains(" onclick="),
            "{path}"
        );
    }
}

/// Logging out ends the session on the server, on every process sharing the database: a
/// copy of the cookie taken before is refused afterwards.
#[tokio::test]
async fn a_cookie_copied_before_logout_is_refused_after_it_on_every_process() {
    let app = spawn_app().await;
    let other = spawn_app_on(app.db_url.clone(), &[]).await;
    let mut browser = Browser::new(&app);
    browser.login().await;
    let copy = Browser {
        cookie: browser.cookie.clone(),
        ..Browser::new(&other)
    };
    assert_eq!(copy.get("/").await.status(), 200);
    assert_eq!(copy.get("/api/v1/stats").await.status(), 200);

    let csrf = browser.csrf("/").await;
    let out = browser.post_form("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status(), 303);
    // Where the logout happened, at once.
    assert_eq!(browser.get("/").await.status(), 303);
    assert_eq!(browser.get("/api/v1/stats").await.status(), 401);
    // Elsewhere, as soon as the notice arrives.
    poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        "the other process still accepts the cookie",
        async || copy.get("/").await.status() == 303,
    )
    .await;
    assert_eq!(copy.get("/api/v1/stats").await.status(), 401);
    // A new login still works.
    browser.login().await;
    assert_eq!(browser.get("/").await.status(), 200);
}

/// `next` after login stays on this site whatever it holds, and never makes a 500: browsers
/// drop tabs and newlines from a `Location` and read `\\` as `/`.
/// A live feed opened with the dashboard's session ends once that session is logged out
/// (within 30 s, as a revoked token's), not only when the process stops.
#[tokio::test]
async fn a_feed_opened_with_a_session_ends_at_its_logout() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    browser.login().await;
    let mut stream = browser.get("/api/v1/stream").await;
    assert_eq!(stream.status(), 200);
    let csrf = browser.csrf("/").await;
    let out = browser.post_form("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status(), 303);
    let ended = tokio::time::timeout(Duration::from_secs(40), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its session's logout");
}

#[tokio::test]
async fn login_redirects_only_to_a_path_on_this_site() {
    let app = spawn_app().await;
    let anonymous = Browser::new(&app);
    let mut logged_in = Browser::new(&app);
    logged_in.login().await;
    let refused = [
        "/\t/evil.example",
        "/\n/evil.example",
        "/\r/evil.example",
        "/x\r\nSet-Cookie: a=b",
        "//evil.example",
        "/\\evil.example",
        "/ /evil.example",
        "https://evil.example/",
        "evil.example",
        "",
    ];
    let valid = "/apps/app_1/messages?cursor=abc%2F1&limit=5";
    for (next, expected) in refused.iter().map(|n| (*n, "/")).chain([(valid, valid)]) {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("next", next)
            .finish();
        let form = anonymous.get(&format!("/login?{query}")).await;
        assert_eq!(form.status(), 200, "{next:?}");
        let html = form.text().await.unwrap();
        let hidden = format!("name=\"next\" value=\"{}\"", expected.replace('&', "&#38;"));
        assert!(html.contains(&hidden), "{next:?}: {html}");

        let again = logged_in.get(&format!("/login?{query}")).await;
        assert_eq!(again.status(), 303, "{next:?}");
        assert_eq!(again.headers()["location"], expected, "{next:?}");

        let posted = anonymous
            .post_form("/login", &[("token", TOKEN), ("next", next)])
            .await;
        assert_eq!(posted.status(), 303, "{next:?}");
        assert_eq!(posted.headers()["location"], expected, "{next:?}");
    }
}

#[tokio::test]
async fn every_value_is_escaped() {
    let app = spawn_app().await;
    let evil = "<script>alert('x')</script>";
    let receiver = Receiver::answering(Reply::status(200).with_body(evil)).await;
    let (_, created) = app.post("/apps", json!({"name": evil})).await;
    let app_id = created["id"].as_str().unwrap().to_owned();
    let (ep, _) = app
        .create_endpoint(&app_id, json!({"url": receiver.url(), "description": evil}))
        .await;
    let msg = app
        .send(&app_id, "user.created", json!({"name": evil}))
        .await;
    app.wait_for_message(&app_id, &msg, WAIT, all_delivered)
        .await;

    let mut browser = Browser::new(&app);
    browser.login().await;
    for path in [
        "/".to_owned(),
        "/apps".to_owned(),
        format!("/apps/{app_id}"),
        format!("/apps/{app_id}/endpoints/{ep}"),
        format!("/apps/{app_id}/messages/{msg}"),
    ] {
        let html = browser.page(&path).await;
        assert!(!html.contains("<script>alert"), "unescaped on {path}");
        // Every asset is ours: nothing is fetched from anywhere else.
        assert!(
            !html.contains("src=\"http") && !html.contains("href=\"http"),
            "{path}"
        );
    }
    let message = browser
        .page(&format!("/apps/{app_id}/messages/{msg}"))
        .await;
    let escaped =
        |html: &str| html.contains("&lt;script&gt;alert") || html.contains("&#60;script&#62;alert");
    assert!(escaped(&message), "payload and body are shown, escaped");
    assert!(message.contains("succeeded"));
    let app_page = browser.page(&format!("/apps/{app_id}")).await;
    assert!(escaped(&app_page));
}

#[tokio::test]
async fn forms_need_the_csrf_token_and_our_origin() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, ep, first_secret) = app.app_with_endpoint(&receiver).await;
    let mut browser = Browser::new(&app);
    browser.login().await;
    let page = format!("/apps/{app_id}/endpoints/{ep}");
    let csrf = browser.csrf(&page).await;
    let toggle = format!("{page}/state");

    let missing = browser.post_form(&toggle, &[("disabled", "true")]).await;
    assert_eq!(missing.status(), 403);
    let wrong = browser
        .post_form(&toggle, &[("disabled", "true"), ("csrf", &"0".repeat(64))])
        .await;
    assert_eq!(wrong.status(), 403);
    let foreign = browser
        .post_form_from(
            &toggle,
            &[("disabled", "true"), ("csrf", &csrf)],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(foreign.status(), 403);
    let (_, endpoint) = app.get(&format!("/apps/{app_id}/endpoints/{ep}")).await;
    assert_eq!(endpoint["disabled"], false, "nothing changed so far");

    // The genuine form disables the endpoint; the feed announces it.
    let mut stream = SseClient::connect(&app, &format!("endpoint={ep}"), None).await;
    let origin = format!("http://{}", app.addr);
    let ok = browser
        .post_form_from(
            &toggle,
            &[("disabled", "true"), ("csrf", &csrf)],
            Some(&origin),
        )
        .await;
    assert_page_says(ok, "Endpoint disabled.").await;
    let (_, endpoint) = app.get(&format!("/apps/{app_id}/endpoints/{ep}")).await;
    assert_eq!(endpoint["disabled"], true);
    assert_eq!(endpoint["disabled_reason"], "disabled by an operator");
    let event = stream.next(WAIT).await.unwrap();
    assert_eq!(event.event, "endpoint.disabled");

    // While disabled it gets nothing; once enabled again, new messages go out, and the
    // page says how to send what it missed.
    let meanwhile = app.send(&app_id, "a.b", json!({})).await;
    let enable = browser
        .post_form(&toggle, &[("disabled", "false"), ("csrf", &csrf)])
        .await;
    assert_page_says(
        enable,
        "were not queued for it; recover a time window to send them",
    )
    .await;
    let later = app.send(&app_id, "a.b", json!({})).await;
    app.wait_for_message(&app_id, &later, WAIT, all_delivered)
        .await;
    let (_, skipped) = app
        .get(&format!("/apps/{app_id}/messages/{meanwhile}"))
        .await;
    assert_eq!(skipped["deliveries"], json!([]));

    // Rotating from the page shows the new secret once; it is the API's current one.
    let rotated = browser
        .post_form(&format!("{page}/rotate"), &[("csrf", &csrf)])
        .await;
    assert_eq!(rotated.status(), 200);
    let html = rotated.text().await.unwrap();
    let (_, secret) = app
        .get(&format!("/apps/{app_id}/endpoints/{ep}/secret"))
        .await;
    let current = secret["secret"].as_str().unwrap();
    assert_ne!(current, first_secret);
    assert!(html.contains(current));
}

#[tokio::test]
async fn dead_letters_are_listed() {
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "none")]).await;
    let receiver = Receiver::answering(Reply::status(500)).await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&app_id, "order.failed", json!({})).await;
    app.wait_for_message(&app_id, &msg, WAIT, all_dead).await;
    let mut browser = Browser::new(&app);
    browser.login().await;
    let html = browser.page("/dead").await;
    assert!(html.contains(&msg) && html.contains("order.failed"));
    assert!(
        html.contains("500"),
        "the last error says what the receiver answered"
    );
    assert!(html.contains(r#"<td class="num">1</td>"#), "{html}");

    // By endpoint, counting stops at a thousand: the page costs the same with a million.
    sqlx::query(
        "with m as (
             insert into herald.message (id, app_id, event_type, payload)
             select herald.uuid_v7(), substring($1 from 5)::uuid, 'order.failed', '{}'
               from generate_series(1, 1000)
             returning id)
         insert into herald.delivery (id, message_id, endpoint_id, state, attempt_count)
         select herald.uuid_v7_at(m.id), m.id, substring($2 from 4)::uuid, 'dead', 1 from m",
    )
    .bind(&app_id)
    .bind(&ep)
    .execute(&app.pool)
    .await
    .unwrap();
    let html = browser.page("/dead").await;
    assert!(html.contains(r#"<td class="num">1000+</td>"#), "{html}");
    let css = browser.get("/assets/herald.css").await;
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    let js = browser.get("/assets/live.js").await;
    assert!(js.text().await.unwrap().contains("EventSource"));
}

#[tokio::test]
async fn replay_and_recover_work_as_plain_forms() {
    let app = spawn_app_with(&[("HERALD_RETRY_SCHEDULE", "none")]).await;
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    let receiver = Receiver::with(Arc::new(move |_| {
        Reply::status(if flag.load(Ordering::SeqCst) {
            500
        } else {
            204
        })
    }))
    .await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;
    let first = app.send(&app_id, "order.paid", json!({})).await;
    app.wait_for_message(&app_id, &first, WAIT, all_dead).await;
    failing.store(false, Ordering::SeqCst);

    let mut browser = Browser::new(&app);
    browser.login().await;
    let page = format!("/apps/{app_id}/messages/{first}");
    let csrf = browser.csrf(&page).await;
    let replayed = browser
        .post_form(
            &format!("{page}/replay"),
            &[("csrf", &csrf), ("endpoint_id", "")],
        )
        .await;
    assert_page_says(replayed, "Replay queued to 1 endpoint").await;
    app.wait_for_message(&app_id, &first, WAIT, all_delivered)
        .await;

    // A second one dies; the dead-letter page's bulk replay brings it back.
    failing.store(true, Ordering::SeqCst);
    let second = app.send(&app_id, "order.paid", json!({})).await;
    app.wait_for_message(&app_id, &second, WAIT, all_dead).await;
    failing.store(false, Ordering::SeqCst);
    assert!(browser.page("/dead").await.contains("Replay all"));
    let recover = format!("/apps/{app_id}/endpoints/{ep}/recover");
    let bad = browser
        .post_form(&recover, &[("csrf", &csrf), ("since", "last tuesday")])
        .await;
    assert_eq!(bad.status(), 400);
    // A window that would end before it starts is refused, as by the API (422).
    let future = browser
        .post_form(&recover, &[("csrf", &csrf), ("since", "2999-01-01T00:00")])
        .await;
    assert_eq!(future.status(), 422);
    assert!(future.text().await.unwrap().contains("must be in the past"));
    let recovered = browser
        .post_form(
            &recover,
            &[
                ("csrf", &csrf),
                ("since", "1970-01-01T00:00"),
                ("back", "dead"),
            ],
        )
        .await;
    assert_page_says(
        recovered,
        "Recover started: 1 to send (dead, or never queued)",
    )
    .await;
    app.wait_for_message(&app_id, &second, WAIT, all_delivered)
        .await;
    let without_token = browser
        .post_form(&recover, &[("since", "1970-01-01T00:00")])
        .await;
    assert_eq!(without_token.status(), 403);
}

/// Issue 7's auto-disable scenario, end to end: an endpoint failing for longer than
/// `HERALD_DISABLE_AFTER` is disabled, and its reason shows in the API, on its page and in
/// the feed; once the receiver is fixed and the endpoint enabled again, delivery resumes.
#[tokio::test]
async fn an_endpoint_failing_too_long_is_disabled_with_its_reason_everywhere_then_resumes() {
    let app = spawn_app_with(&[
        ("HERALD_DISABLE_AFTER", "200ms"),
        ("HERALD_RETRY_SCHEDULE", "300ms,300ms"),
    ])
    .await;
    let healthy = Arc::new(AtomicBool::new(false));
    let state = healthy.clone();
    let receiver = Receiver::with(Arc::new(move |_| {
        Reply::status(if state.load(Ordering::SeqCst) {
            200
        } else {
            500
        })
    }))
    .await;
    let app_id = app.create_app().await;
    // A key in the query, as many webhook URLs carry: the feed goes to every dashboard.
    let (ep, _) = app
        .create_endpoint(
            &app_id,
            json!({"url": format!("{}?key=F33DKEY", receiver.url())}),
        )
        .await;
    let mut stream = SseClient::connect(&app, &format!("endpoint={ep}"), None).await;

    let failing = app.send(&app_id, "a.b", json!({})).await;
    app.wait_for_message(&app_id, &failing, WAIT, all_dead)
        .await;
    let (_, endpoint) = app.get(&format!("/apps/{app_id}/endpoints/{ep}")).await;
    assert_eq!(endpoint["disabled"], true, "{endpoint}");
    let reason = endpoint["disabled_reason"].as_str().unwrap().to_owned();
    assert!(reason.starts_with("failing continuously since"), "{reason}");

    let mut announced = None;
    while let Some(event) = stream.next(WAIT).await {
        if event.event == "endpoint.disabled" {
            announced = Some(event.json());
            break;
        }
    }
    let announced = announced.expect("the feed announces the disabling");
    assert_eq!(announced["disabled_reason"], reason.as_str());
    assert!(
        !announced["url"].as_str().unwrap().contains("F33DKEY"),
        "{announced}"
    );

    let mut browser = Browser::new(&app);
    browser.login().await;
    let page = browser
        .page(&format!("/apps/{app_id}/endpoints/{ep}"))
        .await;
    assert!(
        page.contains("disabled") && page.contains(&reason),
        "{page}"
    );

    healthy.store(true, Ordering::SeqCst);
    let (status, enabled) = app
        .patch(
            &format!("/apps/{app_id}/endpoints/{ep}"),
            json!({"disabled": false}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &enabled["disabled"]),
        (200, &json!(false))
    );
    let after = app.send(&app_id, "a.b", json!({})).await;
    app.wait_for_message(&app_id, &after, WAIT, all_delivered)
        .await;
}

/// Pages never show a URL's user name or password (rows from before they were refused),
/// and titles and lists leave out the query, where Slack- and Discord-style URLs carry their
/// key; the endpoint's own page still shows the query, below its title.
#[tokio::test]
async fn pages_show_endpoint_urls_without_credentials_and_list_them_without_query() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let (ep, _) = app
        .create_endpoint(
            &app_id,
            json!({"url": "https://hooks.example.com/services/T0?token=k3y-in-query"}),
        )
        .await;
    let mut browser = Browser::new(&app);
    browser.login().await;
    let title = |html: &str| {
        let start = html.find("<title>").unwrap();
        html[start..html.find("</title>").unwrap()].to_owned()
    };

    let page = browser
        .page(&format!("/apps/{app_id}/endpoints/{ep}"))
        .await;
    assert!(!title(&page).contains("k3y"), "{}", title(&page));
    assert!(title(&page).contains("hooks.example.com/services/T0"));
    assert!(
        page.contains("k3y-in-query"),
        "the endpoint's page shows its whole URL"
    );
    let list = browser.page(&format!("/apps/{app_id}")).await;
    assert!(list.contains("hooks.example.com/services/T0"));
    assert!(
        !list.contains("k3y"),
        "the application's list shows no query"
    );

    sqlx::query("update herald.endpoint set url = 'https://olduser:hunter2@example.com/h?k=v'")
        .execute(&app.pool)
        .await
        .unwrap();
    for path in [
        format!("/apps/{app_id}/endpoints/{ep}"),
        format!("/apps/{app_id}"),
    ] {
        let html = browser.page(&path).await;
        assert!(
            !html.contains("hunter2") && !html.contains("olduser"),
            "{path}"
        );
        assert!(html.contains("***@example.com/h"), "{path}");
    }
}

/// The overview's last hour and an endpoint's 24-hour success rate come from per-minute
/// counts written with the attempts (migration 0017), not from counting the attempts:
/// they agree with the attempts made, through two processes at once, and a view shows
/// what the counts say.
#[tokio::test]
async fn the_views_read_per_minute_counts_that_agree_with_the_attempts() {
    // Eight quick retries: no delivery fails all of its tries.
    let retries = [(
        "HERALD_RETRY_SCHEDULE",
        "50ms,50ms,50ms,50ms,50ms,50ms,50ms,50ms",
    )];
    let one = spawn_app_with(&retries).await;
    let two = spawn_app_on(one.db_url.clone(), &retries).await;
    // One request in three fails.
    let receiver = Receiver::with(Arc::new(|n| {
        Reply::status(if n % 3 == 0 { 500 } else { 200 })
    }))
    .await;
    let (app_id, ep, _) = one.app_with_endpoint(&receiver).await;
    let mut sent = Vec::new();
    for i in 0..60 {
        let via = if i % 2 == 0 { &one } else { &two };
        sent.push(via.send(&app_id, "invoice.paid", json!({"i": i})).await);
    }
    for msg in &sent {
        one.wait_for_message(&app_id, msg, WAIT, all_delivered)
            .await;
    }
    let counted: (i64, i64) = sqlx::query_as(
        "select count(*) filter (where outcome = 'succeeded'), count(*) from herald.attempt",
    )
    .fetch_one(&one.pool)
    .await
    .unwrap();
    let rolled: (i64, i64) = sqlx::query_as(
        "select sum(succeeded)::bigint, sum(total)::bigint from herald.attempt_minute",
    )
    .fetch_one(&one.pool)
    .await
    .unwrap();
    assert_eq!(rolled, counted);
    assert_eq!(counted.0, 60);
    assert!(counted.1 > 60, "some attempts failed first: {counted:?}");

    let mut browser = Browser::new(&one);
    browser.login().await;
    let overview = browser.page("/").await;
    assert!(
        overview.contains(&format!(r#"id="stat-hour-total">{}<"#, counted.1)),
        "{overview}"
    );
    let page = format!("/apps/{app_id}/endpoints/{ep}");
    assert!(
        browser
            .page(&page)
            .await
            .contains(&format!("60 of {} attempts", counted.1))
    );
    // A view shows what the counts say (here, a minute made up of 1,000 more attempts).
    sqlx::query(
        "update herald.attempt_minute
            set succeeded = succeeded + 900, total = total + 1000
          where minute = (select max(minute) from herald.attempt_minute)",
    )
    .execute(&one.pool)
    .await
    .unwrap();
    let html = browser.page(&page).await;
    assert!(
        html.contains(&format!("960 of {} attempts", counted.1 + 1000)),
        "{html}"
    );
}
