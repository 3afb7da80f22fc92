//! Portal links: `POST /apps/{app}/portal` signs one, every portal request checks it.
//!
//! A link is `/portal/<session>/`, where the session is
//! `<app id>.<expiry>.<nonce>.<scopes>.<return URL, base64url>.<made at, ms>.<HMAC>`, keyed by
//! the admin token like the dashboard's sessions: nothing is stored per link, every process
//! behind a load balancer accepts it, and rotating the admin token ends every portal session
//! at once. `DELETE /apps/{app}/portal` ends one application's: the links made until then
//! (the application row keeps the moment, which every portal request reads anyway). A link
//! signed before links carried the time they were made counts as made at its expiry less
//! the longest lifetime, the earliest it can have been. The session
//! travels in the URL, not in a cookie, so a portal framed by another site works in
//! browsers that refuse third-party cookies; pages send no referrer, so it does not leak to
//! the sites they link to (`Referrer-Policy: same-origin`).

use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::domain::AppId;
use crate::error::{ApiError, ApiResult, Json};
use crate::http::ServerState;
use crate::http::access::{Access, Scope};
use crate::http::dashboard::session::{mac, same};
use crate::http::openapi::AppParam;
use crate::http::optional_body;

/// A link's lifetime when the request names none.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest a link may live.
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest return URL, in bytes.
const MAX_RETURN_URL: usize = 2048;

/// What a portal session may do besides managing endpoints: what the credential that made
/// the link could do, so a link never grants more than its maker has.
pub const GRANTABLE: &[Scope] = &[Scope::EndpointsManage, Scope::MessagesRead, Scope::Replay];

/// A portal session, once its signature checked out.
#[derive(Debug, Clone)]
pub struct Link {
    pub app: AppId,
    /// Of [`GRANTABLE`]; always `endpoints:manage`.
    pub scopes: Vec<Scope>,
    pub expires_at: DateTime<Utc>,
    /// When it was made: a revocation of the application's links since ends it.
    pub issued_at: DateTime<Utc>,
    /// Where "Back to …" leads (the SaaS's own page), if the link was made with one.
    pub return_url: Option<String>,
}

/// Why a session was refused: each gets a page that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a session this server signed (tampered with, cut short, or signed under an
    /// admin token since rotated).
    Invalid,
    Expired,
}

/// A session for `app` with `scopes` (those of [`GRANTABLE`] among them) until `expires_at`.
pub fn sign(
    config: &Config,
    app: AppId,
    scopes: &[Scope],
    expires_at: DateTime<Utc>,
    return_url: Option<&str>,
) -> String {
    let mask: u8 = GRANTABLE
        .iter()
        .enumerate()
        .filter(|(_, s)| scopes.contains(s))
        .map(|(i, _)| 1u8 << i)
        .sum();
    let nonce: String = rand::random::<[u8; 12]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let ret = URL_SAFE_NO_PAD.encode(return_url.unwrap_or("").as_bytes());
    let body = format!(
        "{app}.{}.{nonce}.{mask}.{ret}.{}",
        expires_at.timestamp(),
        Utc::now().timestamp_millis()
    );
    let tag = mac(config, "portal", &body);
    format!("{body}.{tag}")
}

pub fn verify(config: &Config, session: &str) -> Result<Link, Refusal> {
    let (body, tag) = session.rsplit_once('.').ok_or(Refusal::Invalid)?;
    if !same(tag, &mac(config, "portal", body)) {
        return Err(Refusal::Invalid);
    }
    let mut parts = body.split('.');
    let (Some(app), Some(expires), Some(_nonce), Some(mask), Some(ret), issued, None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(Refusal::Invalid);
    };
    let app: AppId = app.parse().map_err(|_| Refusal::Invalid)?;
    let expires_at = expires
        .parse::<i64>()
        .ok()
        .and_then(|t| DateTime::from_timestamp(t, 0))
        .ok_or(Refusal::Invalid)?;
    if expires_at <= Utc::now() {
        return Err(Refusal::Expired);
    }
    let issued_at = match issued {
        Some(ms) => ms
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or(Refusal::Invalid)?,
        None => expires_at - chrono::TimeDelta::seconds(MAX_LIFETIME.as_secs() as i64),
    };
    let return_url = URL_SAFE_NO_PAD
        .decode(ret)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(Refusal::Invalid)?;
    let mask: u8 = mask.parse().map_err(|_| Refusal::Invalid)?;
    let scopes = GRANTABLE
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, s)| *s)
        .collect();
    Ok(Link {
        app,
        scopes,
        expires_at,
        issued_at,
        return_url: Some(return_url).filter(|u| !u.is_empty()),
    })
}

pub fn routes() -> OpenApiRouter<ServerState> {
    OpenApiRouter::new().routes(routes!(create, revoke))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateLink {
    /// Seconds the link opens the portal for: 60 to 604800 (a week); default 3600.
    #[schema(minimum = 60, maximum = 604800)]
    expires_in: Option<u64>,
    /// An `http(s)://` URL of your own that the portal's "Back" link leads to.
    #[schema(max_length = 2048)]
    return_url: Option<String>,
}

/// A signed portal link: show it in an iframe on your site, or redirect your customer to
/// it. It opens the portal for this application only, until `expires_at`, and shows
/// messages (`messages:read`) and offers replay and recover (`replay`) only if the
/// credential that made it has those scopes.
#[derive(Serialize, utoipa::ToSchema)]
struct PortalLink {
    url: String,
    expires_at: DateTime<Utc>,
}

/// Opens a customer portal session for one application: a signed, short-lived link.
#[utoipa::path(
    post,
    path = "/apps/{app}/portal",
    tag = "portal",
    params(AppParam),
    request_body(content = Option<CreateLink>, description = "Optional: `{}` or no body takes the defaults."),
    responses((status = 201, body = PortalLink))
)]
async fn create(
    State(state): State<ServerState>,
    Extension(access): Extension<Access>,
    Path(app): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<PortalLink>)> {
    let body: CreateLink = optional_body(&body)?;
    let app = state.app_id(&app).await?;
    let lifetime = body
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LIFETIME);
    if lifetime < Duration::from_secs(60) || lifetime > MAX_LIFETIME {
        return Err(ApiError::Invalid(
            "expires_in must be between 60 and 604800 seconds".into(),
        ));
    }
    if let Some(url) = &body.return_url {
        let ok = url.len() <= MAX_RETURN_URL
            && url::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            return Err(ApiError::Invalid(
                "return_url must be an http(s):// URL of at most 2048 bytes".into(),
            ));
        }
    }
    let expires_at = Utc::now() + lifetime;
    let scopes: Vec<Scope> = GRANTABLE
        .iter()
        .copied()
        .filter(|s| access.allows(*s))
        .collect();
    let session = sign(
        &state.config,
        app,
        &scopes,
        expires_at,
        body.return_url.as_deref(),
    );
    tracing::info!(%app, %expires_at, "portal link created");
    Ok((
        StatusCode::CREATED,
        Json(PortalLink {
            url: format!("{}/portal/{session}/", state.config.public_url),
            expires_at,
        }),
    ))
}

/// Ends every portal link made for this application until now, before it expires: a
/// page, form, live feed or channel opened with one is refused from then on (a feed or
/// channel already open ends within 30 seconds). Links made afterwards work.
#[utoipa::path(
    delete,
    path = "/apps/{app}/portal",
    tag = "portal",
    params(AppParam),
    responses((status = 204, description = "Every link made until now is ended."))
)]
async fn revoke(
    State(state): State<ServerState>,
    Path(app): Path<String>,
) -> ApiResult<StatusCode> {
    let app = state.app_id(&app).await?;
    if !crate::db::apps::revoke_portal(&state.pool, app, Utc::now()).await? {
        return Err(ApiError::NotFound("application"));
    }
    tracing::info!(%app, "portal links revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_lookup(|k| match k {
            "DATABASE_URL" => Some("postgres://localhost/herald".into()),
            "HERALD_ADMIN_TOKEN" => Some("0123456789abcdef0123".into()),
            _ => None,
        })
        .unwrap()
    }

    /// A link signed before links carried the moment they were made counts as made as
    /// early as it can have been: a revocation since its expiry less the longest lifetime
    /// ends it.
    #[test]
    fn a_link_without_the_moment_it_was_made_counts_as_made_at_the_earliest() {
        let config = config();
        let app = AppId::new();
        let later = Utc::now() + chrono::Duration::hours(1);
        let body = format!("{app}.{}.00ff.1.", later.timestamp());
        let session = format!("{body}.{}", mac(&config, "portal", &body));
        let link = verify(&config, &session).unwrap();
        assert_eq!(
            link.issued_at.timestamp(),
            later.timestamp() - 7 * 24 * 3600
        );

        let new = verify(&config, &sign(&config, app, &[], later, None)).unwrap();
        let made = (Utc::now() - new.issued_at).num_milliseconds();
        assert!((0..5_000).contains(&made), "made {made} ms ago");
    }

    #[test]
    fn a_link_opens_its_application_until_it_expires_and_not_once_changed() {
        let config = config();
        let app = AppId::new();
        let later = Utc::now() + chrono::Duration::hours(1);
        let scopes = [Scope::EndpointsManage, Scope::Replay];
        let session = sign(
            &config,
            app,
            &scopes,
            later,
            Some("https://acme.example/settings"),
        );
        let link = verify(&config, &session).unwrap();
        assert_eq!(link.app, app);
        assert_eq!(link.scopes, scopes);
        assert_eq!(
            link.return_url.as_deref(),
            Some("https://acme.example/settings")
        );

        // Another application's id, a later expiry, a cut or changed tag: all refused.
        let other = session.replacen(&app.to_string(), &AppId::new().to_string(), 1);
        assert_eq!(verify(&config, &other).unwrap_err(), Refusal::Invalid);
        let (body, tag) = session.rsplit_once('.').unwrap();
        let mut parts: Vec<&str> = body.split('.').collect();
        let longer = (later.timestamp() + 86400).to_string();
        parts[1] = &longer;
        assert_eq!(
            verify(&config, &format!("{}.{tag}", parts.join("."))).unwrap_err(),
            Refusal::Invalid
        );
        assert_eq!(verify(&config, body).unwrap_err(), Refusal::Invalid);
        assert_eq!(verify(&config, "").unwrap_err(), Refusal::Invalid);
        let last = if tag.ends_with('0') { '1' } else { '0' };
        let flipped = format!("{body}.{}{last}", &tag[..tag.len() - 1]);
        assert!(verify(&config, &flipped).is_err());

        // More scopes than it was made with.
        let mut parts: Vec<&str> = body.split('.').collect();
        parts[3] = "7";
        assert_eq!(
            verify(&config, &format!("{}.{tag}", parts.join("."))).unwrap_err(),
            Refusal::Invalid
        );
        let past = sign(
            &config,
            app,
            &scopes,
            Utc::now() - chrono::Duration::seconds(1),
            None,
        );
        assert_eq!(verify(&config, &past).unwrap_err(), Refusal::Expired);
    }
}
