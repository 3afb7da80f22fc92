//! Public identifiers: a type prefix followed by the 32 hex digits of a time-ordered UUID
//! (`msg_0192f3...`). They sort by creation time, contain no `.`, and say what they name.
//! The database stores the bare UUID.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

macro_rules! public_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0.simple())
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, InvalidId> {
                parse_hex(s, $prefix).map(Self).ok_or(InvalidId)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                id_schema($prefix)
            }
        }

        impl utoipa::ToSchema for $name {}

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(|_| {
                    serde::de::Error::custom(format!("expected an id starting with {}", $prefix))
                })
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidId;

/// How the API document describes an id: its prefix and 32 hex digits.
fn id_schema(prefix: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(format!("^{prefix}[0-9a-fA-F]{{32}}$")))
        .examples([format!("{prefix}019ab8c2f0e47d3a9c1b2d3e4f5a6b7c")])
        .into()
}

fn parse_hex(s: &str, prefix: &str) -> Option<Uuid> {
    let hex = s.strip_prefix(prefix)?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Uuid::try_parse(hex).ok()
}

public_id!(
    /// An application (tenant).
    AppId, "app_"
);
public_id!(
    /// A receiving endpoint of an application.
    EndpointId, "ep_"
);
public_id!(
    /// A message (event). Also the `webhook-id` header receivers dedupe on.
    MessageId, "msg_"
);
public_id!(
    /// One outbox row: a message bound for one endpoint.
    DeliveryId, "dlv_"
);
public_id!(
    /// One HTTP try of a delivery.
    AttemptId, "atm_"
);
public_id!(
    /// A queued removal of an application or an endpoint with its history.
    RemovalId, "rmv_"
);
public_id!(
    /// An API token (its id; the secret itself starts `hrld_`).
    TokenId, "tok_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_prefixes() {
        let id = MessageId::new();
        let text = id.to_string();
        assert!(text.starts_with("msg_") && text.len() == 36 && !text.contains('.'));
        assert_eq!(text.parse::<MessageId>(), Ok(id));
        assert!(text.parse::<AppId>().is_err());
        assert!("msg_xyz".parse::<MessageId>().is_err());
        assert!(
            "msg_0192f3a0-0000-7000-8000-000000000000"
                .parse::<MessageId>()
                .is_err()
        );
    }

    #[test]
    fn ids_sort_by_creation() {
        let a = MessageId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = MessageId::new();
        assert!(a.to_string() < b.to_string());
    }
}
