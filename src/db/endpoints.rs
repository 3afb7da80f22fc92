use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::domain::{AppId, EndpointId, SigningSecret, redact_userinfo};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Endpoint {
    pub id: EndpointId,
    pub app_id: AppId,
    #[serde(serialize_with = "shown_url")]
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub channels: Vec<String>,
    /// A JSON object the payload must contain; `null`: none.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Json<serde_json::Value>>,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    pub max_in_flight: Option<i32>,
    /// Requests per second at most; `null`: unlimited.
    pub rate_limit: Option<i32>,
    /// Custom headers, each value shown as `••••` (they are the receiver's credentials):
    /// `GET .../endpoints/{ep}/headers` shows them.
    #[schema(value_type = BTreeMap<String, String>)]
    #[serde(serialize_with = "redacted_headers")]
    pub headers: Json<BTreeMap<String, String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a read shows of a custom header's value.
pub const REDACTED: &str = "••••";

fn redacted_headers<S: Serializer>(
    headers: &Json<BTreeMap<String, String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(headers.0.keys().map(|name| (name, REDACTED)))
}

/// A URL as reads show it: never with a user name or password.
pub fn shown_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_userinfo(url))
}

/// Everything an endpoint has that a caller may set; `None` on update means "unchanged".
#[derive(Debug, Default)]
pub struct EndpointFields {
    pub url: Option<String>,
    /// Whether `url` is set by a portal customer (for whom private targets are a setting
    /// of their own, `HERALD_PORTAL_ALLOW_PRIVATE_TARGETS`), not through the API.
    pub url_by_portal: bool,
    pub description: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    /// `Some(None)` removes the filter.
    pub filter: Option<Option<serde_json::Value>>,
    pub disabled: Option<bool>,
    pub max_in_flight: Option<Option<i32>>,
    pub rate_limit: Option<Option<i32>>,
    pub headers: Option<BTreeMap<String, String>>,
}

macro_rules! endpoint_columns {
    () => {
        "id, app_id, url, description, event_types, channels, filter, disabled, \
                       disabled_reason, max_in_flight, rate_limit, headers, created_at, updated_at"
    };
}

/// Whether `app` may have one more endpoint under `max`. Holds the application's row until
/// the transaction ends, so that concurrent creations count one after the other (a lock
/// that sends, which only take the row's key share, do not wait for).
pub async fn room_for_one(tx: &mut PgConnection, app: AppId, max: i64) -> sqlx::Result<bool> {
    sqlx::query("select 1 from application where id = $1 for no key update")
        .bind(app)
        .execute(&mut *tx)
        .await?;
    // A statement of its own: its snapshot sees what the lock's previous holder committed.
    // Counts no further than the limit: an application's check costs at most `max` rows.
    let under: bool = sqlx::query_scalar(
        "select count(*) < $2
           from (select 1 from endpoint where app_id = $1 and removed_at is null limit $2) e",
    )
    .bind(app)
    .bind(max)
    .fetch_one(&mut *tx)
    .await?;
    Ok(under)
}

pub async fn create(
    tx: &mut PgConnection,
    app_id: AppId,
    fields: EndpointFields,
    secret: &SigningSecret,
) -> sqlx::Result<Endpoint> {
    let disabled = fields.disabled.unwrap_or(false);
    let endpoint: Endpoint = sqlx::query_as(concat!(
        "insert into endpoint (id, app_id, url, description, event_types, disabled, \
                               disabled_reason, max_in_flight, rate_limit, headers, channels,
                               filter, url_by_portal)
         values ($1, $2, $3, $4, $5, $6, case when $6 then 'disabled by an operator' end, $7, $8,
                 $9, $10, $11, $12)
         returning ",
        endpoint_columns!()
    ))
    .bind(EndpointId::new())
    .bind(app_id)
    .bind(fields.url.unwrap_or_default())
    .bind(fields.description.unwrap_or_default())
    .bind(fields.event_types.unwrap_or_default())
    .bind(disabled)
    .bind(fields.max_in_flight.flatten())
    .bind(fields.rate_limit.flatten())
    .bind(Json(fields.headers.unwrap_or_default()))
    .bind(fields.channels.unwrap_or_default())
    .bind(fields.filter.flatten().map(Json))
    .bind(fields.url_by_portal)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("insert into endpoint_secret (endpoint_id, secret) values ($1, $2)")
        .bind(endpoint.id)
        .bind(secret.expose())
        .execute(&mut *tx)
        .await?;
    Ok(endpoint)
}

pub async fn find(
    db: impl PgExecutor<'_>,
    app_id: AppId,
    id: EndpointId,
) -> sqlx::Result<Option<Endpoint>> {
    sqlx::query_as(concat!(
        "select ",
        endpoint_columns!(),
        " from endpoint where app_id = $1 and id = $2 and removed_at is null"
    ))
    .bind(app_id)
    .bind(id)
    .fetch_optional(db)
    .await
}

pub async fn list(
    db: impl PgExecutor<'_>,
    app_id: AppId,
    after: Option<EndpointId>,
    limit: i64,
) -> sqlx::Result<Vec<Endpoint>> {
    sqlx::query_as(concat!(
        "select ",
        endpoint_columns!(),
        " from endpoint
          where app_id = $1 and removed_at is null and ($2::uuid is null or id > $2)
          order by id limit $3"
    ))
    .bind(app_id)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(db)
    .await
}

pub async fn update(
    db: impl PgExecutor<'_>,
    app_id: AppId,
    id: EndpointId,
    fields: EndpointFields,
) -> sqlx::Result<Option<Endpoint>> {
    // Some(None) sets null (the default), None leaves the column alone.
    let (set_max, max_in_flight) = (
        fields.max_in_flight.is_some(),
        fields.max_in_flight.flatten(),
    );
    let (set_rate, rate_limit) = (fields.rate_limit.is_some(), fields.rate_limit.flatten());
    let (set_filter, filter) = (fields.filter.is_some(), fields.filter.flatten());
    sqlx::query_as(concat!(
        "update endpoint set
             url = coalesce($3, url),
             url_by_portal = case when $3 is null then url_by_portal else $15 end,
             description = coalesce($4, description),
             event_types = coalesce($5, event_types),
             disabled = coalesce($6, disabled),
             disabled_reason = case
                 when $6 is null then disabled_reason
                 when $6 then coalesce(disabled_reason, 'disabled by an operator')
             end,
             -- re-enabling starts a fresh failure window
             failing_since = case when $6 = false then null else failing_since end,
             max_in_flight = case when $7 then $8 else max_in_flight end,
             headers = coalesce($9, headers),
             rate_limit = case when $10 then $11 else rate_limit end,
             channels = coalesce($12, channels),
             filter = case when $13 then $14 else filter end,
             updated_at = now()
          where app_id = $1 and id = $2 and removed_at is null
          returning ",
        endpoint_columns!()
    ))
    .bind(app_id)
    .bind(id)
    .bind(fields.url)
    .bind(fields.description)
    .bind(fields.event_types)
    .bind(fields.disabled)
    .bind(set_max)
    .bind(max_in_flight)
    .bind(fields.headers.map(Json))
    .bind(set_rate)
    .bind(rate_limit)
    .bind(fields.channels)
    .bind(set_filter)
    .bind(filter.map(Json))
    .bind(fields.url_by_portal)
    .fetch_optional(db)
    .await
}

/// The secret new signatures are made with.
pub async fn current_secret(
    db: impl PgExecutor<'_>,
    id: EndpointId,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "select secret from endpoint_secret where endpoint_id = $1 and expires_at is null",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Makes `secret` the endpoint's signing secret, in a transaction of its own; the previous
/// one keeps signing for `grace`. The REST rotation and the dashboard's rotate button both
/// call this.
pub async fn rotate_to(
    pool: &PgPool,
    id: EndpointId,
    secret: &SigningSecret,
    grace: Duration,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    // Serialises concurrent rotations of one endpoint.
    sqlx::query("select 1 from endpoint where id = $1 for update")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "update endpoint_secret
            set expires_at = now() + make_interval(secs => $2)
          where endpoint_id = $1 and expires_at is null",
    )
    .bind(id)
    .bind(grace.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    // Secrets past their grace period are dead weight; drop them while we are here.
    sqlx::query("delete from endpoint_secret where endpoint_id = $1 and expires_at < now()")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("insert into endpoint_secret (endpoint_id, secret) values ($1, $2)")
        .bind(id)
        .bind(secret.expose())
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}
