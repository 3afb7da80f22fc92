//! History partitions (migration 0016): created ahead of time, dropped whole once past
//! retention. The steps are SQL functions, each run in a transaction of its own, so a
//! process that dies half-way leaves either the step done or nothing.

use std::time::Duration;

use sqlx::PgPool;

/// How the history is cut and how long it is kept.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub interval: Duration,
    pub retention: Duration,
}

impl Layout {
    /// Partitions exist this far ahead of now, so a partition is created long before a
    /// row needs it (rows with no partition wait in the default one, and move when it is
    /// made).
    pub fn ahead(&self) -> Duration {
        self.interval * 3
    }
}

/// Messages of a partition past retention that may still be pending or in flight when it
/// is dropped: they move to the default partition under the tables' exclusive locks, so
/// more than this keeps the partition until fewer are left.
pub const MAX_LIVE_MOVED: i64 = 10_000;
/// Longest a step waits for a lock: it takes the history tables' exclusive locks, which
/// every send and claim would queue behind meanwhile. Shorter than deadlock_timeout, so
/// in a lock cycle with a send it is this step that gives way.
const LOCK_TIMEOUT: &str = "200ms";
/// Steps of one call: each creates or drops one partition, or removes a small batch.
const MAX_STEPS: usize = 50;
/// Tries of a step that could not get its locks in time.
const LOCK_TRIES: u32 = 5;

/// What one step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Created or dropped a partition, or removed a batch.
    Did(String),
    /// A partition past retention was kept for its live deliveries.
    Kept(String),
    /// Another process is managing the history (or migrating).
    Busy,
}

/// Runs steps until there is nothing to do (or another process is at it), and says what
/// was done.
pub async fn manage(pool: &PgPool, layout: Layout) -> sqlx::Result<Vec<Step>> {
    let mut steps = Vec::new();
    // The dashboard's per-minute counts (migration 0017) are kept two days, whatever the
    // retention: the views read 24 hours at most. Any process may prune them.
    let pruned: i64 = sqlx::query_scalar("select herald.prune_rollups()")
        .fetch_one(pool)
        .await?;
    if pruned > 0 {
        steps.push(Step::Did(format!(
            "removed {pruned} per-minute counts older than two days"
        )));
    }
    // Idempotency keys past the retention (the window is at most it).
    let forgotten: i64 =
        sqlx::query_scalar("select herald.prune_idempotency_keys(make_interval(secs => $1))")
            .bind(layout.retention.as_secs_f64())
            .fetch_one(pool)
            .await?;
    if forgotten > 0 {
        steps.push(Step::Did(format!(
            "forgot {forgotten} idempotency keys past retention"
        )));
    }
    // Finished removals (src/db/removals.rs) are kept as long as the history they removed.
    let removals = super::removals::prune(pool, layout.retention).await?;
    if removals > 0 {
        steps.push(Step::Did(format!(
            "forgot {removals} finished removals past retention"
        )));
    }
    // A floor left as it was is never too high (only this raises it), so a turn whose
    // refresh found the floor's row busy goes on with its steps.
    match refresh_live_floor(pool).await {
        Err(e) if lock_timed_out(&e) => {}
        other => other?,
    }
    while steps.len() < MAX_STEPS {
        match step(pool, layout).await? {
            None => break,
            Some(Step::Did(what)) => steps.push(Step::Did(what)),
            Some(last) => {
                steps.push(last);
                break;
            }
        }
    }
    Ok(steps)
}

/// Recomputes where live deliveries start (migration 0016), after a partition's last
/// live delivery ended or a row was made live without lowering it.
async fn refresh_live_floor(pool: &PgPool) -> sqlx::Result<()> {
    let mut tx = begin_bounded(pool).await?;
    sqlx::query("select herald.refresh_live_floor()")
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// A transaction whose every lock wait ends after [`LOCK_TIMEOUT`].
async fn begin_bounded(pool: &PgPool) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "set local lock_timeout = '{LOCK_TIMEOUT}'"
    )))
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// Whether `e` is a lock wait that ran out (lock_not_available): the tables were busy,
/// and the next turn tries again.
pub fn lock_timed_out(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(e) if e.code().as_deref() == Some("55P03"))
}

async fn step(pool: &PgPool, layout: Layout) -> sqlx::Result<Option<Step>> {
    let mut tries = 0;
    loop {
        tries += 1;
        match try_step(pool, layout).await {
            Err(e) if lock_timed_out(&e) && tries < LOCK_TRIES => {
                let pause = 50 + rand::random_range(0..200);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            other => return other,
        }
    }
}

async fn try_step(pool: &PgPool, layout: Layout) -> sqlx::Result<Option<Step>> {
    let mut tx = begin_bounded(pool).await?;
    let done: Option<String> = sqlx::query_scalar(
        "select herald.manage_history(make_interval(secs => $1), make_interval(secs => $2),
                                      make_interval(secs => $3), $4)",
    )
    .bind(layout.interval.as_secs_f64())
    .bind(layout.ahead().as_secs_f64())
    .bind(layout.retention.as_secs_f64())
    .bind(MAX_LIVE_MOVED)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.map(|what| match what.as_str() {
        "busy" => Step::Busy,
        _ if what.starts_with("kept") => Step::Kept(what),
        _ => Step::Did(what),
    }))
}
