//! Standard Webhooks 1.0 signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::SigningSecret;

type HmacSha256 = Hmac<Sha256>;

/// How far a receiver lets `webhook-timestamp` drift from its clock, as the official
/// libraries do.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// One `v1,` signature.
pub fn sign(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = mac_for(secret.key());
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` header value: one signature per valid secret, separated by
/// single spaces (several during a rotation's grace period).
pub fn signature_header<'a>(
    secrets: impl IntoIterator<Item = &'a SigningSecret>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let mut header = String::new();
    for secret in secrets {
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str(&sign(secret, msg_id, timestamp, body));
    }
    header
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("webhook-timestamp is not an integer number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s away from now, more than the tolerance")]
    OutsideTolerance(i64),
    #[error("no v1 signature in webhook-signature matches")]
    NoMatch,
}

/// Check a received request. `now` is the receiver's clock in Unix seconds;
/// `tolerance_secs` of `i64::MAX` accepts any timestamp (`herald verify --ignore-timestamp`).
pub fn verify(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    // Widened: a timestamp the sender controls can be anywhere in i64, and `now - ts` or
    // its absolute value must not overflow.
    let drift = i128::from(now) - i128::from(ts);
    let unbounded = tolerance_secs == i64::MAX;
    if !unbounded && drift.unsigned_abs() > u128::try_from(tolerance_secs).unwrap_or(0) {
        let shown = i64::try_from(drift).unwrap_or(if drift > 0 { i64::MAX } else { i64::MIN });
        return Err(VerifyError::OutsideTolerance(shown));
    }
    let mut signed = Vec::with_capacity(msg_id.len() + timestamp.len() + body.len() + 2);
    signed.extend_from_slice(msg_id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(ts.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let matches = signature_header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|given| {
            let mut mac = mac_for(secret.key());
            mac.update(&signed);
            // verify_slice compares in constant time.
            mac.verify_slice(&given).is_ok()
        });
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

fn mac_for(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SigningSecret {
        SigningSecret::parse(s).unwrap()
    }

    // The known-answer vectors of the official Standard Webhooks libraries.
    #[test]
    fn known_answer_vectors() {
        assert_eq!(
            sign(
                &secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#,
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        assert_eq!(
            sign(
                &secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#,
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn header_carries_one_signature_per_secret() {
        let old = secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let new = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let header = signature_header([&new, &old], "msg_1", 10, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        for s in [&old, &new] {
            assert_eq!(verify(s, "msg_1", "10", &header, b"{}", 10, 300), Ok(()));
        }
    }

    #[test]
    fn verify_refuses_tampering_and_stale_timestamps() {
        let s = secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let header = sign(&s, "msg_1", 1000, b"{}");
        assert_eq!(
            verify(&s, "msg_1", "1000", &header, b"{}", 1100, 300),
            Ok(())
        );
        assert_eq!(
            verify(&s, "msg_1", "1000", &header, b"{ }", 1100, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&s, "msg_2", "1000", &header, b"{}", 1100, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&s, "msg_1", "1000", &header, b"{}", 2000, 300),
            Err(VerifyError::OutsideTolerance(1000))
        );
        assert_eq!(
            verify(&s, "msg_1", "soon", &header, b"{}", 1000, 300),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn extreme_timestamps_are_refused_without_overflow() {
        let s = secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let now = 1_700_000_000;
        for ts in [i64::MIN, i64::MIN + 1, i64::MAX, -1] {
            let header = sign(&s, "msg_1", ts, b"{}");
            let got = verify(&s, "msg_1", &ts.to_string(), &header, b"{}", now, 300);
            assert!(
                matches!(got, Err(VerifyError::OutsideTolerance(_))),
                "{ts}: {got:?}"
            );
        }
        let header = sign(&s, "msg_1", i64::MIN, b"{}");
        assert_eq!(
            verify(&s, "msg_1", &i64::MIN.to_string(), &header, b"{}", now, 300),
            Err(VerifyError::OutsideTolerance(i64::MAX))
        );
        // Both ends of the clock at once: the drift does not fit in i64 at all.
        let header = sign(&s, "msg_1", i64::MAX, b"{}");
        assert_eq!(
            verify(
                &s,
                "msg_1",
                &i64::MAX.to_string(),
                &header,
                b"{}",
                i64::MIN,
                300
            ),
            Err(VerifyError::OutsideTolerance(i64::MIN))
        );
    }

    #[test]
    fn an_unbounded_tolerance_ignores_any_timestamp() {
        let s = secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        for (ts, now) in [
            (i64::MIN, 1_700_000_000),
            (i64::MAX, 1_700_000_000),
            (i64::MAX, i64::MIN),
            (i64::MIN, i64::MAX),
        ] {
            let header = sign(&s, "msg_1", ts, b"{}");
            assert_eq!(
                verify(&s, "msg_1", &ts.to_string(), &header, b"{}", now, i64::MAX),
                Ok(()),
                "{ts} at {now}"
            );
        }
        // The signature is still checked.
        let header = sign(&s, "msg_1", i64::MIN, b"{}");
        assert_eq!(
            verify(
                &s,
                "msg_1",
                &i64::MIN.to_string(),
                &header,
                b"{ }",
                0,
                i64::MAX
            ),
            Err(VerifyError::NoMatch)
        );
    }
}
