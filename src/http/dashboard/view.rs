//! View helpers: values formatted once, so templates stay plain. The time and number
//! formats, the rows several pages share (attempts, endpoints), the throughput chart, and
//! how the pages' forms show and read times and build their "Older" links.

use axum::http::StatusCode;
use chrono::{DateTime, Datelike, Utc};

use super::PageError;
use crate::db::attempts::Attempt;
use crate::db::dashboard::Minute;
use crate::db::endpoints::Endpoint;
use crate::db::messages::DeliveryStatus;
use crate::domain::{redact_userinfo, short_url};
use crate::http::search;

/// The dashboard's list pages: 50 rows, then an "Older" link.
pub(in crate::http) const PAGE_ROWS: i64 = 50;

pub(in crate::http) fn ago(at: DateTime<Utc>) -> String {
    let secs = (Utc::now() - at).num_seconds().max(0);
    duration_text(secs as f64) + " ago"
}

pub(in crate::http) fn duration_text(secs: f64) -> String {
    let s = secs as i64;
    match s {
        _ if secs < 1.0 => format!("{:.0} ms", secs * 1000.0),
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

pub(in crate::http) fn stamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub(in crate::http) fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "–".into(), |p| format!("{p:.1}%"))
}

pub(in crate::http) struct AttemptRow {
    pub(in crate::http) id: String,
    pub(in crate::http) at: String,
    pub(in crate::http) outcome: String,
    pub(in crate::http) app_id: String,
    pub(in crate::http) message_id: String,
    pub(in crate::http) endpoint_id: String,
    pub(in crate::http) event_type: String,
    pub(in crate::http) attempt: i32,
    pub(in crate::http) trigger: String,
    pub(in crate::http) status: String,
    pub(in crate::http) latency: String,
    pub(in crate::http) error: String,
    pub(in crate::http) body: String,
}

impl From<Attempt> for AttemptRow {
    fn from(a: Attempt) -> Self {
        Self {
            id: a.id.to_string(),
            at: stamp(a.created_at),
            outcome: a.outcome.as_str().into(),
            app_id: a.app_id.to_string(),
            message_id: a.message_id.to_string(),
            endpoint_id: a.endpoint_id.to_string(),
            event_type: a.event_type,
            attempt: a.attempt,
            trigger: a.trigger.as_str().into(),
            status: a
                .response_status
                .map_or_else(|| "–".into(), |s| s.to_string()),
            latency: format!("{} ms", a.duration_ms),
            error: a.error.unwrap_or_default(),
            body: a.response_body.unwrap_or_default(),
        }
    }
}

pub(in crate::http) fn rows(attempts: Vec<Attempt>) -> Vec<AttemptRow> {
    attempts.into_iter().map(AttemptRow::from).collect()
}

/// One bar of the throughput chart, in SVG user units (the chart is 600 x 140).
pub(in crate::http) struct Bar {
    pub(in crate::http) x: i64,
    pub(in crate::http) ok_y: f64,
    pub(in crate::http) ok_h: f64,
    pub(in crate::http) failed_y: f64,
    pub(in crate::http) failed_h: f64,
    pub(in crate::http) title: String,
}

const CHART_BASE: f64 = 130.0;
const CHART_HEIGHT: f64 = 120.0;

pub(in crate::http) fn chart(minutes: &[Minute]) -> (Vec<Bar>, String) {
    let max = minutes.iter().map(|m| m.total).max().unwrap_or(0).max(1) as f64;
    let bars = minutes
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let ok_h = m.succeeded as f64 / max * CHART_HEIGHT;
            let failed_h = (m.total - m.succeeded) as f64 / max * CHART_HEIGHT;
            let at = DateTime::from_timestamp(m.minute, 0).unwrap_or_default();
            Bar {
                x: i as i64 * 10,
                ok_y: CHART_BASE - ok_h,
                ok_h,
                failed_y: CHART_BASE - ok_h - failed_h,
                failed_h,
                title: format!(
                    "{}: {} attempts, {} failed",
                    at.format("%H:%M"),
                    m.total,
                    m.total - m.succeeded
                ),
            }
        })
        .collect();
    // The success rate as a line, over the minutes that had attempts.
    let line = minutes
        .iter()
        .enumerate()
        .filter(|(_, m)| m.total > 0)
        .map(|(i, m)| {
            let rate = m.succeeded as f64 / m.total as f64;
            format!("{},{:.1}", i * 10 + 5, CHART_BASE - rate * CHART_HEIGHT)
        })
        .collect::<Vec<_>>()
        .join(" ");
    (bars, line)
}

pub(in crate::http) struct EndpointRow {
    pub(in crate::http) id: String,
    /// Without credentials or query: titles and lists show this.
    pub(in crate::http) url: String,
    /// Without credentials: the endpoint's own page shows its query too.
    pub(in crate::http) full_url: String,
    pub(in crate::http) description: String,
    pub(in crate::http) event_types: String,
    /// Its channels and filter, in words; empty when it has neither.
    pub(in crate::http) routing: String,
    pub(in crate::http) disabled: bool,
    pub(in crate::http) disabled_reason: String,
    /// Its cap on requests in flight and its rate limit, in words.
    pub(in crate::http) limits: String,
}

impl From<Endpoint> for EndpointRow {
    fn from(e: Endpoint) -> Self {
        Self {
            id: e.id.to_string(),
            url: short_url(&e.url),
            full_url: redact_userinfo(&e.url),
            description: e.description,
            event_types: if e.event_types.is_empty() {
                "all".into()
            } else {
                e.event_types.join(", ")
            },
            routing: [
                (!e.channels.is_empty()).then(|| format!("channels: {}", e.channels.join(", "))),
                e.filter.as_ref().map(|f| format!("filter: {}", f.0)),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" · "),
            disabled: e.disabled,
            disabled_reason: e.disabled_reason.unwrap_or_default(),
            limits: format!(
                "{} · {}",
                e.max_in_flight
                    .map_or("default cap".into(), |n| format!("at most {n} in flight")),
                e.rate_limit.map_or("no rate limit".into(), |n| format!(
                    "at most {n} requests/s"
                ))
            ),
        }
    }
}

/// A time from a form: RFC 3339, or a `datetime-local` value read as UTC. Years of four
/// digits only, as `datetime-local` gives: `%Y` alone also reads `-100000`, a time that
/// PostgreSQL cannot hold.
pub(in crate::http) fn form_time_value(value: &str) -> Option<DateTime<Utc>> {
    let value = value.trim();
    search::rfc3339(value)
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M")
                .or_else(|_| chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f"))
                .ok()
                .map(|t| t.and_utc())
        })
        .filter(|t| (0..=9999).contains(&t.year()))
}

/// How a `datetime-local` input shows a time (UTC).
pub(in crate::http) fn form_time_text(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// `pairs` without the empty ones, as a query string.
pub(in crate::http) fn query_of<'a>(
    pairs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            query.append_pair(name, v);
        }
    }
    query.finish()
}

pub(in crate::http) fn bad_filter(e: String) -> PageError {
    PageError(StatusCode::UNPROCESSABLE_ENTITY, e)
}

/// A delivery of a message, as the dashboard's and the portal's message pages list them.
pub(in crate::http) struct DeliveryRow {
    pub(in crate::http) id: String,
    pub(in crate::http) endpoint_id: String,
    pub(in crate::http) state: String,
    pub(in crate::http) attempt_count: i32,
    pub(in crate::http) next_attempt: String,
    pub(in crate::http) last_error: String,
}

impl From<DeliveryStatus> for DeliveryRow {
    fn from(d: DeliveryStatus) -> Self {
        Self {
            id: d.id.to_string(),
            endpoint_id: d.endpoint_id.to_string(),
            state: d.state.as_str().into(),
            attempt_count: d.attempt_count,
            next_attempt: d.next_attempt_at.map(stamp).unwrap_or_default(),
            last_error: d.last_error.unwrap_or_default(),
        }
    }
}

/// The payload indented for reading; the receiver gets the exact bytes stored.
pub(in crate::http) fn pretty(payload: &str) -> String {
    serde_json::from_str::<serde_json::Value>(payload)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| payload.to_owned())
}

#[cfg(test)]
mod tests {
    use super::form_time_value;

    #[test]
    fn a_form_time_has_a_year_of_four_digits() {
        assert!(form_time_value("2026-12-04T10:30").is_some());
        assert!(form_time_value("1969-01-01T00:00:00.000").is_some());
        assert!(form_time_value("2026-12-04T10:30:00Z").is_some());
        assert_eq!(form_time_value("-100000-01-01T00:00"), None);
        assert_eq!(form_time_value("100000-01-01T00:00"), None);
    }
}
