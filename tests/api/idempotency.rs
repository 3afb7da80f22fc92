//! Idempotency keys are honoured for HERALD_IDEMPOTENCY_WINDOW (default 24 h); after it a
//! repeated key creates a new message.

use std::process::{Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};

use crate::helpers::{
    Receiver, TestServer, all_delivered, database_at, spawn_app_on, spawn_app_with,
};

/// Moves a message back in time, as if it had been sent `ago` (a PostgreSQL interval)
/// earlier: its id (UUIDv7) and its created_at (what the window is measured on). Returns
/// its new id. Only for a message without deliveries, which would still point at the old id.
async fn age(pool: &PgPool, msg: &str, ago: &str) -> String {
    // Its key, if it has one after the upgrade to partitions (migration 0016), with it.
    let has_keys: bool =
        sqlx::query_scalar("select to_regclass('herald.idempotency_key') is not null")
            .fetch_one(pool)
            .await
            .unwrap();
    let keys = if has_keys {
        ", keys as (
             update herald.idempotency_key k set message_id = moved.id,
                                                 created_at = moved.created_at
               from moved
              where k.app_id = moved.app_id and k.key = moved.idempotency_key)"
    } else {
        ""
    };
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "with moved as (
             update herald.message
                set id = herald.uuid_v7_floor(now() - $2::interval),
                    created_at = now() - $2::interval
              where id = substring($1 from 5)::uuid
             returning id, created_at, app_id, idempotency_key){keys}
         select herald.message_ref(id) from moved"
    )))
    .bind(msg)
    .bind(ago)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn send_with_key(app: &TestServer, app_id: &str, key: &str, n: u64) -> Value {
    let (status, msg) = app
        .post(
            &format!("/apps/{app_id}/messages"),
            json!({"event_type": "invoice.paid", "payload": {"n": n}, "idempotency_key": key}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{msg}");
    msg
}

async fn messages_with_key(pool: &PgPool, key: &str) -> i64 {
    sqlx::query_scalar("select count(*) from herald.message where idempotency_key = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_repeated_after_the_window_sends_a_new_message() {
    let app = spawn_app_with(&[("HERALD_IDEMPOTENCY_WINDOW", "1m")]).await;
    let receiver = Receiver::start().await;
    let app_id = app.create_app().await;

    // Sent before the endpoint exists (so no delivery holds on to the ids moved below).
    let expired = send_with_key(&app, &app_id, "expired", 1).await;
    let kept = send_with_key(&app, &app_id, "kept", 2).await;
    // 90 s is past the configured 1 minute (and well within the 24 h default); 30 s is not.
    let expired_id = age(&app.pool, expired["id"].as_str().unwrap(), "90 seconds").await;
    let kept_id = age(&app.pool, kept["id"].as_str().unwrap(), "30 seconds").await;
    app.create_endpoint(&app_id, json!({"url": receiver.url()}))
        .await;

    let again = send_with_key(&app, &app_id, "expired", 3).await;
    assert_ne!(
        again["id"],
        json!(expired_id),
        "a key past its window sends anew"
    );
    assert_eq!(again["payload"], json!({"n": 3}));
    let still = send_with_key(&app, &app_id, "kept", 4).await;
    assert_eq!(
        still["id"],
        json!(kept_id),
        "a key within its window answers its first"
    );
    assert_eq!(still["payload"], json!({"n": 2}));

    let new_id = again["id"].as_str().unwrap();
    app.wait_for_message(&app_id, new_id, Duration::from_secs(10), all_delivered)
        .await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 1, "only the new message is sent");
    assert_eq!(got[0].header("webhook-id"), new_id);
    // The old message keeps everything, its key too: a key answers only from within
    // its window.
    assert_eq!(messages_with_key(&app.pool, "expired").await, 2);
    let (status, old) = app
        .get(&format!("/apps/{app_id}/messages/{expired_id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (old["idempotency_key"].clone(), old["payload"].clone()),
        (json!("expired"), json!({"n": 1}))
    );
    assert_eq!(messages_with_key(&app.pool, "kept").await, 1);
}

fn send_in_background(
    sends: &mut tokio::task::JoinSet<(StatusCode, Value)>,
    app: &TestServer,
    app_id: &str,
    key: &str,
    n: u64,
) {
    let (http, url) = (
        app.http.clone(),
        app.url(&format!("/apps/{app_id}/messages")),
    );
    let key = key.to_owned();
    sends.spawn(async move {
        let r = http
            .post(url)
            .bearer_auth(crate::helpers::TOKEN)
            .header("Idempotency-Key", key)
            .json(&json!({"event_type": "invoice.paid", "payload": {"n": n}}))
            .send()
            .await
            .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    });
}

fn all_the_same(answers: &[(StatusCode, Value)]) -> &Value {
    for (status, msg) in answers {
        assert_eq!(*status, StatusCode::ACCEPTED, "{msg}");
        assert_eq!(
            msg["id"], answers[0].1["id"],
            "every send answers the same message"
        );
    }
    &answers[0].1["id"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_of_one_new_key_make_one_message() {
    let app = spawn_app_with(&[("HERALD_DB_POOL_SIZE", "24")]).await;
    let receiver = Receiver::start().await;
    let app_id = app.acme_with_endpoint(&receiver).await;

    // 20 at once through the API.
    let mut sends = tokio::task::JoinSet::new();
    for n in 0..20 {
        send_in_background(&mut sends, &app, &app_id, "order-7-paid", n);
    }
    all_the_same(&sends.join_all().await);
    assert_eq!(messages_with_key(&app.pool, "order-7-paid").await, 1);

    // While a backend's transaction holds a send of the key, uncommitted, sends of the key
    // through the API wait for it, then answer its message.
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let held: String = sqlx::query_scalar(
        "select herald.message_ref(id)
           from herald.send_message('acme', 'invoice.paid', '{}', 'order-8-paid')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let mut sends = tokio::task::JoinSet::new();
    for n in 0..20 {
        send_in_background(&mut sends, &app, &app_id, "order-8-paid", n);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sends.try_join_next().is_none(), "a send did not wait");
    tx.commit().await.unwrap();
    assert_eq!(all_the_same(&sends.join_all().await), &json!(held));
    assert_eq!(messages_with_key(&app.pool, "order-8-paid").await, 1);

    receiver.wait_for(2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 2, "one webhook per key");
}

/// A backend calling herald.send_message on its own connection has not set
/// herald.idempotency_window: it gets the 24 hour default, or the window it sets.
#[tokio::test]
async fn the_sql_function_honours_keys_for_24_hours_or_the_sessions_window() {
    let app = spawn_app_with(&[("HERALD_IDEMPOTENCY_WINDOW", "1m")]).await;
    let (_, created) = app
        .post("/apps", json!({"name": "Acme", "uid": "acme"}))
        .await;
    assert!(created["id"].is_string(), "{created}");
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    let send = async |conn: &mut PgConnection| -> String {
        sqlx::query_scalar(
            "select herald.message_ref(id)
               from herald.send_message('acme', 'invoice.paid', '{}', 'in_1-paid')",
        )
        .fetch_one(conn)
        .await
        .unwrap()
    };

    let first = send(&mut conn).await;
    assert_eq!(send(&mut conn).await, first);
    // Herald's own 1 minute is not the backend's: a day is.
    let first = age(&app.pool, &first, "23 hours").await;
    assert_eq!(send(&mut conn).await, first, "23 hours old: still the same");
    let first = age(&app.pool, &first, "25 hours").await;
    let second = send(&mut conn).await;
    assert_ne!(second, first, "25 hours old: a new message");
    assert_eq!(send(&mut conn).await, second);

    // A session may set its own window.
    sqlx::query("set herald.idempotency_window = '1 hour'")
        .execute(&mut conn)
        .await
        .unwrap();
    let second = age(&app.pool, &second, "2 hours").await;
    let third = send(&mut conn).await;
    assert!(
        third != first && third != second,
        "past the session's hour: new"
    );
    // The window is consulted when a key is seen again.
    sqlx::query("set herald.idempotency_window = '-1 hour'")
        .execute(&mut conn)
        .await
        .unwrap();
    let err = sqlx::query("select herald.send_message('acme', 'a.b', '{}', 'in_1-paid')")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("herald.idempotency_window must be positive"),
        "{err}"
    );
}

#[tokio::test]
async fn start_up_refuses_a_window_out_of_bounds() {
    for (window, says) in [
        (
            "30s",
            "HERALD_IDEMPOTENCY_WINDOW must be between 1m and 30d, not 30s",
        ),
        (
            "90d",
            "HERALD_IDEMPOTENCY_WINDOW must be between 1m and 30d, not 90d",
        ),
        ("soon", "HERALD_IDEMPOTENCY_WINDOW is not a duration"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("serve")
            .env_clear()
            .current_dir(std::env::temp_dir())
            .envs(crate::helpers::base_env())
            // Never reached: the configuration is refused first.
            .env("DATABASE_URL", "postgres://127.0.0.1:1/none")
            .env("HERALD_IDEMPOTENCY_WINDOW", window)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{window}: started");
        assert!(stderr.contains(says), "{window}: {stderr}");
    }
}

/// Migrations up to 0008 (the release before the window), as a database of that release.
async fn index_def(pool: &PgPool, name: &str) -> Option<(String, bool)> {
    sqlx::query_as(
        "select pg_get_indexdef(i.indexrelid), i.indisvalid
           from pg_index i join pg_class c on c.oid = i.indexrelid
          where c.relname = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn keys_stored_before_the_upgrade_are_honoured_within_the_window() {
    let (url, old) = database_at(8).await;
    let sent = async |key: &str| -> String {
        sqlx::query_scalar(
            "select herald.message_ref(id)
               from herald.send_message('acme', 'invoice.paid', '{\"n\": 1}', $1)",
        )
        .bind(key)
        .fetch_one(&old)
        .await
        .unwrap()
    };
    sqlx::query("insert into application (uid, name) values ('acme', 'Acme')")
        .execute(&old)
        .await
        .unwrap();
    let recent = sent("recent").await;
    let ancient = sent("ancient").await;
    for i in 0..100 {
        sent(&format!("other-{i}")).await;
    }
    let recent = age(&old, &recent, "2 hours").await;
    let ancient = age(&old, &ancient, "3 days").await;
    old.close().await;

    let app = spawn_app_on(url, &[]).await;
    let receiver = Receiver::start().await;
    let app_id = {
        let (_, a) = app.get("/apps/acme").await;
        a["id"].as_str().unwrap().to_owned()
    };
    app.create_endpoint(&app_id, json!({"url": receiver.url()}))
        .await;

    let again = send_with_key(&app, &app_id, "recent", 2).await;
    assert_eq!(again["id"], json!(recent), "2 hours old: the same message");
    let anew = send_with_key(&app, &app_id, "ancient", 3).await;
    assert_ne!(anew["id"], json!(ancient), "3 days old: past the window");
    app.wait_for_message(
        &app_id,
        anew["id"].as_str().unwrap(),
        Duration::from_secs(10),
        all_delivered,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.count(), 1, "only the new message is sent");

    // Keys are found through the lookup index migration 0015 built (herald.enqueue's lock
    // makes one key one message within its window, see
    // concurrent_sends_of_one_new_key_make_one_message).
    let (def, valid) = index_def(&app.pool, "message_idempotency_key")
        .await
        .unwrap();
    assert!(valid && def.contains("(app_id, idempotency_key)"), "{def}");
    assert_eq!(index_def(&app.pool, "message_idempotency").await, None);
}

/// A concurrent index build that failed on the server leaves an invalid index behind and
/// its migration unrecorded; the next start drops the leftover and builds it again.
#[tokio::test]
async fn an_interrupted_index_build_is_redone_at_the_next_start() {
    let (url, old) = database_at(8).await;
    sqlx::query("insert into application (uid, name) values ('acme', 'Acme')")
        .execute(&old)
        .await
        .unwrap();
    for _ in 0..2 {
        sqlx::query("select herald.send_message('acme', 'invoice.paid', '{}')")
            .execute(&old)
            .await
            .unwrap();
    }
    // A build that fails half-way (two messages of one type break this uniqueness) leaves
    // its index in the catalog, invalid, as a cancelled one would.
    let failed = sqlx::query(
        "create unique index concurrently message_event_type on herald.message (app_id, event_type)",
    )
    .execute(&old)
    .await;
    assert!(failed.is_err());
    assert!(!index_def(&old, "message_event_type").await.unwrap().1);
    old.close().await;

    let app = spawn_app_on(url, &[]).await;
    let (def, valid) = index_def(&app.pool, "message_event_type").await.unwrap();
    assert!(valid, "{def}");
    assert!(def.contains("(app_id, event_type, id)"), "{def}");
}

/// A backend sending at REPEATABLE READ cannot see a send of the same key that committed
/// after its snapshot, nor one still under way: it is told to retry (serialization_failure,
/// SQLSTATE 40001) rather than making a second message, as the unique index on keys always
/// did.
#[tokio::test]
async fn a_send_at_repeatable_read_that_conflicts_with_an_unseen_send_is_told_to_retry() {
    let app = spawn_app_with(&[]).await;
    let (_, created) = app
        .post("/apps", json!({"name": "Acme", "uid": "acme"}))
        .await;
    assert!(created["id"].is_string(), "{created}");
    let send = |key: &str| {
        format!(
            "select herald.message_ref(id)
               from herald.send_message('acme', 'invoice.paid', '{{}}', '{key}')"
        )
    };
    let is_serialization_failure =
        |e: &sqlx::Error| e.as_database_error().and_then(|e| e.code()).as_deref() == Some("40001");

    // A send that commits after the REPEATABLE READ transaction took its snapshot.
    let mut reader = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("begin isolation level repeatable read")
        .execute(&mut reader)
        .await
        .unwrap();
    sqlx::query("select 1").execute(&mut reader).await.unwrap();
    let first: String = sqlx::query_scalar(sqlx::AssertSqlSafe(send("in_8-paid")))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let refused = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(send("in_8-paid")))
        .fetch_one(&mut reader)
        .await
        .unwrap_err();
    assert!(is_serialization_failure(&refused), "{refused}");
    sqlx::query("rollback").execute(&mut reader).await.unwrap();
    assert_eq!(messages_with_key(&app.pool, "in_8-paid").await, 1);

    // A send still under way: the REPEATABLE READ send waits for it, then is refused.
    let mut writer = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("begin").execute(&mut writer).await.unwrap();
    let sent: String = sqlx::query_scalar(sqlx::AssertSqlSafe(send("in_9-paid")))
        .fetch_one(&mut writer)
        .await
        .unwrap();
    let url = app.db_url.clone();
    let racing = tokio::spawn(async move {
        let mut conn = PgConnection::connect(&url).await.unwrap();
        sqlx::query("begin isolation level repeatable read")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(send("in_9-paid")))
            .fetch_one(&mut conn)
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!racing.is_finished(), "it waits for the send under way");
    sqlx::query("commit").execute(&mut writer).await.unwrap();
    let refused = racing.await.unwrap().unwrap_err();
    assert!(is_serialization_failure(&refused), "{refused}");

    // Sent again, once the first has committed: the first message.
    sqlx::query("begin isolation level repeatable read")
        .execute(&mut reader)
        .await
        .unwrap();
    let again: String = sqlx::query_scalar(sqlx::AssertSqlSafe(send("in_9-paid")))
        .fetch_one(&mut reader)
        .await
        .unwrap();
    sqlx::query("commit").execute(&mut reader).await.unwrap();
    assert_eq!(again, sent);
    assert_eq!(first.len(), sent.len());
    assert_eq!(messages_with_key(&app.pool, "in_9-paid").await, 1);
}
