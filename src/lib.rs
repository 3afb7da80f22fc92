//! Herald: self-hosted, reliable webhook delivery on PostgreSQL.
//!
//! Request in ([`http`]) → values parsed once ([`domain`]) → the outbox ([`db`]) →
//! the worker pool ([`delivery`]) → signed POSTs out.

pub mod catalog;
pub mod config;
pub mod db;
pub mod delivery;
pub mod domain;
pub mod error;
pub mod feed;
pub mod http;
pub mod metrics;
pub mod operational;
pub mod probe;
pub mod removal;
pub mod respawn;
pub mod retention;
pub mod server;
pub mod telemetry;

pub use delivery::signature::{VerifyError, verify};
