//! Runs the engine per location on its intervals: concurrent across locations (bounded), a
//! failing location never stalls another, webhook hints wake a location early, and a
//! [`SyncNow`] request (SIGUSR1, `POST /admin/sync`, `ghl-sync sync --now`) starts a full pass
//! at once.
//!
//! Freshness never waits on bulk work: a full pass and the bulk runs that continue it (the
//! children backlog of a first sync, the sweep) stop between small chunks as soon as a webhook
//! hint has arrived for the location or its next poll is due, and resume after that work. A
//! location with bulk work left runs it whenever nothing else is waiting, one slice per
//! concurrency permit, so other locations get their turns too: bulk work also stops between
//! chunks while another location waits for a permit (fair rotation; each turn still reads at
//! least one chunk, so a location that yields always makes progress).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::engine::{Engine, RunOptions, SyncError};
use super::leases::Leases;

/// Scheduler settings, from `[sync]`.
#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    pub contacts_interval: Duration,
    pub reconcile_interval: Duration,
    pub max_concurrent_locations: usize,
    pub dirty_debounce: Duration,
    /// Bulk work yields to hints and polls (the default). `false` runs each full pass to its
    /// end before anything else, as before issue 22 (`[sync] bulk_yields`).
    pub bulk_yields: bool,
}

impl ScheduleSettings {
    pub fn from_config(sync: &crate::config::SyncSettings) -> Self {
        Self {
            contacts_interval: sync.contacts_interval.get(),
            reconcile_interval: sync.reconcile_interval.get(),
            max_concurrent_locations: sync.max_concurrent_locations,
            dirty_debounce: sync.dirty_debounce.get(),
            bulk_yields: sync.bulk_yields,
        }
    }
}

/// One location's wake-ups: webhook hints (a hint-only pass), sync-now requests (a full
/// pass), and the flag its bulk work checks between chunks (set by either).
#[derive(Debug, Default)]
struct Wake {
    notify: Notify,
    now: Notify,
    interrupt: AtomicBool,
}

/// "Sync now" requests for the running scheduler: one full-pass trigger per scheduled
/// location. Cheap to clone; the scheduler replaces the set each time it starts (start-up and
/// every config reload), so a request always reaches the loops that are running.
#[derive(Debug, Clone, Default)]
pub struct SyncNow {
    locations: Arc<Mutex<BTreeMap<String, Arc<Wake>>>>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<Wake>>> {
        self.locations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn replace(&self, locations: BTreeMap<String, Arc<Wake>>) {
        *self.lock() = locations;
    }

    /// Starts a full pass for every scheduled location, or for `only`; bulk work in progress
    /// stops at its next chunk boundary to make way.
    pub fn wake(&self, only: Option<&str>) -> Woken {
        let locations = self.lock();
        let wake = |wake: &Wake| {
            wake.interrupt.store(true, Ordering::Release);
            // Stores a permit when the location is busy: it goes again right after.
            wake.now.notify_one();
        };
        let woken: Vec<String> = match only {
            Some(id) => match locations.get(id) {
                Some(own) => {
                    wake(own);
                    vec![id.to_owned()]
                }
                None => return Woken::Unknown,
            },
            None => locations
                .iter()
                .map(|(id, own)| {
                    wake(own);
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
/// point (between runs; a run in progress finishes its page and stops). A loop runs passes
/// only while `leases` lets this process poll its location (replicas: one holder per
/// location; a single daemon holds them all).
#[allow(clippy::too_many_arguments, reason = "the scheduler's inputs, each from the composition root")]
pub fn spawn(
    engine: Arc<Engine>,
    locations: Vec<String>,
    leases: Arc<Leases>,
    settings: ScheduleSettings,
    wake: Arc<Notify>,
    sync_now: &SyncNow,
    stop: CancellationToken,
    tracker: &TaskTracker,
) {
    let permits = Arc::new(Permits {
        semaphore: Semaphore::new(settings.max_concurrent_locations.max(1)),
        waiting: AtomicUsize::new(0),
    });
    let mut wakes = HashMap::new();
    let mut nows = BTreeMap::new();
    for location in locations {
        let own = Arc::new(Wake::default());
        wakes.insert(location.clone(), own.clone());
        nows.insert(location.clone(), own.clone());
        // Every event of this location's runs carries `location.id` through this span; events
        // inside do not repeat it.
        let span = tracing::info_span!("location", location.id = %location);
        tracker.spawn(
            location_loop(
                engine.clone(),
                location,
                leases.clone(),
                settings.clone(),
                own,
                stop.clone(),
                permits.clone(),
            )
            .instrument(span),
        );
    }
    sync_now.replace(nows);
    tracker.spawn(route_hints(engine, wakes, wake, stop));
}

/// The concurrency permits shared by the location loops, and how many loops wait for one
/// (bulk work holding a permit yields while another location waits).
#[derive(Debug)]
struct Permits {
    semaphore: Semaphore,
    waiting: AtomicUsize,
}

impl Permits {
    /// Waits for a permit, counted as waiting meanwhile (also if the wait is dropped).
    async fn acquire(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        self.semaphore.acquire().await.ok()
    }

    /// Whether another location waits for a permit.
    fn contended(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }
}

/// The webhook receiver wakes one shared `Notify`; this wakes exactly the locations that
/// have hints waiting.
async fn route_hints(
    engine: Arc<Engine>,
    wakes: HashMap<String, Arc<Wake>>,
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
                        // Bulk work in progress stops at its next chunk boundary.
                        own.interrupt.store(true, Ordering::Release);
                        // Stores a permit when the location is busy: the hint is never lost.
                        own.notify.notify_one();
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
    leases: Arc<Leases>,
    settings: ScheduleSettings,
    wake: Arc<Wake>,
    stop: CancellationToken,
    permits: Arc<Permits>,
) {
    let mut tick = tokio::time::interval(settings.contacts_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failures: u32 = 0;
    let mut again = false;
    let mut bulk_left = false;
    let mut leased = false;
    let mut last_full = Instant::now();
    loop {
        // A poll tick runs a full pass; a webhook hint (or hints left after a pass) runs a
        // hint-only pass: the named contacts' reads, not a whole search of the location. Bulk
        // work left by a yielding pass runs when neither is waiting.
        let pass = if again {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = wake.now.notified() => Pass::Full,
                _ = tokio::time::sleep(settings.dirty_debounce) => Pass::Hints,
            }
        } else {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = wake.now.notified() => {
                    tracing::info!("Sync now requested for `{location}`: starting a full pass");
                    Pass::Full
                },
                _ = tick.tick() => Pass::Full,
                _ = wake.notify.notified() => {
                    // Gather hints that arrive together into one run.
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(settings.dirty_debounce) => {},
                    }
                    Pass::Hints
                },
                _ = std::future::ready(()), if bulk_left => Pass::Bulk,
            }
        };
        if !leases.may_run(&location) {
            // Another replica holds the location (or the quiet window after it moved here has
            // not ended): its hints and polls are that replica's. Leasing it wakes a full pass.
            (again, bulk_left, leased) = (false, false, false);
            continue;
        }
        if !leased {
            // First pass here since start-up or since the location moved here: today's
            // requests made before count against the day's budget.
            leased = true;
            if let Err(error) = engine.resume_daily_budget(&location).await {
                tracing::warn!(error = %format!("{error:#}"), "Could not read today's GHL request count of `{location}`; the day's budget starts from this process's count");
            }
        }
        let Some(_permit) = permits.acquire().await else { break };
        if stop.is_cancelled() {
            break;
        }
        if !leases.may_run(&location) {
            // The lease went while this loop waited for a permit.
            (again, bulk_left, leased) = (false, false, false);
            continue;
        }
        if pass != Pass::Bulk {
            // Hints and requests that arrive from now on interrupt bulk work again.
            wake.interrupt.store(false, Ordering::Release);
        }
        if pass == Pass::Full {
            last_full = Instant::now();
        }
        let interval = settings.contacts_interval;
        // Bulk work stops between chunks for a hint or sync-now, a due poll, or another
        // location waiting for a permit (its turn); it resumes in a later bulk pass.
        let should_yield = || {
            wake.interrupt.load(Ordering::Acquire)
                || last_full.elapsed() >= interval
                || permits.contended()
                || !leases.holds(&location)
        };
        let outcome = tokio::select! {
            // Cancelling drops the run between awaits: every committed page stays committed,
            // the page in flight is rolled back and read again next time.
            _ = stop.cancelled() => break,
            outcome = run(&engine, &location, &settings, pass, &should_yield) => outcome,
        };
        match outcome {
            Ok(left) => {
                failures = 0;
                if pass != Pass::Hints {
                    bulk_left = left;
                }
            }
            Err(SyncError::NeedsReauth(_)) => {
                // Paused until someone re-authorises; check again on the next tick.
                bulk_left = false;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                bulk_left = false;
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
    Bulk,
}

/// Runs one pass; `Ok(true)` when bulk work was left for later.
async fn run(
    engine: &Engine,
    location: &str,
    settings: &ScheduleSettings,
    pass: Pass,
    should_yield: &(dyn Fn() -> bool + Send + Sync),
) -> Result<bool, SyncError> {
    let summary = match pass {
        Pass::Full if settings.bulk_yields => engine.run_sliced(location, should_yield).await?,
        Pass::Full => engine.run_once(location, RunOptions::default()).await?,
        Pass::Hints => engine.run_hints(location, RunOptions::default()).await?,
        Pass::Bulk => engine.run_bulk(location, should_yield).await?,
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
    if pass == Pass::Hints || summary.bulk_remaining || !engine.may_poll(location) {
        // Reconciliation lists every id: bulk work, after the backlog.
        return Ok(summary.bulk_remaining);
    }
    let due = match engine.last_reconcile(location).await? {
        Some(last) => crate::store::now_ms() - last >= settings.reconcile_interval.as_millis() as i64,
        // Reconcile only after the first full backfill has populated the snapshot.
        None => true,
    };
    if due {
        match engine.reconcile(location, RunOptions::default()).await {
            Ok(summary) => {
                tracing::info!(listed = summary.contacts_seen, deletes = summary.changes(), "Reconciled `{location}`");
            }
            // Bulk work's share of today's budget is spent: reconciliation waits for a later pass.
            Err(error) if error.is_budget_spent() => {
                tracing::debug!("Reconciliation of `{location}` waits: today's budget for bulk work is spent");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(false)
}
