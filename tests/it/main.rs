//! The one integration test binary: starts the real daemon (in-process or as a child
//! process) against the in-repo sandbox on 127.0.0.1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::disallowed_methods,
    reason = "test code: a panic is a failed test, and blocking sleeps poll child processes"
)]

mod alerts;
mod auth;
mod cli;
mod control;
mod daemon;
mod dispatch;
mod docker;
mod export;
mod helpers;
mod lusha;
mod once;
mod reliability;
mod server;
mod sync;
mod systemd;
