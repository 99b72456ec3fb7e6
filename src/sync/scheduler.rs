//! Runs the engine per location on its intervals: concurrent across locations (bounded), a
//! failing location never stalls another, webhook hints wake a location early, and a
//! [`SyncNow`] request (SIGUSR1, `POST /admin/sync`, `ghl-sync sync --now`) starts a full pass
//! at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

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

/// "Sync now" requests for the running scheduler: one full-pass trigger per scheduled
/// location. Cheap to clone; the scheduler replaces the set each time it starts (start-up and
/// every config reload), so a request always reaches the loops that are running.
#[derive(Debug, Clone, Default)]
pub struct SyncNow {
    locations: Arc<Mutex<BTreeMap<String, Arc<Notify>>>>,
}

/// What a [`SyncNow`] request reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Woken {
    /// These locations start a full pass now (or right after the one in progress).
    Locations(Vec<String>),
    /// The named location is not scheduled by this daemon.
    Unknown,
}

impl SyncNow {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Notify>>> {
        self.locations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn replace(&self, locations: BTreeMap<String, Arc<Notify>>) {
        *self.lock() = locations;
    }

    /// Starts a full pass for every scheduled location, or for `only`.
    pub fn wake(&self, only: Option<&str>) -> Woken {
        let locations = self.lock();
        let woken: Vec<String> = match only {
            Some(id) => match locations.get(id) {
                Some(notify) => {
                    notify.notify_one();
                    vec![id.to_owned()]
                }
                None => return Woken::Unknown,
            },
            None => locations
                .iter()
                .map(|(id, notify)| {
                    // Stores a permit when the location is busy: it goes again right after.
                    notify.notify_one();
                    id.clone()
                })
                .collect(),
        };
        Woken::Locations(woken)
    }

    /// The locations the scheduler runs now.
    pub fn locations(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

/// Spawns one loop per location on `tracker`; they stop when `stop` is cancelled, at a safe
/// point (between runs; a run in progress finishes its page and stops).
pub fn spawn(
    engine: Arc<Engine>,
    locations: Vec<String>,
    settings: ScheduleSettings,
    wake: Arc<Notify>,
    sync_now: &SyncNow,
    stop: CancellationToken,
    tracker: &TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(settings.max_concurrent_locations.max(1)));
    let mut wakes = HashMap::new();
    let mut nows = BTreeMap::new();
    for location in locations {
        let own = Arc::new(Notify::new());
        let now = Arc::new(Notify::new());
        wakes.insert(location.clone(), own.clone());
        nows.insert(location.clone(), now.clone());
        // Every event of this location's runs carries `location.id` through this span; events
        // inside do not repeat it.
        let span = tracing::info_span!("location", location.id = %location);
        let triggers = Triggers { hint: own, now };
        tracker.spawn(
            location_loop(engine.clone(), location, settings.clone(), triggers, stop.clone(), permits.clone())
                .instrument(span),
        );
    }
    sync_now.replace(nows);
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

/// What wakes one location's loop besides its interval.
struct Triggers {
    /// Webhook hints waiting: a hint-only pass.
    hint: Arc<Notify>,
    /// Sync now: a full pass.
    now: Arc<Notify>,
}

async fn location_loop(
    engine: Arc<Engine>,
    location: String,
    settings: ScheduleSettings,
    triggers: Triggers,
    stop: CancellationToken,
    permits: Arc<Semaphore>,
) {
    let Triggers { hint: wake, now } = triggers;
    let mut tick = tokio::time::interval(settings.contacts_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failures: u32 = 0;
    let mut again = false;
    loop {
        // A poll tick runs a full pass; a webhook hint (or hints left after a pass) runs a
        // hint-only pass: the named contacts' reads, not a whole search of the location.
        let pass = if again {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = now.notified() => Pass::Full,
                _ = tokio::time::sleep(settings.dirty_debounce) => Pass::Hints,
            }
        } else {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = now.notified() => {
                    tracing::info!("Sync now requested for `{location}`: starting a full pass");
                    Pass::Full
                },
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
