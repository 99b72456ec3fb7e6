//! The one integration test binary: starts the real daemon (in-process or as a child
//! process) against the in-repo sandbox on 127.0.0.1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "test code: a panic is a failed test, and blocking sleeps poll child processes"
)]

mod alerts;
mod appointments;
mod auth;
mod bad_input;
mod cli;
mod clock;
mod control;
mod crash;
mod daemon;
mod dispatch;
mod docker;
mod export;
mod fairness;
mod faults;
mod fresh;
mod helpers;
mod lucky_orange;
mod lucky_orange_browser;
mod lusha;
mod once;
mod postgres;
mod priority;
mod reliability;
mod replica_outbox;
mod replica_tokens;
mod replicas;
mod rules;
mod rules_cli;
mod rules_exec;
mod rules_more;
mod rules_triggers;
mod security;
mod server;
mod store_migrate;
mod sync;
mod systemd;
mod task_search;
