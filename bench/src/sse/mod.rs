//! The live-feed subscribers of the `burst sse` scenario: many `GET /api/v1/stream`
//! connections, each its own TCP connection speaking plain HTTP/1.1, all driven by one
//! thread of their own (so that their CPU time can be told apart from the driver's and the
//! receiver's, and so that they cannot starve them of the main runtime's workers).
//!
//! The client is deliberately cheap: it undoes the chunked transfer encoding, splits lines
//! with a SIMD byte search (`memchr`), and reads only the `event:` field and, of `attempt`
//! events, the transaction id at the start of the `id:` field (`<xid>-<seq>`) and the
//! `"duration_ms":` and `"created_at":"` fields, searched for backwards from the end of the
//! data line (they are the last fields but one). Each read from the socket is stamped once
//! with the wall clock; every event completed by that read arrived then.
//!
//! Two lags come of it. Each `attempt` event's (xid, arrival) is kept, compactly (see
//! [`Arrivals`]), so that the suite can look up PostgreSQL's commit timestamp of every
//! transaction afterwards: commit → arrival. And arrival − (created_at + duration_ms), the
//! end of the attempt's HTTP request, is kept per event: an upper bound of the same, which
//! needs nothing from the database.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Bytes read from a socket at once.
const READ_BUF: usize = 32 * 1024;

mod parse;
mod seen;

use parse::{Body, Parser};
pub use seen::Stats;

struct Shared {
    connected: AtomicUsize,
    failed: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// `attempt` events received so far, one counter per subscriber.
    attempts: Vec<AtomicU64>,
    /// The subscribers' thread id (0 until it runs).
    tid: AtomicU64,
}

/// Progress over all subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub min: u64,
    pub max: u64,
    pub sum: u64,
}

pub struct Subscribers {
    pub count: usize,
    /// The run's epoch, in µs since the Unix epoch: [`Arrivals`] count from it.
    pub epoch_us: i64,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<Vec<Stats>>,
}

impl Subscribers {
    /// Opens `count` subscriptions to `path_and_query` on their own thread; see
    /// [`Subscribers::wait_connected`].
    pub fn start(
        addr: SocketAddr,
        path_and_query: &str,
        token: &str,
        count: usize,
    ) -> anyhow::Result<Self> {
        let request: Arc<[u8]> = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
        )
        .into_bytes()
        .into();
        let shared = Arc::new(Shared {
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            attempts: (0..count).map(|_| AtomicU64::new(0)).collect(),
            tid: AtomicU64::new(0),
        });
        let epoch_us = now_us();
        let (stop, stop_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sse-subscribers".into())
            .spawn(move || {
                s.tid.store(crate::process::thread_id(), Ordering::Relaxed);
                runtime.block_on(async move {
                    let tasks: Vec<_> = (0..count)
                        .map(|i| {
                            tokio::spawn(subscribe(
                                i,
                                addr,
                                request.clone(),
                                s.clone(),
                                epoch_us,
                                stop_rx.clone(),
                            ))
                        })
                        .collect();
                    let mut all = Vec::with_capacity(count);
                    for t in tasks {
                        all.push(t.await.unwrap_or_else(|e| Stats {
                            error: Some(format!("subscriber task: {e}")),
                            ..Default::default()
                        }));
                    }
                    all
                })
            })
            .context("starting the subscribers' thread")?;
        Ok(Self {
            count,
            epoch_us,
            shared,
            stop,
            thread,
        })
    }

    /// Waits until every subscriber has its `200 OK`; fails on the first that does not.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if self.shared.failed.load(Ordering::Relaxed) > 0 {
                let error = self.shared.first_error.lock().unwrap().clone();
                bail!(
                    "{} of {} SSE subscribers failed to connect; first: {}",
                    self.shared.failed.load(Ordering::Relaxed),
                    self.count,
                    error.unwrap_or_default()
                );
            }
            let connected = self.shared.connected.load(Ordering::Relaxed);
            if connected == self.count {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "only {connected} of {} SSE subscribers connected within {timeout:?}",
                    self.count
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            min: u64::MAX,
            max: 0,
            sum: 0,
        };
        for a in &self.shared.attempts {
            let n = a.load(Ordering::Relaxed);
            p.min = p.min.min(n);
            p.max = p.max.max(n);
            p.sum += n;
        }
        if self.shared.attempts.is_empty() {
            p.min = 0;
        }
        p
    }

    /// Waits until every subscriber has `target` `attempt` events, or until nothing moved
    /// for 10 s (or, however slowly they still move, for 5 minutes).
    pub async fn wait_for(&self, target: u64) {
        let (waiting, mut last) = (Instant::now(), (self.progress(), Instant::now()));
        while last.0.min < target
            && last.1.elapsed() < Duration::from_secs(10)
            && waiting.elapsed() < Duration::from_secs(300)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.progress();
            if now.sum != last.0.sum {
                last = (now, Instant::now());
            }
        }
    }

    /// CPU seconds the subscribers' thread has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        crate::process::thread_cpu(self.shared.tid.load(Ordering::Relaxed))
    }

    /// Closes every connection and returns what each subscriber saw.
    pub async fn stop(self) -> anyhow::Result<Vec<Stats>> {
        let _ = self.stop.send(true);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the subscribers' thread panicked"))
    }
}

async fn subscribe(
    i: usize,
    addr: SocketAddr,
    request: Arc<[u8]>,
    shared: Arc<Shared>,
    epoch_us: i64,
    mut stop: watch::Receiver<bool>,
) -> Stats {
    let mut stats = Stats::default();
    let mut connected = false;
    let outcome = tokio::select! {
        r = follow(i, addr, &request, &shared, epoch_us, &mut stats, &mut connected) => r,
        _ = stop.changed() => Ok(()),
    };
    if let Err(e) = outcome {
        let e = format!("subscriber {i}: {e:#}");
        if !connected {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            shared.first_error.lock().unwrap().get_or_insert(e.clone());
        }
        stats.error = Some(e);
    }
    stats
}

/// One subscription, until the server ends it (or the caller stops waiting).
async fn follow(
    i: usize,
    addr: SocketAddr,
    request: &[u8],
    shared: &Shared,
    epoch_us: i64,
    stats: &mut Stats,
    connected: &mut bool,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(request).await?;

    let mut raw = vec![0u8; READ_BUF];
    let mut end = 0;
    let head_end = loop {
        if end == raw.len() {
            bail!("response head larger than {READ_BUF} bytes");
        }
        let n = stream.read(&mut raw[end..]).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        end += n;
        if let Some(p) = raw[..end].windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        let body = String::from_utf8_lossy(&raw[head_end..end]);
        bail!("{status}: {}", body.trim());
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    *connected = true;
    shared.connected.fetch_add(1, Ordering::Relaxed);

    let mut body = Body::new(chunked);
    let mut parser = Parser::new(epoch_us);
    let mut start = head_end;
    let mut arrived_us = now_us();
    loop {
        start += body.feed(&raw[start..end]);
        parser.parse(&mut body.data, arrived_us, stats);
        shared.attempts[i].store(stats.attempts, Ordering::Relaxed);
        if body.done {
            stats.ended = true;
            return Ok(());
        }
        if start == end {
            (start, end) = (0, 0);
        } else if start > 0 {
            raw.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        if end == raw.len() {
            bail!("unparseable chunked encoding");
        }
        let n = stream.read(&mut raw[end..]).await?;
        arrived_us = now_us();
        stats.bytes += n as u64;
        if n == 0 {
            stats.ended = true;
            return Ok(());
        }
        end += n;
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
