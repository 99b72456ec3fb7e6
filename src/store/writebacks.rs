//! The `writebacks` table: one row per idempotency key of a write the daemon makes to GHL.
//!
//! Contract:
//! - **Keyed-write bookkeeping** (used by `writeback::WriteBack`): [`begin`] stores a key as
//!   `pending` before the GHL call and tells whether it is new, pending from an earlier attempt
//!   or already done; [`finish`] / [`finish_create`] mark it `done` with the GHL id after the
//!   call; [`record_settled`] stores the content hash the contact had after our writes. Each is
//!   its own short transaction taking plain data: the GHL call always happens between two
//!   transactions, never inside one.
//! - **Echo suppression** (used by the sync inside its page transaction): [`is_own_write`] and
//!   [`is_own_child`] say whether a change read back from GHL is one our write-back produced.

use serde_json::{Map, Value};
use sqlx::SqliteConnection;

use super::{Store, StoreError, now_ms};
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
         AND content_hash IS NOT NULL AND kind NOT IN ('note', 'task', 'task_update', 'task_complete', 'note_update') \
         ORDER BY updated_at DESC, rowid DESC LIMIT 1",
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

/// The write-back kinds that change a task or note in place, and those that delete one.
fn child_write_kinds(kind: &str) -> (&'static [&'static str], &'static str) {
    match kind {
        "task" => (&["task_update", "task_complete"], "task_delete"),
        _ => (&["note_update"], "note_delete"),
    }
}

/// Whether a task or note change the sync read back is one our write-back made: for an
/// update (`hash`), the child's content is what our latest done update of it left
/// (`record_settled` on the key); for a delete (`hash` = `None`), our write deleted it.
pub(crate) async fn is_own_child_change(
    conn: &mut SqliteConnection,
    location: &str,
    kind: &str,
    child_id: &str,
    hash: Option<&Hash>,
) -> Result<bool, sqlx::Error> {
    let (updates, delete) = child_write_kinds(kind);
    match hash {
        Some(hash) => {
            let sql = format!(
                "SELECT content_hash FROM writebacks WHERE location_id = ? AND target_id = ? AND status = 'done' \
                 AND content_hash IS NOT NULL AND kind IN ({}) ORDER BY updated_at DESC, rowid DESC LIMIT 1",
                updates.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ")
            );
            let latest: Option<Vec<u8>> =
                sqlx::query_scalar(&sql).bind(location).bind(child_id).fetch_optional(&mut *conn).await?;
            Ok(latest.is_some_and(|latest| latest.as_slice() == hash.as_slice()))
        }
        None => {
            let own: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM writebacks WHERE location_id = ? AND target_id = ? AND kind = ? AND status = 'done' LIMIT 1",
            )
            .bind(location)
            .bind(child_id)
            .bind(delete)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(own.is_some())
        }
    }
}

/// Whether our write-back deleted this contact (a rule's `ghl.delete_contact`).
pub(crate) async fn is_own_contact_delete(
    conn: &mut SqliteConnection,
    location: &str,
    contact_id: &str,
) -> Result<bool, sqlx::Error> {
    let own: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM writebacks WHERE location_id = ? AND target_id = ? AND kind = 'contact_delete' AND status = 'done' LIMIT 1",
    )
    .bind(location)
    .bind(contact_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(own.is_some())
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

/// Whether `key` was ever begun (pending or done): a repeat of a keyed write tells "mine
/// from an earlier attempt" from "someone else's" with it.
pub async fn exists(store: &super::Store, key: &str) -> Result<bool, super::StoreError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM writebacks WHERE idempotency_key = ?")
        .bind(key)
        .fetch_optional(store.read_pool())
        .await?;
    Ok(found.is_some())
}

/// A write about to be sent to GHL, as [`begin`] stores it.
#[derive(Debug, Clone, Copy)]
pub struct NewWrite<'a> {
    pub key: &'a str,
    pub location: &'a str,
    /// `None` for a contact create (the id is known after the call).
    pub contact_id: Option<&'a str>,
    /// `contact_update`, `tag_add`, `tag_remove`, `note`, `task`, `task_complete`, `contact_create`.
    pub kind: &'a str,
    /// For notes and tasks: the content key ([`child_content_key`]) the sync matches a
    /// created child by while the write is pending.
    pub content: Option<&'a [u8]>,
}

/// The state of a key when a write begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// New: stored as `pending` just now.
    New,
    /// Pending from an earlier attempt (which may or may not have reached GHL).
    Pending,
    /// Done before, with the GHL id it recorded: send nothing.
    Done(Option<String>),
}

/// Stores `write.key` as `pending` unless the key exists, in one transaction, and says what
/// state the key is in. Call it **before** the GHL call.
pub async fn begin(store: &Store, write: &NewWrite<'_>) -> Result<Begun, StoreError> {
    let now = now_ms();
    let mut tx = store.begin_write("writeback_begin").await?;
    let inserted = sqlx::query(
        "INSERT INTO writebacks (idempotency_key, location_id, contact_id, kind, content_hash, status, created_at, \
         updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(write.key)
    .bind(write.location)
    .bind(write.contact_id)
    .bind(write.kind)
    .bind(write.content)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let begun = if inserted == 1 {
        Begun::New
    } else {
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT status, target_id FROM writebacks WHERE idempotency_key = ?")
                .bind(write.key)
                .fetch_optional(&mut *tx)
                .await?;
        match row {
            Some((status, target)) if status == "done" => Begun::Done(target),
            _ => Begun::Pending,
        }
    };
    tx.commit().await?;
    Ok(begun)
}

/// Marks `key` done with the GHL id it wrote (`None` keeps the id already recorded). Call it
/// **after** the GHL call answered.
pub async fn finish(store: &Store, key: &str, target: Option<&str>) -> Result<(), StoreError> {
    let mut tx = store.begin_write("writeback_finish").await?;
    mark_done(&mut tx, key, target).await?;
    tx.commit().await
}

/// Marks a contact create done: the new contact's id is both the row's contact and its target.
pub async fn finish_create(store: &Store, key: &str, contact_id: &str) -> Result<(), StoreError> {
    let mut tx = store.begin_write("writeback_finish").await?;
    sqlx::query("UPDATE writebacks SET contact_id = ? WHERE idempotency_key = ?")
        .bind(contact_id)
        .bind(key)
        .execute(&mut *tx)
        .await?;
    mark_done(&mut tx, key, Some(contact_id)).await?;
    tx.commit().await
}

async fn mark_done(conn: &mut SqliteConnection, key: &str, target: Option<&str>) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE writebacks SET status = 'done', target_id = COALESCE(?, target_id), updated_at = ? \
         WHERE idempotency_key = ?",
    )
    .bind(target)
    .bind(now_ms())
    .bind(key)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records on every key of `keys` the content hash the contact had when read back after our
/// writes (what [`is_own_write`] compares against), in one transaction.
pub async fn record_settled(store: &Store, contact_id: &str, keys: &[String], hash: &Hash) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut tx = store.begin_write("writeback_settle").await?;
    for key in keys {
        sqlx::query(
            "UPDATE writebacks SET content_hash = ?, contact_id = COALESCE(contact_id, ?), updated_at = ? \
             WHERE idempotency_key = ?",
        )
        .bind(hash.as_slice())
        .bind(contact_id)
        .bind(now)
        .bind(key)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::store::temp_store as store;

    fn write<'a>(key: &'a str, kind: &'a str, content: Option<&'a [u8]>) -> NewWrite<'a> {
        NewWrite { key, location: "l", contact_id: Some("c"), kind, content }
    }

    #[tokio::test]
    async fn a_key_is_new_once_pending_until_finished_then_done_with_its_target() {
        let (_dir, store) = store().await;
        assert_eq!(begin(&store, &write("k", "note", None)).await.unwrap(), Begun::New);
        assert_eq!(begin(&store, &write("k", "note", None)).await.unwrap(), Begun::Pending);
        finish(&store, "k", Some("n1")).await.unwrap();
        assert_eq!(begin(&store, &write("k", "note", None)).await.unwrap(), Begun::Done(Some("n1".into())));
        // Finishing again without an id keeps the recorded one.
        finish(&store, "k", None).await.unwrap();
        assert_eq!(begin(&store, &write("k", "note", None)).await.unwrap(), Begun::Done(Some("n1".into())));

        let create = NewWrite { key: "c1", location: "l", contact_id: None, kind: "contact_create", content: None };
        assert_eq!(begin(&store, &create).await.unwrap(), Begun::New);
        finish_create(&store, "c1", "new-contact").await.unwrap();
        assert_eq!(begin(&store, &create).await.unwrap(), Begun::Done(Some("new-contact".into())));
    }

    #[tokio::test]
    async fn own_writes_are_the_latest_recorded_content() {
        let (_dir, store) = store().await;
        let a: Hash = [1; 32];
        let b: Hash = [2; 32];
        assert!(!was_own_write(&store, "l", "c", &a).await.unwrap());
        for (key, hash) in [("k1", a), ("k2", b)] {
            begin(&store, &write(key, "contact_update", None)).await.unwrap();
            finish(&store, key, Some("c")).await.unwrap();
            record_settled(&store, "c", &[key.to_owned()], &hash).await.unwrap();
        }
        assert!(was_own_write(&store, "l", "c", &b).await.unwrap());
        // An older state we wrote, come back later, is a user's change.
        assert!(!was_own_write(&store, "l", "c", &a).await.unwrap());
        assert!(!was_own_write(&store, "l", "other", &b).await.unwrap());
        // A write still pending (no answer from GHL recorded) is not ours yet.
        let c: Hash = [3; 32];
        begin(&store, &write("k3", "contact_update", None)).await.unwrap();
        record_settled(&store, "c", &["k3".to_owned()], &c).await.unwrap();
        assert!(!was_own_write(&store, "l", "c", &c).await.unwrap());
        assert!(was_own_write(&store, "l", "c", &b).await.unwrap());
    }

    #[tokio::test]
    async fn own_children_are_known_by_id_when_done_and_by_content_while_pending() {
        let (_dir, store) = store().await;
        let task = json!({"title": "Call Ada", "body": " Lusha lead "});
        let record = task.as_object().unwrap();
        let content = child_content_key(Some("Call Ada"), Some("Lusha lead"));
        begin(&store, &write("k1", "task", Some(&content))).await.unwrap();
        begin(&store, &write("k2", "note", Some(&content))).await.unwrap();
        finish(&store, "k2", Some("n1")).await.unwrap();
        let mut conn = store.read_pool().acquire().await.unwrap();
        // Pending: matched by content, whatever id GHL gave it; another contact's or a
        // different task is the user's.
        assert!(is_own_child(&mut conn, "l", "c", "task", "t9", record).await.unwrap());
        assert!(!is_own_child(&mut conn, "l", "other", "task", "t9", record).await.unwrap());
        let other = json!({"title": "Call Ada", "body": "something else"});
        assert!(!is_own_child(&mut conn, "l", "c", "task", "t9", other.as_object().unwrap()).await.unwrap());
        // Done: matched by id only.
        assert!(is_own_child(&mut conn, "l", "c", "note", "n1", &Map::new()).await.unwrap());
        assert!(!is_own_child(&mut conn, "l", "c", "note", "n2", &Map::new()).await.unwrap());
        // Child rows never count as the contact's own content.
        let hash: Hash = content;
        assert!(!is_own_write(&mut conn, "l", "c", &hash).await.unwrap());
    }
}
