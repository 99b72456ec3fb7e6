//! The lease keeper: which locations this daemon may poll when replicas share a PostgreSQL
//! store (issue 21). The rows and the rules of spreading them are in
//! [`crate::store::leases`]; this keeps the process's view of them and fences its work.
//!
//! - **Only the holder polls.** The scheduler asks [`Leases::may_run`] before each pass and
//!   [`Leases::holds`] between the chunks of bulk work, so a location's GHL budget (its
//!   10-second window and its day) is spent by one process.
//! - **Fenced by time, on this side too.** A lease renewed at instant `t` is trusted here only
//!   until `t + fence` (two thirds of the TTL), while the store keeps it until the renewal's
//!   `now + ttl`: a replica that cannot renew (store down, process stalled) stops polling a
//!   third of the TTL before anyone else may claim its locations.
//! - **A quiet window after a move.** A location claimed from another replica is polled only
//!   once the previous holder's last requests have left GHL's window
//!   (`previous expiry + window`), so the window never holds two replicas' requests at once.
//!   Then a full pass starts at once ([`SyncNow`]).
//! - A daemon on SQLite (one per file, by its lock file) holds every location: [`Leases::all`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::scheduler::SyncNow;
use crate::store::Store;
use crate::store::leases::{self, LeaseTerms, Replica, Tick};

/// Lease settings, from `[replicas]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// A lease lives this long without renewal; leases are renewed every third of it.
    pub ttl: Duration,
    /// GHL's rate-limit window: how long a moved location stays quiet.
    pub window: Duration,
}

impl LeaseSettings {
    fn terms(&self) -> LeaseTerms {
        let ttl_ms = self.ttl.as_millis() as i64;
        LeaseTerms { ttl_ms, drain_ms: ttl_ms / 3 }
    }

    fn every(&self) -> Duration {
        self.ttl / 3
    }

    fn fence(&self) -> Duration {
        self.ttl * 2 / 3
    }
}

/// A lease as this process trusts it.
#[derive(Debug, Clone, Copy)]
struct Held {
    valid_until: Instant,
    not_before: Instant,
}

/// This process's leases. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Leases {
    /// `None`: every location (one daemon per store).
    held: Option<Mutex<HashMap<String, Held>>>,
}

impl Leases {
    /// Every location, always: the store has one daemon.
    pub fn all() -> Arc<Self> {
        Arc::new(Self { held: None })
    }

    /// None yet: the keeper ([`run`]) claims them.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self { held: Some(Mutex::new(HashMap::new())) })
    }

    /// Whether leases are in use (several replicas may share the store).
    pub fn is_shared(&self) -> bool {
        self.held.is_some()
    }

    fn lock(map: &Mutex<HashMap<String, Held>>) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this process holds `location` now (bulk work in progress stops when not).
    pub fn holds(&self, location: &str) -> bool {
        let Some(held) = &self.held else { return true };
        Self::lock(held).get(location).is_some_and(|h| Instant::now() < h.valid_until)
    }

    /// Whether a pass of `location` may start now: held, and its quiet window after a move
    /// is over.
    pub fn may_run(&self, location: &str) -> bool {
        let Some(held) = &self.held else { return true };
        let now = Instant::now();
        Self::lock(held).get(location).is_some_and(|h| now < h.valid_until && now >= h.not_before)
    }

    /// The locations held now (`None`: every location).
    pub fn held(&self) -> Option<Vec<String>> {
        let held = self.held.as_ref()?;
        let now = Instant::now();
        let mut list: Vec<String> =
            Self::lock(held).iter().filter(|(_, h)| now < h.valid_until).map(|(id, _)| id.clone()).collect();
        list.sort();
        Some(list)
    }

    /// Applies a tick that started at `started`; returns the claimed locations with the
    /// instant each may first be polled.
    fn apply(&self, tick: &Tick, started: Instant, settings: &LeaseSettings, now_ms: i64) -> Vec<(String, Instant)> {
        let Some(held) = &self.held else { return Vec::new() };
        let mut map = Self::lock(held);
        let valid_until = started + settings.fence();
        let mut fresh = Vec::new();
        let mut next: HashMap<String, Held> = HashMap::new();
        for location in &tick.held {
            let mut lease = map.get(location).copied().unwrap_or(Held { valid_until, not_before: started });
            lease.valid_until = valid_until;
            if let Some(acquired) = tick.acquired.iter().find(|a| &a.location == location) {
                let quiet_ms = if acquired.previous_holder.is_some() {
                    (acquired.previous_expiry + settings.window.as_millis() as i64 - now_ms).max(0)
                } else {
                    0
                };
                lease.not_before = started + Duration::from_millis(quiet_ms as u64);
                fresh.push((location.clone(), lease.not_before));
            }
            next.insert(location.clone(), lease);
        }
        *map = next;
        fresh
    }

    /// Forgets every lease (after a clean release).
    fn clear(&self) {
        if let Some(held) = &self.held {
            Self::lock(held).clear();
        }
    }
}

/// Keeps this replica's leases until `stop`: a tick at once, then every third of the TTL.
/// Claimed locations get a full pass when their quiet window ends. At `stop` the loop ends;
/// the caller releases the leases with [`release`] once the location loops have stopped.
pub async fn run(
    leases: Arc<Leases>,
    store: Store,
    settings: LeaseSettings,
    locations: Vec<String>,
    sync_now: SyncNow,
    stop: CancellationToken,
) {
    let me = Replica::this_process(crate::store::now_ms());
    let terms = settings.terms();
    let mut every = tokio::time::interval(settings.every());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = every.tick() => {},
        }
        let started = Instant::now();
        let now_ms = crate::store::now_ms();
        let keep = leases.held().unwrap_or_default();
        match leases::tick(&store, &me, &locations, &keep, now_ms, terms).await {
            Ok(tick) => {
                if failing {
                    tracing::info!("Lease renewals work again");
                    failing = false;
                }
                for location in &tick.released {
                    tracing::info!(location.id = %location, "Handed the lease of `{location}` back to even the spread over {} replicas", tick.live_replicas);
                }
                for (location, not_before) in leases.apply(&tick, started, &settings, now_ms) {
                    tracing::info!(location.id = %location, replicas = tick.live_replicas, share = tick.share, "Leased `{location}`");
                    let sync_now = sync_now.clone();
                    let stop = stop.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = stop.cancelled() => {},
                            _ = tokio::time::sleep_until(not_before.into()) => {
                                let _woken = sync_now.wake(Some(&location));
                            },
                        }
                    });
                }
                metrics::gauge!("ghl_sync_leases_held").set(tick.held.len() as f64);
                metrics::gauge!("ghl_sync_replicas_live").set(tick.live_replicas as f64);
            }
            Err(error) => {
                if !failing {
                    tracing::error!(error = %error, "Could not renew location leases; polling stops when they run out and resumes once the store answers");
                }
                failing = true;
                metrics::counter!("ghl_sync_lease_errors_total").increment(1);
            }
        }
    }
}

/// A clean stop: hands every lease back at once so the other replicas take them over at their
/// next tick, and marks this replica stopped.
pub async fn release(leases: &Leases, store: &Store) {
    if !leases.is_shared() {
        return;
    }
    leases.clear();
    match leases::release_all(store, crate::store::replica_id(), crate::store::now_ms()).await {
        Ok(released) => tracing::info!(released, "Released this replica's location leases"),
        Err(error) => {
            tracing::warn!(error = %error, "Could not release the location leases; they expire within the lease TTL")
        }
    }
}

/// Wakes the scheduler when any replica stores a webhook (PostgreSQL `LISTEN`): the hints are
/// in the shared store, and the loop of a location this replica holds reads them at once
/// instead of at its next poll. Reconnects after a lost connection (and wakes then, since
/// notifications may have been missed). Returns at once on SQLite.
pub async fn listen_for_hints(store: Store, wake: Arc<tokio::sync::Notify>, stop: CancellationToken) {
    use crate::store::hints::HintListener;
    let mut failing = false;
    loop {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            connected = HintListener::connect(&store) => connected,
        };
        let mut listener = match connected {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(error) => {
                if !failing {
                    tracing::warn!(error = %error, "Cannot listen for webhooks stored by other replicas; their hints wait for the next poll until this works");
                    failing = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
        };
        if failing {
            tracing::info!("Listening for webhooks stored by other replicas again");
        }
        // Hints stored while we were not listening.
        wake.notify_one();
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = listener.next() => next,
            };
            match next {
                Ok(_) => wake.notify_one(),
                Err(error) => {
                    tracing::warn!(error = %error, "Lost the connection that listens for other replicas' webhooks; reconnecting");
                    failing = true;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::leases::Acquired;

    const SETTINGS: LeaseSettings = LeaseSettings { ttl: Duration::from_secs(30), window: Duration::from_secs(10) };

    #[test]
    fn one_daemon_holds_everything() {
        let leases = Leases::all();
        assert!(leases.may_run("x") && leases.holds("x"));
        assert_eq!(leases.held(), None);
    }

    #[test]
    fn a_moved_lease_waits_out_the_window_and_a_lost_one_stops_at_once() {
        let leases = Leases::shared();
        assert!(!leases.may_run("a") && !leases.holds("a"));
        let started = Instant::now();
        let tick = Tick {
            held: vec!["a".into(), "b".into()],
            acquired: vec![
                Acquired { location: "a".into(), previous_holder: None, previous_expiry: 0 },
                Acquired { location: "b".into(), previous_holder: Some("old".into()), previous_expiry: 95_000 },
            ],
            ..Tick::default()
        };
        let fresh = leases.apply(&tick, started, &SETTINGS, 100_000);
        assert_eq!(fresh.len(), 2);
        assert!(leases.may_run("a"));
        // b's old holder stopped at 95 s: GHL's window holds its requests until 105 s.
        assert!(leases.holds("b") && !leases.may_run("b"));
        let b_from = fresh.iter().find(|(l, _)| l == "b").unwrap().1;
        assert_eq!(b_from - started, Duration::from_secs(5));
        // The next tick lost a: it stops at once; b keeps its quiet window.
        let next = Tick { held: vec!["b".into()], ..Tick::default() };
        assert!(leases.apply(&next, started, &SETTINGS, 101_000).is_empty());
        assert!(!leases.holds("a"));
        assert_eq!(leases.held(), Some(vec!["b".to_owned()]));
        assert!(!leases.may_run("b"));
    }

    #[test]
    fn a_lease_not_renewed_is_trusted_only_until_its_fence() {
        let leases = Leases::shared();
        let Some(long_ago) = Instant::now().checked_sub(SETTINGS.fence() + Duration::from_millis(1)) else { return };
        let tick = Tick { held: vec!["a".into()], ..Tick::default() };
        leases.apply(&tick, long_ago, &SETTINGS, 0);
        assert!(!leases.holds("a"), "renewed longer ago than the fence");
        assert_eq!(leases.held(), Some(vec![]));
    }
}
