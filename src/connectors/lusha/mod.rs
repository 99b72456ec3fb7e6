//! The Lusha connector (`lusha`): enriches GHL contacts through Lusha and writes the result
//! back to GHL, never paying twice for the same person (reference/lusha.md §4, §9).
//!
//! Per delivered contact change:
//! 1. Identity (email | LinkedIn URL | first + last + company) and its hash. A result in
//!    `lusha_cache` for (contact, identity hash, reveal set) within its TTL means no Lusha
//!    call (`Skip`); a cached result not yet written back is written from the cache.
//! 2. Gates: stopped after a 402 (re-checks the balance after `stop_on_no_credits`), parked
//!    after an hourly / daily 429. Held-back items are `Park`ed with the wait; nothing is lost.
//! 3. Budget admission, **before every Lusha call** and on what was really charged: the
//!    credits booked today (each answer's `billing.creditsCharged`) against
//!    `daily_credit_cap`, and the balance (`/v3/account/usage`, read at most once per
//!    `usage_interval`, minus what we spent since) above `credit_reserve`. What is left,
//!    divided by `max_credits_per_contact` (the worst case of one contact), bounds the size of
//!    the next call; after it answers, its real charge is booked and the next call is admitted
//!    on the new figures, so a batch larger than the worst case allows is enriched over
//!    several calls the same day. Only when less than one contact's worst case is left does
//!    work wait: until the next UTC day under the cap, `stop_on_no_credits` (then the balance
//!    is re-read) under the reserve. Lusha calls that spend credits (enrichment and lead
//!    import) run one at a time, so each admission sees every credit charged before it.
//! 4. New identity → `search-and-enrich` (≤ 100 per call, `clientReferenceId` = contact id,
//!    answers matched by it, a missing answer = not found); an expired found result →
//!    `enrich` by Lusha id (re-reveals are free). A call that may have been charged
//!    (timeout, 5xx, 499) is repeated at most once.
//! 5. Every answer (found, not found, restricted) is cached with its credits, in the same
//!    store transaction that books the call's spend ([`crate::store::lusha`]), **before** the
//!    write-back; the write-back goes through [`crate::writeback::WriteBack`] with keys derived
//!    from the cached result, so a replay never writes twice, and records the resulting
//!    content hash so the sync does not deliver our own write as a user change.

pub mod client;
pub mod config;
pub mod leads;
pub mod mapping;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use self::client::{LushaClient, LushaError};
use self::config::{LushaSettings, STANDARD_FIELDS};
use self::mapping::{
    Answer, Identity, credits_charged, custom_value, extract, match_by_id, match_by_reference, reveal_set,
};
use super::{CheckReport, Connector, ConnectorError, Delivery, DeliverySettings, Outcome};
use crate::domain::{EntityKind, Operation};
use crate::ghl::GhlError;
use crate::ghl::write::{CustomFieldValue, NoteWrite, UpdateContact};
use crate::http::{HttpError, Priority};
use crate::store::lusha::{self as books, CacheKey, Cached, NewResult, ResultKind, Spend};
use crate::store::{Store, StoreError, now_ms};
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
    /// Held from a spending call's admission until its charge is booked: calls that spend
    /// credits (enrichment, lead import) run one at a time, each admitted on every credit
    /// charged before it.
    spending: tokio::sync::Mutex<()>,
    /// Cancelled when the daemon stops: no Lusha call or GHL write-back starts after that.
    stopping: CancellationToken,
    /// Raises `lusha.*` trigger events for the rules that listen to them.
    rules: crate::rules::emit::Emitter,
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

/// Credits left under the two limits, from what was really charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `daily_credit_cap` minus the credits booked today; `None`: no cap.
    pub cap_left: Option<i64>,
    /// The balance minus `credit_reserve`; `None`: balance unknown.
    pub balance_left: Option<i64>,
}

/// What the budget says about the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// This many contacts (at least one) fit their worst case in what is left.
    Admit(usize),
    /// Not one contact's worst case fits under the daily cap: wait for the next UTC day.
    CapReached,
    /// Not one contact's worst case fits above the reserve: wait for credits.
    ReserveReached,
}

/// Why a spending call may not go now, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Stopped (402, refused key) or parked (a Lusha rate limit).
    Blocked(Duration),
    /// The credit budget cannot fit one contact's worst case.
    Budget(Duration),
}

impl Held {
    fn wait(self) -> Duration {
        match self {
            Held::Blocked(wait) | Held::Budget(wait) => wait,
        }
    }
}

impl Budget {
    /// Admission of up to `wanted` contacts of worst case `per_contact` each.
    pub fn admit(&self, wanted: usize, per_contact: i64) -> Admission {
        let allowed = affordable(self.cap_left, self.balance_left, per_contact);
        if allowed > 0 {
            return Admission::Admit(allowed.min(wanted));
        }
        let cap_binds = self.cap_left.is_some_and(|c| self.balance_left.is_none_or(|b| c <= b));
        if cap_binds { Admission::CapReached } else { Admission::ReserveReached }
    }
}

impl LushaConnector {
    pub fn new(
        settings: &LushaSettings,
        key: SecretString,
        writeback: WriteBack,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = LushaClient::new(settings, key, cancel.clone())?;
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
            spending: tokio::sync::Mutex::new(()),
            stopping: cancel,
            rules: crate::rules::emit::Emitter::none(),
        })
    }

    /// Raises `lusha.enriched`, `lusha.not_found`, `lusha.lead_imported` and `lusha.signal` for
    /// the rules through `rules`.
    pub fn with_rules(mut self, rules: crate::rules::emit::Emitter) -> Self {
        self.rules = rules;
        self
    }

    /// Stores a `lusha.*` trigger event when a rule listens to it (keyed: a retry adds nothing).
    pub(crate) async fn emit(
        &self,
        trigger: &str,
        key_parts: &[&str],
        location: &str,
        contact_id: &str,
        data: Map<String, Value>,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let key = || {
            let mut parts = vec![ID, "rule-event", trigger];
            parts.extend_from_slice(key_parts);
            crate::writeback::key(&parts)
        };
        self.rules.emit_about_contact(trigger, key, location, contact_id, data, at_ms).await
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

    fn cache_key<'a>(&'a self, contact_id: &'a str, identity_hash: &'a str) -> CacheKey<'a> {
        CacheKey { contact_id, identity_hash, reveal_set: &self.reveal_set }
    }

    fn fresh(&self, cached: &Cached, now: i64) -> bool {
        let ttl = if cached.found() { self.settings.reenrich_after } else { self.settings.not_found_ttl };
        cached.enriched_at.saturating_add(ms(ttl.get())) > now
    }

    /// After a call answered: counts its charge against the last balance read and in metrics.
    fn note_spend(&self, credits: i64) {
        if credits > 0 {
            metrics::counter!("ghl_sync_lusha_credits_spent_total").increment(u64::try_from(credits).unwrap_or(0));
        }
        let mut gates = self.gates();
        if let Some((_, balance)) = gates.balance.as_mut() {
            *balance -= credits;
        }
    }

    /// Books a call's charge when its answers could not be recorded with it (best effort: the
    /// budget must still see it).
    async fn book_spend_alone(&self, credits: i64) {
        let day = utc_day(now_ms());
        if let Err(error) = books::book_spend(&self.store, Spend { day: &day, credits }).await {
            tracing::error!(error = %error, credits, "Lusha: could not record spent credits");
        }
    }

    /// Credits spent today (UTC), as booked from each answer's `billing`.
    pub async fn spent_today(&self) -> Result<i64, StoreError> {
        Ok(books::spent_on(&self.store, &utc_day(now_ms())).await?.spent)
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

    /// What is left under the daily cap and above the reserve, from the credits really
    /// charged (booked today) and the balance.
    async fn budget(&self) -> Budget {
        let spent = match self.spent_today().await {
            Ok(spent) => spent,
            Err(error) => {
                tracing::warn!(error = %error, "Lusha: today's spend could not be read; counted as 0");
                0
            }
        };
        let cap_left = (self.settings.daily_credit_cap > 0).then(|| self.settings.daily_credit_cap - spent);
        let balance_left = self.balance().await.map(|b| b - self.settings.credit_reserve);
        Budget { cap_left, balance_left }
    }

    /// Admission of the next spending call of up to `wanted` contacts (call it holding
    /// `spending`): how many may go now, or the wait for all of them. A stop or park (also one
    /// the balance read just noticed) holds everything; so does a budget that cannot fit one
    /// contact's worst case (the reserve then stops the connector like a 402).
    async fn admit(&self, wanted: usize) -> Result<usize, Held> {
        if let Some(wait) = self.blocked() {
            return Err(Held::Blocked(wait));
        }
        let budget = self.budget().await;
        if let Some(wait) = self.blocked() {
            return Err(Held::Blocked(wait));
        }
        let per_contact = self.settings.max_credits_per_contact;
        match budget.admit(wanted, per_contact) {
            Admission::Admit(n) => Ok(n),
            Admission::CapReached => {
                let wait = until_next_utc_day(now_ms());
                tracing::warn!(
                    connector.id = ID,
                    cap = self.settings.daily_credit_cap,
                    cap_left = budget.cap_left.unwrap_or(0),
                    per_contact,
                    wait_s = wait.as_secs(),
                    "Lusha daily credit cap reached (less than one contact's worst case left); new work waits for the next UTC day"
                );
                Err(Held::Budget(wait))
            }
            Admission::ReserveReached => {
                // Below the reserve: stop like after a 402 and re-read the balance afterwards.
                let wait = self.settings.stop_on_no_credits.get();
                let mut gates = self.gates();
                gates.stopped_until = Some(Instant::now() + wait);
                gates.usage_read_at = None;
                tracing::warn!(
                    connector.id = ID,
                    balance_left = budget.balance_left.unwrap_or(0),
                    per_contact,
                    wait_s = wait.as_secs(),
                    "Lusha credit reserve reached; the connector waits and re-reads the balance"
                );
                Err(Held::Budget(wait))
            }
        }
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
                let trigger = if cached.found() { "lusha.enriched" } else { "lusha.not_found" };
                let mut data = Map::new();
                data.insert("found".into(), Value::Bool(cached.found()));
                data.insert("lusha_id".into(), cached.lusha_id.clone().map_or(Value::Null, Value::String));
                data.insert("result".into(), cached.result.clone().unwrap_or(Value::Null));
                let at = cached.enriched_at.to_string();
                if let Err(error) = self
                    .emit(trigger, &[&job.contact_id, &at], &job.location, &job.contact_id, data, cached.enriched_at)
                    .await
                {
                    return Outcome::Retry(
                        None,
                        Some(format!("the {trigger} rule event could not be stored: {error}")),
                    );
                }
                if cached.found() {
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
            // A rate-limit wait or retry sleep cut short by the stop: the keyed writes done so
            // far are not repeated when the write-back resumes on the next start.
            Err(WriteBackError::Ghl(GhlError::Http(HttpError::Cancelled { .. }))) => Outcome::not_started(),
            Err(error) if error.is_retryable() => {
                tracing::warn!(connector.id = ID, contact.id = %job.contact_id, error = %error, "Lusha write-back to GHL failed; will retry (from the cache, no Lusha call)");
                Outcome::Retry(None, Some(format!("the write-back to GHL failed: {error}")))
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
        let tag = if cached.found() { &self.settings.tags.enriched } else { &self.settings.tags.not_found };
        let (update_key, tag_key) = (key("update"), key("tag"));
        self.writeback.update_contact(location, contact_id, &update_key, &update).await?;
        self.writeback.add_tags(location, contact_id, &tag_key, std::slice::from_ref(tag)).await?;
        if self.settings.note
            && let Some(result) = cached.result.as_ref().filter(|_| cached.found())
        {
            let note = NoteWrite { body: Some(mapping::note_body(result)), ..NoteWrite::default() };
            self.writeback.create_note(location, contact_id, &key("note"), &note).await?;
        }
        let after = self.writeback.settle(location, contact_id, &[update_key, tag_key]).await?;
        // Our write may have given the contact an email it lacked: its identity changed, but
        // the person did not. The same answer is cached under the new identity too.
        let linkedin = self.settings.linkedin_field.as_ref().and_then(|k| ids.get(k)).map(String::as_str);
        let new_identity = after.and_then(|after| Identity::of(&after, linkedin)).map(|identity| identity.hash());
        let key = self.cache_key(contact_id, &cached.identity_hash);
        books::mark_written(&self.store, &key, now_ms(), new_identity.as_deref()).await?;
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
        if let Some(result) = cached.result.as_ref().filter(|_| cached.found()) {
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
    ///
    /// Calls are admitted one at a time on the real spend so far (see the module docs): a
    /// batch the worst case does not fit at once goes out over several calls; only what
    /// cannot fit one contact's worst case waits.
    async fn enrich(&self, jobs: Vec<Job>, outcomes: &mut [Option<Outcome>]) -> Vec<(Job, Cached)> {
        let mut ready = Vec::new();
        let (mut search, mut refresh) = (VecDeque::new(), VecDeque::new());
        for job in jobs {
            match &job.plan {
                Plan::WriteOnly(cached) => {
                    let cached = cached.clone();
                    ready.push((job, cached));
                }
                Plan::Cached => outcomes[job.index] = Some(Outcome::Skip("cached Lusha result".into())),
                Plan::Refresh(_) => refresh.push_back(job),
                Plan::Search => search.push_back(job),
            }
        }
        // New identities first, then refreshes; each call carries one kind.
        let mut queue: VecDeque<(bool, Job)> =
            search.into_iter().map(|j| (true, j)).chain(refresh.into_iter().map(|j| (false, j))).collect();
        let size = self.settings.batch_size.clamp(1, 100);
        while let Some(&(is_search, _)) = queue.front() {
            if self.stopping.is_cancelled() {
                // The daemon is stopping: no new Lusha call; the rest goes out on the next start.
                for (_, job) in queue.drain(..) {
                    outcomes[job.index] = Some(Outcome::not_started());
                }
                break;
            }
            let spending = self.spending.lock().await;
            let same_kind = queue.iter().take_while(|(s, _)| *s == is_search).count();
            let admitted = match self.admit(same_kind.min(size)).await {
                Ok(admitted) => admitted,
                Err(held) => {
                    if let Held::Budget(_) = held {
                        metrics::counter!("ghl_sync_lusha_held_by_budget_total").increment(queue.len() as u64);
                    }
                    for (_, job) in queue.drain(..) {
                        outcomes[job.index] = Some(Outcome::Park(held.wait()));
                    }
                    break;
                }
            };
            let chunk: Vec<Job> = queue.drain(..admitted).map(|(_, job)| job).collect();
            let stop = self.call(is_search, chunk, outcomes, &mut ready).await;
            drop(spending);
            if let Some(outcome) = stop {
                for (_, job) in queue.drain(..) {
                    outcomes[job.index] = Some(outcome.clone());
                }
            }
        }
        ready
    }

    /// One Lusha call for `chunk`: books its charge and caches its answers (one store
    /// transaction), pushes the answers to write back to `ready` and fills `outcomes` for the
    /// rest. Returns the outcome for every job still queued when the call says to stop (402,
    /// a refused key, a rate limit).
    async fn call(
        &self,
        is_search: bool,
        chunk: Vec<Job>,
        outcomes: &mut [Option<Outcome>],
        ready: &mut Vec<(Job, Cached)>,
    ) -> Option<Outcome> {
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
        let response = match self.call_once_more(is_search, &payload, &ids).await {
            Ok(response) => response,
            Err(error) => {
                let wait = self.note_error(&error);
                let outcome = match (&error, wait) {
                    // A rate-limit wait or retry sleep cut short by the stop: nothing was charged.
                    _ if self.stopping.is_cancelled() && wait.is_none() => Outcome::not_started(),
                    (LushaError::Rejected { status, .. }, _) => {
                        Outcome::Permanent(format!("Lusha rejected the request ({status})"))
                    }
                    // A limit, an empty balance or a refused key: wait without spending
                    // attempts (nothing was charged, nothing is lost).
                    (_, Some(wait)) => Outcome::Park(wait),
                    (_, None) => Outcome::Retry(None, Some(format!("the Lusha call failed: {error}"))),
                };
                tracing::warn!(connector.id = ID, error = %error, items = chunk.len(), "Lusha call failed");
                for job in &chunk {
                    outcomes[job.index] = Some(outcome.clone());
                }
                let stops = matches!(
                    error,
                    LushaError::NoCredits { .. }
                        | LushaError::Config { .. }
                        | LushaError::Hourly { .. }
                        | LushaError::Daily { .. }
                        | LushaError::Minute { .. }
                );
                return stops.then_some(outcome);
            }
        };
        let credits = credits_charged(&response);
        self.note_spend(credits);
        let answers = if is_search {
            let refs: Vec<String> = chunk.iter().map(|j| j.contact_id.clone()).collect();
            match_by_reference(&response, &refs)
        } else {
            match_by_id(&response, &ids)
        };
        // Billing is per call: share it out over the found results.
        let found = answers.values().filter(|a| matches!(a, Answer::Found(_))).count().max(1) as i64;
        let mut nth_found = 0i64;
        let mut answered: Vec<(Job, Cached, i64)> = Vec::new();
        for job in chunk {
            let key = match &job.plan {
                Plan::Refresh(id) => id.clone(),
                _ => job.contact_id.clone(),
            };
            let answer = answers.get(&key).cloned().unwrap_or(Answer::NotFound);
            let (outcome, result) = match answer {
                Answer::Found(value) => (ResultKind::Found, Some(value)),
                Answer::NotFound => (ResultKind::NotFound, None),
                Answer::Restricted => (ResultKind::Restricted, None),
                Answer::Failed(code) => {
                    tracing::warn!(connector.id = ID, contact.id = %job.contact_id, code = %code, "Lusha could not enrich a contact; will retry");
                    outcomes[job.index] =
                        Some(Outcome::Retry(None, Some(format!("Lusha could not enrich the contact ({code})"))));
                    continue;
                }
            };
            let share = if outcome == ResultKind::Found {
                nth_found += 1;
                credit_share(credits, found, nth_found)
            } else {
                0
            };
            let lusha_id = result.as_ref().and_then(|v| v.get("id")).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            let cached = Cached {
                identity_hash: job.identity.hash(),
                lusha_id,
                outcome,
                result,
                enriched_at: now,
                written_at: None,
            };
            answered.push((job, cached, share));
        }
        let results: Vec<NewResult<'_>> = answered
            .iter()
            .map(|(job, cached, share)| NewResult {
                location: &job.location,
                key: self.cache_key(&job.contact_id, &cached.identity_hash),
                lusha_id: cached.lusha_id.as_deref(),
                outcome: cached.outcome,
                result: cached.result.as_ref(),
                credits: *share,
                enriched_at: cached.enriched_at,
            })
            .collect();
        let day = utc_day(now);
        let recorded = books::record_enrichment(&self.store, Spend { day: &day, credits }, &results).await;
        match recorded {
            Ok(()) => ready.extend(answered.into_iter().map(|(job, cached, _)| (job, cached))),
            Err(error) => {
                // Nothing of this call is cached: its contacts are tried again (re-reveals
                // are free). Its charge must still count against the budget.
                tracing::error!(error = %error, "Lusha: could not cache the results of a call");
                self.book_spend_alone(credits).await;
                for (job, _, _) in answered {
                    outcomes[job.index] =
                        Some(Outcome::Retry(None, Some("the Lusha answer could not be cached (store error)".into())));
                }
            }
        }
        None
    }
}

#[async_trait::async_trait]
impl Connector for LushaConnector {
    fn id(&self) -> &str {
        ID
    }

    /// Writes back to GHL (and reads the location's custom fields).
    fn calls_ghl(&self) -> bool {
        true
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
                    outcomes[index] =
                        Some(Outcome::Retry(None, Some("the custom fields of the location could not be read".into())));
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
            let identity_hash = identity.hash();
            let cached = match books::cached(&self.store, &self.cache_key(&delivery.entity_id, &identity_hash)).await {
                Ok(cached) => cached,
                Err(error) => {
                    tracing::error!(error = %error, "Lusha: cache read failed");
                    outcomes[index] =
                        Some(Outcome::Retry(None, Some("the Lusha cache could not be read (store error)".into())));
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
                Some(Cached { lusha_id: Some(id), outcome: ResultKind::Found, .. }) => Plan::Refresh(id),
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
            // A stopping daemon starts no new write-back: the result is cached (its credits
            // booked), so the next start writes it from the cache without a Lusha call.
            let outcome = if self.stopping.is_cancelled() {
                Outcome::not_started()
            } else {
                self.write_back(&job, &cached).await
            };
            outcomes[job.index] = Some(outcome);
        }
        outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Retry(None, None))).collect()
    }
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
    fn admission_bounds_a_call_by_the_worst_case_and_waits_only_when_one_contact_does_not_fit() {
        let budget = |cap_left, balance_left| Budget { cap_left, balance_left };
        // The numbers: 500 left, 12 per contact: 41 now; after 178 really spent, 26.
        assert_eq!(budget(Some(500), None).admit(60, 12), Admission::Admit(41));
        assert_eq!(budget(Some(500 - 178), None).admit(19, 12), Admission::Admit(19));
        assert_eq!(budget(Some(12), Some(1_000)).admit(5, 12), Admission::Admit(1));
        assert_eq!(budget(None, None).admit(7, 12), Admission::Admit(7));
        // Less than one contact's worst case left: the tighter limit says which wait.
        assert_eq!(budget(Some(11), Some(1_000)).admit(5, 12), Admission::CapReached);
        assert_eq!(budget(Some(-3), None).admit(5, 12), Admission::CapReached);
        assert_eq!(budget(Some(400), Some(11)).admit(5, 12), Admission::ReserveReached);
        assert_eq!(budget(None, Some(0)).admit(5, 12), Admission::ReserveReached);
    }

    #[test]
    fn utc_days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(86_400_000 * 365 + 5), "1971-01-01");
        assert_eq!(until_next_utc_day(86_400_000 - 1_000), Duration::from_secs(1));
        assert_eq!(until_next_utc_day(0), Duration::from_secs(86_400));
    }
}
