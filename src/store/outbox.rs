//! The outbox writer: one pending row per (connector, record), written in the same
//! transaction as the snapshot change it describes.

use sqlx::SqliteConnection;

use super::{StoreError, now_ms};
use crate::domain::diff::coalesce;
use crate::domain::{EntityKind, Operation, idempotency_key};

/// A change for one connector.
#[derive(Debug, Clone, Copy)]
pub struct NewChange<'a> {
    pub connector: &'a str,
    pub location_id: &'a str,
    pub entity: EntityKind,
    pub entity_id: &'a str,
    pub contact_id: Option<&'a str>,
    pub operation: Operation,
    /// `codec::pack` of the record as of the change.
    pub record: &'a [u8],
    pub content_hash: &'a [u8; 32],
    /// The record version (`contacts.revision` / `children.revision`) this change carries.
    pub revision: i64,
    pub changed_at: i64,
}

/// What [`enqueue`] does when the record already has a pending row for this connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueuePolicy {
    /// The sync's rule: the newer change folds into the pending row (latest state wins, a
    /// `created` the target never saw stays `created`, see [`coalesce`]).
    Fold,
    /// Dead-letter retry and replay: the pending row is newer than what they re-send, so it
    /// is left alone and nothing is added.
    KeepPending,
}

/// What [`enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Inserted,
    Folded,
    /// A pending row for the record exists and was left alone ([`EnqueuePolicy::KeepPending`]).
    AlreadyPending,
}

/// The one way into the outbox: inserts the change under `key` (default: the key of its
/// record version, [`crate::domain::idempotency_key`]), or applies `policy` when the record
/// already has a pending row. At most one pending row per (connector, record) exists at any
/// time, which gives per-record order by construction.
pub async fn enqueue(
    conn: &mut SqliteConnection,
    change: NewChange<'_>,
    policy: EnqueuePolicy,
    key: Option<&str>,
) -> Result<Enqueued, StoreError> {
    let now = now_ms();
    let key = key.map_or_else(
        || idempotency_key(change.connector, change.entity, change.entity_id, change.revision, change.content_hash, ""),
        str::to_owned,
    );
    let pending: Option<(i64, String)> = sqlx::query_as(
        "SELECT id, operation FROM outbox WHERE connector = ? AND entity = ? AND entity_id = ? AND status = 'pending' LIMIT 1",
    )
    .bind(change.connector)
    .bind(change.entity.as_str())
    .bind(change.entity_id)
    .fetch_optional(&mut *conn)
    .await?;
    match (pending, policy) {
        (Some(_), EnqueuePolicy::KeepPending) => Ok(Enqueued::AlreadyPending),
        (Some((id, operation)), EnqueuePolicy::Fold) => {
            let previous = Operation::parse(&operation).unwrap_or(Operation::Updated);
            let operation = coalesce(previous, change.operation);
            sqlx::query(
                "UPDATE outbox SET operation = ?, record = ?, content_hash = ?, revision = ?, idempotency_key = ?, \
                 changed_at = ?, updated_at = ?, contact_id = COALESCE(?, contact_id) WHERE id = ?",
            )
            .bind(operation.as_str())
            .bind(change.record)
            .bind(&change.content_hash[..])
            .bind(change.revision)
            .bind(key)
            .bind(change.changed_at)
            .bind(now)
            .bind(change.contact_id)
            .bind(id)
            .execute(&mut *conn)
            .await?;
            Ok(Enqueued::Folded)
        }
        (None, _) => {
            sqlx::query(
                "INSERT INTO outbox (connector, location_id, entity, entity_id, contact_id, operation, record, content_hash, \
                 revision, idempotency_key, status, attempts, next_attempt_at, changed_at, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?)",
            )
            .bind(change.connector)
            .bind(change.location_id)
            .bind(change.entity.as_str())
            .bind(change.entity_id)
            .bind(change.contact_id)
            .bind(change.operation.as_str())
            .bind(change.record)
            .bind(&change.content_hash[..])
            .bind(change.revision)
            .bind(key)
            .bind(now)
            .bind(change.changed_at)
            .bind(now)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(Enqueued::Inserted)
        }
    }
}

/// Sets a malformed input record aside so the rest of the page flows on.
pub async fn dead_letter_record(
    conn: &mut SqliteConnection,
    location_id: &str,
    entity: EntityKind,
    reason: &str,
    raw: &[u8],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO dead_letters (source, location_id, entity, record, reason, created_at) VALUES ('record', ?, ?, ?, ?, ?)",
    )
    .bind(location_id)
    .bind(entity.as_str())
    .bind(raw)
    .bind(reason)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("t.db"), std::time::Duration::from_secs(1)).await.unwrap();
        (dir, store)
    }

    fn change<'a>(id: &'a str, op: Operation, hash: &'a [u8; 32], revision: i64, record: &'a [u8]) -> NewChange<'a> {
        NewChange {
            connector: "webhook.a",
            location_id: "loc",
            entity: EntityKind::Contact,
            entity_id: id,
            contact_id: Some(id),
            operation: op,
            record,
            content_hash: hash,
            revision,
            changed_at: 1,
        }
    }

    async fn rows(store: &Store) -> Vec<(String, String, Vec<u8>, String)> {
        sqlx::query_as("SELECT entity_id, operation, record, idempotency_key FROM outbox ORDER BY id")
            .fetch_all(store.read_pool())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_newer_change_folds_into_the_pending_row_and_keeps_created() {
        let (_dir, store) = store().await;
        let mut tx = store.begin_write("test").await.unwrap();
        let fold = EnqueuePolicy::Fold;
        assert_eq!(
            enqueue(&mut tx, change("c1", Operation::Created, &[1; 32], 1, b"v1"), fold, None).await.unwrap(),
            Enqueued::Inserted
        );
        assert_eq!(
            enqueue(&mut tx, change("c1", Operation::Updated, &[2; 32], 2, b"v2"), fold, None).await.unwrap(),
            Enqueued::Folded
        );
        enqueue(&mut tx, change("c2", Operation::Created, &[3; 32], 1, b"x"), fold, None).await.unwrap();
        tx.commit().await.unwrap();
        let rows = rows(&store).await;
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.as_slice()), ("c1", "created", &b"v2"[..]));
        assert_eq!(rows[0].3, idempotency_key("webhook.a", EntityKind::Contact, "c1", 2, &[2; 32], ""));
    }

    #[tokio::test]
    async fn keep_pending_leaves_a_newer_pending_row_alone_and_an_explicit_key_is_kept() {
        let (_dir, store) = store().await;
        let mut tx = store.begin_write("test").await.unwrap();
        let keep = EnqueuePolicy::KeepPending;
        enqueue(&mut tx, change("c1", Operation::Updated, &[2; 32], 2, b"v2"), EnqueuePolicy::Fold, None)
            .await
            .unwrap();
        let again = enqueue(&mut tx, change("c1", Operation::Updated, &[1; 32], 1, b"v1"), keep, Some("old-key"))
            .await
            .unwrap();
        assert_eq!(again, Enqueued::AlreadyPending);
        assert_eq!(
            enqueue(&mut tx, change("c9", Operation::Updated, &[1; 32], 1, b"v1"), keep, Some("old-key"))
                .await
                .unwrap(),
            Enqueued::Inserted
        );
        tx.commit().await.unwrap();
        let rows = rows(&store).await;
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].2, b"v2");
        assert_eq!(rows[1].3, "old-key");
    }

    #[tokio::test]
    async fn a_delivered_row_is_not_reused() {
        let (_dir, store) = store().await;
        let mut tx = store.begin_write("test").await.unwrap();
        enqueue(&mut tx, change("c1", Operation::Created, &[1; 32], 1, b"v1"), EnqueuePolicy::Fold, None)
            .await
            .unwrap();
        sqlx::query("UPDATE outbox SET status = 'done'").execute(&mut *tx).await.unwrap();
        enqueue(&mut tx, change("c1", Operation::Updated, &[2; 32], 2, b"v2"), EnqueuePolicy::Fold, None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(rows(&store).await.len(), 2);
    }
}
