//! The `rules` connector (step 2 of [`crate::rules`]): turns trigger events into action rows.
//!
//! A batch of trigger events (outbox rows of [`EVENTS_CONNECTOR`]) is read, each event's
//! triggers are derived (a record change from the sync gives `contact.updated` and, when they
//! apply, `tag.added`, `business.linked`, …), every rule is evaluated ([`RuleSet::plan`], pure),
//! and the actions decided are stored as outbox rows of their rule's connector
//! ([`crate::store::rules::enqueue_actions`], idempotent by action key) before the event counts
//! as delivered. A crash in between redelivers the event, which plans the same keys again and
//! adds nothing. The schedule trigger runs here too ([`Connector::run_background`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::event::derive;
use super::{EVENTS_CONNECTOR, PlannedAction, RuleEvent, RuleSet};
use crate::connectors::{CheckReport, Connector, ConnectorError, Delivery, DeliverySettings, Outcome};
use crate::domain::{EVENT_TYPES, EntityKind, Operation};
use crate::ghl::GhlClient;
use crate::http::Priority;
use crate::store::{Store, snapshot};

/// At most this many of a business's contacts are put into `data.business_contacts`.
const BUSINESS_CONTACTS_LIMIT: u32 = 100;

/// The `rules` connector.
pub struct RulesConnector {
    rules: Arc<RuleSet>,
    store: Store,
    ghl: GhlClient,
    /// The record event types (`contact.updated`, …) the rules' triggers are derived from.
    wanted: BTreeSet<&'static str>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for RulesConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesConnector").finish_non_exhaustive()
    }
}

impl RulesConnector {
    pub fn new(rules: Arc<RuleSet>, store: Store, ghl: GhlClient, cancel: CancellationToken) -> Self {
        let wanted = record_event_types(rules.triggers().iter().map(String::as_str));
        Self { rules, store, ghl, wanted, cancel }
    }

    /// Plans one stored trigger event: its derived events and what every rule does with them.
    /// Logs and counts firings, cuts and errors (rule names only, no record content).
    pub async fn plan_row(&self, delivery: &Delivery) -> Result<Vec<PlannedAction>, String> {
        let event: RuleEvent = serde_json::from_value(delivery.record.clone())
            .map_err(|error| format!("the trigger event cannot be read: {error}"))?;
        let now = crate::store::now_ms();
        let mut actions = Vec::new();
        for mut event in expand(event, delivery.contact.clone()) {
            if event.trigger == "business.linked" {
                self.add_business_contacts(&mut event).await;
            }
            let plan = self.rules.plan(&event, now);
            for rule in &plan.fired {
                metrics::counter!("ghl_sync_rule_firings_total", "rule" => rule.clone()).increment(1);
                tracing::info!(rule = %rule, trigger = %event.trigger, location.id = %event.location_id,
                    "rule `{rule}` fired on {}", event.trigger);
            }
            for rule in &plan.cut {
                metrics::counter!("ghl_sync_rule_chain_cut_total", "rule" => rule.clone()).increment(1);
                tracing::warn!(rule = %rule, trigger = %event.trigger, depth = event.origin.as_ref().map_or(0, |o| o.depth),
                    "rule `{rule}` not run: the chain of rule-caused events reached rule_settings.max_depth");
            }
            for (rule, error) in &plan.errors {
                metrics::counter!("ghl_sync_rule_errors_total", "rule" => rule.clone()).increment(1);
                tracing::warn!(rule = %rule, trigger = %event.trigger, "rule `{rule}` could not be evaluated: {error}");
            }
            actions.extend(plan.actions);
        }
        Ok(actions)
    }

    /// `data.business_contacts` (ids, at most [`BUSINESS_CONTACTS_LIMIT`]) and
    /// `data.business_contacts_count` from `GET /contacts/business/:businessId`; left out when
    /// GHL does not answer (the rule still runs).
    async fn add_business_contacts(&self, event: &mut RuleEvent) {
        let Some(business) = event.data.get("business_id").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        match self
            .ghl
            .business_contacts(&event.location_id, &business, BUSINESS_CONTACTS_LIMIT, 0, Priority::WriteBack)
            .await
        {
            Ok(page) => {
                let ids: Vec<Value> = page.contacts.iter().map(|c| Value::from(c.id.clone())).collect();
                event
                    .data
                    .insert("business_contacts_count".into(), Value::from(page.count.unwrap_or(ids.len() as u64)));
                event.data.insert("business_contacts".into(), Value::Array(ids));
            }
            Err(error) => {
                tracing::warn!(location.id = %event.location_id, error = %error,
                    "the contacts of a business could not be listed for a rule; `data.business_contacts` is left out");
            }
        }
    }
}

/// A stored trigger event as the rules see it: a record change from the sync (a record event
/// type, no origin) is expanded into its derived triggers; any other event (Lusha, Lucky
/// Orange, schedule, a rule's own action) is already one.
pub fn expand(event: RuleEvent, contact: Option<Value>) -> Vec<RuleEvent> {
    let raw = event.origin.is_none() && EVENT_TYPES.contains(&event.trigger.as_str());
    let (Some(entity), true) = (event.entity, raw) else {
        let mut event = event;
        if event.contact.is_none() {
            event.contact = contact;
        }
        return vec![event];
    };
    let operation = event.trigger.rsplit('.').next().and_then(Operation::parse).unwrap_or(Operation::Updated);
    let contact = match entity {
        EntityKind::Contact => event.new.clone().or_else(|| event.old.clone()),
        _ => contact,
    };
    derive(
        entity,
        operation,
        event.old.as_ref(),
        event.new.as_ref(),
        contact.as_ref(),
        &event.location_id,
        &event.key,
        event.at_ms,
        None,
    )
    .into_iter()
    .map(|mut derived| {
        if derived.entity_id.is_none() {
            derived.entity_id = event.entity_id.clone();
        }
        if derived.contact_id.is_none() {
            derived.contact_id = event.contact_id.clone();
        }
        derived
    })
    .collect()
}

/// Whether `rule` runs in `location` (no `locations`: everywhere).
fn applies(rule: &super::Rule, location: &str) -> bool {
    rule.locations.is_empty() || rule.locations.iter().any(|l| l == location)
}

/// The record event types the sync must write for the rules to see `triggers`.
pub fn record_event_types<'a>(triggers: impl Iterator<Item = &'a str>) -> BTreeSet<&'static str> {
    let mut wanted = BTreeSet::new();
    for trigger in triggers {
        let types: &[&'static str] = match trigger {
            "contact.created" => &["contact.created"],
            "contact.deleted" => &["contact.deleted"],
            "contact.updated"
            | "tag.added"
            | "tag.removed"
            | "contact.dnd_changed"
            | "business.linked"
            | "business.unlinked" => &["contact.updated"],
            "task.created" => &["task.created"],
            "task.updated" => &["task.updated"],
            "task.completed" => &["task.completed"],
            "task.deleted" => &["task.deleted"],
            "note.created" => &["note.created"],
            "note.updated" => &["note.updated"],
            "note.deleted" => &["note.deleted"],
            "appointment.created" => &["appointment.created"],
            "appointment.updated" | "appointment.cancelled" => &["appointment.updated"],
            "appointment.deleted" => &["appointment.deleted"],
            _ => &[],
        };
        wanted.extend(types.iter().copied());
    }
    wanted
}

#[async_trait::async_trait]
impl Connector for RulesConnector {
    fn id(&self) -> &str {
        EVENTS_CONNECTOR
    }

    /// Planning reads a business's contacts from GHL (the `business.*` triggers).
    fn calls_ghl(&self) -> bool {
        true
    }

    fn interested(&self, event_type: &str, location: &str) -> bool {
        self.wanted.contains(event_type) && self.rules.rules().iter().any(|r| r.enabled && applies(r, location))
    }

    fn settings(&self) -> DeliverySettings {
        DeliverySettings { batch_size: 100, concurrency: 1, max_attempts: 12 }
    }

    async fn check(&self) -> Result<CheckReport, ConnectorError> {
        Ok(CheckReport { detail: format!("{} rule(s) loaded", self.rules.rules().len()) })
    }

    fn preview(&self, delivery: &Delivery) -> Result<Value, ConnectorError> {
        let event: RuleEvent = serde_json::from_value(delivery.record.clone())
            .map_err(|error| ConnectorError::Other { connector: EVENTS_CONNECTOR.into(), detail: error.to_string() })?;
        let now = crate::store::now_ms();
        let actions: Vec<PlannedAction> = expand(event, delivery.contact.clone())
            .iter()
            .flat_map(|event| self.rules.plan(event, now).actions)
            .collect();
        Ok(serde_json::to_value(actions).unwrap_or(Value::Null))
    }

    async fn deliver(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            if self.cancel.is_cancelled() {
                outcomes.push(Outcome::not_started());
                continue;
            }
            let actions = match self.plan_row(delivery).await {
                Ok(actions) => actions,
                Err(reason) => {
                    outcomes.push(Outcome::Permanent(reason));
                    continue;
                }
            };
            outcomes.push(match crate::store::rules::enqueue_actions(&self.store, &actions).await {
                Ok(_) => Outcome::Done,
                Err(error) => Outcome::Retry(None, Some(format!("the rule actions could not be stored: {error}"))),
            });
        }
        outcomes
    }

    async fn run_background(self: Arc<Self>, stop: CancellationToken) {
        if self.rules.schedules().is_empty() {
            stop.cancelled().await;
            return;
        }
        schedule_loop(&self, &stop).await;
    }
}

/// How far back a missed schedule slot still fires (a daemon that was down at 09:00 and starts
/// at 09:20 still runs the 09:00 rules; one that starts at 11:00 waits for the next slot).
const SCHEDULE_CATCH_UP_MS: i64 = 60 * 60 * 1000;

/// Contacts read per store query while a schedule fires.
const SCHEDULE_PAGE: usize = 500;

/// Fires each schedule rule at its slots: every contact of every location the rule applies to
/// becomes a `schedule` event for that rule (key: rule, slot, contact), whose condition selects
/// the contacts it acts on. Keys make a slot fire at most once per contact, also across restarts.
/// A location whose first full read (backfill) has not finished is not fired yet: the slot
/// stays open and is tried again shortly, so a first start does not spend it on an empty store.
async fn schedule_loop(connector: &RulesConnector, stop: &CancellationToken) {
    let mut fired: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    loop {
        let now = crate::store::now_ms();
        let mut waiting = false;
        for (rule, schedule) in connector.rules.schedules() {
            let Some(slot) = schedule.last_slot_at_or_before(now) else { continue };
            if now - slot > SCHEDULE_CATCH_UP_MS || fired.get(rule) == Some(&slot) {
                continue;
            }
            match fire_schedule(connector, rule, slot, stop).await {
                Ok(run) => {
                    if run.waiting_for_backfill == 0 {
                        fired.insert(rule.to_owned(), slot);
                    } else {
                        waiting = true;
                    }
                    tracing::info!(rule = %rule, actions = run.actions, waiting_locations = run.waiting_for_backfill,
                        "schedule rule `{rule}` ran for the slot {}", crate::connectors::rfc3339_ms(slot));
                }
                Err(error) => {
                    tracing::warn!(rule = %rule, error = %error, "schedule rule `{rule}` failed; retried in a minute")
                }
            }
        }
        let pause = if waiting { SCHEDULE_BACKFILL_RETRY } else { Duration::from_secs(30) };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// How soon a slot that waits for a location's first full read is tried again.
const SCHEDULE_BACKFILL_RETRY: Duration = Duration::from_secs(5);

/// What one firing of a schedule slot did.
#[derive(Debug, Default)]
struct ScheduleRun {
    /// Action rows added (0 when every key already had its row).
    actions: u64,
    /// Locations skipped because their first full read has not finished.
    waiting_for_backfill: u64,
}

/// One slot of one schedule rule over every contact in the store.
async fn fire_schedule(
    connector: &RulesConnector,
    rule: &str,
    slot: i64,
    stop: &CancellationToken,
) -> Result<ScheduleRun, crate::store::StoreError> {
    let mut run = ScheduleRun::default();
    let Some(compiled) = connector.rules.rules().iter().find(|r| r.name == rule) else { return Ok(run) };
    for location in crate::store::locations::active(&connector.store).await? {
        if !applies(compiled, &location) {
            continue;
        }
        if crate::store::cursors::contacts_watermark(&connector.store, &location).await?.is_none() {
            run.waiting_for_backfill += 1;
            continue;
        }
        let mut after = String::new();
        loop {
            if stop.is_cancelled() {
                return Ok(run);
            }
            let page = snapshot::contacts_page(&connector.store, &location, &after, SCHEDULE_PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            let mut actions = Vec::new();
            for (contact_id, record) in page.iter().filter(|(_, record)| record.is_object()) {
                let event = RuleEvent {
                    trigger: "schedule".into(),
                    key: format!("schedule:{rule}:{slot}:{contact_id}"),
                    location_id: location.clone(),
                    entity: Some(EntityKind::Contact),
                    entity_id: Some(contact_id.clone()),
                    contact_id: Some(contact_id.clone()),
                    new: Some(record.clone()),
                    contact: Some(record.clone()),
                    data: Map::from_iter([
                        ("rule".to_owned(), Value::from(rule)),
                        ("slot_at".to_owned(), Value::from(crate::connectors::rfc3339_ms(slot))),
                    ]),
                    at_ms: slot,
                    ..RuleEvent::default()
                };
                let plan = connector.rules.plan(&event, slot);
                actions.extend(plan.actions.into_iter().filter(|a| a.rule == rule));
            }
            run.actions += crate::store::rules::enqueue_actions(&connector.store, &actions).await?;
            if page.len() < SCHEDULE_PAGE {
                break;
            }
        }
    }
    Ok(run)
}
