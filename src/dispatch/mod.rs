//! The dispatcher: one worker per connector draining its outbox rows in batches, recording
//! each item's outcome against the content it delivered, with backoff, dead letters and a
//! circuit breaker per connector. Every outbox read and write goes through `store::outbox`;
//! this module holds no SQL and never holds a write transaction.
//!
//! Per-record ordering comes from the outbox contract (at most one pending row per record)
//! plus two rules kept here: a worker never has the same row in flight twice (it waits for a
//! round to finish before reading due rows again), and outcomes are written only
//! `WHERE id = ? AND content_hash = ?`, so a change that replaced the row mid-flight stays
//! pending and goes out next.
//!
//! A worker whose outcomes the store cannot record (disk full, locked) keeps them in memory,
//! backs off (exponentially, capped) and writes them before it takes any new row: a delivered
//! batch is never sent again because its bookkeeping failed (only a restart in that state
//! sends it again, under the same keys).
//!
//! Replicas: several daemons may drain one PostgreSQL store. A worker takes its rows with
//! `outbox::claim` under its dispatcher's replica id ([`Dispatcher::with_replica`]), so no
//! two workers anywhere deliver the same row at once. A claim lasts the claim TTL
//! ([`claim_ttl`]) and is renewed every third of it while the row is in flight, so a slow
//! delivery (timeouts, retries, rate-limit waits) keeps its rows however long it takes; the
//! row's outcome ends the claim. A clean stop releases what is left (`outbox::release_claims`)
//! for the other replicas at once; after `kill -9` the rows wait for their claims to expire
//! and are delivered again under the same keys. Replicas' clocks must agree to well within the
//! TTL (NTP), since a claim's deadline is the claimer's wall clock. Connectors that call GHL
//! ([`Connector::calls_ghl`]) can be limited to the locations this replica leases
//! ([`Dispatcher::with_location_filter`]), so each location's GHL budget is spent by one process.

mod breaker;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::DispatchSettings;
use crate::connectors::{Connector, Delivery, DeliverySettings, Outcome};
use crate::domain::EntityKind;
use crate::http::RetryPolicy;
use crate::store::outbox::{self, Claim, DeliveryOutcome, OutboxRow, UnreadableRow, Verdict};
use crate::store::{Store, StoreError, codec, snapshot};

pub use breaker::{Breaker, Gate};

/// Counts for one connector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorSummary {
    pub delivered: u64,
    pub retried: u64,
    /// Held back by the connector (not an attempt).
    pub parked: u64,
    pub dead: u64,
    pub skipped: u64,
    /// Rows whose content was replaced while in flight (they stay pending).
    pub superseded: u64,
    pub batches: u64,
    /// The circuit was open (or opened) during this pass.
    pub circuit_open: bool,
}

impl ConnectorSummary {
    fn add(&mut self, other: &ConnectorSummary) {
        self.delivered += other.delivered;
        self.retried += other.retried;
        self.parked += other.parked;
        self.dead += other.dead;
        self.skipped += other.skipped;
        self.superseded += other.superseded;
        self.batches += other.batches;
        self.circuit_open |= other.circuit_open;
    }
}

/// What one [`Dispatcher::run_once`] did, by connector id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchSummary {
    pub connectors: BTreeMap<String, ConnectorSummary>,
    /// Store errors, one line each (the pass carried on with the other connectors).
    pub errors: Vec<String>,
    pub pruned: u64,
}

impl DispatchSummary {
    /// Adds the counts and errors of a later pass.
    pub fn merge(&mut self, other: DispatchSummary) {
        for (id, counts) in other.connectors {
            self.connectors.entry(id).or_default().add(&counts);
        }
        self.errors.extend(other.errors);
        self.pruned += other.pruned;
    }

    pub fn total(&self) -> ConnectorSummary {
        let mut total = ConnectorSummary::default();
        for summary in self.connectors.values() {
            total.add(summary);
        }
        total
    }
}

/// Which connectors' circuits are open now (read by the operator alerts). Cheap to clone;
/// the dispatcher updates it as its breakers open and close. In memory: a restart closes every
/// circuit, so an open one is reported again only when it opens again.
#[derive(Debug, Clone, Default)]
pub struct OpenCircuits {
    open: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

impl OpenCircuits {
    fn set(&self, connector: &str, open: bool) {
        let mut set = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open {
            set.insert(connector.to_owned());
        } else {
            set.remove(connector);
        }
    }

    /// Connector ids whose circuit is open, sorted.
    pub fn list(&self) -> Vec<String> {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Marks a circuit open (tests and tools that simulate one).
    pub fn mark_open(&self, connector: &str) {
        self.set(connector, true);
    }

    /// Forgets connectors that are not in `ids` (after a reload removed them).
    fn retain(&self, ids: &[String]) {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).retain(|id| ids.contains(id));
    }
}

/// Wakes every worker (the sync engine calls this after committing a page with outbox rows).
#[derive(Debug, Clone, Default)]
pub struct DispatchWake {
    notifies: Arc<Vec<Arc<Notify>>>,
}

impl DispatchWake {
    pub fn wake(&self) {
        for notify in self.notifies.iter() {
            // Stores a permit when the worker is busy, so the wake-up is never lost.
            notify.notify_one();
        }
    }
}

/// Why a worker's round stopped.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("claiming or reading due outbox rows failed: {0}")]
    Read(#[source] StoreError),
    #[error("recording delivery results in the store failed: {0}")]
    Record(#[source] StoreError),
}

struct Worker {
    connector: Arc<dyn Connector>,
    id: String,
    settings: DeliverySettings,
    /// The connector calls GHL: only rows of the locations this replica leases are taken.
    calls_ghl: bool,
    /// Rows this worker claimed whose outcome is not recorded yet (their claims are renewed).
    claimed: Mutex<BTreeSet<i64>>,
    breaker: Mutex<Breaker>,
    wake: Arc<Notify>,
    /// Outcomes of delivered batches the store could not record yet. They are written before
    /// the worker takes any new row, and never cause a re-send.
    unrecorded: Mutex<Vec<DeliveryOutcome>>,
    /// Failed attempts in a row to record outcomes (0: the last one succeeded).
    record_failures: AtomicU32,
}

impl Worker {
    fn unrecorded(&self) -> std::sync::MutexGuard<'_, Vec<DeliveryOutcome>> {
        self.unrecorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn claimed(&self) -> std::sync::MutexGuard<'_, BTreeSet<i64>> {
        self.claimed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The locations whose rows connectors that call GHL may take now (`None`: all of them). The
/// app passes the set of locations this replica leases.
pub type LocationFilter = Arc<dyn Fn() -> Option<Vec<String>> + Send + Sync>;

/// The shortest claim TTL: how long rows claimed by a replica that died (`kill -9`) wait
/// before another replica takes them. A live claimer renews its claims every third of the
/// TTL, so the TTL need not cover the longest delivery.
pub const CLAIM_TTL: Duration = Duration::from_secs(30);

/// The claim TTL for `settings`: [`CLAIM_TTL`], or three poll intervals when that is longer
/// (a worker that polls slowly still renews well before its claims run out).
pub fn claim_ttl(settings: &DispatchSettings) -> Duration {
    CLAIM_TTL.max(settings.poll_interval.get().saturating_mul(3))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Drains the outbox into the connectors.
pub struct Dispatcher {
    store: Store,
    settings: DispatchSettings,
    workers: Vec<Arc<Worker>>,
    wake: DispatchWake,
    circuits: OpenCircuits,
    /// The wall clock of `next_attempt_at` (injected: tests jump it).
    clock: Clock,
    /// The latest wall-clock reading (epoch ms; 0 before the first): a reading earlier than
    /// this by more than [`CLOCK_STEP_BACK`] means the system clock went back.
    latest_ms: AtomicI64,
    /// The claimer id of this dispatcher's outbox claims.
    replica: String,
    /// How long a claim holds unless renewed ([`claim_ttl`]).
    claim_ttl: Duration,
    /// Limits connectors that call GHL to these locations (`None`: no limit).
    location_filter: Option<LocationFilter>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("connectors", &self.connector_ids())
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// Longest wait between two attempts to record held outcomes (a full disk is usually freed
/// within minutes; `dispatch.backoff_max` is meant for remote targets and may be far longer).
const RECORD_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A wall-clock reading this much earlier than the latest one is a step back of the system
/// clock (not jitter), and rows waiting in the outbox are rescheduled from the new time.
pub const CLOCK_STEP_BACK: Duration = Duration::from_secs(1);

impl Dispatcher {
    pub fn new(store: Store, connectors: Vec<Arc<dyn Connector>>, settings: DispatchSettings) -> Self {
        let workers: Vec<Arc<Worker>> = connectors
            .into_iter()
            .map(|connector| {
                Arc::new(Worker {
                    id: connector.id().to_owned(),
                    settings: connector.settings(),
                    calls_ghl: connector.calls_ghl(),
                    claimed: Mutex::new(BTreeSet::new()),
                    breaker: Mutex::new(Breaker::new(settings.breaker_threshold, settings.breaker_cooldown.get())),
                    wake: Arc::new(Notify::new()),
                    unrecorded: Mutex::new(Vec::new()),
                    record_failures: AtomicU32::new(0),
                    connector,
                })
            })
            .collect();
        let wake = DispatchWake { notifies: Arc::new(workers.iter().map(|w| w.wake.clone()).collect()) };
        Self {
            store,
            workers,
            wake,
            circuits: OpenCircuits::default(),
            clock: Clock::system(),
            latest_ms: AtomicI64::new(0),
            replica: crate::store::replica_id().to_owned(),
            claim_ttl: claim_ttl(&settings),
            location_filter: None,
            settings,
        }
    }

    /// Claims outbox rows as `replica` (default: this process's [`crate::store::replica_id`]).
    /// Two dispatchers on one store must have different ids.
    pub fn with_replica(mut self, replica: String) -> Self {
        self.replica = replica;
        self
    }

    /// The claimer id of this dispatcher's outbox claims.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Claims rows for `ttl` (default: [`claim_ttl`] of the settings); renewed every third of it
    /// while in flight.
    pub fn with_claim_ttl(mut self, ttl: Duration) -> Self {
        self.claim_ttl = ttl.max(Duration::from_millis(30));
        self
    }

    /// Connectors that call GHL ([`Connector::calls_ghl`]) take only rows of the locations
    /// `filter` names when they look for due rows (`None` from it: every location). Without a
    /// filter (the default: one daemon) they take every location's rows.
    pub fn with_location_filter(mut self, filter: LocationFilter) -> Self {
        self.location_filter = Some(filter);
        self
    }

    /// Reads wall-clock time from `clock` (tests jump it; the app passes the process clock).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The wall clock now, for reading due rows. At the first reading, and whenever the clock
    /// went back since the last one, rows written "in the future" of now are rescheduled
    /// (`outbox::reschedule_after_clock_step_back`): each waits what was left of its own wait
    /// (a backoff, a park), not that plus the size of the step. A failure to reschedule is
    /// logged (the rows then wait out the step).
    async fn now_checked(&self) -> i64 {
        let now = self.clock.now_ms();
        let latest = self.latest_ms.fetch_max(now, Ordering::SeqCst);
        let step = i64::try_from(CLOCK_STEP_BACK.as_millis()).unwrap_or(i64::MAX);
        let first = latest == 0;
        if first || latest > now.saturating_add(step) {
            match outbox::reschedule_after_clock_step_back(&self.store, now, step).await {
                Ok(moved) => {
                    if !first {
                        tracing::warn!(
                            back_ms = latest - now,
                            rescheduled = moved,
                            "The system clock went back {} ms; {moved} waiting deliveries now wait only what was left of their backoff",
                            latest - now
                        );
                    } else if moved > 0 {
                        tracing::warn!(
                            rescheduled = moved,
                            "The system clock is behind the outbox's last writes (it went back while the daemon was stopped); {moved} waiting deliveries now wait only what was left of their backoff"
                        );
                    }
                    self.latest_ms.store(now, Ordering::SeqCst);
                }
                Err(error) => {
                    tracing::warn!(error = %error, "Could not look for deliveries written before a step back of the system clock");
                }
            }
        }
        now
    }

    /// Reports circuit states into `circuits` (shared across config reloads).
    pub fn with_open_circuits(mut self, circuits: OpenCircuits) -> Self {
        circuits.retain(&self.connector_ids());
        self.circuits = circuits;
        self
    }

    /// The connectors whose circuit is open now.
    pub fn open_circuits(&self) -> OpenCircuits {
        self.circuits.clone()
    }

    /// The handle the sync engine uses to wake the workers.
    pub fn waker(&self) -> DispatchWake {
        self.wake.clone()
    }

    pub fn connector_ids(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.id.clone()).collect()
    }

    /// Delivers everything due now (for `sync --once` and tests), connector by connector in
    /// parallel; rows rescheduled during this pass wait for a later one. Also prunes old
    /// delivered rows.
    pub async fn run_once(&self) -> DispatchSummary {
        self.run_once_for(None).await
    }

    /// [`Dispatcher::run_once`] for the rows of `locations` only (all rows with `None`):
    /// returns when nothing due is left for them (rows in backoff, parked or behind an open
    /// circuit are not due and stay pending).
    pub async fn run_once_for(&self, locations: Option<&[String]>) -> DispatchSummary {
        let cutoff = self.now_checked().await;
        let mut summary = DispatchSummary::default();
        let passes = join_all(self.workers.iter().map(|worker| async move {
            let mut total = ConnectorSummary::default();
            loop {
                match self.round(worker, cutoff, locations, &mut total).await {
                    Ok(0) => return (worker.id.clone(), total, None),
                    Ok(_) => {}
                    Err(error) => return (worker.id.clone(), total, Some(format!("{}: {error}", worker.id))),
                }
            }
        }));
        let passes = tokio::select! {
            passes = passes => passes,
            never = self.renew_claims_forever() => match never {},
        };
        for (id, counts, error) in passes {
            summary.connectors.insert(id, counts);
            summary.errors.extend(error);
        }
        match self.housekeeping().await {
            Ok(pruned) => summary.pruned = pruned,
            Err(error) => summary.errors.push(format!("housekeeping: {error}")),
        }
        summary
    }

    /// Runs the workers until `stop` is cancelled: each polls its due rows every
    /// `poll_interval` or when woken, and finishes its in-flight round before stopping. A
    /// worker that cannot record outcomes backs off until the store can write again. Claims
    /// are renewed while rows are in flight; at the end the claims still held are released.
    pub async fn run(&self, stop: CancellationToken) {
        let workers = self.workers.iter().map(|worker| self.work(worker, stop.clone()));
        let housekeeping = async {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Err(error) = self.housekeeping().await {
                    tracing::warn!(error = %error, "Outbox housekeeping (pruning delivered rows) failed");
                }
            }
        };
        // Claims are renewed until the last in-flight round has recorded its outcomes.
        tokio::select! {
            _ = async { tokio::join!(join_all(workers), housekeeping) } => {}
            never = self.renew_claims_forever() => match never {},
        }
        self.release_own_claims().await;
    }

    /// Renews the claims of the rows in flight every third of the claim TTL; never returns.
    async fn renew_claims_forever(&self) -> std::convert::Infallible {
        let every = self.claim_ttl / 3;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.renew_claims().await;
        }
    }

    /// Moves the deadline of every claim in flight to a claim TTL from now. A failure is
    /// logged: if the store stays unwritable past the deadlines, another replica may take the
    /// rows and deliver them again (same keys).
    async fn renew_claims(&self) {
        let ids: Vec<i64> =
            self.workers.iter().flat_map(|worker| worker.claimed().iter().copied().collect::<Vec<_>>()).collect();
        if ids.is_empty() {
            return;
        }
        let until = self.clock.now_ms().saturating_add(millis(self.claim_ttl));
        match outbox::renew_claims(&self.store, &self.replica, &ids, until).await {
            Ok(renewed) => {
                tracing::debug!(claims = ids.len(), renewed, "Renewed the claims on the outbox rows in delivery");
            }
            Err(error) => {
                tracing::warn!(claims = ids.len(), error = %error,
                    "Could not renew the claims on {} outbox rows in delivery; if they expire another replica may deliver them again (same idempotency keys)",
                    ids.len());
            }
        }
    }

    /// On a clean stop: releases the claims this dispatcher still holds (rows whose outcome
    /// could not be recorded), so other replicas take them at once.
    async fn release_own_claims(&self) {
        match outbox::release_claims(&self.store, &self.replica).await {
            Ok(0) => {}
            Ok(released) => {
                tracing::info!(released, "Released {released} claimed outbox rows for the other replicas");
            }
            Err(error) => {
                tracing::warn!(error = %error,
                    "Could not release this replica's outbox claims; its unfinished rows wait for the claims to expire");
            }
        }
        for worker in &self.workers {
            worker.claimed().clear();
        }
    }

    /// The locations whose rows `worker` may take: those asked for (`sync --once`), and for a
    /// connector that calls GHL only those the location filter allows (`None`: all).
    fn locations_for<'a>(&self, worker: &Worker, asked: Option<&'a [String]>) -> Option<Cow<'a, [String]>> {
        let allowed = match &self.location_filter {
            Some(filter) if worker.calls_ghl => filter(),
            _ => None,
        };
        match (asked, allowed) {
            (asked, None) => asked.map(Cow::Borrowed),
            (None, Some(allowed)) => Some(Cow::Owned(allowed)),
            (Some(asked), Some(allowed)) => {
                Some(Cow::Owned(asked.iter().filter(|location| allowed.contains(location)).cloned().collect()))
            }
        }
    }

    /// One worker's loop (see [`Dispatcher::run`]).
    async fn work(&self, worker: &Worker, stop: CancellationToken) {
        let poll = self.settings.poll_interval.get();
        let record_backoff = RetryPolicy {
            max_retries: 0,
            base_backoff: poll,
            max_backoff: self.settings.backoff_max.get().min(RECORD_BACKOFF_MAX),
        };
        // Failed claims in a row: claiming writes, so a store that cannot write (full, locked by
        // another process) fails every poll; it is reported once per streak and backed off.
        let mut read_failures = 0u32;
        while !stop.is_cancelled() {
            let now = self.now_checked().await;
            let result = self.round(worker, now, None, &mut ConnectorSummary::default()).await;
            if !matches!(result, Err(RoundError::Read(_))) && read_failures > 0 {
                tracing::info!(connector.id = %worker.id, failures = read_failures,
                    "Taking outbox rows for `{}` again after {read_failures} failed attempts", worker.id);
                read_failures = 0;
            }
            let wait = match result {
                Ok(0) => poll,
                Ok(_) => continue,
                Err(RoundError::Record(_)) => {
                    // Not woken early: only the store coming back ends this wait.
                    let failures = worker.record_failures.load(Ordering::Relaxed);
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(record_backoff.backoff(failures.saturating_sub(1))) => {}
                    }
                    continue;
                }
                Err(error @ RoundError::Read(_)) => {
                    read_failures = read_failures.saturating_add(1);
                    if read_failures == 1 {
                        tracing::warn!(connector.id = %worker.id, error = %error,
                            "Could not claim or read due outbox rows for `{}`; retrying with backoff", worker.id);
                    }
                    record_backoff.backoff(read_failures - 1)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = worker.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Last chance for held outcomes; rows whose outcome is lost are delivered again after
        // a restart, under the same keys.
        if let Err(error) = self.flush(worker, &mut ConnectorSummary::default()).await {
            let held = worker.unrecorded().len();
            tracing::warn!(connector.id = %worker.id, held, error = %error,
                "Stopping with {held} delivery results for `{}` not recorded; those rows will be delivered again", worker.id);
        }
    }

    /// Prunes delivered rows past the retention. The outbox / dead-letter gauges are rendered
    /// from the store at scrape time (`server::prometheus`), not set here.
    async fn housekeeping(&self) -> Result<u64, StoreError> {
        let retention = i64::try_from(self.settings.retention.get().as_millis()).unwrap_or(i64::MAX);
        outbox::prune(&self.store, self.clock.now_ms().saturating_sub(retention)).await
    }

    /// One round for one connector: record outcomes still held from earlier rounds (taking no
    /// new row until that succeeds), then read up to `concurrency` batches of due rows, deliver
    /// them in parallel and record each batch's outcomes. Returns the number of rows taken.
    async fn round(
        &self,
        worker: &Worker,
        cutoff: i64,
        locations: Option<&[String]>,
        summary: &mut ConnectorSummary,
    ) -> Result<usize, RoundError> {
        self.flush(worker, summary).await?;
        let gate = worker.breaker.lock().unwrap_or_else(|e| e.into_inner()).gate(Instant::now());
        // Half-open (waiting for a probe) still counts as open for the alerts.
        self.circuits.set(&worker.id, gate != Gate::Closed);
        let batches_allowed = match gate {
            Gate::Open => {
                summary.circuit_open = true;
                return Ok(0);
            }
            Gate::Probe => 1,
            Gate::Closed => worker.settings.concurrency.max(1),
        };
        let batch_size = worker.settings.batch_size.max(1);
        let locations = self.locations_for(worker, locations);
        let claim = Claim { claimer: &self.replica, now: self.clock.now_ms(), for_ms: millis(self.claim_ttl) };
        let rows =
            outbox::claim(&self.store, &worker.id, cutoff, batch_size * batches_allowed, locations.as_deref(), claim)
                .await
                .map_err(RoundError::Read)?;
        if rows.is_empty() {
            return Ok(0);
        }
        worker.claimed().extend(rows.iter().map(row_id));
        let taken = rows.len();
        let mut batches = Vec::new();
        let mut rows = rows.into_iter();
        loop {
            let batch: Vec<_> = rows.by_ref().take(batch_size).collect();
            if batch.is_empty() {
                break;
            }
            batches.push(batch);
        }
        let results = join_all(batches.into_iter().map(|batch| async move {
            let ids: Vec<i64> = batch.iter().map(row_id).collect();
            let outcomes = match self.deliver_batch(worker, batch).await {
                Ok(outcomes) => outcomes,
                Err(error) => {
                    // Nothing of the batch was sent: free its rows for any worker at once.
                    self.release(worker, &ids).await;
                    return Err(RoundError::Read(error));
                }
            };
            let mut counts = ConnectorSummary { batches: 1, ..ConnectorSummary::default() };
            self.record(worker, outcomes, &mut counts).await?;
            Ok::<_, RoundError>(counts)
        }))
        .await;
        let mut failed = None;
        for result in results {
            match result {
                Ok(counts) => summary.add(&counts),
                Err(error) => failed = Some(error),
            }
        }
        let gate = worker.breaker.lock().unwrap_or_else(|e| e.into_inner()).gate(Instant::now());
        self.circuits.set(&worker.id, gate != Gate::Closed);
        if gate == Gate::Open {
            summary.circuit_open = true;
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(taken),
        }
    }

    /// Releases the claims on rows `worker` took but did not deliver (best effort: a claim
    /// that cannot be released expires).
    async fn release(&self, worker: &Worker, ids: &[i64]) {
        if let Err(error) = outbox::release(&self.store, &self.replica, ids).await {
            tracing::warn!(connector.id = %worker.id, rows = ids.len(), error = %error,
                "Could not release the claims on {} undelivered outbox rows of `{}`; they wait for the claims to expire", ids.len(), worker.id);
        }
        let mut claimed = worker.claimed();
        for id in ids {
            claimed.remove(id);
        }
    }

    /// Records the outcomes held from earlier rounds, if any.
    async fn flush(&self, worker: &Worker, summary: &mut ConnectorSummary) -> Result<(), RoundError> {
        let held = std::mem::take(&mut *worker.unrecorded());
        if held.is_empty() {
            return Ok(());
        }
        self.record(worker, held, summary).await
    }

    /// Writes one set of outcomes (one short store transaction) and counts them; when the
    /// store cannot write, holds them for the next round and reports the failure once per
    /// streak.
    async fn record(
        &self,
        worker: &Worker,
        outcomes: Vec<DeliveryOutcome>,
        summary: &mut ConnectorSummary,
    ) -> Result<(), RoundError> {
        match outbox::record_outcomes(&self.store, &self.replica, &outcomes, self.clock.now_ms()).await {
            Ok(applied) => {
                {
                    let mut claimed = worker.claimed();
                    for outcome in &outcomes {
                        claimed.remove(&outcome.row.id);
                    }
                }
                let failures = worker.record_failures.swap(0, Ordering::Relaxed);
                if failures > 0 {
                    tracing::info!(connector.id = %worker.id, failures,
                        "Recorded the held delivery results for `{}` after {failures} failed attempts; taking new rows again", worker.id);
                }
                for (outcome, applied) in outcomes.iter().zip(applied) {
                    let label = if applied { tally(summary, &outcome.verdict) } else { "superseded" };
                    if !applied {
                        summary.superseded += 1;
                    }
                    count(&worker.id, label);
                }
                Ok(())
            }
            Err(error) => {
                let failures = worker.record_failures.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::counter!("ghl_sync_delivery_record_failures_total", "connector" => worker.id.clone())
                    .increment(1);
                let mut held = worker.unrecorded();
                held.extend(outcomes);
                if failures == 1 {
                    tracing::warn!(connector.id = %worker.id, held = held.len(), error = %error,
                        "Could not record delivery results for `{}` in the store; holding them and backing off \
                         (no new rows are taken until they are written)", worker.id);
                }
                Err(RoundError::Record(error))
            }
        }
    }

    /// Delivers one batch and returns each row's outcome (nothing is written here). Rows that
    /// cannot even be read go straight to dead letters.
    async fn deliver_batch(
        &self,
        worker: &Worker,
        rows: Vec<Result<OutboxRow, UnreadableRow>>,
    ) -> Result<Vec<DeliveryOutcome>, StoreError> {
        let started = Instant::now();
        let mut deliverable = Vec::with_capacity(rows.len());
        let mut results = Vec::with_capacity(rows.len());
        for row in rows {
            let row = match row {
                Ok(row) => row,
                Err(unreadable) => {
                    results.push(dead_unreadable(worker, unreadable.version, &unreadable.reason));
                    continue;
                }
            };
            let contact = match (row.entity, &row.contact_id) {
                (
                    EntityKind::Task | EntityKind::Note | EntityKind::Appointment | EntityKind::Event,
                    Some(contact_id),
                ) => snapshot::contact_record(&self.store, &row.location_id, contact_id).await?,
                _ => None,
            };
            match to_delivery(&row, contact) {
                Ok(delivery) => deliverable.push((row, delivery)),
                Err(reason) => results.push(dead_unreadable(worker, row.version(), &reason)),
            }
        }
        let items: Vec<_> = deliverable.iter().map(|(_, d)| d.clone()).collect();
        let outcomes = if items.is_empty() {
            Vec::new()
        } else {
            match std::panic::AssertUnwindSafe(worker.connector.deliver(&items)).catch_unwind().await {
                Ok(outcomes) if outcomes.len() == items.len() => outcomes,
                Ok(outcomes) => {
                    tracing::error!(
                        connector.id = %worker.id,
                        expected = items.len(),
                        got = outcomes.len(),
                        "Connector `{}` returned the wrong number of outcomes; retrying the batch",
                        worker.id
                    );
                    vec![
                        Outcome::Retry(None, Some("the connector returned the wrong number of outcomes".into()));
                        items.len()
                    ]
                }
                Err(_) => {
                    tracing::error!(connector.id = %worker.id, "Connector `{}` panicked; retrying the batch", worker.id);
                    vec![Outcome::Retry(None, Some("the connector panicked".into())); items.len()]
                }
            }
        };

        let now = self.clock.now_ms();
        let mut answered = false;
        for ((row, _), outcome) in deliverable.iter().zip(outcomes) {
            answered |= !matches!(outcome, Outcome::Retry(..));
            let verdict = self.verdict(worker, row, outcome, now);
            results.push(DeliveryOutcome { row: row.version(), verdict });
        }
        if !deliverable.is_empty() {
            let opened = worker.breaker.lock().unwrap_or_else(|e| e.into_inner()).record(answered, Instant::now());
            if opened {
                tracing::warn!(connector.id = %worker.id, cooldown_ms = self.settings.breaker_cooldown.get().as_millis() as u64,
                    "Circuit for `{}` opened after repeated failures", worker.id);
            }
        }
        tracing::debug!(
            connector.id = %worker.id,
            items = results.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            "Delivered a batch to `{}`", worker.id
        );
        Ok(results)
    }

    /// What the store should record for one row, given the connector's outcome.
    fn verdict(&self, worker: &Worker, row: &OutboxRow, outcome: Outcome, now: i64) -> Verdict {
        let attempts = u32::try_from(row.attempts + 1).unwrap_or(u32::MAX);
        let after = |wait: Duration| now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX).max(1));
        match outcome {
            Outcome::Done => Verdict::Delivered,
            Outcome::Skip(reason) => Verdict::Skipped(reason),
            Outcome::Permanent(reason) => {
                tracing::warn!(connector.id = %worker.id, outbox.id = row.id, entity = %row.entity, reason = %reason,
                    "Delivery {} to `{}` was refused; moving it to dead letters", row.id, worker.id);
                Verdict::Dead(reason)
            }
            // Not started because the daemon is stopping: due again on the next start.
            Outcome::Park(wait) if wait.is_zero() => {
                Verdict::Parked { at: now, since: now, reason: "not started: the daemon was stopping".to_owned() }
            }
            // The connector is healthy and chose to wait: no attempt, no breaker.
            Outcome::Park(wait) => Verdict::Parked {
                at: after(wait),
                since: now,
                reason: format!("parked by the connector for {} s", wait.as_secs()),
            },
            Outcome::Retry(_, reason) if attempts >= worker.settings.max_attempts => {
                let reason = reason.unwrap_or_else(|| "target unavailable".to_owned());
                tracing::warn!(connector.id = %worker.id, outbox.id = row.id, attempts, reason = %reason,
                    "Delivery {} to `{}` failed {attempts} times ({reason}); moving it to dead letters", row.id, worker.id);
                Verdict::Dead(format!("gave up after {attempts} attempts; last: {reason}"))
            }
            Outcome::Retry(retry_after, reason) => {
                let wait = retry_delay(&self.settings, attempts, retry_after);
                let retry_in_ms = wait.as_millis() as u64;
                let reason = reason.unwrap_or_else(|| "retryable failure".to_owned());
                tracing::warn!(connector.id = %worker.id, outbox.id = row.id, attempts, retry_in_ms, reason = %reason,
                    "Delivery {} to `{}` failed ({reason}); retrying in {retry_in_ms} ms", row.id, worker.id);
                Verdict::Retry { at: after(wait), since: now, error: format!("attempt {attempts}: {reason}") }
            }
        }
    }
}

/// The outbox id of a claimed row, readable or not.
fn row_id(row: &Result<OutboxRow, UnreadableRow>) -> i64 {
    match row {
        Ok(row) => row.id,
        Err(unreadable) => unreadable.version.id,
    }
}

/// A row that cannot be handed to a connector goes to dead letters with the reason.
fn dead_unreadable(worker: &Worker, row: outbox::RowVersion, reason: &str) -> DeliveryOutcome {
    tracing::warn!(connector.id = %worker.id, outbox.id = row.id, "Outbox row {} is unreadable; moving it to dead letters", row.id);
    DeliveryOutcome { row, verdict: Verdict::Dead(format!("unreadable outbox row: {reason}")) }
}

/// Counts one recorded outcome in `summary`; returns its metric label.
fn tally(summary: &mut ConnectorSummary, verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Delivered => {
            summary.delivered += 1;
            "done"
        }
        Verdict::Skipped(_) => {
            summary.skipped += 1;
            "skip"
        }
        Verdict::Retry { .. } => {
            summary.retried += 1;
            "retry"
        }
        Verdict::Parked { .. } => {
            summary.parked += 1;
            "park"
        }
        Verdict::Dead(_) => {
            summary.dead += 1;
            "dead"
        }
    }
}

/// A pending row as the connector sees it (pure; `Err` says why it cannot be read).
fn to_delivery(row: &OutboxRow, contact: Option<Value>) -> Result<Delivery, String> {
    let record = match &row.record {
        Some(bytes) => codec::unpack(bytes).map_err(|e| e.to_string())?,
        None => Value::Null,
    };
    Ok(Delivery {
        id: row.id,
        location_id: row.location_id.clone(),
        entity: row.entity,
        entity_id: row.entity_id.clone(),
        contact_id: row.contact_id.clone(),
        operation: row.operation,
        changed_at_ms: row.changed_at,
        idempotency_key: row.idempotency_key.clone(),
        record,
        contact,
        attempt: u32::try_from(row.attempts + 1).unwrap_or(u32::MAX),
    })
}

/// `max(Retry-After, backoff(attempts))`, both capped at `backoff_max`.
pub fn retry_delay(settings: &DispatchSettings, attempts: u32, retry_after: Option<Duration>) -> Duration {
    let policy = RetryPolicy {
        max_retries: 0,
        base_backoff: settings.backoff_base.get(),
        max_backoff: settings.backoff_max.get(),
    };
    let backoff = policy.backoff(attempts.saturating_sub(1));
    retry_after.unwrap_or_default().max(backoff).min(settings.backoff_max.get())
}

fn count(connector: &str, outcome: &'static str) {
    metrics::counter!("ghl_sync_deliveries_total", "connector" => connector.to_owned(), "outcome" => outcome)
        .increment(1);
    if outcome == "dead" {
        metrics::counter!("ghl_sync_dead_letters_total", "connector" => connector.to_owned()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    #[test]
    fn retry_delays_honour_retry_after_grow_and_are_capped() {
        let settings =
            DispatchSettings { backoff_base: Dur::secs(1), backoff_max: Dur::secs(60), ..DispatchSettings::default() };
        for _ in 0..50 {
            let first = retry_delay(&settings, 1, None);
            assert!(first >= Duration::from_millis(100) && first <= Duration::from_secs(1), "{first:?}");
            let later = retry_delay(&settings, 5, None);
            assert!(later >= Duration::from_millis(1600) && later <= Duration::from_secs(16), "{later:?}");
            assert!(retry_delay(&settings, 30, None) <= Duration::from_secs(60));
            assert!(retry_delay(&settings, 1, Some(Duration::from_secs(20))) >= Duration::from_secs(20));
            assert_eq!(retry_delay(&settings, 1, Some(Duration::from_secs(3600))), Duration::from_secs(60));
        }
    }
}
