//! Routing (issue 17, point 2): wildcard subscriptions, channels and payload filters decided
//! inside `herald.enqueue`, the dry-run that explains them, and replays and recovers that
//! route as sends do. Each case is sent for real, to a real receiver, and checked by what
//! arrived where.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Receiver, TOKEN, TestServer, answer, count, spawn_app};

/// Endpoints of one application, each delivering to `receiver` under its own path.
async fn endpoints(
    server: &TestServer,
    app: &str,
    receiver: &Receiver,
    specs: &[(&str, Value)],
) -> Vec<(String, String)> {
    let mut made = vec![];
    for (name, spec) in specs {
        let mut body = spec.clone();
        body["url"] = json!(format!("{}/{name}", receiver.url()));
        let (id, _) = server.create_endpoint(app, body).await;
        made.push((name.to_string(), id));
    }
    made
}

/// The endpoints (by name) that got a request for `msg`.
fn reached_by(receiver: &Receiver, msg: &str) -> BTreeSet<String> {
    receiver
        .received()
        .iter()
        .filter(|r| r.header("webhook-id") == msg)
        .map(|r| r.path.trim_start_matches("/hook/").to_owned())
        .collect()
}

/// Sends and waits until every delivery it made has succeeded; returns the names of the
/// endpoints it reached, as the receiver saw them, after checking the message lists the
/// same deliveries.
async fn sent_to(
    server: &TestServer,
    app: &str,
    receiver: &Receiver,
    body: Value,
) -> BTreeSet<String> {
    let (status, msg) = server
        .post(&format!("/apps/{app}/messages"), body.clone())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{msg}");
    let id = msg["id"].as_str().unwrap().to_owned();
    reached_once_done(server, app, receiver, &id, &body.to_string()).await
}

/// A request with the admin token and `body` as its JSON text, as it is: for JSON that
/// serde_json would not write (a lone surrogate's escape).
async fn post_text(server: &TestServer, path: &str, body: &str) -> (StatusCode, Value) {
    answer(
        server
            .http
            .post(server.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await,
    )
    .await
}

/// [`sent_to`], the request body given as JSON text. The answer may hold JSON that the
/// test's serde_json does not read (a number past its range): the message's id is read from
/// the database, the newest of `app`'s.
async fn sent_as_text(
    server: &TestServer,
    app: &str,
    receiver: &Receiver,
    body: &str,
) -> BTreeSet<String> {
    let (status, msg) = post_text(server, &format!("/apps/{app}/messages"), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{msg}");
    let app: herald::domain::AppId = app.parse().unwrap();
    let id: uuid::Uuid = sqlx::query_scalar(
        "select id from herald.message where app_id = $1 order by id desc limit 1",
    )
    .bind(app)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    // (deliveries, those not succeeded yet)
    let mut counts: (i64, i64) = (0, 1);
    for _ in 0..500 {
        counts = sqlx::query_as(
            "select count(*), count(*) filter (where state <> 'succeeded')
               from herald.delivery where message_id = $1",
        )
        .bind(id)
        .fetch_one(&server.pool)
        .await
        .unwrap();
        if counts.1 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (deliveries, unfinished) = counts;
    assert_eq!(unfinished, 0, "{body}: deliveries still not succeeded");
    let id = format!("msg_{}", id.simple());
    reached_by_all(receiver, &id, deliveries as usize, body).await
}

/// The endpoints that got `id`, once every delivery of it has succeeded, after checking
/// the message lists the same deliveries.
async fn reached_once_done(
    server: &TestServer,
    app: &str,
    receiver: &Receiver,
    id: &str,
    body: &str,
) -> BTreeSet<String> {
    let shown = server
        .wait_for_message(app, id, Duration::from_secs(10), |m| {
            m["deliveries"]
                .as_array()
                .is_some_and(|d| d.iter().all(|d| d["state"] == "succeeded"))
        })
        .await;
    let deliveries = shown["deliveries"].as_array().unwrap().len();
    reached_by_all(receiver, id, deliveries, &format!("{body}: {shown:#}")).await
}

/// The endpoints that got `id`, once the receiver has seen all its `deliveries`.
async fn reached_by_all(
    receiver: &Receiver,
    id: &str,
    deliveries: usize,
    context: &str,
) -> BTreeSet<String> {
    let mut reached = reached_by(receiver, id);
    for _ in 0..100 {
        if reached.len() >= deliveries {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        reached = reached_by(receiver, id);
    }
    assert_eq!(reached.len(), deliveries, "{context}");
    reached
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn wildcards_channels_and_filters_choose_the_endpoints_a_send_reaches() {
    let server = spawn_app().await;
    let receiver = Receiver::start().await;
    let app = server.create_app().await;
    endpoints(
        &server,
        &app,
        &receiver,
        &[
            ("all", json!({})),
            ("star", json!({"event_types": ["*"]})),
            ("invoices", json!({"event_types": ["invoice.*"]})),
            ("paid", json!({"event_types": ["invoice.paid"]})),
            (
                "orders",
                json!({"event_types": ["order.*", "customer.created"]}),
            ),
            ("eu", json!({"channels": ["eu"]})),
            (
                "eu-us",
                json!({"channels": ["eu", "us"], "event_types": ["invoice.*"]}),
            ),
            ("big", json!({"filter": {"tier": "enterprise"}})),
            (
                "big-eu",
                json!({"filter": {"tier": "enterprise", "address": {"country": "FR"}},
                       "channels": ["eu"]}),
            ),
            ("off", json!({"disabled": true})),
        ],
    )
    .await;

    // (event type, channels, payload, the endpoints it reaches)
    let cases = [
        (
            "invoice.paid",
            json!([]),
            json!({}),
            &["all", "star", "invoices", "paid"][..],
        ),
        // A wildcard takes any depth below its prefix, and not the prefix itself.
        (
            "invoice.item.created",
            json!([]),
            json!({}),
            &["all", "star", "invoices"],
        ),
        ("invoice", json!([]), json!({}), &["all", "star"]),
        (
            "customer.created",
            json!([]),
            json!({}),
            &["all", "star", "orders"],
        ),
        // Channels: endpoints without reach every message; with, only messages of theirs.
        (
            "invoice.paid",
            json!(["us"]),
            json!({}),
            &["all", "star", "invoices", "paid", "eu-us"],
        ),
        (
            "order.created",
            json!(["eu", "x"]),
            json!({}),
            &["all", "star", "orders", "eu"],
        ),
        // Filters: the payload must contain the filter, nested objects included.
        (
            "order.created",
            json!([]),
            json!({"tier": "enterprise", "address": {"country": "FR", "city": "Lyon"}}),
            &["all", "star", "orders", "big"],
        ),
        (
            "order.created",
            json!(["eu"]),
            json!({"tier": "enterprise", "address": {"country": "FR"}}),
            &["all", "star", "orders", "eu", "big", "big-eu"],
        ),
        (
            "order.created",
            json!(["eu"]),
            json!({"tier": "free"}),
            &["all", "star", "orders", "eu"],
        ),
        // A payload that is not an object contains no filter.
        ("x", json!([]), json!([1, 2]), &["all", "star"]),
    ];
    for (event_type, channels, payload, reached) in cases {
        let body = json!({"event_type": event_type, "channels": channels, "payload": payload});
        assert_eq!(
            sent_to(&server, &app, &receiver, body.clone()).await,
            names(reached),
            "{body}"
        );
    }

    // The message shows its channels.
    let (_, page) = server.get(&format!("/apps/{app}/messages?limit=10")).await;
    let shown: Vec<&Value> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["channels"])
        .collect();
    assert!(shown.contains(&&json!(["eu", "x"])), "{page:#}");
    assert!(shown.contains(&&json!([])), "{page:#}");
}

#[tokio::test]
async fn a_dry_run_answers_what_a_send_would_reach_and_why_not() {
    let server = spawn_app().await;
    let receiver = Receiver::start().await;
    let app = server.create_app().await;
    let made = endpoints(
        &server,
        &app,
        &receiver,
        &[
            ("invoices", json!({"event_types": ["invoice.*"]})),
            ("orders", json!({"event_types": ["order.*"]})),
            ("eu", json!({"channels": ["eu"]})),
            ("big", json!({"filter": {"tier": "enterprise"}})),
            ("off", json!({"disabled": true})),
        ],
    )
    .await;
    let id_of = |name: &str| made.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let body =
        json!({"event_type": "invoice.paid", "channels": ["us"], "payload": {"tier": "free"}});
    let (status, dry) = server
        .post(&format!("/apps/{app}/messages/dry-run"), body.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["reached"], 1, "{dry:#}");
    assert_eq!(dry["next_cursor"], Value::Null);
    let outcome = |name: &str| -> Value {
        dry["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["endpoint_id"] == id_of(name).as_str())
            .cloned()
            .unwrap()
    };
    assert_eq!(outcome("invoices")["reached"], true);
    assert!(outcome("invoices").get("reason").is_none());
    assert_eq!(outcome("orders")["reason"], "event_type");
    assert_eq!(
        outcome("orders")["detail"],
        "subscribes to event types order.*"
    );
    assert_eq!(outcome("eu")["reason"], "channel");
    assert_eq!(outcome("big")["reason"], "filter");
    assert_eq!(outcome("off")["reason"], "disabled");
    // Nothing was stored or sent.
    assert_eq!(
        count(&server.pool, "select count(*) from herald.message").await,
        0
    );

    // A send of the same body reaches what the dry-run said.
    assert_eq!(
        sent_to(&server, &app, &receiver, body).await,
        names(&["invoices"])
    );

    // In pages, the count over all of them.
    let (_, first) = server
        .post(
            &format!("/apps/{app}/messages/dry-run?limit=2"),
            json!({"event_type": "order.created", "payload": {"tier": "enterprise"}}),
        )
        .await;
    assert_eq!(first["reached"], 2, "{first:#}");
    assert_eq!(first["endpoints"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, rest) = server
        .post(
            &format!("/apps/{app}/messages/dry-run?limit=2&cursor={cursor}"),
            json!({"event_type": "order.created", "payload": {"tier": "enterprise"}}),
        )
        .await;
    assert_eq!(rest["endpoints"].as_array().unwrap().len(), 2);
    let (_, last) = server
        .post(
            &format!(
                "/apps/{app}/messages/dry-run?limit=2&cursor={}",
                rest["next_cursor"].as_str().unwrap()
            ),
            json!({"event_type": "order.created", "payload": {"tier": "enterprise"}}),
        )
        .await;
    assert_eq!(last["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(last["next_cursor"], Value::Null);

    // It is checked as a send is.
    let (status, bad) = server
        .post(
            &format!("/apps/{app}/messages/dry-run"),
            json!({"event_type": "a", "channels": ["no spaces"], "payload": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
}

/// The dry-run's reasons (herald.route_miss) and the send's index form (herald.enqueue)
/// are two spellings of one rule: over every combination here, they agree.
#[tokio::test]
async fn the_dry_run_and_the_send_agree_on_every_combination() {
    let server = spawn_app().await;
    let receiver = Receiver::start().await;
    let app = server.create_app().await;
    let types = [json!([]), json!(["a.*"]), json!(["a.b"]), json!(["*", "z"])];
    let channels = [json!([]), json!(["c1"]), json!(["c1", "c2"])];
    let filters = [Value::Null, json!({"k": 1}), json!({"n": {"m": [1]}})];
    let mut specs = vec![];
    for (i, t) in types.iter().enumerate() {
        for (j, c) in channels.iter().enumerate() {
            for (k, f) in filters.iter().enumerate() {
                specs.push((
                    format!("e{i}{j}{k}"),
                    json!({"event_types": t, "channels": c, "filter": f}),
                ));
            }
        }
    }
    let specs: Vec<(&str, Value)> = specs.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let made = endpoints(&server, &app, &receiver, &specs).await;
    for event_type in ["a.b", "a.c.d", "z", "b"] {
        for channels in [json!([]), json!(["c2"]), json!(["c3", "c1"])] {
            for payload in [
                json!({}),
                json!({"k": 1, "n": {"m": [1, 2]}}),
                json!({"k": 2}),
            ] {
                let body =
                    json!({"event_type": event_type, "channels": channels, "payload": payload});
                let (_, dry) = server
                    .post(
                        &format!("/apps/{app}/messages/dry-run?limit=250"),
                        body.clone(),
                    )
                    .await;
                let predicted: BTreeSet<String> = dry["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["reached"] == true)
                    .map(|e| {
                        made.iter()
                            .find(|(_, id)| e["endpoint_id"] == id.as_str())
                            .unwrap()
                            .0
                            .clone()
                    })
                    .collect();
                assert_eq!(dry["reached"], predicted.len(), "{body}");
                assert_eq!(
                    sent_to(&server, &app, &receiver, body.clone()).await,
                    predicted,
                    "{body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn routing_settings_are_checked_and_shown() {
    let server = spawn_app().await;
    let app = server.create_app().await;
    let path = format!("/apps/{app}/endpoints");
    for bad in [
        json!({"url": "https://example.com/a", "event_types": ["invoice*"]}),
        json!({"url": "https://example.com/a", "event_types": ["*.paid"]}),
        json!({"url": "https://example.com/a", "channels": ["*"]}),
        json!({"url": "https://example.com/a", "channels": ["a b"]}),
        json!({"url": "https://example.com/a", "filter": ["eu"]}),
        json!({"url": "https://example.com/a", "filter": "eu"}),
        json!({"url": "https://example.com/a", "filter": {"k": "x".repeat(5000)}}),
    ] {
        let (status, error) = server.post(&path, bad.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {error}");
        assert!(error["message"].is_string());
    }
    let (status, ep) = server
        .post(
            &path,
            json!({"url": "https://example.com/a", "event_types": ["invoice.*"],
                   "channels": ["eu"], "filter": {"region": "eu"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ep}");
    assert_eq!(ep["channels"], json!(["eu"]));
    assert_eq!(ep["filter"], json!({"region": "eu"}));
    let id = ep["id"].as_str().unwrap();
    // Left out: unchanged; null: removed.
    let (_, kept) = server
        .patch(&format!("{path}/{id}"), json!({"description": "d"}))
        .await;
    assert_eq!(kept["filter"], json!({"region": "eu"}));
    assert_eq!(kept["channels"], json!(["eu"]));
    let (_, cleared) = server
        .patch(
            &format!("{path}/{id}"),
            json!({"filter": null, "channels": []}),
        )
        .await;
    assert_eq!(cleared["filter"], Value::Null);
    assert_eq!(cleared["channels"], json!([]));

    for bad in [
        json!({"event_type": "a", "channels": ["ok", "not ok"], "payload": {}}),
        json!({"event_type": "a", "channels": (0..11).map(|i| format!("c{i}")).collect::<Vec<_>>(), "payload": {}}),
        json!({"event_type": "a", "channels": "eu", "payload": {}}),
    ] {
        let (status, error) = server
            .post(&format!("/apps/{app}/messages"), bad.clone())
            .await;
        assert!(status.is_client_error(), "{bad}: {status} {error}");
    }
    assert_eq!(
        count(&server.pool, "select count(*) from herald.message").await,
        0
    );

    // `{}` is no filter.
    let (_, none) = server
        .post(&path, json!({"url": "https://example.com/b", "filter": {}}))
        .await;
    assert_eq!(none["filter"], Value::Null);
}

/// A payload jsonb cannot hold (`\u0000`) is sent as any other: it contains no filter, so
/// it reaches the endpoints without one.
#[tokio::test]
async fn a_payload_jsonb_cannot_hold_reaches_the_endpoints_without_a_filter() {
    let server = spawn_app().await;
    let receiver = Receiver::start().await;
    let app = server.create_app().await;
    endpoints(
        &server,
        &app,
        &receiver,
        &[
            ("plain", json!({})),
            ("filtered", json!({"filter": {"k": "v"}})),
        ],
    )
    .await;
    // JSON text that the json type takes and jsonb does not: `\u0000`, a lone surrogate,
    // a number past numeric's range (migration 0037).
    for payload in [
        r#"{"k": "v", "nul": "a\u0000b"}"#,
        r#"{"k": "v", "s": "\udc00"}"#,
        r#"{"k": "v", "n": 1e200000}"#,
    ] {
        let body = format!(r#"{{"event_type": "a", "payload": {payload}}}"#);
        let (status, dry) =
            post_text(&server, &format!("/apps/{app}/messages/dry-run"), &body).await;
        assert_eq!(status, StatusCode::OK, "{payload}: {dry}");
        assert_eq!(dry["reached"], 1, "{payload}: {dry}");
        assert_eq!(
            sent_as_text(&server, &app, &receiver, &body).await,
            names(&["plain"]),
            "{payload}"
        );
    }
}

/// With `HERALD_REQUIRE_EVENT_TYPES`, an endpoint subscribes to types the catalog has; a
/// wildcard may name types still to come.
#[tokio::test]
async fn with_a_required_catalog_endpoints_subscribe_to_its_types() {
    let server = crate::helpers::spawn_app_with(&[("HERALD_REQUIRE_EVENT_TYPES", "true")]).await;
    let app = server.create_app().await;
    let path = format!("/apps/{app}/endpoints");
    assert_eq!(
        server
            .post("/event-types", json!({"name": "invoice.paid"}))
            .await
            .0,
        StatusCode::CREATED
    );
    let (status, error) = server
        .post(
            &path,
            json!({"url": "https://example.com/a", "event_types": ["invoice.voided"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not in the catalog")
    );
    for ok in [json!(["invoice.paid"]), json!(["invoice.*"]), json!(["*"])] {
        let (status, ep) = server
            .post(
                &path,
                json!({"url": "https://example.com/a", "event_types": ok}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{ep}");
    }
}

/// An application with thousands of endpoints, each for its own customer's channel: a
/// send finds the one it reaches by the routing index, as the pool plans it (generic
/// plans), not by reading every endpoint.
#[tokio::test]
async fn thousands_of_endpoints_are_routed_by_index() {
    let server = spawn_app().await;
    let receiver = Receiver::start().await;
    let app = server.create_app().await;
    let app_uuid = app.trim_start_matches("app_");
    sqlx::query(
        "insert into herald.endpoint (app_id, url, channels, event_types)
         select $1::uuid, $2 || '/c' || g, array['customer-' || g],
                case when g % 2 = 0 then '{invoice.*}'::text[] else '{}' end
           from generate_series(1, 3000) g",
    )
    .bind(app_uuid)
    .bind(receiver.url())
    .execute(&server.pool)
    .await
    .unwrap();
    sqlx::query("analyze herald.endpoint")
        .execute(&server.pool)
        .await
        .unwrap();
    let mut conn = server.pool.acquire().await.unwrap();
    sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "explain select e.id from herald.endpoint e
          where e.app_id = $1::uuid and not e.disabled
            and e.routes && herald.type_routes($1::uuid, $2)
            and e.routes && herald.channel_routes($1::uuid, $3)
            and (e.filter is null or e.filter <@ (select herald.jsonb_or_null($4::json)))",
    )
    .bind(app_uuid)
    .bind("invoice.paid")
    .bind(vec!["customer-42".to_owned()])
    .bind("{}")
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Bitmap Index Scan on endpoint_routes"),
        "{plan}"
    );
    // The endpoints made by SQL have no signing secret, so only the count is checked.
    let (status, msg) = server
        .post(
            &format!("/apps/{app}/messages"),
            json!({"event_type": "invoice.paid", "channels": ["customer-42"], "payload": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{msg}");
    let (_, shown) = server
        .get(&format!(
            "/apps/{app}/messages/{}",
            msg["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        shown["deliveries"].as_array().unwrap().len(),
        1,
        "{shown:#}"
    );
}

/// A replay adds deliveries for endpoints that joined after the message only where the
/// message routes, and a recover sends an endpoint only the missed messages it would have
/// been sent.
#[tokio::test]
async fn replays_and_recovers_route_as_sends_do() {
    let server = spawn_app().await;
    let receiver = Receiver::start().await;
    let app = server.create_app().await;
    let eu = sent_to(
        &server,
        &app,
        &receiver,
        json!({"event_type": "order.created", "channels": ["eu"], "payload": {"tier": "free"}}),
    )
    .await;
    assert!(eu.is_empty());
    let made = endpoints(
        &server,
        &app,
        &receiver,
        &[
            ("eu", json!({"channels": ["eu"]})),
            ("us", json!({"channels": ["us"]})),
            ("big", json!({"filter": {"tier": "enterprise"}})),
        ],
    )
    .await;
    let (_, page) = server.get(&format!("/apps/{app}/messages")).await;
    let msg = page["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, replayed) = server
        .post(&format!("/apps/{app}/messages/{msg}/replay"), json!({}))
        .await;
    assert!(status.is_success(), "{replayed}");
    receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(reached_by(&receiver, &msg), names(&["eu"]));

    // A disabled endpoint misses messages; a recover then sends it those that route to it.
    let big = &made.iter().find(|(n, _)| n == "big").unwrap().1;
    server
        .patch(
            &format!("/apps/{app}/endpoints/{big}"),
            json!({"disabled": true}),
        )
        .await;
    let rich = server
        .send(&app, "order.created", json!({"tier": "enterprise"}))
        .await;
    let poor = server
        .send(&app, "order.created", json!({"tier": "free"}))
        .await;
    server
        .patch(
            &format!("/apps/{app}/endpoints/{big}"),
            json!({"disabled": false}),
        )
        .await;
    let (status, recovery) = server
        .post(
            &format!("/apps/{app}/endpoints/{big}/recover"),
            json!({"since": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert!(status.is_success(), "{recovery}");
    for _ in 0..250 {
        if !reached_by(&receiver, &rich).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(reached_by(&receiver, &rich), names(&["big"]));
    assert!(!reached_by(&receiver, &poor).contains("big"));
}

/// The dashboard shows an endpoint's channels and filter, and a message's channels.
#[tokio::test]
async fn the_dashboard_shows_channels_and_filters() {
    let server = spawn_app().await;
    let app = server.create_app().await;
    let (ep, _) = server
        .create_endpoint(
            &app,
            json!({"url": "https://example.com/a", "channels": ["eu", "acct:7"],
                   "filter": {"region": "<eu>"}}),
        )
        .await;
    let msg = server
        .post(
            &format!("/apps/{app}/messages"),
            json!({"event_type": "a", "channels": ["acct:7"], "payload": {}}),
        )
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut browser = crate::dashboard::Browser::new(&server);
    browser.login().await;
    let page = browser
        .get(&format!("/apps/{app}/endpoints/{ep}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("channels: eu, acct:7"), "{page}");
    assert!(
        page.contains("filter: {&#34;region&#34;:&#34;&#60;eu&#62;&#34;}")
            || page.contains("filter: {&quot;region&quot;:&quot;&lt;eu&gt;&quot;}"),
        "escaped: {page}"
    );
    let page = browser
        .get(&format!("/apps/{app}/messages/{msg}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("channels acct:7"), "{page}");
}
