//! Retention: history is range-partitioned by time (migrations 0013-0016), partitions are
//! created ahead and dropped whole once past HERALD_RETENTION, a message with a delivery
//! still pending or in flight is never removed, and a database of the previous layout
//! upgrades with every row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};

use crate::helpers::{
    Receiver, Reply, TestServer, all_delivered, count, database_at, deliveries_in, fresh_database,
    poll_until, spawn_app_on, spawn_app_with,
};

/// Minute-sized history: 2 s partitions kept for a minute (the shortest idempotency window,
/// which retention may not be shorter than), a generous request timeout so a slow
/// receiver holds a delivery in flight.
const SHORT: [(&str, &str); 4] = [
    ("HERALD_PARTITION_INTERVAL", "2s"),
    ("HERALD_RETENTION", "1m"),
    ("HERALD_IDEMPOTENCY_WINDOW", "1m"),
    ("HERALD_REQUEST_TIMEOUT", "40s"),
];

/// (kind, suffix, starts_at, ends_at) of every managed partition, oldest first.
async fn partitions(pool: &PgPool) -> Vec<(String, String, f64, f64)> {
    sqlx::query_as(
        "select kind, suffix,
                coalesce(extract(epoch from nullif(starts_at, '-infinity')), 0)::float8,
                extract(epoch from ends_at)::float8
           from herald.history_partition order by kind, starts_at",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The partitions the catalog has of a table, by name.
async fn attached(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid
          where i.inhparent = ('herald.' || $1)::regclass order by 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The registry and the catalog agree, and each kind's partitions follow one another
/// without gap or overlap.
async fn assert_consistent(pool: &PgPool) {
    let parts = partitions(pool).await;
    for kind in ["message", "attempt"] {
        let mine: Vec<_> = parts.iter().filter(|p| p.0 == kind).collect();
        for pair in mine.windows(2) {
            assert_eq!(pair[0].3, pair[1].2, "{kind} partitions meet: {pair:?}");
        }
        let tables = if kind == "message" {
            vec!["message", "delivery"]
        } else {
            vec!["attempt"]
        };
        for table in tables {
            let mut expected: Vec<String> = mine
                .iter()
                .map(|p| format!("{table}_{}", p.1))
                .chain([format!("{table}_default")])
                .collect();
            expected.sort();
            assert_eq!(attached(pool, table).await, expected, "{table}");
        }
    }
}

async fn message_status(app: &TestServer, app_id: &str, msg: &str) -> StatusCode {
    app.get(&format!("/apps/{app_id}/messages/{msg}")).await.0
}

async fn wait_until<F: Future<Output = bool>>(within: Duration, what: &str, f: impl Fn() -> F) {
    let failure = format!("timed out waiting until {what}");
    poll_until(within, Duration::from_millis(200), &failure, f).await;
}

/// On a running process: partitions are made ahead of time, history past retention is
/// dropped with its partition, and a message replayed at the edge of retention, whose
/// delivery is in flight when its partition goes, is kept until that delivery is done.
#[tokio::test]
async fn history_past_retention_is_dropped_but_a_delivery_still_in_flight_keeps_its_message() {
    let app = spawn_app_with(&SHORT).await;
    // The replay (the receiver's third request) takes 20 s to answer.
    let receiver = Receiver::with(Arc::new(|n| {
        Reply::status(200).after(if n == 2 {
            Duration::from_secs(20)
        } else {
            Duration::ZERO
        })
    }))
    .await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;

    // Partitions exist ahead of now as soon as the process has started.
    let now = chrono::Utc::now().timestamp() as f64;
    let ahead = partitions(&app.pool).await;
    for kind in ["message", "attempt"] {
        let end = ahead
            .iter()
            .filter(|p| p.0 == kind)
            .map(|p| p.3)
            .fold(0.0, f64::max);
        assert!(
            end >= now + 5.0,
            "{kind} partitions reach {end}, now is {now}"
        );
    }
    assert_consistent(&app.pool).await;

    let replayed = app.send(&app_id, "invoice.paid", json!({"n": 1})).await;
    let forgotten = app.send(&app_id, "invoice.paid", json!({"n": 2})).await;
    for msg in [&replayed, &forgotten] {
        app.wait_for_message(&app_id, msg, Duration::from_secs(10), all_delivered)
            .await;
    }
    let sent_at = Instant::now();
    let partition_of = async |msg: &str| -> String {
        sqlx::query_scalar(
            "select tableoid::regclass::text from herald.message
              where id = substring($1 from 5)::uuid",
        )
        .bind(msg)
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let home = partition_of(&replayed).await;
    assert_eq!(home, partition_of(&forgotten).await);

    // At 50 s, ten seconds before retention takes them, one of the two is replayed; its
    // receiver holds the request for 20 s, past the drop.
    tokio::time::sleep(Duration::from_secs(50).saturating_sub(sent_at.elapsed())).await;
    let (status, body) = app
        .post(
            &format!("/apps/{app_id}/messages/{replayed}/replay"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    receiver.wait_for(3, Duration::from_secs(5)).await;

    wait_until(
        Duration::from_secs(20),
        "the partition is dropped",
        async || !attached(&app.pool, "message").await.contains(&home),
    )
    .await;
    assert!(
        sent_at.elapsed() < Duration::from_secs(70),
        "dropped while the replay is still in flight"
    );
    assert_eq!(
        message_status(&app, &app_id, &forgotten).await,
        StatusCode::NOT_FOUND
    );
    // The replayed message moved to the default partition with its delivery, in flight.
    assert_eq!(partition_of(&replayed).await, "message_default");
    let (status, kept) = app
        .get(&format!("/apps/{app_id}/messages/{replayed}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(deliveries_in(&kept, "in_flight"), "{kept:#}");
    assert_consistent(&app.pool).await;

    // Its delivery ends as it would have anyway; then the message goes too.
    let done = app
        .wait_for_message(&app_id, &replayed, Duration::from_secs(30), all_delivered)
        .await;
    assert_eq!(done["deliveries"][0]["attempt_count"], json!(2), "{done:#}");
    wait_until(
        Duration::from_secs(10),
        "the finished message is removed",
        async || message_status(&app, &app_id, &replayed).await == StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(receiver.count(), 3, "nothing was sent twice");

    // Old attempt partitions went too: nothing older than a minute and a partition is
    // left, and the partitions left are about a minute's worth plus those made ahead.
    let oldest: Option<f64> = sqlx::query_scalar(
        "select extract(epoch from now() - min(created_at))::float8 from herald.attempt",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        oldest.is_none_or(|age| age < 64.0),
        "oldest attempt {oldest:?} s old"
    );
    let count = partitions(&app.pool).await.len();
    assert!(count <= 2 * (31 + 4), "{count} partitions");
    assert_consistent(&app.pool).await;
}

/// Several processes share the database: only one manages the partitions at a time, the
/// others skip their turn; a step that fails half-way leaves nothing behind, and the next
/// one does it.
#[tokio::test]
async fn processes_take_turns_and_a_step_that_fails_half_way_leaves_nothing() {
    let url = fresh_database().await;
    let one = spawn_app_on(url.clone(), &SHORT).await;
    let two = spawn_app_on(url.clone(), &SHORT).await;

    // While one process holds the manager's lock, another's step is told "busy".
    let mut holder = PgConnection::connect(&url).await.unwrap();
    let mut other = PgConnection::connect(&url).await.unwrap();
    let step = "select herald.manage_history('2 seconds', '6 seconds', '1 minute', 10000)";
    sqlx::query("begin").execute(&mut holder).await.unwrap();
    let _: Option<String> = sqlx::query_scalar(step)
        .fetch_one(&mut holder)
        .await
        .unwrap();
    let busy: Option<String> = sqlx::query_scalar(step)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(busy.as_deref(), Some("busy"));
    sqlx::query("rollback").execute(&mut holder).await.unwrap();

    // A table in the way of a delivery partition to come (the one after the next, so the
    // processes do not make it first): creating the pair fails after its message half was
    // made, and all of it is rolled back.
    let (next, end): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "select max(ends_at) + interval '2 seconds', max(ends_at) + interval '4 seconds'
               from herald.history_partition where kind = 'message'",
        )
        .fetch_one(&one.pool)
        .await
        .unwrap();
    let suffix = next.format("p%Y%m%d_%H%M%S").to_string();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "create table herald.delivery_{suffix} (squatter int)"
    )))
    .execute(&one.pool)
    .await
    .unwrap();
    let failed = sqlx::query_scalar::<_, String>(
        "select herald.create_history_partition('message', $1, $2)",
    )
    .bind(next)
    .bind(end)
    .fetch_one(&mut other)
    .await;
    assert!(failed.is_err());
    let half: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select to_regclass('herald.message_{suffix}')::text"
    )))
    .fetch_one(&one.pool)
    .await
    .unwrap();
    assert_eq!(half, None, "the message half was rolled back");
    assert_consistent(&one.pool).await;
    // The processes' own steps fail the same way meanwhile; once the table is gone the
    // next step creates the pair.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop table herald.delivery_{suffix}"
    )))
    .execute(&one.pool)
    .await
    .unwrap();
    wait_until(Duration::from_secs(10), "the pair is created", async || {
        attached(&one.pool, "delivery")
            .await
            .contains(&format!("delivery_{suffix}"))
    })
    .await;

    // Both processes go on managing for a while, under load: the layout stays whole and
    // every message is delivered.
    let receiver = Receiver::start().await;
    let (app_id, _, _) = one.app_with_endpoint(&receiver).await;
    let mut sent = Vec::new();
    for i in 0..40 {
        let via = if i % 2 == 0 { &one } else { &two };
        sent.push(via.send(&app_id, "invoice.paid", json!({"i": i})).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for msg in &sent {
        one.wait_for_message(&app_id, msg, Duration::from_secs(10), all_delivered)
            .await;
    }
    assert_eq!(receiver.count(), 40);
    assert_consistent(&one.pool).await;
    let in_default = count(&one.pool, "select count(*) from herald.message_default").await;
    assert_eq!(in_default, 0, "every message had its partition ready");
}

/// A database of the previous layout, full of history, upgrades to partitions with every
/// message, delivery, attempt and pending retry intact; what was pending is delivered, and
/// the old tables' indexes serve as the legacy partition's (none is built again).
#[tokio::test]
async fn an_upgrade_to_partitions_keeps_every_row_and_delivers_what_was_pending() {
    let (url, old) = database_at(12).await;
    let receiver = Receiver::start().await;
    // 3,000 messages, each with a succeeded delivery and its attempt; 20 dead; 30 pending
    // and due, with a failed attempt each; one key in use.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "insert into application (uid, name) values ('acme', 'Acme');
         insert into endpoint (app_id, url) select id, '{}' from application;
         insert into endpoint_secret (endpoint_id, secret)
         select id, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' from endpoint;
         insert into message (app_id, event_type, payload, idempotency_key, created_at)
         select a.id, 'invoice.paid', json_build_object('n', g),
                case when g = 1 then 'in_1-paid' end, now() - interval '1 hour'
           from application a, generate_series(1, 3050) g;
         insert into delivery (message_id, endpoint_id, state, attempt_count, next_attempt_at)
         select m.id, e.id,
                case when (m.payload->>'n')::int <= 3000 then 'succeeded'
                     when (m.payload->>'n')::int <= 3020 then 'dead'
                     else 'pending' end::delivery_state,
                1, now()
           from message m, endpoint e;
         insert into attempt (delivery_id, message_id, endpoint_id, app_id, attempt, trigger,
                              outcome, response_status, duration_ms, created_at)
         select d.id, d.message_id, d.endpoint_id, e.app_id, 1, 'scheduled',
                case d.state when 'succeeded' then 'succeeded' when 'dead' then 'dead'
                             else 'retrying' end::attempt_outcome,
                case d.state when 'succeeded' then 200 else 500 end, 5, now()
           from delivery d join endpoint e on e.id = d.endpoint_id;",
        receiver.url()
    )))
    .execute(&old)
    .await
    .unwrap();
    let counts = async |pool: &PgPool| -> (i64, i64, i64, i64) {
        sqlx::query_as(
            "select (select count(*) from herald.message), (select count(*) from herald.delivery),
                    (select count(*) from herald.attempt),
                    (select count(*) from herald.delivery where state = 'dead')",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let before = counts(&old).await;
    assert_eq!(before, (3050, 3050, 3050, 20));
    let ids: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("select id, message_id from herald.delivery order by id")
            .fetch_all(&old)
            .await
            .unwrap();
    old.close().await;

    let app = spawn_app_on(url, &[]).await;
    // The 30 pending retries are delivered, and nothing else.
    receiver.wait_for(30, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.count(), 30);
    let after = counts(&app.pool).await;
    assert_eq!((after.0, after.1, after.3), (3050, 3050, 20));
    assert_eq!(
        after.2,
        3050 + 30,
        "every attempt kept, and the 30 new ones"
    );
    let kept: Vec<(uuid::Uuid, uuid::Uuid)> =
        sqlx::query_as("select id, message_id from herald.delivery order by id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(kept, ids, "every delivery, with its id");
    let pending = count(
        &app.pool,
        "select count(*) from herald.delivery where state <> 'succeeded' and state <> 'dead'",
    )
    .await;
    assert_eq!(pending, 0);

    // The old rows are the legacy partitions, their indexes the old ones (none was
    // built on them: every index of theirs has its old name).
    let in_legacy = count(
        &app.pool,
        "select count(*) from herald.message where tableoid = 'herald.message_legacy'::regclass",
    )
    .await;
    assert_eq!(in_legacy, 3050);
    for table in ["message_legacy", "delivery_legacy", "attempt_legacy"] {
        let indexes: Vec<String> = sqlx::query_scalar(
            "select c.relname::text from pg_index i join pg_class c on c.oid = i.indexrelid
              where i.indrelid = ('herald.' || $1)::regclass",
        )
        .bind(table)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        assert!(
            indexes.iter().all(|i| i.starts_with(table)),
            "{table}: {indexes:?}"
        );
    }
    assert_consistent(&app.pool).await;

    // The API reads them; the key is still honoured; a replay of an old message works.
    let (_, acme) = app.get("/apps/acme").await;
    let app_id = acme["id"].as_str().unwrap().to_owned();
    let (status, page) = app.get(&format!("/apps/{app_id}/messages?limit=250")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 250);
    let (status, again) = app
        .post(
            &format!("/apps/{app_id}/messages"),
            json!({"event_type": "invoice.paid", "payload": {"n": 0},
                   "idempotency_key": "in_1-paid"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again["payload"], json!({"n": 1}), "{again}");
    let old_msg: Value = page["data"][100].clone();
    let msg = old_msg["id"].as_str().unwrap();
    let (status, _) = app
        .post(&format!("/apps/{app_id}/messages/{msg}/replay"), json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    receiver.wait_for(31, Duration::from_secs(10)).await;
}

/// A delivery made live again while retention is about to remove its row keeps it: a
/// partition drop that waited for the replaying transaction counts again and moves it,
/// and the sweep of the default partition leaves a delivery a replay set pending.
#[tokio::test]
async fn a_row_made_live_while_retention_waits_for_it_is_kept() {
    let app = spawn_app_with(&SHORT).await;
    let receiver = Receiver::start().await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&app_id, "invoice.paid", json!({})).await;
    app.wait_for_message(&app_id, &msg, Duration::from_secs(10), all_delivered)
        .await;
    let suffix: String = sqlx::query_scalar(
        "select substring(tableoid::regclass::text from 9) from herald.message
          where id = substring($1 from 5)::uuid",
    )
    .bind(&msg)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let live = async |conn: &mut PgConnection| {
        sqlx::query("begin").execute(&mut *conn).await.unwrap();
        sqlx::query(
            "update herald.delivery set state = 'pending', next_attempt_at = now() + interval '1 hour'
              where message_id = substring($1 from 5)::uuid",
        )
        .bind(&msg)
        .execute(&mut *conn)
        .await
        .unwrap();
    };

    // The drop counts nothing live, waits for the replaying transaction's locks, and
    // finds the delivery pending once it has them.
    let mut replay = PgConnection::connect(&app.db_url).await.unwrap();
    live(&mut replay).await;
    let url = app.db_url.clone();
    let drop = tokio::spawn(async move {
        let mut conn = PgConnection::connect(&url).await.unwrap();
        sqlx::query_scalar::<_, String>(
            "select herald.drop_history_partition('message', $1, 10000)",
        )
        .bind(suffix)
        .fetch_one(&mut conn)
        .await
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("commit").execute(&mut replay).await.unwrap();
    let said = drop.await.unwrap();
    assert!(
        said.ends_with("1 messages still being delivered kept"),
        "{said}"
    );
    let (status, kept) = app.get(&format!("/apps/{app_id}/messages/{msg}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(deliveries_in(&kept, "pending"), "{kept:#}");

    // In the default partition now, past retention once it is finished: the sweep waits
    // for a replaying transaction and leaves what it made pending.
    sqlx::query("update herald.delivery set state = 'succeeded' where message_id = substring($1 from 5)::uuid")
        .bind(&msg)
        .execute(&app.pool)
        .await
        .unwrap();
    live(&mut replay).await;
    let url = app.db_url.clone();
    let sweep = tokio::spawn(async move {
        let mut conn = PgConnection::connect(&url).await.unwrap();
        // Everything in the default partition is past this cutoff.
        sqlx::query_scalar::<_, i64>(
            "select herald.sweep_history_default(now() + interval '1 hour')",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("commit").execute(&mut replay).await.unwrap();
    sweep.await.unwrap();
    let (status, kept) = app.get(&format!("/apps/{app_id}/messages/{msg}")).await;
    assert_eq!(status, StatusCode::OK, "the sweep removed a live message");
    assert!(deliveries_in(&kept, "pending"), "{kept:#}");
}
