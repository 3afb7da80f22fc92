//! Out of the outbox: claim, sign, send, decide, complete.

pub mod bulk_replay;
pub mod client;
mod outcome;
mod schedule;
pub mod signature;
mod worker;

pub use bulk_replay::BulkReplays;
pub use outcome::{Verdict, decide};
pub use schedule::RetrySchedule;
pub use worker::{Direct, WorkerPool, WorkerSettings};
