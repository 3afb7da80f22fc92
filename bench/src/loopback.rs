//! The control of `burst sse`: the same bytes to the same subscribers, without Herald.
//!
//! A minimal SSE server on a thread of its own: every `every`, it turns the deliveries the
//! receiver counted since its last tick into two events each (a `message.created` and an
//! `attempt`, as Herald's feed does for a message to one endpoint), of `event_bytes` bytes
//! on average, builds them into one HTTP chunk, and writes that same chunk, shared, to
//! every connection. No database, no rendering, no per-subscriber work beyond the write:
//! about the least any server can do to send those bytes. Run during a burst, the drop in
//! deliveries/s it causes is what the bytes alone cost on this machine, whatever the
//! server; what `burst sse` loses beyond it is Herald's own.
//!
//! Each `attempt` event's `created_at` is the time its chunk was built, with a
//! `duration_ms` of 0, so the subscribers' request end → arrival reads as build → arrival:
//! the transport's and the client's part of the feed's lag.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

/// Chunks buffered for a connection before it counts as lagging (it then skips ahead).
const BUFFER: usize = 1024;

pub struct Blaster {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    tid: Arc<AtomicU64>,
    /// Chunks a connection missed because it fell behind.
    skipped: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Blaster {
    /// `delivered` is polled every `every`; each new delivery becomes two events.
    pub fn start(
        event_bytes: usize,
        every: Duration,
        delivered: impl Fn() -> usize + Send + 'static,
    ) -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, mut stop_rx) = watch::channel(false);
        let tid = Arc::new(AtomicU64::new(0));
        let skipped = Arc::new(AtomicU64::new(0));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (t, s) = (tid.clone(), skipped.clone());
        let thread = std::thread::Builder::new()
            .name("sse-control".into())
            .spawn(move || {
                t.store(crate::process::thread_id(), Ordering::Relaxed);
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    let (chunks, _) = broadcast::channel::<Bytes>(BUFFER);
                    let accepting = chunks.clone();
                    tokio::spawn(async move {
                        while let Ok((conn, _)) = listener.accept().await {
                            tokio::spawn(serve(conn, accepting.subscribe(), s.clone()));
                        }
                    });
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut frames = Frames::new(event_bytes);
                    let mut seen = delivered();
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {},
                            _ = stop_rx.changed() => break,
                        }
                        let now = delivered();
                        if now > seen {
                            let _ = chunks.send(frames.chunk(now - seen));
                            seen = now;
                        }
                    }
                })
            })
            .context("starting the control's thread")?;
        Ok(Self {
            addr,
            stop,
            tid,
            skipped,
            thread,
        })
    }

    /// CPU seconds the server's thread has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        crate::process::thread_cpu(self.tid.load(Ordering::Relaxed))
    }

    /// Chunks connections skipped because they fell behind (0 if the client kept up).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// One connection: read the request head, answer `200` chunked, then write every chunk.
async fn serve(
    mut conn: TcpStream,
    mut chunks: broadcast::Receiver<Bytes>,
    skipped: Arc<AtomicU64>,
) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    conn.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
          transfer-encoding: chunked\r\n\r\n",
    )
    .await?;
    loop {
        match chunks.recv().await {
            Ok(chunk) => conn.write_all(&chunk).await?,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                skipped.fetch_add(n, Ordering::Relaxed);
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Builds chunks of frames shaped like Herald's.
struct Frames {
    event_bytes: usize,
    seq: u64,
}

impl Frames {
    fn new(event_bytes: usize) -> Self {
        Self {
            event_bytes,
            seq: 0,
        }
    }

    /// `deliveries` × (`message.created`, `attempt`), as one HTTP chunk.
    fn chunk(&mut self, deliveries: usize) -> Bytes {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut body = String::with_capacity(deliveries * 2 * (self.event_bytes + 16));
        for _ in 0..deliveries {
            self.seq += 1;
            let id = format!("{:032x}", self.seq);
            // Both frames together make 2 × event_bytes; padding goes in the payload.
            let attempt = format!(
                "id: {seq}-2\nevent: attempt\ndata: {{\"id\":\"att_{id}\",\"delivery_id\":\
                 \"dlv_{id}\",\"message_id\":\"msg_{id}\",\"endpoint_id\":\"ep_{id}\",\
                 \"app_id\":\"app_{id}\",\"event_type\":\"bench.event\",\"attempt\":1,\
                 \"trigger\":\"scheduled\",\"outcome\":\"succeeded\",\"response_status\":204,\
                 \"response_body\":null,\"error_kind\":null,\"error\":null,\"duration_ms\":0,\
                 \"created_at\":\"{now}\",\"next_attempt_at\":null}}\n\n",
                seq = self.seq,
            );
            let created_head = format!(
                "id: {seq}-1\nevent: message.created\ndata: {{\"id\":\"msg_{id}\",\"app_id\":\
                 \"app_{id}\",\"event_type\":\"bench.event\",\"created_at\":\"{now}\",\
                 \"payload\":{{\"pad\":\"",
                seq = self.seq,
            );
            let tail = "\"}}\n\n";
            let pad = (2 * self.event_bytes)
                .saturating_sub(attempt.len() + created_head.len() + tail.len());
            body.push_str(&created_head);
            body.extend(std::iter::repeat_n('x', pad));
            body.push_str(tail);
            body.push_str(&attempt);
        }
        Bytes::from(format!("{:x}\r\n{body}\r\n", body.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_holds_two_events_of_the_asked_size_per_delivery() {
        let chunk = Frames::new(700).chunk(3);
        let text = std::str::from_utf8(&chunk).unwrap();
        let (size, rest) = text.split_once("\r\n").unwrap();
        let body = rest.strip_suffix("\r\n").unwrap();
        assert_eq!(usize::from_str_radix(size, 16).unwrap(), body.len());
        assert_eq!(body.len(), 3 * 2 * 700);
        assert_eq!(body.matches("event: attempt\n").count(), 3);
        assert_eq!(body.matches("event: message.created\n").count(), 3);
        assert_eq!(body.matches("\n\n").count(), 6);
    }
}
