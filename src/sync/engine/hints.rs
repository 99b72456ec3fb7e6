//! Webhook hints: every contact a GHL webhook named is re-read by `GET` (the payload is a
//! hint, never data), its children are read right after, and a 404 is a confirmed delete.

use serde_json::Value;

use super::contacts::parse_contact;
use super::tasks::TaskSource;
use super::{Engine, RunOptions, RunSummary, SyncError};
use crate::domain::normalize::ReadPath;
use crate::http::Priority;
use crate::store::{hints, now_ms, snapshot};

/// Hints handled per pass (the scheduler runs again at once while more are waiting).
const HINTS_PER_PASS: u32 = 1000;

impl Engine {
    /// Re-reads every contact a webhook named (debounced), confirming deletes with a 404,
    /// then reads the children of the contacts that are still there.
    pub(super) async fn process_hints(
        &self,
        location: &str,
        options: RunOptions,
        summary: &mut RunSummary,
    ) -> Result<(), SyncError> {
        let ready_before = now_ms() - self.settings.dirty_debounce.as_millis() as i64;
        let ready = hints::ready(&self.store, location, ready_before, HINTS_PER_PASS).await?;
        let mut reread = Vec::new();
        let mut handled = Vec::with_capacity(ready.len());
        for hint in ready {
            if hint.contact_id.is_empty() {
                // A TaskCreate without contactId (reference/ghl.md §8.1): the sweep finds it.
                handled.push(hint);
                continue;
            }
            summary.requests += 1;
            let fetched = self.ghl.get_contact(location, &hint.contact_id, Priority::Webhook).await?;
            match fetched {
                Some(contact) => {
                    let value = serde_json::to_value(contact).unwrap_or(Value::Null);
                    let (records, bad) = match parse_contact(value, ReadPath::Get) {
                        Ok(record) => (vec![record], Vec::new()),
                        Err(bad) => (Vec::new(), vec![bad]),
                    };
                    summary.contacts_seen += records.len() as u64;
                    let known = !records.is_empty();
                    self.commit_page(location, records, bad, None, options, summary).await?;
                    if known {
                        // A hint may be about a task or note: its children are read either way.
                        if !options.dry_run {
                            snapshot::mark_children_due(&self.store, location, &hint.contact_id).await?;
                        }
                        reread.push(hint.contact_id.clone());
                    }
                }
                None => self.delete_contact(location, &hint.contact_id, options, summary).await?,
            }
            handled.push(hint);
        }
        reread.sort_unstable();
        reread.dedup();
        for chunk in reread.chunks(200) {
            self.sync_children_of(location, chunk, Priority::Webhook, TaskSource::PerContact, options, summary).await?;
        }
        if !options.dry_run {
            for hint in &handled {
                hints::drop_handled(&self.store, location, hint).await?;
            }
        }
        Ok(())
    }
}
