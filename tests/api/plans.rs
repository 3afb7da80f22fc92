//! Plans that stay on the indexes whatever the statistics say: every statement that inserts
//! deliveries checks them against their messages by index, and every removal deletes by
//! index, even in partitions vacuumed while empty (migration 0035 for the sends,
//! `db::plan_on_indexes` for replays, recovers and removals); and retention counts a
//! partition's live deliveries on its partial indexes (migration 0039). A connection plans such a check once and keeps it; planned as a
//! sequential scan of a partition believed empty, it then read the partition whole for
//! every delivery inserted until the next analyze.

use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use herald::db::removals::{self, RemovalState, Removed};
use herald::db::replays::{self, Refused};
use herald::domain::{AppId, EndpointId, MessageId};

use crate::helpers::{Receiver, TestServer, all_delivered, spawn_app};

/// Vacuums and analyzes the message and delivery partitions while they are empty
/// (`reltuples` 0), as an operator's VACUUM, `vacuumdb` after `pg_upgrade`, or autovacuum
/// against wraparound leaves the partitions made ahead.
async fn vacuum_empty(app: &TestServer) {
    let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("vacuum (analyze) herald.message, herald.delivery")
        .execute(&mut conn)
        .await
        .unwrap();
}

/// A new connection of Herald's own, with its settings (a connection keeps its plans, and
/// Herald's are generic from the first call).
async fn herald_connection(app: &TestServer) -> PgConnection {
    let pool = herald::db::connect(&app.db_url, 1).await.unwrap();
    pool.acquire().await.unwrap().detach()
}

/// Sequential scans of the message partitions by this transaction so far.
async fn message_scans(tx: &mut PgConnection) -> i64 {
    scans_of(tx, "herald.message").await
}

/// Sequential scans of `parent`'s partitions by this transaction so far.
async fn scans_of(tx: &mut PgConnection, parent: &str) -> i64 {
    sqlx::query_scalar(
        "select coalesce(sum(s.seq_scan), 0)::int8
           from pg_stat_xact_user_tables s
           join pg_inherits i on i.inhrelid = s.relid
          where i.inhparent = $1::regclass",
    )
    .bind(parent)
    .fetch_one(&mut *tx)
    .await
    .unwrap()
}

/// Sequential scans of the message and delivery partitions by this transaction so far.
async fn history_scans(tx: &mut PgConnection) -> i64 {
    scans_of(tx, "herald.message").await + scans_of(tx, "herald.delivery").await
}

#[tokio::test]
async fn a_batch_checks_its_keys_by_index_in_partitions_vacuumed_empty() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let app_id = app.acme_with_endpoint(&receiver).await;
    vacuum_empty(&app).await;
    // Sequential scans of the message partitions by 8 batches of 25 messages, each planned
    // on a connection of its own (a connection keeps its plans); `reset` plans them as
    // before 0035. Rolled back: the partitions stay empty for the next.
    let scans = async |reset: bool| -> i64 {
        let mut conn = PgConnection::connect(&app.db_url).await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        const RESET: [&str; 2] = [
            "alter function herald.enqueue_batch(text[], text[], text[], text[], text[], uuid,
                                                 float8, int, uuid[], int[])
             reset enable_seqscan",
            "alter function herald.enqueue_batch(text[], text[], text[], text[], text[], uuid,
                                                 float8, int, uuid[], int[])
             reset jit",
        ];
        for sql in RESET.into_iter().filter(|_| reset) {
            sqlx::query(sql).execute(&mut *tx).await.unwrap();
        }
        for _ in 0..8 {
            let stored: i64 = sqlx::query_scalar(
                "select count(*) filter (where endpoint_id is not null)
                   from herald.enqueue_batch(array_fill($1::text, array[25]),
                                             array_fill('invoice.paid'::text, array[25]),
                                             array_fill('{}'::text, array[25]),
                                             array_fill(''::text, array[25]),
                                             array_fill(null::text, array[25]),
                                             null, 30, 0, '{}', '{}')",
            )
            .bind(&app_id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            assert_eq!(stored, 25, "a delivery per message");
        }
        let scans = message_scans(&mut tx).await;
        tx.rollback().await.unwrap();
        scans
    };
    let before = scans(true).await;
    assert!(
        before > 0,
        "the control plans the checks as sequential scans ({before}): the test tests nothing"
    );
    assert_eq!(scans(false).await, 0, "no message partition is scanned");
    app.stop().await;
}

/// Messages that an endpoint has no delivery for, in partitions vacuumed empty: the
/// endpoint (`late`) existed but did not subscribe to their type when they were sent, and
/// does now. The setup both replay tests start from.
struct Late {
    app: TestServer,
    _receiver: Receiver,
    app_id: AppId,
    messages: Vec<MessageId>,
    late: EndpointId,
}

async fn late_endpoint() -> Late {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let app_id = app.acme_with_endpoint(&receiver).await;
    let (late, _) = app
        .create_endpoint(
            &app_id,
            json!({"url": receiver.url(), "event_types": ["invoice.created"]}),
        )
        .await;
    vacuum_empty(&app).await;
    // Stored after the vacuum: too few rows for autovacuum to analyze them again.
    let mut messages: Vec<MessageId> = Vec::new();
    for n in 0..12 {
        let id = app.send(&app_id, "invoice.paid", json!({"n": n})).await;
        messages.push(id.parse().unwrap());
    }
    let (status, body) = app
        .patch(
            &format!("/apps/{app_id}/endpoints/{late}"),
            json!({"event_types": ["invoice.paid"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    Late {
        app_id: app_id.parse().unwrap(),
        late: late.parse().unwrap(),
        app,
        _receiver: receiver,
        messages,
    }
}

impl Late {
    /// The control: the late endpoint's deliveries inserted by a plain statement, rolled
    /// back, scan the partition. Otherwise the case is not one that would, and the test
    /// tests nothing.
    async fn assert_a_plain_insert_scans(&self) {
        let mut conn = herald_connection(&self.app).await;
        let mut tx = conn.begin().await.unwrap();
        for &message in &self.messages {
            sqlx::query(
                "insert into delivery (id, message_id, endpoint_id, state, trigger,
                                       next_attempt_at)
                 values (uuid_v7_at($1), $1, $2, 'pending', 'replay', now())",
            )
            .bind(message)
            .bind(self.late)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        let scans = message_scans(&mut tx).await;
        tx.rollback().await.unwrap();
        assert!(
            scans > 0,
            "the control's checks are sequential scans ({scans}): the test tests nothing"
        );
    }
}

/// A replay that gives a message a delivery to an endpoint it had none for checks the new
/// delivery by index.
#[tokio::test]
async fn a_replay_checks_its_new_deliveries_by_index_in_partitions_vacuumed_empty() {
    let setup = late_endpoint().await;
    setup.assert_a_plain_insert_scans().await;
    let mut conn = herald_connection(&setup.app).await;
    let mut tx = conn.begin().await.unwrap();
    for &message in &setup.messages {
        let queued = replays::replay_message(&mut tx, message, None, Some(setup.late))
            .await
            .unwrap();
        let queued: Result<usize, Refused> = queued.map(|ids| ids.len());
        assert_eq!(queued, Ok(1), "a new delivery to the late endpoint");
    }
    assert_eq!(
        message_scans(&mut tx).await,
        0,
        "no message partition is scanned"
    );
    tx.rollback().await.unwrap();
    setup.app.stop().await;
}

/// A recover that gives the window's messages the deliveries its endpoint never got checks
/// them by index.
#[tokio::test]
async fn a_recover_checks_its_new_deliveries_by_index_in_partitions_vacuumed_empty() {
    let setup = late_endpoint().await;
    setup.assert_a_plain_insert_scans().await;
    let mut conn = herald_connection(&setup.app).await;
    let mut tx = conn.begin().await.unwrap();
    let worker = Uuid::now_v7();
    let since = Utc::now() - chrono::Duration::hours(1);
    let until = Utc::now() + chrono::Duration::minutes(1);
    let recovery =
        replays::create_recovery(&mut tx, setup.app_id, setup.late, since, until, worker)
            .await
            .unwrap()
            .expect("the endpoint can be sent to");
    assert_eq!(recovery.total, 12, "a delivery missing for every message");
    // Counted from here: the recover's own batch.
    let before = message_scans(&mut tx).await;
    let progress = replays::recover_batch(&mut tx, recovery.id, worker, 100)
        .await
        .unwrap()
        .expect("still held");
    assert_eq!((progress.queued, progress.finished), (12, true));
    assert_eq!(
        message_scans(&mut tx).await - before,
        0,
        "no message partition is scanned"
    );
    tx.rollback().await.unwrap();
    setup.app.stop().await;
}

/// A removal deletes an application's deliveries and messages by index, the foreign key's
/// cascade from each message to its deliveries included. The control deletes the same rows
/// with two plain statements: they scan the partitions.
#[tokio::test]
async fn a_removal_deletes_by_index_in_partitions_vacuumed_empty() {
    let setup = late_endpoint().await;
    let app_key = setup.app_id.to_string();
    for message in &setup.messages {
        setup
            .app
            .wait_for_message(
                &app_key,
                &message.to_string(),
                Duration::from_secs(10),
                all_delivered,
            )
            .await;
    }
    let control = {
        let mut conn = herald_connection(&setup.app).await;
        let mut tx = conn.begin().await.unwrap();
        for sql in [
            "delete from delivery
              where endpoint_id in (select id from endpoint where app_id = $1)",
            "delete from message where app_id = $1",
        ] {
            sqlx::query(sql)
                .bind(setup.app_id)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        let scans = history_scans(&mut tx).await;
        tx.rollback().await.unwrap();
        scans
    };
    assert!(
        control > 0,
        "the control's deletions are sequential scans ({control}): the test tests nothing"
    );

    // Queued in the test's own transaction: the server's remover never sees it.
    let mut conn = herald_connection(&setup.app).await;
    let mut tx = conn.begin().await.unwrap();
    removals::queue_app(&mut tx, setup.app_id)
        .await
        .unwrap()
        .expect("queued");
    let mut removed = Removed::default();
    for _ in 0..10 {
        let batch = removals::step(&mut tx, removals::BATCH)
            .await
            .unwrap()
            .expect("the removal is there");
        assert!(!batch.waiting, "nothing is in flight");
        if batch.removal.state == RemovalState::Done {
            removed = batch.removal.removed;
            break;
        }
    }
    assert_eq!(
        (removed.messages, removed.deliveries),
        (12, 12),
        "every message and its delivery removed"
    );
    assert_eq!(history_scans(&mut tx).await, 0, "no partition is scanned");
    tx.rollback().await.unwrap();
    setup.app.stop().await;
}

/// Retention counts a partition's live deliveries on the partial indexes (migration 0039):
/// `state in ('pending', 'in_flight')`, which no index answers, read the whole partition,
/// under ACCESS EXCLUSIVE on all history the second time. The control counts that way.
#[tokio::test]
async fn retention_counts_a_partitions_live_deliveries_by_index() {
    let app = spawn_app().await;
    let receiver = Receiver::start().await;
    let (app_id, _, _) = app.app_with_endpoint(&receiver).await;
    let msg = app.send(&app_id, "invoice.paid", json!({})).await;
    app.wait_for_message(&app_id, &msg, Duration::from_secs(10), all_delivered)
        .await;
    sqlx::query(
        "update herald.delivery set state = 'pending', next_attempt_at = now() + interval '1 hour'
          where message_id = substring($1 from 5)::uuid",
    )
    .bind(&msg)
    .execute(&app.pool)
    .await
    .unwrap();
    let suffix: String = sqlx::query_scalar(
        "select substring(tableoid::regclass::text from 9) from herald.message
          where id = substring($1 from 5)::uuid",
    )
    .bind(&msg)
    .fetch_one(&app.pool)
    .await
    .unwrap();

    let mut conn = herald_connection(&app).await;
    let mut tx = conn.begin().await.unwrap();
    // The suffix is Herald's own, read from the catalog.
    let live: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select count(*) from delivery_{suffix} where state in ('pending', 'in_flight')"
    )))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(live, 1);
    let control = history_scans(&mut tx).await;
    tx.rollback().await.unwrap();
    assert!(
        control > 0,
        "the control's count is a sequential scan ({control}): the test tests nothing"
    );

    let mut conn = herald_connection(&app).await;
    let mut tx = conn.begin().await.unwrap();
    let said: String = sqlx::query_scalar("select herald.drop_history_partition('message', $1, 0)")
        .bind(&suffix)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert!(said.starts_with("kept message partition"), "{said}");
    assert!(
        said.ends_with(": 1 deliveries still pending or in flight"),
        "{said}"
    );
    assert_eq!(history_scans(&mut tx).await, 0, "no partition is scanned");
    tx.rollback().await.unwrap();
    app.stop().await;
}
