//! The database as `/readyz` and `/metrics` report it, read in the background.
//!
//! Both routes are unauthenticated, so a flood of them must cost the database nothing
//! more: one task per process checks that the database answers (every second) and reads
//! the queue gauges (a `count(*)` over the queue, every `HERALD_METRICS_INTERVAL`), on
//! connections of its own, and the routes answer from what it last saw. Sends, claims and
//! the feed never wait behind a probe, and a probe never waits for their pool.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::db::dashboard::{self, QueueStats};

/// How often the database is asked whether it answers.
const READY_INTERVAL: Duration = Duration::from_secs(1);
/// A check that succeeded vouches for the database this long: a stalled checker does
/// not leave the process ready forever.
const READY_FOR: Duration = Duration::from_secs(3);
/// Longest wait for `select 1`: a database slower than this is not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for the queue gauges; they are on their own connection, so a slow count
/// delays only the next refresh.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// Gauges older than this many refresh intervals are left out of the exposition (the
/// database has not answered for that long), so `absent(herald_queue_depth)` alerts.
const STALE_AFTER_INTERVALS: u32 = 3;

#[derive(Clone)]
pub struct Probe(Arc<Shared>);

struct Shared {
    interval: Duration,
    seen: RwLock<Seen>,
}

#[derive(Default)]
struct Seen {
    ready_until: Option<Instant>,
    queue: Option<(QueueStats, Instant)>,
}

/// The queue gauges and when they were read.
#[derive(Clone, Copy, Debug)]
pub struct QueueReading {
    pub stats: QueueStats,
    pub age: Duration,
}

impl Probe {
    /// Reads both once before returning, so the first probe after start-up is answered
    /// from a real reading, then keeps them fresh until `cancel`.
    pub async fn spawn(pool: PgPool, interval: Duration, cancel: CancellationToken) -> Self {
        let probe = Self(Arc::new(Shared {
            interval,
            seen: RwLock::default(),
        }));
        tokio::join!(probe.check_ready(&pool), probe.read_queue(&pool));
        // Two loops, so a slow count never delays the readiness check behind it.
        let (p, db, c) = (probe.clone(), pool.clone(), cancel.clone());
        tokio::spawn(async move {
            every(READY_INTERVAL, &c, || p.check_ready(&db)).await;
        });
        let p = probe.clone();
        tokio::spawn(async move {
            every(interval, &cancel, || p.read_queue(&pool)).await;
            pool.close().await;
        });
        probe
    }

    /// Whether the database answered the last check, made at most a second or so ago.
    pub fn ready(&self) -> bool {
        self.seen()
            .ready_until
            .is_some_and(|until| Instant::now() < until)
    }

    /// The last queue gauges read, unless they are stale.
    pub fn queue(&self) -> Option<QueueReading> {
        let (stats, at) = self.seen().queue?;
        let age = at.elapsed();
        (age <= self.0.interval * STALE_AFTER_INTERVALS).then_some(QueueReading { stats, age })
    }

    fn seen(&self) -> std::sync::RwLockReadGuard<'_, Seen> {
        self.0.seen.read().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.0.seen.write().unwrap_or_else(|e| e.into_inner()));
    }

    async fn check_ready(&self, pool: &PgPool) {
        let answered = tokio::time::timeout(READY_TIMEOUT, sqlx::query("select 1").execute(pool))
            .await
            .is_ok_and(|r| r.is_ok());
        let until = answered.then(|| Instant::now() + READY_FOR);
        self.update(|seen| seen.ready_until = until);
    }

    async fn read_queue(&self, pool: &PgPool) {
        match tokio::time::timeout(QUEUE_TIMEOUT, dashboard::queue(pool)).await {
            Ok(Ok(stats)) => self.update(|seen| seen.queue = Some((stats, Instant::now()))),
            Ok(Err(e)) => warn!(error = %e, "metrics: reading the queue failed"),
            Err(_) => warn!("metrics: reading the queue timed out"),
        }
    }
}

/// Runs `f` every `period` (the first time after one period) until `cancel`.
async fn every<F: Future<Output = ()>>(
    period: Duration,
    cancel: &CancellationToken,
    mut f: impl FnMut() -> F,
) {
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => f().await,
        }
    }
}
