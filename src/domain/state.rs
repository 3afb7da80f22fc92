//! The states the schema spells as PostgreSQL enums (migrations 0001 and 0002), as Rust
//! enums mapped to them: a misspelt state fails to compile instead of failing a query.
//! Each serialises as the database spells it, which is also how the API and the live feed
//! show it.

use serde::{Deserialize, Serialize};

/// `herald.delivery_state`: where one outbox row is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "delivery_state", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its time (a first send, a retry, a replay).
    Pending,
    /// Claimed by a worker, under a lease.
    InFlight,
    Succeeded,
    /// Out of retries, or its endpoint was disabled or its payload erased.
    Dead,
}

/// `herald.attempt_outcome`: what one attempt led to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "attempt_outcome", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    /// Failed, and another attempt is scheduled.
    Retrying,
    /// Failed, and none is.
    Dead,
}

/// `herald.attempt_trigger`: why a delivery was (last) sent.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "attempt_trigger", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum AttemptTrigger {
    /// The first send or a retry on the schedule.
    Scheduled,
    /// An operator asked (a replay, a retry now, a recover).
    Replay,
}

/// `herald.event_kind`: what an entry of the live feed's log is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "event_kind")]
pub enum EventKind {
    #[sqlx(rename = "message.created")]
    #[serde(rename = "message.created")]
    MessageCreated,
    #[sqlx(rename = "attempt")]
    #[serde(rename = "attempt")]
    Attempt,
    #[sqlx(rename = "delivery.dead")]
    #[serde(rename = "delivery.dead")]
    DeliveryDead,
    #[sqlx(rename = "endpoint.disabled")]
    #[serde(rename = "endpoint.disabled")]
    EndpointDisabled,
}

impl EventKind {
    /// As the database and the feed spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MessageCreated => "message.created",
            Self::Attempt => "attempt",
            Self::DeliveryDead => "delivery.dead",
            Self::EndpointDisabled => "endpoint.disabled",
        }
    }
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InFlight => "in_flight",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
        }
    }
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Dead => "dead",
        }
    }
}

impl AttemptTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Replay => "replay",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Rust names spell what the database and the API spell.
    #[test]
    fn serialise_as_the_schema_spells_them() {
        for s in [
            DeliveryState::Pending,
            DeliveryState::InFlight,
            DeliveryState::Succeeded,
            DeliveryState::Dead,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for o in [
            AttemptOutcome::Succeeded,
            AttemptOutcome::Retrying,
            AttemptOutcome::Dead,
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        for t in [AttemptTrigger::Scheduled, AttemptTrigger::Replay] {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        for k in [
            EventKind::MessageCreated,
            EventKind::Attempt,
            EventKind::DeliveryDead,
            EventKind::EndpointDisabled,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
