use std::fmt;

/// An event type such as `invoice.paid`: 1 to 256 characters of `[A-Za-z0-9_.-]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventType(String);

impl EventType {
    pub const MAX_LEN: usize = 256;

    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(format!(
                "event_type must be 1 to {} characters long",
                Self::MAX_LEN
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(format!(
                "event_type may only contain A-Z, a-z, 0-9, '_', '.' and '-' (found {c:?})"
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl utoipa::PartialSchema for EventType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(Self::MAX_LEN))
            .pattern(Some("^[A-Za-z0-9_.-]+$"))
            .examples(["invoice.paid"])
            .into()
    }
}

impl utoipa::ToSchema for EventType {}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet_only() {
        assert!(EventType::parse("invoice.paid").is_ok());
        assert!(EventType::parse("A-z_0.9").is_ok());
        assert!(EventType::parse(&"a".repeat(256)).is_ok());
        assert!(EventType::parse(&"a".repeat(257)).is_err());
        assert!(EventType::parse("").is_err());
        assert!(EventType::parse("invoice paid").is_err());
        assert!(EventType::parse("invoice/paid").is_err());
        assert!(EventType::parse("invoicé").is_err());
    }
}
