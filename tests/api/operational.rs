//! Operational webhooks (issue 17, point 3): each event produced by its real state change,
//! sent to the operator's application as a signed webhook whose payload its catalog schema
//! accepts; repeats coalesced; none about the operational application itself; none lost
//! to a crash between the state change and the send.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Receiver, Reply, TOKEN, TestServer, count, spawn_app_on, spawn_app_with};
use crate::process::Process;

const KINDS: [&str; 7] = [
    "endpoint.disabled",
    "endpoint.failing",
    "delivery.dead",
    "delivery.recovered",
    "endpoint.created",
    "endpoint.updated",
    "endpoint.deleted",
];

/// The operator's application `ops`: one endpoint per kind, each at `/hook/<kind>` of
/// `receiver`; returns each kind's endpoint's signing secret.
async fn operations(server: &TestServer, receiver: &Receiver) -> Vec<(String, String)> {
    let (status, ops) = server
        .post("/apps", json!({"name": "Operations", "uid": "ops"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ops}");
    let ops = ops["id"].as_str().unwrap().to_owned();
    let mut secrets = vec![];
    for kind in KINDS {
        let (_, secret) = server
            .create_endpoint(
                &ops,
                json!({"url": format!("{}/{kind}", receiver.url()), "event_types": [kind]}),
            )
            .await;
        secrets.push((kind.to_owned(), secret));
    }
    secrets
}

/// The payloads of one kind the operational receiver got, each checked against the
/// catalog's schema of its kind and its signature.
async fn received(
    server: &TestServer,
    receiver: &Receiver,
    secrets: &[(String, String)],
    kind: &str,
) -> Vec<Value> {
    let secret = &secrets.iter().find(|(k, _)| k == kind).unwrap().1;
    let (status, entry) = server.get(&format!("/event-types/{kind}")).await;
    assert_eq!(status, StatusCode::OK, "{entry}");
    let validator = jsonschema::validator_for(&entry["schema"]).unwrap();
    receiver
        .received()
        .iter()
        .filter(|r| r.path == format!("/hook/{kind}"))
        .map(|r| {
            assert!(r.verify(secret), "signed like any webhook");
            let envelope: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(envelope["type"], kind);
            let body = envelope["data"].clone();
            if let Err(e) = validator.validate(&body) {
                panic!("{kind} payload {body:#} fails its schema: {e}");
            }
            body
        })
        .collect()
}

async fn wait_for(
    server: &TestServer,
    receiver: &Receiver,
    secrets: &[(String, String)],
    kind: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = received(server, receiver, secrets, kind).await;
        if done(&got) {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} as expected; got {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn env(coalesce: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("HERALD_OPERATIONAL_APP", "ops"),
        ("HERALD_OPERATIONAL_COALESCE", coalesce),
        ("HERALD_RETRY_SCHEDULE", "50ms"),
    ]
}

#[tokio::test]
async fn every_operational_event_comes_from_its_state_change() {
    let server = spawn_app_with(&env("1s")).await;
    let ops_receiver = Receiver::start().await;
    let secrets = operations(&server, &ops_receiver).await;

    // Herald's own types are in the catalog, documented.
    for kind in KINDS {
        let (status, entry) = server.get(&format!("/event-types/{kind}")).await;
        assert_eq!(status, StatusCode::OK, "{kind}");
        assert!(
            entry["description"]
                .as_str()
                .unwrap()
                .starts_with("Herald operational event:")
        );
        assert!(entry["schema"].is_object());
    }

    // A customer whose endpoint fails twice, then succeeds, then fails for good.
    let (_, acme) = server
        .post("/apps", json!({"name": "Acme", "uid": "acme"}))
        .await;
    let acme = acme["id"].as_str().unwrap().to_owned();
    let flaky = Receiver::with(std::sync::Arc::new(|n| {
        Reply::status(if n == 1 || n >= 3 { 204 } else { 500 })
    }))
    .await;
    let (ep, _) = server
        .create_endpoint(&acme, json!({"url": flaky.url()}))
        .await;

    // Fails once (first failure: endpoint.failing), succeeds on its retry: recovered.
    let first = server.send(&acme, "invoice.paid", json!({"n": 1})).await;
    let failing = wait_for(&server, &ops_receiver, &secrets, "endpoint.failing", |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(failing[0]["endpoint_id"], ep.as_str());
    assert_eq!(failing[0]["app_uid"], "acme");
    assert_eq!(failing[0]["why"], "first_failure");
    let recovered = wait_for(
        &server,
        &ops_receiver,
        &secrets,
        "delivery.recovered",
        |g| !g.is_empty(),
    )
    .await;
    assert_eq!(recovered[0]["deliveries"][0]["message_id"], first.as_str());
    assert_eq!(recovered[0]["deliveries"][0]["attempts"], 2);
    assert_eq!(recovered[0]["count"], 1);

    // An endpoint that always fails: its delivery dies after its one retry.
    let down = Receiver::answering(Reply::status(503)).await;
    let (dying, _) = server
        .create_endpoint(
            &acme,
            json!({"url": down.url(), "event_types": ["order.*"]}),
        )
        .await;
    let doomed = server.send(&acme, "order.created", json!({"n": 2})).await;
    let dead = wait_for(&server, &ops_receiver, &secrets, "delivery.dead", |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(dead[0]["endpoint_id"], dying.as_str());
    assert_eq!(dead[0]["deliveries"][0]["message_id"], doomed.as_str());
    assert_eq!(dead[0]["deliveries"][0]["event_type"], "order.created");
    assert!(dead[0]["deliveries"][0]["last_error"].is_string());

    // Disabled by the operator: endpoint.disabled with the reason; the operator's own
    // changes are not endpoint.updated.
    server
        .patch(
            &format!("/apps/{acme}/endpoints/{dying}"),
            json!({"disabled": true}),
        )
        .await;
    let disabled = wait_for(&server, &ops_receiver, &secrets, "endpoint.disabled", |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(disabled[0]["endpoint_id"], dying.as_str());
    assert_eq!(disabled[0]["reason"], "disabled by an operator");

    // A customer's token: created, updated, deleted, each saying who.
    let (_, token) = server
        .post(
            "/tokens",
            json!({"name": "acme", "scopes": ["endpoints:manage"], "app": acme}),
        )
        .await;
    let secret = token["token"].as_str().unwrap().to_owned();
    let token_id = token["id"].as_str().unwrap().to_owned();
    let as_customer = |method: reqwest::Method, path: String, body: Value| {
        let request = server
            .http
            .request(method, server.url(&path))
            .bearer_auth(&secret)
            .json(&body);
        async move { crate::helpers::answer(request.send().await).await }
    };
    let (status, made) = as_customer(
        reqwest::Method::POST,
        format!("/apps/{acme}/endpoints"),
        json!({"url": "https://customer.example/hook", "event_types": ["invoice.*"]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let made_id = made["id"].as_str().unwrap().to_owned();
    let (status, _) = as_customer(
        reqwest::Method::PATCH,
        format!("/apps/{acme}/endpoints/{made_id}"),
        json!({"event_types": ["invoice.paid"], "description": "billing"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = as_customer(
        reqwest::Method::DELETE,
        format!("/apps/{acme}/endpoints/{made_id}"),
        json!(null),
    )
    .await;
    assert!(status.is_success());
    let by = format!("token {token_id}");
    let created = wait_for(&server, &ops_receiver, &secrets, "endpoint.created", |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(created[0]["endpoint_id"], made_id.as_str());
    assert_eq!(created[0]["by"], by.as_str());
    assert_eq!(created[0]["url"], "https://customer.example/hook");
    let updated = wait_for(&server, &ops_receiver, &secrets, "endpoint.updated", |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(updated[0]["changed"], json!(["description", "event_types"]));
    assert_eq!(
        updated[0]["endpoint"]["event_types"],
        json!(["invoice.paid"])
    );
    let deleted = wait_for(&server, &ops_receiver, &secrets, "endpoint.deleted", |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(deleted[0]["by"], by.as_str());
    // The token's delete disabled the endpoint too, as a removal: not endpoint.disabled.
    assert_eq!(
        received(&server, &ops_receiver, &secrets, "endpoint.disabled")
            .await
            .len(),
        1
    );

    // They are messages of the operational application, shown like any other.
    let (_, listed) = server.get("/apps/ops/messages?limit=50").await;
    let types: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event_type"].as_str().unwrap())
        .collect();
    for kind in KINDS {
        assert!(types.contains(&kind), "{kind} in {types:?}");
    }
    // Facts held for their window go out when it ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &server.pool,
        "select count(*) from herald.operational_event",
    )
    .await
        > 0
    {
        assert!(Instant::now() < deadline, "facts left unsent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        received(&server, &ops_receiver, &secrets, "endpoint.created")
            .await
            .len(),
        1,
        "the operator's own creations are not told"
    );
}

/// The operational application's own deliveries dying, its endpoints failing or being
/// disabled produce nothing: no loops.
#[tokio::test]
async fn the_operational_application_never_reports_on_itself() {
    let server = spawn_app_with(&env("1s")).await;
    let down = Receiver::answering(Reply::status(500)).await;
    let (status, ops) = server
        .post("/apps", json!({"name": "Operations", "uid": "ops"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let ops = ops["id"].as_str().unwrap().to_owned();
    let (ep, _) = server
        .create_endpoint(&ops, json!({"url": down.url()}))
        .await;
    // A customer's dying delivery makes an operational message, whose delivery to the
    // failing operational endpoint dies in turn: that death must make nothing.
    let (_, acme) = server.post("/apps", json!({"name": "Acme"})).await;
    let acme = acme["id"].as_str().unwrap().to_owned();
    server
        .create_endpoint(&acme, json!({"url": down.url()}))
        .await;
    server.send(&acme, "invoice.paid", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let dead_ops = count(
            &server.pool,
            "select count(*) from herald.delivery d join herald.message m on m.id = d.message_id
              join herald.application a on a.id = m.app_id
             where a.uid = 'ops' and d.state = 'dead'",
        )
        .await;
        if dead_ops >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "operational deliveries did not die"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
        .patch(
            &format!("/apps/{ops}/endpoints/{ep}"),
            json!({"disabled": true}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let about_ops = count(
        &server.pool,
        "select count(*) from herald.message m join herald.application a on a.id = m.app_id
          where a.uid = 'ops'
            and m.payload->>'app_uid' = 'ops'",
    )
    .await;
    assert_eq!(
        about_ops, 0,
        "nothing about the operational application itself"
    );
    let facts = count(
        &server.pool,
        "select count(*) from herald.operational_event o join herald.application a
             on a.id = o.app_id where a.uid = 'ops'",
    )
    .await;
    assert_eq!(facts, 0);
    // The customer's: one failing, one dead (its endpoint's first failure and death).
    let about_acme = count(
        &server.pool,
        "select count(*) from herald.message m join herald.application a on a.id = m.app_id
          where a.uid = 'ops'",
    )
    .await;
    assert_eq!(about_acme, 2);
}

/// Deaths in a burst go out as one message per window: the first at once, the rest held
/// until the window ends and then sent together, counted; nothing dropped.
#[tokio::test]
async fn repeats_are_coalesced_per_endpoint_and_window() {
    let server = spawn_app_with(&env("4s")).await;
    let ops_receiver = Receiver::start().await;
    let secrets = operations(&server, &ops_receiver).await;
    let (_, acme) = server.post("/apps", json!({"name": "Acme"})).await;
    let acme = acme["id"].as_str().unwrap().to_owned();
    let down = Receiver::answering(Reply::status(500)).await;
    server
        .create_endpoint(&acme, json!({"url": down.url()}))
        .await;
    let first = server.send(&acme, "invoice.paid", json!({"n": 0})).await;
    let one = wait_for(&server, &ops_receiver, &secrets, "delivery.dead", |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(one[0]["deliveries"][0]["message_id"], first.as_str());
    let received_first = Instant::now();
    for n in 1..=12 {
        server.send(&acme, "invoice.paid", json!({ "n": n })).await;
    }
    let all = wait_for(&server, &ops_receiver, &secrets, "delivery.dead", |g| {
        g.iter().map(|m| m["count"].as_i64().unwrap()).sum::<i64>() >= 13
    })
    .await;
    // The rest waited for the window (4 s from the first's dispatch, which came just before
    // its receipt), and went out as one message per window: all of them in one, unless the
    // machine took longer than a window to let 12 deliveries die.
    assert!(
        received_first.elapsed() >= Duration::from_secs(3),
        "the rest waited for the window"
    );
    assert!(all.len() == 2 || all.len() == 3, "{all:#?}");
    let listed: usize = all[1..]
        .iter()
        .map(|m| m["deliveries"].as_array().unwrap().len())
        .sum();
    assert_eq!(listed, 12, "every death listed once");
    // endpoint.failing too: its first failure, then, with 13 attempts all failed in five
    // minutes, the share, in the next window.
    let failing = wait_for(&server, &ops_receiver, &secrets, "endpoint.failing", |g| {
        g.iter().any(|m| m["why"] == "failure_share")
    })
    .await;
    assert_eq!(failing[0]["why"], "first_failure");
    let share = failing
        .iter()
        .find(|m| m["why"] == "failure_share")
        .unwrap();
    assert!(share["attempts"].as_i64().unwrap() >= 10, "{share}");
    assert_eq!(share["failed"], share["attempts"]);
}

/// A crash between the state change and the send loses nothing: a death held for its
/// coalescing window is in the outbox when Herald is killed, and a new process sends it.
#[tokio::test]
async fn a_crash_between_the_state_change_and_the_send_loses_nothing() {
    let db_url = crate::helpers::fresh_database().await;
    let ops_receiver = Receiver::start().await;
    let down = Receiver::answering(Reply::status(500)).await;
    // A window long enough for the second death to fall in it on a slow machine too.
    let config = env("10s");
    let first = Process::start(&db_url, &config).await;
    let ops = first
        .api(
            reqwest::Method::POST,
            "/apps",
            json!({"name": "Operations", "uid": "ops"}),
        )
        .await;
    first
        .add_endpoint(ops["id"].as_str().unwrap(), &ops_receiver.url())
        .await;
    let (acme, _, _) = first.app_with_endpoint(&down.url()).await;
    first.send(&acme, "invoice.paid", json!({"n": 1})).await;
    // The first death goes out at once (with the endpoint's first failure).
    ops_receiver.wait_for(2, Duration::from_secs(15)).await;
    // The second is held for the window: committed with its delivery's death, not sent.
    let second = first.send(&acme, "invoice.paid", json!({"n": 2})).await;
    let second = second["id"].as_str().unwrap().to_owned();
    let pool = sqlx::PgPool::connect(&db_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(
        &pool,
        "select count(*) from herald.operational_event where kind = 'delivery.dead'",
    )
    .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the second death was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal("-KILL");
    drop(first);
    let before = ops_receiver.count();
    let _second_process = Process::start(&db_url, &config).await;
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let got: Vec<Value> = ops_receiver
            .received()
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .filter(|b| b["data"]["deliveries"][0]["message_id"] == second.as_str())
            .collect();
        if !got.is_empty() {
            assert_eq!(got.len(), 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the held death was lost ({} before the kill)",
            before
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count(&pool, "select count(*) from herald.operational_event").await,
        0
    );
    let _ = TOKEN;
}

/// Without HERALD_OPERATIONAL_APP nothing is recorded, and Herald's types are not added to
/// the catalog.
#[tokio::test]
async fn without_an_operational_application_nothing_is_recorded() {
    let db_url = crate::helpers::fresh_database().await;
    let server = spawn_app_on(db_url, &[("HERALD_RETRY_SCHEDULE", "50ms")]).await;
    let down = Receiver::answering(Reply::status(500)).await;
    let (app, _, _) = server.app_with_endpoint(&down).await;
    server.send_until_dead(&app, "invoice.paid").await;
    assert_eq!(
        count(
            &server.pool,
            "select count(*) from herald.operational_event"
        )
        .await,
        0
    );
    assert_eq!(
        server.get("/event-types/delivery.dead").await.0,
        StatusCode::NOT_FOUND
    );
}

/// A customer's changes in the portal are told as `by: portal`, with the settings they
/// made; disabling it there is an `endpoint.disabled` by the portal too.
#[tokio::test]
async fn a_customers_changes_in_the_portal_are_told() {
    let server = spawn_app_with(&env("1s")).await;
    let ops_receiver = Receiver::start().await;
    let secrets = operations(&server, &ops_receiver).await;
    let (_, acme) = server
        .post("/apps", json!({"name": "Acme", "uid": "acme"}))
        .await;
    let acme = acme["id"].as_str().unwrap().to_owned();
    let portal = crate::portal::PortalClient::open(&server, &acme).await;
    // The portal offers the customer's types, not Herald's operational ones.
    server
        .post(
            "/event-types",
            json!({"name": "invoice.paid", "description": "Paid."}),
        )
        .await;
    let (status, types) = portal.get("/event-types").await;
    assert_eq!(status, StatusCode::OK);
    assert!(types.contains("invoice.paid"), "{types}");
    assert!(!types.contains("delivery.dead"), "{types}");
    let (status, page) = portal
        .post(
            "/endpoints",
            &[
                ("url", "https://customer.example/hook"),
                ("description", "Billing <b>hooks</b>"),
                ("event_types", "invoice.*"),
                ("rate_limit", ""),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let created = wait_for(&server, &ops_receiver, &secrets, "endpoint.created", |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(created[0]["by"], "portal");
    assert_eq!(created[0]["app_uid"], "acme");
    assert_eq!(
        created[0]["endpoint"]["description"],
        "Billing <b>hooks</b>"
    );
    assert_eq!(created[0]["endpoint"]["event_types"], json!(["invoice.*"]));
    let ep = created[0]["endpoint_id"].as_str().unwrap().to_owned();
    let (status, _) = portal
        .post(&format!("/endpoints/{ep}/state"), &[("disabled", "true")])
        .await;
    assert!(status.is_success() || status.is_redirection(), "{status}");
    let disabled = wait_for(&server, &ops_receiver, &secrets, "endpoint.disabled", |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(disabled[0]["by"], "portal");
    let updated = wait_for(&server, &ops_receiver, &secrets, "endpoint.updated", |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(updated[0]["changed"], json!(["disabled"]));
    let (status, _) = portal
        .post(&format!("/endpoints/{ep}/delete"), &[("confirm", "yes")])
        .await;
    assert!(status.is_success() || status.is_redirection(), "{status}");
    let deleted = wait_for(&server, &ops_receiver, &secrets, "endpoint.deleted", |g| {
        !g.is_empty()
    })
    .await;
    assert_eq!(deleted[0]["endpoint_id"], ep.as_str());
}

/// Herald's own disabling is told with its reason: an endpoint that answers 410 Gone, and
/// one failing for longer than HERALD_DISABLE_AFTER.
#[tokio::test]
async fn endpoints_herald_disables_are_told_with_the_reason() {
    let mut config = env("1s");
    config.push(("HERALD_DISABLE_AFTER", "1s"));
    config.retain(|(k, _)| *k != "HERALD_RETRY_SCHEDULE");
    config.push((
        "HERALD_RETRY_SCHEDULE",
        "200ms,200ms,200ms,200ms,200ms,200ms,200ms,200ms",
    ));
    let server = spawn_app_with(&config).await;
    let ops_receiver = Receiver::start().await;
    let secrets = operations(&server, &ops_receiver).await;
    let (_, acme) = server.post("/apps", json!({"name": "Acme"})).await;
    let acme = acme["id"].as_str().unwrap().to_owned();
    let gone = Receiver::answering(Reply::status(410)).await;
    let (gone_ep, _) = server
        .create_endpoint(&acme, json!({"url": gone.url(), "event_types": ["a"]}))
        .await;
    let failing = Receiver::answering(Reply::status(500)).await;
    let (failing_ep, _) = server
        .create_endpoint(&acme, json!({"url": failing.url(), "event_types": ["b"]}))
        .await;
    server.send(&acme, "a", json!({})).await;
    server.send(&acme, "b", json!({})).await;
    let disabled = wait_for(&server, &ops_receiver, &secrets, "endpoint.disabled", |g| {
        g.len() >= 2
    })
    .await;
    let reason = |ep: &str| {
        disabled
            .iter()
            .find(|d| d["endpoint_id"] == ep)
            .map(|d| d["reason"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(reason(&gone_ep), "the endpoint answered 410 Gone");
    assert!(
        reason(&failing_ep).starts_with("failing continuously since"),
        "{disabled:#?}"
    );
    assert!(disabled.iter().all(|d| d["by"].is_null()), "Herald's doing");
}
