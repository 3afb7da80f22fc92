//! Group commit for sends (issue 18): the `POST /messages` requests that arrive while a
//! batch is being written wait for each other, and are then stored together, in one
//! transaction by one statement (`herald.enqueue_many`). Each request gets its answer only
//! after that commit, so a 202 still means stored.
//!
//! Nothing waits on purpose: a writer takes what is queued when it is free, so a lone send
//! is written at once, and batches grow only with the load, while the writers are busy.
//!
//! One request's failure is its own. An unknown application is answered by the batch
//! itself. Any other error that PostgreSQL reports for the batch (a payload it will not
//! take, a key held by another transaction for longer than the batch may wait) rolled all of
//! it back, so each request is then sent again alone, as before there were batches, and
//! gets its own answer.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::db::messages::{self, Outgoing, Sent};
use crate::delivery::Direct;

/// Batches written at once. Measured (bench/README.md): one and two alike in the burst, two
/// a little ahead in fan-out, four behind in both (smaller batches, more transactions).
const WRITERS: usize = 2;
/// A batch holds at most this many messages...
const MAX_MESSAGES: usize = 256;
/// ...and stops growing once its payloads reach this many bytes.
const MAX_BYTES: usize = 4 << 20;
/// Requests waiting for a writer; more wait for room (the server bounds its requests).
const QUEUE: usize = 1024;

type Answer = sqlx::Result<Option<Sent>>;

struct Queued {
    message: Outgoing,
    answer: oneshot::Sender<Answer>,
}

/// Where the API hands its sends.
pub struct Sends {
    queue: mpsc::Sender<Queued>,
}

impl Sends {
    /// Starts the writers; they stop when the last handle is dropped.
    pub fn start(pool: PgPool, direct: Direct) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..WRITERS {
            tokio::spawn(write(waiting.clone(), pool.clone(), direct.clone()));
        }
        Self { queue }
    }

    /// Stores the message and its deliveries, as `db::messages::send` does; `None` when the
    /// application does not exist.
    pub async fn send(&self, message: Outgoing) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Queued { message, answer })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answered.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn write(waiting: Arc<Mutex<mpsc::Receiver<Queued>>>, pool: PgPool, direct: Direct) {
    let mut batch = Vec::new();
    loop {
        {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else {
                return;
            };
            let mut bytes = first.message.payload.len();
            batch.push(first);
            while batch.len() < MAX_MESSAGES && bytes < MAX_BYTES {
                let Ok(next) = waiting.try_recv() else { break };
                bytes += next.message.payload.len();
                batch.push(next);
            }
        }
        flush(&pool, &direct, &mut batch).await;
    }
}

async fn flush(pool: &PgPool, direct: &Direct, batch: &mut Vec<Queued>) {
    let messages = batch.iter().map(|q| &q.message);
    match messages::send_many(pool, messages, direct.offer()).await {
        Ok(sent) => {
            for (q, sent) in batch.drain(..).zip(sent) {
                let _ = q.answer.send(Ok(sent));
            }
        }
        // PostgreSQL refused the batch, so none of it was stored: each on its own, and
        // not waited for here, so that one that waits long (a held key) holds up no other
        // batch.
        Err(sqlx::Error::Database(_)) => {
            for q in batch.drain(..) {
                let (pool, direct) = (pool.clone(), direct.clone());
                tokio::spawn(async move {
                    let m = &q.message;
                    let sent = messages::send(
                        &pool,
                        &m.app,
                        &m.event_type,
                        &m.payload,
                        &m.channels,
                        m.idempotency_key.as_deref(),
                        direct.offer(),
                    )
                    .await;
                    let _ = q.answer.send(sent);
                });
            }
        }
        // Not known to be stored or not: each request is told, as a lone send would be.
        Err(e) => {
            for q in batch.drain(..) {
                let _ = q.answer.send(Err(copy(&e)));
            }
        }
    }
}

/// sqlx's errors are not `Clone`: what each request of a failed batch is told.
fn copy(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        other => sqlx::Error::Io(std::io::Error::other(other.to_string())),
    }
}
