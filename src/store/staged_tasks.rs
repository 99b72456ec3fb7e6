//! The location's tasks as read by the location-wide task search (issue 22), staged so the
//! children backlog and the sweep can take a contact's tasks from here instead of one
//! `GET /contacts/:id/tasks` per contact, with flat memory: the engine pages through the
//! search and hands each page here; every page is one transaction that also moves the
//! staging's position, so a restart resumes where the last committed page ended.
//!
//! A staging is as fresh as its start: a contact may take its tasks from it only when its
//! children were last read, and it was last marked due, before the staging started
//! ([`eligible`]); everything else (hinted, changed contacts) keeps per-contact reads.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::dead_letters::dead_letter_record;
use super::snapshot::BadRecord;
use super::{Store, StoreError, codec, now_ms};
use crate::domain::diff::ChildRecord;
use crate::domain::normalize::{Hash, value_hash};

/// One location's staging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staging {
    /// Its id: when it started (ms).
    pub started_at: i64,
    /// Items of the search consumed so far.
    pub position: u64,
    /// Ids of the last items consumed (the next page's overlap anchor), in search order.
    pub tail: Vec<String>,
    /// When the last page was read (`None`: still paging).
    pub done_at: Option<i64>,
    /// Times the paging started over because an overlap found no anchor.
    pub restarts: u32,
}

/// One staged task: the contact it belongs to and its normalised record.
#[derive(Debug, Clone)]
pub struct StagedTask {
    pub contact_id: String,
    pub task: ChildRecord,
}

/// Where a committed page leaves the staging.
#[derive(Debug, Clone)]
pub struct PageAdvance {
    pub position: u64,
    pub tail: Vec<String>,
    pub done: bool,
    /// The page started the paging over (its overlap found no anchor).
    pub restarted: bool,
}

/// The location's staging, if any.
pub async fn current(store: &Store, location: &str) -> Result<Option<Staging>, StoreError> {
    let row: Option<(i64, i64, String, Option<i64>, i64)> =
        sqlx::query_as("SELECT started_at, position, tail, done_at, restarts FROM task_stagings WHERE location_id = ?")
            .bind(location)
            .fetch_optional(store.read_pool())
            .await?;
    Ok(row.map(|(started_at, position, tail, done_at, restarts)| Staging {
        started_at,
        position: u64::try_from(position).unwrap_or(0),
        tail: serde_json::from_str(&tail).unwrap_or_default(),
        done_at,
        restarts: u32::try_from(restarts).unwrap_or(0),
    }))
}

/// Starts a new staging for `location` (now), dropping the previous one and its tasks.
pub async fn start(store: &Store, location: &str) -> Result<Staging, StoreError> {
    let started_at = now_ms();
    let mut tx = store.begin_write("task_staging").await?;
    sqlx::query("DELETE FROM staged_tasks WHERE location_id = ?").bind(location).execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO task_stagings (location_id, started_at, position, tail, done_at, restarts) VALUES (?, ?, 0, '[]', NULL, 0) \
         ON CONFLICT (location_id) DO UPDATE SET started_at = excluded.started_at, position = 0, tail = '[]', \
         done_at = NULL, restarts = 0",
    )
    .bind(location)
    .bind(started_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Staging { started_at, position: 0, tail: Vec::new(), done_at: None, restarts: 0 })
}

/// Drops the location's staging and its tasks (the search is not available to it).
pub async fn discard(store: &Store, location: &str) -> Result<(), StoreError> {
    let mut tx = store.begin_write("task_staging").await?;
    sqlx::query("DELETE FROM staged_tasks WHERE location_id = ?").bind(location).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM task_stagings WHERE location_id = ?").bind(location).execute(&mut *tx).await?;
    tx.commit().await
}

/// Stores one page of the search (a task seen again in an overlap replaces itself: deduped by
/// id), its items that could not be read (dead letters), and the staging's new position, in
/// one transaction. Does nothing if the staging `staging_id` is no longer the location's.
pub async fn commit_page(
    store: &Store,
    location: &str,
    staging_id: i64,
    tasks: &[StagedTask],
    bad: &[BadRecord],
    advance: &PageAdvance,
) -> Result<bool, StoreError> {
    let packed: Vec<Vec<u8>> = tasks.iter().map(|t| codec::pack(&Value::Object(t.task.record.clone()))).collect();
    let tail = serde_json::to_string(&advance.tail).unwrap_or_else(|_| "[]".to_owned());
    let mut tx = store.begin_write("task_staging").await?;
    let moved = sqlx::query(
        "UPDATE task_stagings SET position = ?, tail = ?, done_at = ?, restarts = restarts + ? \
         WHERE location_id = ? AND started_at = ?",
    )
    .bind(i64::try_from(advance.position).unwrap_or(i64::MAX))
    .bind(&tail)
    .bind(advance.done.then(now_ms))
    .bind(i64::from(advance.restarted))
    .bind(location)
    .bind(staging_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if moved == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    for (task, record) in tasks.iter().zip(&packed) {
        sqlx::query(
            "INSERT INTO staged_tasks (location_id, task_id, contact_id, hash, record, staging_id) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (location_id, task_id) DO UPDATE SET contact_id = excluded.contact_id, hash = excluded.hash, \
             record = excluded.record, staging_id = excluded.staging_id",
        )
        .bind(location)
        .bind(&task.task.id)
        .bind(&task.contact_id)
        .bind(&task.task.hash[..])
        .bind(record)
        .bind(staging_id)
        .execute(&mut *tx)
        .await?;
    }
    for record in bad {
        dead_letter_record(tx.conn(), location, record.entity, &record.reason, &record.raw).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Those of `contacts` that may take their tasks from the staging that started at
/// `started_at`: their children were last read, and they were last marked due, before it.
pub async fn eligible(
    store: &Store,
    location: &str,
    contacts: &[String],
    started_at: i64,
) -> Result<HashSet<String>, StoreError> {
    let ids = serde_json::to_string(contacts).unwrap_or_else(|_| "[]".to_owned());
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT contact_id FROM contacts WHERE location_id = ? AND contact_id IN (SELECT value FROM json_each(?)) \
         AND COALESCE(children_synced_at, 0) < ? AND COALESCE(children_due_at, 0) < ?",
    )
    .bind(location)
    .bind(ids)
    .bind(started_at)
    .bind(started_at)
    .fetch_all(store.read_pool())
    .await?;
    Ok(rows.into_iter().collect())
}

/// The staged tasks of `contacts` (a contact without any has none: the staging covers the
/// whole location), normalised as a per-contact read.
pub async fn tasks_of(
    store: &Store,
    location: &str,
    contacts: &[String],
) -> Result<HashMap<String, Vec<ChildRecord>>, StoreError> {
    let ids = serde_json::to_string(contacts).unwrap_or_else(|_| "[]".to_owned());
    let rows: Vec<(String, String, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT contact_id, task_id, hash, record FROM staged_tasks WHERE location_id = ? \
         AND contact_id IN (SELECT value FROM json_each(?)) ORDER BY contact_id, task_id",
    )
    .bind(location)
    .bind(ids)
    .fetch_all(store.read_pool())
    .await?;
    let mut out: HashMap<String, Vec<ChildRecord>> = HashMap::new();
    for (contact_id, id, hash, record) in rows {
        let record = match codec::unpack(&record)? {
            Value::Object(record) => record,
            _ => serde_json::Map::new(),
        };
        let hash = Hash::try_from(hash.as_slice()).unwrap_or_else(|_| value_hash(&record));
        out.entry(contact_id).or_default().push(ChildRecord { id, hash, record });
    }
    Ok(out)
}

/// Staged tasks of `location` (tests, status).
pub async fn count(store: &Store, location: &str) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM staged_tasks WHERE location_id = ?")
        .bind(location)
        .fetch_one(store.read_pool())
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Contacts of `location` whose children are due and that were marked due at or after `since`
/// (ms; 0: every due contact): those a staging started at `since` cannot serve.
pub async fn due_since(store: &Store, location: &str, since: i64) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM contacts WHERE location_id = ? AND children_synced_at IS NULL \
         AND COALESCE(children_due_at, 0) >= ?",
    )
    .bind(location)
    .bind(since)
    .fetch_one(store.read_pool())
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}
