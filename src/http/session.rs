//! Dashboard sessions: the admin token is exchanged once for a signed, expiring cookie
//! (HttpOnly, SameSite=Strict), and every form that changes state carries a CSRF token
//! derived from that cookie.
//!
//! Both are HMACs keyed by the admin token, so they need no storage, work on every Herald
//! process behind a load balancer, and all die when the token is rotated.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::header::{COOKIE, ORIGIN};
use axum::http::{HeaderMap, HeaderValue};
use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::Config;

pub const COOKIE_NAME: &str = "herald_session";
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

fn mac(config: &Config, purpose: &str, value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(config.admin_token.expose().as_bytes())
        .expect("HMAC takes any key length");
    mac.update(purpose.as_bytes());
    mac.update(b":");
    mac.update(value.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares MACs of both sides under a key of this process, so the comparison runs over
/// 32 bytes whatever was presented: neither the length nor a prefix of the secret shows in
/// its timing.
fn same(a: &str, b: &str) -> bool {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(rand::random);
    let digest = |s: &str| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(s.as_bytes());
        mac.finalize().into_bytes()
    };
    bool::from(digest(a).ct_eq(&digest(b)))
}

/// Whether `presented` is the admin token (constant time).
pub fn is_admin_token(config: &Config, presented: &str) -> bool {
    same(presented, config.admin_token.expose())
}

/// A fresh session cookie's value: `<expiry>.<mac>`.
fn new_session(config: &Config) -> String {
    let expires = Utc::now().timestamp() + LIFETIME.as_secs() as i64;
    let expires = expires.to_string();
    let tag = mac(config, "session", &expires);
    format!("{expires}.{tag}")
}

/// The `Set-Cookie` header that logs a browser in.
pub fn login_cookie(config: &Config) -> HeaderValue {
    let secure = if config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let value = format!(
        "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        new_session(config),
        LIFETIME.as_secs()
    );
    HeaderValue::from_str(&value).expect("cookie is plain ASCII")
}

/// The `Set-Cookie` header that logs a browser out.
pub fn logout_cookie() -> HeaderValue {
    HeaderValue::from_static("herald_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The valid, unexpired session cookie the request carries, if any.
pub fn session(config: &Config, headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.to_owned())?;
    let (expires, tag) = value.split_once('.')?;
    let valid = same(tag, &mac(config, "session", expires))
        && expires
            .parse::<i64>()
            .is_ok_and(|t| t > Utc::now().timestamp());
    valid.then_some(value)
}

/// The CSRF token a page embeds in its forms for this session.
pub fn csrf_token(config: &Config, session: &str) -> String {
    mac(config, "csrf", session)
}

/// A state-changing dashboard request is genuine when it carries the session's CSRF token
/// and, if the browser says where it comes from, comes from our own origin.
pub fn csrf_ok(config: &Config, headers: &HeaderMap, session: &str, token: &str) -> bool {
    let origin_ok = headers
        .get(ORIGIN)
        .and_then(|o| o.to_str().ok())
        .is_none_or(|o| config.origin_allowed(o));
    origin_ok && same(token, &csrf_token(config, session))
}
