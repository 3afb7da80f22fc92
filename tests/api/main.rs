//! Integration tests: one binary, real PostgreSQL (a fresh database per test), real HTTP
//! receivers on port 0, and the real `herald` binary where a process must die.

mod helpers;
mod process;

mod access;
mod admin_ws;
mod apps;
mod auth;
mod bad_input;
mod browser;
mod chaos;
mod dashboard;
mod dashboard_tokens;
mod delivery;
mod dev_setup;
mod endpoints;
mod erasure;
mod event_types;
mod fuzz;
mod group_commit;
mod idempotency;
mod inbound;
mod lifecycle;
mod limits;
mod messages;
mod metrics;
mod openapi;
mod operational;
mod outbox;
mod plans;
mod portal;
mod removal;
mod retention;
mod retries;
mod routing;
mod schema;
mod search;
mod signing;
mod ssrf;
mod stream;
mod tokens;
