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
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use memchr::memmem::FinderRev;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Bytes read from a socket at once.
const READ_BUF: usize = 32 * 1024;

/// What one subscriber saw.
#[derive(Debug, Default)]
pub struct Stats {
    /// `attempt` events.
    pub attempts: u64,
    /// Other events with data (`message.created`, ...).
    pub other_events: u64,
    /// `event: lagged` frames.
    pub lagged: u64,
    /// `attempt` events whose `created_at` or `duration_ms` could not be read.
    pub unparsed: u64,
    /// Arrival − (created_at + duration_ms) of each `attempt` event, in microseconds.
    pub lags_us: Vec<u32>,
    /// Events that arrived before created_at + duration_ms (counted as 0 in `lags_us`).
    pub early: u64,
    /// (xid, arrival) of each `attempt` event with an xid in its `id:` line.
    pub arrivals: Arrivals,
    /// `attempt` events without a readable xid (or arriving too late to record).
    pub no_xid: u64,
    /// Why the subscription failed, if it did.
    pub error: Option<String>,
    /// The server ended the stream before it was stopped.
    pub ended: bool,
    /// Bytes read after the response head.
    pub bytes: u64,
}

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
                s.tid.store(thread_id(), Ordering::Relaxed);
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
        match self.shared.tid.load(Ordering::Relaxed) {
            0 => 0.0,
            tid => crate::suite::cpu_of(&format!("self/task/{tid}")),
        }
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

/// Undoes HTTP/1.1 chunked transfer encoding (or passes the bytes through).
struct Body {
    chunked: bool,
    state: Chunk,
    /// The decoded body not yet parsed.
    data: Vec<u8>,
    /// The last chunk was seen.
    done: bool,
}

#[derive(Clone, Copy)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// This many data bytes to go.
    Data(usize),
    /// This many bytes of the CRLF after the data to go.
    Crlf(usize),
}

impl Body {
    fn new(chunked: bool) -> Self {
        Self {
            chunked,
            state: Chunk::Size,
            data: Vec::with_capacity(4096),
            done: false,
        }
    }

    /// Decodes what it can of `input`; returns how many bytes it used (an incomplete
    /// chunk-size line is left for the next call).
    fn feed(&mut self, input: &[u8]) -> usize {
        if !self.chunked {
            self.data.extend_from_slice(input);
            return input.len();
        }
        let mut rest = input;
        while !rest.is_empty() && !self.done {
            match self.state {
                Chunk::Size => {
                    let Some(nl) = find_byte(b'\n', rest) else {
                        break;
                    };
                    let line = &rest[..nl];
                    rest = &rest[nl + 1..];
                    let hex = line
                        .split(|&b| b == b';' || b == b'\r')
                        .next()
                        .unwrap_or(b"");
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| usize::from_str_radix(h.trim(), 16).ok());
                    match size {
                        Some(0) => self.done = true,
                        Some(n) => self.state = Chunk::Data(n),
                        // Not chunked after all: nothing sensible to do but stop.
                        None => self.done = true,
                    }
                }
                Chunk::Data(left) => {
                    let n = left.min(rest.len());
                    self.data.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    self.state = if n == left {
                        Chunk::Crlf(2)
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::Crlf(left) => {
                    let n = left.min(rest.len());
                    rest = &rest[n..];
                    self.state = if n == left {
                        Chunk::Size
                    } else {
                        Chunk::Crlf(left - n)
                    };
                }
            }
        }
        input.len() - rest.len()
    }
}

/// Reads events line by line; a frame may come in any number of pieces, and one piece may
/// hold any number of frames.
struct Parser {
    /// [`Subscribers::epoch_us`].
    epoch_us: i64,
    frame: Frame,
}

/// The event being read.
#[derive(Default)]
struct Frame {
    kind: Kind,
    has_data: bool,
    /// The transaction id from the `id:` line (`<xid>-<seq>`); `lagged` frames have none.
    xid: Option<i64>,
    /// created_at + duration_ms of an `attempt` event, in µs since the epoch.
    request_end_us: Option<i64>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No `event:` field (yet).
    #[default]
    Unnamed,
    Attempt,
    Lagged,
    Other,
}

impl Parser {
    fn new(epoch_us: i64) -> Self {
        Self {
            epoch_us,
            frame: Frame::default(),
        }
    }

    /// Consumes every complete line of `buf`, counting the events they end.
    fn parse(&mut self, buf: &mut Vec<u8>, arrived_us: i64, stats: &mut Stats) {
        let mut pos = 0;
        while let Some(nl) = find_byte(b'\n', &buf[pos..]) {
            let line = &buf[pos..pos + nl];
            pos += nl + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let frame = &mut self.frame;
            if line.is_empty() {
                self.dispatch(arrived_us, stats);
            } else if let Some(kind) = line.strip_prefix(b"event:") {
                frame.kind = match kind.strip_prefix(b" ").unwrap_or(kind) {
                    b"attempt" => Kind::Attempt,
                    b"lagged" => Kind::Lagged,
                    _ => Kind::Other,
                };
            } else if line.starts_with(b"data:") {
                frame.has_data = true;
                if matches!(frame.kind, Kind::Attempt | Kind::Unnamed) {
                    frame.request_end_us = request_end_us(line);
                }
            } else if let Some(id) = line.strip_prefix(b"id:") {
                frame.xid = xid_of(id.strip_prefix(b" ").unwrap_or(id));
            }
            // `:` comments (keep-alives) need nothing.
        }
        buf.drain(..pos);
    }

    fn dispatch(&mut self, arrived_us: i64, stats: &mut Stats) {
        let frame = std::mem::take(&mut self.frame);
        match frame.kind {
            Kind::Attempt => {
                stats.attempts += 1;
                match frame.request_end_us {
                    Some(end) => {
                        let lag = arrived_us - end;
                        if lag < 0 {
                            stats.early += 1;
                        }
                        stats.lags_us.push(lag.clamp(0, i64::from(u32::MAX)) as u32);
                    }
                    None => stats.unparsed += 1,
                }
                let since_epoch = u32::try_from(arrived_us - self.epoch_us).ok();
                match (frame.xid, since_epoch) {
                    (Some(xid), Some(at)) if stats.arrivals.push(xid, at) => {}
                    _ => stats.no_xid += 1,
                }
            }
            Kind::Lagged => stats.lagged += 1,
            Kind::Other | Kind::Unnamed => {
                if frame.has_data {
                    stats.other_events += 1;
                }
            }
        }
    }
}

/// The transaction id of an event id, `<xid>-<seq>` (both decimal).
fn xid_of(id: &[u8]) -> Option<i64> {
    let n = id.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 || n > 18 || id.get(n) != Some(&b'-') {
        return None;
    }
    Some(
        id[..n]
            .iter()
            .fold(0i64, |v, &b| v * 10 + i64::from(b - b'0')),
    )
}

/// The (xid, arrival) of every `attempt` event one subscriber received, in 8 bytes an
/// event at most and usually far fewer: an xid is kept as its offset from the
/// subscriber's first (events come in xid order, so offsets stay small), an arrival in µs
/// since [`Subscribers::epoch_us`] (71 minutes fit), and events of one transaction that
/// arrived in one read, the common case, collapse into one entry and a repeat count.
#[derive(Debug, Default)]
pub struct Arrivals {
    /// The first xid.
    base: i64,
    /// (xid − base + 2³¹, arrival); a `(REPEAT, n)` entry repeats the entry before it n
    /// more times.
    entries: Vec<(u32, u32)>,
}

impl Arrivals {
    const REPEAT: u32 = u32::MAX;
    const BIAS: i64 = 1 << 31;

    /// Records an event; false if its xid is too far (2³¹) from the first one's.
    pub fn push(&mut self, xid: i64, arrival_us: u32) -> bool {
        if self.entries.is_empty() {
            self.base = xid;
        }
        let offset = xid - self.base + Self::BIAS;
        if !(0..i64::from(Self::REPEAT)).contains(&offset) {
            return false;
        }
        let entry = (offset as u32, arrival_us);
        let len = self.entries.len();
        match self.entries.last() {
            Some(&(Self::REPEAT, n)) if n < u32::MAX && self.entries[len - 2] == entry => {
                self.entries[len - 1].1 += 1;
            }
            Some(&last) if last == entry => self.entries.push((Self::REPEAT, 1)),
            _ => self.entries.push(entry),
        }
        true
    }

    /// (xid, arrival in µs since the epoch, how many events), in the order received.
    pub fn runs(&self) -> impl Iterator<Item = (i64, u32, u32)> + '_ {
        let mut i = 0;
        std::iter::from_fn(move || {
            let (offset, at) = *self.entries.get(i)?;
            i += 1;
            let mut count = 1;
            if let Some(&(Self::REPEAT, n)) = self.entries.get(i) {
                count += n;
                i += 1;
            }
            Some((self.base + i64::from(offset) - Self::BIAS, at, count))
        })
    }

    /// Bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(u32, u32)>()
    }
}

/// created_at + duration_ms of an attempt's data line, in µs since the epoch: when its
/// HTTP request ended (to the millisecond below), which is before its commit.
fn request_end_us(data: &[u8]) -> Option<i64> {
    const CREATED: &[u8] = b"\"created_at\":\"";
    const DURATION: &[u8] = b"\"duration_ms\":";
    // Built once: building a searcher per event cost more than the search.
    static FIND_CREATED: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(CREATED));
    static FIND_DURATION: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(DURATION));
    let c = FIND_CREATED.rfind(data)?;
    let ts = &data[c + CREATED.len()..];
    let created = parse_rfc3339_us(&ts[..find_byte(b'"', ts)?])?;
    let d = FIND_DURATION.rfind(&data[..c])?;
    let digits = &data[d + DURATION.len()..];
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    let ms = digits[..n]
        .iter()
        .fold(0i64, |v, &b| v * 10 + i64::from(b - b'0'));
    Some(created + ms * 1000)
}

/// RFC 3339 (`2026-11-24T00:05:23.123456Z`, or with a `±HH:MM` offset) to µs since the
/// epoch; digits beyond microseconds are ignored.
fn parse_rfc3339_us(s: &[u8]) -> Option<i64> {
    let num = |from: usize, to: usize| -> Option<i64> {
        s.get(from..to)?.iter().try_fold(0i64, |v, &b| {
            b.is_ascii_digit().then(|| v * 10 + i64::from(b - b'0'))
        })
    };
    if s.len() < 20
        || s[4] != b'-'
        || s[7] != b'-'
        || !matches!(s[10], b'T' | b't' | b' ')
        || s[13] != b':'
        || s[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut i = 19;
    let mut micros = 0;
    if s[i] == b'.' {
        i += 1;
        let mut scale = 100_000;
        while i < s.len() && s[i].is_ascii_digit() {
            micros += i64::from(s[i] - b'0') * scale;
            scale /= 10;
            i += 1;
        }
    }
    let offset = match *s.get(i)? {
        b'Z' | b'z' => 0,
        sign @ (b'+' | b'-') => {
            let o = (num(i + 1, i + 3)? * 60 + num(i + 4, i + 6)?) * 60;
            if sign == b'+' { o } else { -o }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3_600 + mi * 60 + sec - offset) * 1_000_000 + micros)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The first `b` in `hay` (SIMD: scanning every byte for newlines is most of what the
/// subscribers' thread does).
fn find_byte(b: u8, hay: &[u8]) -> Option<usize> {
    memchr::memchr(b, hay)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The calling thread's id, from /proc (0 when unknown).
pub(crate) fn thread_id() -> u64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The open-file limit (soft) of a process, from /proc/{pid}/limits.
pub fn open_files_limit(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// Raises this process's soft open-file limit towards its hard limit (at most 1 << 20),
/// so that a thousand subscribers fit; `herald serve`, started by the suite, inherits it.
#[cfg(target_os = "linux")]
pub fn raise_open_files_limit() -> std::io::Result<()> {
    use std::ffi::{c_int, c_ulong};
    // glibc and musl: rlim_t is unsigned long; RLIMIT_NOFILE is 7 except on the
    // architectures excluded below.
    #[cfg(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc",
        target_arch = "sparc64"
    ))]
    compile_error!("RLIMIT_NOFILE differs on this architecture");
    const RLIMIT_NOFILE: c_int = 7;
    #[repr(C)]
    struct Rlimit {
        cur: c_ulong,
        max: c_ulong,
    }
    unsafe extern "C" {
        fn getrlimit(resource: c_int, rlim: *mut Rlimit) -> c_int;
        fn setrlimit(resource: c_int, rlim: *const Rlimit) -> c_int;
    }
    let mut limit = Rlimit { cur: 0, max: 0 };
    // SAFETY: `limit` is a valid, writable struct with the layout of `struct rlimit`.
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let wanted = limit.max.min(1 << 20);
    if limit.cur < wanted {
        let raised = Rlimit {
            cur: wanted,
            max: limit.max,
        };
        // SAFETY: `raised` is a valid `struct rlimit`; only the soft limit grows, up to
        // the hard limit, which needs no privilege.
        if unsafe { setrlimit(RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn raise_open_files_limit() -> std::io::Result<()> {
    Err(std::io::Error::other("only Linux is supported"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_rfc3339_us(b"1970-01-01T00:00:00Z"), Some(0));
        // date -u -d 2026-11-24T00:05:23Z +%s
        assert_eq!(
            parse_rfc3339_us(b"2026-11-24T00:05:23.123456Z"),
            Some(1_795_478_723_123_456)
        );
        assert_eq!(
            parse_rfc3339_us(b"2026-11-24T01:05:23.1+01:00"),
            Some(1_795_478_723_100_000)
        );
        assert_eq!(
            parse_rfc3339_us(b"2024-02-29T23:59:59.999999999Z"),
            Some(1_709_251_199_999_999)
        );
        assert_eq!(parse_rfc3339_us(b"2026-11-24 nonsense"), None);
    }

    const ATTEMPT: &str = r#"{"id":"atm_1","response_body":"{\"created_at\":\"1999-01-01T00:00:00Z\"}","duration_ms":12,"created_at":"2026-11-24T00:05:23.123456Z","next_attempt_at":null}"#;

    /// The counts of a parsed stream: attempts, other events, lagged, unparsed, no xid.
    fn counts(s: &Stats) -> (u64, u64, u64, u64, u64) {
        (s.attempts, s.other_events, s.lagged, s.unparsed, s.no_xid)
    }

    /// Feeds `wire` (a chunked body) in pieces of `piece` bytes, stamping every piece
    /// `arrived`.
    fn parse_in_pieces(wire: &[u8], piece: usize, epoch: i64, arrived: i64) -> Stats {
        let (mut body, mut parser, mut stats) =
            (Body::new(true), Parser::new(epoch), Stats::default());
        let mut pending: Vec<u8> = Vec::new();
        for part in wire.chunks(piece) {
            pending.extend_from_slice(part);
            let used = body.feed(&pending);
            pending.drain(..used);
            parser.parse(&mut body.data, arrived, &mut stats);
        }
        assert!(body.done, "piece {piece}");
        stats
    }

    /// One HTTP chunk per event, as axum sends them.
    fn one_chunk_each(events: &[String]) -> Vec<u8> {
        let mut wire = Vec::new();
        for e in events {
            wire.extend_from_slice(format!("{:x}\r\n{e}\r\n", e.len()).as_bytes());
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }

    /// A chunked stream cut at every possible place parses the same.
    #[test]
    fn chunked_stream_in_any_pieces() {
        let events = [
            format!("id: 1-0\nevent: attempt\ndata: {ATTEMPT}\n\n"),
            ":\n\n".to_owned(),
            "id: 1-1\nevent: message.created\ndata: {\"id\":\"msg_1\"}\n\n".to_owned(),
            "event: lagged\ndata: {\"message\":\"behind\"}\n\n".to_owned(),
            format!("id: 2-0\nevent: attempt\ndata: {ATTEMPT}\n\n"),
        ];
        let wire = one_chunk_each(&events);
        let arrived = 1_795_478_723_135_456 + 500; // created + 12 ms + 0.5 ms
        let epoch = arrived - 7;
        for piece in 1..wire.len() {
            let stats = parse_in_pieces(&wire, piece, epoch, arrived);
            assert_eq!(counts(&stats), (2, 1, 1, 0, 0), "piece {piece}");
            assert_eq!(stats.lags_us, vec![500, 500], "piece {piece}");
            let runs: Vec<_> = stats.arrivals.runs().collect();
            assert_eq!(runs, vec![(1, 7, 1), (2, 7, 1)], "piece {piece}");
        }
    }

    /// Several frames in one HTTP chunk (and one frame over two chunks), with CRLF or LF
    /// line ends, ids with or without the space, a `lagged` frame (no id) and an attempt
    /// without an id, cut at every place.
    #[test]
    fn many_frames_per_chunk() {
        let xid = 9_007_199_254_740_993i64; // beyond 2^53: no float on the way
        let big = format!("{xid}-3");
        let one = format!(
            "id: 41-0\r\nevent: attempt\r\ndata: {ATTEMPT}\r\n\r\n\
             id:41-1\nevent: attempt\ndata: {ATTEMPT}\n\n\
             event: lagged\ndata: {{\"message\":\"behind\"}}\n\n\
             :\n\n\
             id: 41-2\nevent: message.created\ndata: {{\"id\":\"msg_1\"}}\n\n\
             event: attempt\nid: 42-0\ndata: {ATTEMPT}\n\n\
             event: attempt\ndata: {ATTEMPT}\n\n\
             id: nonsense\nevent: attempt\ndata: {ATTEMPT}\n\nid: {big}\nevent: att"
        );
        let two = format!("empt\ndata: {ATTEMPT}\n\nid: 42-1\nevent: attempt\ndata: {ATTEMPT}\n\n");
        let wire = one_chunk_each(&[one, two]);
        let arrived = 1_795_478_723_135_456;
        for piece in 1..wire.len() {
            let stats = parse_in_pieces(&wire, piece, arrived - 5, arrived);
            assert_eq!(counts(&stats), (7, 1, 1, 0, 3), "piece {piece}");
            assert_eq!(stats.lags_us, vec![0; 7], "piece {piece}");
            let runs: Vec<_> = stats.arrivals.runs().collect();
            // No id, a malformed one, and one 2^31 or more from the first xid (which
            // cannot be recorded) are counted in no_xid; the two 42s then run together.
            assert_eq!(runs, vec![(41, 5, 2), (42, 5, 2)], "piece {piece}");
        }
    }

    #[test]
    fn event_ids() {
        assert_eq!(xid_of(b"123-0"), Some(123));
        assert_eq!(xid_of(b"18446744073-17"), Some(18_446_744_073));
        assert_eq!(xid_of(b"123"), None);
        assert_eq!(xid_of(b"-1"), None);
        assert_eq!(xid_of(b"abc-1"), None);
        assert_eq!(xid_of(b""), None);
        assert_eq!(xid_of(b"1234567890123456789-1"), None);
    }

    #[test]
    fn arrivals_run_length() {
        let mut a = Arrivals::default();
        for (xid, at) in [
            (100, 5),
            (100, 5),
            (100, 5),
            (101, 5),
            (101, 9),
            (99, 9),
            (99, 9),
        ] {
            assert!(a.push(xid, at));
        }
        assert_eq!(
            a.runs().collect::<Vec<_>>(),
            vec![(100, 5, 3), (101, 5, 1), (101, 9, 1), (99, 9, 2)]
        );
        // Runs of three or more cost two entries; single events one.
        assert_eq!(a.entries.len(), 6);
        assert!(a.push(100 + (1 << 31) - 2, 0));
        assert!(!a.push(100 + (1 << 31) - 1, 0));
        assert!(a.push(100 - (1 << 31), 0));
        assert!(!a.push(99 - (1 << 31), 0));
        assert_eq!(a.runs().last(), Some((100 - (1 << 31), 0, 1)));
        assert_eq!(Arrivals::default().runs().count(), 0);
    }
}
