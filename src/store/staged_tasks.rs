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

use super::db::{json_values, on_db};
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
    let row: Option<(i64, i64, String, Option<i64>, i64)> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT started_at, position, tail, done_at, restarts FROM task_stagings WHERE location_id = $1"
    )
    .bind(location)
    .fetch_optional(pool)
    .await)?;
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
    on_db!(tx.conn(), |c| sqlx::query("DELETE FROM staged_tasks WHERE location_id = $1")
        .bind(location)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    on_db!(tx.conn(), |c| {
        sqlx::query(
        "INSERT INTO task_stagings (location_id, started_at, position, tail, done_at, restarts) VALUES ($1, $2, 0, '[]', NULL, 0) \
         ON CONFLICT (location_id) DO UPDATE SET started_at = excluded.started_at, position = 0, tail = '[]', \
         done_at = NULL, restarts = 0",
    )
    .bind(location)
    .bind(started_at)
    .execute(c)
    .await
    .map(|done| done.rows_affected())
    })?;
    tx.commit().await?;
    Ok(Staging { started_at, position: 0, tail: Vec::new(), done_at: None, restarts: 0 })
}

/// Drops the location's staging and its tasks (the search is not available to it).
pub async fn discard(store: &Store, location: &str) -> Result<(), StoreError> {
    let mut tx = store.begin_write("task_staging").await?;
    for sql in ["DELETE FROM staged_tasks WHERE location_id = $1", "DELETE FROM task_stagings WHERE location_id = $1"] {
        on_db!(tx.conn(), |c| sqlx::query(sql).bind(location).execute(c).await.map(|done| done.rows_affected()))?;
    }
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
    let moved = on_db!(tx.conn(), |c| sqlx::query(
        "UPDATE task_stagings SET position = $1, tail = $2, done_at = $3, restarts = restarts + $4 \
         WHERE location_id = $5 AND started_at = $6",
    )
    .bind(i64::try_from(advance.position).unwrap_or(i64::MAX))
    .bind(&tail)
    .bind(advance.done.then(now_ms))
    .bind(i64::from(advance.restarted))
    .bind(location)
    .bind(staging_id)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    if moved == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    for (task, record) in tasks.iter().zip(&packed) {
        on_db!(tx.conn(), |c| sqlx::query(
            "INSERT INTO staged_tasks (location_id, task_id, contact_id, hash, record, staging_id) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (location_id, task_id) DO UPDATE SET contact_id = excluded.contact_id, hash = excluded.hash, \
             record = excluded.record, staging_id = excluded.staging_id",
        )
        .bind(location)
        .bind(&task.task.id)
        .bind(&task.contact_id)
        .bind(&task.task.hash[..])
        .bind(record)
        .bind(staging_id)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    }
    // Still a SQLite connection: dead_letters is ported separately (issue 21).
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
    let ids = super::db::json_list(contacts);
    let rows: Vec<String> = on_db!(store.db(), |pool, pg| sqlx::query_scalar(&format!(
        "SELECT contact_id FROM contacts WHERE location_id = $1 AND contact_id IN ({}) \
         AND COALESCE(children_synced_at, 0) < $3 AND COALESCE(children_due_at, 0) < $4",
        json_values(pg, 2)
    ))
    .bind(location)
    .bind(&ids)
    .bind(started_at)
    .bind(started_at)
    .fetch_all(pool)
    .await)?;
    Ok(rows.into_iter().collect())
}

/// The staged tasks of `contacts` (a contact without any has none: the staging covers the
/// whole location), normalised as a per-contact read.
pub async fn tasks_of(
    store: &Store,
    location: &str,
    contacts: &[String],
) -> Result<HashMap<String, Vec<ChildRecord>>, StoreError> {
    let ids = super::db::json_list(contacts);
    let rows: Vec<(String, String, Vec<u8>, Vec<u8>)> = on_db!(store.db(), |pool, pg| sqlx::query_as(&format!(
        "SELECT contact_id, task_id, hash, record FROM staged_tasks WHERE location_id = $1 \
         AND contact_id IN ({}) ORDER BY contact_id, task_id",
        json_values(pg, 2)
    ))
    .bind(location)
    .bind(&ids)
    .fetch_all(pool)
    .await)?;
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
    let n: i64 =
        on_db!(store.db(), |pool| sqlx::query_scalar("SELECT COUNT(*) FROM staged_tasks WHERE location_id = $1")
            .bind(location)
            .fetch_one(pool)
            .await)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Contacts of `location` whose children are due and that were marked due at or after `since`
/// (ms; 0: every due contact): those a staging started at `since` cannot serve.
pub async fn due_since(store: &Store, location: &str, since: i64) -> Result<u64, StoreError> {
    let n: i64 = on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT COUNT(*) FROM contacts WHERE location_id = $1 AND children_synced_at IS NULL \
         AND COALESCE(children_due_at, 0) >= $2",
    )
    .bind(location)
    .bind(since)
    .fetch_one(pool)
    .await)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::stores;

    fn task(contact: &str, id: &str, title: &str) -> StagedTask {
        let mut record = serde_json::Map::new();
        record.insert("id".into(), Value::from(id));
        record.insert("title".into(), Value::from(title));
        StagedTask {
            contact_id: contact.into(),
            task: ChildRecord { id: id.into(), hash: value_hash(&record), record },
        }
    }

    /// A contact of `loc` whose children were last read at `synced` and marked due at `due`.
    async fn contact(store: &Store, id: &str, synced: Option<i64>, due: Option<i64>) {
        let mut tx = store.begin_write("test").await.unwrap();
        on_db!(tx.conn(), |c| sqlx::query(
            "INSERT INTO contacts (location_id, contact_id, hash, record, children_synced_at, children_due_at, \
             first_seen_at, updated_at) VALUES ('loc', $1, $2, $3, $4, $5, 0, 0)"
        )
        .bind(id)
        .bind(&[0u8; 32][..])
        .bind(&b""[..])
        .bind(synced)
        .bind(due)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))
        .unwrap();
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn a_staging_pages_serves_eligible_contacts_and_starts_over_clean() {
        for (_guard, store) in stores().await {
            staging_pages(&store).await;
        }
    }

    async fn staging_pages(store: &Store) {
        assert_eq!(current(store, "loc").await.unwrap(), None);
        let staging = start(store, "loc").await.unwrap();
        assert_eq!(current(store, "loc").await.unwrap().as_ref(), Some(&staging));
        let page = |position: u64, tail: &[&str], done: bool, restarted: bool| PageAdvance {
            position,
            tail: tail.iter().map(|t| (*t).to_owned()).collect(),
            done,
            restarted,
        };
        let first = [task("c1", "t1", "a"), task("c2", "t2", "b")];
        assert!(
            commit_page(store, "loc", staging.started_at, &first, &[], &page(2, &["t2"], false, false)).await.unwrap()
        );
        // The overlap sees t2 again (changed): it replaces itself.
        let second = [task("c2", "t2", "b2"), task("c1", "t3", "c")];
        assert!(
            commit_page(store, "loc", staging.started_at, &second, &[], &page(3, &["t2", "t3"], true, true))
                .await
                .unwrap()
        );
        let now = current(store, "loc").await.unwrap().unwrap();
        assert_eq!((now.position, now.tail.as_slice(), now.restarts), (3, &["t2".to_owned(), "t3".to_owned()][..], 1));
        assert!(now.done_at.is_some());
        assert_eq!(count(store, "loc").await.unwrap(), 3);
        assert!(
            !commit_page(store, "loc", staging.started_at - 1, &first, &[], &page(9, &[], true, false)).await.unwrap(),
            "a staging no longer the location's is left alone"
        );

        let contacts: Vec<String> = ["c1", "c2", "c3"].iter().map(|c| (*c).to_owned()).collect();
        let tasks = tasks_of(store, "loc", &contacts).await.unwrap();
        let titles = |contact: &str| -> Vec<(String, Value)> {
            tasks[contact].iter().map(|t| (t.id.clone(), t.record["title"].clone())).collect()
        };
        assert_eq!(titles("c1"), [("t1".to_owned(), Value::from("a")), ("t3".to_owned(), Value::from("c"))]);
        assert_eq!(titles("c2"), [("t2".to_owned(), Value::from("b2"))]);
        assert_eq!(tasks["c2"][0].hash, task("c2", "t2", "b2").task.hash);
        assert!(!tasks.contains_key("c3"));
        assert!(tasks_of(store, "loc", &[]).await.unwrap().is_empty());

        let at = staging.started_at;
        contact(store, "c1", None, None).await;
        contact(store, "c2", Some(at + 1), None).await;
        contact(store, "c3", None, Some(at)).await;
        contact(store, "c4", Some(at - 1), Some(at - 1)).await;
        let all: Vec<String> = ["c1", "c2", "c3", "c4", "c9"].iter().map(|c| (*c).to_owned()).collect();
        let eligible = eligible(store, "loc", &all, at).await.unwrap();
        assert_eq!(eligible, HashSet::from(["c1".to_owned(), "c4".to_owned()]));
        assert_eq!(due_since(store, "loc", 0).await.unwrap(), 2, "c1 and c3 wait for their children");
        assert_eq!(due_since(store, "loc", at).await.unwrap(), 1);

        let again = start(store, "loc").await.unwrap();
        assert_eq!((again.position, count(store, "loc").await.unwrap()), (0, 0));
        discard(store, "loc").await.unwrap();
        assert_eq!(current(store, "loc").await.unwrap(), None);
    }
}
