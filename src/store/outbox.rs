//! The `outbox` table: every change waiting for (or recently given to) a connector. All of
//! the outbox's SQL lives here; the dispatcher (`crate::dispatch`) only calls these functions.
//!
//! Contract:
//! - **One way in.** [`enqueue`] is the only insert: at most one pending row per (connector,
//!   record), with an explicit [`EnqueuePolicy`] for a record that already has one. The key of a
//!   row is the key of its record version ([`crate::domain::idempotency_key`]) unless the caller
//!   passes the stored key of an earlier delivery (dead-letter retry) or a salted one
//!   (`replay --new-keys`).
//! - **Rows are claimed before delivery.** Several daemons (replicas) may drain one PostgreSQL
//!   store: [`claim`] takes due rows that no live claim holds, oldest first, in one short write
//!   transaction (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so two claimers never wait for or
//!   take the same row; SQLite's single writer serialises claims by itself) and marks them
//!   `claimed_by` the claimer `claimed_until` a deadline. A claim ends with the row's outcome,
//!   with [`release`] / [`release_claims`], or at its deadline ([`renew_claims`] moves it while
//!   the delivery runs); only a claimer that died (or could not renew) lets another take its
//!   rows early, and those go out again under the same idempotency key.
//! - **One row in flight per record.** At most one pending row per record exists (above), and a
//!   claimed row stays claimed when a newer change folds into it: the newer content goes out
//!   after the in-flight delivery's outcome ends the claim, never beside it.
//! - **Outcomes apply to what was delivered.** [`record_outcomes`] writes a batch's outcomes in
//!   one short write transaction, each `WHERE id = $1 AND content_hash = $2 AND status =
//!   'pending'`: a row whose content was replaced while in flight stays pending (its claim
//!   released) and goes out next. It takes plain data; nothing but SQL runs inside the
//!   transaction.
//! - **Reads never write.** [`due`] (a read-only view of what [`claim`] would consider) and
//!   [`depth`] use the read pool.

use std::collections::{HashMap, HashSet};

use super::db::{self, Conn, json_values, on_db};
use super::{Store, StoreError, dead_letters, now_ms};
use crate::domain::diff::coalesce;
use crate::domain::{EntityKind, Operation, idempotency_key};

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
    /// The record version (`contacts.revision` / `children.revision`) this change carries.
    pub revision: i64,
    pub changed_at: i64,
}

/// What [`enqueue`] does when the record already has a pending row for this connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueuePolicy {
    /// The sync's rule: the newer change folds into the pending row (latest state wins, a
    /// `created` the target never saw stays `created`, see [`coalesce`]).
    Fold,
    /// Dead-letter retry and replay: the pending row is newer than what they re-send, so it
    /// is left alone and nothing is added.
    KeepPending,
}

/// What [`enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Inserted,
    Folded,
    /// A pending row for the record exists and was left alone ([`EnqueuePolicy::KeepPending`]).
    AlreadyPending,
}

/// The one way into the outbox: inserts the change under `key` (default: the key of its
/// record version, [`crate::domain::idempotency_key`]), or applies `policy` when the record
/// already has a pending row. At most one pending row per (connector, record) exists at any
/// time, which gives per-record order by construction.
pub async fn enqueue(
    mut conn: Conn<'_>,
    change: NewChange<'_>,
    policy: EnqueuePolicy,
    key: Option<&str>,
) -> Result<Enqueued, StoreError> {
    let now = now_ms();
    let key = key.map_or_else(|| version_key(&change), str::to_owned);
    let pending: Option<(i64, String)> = on_db!(conn.reborrow(), |c| {
        sqlx::query_as(
        "SELECT id, operation FROM outbox WHERE connector = $1 AND entity = $2 AND entity_id = $3 AND status = 'pending' LIMIT 1",
    )
    .bind(change.connector)
    .bind(change.entity.as_str())
    .bind(change.entity_id)
    .fetch_optional(c)
    .await
    })?;
    match (pending, policy) {
        (Some(_), EnqueuePolicy::KeepPending) => Ok(Enqueued::AlreadyPending),
        (Some((id, operation)), EnqueuePolicy::Fold) => {
            fold_into(conn, id, &operation, &change, &key, now).await?;
            Ok(Enqueued::Folded)
        }
        (None, _) => {
            insert_rows(conn, &[(change, key)], now).await?;
            Ok(Enqueued::Inserted)
        }
    }
}

/// The key of the record version a change carries.
fn version_key(change: &NewChange<'_>) -> String {
    idempotency_key(change.connector, change.entity, change.entity_id, change.revision, change.content_hash, "")
}

/// The sync's rule for a record that already has a pending row: the newer change folds into it.
/// A claim on the row is kept: the worker delivering the older content still holds the record,
/// and its outcome (which no longer applies) releases the row for the newer content.
async fn fold_into(
    conn: Conn<'_>,
    id: i64,
    pending_operation: &str,
    change: &NewChange<'_>,
    key: &str,
    now: i64,
) -> Result<(), StoreError> {
    let previous = Operation::parse(pending_operation).unwrap_or(Operation::Updated);
    let operation = coalesce(previous, change.operation);
    on_db!(conn, |c| sqlx::query(
        "UPDATE outbox SET operation = $1, record = $2, content_hash = $3, revision = $4, idempotency_key = $5, \
         changed_at = $6, updated_at = $7, contact_id = COALESCE($8, contact_id) WHERE id = $9",
    )
    .bind(operation.as_str())
    .bind(change.record)
    .bind(&change.content_hash[..])
    .bind(change.revision)
    .bind(key)
    .bind(change.changed_at)
    .bind(now)
    .bind(change.contact_id)
    .bind(id)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(())
}

/// Rows per multi-row `INSERT` (14 parameters each, far below SQLite's and PostgreSQL's limits).
const INSERT_ROWS: usize = 64;
/// Records per pending-row lookup.
const LOOKUP_IDS: usize = 500;

/// New pending rows, in order (a multi-row `INSERT` per [`INSERT_ROWS`]).
async fn insert_rows(mut conn: Conn<'_>, rows: &[(NewChange<'_>, String)], now: i64) -> Result<(), StoreError> {
    /// Parameters per row: 10 before the literal status and attempts, 4 after.
    const WIDTH: usize = 14;
    for chunk in rows.chunks(INSERT_ROWS) {
        let values = (0..chunk.len())
            .map(|r| format!("({}, 'pending', 0, {})", db::params(r * WIDTH, 10), db::params(r * WIDTH + 10, 4)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO outbox (connector, location_id, entity, entity_id, contact_id, operation, record, content_hash, \
             revision, idempotency_key, status, attempts, next_attempt_at, changed_at, created_at, updated_at) VALUES {values}"
        );
        on_db!(conn.reborrow(), |c, pg| {
            let sql = db::for_backend(pg, &sql);
            let mut query = sqlx::query(&sql);
            for (change, key) in chunk {
                query = query
                    .bind(change.connector)
                    .bind(change.location_id)
                    .bind(change.entity.as_str())
                    .bind(change.entity_id)
                    .bind(change.contact_id)
                    .bind(change.operation.as_str())
                    .bind(change.record)
                    .bind(&change.content_hash[..])
                    .bind(change.revision)
                    .bind(key.as_str())
                    .bind(now)
                    .bind(change.changed_at)
                    .bind(now)
                    .bind(now);
            }
            query.execute(c).await.map(|done| done.rows_affected())
        })?;
    }
    Ok(())
}

/// [`enqueue`] with [`EnqueuePolicy::Fold`] and the keys of the record versions, for many
/// changes inside the caller's transaction (the sync's page commit), in a few statements
/// instead of two per change: one lookup of pending rows per connector and entity, multi-row
/// `INSERT`s for the rest (in the order given), an `UPDATE` per fold. The outcome is the same
/// as [`enqueue`] called for each change in order: a record named twice is handled in a later
/// round, where its second change folds into the row of its first.
pub async fn enqueue_folding(mut conn: Conn<'_>, changes: &[NewChange<'_>]) -> Result<Vec<Enqueued>, StoreError> {
    let mut outcomes = vec![Enqueued::Inserted; changes.len()];
    let mut rest: Vec<usize> = (0..changes.len()).collect();
    while !rest.is_empty() {
        let mut named = HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) = rest.iter().partition(|&&i| {
            let change = &changes[i];
            named.insert((change.connector, change.entity, change.entity_id))
        });
        enqueue_round(conn.reborrow(), changes, &round, &mut outcomes).await?;
        rest = later;
    }
    Ok(outcomes)
}

/// Pending rows by entity id: their id and operation.
type PendingRows = HashMap<String, (i64, String)>;

/// One round of [`enqueue_folding`]: `round` names each record at most once.
async fn enqueue_round(
    mut conn: Conn<'_>,
    changes: &[NewChange<'_>],
    round: &[usize],
    outcomes: &mut [Enqueued],
) -> Result<(), StoreError> {
    let mut ids: HashMap<(&str, EntityKind), Vec<&str>> = HashMap::new();
    for &i in round {
        let change = &changes[i];
        ids.entry((change.connector, change.entity)).or_default().push(change.entity_id);
    }
    // The pending row of each record (at most one exists; the oldest if ever more).
    let mut pending: HashMap<(&str, EntityKind), PendingRows> = HashMap::new();
    for ((connector, entity), ids) in &ids {
        let found = pending.entry((*connector, *entity)).or_default();
        for chunk in ids.chunks(LOOKUP_IDS) {
            let placeholders = db::params(2, chunk.len());
            let sql = format!(
                "SELECT entity_id, id, operation FROM outbox WHERE connector = $1 AND entity = $2 AND status = 'pending' \
                 AND entity_id IN ({placeholders}) ORDER BY id"
            );
            let rows: Vec<(String, i64, String)> = on_db!(conn.reborrow(), |c, pg| {
                let sql = db::for_backend(pg, &sql);
                let mut query = sqlx::query_as(&sql).bind(*connector).bind(entity.as_str());
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_all(c).await
            })?;
            for (entity_id, id, operation) in rows {
                found.entry(entity_id).or_insert((id, operation));
            }
        }
    }
    let now = now_ms();
    let mut inserts = Vec::with_capacity(round.len());
    for &i in round {
        let change = changes[i];
        let key = version_key(&change);
        match pending.get(&(change.connector, change.entity)).and_then(|found| found.get(change.entity_id)) {
            Some((id, operation)) => {
                fold_into(conn.reborrow(), *id, operation, &change, &key, now).await?;
                outcomes[i] = Enqueued::Folded;
            }
            None => inserts.push((change, key)),
        }
    }
    insert_rows(conn, &inserts, now).await
}

/// [`enqueue`] for several changes in one short write transaction (replay, tools): each change
/// with its key (`None`: the key of its record version). Returns what happened to each.
pub async fn enqueue_all(
    store: &Store,
    purpose: &'static str,
    changes: &[(NewChange<'_>, Option<&str>)],
    policy: EnqueuePolicy,
) -> Result<Vec<Enqueued>, StoreError> {
    let mut done = Vec::with_capacity(changes.len());
    if changes.is_empty() {
        return Ok(done);
    }
    let mut tx = store.begin_write(purpose).await?;
    for (change, key) in changes {
        done.push(enqueue(tx.conn(), *change, policy, *key).await?);
    }
    tx.commit().await?;
    Ok(done)
}

/// One pending outbox row, as handed to a connector's worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub connector: String,
    pub location_id: String,
    pub entity: EntityKind,
    pub entity_id: String,
    pub contact_id: Option<String>,
    pub operation: Operation,
    /// `codec::pack` of the record as of the change.
    pub record: Option<Vec<u8>>,
    pub content_hash: Vec<u8>,
    /// The record version the row carries (0 for rows written before revisions existed).
    pub revision: i64,
    pub idempotency_key: String,
    /// Attempts made so far (0 before the first).
    pub attempts: i64,
    pub changed_at: i64,
}

impl OutboxRow {
    /// The row as delivered: what an outcome for it applies to.
    pub fn version(&self) -> RowVersion {
        RowVersion { id: self.id, content_hash: self.content_hash.clone() }
    }
}

/// One row with the content it held when it was handed out. An outcome applies only while the
/// row still holds that content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowVersion {
    pub id: i64,
    pub content_hash: Vec<u8>,
}

/// A due row whose entity or operation this build does not know: it cannot be delivered and
/// goes to dead letters with `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableRow {
    pub version: RowVersion,
    pub reason: String,
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    id: i64,
    connector: String,
    location_id: String,
    entity: String,
    entity_id: String,
    contact_id: Option<String>,
    operation: String,
    record: Option<Vec<u8>>,
    content_hash: Vec<u8>,
    revision: i64,
    idempotency_key: String,
    attempts: i64,
    changed_at: i64,
}

impl StoredRow {
    fn typed(self) -> Result<OutboxRow, UnreadableRow> {
        let unreadable = |reason: String| UnreadableRow {
            version: RowVersion { id: self.id, content_hash: self.content_hash.clone() },
            reason,
        };
        let entity =
            EntityKind::parse(&self.entity).ok_or_else(|| unreadable(format!("unknown entity {:?}", self.entity)))?;
        let operation = Operation::parse(&self.operation)
            .ok_or_else(|| unreadable(format!("unknown operation {:?}", self.operation)))?;
        Ok(OutboxRow {
            id: self.id,
            connector: self.connector,
            location_id: self.location_id,
            entity,
            entity_id: self.entity_id,
            contact_id: self.contact_id,
            operation,
            record: self.record,
            content_hash: self.content_hash,
            revision: self.revision,
            idempotency_key: self.idempotency_key,
            attempts: self.attempts,
            changed_at: self.changed_at,
        })
    }
}

/// Up to `limit` pending rows of `connector` due at `now`, oldest first; with `locations`,
/// only rows of those locations. A read-only view (claims are ignored, nothing is marked):
/// delivery takes rows with [`claim`]; this is for tools and tests that look at the queue.
pub async fn due(
    store: &Store,
    connector: &str,
    now: i64,
    limit: usize,
    locations: Option<&[String]>,
) -> Result<Vec<Result<OutboxRow, UnreadableRow>>, StoreError> {
    // The ids first, then their rows: ordering the due rows themselves made SQLite sort every
    // due row, record included, in a temporary B-tree for each batch, so a backlog of 50,000
    // rows was drained in quadratic time and read gigabytes; sorting their ids is cheap, and
    // without a location filter the ids come from the covering index `outbox_due` alone (its
    // range also keeps rows waiting in backoff out of the work).
    const COLUMNS: &str = "SELECT id, connector, location_id, entity, entity_id, contact_id, operation, record, \
                           content_hash, revision, idempotency_key, attempts, changed_at FROM outbox WHERE id IN (";
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<StoredRow> = match locations {
        None => on_db!(store.db(), |pool| sqlx::query_as(&format!(
            "{COLUMNS}SELECT id FROM outbox WHERE connector = $1 AND status = 'pending' AND next_attempt_at <= $2 \
             ORDER BY id LIMIT $3) ORDER BY id"
        ))
        .bind(connector)
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await)?,
        Some(locations) => on_db!(store.db(), |pool, pg| sqlx::query_as(&format!(
            "{COLUMNS}SELECT id FROM outbox WHERE connector = $1 AND status = 'pending' AND next_attempt_at <= $2 \
             AND location_id IN ({}) ORDER BY id LIMIT $3) ORDER BY id",
            json_values(pg, 4)
        ))
        .bind(connector)
        .bind(now)
        .bind(limit)
        .bind(db::json_list(locations))
        .fetch_all(pool)
        .await)?,
    };
    Ok(rows.into_iter().map(StoredRow::typed).collect())
}

/// Who takes rows in [`claim`], when, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The claimer: a replica id ([`crate::store::replica_id`]).
    pub claimer: &'a str,
    /// The claimer's wall clock (epoch ms): claims whose deadline is not after it are over.
    pub now: i64,
    /// How long the claim holds (ms) unless renewed ([`renew_claims`]) or ended earlier.
    pub for_ms: i64,
}

/// The row columns [`claim`] returns (the same as [`due`]'s).
const ROW_COLUMNS: &str = "id, connector, location_id, entity, entity_id, contact_id, operation, record, content_hash, \
                           revision, idempotency_key, attempts, changed_at";

/// Claims up to `limit` pending rows of `connector` due at `due_by` that no live claim holds
/// (none, or one whose deadline is not after `claim.now`), oldest first; with `locations`, only
/// rows of those locations. In one short write transaction the rows are marked `claimed_by =
/// claim.claimer`, `claimed_until = claim.now + claim.for_ms` and returned in id order. On
/// PostgreSQL the rows are locked `FOR UPDATE SKIP LOCKED`: concurrent claimers (other
/// replicas) skip each other's rows instead of waiting, and never get the same row; on SQLite
/// the store's one writer serialises claims. A row returned is the caller's until it records
/// the row's outcome ([`record_outcomes`]), releases it ([`release`], [`release_claims`]) or the
/// deadline passes.
pub async fn claim(
    store: &Store,
    connector: &str,
    due_by: i64,
    limit: usize,
    locations: Option<&[String]>,
    claim: Claim<'_>,
) -> Result<Vec<Result<OutboxRow, UnreadableRow>>, StoreError> {
    if limit == 0 || locations.is_some_and(<[String]>::is_empty) {
        return Ok(Vec::new());
    }
    // Candidates first, then the claim: the due rows' ids come from the covering index
    // `outbox_due` alone (as in `due`), a window of them in id order, and only that window's
    // rows are read to check their claims and take them. Checking the claim of every due row
    // read each one from the table: with 50,000 rows waiting a claim of 50 cost 32 ms of the
    // store's one writer on SQLite (5 ms this way). A window whose rows other claimers hold
    // moves on to the next one.
    let window = limit.saturating_mul(4).clamp(64, CLAIM_WINDOW_MAX);
    let until = claim.now.saturating_add(claim.for_ms);
    let locations = locations.map(db::json_list);
    let mut tx = store.begin_write("outbox_claim").await?;
    let mut rows: Vec<StoredRow> = Vec::new();
    let mut after = None;
    while rows.len() < limit {
        let candidates = due_ids(tx.conn(), connector, due_by, after, window, locations.as_deref()).await?;
        let Some(&last) = candidates.last() else { break };
        let need = i64::try_from(limit - rows.len()).unwrap_or(i64::MAX);
        let taken: Vec<StoredRow> = on_db!(tx.conn(), |c, pg| {
            // The one per-backend clause: SQLite has no row locks (its writer is exclusive).
            let lock = if pg { " FOR UPDATE SKIP LOCKED" } else { "" };
            let sql = format!(
                "UPDATE outbox SET claimed_by = $1, claimed_until = $2 WHERE id IN (SELECT id FROM outbox \
                 WHERE id IN ({}) AND status = 'pending' AND next_attempt_at <= $3 \
                 AND (claimed_until IS NULL OR claimed_until <= $4) ORDER BY id LIMIT $5{lock}) \
                 RETURNING {ROW_COLUMNS}",
                db::params(5, candidates.len())
            );
            let sql = db::for_backend(pg, &sql);
            let mut query =
                sqlx::query_as(&sql).bind(claim.claimer).bind(until).bind(due_by).bind(claim.now).bind(need);
            for id in &candidates {
                query = query.bind(*id);
            }
            query.fetch_all(c).await
        })?;
        rows.extend(taken);
        if candidates.len() < window {
            break;
        }
        after = Some(last);
    }
    tx.commit().await?;
    rows.sort_unstable_by_key(|row| row.id);
    Ok(rows.into_iter().map(StoredRow::typed).collect())
}

/// The most candidate ids [`claim`] looks at per statement.
const CLAIM_WINDOW_MAX: usize = 2_000;

/// Up to `window` ids of pending rows of `connector` due at `due_by`, after `after`, in id
/// order (claims are not looked at); with `locations` (a JSON list), only those locations'.
async fn due_ids(
    conn: Conn<'_>,
    connector: &str,
    due_by: i64,
    after: Option<i64>,
    window: usize,
    locations: Option<&str>,
) -> Result<Vec<i64>, StoreError> {
    let window = i64::try_from(window).unwrap_or(i64::MAX);
    Ok(on_db!(conn, |c, pg| {
        let in_locations = match locations {
            Some(_) => format!(" AND location_id IN ({})", json_values(pg, 5)),
            None => String::new(),
        };
        // `id > $3` only past the first window: a bound on the rowid can lead SQLite to walk the
        // table in id order (delivered rows included) instead of the covering index.
        let after_clause = if after.is_some() { " AND id > $3" } else { " AND $3 IS NULL" };
        let sql = format!(
            "SELECT id FROM outbox WHERE connector = $1 AND status = 'pending' AND next_attempt_at <= $2\
             {after_clause}{in_locations} ORDER BY id LIMIT $4"
        );
        let mut query = sqlx::query_scalar(&sql).bind(connector).bind(due_by).bind(after).bind(window);
        if let Some(locations) = locations {
            query = query.bind(locations);
        }
        query.fetch_all(c).await
    })?)
}

/// Moves the deadline of `claimer`'s claims on the rows `ids` to `until` (epoch ms), while
/// their delivery runs. Rows another claimer took in the meantime (after this claim expired)
/// and rows no longer pending are left alone. Returns the claims renewed.
pub async fn renew_claims(store: &Store, claimer: &str, ids: &[i64], until: i64) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut tx = store.begin_write("outbox_claim_renew").await?;
    let mut renewed = 0;
    for chunk in ids.chunks(LOOKUP_IDS) {
        let sql = format!(
            "UPDATE outbox SET claimed_until = $1 WHERE claimed_by = $2 AND status = 'pending' AND id IN ({})",
            db::params(2, chunk.len())
        );
        renewed += on_db!(tx.conn(), |c, pg| {
            let sql = db::for_backend(pg, &sql);
            let mut query = sqlx::query(&sql).bind(until).bind(claimer);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(c).await.map(|done| done.rows_affected())
        })?;
    }
    tx.commit().await?;
    Ok(renewed)
}

/// Ends `claimer`'s claims on the rows `ids` (a batch it took but will not deliver): they are
/// free for any claimer at once. Returns the claims released.
pub async fn release(store: &Store, claimer: &str, ids: &[i64]) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let mut tx = store.begin_write("outbox_claim_release").await?;
    let mut released = 0;
    for chunk in ids.chunks(LOOKUP_IDS) {
        released += release_in(tx.conn(), claimer, chunk).await?;
    }
    tx.commit().await?;
    Ok(released)
}

async fn release_in(conn: Conn<'_>, claimer: &str, ids: &[i64]) -> Result<u64, StoreError> {
    let sql = format!(
        "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1 AND id IN ({})",
        db::params(1, ids.len())
    );
    Ok(on_db!(conn, |c, pg| {
        let sql = db::for_backend(pg, &sql);
        let mut query = sqlx::query(&sql).bind(claimer);
        for id in ids {
            query = query.bind(*id);
        }
        query.execute(c).await.map(|done| done.rows_affected())
    })?)
}

/// Ends every claim `claimer` holds (a clean stop: what it has not finished is free for the
/// other replicas at once instead of at the claims' deadlines). Returns the claims released.
pub async fn release_claims(store: &Store, claimer: &str) -> Result<u64, StoreError> {
    let mut tx = store.begin_write("outbox_claims_release").await?;
    let released = on_db!(tx.conn(), |c| sqlx::query(
        "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1"
    )
    .bind(claimer)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    tx.commit().await?;
    Ok(released)
}

/// Ends every claim, whoever holds it: for a process that holds the store alone (a daemon on
/// SQLite, `sync --once`, behind the exclusive lock), whose claimers can only be dead processes
/// (`kill -9`): their rows go out at once under the same keys instead of after the claim TTL.
/// Never call it while replicas share the store. Returns the claims ended.
pub async fn release_dead_claims(store: &Store) -> Result<u64, StoreError> {
    let any: i64 = on_db!(store.db(), |pool| {
        sqlx::query_scalar(
        "SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM outbox WHERE claimed_by IS NOT NULL) THEN 1 ELSE 0 END AS BIGINT)"
    )
    .fetch_one(pool)
    .await
    })?;
    if any == 0 {
        return Ok(0);
    }
    let mut tx = store.begin_write("outbox_dead_claims_release").await?;
    let released = on_db!(tx.conn(), |c| sqlx::query(
        "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by IS NOT NULL"
    )
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    tx.commit().await?;
    Ok(released)
}

/// After the wall clock went back: pending rows last written more than `tolerance_ms` after
/// `now` wait, from `now`, what was left of their wait when they were written
/// (`next_attempt_at - updated_at`, at least 0) instead of the size of the step plus that.
/// Rows already due stay due. Returns the rows rescheduled.
pub async fn reschedule_after_clock_step_back(store: &Store, now: i64, tolerance_ms: i64) -> Result<u64, StoreError> {
    // Usually there is none: look before taking the writer.
    let any: i64 = on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM outbox WHERE status = 'pending' AND updated_at > $1 + $2) \
         THEN 1 ELSE 0 END AS BIGINT)"
    )
    .bind(now)
    .bind(tolerance_ms)
    .fetch_one(pool)
    .await)?;
    if any == 0 {
        return Ok(0);
    }
    let mut tx = store.begin_write("outbox_clock_step_back").await?;
    let moved = on_db!(tx.conn(), |c| sqlx::query(
        "UPDATE outbox SET next_attempt_at = $1 + CASE WHEN next_attempt_at - updated_at > 0 \
           THEN next_attempt_at - updated_at ELSE 0 END, updated_at = $1 \
         WHERE status = 'pending' AND updated_at > $1 + $2",
    )
    .bind(now)
    .bind(tolerance_ms)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    tx.commit().await?;
    Ok(moved)
}

/// Rows of one connector still pending after a drain, for `sync --once`'s summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Undelivered {
    /// All pending rows (waiting for their first attempt, in backoff or parked).
    pub pending: i64,
    /// Of those, rows that failed at least once.
    pub retrying: i64,
    /// The newest failure reason among them.
    pub last_error: Option<String>,
}

/// Pending rows of `connector` in `locations`.
pub async fn undelivered(store: &Store, connector: &str, locations: &[String]) -> Result<Undelivered, StoreError> {
    let locations = db::json_list(locations);
    let (pending, retrying): (i64, i64) = on_db!(store.db(), |pool, pg| sqlx::query_as(&format!(
        "SELECT COUNT(*), CAST(COALESCE(SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), 0) AS BIGINT) FROM outbox \
         WHERE connector = $1 AND status = 'pending' AND location_id IN ({})",
        json_values(pg, 2)
    ))
    .bind(connector)
    .bind(&locations)
    .fetch_one(pool)
    .await)?;
    let last_error: Option<String> = on_db!(store.db(), |pool, pg| sqlx::query_scalar(&format!(
        "SELECT last_error FROM outbox WHERE connector = $1 AND status = 'pending' AND last_error IS NOT NULL \
         AND location_id IN ({}) ORDER BY updated_at DESC LIMIT 1",
        json_values(pg, 2)
    ))
    .bind(connector)
    .bind(&locations)
    .fetch_optional(pool)
    .await)?;
    Ok(Undelivered { pending, retrying, last_error })
}

/// What happened to one delivered row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The target took it: the row is done.
    Delivered,
    /// Deliberately not delivered (a filter): the row is done, with the reason as its note.
    Skipped(String),
    /// A retryable failure: one attempt is counted, the next one is due at `at` (epoch ms),
    /// decided at `since` (the row's `updated_at`: a step back of the clock is measured from
    /// the same reading as the wait, see [`reschedule_after_clock_step_back`]).
    Retry { at: i64, since: i64, error: String },
    /// Held back by the connector: no attempt is counted, the next one is due at `at`.
    Parked { at: i64, since: i64, reason: String },
    /// Refused for good, out of attempts or unreadable: moved to dead letters.
    Dead(String),
}

/// The outcome of one row of a batch, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome {
    pub row: RowVersion,
    pub verdict: Verdict,
}

/// Records a batch's outcomes in one short write transaction. Each applies only while its row
/// is still pending with the delivered content; the answer says, per outcome, whether it
/// applied (`false`: the row was replaced in flight and stays pending with the newer change).
/// Either way `claimer`'s claim on the row ends (a row in backoff waits for its
/// `next_attempt_at`, then any claimer may take it); a claim another claimer holds is left
/// alone. `now` is the wall clock the verdicts were computed with.
pub async fn record_outcomes(
    store: &Store,
    claimer: &str,
    outcomes: &[DeliveryOutcome],
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    let mut applied = Vec::with_capacity(outcomes.len());
    if outcomes.is_empty() {
        return Ok(applied);
    }
    let mut tx = store.begin_write("delivery_outcomes").await?;
    let mut superseded = Vec::new();
    for outcome in outcomes {
        let row = &outcome.row;
        let (done, attempt, next_at, note, at) = match &outcome.verdict {
            Verdict::Delivered => (true, 1, None, None, now),
            Verdict::Skipped(reason) => (true, 1, None, Some(reason.as_str()), now),
            Verdict::Retry { at, since, error } => (false, 1, Some(*at), Some(error.as_str()), *since),
            Verdict::Parked { at, since, reason } => (false, 0, Some(*at), Some(reason.as_str()), *since),
            Verdict::Dead(reason) => {
                let moved = dead_letters::move_from_outbox(tx.conn(), row, reason, now).await?;
                if !moved {
                    superseded.push(row.id);
                }
                applied.push(moved);
                continue;
            }
        };
        let update = Update { done, attempt, next_at, note, claimer };
        let done = self::update(tx.conn(), row, update, at).await?;
        if !done {
            superseded.push(row.id);
        }
        applied.push(done);
    }
    // Replaced in flight: the newer content goes out next, from any claimer.
    for chunk in superseded.chunks(LOOKUP_IDS) {
        release_in(tx.conn(), claimer, chunk).await?;
    }
    tx.commit().await?;
    Ok(applied)
}

struct Update<'a> {
    done: bool,
    attempt: i64,
    next_at: Option<i64>,
    note: Option<&'a str>,
    /// Whose claim on the row the outcome ends.
    claimer: &'a str,
}

async fn update(conn: Conn<'_>, row: &RowVersion, update: Update<'_>, now: i64) -> Result<bool, StoreError> {
    let done = on_db!(conn, |c| sqlx::query(
        "UPDATE outbox SET status = $1, attempts = attempts + $2, next_attempt_at = COALESCE($3, next_attempt_at), \
         last_error = $4, updated_at = $5, \
         claimed_until = CASE WHEN claimed_by = $8 THEN NULL ELSE claimed_until END, \
         claimed_by = CASE WHEN claimed_by = $8 THEN NULL ELSE claimed_by END \
         WHERE id = $6 AND content_hash = $7 AND status = 'pending'",
    )
    .bind(if update.done { "done" } else { "pending" })
    .bind(update.attempt)
    .bind(update.next_at)
    .bind(update.note)
    .bind(now)
    .bind(row.id)
    .bind(&row.content_hash)
    .bind(update.claimer)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(done == 1)
}

/// Whether a newer version of the record than (`revision`, `changed_at`) was delivered to
/// `connector` (and not pruned yet). Revisions compare when both are known; rows written
/// before revisions existed compare by `changed_at`.
pub(super) async fn newer_delivered(
    conn: Conn<'_>,
    connector: &str,
    entity: EntityKind,
    entity_id: &str,
    revision: i64,
    changed_at: i64,
) -> Result<bool, StoreError> {
    let found: Option<i64> = on_db!(conn, |c| sqlx::query_scalar(
        "SELECT id FROM outbox WHERE connector = $1 AND entity = $2 AND entity_id = $3 AND status = 'done' \
         AND CASE WHEN $4 > 0 AND revision > 0 THEN revision > $4 ELSE changed_at > $5 END LIMIT 1",
    )
    .bind(connector)
    .bind(entity.as_str())
    .bind(entity_id)
    .bind(revision)
    .bind(changed_at)
    .fetch_optional(c)
    .await)?;
    Ok(found.is_some())
}

/// Deletes delivered rows last touched before `before`, in short transactions. Returns how many.
pub async fn prune(store: &Store, before: i64) -> Result<u64, StoreError> {
    super::delete_in_chunks(
        store,
        "outbox_prune",
        "DELETE FROM outbox WHERE id IN \
         (SELECT id FROM outbox WHERE status = 'done' AND updated_at < $1 ORDER BY id LIMIT $2)",
        before,
    )
    .await
}

/// The pending queue of one connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub connector: String,
    pub pending: i64,
    /// `created_at` of the oldest pending row (epoch ms).
    pub oldest_created_at: i64,
}

/// Pending rows per connector (connectors with none are absent), by connector id.
pub async fn depth(store: &Store) -> Result<Vec<QueueDepth>, StoreError> {
    let rows: Vec<(String, i64, i64)> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT connector, COUNT(*), MIN(created_at) FROM outbox WHERE status = 'pending' \
         GROUP BY connector ORDER BY connector",
    )
    .fetch_all(pool)
    .await)?;
    Ok(rows
        .into_iter()
        .map(|(connector, pending, oldest_created_at)| QueueDepth { connector, pending, oldest_created_at })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::testing::{exec, store_pairs, stores};

    fn change<'a>(id: &'a str, op: Operation, hash: &'a [u8; 32], revision: i64, record: &'a [u8]) -> NewChange<'a> {
        NewChange {
            connector: "webhook.a",
            location_id: "loc",
            entity: EntityKind::Contact,
            entity_id: id,
            contact_id: Some(id),
            operation: op,
            record,
            content_hash: hash,
            revision,
            changed_at: 1,
        }
    }

    async fn rows(store: &Store) -> Vec<(String, String, Vec<u8>, String)> {
        on_db!(store.db(), |pool| sqlx::query_as(
            "SELECT entity_id, operation, record, idempotency_key FROM outbox ORDER BY id"
        )
        .fetch_all(pool)
        .await)
        .unwrap()
    }

    #[tokio::test]
    async fn a_newer_change_folds_into_the_pending_row_and_keeps_created() {
        for (_guard, store) in stores().await {
            newer_change_folds(&store).await;
        }
    }

    async fn newer_change_folds(store: &Store) {
        let mut tx = store.begin_write("test").await.unwrap();
        let fold = EnqueuePolicy::Fold;
        assert_eq!(
            enqueue(tx.conn(), change("c1", Operation::Created, &[1; 32], 1, b"v1"), fold, None).await.unwrap(),
            Enqueued::Inserted
        );
        assert_eq!(
            enqueue(tx.conn(), change("c1", Operation::Updated, &[2; 32], 2, b"v2"), fold, None).await.unwrap(),
            Enqueued::Folded
        );
        enqueue(tx.conn(), change("c2", Operation::Created, &[3; 32], 1, b"x"), fold, None).await.unwrap();
        tx.commit().await.unwrap();
        let rows = rows(store).await;
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.as_slice()), ("c1", "created", &b"v2"[..]));
        assert_eq!(rows[0].3, idempotency_key("webhook.a", EntityKind::Contact, "c1", 2, &[2; 32], ""));
    }

    #[tokio::test]
    async fn after_a_clock_step_back_rows_written_in_the_future_wait_only_what_was_left_of_their_wait() {
        for (_guard, store) in stores().await {
            clock_step_back(&store).await;
        }
    }

    async fn clock_step_back(store: &Store) {
        let mut tx = store.begin_write("test").await.unwrap();
        for (id, hash) in [("due", 1u8), ("waiting", 2), ("parked", 3), ("past", 4)] {
            enqueue(tx.conn(), change(id, Operation::Created, &[hash; 32], 1, b"v"), EnqueuePolicy::Fold, None)
                .await
                .unwrap();
        }
        // Written at t = 200,000 s (the clock then), waiting 0, 2 s and an hour; one written at 100,000 s.
        let at = 200_000_000i64;
        for (id, updated, next) in [
            ("due", at, at - 5),
            ("waiting", at, at + 2_000),
            ("parked", at, at + 3_600_000),
            ("past", 100_000_000, 100_002_000),
        ] {
            on_db!(tx.conn(), |c| sqlx::query(
                "UPDATE outbox SET updated_at = $1, next_attempt_at = $2 WHERE entity_id = $3"
            )
            .bind(updated)
            .bind(next)
            .bind(id)
            .execute(c)
            .await
            .map(|done| done.rows_affected()))
            .unwrap();
        }
        tx.commit().await.unwrap();
        // The clock steps back a day: before the first three writes, after the last one.
        let now = at - 86_400_000;
        assert_eq!(reschedule_after_clock_step_back(store, now, 1_000).await.unwrap(), 3);
        let next: Vec<(String, i64, i64)> = on_db!(store.db(), |pool| sqlx::query_as(
            "SELECT entity_id, next_attempt_at, updated_at FROM outbox ORDER BY id"
        )
        .fetch_all(pool)
        .await)
        .unwrap();
        assert_eq!(
            next,
            vec![
                ("due".to_owned(), now, now),
                ("waiting".to_owned(), now + 2_000, now),
                ("parked".to_owned(), now + 3_600_000, now),
                ("past".to_owned(), 100_002_000, 100_000_000),
            ]
        );
        assert_eq!(reschedule_after_clock_step_back(store, now, 1_000).await.unwrap(), 0, "once only");
    }

    #[tokio::test]
    async fn keep_pending_leaves_a_newer_pending_row_alone_and_an_explicit_key_is_kept() {
        for (_guard, store) in stores().await {
            keep_pending(&store).await;
        }
    }

    async fn keep_pending(store: &Store) {
        let mut tx = store.begin_write("test").await.unwrap();
        let keep = EnqueuePolicy::KeepPending;
        enqueue(tx.conn(), change("c1", Operation::Updated, &[2; 32], 2, b"v2"), EnqueuePolicy::Fold, None)
            .await
            .unwrap();
        let again = enqueue(tx.conn(), change("c1", Operation::Updated, &[1; 32], 1, b"v1"), keep, Some("old-key"))
            .await
            .unwrap();
        assert_eq!(again, Enqueued::AlreadyPending);
        assert_eq!(
            enqueue(tx.conn(), change("c9", Operation::Updated, &[1; 32], 1, b"v1"), keep, Some("old-key"))
                .await
                .unwrap(),
            Enqueued::Inserted
        );
        tx.commit().await.unwrap();
        let rows = rows(store).await;
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].2, b"v2");
        assert_eq!(rows[1].3, "old-key");
    }

    type FullRow = (i64, String, String, String, String, Vec<u8>, Vec<u8>, i64, String);

    /// Every column but the timestamps, in id order.
    async fn full_rows(store: &Store) -> Vec<FullRow> {
        on_db!(store.db(), |pool| sqlx::query_as(
            "SELECT id, connector, entity, entity_id, operation, record, content_hash, revision, idempotency_key \
             FROM outbox ORDER BY id",
        )
        .fetch_all(pool)
        .await)
        .unwrap()
    }

    #[tokio::test]
    async fn a_batch_enqueues_exactly_as_one_enqueue_per_change_in_order() {
        // One store enqueues one by one, the other (same backend) as a batch.
        for ((_one_guard, one), (_batch_guard, batched)) in stores().await.into_iter().zip(stores().await) {
            batch_as_one_by_one(&one, &batched).await;
        }
    }

    async fn batch_as_one_by_one(one: &Store, batched: &Store) {
        // Two connectors, an old pending row, a delivered row, a record named three times
        // (one batch has more rows than one INSERT takes).
        let records: Vec<(String, Vec<u8>)> = (0..150).map(|i| (format!("c{}", i % 140), vec![i as u8; 3])).collect();
        let hashes: Vec<[u8; 32]> = (0..150).map(|i| [i as u8; 32]).collect();
        let mut batch = Vec::new();
        for (i, (id, record)) in records.iter().enumerate() {
            let op = if i % 3 == 0 { Operation::Created } else { Operation::Updated };
            let first = change(id, op, &hashes[i], i as i64, record);
            batch.push(first);
            if i % 2 == 0 {
                batch.push(NewChange { connector: "webhook.b", entity: EntityKind::Task, ..first });
            }
        }
        batch.push(change("c7", Operation::Deleted, &[9; 32], 99, b""));
        let seed = |store: Store| async move {
            let mut tx = store.begin_write("test").await.unwrap();
            let fold = EnqueuePolicy::Fold;
            enqueue(tx.conn(), change("c3", Operation::Created, &[7; 32], 1, b"old"), fold, None).await.unwrap();
            enqueue(tx.conn(), change("c5", Operation::Created, &[7; 32], 1, b"sent"), fold, None).await.unwrap();
            tx.commit().await.unwrap();
            exec(&store, "UPDATE outbox SET status = 'done' WHERE entity_id = 'c5'").await;
        };

        seed(one.clone()).await;
        let mut tx = one.begin_write("test").await.unwrap();
        let mut expected = Vec::new();
        for change in &batch {
            expected.push(enqueue(tx.conn(), *change, EnqueuePolicy::Fold, None).await.unwrap());
        }
        tx.commit().await.unwrap();

        seed(batched.clone()).await;
        let mut tx = batched.begin_write("test").await.unwrap();
        let outcomes = enqueue_folding(tx.conn(), &batch).await.unwrap();
        tx.commit().await.unwrap();

        assert_eq!(outcomes, expected);
        assert!(outcomes.contains(&Enqueued::Folded) && outcomes.contains(&Enqueued::Inserted));
        let rows = full_rows(batched).await;
        assert_eq!(rows, full_rows(one).await);
        assert!(rows.len() > INSERT_ROWS, "more rows than one INSERT takes: {}", rows.len());
        let mut tx = batched.begin_write("test").await.unwrap();
        assert_eq!(enqueue_folding(tx.conn(), &[]).await.unwrap(), vec![]);
        tx.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn a_delivered_row_is_not_reused() {
        for (_guard, store) in stores().await {
            delivered_row_not_reused(&store).await;
        }
    }

    async fn delivered_row_not_reused(store: &Store) {
        let mut tx = store.begin_write("test").await.unwrap();
        enqueue(tx.conn(), change("c1", Operation::Created, &[1; 32], 1, b"v1"), EnqueuePolicy::Fold, None)
            .await
            .unwrap();
        on_db!(tx.conn(), |c| sqlx::query("UPDATE outbox SET status = 'done'")
            .execute(c)
            .await
            .map(|done| done.rows_affected()))
        .unwrap();
        enqueue(tx.conn(), change("c1", Operation::Updated, &[2; 32], 2, b"v2"), EnqueuePolicy::Fold, None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(rows(store).await.len(), 2);
    }

    async fn put(store: &Store, change: NewChange<'_>) {
        enqueue_all(store, "test", &[(change, None)], EnqueuePolicy::Fold).await.unwrap();
    }

    /// Rows for c1 and c3 in location a, c2 in b, c4 in c, in that order.
    async fn enqueue_in_three_locations(store: &Store) {
        let changes: Vec<_> = [("c1", "a"), ("c2", "b"), ("c3", "a"), ("c4", "c")]
            .iter()
            .map(|(id, location)| {
                (NewChange { location_id: location, ..change(id, Operation::Updated, &[1; 32], 1, b"v") }, None)
            })
            .collect();
        enqueue_all(store, "test", &changes, EnqueuePolicy::Fold).await.unwrap();
    }

    async fn due_rows(store: &Store) -> Vec<OutboxRow> {
        due(store, "webhook.a", i64::MAX, 100, None).await.unwrap().into_iter().map(Result::unwrap).collect()
    }

    #[tokio::test]
    async fn due_rows_come_oldest_first_within_the_limit_and_the_locations_asked_for() {
        for (_guard, store) in stores().await {
            due_by_location(&store).await;
        }
    }

    async fn due_by_location(store: &Store) {
        enqueue_in_three_locations(store).await;
        let ids = |rows: Vec<Result<OutboxRow, UnreadableRow>>| -> Vec<String> {
            rows.into_iter().map(|row| row.unwrap().entity_id).collect()
        };
        assert_eq!(ids(due(store, "webhook.a", i64::MAX, 3, None).await.unwrap()), ["c1", "c2", "c3"]);
        assert!(due(store, "webhook.a", 0, 10, None).await.unwrap().is_empty(), "not due yet");
        assert!(due(store, "webhook.b", i64::MAX, 10, None).await.unwrap().is_empty());
        let wanted = ["a".to_owned(), "c".to_owned()];
        assert_eq!(ids(due(store, "webhook.a", i64::MAX, 10, Some(&wanted)).await.unwrap()), ["c1", "c3", "c4"]);
        assert_eq!(ids(due(store, "webhook.a", i64::MAX, 1, Some(&wanted)).await.unwrap()), ["c1"]);
        assert!(due(store, "webhook.a", i64::MAX, 10, Some(&[])).await.unwrap().is_empty());

        // c3 failed once, c4 is parked: both pending, one retrying, the newest failure shown.
        let rows = due_rows(store).await;
        let outcomes = [
            DeliveryOutcome {
                row: rows[2].version(),
                verdict: Verdict::Retry { at: 5, since: 10, error: "attempt 1 failed".into() },
            },
            DeliveryOutcome {
                row: rows[3].version(),
                verdict: Verdict::Parked { at: 5, since: 20, reason: "parked".into() },
            },
        ];
        assert_eq!(record_outcomes(store, "test", &outcomes, now_ms()).await.unwrap(), vec![true, true]);
        let left = undelivered(store, "webhook.a", &wanted).await.unwrap();
        assert_eq!(left, Undelivered { pending: 3, retrying: 1, last_error: Some("parked".into()) });
        assert_eq!(undelivered(store, "webhook.a", &[]).await.unwrap(), Undelivered::default());
    }

    #[tokio::test]
    async fn a_newer_delivered_version_is_found_by_revision_or_else_by_change_time() {
        for (_guard, store) in stores().await {
            newer_delivered_found(&store).await;
        }
    }

    async fn newer_delivered_found(store: &Store) {
        let old = NewChange { changed_at: 50, ..change("c1", Operation::Updated, &[1; 32], 0, b"v") };
        put(store, NewChange { revision: 3, ..old }).await;
        put(store, NewChange { entity_id: "c2", contact_id: Some("c2"), ..old }).await;
        exec(store, "UPDATE outbox SET status = 'done'").await;
        let mut tx = store.begin_write("test").await.unwrap();
        let contact = EntityKind::Contact;
        assert!(newer_delivered(tx.conn(), "webhook.a", contact, "c1", 2, 0).await.unwrap());
        assert!(!newer_delivered(tx.conn(), "webhook.a", contact, "c1", 3, 0).await.unwrap());
        assert!(newer_delivered(tx.conn(), "webhook.a", contact, "c2", 2, 49).await.unwrap(), "no revision: by time");
        assert!(!newer_delivered(tx.conn(), "webhook.a", contact, "c2", 0, 50).await.unwrap());
        assert!(!newer_delivered(tx.conn(), "webhook.b", contact, "c1", 1, 0).await.unwrap());
        tx.rollback().await.unwrap();
    }

    #[tokio::test]
    async fn outcomes_apply_only_to_the_delivered_content_in_one_transaction() {
        for (_guard, store) in stores().await {
            outcomes_apply_to_delivered_content(&store).await;
        }
    }

    async fn outcomes_apply_to_delivered_content(store: &Store) {
        let changes: Vec<_> = ["c1", "c2", "c3", "c4", "c5"]
            .iter()
            .map(|id| (change(id, Operation::Updated, &[1; 32], 1, b"v1"), None))
            .collect();
        enqueue_all(store, "test", &changes, EnqueuePolicy::Fold).await.unwrap();
        let rows = due_rows(store).await;
        assert_eq!(rows.len(), 5);
        // c5 is replaced while in flight.
        put(store, change("c5", Operation::Updated, &[2; 32], 2, b"v2")).await;
        let verdicts = [
            Verdict::Delivered,
            Verdict::Skipped("filtered".into()),
            Verdict::Retry { at: 7, since: 1, error: "attempt 1 failed".into() },
            Verdict::Parked { at: 9, since: 1, reason: "budget".into() },
            Verdict::Dead("refused".into()),
        ];
        let outcomes: Vec<_> =
            rows.iter().zip(verdicts).map(|(row, verdict)| DeliveryOutcome { row: row.version(), verdict }).collect();
        let applied = record_outcomes(store, "test", &outcomes, now_ms()).await.unwrap();
        assert_eq!(applied, vec![true, true, true, true, false], "the replaced row stays pending");
        let state: Vec<(String, String, i64, i64, Option<String>)> = on_db!(store.db(), |pool| sqlx::query_as(
            "SELECT entity_id, status, attempts, next_attempt_at, last_error FROM outbox ORDER BY id"
        )
        .fetch_all(pool)
        .await)
        .unwrap();
        assert_eq!(state[0].1, "done");
        assert_eq!((state[1].1.as_str(), state[1].4.as_deref()), ("done", Some("filtered")));
        assert_eq!((state[2].1.as_str(), state[2].2, state[2].3), ("pending", 1, 7));
        assert_eq!((state[3].1.as_str(), state[3].2, state[3].3), ("pending", 0, 9), "parking is not an attempt");
        assert_eq!((state[4].0.as_str(), state[4].1.as_str(), state[4].2), ("c5", "pending", 0));
        assert!(super::dead_letters::list(store, None, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_dead_letter_keeps_the_revision_and_key_of_the_row() {
        for (_guard, store) in stores().await {
            dead_letter_keeps_revision_and_key(&store).await;
        }
    }

    async fn dead_letter_keeps_revision_and_key(store: &Store) {
        put(store, change("c1", Operation::Created, &[3; 32], 4, b"v4")).await;
        let row = due_rows(store).await.remove(0);
        let dead = DeliveryOutcome { row: row.version(), verdict: Verdict::Dead("refused".into()) };
        assert_eq!(record_outcomes(store, "test", &[dead], now_ms()).await.unwrap(), vec![true]);
        assert!(due_rows(store).await.is_empty());
        let letters = super::dead_letters::list(store, None, 10).await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!((letters[0].revision, letters[0].attempts, letters[0].reason.as_str()), (Some(4), 1, "refused"));
        let key: String = on_db!(store.db(), |pool| sqlx::query_scalar("SELECT idempotency_key FROM dead_letters")
            .fetch_one(pool)
            .await)
        .unwrap();
        assert_eq!(key, row.idempotency_key);
    }

    #[tokio::test]
    async fn a_row_of_an_unknown_kind_is_reported_unreadable_not_dropped() {
        for (_guard, store) in stores().await {
            unknown_kind_unreadable(&store).await;
        }
    }

    async fn unknown_kind_unreadable(store: &Store) {
        put(store, change("c1", Operation::Created, &[3; 32], 1, b"v")).await;
        exec(store, "UPDATE outbox SET entity = 'opportunity'").await;
        let rows = due(store, "webhook.a", i64::MAX, 10, None).await.unwrap();
        let Err(unreadable) = &rows[0] else { panic!("{rows:?}") };
        assert_eq!(unreadable.reason, "unknown entity \"opportunity\"");
    }

    #[tokio::test]
    async fn prune_deletes_only_old_delivered_rows_and_depth_counts_pending_ones() {
        for (_guard, store) in stores().await {
            prune_and_depth(&store).await;
        }
    }

    async fn prune_and_depth(store: &Store) {
        let changes: Vec<_> =
            ["c1", "c2", "c3"].iter().map(|id| (change(id, Operation::Updated, &[1; 32], 1, b"v"), None)).collect();
        enqueue_all(store, "test", &changes, EnqueuePolicy::Fold).await.unwrap();
        let row = due_rows(store).await.remove(0);
        record_outcomes(
            store,
            "test",
            &[DeliveryOutcome { row: row.version(), verdict: Verdict::Delivered }],
            now_ms(),
        )
        .await
        .unwrap();
        assert_eq!(prune(store, 0).await.unwrap(), 0, "too recent");
        assert_eq!(prune(store, i64::MAX).await.unwrap(), 1);
        let depth = depth(store).await.unwrap();
        assert_eq!(depth.len(), 1);
        assert_eq!((depth[0].connector.as_str(), depth[0].pending), ("webhook.a", 2));
    }
    // ---- Claims (issue 21: delivery workers on any replica) ----

    fn by(claimer: &str, now: i64, for_ms: i64) -> Claim<'_> {
        Claim { claimer, now, for_ms }
    }

    /// Claims due rows of `webhook.a` (all due: `due_by` is the far future).
    async fn claim_as(store: &Store, claim: Claim<'_>, limit: usize) -> Vec<OutboxRow> {
        super::claim(store, "webhook.a", i64::MAX, limit, None, claim)
            .await
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    type ClaimState = (String, String, Option<String>, Option<i64>);

    /// (entity id, status, claimed_by, claimed_until) in id order.
    async fn claims(store: &Store) -> Vec<ClaimState> {
        on_db!(store.db(), |pool| sqlx::query_as(
            "SELECT entity_id, status, claimed_by, claimed_until FROM outbox ORDER BY id"
        )
        .fetch_all(pool)
        .await)
        .unwrap()
    }

    async fn put_many(store: &Store, n: usize) {
        let ids: Vec<String> = (0..n).map(|i| format!("c{i:04}")).collect();
        let changes: Vec<_> = ids.iter().map(|id| (change(id, Operation::Updated, &[1; 32], 1, b"v"), None)).collect();
        enqueue_all(store, "test", &changes, EnqueuePolicy::Fold).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_claimers_on_two_handles_take_disjoint_rows_and_together_all_of_them() {
        for (_guard, one, two) in store_pairs().await {
            disjoint_claims(one, two).await;
        }
    }

    async fn disjoint_claims(one: Store, two: Store) {
        const ROWS: usize = 300;
        put_many(&one, ROWS).await;
        let drain = |store: Store, claimer: &'static str| {
            tokio::spawn(async move {
                let mut taken = Vec::new();
                loop {
                    let rows = claim_as(&store, by(claimer, 1_000, 60_000), 7).await;
                    if rows.is_empty() {
                        return taken;
                    }
                    assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
                    taken.extend(rows.into_iter().map(|row| row.id));
                    tokio::task::yield_now().await;
                }
            })
        };
        let (a, b) = (drain(one.clone(), "replica-a"), drain(two.clone(), "replica-b"));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let a_set: HashSet<i64> = a.iter().copied().collect();
        let b_set: HashSet<i64> = b.iter().copied().collect();
        assert_eq!((a_set.len(), b_set.len()), (a.len(), b.len()), "no claimer got a row twice");
        assert!(a_set.is_disjoint(&b_set), "a row claimed by both");
        assert_eq!(a.len() + b.len(), ROWS, "every row claimed: {} + {}", a.len(), b.len());
        // Each row names its claimer, with the deadline asked for.
        let ids: Vec<i64> =
            on_db!(one.db(), |pool| sqlx::query_scalar("SELECT id FROM outbox ORDER BY id").fetch_all(pool).await)
                .unwrap();
        for ((_, status, claimer, until), id) in claims(&two).await.into_iter().zip(ids) {
            let expected = if a_set.contains(&id) { "replica-a" } else { "replica-b" };
            assert_eq!((status.as_str(), claimer.as_deref(), until), ("pending", Some(expected), Some(61_000)));
        }
        assert!(claim_as(&one, by("replica-c", 60_999, 1_000), 10).await.is_empty(), "all claims live");
    }

    #[tokio::test]
    async fn an_expired_claim_is_taken_again_under_the_same_key_and_an_outcome_ends_only_its_own_claim() {
        for (_guard, store) in stores().await {
            expired_claim(&store).await;
        }
    }

    async fn expired_claim(store: &Store) {
        put(store, change("c1", Operation::Created, &[1; 32], 1, b"v1")).await;
        let first = claim_as(store, by("a", 1_000, 500), 10).await;
        assert_eq!(first.len(), 1);
        assert!(claim_as(store, by("b", 1_499, 500), 10).await.is_empty(), "a's claim is live");
        // a died (or stalled): at its deadline b takes the row, same content, same key.
        let again = claim_as(store, by("b", 1_500, 500), 10).await;
        assert_eq!(again, first);
        assert_eq!(claims(store).await[0].2.as_deref(), Some("b"));
        // a's late retry applies to the row but leaves b's claim alone.
        let retry = Verdict::Retry { at: 0, since: 1, error: "attempt 1 failed".into() };
        let outcome = DeliveryOutcome { row: first[0].version(), verdict: retry };
        assert_eq!(record_outcomes(store, "a", &[outcome], now_ms()).await.unwrap(), vec![true]);
        assert_eq!(claims(store).await[0].2.as_deref(), Some("b"));
        assert!(claim_as(store, by("c", 1_600, 500), 10).await.is_empty(), "b still holds it");
        let done = DeliveryOutcome { row: again[0].version(), verdict: Verdict::Delivered };
        assert_eq!(record_outcomes(store, "b", &[done], now_ms()).await.unwrap(), vec![true]);
        assert_eq!(claims(store).await, vec![("c1".to_owned(), "done".to_owned(), None, None)]);
    }

    #[tokio::test]
    async fn every_outcome_ends_the_claim_and_a_row_in_backoff_is_claimed_again_when_due() {
        for (_guard, store) in stores().await {
            outcomes_end_claims(&store).await;
        }
    }

    async fn outcomes_end_claims(store: &Store) {
        put_many(store, 5).await;
        let rows = claim_as(store, by("a", 1_000, 60_000), 10).await;
        let retry_at = now_ms() + 3_600_000;
        let verdicts = [
            Verdict::Delivered,
            Verdict::Skipped("filtered".into()),
            Verdict::Retry { at: retry_at, since: 1, error: "attempt 1 failed".into() },
            Verdict::Parked { at: 5, since: 1, reason: "parked".into() },
            Verdict::Dead("refused".into()),
        ];
        let outcomes: Vec<_> =
            rows.iter().zip(verdicts).map(|(row, verdict)| DeliveryOutcome { row: row.version(), verdict }).collect();
        assert_eq!(record_outcomes(store, "a", &outcomes, now_ms()).await.unwrap(), vec![true; 5]);
        let state = claims(store).await;
        assert_eq!(state.len(), 4, "the dead row moved to dead letters");
        assert!(state.iter().all(|(_, _, by, until)| by.is_none() && until.is_none()), "{state:?}");
        // Within a's claim TTL, b takes the parked row (due) but not the one in backoff.
        let now = 2_000;
        let due_now: Vec<_> = super::claim(store, "webhook.a", now_ms(), 10, None, by("b", now, 1_000))
            .await
            .unwrap()
            .into_iter()
            .map(|row| row.unwrap().entity_id)
            .collect();
        assert_eq!(due_now, ["c0003"]);
        let later = super::claim(store, "webhook.a", retry_at, 10, None, by("b", now, 1_000)).await.unwrap();
        assert_eq!(later.len(), 1, "the retry, once due");
    }

    #[tokio::test]
    async fn a_row_replaced_while_claimed_stays_with_its_claimer_then_goes_out_with_the_newest_content() {
        for (_guard, store) in stores().await {
            replaced_while_claimed(&store).await;
        }
    }

    async fn replaced_while_claimed(store: &Store) {
        put(store, change("c1", Operation::Created, &[1; 32], 1, b"v1")).await;
        let in_flight = claim_as(store, by("a", 1_000, 60_000), 10).await;
        // The sync folds a newer version into the row while a delivers v1.
        put(store, change("c1", Operation::Updated, &[2; 32], 2, b"v2")).await;
        assert_eq!(claims(store).await[0].2.as_deref(), Some("a"), "folding keeps the claim");
        assert!(claim_as(store, by("b", 2_000, 60_000), 10).await.is_empty(), "one delivery per record at a time");
        // a's outcome is for v1: it does not apply, and the row is free for the newer content.
        let done = DeliveryOutcome { row: in_flight[0].version(), verdict: Verdict::Delivered };
        assert_eq!(record_outcomes(store, "a", &[done], now_ms()).await.unwrap(), vec![false]);
        assert_eq!(claims(store).await[0], ("c1".to_owned(), "pending".to_owned(), None, None));
        let next = claim_as(store, by("b", 2_000, 60_000), 10).await;
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].id, next[0].operation), (in_flight[0].id, Operation::Created), "created stays created");
        assert_eq!(next[0].record.as_deref(), Some(&b"v2"[..]));
        assert_eq!(next[0].idempotency_key, idempotency_key("webhook.a", EntityKind::Contact, "c1", 2, &[2; 32], ""));
        assert_ne!(next[0].idempotency_key, in_flight[0].idempotency_key);
        // A dead verdict for replaced content releases the claim the same way.
        put(store, change("c1", Operation::Updated, &[3; 32], 3, b"v3")).await;
        let dead = DeliveryOutcome { row: next[0].version(), verdict: Verdict::Dead("refused".into()) };
        assert_eq!(record_outcomes(store, "b", &[dead], now_ms()).await.unwrap(), vec![false]);
        assert_eq!(claim_as(store, by("c", 2_000, 60_000), 10).await[0].record.as_deref(), Some(&b"v3"[..]));
    }

    /// A process that holds the store alone frees the claims a killed process left: their
    /// rows are claimable at once, not after the claim TTL.
    #[tokio::test]
    async fn dead_claims_are_released_for_a_process_that_holds_the_store_alone() {
        for (_guard, store) in stores().await {
            enqueue_in_three_locations(&store).await;
            assert_eq!(claim_as(&store, by("killed", 1_000, 30_000), 10).await.len(), 4);
            assert!(claim_as(&store, by("next", 2_000, 30_000), 10).await.is_empty(), "held until the TTL");
            assert_eq!(release_dead_claims(&store).await.unwrap(), 4);
            assert_eq!(claim_as(&store, by("next", 2_000, 30_000), 10).await.len(), 4);
            assert_eq!(release_dead_claims(&store).await.unwrap(), 4);
            let before = store.write_health().last_ok_ms;
            assert_eq!(release_dead_claims(&store).await.unwrap(), 0);
            assert_eq!(store.write_health().last_ok_ms, before, "nothing to release: no write");
        }
    }

    #[tokio::test]
    async fn claims_are_renewed_released_and_limited_to_the_locations_asked_for() {
        for (_guard, store) in stores().await {
            renew_release_locations(&store).await;
        }
    }

    async fn renew_release_locations(store: &Store) {
        enqueue_in_three_locations(store).await;
        let claim_in = |claimer, now, locations: Option<&'static [&'static str]>| async move {
            let locations: Option<Vec<String>> = locations.map(|l| l.iter().map(|s| (*s).to_owned()).collect());
            let rows = super::claim(store, "webhook.a", i64::MAX, 10, locations.as_deref(), by(claimer, now, 100))
                .await
                .unwrap();
            rows.into_iter().map(|row| row.unwrap()).collect::<Vec<_>>()
        };
        assert!(claim_in("x", 0, Some(&[][..])).await.is_empty(), "no location: nothing");
        let a = claim_in("a", 0, Some(&["a", "c"][..])).await;
        assert_eq!(a.iter().map(|r| r.entity_id.as_str()).collect::<Vec<_>>(), ["c1", "c3", "c4"]);
        let b = claim_in("b", 0, None).await;
        assert_eq!(b.iter().map(|r| r.entity_id.as_str()).collect::<Vec<_>>(), ["c2"]);
        assert_eq!(super::claim(store, "webhook.b", i64::MAX, 10, None, by("b", 0, 100)).await.unwrap(), vec![]);

        // a renews two of its claims (b's and a wrong id are not touched), past their deadline.
        let renew = [a[0].id, a[1].id, b[0].id, 9_999];
        assert_eq!(renew_claims(store, "a", &renew, 1_000).await.unwrap(), 2);
        assert_eq!(renew_claims(store, "a", &[], 1_000).await.unwrap(), 0);
        let taken = claim_in("c", 100, None).await;
        assert_eq!(taken.iter().map(|r| r.entity_id.as_str()).collect::<Vec<_>>(), ["c2", "c4"], "expired ones only");

        // b gives back a row it will not deliver (only its own claims); a stops cleanly.
        assert_eq!(release(store, "b", &[a[0].id, taken[0].id]).await.unwrap(), 0, "not b's any more");
        assert_eq!(release(store, "c", &[taken[0].id]).await.unwrap(), 1);
        assert_eq!(release_claims(store, "a").await.unwrap(), 2);
        assert_eq!(release_claims(store, "a").await.unwrap(), 0);
        let state = claims(store).await;
        let held: Vec<_> = state.iter().map(|(id, _, by, _)| (id.as_str(), by.as_deref())).collect();
        assert_eq!(held, [("c1", None), ("c2", None), ("c3", None), ("c4", Some("c"))]);
        let free = claim_in("d", 100, None).await;
        assert_eq!(free.iter().map(|r| r.entity_id.as_str()).collect::<Vec<_>>(), ["c1", "c2", "c3"]);
    }

    #[tokio::test]
    async fn a_claimer_looks_past_candidate_windows_that_other_claimers_hold() {
        for (_guard, store) in stores().await {
            past_held_windows(&store).await;
        }
    }

    async fn past_held_windows(store: &Store) {
        put_many(store, 200).await;
        // a holds the oldest 150 rows: more than two of b's candidate windows (64 ids each).
        assert_eq!(claim_as(store, by("a", 0, 1_000), 150).await.len(), 150);
        let b = claim_as(store, by("b", 0, 1_000), 5).await;
        let ids: Vec<&str> = b.iter().map(|row| row.entity_id.as_str()).collect();
        assert_eq!(ids, ["c0150", "c0151", "c0152", "c0153", "c0154"]);
        assert_eq!(claim_as(store, by("c", 0, 1_000), 100).await.len(), 45, "the rest, whatever the limit");
        assert!(claim_as(store, by("d", 0, 1_000), 10).await.is_empty());
    }
}
