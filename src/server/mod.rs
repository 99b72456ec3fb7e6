//! The inbound HTTP server (axum): signed webhooks from GHL and Lusha, health, readiness,
//! Prometheus metrics, the status page (and `/status.json`), the admin-only contact view and
//! `POST /admin/sync` (sync now).
//!
//! Handlers never call GHL inline: webhooks record a hint durably, answer 2xx and wake the
//! scheduler (`ServerState::wake`). Every route runs under a request timeout
//! (`server.request_timeout`) and request bodies are capped (`server.max_body_bytes`).
//!
//! Composition (done by `app.rs`):
//! ```ignore
//! let metrics = server::install_metrics();
//! let state = ServerState::new(store.clone(), Arc::new(config.clone()), wake.clone(), metrics);
//! let ready = state.readiness();                  // set_shutting_down() when stop begins
//! let listener = server::bind(&config.settings.server).await?;
//! tracker.spawn(server::serve(listener, state, stop.clone()));
//! tracker.spawn(server::purge_inbox_periodically(store.clone(), dedupe_for, stop.clone()));
//! ```

mod admin;
mod ghl_webhook;
mod health;
mod lucky_orange;
mod lusha_webhook;
pub mod notify;
mod pages;
mod prometheus;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ed25519_dalek::VerifyingKey;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ServerSettings};
use crate::store::Store;

pub use admin::{SyncNowAnswer, request_sync_now};
pub use ghl_webhook::{
    INBOX_PURGE_INTERVAL, ParsedWebhook, Unreadable, parse_webhook, purge_inbox_periodically, purge_webhook_inbox,
};
pub use health::{check_health, local_url};

/// Readiness flags shared between the daemon and `/readyz`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ReadinessFlags {
    shutting_down: Arc<AtomicBool>,
}

impl ReadinessFlags {
    /// Marks the daemon as stopping: `/readyz` answers 503 from now on.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Everything the handlers need. Cheap to clone (all shared).
#[derive(Clone)]
pub struct ServerState {
    store: Store,
    config: Arc<Config>,
    /// Wakes the scheduler after a webhook recorded a dirty hint.
    wake: Arc<Notify>,
    ready: ReadinessFlags,
    metrics: PrometheusHandle,
    /// `ghl.webhooks.public_keys`, decoded once.
    ghl_keys: Arc<[VerifyingKey]>,
    /// `ghl.webhooks.legacy_rsa_public_keys` as PKCS#1 DER (empty: legacy signatures refused).
    ghl_rsa_keys: Arc<[Vec<u8>]>,
    /// The Lucky Orange bridge (`/lo/*`), when configured.
    lucky_orange: Option<Arc<lucky_orange::Bridge>>,
    /// `POST /admin/sync` starts passes through this (empty: no scheduler runs).
    sync_now: crate::sync::scheduler::SyncNow,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState").field("ghl_keys", &self.ghl_keys.len()).finish_non_exhaustive()
    }
}

impl ServerState {
    /// Builds the state. Keys in `ghl.webhooks.public_keys` that do not decode are skipped
    /// (validation already reported them).
    pub fn new(store: Store, config: Arc<Config>, wake: Arc<Notify>, metrics: PrometheusHandle) -> Self {
        let ghl_keys: Vec<VerifyingKey> = config
            .settings
            .ghl
            .webhooks
            .public_keys
            .iter()
            .filter_map(|key| crate::config::decode_ed25519_spki(key))
            .filter_map(|bytes| VerifyingKey::from_bytes(&bytes).ok())
            .collect();
        if ghl_keys.is_empty() {
            tracing::warn!("No usable GHL webhook public key: every GHL webhook will be rejected");
        }
        let ghl_rsa_keys: Vec<Vec<u8>> = config
            .settings
            .ghl
            .webhooks
            .legacy_rsa_public_keys
            .iter()
            .filter_map(|key| crate::config::decode_rsa_spki(key))
            .collect();
        let lucky_orange = lucky_orange::Bridge::from_config(&config, &store);
        Self {
            lucky_orange,
            store,
            config,
            wake,
            ready: ReadinessFlags::default(),
            metrics,
            ghl_keys: ghl_keys.into(),
            ghl_rsa_keys: ghl_rsa_keys.into(),
            sync_now: crate::sync::scheduler::SyncNow::default(),
        }
    }

    /// Lets `POST /admin/sync` wake the running scheduler.
    pub fn with_sync_now(mut self, sync_now: crate::sync::scheduler::SyncNow) -> Self {
        self.sync_now = sync_now;
        self
    }

    /// Uses `ready` instead of fresh flags (when the app created them first).
    pub fn with_readiness(mut self, ready: ReadinessFlags) -> Self {
        self.ready = ready;
        self
    }

    /// The readiness flags `/readyz` reads; the app sets `shutting_down` when stop begins.
    pub fn readiness(&self) -> ReadinessFlags {
        self.ready.clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Installs the global Prometheus recorder once and returns its handle (idempotent).
///
/// If another recorder was installed first (a test harness, say), a detached recorder's
/// handle is returned instead: `/metrics` then shows only the store gauges.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => handle,
            Err(error) => {
                tracing::warn!(error = %error, "A metrics recorder was already installed; /metrics will be partial");
                PrometheusBuilder::new().build_recorder().handle()
            }
        })
        .clone()
}

/// Binds the configured listener (`server.listen`).
pub async fn bind(settings: &ServerSettings) -> anyhow::Result<TcpListener> {
    TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("Failed to listen on {} (server.listen)", settings.listen))
}

/// The router with every route, body limit and timeout. Public for in-process tests.
pub fn router(state: ServerState) -> Router {
    let server = &state.config.settings.server;
    let max_body = server.max_body_bytes;
    let timeout = server.request_timeout.get();
    Router::new()
        .route("/", get(pages::status_page))
        .route("/status.json", get(pages::status_json))
        .route("/contacts/{id}", get(pages::contact_view))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/admin/sync", post(admin::sync_now))
        .route("/webhooks/ghl", post(ghl_webhook::receive))
        .route("/webhooks/lusha", post(lusha_webhook::receive))
        .route(
            "/lo/identity",
            post(lucky_orange::identity_post).get(lucky_orange::identity_get).options(lucky_orange::preflight),
        )
        .route("/lo/events", post(lucky_orange::events).options(lucky_orange::preflight))
        .route("/lo/snippet.js", get(lucky_orange::snippet))
        .route("/insights", get(lucky_orange::insights))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(timeout, request_timeout))
        .with_state(state)
}

/// Answers 503 when a handler takes longer than `server.request_timeout`. Webhook senders
/// retry a 503; the handler's transaction is dropped (rolled back) with its future.
async fn request_timeout(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let route = route_label(&path);
            tracing::warn!(route, timeout_ms = timeout.as_millis() as u64, "Request to {route} timed out");
            metrics::counter!("ghl_sync_server_timeouts_total", "route" => route).increment(1);
            (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response()
        }
    }
}

/// A route template for logs and metrics (never the path with a contact id).
fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/status.json" => "/status.json",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/admin/sync" => "/admin/sync",
        "/webhooks/ghl" => "/webhooks/ghl",
        "/webhooks/lusha" => "/webhooks/lusha",
        "/lo/identity" => "/lo/identity",
        "/lo/events" => "/lo/events",
        "/lo/snippet.js" => "/lo/snippet.js",
        "/insights" => "/insights",
        p if p.starts_with("/contacts/") => "/contacts/:id",
        _ => "other",
    }
}

/// Serves until `stop` is cancelled, then finishes in-flight requests (graceful shutdown).
/// Marks readiness as shutting down as soon as `stop` fires.
pub async fn serve(listener: TcpListener, state: ServerState, stop: CancellationToken) -> anyhow::Result<()> {
    let addr = listener.local_addr().ok();
    let ready = state.readiness();
    let app = router(state);
    match addr {
        Some(addr) => tracing::info!(listen = %addr, "HTTP server listening on {addr}"),
        None => tracing::info!("HTTP server listening"),
    }
    let shutdown = async move {
        stop.cancelled().await;
        ready.set_shutting_down();
    };
    // The peer address feeds per-IP rate limits (`/lo/*`).
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")?;
    tracing::info!("HTTP server stopped");
    Ok(())
}

/// A server started by [`start`]: its address and task.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// `http://ADDR` for building request URLs.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits for the server task to end (after `stop` was cancelled).
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.task.await.context("HTTP server task panicked")?
    }
}

/// Binds `addr` (use `127.0.0.1:0` in tests) and serves in a spawned task.
pub async fn start(addr: SocketAddr, state: ServerState, stop: CancellationToken) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("Failed to listen on {addr}"))?;
    let addr = listener.local_addr().context("Failed to read the listener's address")?;
    let task = tokio::spawn(serve(listener, state, stop));
    Ok(RunningServer { addr, task })
}

/// Escapes text for HTML element content and attribute values.
pub(crate) fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Constant-time comparison of two secrets (hashing first hides the length too).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(html_escape("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn secrets_compare_in_constant_time() {
        assert!(constant_time_eq(b"token", b"token"));
        assert!(!constant_time_eq(b"token", b"tokeN"));
        assert!(!constant_time_eq(b"token", b"token2"));
    }

    #[tokio::test]
    async fn slow_requests_are_answered_503_after_the_timeout() {
        async fn slow() -> &'static str {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }
        let app = Router::new()
            .route("/webhooks/ghl", get(slow))
            .layer(middleware::from_fn_with_state(Duration::from_millis(50), request_timeout));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        let task =
            tokio::spawn(
                async move { axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await },
            );
        let client = reqwest::Client::builder().build().unwrap();
        let response = client.get(format!("http://{addr}/webhooks/ghl")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 503);
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[test]
    fn routes_are_labelled_without_ids() {
        assert_eq!(route_label("/contacts/abc123"), "/contacts/:id");
        assert_eq!(route_label("/nope"), "other");
    }
}
