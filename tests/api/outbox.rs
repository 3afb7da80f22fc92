use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::helpers::{Receiver, TOKEN, all_delivered, answer, spawn_app};

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_same_message_and_queues_nothing() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let path = format!("/apps/{app_id}/messages");

    let body = json!({"event_type": "invoice.paid", "payload": {"n": 1}, "idempotency_key": "k1"});
    let (s1, first) = app.post(&path, body.clone()).await;
    let (s2, again) = app.post(&path, body).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(first, again);

    // The header works the same way.
    let by_header = || async {
        answer(
            app.http
                .post(app.url(&path))
                .bearer_auth(TOKEN)
                .header("Idempotency-Key", "k2")
                .json(&json!({"event_type": "invoice.paid", "payload": {"n": 2}}))
                .send()
                .await,
        )
        .await
    };
    let (_, h1) = by_header().await;
    let (_, h2) = by_header().await;
    assert_eq!(h1["id"], h2["id"]);
    assert_ne!(h1["id"], first["id"]);

    let id = first["id"].as_str().unwrap();
    app.wait_for_message(&app_id, id, Duration::from_secs(10), all_delivered)
        .await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 2, "one delivery per distinct key");
    let (_, list) = app.get(&path).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
}

/// The caller's own write, in its transaction.
async fn insert_invoice(tx: &mut sqlx::PgTransaction<'_>, id: &str) {
    sqlx::query("insert into invoices values ($1)")
        .bind(id)
        .execute(&mut **tx)
        .await
        .unwrap();
}

/// A backend sharing the database enqueues inside its own transaction: the webhook goes
/// out if and only if that transaction commits.
#[tokio::test]
async fn the_sql_function_enqueues_atomically_with_the_callers_transaction() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let app_id = app.acme_with_endpoint(&receiver).await;

    // A plain connection, as the SaaS's own code would have: no search_path tricks.
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("create table invoices (id text primary key)")
        .execute(&mut conn)
        .await
        .unwrap();

    let mut tx = conn.begin().await.unwrap();
    insert_invoice(&mut tx, "in_rolled_back").await;
    let rolled_back: String = sqlx::query_scalar(
        "select herald.message_ref(id) from herald.send_message('acme', 'invoice.paid', '{\"invoice\": \"in_rolled_back\"}')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();

    let mut tx = conn.begin().await.unwrap();
    insert_invoice(&mut tx, "in_committed").await;
    let committed: String = sqlx::query_scalar(
        "select herald.message_ref(id) from herald.send_message($1, 'invoice.paid', '{\"invoice\": \"in_committed\"}', 'in_committed')",
    )
    .bind(&app_id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("webhook-id"), committed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.count(),
        1,
        "the rolled-back message must never be sent"
    );
    let (status, _) = app
        .get(&format!("/apps/{app_id}/messages/{rolled_back}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let err = sqlx::query("select herald.send_message('nobody', 'x', '{}')")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}
