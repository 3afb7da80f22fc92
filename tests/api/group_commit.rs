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
