//! `Config::from_lookup`: its defaults, and the values it refuses with the message it gives.

use std::collections::HashMap;
use std::time::Duration;

use super::Config;

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
    assert_eq!(c.max_endpoints_per_app, 1000);
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
    assert!(with("HERALD_MAX_ENDPOINTS_PER_APP", "0").is_err());
    assert!(with("HERALD_MAX_ENDPOINTS_PER_APP", "1000001").is_err());
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
            err.starts_with("HERALD_PARTITION_INTERVAL must be between 1s and HERALD_RETENTION"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn the_portal_may_be_framed_only_by_the_origins_listed() {
    let with = |v| {
        let mut vars = BASE.to_vec();
        vars.push(("HERALD_PORTAL_FRAME_ANCESTORS", v));
        config(&vars)
    };
    assert_eq!(config(&BASE).unwrap().portal_frame_ancestors, "'none'");
    assert_eq!(
        with("https://app.example.com/, https://*.example.org http://localhost:3000")
            .unwrap()
            .portal_frame_ancestors,
        "https://app.example.com https://*.example.org http://localhost:3000"
    );
    // Nothing that could end the directive or add a source of another kind gets through.
    for bad in [
        "https://a.example.com; script-src *",
        "*",
        "data:",
        "javascript://x",
        "'unsafe-inline'",
        "https://*",
        "http://*:*",
        "https://*.",
    ] {
        assert!(with(bad).is_err(), "{bad}");
    }
    let mut vars = BASE.to_vec();
    vars.push(("HERALD_PORTAL_ACCENT", "red"));
    assert!(config(&vars).is_err());
}
