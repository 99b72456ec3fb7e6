//! Lusha's tables: `lusha_cache` (every answer Lusha gave, so no credit is spent twice for the
//! same person and reveal set), `lusha_credits` (credits charged per UTC day, from each
//! answer's `billing`), `lusha_leads` (prospecting leads and their import into GHL) and
//! `lusha_signals` (signal webhooks waiting to be written to GHL).
//!
//! Contract: public functions take `&Store` and plain data and run their whole transaction
//! themselves (writes through [`Store::begin_write`], reads through the read pool). A Lusha
//! call's spend and its answers are recorded in **one** transaction, after the call and before
//! any GHL write; no Lusha or GHL call ever runs inside a transaction here. A signal webhook
//! is deduplicated on its payload id (`webhook_inbox`, source `lusha`) and stored in the same
//! transaction ([`record_signal`]).

use std::collections::HashSet;

use serde_json::Value;

use super::db::{self, Conn, on_db};
use super::{Store, StoreError, codec, hints, now_ms};

/// What Lusha answered for one contact (`lusha_cache.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    Found,
    NotFound,
    /// `COMPLIANCE_RESTRICTED` / 451: never retried before its TTL.
    Restricted,
}

impl ResultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultKind::Found => "found",
            ResultKind::NotFound => "not_found",
            ResultKind::Restricted => "restricted",
        }
    }

    /// Unknown text reads as not found (a cached negative), never as found.
    fn parse(text: &str) -> Self {
        match text {
            "found" => ResultKind::Found,
            "restricted" => ResultKind::Restricted,
            _ => ResultKind::NotFound,
        }
    }
}

/// Which row of `lusha_cache`: a contact under one identity and reveal set.
#[derive(Debug, Clone, Copy)]
pub struct CacheKey<'a> {
    pub contact_id: &'a str,
    /// Hex sha256 of the normalised identity (email | LinkedIn URL | first + last + company).
    pub identity_hash: &'a str,
    /// Sorted, comma-joined reveal kinds (`emails,phones`).
    pub reveal_set: &'a str,
}

/// A cached Lusha answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    pub identity_hash: String,
    pub lusha_id: Option<String>,
    pub outcome: ResultKind,
    /// The Lusha result (found only; `None` when unreadable).
    pub result: Option<Value>,
    pub enriched_at: i64,
    /// When it was written back to GHL (`None`: not yet).
    pub written_at: Option<i64>,
}

impl Cached {
    pub fn found(&self) -> bool {
        self.outcome == ResultKind::Found
    }
}

/// The cached answer for `key`, if any.
pub async fn cached(store: &Store, key: &CacheKey<'_>) -> Result<Option<Cached>, StoreError> {
    type CacheRow = (String, Option<String>, String, Option<Vec<u8>>, i64, Option<i64>);
    let row: Option<CacheRow> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT identity_hash, lusha_id, outcome, result, enriched_at, written_at FROM lusha_cache \
         WHERE contact_id = $1 AND identity_hash = $2 AND reveal_set = $3",
    )
    .bind(key.contact_id)
    .bind(key.identity_hash)
    .bind(key.reveal_set)
    .fetch_optional(pool)
    .await)?;
    let Some((identity_hash, lusha_id, outcome, result, enriched_at, written_at)) = row else { return Ok(None) };
    Ok(Some(Cached {
        identity_hash,
        lusha_id,
        outcome: ResultKind::parse(&outcome),
        result: result.and_then(|bytes| codec::unpack(&bytes).ok()),
        enriched_at,
        written_at,
    }))
}

/// One answer of a Lusha call, to cache.
#[derive(Debug, Clone)]
pub struct NewResult<'a> {
    pub location: &'a str,
    pub key: CacheKey<'a>,
    pub lusha_id: Option<&'a str>,
    pub outcome: ResultKind,
    pub result: Option<&'a Value>,
    /// This answer's share of the call's `billing.creditsCharged`.
    pub credits: i64,
    pub enriched_at: i64,
}

/// What one Lusha call charged (its `billing.creditsCharged`), booked to a UTC day.
#[derive(Debug, Clone, Copy)]
pub struct Spend<'a> {
    /// `YYYY-MM-DD` (UTC).
    pub day: &'a str,
    pub credits: i64,
}

/// Books a call's spend and caches its answers, in one transaction. A fresh answer replaces an
/// older one for the same key (credits add up) and is marked not yet written back.
pub async fn record_enrichment(store: &Store, spend: Spend<'_>, results: &[NewResult<'_>]) -> Result<(), StoreError> {
    let mut tx = store.begin_write("lusha_results").await?;
    book(tx.conn(), spend).await?;
    for new in results {
        on_db!(tx.conn(), |c| {
            sqlx::query(
            "INSERT INTO lusha_cache (location_id, contact_id, identity_hash, reveal_set, lusha_id, found, outcome, result, \
             credits, enriched_at, written_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL) \
             ON CONFLICT (contact_id, identity_hash, reveal_set) DO UPDATE SET \
             lusha_id = COALESCE(excluded.lusha_id, lusha_cache.lusha_id), found = excluded.found, \
             outcome = excluded.outcome, result = excluded.result, credits = lusha_cache.credits + excluded.credits, \
             enriched_at = excluded.enriched_at, written_at = NULL",
        )
        .bind(new.location)
        .bind(new.key.contact_id)
        .bind(new.key.identity_hash)
        .bind(new.key.reveal_set)
        .bind(new.lusha_id)
        .bind(i64::from(new.outcome == ResultKind::Found))
        .bind(new.outcome.as_str())
        .bind(new.result.map(codec::pack))
        .bind(new.credits)
        .bind(new.enriched_at)
        .execute(c)
        .await
        .map(|done| done.rows_affected())
        })?;
    }
    tx.commit().await
}

/// Books a call's spend alone (a call whose answers are kept elsewhere, or none).
pub async fn book_spend(store: &Store, spend: Spend<'_>) -> Result<(), StoreError> {
    let mut tx = store.begin_write("lusha_spend").await?;
    book(tx.conn(), spend).await?;
    tx.commit().await
}

async fn book(conn: Conn<'_>, spend: Spend<'_>) -> Result<(), StoreError> {
    on_db!(conn, |c| sqlx::query(
        "INSERT INTO lusha_credits (day, spent, calls) VALUES ($1, $2, 1) \
         ON CONFLICT (day) DO UPDATE SET spent = lusha_credits.spent + excluded.spent, calls = lusha_credits.calls + 1",
    )
    .bind(spend.day)
    .bind(spend.credits)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(())
}

/// Credits charged on one UTC day, and the Lusha calls that charged them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaySpend {
    pub spent: i64,
    pub calls: i64,
}

/// What was booked for `day` (`YYYY-MM-DD`, UTC).
pub async fn spent_on(store: &Store, day: &str) -> Result<DaySpend, StoreError> {
    let row: Option<(i64, i64)> =
        on_db!(store.db(), |pool| sqlx::query_as("SELECT spent, calls FROM lusha_credits WHERE day = $1")
            .bind(day)
            .fetch_optional(pool)
            .await)?;
    Ok(row.map(|(spent, calls)| DaySpend { spent, calls }).unwrap_or_default())
}

/// Marks the answer under `key` written back to GHL at `written_at`. When our write gave the
/// contact a new identity (an email it lacked), `also_under` is its hash: the same answer is
/// cached under it too (no credits), so the changed identity costs nothing. One transaction.
pub async fn mark_written(
    store: &Store,
    key: &CacheKey<'_>,
    written_at: i64,
    also_under: Option<&str>,
) -> Result<(), StoreError> {
    let mut tx = store.begin_write("lusha_written").await?;
    on_db!(tx.conn(), |c| sqlx::query(
        "UPDATE lusha_cache SET written_at = $1 WHERE contact_id = $2 AND identity_hash = $3 AND reveal_set = $4"
    )
    .bind(written_at)
    .bind(key.contact_id)
    .bind(key.identity_hash)
    .bind(key.reveal_set)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    if let Some(identity_hash) = also_under.filter(|h| *h != key.identity_hash) {
        on_db!(tx.conn(), |c| {
            sqlx::query(
            "INSERT INTO lusha_cache (location_id, contact_id, identity_hash, reveal_set, lusha_id, found, outcome, result, \
             credits, enriched_at, written_at) \
             SELECT location_id, contact_id, CAST($1 AS TEXT), reveal_set, lusha_id, found, outcome, result, 0, \
             enriched_at, written_at \
             FROM lusha_cache WHERE contact_id = $2 AND identity_hash = $3 AND reveal_set = $4 ON CONFLICT DO NOTHING",
        )
        .bind(identity_hash)
        .bind(key.contact_id)
        .bind(key.identity_hash)
        .bind(key.reveal_set)
        .execute(c)
        .await
        .map(|done| done.rows_affected())
        })?;
    }
    tx.commit().await
}

/// Expires the found answers of a contact (a signal said the person moved on): its next
/// change refreshes it by Lusha id.
pub async fn expire_found(store: &Store, contact_id: &str) -> Result<(), StoreError> {
    let mut tx = store.begin_write("lusha_expire").await?;
    on_db!(tx.conn(), |c| sqlx::query("UPDATE lusha_cache SET enriched_at = 0 WHERE contact_id = $1 AND found = 1")
        .bind(contact_id)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    tx.commit().await
}

/// (location, contact) of every GHL contact whose found answer carries one of `lusha_ids`.
pub async fn contacts_enriched_as(store: &Store, lusha_ids: &[&str]) -> Result<Vec<(String, String)>, StoreError> {
    let ids: Vec<&str> = lusha_ids.iter().copied().filter(|id| !id.is_empty()).collect();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT DISTINCT location_id, contact_id FROM lusha_cache WHERE found = 1 AND lusha_id IN ({}) \
         ORDER BY location_id, contact_id",
        db::params(0, ids.len())
    );
    Ok(on_db!(store.db(), |pool, pg| {
        let sql = db::for_backend(pg, &sql);
        let mut query = sqlx::query_as::<_, (String, String)>(&sql);
        for id in &ids {
            query = query.bind(*id);
        }
        query.fetch_all(pool).await
    })?)
}

// ---- prospecting leads ----

/// Lead ids among `ids` already recorded for `location` (whatever their state).
pub async fn known_leads(store: &Store, location: &str, ids: &[String]) -> Result<HashSet<String>, StoreError> {
    let mut known = HashSet::new();
    // Well under SQLite's bound-parameter limit per statement.
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT lead_id FROM lusha_leads WHERE location_id = $1 AND lead_id IN ({})",
            db::params(1, chunk.len())
        );
        known.extend(on_db!(store.db(), |pool, pg| {
            let sql = db::for_backend(pg, &sql);
            let mut query = sqlx::query_scalar::<_, String>(&sql).bind(location);
            for id in chunk {
                query = query.bind(id);
            }
            query.fetch_all(pool).await
        })?);
    }
    Ok(known)
}

/// What a lead enrich answered for one lead.
#[derive(Debug, Clone)]
pub struct NewLead<'a> {
    pub lead_id: &'a str,
    /// `Some`: found (status `enriched`, to import); `None`: nothing to reveal (`not_found`).
    pub result: Option<&'a Value>,
    /// This lead's share of the call's credits.
    pub credits: i64,
}

/// Books a lead enrich call's spend and records its leads (first answer wins), in one
/// transaction, before anything is written to GHL.
pub async fn record_leads(
    store: &Store,
    spend: Spend<'_>,
    location: &str,
    search: &str,
    leads: &[NewLead<'_>],
) -> Result<(), StoreError> {
    let now = now_ms();
    let mut tx = store.begin_write("lusha_leads").await?;
    book(tx.conn(), spend).await?;
    for lead in leads {
        let status = if lead.result.is_some() { "enriched" } else { "not_found" };
        on_db!(tx.conn(), |c| sqlx::query(
            "INSERT INTO lusha_leads (location_id, lead_id, search, status, result, credits, first_seen, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (location_id, lead_id) DO NOTHING",
        )
        .bind(location)
        .bind(lead.lead_id)
        .bind(search)
        .bind(status)
        .bind(lead.result.map(codec::pack))
        .bind(lead.credits)
        .bind(now)
        .bind(now)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    }
    tx.commit().await
}

/// An enriched lead waiting to be imported into GHL.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredLead {
    pub lead_id: String,
    pub search: String,
    /// `None`: the stored result cannot be read.
    pub result: Option<Value>,
    pub credits: i64,
    pub enriched_at: i64,
}

/// Every `enriched` lead of `location`, oldest first.
pub async fn enriched_leads(store: &Store, location: &str) -> Result<Vec<StoredLead>, StoreError> {
    type LeadRow = (String, String, Option<Vec<u8>>, i64, i64);
    let rows: Vec<LeadRow> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT lead_id, search, result, credits, updated_at FROM lusha_leads \
         WHERE location_id = $1 AND status = 'enriched' ORDER BY first_seen, lead_id",
    )
    .bind(location)
    .fetch_all(pool)
    .await)?;
    Ok(rows
        .into_iter()
        .map(|(lead_id, search, packed, credits, enriched_at)| StoredLead {
            lead_id,
            search,
            result: packed.and_then(|bytes| codec::unpack(&bytes).ok()),
            credits,
            enriched_at,
        })
        .collect())
}

/// Where a lead ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadEnd<'a> {
    /// EU lead under `eu_policy = "skip"`, or any other deliberate skip (`reason`).
    Skipped(&'a str),
    /// GHL refused it or its stored result is unreadable (`reason`, no personal data).
    Failed(&'a str),
}

/// Sets a lead aside (`skipped` / `failed`) with its reason.
pub async fn set_lead_aside(store: &Store, location: &str, lead_id: &str, end: LeadEnd<'_>) -> Result<(), StoreError> {
    let (status, reason) = match end {
        LeadEnd::Skipped(reason) => ("skipped", reason),
        LeadEnd::Failed(reason) => ("failed", reason),
    };
    let mut tx = store.begin_write("lusha_lead").await?;
    on_db!(tx.conn(), |c| sqlx::query(
        "UPDATE lusha_leads SET status = $1, action = NULL, error = $2, updated_at = $3 \
         WHERE location_id = $4 AND lead_id = $5"
    )
    .bind(status)
    .bind(reason)
    .bind(now_ms())
    .bind(location)
    .bind(lead_id)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    tx.commit().await
}

/// A lead written to GHL.
#[derive(Debug, Clone)]
pub struct LeadImport<'a> {
    pub location: &'a str,
    pub lead_id: &'a str,
    pub contact_id: &'a str,
    /// `created` | `updated`.
    pub action: &'a str,
    /// The contact's identity as read back, to cache the lead's result under (so the
    /// enrichment never pays for this contact again); `None` when it has none.
    pub identity: Option<CacheKey<'a>>,
    pub result: &'a Value,
    pub credits: i64,
    pub enriched_at: i64,
}

/// Caches the lead's result under its GHL contact and marks the lead `imported`, in one
/// transaction.
pub async fn lead_imported(store: &Store, import: &LeadImport<'_>) -> Result<(), StoreError> {
    let now = now_ms();
    let mut tx = store.begin_write("lusha_lead").await?;
    if let Some(key) = &import.identity {
        on_db!(tx.conn(), |c| {
            sqlx::query(
            "INSERT INTO lusha_cache (location_id, contact_id, identity_hash, reveal_set, lusha_id, found, outcome, result, \
             credits, enriched_at, written_at) VALUES ($1, $2, $3, $4, $5, 1, 'found', $6, $7, $8, $9) \
             ON CONFLICT (contact_id, identity_hash, reveal_set) DO UPDATE SET lusha_id = excluded.lusha_id, found = 1, \
             outcome = 'found', result = excluded.result, enriched_at = excluded.enriched_at, written_at = excluded.written_at",
        )
        .bind(import.location)
        .bind(key.contact_id)
        .bind(key.identity_hash)
        .bind(key.reveal_set)
        .bind(import.lead_id)
        .bind(codec::pack(import.result))
        .bind(import.credits)
        .bind(import.enriched_at)
        .bind(now)
        .execute(c)
        .await
        .map(|done| done.rows_affected())
        })?;
    }
    on_db!(tx.conn(), |c| sqlx::query(
        "UPDATE lusha_leads SET status = 'imported', contact_id = $1, action = $2, error = NULL, updated_at = $3 \
         WHERE location_id = $4 AND lead_id = $5",
    )
    .bind(import.contact_id)
    .bind(import.action)
    .bind(now)
    .bind(import.location)
    .bind(import.lead_id)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    tx.commit().await
}

// ---- signals ----

/// A Lusha signal as received (the payload's fields, already signature-checked).
#[derive(Debug, Clone, PartialEq)]
pub struct NewSignal {
    /// The payload `id`: the dedupe key.
    pub id: String,
    pub signal_type: String,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub subscription_id: Option<String>,
    /// The payload `data` (may hold personal data; stored compressed).
    pub data: serde_json::Value,
    pub credits_charged: Option<f64>,
    /// The payload `timestamp`, as sent.
    pub sent_at: Option<String>,
}

/// Whether a signal was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Stored,
    /// The id was seen before (`webhook_inbox`, source `lusha`): nothing written.
    Duplicate,
}

/// Dedupes a signal on its id through `webhook_inbox` and stores it in `lusha_signals`, in
/// one transaction. The inbox insert comes first so the transaction takes the write lock at
/// once.
pub async fn record_signal(store: &Store, signal: &NewSignal) -> Result<Recorded, StoreError> {
    let now = now_ms();
    let mut tx = store.begin_write("lusha_webhook").await?;
    let inserted = hints::first_delivery(tx.conn(), "lusha", &signal.id, &signal.signal_type, now).await?;
    if !inserted {
        tx.rollback().await?;
        return Ok(Recorded::Duplicate);
    }
    on_db!(tx.conn(), |c| {
        sqlx::query(
        "INSERT INTO lusha_signals (id, signal_type, entity_type, entity_id, subscription_id, data, \
         credits_charged, sent_at, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&signal.id)
    .bind(&signal.signal_type)
    .bind(&signal.entity_type)
    .bind(&signal.entity_id)
    .bind(&signal.subscription_id)
    .bind(codec::pack(&signal.data))
    .bind(signal.credits_charged)
    .bind(&signal.sent_at)
    .bind(now)
    .execute(c)
    .await
    .map(|done| done.rows_affected())
    })?;
    tx.commit().await?;
    Ok(Recorded::Stored)
}

/// A stored signal not yet written to GHL.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingSignal {
    pub id: String,
    pub signal_type: String,
    /// The payload's `entityId` (the Lusha id the subscription was made for).
    pub entity_id: Option<String>,
    /// The payload's `data` (`Null` when unreadable).
    pub data: Value,
}

/// Up to `limit` unprocessed signals, oldest first.
pub async fn pending_signals(store: &Store, limit: u32) -> Result<Vec<PendingSignal>, StoreError> {
    let rows: Vec<(String, String, Option<String>, Vec<u8>)> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT id, signal_type, entity_id, data FROM lusha_signals WHERE processed_at IS NULL \
         ORDER BY received_at, id LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await)?;
    Ok(rows
        .into_iter()
        .map(|(id, signal_type, entity_id, packed)| PendingSignal {
            id,
            signal_type,
            entity_id,
            data: codec::unpack(&packed).unwrap_or(Value::Null),
        })
        .collect())
}

/// Marks a signal processed; `error` says why it was not applied (no personal data).
pub async fn finish_signal(store: &Store, id: &str, error: Option<&str>) -> Result<(), StoreError> {
    let mut tx = store.begin_write("lusha_signal_done").await?;
    on_db!(tx.conn(), |c| sqlx::query("UPDATE lusha_signals SET processed_at = $1, error = $2 WHERE id = $3")
        .bind(now_ms())
        .bind(error)
        .bind(id)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::store::testing::stores;

    const KEY: CacheKey<'static> = CacheKey { contact_id: "c1", identity_hash: "ih", reveal_set: "emails,phones" };

    #[tokio::test]
    async fn a_call_books_its_spend_and_caches_its_answers_together() {
        for (_guard, store) in stores().await {
            call_books_spend_and_caches_answers(&store).await;
        }
    }

    async fn call_books_spend_and_caches_answers(store: &Store) {
        let store = store.clone();
        let person = json!({"id": "v1.p", "firstName": "Ada"});
        let other = CacheKey { contact_id: "c2", ..KEY };
        let results = [
            NewResult {
                location: "l",
                key: KEY,
                lusha_id: Some("v1.p"),
                outcome: ResultKind::Found,
                result: Some(&person),
                credits: 7,
                enriched_at: 10,
            },
            NewResult {
                location: "l",
                key: other,
                lusha_id: None,
                outcome: ResultKind::NotFound,
                result: None,
                credits: 0,
                enriched_at: 10,
            },
        ];
        record_enrichment(&store, Spend { day: "2026-01-01", credits: 7 }, &results).await.unwrap();
        book_spend(&store, Spend { day: "2026-01-01", credits: 2 }).await.unwrap();
        assert_eq!(spent_on(&store, "2026-01-01").await.unwrap(), DaySpend { spent: 9, calls: 2 });
        assert_eq!(spent_on(&store, "2026-01-02").await.unwrap(), DaySpend::default());

        let found = cached(&store, &KEY).await.unwrap().unwrap();
        assert_eq!(
            (found.outcome, found.lusha_id.as_deref(), found.written_at),
            (ResultKind::Found, Some("v1.p"), None)
        );
        assert_eq!(found.result, Some(person.clone()));
        assert_eq!(cached(&store, &other).await.unwrap().unwrap().outcome, ResultKind::NotFound);
        assert_eq!(contacts_enriched_as(&store, &["v1.p", ""]).await.unwrap(), [("l".to_owned(), "c1".to_owned())]);
        assert!(contacts_enriched_as(&store, &["", ""]).await.unwrap().is_empty());

        // Written back; our write gave the contact a new identity: the answer moves along.
        mark_written(&store, &KEY, 20, Some("ih2")).await.unwrap();
        let moved = cached(&store, &CacheKey { identity_hash: "ih2", ..KEY }).await.unwrap().unwrap();
        assert_eq!((moved.written_at, moved.enriched_at, moved.result), (Some(20), 10, Some(person)));

        // A signal expires the found answers only.
        expire_found(&store, "c1").await.unwrap();
        assert_eq!(cached(&store, &KEY).await.unwrap().unwrap().enriched_at, 0);
        assert_eq!(cached(&store, &other).await.unwrap().unwrap().enriched_at, 10);
    }

    #[tokio::test]
    async fn leads_are_recorded_once_then_imported_with_their_result_cached() {
        for (_guard, store) in stores().await {
            leads_recorded_once_then_imported(&store).await;
        }
    }

    async fn leads_recorded_once_then_imported(store: &Store) {
        let store = store.clone();
        let person = json!({"id": "lead-1"});
        let leads = [
            NewLead { lead_id: "lead-1", result: Some(&person), credits: 6 },
            NewLead { lead_id: "lead-2", result: None, credits: 0 },
        ];
        record_leads(&store, Spend { day: "2026-01-01", credits: 6 }, "l", "s", &leads).await.unwrap();
        // Seen again (a repeat poll): the first answer stays.
        record_leads(&store, Spend { day: "2026-01-01", credits: 0 }, "l", "s", &leads[1..]).await.unwrap();
        assert_eq!(spent_on(&store, "2026-01-01").await.unwrap(), DaySpend { spent: 6, calls: 2 });
        let ids = ["lead-1".to_owned(), "lead-2".to_owned(), "lead-3".to_owned()];
        let known = known_leads(&store, "l", &ids).await.unwrap();
        assert_eq!(known, HashSet::from(["lead-1".to_owned(), "lead-2".to_owned()]));
        assert!(known_leads(&store, "other", &ids).await.unwrap().is_empty());

        let waiting = enriched_leads(&store, "l").await.unwrap();
        assert_eq!(waiting.len(), 1);
        assert_eq!((waiting[0].lead_id.as_str(), waiting[0].result.as_ref()), ("lead-1", Some(&person)));
        let key = CacheKey { contact_id: "c9", identity_hash: "ih", reveal_set: "emails" };
        let import = LeadImport {
            location: "l",
            lead_id: "lead-1",
            contact_id: "c9",
            action: "created",
            identity: Some(key),
            result: &person,
            credits: 6,
            enriched_at: waiting[0].enriched_at,
        };
        lead_imported(&store, &import).await.unwrap();
        assert!(enriched_leads(&store, "l").await.unwrap().is_empty());
        let cached = cached(&store, &key).await.unwrap().unwrap();
        assert!(cached.found() && cached.written_at.is_some());
        assert_eq!(cached.lusha_id.as_deref(), Some("lead-1"));

        set_lead_aside(&store, "l", "lead-2", LeadEnd::Failed("GHL refused")).await.unwrap();
        assert!(enriched_leads(&store, "l").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn pending_signals_come_oldest_first_until_finished() {
        for (_guard, store) in stores().await {
            pending_signals_oldest_first(&store).await;
        }
    }

    async fn pending_signals_oldest_first(store: &Store) {
        let store = store.clone();
        let mut tx = store.begin_write("test").await.unwrap();
        for (id, at) in [("s2", 2_i64), ("s1", 1)] {
            on_db!(tx.conn(), |c| sqlx::query(
                "INSERT INTO lusha_signals (id, signal_type, entity_id, data, received_at) \
                 VALUES ($1, 'promotion', 'p', $2, $3)",
            )
            .bind(id)
            .bind(codec::pack(&json!({"personId": 1})))
            .bind(at)
            .execute(c)
            .await
            .map(|done| done.rows_affected()))
            .unwrap();
        }
        tx.commit().await.unwrap();
        let pending = pending_signals(&store, 10).await.unwrap();
        let ids: Vec<&str> = pending.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["s1", "s2"]);
        assert_eq!(pending[0].data, json!({"personId": 1}));
        finish_signal(&store, "s1", None).await.unwrap();
        finish_signal(&store, "s2", Some("no enriched GHL contact has this Lusha id")).await.unwrap();
        assert!(pending_signals(&store, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_signal_is_stored_once() {
        for (_guard, store) in crate::store::testing::stores().await {
            signal_stored_once(&store).await;
        }
    }

    async fn signal_stored_once(store: &Store) {
        let store = store.clone();
        let signal = NewSignal {
            id: "s1".into(),
            signal_type: "promotion".into(),
            entity_type: Some("contact".into()),
            entity_id: Some("42".into()),
            subscription_id: None,
            data: serde_json::json!({"title": "CTO"}),
            credits_charged: Some(1.0),
            sent_at: Some("2025-01-01T00:00:00Z".into()),
        };
        assert_eq!(record_signal(&store, &signal).await.unwrap(), Recorded::Stored);
        assert_eq!(record_signal(&store, &signal).await.unwrap(), Recorded::Duplicate);
        let stored: i64 =
            on_db!(store.db(), |pool| sqlx::query_scalar("SELECT COUNT(*) FROM lusha_signals").fetch_one(pool).await)
                .unwrap();
        assert_eq!(stored, 1);
    }
}
