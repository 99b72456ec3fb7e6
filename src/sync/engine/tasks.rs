//! Tasks read location-wide (issue 22): `POST /locations/:locationId/tasks/search`, paged with
//! `limit`/`skip`, staged in the store (`store::staged_tasks`) so memory stays flat, then taken
//! per contact by the children backlog and the sweep instead of one `GET /contacts/:id/tasks`
//! per contact. Notes have no location-wide listing and stay per contact.
//!
//! - **Paging by `skip` shifts** when a task is deleted while we page (GHL orders by
//!   `dateAdded`): every page starts [`OVERLAP`] items before the position and is anchored on
//!   the last ids of the previous page; the items after the last anchor found are new, the
//!   others are deduped by id. No anchor found (more deletes than the overlap between two
//!   pages): the paging starts over from `skip = 0`, keeping what was staged (deduped); after
//!   [`MAX_RESTARTS`] the staging is dropped and the pass reads tasks per contact.
//! - **Restart**: the position and the anchor are committed with each page, so a restart
//!   resumes the staging where its last committed page ended (nothing is read twice but the
//!   overlap, nothing is staged twice: the table is keyed by task id).
//! - **Freshness**: a staging is as old as its start. Only contacts whose children were last
//!   read, and that were last marked due, before it started take their tasks from it; hinted
//!   and changed contacts keep per-contact reads (`staged_tasks::eligible`).
//! - **Fallback**: a 401 "not authorized for this scope" or a 403 on the search is remembered
//!   for the location (logged once, counted in `ghl_sync_task_search_unavailable_total`); its
//!   tasks are then read per contact, as before.
//! - **Deletes**: a staging covers the whole location, so an eligible contact without staged
//!   tasks has none, and the tasks the store knows for it are deleted, as a per-contact read
//!   answering `[]` would.

use super::children::{Backlog, parse_child};
use super::{Engine, RunOptions, RunSummary, SyncError, YieldCheck};
use crate::domain::EntityKind;
use crate::ghl::GhlError;
use crate::ghl::dto::TaskSearchRequest;
use crate::http::Priority;
use crate::store::snapshot::BadRecord;
use crate::store::staged_tasks::{self, PageAdvance, StagedTask, Staging};
use crate::store::{codec, now_ms};

/// Items each page re-reads before the position, to notice a shift by deleted tasks.
pub(super) const OVERLAP: usize = 5;

/// Times one staging may start its paging over before it is given up for per-contact reads.
const MAX_RESTARTS: u32 = 3;

/// What the children backlog or the sweep may take its tasks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TaskSource {
    /// One `GET /contacts/:id/tasks` per contact.
    PerContact,
    /// The complete staging that started at this instant (ms), for the contacts it may serve.
    Staged(i64),
}

/// Which bulk work asks for a staging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StagingFor {
    Backlog,
    Sweep,
}

impl Engine {
    /// Whether the location-wide task search may be used for `location` at all.
    fn task_search_allowed(&self, location: &str, options: RunOptions) -> bool {
        self.settings.tasks
            && self.settings.task_search
            && !options.dry_run
            && !self.task_search_refused.lock().is_ok_and(|refused| refused.contains(location))
    }

    /// Remembers that the search is not available to `location` (missing scope): logged and
    /// counted once, and its tasks are read per contact from now on.
    fn refuse_task_search(&self, location: &str, error: &GhlError) {
        let first = self.task_search_refused.lock().is_ok_and(|mut refused| refused.insert(location.to_owned()));
        if first {
            metrics::counter!("ghl_sync_task_search_unavailable_total").increment(1);
            tracing::warn!(location.id = %location, error = %error,
                "The location-wide task search is not available to location `{location}` (its token lacks the \
                 `locations/tasks.readonly` scope?); reading tasks per contact instead");
        }
    }

    /// Where the tasks of this backlog or sweep come from; stages (or resumes staging) the
    /// location's tasks first when that saves requests. `Err(Backlog::Left)`: the staging
    /// yielded to incremental work and resumes in a later run.
    pub(super) async fn task_source(
        &self,
        location: &str,
        options: RunOptions,
        summary: &mut RunSummary,
        should_yield: Option<YieldCheck<'_>>,
        purpose: StagingFor,
    ) -> Result<Result<TaskSource, Backlog>, SyncError> {
        if !self.task_search_allowed(location, options) {
            return Ok(Ok(TaskSource::PerContact));
        }
        let current = staged_tasks::current(&self.store, location).await?;
        let staging = match current {
            // A staging in progress is finished first (a restart resumes it).
            Some(staging) if staging.done_at.is_none() => staging,
            current => {
                if !self.needs_new_staging(location, purpose, current.as_ref()).await? {
                    // The complete staging there is (if any) serves the contacts it may.
                    return Ok(Ok(current.map_or(TaskSource::PerContact, |s| TaskSource::Staged(s.started_at))));
                }
                staged_tasks::start(&self.store, location).await?
            }
        };
        self.stage_tasks(location, staging, summary, should_yield).await
    }

    /// Whether a new staging pays: for the backlog, when at least `task_search_min_contacts`
    /// due contacts cannot be served by the current one; for the sweep, when the current one
    /// is older than half the sweep period and the location has that many contacts.
    async fn needs_new_staging(
        &self,
        location: &str,
        purpose: StagingFor,
        current: Option<&Staging>,
    ) -> Result<bool, SyncError> {
        let min = self.settings.task_search_min_contacts;
        Ok(match purpose {
            StagingFor::Backlog => {
                let since = current.map_or(0, |s| s.started_at);
                staged_tasks::due_since(&self.store, location, since).await? >= min
            }
            StagingFor::Sweep => {
                let max_age = (self.settings.children_sweep_period / 2).as_millis() as i64;
                let stale = current.is_none_or(|s| now_ms() - s.started_at > max_age);
                stale && crate::store::snapshot::contact_count(&self.store, location).await? >= min
            }
        })
    }

    /// Pages through the search from the staging's position to the end, one committed page
    /// at a time, yielding between pages.
    async fn stage_tasks(
        &self,
        location: &str,
        mut staging: Staging,
        summary: &mut RunSummary,
        should_yield: Option<YieldCheck<'_>>,
    ) -> Result<Result<TaskSource, Backlog>, SyncError> {
        let limit = self.settings.task_search_page.max(2 * OVERLAP as u32 + 1);
        loop {
            let overlap = staging.tail.len().min(OVERLAP) as u64;
            let skip = staging.position.saturating_sub(overlap);
            let request = TaskSearchRequest {
                contact_id: Vec::new(),
                completed: None,
                limit,
                skip: u32::try_from(skip).unwrap_or(u32::MAX),
            };
            summary.requests += 1;
            let items = match self.ghl.search_location_tasks(location, &request, Priority::Sweep).await {
                Ok(items) => items,
                Err(error)
                    if matches!(error, GhlError::MissingScope { .. })
                        || error.status() == Some(crate::http::StatusCode::FORBIDDEN) =>
                {
                    self.refuse_task_search(location, &error);
                    staged_tasks::discard(&self.store, location).await?;
                    return Ok(Ok(TaskSource::PerContact));
                }
                Err(error) => return Err(error.into()),
            };
            let ids: Vec<Option<String>> = items.iter().map(item_id).collect();
            let fresh_from = match anchor(&staging.tail, &ids) {
                Anchor::Start => 0,
                Anchor::After(index) => index + 1,
                Anchor::Lost if skip == 0 => 0,
                Anchor::Lost => {
                    if staging.restarts + 1 >= MAX_RESTARTS {
                        tracing::warn!(location.id = %location,
                            "The location's tasks shifted too often while paging the task search; reading tasks per contact this pass");
                        staged_tasks::discard(&self.store, location).await?;
                        return Ok(Ok(TaskSource::PerContact));
                    }
                    tracing::info!(location.id = %location,
                        "More tasks were deleted between two task search pages than the overlap covers; paging again from the start");
                    let advance = PageAdvance { position: 0, tail: Vec::new(), done: false, restarted: true };
                    staged_tasks::commit_page(&self.store, location, staging.started_at, &[], &[], &advance).await?;
                    staging.position = 0;
                    staging.tail.clear();
                    staging.restarts += 1;
                    continue;
                }
            };
            let done = items.len() < limit as usize;
            let position = skip + items.len() as u64;
            let mut tail: Vec<String> = ids.iter().rev().flatten().take(OVERLAP).cloned().collect();
            tail.reverse();
            let mut tasks = Vec::with_capacity(items.len());
            let mut bad = Vec::new();
            // Items of the overlap are staged again too (same id: replaced, not doubled); one
            // that cannot be read is set aside once, when it is new.
            for (index, item) in items.into_iter().enumerate() {
                match staged_task(item) {
                    Ok(task) => tasks.push(task),
                    Err(record) if index >= fresh_from => bad.push(record),
                    Err(_) => {}
                }
            }
            let advance = PageAdvance { position, tail: tail.clone(), done, restarted: false };
            if !staged_tasks::commit_page(&self.store, location, staging.started_at, &tasks, &bad, &advance).await? {
                // Another staging replaced this one meanwhile: read per contact this time.
                return Ok(Ok(TaskSource::PerContact));
            }
            summary.dead_letters += bad.len() as u64;
            staging.position = position;
            staging.tail = tail;
            if done {
                return Ok(Ok(TaskSource::Staged(staging.started_at)));
            }
            if should_yield.is_some_and(|yield_now| yield_now()) {
                return Ok(Err(Backlog::Left));
            }
        }
    }
}

/// Where a page meets the items already consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor {
    /// Nothing consumed yet: every item is new.
    Start,
    /// The last item of the page that was already consumed is at this index.
    After(usize),
    /// None of the last consumed items is on the page: they shifted out of the overlap.
    Lost,
}

/// Finds the page's last item among `tail` (the last ids consumed).
fn anchor(tail: &[String], ids: &[Option<String>]) -> Anchor {
    if tail.is_empty() {
        return Anchor::Start;
    }
    ids.iter().rposition(|id| id.as_ref().is_some_and(|id| tail.contains(id))).map_or(Anchor::Lost, Anchor::After)
}

/// A search item's id (`_id`; `id` accepted too).
fn item_id(item: &serde_json::Value) -> Option<String> {
    item.get("_id").or_else(|| item.get("id")).and_then(serde_json::Value::as_str).map(str::to_owned)
}

/// One search item, normalised exactly as a per-contact read of the same task.
fn staged_task(item: serde_json::Value) -> Result<StagedTask, BadRecord> {
    let contact_id = item.get("contactId").and_then(serde_json::Value::as_str).filter(|c| !c.is_empty());
    let Some(contact_id) = contact_id.map(str::to_owned) else {
        return Err(BadRecord {
            entity: EntityKind::Task,
            reason: "a task of the location-wide task search has no contactId".to_owned(),
            raw: codec::pack(&item),
        });
    };
    let task = parse_child(EntityKind::Task, item)?;
    Ok(StagedTask { contact_id, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(items: &[&str]) -> Vec<Option<String>> {
        items.iter().map(|s| Some((*s).to_owned())).collect()
    }

    fn tail(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_overlap_finds_where_a_page_meets_what_was_read() {
        assert_eq!(anchor(&[], &ids(&["a", "b"])), Anchor::Start);
        // No delete: the overlap is the previous tail, new items start after it.
        assert_eq!(anchor(&tail(&["c", "d", "e"]), &ids(&["c", "d", "e", "f", "g"])), Anchor::After(2));
        // Two earlier tasks deleted: the page starts two items later; the anchor still holds.
        assert_eq!(anchor(&tail(&["c", "d", "e"]), &ids(&["e", "f", "g", "h", "i"])), Anchor::After(0));
        // The last read task itself deleted: an earlier one anchors.
        assert_eq!(anchor(&tail(&["c", "d", "e"]), &ids(&["a", "b", "c", "d", "f"])), Anchor::After(3));
        // Shifted further than the overlap: lost.
        assert_eq!(anchor(&tail(&["c", "d", "e"]), &ids(&["g", "h", "i"])), Anchor::Lost);
    }

    #[test]
    fn a_search_item_without_a_contact_is_set_aside() {
        let bad = staged_task(serde_json::json!({"_id": "t1", "title": "x"})).unwrap_err();
        assert_eq!(bad.entity, EntityKind::Task);
        let good = staged_task(serde_json::json!({"_id": "t1", "title": "x", "contactId": "c1"})).unwrap();
        assert_eq!((good.contact_id.as_str(), good.task.id.as_str()), ("c1", "t1"));
    }
}
