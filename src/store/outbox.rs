//! The outbox writer: one pending row per (connector, record), written in the same
//! transaction as the snapshot change it describes.

use sha2::{Digest, Sha256};
use sqlx::SqliteConnection;

use super::{StoreError, now_ms};
use crate::domain::diff::coalesce;
use crate::domain::{EntityKind, Operation};

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
    pub changed_at: i64,
}

/// `hex(sha256(connector | entity | id | hex(content_hash) | operation))`: the same change to
/// the same connector always carries the same key, so the target can drop redeliveries.
pub fn idempotency_key(
    connector: &str,
    entity: EntityKind,
    entity_id: &str,
    hash: &[u8],
    operation: Operation,
) -> String {
    let mut hasher = Sha256::new();
    for part in [
        connector.as_bytes(),
        entity.as_str().as_bytes(),
        entity_id.as_bytes(),
        hex(hash).as_bytes(),
        operation.as_str().as_bytes(),
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex(&hasher.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ignored = write!(out, "{byte:02x}");
    }
    out
}

/// Inserts the change, or folds it into the record's pending row (latest state wins).
pub async fn enqueue(conn: &mut SqliteConnection, change: NewChange<'_>) -> Result<(), StoreError> {
    let now = now_ms();
    let pending: Option<(i64, String)> = sqlx::query_as(
        "SELECT id, operation FROM outbox WHERE connector = ? AND entity = ? AND entity_id = ? AND status = 'pending' LIMIT 1",
    )
    .bind(change.connector)
    .bind(change.entity.as_str())
    .bind(change.entity_id)
    .fetch_optional(&mut *conn)
    .await?;
    match pending {
        Some((id, operation)) => {
            let previous = Operation::parse(&operation).unwrap_or(Operation::Updated);
            let operation = coalesce(previous, change.operation);
            let key =
                idempotency_key(change.connector, change.entity, change.entity_id, change.content_hash, operation);
            sqlx::query(
                "UPDATE outbox SET operation = ?, record = ?, content_hash = ?, idempotency_key = ?, changed_at = ?, \
                 updated_at = ?, contact_id = COALESCE(?, contact_id) WHERE id = ?",
            )
            .bind(operation.as_str())
            .bind(change.record)
            .bind(&change.content_hash[..])
            .bind(key)
            .bind(change.changed_at)
            .bind(now)
            .bind(change.contact_id)
            .bind(id)
            .execute(&mut *conn)
            .await?;
        }
        None => {
            let key = idempotency_key(
                change.connector,
                change.entity,
                change.entity_id,
                change.content_hash,
                change.operation,
            );
            sqlx::query(
                "INSERT INTO outbox (connector, location_id, entity, entity_id, contact_id, operation, record, content_hash, \
                 idempotency_key, status, attempts, next_attempt_at, changed_at, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?)",
            )
            .bind(change.connector)
            .bind(change.location_id)
            .bind(change.entity.as_str())
            .bind(change.entity_id)
            .bind(change.contact_id)
            .bind(change.operation.as_str())
            .bind(change.record)
            .bind(&change.content_hash[..])
            .bind(key)
            .bind(now)
            .bind(change.changed_at)
            .bind(now)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
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

    fn change<'a>(id: &'a str, op: Operation, hash: &'a [u8; 32], record: &'a [u8]) -> NewChange<'a> {
        NewChange {
            connector: "webhook.a",
            location_id: "loc",
            entity: EntityKind::Contact,
            entity_id: id,
            contact_id: Some(id),
            operation: op,
            record,
            content_hash: hash,
            changed_at: 1,
        }
    }

    #[tokio::test]
    async fn a_newer_change_replaces_the_pending_row_and_keeps_created() {
        let (_dir, store) = store().await;
        let mut conn = store.pool().acquire().await.unwrap();
        enqueue(&mut conn, change("c1", Operation::Created, &[1; 32], b"v1")).await.unwrap();
        enqueue(&mut conn, change("c1", Operation::Updated, &[2; 32], b"v2")).await.unwrap();
        enqueue(&mut conn, change("c2", Operation::Created, &[3; 32], b"x")).await.unwrap();
        let rows: Vec<(String, String, Vec<u8>, String)> =
            sqlx::query_as("SELECT entity_id, operation, record, idempotency_key FROM outbox ORDER BY id")
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.as_slice()), ("c1", "created", &b"v2"[..]));
        assert_eq!(rows[0].3, idempotency_key("webhook.a", EntityKind::Contact, "c1", &[2; 32], Operation::Created));
    }

    #[tokio::test]
    async fn a_delivered_row_is_not_reused() {
        let (_dir, store) = store().await;
        let mut conn = store.pool().acquire().await.unwrap();
        enqueue(&mut conn, change("c1", Operation::Created, &[1; 32], b"v1")).await.unwrap();
        sqlx::query("UPDATE outbox SET status = 'done'").execute(&mut *conn).await.unwrap();
        enqueue(&mut conn, change("c1", Operation::Updated, &[2; 32], b"v2")).await.unwrap();
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(count, 2);
    }

    #[test]
    fn idempotency_keys_differ_by_every_part() {
        let base = idempotency_key("a", EntityKind::Contact, "1", &[0; 32], Operation::Updated);
        assert_eq!(base, idempotency_key("a", EntityKind::Contact, "1", &[0; 32], Operation::Updated));
        assert_ne!(base, idempotency_key("b", EntityKind::Contact, "1", &[0; 32], Operation::Updated));
        assert_ne!(base, idempotency_key("a", EntityKind::Task, "1", &[0; 32], Operation::Updated));
        assert_ne!(base, idempotency_key("a", EntityKind::Contact, "2", &[0; 32], Operation::Updated));
        assert_ne!(base, idempotency_key("a", EntityKind::Contact, "1", &[1; 32], Operation::Updated));
        assert_ne!(base, idempotency_key("a", EntityKind::Contact, "1", &[0; 32], Operation::Deleted));
        assert_eq!(base.len(), 64);
    }
}
