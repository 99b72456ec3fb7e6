//! The `writebacks` table, echo-suppression side: whether a change the sync reads back is one
//! the daemon's own GHL write-back produced. The keyed-write bookkeeping (`begin` / `finish`)
//! lives in `writeback/` for now and moves here with the rest of the write-back SQL.

use serde_json::{Map, Value};
use sqlx::SqliteConnection;

use crate::domain::child_content_key;
use crate::domain::normalize::Hash;

/// Whether `hash` is the content our most recent write to this contact produced. The sync
/// asks inside the page's write transaction, for updated contacts.
pub(crate) async fn is_own_write(
    conn: &mut SqliteConnection,
    location: &str,
    contact_id: &str,
    hash: &Hash,
) -> Result<bool, sqlx::Error> {
    let latest: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT content_hash FROM writebacks WHERE location_id = ? AND contact_id = ? AND status = 'done' \
         AND content_hash IS NOT NULL AND kind NOT IN ('note', 'task') ORDER BY updated_at DESC, rowid DESC LIMIT 1",
    )
    .bind(location)
    .bind(contact_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(latest.is_some_and(|latest| latest.as_slice() == hash.as_slice()))
}

/// Whether a created note or task is one our write-back made: its id is a done write's
/// target, or, while the write is still pending (the sync read the child between GHL's answer
/// and our bookkeeping, or after a crash there), its content matches the pending write's.
pub(crate) async fn is_own_child(
    conn: &mut SqliteConnection,
    location: &str,
    contact_id: &str,
    kind: &str,
    child_id: &str,
    record: &Map<String, Value>,
) -> Result<bool, sqlx::Error> {
    let by_id: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM writebacks WHERE location_id = ? AND target_id = ? AND kind = ? AND status = 'done' LIMIT 1",
    )
    .bind(location)
    .bind(child_id)
    .bind(kind)
    .fetch_optional(&mut *conn)
    .await?;
    if by_id.is_some() {
        return Ok(true);
    }
    let text = |field: &str| record.get(field).and_then(Value::as_str);
    let content = match kind {
        "task" => child_content_key(text("title"), text("body")),
        _ => child_content_key(None, text("body")),
    };
    let by_content: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM writebacks WHERE location_id = ? AND contact_id = ? AND kind = ? AND status = 'pending' \
         AND content_hash = ? LIMIT 1",
    )
    .bind(location)
    .bind(contact_id)
    .bind(kind)
    .bind(&content[..])
    .fetch_optional(&mut *conn)
    .await?;
    Ok(by_content.is_some())
}

/// [`is_own_write`] on a read connection (tests and tools).
pub async fn was_own_write(
    store: &super::Store,
    location: &str,
    contact_id: &str,
    hash: &Hash,
) -> Result<bool, super::StoreError> {
    let mut conn = store.read_pool().acquire().await?;
    Ok(is_own_write(&mut conn, location, contact_id, hash).await?)
}
