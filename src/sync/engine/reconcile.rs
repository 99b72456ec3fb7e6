//! Reconciliation: lists every contact id of a location and turns snapshot ids GHL no longer
//! has into deletes, each confirmed by a `GET` that answers 404. A listing that fails or ends
//! early deletes nothing. The listing is kept in the store page by page (memory stays flat)
//! and no connection is held across GHL calls.

use serde_json::Value;

use super::{Engine, RunOptions, RunSummary, SyncError};
use crate::ghl::dto::SearchRequest;
use crate::http::Priority;
use crate::store::{cursors, now_ms, snapshot};

const LISTING_PAGE: u32 = 500;

impl Engine {
    /// Lists every contact id and deletes (after a confirming read) the ones GHL no longer has.
    pub async fn reconcile(&self, location: &str, options: RunOptions) -> Result<RunSummary, SyncError> {
        let mut summary = self.start_run(location, "reconcile", options).await?;
        let result = self.reconcile_inner(location, options, &mut summary).await;
        self.finish_run(&mut summary, result.as_ref().err()).await?;
        result.map(|()| summary)
    }

    async fn reconcile_inner(
        &self,
        location: &str,
        options: RunOptions,
        summary: &mut RunSummary,
    ) -> Result<(), SyncError> {
        let started = now_ms();
        snapshot::reconcile_reset(&self.store, location).await?;
        let mut request = SearchRequest::all_by_date_added(location, LISTING_PAGE);
        let mut listed: u64 = 0;
        let mut reported_total = None;
        loop {
            summary.requests += 1;
            let page = self.ghl.search_contacts(&request, Priority::Reconcile).await?;
            reported_total = page.total.or(reported_total);
            let count = page.contacts.len();
            let cursor =
                page.contacts.last().and_then(|item| item.get("searchAfter").filter(|v| v.is_array()).cloned());
            let ids: Vec<&str> =
                page.contacts.iter().filter_map(|item| item.get("id").and_then(Value::as_str)).collect();
            snapshot::reconcile_seen(&self.store, location, &ids).await?;
            listed += count as u64;
            summary.pages += 1;
            self.record_progress(summary).await;
            if count < LISTING_PAGE as usize {
                break;
            }
            let Some(cursor) = cursor else {
                tracing::warn!(location.id = %location, "Reconciliation listing lost its cursor; no deletes this time");
                return Ok(());
            };
            request.search_after = Some(cursor);
        }
        summary.contacts_seen = listed;
        if let Some(total) = reported_total
            && listed < total
        {
            tracing::warn!(
                location.id = %location, listed, total,
                "Reconciliation listing ended before GHL's total; no deletes this time"
            );
            return Ok(());
        }
        let candidates = snapshot::reconcile_candidates(&self.store, location, started).await?;
        snapshot::reconcile_reset(&self.store, location).await?;
        for contact_id in candidates {
            summary.requests += 1;
            // Confirm each one: the search index lags, and a listing is not proof of absence.
            if self.ghl.get_contact(location, &contact_id, Priority::Reconcile).await?.is_none() {
                self.delete_contact(location, &contact_id, options, summary).await?;
            }
        }
        if !options.dry_run {
            cursors::set_reconciled(&self.store, location, started).await?;
        }
        Ok(())
    }
}
