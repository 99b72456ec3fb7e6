//! The sync engine: polls GHL, diffs against the snapshot, and commits snapshot + outbox +
//! cursor in one transaction per page.

pub mod engine;
pub mod leases;
pub mod scheduler;
