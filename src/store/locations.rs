//! The `locations` table: every GHL location the daemon knows (configured, or installed by
//! OAuth) and whether it may sync (`active`, `needs_reauth`, `uninstalled`, `disabled`).

use super::{Store, StoreError, now_ms};

/// The stored status of `location` (`None`: no row yet; a configured location gets one only
/// when something happens to it).
pub async fn status(store: &Store, location: &str) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT status FROM locations WHERE id = ?")
        .bind(location)
        .fetch_optional(store.read_pool())
        .await?)
}

/// Parks a location until someone re-authorises it (`reason` has no secrets).
pub async fn mark_needs_reauth(store: &Store, location: &str, reason: &str) -> Result<(), StoreError> {
    let mut tx = store.begin_write("location_status").await?;
    sqlx::query(
        "INSERT INTO locations (id, status, status_reason, updated_at) VALUES (?, 'needs_reauth', ?, ?) \
         ON CONFLICT (id) DO UPDATE SET status = 'needs_reauth', status_reason = excluded.status_reason, \
         updated_at = excluded.updated_at",
    )
    .bind(location)
    .bind(reason)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
