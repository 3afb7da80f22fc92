//! API tokens (migration 0020): created with a secret shown once, stored as its SHA-256,
//! looked up by that hash on every request (so a revocation holds in every process at
//! once), and revoked by deleting the row.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgExecutor;

use crate::domain::{AppId, TokenId};

/// What every token's secret starts with, so that secret scanners can match it.
pub const PREFIX: &str = "hrld_";

/// A token as lists show it: everything but its secret.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Token {
    pub id: TokenId,
    pub name: String,
    /// The one application it reaches; `null`: every application its scopes allow.
    pub app_id: Option<AppId>,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// Within a minute: uses closer together than that are not written down each time.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A new token's secret: the prefix and 64 hex digits of randomness.
pub fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{PREFIX}{hex}")
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

pub async fn create(
    db: impl PgExecutor<'_>,
    name: &str,
    app: Option<AppId>,
    scopes: &[String],
    expires_at: Option<DateTime<Utc>>,
    secret: &str,
) -> sqlx::Result<Token> {
    sqlx::query_as(
        "insert into api_token (id, name, app_id, scopes, secret_hash, expires_at)
         values ($1, $2, $3, $4, $5, $6)
         returning id, name, app_id, scopes, expires_at, created_at, last_used_at",
    )
    .bind(TokenId::new())
    .bind(name)
    .bind(app)
    .bind(scopes)
    .bind(hash(secret))
    .bind(expires_at)
    .fetch_one(db)
    .await
}

pub async fn list(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<Token>> {
    sqlx::query_as(
        "select id, name, app_id, scopes, expires_at, created_at, last_used_at
           from api_token order by id",
    )
    .fetch_all(db)
    .await
}

/// Revokes a token; false when there is none by that id.
pub async fn delete(db: impl PgExecutor<'_>, id: TokenId) -> sqlx::Result<bool> {
    let done = sqlx::query("delete from api_token where id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// What a request's token may reach: found by [`authenticate`].
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Credential {
    pub id: TokenId,
    pub expires_at: Option<DateTime<Utc>>,
    pub scopes: Vec<String>,
    pub app_id: Option<AppId>,
    pub app_uid: Option<String>,
}

/// The token whose secret this is, if it exists, has not expired, and its application (if
/// it has one) has not been removed; notes its use (at most once a minute, so that a busy
/// token does not write a row per request).
pub async fn authenticate(db: &sqlx::PgPool, secret: &str) -> sqlx::Result<Option<Credential>> {
    sqlx::query_as(
        "with found as (
             select t.id, t.scopes, t.app_id, a.uid as app_uid, t.expires_at, t.last_used_at
               from api_token t
               left join application a on a.id = t.app_id
              where t.secret_hash = $1 and (t.expires_at is null or t.expires_at > now())
                and (t.app_id is null or (a.id is not null and a.removed_at is null))
         ), used as (
             update api_token t set last_used_at = now()
               from found f
              where t.id = f.id
                and (f.last_used_at is null or f.last_used_at < now() - interval '1 minute')
         )
         select id, scopes, app_id, app_uid, expires_at from found",
    )
    .bind(hash(secret))
    .fetch_optional(db)
    .await
}

/// Whether the token `id` still stands: not revoked, not expired, and its application (if it
/// has one) not removed.
pub async fn stands(db: &sqlx::PgPool, id: TokenId) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "select exists (
             select 1 from api_token t
               left join application a on a.id = t.app_id
              where t.id = $1 and (t.expires_at is null or t.expires_at > now())
                and (t.app_id is null or (a.id is not null and a.removed_at is null)))",
    )
    .bind(id)
    .fetch_one(db)
    .await
}
