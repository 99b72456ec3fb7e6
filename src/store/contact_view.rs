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

type SnapshotTuple = (String, Vec<u8>, Option<i64>, Option<i64>, i64, i64);

async fn snapshots(mut conn: Conn<'_>, id: &str) -> Result<Vec<ContactSnapshot>, StoreError> {
    let rows: Vec<SnapshotTuple> = on_db!(conn.reborrow(), |c| sqlx::query_as(
        "SELECT location_id, record, date_updated_ms, children_synced_at, first_seen_at, updated_at \
         FROM contacts WHERE contact_id = $1 ORDER BY location_id",
    )
    .bind(id)
    .fetch_all(c)
    .await)?;
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
    let rows: Vec<DeliveryTuple> = on_db!(conn, |c| sqlx::query_as(
        "SELECT connector, entity, entity_id, operation, status, attempts, last_error, changed_at, updated_at \
         FROM outbox WHERE contact_id = $1 OR (entity = 'contact' AND entity_id = $2) ORDER BY changed_at DESC, id DESC",
    )
    .bind(id)
    .bind(id)
    .fetch_all(c)
    .await)?;
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
    let rows: Vec<AnswerTuple> = on_db!(conn, |c| sqlx::query_as(
        "SELECT location_id, outcome, lusha_id, reveal_set, credits, enriched_at, written_at, result FROM lusha_cache \
         WHERE contact_id = $1 ORDER BY enriched_at DESC",
    )
    .bind(id)
    .fetch_all(c)
    .await)?;
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
