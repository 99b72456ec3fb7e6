//! The composition root: builds every component from the config, spawns the long-lived
//! tasks and shuts them down. The only place that knows concrete types.

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::store::{ProcessLock, Store};

/// A built daemon, ready to run.
pub struct App {
    pub config: Config,
    pub store: Store,
    _lock: ProcessLock,
    tracker: TaskTracker,
}

impl App {
    /// Opens the store (taking the one-daemon-per-database lock) and registers locations.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let path = config.settings.store.resolved_path();
        let lock = ProcessLock::acquire(&path)?;
        let store = Store::connect(&path, config.settings.store.busy_timeout.get())
            .await
            .with_context(|| format!("Failed to open the store at {}", path.display()))?;
        tracing::info!(
            database = %path.display(),
            locations = config.settings.ghl.locations.len(),
            "Store ready"
        );
        Ok(Self { config, store, _lock: lock, tracker: TaskTracker::new() })
    }

    /// Runs until `stop` is cancelled, then lets in-flight work finish within the grace.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "ghl-sync running");
        stop.cancelled().await;
        let grace = self.config.settings.daemon.shutdown_grace.get();
        crate::shutdown::drain(&self.tracker, grace).await;
        self.store.close().await;
        tracing::info!("ghl-sync stopped");
        Ok(())
    }
}
