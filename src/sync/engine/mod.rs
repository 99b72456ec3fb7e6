//! `Engine`: one location's sync work. The scheduler, `sync --once` and the tests call it.
//!
//! A full pass ([`Engine::run_once`]): webhook hints (each named contact re-read by `GET`) →
//! the contacts stream (search by `dateUpdated` ascending from the watermark minus an overlap,
//! one commit per page) → tasks, notes (and appointments, when read) of every contact marked due (changed contacts, moved
//! `dateUpdated`, hints) → the budgeted sweep. A hint-only pass ([`Engine::run_hints`]) costs
//! the reads of the named contacts and their children, nothing else. Deletes come from
//! confirmed hints, from child reads that answer "contact not found" (confirmed by a read), and
//! from [`Engine::reconcile`].
//!
//! Bulk work (the children backlog of a first sync, the sweep) yields: the scheduler's runs
//! ([`Engine::run_sliced`], [`Engine::run_bulk`]) pass a [`YieldCheck`] asked between small
//! chunks, and stop as soon as a webhook hint or a poll tick is waiting, so a change made in
//! GHL during a three-hour backfill is read in seconds, not after it. The backlog's position is
//! the store itself (`children_synced_at IS NULL`), so a restart resumes it; the newest
//! contacts' children are read first.
//!
//! The engine reads GHL and hands what it read to the store (`store::snapshot`), which commits
//! snapshot, outbox and cursor together; the engine never holds a transaction, so no GHL call
//! can ever run inside one. One record that cannot be read is set aside in dead letters and
//! never fails a pass.

mod children;
mod contacts;
mod hints;
mod reconcile;
mod tasks;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::ghl::{GhlClient, GhlError};
use crate::http::{HttpError, LimitScope};
use crate::store::snapshot::{Commit, Committed};
use crate::store::{Store, StoreError, cursors, locations, runs};

pub use crate::domain::{Interest, Subscriber};
pub use children::sweep_quota;

/// Engine tuning, from `[sync]` and `[limits]`.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub page_size: u32,
    pub overlap: Duration,
    pub index_lag_margin: Duration,
    pub tasks: bool,
    pub notes: bool,
    /// Whether appointments are read with tasks and notes. `from_config` sets it only for
    /// `[sync] appointments = true`; for `"auto"` the composition root decides from the
    /// subscribers (`app.rs`).
    pub appointments: bool,
    pub contacts_interval: Duration,
    pub children_sweep_period: Duration,
    pub children_sweep_budget_share: f64,
    pub daily_budget: u64,
    pub dirty_debounce: Duration,
    /// Contacts whose children are fetched at the same time, per location.
    pub children_concurrency: usize,
    /// Custom field ids the daemon writes itself: not part of the contact's hash.
    pub ignored_custom_fields: Vec<String>,
    /// Read tasks for the children backlog and the sweep with the location-wide task search
    /// (`[sync] task_search`), falling back per location to per-contact reads when the token
    /// lacks its scope.
    pub task_search: bool,
    /// Tasks per page of the location-wide task search.
    pub task_search_page: u32,
    /// Staging the location's tasks pays from this many contacts to read (the backlog's due
    /// contacts a staging cannot serve; the location's contacts for the sweep).
    pub task_search_min_contacts: u64,
}

impl EngineSettings {
    /// Whether any child stream (tasks, notes, appointments) is read.
    pub fn reads_children(&self) -> bool {
        self.tasks || self.notes || self.appointments
    }

    /// GHL requests one contact's children cost.
    pub fn child_requests_per_contact(&self) -> u64 {
        u64::from(self.tasks) + u64::from(self.notes) + u64::from(self.appointments)
    }

    pub fn from_config(settings: &crate::config::Settings) -> Self {
        let sync = &settings.sync;
        Self {
            page_size: sync.page_size,
            overlap: sync.overlap.get(),
            index_lag_margin: sync.index_lag_margin.get(),
            tasks: sync.tasks,
            notes: sync.notes,
            appointments: sync.appointments == crate::config::AppointmentReads::On,
            contacts_interval: sync.contacts_interval.get(),
            children_sweep_period: sync.children_sweep_period.get(),
            children_sweep_budget_share: sync.children_sweep_budget_share,
            daily_budget: settings.limits.ghl_daily_budget,
            dirty_debounce: sync.dirty_debounce.get(),
            children_concurrency: 8,
            ignored_custom_fields: Vec::new(),
            task_search: sync.task_search,
            task_search_page: TASK_SEARCH_PAGE,
            task_search_min_contacts: TASK_SEARCH_MIN_CONTACTS,
        }
    }
}

/// Tasks per page of the location-wide task search (GHL's default is 25; no cap is
/// documented, reference/ghl.md §6.4).
pub const TASK_SEARCH_PAGE: u32 = 100;

/// Contacts to read from which staging the location's tasks pays (a staging costs one request
/// per [`TASK_SEARCH_PAGE`] tasks of the whole location).
pub const TASK_SEARCH_MIN_CONTACTS: u64 = 100;

/// Options of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Compute everything, write nothing (every transaction is rolled back).
    pub dry_run: bool,
    /// Skip the budgeted sweep (tests, `sync --once` of one location).
    pub skip_sweep: bool,
}

/// Asked between chunks of bulk work: `true` when incremental work (a webhook hint, a due poll)
/// is waiting and the bulk work should stop where it is, to be resumed by a later run.
pub type YieldCheck<'a> = &'a (dyn Fn() -> bool + Send + Sync);

/// Progress callbacks for a terminal progress bar.
pub trait Progress: Send + Sync {
    /// A page of `contacts` was committed; `total` is GHL's count for the query, if known.
    fn page(&self, location: &str, contacts: u64, total: Option<u64>);
    /// Children of `contacts` contacts were read.
    fn children(&self, location: &str, contacts: u64);
}

/// What a run did, for logs, `status` and the final summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub location: String,
    pub pages: u64,
    pub contacts_seen: u64,
    pub contacts_changed: u64,
    pub children_read_for: u64,
    pub requests: u64,
    pub dead_letters: u64,
    /// Outbox rows written (or that would be, in a dry run) per event type.
    pub events: BTreeMap<String, u64>,
    pub dry_run: bool,
    /// GHL 429 answers this run's requests received.
    pub rate_limited: u64,
    /// Bulk work (children backlog, sweep) was left for a later run because incremental work
    /// was waiting ([`Engine::run_sliced`], [`Engine::run_bulk`]).
    pub bulk_remaining: bool,
    /// Dry run only: the rule trigger events the changes would raise.
    pub trigger_events: Vec<crate::rules::RuleEvent>,
    /// The run's row, for progress while it runs (none in a dry run).
    run: Option<RunTrack>,
}

/// What a running pass needs to record its progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunTrack {
    id: i64,
    /// The location's 429 count when the run started.
    rate_limited_base: u64,
    /// When progress was last recorded: at most every [`PROGRESS_EVERY`], so a quiet re-poll
    /// of unchanged pages stays free of writes.
    recorded_at: std::time::Instant,
}

/// How often a running pass records its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

impl RunSummary {
    pub fn changes(&self) -> u64 {
        self.events.values().sum()
    }

    fn absorb(&mut self, committed: Committed) {
        for (event, n) in committed.events {
            *self.events.entry(event).or_default() += n;
        }
        self.dead_letters += committed.dead_letters;
        self.trigger_events.extend(committed.trigger_events);
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Ghl(#[from] GhlError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("location {0} needs re-authorisation; not synced")]
    NeedsReauth(String),
}

impl SyncError {
    /// Our own rate limiter refused the request for today (`[limits]`: the day's budget, or
    /// the bulk priorities' `bulk_daily_share` of it); GHL was not called.
    pub fn is_budget_spent(&self) -> bool {
        matches!(self, SyncError::Ghl(GhlError::Http(HttpError::BudgetExhausted { scope: LimitScope::Daily, .. })))
    }
}

/// The sync engine for every location.
/// Whether this process may poll a location ([`Engine::with_fence`]).
pub type Fence = Arc<dyn Fn(&str) -> bool + Send + Sync>;

pub struct Engine {
    store: Store,
    ghl: GhlClient,
    settings: EngineSettings,
    subscribers: Vec<Subscriber>,
    on_commit: Option<Arc<dyn Fn() + Send + Sync>>,
    progress: Option<Arc<dyn Progress>>,
    /// Whether this process may still poll a location (replicas: it holds the lease). The
    /// contacts stream stops between pages when it may not; `None`: always.
    fence: Option<Fence>,
    /// Locations whose token may not use the location-wide task search (missing scope).
    task_search_refused: std::sync::Mutex<HashSet<String>>,
    /// Per location, the contacts a yielded children backlog read that stayed due: a resumed
    /// bulk run skips them (each is read once per pass, not once per slice).
    backlog_seen: std::sync::Mutex<HashMap<String, HashSet<String>>>,
}

/// Bulk work refused by the day's budget (the bulk share of it, usually) is not a failed pass:
/// what was read is committed, the rest waits for the next pass, and the incremental work of
/// this one counts as done. `Done` rather than `Left`, so the scheduler does not resume it at
/// once (it would be refused again); the next full pass tries again.
fn bulk_budget_spent(
    location: &str,
    outcome: Result<children::Backlog, SyncError>,
) -> Result<children::Backlog, SyncError> {
    match outcome {
        Err(error) if error.is_budget_spent() => {
            tracing::debug!("Bulk work for `{location}` waits for the next pass: today's budget for it is spent");
            Ok(children::Backlog::Done)
        }
        other => other,
    }
}

/// Whether a bulk run may sweep (full passes only: one sweep quota per pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sweep {
    Yes,
    No,
}

/// Which work a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Hints, contacts stream, due children, sweep.
    Full,
    /// Only the contacts webhooks named (and their children).
    Hints,
    /// The children backlog, then the sweep.
    Bulk,
}

impl Engine {
    pub fn new(store: Store, ghl: GhlClient, settings: EngineSettings, subscribers: Vec<Subscriber>) -> Self {
        Self {
            store,
            ghl,
            settings,
            subscribers,
            on_commit: None,
            progress: None,
            fence: None,
            task_search_refused: std::sync::Mutex::default(),
            backlog_seen: std::sync::Mutex::default(),
        }
    }

    /// Called after every commit that wrote outbox rows (wakes the dispatcher).
    pub fn on_commit(mut self, callback: Arc<dyn Fn() + Send + Sync>) -> Self {
        self.on_commit = Some(callback);
        self
    }

    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Polls a location only while `fence(location)` (replicas: while this process holds its
    /// lease): a contacts stream that loses it stops before its next page, the pages read so
    /// far committed, and the new holder resumes from the stored cursor.
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    /// The fence set with [`Engine::with_fence`].
    pub fn fence(&self) -> Option<Fence> {
        self.fence.clone()
    }

    /// Whether this process may go on polling `location`.
    pub(super) fn may_poll(&self, location: &str) -> bool {
        self.fence.as_ref().is_none_or(|fence| fence(location))
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub fn subscribers(&self) -> &[Subscriber] {
        &self.subscribers
    }

    /// Carries today's GHL requests of `location` (stored with the runs that made them, by
    /// this process before a restart or by the replica that held the location before) into the
    /// limiter, so the daily budget is spent once across processes. Returns the count.
    pub async fn resume_daily_budget(&self, location: &str) -> Result<u64, SyncError> {
        let day = crate::store::daily::utc_day(crate::store::now_ms());
        let used = u64::try_from(crate::store::daily::read(&self.store, location, &day).await?.requests).unwrap_or(0);
        if let Some(limits) = self.ghl.api().limits() {
            limits.seed_used_today(location, used);
        }
        Ok(used)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// One full run for `location`: hints, contacts stream, due children, sweep.
    /// Every contact's children are read before it returns (`sync --once`, tests).
    pub async fn run_once(&self, location: &str, options: RunOptions) -> Result<RunSummary, SyncError> {
        self.run(location, options, Pass::Full, None).await
    }

    /// A full run whose bulk part (children backlog, sweep) stops when `should_yield` says
    /// incremental work is waiting; `bulk_remaining` in the summary says whether it did.
    pub async fn run_sliced(&self, location: &str, should_yield: YieldCheck<'_>) -> Result<RunSummary, SyncError> {
        self.run(location, RunOptions::default(), Pass::Full, Some(should_yield)).await
    }

    /// Resumes the bulk work a sliced run left: the children backlog (newest contacts first),
    /// then the sweep, until done or `should_yield`.
    pub async fn run_bulk(&self, location: &str, should_yield: YieldCheck<'_>) -> Result<RunSummary, SyncError> {
        self.run(location, RunOptions::default(), Pass::Bulk, Some(should_yield)).await
    }

    /// A run for the contacts webhooks named in `location`: a `GET` per named contact (a 404
    /// is a delete) and the children of those contacts; no search, no sweep.
    pub async fn run_hints(&self, location: &str, options: RunOptions) -> Result<RunSummary, SyncError> {
        self.run(location, options, Pass::Hints, None).await
    }

    async fn run(
        &self,
        location: &str,
        options: RunOptions,
        pass: Pass,
        should_yield: Option<YieldCheck<'_>>,
    ) -> Result<RunSummary, SyncError> {
        let status = locations::status_of(&self.store, location).await?;
        if matches!(status.as_deref(), Some("needs_reauth" | "uninstalled" | "disabled")) {
            return Err(SyncError::NeedsReauth(location.to_owned()));
        }
        let kind = match pass {
            Pass::Full => "contacts",
            Pass::Hints => "dirty",
            Pass::Bulk => "children",
        };
        let mut summary = self.start_run(location, kind, options).await?;
        let result = match pass {
            Pass::Full => self.full_pass(location, options, &mut summary, should_yield).await,
            Pass::Hints => self.process_hints(location, options, &mut summary).await,
            Pass::Bulk => self.bulk_pass(location, options, &mut summary, should_yield, Sweep::No).await,
        };
        self.finish_run(&mut summary, result.as_ref().err()).await?;
        if let Err(error) = &result
            && matches!(error, SyncError::Ghl(e) if e.needs_reauth())
        {
            locations::mark_needs_reauth(&self.store, location, &error.to_string()).await?;
            tracing::error!(
                location.id = %location,
                "Location `{location}` needs re-authorisation and is paused; run `ghl-sync auth install` (OAuth) or fix its private integration token, then restart"
            );
        }
        result.map(|()| summary)
    }

    /// Opens the run's row (not in a dry run) and its summary.
    async fn start_run(&self, location: &str, kind: &str, options: RunOptions) -> Result<RunSummary, SyncError> {
        let run = if options.dry_run {
            None
        } else {
            let id = runs::start(&self.store, location, kind).await?;
            let rate_limited_base = self.ghl.rate_limited_total(location);
            Some(RunTrack { id, rate_limited_base, recorded_at: std::time::Instant::now() })
        };
        Ok(RunSummary { location: location.to_owned(), dry_run: options.dry_run, run, ..Default::default() })
    }

    fn progress(&self, summary: &mut RunSummary) -> Option<(i64, runs::RunProgress)> {
        let run = summary.run?;
        summary.rate_limited = self.ghl.rate_limited_total(&summary.location).saturating_sub(run.rate_limited_base);
        let progress = runs::RunProgress {
            pages: summary.pages,
            records_seen: summary.contacts_seen,
            changes: summary.changes(),
            requests: summary.requests,
            rate_limited: summary.rate_limited,
        };
        Some((run.id, progress))
    }

    /// Records a running pass's totals so far (after a committed page or chunk), so status
    /// screens show a long first pass as it goes. A failure here is logged, not fatal.
    async fn record_progress(&self, summary: &mut RunSummary) {
        match summary.run.as_mut() {
            Some(run) if run.recorded_at.elapsed() >= PROGRESS_EVERY => run.recorded_at = std::time::Instant::now(),
            _ => return,
        }
        if let Some((id, progress)) = self.progress(summary)
            && let Err(error) = runs::record_progress(&self.store, id, &progress).await
        {
            tracing::warn!(error = %error, "Could not record the progress of a sync run");
        }
    }

    /// Closes the run's row with its totals and outcome.
    async fn finish_run(&self, summary: &mut RunSummary, error: Option<&SyncError>) -> Result<(), SyncError> {
        if let Some((id, progress)) = self.progress(summary) {
            let outcome = if error.is_some() { runs::RunOutcome::Failed } else { runs::RunOutcome::Ok };
            let error = error.map(ToString::to_string);
            runs::finish(&self.store, id, &progress, outcome, error.as_deref()).await?;
        }
        Ok(())
    }

    async fn full_pass(
        &self,
        location: &str,
        options: RunOptions,
        summary: &mut RunSummary,
        should_yield: Option<YieldCheck<'_>>,
    ) -> Result<(), SyncError> {
        self.process_hints(location, options, summary).await?;
        self.stream_contacts(location, options, summary).await?;
        if !self.may_poll(location) {
            // The lease went during the stream: the bulk work is the new holder's.
            return Ok(());
        }
        self.bulk_pass(location, options, summary, should_yield, Sweep::Yes).await
    }

    /// The children of every contact marked due, then (backlog done, full passes only) the
    /// budgeted sweep; with `should_yield`, both stop between chunks when incremental work is
    /// waiting. The sweep's quota is per full pass: a resumed bulk run never sweeps, so slices
    /// interrupted by hints cannot add up to more than the sweep's budget share (what was not
    /// swept stays the stalest, first in the next pass's sweep).
    async fn bulk_pass(
        &self,
        location: &str,
        options: RunOptions,
        summary: &mut RunSummary,
        should_yield: Option<YieldCheck<'_>>,
        sweep: Sweep,
    ) -> Result<(), SyncError> {
        // A full pass starts its backlog afresh; a resumed bulk run continues it.
        let resume = sweep == Sweep::No;
        let backlog = self.sync_due_children(location, options, summary, should_yield, resume).await;
        if bulk_budget_spent(location, backlog)? == children::Backlog::Left {
            summary.bulk_remaining = true;
            return Ok(());
        }
        if sweep == Sweep::Yes && !options.skip_sweep {
            let swept = self.sweep_children(location, options, summary, should_yield).await;
            if bulk_budget_spent(location, swept)? == children::Backlog::Left {
                // Reconciliation (bulk too) waits for the resumed run, after the waiting work.
                summary.bulk_remaining = true;
            }
        }
        Ok(())
    }

    /// Locations that have webhook hints waiting.
    pub async fn locations_with_hints(&self) -> Result<Vec<String>, SyncError> {
        Ok(crate::store::hints::locations_with_hints(&self.store).await?)
    }

    /// Whether webhook hints are waiting for `location` (the scheduler runs again at once).
    pub async fn has_hints(&self, location: &str) -> Result<bool, SyncError> {
        Ok(crate::store::hints::has_hints(&self.store, location).await?)
    }

    /// When reconciliation last completed for `location` (epoch ms).
    pub async fn last_reconcile(&self, location: &str) -> Result<Option<i64>, SyncError> {
        Ok(cursors::last_reconcile(&self.store, location).await?)
    }

    /// The commit context for `location`.
    fn commit<'a>(&'a self, location: &'a str, options: RunOptions) -> Commit<'a> {
        Commit { location, subscribers: &self.subscribers, dry_run: options.dry_run }
    }

    /// Books a commit into the summary and wakes the dispatcher when it wrote outbox rows.
    fn committed(&self, summary: &mut RunSummary, committed: Committed, options: RunOptions) {
        let wrote = committed.wrote_outbox;
        summary.absorb(committed);
        if wrote
            && !options.dry_run
            && let Some(callback) = &self.on_commit
        {
            callback();
        }
    }

    /// A confirmed delete of one contact.
    async fn delete_contact(
        &self,
        location: &str,
        contact_id: &str,
        options: RunOptions,
        summary: &mut RunSummary,
    ) -> Result<(), SyncError> {
        let committed =
            crate::store::snapshot::delete_contact(&self.store, &self.commit(location, options), contact_id).await?;
        self.committed(summary, committed, options);
        Ok(())
    }
}
