//! The `cursors` table: per location and stream, how far the sync has read (a `dateUpdated`
//! watermark for contacts, the last completed reconciliation), moved only in the transaction
//! that commits what was read.

use sqlx::SqliteConnection;

use super::{Store, StoreError, now_ms};

/// The contacts stream (search by `dateUpdated` ascending).
pub const CONTACTS: &str = "contacts";
/// The reconciliation "stream": its watermark is when the last one started.
pub const RECONCILE: &str = "reconcile";

/// The contacts watermark of `location` once its backfill completed (`None` before: the
/// stream reads from the beginning).
pub async fn contacts_watermark(store: &Store, location: &str) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT watermark_ms FROM cursors WHERE location_id = ? AND stream = ? AND backfill_done = 1",
    )
    .bind(location)
    .bind(CONTACTS)
    .fetch_optional(store.read_pool())
    .await?)
}

/// Moves a cursor forward (never back) inside the caller's page transaction. Only when it
/// moves is anything written: `updated_at` is when the cursor last moved.
pub(crate) async fn advance_in(
    conn: &mut SqliteConnection,
    location: &str,
    stream: &str,
    watermark_ms: i64,
    backfill_done: bool,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO cursors (location_id, stream, watermark_ms, backfill_done, updated_at) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (location_id, stream) DO UPDATE SET watermark_ms = MAX(watermark_ms, excluded.watermark_ms), \
         backfill_done = MAX(backfill_done, excluded.backfill_done), updated_at = excluded.updated_at \
         WHERE excluded.watermark_ms > cursors.watermark_ms OR excluded.backfill_done > cursors.backfill_done",
    )
    .bind(location)
    .bind(stream)
    .bind(watermark_ms)
    .bind(i64::from(backfill_done))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// When the last completed reconciliation of `location` started (epoch ms).
pub async fn last_reconcile(store: &Store, location: &str) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar("SELECT watermark_ms FROM cursors WHERE location_id = ? AND stream = ?")
        .bind(location)
        .bind(RECONCILE)
        .fetch_optional(store.read_pool())
        .await?)
}

/// Records a completed reconciliation that started at `started`.
pub async fn set_reconciled(store: &Store, location: &str, started: i64) -> Result<(), StoreError> {
    let mut tx = store.begin_write("reconcile").await?;
    sqlx::query(
        "INSERT INTO cursors (location_id, stream, watermark_ms, backfill_done, updated_at) VALUES (?, ?, ?, 1, ?) \
         ON CONFLICT (location_id, stream) DO UPDATE SET watermark_ms = excluded.watermark_ms, updated_at = excluded.updated_at",
    )
    .bind(location)
    .bind(RECONCILE)
    .bind(started)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
