//! Group commit for sends (issue 18): the `POST /messages` requests that arrive while a
//! batch is being written wait for each other, and are then stored together, in one
//! transaction by one statement (`herald.enqueue_batch`). Each request gets its answer only
//! after that commit, so a 202 still means stored.
//!
//! Nothing waits on purpose: a writer takes what is queued when it is free, so a lone send
//! is written at once, and batches grow only with the load, while the writers are busy.
//!
//! One request's failure is its own. An unknown application is answered by the batch
//! itself. An error PostgreSQL reports about the batch's data or locks (a value it will not
//! take, a key held by another transaction for longer than the batch may wait, a deadlock)
//! rolled all of it back, so each request is then sent again alone, as before there were
//! batches, and gets its own answer.
//!
//! One tenant's batch does not hold up the others for long: a batch stops growing at
//! [`MAX_DELIVERIES`] deliveries, estimated from what each application's last message
//! reached, so an application with a thousand endpoints gets a few messages a batch, not
//! hundreds of thousands of deliveries in one statement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};

use sqlx::PgPool;
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

use crate::db::messages::{self, Outgoing, Sent};
use crate::delivery::Direct;
use crate::respawn::respawning;

/// Batches written at once. Measured (bench/README.md): one and two alike in the burst, two
/// a little ahead in fan-out, four behind in both (smaller batches, more transactions).
const WRITERS: usize = 2;
/// A batch holds at most this many messages...
const MAX_MESSAGES: usize = 256;
/// ...and stops growing once its payloads reach this many bytes...
const MAX_BYTES: usize = 4 << 20;
/// ...or its deliveries, as estimated, this many.
const MAX_DELIVERIES: usize = 4096;
/// Requests waiting for a writer; more wait for room (the server bounds its requests).
const QUEUE: usize = 1024;
/// Sends of a refused batch, resent alone, that may hold a database connection at once:
/// one waiting long on a held key must not take the whole pool.
const RESENDS: usize = 4;
/// Applications whose last fan-out is remembered; past it the estimates start over.
const ESTIMATES: usize = 10_000;

type Answer = sqlx::Result<Option<Sent>>;

struct Queued {
    message: Outgoing,
    answer: oneshot::Sender<Answer>,
}

/// Where the API hands its sends.
pub struct Sends {
    queue: mpsc::Sender<Queued>,
}

/// What the writers share.
struct Writer {
    waiting: Mutex<mpsc::Receiver<Queued>>,
    pool: PgPool,
    direct: Direct,
    /// Deliveries each application's last stored message got.
    fan_out: SyncMutex<HashMap<String, usize>>,
    resends: Arc<Semaphore>,
}

impl Sends {
    /// Starts the writers; they stop when the last handle is dropped.
    pub fn start(pool: PgPool, direct: Direct) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        let writer = Arc::new(Writer {
            waiting: Mutex::new(waiting),
            pool,
            direct,
            fan_out: SyncMutex::new(HashMap::new()),
            resends: Arc::new(Semaphore::new(RESENDS)),
        });
        for _ in 0..WRITERS {
            // A writer that panics loses only its batch: those requests get an error, stored
            // or not, as a broken connection would leave them. The queue and the other
            // writer go on, and this one is started again.
            let writer = writer.clone();
            tokio::spawn(respawning("send writer", move || writer.clone().write()));
        }
        Self { queue }
    }

    /// Stores the message and its deliveries, as `db::messages::send` does, and hands the
    /// deliveries claimed for this process to its workers; `None` when the application
    /// does not exist.
    pub async fn send(&self, message: Outgoing) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Queued { message, answer })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answered.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

impl Writer {
    async fn write(self: Arc<Self>) {
        let mut batch = Vec::new();
        // What did not fit in the last batch: the first of the next.
        let mut next: Option<Queued> = None;
        loop {
            {
                let mut waiting = self.waiting.lock().await;
                let (mut bytes, mut deliveries) = (0, 0);
                loop {
                    let item = match next.take() {
                        Some(item) => item,
                        None if batch.is_empty() => match waiting.recv().await {
                            Some(item) => item,
                            None => return,
                        },
                        None => match waiting.try_recv() {
                            Ok(item) => item,
                            Err(_) => break,
                        },
                    };
                    // Its request is gone (the client left, or timed out): it was never
                    // answered, so it is not stored either.
                    if item.answer.is_closed() {
                        continue;
                    }
                    let size = item.message.payload.len();
                    let reach = self.estimate(&item.message.app);
                    if !batch.is_empty()
                        && (bytes + size > MAX_BYTES || deliveries + reach > MAX_DELIVERIES)
                    {
                        next = Some(item);
                        break;
                    }
                    bytes += size;
                    deliveries += reach;
                    batch.push(item);
                    if batch.len() == MAX_MESSAGES {
                        break;
                    }
                }
            }
            self.flush(&mut batch).await;
        }
    }

    /// Deliveries a message of `app` is expected to make (1 for an application not seen).
    fn estimate(&self, app: &str) -> usize {
        let fan_out = self.fan_out.lock().expect("fan-out estimates poisoned");
        fan_out.get(app).copied().unwrap_or(1).max(1)
    }

    fn learn(&self, app: &str, sent: &Sent) {
        let reached = sent.claimed.len() + sent.queued_for.len();
        let mut fan_out = self.fan_out.lock().expect("fan-out estimates poisoned");
        // Allocates only for an application not seen before.
        if let Some(known) = fan_out.get_mut(app) {
            *known = reached;
            return;
        }
        if fan_out.len() >= ESTIMATES {
            fan_out.clear();
        }
        fan_out.insert(app.to_owned(), reached);
    }

    async fn flush(&self, batch: &mut Vec<Queued>) {
        // A batch of one is what herald.enqueue is for: its one statement costs less than
        // the batch's (measured: the low-load scenario, 4 senders, mostly sends alone). Not
        // with a key, which could wait on another transaction without the batch's lock
        // timeout and hold this writer up.
        if let [only] = batch.as_slice()
            && only.message.idempotency_key.is_none()
            && let Some(q) = batch.pop()
        {
            let sent = alone(&self.pool, &self.direct, &q.message).await;
            if let Ok(Some(sent)) = &sent {
                self.learn(&q.message.app, sent);
            }
            let _ = q.answer.send(sent);
            return;
        }
        let messages = batch.iter().map(|q| &q.message);
        let sent = messages::send_many(&self.pool, messages, self.direct.offer()).await;
        self.answer(batch, sent);
    }

    /// Answers the batch's requests with what storing it gave.
    fn answer(&self, batch: &mut Vec<Queued>, stored: sqlx::Result<Vec<Option<Sent>>>) {
        match stored {
            Ok(sent) => {
                for (q, sent) in batch.drain(..).zip(sent) {
                    if let Some(sent) = &sent {
                        // Committed: the claimed deliveries go to the workers now.
                        self.direct.dispatch(sent);
                        self.learn(&q.message.app, sent);
                    }
                    let _ = q.answer.send(Ok(sent));
                }
            }
            // PostgreSQL refused the batch over its data or its locks, so none of it was
            // stored: each on its own, and not waited for here, so that one that waits long
            // (a held key) holds up no other batch.
            Err(sqlx::Error::Database(e)) if resend_alone(e.code().as_deref()) => {
                for q in batch.drain(..) {
                    let (pool, direct, resends) =
                        (self.pool.clone(), self.direct.clone(), self.resends.clone());
                    tokio::spawn(async move {
                        let Ok(_turn) = resends.acquire().await else {
                            return;
                        };
                        let _ = q.answer.send(alone(&pool, &direct, &q.message).await);
                    });
                }
            }
            // Not known to be stored or not (the connection broke), or the database is
            // unavailable: each request is told, as a lone send would be.
            Err(e) => {
                for q in batch.drain(..) {
                    let _ = q.answer.send(Err(copy(&e)));
                }
            }
        }
    }
}

/// One message stored on its own, as before there were batches (`herald.enqueue`), and its
/// claimed deliveries handed to the workers.
async fn alone(pool: &PgPool, direct: &Direct, m: &Outgoing) -> Answer {
    let sent = messages::send(
        pool,
        &m.app,
        &m.event_type,
        &m.payload,
        &m.channels,
        m.idempotency_key.as_deref(),
        direct.offer(),
    )
    .await;
    if let Ok(Some(sent)) = &sent {
        direct.dispatch(sent);
    }
    sent
}

/// The SQLSTATE classes of a batch that is worth sending again message by message: data
/// exceptions (22), integrity constraints (23), transaction rollbacks such as deadlocks
/// (40), program limits that one value can reach (54: a JSON text nested too deep for
/// PostgreSQL's parser), lock timeouts (55) and a PL/pgSQL exception (P0). Not a database
/// going away.
fn resend_alone(code: Option<&str>) -> bool {
    code.is_some_and(|c| {
        ["22", "23", "40", "54", "55", "P0"]
            .iter()
            .any(|k| c.starts_with(k))
    })
}

/// sqlx's errors are not `Clone`: what each request of a failed batch is told.
fn copy(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        other => sqlx::Error::Io(std::io::Error::other(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::resend_alone;

    #[test]
    fn only_data_and_lock_errors_are_sent_again_alone() {
        for code in ["22021", "23505", "40P01", "54001", "55P03", "P0001"] {
            assert!(resend_alone(Some(code)), "{code}");
        }
        for code in ["57P01", "08006", "53300", "XX000"] {
            assert!(!resend_alone(Some(code)), "{code}");
        }
        assert!(!resend_alone(None));
    }
}
