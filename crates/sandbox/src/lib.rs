//! Faithful fakes of GHL and Lusha plus a webhook sink, used by `ghl-sync sandbox`,
//! `ghl-sync demo` and every integration test. Nothing here talks to the internet:
//! one axum server on a loopback port serves all three.
//!
//! Layout of the one listener:
//! - `/` … the fake GHL API (`/oauth/token`, `/contacts/search`, …) and `/__admin/ghl/…`
//! - `/lusha/…` the fake Lusha API (`/lusha/v3/…`) and `/lusha/__admin/…`
//! - `/sink/…` the webhook sink (`POST /sink/{name}`) and `/sink/__admin/…`
//!
//! The fake GHL (see [`ghl`] for every route and knob) answers in the shapes of GHL's OpenAPI
//! specs: `GET /contacts/:id`, search items, the business listing, appointments, tasks and
//! notes carry exactly their schema's fields (`crates/sandbox/fixtures/ghl-schemas.json`
//! holds the lists). Besides contacts, tasks and notes it serves appointments
//! (`GET /contacts/:contactId/appointments`), businesses (`GET /contacts/business/:id`,
//! `POST /contacts/bulk/business`) and the location-wide task search
//! (`POST /locations/:locationId/tasks/search`, scope-checked). Tests drive it through
//! [`ghl::FakeGhl`]: `mutate` (contacts, tasks, notes) and `mutate_kinds` (any
//! [`ghl::MutationKind`], including appointment create / update / cancel / delete and business
//! link / unlink) simulate users; `create_pit` / `authorization_code_with_scopes` make tokens
//! without a scope; `GhlOptions::{max_appointments_per_contact, scope_denied_status}` are the
//! new knobs.

pub mod ghl;
pub mod lusha;
pub mod sink;

use std::net::SocketAddr;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;

/// Everything the sandbox can be told at start-up.
#[derive(Debug, Clone, Default)]
pub struct SandboxOptions {
    pub ghl: ghl::GhlOptions,
    pub lusha: lusha::LushaOptions,
    pub sink: sink::SinkOptions,
}

/// A running sandbox. Dropping it does not stop the server: call [`Sandbox::stop`].
pub struct Sandbox {
    addr: SocketAddr,
    pub ghl: ghl::FakeGhl,
    pub lusha: lusha::FakeLusha,
    pub sink: sink::Sink,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Sandbox {
    /// Starts the fakes on `bind` (use port 0 in tests) and returns once the listener is bound.
    pub async fn start(options: SandboxOptions, bind: SocketAddr) -> anyhow::Result<Self> {
        let ghl = ghl::FakeGhl::new(options.ghl);
        let lusha = lusha::FakeLusha::new(options.lusha);
        let sink = sink::Sink::new(options.sink);
        let app = axum::Router::new().merge(ghl.router()).nest("/lusha", lusha.router()).nest("/sink", sink.router());
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("Failed to bind the sandbox to {bind}"))?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let served =
                axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await }).await;
            if let Err(error) = served {
                tracing::error!(error = %error, "Sandbox server failed");
            }
        });
        Ok(Self { addr, ghl, lusha, sink, stop, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the fake GHL API (what goes in `[ghl] base_url`).
    pub fn ghl_url(&self) -> Url {
        self.url("/")
    }

    /// Base URL of the fake Lusha API (what goes in `[connectors.lusha] base_url`).
    pub fn lusha_url(&self) -> Url {
        self.url("/lusha")
    }

    /// URL of a named webhook sink endpoint.
    pub fn sink_url(&self, name: &str) -> Url {
        self.url(&format!("/sink/{name}"))
    }

    fn url(&self, path: &str) -> Url {
        let text = format!("http://{}{}", self.addr, path);
        // The address is a valid socket address and the path is ours: this always parses.
        Url::parse(&text).unwrap_or_else(|_| unreachable!("sandbox URL {text} is valid"))
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(error) = self.task.await {
            tracing::warn!(error = %error, "Sandbox server task ended abnormally");
        }
    }
}
