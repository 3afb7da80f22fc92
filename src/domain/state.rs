//! The states the schema spells as PostgreSQL enums (migrations 0001 and 0002), as Rust
//! enums mapped to them: a misspelt state fails to compile instead of failing a query.
//! Each is written, in the API and the live feed, as the database spells it.

use std::borrow::Cow;

/// An enum of the schema: `type_name` is its PostgreSQL name, each variant's text its label.
macro_rules! schema_enum {
    (
        $(#[$doc:meta])* $name:ident = $type_name:literal {
            $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type)]
        #[sqlx(type_name = $type_name)]
        pub enum $name {
            $($(#[$vdoc])* #[sqlx(rename = $text)] $variant,)+
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        /// For a column a SQL function returns as text.
        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(s: String) -> Result<Self, String> {
                Self::parse(&s).ok_or_else(|| format!("{s:?} is not a {}", $type_name))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                enum_schema(&[$($text),+])
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

fn enum_schema(labels: &[&str]) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(labels.iter().copied()))
        .into()
}

schema_enum! {
    /// `herald.delivery_state`: where one outbox row is.
    DeliveryState = "delivery_state" {
        /// Waiting for its time (a first send, a retry, a replay).
        Pending = "pending",
        /// Claimed by a worker, under a lease.
        InFlight = "in_flight",
        Succeeded = "succeeded",
        /// Out of retries, or its endpoint was disabled or its payload erased.
        Dead = "dead",
    }
}

schema_enum! {
    /// `herald.attempt_outcome`: what one attempt led to.
    AttemptOutcome = "attempt_outcome" {
        Succeeded = "succeeded",
        /// Failed, and another attempt is scheduled.
        Retrying = "retrying",
        /// Failed, and none is.
        Dead = "dead",
    }
}

schema_enum! {
    /// `herald.attempt_trigger`: why a delivery was (last) sent.
    AttemptTrigger = "attempt_trigger" {
        /// The first send or a retry on the schedule.
        Scheduled = "scheduled",
        /// An operator asked (a replay, a retry now, a recover).
        Replay = "replay",
    }
}

schema_enum! {
    /// `herald.event_kind`: what an entry of the live feed's log is about.
    EventKind = "event_kind" {
        MessageCreated = "message.created",
        Attempt = "attempt",
        DeliveryDead = "delivery.dead",
        EndpointDisabled = "endpoint.disabled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_label_parses_back_and_serialises_as_itself() {
        fn check<T: Copy + PartialEq + std::fmt::Debug + serde::Serialize>(
            all: &[T],
            as_str: fn(T) -> &'static str,
            parse: fn(&str) -> Option<T>,
        ) {
            for &v in all {
                assert_eq!(parse(as_str(v)), Some(v));
                assert_eq!(serde_json::to_value(v).unwrap(), as_str(v));
            }
            assert_eq!(parse("nonsense"), None);
        }
        check(
            DeliveryState::ALL,
            DeliveryState::as_str,
            DeliveryState::parse,
        );
        check(
            AttemptOutcome::ALL,
            AttemptOutcome::as_str,
            AttemptOutcome::parse,
        );
        check(
            AttemptTrigger::ALL,
            AttemptTrigger::as_str,
            AttemptTrigger::parse,
        );
        check(EventKind::ALL, EventKind::as_str, EventKind::parse);
    }
}
