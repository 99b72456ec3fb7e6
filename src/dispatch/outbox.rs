//! The dispatcher's side of the outbox contract (see the brief / ARCHITECTURE.md): due rows,
//! outcomes recorded only against the content that was delivered, dead letters, and the
//! re-enqueue used by `dlq retry` and `replay`.

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::connectors::Delivery;
use crate::domain::{EntityKind, Operation};
use crate::store::{StoreError, codec};

/// One pending outbox row as read by the dispatcher.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub connector: String,
    pub location_id: String,
    pub entity: String,
    pub entity_id: String,
    pub contact_id: Option<String>,
    pub operation: String,
    pub record: Option<Vec<u8>>,
    pub content_hash: Vec<u8>,
    pub idempotency_key: String,
    pub attempts: i64,
    pub changed_at: i64,
}

const COLUMNS: &str = "id, connector, location_id, entity, entity_id, contact_id, operation, record, content_hash, \
                       idempotency_key, attempts, changed_at";

fn row_from(row: &sqlx::sqlite::SqliteRow) -> Result<OutboxRow, sqlx::Error> {
    Ok(OutboxRow {
        id: row.try_get("id")?,
        connector: row.try_get("connector")?,
        location_id: row.try_get("location_id")?,
        entity: row.try_get("entity")?,
        entity_id: row.try_get("entity_id")?,
        contact_id: row.try_get("contact_id")?,
        operation: row.try_get("operation")?,
        record: row.try_get("record")?,
        content_hash: row.try_get("content_hash")?,
        idempotency_key: row.try_get("idempotency_key")?,
        attempts: row.try_get("attempts")?,
        changed_at: row.try_get("changed_at")?,
    })
}

/// Pending rows of `connector` due at `now`, oldest id first.
pub async fn due(pool: &SqlitePool, connector: &str, now: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM outbox WHERE connector = ? AND status = 'pending' AND next_attempt_at <= ? \
         ORDER BY id LIMIT ?"
    );
    let rows = sqlx::query(&sql)
        .bind(connector)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
    Ok(rows.iter().map(row_from).collect::<Result<_, _>>()?)
}

/// Why a row cannot become a [`Delivery`].
pub fn to_delivery(row: &OutboxRow, contact: Option<Value>) -> Result<Delivery, String> {
    let entity = EntityKind::parse(&row.entity).ok_or_else(|| format!("unknown entity {:?}", row.entity))?;
    let operation = Operation::parse(&row.operation).ok_or_else(|| format!("unknown operation {:?}", row.operation))?;
    let record = match &row.record {
        Some(bytes) => codec::unpack(bytes).map_err(|e| e.to_string())?,
        None => Value::Null,
    };
    Ok(Delivery {
        id: row.id,
        location_id: row.location_id.clone(),
        entity,
        entity_id: row.entity_id.clone(),
        contact_id: row.contact_id.clone(),
        operation,
        changed_at_ms: row.changed_at,
        idempotency_key: row.idempotency_key.clone(),
        record,
        contact,
        attempt: u32::try_from(row.attempts + 1).unwrap_or(u32::MAX),
    })
}

/// The current snapshot of a contact, when the store has one.
pub async fn contact_snapshot(
    pool: &SqlitePool,
    location_id: &str,
    contact_id: &str,
) -> Result<Option<Value>, StoreError> {
    let blob: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT record FROM contacts WHERE location_id = ? AND contact_id = ?")
            .bind(location_id)
            .bind(contact_id)
            .fetch_optional(pool)
            .await?;
    // A corrupt snapshot only loses the parent context; the change itself still goes out.
    Ok(blob.and_then(|b| codec::unpack(&b).ok()))
}

/// Marks a row done, only if it still holds the delivered content. Returns whether it did.
pub async fn mark_done(
    tx: &mut SqliteConnection,
    row: &OutboxRow,
    note: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE outbox SET status = 'done', attempts = attempts + 1, last_error = ?, updated_at = ? \
         WHERE id = ? AND content_hash = ? AND status = 'pending'",
    )
    .bind(note)
    .bind(now)
    .bind(row.id)
    .bind(&row.content_hash)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Schedules another attempt, only if the row still holds the content that failed.
pub async fn reschedule(
    tx: &mut SqliteConnection,
    row: &OutboxRow,
    next_attempt_at: i64,
    error: &str,
    now: i64,
) -> Result<bool, StoreError> {
    hold(tx, row, next_attempt_at, error, now, 1).await
}

/// Holds a row back until `next_attempt_at` without counting an attempt (the connector
/// parked it), only if it still holds the content that was handed over.
pub async fn park(
    tx: &mut SqliteConnection,
    row: &OutboxRow,
    next_attempt_at: i64,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    hold(tx, row, next_attempt_at, reason, now, 0).await
}

async fn hold(
    tx: &mut SqliteConnection,
    row: &OutboxRow,
    next_attempt_at: i64,
    reason: &str,
    now: i64,
    attempts: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE outbox SET attempts = attempts + ?, next_attempt_at = ?, last_error = ?, updated_at = ? \
         WHERE id = ? AND content_hash = ? AND status = 'pending'",
    )
    .bind(attempts)
    .bind(next_attempt_at)
    .bind(reason)
    .bind(now)
    .bind(row.id)
    .bind(&row.content_hash)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves a row to dead letters (`source = 'delivery'`), only if it still holds the content
/// that failed; a newer change in the row stays pending and goes out next.
pub async fn dead_letter(
    tx: &mut SqliteConnection,
    row: &OutboxRow,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let deleted = sqlx::query("DELETE FROM outbox WHERE id = ? AND content_hash = ? AND status = 'pending'")
        .bind(row.id)
        .bind(&row.content_hash)
        .execute(&mut *tx)
        .await?;
    if deleted.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO dead_letters (source, connector, location_id, entity, entity_id, contact_id, operation, record, \
         content_hash, idempotency_key, attempts, reason, changed_at, created_at) \
         VALUES ('delivery', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&row.connector)
    .bind(&row.location_id)
    .bind(&row.entity)
    .bind(&row.entity_id)
    .bind(&row.contact_id)
    .bind(&row.operation)
    .bind(&row.record)
    .bind(&row.content_hash)
    .bind(&row.idempotency_key)
    .bind(row.attempts + 1)
    .bind(reason)
    .bind(row.changed_at)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(true)
}

/// Deletes delivered rows last touched before `before`.
pub async fn prune(pool: &SqlitePool, before: i64) -> Result<u64, StoreError> {
    let done =
        sqlx::query("DELETE FROM outbox WHERE status = 'done' AND updated_at < ?").bind(before).execute(pool).await?;
    Ok(done.rows_affected())
}

/// Pending rows and the oldest pending `created_at`, per connector.
pub async fn depth(pool: &SqlitePool) -> Result<Vec<(String, i64, Option<i64>)>, StoreError> {
    let rows = sqlx::query(
        "SELECT connector, COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE status = 'pending' GROUP BY connector",
    )
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push((row.try_get("connector")?, row.try_get("n")?, row.try_get("oldest")?));
    }
    Ok(out)
}

/// Dead letters per connector.
pub async fn dead_letter_counts(pool: &SqlitePool) -> Result<Vec<(String, i64)>, StoreError> {
    let rows =
        sqlx::query("SELECT COALESCE(connector, '') AS connector, COUNT(*) AS n FROM dead_letters GROUP BY connector")
            .fetch_all(pool)
            .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push((row.try_get("connector")?, row.try_get("n")?));
    }
    Ok(out)
}

/// `hex(sha256(connector|entity|entity_id|hex(content_hash)|operation))`, per the outbox contract.
pub fn idempotency_key(connector: &str, entity: &str, entity_id: &str, content_hash: &[u8], operation: &str) -> String {
    let text = format!(
        "{connector}|{entity}|{entity_id}|{}|{operation}",
        crate::connectors::webhook::client::hex(content_hash)
    );
    crate::connectors::webhook::client::hex(&Sha256::digest(text.as_bytes()))
}

/// A change to put into the outbox (dlq retry, replay, tests).
#[derive(Debug, Clone)]
pub struct NewRow<'a> {
    pub connector: &'a str,
    pub location_id: &'a str,
    pub entity: &'a str,
    pub entity_id: &'a str,
    pub contact_id: Option<&'a str>,
    pub operation: &'a str,
    /// Packed record (`codec::pack`).
    pub record: Option<&'a [u8]>,
    pub content_hash: &'a [u8],
    pub changed_at: i64,
}

/// What [`enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Inserted,
    /// A pending row for the same record exists and carries the latest state: left alone.
    AlreadyPending,
}

/// Inserts a pending row unless one is already pending for (connector, entity, entity_id):
/// the contract allows one pending row per record, and the pending one is newer.
pub async fn enqueue(tx: &mut SqliteConnection, row: &NewRow<'_>, now: i64) -> Result<Enqueued, StoreError> {
    let pending: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM outbox WHERE connector = ? AND entity = ? AND entity_id = ? AND status = 'pending' LIMIT 1",
    )
    .bind(row.connector)
    .bind(row.entity)
    .bind(row.entity_id)
    .fetch_optional(&mut *tx)
    .await?;
    if pending.is_some() {
        return Ok(Enqueued::AlreadyPending);
    }
    let key = idempotency_key(row.connector, row.entity, row.entity_id, row.content_hash, row.operation);
    sqlx::query(
        "INSERT INTO outbox (connector, location_id, entity, entity_id, contact_id, operation, record, content_hash, \
         idempotency_key, status, attempts, next_attempt_at, changed_at, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?)",
    )
    .bind(row.connector)
    .bind(row.location_id)
    .bind(row.entity)
    .bind(row.entity_id)
    .bind(row.contact_id)
    .bind(row.operation)
    .bind(row.record)
    .bind(row.content_hash)
    .bind(key)
    .bind(now)
    .bind(row.changed_at)
    .bind(now)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(Enqueued::Inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_follow_the_contract() {
        let hash = [0xabu8; 32];
        let key = idempotency_key("webhook.crm", "contact", "c1", &hash, "updated");
        let expected = {
            let text = format!("webhook.crm|contact|c1|{}|updated", "ab".repeat(32));
            crate::connectors::webhook::client::hex(&Sha256::digest(text.as_bytes()))
        };
        assert_eq!(key, expected);
        assert_eq!(key.len(), 64);
        assert_ne!(key, idempotency_key("webhook.crm", "contact", "c1", &hash, "created"));
    }
}
