//! `ghl-sync`: keeps Lusha, Lucky Orange and outbound webhooks in step with GoHighLevel.
//! See `docs/architecture.md` in the repository for the modules and the data flow.

pub mod alerts;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connectors;
pub mod crypto;
pub mod demo;
pub mod dispatch;
pub mod domain;
pub mod export;
pub mod ghl;
pub mod http;
pub mod rules;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod writeback;
