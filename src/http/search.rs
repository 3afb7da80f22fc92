//! The filters of the message and attempt lists, as the REST calls and the dashboard's
//! forms take them. Values are taken as text and checked here, so that a bad one is a 422
//! saying which parameter and why, the same from both.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::ServerState;
use super::paging::ListQuery;
use crate::db::attempts::{self, Attempt, Of};
use crate::db::{Listing, messages};
use crate::domain::{AppId, AttemptId, AttemptOutcome, EventType, MessageId};
use crate::error::{ApiError, ApiResult, Json};

/// What an attempt's outcome is, in the document.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Retrying,
    Dead,
}

/// The message list's filters. Every filter given must hold (they combine with "and").
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageFilters {
    /// Only messages of this event type, matched exactly (no wildcards: `invoice.*` is
    /// refused).
    #[param(min_length = 1, max_length = 256, pattern = "^[A-Za-z0-9_.-]+$")]
    pub event_type: Option<String>,
    /// Only messages stored at or after this time (RFC 3339), to the millisecond.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Only messages stored before this time (RFC 3339), to the millisecond. A window
    /// that ends before it starts is empty.
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// Only the messages sent with this idempotency key (exact).
    #[param(min_length = 1, max_length = 256)]
    pub idempotency_key: Option<String>,
}

impl MessageFilters {
    /// The dashboard's form sends every field, empty when unused.
    pub fn without_empty(self) -> Self {
        Self {
            event_type: non_blank(self.event_type),
            since: non_blank(self.since),
            until: non_blank(self.until),
            idempotency_key: non_blank(self.idempotency_key),
        }
    }

    /// The search these filters ask for, from the page that ends before `cursor`.
    /// `None`: nothing can match (a key no message can carry).
    pub fn search(
        &self,
        cursor: Option<MessageId>,
        time: impl Fn(&str) -> Option<DateTime<Utc>>,
    ) -> Result<Option<messages::Search>, ApiError> {
        let event_type = self
            .event_type
            .as_deref()
            .map(|e| {
                EventType::parse(e).map_err(|why| {
                    ApiError::Invalid(if e.contains('*') {
                        "event_type is matched exactly; wildcards such as invoice.* are not \
                         supported"
                            .into()
                    } else {
                        why
                    })
                })
            })
            .transpose()?;
        let bound = |name: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| {
                    time(v).map(id_floor).ok_or_else(|| {
                        ApiError::Invalid(format!(
                            "{name} must be an RFC 3339 time such as 2026-11-24T08:00:00Z"
                        ))
                    })
                })
                .transpose()
        };
        let from = bound("since", &self.since)?.unwrap_or(Uuid::nil());
        let until = bound("until", &self.until)?.unwrap_or(Uuid::max());
        let before = cursor.map_or(until, |c| c.0.min(until));
        let key = self.idempotency_key.as_deref();
        if let Some(k) = key
            && (k.is_empty() || k.chars().count() > 256)
        {
            return Err(ApiError::Invalid(
                "idempotency_key must be 1 to 256 characters".into(),
            ));
        }
        // A key longer than 256 bytes, or with a NUL (which PostgreSQL's text cannot
        // hold), was never stored: nothing to look for.
        if key.is_some_and(|k| k.len() > 256 || k.contains('\0')) {
            return Ok(None);
        }
        Ok(Some(messages::Search {
            event_type: event_type.map(EventType::into_inner),
            idempotency_key: key.map(str::to_owned),
            from,
            before,
        }))
    }
}

/// The attempt lists' filters.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptFilters {
    /// Only attempts with this outcome.
    #[param(value_type = Option<Outcome>, inline)]
    pub outcome: Option<String>,
    /// Only attempts answered with this HTTP status: a code (`503`) or a class (`5xx`).
    /// Attempts that got no answer (a timeout, a refused connection) have no status and
    /// match no status filter.
    #[param(pattern = "^[1-5]([0-9]{2}|xx)$")]
    pub status: Option<String>,
}

impl AttemptFilters {
    pub fn without_empty(self) -> Self {
        Self {
            outcome: non_blank(self.outcome),
            status: non_blank(self.status),
        }
    }

    pub fn search(&self, cursor: Option<AttemptId>) -> Result<attempts::Search, ApiError> {
        let outcome = self
            .outcome
            .as_deref()
            .map(|o| {
                AttemptOutcome::parse(o).ok_or_else(|| {
                    ApiError::Invalid("outcome must be succeeded, retrying or dead".into())
                })
            })
            .transpose()?;
        let status = self
            .status
            .as_deref()
            .map(|s| {
                status_range(s).ok_or_else(|| {
                    ApiError::Invalid(
                        "status must be an HTTP status code (100 to 599) or a class such as 5xx"
                            .into(),
                    )
                })
            })
            .transpose()?;
        Ok(attempts::Search {
            outcome,
            status,
            before: cursor,
        })
    }
}

/// A form field left empty (or blank) is a filter not given.
fn non_blank(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// An attempt list as the REST API answers it (`GET .../endpoints/{ep}/attempts` and
/// `GET .../messages/{msg}/attempts`): the attempts of `of`, an application's endpoint or
/// message, that `filters` match, one page of them.
pub async fn list_attempts(
    state: &ServerState,
    app: AppId,
    of: Of,
    ListQuery { limit, cursor }: ListQuery<AttemptId>,
    filters: &AttemptFilters,
) -> ApiResult<Json<Listing<Attempt>>> {
    let search = filters.search(cursor)?;
    let rows = attempts::list(&state.pool, app, of, &search, limit).await?;
    Ok(Json(Listing::from_rows(rows, limit, |a| a.id.to_string())))
}

/// `503` → 503..=503, `5xx` → 500..=599.
fn status_range(s: &str) -> Option<(i32, i32)> {
    let b = s.as_bytes();
    if b.len() != 3 || !(b'1'..=b'5').contains(&b[0]) {
        return None;
    }
    let class = i32::from(b[0] - b'0') * 100;
    match &b[1..] {
        b"xx" => Some((class, class + 99)),
        [t, u] if t.is_ascii_digit() && u.is_ascii_digit() => {
            let code = class + i32::from(t - b'0') * 10 + i32::from(u - b'0');
            Some((code, code))
        }
        _ => None,
    }
}

/// RFC 3339, as the REST calls take times.
pub fn rfc3339(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The lowest UUIDv7 of the millisecond `at` falls in (the Rust twin of
/// `herald.uuid_v7_floor`, which rounds where this truncates: the ids Herald makes in
/// SQL round too, so an id of `at`'s own millisecond is at or above this). Times before
/// 1970 give the lowest id of all, so a window that starts there holds every message.
pub fn id_floor(at: DateTime<Utc>) -> Uuid {
    let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_codes_or_classes() {
        assert_eq!(status_range("503"), Some((503, 503)));
        assert_eq!(status_range("5xx"), Some((500, 599)));
        assert_eq!(status_range("2xx"), Some((200, 299)));
        assert_eq!(status_range("100"), Some((100, 100)));
        for bad in [
            "", "99", "600", "6xx", "5XX", "5x0", "50", "5000", "+50", "ab1",
        ] {
            assert_eq!(status_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_id_floor_is_the_millisecond_in_the_id() {
        let at = DateTime::parse_from_rfc3339("2026-11-24T08:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let floor = id_floor(at);
        // herald.uuid_v7_floor('2026-11-24T08:00:00.123456Z') gives the same.
        assert_eq!(floor.to_string(), "01a20c91-a07b-7000-8000-000000000000");
        let (secs, nanos) = floor.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos), (at.timestamp() as u64, 123_000_000));
        let before_1970 = DateTime::parse_from_rfc3339("1960-01-01T00:00:00Z").unwrap();
        assert_eq!(
            id_floor(before_1970.with_timezone(&Utc)),
            id_floor(DateTime::UNIX_EPOCH)
        );
    }
}
