//! Webhook hints: `dirty_contacts` (contacts a GHL webhook named, waiting to be re-read) and
//! the `webhook_inbox` they arrive through. A hint is only a nudge: the sync re-reads the
//! contact from GHL, so order, duplicates and lost hints do not matter.

use super::{Store, StoreError};

/// A contact a webhook named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// Empty for a child event that named no contact (a `TaskCreate` without `contactId`).
    pub contact_id: String,
    pub created_at: i64,
}

/// Hints of `location` older than `ready_before` (debounced), oldest first.
pub async fn ready(store: &Store, location: &str, ready_before: i64, limit: u32) -> Result<Vec<Hint>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT contact_id, created_at FROM dirty_contacts WHERE location_id = ? AND created_at <= ? \
         ORDER BY created_at LIMIT ?",
    )
    .bind(location)
    .bind(ready_before)
    .bind(i64::from(limit))
    .fetch_all(store.read_pool())
    .await?;
    Ok(rows.into_iter().map(|(contact_id, created_at)| Hint { contact_id, created_at }).collect())
}

/// Drops a handled hint; a newer one for the same contact (arrived meanwhile) stays.
pub async fn drop_handled(store: &Store, location: &str, hint: &Hint) -> Result<(), StoreError> {
    let mut tx = store.begin_write("hint_done").await?;
    sqlx::query("DELETE FROM dirty_contacts WHERE location_id = ? AND contact_id = ? AND created_at <= ?")
        .bind(location)
        .bind(&hint.contact_id)
        .bind(hint.created_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Locations that have hints waiting.
pub async fn locations_with_hints(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT DISTINCT location_id FROM dirty_contacts").fetch_all(store.read_pool()).await?)
}

/// Whether hints are waiting for `location`.
pub async fn has_hints(store: &Store, location: &str) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM dirty_contacts WHERE location_id = ? LIMIT 1")
        .bind(location)
        .fetch_optional(store.read_pool())
        .await?;
    Ok(found.is_some())
}
