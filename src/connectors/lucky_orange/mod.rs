//! The Lucky Orange connector: an identity bridge through the browser (Lucky Orange has no
//! server-side API; reference/lucky-orange.md). It owns
//! - **token minting**: signed identity tokens ([`token`]) for in-scope contacts, written to a
//!   GHL custom field through the write-back service, re-minted when less than half their life
//!   is left, at most `max_mints_per_pass` per pass ([`LuckyOrangeConnector::mint_pass`]);
//! - **replay links**: a contact whose replay-URL custom field holds a valid Lucky Orange
//!   replay URL gets one GHL note and one tag per session id (the write-back key is stored
//!   before the note is created, so replays and crashes never double it) — this is the
//!   connector's outbox delivery;
//! - **site reports**: visits and journey events the `/lo/events` endpoint stored in
//!   `lo_events` are applied to GHL ([`LuckyOrangeConnector::apply_pending`]): visits as
//!   throttled custom-field writes, journey events as the configured task / note / tag, once
//!   per (contact, event, window).
//!
//! Journey events are stored as `lo_events` rows (the change event [`EVENT_TYPE`]) and applied
//! from there, not through the `outbox` table: the outbox carries versions of snapshot records
//! (contacts, tasks, notes), and an `lo_events` row is its own durable queue (pending until
//! applied; every GHL write keyed in `writebacks` before it is sent). When the rules engine
//! lands, these rows are its triggers.
//!
//! It never calls Lucky Orange. The HTTP side (`/lo/identity`, `/lo/events`, `/lo/snippet.js`)
//! is `server::lucky_orange`; the tables are `store::lucky_orange`.

pub mod config;
pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use self::config::LuckyOrangeSettings;
use self::token::TokenKeys;
use crate::connectors::{CheckReport, Connector, ConnectorError, Delivery, DeliverySettings, Outcome};
use crate::ghl::write::{CustomFieldValue, NewTask, NoteWrite, UpdateContact};
use crate::http::Priority;
use crate::store::lucky_orange::{self as lo_store, EventKind, StoredEvent};
use crate::writeback::{self, WriteBack};

/// The outbox `connector` value.
pub const CONNECTOR_ID: &str = "lucky_orange";

/// The change event a journey event is stored as.
pub const EVENT_TYPE: &str = "lucky_orange.event";

/// The signing keys of the configured section, when it is enabled and its key resolved.
pub fn token_keys(config: &crate::config::Config) -> Option<TokenKeys> {
    let settings = config.settings.connectors.lucky_orange.as_ref().filter(|s| s.enabled)?;
    TokenKeys::new(&settings.key_id, config.secrets.lucky_orange_keys.clone(), &settings.audience)
}

/// The session id of a Lucky Orange replay URL, when the URL is exactly
/// `https://app.luckyorange.com/visitors/sessions/<id>/timeline` (`<id>`: 1–128 of
/// `A-Za-z0-9_-`). Anything else (other hosts, `javascript:`, extra path, query) is refused.
pub fn replay_session_id(url: &str) -> Option<&str> {
    let id = url.strip_prefix("https://app.luckyorange.com/visitors/sessions/")?.strip_suffix("/timeline")?;
    let ok = (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(id)
}

/// The replay URL of a session id.
pub fn replay_url(session_id: &str) -> String {
    format!("https://app.luckyorange.com/visitors/sessions/{session_id}/timeline")
}

/// Why a stored contact is not identified (the endpoint answers 204 in every case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Dnd,
    OptedOut,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Dnd => "dnd",
            Refusal::OptedOut => "opted_out",
        }
    }
}

/// Whether a stored contact may be identified now: not DND, no opt-out tag.
pub fn refusal(record: &Value, settings: &LuckyOrangeSettings) -> Option<Refusal> {
    if record.get("dnd").and_then(Value::as_bool) == Some(true) {
        return Some(Refusal::Dnd);
    }
    let tags = tags_of(record);
    settings
        .optout_tags
        .iter()
        .any(|t| tags.iter().any(|have| have.eq_ignore_ascii_case(t)))
        .then_some(Refusal::OptedOut)
}

fn tags_of(record: &Value) -> Vec<&str> {
    record
        .get("tags")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Exactly the allow-listed traits of a contact (empty values left out). `name` is the
/// contact's full name (first + last, else GHL's `contactName` / `name`).
pub fn traits_of(record: &Value, allowed: &[String]) -> Map<String, Value> {
    let mut traits = Map::new();
    for name in allowed {
        let value = if name == "name" { full_name(record) } else { text(record, name) };
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            traits.insert(name.clone(), Value::String(value));
        }
    }
    traits
}

fn text(record: &Value, key: &str) -> Option<String> {
    record.get(key).and_then(Value::as_str).map(|s| s.trim().to_owned())
}

fn full_name(record: &Value) -> Option<String> {
    let joined = [text(record, "firstName"), text(record, "lastName")]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if joined.is_empty() { text(record, "contactName").or_else(|| text(record, "name")) } else { Some(joined) }
}

/// The value of a custom field (by id) in a stored record (`customFields: [{id, value}]`).
pub fn custom_field<'a>(record: &'a Value, field_id: &str) -> Option<&'a Value> {
    record
        .get("customFields")?
        .as_array()?
        .iter()
        .find(|f| f.get("id").and_then(Value::as_str) == Some(field_id))
        .and_then(|f| f.get("value").or_else(|| f.get("field_value")))
}

/// Whether a contact is in the token scope: every contact, or one with a scope tag.
pub fn in_scope(record: &Value, settings: &LuckyOrangeSettings) -> bool {
    settings.scope_tags.is_empty() || {
        let tags = tags_of(record);
        settings.scope_tags.iter().any(|t| tags.iter().any(|have| have.eq_ignore_ascii_case(t)))
    }
}

/// Fills `{event}`, `{page}`, `{firstName}`, `{lastName}`, `{name}`.
pub fn render(template: &str, values: &BTreeMap<&str, String>) -> String {
    use crate::connectors::mapping::{Piece, parse_template};
    match parse_template(template) {
        Ok(pieces) => pieces
            .into_iter()
            .map(|piece| match piece {
                Piece::Text(text) => text,
                Piece::Field(name) => values.get(name.as_str()).cloned().unwrap_or_default(),
            })
            .collect(),
        Err(_) => template.to_owned(),
    }
}

/// Custom field ids of one location, by key.
type FieldIds = HashMap<String, String>;

/// The connector. Cheap to share (`Arc`).
pub struct LuckyOrangeConnector {
    settings: LuckyOrangeSettings,
    keys: TokenKeys,
    writeback: WriteBack,
    /// Custom field ids by location, resolved from keys once.
    fields: Mutex<HashMap<String, FieldIds>>,
    /// Milliseconds since the epoch (tests move time).
    clock: crate::clock::Clock,
    /// Raises `lucky_orange.journey_event` and `lucky_orange.replay_link` for the rules.
    rules: crate::rules::emit::Emitter,
}

impl std::fmt::Debug for LuckyOrangeConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuckyOrangeConnector").field("keys", &self.keys).finish_non_exhaustive()
    }
}

/// What one minting pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MintReport {
    pub minted: usize,
    /// In scope and due, left for the next pass (`max_mints_per_pass`).
    pub deferred: usize,
    pub failed: usize,
}

/// What one pass over pending site reports did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied: usize,
    pub skipped: usize,
    /// Left pending (a GHL error); tried again on the next pass.
    pub failed: usize,
}

impl LuckyOrangeConnector {
    pub fn new(settings: &LuckyOrangeSettings, keys: TokenKeys, writeback: WriteBack) -> Self {
        Self {
            settings: settings.clone(),
            keys,
            writeback,
            fields: Mutex::new(HashMap::new()),
            clock: crate::clock::Clock::system(),
            rules: crate::rules::emit::Emitter::none(),
        }
    }

    /// Raises `lucky_orange.*` trigger events for the rules through `rules`.
    pub fn with_rules(mut self, rules: crate::rules::emit::Emitter) -> Self {
        self.rules = rules;
        self
    }

    /// Uses `clock` (epoch ms) instead of the system clock.
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn settings(&self) -> &LuckyOrangeSettings {
        &self.settings
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The id of a custom field key in a location (read from GHL once, then cached).
    async fn field_id(&self, location: &str, key: &str) -> Result<Option<String>, crate::ghl::GhlError> {
        let mut cache = self.fields.lock().await;
        if !cache.contains_key(location) {
            let fields = self.writeback.ghl().custom_fields(location, Some("contact"), Priority::WriteBack).await?;
            let ids = fields.into_iter().filter_map(|f| f.field_key.clone().map(|k| (k, f.id))).collect();
            cache.insert(location.to_owned(), ids);
        }
        Ok(cache.get(location).and_then(|ids| ids.get(key)).cloned())
    }

    /// One minting pass over every active location: in-scope contacts (not DND, not opted
    /// out) whose token is missing or has less than half its life left get a new one, at most
    /// `max_mints_per_pass` in all.
    pub async fn mint_pass(&self) -> MintReport {
        let mut report = MintReport::default();
        let locations = crate::store::locations::active(self.writeback.store()).await.unwrap_or_default();
        let ttl = i64::try_from(self.settings.token_ttl.get().as_secs()).unwrap_or(i64::MAX);
        for location in locations {
            let field = match self.field_id(&location, &self.settings.token_field_key).await {
                Ok(Some(id)) => id,
                Ok(None) => {
                    tracing::warn!(location.id = %location, "Lucky Orange: the token custom field does not exist in this location; no tokens minted");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(location.id = %location, error = %error, "Lucky Orange: custom fields could not be read");
                    continue;
                }
            };
            let now = self.now_ms() / 1000;
            let minted = lo_store::token_expiries(self.writeback.store(), &location).await.unwrap_or_default();
            let mut due = Vec::new();
            let scan = crate::store::snapshot::scan_location_contacts::<crate::store::StoreError, _>(
                self.writeback.store(),
                &location,
                1,
                |item| {
                    if let crate::store::snapshot::ScanItem::Contact { contact_id, record, .. } = item
                        && in_scope(record, &self.settings)
                        && refusal(record, &self.settings).is_none()
                    {
                        // The token in GHL (the snapshot) or the one we minted last, whichever lasts longer.
                        let stored = custom_field(record, &field)
                            .and_then(Value::as_str)
                            .and_then(|t| self.keys.verify_signature(t).ok())
                            .filter(|c| c.sub == contact_id)
                            .map(|c| c.exp);
                        let exp = stored.max(minted.get(contact_id).copied());
                        if exp.is_none_or(|exp| token::needs_remint(exp, now, ttl)) {
                            due.push(contact_id.to_owned());
                        }
                    }
                    Ok(())
                },
            )
            .await;
            if let Err(error) = scan {
                tracing::warn!(location.id = %location, error = %error, "Lucky Orange: the snapshot could not be read");
                continue;
            }
            for contact_id in due {
                if report.minted + report.failed >= self.settings.max_mints_per_pass {
                    report.deferred += 1;
                    continue;
                }
                let exp = now + ttl;
                let token = self.keys.mint(&contact_id, exp);
                let update = UpdateContact {
                    custom_fields: Some(vec![CustomFieldValue {
                        id: field.clone(),
                        key: None,
                        field_value: Value::String(token),
                    }]),
                    ..UpdateContact::default()
                };
                let key =
                    writeback::key(&["lo_token", &location, &contact_id, &exp.to_string(), self.keys.current_kid()]);
                match self.writeback.update_contact(&location, &contact_id, &key, &update).await {
                    Ok(_) => {
                        let kid = self.keys.current_kid();
                        if let Err(error) =
                            lo_store::record_minted(self.writeback.store(), &location, &contact_id, kid, exp).await
                        {
                            tracing::warn!(contact.id = %contact_id, error = %error, "Lucky Orange: a minted token could not be recorded");
                        }
                        report.minted += 1;
                    }
                    Err(error) => {
                        tracing::warn!(contact.id = %contact_id, error = %error, "Lucky Orange: the token could not be written to GHL");
                        report.failed += 1;
                    }
                }
            }
        }
        metrics::counter!("ghl_sync_lucky_orange_tokens_minted_total").increment(report.minted as u64);
        if report.minted + report.deferred + report.failed > 0 {
            tracing::info!(
                minted = report.minted,
                deferred = report.deferred,
                failed = report.failed,
                "Lucky Orange: token pass"
            );
        }
        report
    }

    /// Applies the pending site reports (visits, journey events) to GHL, oldest first.
    pub async fn apply_pending(&self) -> ApplyReport {
        let mut report = ApplyReport::default();
        let store = self.writeback.store();
        let pending = match lo_store::pending_events(store, 100).await {
            Ok(pending) => pending,
            Err(error) => {
                tracing::warn!(error = %error, "Lucky Orange: pending reports could not be read");
                return report;
            }
        };
        for event in pending {
            let result = match event.kind {
                EventKind::Visit => self.apply_visit(&event).await,
                EventKind::Event => self.apply_event(&event).await,
                EventKind::Identify | EventKind::Replay => Ok(("done", None)),
            };
            match result {
                Ok((status, outcome)) => {
                    if status == "done" {
                        report.applied += 1;
                    } else {
                        report.skipped += 1;
                    }
                    if let Err(error) = lo_store::finish_event(store, event.id, status, outcome.as_deref()).await {
                        tracing::warn!(error = %error, "Lucky Orange: a report could not be marked applied");
                    }
                }
                Err(error) if error.is_retryable() => {
                    tracing::warn!(contact.id = %event.contact_id, error = %error, "Lucky Orange: a site report could not be applied; trying again later");
                    report.failed += 1;
                }
                Err(error) => {
                    // A refusal retrying cannot fix (the contact is gone, GHL rejects the
                    // value): set aside, so it never blocks the reports behind it or spends
                    // the GHL budget again.
                    tracing::warn!(contact.id = %event.contact_id, error = %error, "Lucky Orange: GHL refused a site report; set aside");
                    report.failed += 1;
                    let reason = match &error {
                        ConnectorError::Http(http) => {
                            http.status().map_or_else(|| "refused".to_owned(), |s| format!("refused ({s})"))
                        }
                        _ => "refused".to_owned(),
                    };
                    if let Err(error) = lo_store::finish_event(store, event.id, "failed", Some(&reason)).await {
                        tracing::warn!(error = %error, "Lucky Orange: a refused report could not be set aside");
                    }
                }
            }
        }
        report
    }

    async fn apply_visit(&self, event: &StoredEvent) -> Result<(&'static str, Option<String>), ConnectorError> {
        let configured = self.settings.visit_fields.configured();
        if configured.is_empty() {
            return Ok(("skipped", Some("no visit fields".into())));
        }
        let store = self.writeback.store();
        let throttle = i64::try_from(self.settings.visit_throttle.get().as_millis()).unwrap_or(i64::MAX);
        let last = lo_store::last_visit_write(store, &event.contact_id).await.map_err(other)?;
        if last.is_some_and(|last| event.occurred_at - last < throttle) {
            return Ok(("skipped", Some("throttled".into())));
        }
        let mut values = Vec::new();
        for (name, key) in configured {
            let value = match name {
                "last_seen" => Some(Value::String(crate::connectors::rfc3339_ms(event.occurred_at))),
                "visits" => event.visits.map(Value::from),
                "last_page" => event.page.clone().map(Value::String),
                _ => event.session_id.as_deref().map(|s| Value::String(replay_url(s))),
            };
            let Some(value) = value else { continue };
            match self.field_id(&event.location_id, key).await.map_err(other)? {
                Some(id) => values.push(CustomFieldValue { id, key: None, field_value: value }),
                None => {
                    tracing::warn!(location.id = %event.location_id, field = name, "Lucky Orange: a visit field does not exist in GHL")
                }
            }
        }
        if values.is_empty() {
            return Ok(("skipped", Some("no visit fields".into())));
        }
        let update = UpdateContact { custom_fields: Some(values), ..UpdateContact::default() };
        let key = writeback::key(&["lo_visit", &event.id.to_string()]);
        self.writeback.update_contact(&event.location_id, &event.contact_id, &key, &update).await.map_err(other)?;
        Ok(("done", Some("fields".into())))
    }

    async fn apply_event(&self, event: &StoredEvent) -> Result<(&'static str, Option<String>), ConnectorError> {
        let name = event.name.clone().unwrap_or_default();
        let mut data = Map::new();
        data.insert("event".into(), Value::String(name.clone()));
        data.insert("page".into(), event.page.clone().map_or(Value::Null, Value::String));
        let window = i64::try_from(self.settings.event_window.get().as_millis()).unwrap_or(i64::MAX).max(1);
        let slot = (event.occurred_at / window).to_string();
        let (location, contact) = (event.location_id.as_str(), event.contact_id.as_str());
        // Keyed like the event's own GHL actions, by (contact, event, window), not by the
        // stored report: the same event reported again (a reload, a second tab) is one trigger.
        let key = || writeback::key(&["lo_rule_event", location, contact, &name, &slot]);
        self.rules
            .emit_about_contact("lucky_orange.journey_event", key, location, contact, data, event.occurred_at)
            .await
            .map_err(other)?;
        let Some(action) = self.settings.events.get(&name) else {
            return Ok(("skipped", Some("not configured".into())));
        };
        let record = crate::store::snapshot::contact_record(self.writeback.store(), location, contact)
            .await
            .map_err(other)?
            .unwrap_or(Value::Null);
        let mut values = BTreeMap::new();
        values.insert("event", name.clone());
        values.insert("page", event.page.clone().unwrap_or_default());
        values.insert("firstName", text(&record, "firstName").unwrap_or_default());
        values.insert("lastName", text(&record, "lastName").unwrap_or_default());
        values.insert("name", full_name(&record).unwrap_or_default());
        let mut did = Vec::new();
        if let Some(task) = &action.task {
            let due_ms = event.occurred_at + i64::try_from(task.due_in.get().as_millis()).unwrap_or(0);
            let new = NewTask {
                title: render(&task.title, &values),
                body: task.body.as_deref().map(|b| render(b, &values)),
                due_date: crate::connectors::rfc3339_ms(due_ms),
                completed: false,
                assigned_to: None,
            };
            let key = writeback::key(&["lo_event_task", location, contact, &name, &slot]);
            self.writeback.create_task(location, contact, &key, &new).await.map_err(other)?;
            did.push("task");
        }
        if let Some(note) = &action.note {
            let body = render(note, &values);
            let key = writeback::key(&["lo_event_note", location, contact, &name, &slot]);
            let note = NoteWrite { body: Some(body), ..NoteWrite::default() };
            self.writeback.create_note(location, contact, &key, &note).await.map_err(other)?;
            did.push("note");
        }
        if let Some(tag) = &action.tag {
            let key = writeback::key(&["lo_event_tag", location, contact, &name, &slot]);
            self.writeback.add_tags(location, contact, &key, std::slice::from_ref(tag)).await.map_err(other)?;
            did.push("tag");
        }
        Ok(("done", Some(did.join("+"))))
    }

    /// The replay note and tag of one contact change, once per session id.
    async fn deliver_one(&self, delivery: &Delivery) -> Outcome {
        let location = delivery.location_id.as_str();
        let contact = delivery.entity_id.as_str();
        let field = match self.field_id(location, &self.settings.session_field_key).await {
            Ok(Some(id)) => id,
            Ok(None) => return Outcome::Skip("no replay field in this location".into()),
            Err(error) if error.is_retryable() => {
                return Outcome::Retry(None, Some(format!("custom fields could not be read: {error}")));
            }
            Err(error) => return Outcome::Permanent(format!("custom fields could not be read: {error}")),
        };
        let Some(url) = custom_field(&delivery.record, &field).and_then(Value::as_str).map(str::trim) else {
            return Outcome::Skip("no replay link".into());
        };
        if url.is_empty() {
            return Outcome::Skip("no replay link".into());
        }
        let Some(session) = replay_session_id(url) else {
            tracing::info!(contact.id = %contact, "Lucky Orange: the replay field holds no valid replay URL; ignored");
            return Outcome::Skip("invalid replay link".into());
        };
        let url = replay_url(session);
        let note = NoteWrite { body: Some(format!("Lucky Orange session replay: {url}")), ..NoteWrite::default() };
        let note_key = writeback::key(&["lo_session", location, contact, session]);
        let tag_key = writeback::key(&["lo_session_tag", location, contact, session]);
        let result = async {
            let note = self.writeback.create_note(location, contact, &note_key, &note).await?;
            let tag = self
                .writeback
                .add_tags(location, contact, &tag_key, std::slice::from_ref(&self.settings.session_tag))
                .await?;
            if tag.sent() {
                // Our tag changes the contact: record its hash so the sync does not announce it.
                self.writeback.settle(location, contact, std::slice::from_ref(&tag_key)).await?;
            }
            Ok::<bool, writeback::WriteBackError>(note.sent())
        }
        .await;
        let result = match result {
            Ok(sent) => {
                let mut data = Map::new();
                data.insert("session_id".into(), Value::String(session.to_owned()));
                data.insert("url".into(), Value::String(url.clone()));
                let key = || writeback::key(&["lo_rule_replay", location, contact, session]);
                let at = self.now_ms();
                self.rules
                    .emit_about_contact("lucky_orange.replay_link", key, location, contact, data, at)
                    .await
                    .map(|()| sent)
                    .map_err(writeback::WriteBackError::from)
            }
            Err(error) => Err(error),
        };
        match result {
            Ok(sent) => {
                if sent {
                    let event = lo_store::NewEvent {
                        location_id: location,
                        contact_id: contact,
                        kind: EventKind::Replay,
                        name: None,
                        page: None,
                        session_id: Some(session),
                        visits: None,
                        occurred_at: self.now_ms(),
                        pending: false,
                        outcome: Some("note+tag"),
                    };
                    if let Err(error) = lo_store::record_event(self.writeback.store(), &event).await {
                        tracing::warn!(error = %error, "Lucky Orange: the replay link could not be recorded locally");
                    }
                    tracing::info!(contact.id = %contact, "Lucky Orange: replay link noted in GHL");
                }
                Outcome::Done
            }
            Err(error) if error.is_retryable() => {
                Outcome::Retry(None, Some(format!("the replay note failed: {error}")))
            }
            Err(error) => Outcome::Permanent(format!("replay note: {error}")),
        }
    }
}

fn other(error: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Other { connector: CONNECTOR_ID.to_owned(), detail: error.to_string() }
}

#[async_trait::async_trait]
impl Connector for LuckyOrangeConnector {
    fn id(&self) -> &str {
        CONNECTOR_ID
    }

    /// Writes back to GHL (and reads the location's custom fields).
    fn calls_ghl(&self) -> bool {
        true
    }

    fn interested(&self, event_type: &str, _location: &str) -> bool {
        matches!(event_type, "contact.created" | "contact.updated")
    }

    fn settings(&self) -> DeliverySettings {
        DeliverySettings { batch_size: 20, concurrency: 1, max_attempts: 12 }
    }

    /// Lucky Orange has no API to probe: checks that every configured custom field exists in
    /// each active GHL location, and prints the snippet tag to paste.
    async fn check(&self) -> Result<CheckReport, ConnectorError> {
        let locations = crate::store::locations::active(self.writeback.store()).await.map_err(other)?;
        let mut keys = vec![self.settings.token_field_key.as_str(), self.settings.session_field_key.as_str()];
        keys.extend(self.settings.visit_fields.configured().into_iter().map(|(_, key)| key));
        let mut missing = Vec::new();
        for location in &locations {
            self.fields.lock().await.remove(location);
            for key in &keys {
                match self.field_id(location, key).await {
                    Ok(Some(_)) => {}
                    Ok(None) => missing.push(format!("{key} in {location}")),
                    Err(error) => return Err(other(format!("custom fields of {location} could not be read: {error}"))),
                }
            }
        }
        if !missing.is_empty() {
            return Err(other(format!(
                "custom fields missing in GHL (create them, contact model, text): {}",
                missing.join(", ")
            )));
        }
        Ok(CheckReport {
            detail: format!(
                "{} custom field(s) found in {} location(s); tokens signed with key id {}. Paste in <head>, before \
                 the Lucky Orange tag: <script src=\"https://YOUR-SYNC-HOST/lo/snippet.js\"></script> \
                 <script async defer src=\"https://tools.luckyorange.com/core/lo.js?site-id={}\"></script>",
                keys.len(),
                locations.len(),
                self.keys.current_kid(),
                if self.settings.site_id.is_empty() { "YOUR-SITE-ID" } else { &self.settings.site_id },
            ),
        })
    }

    fn preview(&self, delivery: &Delivery) -> Result<Value, ConnectorError> {
        Ok(serde_json::json!({
            "contact_id": delivery.entity_id,
            "replay_field": self.settings.session_field_key,
            "note": "Lucky Orange session replay: <url> (once per session id)",
            "tag": self.settings.session_tag,
        }))
    }

    async fn deliver(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            outcomes.push(self.deliver_one(delivery).await);
        }
        outcomes
    }

    async fn run_background(self: Arc<Self>, stop: CancellationToken) {
        let mint_every = self.settings.mint_interval.get();
        let mut next_mint = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_mint {
                self.mint_pass().await;
                next_mint = tokio::time::Instant::now() + mint_every;
            }
            self.apply_pending().await;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replay_urls_are_validated_strictly() {
        assert_eq!(
            replay_session_id("https://app.luckyorange.com/visitors/sessions/abc_D-9/timeline"),
            Some("abc_D-9")
        );
        for bad in [
            "javascript:alert(1)//https://app.luckyorange.com/visitors/sessions/a/timeline",
            "http://app.luckyorange.com/visitors/sessions/a/timeline",
            "https://app.luckyorange.com.evil.com/visitors/sessions/a/timeline",
            "https://evil.com/https://app.luckyorange.com/visitors/sessions/a/timeline",
            "https://app.luckyorange.com/visitors/sessions//timeline",
            "https://app.luckyorange.com/visitors/sessions/a/b/timeline",
            "https://app.luckyorange.com/visitors/sessions/a/timeline?x=1",
            "https://app.luckyorange.com/visitors/sessions/a/timeline/extra",
            "https://app.luckyorange.com/visitors/sessions/a%2F/timeline",
            "https://user@app.luckyorange.com/visitors/sessions/a/timeline",
            "",
        ] {
            assert_eq!(replay_session_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn traits_are_exactly_the_allow_list() {
        let record = json!({"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com", "phone": "+1555"});
        let traits = traits_of(&record, &["name".to_owned()]);
        assert_eq!(Value::Object(traits), json!({"name": "Ada Lovelace"}));
        let traits = traits_of(&record, &["name".to_owned(), "email".to_owned(), "city".to_owned()]);
        assert_eq!(Value::Object(traits), json!({"name": "Ada Lovelace", "email": "ada@example.com"}));
    }

    #[test]
    fn dnd_and_opt_out_tags_refuse_identification() {
        let settings = LuckyOrangeSettings::default();
        assert_eq!(refusal(&json!({"dnd": true}), &settings), Some(Refusal::Dnd));
        assert_eq!(refusal(&json!({"tags": ["vip", "LO:Opt-Out"]}), &settings), Some(Refusal::OptedOut));
        assert_eq!(refusal(&json!({"dnd": false, "tags": ["vip"]}), &settings), None);
    }

    #[test]
    fn scope_is_everyone_or_the_scope_tags() {
        let mut settings = LuckyOrangeSettings::default();
        assert!(in_scope(&json!({}), &settings));
        settings.scope_tags = vec!["newsletter".into()];
        assert!(!in_scope(&json!({"tags": ["vip"]}), &settings));
        assert!(in_scope(&json!({"tags": ["Newsletter"]}), &settings));
    }

    #[test]
    fn templates_fill_known_placeholders() {
        let values = BTreeMap::from([("event", "pricing_viewed".to_owned()), ("name", "Ada".to_owned())]);
        assert_eq!(render("Call {name}: {event}", &values), "Call Ada: pricing_viewed");
    }
}
