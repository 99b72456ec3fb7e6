//! `runs`: one row per sync run, for `status`, the status page and the daily request counts.
//!
//! Contract:
//! - A run's row is written when it starts ([`start`]), **while it runs** ([`record_progress`],
//!   after each committed page or chunk) and when it ends ([`finish`]). The figures are the
//!   run's totals so far, so the status screens show a long first pass as it goes instead
//!   of "running, 0 changes" until it ends.
//! - The run's requests and 429s also count towards the location's daily counters
//!   (`store::daily`): each call adds only what grew since the run's previous call, in the
//!   same transaction that records it, so a run's requests are counted once however often
//!   it records progress (and a crash loses at most the last page's worth).
//! - Inside another store transaction (a page commit in the snapshot) use
//!   [`record_progress_in`]: no extra commit per page.

use super::daily::{self, DailyCounts};
use super::db::{Conn, on_db};
use super::{Store, StoreError, now_ms};

/// A run's totals so far (or at its end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunProgress {
    pub pages: u64,
    pub records_seen: u64,
    pub changes: u64,
    /// GHL requests made by the run.
    pub requests: u64,
    /// GHL 429 answers the run's requests received.
    pub rate_limited: u64,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Ok,
    Failed,
}

impl RunOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Failed => "failed",
        }
    }
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Records the start of a run of `kind` (contacts | children | reconcile | dirty) for
/// `location`; returns its id.
pub async fn start(store: &Store, location: &str, kind: &str) -> Result<i64, StoreError> {
    let mut tx = store.begin_write("run_start").await?;
    let id: i64 = on_db!(tx.conn(), |c| sqlx::query_scalar(
        "INSERT INTO runs (location_id, kind, started_at, replica) VALUES ($1, $2, $3, $4) RETURNING id"
    )
    .bind(location)
    .bind(kind)
    .bind(now_ms())
    .bind(super::replica_id())
    .fetch_one(c)
    .await)?;
    tx.commit().await?;
    Ok(id)
}

/// Records a running run's totals so far (after a committed page), in its own transaction.
pub async fn record_progress(store: &Store, run_id: i64, progress: &RunProgress) -> Result<(), StoreError> {
    let mut tx = store.begin_write("run_progress").await?;
    record_progress_in(tx.conn(), run_id, progress, now_ms()).await?;
    tx.commit().await
}

/// [`record_progress`] inside the caller's write transaction.
pub(crate) async fn record_progress_in(
    mut conn: Conn<'_>,
    run_id: i64,
    progress: &RunProgress,
    now: i64,
) -> Result<(), StoreError> {
    if count_growth(conn.reborrow(), run_id, progress, now).await?.is_none() {
        return Ok(());
    }
    write_totals(conn, run_id, progress, None, now).await
}

/// Records how a run ended with its final totals (and its error, which must carry no
/// personal data: ids and status codes only).
pub async fn finish(
    store: &Store,
    run_id: i64,
    progress: &RunProgress,
    outcome: RunOutcome,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let now = now_ms();
    let mut tx = store.begin_write("run_finish").await?;
    if count_growth(tx.conn(), run_id, progress, now).await?.is_some() {
        write_totals(tx.conn(), run_id, progress, Some((outcome, error)), now).await?;
    }
    tx.commit().await
}

/// Writes a run's totals (and, when it ended, its outcome and error).
async fn write_totals(
    conn: Conn<'_>,
    run_id: i64,
    progress: &RunProgress,
    ended: Option<(RunOutcome, Option<&str>)>,
    now: i64,
) -> Result<(), StoreError> {
    on_db!(conn, |c| {
        sqlx::query(
        "UPDATE runs SET pages = $1, records_seen = $2, changes = $3, requests = $4, rate_limited = $5, progress_at = $6, \
         finished_at = COALESCE($7, finished_at), outcome = COALESCE($8, outcome), error = COALESCE($9, error) \
         WHERE id = $10",
    )
    .bind(as_i64(progress.pages))
    .bind(as_i64(progress.records_seen))
    .bind(as_i64(progress.changes))
    .bind(as_i64(progress.requests))
    .bind(as_i64(progress.rate_limited))
    .bind(now)
    .bind(ended.map(|_| now))
    .bind(ended.map(|(outcome, _)| outcome.as_str()))
    .bind(ended.and_then(|(_, error)| error))
    .bind(run_id)
    .execute(c)
    .await
    .map(|done| done.rows_affected())
    })?;
    Ok(())
}

/// Adds what the run's requests and 429s grew by since its last record to the location's
/// daily counters. Returns the run's location (None: no such run, nothing to do).
async fn count_growth(
    mut conn: Conn<'_>,
    run_id: i64,
    progress: &RunProgress,
    now: i64,
) -> Result<Option<String>, StoreError> {
    let row: Option<(String, i64, i64)> = on_db!(conn.reborrow(), |c| sqlx::query_as(
        "SELECT location_id, requests, rate_limited FROM runs WHERE id = $1"
    )
    .bind(run_id)
    .fetch_optional(c)
    .await)?;
    let Some((location, requests, rate_limited)) = row else { return Ok(None) };
    let growth = DailyCounts {
        requests: (as_i64(progress.requests) - requests).max(0),
        rate_limited: (as_i64(progress.rate_limited) - rate_limited).max(0),
        webhooks: 0,
    };
    daily::add_in(conn, &location, &daily::utc_day(now), growth).await?;
    Ok(Some(location))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_counts_each_request_once_however_often_it_is_recorded() {
        for (_guard, store) in crate::store::testing::stores().await {
            progress_counts_each_request_once(&store).await;
        }
    }

    async fn progress_counts_each_request_once(store: &Store) {
        let store = store.clone();
        let today = daily::utc_day(now_ms());
        let run = start(&store, "loc", "contacts").await.unwrap();
        let mut progress = RunProgress { pages: 1, records_seen: 100, changes: 100, requests: 3, rate_limited: 1 };
        record_progress(&store, run, &progress).await.unwrap();
        record_progress(&store, run, &progress).await.unwrap();
        assert_eq!(daily::read(&store, "loc", &today).await.unwrap().requests, 3);
        progress.pages = 2;
        progress.requests = 7;
        record_progress(&store, run, &progress).await.unwrap();
        let (pages, requests, outcome): (i64, i64, String) =
            on_db!(store.db(), |pool| sqlx::query_as("SELECT pages, requests, outcome FROM runs WHERE id = $1")
                .bind(run)
                .fetch_one(pool)
                .await)
            .unwrap();
        assert_eq!((pages, requests, outcome.as_str()), (2, 7, "running"));
        progress.requests = 8;
        finish(&store, run, &progress, RunOutcome::Ok, None).await.unwrap();
        let counts = daily::read(&store, "loc", &today).await.unwrap();
        assert_eq!((counts.requests, counts.rate_limited), (8, 1));
        // A run that never recorded progress counts its requests at the end, as before.
        let other = start(&store, "loc", "reconcile").await.unwrap();
        let end = RunProgress { requests: 5, ..RunProgress::default() };
        finish(&store, other, &end, RunOutcome::Failed, Some("GHL answered 500")).await.unwrap();
        assert_eq!(daily::read(&store, "loc", &today).await.unwrap().requests, 13);
        // An unknown run is ignored.
        record_progress(&store, 9_999, &progress).await.unwrap();
    }
}
