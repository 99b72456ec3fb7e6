//! The composition root: builds every component from the config, spawns the long-lived
//! tasks and shuts them down. The only place that knows concrete types.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::clock::Clock;
use crate::config::Config;
use crate::connectors::{self, Connector};
use crate::dispatch::{Dispatcher, OpenCircuits};
use crate::ghl::{GhlClient, TokenManager, TokenProvider, needed_scopes};
use crate::http::{ApiClient, ClientSettings, HeaderScheme, QuotaSettings, RateLimits, RetryPolicy};
use crate::server::{ServerState, install_metrics};
use crate::store::locations::ConfiguredLocation;
use crate::store::{Location, Store, StoreLock};
use crate::sync::engine::{Engine, EngineSettings, RunOptions, RunSummary, Subscriber};
use crate::sync::leases::{LeaseSettings, Leases};
use crate::sync::scheduler::{self, ScheduleSettings, SyncNow};

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
    /// "Sync now" (SIGUSR1, `POST /admin/sync`) starts full passes through this.
    pub sync_now: SyncNow,
    /// Which connectors' circuits are open (for the alerts), across config reloads.
    pub circuits: OpenCircuits,
    /// The locations this process may poll (replicas on PostgreSQL lease them; a daemon on
    /// SQLite holds every one).
    pub leases: Arc<Leases>,
    /// The HTTP listener, bound at build time so a taken port fails start-up.
    listener: Option<tokio::net::TcpListener>,
    _lock: StoreLock,
    tracker: TaskTracker,
    /// Cancels retry sleeps of outbound calls at shutdown.
    calls: CancellationToken,
    /// The wall clock of everything stored with a time (`crate::clock`).
    clock: Clock,
}

/// The user agent of every outbound request.
pub fn user_agent() -> String {
    format!("ghl-sync/{}", env!("CARGO_PKG_VERSION"))
}

/// The parts rebuilt on a config reload (SIGHUP): the GHL client (limits), connectors and
/// their mappings, the dispatcher and the sync engine (intervals, subscribers).
pub(crate) struct Workers {
    pub(crate) ghl: GhlClient,
    pub(crate) engine: Arc<Engine>,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) connectors: Vec<Arc<dyn Connector>>,
}

pub(crate) async fn build_workers(
    config: &Config,
    store: &Store,
    tokens: &Arc<TokenManager>,
    calls: &CancellationToken,
    circuits: &OpenCircuits,
    clock: &Clock,
    leases: &Arc<Leases>,
) -> anyhow::Result<Workers> {
    let settings = &config.settings;
    let limits = Arc::new(RateLimits::new(QuotaSettings {
        burst_max: settings.limits.ghl_burst_max,
        window: settings.limits.ghl_burst_window.get(),
        share: settings.limits.ghl_burst_share,
        daily_budget: settings.limits.ghl_daily_budget,
        bulk_daily_share: settings.limits.bulk_daily_share,
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
    let provider: Arc<dyn TokenProvider> = tokens.clone();
    let ghl = GhlClient::new(api, settings.ghl.base_url.clone(), settings.ghl.api_version.clone(), provider);
    // Write-back connectors (Lusha, Lucky Orange) need the store and the GHL client, and the
    // bookkeeping custom fields they write stay out of the contact hash.
    let mut engine_settings = EngineSettings::from_config(settings);
    engine_settings.appointments = reads_appointments(settings);
    engine_settings.ignored_custom_fields = connectors::bookkeeping_field_ids(settings, &ghl, store).await;
    let deps = connectors::Deps {
        store: store.clone(),
        ghl: ghl.clone(),
        ignored_custom_fields: Arc::new(engine_settings.ignored_custom_fields.clone()),
    };
    let connectors = connectors::build_with(config, calls, Some(&deps))?;
    let dispatcher = Arc::new(
        Dispatcher::new(store.clone(), connectors.clone(), settings.dispatch.clone())
            .with_clock(clock.clone())
            .with_open_circuits(circuits.clone())
            .with_location_filter({
                // Connectors that call GHL deliver only rows of the locations this replica
                // leases (their GHL budget is the holder's); the others deliver any row.
                let leases = leases.clone();
                Arc::new(move || leases.held())
            }),
    );
    let waker = dispatcher.waker();
    let engine = Arc::new(
        Engine::new(store.clone(), ghl.clone(), engine_settings, subscribers(&connectors))
            .on_commit(Arc::new(move || waker.wake()))
            .with_fence({
                let leases = leases.clone();
                Arc::new(move |location: &str| leases.holds(location))
            }),
    );
    Ok(Workers { ghl, engine, dispatcher, connectors })
}

impl App {
    /// Opens the store for a daemon (SQLite: one per file; PostgreSQL: one of any number of
    /// replicas, which lease the locations), registers the configured locations and builds
    /// the GHL client and the sync engine.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_locked(config, false).await
    }

    /// [`App::build`] for a one-shot run (`sync --once`), which polls every location without
    /// leases: it needs the store to itself, so on PostgreSQL it is refused while replicas run
    /// (and they wait for it).
    pub async fn build_one_shot(config: Config) -> anyhow::Result<Self> {
        Self::build_locked(config, true).await
    }

    async fn build_locked(config: Config, alone: bool) -> anyhow::Result<Self> {
        let settings = &config.settings;
        let target = settings.store.target();
        let lock = if alone { StoreLock::acquire(&target).await? } else { StoreLock::acquire_daemon(&target).await? };
        let (clock, test_clock) = Clock::from_env();
        if let Some(file) = test_clock {
            tracing::warn!(file = %file.display(), "Test clock: the wall clock is moved by the offset in {} ({}); never set this outside tests",
                file.display(), crate::clock::OFFSET_FILE_ENV);
        }
        let store = Store::open(&target, settings.store.busy_timeout.get())
            .await
            .with_context(|| format!("Failed to open the store at {}", Location::of(&target)))?;
        register_locations(&store, &config).await?;
        // Metrics first: every component records into the one Prometheus recorder.
        install_metrics();

        let calls = CancellationToken::new();
        let tokens = Arc::new(
            TokenManager::from_config(&config, store.clone(), calls.clone())
                .context("Failed to set up GHL credentials")?
                .with_clock(clock.clone()),
        );
        tokens.check_grants().await.context("Stored GHL credentials cannot be used")?;
        // Write-back connectors (Lusha) need GHL's write scope.
        let write_back = settings.connectors.lusha.as_ref().is_some_and(|l| l.enabled)
            || settings.connectors.lucky_orange.as_ref().is_some_and(|l| l.enabled);
        for (resource, missing) in tokens.scope_report(&needed_scopes(write_back)).await? {
            tracing::warn!(resource, missing = %missing.join(" "), "The GHL grant of `{resource}` lacks scopes; reinstall the app with them");
        }
        let circuits = OpenCircuits::default();
        let leases = if store.is_postgres() && !alone { Leases::shared() } else { Leases::all() };
        if !leases.is_shared() {
            // This process holds the store alone: outbox claims left in it belong to a process
            // that died (kill -9) and would hold their rows until the claim TTL.
            let released = crate::store::outbox::release_dead_claims(&store)
                .await
                .context("Failed to release the outbox claims of a stopped process")?;
            if released > 0 {
                tracing::info!(
                    released,
                    "Released {released} outbox rows claimed by a process that stopped without finishing them"
                );
            }
        }
        let Workers { ghl, engine, dispatcher, connectors } =
            build_workers(&config, &store, &tokens, &calls, &circuits, &clock, &leases).await?;
        let listener = if settings.server.enabled { Some(crate::server::bind(&settings.server).await?) } else { None };
        tracing::info!(database = %Location::of(&target), locations = settings.ghl.locations.len(), replica = crate::store::replica_id(), "Store ready");
        Ok(Self {
            config,
            store,
            ghl,
            engine,
            dispatcher,
            connectors,
            tokens,
            wake: Arc::new(Notify::new()),
            sync_now: SyncNow::default(),
            circuits,
            leases,
            listener,
            _lock: lock,
            tracker: TaskTracker::new(),
            calls,
            clock,
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
        let engine = match self.engine.fence() {
            Some(fence) => engine.with_fence(fence),
            None => engine,
        };
        self.engine = Arc::new(engine.with_progress(progress));
        self
    }

    /// Locations to sync: active ones in the store (configured or installed by OAuth).
    pub async fn locations(&self) -> anyhow::Result<Vec<String>> {
        Ok(crate::store::locations::active(&self.store).await?)
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
            // The scheduler's span: the engine's events carry `location.id` through it.
            let span = tracing::info_span!("location", location.id = %location);
            async move {
                let _permit = permits.acquire().await;
                let result = engine.run_once(&location, options).await;
                (location, result)
            }
            .instrument(span)
        });
        Ok(futures_util::future::join_all(runs).await)
    }

    /// Runs until `stop` is cancelled, then lets in-flight work finish within the grace.
    /// SIGHUP reloads the config file: connectors, mappings, schedules and limits change in
    /// place; a bad file is rejected and the running config kept.
    pub async fn run_until_stopped(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let server_state =
            ServerState::new(self.store.clone(), Arc::new(self.config.clone()), self.wake.clone(), install_metrics())
                .with_sync_now(self.sync_now.clone());
        let readiness = server_state.readiness();
        if let Some(listener) = self.listener.take() {
            let stop = stop.clone();
            self.tracker.spawn(async move {
                if let Err(error) = crate::server::serve(listener, server_state, stop).await {
                    tracing::error!(error = %format!("{error:#}"), "HTTP server failed");
                }
            });
        }
        self.tracker.spawn(crate::server::purge_inbox_periodically(
            self.store.clone(),
            self.config.settings.ghl.webhooks.dedupe_for.get(),
            stop.clone(),
        ));
        self.tracker.spawn(crate::server::notify::run_watchdog(stop.clone()));
        match crate::alerts::Alerter::new(&self.config, self.store.clone(), &self.ghl, self.calls.clone()) {
            Ok(Some(alerter)) => {
                tracing::info!(targets = self.config.settings.alerts.len(), "Operator alerts on");
                self.tracker.spawn(alerter.run(self.circuits.clone(), stop.clone()));
            }
            Ok(None) => {}
            Err(error) => tracing::error!(error = %format!("{error:#}"), "Operator alerts could not start"),
        }
        self.tracker.spawn(crate::export::run_scheduled_exports(
            self.store.clone(),
            self.config.settings.export.clone(),
            {
                // A replica exports the locations it leases (each location once per slot).
                let leases = self.leases.clone();
                Arc::new(move |location: &str| leases.holds(location))
            },
            stop.clone(),
        ));

        if self.leases.is_shared() {
            let settings = LeaseSettings {
                ttl: self.config.settings.store.lease_ttl.get(),
                window: self.config.settings.limits.ghl_burst_window.get(),
            };
            tracing::info!(
                replica = crate::store::replica_id(),
                lease_ttl_s = settings.ttl.as_secs(),
                "Replica mode: locations are leased over the shared store"
            );
            self.tracker.spawn(crate::sync::leases::listen_for_hints(
                self.store.clone(),
                self.wake.clone(),
                stop.clone(),
            ));
            self.tracker.spawn(crate::sync::leases::run(
                self.leases.clone(),
                self.store.clone(),
                settings,
                self.locations().await?,
                self.sync_now.clone(),
                stop.clone(),
            ));
        }
        let mut workers_stop = stop.child_token();
        let mut workers = TaskTracker::new();
        let locations = self.spawn_workers(&workers, &workers_stop).await?;
        crate::server::notify::ready();
        tracing::info!(version = env!("CARGO_PKG_VERSION"), locations, "ghl-sync running");

        let mut reloads = crate::shutdown::reload_signals();
        let mut sync_requests = crate::shutdown::sync_now_signals();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = sync_requests.recv() => {
                    if let scheduler::Woken::Locations(woken) = self.sync_now.wake(None) {
                        tracing::info!(locations = woken.len(), "SIGUSR1: starting a pass for every location now");
                    }
                }
                _ = reloads.recv() => {
                    if let Some(config) = self.reload_config() {
                        crate::server::notify::reloading();
                        // Stop the old workers at a safe point, then start the new ones.
                        workers_stop.cancel();
                        workers.close();
                        workers.wait().await;
                        match build_workers(&config, &self.store, &self.tokens, &self.calls, &self.circuits, &self.clock, &self.leases).await {
                            Ok(built) => {
                                self.ghl = built.ghl;
                                self.engine = built.engine;
                                self.dispatcher = built.dispatcher;
                                self.connectors = built.connectors;
                                self.config = config;
                                tracing::info!("Configuration reloaded");
                            }
                            Err(error) => {
                                tracing::error!(error = %format!("{error:#}"), "Reloaded configuration could not be applied; keeping the running one");
                            }
                        }
                        workers_stop = stop.child_token();
                        workers = TaskTracker::new();
                        self.spawn_workers(&workers, &workers_stop).await?;
                        crate::server::notify::ready();
                    }
                }
            }
        }
        // From here on nothing new starts: connectors hand back the items of their batch they
        // have not begun, retry sleeps and rate-limit waits end, and the requests already sent
        // finish so their outcomes are recorded (a slow target cannot stretch the stop).
        self.calls.cancel();
        readiness.set_shutting_down();
        crate::server::notify::stopping();
        let grace = self.config.settings.daemon.shutdown_grace.get();
        workers.close();
        let started = std::time::Instant::now();
        let finished = crate::shutdown::drain(&workers, grace).await
            && crate::shutdown::drain(&self.tracker, grace.saturating_sub(started.elapsed())).await;
        if !finished {
            tracing::warn!("Stopping with work in flight; it is committed page by page and resumes on the next start");
        }
        crate::sync::leases::release(&self.leases, &self.store).await;
        self.store.close().await;
        tracing::info!("ghl-sync stopped");
        Ok(())
    }

    /// Starts the dispatcher, the connectors' own background work and the per-location
    /// scheduler; returns the number of locations.
    async fn spawn_workers(&self, tracker: &TaskTracker, stop: &CancellationToken) -> anyhow::Result<usize> {
        let settings = &self.config.settings;
        let dispatcher = self.dispatcher.clone();
        let dispatch_stop = stop.clone();
        tracker.spawn(async move { dispatcher.run(dispatch_stop).await });
        for connector in &self.connectors {
            tracker.spawn(connector.clone().run_background(stop.clone()));
        }
        let locations = self.locations().await?;
        if locations.is_empty() {
            tracing::warn!("No locations to sync: add [[ghl.locations]] to the config or run `ghl-sync auth install`");
        }
        let count = locations.len();
        scheduler::spawn(
            self.engine.clone(),
            locations,
            self.leases.clone(),
            ScheduleSettings::from_config(&settings.sync),
            self.wake.clone(),
            &self.sync_now,
            stop.clone(),
            tracker,
        );
        Ok(count)
    }

    /// Re-reads the config file. Returns the new config when it is valid; logs every problem
    /// and returns `None` otherwise (the running config stays). Settings that need a restart
    /// are reported and keep their running values.
    fn reload_config(&self) -> Option<Config> {
        let crate::config::ConfigSource::File(path) = &self.config.source else {
            tracing::warn!("SIGHUP ignored: this daemon's config did not come from a file");
            return None;
        };
        let mut config = match crate::config::load(Some(path)) {
            Ok(config) => config,
            Err(error) => {
                for problem in error.problems() {
                    tracing::error!(problem = %problem, "Config reload rejected");
                }
                tracing::error!(file = %path.display(), "The new config is invalid; keeping the running one");
                return None;
            }
        };
        let restart_only = restart_only_changes(&self.config, &config);
        if !restart_only.is_empty() {
            tracing::warn!(
                keys = %restart_only.join(", "),
                "These settings changed but take effect only after a restart; keeping their running values"
            );
            // Keep what cannot change in place, so the running daemon stays consistent.
            config.settings.store = self.config.settings.store.clone();
            config.settings.server = self.config.settings.server.clone();
            config.settings.ghl = self.config.settings.ghl.clone();
            config.settings.log = self.config.settings.log.clone();
            config.settings.alerts = self.config.settings.alerts.clone();
            config.settings.connectors.lucky_orange = self.config.settings.connectors.lucky_orange.clone();
            config.secrets = self.config.secrets.clone();
        }
        Some(config)
    }
}

/// Keys whose change needs a restart: the database, the listener, GHL credentials and
/// locations, the webhook keys, logging.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.settings, &new.settings);
    let mut changed = Vec::new();
    if a.store.target() != b.store.target() {
        changed.push("store.path");
    }
    if a.store.lease_ttl != b.store.lease_ttl {
        changed.push("store.lease_ttl");
    }
    if a.server.listen != b.server.listen || a.server.enabled != b.server.enabled {
        changed.push("server.listen");
    }
    if a.ghl.base_url != b.ghl.base_url || a.ghl.api_version != b.ghl.api_version {
        changed.push("ghl.base_url");
    }
    let ids =
        |s: &crate::config::Settings| s.ghl.locations.iter().map(|l| (l.id.clone(), l.enabled)).collect::<Vec<_>>();
    if ids(a) != ids(b) {
        changed.push("ghl.locations");
    }
    if a.ghl.webhooks.public_keys != b.ghl.webhooks.public_keys {
        changed.push("ghl.webhooks.public_keys");
    }
    if a.log.level != b.log.level || a.log.format != b.log.format {
        changed.push("log");
    }
    if format!("{:?}", a.export) != format!("{:?}", b.export) {
        changed.push("export");
    }
    if format!("{:?}", a.alerts) != format!("{:?}", b.alerts) {
        changed.push("alerts");
    }
    // The HTTP side of the bridge (`/lo/*`: keys, traits, origins, events) is built with the
    // listener: the connector's side must not change alone (tokens minted with a key the
    // identity endpoint does not know yet, traits it still answers).
    if format!("{:?}", a.connectors.lucky_orange) != format!("{:?}", b.connectors.lucky_orange) {
        changed.push("connectors.lucky_orange");
    }
    changed
}

/// Whether the engine reads appointments, `[sync] appointments`: as set when `true` / `false`;
/// for `"auto"`, when an enabled subscriber asks for an `appointment.*` event type by name. A
/// connector without an `events` filter receives appointments when they are read but does not
/// turn the reads on (one more GHL request per contact nobody asked for). Only webhook
/// connectors and rules can name them (Lusha and Lucky Orange take contact events only).
fn reads_appointments(settings: &crate::config::Settings) -> bool {
    use crate::config::AppointmentReads;
    match settings.sync.appointments {
        AppointmentReads::On => true,
        AppointmentReads::Off => false,
        AppointmentReads::Auto => {
            settings
                .connectors
                .webhook
                .values()
                .filter(|hook| hook.enabled)
                .any(|hook| hook.events.iter().any(|event| event.starts_with("appointment.")))
                || settings
                    .rules
                    .iter()
                    .filter(|rule| rule.enabled)
                    .any(|rule| rule.on.iter().any(|t| t.starts_with("appointment.")))
        }
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

/// Configured locations become rows in `locations` (see
/// [`crate::store::locations::register_configured`] for what happens to existing rows).
pub(crate) async fn register_locations(store: &Store, config: &Config) -> anyhow::Result<()> {
    let configured: Vec<ConfiguredLocation> = config
        .settings
        .ghl
        .locations
        .iter()
        .map(|location| ConfiguredLocation {
            id: location.id.clone(),
            name: location.name.clone(),
            enabled: location.enabled,
            pit: location.auth == crate::config::LocationAuth::Pit,
        })
        .collect();
    crate::store::locations::register_configured(store, &configured)
        .await
        .context("Failed to register the configured locations")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppointmentReads, Settings, WebhookConnectorSettings};

    fn with_hook(events: &[&str], enabled: bool, reads: AppointmentReads) -> Settings {
        let mut settings = Settings::default();
        settings.sync.appointments = reads;
        let text = format!("url = \"https://hooks.example\"\nenabled = {enabled}\nevents = {events:?}\n");
        let hook: WebhookConnectorSettings = toml::from_str(&text).unwrap();
        settings.connectors.webhook.insert("h".into(), hook);
        settings
    }

    #[test]
    fn appointments_are_read_when_config_or_a_subscriber_that_names_them_says_so() {
        use AppointmentReads::{Auto, Off, On};
        let table: [(&[&str], bool, AppointmentReads, bool); 7] = [
            (&[], true, Auto, false),
            (&["task.created", "contact.updated"], true, Auto, false),
            (&["appointment.updated"], true, Auto, true),
            (&["appointment.deleted"], false, Auto, false),
            (&["appointment.created"], true, Off, false),
            (&[], true, On, true),
            (&[], false, On, true),
        ];
        for (events, enabled, reads, expected) in table {
            let settings = with_hook(events, enabled, reads);
            assert_eq!(reads_appointments(&settings), expected, "{events:?} enabled={enabled} {reads:?}");
        }
    }

    #[test]
    fn appointments_are_read_under_auto_when_an_enabled_rule_has_an_appointment_trigger() {
        use AppointmentReads::{Auto, Off};
        let rule = |on: &str, enabled: bool| {
            format!(
                "[[rules]]\nname = \"r\"\non = [\"{on}\"]\nenabled = {enabled}\n[[rules.actions]]\ndo = \"ghl.add_tags\"\ntags = [\"t\"]\n"
            )
        };
        let table = [
            ("appointment.created", true, Auto, true),
            ("appointment.cancelled", true, Auto, true),
            ("appointment.deleted", false, Auto, false),
            ("task.created", true, Auto, false),
            ("appointment.updated", true, Off, false),
        ];
        for (on, enabled, reads, expected) in table {
            let mut settings: Settings = toml::from_str(&rule(on, enabled)).unwrap();
            settings.sync.appointments = reads;
            assert_eq!(reads_appointments(&settings), expected, "{on} enabled={enabled} {reads:?}");
        }
    }
}
