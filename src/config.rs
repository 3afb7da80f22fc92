//! Typed configuration from the environment (and `.env`), validated once at start-up.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::delivery::RetrySchedule;

#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: Secret,
    pub listen: SocketAddr,
    pub admin_token: Secret,
    pub public_url: String,
    /// Whether `public_url` was configured, rather than derived from `listen`.
    pub public_url_configured: bool,
    pub allow_private_targets: bool,
    /// Requests in flight at once in this process.
    pub worker_concurrency: usize,
    /// Default cap on concurrent requests to one endpoint (an endpoint may set its own).
    pub endpoint_concurrency: i32,
    pub request_timeout: Duration,
    pub retry_schedule: RetrySchedule,
    /// How long a rotated-out signing secret keeps signing.
    pub secret_grace_period: Duration,
    /// An endpoint failing without a single success for this long is disabled.
    pub disable_after: Duration,
    pub max_payload_bytes: usize,
    /// Fallback wake-up for workers when no NOTIFY arrives (retries falling due, lost
    /// notifications).
    pub poll_interval: Duration,
    /// How long in-flight sends may take to finish after SIGTERM before we exit anyway;
    /// inbound connections still open then are closed.
    pub shutdown_grace: Duration,
    /// Longest a client may take to send a request's head (also how long an idle
    /// keep-alive connection stays open).
    pub header_timeout: Duration,
    /// Longest a client may take to send a request's body, from its head on.
    pub body_timeout: Duration,
    /// Longest an ordinary request may take, from its head to the last byte of the
    /// answer; the live feed (SSE) and the WebSocket are not bounded by it.
    pub http_timeout: Duration,
    /// Inbound connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    pub db_pool_size: u32,
    /// How long the live feed keeps events for clients resuming with `Last-Event-ID`.
    pub feed_retention: Duration,
    /// Reads of the event log (batches of up to 500 events) each process buffers for its
    /// live subscribers; one that falls further behind is told so and catches up from the
    /// database.
    pub feed_buffer: usize,
    /// Shortest time between two reads of the event log by a process's feed reader while
    /// events keep coming: what arrives meanwhile goes out to subscribers as one batch, one
    /// write per client, instead of a write per commit.
    pub feed_interval: Duration,
    /// Bytes of events that may wait for one feed subscriber (SSE stream, admin WebSocket)
    /// before it is told it lagged and reads on from the database at its own pace.
    pub feed_client_buffer: usize,
    /// Longest silence on an SSE stream before a keep-alive comment.
    pub sse_keep_alive: Duration,
    /// How often each process reads the queue gauges `/metrics` serves.
    pub metrics_interval: Duration,
    /// Dead deliveries a recover queues per transaction.
    pub recover_batch: usize,
    /// How long a repeated idempotency key answers its first message; after it, the key
    /// sends a new one.
    pub idempotency_window: Duration,
    /// How long history (messages, finished deliveries, attempts, finished recovers) is
    /// kept; a delivery still pending or in flight is kept whatever its age.
    pub retention: Duration,
    /// The time range of one history partition: what retention drops at once.
    pub partition_interval: Duration,
    pub log_format: LogFormat,

    // ---- authentication throttling (per client address, per process) ----
    /// Failed tokens (bearer or login) one address may present per window; 0 = no limit.
    pub auth_failure_limit: u32,
    pub auth_failure_window: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A value that must never reach a log line; `Debug` redacts it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Config {
    /// Reads `HERALD_*`, `DATABASE_URL` and `RUST_LOG` through `get` (the process
    /// environment in production, a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let parsed = |name: &str, default: &str| -> String { var(name).unwrap_or(default.into()) };
        let duration = |name: &str, default: &str| -> anyhow::Result<Duration> {
            parse_duration(&parsed(name, default))
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{name} is not a duration"))
        };
        let number = |name: &str, default: &str| -> anyhow::Result<u64> {
            parsed(name, default)
                .trim()
                .parse()
                .with_context(|| format!("{name} must be a whole number"))
        };

        let database_url = var("DATABASE_URL").context("DATABASE_URL is not set")?;
        let admin_token = var("HERALD_ADMIN_TOKEN").context(
            "HERALD_ADMIN_TOKEN is not set (make run writes one into .env on first start)",
        )?;
        if admin_token.len() < 16 {
            bail!("HERALD_ADMIN_TOKEN must be at least 16 characters");
        }
        let listen: SocketAddr = parsed("HERALD_LISTEN", "127.0.0.1:8080")
            .parse()
            .context("HERALD_LISTEN must be host:port, e.g. 127.0.0.1:8080")?;
        let configured_url = var("HERALD_PUBLIC_URL");
        let public_url_configured = configured_url.is_some();
        let public_url = configured_url
            .unwrap_or_else(|| format!("http://{listen}"))
            .trim_end_matches('/')
            .to_owned();
        let allow_private_targets = match parsed("HERALD_ALLOW_PRIVATE_TARGETS", "false")
            .to_ascii_lowercase()
            .as_str()
        {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => bail!("HERALD_ALLOW_PRIVATE_TARGETS must be true or false, not {other:?}"),
        };
        let retry_schedule =
            RetrySchedule::parse(&parsed("HERALD_RETRY_SCHEDULE", RetrySchedule::DEFAULT))
                .map_err(anyhow::Error::msg)
                .context("HERALD_RETRY_SCHEDULE")?;
        let request_timeout = duration("HERALD_REQUEST_TIMEOUT", "15s")?;
        if request_timeout.is_zero() {
            bail!("HERALD_REQUEST_TIMEOUT must be positive");
        }
        let worker_concurrency = number("HERALD_WORKER_CONCURRENCY", "256")? as usize;
        if worker_concurrency == 0 {
            bail!("HERALD_WORKER_CONCURRENCY must be at least 1");
        }
        // By default one endpoint may hold at most half the workers: however slow it is,
        // the other half keeps everyone else flowing.
        let half = (worker_concurrency / 2).clamp(1, 1000).to_string();
        let endpoint_concurrency = number("HERALD_ENDPOINT_CONCURRENCY", &half)?;
        if !(1..=1000).contains(&endpoint_concurrency) {
            bail!("HERALD_ENDPOINT_CONCURRENCY must be between 1 and 1000");
        }
        let feed_client_buffer = number("HERALD_FEED_CLIENT_BUFFER_BYTES", "4194304")?;
        if feed_client_buffer < 65536 {
            bail!("HERALD_FEED_CLIENT_BUFFER_BYTES must be at least 65536");
        }
        let positive = |name: &str, default: &str| -> anyhow::Result<Duration> {
            let d = duration(name, default)?;
            if d.is_zero() {
                bail!("{name} must be positive");
            }
            Ok(d)
        };
        let db_pool_size = number("HERALD_DB_POOL_SIZE", "16")?.clamp(2, 1000) as u32;
        let max_connections = match var("HERALD_MAX_CONNECTIONS") {
            Some(_) => number("HERALD_MAX_CONNECTIONS", "")? as usize,
            None => default_max_connections(
                open_files_limit(),
                worker_concurrency,
                db_pool_size as usize,
            ),
        };
        if max_connections == 0 {
            bail!("HERALD_MAX_CONNECTIONS must be at least 1");
        }
        let retention = duration("HERALD_RETENTION", "30d")?;
        // A delivery still retrying is kept whatever its age, but a retention shorter than
        // the schedule would keep every retrying delivery's message past it: refuse it.
        let span = retry_schedule.span();
        if retention <= span {
            bail!(
                "HERALD_RETENTION ({}) must be longer than the retry schedule's span ({}, \
                 HERALD_RETRY_SCHEDULE with its largest jitter): raise the retention or \
                 shorten the schedule",
                parsed("HERALD_RETENTION", "30d").trim(),
                spell_duration(span),
            );
        }
        if retention > RETENTION_MAX {
            bail!("HERALD_RETENTION must be at most 100 years");
        }
        let partition_interval = duration("HERALD_PARTITION_INTERVAL", "1d")?;
        if partition_interval < Duration::from_secs(1) || partition_interval > retention {
            bail!(
                "HERALD_PARTITION_INTERVAL must be between 1s and HERALD_RETENTION, not {}",
                parsed("HERALD_PARTITION_INTERVAL", "1d").trim()
            );
        }
        // Longer than the history is kept, a key would outlive the message it answers with.
        let idempotency_window = duration("HERALD_IDEMPOTENCY_WINDOW", "24h")?;
        if !(IDEMPOTENCY_WINDOW_MIN..=IDEMPOTENCY_WINDOW_MAX).contains(&idempotency_window) {
            bail!(
                "HERALD_IDEMPOTENCY_WINDOW must be between 1m and 30d, not {}",
                parsed("HERALD_IDEMPOTENCY_WINDOW", "").trim()
            );
        }
        if idempotency_window > retention {
            bail!(
                "HERALD_IDEMPOTENCY_WINDOW ({}) must be at most HERALD_RETENTION ({}): a key \
                 cannot answer with a message that is no longer kept",
                parsed("HERALD_IDEMPOTENCY_WINDOW", "24h").trim(),
                parsed("HERALD_RETENTION", "30d").trim()
            );
        }
        let log_format = match parsed("HERALD_LOG_FORMAT", "pretty").as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => bail!("HERALD_LOG_FORMAT must be pretty or json, not {other:?}"),
        };
        Ok(Self {
            database_url: Secret(database_url),
            listen,
            admin_token: Secret(admin_token),
            public_url,
            public_url_configured,
            allow_private_targets,
            worker_concurrency,
            endpoint_concurrency: endpoint_concurrency as i32,
            request_timeout,
            retry_schedule,
            secret_grace_period: duration("HERALD_SECRET_GRACE_PERIOD", "24h")?,
            disable_after: duration("HERALD_DISABLE_AFTER", "5d")?,
            max_payload_bytes: number("HERALD_MAX_PAYLOAD_BYTES", "1048576")? as usize,
            poll_interval: duration("HERALD_POLL_INTERVAL", "1s")?.max(Duration::from_millis(10)),
            shutdown_grace: duration("HERALD_SHUTDOWN_GRACE", "20s")?,
            header_timeout: positive("HERALD_HEADER_TIMEOUT", "10s")?,
            body_timeout: positive("HERALD_BODY_TIMEOUT", "30s")?,
            http_timeout: positive("HERALD_HTTP_TIMEOUT", "60s")?,
            max_connections,
            db_pool_size,
            // The feed's log is history too: never kept longer than the rest of it.
            feed_retention: duration("HERALD_FEED_RETENTION", "24h")?
                .max(Duration::from_secs(60))
                .min(retention),
            metrics_interval: duration("HERALD_METRICS_INTERVAL", "5s")?
                .max(Duration::from_millis(100)),
            recover_batch: number("HERALD_RECOVER_BATCH", "500")?.clamp(1, 10_000) as usize,
            idempotency_window,
            retention,
            partition_interval,
            feed_buffer: number("HERALD_FEED_BUFFER", "64")?.clamp(1, 1 << 16) as usize,
            feed_interval: duration("HERALD_FEED_INTERVAL", "0ms")?.min(Duration::from_secs(1)),
            feed_client_buffer: usize::try_from(feed_client_buffer).unwrap_or(usize::MAX),
            sse_keep_alive: duration("HERALD_SSE_KEEP_ALIVE", "15s")?
                .max(Duration::from_millis(100)),
            log_format,

            // ---- authentication throttling ----
            auth_failure_limit: u32::try_from(number("HERALD_AUTH_FAILURE_LIMIT", "20")?)
                .context("HERALD_AUTH_FAILURE_LIMIT is too large")?,
            auth_failure_window: duration("HERALD_AUTH_FAILURE_WINDOW", "5m")?
                .max(Duration::from_secs(1)),
        })
    }

    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Whether a browser's `Origin` is the dashboard's own. Without a configured
    /// `HERALD_PUBLIC_URL`, a server listening on loopback also accepts the other loopback
    /// names for the same port (`localhost` and `127.0.0.1` are the same server to a
    /// developer, but different origins to a browser).
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        if origin == self.public_url {
            return true;
        }
        if self.public_url_configured || !self.listen.ip().is_loopback() {
            return false;
        }
        let (Ok(asked), Ok(ours)) = (url::Url::parse(origin), url::Url::parse(&self.public_url))
        else {
            return false;
        };
        asked.scheme() == "http"
            && matches!(asked.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
            && asked.port_or_known_default() == ours.port_or_known_default()
    }

    /// A worker's claim on a delivery outlives the longest possible request, so a live
    /// worker never loses its lease mid-send; a dead one's lease expires soon after.
    pub fn lease(&self) -> Duration {
        self.request_timeout * 2 + Duration::from_secs(5)
    }
}

const RETENTION_MAX: Duration = Duration::from_secs(100 * 365 * 86400);
const IDEMPOTENCY_WINDOW_MIN: Duration = Duration::from_secs(60);
const IDEMPOTENCY_WINDOW_MAX: Duration = Duration::from_secs(30 * 86400);

/// Descriptors kept free for everything but inbound connections: per worker one socket for
/// its request and one for a DNS lookup, the database pools (the shared one, the feed's
/// and the probes'), and files, the listener, the runtime and the logs.
fn reserved_descriptors(worker_concurrency: usize, db_pool_size: usize) -> usize {
    2 * worker_concurrency + db_pool_size + 8 + 64
}

/// What is left of the process's open-files limit once the workers and the database have
/// theirs: accepting more would leave the workers failing their DNS lookups and connects.
/// At least 64, so a low limit still serves something (raise `ulimit -n` then).
fn default_max_connections(
    open_files: Option<u64>,
    worker_concurrency: usize,
    db_pool_size: usize,
) -> usize {
    // Unknown (not Unix): a common soft limit.
    let open_files = open_files.unwrap_or(1024).min(1 << 20) as usize;
    open_files
        .saturating_sub(reserved_descriptors(worker_concurrency, db_pool_size))
        .max(64)
}

/// The soft limit on open files (`ulimit -n`), if there is one.
fn open_files_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
        (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}

/// `250ms`, `15s`, `5m`, `2h`, `5d`; a bare number means seconds.
/// A duration the way an operator writes one (`3d 11h 8m 5s`), to the second.
pub fn spell_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut parts = Vec::new();
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            parts.push(format!("{}{unit}", s / size));
            s %= size;
        }
    }
    parts.join(" ")
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 15s, 5m, 2h or 1d"))?;
    let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
    Ok(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => {
            return Err(format!(
                "{s:?} is not a duration like 500ms, 15s, 5m, 2h or 1d"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: [(&str, &str); 2] = [
        ("DATABASE_URL", "postgres://localhost/herald"),
        ("HERALD_ADMIN_TOKEN", "0123456789abcdef0123"),
    ];

    #[test]
    fn defaults_follow_the_design() {
        let c = config(&BASE).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.request_timeout, Duration::from_secs(15));
        assert!(!c.allow_private_targets);
        assert_eq!(c.max_payload_bytes, 1 << 20);
        assert_eq!(c.retry_schedule.max_attempts(), 10);
        assert_eq!((c.worker_concurrency, c.endpoint_concurrency), (256, 128));
        assert!(c.lease() > c.request_timeout);
        assert_eq!(c.metrics_interval, Duration::from_secs(5));
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.body_timeout, Duration::from_secs(30));
        assert_eq!(c.http_timeout, Duration::from_secs(60));
        assert!(c.max_connections >= 64);
        assert_eq!(c.idempotency_window, Duration::from_secs(86400));
        assert!(!format!("{c:?}").contains("0123456789abcdef0123"));
    }

    #[test]
    fn refuses_bad_values() {
        let with = |k, v| {
            let mut vars = BASE.to_vec();
            vars.push((k, v));
            config(&vars)
        };
        assert!(with("HERALD_REQUEST_TIMEOUT", "soon").is_err());
        assert!(with("HERALD_ALLOW_PRIVATE_TARGETS", "maybe").is_err());
        assert!(with("HERALD_WORKER_CONCURRENCY", "0").is_err());
        assert!(with("HERALD_ADMIN_TOKEN", "short").is_err());
        assert!(with("HERALD_FEED_CLIENT_BUFFER_BYTES", "1024").is_err());
        assert!(with("HERALD_HEADER_TIMEOUT", "0s").is_err());
        assert!(with("HERALD_MAX_CONNECTIONS", "0").is_err());
        assert!(with("HERALD_MAX_CONNECTIONS", "many").is_err());
        assert_eq!(
            with("HERALD_MAX_CONNECTIONS", "50")
                .unwrap()
                .max_connections,
            50
        );
        assert!(config(&BASE[1..]).is_err());
    }

    #[test]
    fn the_idempotency_window_is_between_a_minute_and_thirty_days() {
        let with = |v| {
            let mut vars = BASE.to_vec();
            vars.push(("HERALD_IDEMPOTENCY_WINDOW", v));
            config(&vars)
        };
        for (bad, says) in [
            (
                "59s",
                "HERALD_IDEMPOTENCY_WINDOW must be between 1m and 30d, not 59s",
            ),
            (
                "31d",
                "HERALD_IDEMPOTENCY_WINDOW must be between 1m and 30d, not 31d",
            ),
            (
                "0",
                "HERALD_IDEMPOTENCY_WINDOW must be between 1m and 30d, not 0",
            ),
            ("a day", "HERALD_IDEMPOTENCY_WINDOW is not a duration"),
        ] {
            let err = format!("{:#}", with(bad).unwrap_err());
            assert!(err.starts_with(says), "{bad}: {err}");
        }
        assert_eq!(
            with("1m").unwrap().idempotency_window,
            Duration::from_secs(60)
        );
        assert_eq!(
            with("30d").unwrap().idempotency_window,
            Duration::from_secs(30 * 86400)
        );
    }

    #[test]
    fn the_dashboard_origin_is_the_public_url_or_loopback_on_our_port() {
        let local = config(&[BASE[0], BASE[1], ("HERALD_LISTEN", "127.0.0.1:8080")]).unwrap();
        assert!(local.origin_allowed("http://127.0.0.1:8080"));
        assert!(local.origin_allowed("http://localhost:8080/"));
        assert!(local.origin_allowed("http://[::1]:8080"));
        assert!(!local.origin_allowed("http://localhost:9090"));
        assert!(!local.origin_allowed("https://localhost:8080"));
        assert!(!local.origin_allowed("http://evil.example:8080"));
        assert!(!local.origin_allowed("null"));
        let public = config(&[
            BASE[0],
            BASE[1],
            ("HERALD_LISTEN", "127.0.0.1:8080"),
            ("HERALD_PUBLIC_URL", "https://herald.example.com/"),
        ])
        .unwrap();
        assert!(public.origin_allowed("https://herald.example.com"));
        assert!(!public.origin_allowed("http://localhost:8080"));
    }

    #[test]
    fn inbound_connections_leave_descriptors_for_the_workers() {
        // 1024 files, 256 workers, 16 connections: 2 * 256 + 16 + 72 kept back.
        assert_eq!(default_max_connections(Some(1024), 256, 16), 424);
        assert_eq!(
            default_max_connections(Some(1 << 20), 256, 16),
            (1 << 20) - 600
        );
        assert_eq!(default_max_connections(Some(256), 256, 16), 64);
        assert_eq!(default_max_connections(None, 8, 5), 1024 - 93);
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3w").is_err());
        assert_eq!(spell_duration(Duration::from_secs(299315)), "3d 11h 8m 35s");
        assert_eq!(spell_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn retention_outlasts_the_retry_schedule_and_the_idempotency_window() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars = BASE.to_vec();
            vars.extend_from_slice(extra);
            config(&vars)
        };
        let c = with(&[]).unwrap();
        assert_eq!(c.retention, Duration::from_secs(30 * 86400));
        assert_eq!(c.partition_interval, Duration::from_secs(86400));
        // The default schedule spans 3 days and 11 hours at most.
        let err = with(&[("HERALD_RETENTION", "3d")]).unwrap_err().to_string();
        assert_eq!(
            err,
            "HERALD_RETENTION (3d) must be longer than the retry schedule's span (3d 11h 8m 35s, \
             HERALD_RETRY_SCHEDULE with its largest jitter): raise the retention or shorten \
             the schedule"
        );
        assert!(
            with(&[
                ("HERALD_RETENTION", "4d"),
                ("HERALD_IDEMPOTENCY_WINDOW", "1d")
            ])
            .is_ok()
        );
        // Minutes work, with a schedule that fits in them.
        let short = with(&[
            ("HERALD_RETENTION", "2m"),
            ("HERALD_RETRY_SCHEDULE", "1s,5s"),
            ("HERALD_IDEMPOTENCY_WINDOW", "1m"),
            ("HERALD_PARTITION_INTERVAL", "10s"),
        ])
        .unwrap();
        assert_eq!(short.retention, Duration::from_secs(120));
        assert_eq!(short.partition_interval, Duration::from_secs(10));
        let err = with(&[
            ("HERALD_RETENTION", "5d"),
            ("HERALD_IDEMPOTENCY_WINDOW", "6d"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("HERALD_IDEMPOTENCY_WINDOW (6d) must be at most HERALD_RETENTION (5d)"),
            "{err}"
        );
        for bad in ["0", "500ms", "31d"] {
            let err = with(&[("HERALD_PARTITION_INTERVAL", bad)])
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(
                    "HERALD_PARTITION_INTERVAL must be between 1s and HERALD_RETENTION"
                ),
                "{bad}: {err}"
            );
        }
    }
}
