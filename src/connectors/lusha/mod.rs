//! The Lusha connector (`lusha`): enriches GHL contacts through Lusha and writes the result
//! back to GHL, never paying twice for the same person (reference/lusha.md §4, §9).
//!
//! Per delivered contact change:
//! 1. Identity (email | LinkedIn URL | first + last + company) and its hash. A result in
//!    `lusha_cache` for (contact, identity hash, reveal set) within its TTL means no Lusha
//!    call (`Skip`); a cached result not yet written back is written from the cache.
//! 2. Gates: stopped after a 402 (re-checks the balance after `stop_on_no_credits`), parked
//!    after an hourly / daily 429, the daily credit cap and the reserve (balance from
//!    `/v3/account/usage`, read at most once per `usage_interval`). Held-back items are
//!    `Retry` with the wait; nothing is lost.
//! 3. New identity → `search-and-enrich` (≤ 100 per call, `clientReferenceId` = contact id,
//!    answers matched by it, a missing answer = not found); an expired found result →
//!    `enrich` by Lusha id (re-reveals are free). A call that may have been charged
//!    (timeout, 5xx, 499) is repeated at most once.
//! 4. Every answer (found, not found, restricted) is cached with its credits **before** the
//!    write-back; the write-back goes through [`crate::writeback::WriteBack`] with keys derived
//!    from the cached result, so a replay never writes twice, and records the resulting
//!    content hash so the sync does not deliver our own write as a user change.

pub mod client;
pub mod config;
pub mod leads;
pub mod mapping;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{Map, Value, json};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use self::client::{LushaClient, LushaError};
use self::config::{LushaSettings, STANDARD_FIELDS};
use self::mapping::{
    Answer, Identity, credits_charged, custom_value, extract, match_by_id, match_by_reference, reveal_set,
};
use super::{CheckReport, Connector, ConnectorError, Delivery, DeliverySettings, Outcome};
use crate::domain::{EntityKind, Operation};
use crate::ghl::GhlClient;
use crate::ghl::write::{CustomFieldValue, NoteWrite, UpdateContact};
use crate::http::Priority;
use crate::store::{Store, codec, now_ms};
use crate::writeback::{WriteBack, WriteBackError};

/// The connector id (outbox `connector`).
pub const ID: &str = "lusha";

/// Runtime state shared by all batches.
#[derive(Debug, Default)]
struct Gates {
    /// After a 402 or a 401/403: no Lusha call until then.
    stopped_until: Option<Instant>,
    /// After an hourly / daily 429.
    parked_until: Option<Instant>,
    /// Last balance read and when.
    balance: Option<(Instant, i64)>,
    usage_read_at: Option<Instant>,
}

/// A cached Lusha answer for one (contact, identity, reveal set).
#[derive(Debug, Clone)]
struct Cached {
    identity_hash: String,
    lusha_id: Option<String>,
    outcome: String,
    result: Option<Value>,
    enriched_at: i64,
    written_at: Option<i64>,
}

enum Plan {
    /// Fresh and written back: nothing to do.
    Cached,
    /// Fresh but not yet written back.
    WriteOnly(Cached),
    /// Expired found result: enrich by Lusha id.
    Refresh(String),
    /// New identity: search-and-enrich.
    Search,
}

struct Job {
    index: usize,
    location: String,
    contact_id: String,
    record: Map<String, Value>,
    identity: Identity,
    plan: Plan,
}

/// The Lusha enrichment connector.
pub struct LushaConnector {
    settings: LushaSettings,
    client: LushaClient,
    store: Store,
    writeback: WriteBack,
    reveal: Vec<String>,
    reveal_set: String,
    gates: Mutex<Gates>,
    /// Per location: custom field key → id.
    fields: tokio::sync::Mutex<HashMap<String, Arc<HashMap<String, String>>>>,
    /// Held (write) by a lead import from its GHL create until its result is cached under the
    /// new contact, and (read) by `deliver` while it plans: a contact the sync picks up that
    /// fast is then seen as cached, never enriched (and paid for) a second time.
    imports: tokio::sync::RwLock<()>,
}

impl std::fmt::Debug for LushaConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LushaConnector").finish_non_exhaustive()
    }
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// `YYYY-MM-DD` (UTC) of epoch milliseconds.
pub fn utc_day(at_ms: i64) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}", time.year(), u8::from(time.month()), time.day())
}

/// Time left until the next UTC midnight.
pub fn until_next_utc_day(at_ms: i64) -> Duration {
    let day = 86_400_000;
    let left = day - at_ms.rem_euclid(day);
    Duration::from_millis(u64::try_from(left).unwrap_or(0))
}

/// The credits a call charged, shared out over its `found` results: the `nth` (1-based)
/// gets an equal part, the first `credits % found` one more, so the parts add up.
pub fn credit_share(credits: i64, found: i64, nth: i64) -> i64 {
    let found = found.max(1);
    credits / found + i64::from(nth <= credits % found)
}

/// How many contacts may be enriched now: the smaller of what the daily cap and the balance
/// above the reserve allow, divided by the per-contact upper bound. `None` cap: no cap.
pub fn affordable(cap_left: Option<i64>, balance_left: Option<i64>, per_contact: i64) -> usize {
    let left = match (cap_left, balance_left) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return usize::MAX,
    };
    usize::try_from(left.max(0) / per_contact.max(1)).unwrap_or(0)
}

impl LushaConnector {
    pub fn new(
        settings: &LushaSettings,
        key: SecretString,
        writeback: WriteBack,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = LushaClient::new(settings, key, cancel)?;
        let mut reveal = settings.reveal.clone();
        reveal.sort();
        reveal.dedup();
        Ok(Self {
            reveal_set: reveal_set(&reveal),
            reveal,
            settings: settings.clone(),
            client,
            store: writeback.store().clone(),
            writeback,
            gates: Mutex::new(Gates::default()),
            fields: tokio::sync::Mutex::new(HashMap::new()),
            imports: tokio::sync::RwLock::new(()),
        })
    }

    pub fn lusha(&self) -> &LushaClient {
        &self.client
    }

    pub fn lusha_settings(&self) -> &LushaSettings {
        &self.settings
    }

    pub fn writeback(&self) -> &WriteBack {
        &self.writeback
    }

    fn gates(&self) -> std::sync::MutexGuard<'_, Gates> {
        self.gates.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Custom field key → id for a location (read once, then cached).
    pub async fn field_ids(&self, location: &str) -> Result<Arc<HashMap<String, String>>, WriteBackError> {
        let mut cache = self.fields.lock().await;
        if let Some(map) = cache.get(location) {
            return Ok(map.clone());
        }
        let fields = self.writeback.ghl().custom_fields(location, Some("contact"), Priority::WriteBack).await?;
        let map: HashMap<String, String> =
            fields.into_iter().filter_map(|f| f.field_key.map(|key| (key, f.id))).collect();
        let wanted = [Some(self.settings.fields.lusha_id.as_str()), Some(self.settings.fields.enriched_at.as_str())]
            .into_iter()
            .chain(self.settings.fields.mapped().into_iter().map(|(_, t)| Some(t)))
            .chain([self.settings.linkedin_field.as_deref()]);
        for key in wanted.flatten().filter(|k| k.starts_with("contact.")) {
            if !map.contains_key(key) {
                tracing::warn!(location.id = %location, field = %key, "Lusha: custom field `{key}` does not exist in location {location}; it is not written");
            }
        }
        let map = Arc::new(map);
        cache.insert(location.to_owned(), map.clone());
        Ok(map)
    }

    async fn cached(&self, contact_id: &str, identity_hash: &str) -> Result<Option<Cached>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT identity_hash, lusha_id, outcome, result, enriched_at, written_at FROM lusha_cache \
             WHERE contact_id = ? AND identity_hash = ? AND reveal_set = ?",
        )
        .bind(contact_id)
        .bind(identity_hash)
        .bind(&self.reveal_set)
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let result: Option<Vec<u8>> = row.try_get(3)?;
        Ok(Some(Cached {
            identity_hash: row.try_get(0)?,
            lusha_id: row.try_get(1)?,
            outcome: row.try_get(2)?,
            result: result.and_then(|bytes| codec::unpack(&bytes).ok()),
            enriched_at: row.try_get(4)?,
            written_at: row.try_get(5)?,
        }))
    }

    fn fresh(&self, cached: &Cached, now: i64) -> bool {
        let ttl = if cached.outcome == "found" { self.settings.reenrich_after } else { self.settings.not_found_ttl };
        cached.enriched_at.saturating_add(ms(ttl.get())) > now
    }

    /// Stores an answer before anything is written to GHL.
    #[allow(clippy::too_many_arguments)]
    async fn remember(
        &self,
        location: &str,
        contact_id: &str,
        identity_hash: &str,
        answer: &Answer,
        credits: i64,
        now: i64,
    ) -> Result<Option<Cached>, sqlx::Error> {
        let (found, outcome, result) = match answer {
            Answer::Found(value) => (1, "found", Some(value.clone())),
            Answer::NotFound => (0, "not_found", None),
            Answer::Restricted => (0, "restricted", None),
            Answer::Failed(_) => return Ok(None),
        };
        let lusha_id = result.as_ref().and_then(|v| v.get("id")).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        sqlx::query(
            "INSERT INTO lusha_cache (location_id, contact_id, identity_hash, reveal_set, lusha_id, found, outcome, result, credits, enriched_at, written_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) \
             ON CONFLICT (contact_id, identity_hash, reveal_set) DO UPDATE SET lusha_id = COALESCE(excluded.lusha_id, lusha_id), \
             found = excluded.found, outcome = excluded.outcome, result = excluded.result, credits = credits + excluded.credits, \
             enriched_at = excluded.enriched_at, written_at = NULL",
        )
        .bind(location)
        .bind(contact_id)
        .bind(identity_hash)
        .bind(&self.reveal_set)
        .bind(&lusha_id)
        .bind(found)
        .bind(outcome)
        .bind(result.as_ref().map(codec::pack))
        .bind(credits)
        .bind(now)
        .execute(self.store.pool())
        .await?;
        Ok(Some(Cached {
            identity_hash: identity_hash.to_owned(),
            lusha_id,
            outcome: outcome.to_owned(),
            result,
            enriched_at: now,
            written_at: None,
        }))
    }

    /// Books a call's credits; a failure to book is logged, never fatal to the call's results.
    async fn book_spend(&self, credits: i64) {
        if let Err(error) = self.record_spend(credits).await {
            tracing::error!(error = %error, credits, "Lusha: could not record spent credits");
        }
    }

    async fn record_spend(&self, credits: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO lusha_credits (day, spent, calls) VALUES (?, ?, 1) \
             ON CONFLICT (day) DO UPDATE SET spent = spent + excluded.spent, calls = calls + 1",
        )
        .bind(utc_day(now_ms()))
        .bind(credits)
        .execute(self.store.pool())
        .await?;
        if credits > 0 {
            metrics::counter!("ghl_sync_lusha_credits_spent_total").increment(u64::try_from(credits).unwrap_or(0));
        }
        let mut gates = self.gates();
        if let Some((_, balance)) = gates.balance.as_mut() {
            *balance -= credits;
        }
        Ok(())
    }

    /// Credits spent today (UTC).
    pub async fn spent_today(&self) -> Result<i64, sqlx::Error> {
        let spent: Option<i64> = sqlx::query_scalar("SELECT spent FROM lusha_credits WHERE day = ?")
            .bind(utc_day(now_ms()))
            .fetch_optional(self.store.pool())
            .await?;
        Ok(spent.unwrap_or(0))
    }

    /// The balance, from `/v3/account/usage` at most once per `usage_interval` (else the last
    /// reading minus what we spent since). `None` when it could not be read.
    async fn balance(&self) -> Option<i64> {
        let interval = self.settings.usage_interval.get();
        {
            let gates = self.gates();
            if let Some(read) = gates.usage_read_at
                && read.elapsed() < interval
            {
                return gates.balance.map(|(_, b)| b);
            }
        }
        self.gates().usage_read_at = Some(Instant::now());
        match self.client.usage().await {
            Ok(usage) => {
                let remaining = usage.pointer("/credits/remaining").and_then(Value::as_f64).map(|v| v as i64);
                let mut gates = self.gates();
                if let Some(remaining) = remaining {
                    gates.balance = Some((Instant::now(), remaining));
                    metrics::gauge!("ghl_sync_lusha_credits_remaining").set(remaining as f64);
                }
                gates.balance.map(|(_, b)| b)
            }
            Err(error) => {
                tracing::warn!(error = %error, "Lusha: could not read the credit balance");
                self.note_error(&error);
                self.gates().balance.map(|(_, b)| b)
            }
        }
    }

    /// How many contacts may be enriched now under the daily cap and the balance above the
    /// reserve, and whether the daily cap (rather than the balance) is the tighter bound.
    async fn allowance(&self) -> (usize, bool) {
        let spent = self.spent_today().await.unwrap_or(0);
        let cap_left = (self.settings.daily_credit_cap > 0).then(|| self.settings.daily_credit_cap - spent);
        let balance_left = self.balance().await.map(|b| b - self.settings.credit_reserve);
        let capped = cap_left.is_some_and(|c| balance_left.is_none_or(|b| c <= b));
        (affordable(cap_left, balance_left, self.settings.max_credits_per_contact), capped)
    }

    /// Remembers limits and stops from an error; returns the wait before trying again.
    fn note_error(&self, error: &LushaError) -> Option<Duration> {
        let now = Instant::now();
        let mut gates = self.gates();
        match error {
            LushaError::NoCredits { .. } => {
                let wait = self.settings.stop_on_no_credits.get();
                gates.stopped_until = Some(now + wait);
                gates.usage_read_at = None;
                gates.balance = Some((now, 0));
                metrics::counter!("ghl_sync_lusha_stops_total", "reason" => "no_credits").increment(1);
                tracing::error!(
                    connector.id = ID,
                    stop_for_s = wait.as_secs(),
                    "ALERT: Lusha has no credits left (402); the Lusha connector stops and re-checks the balance later. Other connectors go on"
                );
                Some(wait)
            }
            LushaError::Config { status, .. } => {
                let wait = self.settings.stop_on_no_credits.get();
                gates.stopped_until = Some(now + wait);
                metrics::counter!("ghl_sync_lusha_stops_total", "reason" => "refused").increment(1);
                tracing::error!(
                    connector.id = ID,
                    status,
                    "ALERT: Lusha refused the API key or plan; the Lusha connector stops"
                );
                Some(wait)
            }
            LushaError::Hourly { wait, .. } => {
                gates.parked_until = Some(now + *wait);
                tracing::warn!(connector.id = ID, park_s = wait.as_secs(), "Lusha hourly limit reached; parked");
                Some(*wait)
            }
            LushaError::Daily { .. } => {
                let wait = until_next_utc_day(now_ms());
                gates.parked_until = Some(now + wait);
                tracing::warn!(
                    connector.id = ID,
                    park_s = wait.as_secs(),
                    "Lusha daily limit reached; parked until the next UTC day"
                );
                Some(wait)
            }
            LushaError::Minute { .. } => Some(Duration::from_secs(60)),
            _ => None,
        }
    }

    /// The wait while stopped or parked (no Lusha call meanwhile).
    fn blocked(&self) -> Option<Duration> {
        let now = Instant::now();
        let gates = self.gates();
        [gates.stopped_until, gates.parked_until]
            .into_iter()
            .flatten()
            .filter(|until| *until > now)
            .max()
            .map(|until| until - now)
    }

    fn plan(&self, delivery: &Delivery, linkedin_id: Option<&str>) -> Result<(Map<String, Value>, Identity), Outcome> {
        if delivery.entity != EntityKind::Contact {
            return Err(Outcome::Skip("not a contact change".into()));
        }
        if delivery.operation == Operation::Deleted {
            return Err(Outcome::Skip("deleted contact".into()));
        }
        let Value::Object(record) = &delivery.record else {
            return Err(Outcome::Permanent("contact record is not an object".into()));
        };
        match Identity::of(record, linkedin_id) {
            Some(identity) => Ok((record.clone(), identity)),
            None => Err(Outcome::Skip("no email, LinkedIn URL or name + company to look up".into())),
        }
    }

    /// Calls Lusha for a chunk, repeating an ambiguous failure (maybe charged) at most once.
    async fn call_once_more(&self, search: bool, payload: &[Value], ids: &[String]) -> Result<Value, LushaError> {
        let mut tried = false;
        loop {
            let result = if search {
                self.client.search_and_enrich(payload, &self.reveal, self.settings.waterfall).await
            } else {
                self.client.enrich(ids, &self.reveal, self.settings.waterfall).await
            };
            match result {
                Err(LushaError::Ambiguous { route, detail }) if !tried => {
                    tried = true;
                    tracing::warn!(connector.id = ID, route, detail = %detail, "Lusha call failed after it may have been charged; repeating it once");
                }
                other => {
                    if tried
                        && let Ok(value) = &other
                        && credits_charged(value) > 0
                    {
                        tracing::warn!(
                            connector.id = ID,
                            credits = credits_charged(value),
                            "ALERT: a repeated Lusha call was charged again"
                        );
                    }
                    return other;
                }
            }
        }
    }

    /// Writes a cached answer back to GHL and marks it written. Returns the outcome.
    async fn write_back(&self, job: &Job, cached: &Cached) -> Outcome {
        match self.try_write_back(job, cached).await {
            Ok(()) => {
                if cached.outcome == "found" {
                    metrics::counter!("ghl_sync_lusha_enriched_total").increment(1);
                } else {
                    metrics::counter!("ghl_sync_lusha_not_found_total").increment(1);
                }
                Outcome::Done
            }
            // Deleted in GHL meanwhile: the result stays cached, there is nothing to write to.
            Err(WriteBackError::Ghl(error)) if error.status() == Some(crate::http::StatusCode::NOT_FOUND) => {
                Outcome::Skip("the contact was deleted in GHL".into())
            }
            Err(error) if error.is_retryable() => {
                tracing::warn!(connector.id = ID, contact.id = %job.contact_id, error = %error, "Lusha write-back to GHL failed; will retry (from the cache, no Lusha call)");
                Outcome::Retry(None)
            }
            Err(error) => Outcome::Permanent(format!("write-back to GHL failed: {error}")),
        }
    }

    async fn try_write_back(&self, job: &Job, cached: &Cached) -> Result<(), WriteBackError> {
        let location = job.location.as_str();
        let contact_id = job.contact_id.as_str();
        let ids = self.field_ids(location).await?;
        let stamp = cached.enriched_at.to_string();
        let base = [ID, location, contact_id, cached.identity_hash.as_str(), self.reveal_set.as_str(), stamp.as_str()];
        let key = |what: &str| {
            let mut parts = base.to_vec();
            parts.push(what);
            crate::writeback::key(&parts)
        };
        let update = self.update_for(&job.record, cached, &ids);
        let tag = if cached.outcome == "found" { &self.settings.tags.enriched } else { &self.settings.tags.not_found };
        let (update_key, tag_key) = (key("update"), key("tag"));
        self.writeback.update_contact(location, contact_id, &update_key, &update).await?;
        self.writeback.add_tags(location, contact_id, &tag_key, std::slice::from_ref(tag)).await?;
        if self.settings.note
            && let Some(result) = cached.result.as_ref().filter(|_| cached.outcome == "found")
        {
            let note = NoteWrite { body: Some(mapping::note_body(result)), ..NoteWrite::default() };
            self.writeback.create_note(location, contact_id, &key("note"), &note).await?;
        }
        let after = self.writeback.settle(location, contact_id, &[update_key, tag_key]).await?;
        let now = now_ms();
        sqlx::query(
            "UPDATE lusha_cache SET written_at = ? WHERE contact_id = ? AND identity_hash = ? AND reveal_set = ?",
        )
        .bind(now)
        .bind(contact_id)
        .bind(&cached.identity_hash)
        .bind(&self.reveal_set)
        .execute(self.store.pool())
        .await?;
        // Our write may have given the contact an email it lacked: its identity changed, but
        // the person did not. Cache the same answer under the new identity too.
        let linkedin = self.settings.linkedin_field.as_ref().and_then(|k| ids.get(k)).map(String::as_str);
        if let Some(after) = after
            && let Some(identity) = Identity::of(&after, linkedin)
            && identity.hash() != cached.identity_hash
        {
            sqlx::query(
                "INSERT INTO lusha_cache (location_id, contact_id, identity_hash, reveal_set, lusha_id, found, outcome, result, credits, enriched_at, written_at) \
                 SELECT location_id, contact_id, ?, reveal_set, lusha_id, found, outcome, result, 0, enriched_at, written_at FROM lusha_cache \
                 WHERE contact_id = ? AND identity_hash = ? AND reveal_set = ? ON CONFLICT DO NOTHING",
            )
            .bind(identity.hash())
            .bind(contact_id)
            .bind(&cached.identity_hash)
            .bind(&self.reveal_set)
            .execute(self.store.pool())
            .await?;
        }
        Ok(())
    }

    /// The `PUT` body: mapped values (empty GHL fields only unless `overwrite`) plus the
    /// bookkeeping custom fields.
    fn update_for(&self, record: &Map<String, Value>, cached: &Cached, ids: &HashMap<String, String>) -> UpdateContact {
        let mut update = UpdateContact::default();
        let mut custom = Vec::new();
        let mut set_custom = |key: &str, value: Value, always: bool| {
            let Some(id) = ids.get(key) else { return };
            if !always && !self.settings.overwrite && custom_value(record, id).is_some() {
                return;
            }
            custom.push(CustomFieldValue { id: id.clone(), key: None, field_value: value });
        };
        if let Some(result) = cached.result.as_ref().filter(|_| cached.outcome == "found") {
            let extracted = extract(result, &self.settings);
            let targets: HashMap<&str, &str> = self.settings.fields.mapped().into_iter().collect();
            for (name, value) in extracted.values {
                let Some(target) = targets.get(name) else { continue };
                if target.starts_with("contact.") {
                    set_custom(target, Value::String(value), false);
                    continue;
                }
                let present = record.get(*target).and_then(Value::as_str).is_some_and(|s| !s.trim().is_empty());
                if present && !self.settings.overwrite {
                    continue;
                }
                let slot = match *target {
                    "email" => &mut update.email,
                    "phone" => &mut update.phone,
                    "city" => &mut update.city,
                    "state" => &mut update.state,
                    "country" => &mut update.country,
                    "website" => &mut update.website,
                    "address1" => &mut update.address1,
                    "postalCode" => &mut update.postal_code,
                    _ => continue,
                };
                debug_assert!(STANDARD_FIELDS.contains(target));
                *slot = Some(value);
            }
            if let Some(id) = &cached.lusha_id {
                set_custom(&self.settings.fields.lusha_id, Value::String(id.clone()), true);
            }
        }
        set_custom(&self.settings.fields.enriched_at, Value::String(super::rfc3339_ms(cached.enriched_at)), true);
        if !custom.is_empty() {
            update.custom_fields = Some(custom);
        }
        update
    }

    /// Runs the Lusha calls for jobs that need them; fills `outcomes` for jobs that end here
    /// and returns the cached answers to write back.
    async fn enrich(&self, jobs: Vec<Job>, outcomes: &mut [Option<Outcome>]) -> Vec<(Job, Cached)> {
        let mut ready = Vec::new();
        let mut calls: Vec<Job> = Vec::new();
        for job in jobs {
            match &job.plan {
                Plan::WriteOnly(cached) => {
                    let cached = cached.clone();
                    ready.push((job, cached));
                }
                Plan::Cached => outcomes[job.index] = Some(Outcome::Skip("cached Lusha result".into())),
                Plan::Refresh(_) | Plan::Search => calls.push(job),
            }
        }
        if calls.is_empty() {
            return ready;
        }
        if let Some(wait) = self.blocked() {
            for job in &calls {
                outcomes[job.index] = Some(Outcome::Park(wait));
            }
            return ready;
        }

        let (allowed, capped) = self.allowance().await;
        if let Some(wait) = self.blocked() {
            for job in &calls {
                outcomes[job.index] = Some(Outcome::Park(wait));
            }
            return ready;
        }
        if calls.len() > allowed {
            let wait = if capped { until_next_utc_day(now_ms()) } else { self.settings.stop_on_no_credits.get() };
            let held = calls.len() - allowed;
            // Nothing spent today: the worst case per contact bounded this batch, no budget is reached.
            if !capped || self.spent_today().await.unwrap_or(0) > 0 {
                tracing::warn!(
                    connector.id = ID,
                    held,
                    reason = if capped { "daily_credit_cap" } else { "credit_reserve" },
                    "Lusha credit budget reached; the rest waits"
                );
            } else {
                tracing::debug!(connector.id = ID, held, "Lusha batch bounded by the worst-case cost per contact");
            }
            metrics::counter!("ghl_sync_lusha_held_by_budget_total").increment((calls.len() - allowed) as u64);
            if !capped {
                // Below the reserve: stop like after a 402 and re-read the balance afterwards.
                let mut gates = self.gates();
                gates.stopped_until = Some(Instant::now() + wait);
                gates.usage_read_at = None;
            }
            for job in calls.drain(allowed..) {
                outcomes[job.index] = Some(Outcome::Park(wait));
            }
        }

        let (refresh, search): (Vec<Job>, Vec<Job>) =
            calls.into_iter().partition(|j| matches!(j.plan, Plan::Refresh(_)));
        let size = self.settings.batch_size.clamp(1, 100);
        let mut chunks: Vec<(bool, Vec<Job>)> = Vec::new();
        let mut search = search;
        while !search.is_empty() {
            let rest = search.split_off(search.len().min(size));
            chunks.push((true, std::mem::replace(&mut search, rest)));
        }
        let mut refresh = refresh;
        while !refresh.is_empty() {
            let rest = refresh.split_off(refresh.len().min(size));
            chunks.push((false, std::mem::replace(&mut refresh, rest)));
        }

        let mut stop: Option<Outcome> = None;
        for (is_search, chunk) in chunks {
            if let Some(outcome) = &stop {
                for job in &chunk {
                    outcomes[job.index] = Some(outcome.clone());
                }
                continue;
            }
            let now = now_ms();
            let (payload, ids): (Vec<Value>, Vec<String>) = if is_search {
                (chunk.iter().map(|j| j.identity.search_item(&j.contact_id)).collect(), Vec::new())
            } else {
                let mut ids: Vec<String> = chunk
                    .iter()
                    .filter_map(|j| if let Plan::Refresh(id) = &j.plan { Some(id.clone()) } else { None })
                    .collect();
                ids.sort();
                ids.dedup();
                (Vec::new(), ids)
            };
            match self.call_once_more(is_search, &payload, &ids).await {
                Ok(response) => {
                    let credits = credits_charged(&response);
                    self.book_spend(credits).await;
                    let answers = if is_search {
                        let refs: Vec<String> = chunk.iter().map(|j| j.contact_id.clone()).collect();
                        match_by_reference(&response, &refs)
                    } else {
                        match_by_id(&response, &ids)
                    };
                    // Billing is per call: share it out over the found results.
                    let found = answers.values().filter(|a| matches!(a, Answer::Found(_))).count().max(1) as i64;
                    let mut nth_found = 0i64;
                    for job in chunk {
                        let key = match &job.plan {
                            Plan::Refresh(id) => id.clone(),
                            _ => job.contact_id.clone(),
                        };
                        let answer = answers.get(&key).cloned().unwrap_or(Answer::NotFound);
                        if let Answer::Failed(code) = &answer {
                            tracing::warn!(connector.id = ID, contact.id = %job.contact_id, code = %code, "Lusha could not enrich a contact; will retry");
                            outcomes[job.index] = Some(Outcome::Retry(None));
                            continue;
                        }
                        let credits = if matches!(answer, Answer::Found(_)) {
                            nth_found += 1;
                            credit_share(credits, found, nth_found)
                        } else {
                            0
                        };
                        let identity_hash = job.identity.hash();
                        match self.remember(&job.location, &job.contact_id, &identity_hash, &answer, credits, now).await
                        {
                            Ok(Some(cached)) => ready.push((job, cached)),
                            Ok(None) => outcomes[job.index] = Some(Outcome::Retry(None)),
                            Err(error) => {
                                tracing::error!(error = %error, "Lusha: could not cache a result");
                                outcomes[job.index] = Some(Outcome::Retry(None));
                            }
                        }
                    }
                }
                Err(error) => {
                    let wait = self.note_error(&error);
                    let outcome = match (&error, wait) {
                        (LushaError::Rejected { status, .. }, _) => {
                            Outcome::Permanent(format!("Lusha rejected the request ({status})"))
                        }
                        // A limit, an empty balance or a refused key: wait without spending
                        // attempts (nothing was charged, nothing is lost).
                        (_, Some(wait)) => Outcome::Park(wait),
                        (_, None) => Outcome::Retry(None),
                    };
                    tracing::warn!(connector.id = ID, error = %error, items = chunk.len(), "Lusha call failed");
                    if matches!(
                        error,
                        LushaError::NoCredits { .. }
                            | LushaError::Config { .. }
                            | LushaError::Hourly { .. }
                            | LushaError::Daily { .. }
                            | LushaError::Minute { .. }
                    ) {
                        stop = Some(outcome.clone());
                    }
                    for job in &chunk {
                        outcomes[job.index] = Some(outcome.clone());
                    }
                }
            }
        }
        ready
    }
}

#[async_trait::async_trait]
impl Connector for LushaConnector {
    fn id(&self) -> &str {
        ID
    }

    fn interested(&self, event_type: &str, location: &str) -> bool {
        matches!(event_type, "contact.created" | "contact.updated")
            && (self.settings.locations.is_empty() || self.settings.locations.iter().any(|l| l == location))
    }

    fn settings(&self) -> DeliverySettings {
        DeliverySettings {
            batch_size: self.settings.batch_size.clamp(1, 100),
            concurrency: 1,
            max_attempts: self.settings.max_attempts,
        }
    }

    async fn check(&self) -> Result<CheckReport, ConnectorError> {
        let usage = self
            .client
            .usage()
            .await
            .map_err(|e| ConnectorError::Other { connector: ID.into(), detail: e.to_string() })?;
        client::describe_usage(&usage, &self.settings)
            .map(|detail| CheckReport { detail })
            .map_err(|detail| ConnectorError::Other { connector: ID.into(), detail })
    }

    fn preview(&self, delivery: &Delivery) -> Result<Value, ConnectorError> {
        match self.plan(delivery, None) {
            Ok((_, identity)) => Ok(json!({
                "route": "/v3/contacts/search-and-enrich",
                "identity": identity.kind(),
                "reveal": self.reveal,
                "item": identity.search_item(&delivery.entity_id),
            })),
            Err(outcome) => Ok(json!({"skip": format!("{outcome:?}")})),
        }
    }

    async fn run_background(self: Arc<Self>, stop: CancellationToken) {
        self.run_pollers(stop).await;
    }

    async fn deliver(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let now = now_ms();
        let mut jobs = Vec::new();
        let planning = self.imports.read().await;
        for (index, delivery) in batch.iter().enumerate() {
            let ids = match self.field_ids(&delivery.location_id).await {
                Ok(ids) => ids,
                Err(error) => {
                    tracing::warn!(connector.id = ID, error = %error, "Lusha: custom fields of the location could not be read");
                    outcomes[index] = Some(Outcome::Retry(None));
                    continue;
                }
            };
            let linkedin = self.settings.linkedin_field.as_ref().and_then(|k| ids.get(k)).map(String::as_str);
            let (record, identity) = match self.plan(delivery, linkedin) {
                Ok(planned) => planned,
                Err(outcome) => {
                    outcomes[index] = Some(outcome);
                    continue;
                }
            };
            let cached = match self.cached(&delivery.entity_id, &identity.hash()).await {
                Ok(cached) => cached,
                Err(error) => {
                    tracing::error!(error = %error, "Lusha: cache read failed");
                    outcomes[index] = Some(Outcome::Retry(None));
                    continue;
                }
            };
            let plan = match cached {
                Some(cached) if self.fresh(&cached, now) => {
                    if cached.written_at.is_some() {
                        metrics::counter!("ghl_sync_lusha_cache_skips_total").increment(1);
                        Plan::Cached
                    } else {
                        Plan::WriteOnly(cached)
                    }
                }
                Some(Cached { lusha_id: Some(id), outcome, .. }) if outcome == "found" => Plan::Refresh(id),
                _ => Plan::Search,
            };
            jobs.push(Job {
                index,
                location: delivery.location_id.clone(),
                contact_id: delivery.entity_id.clone(),
                record,
                identity,
                plan,
            });
        }
        drop(planning);
        let ready = self.enrich(jobs, &mut outcomes).await;
        for (job, cached) in ready {
            let outcome = self.write_back(&job, &cached).await;
            outcomes[job.index] = Some(outcome);
        }
        outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Retry(None))).collect()
    }
}

/// Custom field ids the Lusha write-back sets as bookkeeping (`lusha_id`, `lusha_enriched_at`)
/// in every active location: give them to the sync engine's `ignored_custom_fields` so they
/// never change a contact's hash. Locations whose fields cannot be read are skipped (logged).
pub async fn bookkeeping_field_ids(settings: &LushaSettings, ghl: &GhlClient, store: &Store) -> Vec<String> {
    let locations: Vec<String> =
        sqlx::query_scalar("SELECT id FROM locations WHERE status NOT IN ('disabled', 'uninstalled') ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap_or_default();
    let keys = [settings.fields.lusha_id.as_str(), settings.fields.enriched_at.as_str()];
    let mut ids = Vec::new();
    for location in locations {
        if !settings.locations.is_empty() && !settings.locations.contains(&location) {
            continue;
        }
        match ghl.custom_fields(&location, Some("contact"), Priority::Poll).await {
            Ok(fields) => ids.extend(
                fields.into_iter().filter(|f| f.field_key.as_deref().is_some_and(|k| keys.contains(&k))).map(|f| f.id),
            ),
            Err(error) => {
                tracing::warn!(location.id = %location, error = %error, "Lusha: custom fields could not be read; bookkeeping fields of this location count as changes");
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_shares_add_up() {
        for (credits, found) in [(0, 1), (7, 3), (12, 4), (5, 8)] {
            let total: i64 = (1..=found).map(|nth| credit_share(credits, found, nth)).sum();
            assert_eq!(total, credits, "{credits} over {found}");
        }
    }

    #[test]
    fn credit_budget_math() {
        assert_eq!(affordable(None, None, 12), usize::MAX);
        assert_eq!(affordable(Some(100), None, 12), 8);
        assert_eq!(affordable(Some(100), Some(30), 12), 2);
        assert_eq!(affordable(Some(-5), Some(30), 12), 0);
        assert_eq!(affordable(None, Some(11), 12), 0);
        assert_eq!(affordable(Some(24), Some(1000), 12), 2);
    }

    #[test]
    fn utc_days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(86_400_000 * 365 + 5), "1971-01-01");
        assert_eq!(until_next_utc_day(86_400_000 - 1_000), Duration::from_secs(1));
        assert_eq!(until_next_utc_day(0), Duration::from_secs(86_400));
    }
}
