//! `Engine`: one location's sync run. The scheduler, `sync --once` and the tests call it.
//!
//! Order of a run: webhook hints (dirty contacts) → the contacts stream (search by
//! `dateUpdated` ascending from the watermark minus an overlap, one transaction per page) →
//! tasks and notes of every contact marked due (changed contacts, moved `dateUpdated`, hints)
//! → the budgeted sweep. Deletes come from confirmed hints and from [`Engine::reconcile`].
//! Callers run it inside a `location` span (`location.id`), so its events do not repeat the id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Map, Value};
use sqlx::{Row, SqliteConnection};

use crate::domain::diff::{ChildRecord, KnownChild, diff_children, is_completed};
use crate::domain::normalize::{
    Hash, contact_hash, format_timestamp_ms, normalize_contact, normalize_note, normalize_task, parse_timestamp_ms,
    value_hash,
};
use crate::domain::{EntityKind, Operation, event_type};
use crate::ghl::dto::SearchRequest;
use crate::ghl::{GhlClient, GhlError};
use crate::http::Priority;
use crate::store::outbox::{NewChange, dead_letter_record, enqueue};
use crate::store::{Store, StoreError, codec, now_ms};

/// Decides from `(event type, location)` whether a connector wants a change.
pub type Interest = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// A connector's interest in changes, decided by its config filters (event type, location).
#[derive(Clone)]
pub struct Subscriber {
    pub id: String,
    pub wants: Interest,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Subscriber {
    /// A subscriber that wants everything (tests, the demo).
    pub fn all(id: &str) -> Self {
        Self { id: id.to_owned(), wants: Arc::new(|_, _| true) }
    }
}

/// Engine tuning, from `[sync]` and `[limits]`.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub page_size: u32,
    pub overlap: Duration,
    pub index_lag_margin: Duration,
    pub tasks: bool,
    pub notes: bool,
    pub contacts_interval: Duration,
    pub children_sweep_period: Duration,
    pub children_sweep_budget_share: f64,
    pub daily_budget: u64,
    pub dirty_debounce: Duration,
    /// Contacts whose children are fetched at the same time, per location.
    pub children_concurrency: usize,
    /// Custom field ids the daemon writes itself: not part of the contact's hash.
    pub ignored_custom_fields: Vec<String>,
}

impl EngineSettings {
    pub fn from_config(settings: &crate::config::Settings) -> Self {
        let sync = &settings.sync;
        Self {
            page_size: sync.page_size,
            overlap: sync.overlap.get(),
            index_lag_margin: sync.index_lag_margin.get(),
            tasks: sync.tasks,
            notes: sync.notes,
            contacts_interval: sync.contacts_interval.get(),
            children_sweep_period: sync.children_sweep_period.get(),
            children_sweep_budget_share: sync.children_sweep_budget_share,
            daily_budget: settings.limits.ghl_daily_budget,
            dirty_debounce: sync.dirty_debounce.get(),
            children_concurrency: 8,
            ignored_custom_fields: Vec::new(),
        }
    }
}

/// Options of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Compute everything, write nothing (every transaction is rolled back).
    pub dry_run: bool,
    /// Skip the budgeted sweep (tests, `sync --once` of one location).
    pub skip_sweep: bool,
}

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
}

impl RunSummary {
    pub fn changes(&self) -> u64 {
        self.events.values().sum()
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

impl From<sqlx::Error> for SyncError {
    fn from(error: sqlx::Error) -> Self {
        SyncError::Store(StoreError::Query(error))
    }
}

/// The sync engine for every location.
pub struct Engine {
    store: Store,
    ghl: GhlClient,
    settings: EngineSettings,
    subscribers: Vec<Subscriber>,
    on_commit: Option<Arc<dyn Fn() + Send + Sync>>,
    progress: Option<Arc<dyn Progress>>,
}

const CONTACTS_STREAM: &str = "contacts";
const RECONCILE_STREAM: &str = "reconcile";

struct Counter {
    summary: RunSummary,
}

impl Counter {
    fn event(&mut self, entity: EntityKind, operation: Operation, subscribers: usize) {
        *self.summary.events.entry(event_type(entity, operation)).or_default() += subscribers as u64;
    }
}

impl Engine {
    pub fn new(store: Store, ghl: GhlClient, settings: EngineSettings, subscribers: Vec<Subscriber>) -> Self {
        Self { store, ghl, settings, subscribers, on_commit: None, progress: None }
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

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub fn subscribers(&self) -> &[Subscriber] {
        &self.subscribers
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// One full run for `location`: hints, contacts stream, due children, sweep.
    pub async fn run_once(&self, location: &str, options: RunOptions) -> Result<RunSummary, SyncError> {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM locations WHERE id = ?")
            .bind(location)
            .fetch_optional(self.store.pool())
            .await?;
        if matches!(status.as_deref(), Some("needs_reauth" | "uninstalled" | "disabled")) {
            return Err(SyncError::NeedsReauth(location.to_owned()));
        }
        let run_id = if options.dry_run { None } else { Some(self.start_run(location, "contacts").await?) };
        let mut counter = Counter {
            summary: RunSummary { location: location.to_owned(), dry_run: options.dry_run, ..Default::default() },
        };
        let result = self.run_phases(location, options, &mut counter).await;
        if let Some(run_id) = run_id {
            self.finish_run(run_id, &counter.summary, result.as_ref().err()).await?;
        }
        if let Err(error) = &result
            && matches!(error, SyncError::Ghl(e) if e.needs_reauth())
        {
            self.mark_needs_reauth(location, &error.to_string()).await?;
        }
        result.map(|()| counter.summary)
    }

    async fn run_phases(&self, location: &str, options: RunOptions, counter: &mut Counter) -> Result<(), SyncError> {
        self.process_hints(location, options, counter).await?;
        self.stream_contacts(location, options, counter).await?;
        self.sync_due_children(location, options, counter).await?;
        if !options.skip_sweep {
            self.sweep_children(location, options, counter).await?;
        }
        Ok(())
    }

    /// Locations that have webhook hints waiting.
    pub async fn locations_with_hints(&self) -> Result<Vec<String>, SyncError> {
        Ok(sqlx::query_scalar("SELECT DISTINCT location_id FROM dirty_contacts").fetch_all(self.store.pool()).await?)
    }

    /// Whether webhook hints are waiting for `location` (the scheduler runs again at once).
    pub async fn has_hints(&self, location: &str) -> Result<bool, SyncError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dirty_contacts WHERE location_id = ?")
            .bind(location)
            .fetch_one(self.store.pool())
            .await?;
        Ok(count > 0)
    }

    // ---- contacts stream -------------------------------------------------------------

    async fn stream_contacts(
        &self,
        location: &str,
        options: RunOptions,
        counter: &mut Counter,
    ) -> Result<(), SyncError> {
        let run_start = now_ms();
        let cap = run_start - self.settings.index_lag_margin.as_millis() as i64;
        let watermark: Option<i64> = sqlx::query_scalar(
            "SELECT watermark_ms FROM cursors WHERE location_id = ? AND stream = ? AND backfill_done = 1",
        )
        .bind(location)
        .bind(CONTACTS_STREAM)
        .fetch_optional(self.store.pool())
        .await?;
        let mut high = watermark.unwrap_or(0);
        let since = watermark.map(|w| format_timestamp_ms((w - self.settings.overlap.as_millis() as i64).max(0)));
        let mut request = SearchRequest::updated_since(location, self.settings.page_size, since.as_deref());
        loop {
            counter.summary.requests += 1;
            let page = self.ghl.search_contacts(&request, Priority::Poll).await?;
            let count = page.contacts.len();
            let last_cursor = page.contacts.last().and_then(search_after_of);
            let (records, bad) = parse_page(page.contacts);
            let page_high = records.iter().filter_map(|r| r.date_updated_ms).max().unwrap_or(high);
            // Never move the watermark closer to now than the index lag margin, nor backwards.
            high = high.max(page_high.min(cap));
            let last_page = count < self.settings.page_size as usize;
            self.commit_contacts_page(location, &records, &bad, Some((high, last_page)), options, counter).await?;
            counter.summary.pages += 1;
            counter.summary.contacts_seen += records.len() as u64;
            if let Some(progress) = &self.progress {
                progress.page(location, count as u64, page.total);
            }
            // Children of the contacts this page changed, before the next page: flat memory.
            self.sync_due_children(location, options, counter).await?;
            if last_page {
                break;
            }
            match last_cursor {
                Some(cursor) => request.search_after = Some(cursor),
                None => {
                    tracing::warn!("GHL search page without a searchAfter cursor; ending this scan");
                    break;
                }
            }
        }
        Ok(())
    }

    /// The contacts stream's work on one page of raw search items, without the request:
    /// normalise, hash, snapshot lookup and the page's transaction (snapshot, outbox, and the
    /// cursor row, upserted without moving it). `benches/sync.rs` times it on unchanged pages.
    pub async fn diff_page(&self, location: &str, items: Vec<Value>) -> Result<RunSummary, SyncError> {
        let mut counter =
            Counter { summary: RunSummary { location: location.to_owned(), pages: 1, ..Default::default() } };
        let (records, bad) = parse_page(items);
        counter.summary.contacts_seen = records.len() as u64;
        self.commit_contacts_page(location, &records, &bad, Some((0, false)), RunOptions::default(), &mut counter)
            .await?;
        Ok(counter.summary)
    }

    /// One transaction: snapshot upserts, outbox rows per subscriber, dead letters, cursor.
    async fn commit_contacts_page(
        &self,
        location: &str,
        records: &[ContactRecord],
        bad: &[(String, Vec<u8>)],
        cursor: Option<(i64, bool)>,
        options: RunOptions,
        counter: &mut Counter,
    ) -> Result<(), SyncError> {
        let known = self.known_contacts(location, records.iter().map(|r| r.id.as_str())).await?;
        let mut tx = self.store.begin_write().await?;
        let now = now_ms();
        let mut wrote_outbox = false;
        for record in records {
            let hash = contact_hash(&record.record, &self.settings.ignored_custom_fields);
            let (operation, moved) = match known.get(&record.id) {
                Some((old_hash, old_updated)) if *old_hash == hash => {
                    // Same content. A moved dateUpdated may mean a task or note changed
                    // (whether GHL bumps it is unknown): read the children, send nothing.
                    let moved = record.date_updated_ms.is_some() && record.date_updated_ms != *old_updated;
                    (None, moved)
                }
                Some(_) => (Some(Operation::Updated), true),
                None => (Some(Operation::Created), true),
            };
            if moved && operation.is_none() {
                sqlx::query(
                    "UPDATE contacts SET date_updated_ms = ?, children_synced_at = NULL WHERE location_id = ? AND contact_id = ?",
                )
                .bind(record.date_updated_ms)
                .bind(location)
                .bind(&record.id)
                .execute(&mut *tx)
                .await?;
            }
            let Some(operation) = operation else { continue };
            counter.summary.contacts_changed += 1;
            let packed = codec::pack(&Value::Object(record.record.clone()));
            upsert_contact(&mut tx, location, &record.id, &hash, &packed, record.date_updated_ms, now).await?;
            // Echo suppression (issue 8): an update whose content is exactly what our own
            // GHL write-back produced is kept in the snapshot but not sent to any connector.
            if operation == Operation::Updated
                && crate::writeback::is_own_write(&mut tx, location, &record.id, &hash).await?
            {
                continue;
            }
            wrote_outbox |= self
                .enqueue_all(
                    &mut tx,
                    location,
                    EntityKind::Contact,
                    &record.id,
                    Some(&record.id),
                    operation,
                    &packed,
                    &hash,
                    counter,
                )
                .await?;
        }
        for (reason, raw) in bad {
            dead_letter_record(&mut tx, location, EntityKind::Contact, reason, raw).await?;
            counter.summary.dead_letters += 1;
            tracing::warn!(reason = %reason, "A contact from GHL could not be read; set aside in dead letters");
        }
        // Only when the cursor moves: a page that changed nothing then writes nothing, and
        // its commit costs no fsync (a quiet re-poll, a re-read after a crash). `updated_at`
        // is when the cursor last moved (`status` prints "cursor moved … ago").
        if let Some((watermark, done)) = cursor {
            sqlx::query(
                "INSERT INTO cursors (location_id, stream, watermark_ms, backfill_done, updated_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (location_id, stream) DO UPDATE SET watermark_ms = MAX(watermark_ms, excluded.watermark_ms), \
                 backfill_done = MAX(backfill_done, excluded.backfill_done), updated_at = excluded.updated_at \
                 WHERE excluded.watermark_ms > cursors.watermark_ms OR excluded.backfill_done > cursors.backfill_done",
            )
            .bind(location)
            .bind(CONTACTS_STREAM)
            .bind(watermark)
            .bind(i64::from(done))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        self.finish_tx(tx, options, wrote_outbox).await
    }

    async fn finish_tx(
        &self,
        tx: sqlx::Transaction<'_, sqlx::Sqlite>,
        options: RunOptions,
        wrote_outbox: bool,
    ) -> Result<(), SyncError> {
        if options.dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
            if wrote_outbox && let Some(callback) = &self.on_commit {
                callback();
            }
        }
        Ok(())
    }

    async fn known_contacts<'a>(
        &self,
        location: &str,
        ids: impl Iterator<Item = &'a str>,
    ) -> Result<HashMap<String, (Hash, Option<i64>)>, SyncError> {
        let ids: Vec<&str> = ids.collect();
        let mut known = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            if chunk.is_empty() {
                continue;
            }
            let placeholders = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT contact_id, hash, date_updated_ms FROM contacts WHERE location_id = ? AND contact_id IN ({placeholders})"
            );
            let mut query = sqlx::query(&sql).bind(location);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(self.store.pool()).await? {
                let id: String = row.try_get(0)?;
                let hash: Vec<u8> = row.try_get(1)?;
                let updated: Option<i64> = row.try_get(2)?;
                if let Ok(hash) = <Hash>::try_from(hash.as_slice()) {
                    known.insert(id, (hash, updated));
                }
            }
        }
        Ok(known)
    }

    #[allow(clippy::too_many_arguments)]
    async fn enqueue_all(
        &self,
        conn: &mut SqliteConnection,
        location: &str,
        entity: EntityKind,
        entity_id: &str,
        contact_id: Option<&str>,
        operation: Operation,
        packed: &[u8],
        hash: &Hash,
        counter: &mut Counter,
    ) -> Result<bool, SyncError> {
        let event = event_type(entity, operation);
        let mut wrote = 0;
        for subscriber in &self.subscribers {
            if !(subscriber.wants)(&event, location) {
                continue;
            }
            enqueue(
                conn,
                NewChange {
                    connector: &subscriber.id,
                    location_id: location,
                    entity,
                    entity_id,
                    contact_id,
                    operation,
                    record: packed,
                    content_hash: hash,
                    changed_at: now_ms(),
                },
            )
            .await?;
            wrote += 1;
        }
        counter.event(entity, operation, wrote);
        Ok(wrote > 0)
    }

    // ---- webhook hints ---------------------------------------------------------------

    /// Re-reads every contact a webhook named (debounced), confirming deletes with a 404.
    async fn process_hints(&self, location: &str, options: RunOptions, counter: &mut Counter) -> Result<(), SyncError> {
        let ready_before = now_ms() - self.settings.dirty_debounce.as_millis() as i64;
        let hints: Vec<(String, i64)> = sqlx::query_as(
            "SELECT contact_id, created_at FROM dirty_contacts WHERE location_id = ? AND created_at <= ? ORDER BY created_at LIMIT 1000",
        )
        .bind(location)
        .bind(ready_before)
        .fetch_all(self.store.pool())
        .await?;
        for (contact_id, created_at) in hints {
            if contact_id.is_empty() {
                // A TaskCreate without contactId (reference/ghl.md §8.1): the sweep finds it.
                self.drop_hint(location, &contact_id, created_at, options).await?;
                continue;
            }
            counter.summary.requests += 1;
            let fetched = self.ghl.get_contact(location, &contact_id, Priority::Webhook).await?;
            match fetched {
                Some(contact) => {
                    let value = serde_json::to_value(contact).unwrap_or(Value::Null);
                    match parse_contact(value) {
                        Ok(record) => {
                            self.commit_contacts_page(
                                location,
                                std::slice::from_ref(&record),
                                &[],
                                None,
                                options,
                                counter,
                            )
                            .await?;
                            // A hint may be about a task or note: read the children either way.
                            self.mark_children_due(location, &contact_id, options).await?;
                        }
                        Err((reason, raw)) => {
                            self.commit_contacts_page(location, &[], &[(reason, raw)], None, options, counter).await?;
                        }
                    }
                }
                None => self.delete_contact(location, &contact_id, options, counter).await?,
            }
            self.drop_hint(location, &contact_id, created_at, options).await?;
        }
        Ok(())
    }

    async fn drop_hint(
        &self,
        location: &str,
        contact_id: &str,
        created_at: i64,
        options: RunOptions,
    ) -> Result<(), SyncError> {
        if options.dry_run {
            return Ok(());
        }
        // Only the hint we handled: a newer one for the same contact stays.
        sqlx::query("DELETE FROM dirty_contacts WHERE location_id = ? AND contact_id = ? AND created_at <= ?")
            .bind(location)
            .bind(contact_id)
            .bind(created_at)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    async fn mark_children_due(&self, location: &str, contact_id: &str, options: RunOptions) -> Result<(), SyncError> {
        if options.dry_run {
            return Ok(());
        }
        sqlx::query("UPDATE contacts SET children_synced_at = NULL WHERE location_id = ? AND contact_id = ?")
            .bind(location)
            .bind(contact_id)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// A confirmed delete: the contact and its children leave the snapshot and a
    /// `contact.deleted` carrying the last known record goes to the outbox.
    async fn delete_contact(
        &self,
        location: &str,
        contact_id: &str,
        options: RunOptions,
        counter: &mut Counter,
    ) -> Result<(), SyncError> {
        let mut tx = self.store.begin_write().await?;
        let last: Option<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT hash, record FROM contacts WHERE location_id = ? AND contact_id = ?")
                .bind(location)
                .bind(contact_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((hash, record)) = last else {
            tx.rollback().await?;
            return Ok(());
        };
        sqlx::query("DELETE FROM contacts WHERE location_id = ? AND contact_id = ?")
            .bind(location)
            .bind(contact_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM children WHERE location_id = ? AND contact_id = ?")
            .bind(location)
            .bind(contact_id)
            .execute(&mut *tx)
            .await?;
        let hash: Hash = hash.as_slice().try_into().unwrap_or([0; 32]);
        let wrote = self
            .enqueue_all(
                &mut tx,
                location,
                EntityKind::Contact,
                contact_id,
                Some(contact_id),
                Operation::Deleted,
                &record,
                &hash,
                counter,
            )
            .await?;
        self.finish_tx(tx, options, wrote).await
    }

    // ---- tasks and notes -------------------------------------------------------------

    /// Reads the children of every contact marked due (`children_synced_at IS NULL`).
    async fn sync_due_children(
        &self,
        location: &str,
        options: RunOptions,
        counter: &mut Counter,
    ) -> Result<(), SyncError> {
        if !self.settings.tasks && !self.settings.notes {
            return Ok(());
        }
        let mut skip: HashSet<String> = HashSet::new();
        loop {
            let due: Vec<String> = sqlx::query_scalar(
                "SELECT contact_id FROM contacts WHERE location_id = ? AND children_synced_at IS NULL ORDER BY contact_id LIMIT 200",
            )
            .bind(location)
            .fetch_all(self.store.pool())
            .await?;
            // In a dry run nothing is marked synced: stop once every due contact was seen.
            let due: Vec<String> = due.into_iter().filter(|id| !skip.contains(id)).collect();
            if due.is_empty() {
                return Ok(());
            }
            if options.dry_run {
                skip.extend(due.iter().cloned());
            }
            self.sync_children_of(location, &due, options, counter).await?;
            if options.dry_run && due.len() < 200 {
                return Ok(());
            }
        }
    }

    /// The budgeted sweep: re-reads the children of the contacts read longest ago, enough per
    /// run to cover every contact within `children_sweep_period`, within the budget share.
    async fn sweep_children(
        &self,
        location: &str,
        options: RunOptions,
        counter: &mut Counter,
    ) -> Result<(), SyncError> {
        if !self.settings.tasks && !self.settings.notes {
            return Ok(());
        }
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE location_id = ?")
            .bind(location)
            .fetch_one(self.store.pool())
            .await?;
        let quota = sweep_quota(&self.settings, total.max(0) as u64);
        if quota == 0 {
            return Ok(());
        }
        let stale_before = now_ms() - self.settings.contacts_interval.as_millis() as i64;
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT contact_id FROM contacts WHERE location_id = ? AND children_synced_at < ? ORDER BY children_synced_at LIMIT ?",
        )
        .bind(location)
        .bind(stale_before)
        .bind(quota as i64)
        .fetch_all(self.store.pool())
        .await?;
        for chunk in due.chunks(200) {
            self.sync_children_of(location, chunk, options, counter).await?;
        }
        Ok(())
    }

    async fn sync_children_of(
        &self,
        location: &str,
        contacts: &[String],
        options: RunOptions,
        counter: &mut Counter,
    ) -> Result<(), SyncError> {
        let fetched: Vec<(String, Result<FetchedChildren, GhlError>)> =
            futures_util::stream::iter(contacts.iter().cloned())
                .map(|contact_id| async move {
                    let result = self.fetch_children(location, &contact_id).await;
                    (contact_id, result)
                })
                .buffer_unordered(self.settings.children_concurrency.max(1))
                .collect()
                .await;
        // One transaction for the whole chunk: a commit (and its fsync) per contact would cap
        // the backfill at the disk's sync rate. A crash loses at most this chunk's reads.
        let mut first_error = None;
        let mut tx = self.store.begin_write().await?;
        let mut wrote = false;
        for (contact_id, result) in fetched {
            match result {
                Ok(children) => {
                    counter.summary.requests += children.requests;
                    wrote |= self.commit_children(&mut tx, location, &contact_id, children, counter).await?;
                    counter.summary.children_read_for += 1;
                }
                Err(error) if first_error.is_none() => first_error = Some(error),
                Err(_) => {}
            }
        }
        self.finish_tx(tx, options, wrote).await?;
        if let Some(progress) = &self.progress {
            progress.children(location, contacts.len() as u64);
        }
        match first_error {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    async fn fetch_children(&self, location: &str, contact_id: &str) -> Result<FetchedChildren, GhlError> {
        let mut fetched = FetchedChildren::default();
        if self.settings.tasks {
            fetched.tasks = Some(self.ghl.list_tasks(location, contact_id, Priority::Sweep).await?);
            fetched.requests += 1;
        }
        if self.settings.notes {
            fetched.notes = Some(self.ghl.list_notes(location, contact_id, Priority::Sweep).await?);
            fetched.requests += 1;
        }
        Ok(fetched)
    }

    /// One transaction per contact: child upserts/deletes, their outbox rows, and the mark.
    async fn commit_children(
        &self,
        tx: &mut SqliteConnection,
        location: &str,
        contact_id: &str,
        fetched: FetchedChildren,
        counter: &mut Counter,
    ) -> Result<bool, SyncError> {
        let mut wrote = false;
        for (kind, items) in [(EntityKind::Task, fetched.tasks), (EntityKind::Note, fetched.notes)] {
            let Some(items) = items else { continue };
            let mut current = Vec::with_capacity(items.len());
            for item in items {
                match parse_child(kind, item) {
                    Ok(child) => current.push(child),
                    Err((reason, raw)) => {
                        dead_letter_record(&mut *tx, location, kind, &reason, &raw).await?;
                        counter.summary.dead_letters += 1;
                    }
                }
            }
            let known = known_children(&mut *tx, location, contact_id, kind).await?;
            let known_states: HashMap<String, KnownChild> =
                known.iter().map(|(id, (state, _))| (id.clone(), state.clone())).collect();
            let now = now_ms();
            for change in diff_children(&known_states, current) {
                let (hash, packed) = match &change.record {
                    Some(child) => {
                        let packed = codec::pack(&Value::Object(child.record.clone()));
                        sqlx::query(
                            "INSERT INTO children (location_id, contact_id, kind, child_id, hash, record, updated_at) \
                             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (location_id, kind, child_id) DO UPDATE SET \
                             contact_id = excluded.contact_id, hash = excluded.hash, record = excluded.record, \
                             updated_at = excluded.updated_at",
                        )
                        .bind(location)
                        .bind(contact_id)
                        .bind(kind.as_str())
                        .bind(&change.id)
                        .bind(&child.hash[..])
                        .bind(&packed)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        (child.hash, packed)
                    }
                    None => {
                        sqlx::query("DELETE FROM children WHERE location_id = ? AND kind = ? AND child_id = ?")
                            .bind(location)
                            .bind(kind.as_str())
                            .bind(&change.id)
                            .execute(&mut *tx)
                            .await?;
                        let (state, packed) = known.get(&change.id).cloned().unwrap_or_default();
                        (state.hash, packed)
                    }
                };
                // Echo suppression: a note or task our own write-back created (a Lusha note, a
                // lead's task) is kept in the snapshot but not announced as a user's change.
                if let (Operation::Created, Some(child)) = (change.operation, &change.record)
                    && crate::writeback::is_own_child(
                        &mut *tx,
                        location,
                        contact_id,
                        kind.as_str(),
                        &change.id,
                        &child.record,
                    )
                    .await?
                {
                    continue;
                }
                wrote |= self
                    .enqueue_all(
                        &mut *tx,
                        location,
                        kind,
                        &change.id,
                        Some(contact_id),
                        change.operation,
                        &packed,
                        &hash,
                        counter,
                    )
                    .await?;
            }
        }
        sqlx::query("UPDATE contacts SET children_synced_at = ? WHERE location_id = ? AND contact_id = ?")
            .bind(now_ms())
            .bind(location)
            .bind(contact_id)
            .execute(&mut *tx)
            .await?;
        Ok(wrote)
    }

    // ---- reconciliation --------------------------------------------------------------

    /// Lists every contact id and turns snapshot ids GHL no longer has into deletes, each
    /// confirmed by a `GET` that answers 404. A listing that fails or ends early deletes
    /// nothing.
    pub async fn reconcile(&self, location: &str, options: RunOptions) -> Result<RunSummary, SyncError> {
        let run_id = if options.dry_run { None } else { Some(self.start_run(location, "reconcile").await?) };
        let mut counter = Counter {
            summary: RunSummary { location: location.to_owned(), dry_run: options.dry_run, ..Default::default() },
        };
        let result = self.reconcile_inner(location, options, &mut counter).await;
        if let Some(run_id) = run_id {
            self.finish_run(run_id, &counter.summary, result.as_ref().err()).await?;
        }
        result.map(|()| counter.summary)
    }

    async fn reconcile_inner(
        &self,
        location: &str,
        options: RunOptions,
        counter: &mut Counter,
    ) -> Result<(), SyncError> {
        let started = now_ms();
        // A temporary table on one held connection keeps memory flat for any size of location.
        let mut conn = self.store.pool().acquire().await?;
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS reconcile_seen (id TEXT PRIMARY KEY) WITHOUT ROWID")
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM temp.reconcile_seen").execute(&mut *conn).await?;
        let mut request = SearchRequest::all_by_date_added(location, 500);
        let mut listed: u64 = 0;
        let mut reported_total = None;
        loop {
            counter.summary.requests += 1;
            let page = self.ghl.search_contacts(&request, Priority::Reconcile).await?;
            reported_total = page.total.or(reported_total);
            let count = page.contacts.len();
            let cursor = page.contacts.last().and_then(search_after_of);
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            for item in &page.contacts {
                if let Some(id) = item.get("id").and_then(Value::as_str) {
                    sqlx::query("INSERT OR IGNORE INTO temp.reconcile_seen (id) VALUES (?)")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            listed += count as u64;
            counter.summary.pages += 1;
            if count < 500 {
                break;
            }
            let Some(cursor) = cursor else {
                tracing::warn!("Reconciliation listing lost its cursor; no deletes this time");
                return Ok(());
            };
            request.search_after = Some(cursor);
        }
        counter.summary.contacts_seen = listed;
        if let Some(total) = reported_total
            && listed < total
        {
            tracing::warn!(listed, total, "Reconciliation listing ended before GHL's total; no deletes this time");
            return Ok(());
        }
        let candidates: Vec<String> = sqlx::query_scalar(
            "SELECT contact_id FROM contacts WHERE location_id = ? AND first_seen_at < ? \
             AND contact_id NOT IN (SELECT id FROM temp.reconcile_seen)",
        )
        .bind(location)
        .bind(started)
        .fetch_all(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM temp.reconcile_seen").execute(&mut *conn).await?;
        drop(conn);
        for contact_id in candidates {
            counter.summary.requests += 1;
            // Confirm each one: the search index lags, and a listing is not proof of absence.
            if self.ghl.get_contact(location, &contact_id, Priority::Reconcile).await?.is_none() {
                self.delete_contact(location, &contact_id, options, counter).await?;
            }
        }
        if !options.dry_run {
            sqlx::query(
                "INSERT INTO cursors (location_id, stream, watermark_ms, backfill_done, updated_at) VALUES (?, ?, ?, 1, ?) \
                 ON CONFLICT (location_id, stream) DO UPDATE SET watermark_ms = excluded.watermark_ms, updated_at = excluded.updated_at",
            )
            .bind(location)
            .bind(RECONCILE_STREAM)
            .bind(started)
            .bind(now_ms())
            .execute(self.store.pool())
            .await?;
        }
        Ok(())
    }

    /// When reconciliation last completed for `location` (epoch ms).
    pub async fn last_reconcile(&self, location: &str) -> Result<Option<i64>, SyncError> {
        Ok(sqlx::query_scalar("SELECT watermark_ms FROM cursors WHERE location_id = ? AND stream = ?")
            .bind(location)
            .bind(RECONCILE_STREAM)
            .fetch_optional(self.store.pool())
            .await?)
    }

    // ---- run records -----------------------------------------------------------------

    async fn start_run(&self, location: &str, kind: &str) -> Result<i64, SyncError> {
        let id: i64 =
            sqlx::query_scalar("INSERT INTO runs (location_id, kind, started_at) VALUES (?, ?, ?) RETURNING id")
                .bind(location)
                .bind(kind)
                .bind(now_ms())
                .fetch_one(self.store.pool())
                .await?;
        Ok(id)
    }

    async fn finish_run(&self, id: i64, summary: &RunSummary, error: Option<&SyncError>) -> Result<(), SyncError> {
        let outcome = if error.is_some() { "failed" } else { "ok" };
        let mut tx = self.store.begin_write().await?;
        sqlx::query(
            "UPDATE runs SET finished_at = ?, outcome = ?, pages = ?, records_seen = ?, changes = ?, requests = ?, error = ? WHERE id = ?",
        )
        .bind(now_ms())
        .bind(outcome)
        .bind(summary.pages as i64)
        .bind(summary.contacts_seen as i64)
        .bind(summary.changes() as i64)
        .bind(summary.requests as i64)
        .bind(error.map(|e| e.to_string()))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let day = format_timestamp_ms(now_ms()).chars().take(10).collect::<String>();
        sqlx::query(
            "INSERT INTO request_budget (location_id, day, requests) VALUES (?, ?, ?) \
             ON CONFLICT (location_id, day) DO UPDATE SET requests = requests + excluded.requests",
        )
        .bind(&summary.location)
        .bind(day)
        .bind(summary.requests as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn mark_needs_reauth(&self, location: &str, reason: &str) -> Result<(), SyncError> {
        sqlx::query(
            "INSERT INTO locations (id, status, status_reason, updated_at) VALUES (?, 'needs_reauth', ?, ?) \
             ON CONFLICT (id) DO UPDATE SET status = 'needs_reauth', status_reason = excluded.status_reason, updated_at = excluded.updated_at",
        )
        .bind(location)
        .bind(reason)
        .bind(now_ms())
        .execute(self.store.pool())
        .await?;
        tracing::error!(
            "Location `{location}` needs re-authorisation and is paused; run `ghl-sync auth install` (OAuth) or fix its private integration token, then restart"
        );
        Ok(())
    }
}

/// Contacts per run the sweep may read: enough to cover every contact once per sweep
/// period, but no more than the budget share allows.
pub fn sweep_quota(settings: &EngineSettings, contacts: u64) -> u64 {
    let runs_per_period =
        (settings.children_sweep_period.as_secs_f64() / settings.contacts_interval.as_secs_f64()).max(1.0);
    let needed = (contacts as f64 / runs_per_period).ceil();
    let requests_per_contact = f64::from(u8::from(settings.tasks) + u8::from(settings.notes)).max(1.0);
    let runs_per_day = (86_400.0 / settings.contacts_interval.as_secs_f64()).max(1.0);
    let budget =
        settings.daily_budget as f64 * settings.children_sweep_budget_share / requests_per_contact / runs_per_day;
    needed.min(budget.floor()).max(0.0) as u64
}

#[derive(Debug, Default)]
struct FetchedChildren {
    tasks: Option<Vec<Value>>,
    notes: Option<Vec<Value>>,
    requests: u64,
}

/// A contact ready to diff.
#[derive(Debug, Clone)]
struct ContactRecord {
    id: String,
    date_updated_ms: Option<i64>,
    record: Map<String, Value>,
}

/// Splits a search page into normalised contacts and unreadable items (with reasons).
fn parse_page(items: Vec<Value>) -> (Vec<ContactRecord>, Vec<(String, Vec<u8>)>) {
    let mut records = Vec::with_capacity(items.len());
    let mut bad = Vec::new();
    for item in items {
        match parse_contact(item) {
            Ok(record) => records.push(record),
            Err((reason, raw)) => bad.push((reason, raw)),
        }
    }
    (records, bad)
}

/// Validates and normalises one contact; a bad one comes back with a reason (no PII) and
/// its raw bytes for the dead-letter table.
fn parse_contact(value: Value) -> Result<ContactRecord, (String, Vec<u8>)> {
    let raw = || codec::pack(&value);
    let Value::Object(map) = &value else {
        return Err(("contact is not a JSON object".into(), raw()));
    };
    let id = match map.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id.clone(),
        _ => return Err(("contact has no usable id".into(), raw())),
    };
    let date_updated_ms =
        map.get("dateUpdated").or_else(|| map.get("dateAdded")).and_then(Value::as_str).and_then(parse_timestamp_ms);
    let Value::Object(map) = value else { unreachable!("checked above") };
    Ok(ContactRecord { id, date_updated_ms, record: normalize_contact(map) })
}

fn parse_child(kind: EntityKind, value: Value) -> Result<ChildRecord, (String, Vec<u8>)> {
    let raw = || codec::pack(&value);
    let Value::Object(mut map) = value.clone() else {
        return Err((format!("{kind} is not a JSON object"), raw()));
    };
    if !map.contains_key("id")
        && let Some(id) = map.get("_id").cloned()
    {
        map.insert("id".into(), id);
    }
    let id = match map.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id.clone(),
        _ => return Err((format!("{kind} has no usable id"), raw())),
    };
    let record = match kind {
        EntityKind::Task => normalize_task(map),
        _ => normalize_note(map),
    };
    Ok(ChildRecord { id, hash: value_hash(&record), record })
}

fn search_after_of(item: &Value) -> Option<Value> {
    item.get("searchAfter").filter(|v| v.is_array()).cloned()
}

async fn upsert_contact(
    conn: &mut SqliteConnection,
    location: &str,
    id: &str,
    hash: &Hash,
    packed: &[u8],
    date_updated_ms: Option<i64>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO contacts (location_id, contact_id, hash, record, date_updated_ms, children_synced_at, first_seen_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, NULL, ?, ?) ON CONFLICT (location_id, contact_id) DO UPDATE SET hash = excluded.hash, \
         record = excluded.record, date_updated_ms = excluded.date_updated_ms, children_synced_at = NULL, updated_at = excluded.updated_at",
    )
    .bind(location)
    .bind(id)
    .bind(&hash[..])
    .bind(packed)
    .bind(date_updated_ms)
    .bind(now)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The snapshot of one contact's children of one kind: state for the diff plus the packed
/// record (for delete events).
async fn known_children(
    conn: &mut SqliteConnection,
    location: &str,
    contact_id: &str,
    kind: EntityKind,
) -> Result<HashMap<String, (KnownChild, Vec<u8>)>, sqlx::Error> {
    let rows: Vec<(String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT child_id, hash, record FROM children WHERE location_id = ? AND contact_id = ? AND kind = ?",
    )
    .bind(location)
    .bind(contact_id)
    .bind(kind.as_str())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, hash, record)| {
            let completed = kind == EntityKind::Task
                && codec::unpack(&record).ok().and_then(|v| v.as_object().map(is_completed)).unwrap_or(false);
            let hash = hash.as_slice().try_into().unwrap_or([0; 32]);
            (id, (KnownChild { hash, completed }, record))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EngineSettings {
        EngineSettings {
            page_size: 500,
            overlap: Duration::from_secs(300),
            index_lag_margin: Duration::from_secs(120),
            tasks: true,
            notes: true,
            contacts_interval: Duration::from_secs(60),
            children_sweep_period: Duration::from_secs(86_400),
            children_sweep_budget_share: 0.2,
            daily_budget: 180_000,
            dirty_debounce: Duration::from_millis(0),
            children_concurrency: 8,
            ignored_custom_fields: Vec::new(),
        }
    }

    #[test]
    fn the_sweep_covers_every_contact_within_the_period_unless_the_budget_forbids() {
        let s = settings();
        // 1,440 runs a day: 14,400 contacts need 10 per run.
        assert_eq!(sweep_quota(&s, 14_400), 10);
        // Budget: 180,000 × 0.2 / 2 requests / 1,440 runs = 12.5 contacts per run at most.
        assert_eq!(sweep_quota(&s, 1_000_000), 12);
        assert_eq!(sweep_quota(&s, 0), 0);
    }

    #[test]
    fn malformed_contacts_are_refused_with_a_reason_and_no_personal_data() {
        let (reason, _) = parse_contact(serde_json::json!({"email": "ada@example.test"})).unwrap_err();
        assert_eq!(reason, "contact has no usable id");
        let (reason, _) = parse_contact(serde_json::json!(["x"])).unwrap_err();
        assert_eq!(reason, "contact is not a JSON object");
        let ok = parse_contact(serde_json::json!({"id": "c1", "dateAdded": "2026-01-01T00:00:00.000Z"})).unwrap();
        assert_eq!(ok.date_updated_ms, Some(1_767_225_600_000));
    }

    #[test]
    fn children_from_the_location_search_use_underscore_id() {
        let child = parse_child(EntityKind::Task, serde_json::json!({"_id": "t1", "title": "x"})).unwrap();
        assert_eq!(child.id, "t1");
        assert!(parse_child(EntityKind::Note, serde_json::json!({"body": "x"})).is_err());
    }
}
