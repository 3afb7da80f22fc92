//! What the dashboard (and `/api/v1/stats`) shows beyond the REST resources: queue
//! health, throughput per minute, success rates, dead letters, tokens with their
//! applications' names.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

use crate::db::events::DeadDelivery;
use crate::db::tokens::Token;
use crate::domain::{AppId, DeliveryId, EndpointId};

#[derive(Debug, Clone, Copy, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct QueueStats {
    /// Deliveries waiting for an attempt (due now or scheduled for a retry).
    pub pending: i64,
    pub in_flight: i64,
    /// Seconds since the oldest pending delivery was created; 0 with none pending.
    pub oldest_pending_age_seconds: f64,
    /// Seconds since the oldest message still kept was sent; 0 with none. Retention keeps
    /// it below `HERALD_RETENTION` plus a partition interval or so (more only while a
    /// delivery of an older message is still live).
    pub oldest_message_age_seconds: f64,
}

pub async fn queue(db: impl PgExecutor<'_>) -> sqlx::Result<QueueStats> {
    sqlx::query_as(
        // One state per subquery: each is a scan of that state's partial index, in the
        // partitions from the live floor on (migration 0016), while `state in (...)`
        // matched neither index and read every delivery of every partition (0.2 s with 3
        // million in history). The floor as a subquery, read once: the function
        // `live_floor()` in a scan's condition would be called for each row.
        "select (select count(*) from delivery
                  where state = 'pending' and id >= (select floor_id from live_floor)) as pending,
                (select count(*) from delivery
                  where state = 'in_flight' and id >= (select floor_id from live_floor)) as in_flight,
                coalesce(extract(epoch from now() - (select min(created_at) from delivery
                                                      where state = 'pending'
                                                        and id >= (select floor_id from live_floor))),
                         0)::float8
                    as oldest_pending_age_seconds,
                coalesce(extract(epoch from now() - (select m.created_at from message m
                                                      order by m.id limit 1)),
                         0)::float8
                    as oldest_message_age_seconds",
    )
    .fetch_one(db)
    .await
}

/// Attempts that started in one minute.
#[derive(Debug, Clone, Copy, Default, Serialize, sqlx::FromRow)]
pub struct Minute {
    /// Unix seconds at the start of the minute.
    pub minute: i64,
    pub succeeded: i64,
    pub total: i64,
}

/// The last `minutes` minutes, oldest first, with empty minutes filled in: read from the
/// per-minute counts (migration 0017), so it costs the endpoints and minutes shown, not
/// the attempts behind them.
pub async fn throughput(db: impl PgExecutor<'_>, minutes: i64) -> sqlx::Result<Vec<Minute>> {
    let rows: Vec<Minute> = sqlx::query_as(
        "select extract(epoch from minute)::bigint as minute,
                sum(succeeded)::bigint as succeeded, sum(total)::bigint as total
           from attempt_minute
          where minute >= date_trunc('minute', now()) - make_interval(mins => $1::int - 1)
          group by 1",
    )
    .bind(minutes)
    .fetch_all(db)
    .await?;
    let now = Utc::now().timestamp() / 60 * 60;
    Ok((0..minutes)
        .rev()
        .map(|ago| {
            let minute = now - ago * 60;
            rows.iter()
                .find(|r| r.minute == minute)
                .copied()
                .unwrap_or(Minute {
                    minute,
                    ..Minute::default()
                })
        })
        .collect())
}

#[derive(Debug, Clone, Copy, Default, Serialize, sqlx::FromRow)]
pub struct Rate {
    pub succeeded: i64,
    pub total: i64,
}

impl Rate {
    /// Percent of attempts that succeeded, if there were any.
    pub fn percent(&self) -> Option<f64> {
        (self.total > 0).then(|| 100.0 * self.succeeded as f64 / self.total as f64)
    }
}

/// An endpoint's attempts in the last 24 hours (to the minute).
pub async fn endpoint_rate(db: impl PgExecutor<'_>, endpoint: EndpointId) -> sqlx::Result<Rate> {
    sqlx::query_as(
        "select coalesce(sum(succeeded), 0)::bigint as succeeded,
                coalesce(sum(total), 0)::bigint as total
           from attempt_minute
          where endpoint_id = $1
            and minute >= date_trunc('minute', now()) - interval '24 hours'",
    )
    .bind(endpoint)
    .fetch_one(db)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppSummary {
    pub id: AppId,
    pub uid: Option<String>,
    pub name: String,
    pub endpoints: i64,
    pub disabled_endpoints: i64,
    pub created_at: DateTime<Utc>,
}

pub async fn apps(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<AppSummary>> {
    sqlx::query_as(
        "select a.id, a.uid, a.name, a.created_at,
                (select count(*) from endpoint e
                  where e.app_id = a.id and e.removed_at is null) as endpoints,
                (select count(*) from endpoint e
                  where e.app_id = a.id and e.disabled and e.removed_at is null)
                    as disabled_endpoints
           from application a where a.removed_at is null order by a.id desc limit $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A token as the Tokens page lists it: with the name of the application it is bound to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenSummary {
    #[sqlx(flatten)]
    pub token: Token,
    pub app_name: Option<String>,
    /// Its application was removed: it is refused, and goes when the application's rows do.
    pub app_removed: bool,
}

/// The newest `limit` tokens, newest first.
pub async fn tokens(db: impl PgExecutor<'_>, limit: i64) -> sqlx::Result<Vec<TokenSummary>> {
    sqlx::query_as(
        "select t.id, t.name, t.app_id, t.scopes, t.expires_at, t.created_at, t.last_used_at,
                a.name as app_name, coalesce(a.removed_at is not null, false) as app_removed
           from api_token t left join application a on a.id = t.app_id
          order by t.id desc limit $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Dead deliveries of every application, newest first.
pub async fn dead_letters(
    db: impl PgExecutor<'_>,
    before: Option<DeliveryId>,
    limit: i64,
) -> sqlx::Result<Vec<DeadDelivery>> {
    sqlx::query_as(
        "select d.id, d.message_id, d.endpoint_id, m.app_id, m.event_type, d.attempt_count,
                d.last_error, d.updated_at
           from delivery d
          cross join lateral (select m.app_id, m.event_type from message m
                               where m.id = d.message_id offset 0) m
          where d.state = 'dead' and ($1::uuid is null or d.id < $1)
          order by d.id desc limit $2",
    )
    .bind(before)
    .bind(limit + 1)
    .fetch_all(db)
    .await
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadEndpoint {
    pub id: EndpointId,
    pub app_id: AppId,
    pub url: String,
    pub dead: i64,
}

/// Endpoints [`dead_by_endpoint`] walks at most, and the count at which it stops counting
/// one endpoint's dead deliveries: the page costs the same with a million of them.
pub const DEAD_ENDPOINTS_WALKED: i64 = 100;
pub const DEAD_COUNTED: i64 = 1_000;

/// Endpoints with dead deliveries, most first: what a bulk replay picks from. The first
/// [`DEAD_ENDPOINTS_WALKED`] endpoints with any (in id order: a loose index scan, one probe
/// per endpoint), each counted up to [`DEAD_COUNTED`].
pub async fn dead_by_endpoint(
    db: impl PgExecutor<'_>,
    limit: i64,
) -> sqlx::Result<Vec<DeadEndpoint>> {
    sqlx::query_as(
        "with recursive dead_endpoint as (
             (select d.endpoint_id, 1 as n from delivery d
               where d.state = 'dead' order by d.endpoint_id limit 1)
             union all
             select next.endpoint_id, prev.n + 1
               from dead_endpoint prev
              cross join lateral (
                    select d.endpoint_id from delivery d
                     where d.state = 'dead' and d.endpoint_id > prev.endpoint_id
                     order by d.endpoint_id limit 1) next
              where prev.n < $2
         )
         select e.id, e.app_id, e.url, c.dead
           from dead_endpoint de
           join endpoint e on e.id = de.endpoint_id and e.removed_at is null
          cross join lateral (
                select count(*) as dead
                  from (select 1 from delivery d
                         where d.endpoint_id = de.endpoint_id and d.state = 'dead'
                         limit $3) x) c
          order by c.dead desc, e.id
          limit $1",
    )
    .bind(limit)
    .bind(DEAD_ENDPOINTS_WALKED)
    .bind(DEAD_COUNTED)
    .fetch_all(db)
    .await
}
