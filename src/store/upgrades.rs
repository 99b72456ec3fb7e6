//! One-time data upgrades, run when the store opens, after the schema migrations. Each is
//! remembered in `store_upgrades` (migration 0013) once done, so it runs once; each is
//! idempotent, so one interrupted half-way (`kill -9`) simply runs again from the start.
//!
//! - `task_projection` (issue 22): tasks are now projected onto `TaskSchema`
//!   ([`crate::domain::normalize::TASK_FIELDS`]) so a task read per contact and by the
//!   location-wide search hash alike. Task records stored before kept every field GHL sent;
//!   left as they were, their hashes would differ from the next read of the same, unchanged
//!   task and every task would be delivered once more as `task.updated`. They are
//!   re-normalised with [`normalize_child`] and re-hashed with [`value_hash`], exactly as the
//!   sync computes a child's record and hash. Revisions stay: no change is delivered.

use serde_json::Value;

use super::db::on_db;
use super::{Store, StoreError, codec, now_ms};
use crate::domain::EntityKind;
use crate::domain::normalize::{normalize_child, value_hash};

/// The marker of the task projection upgrade in `store_upgrades`.
const TASK_PROJECTION: &str = "task_projection";
/// Task rows read and rewritten per write transaction.
const TASK_CHUNK: u32 = 1_000;

/// Runs the upgrades not done yet on this database.
pub(super) async fn run(store: &Store) -> Result<(), StoreError> {
    project_tasks(store, TASK_CHUNK).await
}

async fn is_done(store: &Store, name: &str) -> Result<bool, StoreError> {
    let found: Option<i64> =
        on_db!(store.db(), |pool| sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM store_upgrades WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await)?;
    Ok(found.is_some())
}

/// Counts of the task projection upgrade (no personal data).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Projected {
    /// Task rows read.
    checked: u64,
    /// Rows whose record (and so hash) changed.
    rewritten: u64,
    /// Rows whose record could not be decoded as a JSON object: left as they are (the next
    /// read of the task replaces them).
    unreadable: u64,
}

/// Re-normalises every stored task, `chunk` rows per write transaction, in primary key order;
/// the marker is written with the last chunk.
async fn project_tasks(store: &Store, chunk: u32) -> Result<(), StoreError> {
    if is_done(store, TASK_PROJECTION).await? {
        return Ok(());
    }
    let mut counts = Projected::default();
    // The last (location_id, child_id) of the previous chunk.
    let mut after: Option<(String, String)> = None;
    loop {
        let mut tx = store.begin_write("upgrade_task_projection").await?;
        let (location, child) = after.clone().unwrap_or_default();
        let rows: Vec<(String, String, Vec<u8>)> = on_db!(tx.conn(), |c| sqlx::query_as(
            "SELECT location_id, child_id, record FROM children \
             WHERE kind = 'task' AND (location_id, child_id) > ($1, $2) \
             ORDER BY location_id, child_id LIMIT $3",
        )
        .bind(&location)
        .bind(&child)
        .bind(i64::from(chunk))
        .fetch_all(c)
        .await)?;
        let read = rows.len();
        for (location_id, child_id, blob) in rows {
            counts.checked += 1;
            match codec::unpack(&blob) {
                Ok(Value::Object(stored)) => {
                    let projected = normalize_child(EntityKind::Task, stored.clone());
                    if projected != stored {
                        let hash = value_hash(&projected);
                        let record = codec::pack(&Value::Object(projected));
                        on_db!(tx.conn(), |c| sqlx::query(
                            "UPDATE children SET record = $1, hash = $2 \
                             WHERE location_id = $3 AND kind = 'task' AND child_id = $4",
                        )
                        .bind(&record)
                        .bind(&hash[..])
                        .bind(&location_id)
                        .bind(&child_id)
                        .execute(c)
                        .await
                        .map(|done| done.rows_affected()))?;
                        counts.rewritten += 1;
                    }
                }
                _ => counts.unreadable += 1,
            }
            after = Some((location_id, child_id));
        }
        if read < chunk as usize {
            on_db!(tx.conn(), |c| sqlx::query(
                "INSERT INTO store_upgrades (name, done_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
            )
            .bind(TASK_PROJECTION)
            .bind(now_ms())
            .execute(c)
            .await
            .map(|done| done.rows_affected()))?;
            tx.commit().await?;
            break;
        }
        tx.commit().await?;
    }
    tracing::info!(
        checked = counts.checked,
        rewritten = counts.rewritten,
        unreadable = counts.unreadable,
        "Stored task records projected onto the task schema (one-time upgrade)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("an object"),
        }
    }

    /// Stores a task row as the normalisation before the projection left it: every field.
    async fn store_old_task(store: &Store, id: &str, record: &Map<String, Value>) {
        let mut tx = store.begin_write("test").await.unwrap();
        let packed = codec::pack(&Value::Object(record.clone()));
        on_db!(tx.conn(), |c| sqlx::query(
            "INSERT INTO children (location_id, contact_id, kind, child_id, hash, record, revision, updated_at) \
             VALUES ('loc', 'c1', 'task', $1, $2, $3, 1, 0)",
        )
        .bind(id)
        .bind(&value_hash(record)[..])
        .bind(&packed)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))
        .unwrap();
        tx.commit().await.unwrap();
    }

    async fn stored(store: &Store, id: &str) -> (Vec<u8>, Map<String, Value>, i64) {
        let (hash, record, revision): (Vec<u8>, Vec<u8>, i64) = on_db!(store.db(), |pool| sqlx::query_as(
            "SELECT hash, record, revision FROM children WHERE kind = 'task' AND child_id = $1"
        )
        .bind(id)
        .fetch_one(pool)
        .await)
        .unwrap();
        (hash, obj(codec::unpack(&record).unwrap()), revision)
    }

    #[tokio::test]
    async fn old_task_records_are_projected_and_rehashed_once_across_chunks() {
        for (_guard, store) in crate::store::testing::stores().await {
            projected_once(&store).await;
        }
    }

    async fn projected_once(store: &Store) {
        let store = store.clone();
        // A fresh database is marked done on open.
        assert!(is_done(&store, TASK_PROJECTION).await.unwrap());
        let mut tx = store.begin_write("test").await.unwrap();
        on_db!(tx.conn(), |c| sqlx::query("DELETE FROM store_upgrades")
            .execute(c)
            .await
            .map(|done| done.rows_affected()))
        .unwrap();
        tx.commit().await.unwrap();
        assert!(!is_done(&store, TASK_PROJECTION).await.unwrap());

        let projected = |i: usize| {
            obj(json!({"id": format!("t{i}"), "title": "Call", "dueDate": "2026-01-01T00:00:00Z",
                       "completed": false, "contactId": "c1"}))
        };
        for i in 0..5 {
            let mut old = projected(i);
            if i != 2 {
                old.insert("locationId".into(), json!("loc"));
                old.insert("status".into(), json!("incompleted"));
            }
            store_old_task(&store, &format!("t{i}"), &old).await;
        }
        // Chunks of two: three transactions, the last one short.
        project_tasks(&store, 2).await.unwrap();
        assert!(is_done(&store, TASK_PROJECTION).await.unwrap());
        for i in 0..5 {
            let (hash, record, revision) = stored(&store, &format!("t{i}")).await;
            assert_eq!(record, projected(i), "t{i}");
            assert_eq!(hash, value_hash(&projected(i)).to_vec(), "t{i}");
            assert_eq!(revision, 1, "no change to deliver");
        }

        // Done: a task stored the old way now is left alone (the upgrade ran once).
        let mut late = projected(9);
        late.insert("extra".into(), json!(1));
        store_old_task(&store, "t9", &late).await;
        run(&store).await.unwrap();
        assert_eq!(stored(&store, "t9").await.1, late);
    }
}
