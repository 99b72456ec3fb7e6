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

use super::db::{Conn, on_db};
use super::{Store, StoreError, now_ms};
use crate::domain::child_content_key;
use crate::domain::normalize::Hash;

/// Which of two writes recorded in the same millisecond is the later one: on SQLite the key
/// begun later (`rowid`, insertion order); PostgreSQL has no insertion order, so there the row
/// last written by a later transaction (`xmin`, the id of the transaction that wrote the row
/// version, as a number).
fn latest_first(pg: bool) -> &'static str {
    if pg { "updated_at DESC, CAST(CAST(xmin AS TEXT) AS BIGINT) DESC" } else { "updated_at DESC, rowid DESC" }
}

/// The latest done content hash of a contact's own writes (`$1` location, `$2` contact).
fn own_write_sql(pg: bool) -> String {
    format!(
        "SELECT content_hash FROM writebacks WHERE location_id = $1 AND contact_id = $2 AND status = 'done' \
         AND content_hash IS NOT NULL AND kind NOT IN ('note', 'task', 'task_update', 'task_complete', 'note_update') \
         ORDER BY {} LIMIT 1",
        latest_first(pg)
    )
}

/// Whether `hash` is the content our most recent write to this contact produced. The sync
/// asks inside the page's write transaction, for updated contacts.
pub(crate) async fn is_own_write(
    conn: Conn<'_>,
    location: &str,
    contact_id: &str,
    hash: &Hash,
) -> Result<bool, sqlx::Error> {
    let latest: Option<Vec<u8>> = on_db!(conn, |c, pg| sqlx::query_scalar(&own_write_sql(pg))
        .bind(location)
        .bind(contact_id)
        .fetch_optional(c)
        .await)?;
    Ok(latest.is_some_and(|latest| latest.as_slice() == hash.as_slice()))
}

/// Whether a created note or task is one our write-back made: its id is a done write's
/// target, or, while the write is still pending (the sync read the child between GHL's answer
/// and our bookkeeping, or after a crash there), its content matches the pending write's.
pub(crate) async fn is_own_child(
    mut conn: Conn<'_>,
    location: &str,
    contact_id: &str,
    kind: &str,
    child_id: &str,
    record: &Map<String, Value>,
) -> Result<bool, sqlx::Error> {
    let by_id: Option<i64> = on_db!(conn.reborrow(), |c| {
        sqlx::query_scalar(
        "SELECT CAST(1 AS BIGINT) FROM writebacks WHERE location_id = $1 AND target_id = $2 AND kind = $3 AND status = 'done' LIMIT 1",
    )
    .bind(location)
    .bind(child_id)
    .bind(kind)
    .fetch_optional(c)
    .await
    })?;
    if by_id.is_some() {
        return Ok(true);
    }
    let text = |field: &str| record.get(field).and_then(Value::as_str);
    let content = match kind {
        "task" => child_content_key(text("title"), text("body")),
        _ => child_content_key(None, text("body")),
    };
    let by_content: Option<i64> = on_db!(conn, |c| {
        sqlx::query_scalar(
        "SELECT CAST(1 AS BIGINT) FROM writebacks WHERE location_id = $1 AND contact_id = $2 AND kind = $3 AND status = 'pending' \
         AND content_hash = $4 LIMIT 1",
    )
    .bind(location)
    .bind(contact_id)
    .bind(kind)
    .bind(&content[..])
    .fetch_optional(c)
    .await
    })?;
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
    conn: Conn<'_>,
    location: &str,
    kind: &str,
    child_id: &str,
    hash: Option<&Hash>,
) -> Result<bool, sqlx::Error> {
    let (updates, delete) = child_write_kinds(kind);
    match hash {
        Some(hash) => {
            let kinds = updates.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ");
            let sql = |pg| {
                format!(
                    "SELECT content_hash FROM writebacks WHERE location_id = $1 AND target_id = $2 \
                     AND status = 'done' AND content_hash IS NOT NULL AND kind IN ({kinds}) ORDER BY {} LIMIT 1",
                    latest_first(pg)
                )
            };
            let latest: Option<Vec<u8>> = on_db!(conn, |c, pg| sqlx::query_scalar(&sql(pg))
                .bind(location)
                .bind(child_id)
                .fetch_optional(c)
                .await)?;
            Ok(latest.is_some_and(|latest| latest.as_slice() == hash.as_slice()))
        }
        None => {
            let own: Option<i64> = on_db!(conn, |c| {
                sqlx::query_scalar(
                "SELECT CAST(1 AS BIGINT) FROM writebacks WHERE location_id = $1 AND target_id = $2 AND kind = $3 AND status = 'done' \
                 LIMIT 1",
            )
            .bind(location)
            .bind(child_id)
            .bind(delete)
            .fetch_optional(c)
            .await
            })?;
            Ok(own.is_some())
        }
    }
}

/// Whether our write-back deleted this contact (a rule's `ghl.delete_contact`).
pub(crate) async fn is_own_contact_delete(
    conn: Conn<'_>,
    location: &str,
    contact_id: &str,
) -> Result<bool, sqlx::Error> {
    let own: Option<i64> = on_db!(conn, |c| {
        sqlx::query_scalar(
        "SELECT CAST(1 AS BIGINT) FROM writebacks WHERE location_id = $1 AND target_id = $2 AND kind = 'contact_delete' \
         AND status = 'done' LIMIT 1",
    )
    .bind(location)
    .bind(contact_id)
    .fetch_optional(c)
    .await
    })?;
    Ok(own.is_some())
}

/// [`is_own_write`] on a read connection (tests and tools).
pub async fn was_own_write(
    store: &super::Store,
    location: &str,
    contact_id: &str,
    hash: &Hash,
) -> Result<bool, super::StoreError> {
    let latest: Option<Vec<u8>> = on_db!(store.db(), |pool, pg| sqlx::query_scalar(&own_write_sql(pg))
        .bind(location)
        .bind(contact_id)
        .fetch_optional(pool)
        .await)?;
    Ok(latest.is_some_and(|latest| latest.as_slice() == hash.as_slice()))
}

/// Whether `key` was ever begun (pending or done): a repeat of a keyed write tells "mine
/// from an earlier attempt" from "someone else's" with it.
pub async fn exists(store: &super::Store, key: &str) -> Result<bool, super::StoreError> {
    let found: Option<i64> = on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT CAST(1 AS BIGINT) FROM writebacks WHERE idempotency_key = $1"
    )
    .bind(key)
    .fetch_optional(pool)
    .await)?;
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
    let inserted = on_db!(tx.conn(), |c| sqlx::query(
        "INSERT INTO writebacks (idempotency_key, location_id, contact_id, kind, content_hash, status, created_at, \
         updated_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(write.key)
    .bind(write.location)
    .bind(write.contact_id)
    .bind(write.kind)
    .bind(write.content)
    .bind(now)
    .bind(now)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    let begun = if inserted == 1 {
        Begun::New
    } else {
        let row: Option<(String, Option<String>)> = on_db!(tx.conn(), |c| sqlx::query_as(
            "SELECT status, target_id FROM writebacks WHERE idempotency_key = $1"
        )
        .bind(write.key)
        .fetch_optional(c)
        .await)?;
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
    mark_done(tx.conn(), key, target).await?;
    tx.commit().await
}

/// Marks a contact create done: the new contact's id is both the row's contact and its target.
pub async fn finish_create(store: &Store, key: &str, contact_id: &str) -> Result<(), StoreError> {
    let mut tx = store.begin_write("writeback_finish").await?;
    on_db!(tx.conn(), |c| sqlx::query("UPDATE writebacks SET contact_id = $1 WHERE idempotency_key = $2")
        .bind(contact_id)
        .bind(key)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    mark_done(tx.conn(), key, Some(contact_id)).await?;
    tx.commit().await
}

async fn mark_done(conn: Conn<'_>, key: &str, target: Option<&str>) -> Result<(), StoreError> {
    on_db!(conn, |c| sqlx::query(
        "UPDATE writebacks SET status = 'done', target_id = COALESCE($1, target_id), updated_at = $2 \
         WHERE idempotency_key = $3",
    )
    .bind(target)
    .bind(now_ms())
    .bind(key)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
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
        on_db!(tx.conn(), |c| sqlx::query(
            "UPDATE writebacks SET content_hash = $1, contact_id = COALESCE(contact_id, $2), updated_at = $3 \
             WHERE idempotency_key = $4",
        )
        .bind(hash.as_slice())
        .bind(contact_id)
        .bind(now)
        .bind(key)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write<'a>(key: &'a str, kind: &'a str, content: Option<&'a [u8]>) -> NewWrite<'a> {
        NewWrite { key, location: "l", contact_id: Some("c"), kind, content }
    }

    #[tokio::test]
    async fn a_key_is_new_once_pending_until_finished_then_done_with_its_target() {
        for (_guard, store) in crate::store::testing::stores().await {
            a_key_is_new_once_pending_until_finished_then_done_with_its_target_on(&store).await;
        }
    }

    async fn a_key_is_new_once_pending_until_finished_then_done_with_its_target_on(store: &Store) {
        assert_eq!(begin(store, &write("k", "note", None)).await.unwrap(), Begun::New);
        assert_eq!(begin(store, &write("k", "note", None)).await.unwrap(), Begun::Pending);
        finish(store, "k", Some("n1")).await.unwrap();
        assert_eq!(begin(store, &write("k", "note", None)).await.unwrap(), Begun::Done(Some("n1".into())));
        // Finishing again without an id keeps the recorded one.
        finish(store, "k", None).await.unwrap();
        assert_eq!(begin(store, &write("k", "note", None)).await.unwrap(), Begun::Done(Some("n1".into())));

        let create = NewWrite { key: "c1", location: "l", contact_id: None, kind: "contact_create", content: None };
        assert_eq!(begin(store, &create).await.unwrap(), Begun::New);
        finish_create(store, "c1", "new-contact").await.unwrap();
        assert_eq!(begin(store, &create).await.unwrap(), Begun::Done(Some("new-contact".into())));
    }

    #[tokio::test]
    async fn own_writes_are_the_latest_recorded_content() {
        for (_guard, store) in crate::store::testing::stores().await {
            own_writes_are_the_latest_recorded_content_on(&store).await;
        }
    }

    async fn own_writes_are_the_latest_recorded_content_on(store: &Store) {
        let a: Hash = [1; 32];
        let b: Hash = [2; 32];
        assert!(!was_own_write(store, "l", "c", &a).await.unwrap());
        for (key, hash) in [("k1", a), ("k2", b)] {
            begin(store, &write(key, "contact_update", None)).await.unwrap();
            finish(store, key, Some("c")).await.unwrap();
            record_settled(store, "c", &[key.to_owned()], &hash).await.unwrap();
        }
        assert!(was_own_write(store, "l", "c", &b).await.unwrap());
        // An older state we wrote, come back later, is a user's change.
        assert!(!was_own_write(store, "l", "c", &a).await.unwrap());
        assert!(!was_own_write(store, "l", "other", &b).await.unwrap());
        // A write still pending (no answer from GHL recorded) is not ours yet.
        let c: Hash = [3; 32];
        begin(store, &write("k3", "contact_update", None)).await.unwrap();
        record_settled(store, "c", &["k3".to_owned()], &c).await.unwrap();
        assert!(!was_own_write(store, "l", "c", &c).await.unwrap());
        assert!(was_own_write(store, "l", "c", &b).await.unwrap());
    }

    #[tokio::test]
    async fn own_children_are_known_by_id_when_done_and_by_content_while_pending() {
        for (_guard, store) in crate::store::testing::stores().await {
            own_children_are_known_by_id_when_done_and_by_content_while_pending_on(&store).await;
        }
    }

    async fn own_children_are_known_by_id_when_done_and_by_content_while_pending_on(store: &Store) {
        let task = json!({"title": "Call Ada", "body": " Lusha lead "});
        let record = task.as_object().unwrap();
        let content = child_content_key(Some("Call Ada"), Some("Lusha lead"));
        begin(store, &write("k1", "task", Some(&content))).await.unwrap();
        begin(store, &write("k2", "note", Some(&content))).await.unwrap();
        finish(store, "k2", Some("n1")).await.unwrap();
        // Asked inside a write transaction, as the sync does.
        let mut tx = store.begin_write("test").await.unwrap();
        // Pending: matched by content, whatever id GHL gave it; another contact's or a
        // different task is the user's.
        assert!(is_own_child(tx.conn(), "l", "c", "task", "t9", record).await.unwrap());
        assert!(!is_own_child(tx.conn(), "l", "other", "task", "t9", record).await.unwrap());
        let other = json!({"title": "Call Ada", "body": "something else"});
        assert!(!is_own_child(tx.conn(), "l", "c", "task", "t9", other.as_object().unwrap()).await.unwrap());
        // Done: matched by id only.
        assert!(is_own_child(tx.conn(), "l", "c", "note", "n1", &Map::new()).await.unwrap());
        assert!(!is_own_child(tx.conn(), "l", "c", "note", "n2", &Map::new()).await.unwrap());
        // Child rows never count as the contact's own content.
        let hash: Hash = content;
        assert!(!is_own_write(tx.conn(), "l", "c", &hash).await.unwrap());
        tx.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn own_child_changes_and_contact_deletes_are_known_by_target() {
        for (_guard, store) in crate::store::testing::stores().await {
            own_child_changes_and_contact_deletes_are_known_by_target_on(&store).await;
        }
    }

    async fn own_child_changes_and_contact_deletes_are_known_by_target_on(store: &Store) {
        let (a, b): (Hash, Hash) = ([4; 32], [5; 32]);
        for (key, hash) in [("u1", a), ("u2", b)] {
            begin(store, &write(key, "task_update", None)).await.unwrap();
            finish(store, key, Some("t1")).await.unwrap();
            record_settled(store, "c", &[key.to_owned()], &hash).await.unwrap();
        }
        begin(store, &write("d1", "task_delete", None)).await.unwrap();
        finish(store, "d1", Some("t2")).await.unwrap();
        begin(store, &write("d2", "contact_delete", None)).await.unwrap();
        finish(store, "d2", Some("c9")).await.unwrap();
        let mut tx = store.begin_write("test").await.unwrap();
        // An update: only the content our latest update left is ours.
        assert!(is_own_child_change(tx.conn(), "l", "task", "t1", Some(&b)).await.unwrap());
        assert!(!is_own_child_change(tx.conn(), "l", "task", "t1", Some(&a)).await.unwrap());
        assert!(!is_own_child_change(tx.conn(), "l", "note", "t1", Some(&b)).await.unwrap());
        // A delete: ours when our write deleted that child.
        assert!(is_own_child_change(tx.conn(), "l", "task", "t2", None).await.unwrap());
        assert!(!is_own_child_change(tx.conn(), "l", "task", "t1", None).await.unwrap());
        assert!(is_own_contact_delete(tx.conn(), "l", "c9").await.unwrap());
        assert!(!is_own_contact_delete(tx.conn(), "l", "c").await.unwrap());
        tx.rollback().await.unwrap();
        assert!(exists(store, "d1").await.unwrap());
        assert!(!exists(store, "nope").await.unwrap());
    }
}
