//! Typed configuration from the environment (and `.env`), validated once at start-up.
//!
//! Here: the variables and what each may be. The units an operator writes them in are
//! `units`; how many inbound connections fit beside the workers is `descriptors`.

mod descriptors;
pub use descriptors::raise_open_files_limit;
mod units;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};

use self::descriptors::{default_max_connections, open_files_limit};
pub use self::units::{parse_duration, spell_duration};
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
    /// Whether endpoints added or changed in the customer portal may aim at private
    /// addresses too (only with `allow_private_targets`).
    pub portal_allow_private_targets: bool,
    /// Whether a send of a type the catalog does not have is refused.
    pub require_event_types: bool,
    /// The uid of the operator's application that operational webhooks go to, if any.
    pub operational_app: Option<String>,
    /// At most one operational message of a coalesced kind per endpoint in this long.
    pub operational_coalesce: Duration,
    /// The share of an endpoint's attempts in the last five minutes that, failed, sends
    /// `endpoint.failing` again.
    pub operational_failing_share: f64,
    /// The origins that may frame the customer portal, as a `frame-ancestors` source list
    /// (`'none'` when `HERALD_PORTAL_FRAME_ANCESTORS` is not set).
    pub portal_frame_ancestors: String,
    /// The portal's brand for applications that set none of their own.
    pub portal_brand: crate::domain::Brand,
    /// Requests in flight at once in this process.
    pub worker_concurrency: usize,
    /// Default cap on concurrent requests to one endpoint (an endpoint may set its own).
    pub endpoint_concurrency: i32,
    /// Most endpoints one application may have: what one message fans out to at most.
    pub max_endpoints_per_app: i64,
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
    /// Changes one application's customer portal may make per minute in this process;
    /// 0 = no limit.
    pub portal_write_limit: u32,
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
        let flag = |name: &str| -> anyhow::Result<bool> {
            match parsed(name, "false").to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                other => bail!("{name} must be true or false, not {other:?}"),
            }
        };
        let allow_private_targets = flag("HERALD_ALLOW_PRIVATE_TARGETS")?;
        // Customers are the least trusted of callers: the portal lets them aim at private
        // addresses only when both say so.
        let portal_allow_private_targets =
            allow_private_targets && flag("HERALD_PORTAL_ALLOW_PRIVATE_TARGETS")?;
        let portal_frame_ancestors = frame_ancestors(var("HERALD_PORTAL_FRAME_ANCESTORS"))?;
        let portal_brand = crate::domain::Brand {
            product_name: var("HERALD_PORTAL_NAME"),
            accent_color: var("HERALD_PORTAL_ACCENT"),
            logo_url: var("HERALD_PORTAL_LOGO_URL"),
        }
        .checked()
        .map_err(|e| anyhow::anyhow!("{}", e.replace("portal_brand.", "HERALD_PORTAL_ ")))?;
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
        let max_endpoints_per_app = number("HERALD_MAX_ENDPOINTS_PER_APP", "1000")?;
        if !(1..=1_000_000).contains(&max_endpoints_per_app) {
            bail!("HERALD_MAX_ENDPOINTS_PER_APP must be between 1 and 1000000");
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
        let operational_app = var("HERALD_OPERATIONAL_APP").filter(|v| !v.is_empty());
        if let Some(uid) = &operational_app
            && (uid.len() > 256
                || !uid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
        {
            bail!(
                "HERALD_OPERATIONAL_APP must be an application's uid: 1 to 256 characters of \
                 A-Z, a-z, 0-9, '_', '.', ':' and '-'"
            );
        }
        let operational_failing_share: f64 = parsed("HERALD_OPERATIONAL_FAILING_SHARE", "0.5")
            .trim()
            .parse()
            .ok()
            .filter(|share: &f64| *share > 0.0 && *share <= 1.0)
            .ok_or_else(|| {
                anyhow::anyhow!("HERALD_OPERATIONAL_FAILING_SHARE must be a number in (0, 1]")
            })?;
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
            portal_allow_private_targets,
            require_event_types: flag("HERALD_REQUIRE_EVENT_TYPES")?,
            operational_app,
            operational_coalesce: duration("HERALD_OPERATIONAL_COALESCE", "1m")?
                .min(Duration::from_secs(86400)),
            operational_failing_share,
            portal_frame_ancestors,
            portal_brand,
            worker_concurrency,
            endpoint_concurrency: endpoint_concurrency as i32,
            max_endpoints_per_app: max_endpoints_per_app as i64,
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
            portal_write_limit: u32::try_from(number("HERALD_PORTAL_WRITE_LIMIT", "120")?)
                .context("HERALD_PORTAL_WRITE_LIMIT is too large")?,
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

#[cfg(test)]
mod tests;

/// `HERALD_PORTAL_FRAME_ANCESTORS`: origins separated by spaces or commas (`https://app.example.com`,
/// `https://*.example.com`, `http://localhost:3000`), or `'self'`; nothing else reaches the
/// header, so no value can add a directive of its own.
fn frame_ancestors(value: Option<String>) -> anyhow::Result<String> {
    let Some(value) = value else {
        return Ok("'none'".into());
    };
    let mut sources = vec![];
    for source in value.split([' ', ',']).filter(|s| !s.is_empty()) {
        let source = source.trim_end_matches('/');
        // A wildcard only as the first label of a named host: `https://*` would let any
        // site frame the portal.
        let ok = source == "'self'"
            || source.split_once("://").is_some_and(|(scheme, rest)| {
                let host = rest.strip_prefix("*.").unwrap_or(rest);
                matches!(scheme, "http" | "https")
                    && !host.is_empty()
                    && !host.starts_with(['.', ':'])
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
            });
        if !ok {
            bail!(
                "HERALD_PORTAL_FRAME_ANCESTORS: {source:?} is not an origin such as \
                 https://app.example.com (or 'self')"
            );
        }
        sources.push(source);
    }
    Ok(if sources.is_empty() {
        "'none'".into()
    } else {
        sources.join(" ")
    })
}
