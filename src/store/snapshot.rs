//! The snapshot tables (`contacts`, `children`): the last state of every record the sync has
//! seen, with its content hash and `revision` (one per content change).

// ---- Reads for delivery: the dispatcher's parent context, `dlq retry` and `replay`. ----

use serde_json::Value;
use sqlx::SqliteConnection;

use super::outbox::NewChange;
use super::{Store, StoreError, codec};
use crate::domain::{EntityKind, Operation};

/// The current snapshot of a contact, unpacked, when the store has a readable one (a task or
/// note delivery carries it as context; a corrupt one only loses that context).
pub async fn contact_record(store: &Store, location_id: &str, contact_id: &str) -> Result<Option<Value>, StoreError> {
    let blob: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT record FROM contacts WHERE location_id = ? AND contact_id = ?")
            .bind(location_id)
            .bind(contact_id)
            .fetch_optional(store.read_pool())
            .await?;
    Ok(blob.and_then(|b| codec::unpack(&b).ok()))
}

/// The current version of one snapshot record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordVersion {
    pub location_id: String,
    pub entity: EntityKind,
    pub entity_id: String,
    /// The contact itself, or the task's / note's contact.
    pub contact_id: String,
    pub revision: i64,
    pub content_hash: [u8; 32],
    /// `codec::pack` of the record.
    pub record: Vec<u8>,
    /// `dateUpdated` for contacts (when known), else when the snapshot last changed (epoch ms).
    pub changed_at: i64,
}

impl RecordVersion {
    /// This version as an outbox change for `connector` (its key: the key of this version).
    pub fn change<'a>(&'a self, connector: &'a str, operation: Operation) -> NewChange<'a> {
        NewChange {
            connector,
            location_id: &self.location_id,
            entity: self.entity,
            entity_id: &self.entity_id,
            contact_id: Some(&self.contact_id),
            operation,
            record: &self.record,
            content_hash: &self.content_hash,
            revision: self.revision,
            changed_at: self.changed_at,
        }
    }
}

/// Which snapshot records [`record_versions`] returns (every field narrows; none: all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionFilter {
    pub location: Option<String>,
    /// One contact and its tasks and notes.
    pub contact: Option<String>,
    /// Only records changed at or after this time (epoch ms).
    pub since_ms: Option<i64>,
}

/// Current versions of the snapshot records `filter` selects: contacts, then tasks and notes.
pub async fn record_versions(store: &Store, filter: &VersionFilter) -> Result<Vec<RecordVersion>, StoreError> {
    let mut conn = store.read_pool().acquire().await?;
    let mut versions = select_versions(&mut conn, filter, None, &[EntityKind::Contact]).await?;
    versions.extend(select_versions(&mut conn, filter, None, &[EntityKind::Task, EntityKind::Note]).await?);
    Ok(versions)
}

/// The current version of one record, read on `conn` (inside a caller's transaction).
pub(crate) async fn record_version_on(
    conn: &mut SqliteConnection,
    location_id: &str,
    entity: EntityKind,
    entity_id: &str,
) -> Result<Option<RecordVersion>, StoreError> {
    let filter = VersionFilter { location: Some(location_id.to_owned()), ..VersionFilter::default() };
    Ok(select_versions(conn, &filter, Some(entity_id), &[entity]).await?.pop())
}

/// Versions of one table: contacts when `kinds` is `[Contact]`, else the children of `kinds`.
async fn select_versions(
    conn: &mut SqliteConnection,
    filter: &VersionFilter,
    entity_id: Option<&str>,
    kinds: &[EntityKind],
) -> Result<Vec<RecordVersion>, StoreError> {
    type Row = (String, String, String, String, i64, Vec<u8>, Vec<u8>, i64);
    let rows: Vec<Row> = if kinds == [EntityKind::Contact] {
        sqlx::query_as(
            "SELECT location_id, 'contact', contact_id, contact_id, revision, hash, record, \
             COALESCE(date_updated_ms, updated_at) FROM contacts \
             WHERE (?1 IS NULL OR location_id = ?1) AND (?2 IS NULL OR contact_id = ?2) \
             AND (?3 IS NULL OR COALESCE(date_updated_ms, updated_at) >= ?3) AND (?4 IS NULL OR contact_id = ?4) \
             ORDER BY location_id, contact_id",
        )
        .bind(&filter.location)
        .bind(&filter.contact)
        .bind(filter.since_ms)
        .bind(entity_id)
        .fetch_all(&mut *conn)
        .await?
    } else {
        let kind = |i: usize| kinds.get(i).or(kinds.first()).map(|k| k.as_str());
        sqlx::query_as(
            "SELECT location_id, kind, child_id, contact_id, revision, hash, record, updated_at FROM children \
             WHERE (?1 IS NULL OR location_id = ?1) AND (?2 IS NULL OR contact_id = ?2) \
             AND (?3 IS NULL OR updated_at >= ?3) AND (?4 IS NULL OR child_id = ?4) AND kind IN (?5, ?6) \
             ORDER BY location_id, kind, child_id",
        )
        .bind(&filter.location)
        .bind(&filter.contact)
        .bind(filter.since_ms)
        .bind(entity_id)
        .bind(kind(0))
        .bind(kind(1))
        .fetch_all(&mut *conn)
        .await?
    };
    rows.into_iter()
        .map(|(location_id, entity, entity_id, contact_id, revision, hash, record, changed_at)| {
            let corrupt =
                || StoreError::Corrupt(format!("snapshot {entity} {entity_id} has an unreadable hash or kind"));
            Ok(RecordVersion {
                entity: EntityKind::parse(&entity).ok_or_else(corrupt)?,
                content_hash: <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| corrupt())?,
                location_id,
                entity_id,
                contact_id,
                revision,
                record,
                changed_at,
            })
        })
        .collect()
}
