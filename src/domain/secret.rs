use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;

/// A Standard Webhooks signing secret: `whsec_` followed by the standard base64 of 24 to 64
/// random bytes. `Debug` never shows it, so it cannot leak through a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    text: String,
    key: Vec<u8>,
}

impl SigningSecret {
    pub const PREFIX: &'static str = "whsec_";
    const MIN_BYTES: usize = 24;
    const MAX_BYTES: usize = 64;

    /// A fresh secret of 32 random bytes.
    pub fn generate() -> Self {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self {
            text: format!("{}{}", Self::PREFIX, STANDARD.encode(&key)),
            key,
        }
    }

    /// What `parse` accepts, as the API document states it: `whsec_` and the canonical
    /// standard base64 of 24 to 64 bytes (whole groups of four, or a last group padded with
    /// `=` whose unused bits are zero).
    pub const PATTERN: &str = "^whsec_(?:(?:[A-Za-z0-9+/]{4}){8,21}|(?:[A-Za-z0-9+/]{4}){8,20}[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=|(?:[A-Za-z0-9+/]{4}){8,21}[A-Za-z0-9+/][AQgw]==)$";

    pub fn parse(s: &str) -> Result<Self, String> {
        let encoded = s
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| "secret must start with \"whsec_\"".to_owned())?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "secret must be \"whsec_\" followed by standard base64".to_owned())?;
        if !(Self::MIN_BYTES..=Self::MAX_BYTES).contains(&key.len()) {
            return Err(format!(
                "secret must encode {} to {} bytes (it encodes {})",
                Self::MIN_BYTES,
                Self::MAX_BYTES,
                key.len()
            ));
        }
        Ok(Self {
            text: s.to_owned(),
            key,
        })
    }

    /// The HMAC key: the decoded bytes after `whsec_`.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The `whsec_…` text, for the one place that shows it: the API answer to its owner.
    pub fn expose(&self) -> &str {
        &self.text
    }
}

impl utoipa::PartialSchema for SigningSecret {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(Self::PATTERN))
            .into()
    }
}

impl utoipa::ToSchema for SigningSecret {}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_well_formed_secrets() {
        let generated = SigningSecret::generate();
        assert_eq!(SigningSecret::parse(generated.expose()).unwrap(), generated);
        assert_eq!(generated.key().len(), 32);
        assert!(SigningSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_ok());
        assert!(SigningSecret::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_err());
        assert!(SigningSecret::parse("whsec_not base64!").is_err());
        // 16 bytes: too short.
        assert!(SigningSecret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAA==").is_err());
        let long = format!("whsec_{}", STANDARD.encode([7u8; 65]));
        assert!(SigningSecret::parse(&long).is_err());
        assert!(!format!("{generated:?}").contains(generated.expose()));
    }

    /// The API document's pattern says exactly what `parse` accepts.
    #[test]
    fn the_documented_pattern_matches_parse() {
        use rand::RngCore;
        let pattern = regex::Regex::new(SigningSecret::PATTERN).unwrap();
        let mut rng = rand::rng();
        for n in 0..80 {
            for _ in 0..50 {
                let mut key = vec![0u8; n];
                rng.fill_bytes(&mut key);
                let text = format!("whsec_{}", STANDARD.encode(&key));
                assert_eq!(pattern.is_match(&text), (24..=64).contains(&n), "{text}");
                assert_eq!(pattern.is_match(&text), SigningSecret::parse(&text).is_ok());
                // One character off: a stray bit in the padding, or a missing `=`.
                for bad in [
                    text.replacen("A=", "B=", 1),
                    text.trim_end_matches('=').to_owned(),
                ] {
                    assert_eq!(
                        pattern.is_match(&bad),
                        SigningSecret::parse(&bad).is_ok(),
                        "{bad}"
                    );
                }
            }
        }
    }
}
