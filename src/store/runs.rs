//! The `runs` table (one row per sync pass or reconciliation, for `status` and the status
//! page) and `request_budget` (GHL requests per location and UTC day).

use super::{Store, StoreError, now_ms};
use crate::domain::normalize::format_timestamp_ms;

/// What a finished run reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunCounts {
    pub pages: u64,
    pub records_seen: u64,
    pub changes: u64,
    pub requests: u64,
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Opens a run row (`running`) and returns its id.
pub async fn start(store: &Store, location: &str, kind: &str) -> Result<i64, StoreError> {
    let mut tx = store.begin_write("run_start").await?;
    let id: i64 = sqlx::query_scalar("INSERT INTO runs (location_id, kind, started_at) VALUES (?, ?, ?) RETURNING id")
        .bind(location)
        .bind(kind)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Closes a run with its counts and outcome, and books its requests to today's budget.
pub async fn finish(
    store: &Store,
    id: i64,
    location: &str,
    counts: RunCounts,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let outcome = if error.is_some() { "failed" } else { "ok" };
    let mut tx = store.begin_write("run_finish").await?;
    sqlx::query(
        "UPDATE runs SET finished_at = ?, outcome = ?, pages = ?, records_seen = ?, changes = ?, requests = ?, error = ? \
         WHERE id = ?",
    )
    .bind(now_ms())
    .bind(outcome)
    .bind(int(counts.pages))
    .bind(int(counts.records_seen))
    .bind(int(counts.changes))
    .bind(int(counts.requests))
    .bind(error)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let day: String = format_timestamp_ms(now_ms()).chars().take(10).collect();
    sqlx::query(
        "INSERT INTO request_budget (location_id, day, requests) VALUES (?, ?, ?) \
         ON CONFLICT (location_id, day) DO UPDATE SET requests = requests + excluded.requests",
    )
    .bind(location)
    .bind(day)
    .bind(int(counts.requests))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
