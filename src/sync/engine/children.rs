//! Tasks, notes and appointments (when `EngineSettings::appointments`). GHL gives tasks and
//! notes no update timestamps and offers no location-wide appointment change feed, so they are
//! read per contact: for contacts marked due (changed, moved `dateUpdated`, named by a
//! webhook) and by a budgeted sweep. A chunk of contacts is read concurrently and committed in
//! one transaction.
//!
//! One contact never fails a pass: a child read answering "contact not found" is confirmed
//! with a read of the contact (gone: a delete; there: retried on the next pass), and any
//! other refusal that retrying cannot fix is set aside in dead letters.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::tasks::{StagingFor, TaskSource};
use super::{Engine, EngineSettings, RunOptions, RunSummary, SyncError, YieldCheck};
use crate::domain::EntityKind;
use crate::domain::diff::ChildRecord;
use crate::domain::normalize::{normalize_child, value_hash};
use crate::ghl::GhlError;
use crate::http::Priority;
use crate::store::snapshot::{self, BadRecord, ChildrenRead};
use crate::store::staged_tasks;
use crate::store::{codec, now_ms};

/// Contacts whose children are read and committed together.
const CHUNK: usize = 200;

/// Chunks of yielding bulk work, in rounds of `children_concurrency`: small enough that a
/// waiting hint or poll waits for at most this many contacts' reads (2 rounds of 8 contacts,
/// 32 requests: about 3 s at GHL's 10 requests/s).
const YIELDING_ROUNDS: usize = 2;

/// Whether bulk work finished or stopped early for incremental work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backlog {
    Done,
    Left,
}

/// What reading one contact's children gave.
enum ChildFetch {
    Read(ChildrenRead, u64),
    /// GHL said the contact does not exist (404 on a child read): confirm, then delete.
    ContactGone(u64),
    /// GHL refused the read in a way retrying cannot fix: set it aside, move on.
    SetAside(ChildrenRead, u64),
}

impl Engine {
    /// Reads the children of every contact marked due (`children_synced_at IS NULL`), the
    /// most recently updated first; with `should_yield`, in small chunks, stopping when it
    /// says incremental work is waiting.
    ///
    /// `resume`: this run continues the backlog of the location's last full pass (a bulk run
    /// after a yield), so the contacts that pass already read and that stayed due are not read
    /// again; a full pass starts afresh.
    pub(super) async fn sync_due_children(
        &self,
        location: &str,
        options: RunOptions,
        summary: &mut RunSummary,
        should_yield: Option<YieldCheck<'_>>,
        resume: bool,
    ) -> Result<Backlog, SyncError> {
        if !self.settings.reads_children() {
            return Ok(Backlog::Done);
        }
        // In a dry run nothing is marked read, and a contact left due (its existence could
        // not be confirmed) stays due: each is read at most once per pass, across the slices
        // of a yielding pass too (kept in the engine between its runs).
        let mut seen = self.take_backlog_seen(location);
        if !resume {
            seen.clear();
        }
        let result = self.read_backlog(location, options, summary, should_yield, &mut seen).await;
        if matches!(result, Ok(Backlog::Left))
            && let Ok(mut kept) = self.backlog_seen.lock()
        {
            kept.insert(location.to_owned(), seen);
        }
        result
    }

    /// The contacts a yielded backlog already read and that stayed due (empty if none).
    fn take_backlog_seen(&self, location: &str) -> HashSet<String> {
        self.backlog_seen.lock().ok().and_then(|mut kept| kept.remove(location)).unwrap_or_default()
    }

    async fn read_backlog(
        &self,
        location: &str,
        options: RunOptions,
        summary: &mut RunSummary,
        should_yield: Option<YieldCheck<'_>>,
        seen: &mut HashSet<String>,
    ) -> Result<Backlog, SyncError> {
        let chunk = self.chunk_size(should_yield);
        let tasks = match self.task_source(location, options, summary, should_yield, StagingFor::Backlog).await? {
            Ok(source) => source,
            Err(left) => return Ok(left),
        };
        loop {
            let due = snapshot::children_due(&self.store, location, chunk, seen).await?;
            if due.is_empty() {
                return Ok(Backlog::Done);
            }
            let left_due = self.read_due_chunk(location, &due, tasks, options, summary).await?;
            // Read contacts are no longer due; only those still due must be skipped.
            if options.dry_run {
                seen.extend(due);
            } else {
                seen.extend(left_due);
            }
            if should_yield.is_some_and(|yield_now| yield_now()) {
                return Ok(Backlog::Left);
            }
        }
    }

    /// Reads a chunk of due contacts: those a change marked due after they were stored (found
    /// changed by the poll, named by a webhook) at poll priority, so fresh changes never wait
    /// for bulk work's share of the day (`[limits] bulk_daily_share`); the rest, the backlog of
    /// a first sync, as bulk work. Returns the contacts left due.
    async fn read_due_chunk(
        &self,
        location: &str,
        due: &[String],
        tasks: TaskSource,
        options: RunOptions,
        summary: &mut RunSummary,
    ) -> Result<Vec<String>, SyncError> {
        let changed = snapshot::changed_since_stored(&self.store, location, due).await?;
        let (fresh, backlog): (Vec<String>, Vec<String>) = due.iter().cloned().partition(|id| changed.contains(id));
        let mut left_due = self.sync_children_of(location, &fresh, Priority::Poll, tasks, options, summary).await?;
        left_due.extend(self.sync_children_of(location, &backlog, Priority::Sweep, tasks, options, summary).await?);
        Ok(left_due)
    }

    /// Contacts per chunk: large for a run that nothing waits on, small for yielding work.
    fn chunk_size(&self, should_yield: Option<YieldCheck<'_>>) -> usize {
        match should_yield {
            Some(_) => (self.settings.children_concurrency.max(1) * YIELDING_ROUNDS).min(CHUNK),
            None => CHUNK,
        }
    }

    /// The budgeted sweep: re-reads the children of the contacts read longest ago, enough per
    /// run to cover every contact within `children_sweep_period`, within the budget share.
    pub(super) async fn sweep_children(
        &self,
        location: &str,
        options: RunOptions,
        summary: &mut RunSummary,
        should_yield: Option<YieldCheck<'_>>,
    ) -> Result<Backlog, SyncError> {
        if !self.settings.reads_children() {
            return Ok(Backlog::Done);
        }
        let total = snapshot::contact_count(&self.store, location).await?;
        let quota = sweep_quota(&self.settings, total);
        if quota == 0 {
            return Ok(Backlog::Done);
        }
        let tasks = match self.task_source(location, options, summary, should_yield, StagingFor::Sweep).await? {
            Ok(source) => source,
            Err(left) => return Ok(left),
        };
        let stale_before = now_ms() - self.settings.contacts_interval.as_millis() as i64;
        let due = snapshot::sweep_due(&self.store, location, stale_before, quota).await?;
        for chunk in due.chunks(self.chunk_size(should_yield)) {
            self.sync_children_of(location, chunk, Priority::Sweep, tasks, options, summary).await?;
            if should_yield.is_some_and(|yield_now| yield_now()) {
                // What was not swept stays the stalest: the next sweep starts with it.
                return Ok(Backlog::Left);
            }
        }
        Ok(Backlog::Done)
    }

    /// Reads and commits the children of `contacts`; with a staging (`tasks`), the contacts it
    /// may serve take their tasks from it (no task request). A transient failure (GHL down,
    /// rate limit exhausted, credentials) fails the pass after committing what was read.
    /// Returns the contacts left due (a child read said "not found" but the contact exists).
    pub(super) async fn sync_children_of(
        &self,
        location: &str,
        contacts: &[String],
        priority: Priority,
        tasks: TaskSource,
        options: RunOptions,
        summary: &mut RunSummary,
    ) -> Result<Vec<String>, SyncError> {
        if contacts.is_empty() || !self.settings.reads_children() {
            return Ok(Vec::new());
        }
        let mut staged: HashMap<String, Vec<ChildRecord>> = HashMap::new();
        if let TaskSource::Staged(started_at) = tasks {
            let eligible = staged_tasks::eligible(&self.store, location, contacts, started_at).await?;
            let served: Vec<String> = contacts.iter().filter(|c| eligible.contains(*c)).cloned().collect();
            if !served.is_empty() {
                let mut found = staged_tasks::tasks_of(&self.store, location, &served).await?;
                for contact_id in served {
                    // The staging covers the whole location: no staged task means none.
                    let tasks = found.remove(&contact_id).unwrap_or_default();
                    staged.insert(contact_id, tasks);
                }
            }
        }
        let staged = &staged;
        let fetched: Vec<(String, Result<ChildFetch, GhlError>)> = futures_util::stream::iter(contacts.iter().cloned())
            .map(|contact_id| async move {
                let tasks = staged.get(&contact_id).cloned();
                let result = self.fetch_children(location, &contact_id, priority, tasks).await;
                (contact_id, result)
            })
            .buffer_unordered(self.settings.children_concurrency.max(1))
            .collect()
            .await;
        let mut first_error = None;
        let mut reads = Vec::with_capacity(fetched.len());
        let mut gone = Vec::new();
        for (contact_id, result) in fetched {
            match result {
                Ok(ChildFetch::Read(read, requests)) => {
                    summary.requests += requests;
                    summary.children_read_for += 1;
                    reads.push(read);
                }
                Ok(ChildFetch::SetAside(read, requests)) => {
                    summary.requests += requests;
                    reads.push(read);
                }
                Ok(ChildFetch::ContactGone(requests)) => {
                    summary.requests += requests;
                    gone.push(contact_id);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        let committed = snapshot::commit_children(&self.store, &self.commit(location, options), reads).await?;
        self.committed(summary, committed, options);
        self.record_progress(summary).await;
        let mut left_due = Vec::new();
        for contact_id in gone {
            if self.confirm_gone(location, &contact_id, options, summary).await? {
                left_due.push(contact_id);
            }
        }
        if let Some(progress) = &self.progress {
            progress.children(location, contacts.len() as u64);
        }
        match first_error {
            Some(error) => Err(error.into()),
            None => Ok(left_due),
        }
    }

    /// A child read said "contact not found": a `GET` decides. Gone: the contact is deleted
    /// (snapshot, children, a `contact.deleted`). Still there (`true`): it stays due for the
    /// next pass.
    async fn confirm_gone(
        &self,
        location: &str,
        contact_id: &str,
        options: RunOptions,
        summary: &mut RunSummary,
    ) -> Result<bool, SyncError> {
        summary.requests += 1;
        match self.ghl.get_contact(location, contact_id, Priority::Webhook).await? {
            None => {
                tracing::info!(location.id = %location, contact.id = %contact_id, "Contact `{contact_id}` is gone from GHL; deleting it");
                self.delete_contact(location, contact_id, options, summary).await?;
                Ok(false)
            }
            Some(_) => {
                tracing::warn!(location.id = %location, contact.id = %contact_id,
                    "GHL said contact `{contact_id}` was not found when reading its tasks/notes, but it exists; retrying next pass");
                Ok(true)
            }
        }
    }

    /// One contact's children; `staged_tasks`: its tasks as staged (no task request).
    async fn fetch_children(
        &self,
        location: &str,
        contact_id: &str,
        priority: Priority,
        mut staged_tasks: Option<Vec<ChildRecord>>,
    ) -> Result<ChildFetch, GhlError> {
        let mut read = ChildrenRead { contact_id: contact_id.to_owned(), ..ChildrenRead::default() };
        let mut requests = 0;
        for kind in [EntityKind::Task, EntityKind::Note, EntityKind::Appointment] {
            let wanted = match kind {
                EntityKind::Task => self.settings.tasks,
                EntityKind::Note => self.settings.notes,
                _ => self.settings.appointments,
            };
            if !wanted {
                continue;
            }
            if kind == EntityKind::Task
                && let Some(tasks) = staged_tasks.take()
            {
                read.tasks = Some(tasks);
                continue;
            }
            requests += 1;
            let listed = match kind {
                EntityKind::Task => self.ghl.list_tasks(location, contact_id, priority).await,
                EntityKind::Note => self.ghl.list_notes(location, contact_id, priority).await,
                _ => self.ghl.list_appointments(location, contact_id, priority).await,
            };
            let items = match listed {
                Ok(items) => items,
                Err(error) if error.is_not_found() => return Ok(ChildFetch::ContactGone(requests)),
                Err(error) if error.is_refusal() => {
                    tracing::warn!(location.id = %location, contact.id = %contact_id, error = %error,
                        "GHL refused to list the {kind}s of contact `{contact_id}`; set aside in dead letters");
                    read.bad.push(BadRecord {
                        entity: kind,
                        reason: format!("listing the {kind}s of contact {contact_id} was refused: {error}"),
                        raw: codec::pack(&Value::Null),
                    });
                    return Ok(ChildFetch::SetAside(read, requests));
                }
                Err(error) => return Err(error),
            };
            let mut children = Vec::with_capacity(items.len());
            for item in items {
                match parse_child(kind, item) {
                    Ok(child) => children.push(child),
                    Err(bad) => read.bad.push(bad),
                }
            }
            match kind {
                EntityKind::Task => read.tasks = Some(children),
                EntityKind::Note => read.notes = Some(children),
                _ => read.appointments = Some(children),
            }
        }
        Ok(ChildFetch::Read(read, requests))
    }
}

/// Contacts per run the sweep may read: enough to cover every contact once per sweep
/// period, but no more than the budget share allows (each contact costs one request per child
/// stream read: tasks, notes, appointments).
pub fn sweep_quota(settings: &EngineSettings, contacts: u64) -> u64 {
    let runs_per_period =
        (settings.children_sweep_period.as_secs_f64() / settings.contacts_interval.as_secs_f64()).max(1.0);
    let needed = (contacts as f64 / runs_per_period).ceil();
    let requests_per_contact = (settings.child_requests_per_contact() as f64).max(1.0);
    let runs_per_day = (86_400.0 / settings.contacts_interval.as_secs_f64()).max(1.0);
    let budget =
        settings.daily_budget as f64 * settings.children_sweep_budget_share / requests_per_contact / runs_per_day;
    needed.min(budget.floor()).max(0.0) as u64
}

/// Validates and normalises one task, note or appointment (location-wide task search items
/// say `_id`).
pub(super) fn parse_child(kind: EntityKind, value: Value) -> Result<ChildRecord, BadRecord> {
    let bad = |reason: String, value: &Value| BadRecord { entity: kind, reason, raw: codec::pack(value) };
    let Value::Object(map) = &value else {
        return Err(bad(format!("{kind} is not a JSON object"), &value));
    };
    let mut map: Map<String, Value> = map.clone();
    if !map.contains_key("id")
        && let Some(id) = map.get("_id").cloned()
    {
        map.insert("id".into(), id);
    }
    let id = match map.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id.clone(),
        _ => return Err(bad(format!("{kind} has no usable id"), &value)),
    };
    let record = normalize_child(kind, map);
    Ok(ChildRecord { id, hash: value_hash(&record), record })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings() -> EngineSettings {
        EngineSettings {
            page_size: 500,
            overlap: Duration::from_secs(300),
            index_lag_margin: Duration::from_secs(120),
            tasks: true,
            notes: true,
            appointments: false,
            contacts_interval: Duration::from_secs(60),
            children_sweep_period: Duration::from_secs(86_400),
            children_sweep_budget_share: 0.2,
            daily_budget: 180_000,
            dirty_debounce: Duration::from_millis(0),
            children_concurrency: 8,
            ignored_custom_fields: Vec::new(),
            task_search: true,
            task_search_page: 100,
            task_search_min_contacts: 100,
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
        // Appointments add a third request per contact: 180,000 × 0.2 / 3 / 1,440 = 8.3.
        let with_appointments = EngineSettings { appointments: true, ..settings() };
        assert_eq!(sweep_quota(&with_appointments, 1_000_000), 8);
        assert_eq!(sweep_quota(&with_appointments, 14_400), 8);
    }

    #[test]
    fn children_from_the_location_search_use_underscore_id() {
        let child = parse_child(EntityKind::Task, serde_json::json!({"_id": "t1", "title": "x"})).unwrap();
        assert_eq!(child.id, "t1");
        assert!(parse_child(EntityKind::Note, serde_json::json!({"body": "x"})).is_err());
    }

    #[test]
    fn appointments_are_parsed_to_their_schema_and_bad_ones_set_aside() {
        let item = serde_json::json!({"id": "a1", "title": "Demo", "appointmentStatus": "confirmed", "extra": 1});
        let child = parse_child(EntityKind::Appointment, item).unwrap();
        assert_eq!(child.id, "a1");
        assert!(!child.record.contains_key("extra"));
        assert_eq!(child.hash, value_hash(&child.record));
        let bad = parse_child(EntityKind::Appointment, serde_json::json!({"title": "no id"})).unwrap_err();
        assert_eq!(bad.entity, EntityKind::Appointment);
        assert!(parse_child(EntityKind::Appointment, serde_json::json!(["not", "an", "object"])).is_err());
    }
}
