//! The other direction, Lusha → GHL (reference/lusha.md §8: Lusha sends no event for new
//! leads, so the daemon polls):
//!
//! - **Lead import.** Each `[[connectors.lusha.leads]]` search is listed through
//!   `/v3/contacts/prospecting` (free). A lead id not in `lusha_leads` for that location is
//!   enriched by id within the credit budget (the same cap, reserve, gates and per-call
//!   admission on the real spend as the enrichment, one spending call at a time with it), the
//!   result is stored with the call's charge **before** any GHL write (status `enriched`), then the
//!   GHL contact is looked up by every revealed email and callable phone, updated when found
//!   and created otherwise, tagged `lusha:lead` and optionally given a task. Every write is keyed
//!   by (location, Lusha id), so a crash or a retry never creates a second contact or task. A
//!   lead seen again is skipped before anything is spent.
//! - **Signals.** `/webhooks/lusha` stores signals in `lusha_signals`; here each becomes a note
//!   and a tag on every GHL contact enriched with that Lusha id (keyed by the signal id), and
//!   the contact's cached result is expired so its next change refreshes it by Lusha id.
//!
//! Both results are cached in `lusha_cache` under the contact's identity, so the enrichment
//! connector never pays again for a contact the import created.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::LushaError;
use super::config::{EuPolicy, LeadSearch};
use super::mapping::{Answer, Identity, credits_charged, extract, match_by_id};
use super::{Held, ID, LushaConnector, utc_day};
use crate::connectors::mapping::render;
use crate::ghl::write::{CreateContact, NewTask, NoteWrite, UpdateContact};
use crate::http::Priority;
use crate::store::lusha::{self as books, Cached, LeadEnd, LeadImport, NewLead, ResultKind, Spend, StoredLead};
use crate::store::{StoreError, now_ms};
use crate::writeback::{WriteBackError, key, phone_digits};

/// Prospecting results per page (Lusha's maximum).
const PAGE_SIZE: u64 = 50;
/// Signals handled per pass.
const SIGNALS_PER_PASS: u32 = 100;

/// What one poll of a lead search did (counts only: no personal data).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeadReport {
    /// Results the search listed (all pages read).
    pub listed: usize,
    /// Lead ids not seen before in this location.
    pub new: usize,
    /// Enriched now (credits spent).
    pub enriched: usize,
    /// Lusha had nothing to reveal for them.
    pub not_found: usize,
    /// GHL contacts created.
    pub created: usize,
    /// Existing GHL contacts (same email or phone) updated instead.
    pub updated: usize,
    /// EU leads under `eu_policy = "skip"`.
    pub skipped: usize,
    /// New leads left for a later poll (`max_per_poll`, the credit budget, a Lusha limit).
    pub held: usize,
    /// Leads whose GHL write failed (retried on the next poll without another Lusha call).
    pub failed: usize,
}

/// Why a poll did not run (or stopped early). Counts gathered so far are logged.
#[derive(Debug, thiserror::Error)]
pub enum LeadError {
    #[error("the Lusha connector is stopped or parked for {0:?}")]
    Blocked(Duration),
    #[error(transparent)]
    Lusha(#[from] LushaError),
    #[error(transparent)]
    WriteBack(#[from] WriteBackError),
}

impl From<StoreError> for LeadError {
    fn from(error: StoreError) -> Self {
        LeadError::WriteBack(error.into())
    }
}

/// What one pass over pending signals did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignalReport {
    /// Signals written to at least one GHL contact.
    pub applied: usize,
    /// Signals whose Lusha id matches no enriched GHL contact (marked processed, with a reason).
    pub unmatched: usize,
    /// Signals left pending after a retryable failure.
    pub pending: usize,
}

impl LushaConnector {
    /// The background loop: every lead search on its interval, pending signals every
    /// `signals_interval`. A failing poll is logged and tried again at its next turn.
    pub(super) async fn run_pollers(self: Arc<Self>, stop: CancellationToken) {
        let searches = self.settings.leads.clone();
        let mut due: Vec<Instant> = vec![Instant::now(); searches.len()];
        let mut signals_due = Instant::now();
        loop {
            for (search, due) in searches.iter().zip(due.iter_mut()) {
                if *due > Instant::now() || stop.is_cancelled() {
                    continue;
                }
                let mut next = search.interval.get();
                match self.poll_leads(search, &stop).await {
                    Ok(report) => tracing::info!(
                        connector.id = ID,
                        search = %search.name,
                        location.id = %search.location,
                        report = ?report,
                        "Lusha lead search polled"
                    ),
                    Err(LeadError::Blocked(wait)) => next = next.max(wait),
                    Err(error) => tracing::warn!(
                        connector.id = ID,
                        search = %search.name,
                        error = %error,
                        "Lusha lead search failed; tried again at its next interval"
                    ),
                }
                *due = Instant::now() + next;
            }
            if signals_due <= Instant::now() && !stop.is_cancelled() {
                match self.process_signals(&stop).await {
                    Ok(report) if report != SignalReport::default() => {
                        tracing::info!(connector.id = ID, report = ?report, "Lusha signals written to GHL");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(connector.id = ID, error = %error, "Lusha signals could not be read"),
                }
                signals_due = Instant::now() + self.settings.signals_interval.get();
            }
            let next = due.iter().copied().chain([signals_due]).min().unwrap_or(signals_due);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// One poll of a lead search: list (free), enrich the new leads within the budget, import
    /// every enriched lead of the location (including ones an earlier crash left behind).
    pub async fn poll_leads(&self, search: &LeadSearch, stop: &CancellationToken) -> Result<LeadReport, LeadError> {
        let mut report = LeadReport::default();
        let location = search.location.as_str();
        if let Some(wait) = self.blocked() {
            self.import_enriched(location, stop, &mut report).await?;
            return if report == LeadReport::default() { Err(LeadError::Blocked(wait)) } else { Ok(report) };
        }
        let mut fresh = match self.list_new(search, stop, &mut report).await {
            Ok(fresh) => fresh,
            Err(error) => {
                // Leads enriched by an earlier poll still go to GHL.
                self.import_enriched(location, stop, &mut report).await?;
                return Err(error);
            }
        };
        report.new = fresh.len();
        if fresh.len() > search.max_per_poll {
            report.held += fresh.len() - search.max_per_poll;
            fresh.truncate(search.max_per_poll);
        }
        self.enrich_leads(search, fresh, stop, &mut report).await?;
        self.import_enriched(location, stop, &mut report).await?;
        Ok(report)
    }

    /// Lists the search (free) and returns the lead ids not yet recorded for its location,
    /// in result order, stopping once `max_per_poll` are found or after `max_pages` pages.
    async fn list_new(
        &self,
        search: &LeadSearch,
        stop: &CancellationToken,
        report: &mut LeadReport,
    ) -> Result<Vec<String>, LeadError> {
        let filters = search.filters.as_ref().map_or_else(|| json!({}), toml_to_json);
        let mut fresh = Vec::new();
        for page in 0..search.max_pages.max(1) {
            let response = self.client.prospecting(&filters, page, PAGE_SIZE).await.inspect_err(|e| {
                self.note_error(e);
            })?;
            let ids = lead_ids(&response);
            report.listed += ids.len();
            let known = books::known_leads(&self.store, &search.location, &ids).await?;
            for id in ids {
                if !known.contains(&id) && !fresh.contains(&id) {
                    fresh.push(id);
                }
            }
            let pages = response.get("totalPages").and_then(Value::as_u64).unwrap_or(0);
            if page + 1 >= pages || fresh.len() >= search.max_per_poll || stop.is_cancelled() {
                break;
            }
        }
        Ok(fresh)
    }

    /// Enriches new leads by Lusha id in batches, each call admitted on the real spend so far
    /// (like the enrichment), and stores every answer with the call's charge before any GHL
    /// write. Leads the budget cannot fit now are held for a later poll.
    async fn enrich_leads(
        &self,
        search: &LeadSearch,
        fresh: Vec<String>,
        stop: &CancellationToken,
        report: &mut LeadReport,
    ) -> Result<(), StoreError> {
        let size = self.settings.batch_size.clamp(1, 100);
        let mut rest: &[String] = &fresh;
        while !rest.is_empty() {
            if stop.is_cancelled() {
                report.held += rest.len();
                break;
            }
            let spending = self.spending.lock().await;
            let admitted = match self.admit(rest.len().min(size)).await {
                Ok(admitted) => admitted,
                Err(held) => {
                    if let Held::Budget(_) = held {
                        tracing::warn!(connector.id = ID, search = %search.name, held = rest.len(), "Lusha credit budget reached; the other new leads wait for a later poll");
                        metrics::counter!("ghl_sync_lusha_held_by_budget_total").increment(rest.len() as u64);
                    }
                    report.held += rest.len();
                    break;
                }
            };
            let (chunk, later) = rest.split_at(admitted);
            rest = later;
            let response = match self.call_once_more(false, &[], chunk).await {
                Ok(response) => response,
                Err(error) => {
                    // Nothing of this chunk is recorded: the next poll lists these leads
                    // again. Leads enriched so far are still imported.
                    self.note_error(&error);
                    tracing::warn!(connector.id = ID, search = %search.name, error = %error, "Lusha enrich of new leads failed");
                    report.held += chunk.len() + rest.len();
                    break;
                }
            };
            let credits = credits_charged(&response);
            self.note_spend(credits);
            let answers = match_by_id(&response, chunk);
            let found = answers.values().filter(|a| matches!(a, Answer::Found(_))).count().max(1) as i64;
            let mut nth = 0i64;
            let mut leads = Vec::with_capacity(chunk.len());
            for id in chunk {
                match answers.get(id) {
                    Some(Answer::Found(value)) => {
                        nth += 1;
                        let credits = super::credit_share(credits, found, nth);
                        leads.push(NewLead { lead_id: id, result: Some(value), credits });
                    }
                    Some(Answer::Failed(_)) => report.held += 1,
                    Some(Answer::NotFound | Answer::Restricted) | None => {
                        leads.push(NewLead { lead_id: id, result: None, credits: 0 });
                    }
                }
            }
            let day = utc_day(now_ms());
            let spend = Spend { day: &day, credits };
            if let Err(error) = books::record_leads(&self.store, spend, &search.location, &search.name, &leads).await {
                // The charge must still count against the budget; the leads are listed
                // (and enriched: re-reveals are free) again next poll.
                self.book_spend_alone(credits).await;
                return Err(error);
            }
            drop(spending);
            let enriched = leads.iter().filter(|lead| lead.result.is_some()).count();
            report.enriched += enriched;
            report.not_found += leads.len() - enriched;
        }
        Ok(())
    }

    /// Imports every `enriched` lead of the location into GHL.
    async fn import_enriched(
        &self,
        location: &str,
        stop: &CancellationToken,
        report: &mut LeadReport,
    ) -> Result<(), LeadError> {
        for lead in books::enriched_leads(&self.store, location).await? {
            if stop.is_cancelled() {
                break;
            }
            let Some(result) = lead.result.as_ref() else {
                let unreadable = LeadEnd::Failed("stored result unreadable");
                books::set_lead_aside(&self.store, location, &lead.lead_id, unreadable).await?;
                report.failed += 1;
                continue;
            };
            match self.import_lead(location, &lead, result).await {
                Ok("created") => report.created += 1,
                Ok("updated") => report.updated += 1,
                Ok(_) => report.skipped += 1,
                Err(error) if error.is_retryable() => {
                    tracing::warn!(connector.id = ID, location.id = %location, error = %error, "Lusha lead import to GHL failed; retried next poll (no Lusha call)");
                    report.failed += 1;
                }
                Err(error) => {
                    tracing::warn!(connector.id = ID, location.id = %location, error = %error, "GHL rejected a Lusha lead; set aside");
                    let reason = error.to_string();
                    books::set_lead_aside(&self.store, location, &lead.lead_id, LeadEnd::Failed(&reason)).await?;
                    report.failed += 1;
                }
            }
        }
        Ok(())
    }

    /// Creates or updates the GHL contact of one enriched lead. Returns `created`, `updated` or
    /// `skipped`.
    async fn import_lead(
        &self,
        location: &str,
        lead: &StoredLead,
        result: &Value,
    ) -> Result<&'static str, WriteBackError> {
        let extracted = extract(result, &self.settings);
        if extracted.eu && self.settings.eu_policy == EuPolicy::Skip {
            books::set_lead_aside(&self.store, location, &lead.lead_id, LeadEnd::Skipped("eu_policy = skip")).await?;
            return Ok("skipped");
        }
        let ids = self.field_ids(location).await?;
        let cached = Cached {
            identity_hash: String::new(),
            lusha_id: Some(lead.lead_id.clone()),
            outcome: ResultKind::Found,
            result: Some(result.clone()),
            enriched_at: lead.enriched_at,
            written_at: None,
        };
        let write_key = |what: &str| key(&[ID, "lead", location, &lead.lead_id, what]);
        let _importing = self.imports.write().await;
        let tags = vec![self.settings.tags.lead.clone(), self.settings.tags.enriched.clone()];
        // A repeat of an import whose create was begun before (a crash before the lead was
        // marked imported) takes the create path again: its key finds the contact it made, and
        // the import stays `created` (as its `lusha.lead_imported` trigger says), never an
        // update of our own contact.
        let ours = crate::store::writebacks::exists(&self.store, &write_key("create")).await?;
        let found = if ours { None } else { self.find_in_ghl(location, result).await? };
        let existing = match found {
            Some(id) => self.writeback.ghl().get_contact(location, &id, Priority::WriteBack).await?,
            None => None,
        };
        let (contact_id, action, keys) = match existing {
            Some(contact) => {
                let record = contact_map(&contact);
                let update = self.update_for(&record, &cached, &ids);
                let (update_key, tag_key) = (write_key("update"), write_key("tags"));
                self.writeback.update_contact(location, &contact.id, &update_key, &update).await?;
                self.writeback.add_tags(location, &contact.id, &tag_key, &tags).await?;
                (contact.id, "updated", vec![update_key, tag_key])
            }
            None => {
                let update = self.update_for(&Map::new(), &cached, &ids);
                let create = new_contact(location, result, update, tags);
                let written =
                    self.writeback.create_contact(&write_key("create"), &create, create.email.as_deref()).await?;
                let Some(id) = written.id().map(str::to_owned) else {
                    return Err(WriteBackError::Ghl(crate::ghl::GhlError::Api {
                        route: "/contacts/",
                        status: crate::http::StatusCode::BAD_GATEWAY,
                        message: "the create answered without a contact id".into(),
                        retryable: false,
                    }));
                };
                (id, "created", Vec::new())
            }
        };
        let search = self.settings.leads.iter().find(|s| s.name == lead.search);
        if let Some(task) = search.and_then(|s| s.task.as_ref()) {
            let fields = template_fields(result, &lead.search);
            let lookup = |name: &str| fields.get(name).cloned();
            let due = lead.enriched_at.saturating_add(super::ms(task.due_in.get()));
            let new_task = NewTask {
                title: render(&task.title, lookup),
                body: task.body.as_deref().map(|body| render(body, lookup)),
                due_date: super::super::rfc3339_ms(due),
                completed: false,
                assigned_to: task.assigned_to.clone(),
            };
            self.writeback.create_task(location, &contact_id, &write_key("task"), &new_task).await?;
        }
        // Read back: our own update is not delivered as a user change, and the contact's
        // identity gets this result in the cache so the enrichment never pays for it again.
        let record = self.writeback.settle(location, &contact_id, &keys).await?;
        let linkedin = self.settings.linkedin_field.as_ref().and_then(|k| ids.get(k)).map(String::as_str);
        let identity_hash = record.and_then(|record| Identity::of(&record, linkedin)).map(|identity| identity.hash());
        let import = LeadImport {
            location,
            lead_id: &lead.lead_id,
            contact_id: &contact_id,
            action,
            identity: identity_hash.as_deref().map(|hash| self.cache_key(&contact_id, hash)),
            result,
            credits: lead.credits,
            enriched_at: lead.enriched_at,
        };
        let mut data = Map::new();
        data.insert("lead_id".into(), Value::String(lead.lead_id.clone()));
        data.insert("action".into(), Value::String(action.to_owned()));
        self.emit("lusha.lead_imported", &[&lead.lead_id], location, &contact_id, data, lead.enriched_at).await?;
        books::lead_imported(&self.store, &import).await?;
        metrics::counter!("ghl_sync_lusha_leads_imported_total", "action" => action).increment(1);
        Ok(action)
    }

    /// The GHL contact with one of the lead's emails (any type) or callable phones, if any.
    async fn find_in_ghl(&self, location: &str, result: &Value) -> Result<Option<String>, WriteBackError> {
        let (emails, phones) = lookup_keys(result);
        for email in emails {
            if let Some(id) = self.writeback.find_by_email(location, &email).await? {
                return Ok(Some(id));
            }
        }
        for phone in phones {
            if let Some(id) = self.writeback.find_by_phone(location, &phone).await? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Writes pending Lusha signals to GHL (a note and a tag per matched contact).
    pub async fn process_signals(&self, stop: &CancellationToken) -> Result<SignalReport, WriteBackError> {
        let mut report = SignalReport::default();
        for signal in books::pending_signals(&self.store, SIGNALS_PER_PASS).await? {
            if stop.is_cancelled() {
                break;
            }
            let person = signal.data.get("personId").and_then(super::mapping::reference_text);
            let lusha_ids = [signal.entity_id.as_deref().unwrap_or(""), person.as_deref().unwrap_or("")];
            let contacts = books::contacts_enriched_as(&self.store, &lusha_ids).await?;
            if contacts.is_empty() {
                let unmatched = Some("no enriched GHL contact has this Lusha id");
                books::finish_signal(&self.store, &signal.id, unmatched).await?;
                metrics::counter!("ghl_sync_lusha_signals_total", "outcome" => "unmatched").increment(1);
                report.unmatched += 1;
                continue;
            }
            match self.apply_signal(&signal.id, &signal.signal_type, &signal.data, &contacts).await {
                Ok(()) => {
                    books::finish_signal(&self.store, &signal.id, None).await?;
                    metrics::counter!("ghl_sync_lusha_signals_total", "outcome" => "applied").increment(1);
                    report.applied += 1;
                }
                Err(error) if error.is_retryable() => {
                    tracing::warn!(connector.id = ID, error = %error, "A Lusha signal could not be written to GHL; tried again later");
                    report.pending += 1;
                    break;
                }
                Err(error) => {
                    tracing::warn!(connector.id = ID, error = %error, "GHL rejected a Lusha signal's note or tag; set aside");
                    books::finish_signal(&self.store, &signal.id, Some(&error.to_string())).await?;
                    metrics::counter!("ghl_sync_lusha_signals_total", "outcome" => "failed").increment(1);
                }
            }
        }
        Ok(report)
    }

    async fn apply_signal(
        &self,
        signal_id: &str,
        signal_type: &str,
        data: &Value,
        contacts: &[(String, String)],
    ) -> Result<(), WriteBackError> {
        let tag = format!("{}{}", self.settings.tags.signal_prefix, tag_safe(signal_type));
        let note = NoteWrite { body: Some(signal_note(signal_type, data)), ..NoteWrite::default() };
        for (location, contact_id) in contacts {
            let write_key = |what: &str| key(&[ID, "signal", contact_id, signal_id, what]);
            self.writeback.create_note(location, contact_id, &write_key("note"), &note).await?;
            let tag_key = write_key("tag");
            self.writeback.add_tags(location, contact_id, &tag_key, std::slice::from_ref(&tag)).await?;
            self.writeback.settle(location, contact_id, &[tag_key]).await?;
            let mut event = Map::new();
            event.insert("signal_id".into(), Value::String(signal_id.to_owned()));
            event.insert("signal_type".into(), Value::String(signal_type.to_owned()));
            event.insert("signal".into(), data.clone());
            self.emit("lusha.signal", &[signal_id, contact_id], location, contact_id, event, crate::store::now_ms())
                .await?;
            // The person moved on: the next change of this contact refreshes it by Lusha id
            // (already revealed datapoints are free).
            books::expire_found(&self.store, contact_id).await?;
        }
        Ok(())
    }
}

/// Lead ids of a prospecting page (string or numeric ids, in page order).
fn lead_ids(response: &Value) -> Vec<String> {
    response
        .get("results")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("id").and_then(super::mapping::reference_text))
        .collect()
}

/// A TOML filter table as the JSON Lusha expects.
fn toml_to_json(value: &toml::Value) -> Value {
    serde_json::to_value(value).unwrap_or_else(|_| json!({}))
}

fn contact_map(contact: &crate::ghl::dto::Contact) -> Map<String, Value> {
    match serde_json::to_value(contact) {
        Ok(Value::Object(map)) => crate::domain::normalize::normalize_contact(map),
        _ => Map::new(),
    }
}

/// Emails (every revealed one, best first, at most three) and callable phones (at most two)
/// to look a lead up by in GHL.
pub fn lookup_keys(result: &Value) -> (Vec<String>, Vec<String>) {
    let mut emails: Vec<(bool, String)> = result
        .get("emails")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let address = e.get("email").or_else(|| e.get("address")).and_then(Value::as_str)?.trim().to_lowercase();
            let work = e.get("type").or_else(|| e.get("emailType")).and_then(Value::as_str) == Some("work");
            (address.contains('@')).then_some((work, address))
        })
        .collect();
    emails.sort_by_key(|(work, _)| !*work);
    let mut seen = HashSet::new();
    let emails: Vec<String> = emails.into_iter().map(|(_, e)| e).filter(|e| seen.insert(e.clone())).take(3).collect();
    let phones: Vec<String> = result
        .get("phones")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| !p.get("doNotCall").and_then(Value::as_bool).unwrap_or(false))
        .filter_map(|p| p.get("number").or_else(|| p.get("internationalNumber")).and_then(Value::as_str))
        .map(e164)
        .filter(|p| p.len() > 6 && seen.insert(p.clone()))
        .take(2)
        .collect();
    (emails, phones)
}

/// `+1 555 010 2030` → `+15550102030` (GHL stores E.164).
fn e164(phone: &str) -> String {
    format!("+{}", phone_digits(phone))
}

/// The `POST /contacts/` body of a new lead: names and company from Lusha, the mapped fields
/// of `update` (as for an empty contact), the tags, `source = "Lusha"`.
fn new_contact(location: &str, result: &Value, update: UpdateContact, tags: Vec<String>) -> CreateContact {
    let text = |pointer: &str| result.pointer(pointer).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    CreateContact {
        location_id: location.to_owned(),
        first_name: text("/firstName").map(str::to_owned),
        last_name: text("/lastName").map(str::to_owned),
        email: update.email,
        phone: update.phone.as_deref().map(e164),
        address1: update.address1,
        city: update.city,
        state: update.state,
        postal_code: update.postal_code,
        website: update.website,
        country: update.country,
        company_name: text("/company/name").map(str::to_owned),
        custom_fields: update.custom_fields.unwrap_or_default(),
        tags,
        source: Some("Lusha".to_owned()),
        ..CreateContact::default()
    }
}

/// Values for a lead task template (`{firstName}`, `{company}`, …).
fn template_fields(result: &Value, search: &str) -> std::collections::HashMap<&'static str, Value> {
    let (emails, phones) = lookup_keys(result);
    let text = |pointer: &str| result.pointer(pointer).and_then(Value::as_str).unwrap_or("").trim().to_owned();
    let title =
        result.pointer("/jobTitle/title").and_then(Value::as_str).map_or_else(|| text("/jobTitle"), str::to_owned);
    [
        ("firstName", text("/firstName")),
        ("lastName", text("/lastName")),
        ("jobTitle", title),
        ("company", text("/company/name")),
        ("email", emails.into_iter().next().unwrap_or_default()),
        ("phone", phones.into_iter().next().unwrap_or_default()),
        ("search", search.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k, Value::String(v)))
    .collect()
}

/// `companyChange` → `companychange`; anything but letters, digits, `-` and `_` dropped.
fn tag_safe(kind: &str) -> String {
    kind.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect::<String>().to_lowercase()
}

/// The GHL note of a signal: what changed, from Lusha's `data`.
pub fn signal_note(signal_type: &str, data: &Value) -> String {
    let text = |key: &str| data.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let label = match signal_type {
        "promotion" => "promotion",
        "companyChange" => "company change",
        other => other,
    };
    let role = |title: &str, company: &str| match (text(title), text(company)) {
        (Some(title), Some(company)) => Some(format!("{title} at {company}")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_owned()),
        (None, None) => None,
    };
    let mut lines = vec![format!("Lusha signal: {label}")];
    if let Some(now) = role("currentTitle", "currentCompanyName") {
        lines.push(format!("Now: {now}"));
    }
    if let Some(before) = role("previousTitle", "previousCompanyName") {
        lines.push(format!("Before: {before}"));
    }
    if let Some(domain) = text("currentDomain") {
        lines.push(format!("Company domain: {domain}"));
    }
    if let Some(date) = text("signalDate") {
        lines.push(format!("Date: {date}"));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_keys_prefer_work_emails_and_skip_do_not_call_phones() {
        let result = json!({
            "emails": [
                {"email": "Ada@Home.test", "type": "private"},
                {"email": "ada@work.test", "type": "work"},
                {"email": "ada@work.test", "type": "work"},
                {"email": "not-an-email"}
            ],
            "phones": [
                {"number": "+1 555 000 1111", "doNotCall": true},
                {"number": "+1 (555) 000-2222", "type": "mobile"},
                {"internationalNumber": "+44 20 7946 0000"},
                {"number": "+1 555 000 3333"}
            ]
        });
        let (emails, phones) = lookup_keys(&result);
        assert_eq!(emails, ["ada@work.test", "ada@home.test"]);
        assert_eq!(phones, ["+15550002222", "+442079460000"]);
        assert_eq!(lookup_keys(&json!({})), (vec![], vec![]));
    }

    #[test]
    fn a_new_lead_contact_carries_names_company_mapped_fields_and_tags() {
        let result = json!({"firstName": " Ada ", "lastName": "Lovelace", "company": {"name": "Analytical"}});
        let update = UpdateContact {
            email: Some("ada@work.test".into()),
            phone: Some("+1 555 000 2222".into()),
            city: Some("London".into()),
            ..UpdateContact::default()
        };
        let create = new_contact("L1", &result, update, vec!["lusha:lead".into()]);
        assert_eq!(create.location_id, "L1");
        assert_eq!(create.first_name.as_deref(), Some("Ada"));
        assert_eq!(create.phone.as_deref(), Some("+15550002222"));
        assert_eq!(create.company_name.as_deref(), Some("Analytical"));
        assert_eq!(create.city.as_deref(), Some("London"));
        assert_eq!(create.tags, ["lusha:lead"]);
        assert_eq!(create.source.as_deref(), Some("Lusha"));
    }

    #[test]
    fn signal_notes_say_what_changed() {
        let data = json!({"currentTitle": "CTO", "currentCompanyName": "Acme", "previousCompanyName": "Initech",
            "signalDate": "2026-11-01"});
        assert_eq!(
            signal_note("companyChange", &data),
            "Lusha signal: company change\nNow: CTO at Acme\nBefore: Initech\nDate: 2026-11-01"
        );
        assert_eq!(signal_note("newThing", &Value::Null), "Lusha signal: newThing");
        assert_eq!(tag_safe("companyChange"), "companychange");
        assert_eq!(tag_safe("a b/c"), "abc");
    }

    #[test]
    fn task_templates_render_lead_fields() {
        let result = json!({"firstName": "Ada", "jobTitle": {"title": "CTO"}, "company": {"name": "Acme"},
            "emails": [{"email": "ada@acme.test", "type": "work"}]});
        let fields = template_fields(&result, "cto-uk");
        let rendered = render("Call {firstName} ({jobTitle} at {company}, {email}) from {search}", |name| {
            fields.get(name).cloned()
        });
        assert_eq!(rendered, "Call Ada (CTO at Acme, ada@acme.test) from cto-uk");
    }

    #[test]
    fn lead_ids_keep_page_order_and_accept_numeric_ids() {
        let page = json!({"results": [{"id": "v1.a"}, {"id": 42}, {"name": "no id"}]});
        assert_eq!(lead_ids(&page), ["v1.a", "42"]);
    }
}
