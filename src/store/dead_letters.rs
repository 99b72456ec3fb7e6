//! The `dead_letters` table: changes a connector refused or gave up on (`source = 'delivery'`)
//! and input records that could not be read (`source = 'record'`), set aside with the reason.
//! All of its SQL lives here.
//!
//! Contract:
//! - A delivery dead letter keeps everything needed to send the same record version again:
//!   record, content hash, `revision` and the idempotency key of its first delivery.
//! - [`retry`] puts that version back under its **stored** key, so a target that saw it before
//!   recognises it; a newer pending row for the record wins and nothing is added
//!   ([`EnqueuePolicy::KeepPending`]). It never regresses a target: when a newer version was
//!   delivered since, the current version is enqueued instead (with its own key).
//! - Every write is one short transaction opened here; reads use the read pool.

use super::db::{Conn, on_db};
use super::outbox::{self, EnqueuePolicy, Enqueued, NewChange, RowVersion};
use super::{Store, StoreError, now_ms, snapshot};
use crate::domain::{EntityKind, Operation};

/// One dead letter, without its record (which holds personal data).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    /// `delivery` (a connector refused or gave up) or `record` (unreadable input).
    pub source: String,
    /// Why it was set aside (no personal data).
    pub reason: String,
    /// Delivery attempts made (0 for records).
    pub attempts: i64,
    /// When it was set aside (epoch ms).
    pub created_at: i64,
    /// The connector that refused it (delivery dead letters only).
    pub connector: Option<String>,
    pub location_id: Option<String>,
    /// `contact`, `task` or `note`.
    pub entity: Option<String>,
    pub entity_id: Option<String>,
    pub contact_id: Option<String>,
    /// `created`, `updated`, `completed` or `deleted` (delivery dead letters only).
    pub operation: Option<String>,
    /// The record version (delivery dead letters written since revisions exist).
    pub revision: Option<i64>,
    /// When the change happened (epoch ms; delivery dead letters only).
    pub changed_at: Option<i64>,
}

const COLUMNS: &str = "id, source, connector, location_id, entity, entity_id, contact_id, operation, revision, attempts, \
                       reason, changed_at, created_at";

/// Dead letters (of one connector, or all), oldest first.
pub async fn list(store: &Store, connector: Option<&str>, limit: i64) -> Result<Vec<DeadLetter>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE (CAST($1 AS TEXT) IS NULL OR connector = $1) ORDER BY id LIMIT $2"
    );
    Ok(on_db!(store.db(), |pool| sqlx::query_as(&sql).bind(connector).bind(limit).fetch_all(pool).await)?)
}

/// One dead letter and its packed record (`codec::pack`), if it exists.
pub async fn get(store: &Store, id: i64) -> Result<Option<(DeadLetter, Option<Vec<u8>>)>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1");
    let letter: Option<DeadLetter> =
        on_db!(store.db(), |pool| sqlx::query_as(&sql).bind(id).fetch_optional(pool).await)?;
    let Some(letter) = letter else {
        return Ok(None);
    };
    let record: Option<Option<Vec<u8>>> =
        on_db!(store.db(), |pool| sqlx::query_scalar("SELECT record FROM dead_letters WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await)?;
    let record = record.flatten();
    Ok(Some((letter, record)))
}

/// Ids of delivery dead letters (of one connector, or all), oldest first.
pub async fn delivery_ids(store: &Store, connector: Option<&str>) -> Result<Vec<i64>, StoreError> {
    Ok(on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT id FROM dead_letters WHERE source = 'delivery' AND (CAST($1 AS TEXT) IS NULL OR connector = $1) \
         ORDER BY id",
    )
    .bind(connector)
    .fetch_all(pool)
    .await)?)
}

/// Dead letters per connector (per source for those without one), by name.
pub async fn counts(store: &Store) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(on_db!(store.db(), |pool| {
        sqlx::query_as(
        "SELECT COALESCE(connector, source), COUNT(*) FROM dead_letters GROUP BY COALESCE(connector, source) ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    })?)
}

/// Deletes a dead letter. Returns whether it existed.
pub async fn remove(store: &Store, id: i64) -> Result<bool, StoreError> {
    let mut tx = store.begin_write("dlq_drop").await?;
    let done = on_db!(tx.conn(), |c| sqlx::query("DELETE FROM dead_letters WHERE id = $1")
        .bind(id)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    tx.commit().await?;
    Ok(done == 1)
}

/// What [`retry`] did with one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    /// Its version is back in the outbox under the key of its first delivery.
    Requeued,
    /// A newer version was delivered since: the current version was enqueued instead (under
    /// its own key), so the target never goes back to the old content.
    RequeuedCurrent,
    /// A newer change for the record is already pending and wins: nothing was added.
    NewerPending,
    /// A newer version was delivered and the record is gone from the snapshot: nothing to send.
    Gone,
    /// Not a delivery dead letter (or one missing what is needed to send it): left alone.
    NotADelivery,
}

/// The parts of a delivery dead letter needed to send its version again.
#[derive(sqlx::FromRow)]
struct Stored {
    source: String,
    connector: Option<String>,
    location_id: Option<String>,
    entity: Option<String>,
    entity_id: Option<String>,
    contact_id: Option<String>,
    operation: Option<String>,
    record: Option<Vec<u8>>,
    content_hash: Option<Vec<u8>>,
    revision: Option<i64>,
    idempotency_key: Option<String>,
    changed_at: Option<i64>,
}

/// `dlq retry ID`: puts a delivery dead letter's version back into the outbox (see the module
/// contract) and deletes the dead letter, in one transaction. `None`: no dead letter `id`.
pub async fn retry(store: &Store, id: i64) -> Result<Option<Retried>, StoreError> {
    let mut tx = store.begin_write("dlq_retry").await?;
    let stored: Option<Stored> = on_db!(tx.conn(), |c| sqlx::query_as(
        "SELECT source, connector, location_id, entity, entity_id, contact_id, operation, record, content_hash, \
         revision, idempotency_key, changed_at FROM dead_letters WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(c)
    .await)?;
    let Some(stored) = stored else {
        tx.rollback().await?;
        return Ok(None);
    };
    let Some(outcome) = requeue(tx.conn(), &stored).await? else {
        tx.rollback().await?;
        return Ok(Some(Retried::NotADelivery));
    };
    on_db!(tx.conn(), |c| sqlx::query("DELETE FROM dead_letters WHERE id = $1")
        .bind(id)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    tx.commit().await?;
    Ok(Some(outcome))
}

/// Enqueues the dead letter's version (or the current one); `None` when it is not a delivery.
async fn requeue(mut conn: Conn<'_>, stored: &Stored) -> Result<Option<Retried>, StoreError> {
    let (
        "delivery",
        Some(connector),
        Some(location_id),
        Some(entity),
        Some(entity_id),
        Some(operation),
        Some(hash),
        Some(key),
    ) = (
        stored.source.as_str(),
        stored.connector.as_deref(),
        stored.location_id.as_deref(),
        stored.entity.as_deref().and_then(EntityKind::parse),
        stored.entity_id.as_deref(),
        stored.operation.as_deref().and_then(Operation::parse),
        stored.content_hash.as_deref().and_then(|h| <&[u8; 32]>::try_from(h).ok()),
        stored.idempotency_key.as_deref(),
    )
    else {
        return Ok(None);
    };
    let revision = stored.revision.unwrap_or(0);
    let changed_at = stored.changed_at.unwrap_or_else(now_ms);
    let keep = EnqueuePolicy::KeepPending;
    if outbox::newer_delivered(conn.reborrow(), connector, entity, entity_id, revision, changed_at).await? {
        // Re-sending the old content would take the target back: send what is current now.
        let Some(current) = snapshot::record_version_on(conn.reborrow(), location_id, entity, entity_id).await? else {
            return Ok(Some(Retried::Gone));
        };
        let change = current.change(connector, Operation::Updated);
        return Ok(Some(match outbox::enqueue(conn.reborrow(), change, keep, None).await? {
            Enqueued::AlreadyPending => Retried::NewerPending,
            Enqueued::Inserted | Enqueued::Folded => Retried::RequeuedCurrent,
        }));
    }
    let change = NewChange {
        connector,
        location_id,
        entity,
        entity_id,
        contact_id: stored.contact_id.as_deref(),
        operation,
        record: stored.record.as_deref().unwrap_or_default(),
        content_hash: hash,
        revision,
        changed_at,
    };
    Ok(Some(match outbox::enqueue(conn, change, keep, Some(key)).await? {
        Enqueued::AlreadyPending => Retried::NewerPending,
        Enqueued::Inserted | Enqueued::Folded => Retried::Requeued,
    }))
}

/// Moves a pending outbox row to dead letters (`source = 'delivery'`, with its revision and
/// key), only while it still holds `row`'s content; a newer change in the row stays pending.
pub(super) async fn move_from_outbox(
    mut conn: Conn<'_>,
    row: &RowVersion,
    reason: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let copied = on_db!(conn.reborrow(), |c| {
        sqlx::query(
        "INSERT INTO dead_letters (source, connector, location_id, entity, entity_id, contact_id, operation, record, \
         content_hash, revision, idempotency_key, attempts, reason, changed_at, created_at) \
         SELECT 'delivery', connector, location_id, entity, entity_id, contact_id, operation, record, content_hash, \
         revision, idempotency_key, attempts + 1, CAST($1 AS TEXT), changed_at, CAST($2 AS BIGINT) FROM outbox \
         WHERE id = $3 AND content_hash = $4 AND status = 'pending'",
    )
    .bind(reason)
    .bind(now)
    .bind(row.id)
    .bind(&row.content_hash)
    .execute(c)
    .await
    .map(|done| done.rows_affected())
    })?;
    if copied != 1 {
        return Ok(false);
    }
    on_db!(conn, |c| sqlx::query("DELETE FROM outbox WHERE id = $1")
        .bind(row.id)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    Ok(true)
}

/// Sets a malformed input record aside (`source = 'record'`) so the rest of the page flows on.
pub async fn dead_letter_record(
    conn: Conn<'_>,
    location_id: &str,
    entity: EntityKind,
    reason: &str,
    raw: &[u8],
) -> Result<(), StoreError> {
    on_db!(conn, |c| sqlx::query(
        "INSERT INTO dead_letters (source, location_id, entity, record, reason, created_at) \
         VALUES ('record', $1, $2, $3, $4, $5)",
    )
    .bind(location_id)
    .bind(entity.as_str())
    .bind(raw)
    .bind(reason)
    .bind(now_ms())
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::outbox::{DeliveryOutcome, Verdict, due, enqueue_all, record_outcomes};

    #[tokio::test]
    async fn retry_leaves_record_dead_letters_alone_and_knows_unknown_ids() {
        for (_guard, store) in crate::store::testing::stores().await {
            retry_leaves_record_dead_letters_alone(&store).await;
        }
    }

    async fn retry_leaves_record_dead_letters_alone(store: &Store) {
        let mut tx = store.begin_write("test").await.unwrap();
        dead_letter_record(tx.conn(), "loc", EntityKind::Contact, "no id", b"{}").await.unwrap();
        tx.commit().await.unwrap();
        let letter = list(store, None, 10).await.unwrap().remove(0);
        assert_eq!(retry(store, letter.id).await.unwrap(), Some(Retried::NotADelivery));
        assert_eq!(list(store, None, 10).await.unwrap().len(), 1, "left alone");
        assert!(delivery_ids(store, None).await.unwrap().is_empty());
        assert_eq!(retry(store, 999).await.unwrap(), None);
        assert_eq!(counts(store).await.unwrap(), vec![("record".to_owned(), 1)]);
        assert!(remove(store, letter.id).await.unwrap());
        assert!(!remove(store, letter.id).await.unwrap());
    }

    #[tokio::test]
    async fn a_retried_version_goes_back_under_its_stored_key_once() {
        for (_guard, store) in crate::store::testing::stores().await {
            a_retried_version_goes_back_under_its_stored_key(&store).await;
        }
    }

    async fn a_retried_version_goes_back_under_its_stored_key(store: &Store) {
        let change = NewChange {
            connector: "webhook.a",
            location_id: "loc",
            entity: EntityKind::Contact,
            entity_id: "c1",
            contact_id: Some("c1"),
            operation: Operation::Created,
            record: b"v1",
            content_hash: &[1; 32],
            revision: 1,
            changed_at: 1,
        };
        enqueue_all(store, "test", &[(change, Some("first-key"))], EnqueuePolicy::Fold).await.unwrap();
        let row = due(store, "webhook.a", i64::MAX, 10, None).await.unwrap().remove(0).unwrap();
        let dead = DeliveryOutcome { row: row.version(), verdict: Verdict::Dead("refused".into()) };
        record_outcomes(store, "test", &[dead], crate::store::now_ms()).await.unwrap();
        let id = delivery_ids(store, Some("webhook.a")).await.unwrap()[0];
        assert_eq!(retry(store, id).await.unwrap(), Some(Retried::Requeued));
        let again = due(store, "webhook.a", i64::MAX, 10, None).await.unwrap().remove(0).unwrap();
        assert_eq!(
            (again.idempotency_key.as_str(), again.revision, again.operation),
            ("first-key", 1, Operation::Created)
        );
        assert!(list(store, None, 10).await.unwrap().is_empty());
    }
}
