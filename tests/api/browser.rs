//! The dashboard in a real headless Chromium, driven over WebDriver: log in, watch the
//! overview, send a message through the API, and see its attempt appear without a reload.
//!
//! `make test` installs `chromium` and `chromium-driver` with apt-get when they are missing.
//! Without them this test fails, unless `HERALD_SKIP_BROWSER_TESTS=1` says to skip it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::{Receiver, TOKEN, TestServer, spawn_app, spawn_app_with};

/// How long the page may take to show what a step waits for.
const UI: Duration = Duration::from_secs(10);

/// The element `locator` finds once it appears, waiting `within` at most; fails with `what`.
async fn shows(
    client: &Client,
    within: Duration,
    locator: Locator<'_>,
    what: &str,
) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(within)
        .for_element(locator)
        .await
        .expect(what)
}

/// Marks the page, sends a message through the API, and waits for its attempt's row in the
/// page's `#attempts`; checks the mark survived (the row came live, without a reload) and
/// returns the message's id and the row's text. `page` names what must not have been
/// reloaded.
async fn attempt_appears_live(
    client: &Client,
    app: &TestServer,
    app_id: &str,
    what: &str,
    page: &str,
) -> (String, String) {
    client
        .execute("window.heraldMarker = 'same page'; return true;", vec![])
        .await
        .unwrap();
    let msg = app
        .send(app_id, "invoice.paid", json!({"amount": 42}))
        .await;
    let row = format!("//table[@id='attempts']//tr[.//code[text()='{msg}']]");
    let row = shows(client, UI, Locator::XPath(&row), what).await;
    let text = row.text().await.unwrap();
    let marker = client
        .execute("return window.heraldMarker;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, json!("same page"), "the {page} was reloaded");
    (msg, text)
}

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Starts chromedriver on a free port and opens a headless Chromium session.
async fn browser() -> Option<(Driver, Client)> {
    let Some(chromedriver) = find_program(&["chromedriver"]) else {
        if std::env::var("HERALD_SKIP_BROWSER_TESTS").as_deref() == Ok("1") {
            eprintln!("chromedriver not found; skipped (HERALD_SKIP_BROWSER_TESTS=1)");
            return None;
        }
        panic!("chromedriver not found: run `make test`, which installs chromium-driver");
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let mut chrome = json!({
        // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-gpu", "--window-size=1400,1100"],
        // As browsers increasingly do: a framed portal must work without cookies.
        "prefs": {"profile.block_third_party_cookies": true}
    });
    if let Some(binary) = find_program(&["chromium", "chromium-browser", "google-chrome"]) {
        chrome["binary"] = json!(binary);
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), chrome);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ClientBuilder::native()
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return Some((driver, client)),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot start a Chromium session: {e}"),
        }
    }
}

#[tokio::test]
async fn an_attempt_appears_on_the_overview_without_a_reload() {
    let Some((_driver, client)) = browser().await else {
        return;
    };
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, ep, _) = app.app_with_endpoint(&receiver).await;

    let base = format!("http://{}", app.addr);
    client.goto(&base).await.unwrap();
    // Not logged in: the login page.
    let token = client
        .wait()
        .for_element(Locator::Id("token"))
        .await
        .unwrap();
    token.send_keys(TOKEN).await.unwrap();
    client
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    shows(
        &client,
        UI,
        Locator::Id("chart"),
        "the overview after logging in",
    )
    .await;
    // Wait until the page follows the feed, then mark the page: a reload would lose this.
    shows(
        &client,
        UI,
        Locator::Css("#live:not([hidden])"),
        "the live indicator turns on",
    )
    .await;
    let (msg, text) =
        attempt_appears_live(&client, &app, &app_id, "the attempt shows up live", "page").await;
    assert!(
        text.contains("succeeded") && text.contains("invoice.paid"),
        "{text}"
    );
    // The chart and the hour's count took it in too (they redraw every 250 ms at most).
    shows(
        &client,
        Duration::from_secs(5),
        Locator::XPath("//*[@id='stat-hour-total'][text()='1']"),
        "the hour's attempt count shows 1",
    )
    .await;

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&shots).unwrap();
    let png = client.screenshot().await.unwrap();
    std::fs::write(shots.join("overview.png"), &png).unwrap();

    // The message page, rendered by the server, shows the same attempt.
    client
        .goto(&format!("{base}/apps/{app_id}/messages/{msg}"))
        .await
        .unwrap();
    let source = client.source().await.unwrap();
    assert!(source.contains("succeeded") && source.contains("amount"));
    // Replay it from the page (over the admin WebSocket): the new attempt shows up live.
    shows(
        &client,
        UI,
        Locator::Css("#live:not([hidden])"),
        "the message page follows the feed",
    )
    .await;
    client
        .find(Locator::Id("replay"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let replayed = shows(
        &client,
        UI,
        Locator::XPath("//table[@id='attempts']//tr[contains(., 'replay')]"),
        "the replay's attempt appears without a reload",
    )
    .await;
    assert!(replayed.text().await.unwrap().contains("succeeded"));
    shows(
        &client,
        UI,
        Locator::XPath("//span[contains(@class,'ws-status')][contains(., 'sent, last succeeded')]"),
        "the form reports the outcome",
    )
    .await;
    assert_eq!(receiver.count(), 2, "the receiver got it twice");
    std::fs::write(
        shots.join("message.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    // The other pages, for a look at the screenshots.
    for (name, path) in [
        ("apps", "/apps".to_owned()),
        ("app", format!("/apps/{app_id}")),
        ("endpoint", format!("/apps/{app_id}/endpoints/{ep}")),
        ("dead", "/dead".to_owned()),
    ] {
        client.goto(&format!("{base}{path}")).await.unwrap();
        let title = client.find(Locator::Css("h1")).await.unwrap();
        assert!(!title.text().await.unwrap().is_empty(), "{path}");
        std::fs::write(
            shots.join(format!("{name}.png")),
            client.screenshot().await.unwrap(),
        )
        .unwrap();
    }
    // A form that changes state, posted by the browser itself (its Origin and CSRF token
    // must both check out).
    client
        .goto(&format!("{base}/apps/{app_id}/endpoints/{ep}"))
        .await
        .unwrap();
    client
        .find(Locator::Css("form[action$='/state'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    shows(
        &client,
        UI,
        Locator::XPath("//p[@class='flash'][contains(., 'Endpoint disabled')]"),
        "the disable form goes through",
    )
    .await;
    client.close().await.unwrap();
}

/// The customer portal framed by another site: a parent page on `http://localhost:P`
/// frames the portal on `http://127.0.0.1:Q` (another origin, in a browser that blocks
/// third-party cookies); the customer adds an endpoint through the frame's form, a message
/// is sent through the API, and its attempt appears in the frame without a reload.
#[tokio::test]
async fn the_portal_works_framed_by_another_site() {
    let Some((_driver, client)) = browser().await else {
        return;
    };
    // The parent site: one page with the portal in an iframe.
    let parent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let parent_port = parent.local_addr().unwrap().port();
    let parent_origin = format!("http://localhost:{parent_port}");
    let app = spawn_app_with(&[("HERALD_PORTAL_FRAME_ANCESTORS", &parent_origin)]).await;
    let receiver = Receiver::start().await;
    let app_id = app.create_app().await;
    let (_, link) = app
        .post(
            &format!("/apps/{app_id}/portal"),
            json!({"return_url": format!("{parent_origin}/")}),
        )
        .await;
    let url = link["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let html = format!(
        "<!doctype html><title>Acme settings</title><h1>Acme: webhooks</h1>\
         <iframe id=portal src=\"{url}\" width=1300 height=900></iframe>"
    );
    let site = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let html = html.clone();
            async move { axum::response::Html(html) }
        }),
    );
    tokio::spawn(async move { axum::serve(parent, site).await });

    client.goto(&format!("{parent_origin}/")).await.unwrap();
    let frame = shows(&client, UI, Locator::Id("portal"), "the parent page").await;
    frame.enter_frame().await.unwrap();
    shows(
        &client,
        UI,
        Locator::Id("create-endpoint"),
        "the portal in the frame",
    )
    .await;
    client
        .find(Locator::Css("#create-endpoint input[name=url]"))
        .await
        .unwrap()
        .send_keys(&receiver.url())
        .await
        .unwrap();
    client
        .find(Locator::Css("#create-endpoint input[name=description]"))
        .await
        .unwrap()
        .send_keys("From the frame")
        .await
        .unwrap();
    client
        .find(Locator::Css("#create-endpoint button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let secret = shows(
        &client,
        UI,
        Locator::Id("secret"),
        "the new endpoint's secret",
    )
    .await;
    assert!(secret.text().await.unwrap().starts_with("whsec_"));
    let (_, endpoints) = app.get(&format!("/apps/{app_id}/endpoints")).await;
    assert_eq!(endpoints["data"][0]["description"], "From the frame");

    // Back to the endpoints page, following the feed, then a message through the API.
    client
        .find(Locator::LinkText("Your endpoints"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    shows(
        &client,
        UI,
        Locator::Css("#live:not([hidden])"),
        "the frame follows the feed",
    )
    .await;
    let (msg, text) = attempt_appears_live(
        &client,
        &app,
        &app_id,
        "the attempt appears live in the frame",
        "frame",
    )
    .await;
    assert!(text.contains("succeeded"));
    // No cookie was needed, and none was set.
    let cookies = client
        .execute("return document.cookie;", vec![])
        .await
        .unwrap();
    assert_eq!(cookies, json!(""));

    client.enter_parent_frame().await.unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(
        shots.join("portal-framed.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();

    // The message's page in the frame: "Send again" goes over the portal's own WebSocket
    // and its attempt comes back live.
    let frame = client.find(Locator::Id("portal")).await.unwrap();
    frame.enter_frame().await.unwrap();
    client
        .find(Locator::XPath(&format!("//a[code[text()='{msg}']]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    shows(
        &client,
        UI,
        Locator::Css("#live:not([hidden])"),
        "the message page follows the feed",
    )
    .await;
    client
        .find(Locator::Id("replay"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    shows(
        &client,
        UI,
        Locator::XPath("//span[contains(@class,'ws-status')][contains(., 'sent, last succeeded')]"),
        "the replay's outcome in the frame",
    )
    .await;
    shows(
        &client,
        UI,
        Locator::XPath("//table[@id='attempts']//tr[contains(., 'replay')]"),
        "the replay's attempt appears in the frame",
    )
    .await;
    assert_eq!(receiver.count(), 2, "the receiver got the message twice");
    client.enter_parent_frame().await.unwrap();
    std::fs::write(
        shots.join("portal-replay.png"),
        client.screenshot().await.unwrap(),
    )
    .unwrap();
    client.close().await.unwrap();
}
