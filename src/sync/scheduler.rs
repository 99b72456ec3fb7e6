//! Runs the engine per location on its intervals: concurrent across locations (bounded), a
//! failing location never stalls another, webhook hints wake a location early.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::engine::{Engine, RunOptions, SyncError};

/// Scheduler settings, from `[sync]`.
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    pub contacts_interval: Duration,
    pub reconcile_interval: Duration,
    pub max_concurrent_locations: usize,
    pub dirty_debounce: Duration,
}

/// Spawns one loop per location on `tracker`; they stop when `stop` is cancelled, at a safe
/// point (between runs; a run in progress finishes its page and stops).
pub fn spawn(
    engine: Arc<Engine>,
    locations: Vec<String>,
    settings: ScheduleSettings,
    wake: Arc<Notify>,
    stop: CancellationToken,
    tracker: &TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(settings.max_concurrent_locations.max(1)));
    let mut wakes = HashMap::new();
    for location in locations {
        let own = Arc::new(Notify::new());
        wakes.insert(location.clone(), own.clone());
        // Every event of this location's runs carries `location.id` through this span; events
        // inside do not repeat it.
        let span = tracing::info_span!("location", location.id = %location);
        tracker.spawn(
            location_loop(engine.clone(), location, settings.clone(), own, stop.clone(), permits.clone())
                .instrument(span),
        );
    }
    tracker.spawn(route_hints(engine, wakes, wake, stop));
}

/// The webhook receiver wakes one shared `Notify`; this wakes exactly the locations that
/// have hints waiting.
async fn route_hints(
    engine: Arc<Engine>,
    wakes: HashMap<String, Arc<Notify>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {},
        }
        match engine.locations_with_hints().await {
            Ok(locations) => {
                for location in locations {
                    if let Some(own) = wakes.get(&location) {
                        // Stores a permit when the location is busy: the hint is never lost.
                        own.notify_one();
                    }
                }
            }
            Err(error) => tracing::warn!(error = %format!("{error:#}"), "Could not read webhook hints"),
        }
    }
}

async fn location_loop(
    engine: Arc<Engine>,
    location: String,
    settings: ScheduleSettings,
    wake: Arc<Notify>,
    stop: CancellationToken,
    permits: Arc<Semaphore>,
) {
    let mut tick = tokio::time::interval(settings.contacts_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failures: u32 = 0;
    let mut again = false;
    loop {
        // A poll tick runs a full pass; a webhook hint (or hints left after a pass) runs a
        // hint-only pass: the named contacts' reads, not a whole search of the location.
        let pass = if again {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(settings.dirty_debounce) => {},
            }
            Pass::Hints
        } else {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tick.tick() => Pass::Full,
                _ = wake.notified() => {
                    // Gather hints that arrive together into one run.
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(settings.dirty_debounce) => {},
                    }
                    Pass::Hints
                },
            }
        };
        let Ok(_permit) = permits.acquire().await else { break };
        if stop.is_cancelled() {
            break;
        }
        let outcome = tokio::select! {
            // Cancelling drops the run between awaits: every committed page stays committed,
            // the page in flight is rolled back and read again next time.
            _ = stop.cancelled() => break,
            outcome = run(&engine, &location, &settings, pass) => outcome,
        };
        match outcome {
            Ok(()) => failures = 0,
            Err(SyncError::NeedsReauth(_)) => {
                // Paused until someone re-authorises; check again on the next tick.
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::error!(failures, error = %format!("{error:#}"), "Sync run for `{location}` failed; retrying on the next interval");
            }
        }
        // Hints that arrived during the run: go again without waiting for the interval.
        again = failures == 0 && engine.has_hints(&location).await.unwrap_or(false);
    }
}

/// What a scheduled run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Full,
    Hints,
}

async fn run(engine: &Engine, location: &str, settings: &ScheduleSettings, pass: Pass) -> Result<(), SyncError> {
    let summary = match pass {
        Pass::Full => engine.run_once(location, RunOptions::default()).await?,
        Pass::Hints => engine.run_hints(location, RunOptions::default()).await?,
    };
    if summary.changes() > 0 || summary.dead_letters > 0 {
        tracing::info!(
            pages = summary.pages,
            contacts_seen = summary.contacts_seen,
            changes = summary.changes(),
            requests = summary.requests,
            "Synced `{location}`: {} change(s)",
            summary.changes()
        );
    } else {
        tracing::debug!(requests = summary.requests, "Synced `{location}`: no changes");
    }
    if pass == Pass::Hints {
        return Ok(());
    }
    let due = match engine.last_reconcile(location).await? {
        Some(last) => crate::store::now_ms() - last >= settings.reconcile_interval.as_millis() as i64,
        // Reconcile only after the first full backfill has populated the snapshot.
        None => true,
    };
    if due {
        let summary = engine.reconcile(location, RunOptions::default()).await?;
        tracing::info!(listed = summary.contacts_seen, deletes = summary.changes(), "Reconciled `{location}`");
    }
    Ok(())
}
