//! The contact read model: everything the store knows about one contact id, for the
//! admin-only contact view (`GET /contacts/{id}`, `server::pages`).
//!
//! Contract:
//! - Read only, in one read transaction on the read pool (one snapshot).
//! - This model **holds personal data** (the stored GHL record, tasks, notes and Lusha
//!   answers): only the admin-authorised view may render it; never log it.
//! - Stored records are decoded here; a record that does not decode is `None` (shown as
//!   such), never an error for the whole view.

use serde_json::Value;

use super::db::{Conn, Db, on_db};
use super::snapshot::with_locations_holding_contacts;
use super::{Store, StoreError, codec};

/// Everything about one contact id; [`ContactView::is_empty`] when the store has nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContactView {
    /// The snapshot per location (a contact id is normally in one location).
    pub snapshots: Vec<ContactSnapshot>,
    /// Outbox rows of the contact and of its tasks and notes, newest first.
    pub deliveries: Vec<Delivery>,
    pub dead_letters: Vec<DeadLetter>,
    /// Lusha's cached answers for the contact, newest first.
    pub lusha_answers: Vec<LushaAnswer>,
    /// Lusha prospecting leads that became this contact.
    pub lusha_leads: Vec<LushaLead>,
}

impl ContactView {
    /// Nothing to show: not in the snapshot, never queued, never dead-lettered.
    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty() && self.deliveries.is_empty() && self.dead_letters.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContactSnapshot {
    pub location_id: String,
    /// The stored record (None: it does not decode).
    pub record: Option<Value>,
    pub date_updated_ms: Option<i64>,
    pub children_synced_at: Option<i64>,
    pub first_seen_at: i64,
    pub updated_at: i64,
    /// Tasks and notes, by kind then newest first.
    pub children: Vec<ChildSnapshot>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChildSnapshot {
    pub kind: String,
    pub child_id: String,
    pub record: Option<Value>,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub connector: String,
    pub entity: String,
    pub entity_id: String,
    pub operation: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub changed_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetter {
    pub source: String,
    pub connector: Option<String>,
    pub entity: Option<String>,
    pub entity_id: Option<String>,
    pub operation: Option<String>,
    pub attempts: i64,
    pub reason: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LushaAnswer {
    pub location_id: String,
    pub outcome: String,
    pub lusha_id: Option<String>,
    pub reveal_set: String,
    pub credits: i64,
    /// 0: expired by a signal (refreshed by Lusha id on the next change).
    pub enriched_at: i64,
    pub written_at: Option<i64>,
    /// Lusha's answer (None: none stored, or it does not decode).
    pub result: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LushaLead {
    pub location_id: String,
    pub lead_id: String,
    pub search: String,
    pub action: Option<String>,
    pub credits: i64,
    pub updated_at: i64,
}

fn decode(record: Option<Vec<u8>>) -> Option<Value> {
    record.and_then(|bytes| codec::unpack(&bytes).ok())
}

/// Reads everything about contact `id`.
pub async fn read(store: &Store, id: &str) -> Result<ContactView, StoreError> {
    match store.db() {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let view = read_on(Db::Sqlite(&mut *tx), id).await?;
            tx.rollback().await?;
            Ok(view)
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            // One snapshot for the whole view (READ COMMITTED takes one per statement).
            sqlx::query(super::snapshot::REPEATABLE_READ).execute(&mut *tx).await?;
            let view = read_on(Db::Postgres(&mut *tx), id).await?;
            tx.rollback().await?;
            Ok(view)
        }
    }
}

/// [`read`] inside the read transaction of `conn`.
async fn read_on(mut conn: Conn<'_>, id: &str) -> Result<ContactView, StoreError> {
    Ok(ContactView {
        snapshots: snapshots(conn.reborrow(), id).await?,
        deliveries: deliveries(conn.reborrow(), id).await?,
        dead_letters: dead_letters(conn.reborrow(), id).await?,
        lusha_answers: lusha_answers(conn.reborrow(), id).await?,
        lusha_leads: lusha_leads(conn, id).await?,
    })
}

/// Every stored row of contact `$1`, in location order.
pub(super) const SNAPSHOTS: &str = with_locations_holding_contacts!(
    "SELECT c.location_id, c.record, c.date_updated_ms, c.children_synced_at, c.first_seen_at, c.updated_at \
     FROM held JOIN contacts c ON c.location_id = held.location_id WHERE c.contact_id = $1 \
     ORDER BY c.location_id"
);

type SnapshotTuple = (String, Vec<u8>, Option<i64>, Option<i64>, i64, i64);

async fn snapshots(mut conn: Conn<'_>, id: &str) -> Result<Vec<ContactSnapshot>, StoreError> {
    let rows: Vec<SnapshotTuple> = on_db!(conn.reborrow(), |c| sqlx::query_as(SNAPSHOTS).bind(id).fetch_all(c).await)?;
    let mut out = Vec::with_capacity(rows.len());
    for (location_id, record, date_updated_ms, children_synced_at, first_seen_at, updated_at) in rows {
        let children: Vec<(String, String, Vec<u8>, i64)> = on_db!(conn.reborrow(), |c| sqlx::query_as(
            "SELECT kind, child_id, record, updated_at FROM children WHERE location_id = $1 AND contact_id = $2 \
             ORDER BY kind, updated_at DESC",
        )
        .bind(&location_id)
        .bind(id)
        .fetch_all(c)
        .await)?;
        out.push(ContactSnapshot {
            location_id,
            record: decode(Some(record)),
            date_updated_ms,
            children_synced_at,
            first_seen_at,
            updated_at,
            children: children
                .into_iter()
                .map(|(kind, child_id, record, updated_at)| ChildSnapshot {
                    kind,
                    child_id,
                    record: decode(Some(record)),
                    updated_at,
                })
                .collect(),
        });
    }
    Ok(out)
}

type DeliveryTuple = (String, String, String, String, String, i64, Option<String>, i64, i64);

async fn deliveries(conn: Conn<'_>, id: &str) -> Result<Vec<Delivery>, StoreError> {
    let rows: Vec<DeliveryTuple> = on_db!(conn, |c| {
        sqlx::query_as(
        "SELECT connector, entity, entity_id, operation, status, attempts, last_error, changed_at, updated_at \
         FROM outbox WHERE contact_id = $1 OR (entity = 'contact' AND entity_id = $2) ORDER BY changed_at DESC, id DESC",
    )
    .bind(id)
    .bind(id)
    .fetch_all(c)
    .await
    })?;
    Ok(rows
        .into_iter()
        .map(|(connector, entity, entity_id, operation, status, attempts, last_error, changed_at, updated_at)| {
            Delivery { connector, entity, entity_id, operation, status, attempts, last_error, changed_at, updated_at }
        })
        .collect())
}

async fn dead_letters(conn: Conn<'_>, id: &str) -> Result<Vec<DeadLetter>, StoreError> {
    Ok(on_db!(conn, |c| sqlx::query_as(
        "SELECT source, connector, entity, entity_id, operation, attempts, reason, created_at FROM dead_letters \
         WHERE contact_id = $1 OR (entity = 'contact' AND entity_id = $2) ORDER BY created_at DESC, id DESC",
    )
    .bind(id)
    .bind(id)
    .fetch_all(c)
    .await)?)
}

type AnswerTuple = (String, String, Option<String>, String, i64, i64, Option<i64>, Option<Vec<u8>>);

async fn lusha_answers(conn: Conn<'_>, id: &str) -> Result<Vec<LushaAnswer>, StoreError> {
    let rows: Vec<AnswerTuple> = on_db!(conn, |c| {
        sqlx::query_as(
        "SELECT location_id, outcome, lusha_id, reveal_set, credits, enriched_at, written_at, result FROM lusha_cache \
         WHERE contact_id = $1 ORDER BY enriched_at DESC",
    )
    .bind(id)
    .fetch_all(c)
    .await
    })?;
    Ok(rows
        .into_iter()
        .map(|(location_id, outcome, lusha_id, reveal_set, credits, enriched_at, written_at, result)| LushaAnswer {
            location_id,
            outcome,
            lusha_id,
            reveal_set,
            credits,
            enriched_at,
            written_at,
            result: decode(result),
        })
        .collect())
}

async fn lusha_leads(conn: Conn<'_>, id: &str) -> Result<Vec<LushaLead>, StoreError> {
    let rows: Vec<(String, String, String, Option<String>, i64, i64)> = on_db!(conn, |c| sqlx::query_as(
        "SELECT location_id, lead_id, search, action, credits, updated_at FROM lusha_leads WHERE contact_id = $1 \
         ORDER BY updated_at DESC",
    )
    .bind(id)
    .fetch_all(c)
    .await)?;
    Ok(rows
        .into_iter()
        .map(|(location_id, lead_id, search, action, credits, updated_at)| LushaLead {
            location_id,
            lead_id,
            search,
            action,
            credits,
            updated_at,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::stores;

    #[tokio::test]
    async fn the_view_gathers_one_contact_from_every_table_on_both_backends() {
        for (_guard, store) in stores().await {
            the_view_gathers_one_contact(&store).await;
        }
    }

    async fn the_view_gathers_one_contact(store: &Store) {
        assert!(read(store, "c1").await.unwrap().is_empty());
        let record = codec::pack(&serde_json::json!({"id": "c1", "firstName": "Ada"}));
        let mut tx = store.begin_write("test").await.unwrap();
        let (hash, bad) = (vec![1u8; 32], b"not msgpack".to_vec());
        let statements: [(&str, Vec<&Vec<u8>>); 6] = [
            (
                "INSERT INTO contacts (location_id, contact_id, hash, record, date_updated_ms, children_synced_at, \
             first_seen_at, updated_at, revision) VALUES ('loc', 'c1', $1, $2, 10, NULL, 5, 20, 1)",
                vec![&hash, &record],
            ),
            (
                "INSERT INTO children (location_id, contact_id, kind, child_id, hash, record, revision, updated_at) \
             VALUES ('loc', 'c1', 'task', 't1', $1, $2, 1, 30), ('loc', 'c1', 'task', 't2', $1, $3, 1, 40), \
             ('loc', 'c1', 'note', 'n1', $1, $2, 1, 10), ('loc', 'c2', 'note', 'n2', $1, $2, 1, 10)",
                vec![&hash, &record, &bad],
            ),
            (
                "INSERT INTO outbox (connector, location_id, entity, entity_id, contact_id, operation, record, content_hash, \
             idempotency_key, status, attempts, next_attempt_at, last_error, changed_at, created_at, updated_at, revision) \
             VALUES ('webhook.a', 'loc', 'contact', 'c1', NULL, 'created', $2, $1, 'k1', 'done', 1, 0, NULL, 20, 20, 21, 1), \
             ('webhook.a', 'loc', 'task', 't1', 'c1', 'created', $2, $1, 'k2', 'failed', 3, 0, 'timeout', 30, 30, 31, 1), \
             ('webhook.a', 'loc', 'contact', 'c2', 'c2', 'created', $2, $1, 'k3', 'done', 1, 0, NULL, 40, 40, 41, 1)",
                vec![&hash, &record],
            ),
            (
                "INSERT INTO dead_letters (source, connector, location_id, entity, entity_id, contact_id, operation, \
             attempts, reason, created_at) VALUES ('delivery', 'webhook.a', 'loc', 'task', 't1', 'c1', 'created', 3, \
             'timeout', 50), ('record', NULL, 'loc', 'contact', 'c1', NULL, NULL, 0, 'unreadable', 60)",
                vec![],
            ),
            (
                "INSERT INTO lusha_cache (location_id, contact_id, identity_hash, reveal_set, lusha_id, found, outcome, \
             result, credits, enriched_at, written_at) VALUES ('loc', 'c1', 'h', 'phones', 'L1', 1, 'found', $1, 2, \
             70, NULL), ('loc', 'c1', 'h2', 'emails', NULL, 0, 'not_found', $2, 0, 80, 81)",
                vec![&record, &bad],
            ),
            (
                "INSERT INTO lusha_leads (location_id, lead_id, search, status, result, credits, contact_id, action, error, \
             first_seen, updated_at) VALUES ('loc', 'lead1', 's1', 'done', NULL, 1, 'c1', 'created', NULL, 1, 90)",
                vec![],
            ),
        ];
        for (sql, binds) in statements {
            on_db!(tx.conn(), |c| {
                let mut query = sqlx::query(sql);
                for value in binds {
                    query = query.bind(value);
                }
                query.execute(c).await.map(|done| done.rows_affected())
            })
            .unwrap();
        }
        tx.commit().await.unwrap();

        let view = read(store, "c1").await.unwrap();
        assert!(!view.is_empty());
        assert_eq!(view.snapshots.len(), 1);
        let snapshot = &view.snapshots[0];
        assert_eq!(snapshot.record.as_ref().unwrap()["firstName"], "Ada");
        assert_eq!(
            (snapshot.date_updated_ms, snapshot.children_synced_at, snapshot.first_seen_at, snapshot.updated_at),
            (Some(10), None, 5, 20)
        );
        let children: Vec<(&str, &str, bool)> =
            snapshot.children.iter().map(|c| (c.kind.as_str(), c.child_id.as_str(), c.record.is_some())).collect();
        assert_eq!(children, [("note", "n1", true), ("task", "t2", false), ("task", "t1", true)]);
        let deliveries: Vec<(&str, &str, Option<&str>)> = view
            .deliveries
            .iter()
            .map(|d| (d.entity_id.as_str(), d.status.as_str(), d.last_error.as_deref()))
            .collect();
        assert_eq!(deliveries, [("t1", "failed", Some("timeout")), ("c1", "done", None)]);
        let reasons: Vec<&str> = view.dead_letters.iter().map(|d| d.reason.as_str()).collect();
        assert_eq!(reasons, ["unreadable", "timeout"]);
        assert_eq!(view.dead_letters[1].connector.as_deref(), Some("webhook.a"));
        let answers: Vec<(&str, i64, Option<i64>, bool)> = view
            .lusha_answers
            .iter()
            .map(|a| (a.outcome.as_str(), a.credits, a.written_at, a.result.is_some()))
            .collect();
        assert_eq!(answers, [("not_found", 0, Some(81), false), ("found", 2, None, true)]);
        assert_eq!(
            view.lusha_leads,
            [LushaLead {
                location_id: "loc".into(),
                lead_id: "lead1".into(),
                search: "s1".into(),
                action: Some("created".into()),
                credits: 1,
                updated_at: 90,
            }]
        );
        assert!(read(store, "c3").await.unwrap().is_empty());
    }
}
