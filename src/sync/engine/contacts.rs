//! The contacts stream: `POST /contacts/search` by `dateUpdated` ascending from the watermark
//! minus the overlap, one commit per page, children of the page's changed contacts before the
//! next page (memory stays flat).

use serde_json::Value;
use tracing::Instrument as _;

use super::{Engine, RunOptions, RunSummary, SyncError};
use crate::domain::EntityKind;
use crate::domain::normalize::{ReadPath, format_timestamp_ms, normalize_contact, parse_timestamp_ms};
use crate::ghl::dto::SearchRequest;
use crate::ghl::{GhlClient, GhlError};
use crate::http::Priority;
use crate::store::snapshot::{self, BadRecord, ContactRead, CursorAdvance};
use crate::store::{codec, cursors, now_ms};

impl Engine {
    /// The contacts stream. The next page's request (and its parsing) runs in the background
    /// while the current page commits, one page ahead; each page's cursor still moves only in
    /// that page's own commit, so a kill between the read ahead and its commit re-reads the page.
    pub(super) async fn stream_contacts(
        &self,
        location: &str,
        options: RunOptions,
        summary: &mut RunSummary,
    ) -> Result<(), SyncError> {
        let run_start = now_ms();
        let cap = run_start - self.settings.index_lag_margin.as_millis() as i64;
        let watermark = cursors::contacts_watermark(&self.store, location).await?;
        let mut high = watermark.unwrap_or(0);
        let since = watermark.map(|w| format_timestamp_ms((w - self.settings.overlap.as_millis() as i64).max(0)));
        let mut request = SearchRequest::updated_since(location, self.settings.page_size, since.as_deref());
        summary.requests += 1;
        let mut page = read_page(self.ghl.clone(), request.clone()).await?;
        loop {
            let ReadPage { count, total, last_cursor, records, bad } = page;
            let page_high = records.iter().filter_map(|r| r.date_updated_ms).max().unwrap_or(high);
            // Never move the watermark closer to now than the index lag margin, nor backwards.
            high = high.max(page_high.min(cap));
            let last_page = count < self.settings.page_size as usize;
            summary.pages += 1;
            summary.contacts_seen += records.len() as u64;
            // Read the next page while this one commits (dropped, hence cancelled, if the
            // commit fails).
            // A replica that lost the location's lease reads no further page; this one
            // commits and the new holder resumes from the cursor.
            let fenced = !last_page && !self.may_poll(location);
            let next = match (&last_cursor, last_page || fenced) {
                (Some(cursor), false) => {
                    request.search_after = Some(cursor.clone());
                    summary.requests += 1;
                    Some(ReadAhead::start(self.ghl.clone(), request.clone()))
                }
                _ => None,
            };
            let cursor = CursorAdvance { watermark_ms: high, backfill_done: last_page };
            self.commit_page(location, records, bad, Some(cursor), options, summary).await?;
            self.record_progress(summary).await;
            if let Some(progress) = &self.progress {
                progress.page(location, count as u64, total);
            }
            // Children of the contacts a page changed are not read here: the stream runs to
            // its end first, so a new location's contacts reach connectors before its
            // children backlog (marked due in the store, read next, newest first).
            if last_page {
                break;
            }
            if fenced {
                tracing::info!(
                    "Stopped reading `{location}` after page {}: this replica no longer holds its lease",
                    summary.pages
                );
                break;
            }
            match next {
                Some(next) => page = next.finish(&self.ghl, &request).await?,
                None => {
                    tracing::warn!(location.id = %location, "GHL search page without a searchAfter cursor; ending this scan");
                    break;
                }
            }
        }
        Ok(())
    }

    /// The contacts stream's work on one page of raw search items, without the request:
    /// normalise, hash, snapshot lookup and the page's commit (the cursor row is upserted
    /// without moving it). `benches/sync.rs` times it on unchanged pages.
    pub async fn diff_page(&self, location: &str, items: Vec<Value>) -> Result<RunSummary, SyncError> {
        let mut summary = RunSummary { location: location.to_owned(), pages: 1, ..Default::default() };
        let (records, bad) = parse_page(items, ReadPath::Search);
        summary.contacts_seen = records.len() as u64;
        let cursor = CursorAdvance { watermark_ms: 0, backfill_done: false };
        self.commit_page(location, records, bad, Some(cursor), RunOptions::default(), &mut summary).await?;
        Ok(summary)
    }

    /// Hands a page to the store and books the outcome.
    pub(super) async fn commit_page(
        &self,
        location: &str,
        records: Vec<ContactRead>,
        bad: Vec<BadRecord>,
        cursor: Option<CursorAdvance>,
        options: RunOptions,
        summary: &mut RunSummary,
    ) -> Result<(), SyncError> {
        for record in &bad {
            tracing::warn!(location.id = %location, reason = %record.reason, "A contact from GHL could not be read; set aside in dead letters");
        }
        let committed = snapshot::commit_contacts(
            &self.store,
            &self.commit(location, options),
            records,
            bad,
            cursor,
            &self.settings.ignored_custom_fields,
        )
        .await?;
        summary.contacts_changed += committed.changed;
        self.committed(summary, committed, options);
        Ok(())
    }
}

/// One page of the contacts stream, read and parsed.
struct ReadPage {
    /// Items GHL returned (readable or not).
    count: usize,
    /// GHL's count for the query, if it gave one.
    total: Option<u64>,
    /// The last item's `searchAfter`: where the next page starts.
    last_cursor: Option<Value>,
    records: Vec<ContactRead>,
    bad: Vec<BadRecord>,
}

/// `POST /contacts/search` for one page, then its parsing (JSON decoding and normalising are
/// the CPU part, done off the committing task when read ahead).
async fn read_page(ghl: GhlClient, request: SearchRequest) -> Result<ReadPage, GhlError> {
    let page = ghl.search_contacts(&request, Priority::Poll).await?;
    let count = page.contacts.len();
    let last_cursor = page.contacts.last().and_then(search_after_of);
    let (records, bad) = parse_page(page.contacts, ReadPath::Search);
    Ok(ReadPage { count, total: page.total, last_cursor, records, bad })
}

/// The next page, read in a background task while the current one commits. Dropping it
/// cancels the read (a failed commit, a cancelled run): nothing of it was stored, so nothing
/// is lost.
struct ReadAhead(tokio::task::JoinHandle<Result<ReadPage, GhlError>>);

impl ReadAhead {
    fn start(ghl: GhlClient, request: SearchRequest) -> Self {
        Self(tokio::spawn(read_page(ghl, request).instrument(tracing::Span::current())))
    }

    /// The page read ahead. If its task died (a panic), the page is read again here, so the
    /// stream behaves as without reading ahead.
    async fn finish(mut self, ghl: &GhlClient, request: &SearchRequest) -> Result<ReadPage, GhlError> {
        match (&mut self.0).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(error = %error, "Reading the next contacts page ahead failed; reading it again");
                read_page(ghl.clone(), request.clone()).await
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Splits a page into normalised contacts and unreadable items (with reasons).
pub(super) fn parse_page(items: Vec<Value>, path: ReadPath) -> (Vec<ContactRead>, Vec<BadRecord>) {
    let mut records = Vec::with_capacity(items.len());
    let mut bad = Vec::new();
    for item in items {
        match parse_contact(item, path) {
            Ok(record) => records.push(record),
            Err(record) => bad.push(record),
        }
    }
    (records, bad)
}

/// Validates and normalises one contact; a bad one comes back with a reason (no personal
/// data) and its raw bytes for the dead-letter table.
pub(super) fn parse_contact(value: Value, path: ReadPath) -> Result<ContactRead, BadRecord> {
    let bad = |reason: &str, value: &Value| BadRecord {
        entity: EntityKind::Contact,
        reason: reason.to_owned(),
        raw: codec::pack(value),
    };
    let Value::Object(map) = &value else {
        return Err(bad("contact is not a JSON object", &value));
    };
    let id = match map.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id.clone(),
        _ => return Err(bad("contact has no usable id", &value)),
    };
    let date_updated_ms =
        map.get("dateUpdated").or_else(|| map.get("dateAdded")).and_then(Value::as_str).and_then(parse_timestamp_ms);
    let Value::Object(map) = value else { unreachable!("checked above") };
    Ok(ContactRead { id, date_updated_ms, record: normalize_contact(map), path })
}

fn search_after_of(item: &Value) -> Option<Value> {
    item.get("searchAfter").filter(|v| v.is_array()).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_contacts_are_refused_with_a_reason_and_no_personal_data() {
        let bad = parse_contact(serde_json::json!({"email": "ada@example.test"}), ReadPath::Search).unwrap_err();
        assert_eq!(bad.reason, "contact has no usable id");
        let bad = parse_contact(serde_json::json!(["x"]), ReadPath::Search).unwrap_err();
        assert_eq!(bad.reason, "contact is not a JSON object");
        let ok = parse_contact(serde_json::json!({"id": "c1", "dateAdded": "2026-01-01T00:00:00.000Z"}), ReadPath::Get)
            .unwrap();
        assert_eq!(ok.date_updated_ms, Some(1_767_225_600_000));
    }
}
