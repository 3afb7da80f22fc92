//! Out of the outbox: claim, sign, send, decide, complete.

pub mod client;
mod outcome;
pub mod recovery;
mod schedule;
pub mod signature;
mod worker;

pub use outcome::{Verdict, decide};
pub use recovery::Recoveries;
pub use schedule::RetrySchedule;
pub use worker::{Direct, WorkerPool, WorkerSettings};
