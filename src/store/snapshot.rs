//! The snapshot: `contacts` and `children`, what the sync last read of every record, with its
//! content hash and revision.
//!
//! The sync's commits live here, each one short write transaction that the caller cannot
//! hold open: it hands over what it read (already normalised), and this module hashes, looks
//! up, decides (with the pure `domain` functions), and writes the snapshot rows, their outbox
//! rows for every interested connector, dead letters and the cursor together. A record's
//! `revision` grows with each content change (and its delete), and its outbox rows carry it,
//! so each record version has one idempotency key.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{Map, Value};

use super::db::{self, Conn, Db, on_db};
use super::dead_letters::dead_letter_record;
use super::outbox::{self, EnqueuePolicy, NewChange, enqueue};
use super::{Store, StoreError, codec, cursors, now_ms, rules, writebacks};
use crate::domain::diff::{ChildRecord, KnownChild, contact_change, diff_children, is_completed};
use crate::domain::normalize::{Hash, ReadPath, contact_hash, fill_from_snapshot, get_only_changed};
use crate::domain::{EntityKind, Operation, Subscriber, event_type, idempotency_key};
use crate::rules::{EVENTS_CONNECTOR, RuleEvent};

/// `$select`, a `SELECT … FROM held JOIN contacts c ON c.location_id = held.location_id …`,
/// behind the CTE `held`: every location that holds contacts, found by a loose index scan of
/// the contacts key (one seek per location). The lookups of a contact by id alone, in
/// whichever location holds it, go through it: there is no index on `contact_id` alone, so
/// that a new contact writes one random-key leaf (its key) and not two (migration 0015).
/// Joining `held` keeps every such lookup a few index seeks per stored location instead of a
/// scan of the table; `store::tests::lookups_by_contact_id_alone_seek_the_key_index` checks
/// the plan.
macro_rules! with_locations_holding_contacts {
    ($select:literal) => {
        concat!(
            "WITH RECURSIVE held(location_id) AS (SELECT MIN(f.location_id) FROM contacts f UNION ALL \
             SELECT (SELECT MIN(n.location_id) FROM contacts n WHERE n.location_id > held.location_id) \
             FROM held WHERE held.location_id IS NOT NULL) ",
            $select
        )
    };
}
pub(crate) use with_locations_holding_contacts;

/// A contact as read from GHL, normalised (`domain::normalize::normalize_contact`).
#[derive(Debug, Clone)]
pub struct ContactRead {
    pub id: String,
    pub date_updated_ms: Option<i64>,
    pub record: Map<String, Value>,
    pub path: ReadPath,
}

/// A record that could not be read, set aside in dead letters (reason without personal data).
#[derive(Debug, Clone)]
pub struct BadRecord {
    pub entity: EntityKind,
    pub reason: String,
    /// `codec::pack` of the raw item.
    pub raw: Vec<u8>,
}

/// Where the contacts stream's cursor moves with a page.
#[derive(Debug, Clone, Copy)]
pub struct CursorAdvance {
    pub watermark_ms: i64,
    pub backfill_done: bool,
}

/// One contact's children as just read (kinds not read are `None` and left alone).
#[derive(Debug, Clone, Default)]
pub struct ChildrenRead {
    pub contact_id: String,
    pub tasks: Option<Vec<ChildRecord>>,
    pub notes: Option<Vec<ChildRecord>>,
    /// `None` also when appointments are not read at all (`[sync] appointments`).
    pub appointments: Option<Vec<ChildRecord>>,
    pub bad: Vec<BadRecord>,
}

/// Who a commit is for: the location, the connectors that may want its changes, dry run.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    pub location: &'a str,
    pub subscribers: &'a [Subscriber],
    /// Decide everything, write nothing (the transaction is rolled back).
    pub dry_run: bool,
}

/// What a commit did (or would do, in a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// Records whose content changed (created, updated, deleted).
    pub changed: u64,
    /// Outbox rows written, per event type.
    pub events: BTreeMap<String, u64>,
    pub dead_letters: u64,
    /// Whether any outbox row was written (the dispatcher is woken).
    pub wrote_outbox: bool,
    /// Dry run only: the trigger events the `rules` subscriber would get (`sync --dry-run`
    /// shows the rule actions they would cause).
    pub trigger_events: Vec<RuleEvent>,
}

impl Committed {
    pub fn add(&mut self, other: Committed) {
        self.changed += other.changed;
        for (event, n) in other.events {
            *self.events.entry(event).or_default() += n;
        }
        self.dead_letters += other.dead_letters;
        self.wrote_outbox |= other.wrote_outbox;
        self.trigger_events.extend(other.trigger_events);
    }
}

/// Writes one outbox row per interested subscriber; counts them. The `rules` subscriber gets a
/// trigger event ([`RuleEvent`]) with the record before (`old`, asked for only then) and after
/// the change instead of the record alone; its key is the record version's.
#[allow(clippy::too_many_arguments)]
async fn enqueue_all(
    mut conn: Conn<'_>,
    commit: &Commit<'_>,
    entity: EntityKind,
    entity_id: &str,
    contact_id: Option<&str>,
    operation: Operation,
    packed: &[u8],
    old: &(dyn Fn() -> Option<Value> + Sync),
    hash: &Hash,
    revision: i64,
    done: &mut Committed,
) -> Result<(), StoreError> {
    let version = Version { entity, entity_id, contact_id, operation, packed, hash, revision };
    let mut changes = Vec::new();
    stage_version(conn.reborrow(), commit, version, old, &mut changes, done).await?;
    for change in changes {
        enqueue(conn.reborrow(), change, EnqueuePolicy::Fold, None).await?;
    }
    Ok(())
}

/// One record version, as the outbox rows of its subscribers carry it.
#[derive(Clone, Copy)]
struct Version<'a> {
    entity: EntityKind,
    entity_id: &'a str,
    contact_id: Option<&'a str>,
    operation: Operation,
    packed: &'a [u8],
    hash: &'a Hash,
    revision: i64,
}

/// [`enqueue_all`]'s decisions for one version: the `rules` subscriber's trigger event is
/// written at once; the other subscribers' changes are pushed to `changes`, for the caller to
/// enqueue (one by one, or a page's together with [`outbox::enqueue_folding`]). Counts them.
async fn stage_version<'a>(
    mut conn: Conn<'_>,
    commit: &Commit<'a>,
    version: Version<'a>,
    old: &(dyn Fn() -> Option<Value> + Sync),
    changes: &mut Vec<NewChange<'a>>,
    done: &mut Committed,
) -> Result<(), StoreError> {
    let Version { entity, entity_id, contact_id, operation, packed, hash, revision } = version;
    let event = event_type(entity, operation);
    let now = now_ms();
    let mut wrote = 0;
    for subscriber in commit.subscribers {
        if !(subscriber.wants)(&event, commit.location) {
            continue;
        }
        if subscriber.id == EVENTS_CONNECTOR {
            let record = codec::unpack(packed).ok();
            let (old, new) = match operation {
                Operation::Created => (None, record),
                Operation::Deleted => (record, None),
                Operation::Updated | Operation::Completed => (old(), record),
            };
            let trigger = RuleEvent {
                trigger: event.clone(),
                key: idempotency_key(EVENTS_CONNECTOR, entity, entity_id, revision, hash, ""),
                location_id: commit.location.to_owned(),
                entity: Some(entity),
                entity_id: Some(entity_id.to_owned()),
                contact_id: contact_id.map(str::to_owned),
                old,
                new,
                at_ms: now,
                ..RuleEvent::default()
            };
            rules::enqueue_events_on(conn.reborrow(), std::slice::from_ref(&trigger)).await?;
            if commit.dry_run {
                done.trigger_events.push(trigger);
            }
            wrote += 1;
            continue;
        }
        changes.push(NewChange {
            connector: &subscriber.id,
            location_id: commit.location,
            entity,
            entity_id,
            contact_id,
            operation,
            record: packed,
            content_hash: hash,
            revision,
            changed_at: now,
        });
        wrote += 1;
    }
    if wrote > 0 {
        *done.events.entry(event).or_default() += wrote;
        done.wrote_outbox = true;
    }
    Ok(())
}

/// Every subscriber but the `rules` connector: a delete a rule made is announced to the
/// others, while the rules hear it from the rule's action (with its origin).
fn except_rules(subscribers: &[Subscriber]) -> Vec<Subscriber> {
    subscribers.iter().filter(|s| s.id != EVENTS_CONNECTOR).cloned().collect()
}

/// Commits or (dry run) rolls back.
async fn finish(tx: super::WriteTx<'_>, dry_run: bool) -> Result<(), StoreError> {
    if dry_run { tx.rollback().await } else { tx.commit().await }
}

/// What the snapshot knows of a contact for the diff.
struct KnownContact {
    hash: Hash,
    date_updated_ms: Option<i64>,
}

/// Hashes, revisions and `dateUpdated` of `ids` in `location`.
async fn known_contacts(
    store: &Store,
    location: &str,
    ids: &[&str],
) -> Result<HashMap<String, KnownContact>, StoreError> {
    let mut known = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT contact_id, hash, date_updated_ms FROM contacts WHERE location_id = $1 AND contact_id IN ({})",
            db::params(1, chunk.len())
        );
        let rows: Vec<(String, Vec<u8>, Option<i64>)> = on_db!(store.db(), |pool, pg| {
            let sql = db::for_backend(pg, &sql);
            let mut query = sqlx::query_as(&sql).bind(location);
            for id in chunk {
                query = query.bind(*id);
            }
            query.fetch_all(pool).await
        })?;
        for (id, hash, date_updated_ms) in rows {
            if let Ok(hash) = <Hash>::try_from(hash.as_slice()) {
                known.insert(id, KnownContact { hash, date_updated_ms });
            }
        }
    }
    Ok(known)
}

/// Stored records of `ids` (for [`fill_from_snapshot`]); unreadable ones are skipped.
async fn stored_records(
    store: &Store,
    location: &str,
    ids: &[&str],
) -> Result<HashMap<String, Map<String, Value>>, StoreError> {
    let mut records = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT contact_id, record FROM contacts WHERE location_id = $1 AND contact_id IN ({})",
            db::params(1, chunk.len())
        );
        let rows: Vec<(String, Vec<u8>)> = on_db!(store.db(), |pool, pg| {
            let sql = db::for_backend(pg, &sql);
            let mut query = sqlx::query_as(&sql).bind(location);
            for id in chunk {
                query = query.bind(*id);
            }
            query.fetch_all(pool).await
        })?;
        for (id, blob) in rows {
            if let Ok(Value::Object(record)) = codec::unpack(&blob) {
                records.insert(id, record);
            }
        }
    }
    Ok(records)
}

/// One page of contacts: snapshot upserts, outbox rows per subscriber, dead letters and the
/// cursor, in one transaction. Unchanged contacts cost one index lookup; a page that changes
/// nothing and moves no cursor opens no transaction at all (no lock, no fsync).
/// `ignored_custom_fields` are the bookkeeping fields kept out of the hash.
pub async fn commit_contacts(
    store: &Store,
    commit: &Commit<'_>,
    mut contacts: Vec<ContactRead>,
    bad: Vec<BadRecord>,
    cursor: Option<CursorAdvance>,
    ignored_custom_fields: &[String],
) -> Result<Committed, StoreError> {
    let ids: Vec<&str> = contacts.iter().map(|c| c.id.as_str()).collect();
    // Decide outside the transaction (pure): hash, compare, and what to write. The hashing
    // runs while the lookup's query runs on its connection's thread (`join!` polls the
    // lookup first, which sends the query).
    let (known, hashes) = tokio::join!(known_contacts(store, commit.location, &ids), async {
        contacts.iter().map(|c| contact_hash(&c.record, ignored_custom_fields)).collect::<Vec<Hash>>()
    });
    let known = known?;
    // Stored records are needed only for two cases: a changed contact read by search keeps
    // the GET-only fields its stored record has, and a contact read by GET whose hash did not
    // move may still differ in a field only GET returns.
    // The `rules` subscriber also gets the record before every change.
    let rules_listen = commit.subscribers.iter().any(|s| s.id == EVENTS_CONNECTOR);
    let wanted: Vec<&str> = contacts
        .iter()
        .zip(&hashes)
        .filter(|(c, hash)| {
            let same = known.get(&c.id).is_some_and(|k| k.hash == **hash);
            let known = known.contains_key(&c.id);
            known && ((c.path == ReadPath::Get) == same || (rules_listen && !same))
        })
        .map(|(c, _)| c.id.as_str())
        .collect();
    let stored =
        if wanted.is_empty() { HashMap::new() } else { stored_records(store, commit.location, &wanted).await? };
    let decisions: Vec<_> = contacts
        .iter_mut()
        .zip(&hashes)
        .map(|(c, hash)| {
            let old = known.get(&c.id).map(|k| (k.hash, k.date_updated_ms));
            let previous = stored.get(&c.id);
            let get_only = c.path == ReadPath::Get && previous.is_some_and(|p| get_only_changed(p, &c.record));
            let decision = contact_change(old, *hash, c.date_updated_ms, get_only);
            if c.path == ReadPath::Search
                && decision.operation.is_some()
                && let Some(previous) = previous
            {
                fill_from_snapshot(&mut c.record, previous);
            }
            decision
        })
        .collect();
    let packed: Vec<Option<Vec<u8>>> =
        contacts.iter().zip(&decisions).map(|(c, d)| d.operation.map(|_| codec::pack_map(&c.record))).collect();
    let nothing_to_write =
        bad.is_empty() && cursor.is_none() && decisions.iter().all(|d| d.operation.is_none() && !d.children_due);
    let mut done = Committed::default();
    if nothing_to_write {
        return Ok(done);
    }

    let mut tx = store.begin_write("contacts_page").await?;
    let now = now_ms();
    // In chunks that name each contact once (a contact twice in a page is written twice, in
    // order, as before): a multi-row upsert per chunk, then its outbox rows together.
    let mut start = 0;
    while start < contacts.len() {
        let mut named = HashSet::new();
        let end = (start..contacts.len())
            .find(|&i| i - start == UPSERT_ROWS || !named.insert(contacts[i].id.as_str()))
            .unwrap_or(contacts.len());
        let chunk = start..end;
        start = end;
        let mut upserts = Vec::with_capacity(chunk.len());
        for i in chunk {
            match (decisions[i].operation, &packed[i]) {
                (Some(operation), Some(packed)) => upserts.push((i, operation, packed.as_slice())),
                _ if decisions[i].children_due => {
                    // Same content, moved dateUpdated: maybe a task or note changed (whether GHL
                    // bumps it is unknown), so its children are read; nothing is sent.
                    let contact = &contacts[i];
                    on_db!(tx.conn(), |c| {
                        sqlx::query(
                        "UPDATE contacts SET date_updated_ms = $1, children_synced_at = NULL, children_due_at = $2 WHERE location_id = $3 AND contact_id = $4",
                    )
                    .bind(contact.date_updated_ms)
                    .bind(now)
                    .bind(commit.location)
                    .bind(&contact.id)
                    .execute(c)
                    .await
                    .map(|done| done.rows_affected())
                    })?;
                }
                _ => {}
            }
        }
        if upserts.is_empty() {
            continue;
        }
        let values = upsert_values(upserts.len());
        let sql = format!(
            "INSERT INTO contacts (location_id, contact_id, hash, record, date_updated_ms, children_synced_at, children_due_at, \
             first_seen_at, revision, updated_at) VALUES {values} ON CONFLICT (location_id, contact_id) DO UPDATE SET \
             hash = excluded.hash, record = excluded.record, date_updated_ms = excluded.date_updated_ms, \
             children_synced_at = NULL, children_due_at = excluded.children_due_at, revision = contacts.revision + 1, \
             updated_at = excluded.updated_at RETURNING contact_id, revision"
        );
        let returned: Vec<(String, i64)> = on_db!(tx.conn(), |c, pg| {
            let sql = db::for_backend(pg, &sql);
            let mut query = sqlx::query_as(&sql);
            for &(i, _, packed) in &upserts {
                let contact = &contacts[i];
                query = query
                    .bind(commit.location)
                    .bind(&contact.id)
                    .bind(&hashes[i][..])
                    .bind(packed)
                    .bind(contact.date_updated_ms)
                    .bind(now)
                    .bind(now)
                    .bind(now);
            }
            query.fetch_all(c).await
        })?;
        let revisions: HashMap<String, i64> = returned.into_iter().collect();
        let mut changes = Vec::with_capacity(upserts.len() * commit.subscribers.len());
        for (i, operation, packed) in upserts {
            let contact = &contacts[i];
            let Some(&revision) = revisions.get(&contact.id) else {
                return Err(StoreError::Corrupt(format!("contact {} was upserted without a revision", contact.id)));
            };
            done.changed += 1;
            let hash = &hashes[i];
            // Echo suppression: an update whose content is exactly what our own GHL write-back
            // produced is kept in the snapshot but not sent to any connector.
            if operation == Operation::Updated
                && writebacks::is_own_write(tx.conn(), commit.location, &contact.id, hash).await?
            {
                continue;
            }
            let version = Version {
                entity: EntityKind::Contact,
                entity_id: &contact.id,
                contact_id: Some(&contact.id),
                operation,
                packed,
                hash,
                revision,
            };
            let old = || stored.get(&contact.id).cloned().map(Value::Object);
            stage_version(tx.conn(), commit, version, &old, &mut changes, &mut done).await?;
        }
        if !changes.is_empty() {
            outbox::enqueue_folding(tx.conn(), &changes).await?;
        }
    }
    for record in &bad {
        dead_letter_record(tx.conn(), commit.location, record.entity, &record.reason, &record.raw).await?;
        done.dead_letters += 1;
    }
    if let Some(cursor) = cursor {
        cursors::advance_in(
            tx.conn(),
            commit.location,
            cursors::CONTACTS,
            cursor.watermark_ms,
            cursor.backfill_done,
            now,
        )
        .await?;
    }
    finish(tx, commit.dry_run).await?;
    Ok(done)
}

/// Contacts per multi-row upsert of a page commit (8 parameters each).
const UPSERT_ROWS: usize = 100;

/// The `VALUES` rows of a page's contact upsert: `rows` tuples of 8 parameters, with
/// `children_synced_at` NULL and `revision` 1 as literals.
fn upsert_values(rows: usize) -> String {
    let mut out = String::with_capacity(rows * 56);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        let b = r * 8;
        out.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, NULL, ${}, ${}, 1, ${})",
            b + 1,
            b + 2,
            b + 3,
            b + 4,
            b + 5,
            b + 6,
            b + 7,
            b + 8
        ));
    }
    out
}

/// A confirmed delete (GHL answered 404): the contact and its children leave the snapshot and
/// a `contact.deleted` with the last known record (next revision) goes to the outbox. A
/// contact the snapshot does not know writes nothing.
pub async fn delete_contact(store: &Store, commit: &Commit<'_>, contact_id: &str) -> Result<Committed, StoreError> {
    let mut done = Committed::default();
    let mut tx = store.begin_write("contact_delete").await?;
    let last: Option<(Vec<u8>, Vec<u8>, i64)> = on_db!(tx.conn(), |c| sqlx::query_as(
        "SELECT hash, record, revision FROM contacts WHERE location_id = $1 AND contact_id = $2"
    )
    .bind(commit.location)
    .bind(contact_id)
    .fetch_optional(c)
    .await)?;
    let Some((hash, record, revision)) = last else {
        tx.rollback().await?;
        return Ok(done);
    };
    on_db!(tx.conn(), |c| sqlx::query("DELETE FROM contacts WHERE location_id = $1 AND contact_id = $2")
        .bind(commit.location)
        .bind(contact_id)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    on_db!(tx.conn(), |c| sqlx::query("DELETE FROM children WHERE location_id = $1 AND contact_id = $2")
        .bind(commit.location)
        .bind(contact_id)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    let hash: Hash = hash.as_slice().try_into().unwrap_or([0; 32]);
    done.changed += 1;
    // A rule deleted it: the rules hear it from the rule's action (with its origin, so the
    // chain is bounded); every other connector still hears the delete.
    let without_rules: Vec<Subscriber>;
    let commit = if writebacks::is_own_contact_delete(tx.conn(), commit.location, contact_id).await? {
        without_rules = except_rules(commit.subscribers);
        &Commit { subscribers: &without_rules, ..*commit }
    } else {
        commit
    };
    enqueue_all(
        tx.conn(),
        commit,
        EntityKind::Contact,
        contact_id,
        Some(contact_id),
        Operation::Deleted,
        &record,
        &|| None,
        &hash,
        revision + 1,
        &mut done,
    )
    .await?;
    finish(tx, commit.dry_run).await?;
    Ok(done)
}

/// The snapshot of one contact's children of one kind: diff state, packed record (for delete
/// events) and revision.
async fn known_children(
    conn: Conn<'_>,
    location: &str,
    contact_id: &str,
    kind: EntityKind,
) -> Result<HashMap<String, (KnownChild, Vec<u8>, i64)>, sqlx::Error> {
    let rows: Vec<(String, Vec<u8>, Vec<u8>, i64)> = on_db!(conn, |c| {
        sqlx::query_as(
        "SELECT child_id, hash, record, revision FROM children WHERE location_id = $1 AND contact_id = $2 AND kind = $3",
    )
    .bind(location)
    .bind(contact_id)
    .bind(kind.as_str())
    .fetch_all(c)
    .await
    })?;
    Ok(rows
        .into_iter()
        .map(|(id, hash, record, revision)| {
            let completed = kind == EntityKind::Task
                && codec::unpack(&record).ok().and_then(|v| v.as_object().map(is_completed)).unwrap_or(false);
            let hash = hash.as_slice().try_into().unwrap_or([0; 32]);
            (id, (KnownChild { hash, completed }, record, revision))
        })
        .collect())
}

/// The children of a chunk of contacts, in one transaction (a commit per contact would cap a
/// backfill at the disk's sync rate): set diff per contact and kind, child upserts/deletes,
/// their outbox rows, dead letters, and each contact marked read.
pub async fn commit_children(
    store: &Store,
    commit: &Commit<'_>,
    reads: Vec<ChildrenRead>,
) -> Result<Committed, StoreError> {
    let mut done = Committed::default();
    if reads.is_empty() {
        return Ok(done);
    }
    let packed_reads: Vec<(ChildrenRead, HashMap<String, Vec<u8>>)> = reads
        .into_iter()
        .map(|read| {
            let packed = read
                .tasks
                .iter()
                .chain(read.notes.iter())
                .chain(read.appointments.iter())
                .flatten()
                .map(|child| (child.id.clone(), codec::pack(&Value::Object(child.record.clone()))))
                .collect();
            (read, packed)
        })
        .collect();
    let mut tx = store.begin_write("children").await?;
    let now = now_ms();
    for (read, packed) in packed_reads {
        let contact_id = read.contact_id.as_str();
        for record in &read.bad {
            dead_letter_record(tx.conn(), commit.location, record.entity, &record.reason, &record.raw).await?;
            done.dead_letters += 1;
        }
        let kinds = [
            (EntityKind::Task, read.tasks),
            (EntityKind::Note, read.notes),
            (EntityKind::Appointment, read.appointments),
        ];
        for (kind, children) in kinds {
            let Some(children) = children else { continue };
            let known = known_children(tx.conn(), commit.location, contact_id, kind).await?;
            let states: HashMap<String, KnownChild> =
                known.iter().map(|(id, (state, _, _))| (id.clone(), state.clone())).collect();
            for change in diff_children(&states, children) {
                done.changed += 1;
                let (hash, packed_record, revision) = match &change.record {
                    Some(child) => {
                        let record = packed.get(&child.id).cloned().unwrap_or_default();
                        let revision: i64 = on_db!(tx.conn(), |c| {
                            sqlx::query_scalar(
                            "INSERT INTO children (location_id, contact_id, kind, child_id, hash, record, revision, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, 1, $7) ON CONFLICT (location_id, kind, child_id) DO UPDATE SET \
                             contact_id = excluded.contact_id, hash = excluded.hash, record = excluded.record, \
                             revision = children.revision + 1, updated_at = excluded.updated_at RETURNING revision",
                        )
                        .bind(commit.location)
                        .bind(contact_id)
                        .bind(kind.as_str())
                        .bind(&change.id)
                        .bind(&child.hash[..])
                        .bind(&record)
                        .bind(now)
                        .fetch_one(c)
                        .await
                        })?;
                        (child.hash, record, revision)
                    }
                    None => {
                        on_db!(tx.conn(), |c| sqlx::query(
                            "DELETE FROM children WHERE location_id = $1 AND kind = $2 AND child_id = $3"
                        )
                        .bind(commit.location)
                        .bind(kind.as_str())
                        .bind(&change.id)
                        .execute(c)
                        .await
                        .map(|done| done.rows_affected()))?;
                        let (state, record, revision) = known.get(&change.id).cloned().unwrap_or_default();
                        (state.hash, record, revision + 1)
                    }
                };
                // Echo suppression: a note or task our own write-back created (a Lusha note, a
                // lead's task) or changed (a rule's action, which raises its own trigger event)
                // is kept in the snapshot but not announced as a user's change.
                let own = match (change.operation, &change.record) {
                    (Operation::Created, Some(child)) => {
                        writebacks::is_own_child(
                            tx.conn(),
                            commit.location,
                            contact_id,
                            kind.as_str(),
                            &change.id,
                            &child.record,
                        )
                        .await?
                    }
                    (_, Some(child)) if kind != EntityKind::Appointment => {
                        writebacks::is_own_child_change(
                            tx.conn(),
                            commit.location,
                            kind.as_str(),
                            &change.id,
                            Some(&child.hash),
                        )
                        .await?
                    }
                    _ => false,
                };
                if own {
                    continue;
                }
                // A task or note a rule deleted: as for contacts, only the rules skip it.
                let without_rules: Vec<Subscriber>;
                let commit = if change.record.is_none()
                    && kind != EntityKind::Appointment
                    && writebacks::is_own_child_change(tx.conn(), commit.location, kind.as_str(), &change.id, None)
                        .await?
                {
                    without_rules = except_rules(commit.subscribers);
                    &Commit { subscribers: &without_rules, ..*commit }
                } else {
                    commit
                };
                enqueue_all(
                    tx.conn(),
                    commit,
                    kind,
                    &change.id,
                    Some(contact_id),
                    change.operation,
                    &packed_record,
                    &|| known.get(&change.id).and_then(|(_, record, _)| codec::unpack(record).ok()),
                    &hash,
                    revision,
                    &mut done,
                )
                .await?;
            }
        }
        on_db!(tx.conn(), |c| sqlx::query(
            "UPDATE contacts SET children_synced_at = $1 WHERE location_id = $2 AND contact_id = $3"
        )
        .bind(now)
        .bind(commit.location)
        .bind(contact_id)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    }
    finish(tx, commit.dry_run).await?;
    Ok(done)
}

/// Marks a contact's children for reading on the next pass (a webhook named it).
pub async fn mark_children_due(store: &Store, location: &str, contact_id: &str) -> Result<(), StoreError> {
    let mut tx = store.begin_write("children_due").await?;
    on_db!(tx.conn(), |c| {
        sqlx::query(
        "UPDATE contacts SET children_synced_at = NULL, children_due_at = $1 WHERE location_id = $2 AND contact_id = $3",
    )
    .bind(now_ms())
    .bind(location)
    .bind(contact_id)
    .execute(c)
    .await
    .map(|done| done.rows_affected())
    })?;
    tx.commit().await
}

/// Contacts whose children are due (`children_synced_at IS NULL`), by id, skipping `skip`.
pub async fn children_due(
    store: &Store,
    location: &str,
    limit: usize,
    skip: &HashSet<String>,
) -> Result<Vec<String>, StoreError> {
    let limit = i64::try_from(limit.saturating_add(skip.len())).unwrap_or(i64::MAX);
    // PostgreSQL sorts NULLs first in descending order, SQLite last: said explicitly.
    let due: Vec<String> = on_db!(store.db(), |pool, pg| sqlx::query_scalar(if pg {
        "SELECT contact_id FROM contacts WHERE location_id = $1 AND children_synced_at IS NULL \
         ORDER BY date_updated_ms DESC NULLS LAST, contact_id LIMIT $2"
    } else {
        "SELECT contact_id FROM contacts WHERE location_id = $1 AND children_synced_at IS NULL \
         ORDER BY date_updated_ms DESC, contact_id LIMIT $2"
    })
    .bind(location)
    .bind(limit)
    .fetch_all(pool)
    .await)?;
    Ok(due.into_iter().filter(|id| !skip.contains(id)).collect())
}

/// Those of `contacts` that were marked due by a change after they were first stored (the
/// poll found them changed, or a webhook named them): incremental work, not the backlog of a
/// first sync (a contact stored and marked due in one write, `first_seen_at = children_due_at`).
pub async fn changed_since_stored(
    store: &Store,
    location: &str,
    contacts: &[String],
) -> Result<HashSet<String>, StoreError> {
    if contacts.is_empty() {
        return Ok(HashSet::new());
    }
    let ids = super::db::json_list(contacts);
    let rows: Vec<String> = on_db!(store.db(), |pool, pg| sqlx::query_scalar(&format!(
        "SELECT contact_id FROM contacts WHERE location_id = $1 AND contact_id IN ({}) \
         AND first_seen_at < COALESCE(children_due_at, 0)",
        db::json_values(pg, 2)
    ))
    .bind(location)
    .bind(&ids)
    .fetch_all(pool)
    .await)?;
    Ok(rows.into_iter().collect())
}

/// Contacts whose children were read longest ago (before `stale_before`), for the sweep.
pub async fn sweep_due(
    store: &Store,
    location: &str,
    stale_before: i64,
    limit: u64,
) -> Result<Vec<String>, StoreError> {
    Ok(on_db!(store.db(), |pool| {
        sqlx::query_scalar(
        "SELECT contact_id FROM contacts WHERE location_id = $1 AND children_synced_at < $2 ORDER BY children_synced_at LIMIT $3",
    )
    .bind(location)
    .bind(stale_before)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    })?)
}

/// Contacts of `location` in the snapshot.
pub async fn contact_count(store: &Store, location: &str) -> Result<u64, StoreError> {
    let count: i64 =
        on_db!(store.db(), |pool| sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE location_id = $1")
            .bind(location)
            .fetch_one(pool)
            .await)?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// Whether the snapshot has `contact_id` in `location`.
pub async fn has_contact(store: &Store, location: &str, contact_id: &str) -> Result<bool, StoreError> {
    // `1` is an INTEGER on SQLite and an INT4 on PostgreSQL: both decode as i32.
    let found: Option<i32> = on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT 1 FROM contacts WHERE location_id = $1 AND contact_id = $2"
    )
    .bind(location)
    .bind(contact_id)
    .fetch_optional(pool)
    .await)?;
    Ok(found.is_some())
}

// ---- reconciliation ----------------------------------------------------------------------

/// Starts a reconciliation listing of `location`: forgets ids listed by an earlier one.
pub async fn reconcile_reset(store: &Store, location: &str) -> Result<(), StoreError> {
    let mut tx = store.begin_write("reconcile").await?;
    on_db!(tx.conn(), |c| sqlx::query("DELETE FROM reconcile_seen WHERE location_id = $1")
        .bind(location)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    tx.commit().await
}

/// Records one listed page of ids (one short write per page; memory stays flat).
pub async fn reconcile_seen(store: &Store, location: &str, ids: &[&str]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin_write("reconcile").await?;
    for chunk in ids.chunks(400) {
        let sql = format!(
            "INSERT INTO reconcile_seen (location_id, contact_id) VALUES {} ON CONFLICT DO NOTHING",
            db::rows(0, chunk.len(), 2)
        );
        on_db!(tx.conn(), |c, pg| {
            let sql = db::for_backend(pg, &sql);
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(location).bind(*id);
            }
            query.execute(c).await.map(|done| done.rows_affected())
        })?;
    }
    tx.commit().await
}

/// Snapshot contacts first seen before `started` that the listing did not return: the
/// candidates for deletion (each still to be confirmed by a read).
pub async fn reconcile_candidates(store: &Store, location: &str, started: i64) -> Result<Vec<String>, StoreError> {
    Ok(on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT contact_id FROM contacts c WHERE c.location_id = $1 AND c.first_seen_at < $2 AND NOT EXISTS \
         (SELECT 1 FROM reconcile_seen s WHERE s.location_id = c.location_id AND s.contact_id = c.contact_id)",
    )
    .bind(location)
    .bind(started)
    .fetch_all(pool)
    .await)?)
}

// --- Reads for exports and `check` -------------------------------------------------------
// (Kept at the end of the file: the sync engine's snapshot writes live above.)

/// One step of [`scan_location_contacts`].
#[derive(Debug)]
pub enum ScanItem<'a> {
    /// The number of contacts of the location (first, once).
    Total(u64),
    /// A pass over the contacts begins (0-based).
    Pass(u32),
    /// One contact of pass `pass`, in contact id order.
    Contact { pass: u32, contact_id: &'a str, record: &'a serde_json::Value },
}

/// Streams one location's contacts `passes` times to `visit`, in contact id order, inside one
/// read transaction on the read pool: every pass sees the same snapshot while the daemon
/// keeps writing, and the writer is never taken. Memory stays flat (rows are streamed).
/// Stops at the first error `visit` returns. A record that does not decode is
/// [`StoreError::Corrupt`](super::StoreError::Corrupt) naming the contact.
pub async fn scan_location_contacts<E, F>(
    store: &super::Store,
    location: &str,
    passes: u32,
    mut visit: F,
) -> Result<(), E>
where
    E: From<super::StoreError>,
    F: FnMut(ScanItem<'_>) -> Result<(), E>,
{
    use super::StoreError;
    use futures_util::TryStreamExt as _;
    const ROWS: &str = "SELECT contact_id, record FROM contacts WHERE location_id = $1 ORDER BY contact_id";
    on_db!(store.db(), |pool, pg| {
        let mut tx = pool.begin().await.map_err(StoreError::from)?;
        if pg {
            // One snapshot for every pass (PostgreSQL's default, READ COMMITTED, takes one per
            // statement; a SQLite read transaction is one snapshot already).
            sqlx::query(REPEATABLE_READ).execute(&mut *tx).await.map_err(StoreError::from)?;
        }
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE location_id = $1")
            .bind(location)
            .fetch_one(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        visit(ScanItem::Total(u64::try_from(total).unwrap_or(0)))?;
        for pass in 0..passes {
            visit(ScanItem::Pass(pass))?;
            let mut rows = sqlx::query_as::<_, (String, Vec<u8>)>(ROWS).bind(location).fetch(&mut *tx);
            while let Some((contact_id, record)) = rows.try_next().await.map_err(StoreError::from)? {
                let record = super::codec::unpack(&record).map_err(|e| naming_contact(e, &contact_id))?;
                visit(ScanItem::Contact { pass, contact_id: &contact_id, record: &record })?;
            }
        }
        tx.rollback().await.map_err(StoreError::from)?;
    });
    Ok(())
}

/// Makes a PostgreSQL read transaction one snapshot (its first statement).
pub(crate) const REPEATABLE_READ: &str = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ";

/// A decoding error that names the contact whose record it is.
fn naming_contact(error: super::StoreError, contact_id: &str) -> super::StoreError {
    match error {
        super::StoreError::Corrupt(why) => super::StoreError::Corrupt(format!("contact {contact_id}: {why}")),
        other => other,
    }
}

/// A contact of the snapshot, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredContact {
    pub location_id: String,
    pub contact_id: String,
    pub record: serde_json::Value,
    /// GHL's `dateUpdated`, else when the snapshot last changed (epoch ms).
    pub changed_at: i64,
}

/// The `limit` most recently updated contacts of the snapshot, newest first.
pub async fn recent_contacts(store: &super::Store, limit: u32) -> Result<Vec<StoredContact>, super::StoreError> {
    let rows: Vec<(String, String, Vec<u8>, i64)> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT location_id, contact_id, record, COALESCE(date_updated_ms, updated_at) \
         FROM contacts ORDER BY updated_at DESC LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await)?;
    rows.into_iter()
        .map(|(location_id, contact_id, record, changed_at)| {
            let record = super::codec::unpack(&record).map_err(|e| naming_contact(e, &contact_id))?;
            Ok(StoredContact { location_id, contact_id, record, changed_at })
        })
        .collect()
}

// ---- Reads for delivery: the dispatcher's parent context, `dlq retry` and `replay`. ----

/// The current snapshot of a contact, unpacked, when the store has a readable one (a task or
/// note delivery carries it as context; a corrupt one only loses that context).
pub async fn contact_record(store: &Store, location_id: &str, contact_id: &str) -> Result<Option<Value>, StoreError> {
    let blob: Option<Vec<u8>> = on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT record FROM contacts WHERE location_id = $1 AND contact_id = $2"
    )
    .bind(location_id)
    .bind(contact_id)
    .fetch_optional(pool)
    .await)?;
    Ok(blob.and_then(|b| codec::unpack(&b).ok()))
}

/// Up to `limit` contacts of a location with ids after `after` (id order), with their
/// records (an unreadable one is `Value::Null`): the schedule trigger walks a location's contacts with it.
pub async fn contacts_page(
    store: &Store,
    location_id: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<(String, Value)>, StoreError> {
    let rows: Vec<(String, Vec<u8>)> = on_db!(store.db(), |pool| {
        sqlx::query_as(
        "SELECT contact_id, record FROM contacts WHERE location_id = $1 AND contact_id > $2 ORDER BY contact_id LIMIT $3",
    )
    .bind(location_id)
    .bind(after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    })?;
    Ok(rows.into_iter().map(|(id, blob)| (id, codec::unpack(&blob).unwrap_or(Value::Null))).collect())
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

/// Current versions of the snapshot records `filter` selects: contacts, then tasks, notes and
/// appointments.
pub async fn record_versions(store: &Store, filter: &VersionFilter) -> Result<Vec<RecordVersion>, StoreError> {
    match store.db() {
        Db::Sqlite(pool) => all_versions(Db::Sqlite(&mut *pool.acquire().await?), filter).await,
        Db::Postgres(pool) => all_versions(Db::Postgres(&mut *pool.acquire().await?), filter).await,
    }
}

/// [`record_versions`] on one connection.
async fn all_versions(mut conn: Conn<'_>, filter: &VersionFilter) -> Result<Vec<RecordVersion>, StoreError> {
    let mut versions = select_versions(conn.reborrow(), filter, None, &[EntityKind::Contact]).await?;
    let children = [EntityKind::Task, EntityKind::Note, EntityKind::Appointment];
    versions.extend(select_versions(conn, filter, None, &children).await?);
    Ok(versions)
}

/// The current version of one record, read on `conn` (inside a caller's transaction).
pub(crate) async fn record_version_on(
    conn: Conn<'_>,
    location_id: &str,
    entity: EntityKind,
    entity_id: &str,
) -> Result<Option<RecordVersion>, StoreError> {
    let filter = VersionFilter { location: Some(location_id.to_owned()), ..VersionFilter::default() };
    Ok(select_versions(conn, &filter, Some(entity_id), &[entity]).await?.pop())
}

/// Versions of one table: contacts when `kinds` is `[Contact]`, else the children of `kinds`.
async fn select_versions(
    conn: Conn<'_>,
    filter: &VersionFilter,
    entity_id: Option<&str>,
    kinds: &[EntityKind],
) -> Result<Vec<RecordVersion>, StoreError> {
    type Row = (String, String, String, String, i64, Vec<u8>, Vec<u8>, i64);
    let rows: Vec<Row> = if kinds == [EntityKind::Contact] {
        on_db!(conn, |c| sqlx::query_as(
            "SELECT location_id, CAST('contact' AS TEXT), contact_id, contact_id, revision, hash, record, \
             COALESCE(date_updated_ms, updated_at) FROM contacts \
             WHERE ($1 IS NULL OR location_id = $1) AND ($2 IS NULL OR contact_id = $2) \
             AND ($3 IS NULL OR COALESCE(date_updated_ms, updated_at) >= $3) AND ($4 IS NULL OR contact_id = $4) \
             ORDER BY location_id, contact_id",
        )
        .bind(&filter.location)
        .bind(&filter.contact)
        .bind(filter.since_ms)
        .bind(entity_id)
        .fetch_all(c)
        .await)?
    } else {
        let kind = |i: usize| kinds.get(i).or(kinds.first()).map(|k| k.as_str());
        on_db!(conn, |c| sqlx::query_as(
            "SELECT location_id, kind, child_id, contact_id, revision, hash, record, updated_at FROM children \
             WHERE ($1 IS NULL OR location_id = $1) AND ($2 IS NULL OR contact_id = $2) \
             AND ($3 IS NULL OR updated_at >= $3) AND ($4 IS NULL OR child_id = $4) AND kind IN ($5, $6, $7) \
             ORDER BY location_id, kind, child_id",
        )
        .bind(&filter.location)
        .bind(&filter.contact)
        .bind(filter.since_ms)
        .bind(entity_id)
        .bind(kind(0))
        .bind(kind(1))
        .bind(kind(2))
        .fetch_all(c)
        .await)?
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::normalize::normalize_contact;
    use crate::store::testing::{exec, stores};

    fn read(id: &str, name: &str, updated: i64) -> ContactRead {
        let Value::Object(map) = serde_json::json!({"id": id, "firstName": name}) else { unreachable!() };
        ContactRead {
            id: id.to_owned(),
            date_updated_ms: Some(updated),
            record: normalize_contact(map),
            path: ReadPath::Search,
        }
    }

    async fn outbox(store: &Store) -> Vec<(String, String, String, i64)> {
        on_db!(store.db(), |pool| sqlx::query_as(
            "SELECT connector, entity_id, operation, revision FROM outbox WHERE status = 'pending' ORDER BY id",
        )
        .fetch_all(pool)
        .await)
        .unwrap()
    }

    async fn contact(store: &Store, id: &str) -> (i64, Value) {
        let (revision, record): (i64, Vec<u8>) = on_db!(store.db(), |pool| sqlx::query_as(
            "SELECT revision, record FROM contacts WHERE location_id = 'loc' AND contact_id = $1"
        )
        .bind(id)
        .fetch_one(pool)
        .await)
        .unwrap();
        (revision, codec::unpack(&record).unwrap())
    }

    #[tokio::test]
    async fn a_page_writes_each_version_once_across_chunks_and_a_repeated_contact_in_order() {
        for (_guard, store) in stores().await {
            a_page_writes_each_version_once(&store).await;
        }
    }

    async fn a_page_writes_each_version_once(store: &Store) {
        let subscribers = [Subscriber::all("webhook.a"), Subscriber::all("webhook.b")];
        let commit = Commit { location: "loc", subscribers: &subscribers, dry_run: false };
        // More contacts than one upsert takes; c5 again in a later chunk, c7 again in its own.
        let mut page: Vec<ContactRead> = (0..250).map(|i| read(&format!("c{i}"), "ada", 1_000 + i)).collect();
        page.insert(150, read("c5", "bea", 2_000));
        page.insert(9, read("c7", "cy", 2_001));
        let cursor = CursorAdvance { watermark_ms: 5_000, backfill_done: true };
        let done = commit_contacts(store, &commit, page, vec![], Some(cursor), &[]).await.unwrap();
        assert_eq!(done.changed, 252);
        assert_eq!(done.events.get("contact.created"), Some(&504));
        let rows = outbox(store).await;
        assert_eq!(rows.len(), 500, "one pending row per contact and connector");
        // The page's order, connector by connector within a contact.
        assert_eq!(rows[0], ("webhook.a".into(), "c0".into(), "created".into(), 1));
        assert_eq!(rows[1], ("webhook.b".into(), "c0".into(), "created".into(), 1));
        assert_eq!(rows[499].1, "c249");
        for id in ["c5", "c7"] {
            let (revision, record) = contact(store, id).await;
            assert_eq!(revision, 2, "{id} was written twice");
            assert_ne!(record["firstName"], "ada");
            let theirs: Vec<_> = rows.iter().filter(|r| r.1 == id).collect();
            assert_eq!(theirs.len(), 2);
            assert!(theirs.iter().all(|r| r.2 == "created" && r.3 == 2), "{theirs:?}");
        }
        assert_eq!(cursors::contacts_watermark(store, "loc").await.unwrap(), Some(5_000));

        // Delivered; then one contact changes and the rest are the same.
        exec(store, "UPDATE outbox SET status = 'done'").await;
        let mut page: Vec<ContactRead> = (0..250).map(|i| read(&format!("c{i}"), "ada", 1_000 + i)).collect();
        page[5] = read("c5", "bea", 2_000);
        page[7] = read("c7", "cy", 2_001);
        page[42] = read("c42", "dee", 3_000);
        let done = commit_contacts(store, &commit, page, vec![], None, &[]).await.unwrap();
        assert_eq!(done.changed, 1);
        assert_eq!(
            outbox(store).await,
            vec![
                ("webhook.a".into(), "c42".into(), "updated".into(), 2),
                ("webhook.b".into(), "c42".into(), "updated".into(), 2)
            ]
        );

        // A confirmed delete: the contact and its children leave, the next revision goes out.
        exec(store, "UPDATE outbox SET status = 'done'").await;
        let done = delete_contact(store, &commit, "c42").await.unwrap();
        assert_eq!(done.changed, 1);
        assert!(!has_contact(store, "loc", "c42").await.unwrap());
        assert_eq!(outbox(store).await[0], ("webhook.a".into(), "c42".into(), "deleted".into(), 3));
        assert_eq!(delete_contact(store, &commit, "c42").await.unwrap(), Committed::default());
    }

    /// The snapshot's own statements (no connector listens, so no outbox row is written):
    /// upserts in chunks, the children-due marks and their order, reconciliation, the reads.
    #[tokio::test]
    async fn the_snapshot_writes_and_reads_on_both_backends() {
        for (_guard, store) in stores().await {
            snapshot_writes_and_reads(&store).await;
        }
    }

    async fn snapshot_writes_and_reads(store: &Store) {
        let commit = Commit { location: "loc", subscribers: &[], dry_run: false };
        let mut page: Vec<ContactRead> = (0..250).map(|i| read(&format!("c{i}"), "ada", 1_000 + i)).collect();
        page.insert(150, read("c5", "bea", 2_000));
        page.push(ContactRead { date_updated_ms: None, ..read("undated", "eve", 0) });
        let cursor = CursorAdvance { watermark_ms: 5_000, backfill_done: false };
        let done = commit_contacts(store, &commit, page, vec![], Some(cursor), &[]).await.unwrap();
        assert_eq!(done.changed, 252);
        assert!(!done.wrote_outbox);
        assert_eq!(contact_count(store, "loc").await.unwrap(), 251);
        assert_eq!(contact_count(store, "other").await.unwrap(), 0);
        assert!(has_contact(store, "loc", "c249").await.unwrap());
        assert!(!has_contact(store, "loc", "c250").await.unwrap());
        let (revision, record) = contact(store, "c5").await;
        assert_eq!((revision, record["firstName"].as_str()), (2, Some("bea")));
        assert_eq!(contact_record(store, "loc", "c7").await.unwrap().unwrap()["firstName"], "ada");
        assert_eq!(contact_record(store, "loc", "nobody").await.unwrap(), None);
        // Not backfilled yet: no watermark to read from.
        assert_eq!(cursors::contacts_watermark(store, "loc").await.unwrap(), None);

        // All are due, newest dateUpdated first, the undated one last (as SQLite sorts NULLs).
        let due = children_due(store, "loc", 1_000, &HashSet::new()).await.unwrap();
        assert_eq!(due.len(), 251);
        assert_eq!(&due[..3], ["c5", "c249", "c248"]);
        assert_eq!(due.last().map(String::as_str), Some("undated"));
        let skip: HashSet<String> = ["c249".to_owned()].into();
        assert_eq!(children_due(store, "loc", 2, &skip).await.unwrap(), ["c5", "c248"]);

        // Stored and marked due in one write: backlog, not a change.
        let ids = vec!["c1".to_owned(), "c2".to_owned(), "nobody".to_owned()];
        assert!(changed_since_stored(store, "loc", &ids).await.unwrap().is_empty());
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        mark_children_due(store, "loc", "c1").await.unwrap();
        assert_eq!(changed_since_stored(store, "loc", &ids).await.unwrap(), HashSet::from(["c1".to_owned()]));

        // The same content with a moved dateUpdated: the children are due, nothing is sent.
        let reads = vec![read("c3", "ada", 9_000), read("c4", "ada", 1_004)];
        let done = commit_contacts(store, &commit, reads, vec![], None, &[]).await.unwrap();
        assert_eq!(done, Committed::default());
        let filter = VersionFilter { contact: Some("c3".into()), ..VersionFilter::default() };
        let versions = record_versions(store, &filter).await.unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!((versions[0].entity, versions[0].revision, versions[0].changed_at), (EntityKind::Contact, 1, 9_000));

        // Children read (none): each contact is marked read; the sweep finds the oldest.
        let empty = |id: &str| ChildrenRead {
            contact_id: id.to_owned(),
            tasks: Some(vec![]),
            notes: Some(vec![]),
            ..ChildrenRead::default()
        };
        let done = commit_children(store, &commit, vec![empty("c5"), empty("c249")]).await.unwrap();
        assert_eq!(done, Committed::default());
        assert_eq!(children_due(store, "loc", 2, &HashSet::new()).await.unwrap(), ["c3", "c248"]);
        let later = now_ms() + 1_000;
        assert_eq!(sweep_due(store, "loc", later, 10).await.unwrap().len(), 2);
        assert!(sweep_due(store, "loc", 0, 10).await.unwrap().is_empty());

        // Children as stored by an earlier commit (written directly: creating them through
        // `commit_children` asks `writebacks`, not yet on both backends).
        let mut tx = store.begin_write("test").await.unwrap();
        on_db!(tx.conn(), |c| sqlx::query(
            "INSERT INTO children (location_id, contact_id, kind, child_id, hash, record, revision, updated_at) \
             VALUES ('loc', 'c5', 'task', 't1', $1, $2, 3, 7000)",
        )
        .bind(vec![7u8; 32])
        .bind(codec::pack(&serde_json::json!({"id": "t1"})))
        .execute(c)
        .await
        .map(|done| done.rows_affected()))
        .unwrap();
        tx.commit().await.unwrap();
        let all = record_versions(store, &VersionFilter::default()).await.unwrap();
        assert_eq!(all.len(), 252);
        assert_eq!(all[0].entity_id, "c0");
        assert_eq!((all[251].entity, all[251].entity_id.as_str(), all[251].revision), (EntityKind::Task, "t1", 3));
        let since = VersionFilter { location: Some("loc".into()), since_ms: Some(6_000), ..VersionFilter::default() };
        let recent: Vec<_> = record_versions(store, &since).await.unwrap().into_iter().map(|v| v.entity_id).collect();
        // The undated contact counts from when the snapshot last changed it (now).
        assert_eq!(recent, ["c3", "undated", "t1"]);
        let mut tx = store.begin_write("test").await.unwrap();
        let task = record_version_on(tx.conn(), "loc", EntityKind::Task, "t1").await.unwrap().unwrap();
        assert_eq!((task.contact_id.as_str(), task.changed_at), ("c5", 7_000));
        assert_eq!(record_version_on(tx.conn(), "loc", EntityKind::Note, "t1").await.unwrap(), None);
        tx.rollback().await.unwrap();

        // Reconciliation: ids listed (in chunks, some twice) are kept, the rest are candidates.
        reconcile_reset(store, "loc").await.unwrap();
        let listed: Vec<String> = (0..240).map(|i| format!("c{i}")).chain((0..200).map(|i| format!("c{i}"))).collect();
        let listed: Vec<&str> = listed.iter().map(String::as_str).collect();
        reconcile_seen(store, "loc", &listed).await.unwrap();
        reconcile_seen(store, "loc", &listed[..10]).await.unwrap();
        let mut candidates = reconcile_candidates(store, "loc", now_ms() + 1_000).await.unwrap();
        candidates.sort();
        let expected: Vec<String> =
            (240..250).map(|i| format!("c{i}")).chain(["undated".to_owned()]).collect::<Vec<_>>();
        assert_eq!(candidates, expected);
        assert!(reconcile_candidates(store, "loc", 0).await.unwrap().is_empty());
        reconcile_reset(store, "loc").await.unwrap();
        assert_eq!(reconcile_candidates(store, "loc", now_ms() + 1_000).await.unwrap().len(), 251);

        // Reads for exports, `check` and the schedule trigger.
        let mut seen = Vec::new();
        scan_location_contacts::<StoreError, _>(store, "loc", 2, |item| {
            match item {
                ScanItem::Total(n) => seen.push(format!("total {n}")),
                ScanItem::Pass(p) => seen.push(format!("pass {p}")),
                ScanItem::Contact { pass, contact_id, record } => {
                    assert_eq!(record["id"], contact_id);
                    if contact_id == "c0" || contact_id == "undated" {
                        seen.push(format!("{pass} {contact_id}"));
                    }
                }
            }
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(seen, ["total 251", "pass 0", "0 c0", "0 undated", "pass 1", "1 c0", "1 undated"]);
        assert_eq!(recent_contacts(store, 3).await.unwrap().len(), 3);
        let page: Vec<String> =
            contacts_page(store, "loc", "c1", 3).await.unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(page, ["c10", "c100", "c101"]);
    }
}
