//! Group commit for sends (issue 18): concurrent `POST /messages` requests are stored
//! together, in one transaction, and each still gets its own answer, after the commit.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinSet;

use crate::helpers::{Receiver, TOKEN, TestServer, spawn_app};

/// Sends in the background; the task answers (what it sent, status, body).
fn send(sends: &mut JoinSet<(Value, StatusCode, Value)>, app: &TestServer, to: &str, body: Value) {
    let (http, url) = (app.http.clone(), app.url(&format!("/apps/{to}/messages")));
    sends.spawn(async move {
        let r = http
            .post(url)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (body, status, r.json::<Value>().await.unwrap())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_share_transactions_and_each_gets_its_own_answer() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let app_id = app.acme_with_endpoint(&receiver).await;

    let mut sends = JoinSet::new();
    for n in 0..40 {
        let to = if n % 2 == 0 { app_id.as_str() } else { "acme" };
        send(
            &mut sends,
            &app,
            to,
            json!({"event_type": "invoice.paid", "payload": {"n": n}, "channels": ["c"]}),
        );
    }
    for n in 0..10 {
        send(
            &mut sends,
            &app,
            "no-such-app",
            json!({"event_type": "invoice.paid", "payload": {"n": 200 + n}}),
        );
    }
    for n in 0..10 {
        send(
            &mut sends,
            &app,
            &app_id,
            json!({"event_type": "invoice.paid", "payload": {"n": 100 + n},
                   "idempotency_key": format!("key-{}", n % 5)}),
        );
    }

    let mut unkeyed = HashSet::new();
    let mut keyed: Vec<(String, String)> = Vec::new();
    for (body, status, answer) in sends.join_all().await {
        if body.get("idempotency_key").is_some() {
            assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
            keyed.push((
                body["idempotency_key"].as_str().unwrap().to_owned(),
                answer["id"].as_str().unwrap().to_owned(),
            ));
        } else if body["payload"]["n"].as_u64().unwrap() < 40 {
            assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
            // Its own message, not a neighbour's.
            assert_eq!(answer["payload"], body["payload"]);
            assert_eq!(answer["channels"], json!(["c"]));
            assert!(unkeyed.insert(answer["id"].as_str().unwrap().to_owned()));
        } else {
            assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
            assert_eq!(answer["code"], "not_found", "{answer}");
        }
    }
    assert_eq!(unkeyed.len(), 40, "one message per send");
    // A key sent twice answers one message, whichever batch each send was in.
    for (key, id) in &keyed {
        let first = keyed.iter().find(|(k, _)| k == key).unwrap();
        assert_eq!(id, &first.1, "{key}");
    }
    let distinct: HashSet<&str> = keyed.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(distinct.len(), 5);

    // Stored together: fewer transactions than messages.
    let (messages, transactions): (i64, i64) = sqlx::query_as(
        "select count(*), count(distinct xmin::text) from herald.message
          where idempotency_key is null",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(messages, 40);
    assert!(
        transactions < messages,
        "{messages} messages in {transactions} transactions"
    );

    // And every one delivered, once.
    let received = receiver.wait_for(45, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 45);
    let ids: HashSet<String> = received
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(ids.len(), 45);
}

/// A key that another transaction holds, uncommitted, makes its own send wait, and no other:
/// the batch it was in fails on its lock timeout and everything in it is sent again alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_key_holds_up_its_own_send_and_no_other() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let app_id = app.acme_with_endpoint(&receiver).await;

    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let held: String = sqlx::query_scalar(
        "select herald.message_ref(id)
           from herald.send_message('acme', 'invoice.paid', '{}', 'held')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();

    let mut waiting = JoinSet::new();
    for _ in 0..3 {
        send(
            &mut waiting,
            &app,
            &app_id,
            json!({"event_type": "invoice.paid", "payload": {}, "idempotency_key": "held"}),
        );
    }
    // Several rounds, so that some share a batch with the held key and some come after.
    for round in 0..3 {
        let mut others = JoinSet::new();
        for n in 0..20 {
            send(
                &mut others,
                &app,
                &app_id,
                json!({"event_type": "invoice.paid", "payload": {"round": round, "n": n}}),
            );
        }
        let answers = tokio::time::timeout(Duration::from_secs(10), others.join_all())
            .await
            .expect("the other sends were held up");
        for (_, status, answer) in answers {
            assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        }
    }
    assert!(
        waiting.try_join_next().is_none(),
        "a send of the held key did not wait for it"
    );

    tx.commit().await.unwrap();
    for (_, status, answer) in waiting.join_all().await {
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        assert_eq!(answer["id"], json!(held));
    }
    let keyed: i64 =
        sqlx::query_scalar("select count(*) from herald.message where idempotency_key = 'held'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(keyed, 1);
    receiver.wait_for(61, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 61);
}

/// The endpoints of the twin applications: (description, settings).
fn twin_endpoints() -> Vec<(&'static str, Value)> {
    vec![
        ("all", json!({})),
        ("invoices", json!({"event_types": ["invoice.*"]})),
        ("orders", json!({"event_types": ["order.paid"]})),
        ("eu", json!({"channels": ["eu"]})),
        ("gold", json!({"filter": {"tier": "gold"}})),
        (
            "gold-eu-invoices",
            json!({"filter": {"tier": "gold"}, "channels": ["eu"],
                   "event_types": ["invoice.*"]}),
        ),
        ("off", json!({"disabled": true})),
    ]
}

/// Which of its application's endpoints (by description) each message got a delivery to.
async fn reached(pool: &sqlx::PgPool, message: uuid::Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "select e.description from herald.delivery d
           join herald.endpoint e on e.id = d.endpoint_id
          where d.message_id = $1 order by e.description",
    )
    .bind(message)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// (application, event type, payload, channels, key)
type Case<'a> = (&'a str, &'a str, &'a str, &'a str, Option<&'a str>);

/// One batch gives every message what `herald.enqueue` gives it alone: messages of one kind
/// with different payloads (filters), several kinds, channels, a key repeated within the
/// batch, and applications that do not exist or were removed, side by side.
#[tokio::test]
async fn a_batch_gives_each_message_what_it_would_get_alone() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let mut apps = Vec::new();
    for name in ["batched", "alone"] {
        let (_, created) = app.post("/apps", json!({"name": name, "uid": name})).await;
        let id = created["id"].as_str().unwrap().to_owned();
        for (description, settings) in twin_endpoints() {
            let mut body = settings;
            body["url"] = json!(receiver.url());
            body["description"] = json!(description);
            app.create_endpoint(&id, body).await;
        }
        apps.push(id);
    }
    let removed = app.create_app().await;
    let (status, _) = app.delete(&format!("/apps/{removed}")).await;
    assert!(status.is_success(), "{status}");

    let batch: Vec<Case> = vec![
        ("batched", "invoice.paid", r#"{"tier":"gold"}"#, "", None),
        ("batched", "invoice.paid", r#"{"tier":"silver"}"#, "", None),
        (
            "batched",
            "invoice.paid",
            r#"{"tier":"gold","n":1}"#,
            "eu",
            None,
        ),
        ("nope", "invoice.paid", "{}", "", None),
        ("batched", "order.paid", r#"{"tier":"gold"}"#, "eu us", None),
        (&removed, "invoice.paid", "{}", "", None),
        ("batched", "order.paid", "[1]", "", Some("k")),
        (
            "batched",
            "invoice.paid",
            r#"{"tier":"silver"}"#,
            "eu",
            None,
        ),
        ("batched", "order.paid", "[2]", "", Some("k")),
        (
            "batched",
            "customer.created",
            r#"{"tier":"gold"}"#,
            "",
            None,
        ),
    ];
    let column =
        |f: fn(&Case) -> Option<String>| batch.iter().map(f).collect::<Vec<Option<String>>>();
    let rows: Vec<(i32, uuid::Uuid)> = sqlx::query_as(
        "select ord, message_id
           from herald.enqueue_batch($1, $2, $3, $4, $5, null, null, 0, '{}', '{}')
          where endpoint_id is null
          order by ord",
    )
    .bind(column(|m| Some(m.0.to_owned())))
    .bind(column(|m| Some(m.1.to_owned())))
    .bind(column(|m| Some(m.2.to_owned())))
    .bind(column(|m| Some(m.3.to_owned())))
    .bind(column(|m| m.4.map(str::to_owned)))
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let ords: Vec<i32> = rows.iter().map(|(ord, _)| *ord).collect();
    // No answer for the unknown application (4) and the removed one (6).
    assert_eq!(ords, vec![1, 2, 3, 5, 7, 8, 9, 10]);
    let by_ord: std::collections::HashMap<i32, uuid::Uuid> = rows.into_iter().collect();
    // The repeated key answered its first message.
    assert_eq!(by_ord[&7], by_ord[&9]);

    let mut reached_any = 0;
    for (ord, m) in batch.iter().enumerate() {
        let Some(&batched) = by_ord.get(&(ord as i32 + 1)) else {
            continue;
        };
        if ord == 8 {
            continue; // the repeat: no message of its own
        }
        let channels: Vec<String> = m.3.split_whitespace().map(str::to_owned).collect();
        let alone: uuid::Uuid = sqlx::query_scalar(
            "select (q.message).id
               from herald.enqueue('alone', $1, $2::json, $3, null, null, '{}', $4) q",
        )
        .bind(m.1)
        .bind(m.2)
        .bind(m.4)
        .bind(&channels)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let (batched, alone) = (
            reached(&app.pool, batched).await,
            reached(&app.pool, alone).await,
        );
        assert_eq!(batched, alone, "{m:?}");
        reached_any += batched.len();
    }
    assert!(reached_any > 10, "the cases reach endpoints");
    let keyed: i64 =
        sqlx::query_scalar("select count(*) from herald.message where idempotency_key = 'k'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(keyed, 2, "one per application");
}

/// A batch claims directly no more deliveries at an endpoint than the offering process has
/// room for there; the rest are queued, and announced. So do its messages with a key,
/// counting what the batch claimed before them.
#[tokio::test]
async fn a_batch_claims_directly_within_the_room_it_is_offered() {
    // No keys; every other message with one; all with one.
    for keyed in [|_| false, |i| i % 2 == 1, |_| true] {
        batch_within_room(keyed).await;
    }
}

async fn batch_within_room(keyed: fn(i32) -> bool) {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let app_id = app.create_app().await;
    let mut endpoints = Vec::new();
    for _ in 0..3 {
        let (id, _) = app
            .create_endpoint(&app_id, json!({"url": receiver.url()}))
            .await;
        endpoints.push(uuid::Uuid::parse_str(id.strip_prefix("ep_").unwrap()).unwrap());
    }
    // The first endpoint is full here, the second has room for one, the third for the
    // default two.
    let n: i32 = 5;
    let worker = uuid::Uuid::now_v7();
    let keys: Vec<Option<String>> = (0..n).map(|i| keyed(i).then(|| format!("k{i}"))).collect();
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.pool)
        .await
        .unwrap();
    listener.listen("herald_delivery").await.unwrap();
    // One row per message (no endpoint), one per delivery.
    let rows: Vec<(Option<i32>, Option<uuid::Uuid>, Option<bool>)> = sqlx::query_as(
        "select ord, endpoint_id, direct
           from herald.enqueue_batch(array_fill($1::text, array[$2]),
                                     array_fill('invoice.paid'::text, array[$2]),
                                     array_fill('{}'::text, array[$2]),
                                     array_fill(''::text, array[$2]),
                                     $5,
                                     $4, 30, 2, $3, array[0, 1])",
    )
    .bind(&app_id)
    .bind(n)
    .bind(&endpoints[..2])
    .bind(worker)
    .bind(&keys)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut messages: Vec<i32> = rows
        .iter()
        .filter(|r| r.1.is_none())
        .filter_map(|r| r.0)
        .collect();
    messages.sort();
    assert_eq!(messages, (1..=n).collect::<Vec<_>>(), "keys: {keys:?}");
    let queued = |e: uuid::Uuid| {
        rows.iter()
            .filter(|r| r.1 == Some(e) && r.2 == Some(false))
            .count()
    };
    assert_eq!(queued(endpoints[0]), 5, "keys: {keys:?}");
    assert_eq!(queued(endpoints[1]), 4, "keys: {keys:?}");
    assert_eq!(queued(endpoints[2]), 3, "keys: {keys:?}");
    let claimed = rows.iter().filter(|r| r.2 == Some(true)).count();
    assert_eq!(claimed, 3, "keys: {keys:?}");
    let announced = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(
        matches!(announced, Ok(Ok(_))),
        "the queued deliveries are announced; keys: {keys:?}"
    );
    let in_flight: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "select endpoint_id, count(*) from herald.delivery
          where state = 'in_flight' and locked_by = $1
          group by endpoint_id order by endpoint_id",
    )
    .bind(worker)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut expected = vec![(endpoints[1], 1), (endpoints[2], 2)];
    expected.sort();
    assert_eq!(in_flight, expected, "keys: {keys:?}");
}

/// A key PostgreSQL could not store is refused before it reaches a batch.
#[tokio::test]
async fn a_key_with_nul_is_refused_before_it_joins_a_batch() {
    let app = spawn_app().await;
    let app_id = app.create_app().await;
    let (status, body) = app
        .post(
            &format!("/apps/{app_id}/messages"),
            json!({"event_type": "invoice.paid", "payload": {}, "idempotency_key": "a\u{0}b"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "invalid", "{body}");
}
