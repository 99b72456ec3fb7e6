//! The `cursors` table: per location and stream, how far the sync has read (a `dateUpdated`
//! watermark for contacts, the last completed reconciliation), moved only in the transaction
//! that commits what was read.

use super::db::{Conn, on_db};
use super::{Store, StoreError, now_ms};

/// The contacts stream (search by `dateUpdated` ascending).
pub const CONTACTS: &str = "contacts";
/// The reconciliation "stream": its watermark is when the last one started.
pub const RECONCILE: &str = "reconcile";

/// The contacts watermark of `location` once its backfill completed (`None` before: the
/// stream reads from the beginning).
pub async fn contacts_watermark(store: &Store, location: &str) -> Result<Option<i64>, StoreError> {
    Ok(on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT watermark_ms FROM cursors WHERE location_id = $1 AND stream = $2 AND backfill_done = 1",
    )
    .bind(location)
    .bind(CONTACTS)
    .fetch_optional(pool)
    .await)?)
}

/// Moves a cursor forward (never back) inside the caller's page transaction. Only when it
/// moves is anything written: `updated_at` is when the cursor last moved.
pub(crate) async fn advance_in(
    conn: Conn<'_>,
    location: &str,
    stream: &str,
    watermark_ms: i64,
    backfill_done: bool,
    now: i64,
) -> Result<(), StoreError> {
    on_db!(conn, |c| {
        sqlx::query(
        "INSERT INTO cursors (location_id, stream, watermark_ms, backfill_done, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (location_id, stream) DO UPDATE SET \
         watermark_ms = CASE WHEN excluded.watermark_ms > cursors.watermark_ms \
           THEN excluded.watermark_ms ELSE cursors.watermark_ms END, \
         backfill_done = CASE WHEN excluded.backfill_done > cursors.backfill_done \
           THEN excluded.backfill_done ELSE cursors.backfill_done END, \
         updated_at = excluded.updated_at \
         WHERE excluded.watermark_ms > cursors.watermark_ms OR excluded.backfill_done > cursors.backfill_done",
    )
    .bind(location)
    .bind(stream)
    .bind(watermark_ms)
    .bind(i64::from(backfill_done))
    .bind(now)
    .execute(c)
    .await
    .map(|done| done.rows_affected())
    })?;
    Ok(())
}

/// When the last completed reconciliation of `location` started (epoch ms).
pub async fn last_reconcile(store: &Store, location: &str) -> Result<Option<i64>, StoreError> {
    Ok(on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT watermark_ms FROM cursors WHERE location_id = $1 AND stream = $2"
    )
    .bind(location)
    .bind(RECONCILE)
    .fetch_optional(pool)
    .await)?)
}

/// Records a completed reconciliation that started at `started`.
pub async fn set_reconciled(store: &Store, location: &str, started: i64) -> Result<(), StoreError> {
    let mut tx = store.begin_write("reconcile").await?;
    on_db!(tx.conn(), |c| {
        sqlx::query(
        "INSERT INTO cursors (location_id, stream, watermark_ms, backfill_done, updated_at) VALUES ($1, $2, $3, 1, $4) \
         ON CONFLICT (location_id, stream) DO UPDATE SET watermark_ms = excluded.watermark_ms, updated_at = excluded.updated_at",
    )
    .bind(location)
    .bind(RECONCILE)
    .bind(started)
    .bind(now_ms())
    .execute(c)
    .await
    .map(|done| done.rows_affected())
    })?;
    tx.commit().await
}
