//! The composition root: builds every component from the config, spawns the long-lived
//! tasks and shuts them down. The only place that knows concrete types.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connectors::{self, Connector};
use crate::dispatch::Dispatcher;
use crate::ghl::{GhlClient, TokenManager, TokenProvider, needed_scopes};
use crate::http::{ApiClient, ClientSettings, HeaderScheme, QuotaSettings, RateLimits, RetryPolicy};
use crate::server::{ServerState, install_metrics};
use crate::store::{ProcessLock, Store, now_ms};
use crate::sync::engine::{Engine, EngineSettings, RunOptions, RunSummary, Subscriber};
use crate::sync::scheduler::{self, ScheduleSettings};

/// A built daemon, ready to run.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub ghl: GhlClient,
    pub engine: Arc<Engine>,
    pub dispatcher: Arc<Dispatcher>,
    pub connectors: Vec<Arc<dyn Connector>>,
    pub tokens: Arc<TokenManager>,
    /// Webhook hints wake the scheduler through this.
    pub wake: Arc<Notify>,
    /// The HTTP listener, bound at build time so a taken port fails start-up.
    listener: Option<tokio::net::TcpListener>,
    _lock: ProcessLock,
    tracker: TaskTracker,
    /// Cancels retry sleeps of outbound calls at shutdown.
    calls: CancellationToken,
}

/// The user agent of every outbound request.
pub fn user_agent() -> String {
    format!("ghl-sync/{}", env!("CARGO_PKG_VERSION"))
}

impl App {
    /// Opens the store (taking the one-daemon-per-database lock), registers the configured
    /// locations and builds the GHL client and the sync engine.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let settings = &config.settings;
        let path = settings.store.resolved_path();
        let lock = ProcessLock::acquire(&path)?;
        let store = Store::connect(&path, settings.store.busy_timeout.get())
            .await
            .with_context(|| format!("Failed to open the store at {}", path.display()))?;
        register_locations(&store, &config).await?;
        // Metrics first: every component records into the one Prometheus recorder.
        install_metrics();

        let calls = CancellationToken::new();
        let limits = Arc::new(RateLimits::new(QuotaSettings {
            burst_max: settings.limits.ghl_burst_max,
            window: settings.limits.ghl_burst_window.get(),
            share: settings.limits.ghl_burst_share,
            daily_budget: settings.limits.ghl_daily_budget,
        }));
        let api = ApiClient::new(
            ClientSettings {
                service: "ghl",
                connect_timeout: settings.limits.connect_timeout.get(),
                request_timeout: settings.limits.request_timeout.get(),
                retry: RetryPolicy {
                    max_retries: settings.limits.max_retries,
                    max_backoff: settings.limits.max_backoff.get(),
                    ..RetryPolicy::default()
                },
                headers: HeaderScheme::Ghl,
                user_agent: user_agent(),
            },
            Some(limits),
            calls.clone(),
        )?;
        let tokens = Arc::new(
            TokenManager::from_config(&config, store.clone(), calls.clone())
                .context("Failed to set up GHL credentials")?,
        );
        tokens.check_grants().await.context("Stored GHL credentials cannot be used")?;
        // Lusha (issue 8): the write-back needs GHL write scopes.
        let write_back = settings.connectors.lusha.as_ref().is_some_and(|l| l.enabled);
        for (resource, missing) in tokens.scope_report(&needed_scopes(write_back)).await? {
            tracing::warn!(resource, missing = %missing.join(" "), "The GHL grant of `{resource}` lacks scopes; reinstall the app with them");
        }
        let provider: Arc<dyn TokenProvider> = tokens.clone();
        let ghl = GhlClient::new(api, settings.ghl.base_url.clone(), settings.ghl.api_version.clone(), provider);
        // Lusha (issue 8): write-back connectors need the store and the GHL client, and the
        // bookkeeping custom fields they write (lusha_id, lusha_enriched_at) stay out of the hash.
        let mut engine_settings = EngineSettings::from_config(settings);
        if let Some(lusha) = settings.connectors.lusha.as_ref().filter(|l| l.enabled) {
            engine_settings.ignored_custom_fields = connectors::lusha::bookkeeping_field_ids(lusha, &ghl, &store).await;
        }
        let deps = connectors::Deps {
            store: store.clone(),
            ghl: ghl.clone(),
            ignored_custom_fields: Arc::new(engine_settings.ignored_custom_fields.clone()),
        };
        let connectors = connectors::build_with(&config, &calls, Some(&deps))?;
        let dispatcher = Arc::new(Dispatcher::new(store.clone(), connectors.clone(), settings.dispatch.clone()));
        let waker = dispatcher.waker();
        let engine = Arc::new(
            Engine::new(store.clone(), ghl.clone(), engine_settings, subscribers(&connectors))
                .on_commit(Arc::new(move || waker.wake())),
        );
        let listener = if settings.server.enabled { Some(crate::server::bind(&settings.server).await?) } else { None };
        tracing::info!(database = %path.display(), locations = settings.ghl.locations.len(), "Store ready");
        Ok(Self {
            config,
            store,
            ghl,
            engine,
            dispatcher,
            connectors,
            tokens,
            wake: Arc::new(Notify::new()),
            listener,
            _lock: lock,
            tracker: TaskTracker::new(),
            calls,
        })
    }

    /// The address the HTTP server listens on (useful with port 0).
    pub fn server_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Reports sync progress (a terminal progress bar) from now on.
    pub fn with_progress(mut self, progress: Arc<dyn crate::sync::engine::Progress>) -> Self {
        let waker = self.dispatcher.waker();
        let engine = Engine::new(
            self.store.clone(),
            self.ghl.clone(),
            self.engine.settings().clone(),
            self.engine.subscribers().to_vec(),
        )
        .on_commit(Arc::new(move || waker.wake()));
        self.engine = Arc::new(engine.with_progress(progress));
        self
    }

    /// Locations to sync: active ones in the store (configured or installed by OAuth).
    pub async fn locations(&self) -> anyhow::Result<Vec<String>> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM locations WHERE status NOT IN ('disabled', 'uninstalled') ORDER BY id")
                .fetch_all(self.store.pool())
                .await?;
        Ok(ids)
    }

    /// One run for each location (or the one named), concurrently within the configured
    /// bound. Errors are per location and do not stop the others.
    pub async fn sync_once(
        &self,
        only: Option<&str>,
        options: RunOptions,
    ) -> anyhow::Result<Vec<(String, Result<RunSummary, crate::sync::engine::SyncError>)>> {
        let mut locations = self.locations().await?;
        if let Some(only) = only {
            anyhow::ensure!(locations.iter().any(|l| l == only), "location {only} is not configured (or is disabled)");
            locations.retain(|l| l == only);
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(self.config.settings.sync.max_concurrent_locations.max(1)));
        let runs = locations.into_iter().map(|location| {
            let engine = self.engine.clone();
            let permits = permits.clone();
            async move {
                let _permit = permits.acquire().await;
                let result = engine.run_once(&location, options).await;
                (location, result)
            }
        });
        Ok(futures_util::future::join_all(runs).await)
    }

    /// Runs until `stop` is cancelled, then lets in-flight work finish within the grace.
    pub async fn run_until_stopped(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let server_state =
            ServerState::new(self.store.clone(), Arc::new(self.config.clone()), self.wake.clone(), install_metrics());
        let readiness = server_state.readiness();
        if let Some(listener) = self.listener.take() {
            let stop = stop.clone();
            self.tracker.spawn(async move {
                if let Err(error) = crate::server::serve(listener, server_state, stop).await {
                    tracing::error!(error = %format!("{error:#}"), "HTTP server failed");
                }
            });
        }
        let settings = &self.config.settings;
        self.tracker.spawn(crate::server::purge_inbox_periodically(
            self.store.clone(),
            settings.ghl.webhooks.dedupe_for.get(),
            stop.clone(),
        ));
        let dispatcher = self.dispatcher.clone();
        let dispatch_stop = stop.clone();
        self.tracker.spawn(async move { dispatcher.run(dispatch_stop).await });
        let locations = self.locations().await?;
        if locations.is_empty() {
            tracing::warn!("No locations to sync: add [[ghl.locations]] to the config or run `ghl-sync auth install`");
        }
        scheduler::spawn(
            self.engine.clone(),
            locations.clone(),
            ScheduleSettings {
                contacts_interval: settings.sync.contacts_interval.get(),
                reconcile_interval: settings.sync.reconcile_interval.get(),
                max_concurrent_locations: settings.sync.max_concurrent_locations,
                dirty_debounce: settings.sync.dirty_debounce.get(),
            },
            self.wake.clone(),
            stop.clone(),
            &self.tracker,
        );
        self.tracker.spawn(crate::server::notify::run_watchdog(stop.clone()));
        crate::server::notify::ready();
        tracing::info!(version = env!("CARGO_PKG_VERSION"), locations = locations.len(), "ghl-sync running");
        stop.cancelled().await;
        readiness.set_shutting_down();
        crate::server::notify::stopping();
        let grace = settings.daemon.shutdown_grace.get();
        let finished = crate::shutdown::drain(&self.tracker, grace).await;
        // Abort retry sleeps of calls still waiting, then close the store.
        self.calls.cancel();
        if !finished {
            tracing::warn!("Stopping with work in flight; it is committed page by page and resumes on the next start");
        }
        self.store.close().await;
        tracing::info!("ghl-sync stopped");
        Ok(())
    }
}

/// Connectors as sync subscribers: which changes each one wants in its outbox.
fn subscribers(connectors: &[Arc<dyn Connector>]) -> Vec<Subscriber> {
    connectors
        .iter()
        .map(|connector| {
            let filter = connector.clone();
            Subscriber {
                id: connector.id().to_owned(),
                wants: Arc::new(move |event: &str, location: &str| filter.interested(event, location)),
            }
        })
        .collect()
}

/// Configured locations become rows in `locations`. A location disabled in the config is
/// marked so. `needs_reauth` is kept for OAuth locations (a new install clears it) and cleared
/// for private-integration-token locations: the operator may have fixed the token, and a
/// still-bad token is caught again by the first request.
async fn register_locations(store: &Store, config: &Config) -> anyhow::Result<()> {
    let now = now_ms();
    for location in &config.settings.ghl.locations {
        let status = if location.enabled { "active" } else { "disabled" };
        let pit = location.auth == crate::config::LocationAuth::Pit;
        sqlx::query(
            "INSERT INTO locations (id, name, status, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET name = COALESCE(excluded.name, name), updated_at = excluded.updated_at, \
             status = CASE WHEN excluded.status = 'disabled' OR ? THEN excluded.status \
                           WHEN status = 'disabled' THEN 'active' ELSE status END",
        )
        .bind(&location.id)
        .bind(&location.name)
        .bind(status)
        .bind(now)
        .bind(pit)
        .execute(store.pool())
        .await
        .context("Failed to register the configured locations")?;
    }
    Ok(())
}
