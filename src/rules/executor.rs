//! Step 3 of the rules (see [`crate::rules`]): a rule's connector (`rule.<name>`) performs the
//! actions the `rules` connector planned, one outbox row ([`PlannedAction`]) each.
//!
//! Contract:
//! - **At most once per action.** Every GHL write goes through [`WriteBack`] under the
//!   action's key: a replayed row, a retry or a restart after `kill -9` between the key and
//!   the GHL call sends nothing twice (a pending create is looked for in GHL first). Deliver
//!   and Lusha enrich hand a row to the named connector under the same key, once.
//! - **Echo suppression.** Contact writes (fields, tags, business links) are settled
//!   ([`WriteBack::settle`]) so the sync does not report them as a user's change; instead the
//!   executor writes the follow-on trigger event itself, with the rule as its [`Origin`] and
//!   the chain depth, so chains are bounded by the rules core.
//! - **Honest outcomes.** Retryable failures retry (scrubbed reason), refusals go to dead
//!   letters, a stopping daemon starts no new action ([`Outcome::not_started`]). Contact
//!   deletes are refused unless the constructor allows them. Reasons never carry personal data.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::config::{CREATE_CONTACT_FIELDS, UPDATE_CONTACT_FIELDS};
use super::{Action, Origin, PlannedAction, RuleEvent, actions_connector};
use crate::connectors::{CheckReport, Connector, ConnectorError, Delivery, Outcome};
use crate::domain::EntityKind;
use crate::domain::scrub::excerpt;
use crate::ghl::GhlError;
use crate::ghl::write::{
    CreateContact, CustomFieldValue, NewTask, NoteWrite, TaskUpdate, UpdateContact, UpsertContact,
};
use crate::http::HttpError;
use crate::store::rules::{Handed, enqueue_delivery, enqueue_events};
use crate::store::{Store, now_ms};
use crate::writeback::{WriteBack, WriteBackError};

/// How long an action waits when its location needs re-authorising (not an attempt).
const REAUTH_WAIT: Duration = Duration::from_secs(300);

/// A rule's action connector (`rule.<name>`).
pub struct RuleActions {
    id: String,
    rule: String,
    writeback: WriteBack,
    store: Store,
    allow_delete: bool,
    cancel: CancellationToken,
}

impl std::fmt::Debug for RuleActions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleActions").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Why an action did not complete.
#[derive(Debug)]
enum Failed {
    WriteBack(WriteBackError),
    /// The action cannot be performed as planned (reason without personal data).
    Refused(String),
}

impl From<WriteBackError> for Failed {
    fn from(error: WriteBackError) -> Self {
        Failed::WriteBack(error)
    }
}

impl From<crate::store::StoreError> for Failed {
    fn from(error: crate::store::StoreError) -> Self {
        Failed::WriteBack(WriteBackError::Store(error))
    }
}

impl From<GhlError> for Failed {
    fn from(error: GhlError) -> Self {
        Failed::WriteBack(WriteBackError::Ghl(error))
    }
}

/// The metric label of an action.
pub fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Deliver { .. } => "deliver",
        Action::LushaEnrich { .. } => "lusha_enrich",
        Action::CreateContact { .. } => "create_contact",
        Action::UpdateContact { .. } => "update_contact",
        Action::DeleteContact { .. } => "delete_contact",
        Action::AddTags { .. } => "add_tags",
        Action::RemoveTags { .. } => "remove_tags",
        Action::CreateTask { .. } => "create_task",
        Action::UpdateTask { .. } => "update_task",
        Action::CompleteTask { .. } => "complete_task",
        Action::DeleteTask { .. } => "delete_task",
        Action::CreateNote { .. } => "create_note",
        Action::UpdateNote { .. } => "update_note",
        Action::DeleteNote { .. } => "delete_note",
        Action::UpsertContact { .. } => "upsert_contact",
        Action::LinkBusiness { .. } => "link_business",
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Done => "done",
        Outcome::Skip(_) => "skipped",
        Outcome::Permanent(_) => "failed",
        Outcome::Retry(..) => "retry",
        o if o.is_not_started() => "not_started",
        Outcome::Park(_) => "parked",
    }
}

/// The outcome of a failed action: retryable → `Retry` with a scrubbed reason; cancelled by
/// the stop → not started; re-authorisation needed → parked; 404 → `Retry` (the record may
/// not be visible yet; the attempts cap ends it); other refusals → `Permanent`.
fn failure_outcome(failed: &Failed) -> Outcome {
    let error = match failed {
        Failed::Refused(reason) => return Outcome::Permanent(reason.clone()),
        Failed::WriteBack(error) => error,
    };
    let reason = excerpt(error.to_string().as_bytes(), 200);
    match error {
        WriteBackError::Ghl(GhlError::Http(HttpError::Cancelled { .. })) => Outcome::not_started(),
        e if e.is_retryable() => Outcome::Retry(None, Some(reason)),
        WriteBackError::Ghl(e) if e.needs_reauth() => Outcome::Park(REAUTH_WAIT),
        WriteBackError::Ghl(e) if e.is_not_found() => Outcome::Retry(None, Some(reason)),
        _ => Outcome::Permanent(reason),
    }
}

/// A string field of an action's `fields`.
fn text(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, Failed> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(Failed::Refused(format!("field `{name}` must be a string"))),
    }
}

fn flag(fields: &Map<String, Value>, name: &str) -> Result<Option<bool>, Failed> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
        Some(_) => Err(Failed::Refused(format!("field `{name}` must be true or false"))),
    }
}

/// Refuses a field the config's list for the action does not have (the lists the config
/// validates `fields` against: one source for load-time and run-time checks).
fn check_names(fields: &Map<String, Value>, allowed: &[&str]) -> Result<(), Failed> {
    match fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(Failed::Refused(format!("unknown contact field `{unknown}`"))),
        None => Ok(()),
    }
}

/// An object field (`dndSettings`, `inboundDndSettings`).
fn object(fields: &Map<String, Value>, name: &str) -> Result<Option<Value>, Failed> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Object(_)) => Ok(Some(value.clone())),
        Some(_) => Err(Failed::Refused(format!("field `{name}` must be a table"))),
    }
}

/// `customFields = [{ id = "…", field_value = … }]` (`key` optional).
fn custom_fields(fields: &Map<String, Value>) -> Result<Option<Vec<CustomFieldValue>>, Failed> {
    let Some(Value::Array(items)) = fields.get("customFields") else {
        return match fields.get("customFields") {
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(Failed::Refused("field `customFields` must be a list".into())),
        };
    };
    items
        .iter()
        .map(|item| {
            let id = item.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
            let value = item.get("field_value").or_else(|| item.get("value"));
            match (id, value) {
                (Some(id), Some(value)) => Ok(CustomFieldValue {
                    id: id.to_owned(),
                    key: item.get("key").and_then(Value::as_str).map(str::to_owned),
                    field_value: value.clone(),
                }),
                _ => Err(Failed::Refused("each of `customFields` needs `id` and `field_value`".into())),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The `PUT /contacts/:id` body of an update action. Pure.
fn update_body(fields: &Map<String, Value>) -> Result<UpdateContact, Failed> {
    check_names(fields, UPDATE_CONTACT_FIELDS)?;
    Ok(UpdateContact {
        first_name: text(fields, "firstName")?,
        last_name: text(fields, "lastName")?,
        name: text(fields, "name")?,
        email: text(fields, "email")?,
        phone: text(fields, "phone")?,
        address1: text(fields, "address1")?,
        city: text(fields, "city")?,
        state: text(fields, "state")?,
        postal_code: text(fields, "postalCode")?,
        website: text(fields, "website")?,
        timezone: text(fields, "timezone")?,
        dnd: flag(fields, "dnd")?,
        source: text(fields, "source")?,
        date_of_birth: text(fields, "dateOfBirth")?,
        country: text(fields, "country")?,
        assigned_to: text(fields, "assignedTo")?,
        dnd_settings: object(fields, "dndSettings")?,
        inbound_dnd_settings: object(fields, "inboundDndSettings")?,
        custom_fields: custom_fields(fields)?,
    })
}

/// The `POST /contacts/` body of a create action. Pure.
fn create_body(location: &str, fields: &Map<String, Value>) -> Result<CreateContact, Failed> {
    check_names(fields, CREATE_CONTACT_FIELDS)?;
    let tags = match fields.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        Some(_) => return Err(Failed::Refused("field `tags` must be a list of strings".into())),
    };
    Ok(CreateContact {
        location_id: location.to_owned(),
        first_name: text(fields, "firstName")?,
        last_name: text(fields, "lastName")?,
        name: text(fields, "name")?,
        email: text(fields, "email")?,
        phone: text(fields, "phone")?,
        address1: text(fields, "address1")?,
        city: text(fields, "city")?,
        state: text(fields, "state")?,
        postal_code: text(fields, "postalCode")?,
        website: text(fields, "website")?,
        timezone: text(fields, "timezone")?,
        dnd: flag(fields, "dnd")?,
        source: text(fields, "source")?,
        date_of_birth: text(fields, "dateOfBirth")?,
        country: text(fields, "country")?,
        company_name: text(fields, "companyName")?,
        assigned_to: text(fields, "assignedTo")?,
        gender: text(fields, "gender")?,
        dnd_settings: object(fields, "dndSettings")?,
        inbound_dnd_settings: object(fields, "inboundDndSettings")?,
        custom_fields: custom_fields(fields)?.unwrap_or_default(),
        tags,
    })
}

/// What a performed action leaves for the chain: the follow-on event (without key and origin).
struct FollowOn {
    trigger: &'static str,
    entity: EntityKind,
    entity_id: String,
    contact_id: Option<String>,
    new: Option<Value>,
    contact: Option<Value>,
    changed: Vec<String>,
    tags_added: Vec<String>,
    tags_removed: Vec<String>,
    data: Map<String, Value>,
}

impl FollowOn {
    fn about(trigger: &'static str, entity: EntityKind, entity_id: &str, contact_id: &str) -> Self {
        FollowOn {
            trigger,
            entity,
            entity_id: entity_id.to_owned(),
            contact_id: Some(contact_id.to_owned()),
            new: None,
            contact: None,
            changed: Vec::new(),
            tags_added: Vec::new(),
            tags_removed: Vec::new(),
            data: Map::new(),
        }
    }

    /// The event, keyed `<action key>:<trigger>`, caused by `planned`'s rule at its depth.
    fn event(self, planned: &PlannedAction) -> RuleEvent {
        RuleEvent {
            trigger: self.trigger.to_owned(),
            key: format!("{}:{}", planned.key, self.trigger),
            location_id: planned.location_id.clone(),
            entity: Some(self.entity),
            entity_id: Some(self.entity_id),
            contact_id: self.contact_id,
            old: None,
            new: self.new,
            contact: self.contact,
            changed: self.changed,
            tags_added: self.tags_added,
            tags_removed: self.tags_removed,
            data: self.data,
            at_ms: now_ms(),
            origin: Some(Origin { rule: planned.rule.clone(), depth: planned.depth }),
        }
    }
}

/// The set keys of a JSON body (the written field names).
fn written_names<T: serde::Serialize>(body: &T) -> Vec<String> {
    match serde_json::to_value(body) {
        Ok(Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

impl RuleActions {
    /// The connector of rule `rule`; `allow_delete` is `[rule_settings] allow_contact_delete`;
    /// `cancel` is the daemon's stop.
    pub fn new(rule: &str, writeback: WriteBack, store: Store, allow_delete: bool, cancel: CancellationToken) -> Self {
        Self { id: actions_connector(rule), rule: rule.to_owned(), writeback, store, allow_delete, cancel }
    }

    /// Settles a contact write (echo suppression) and returns the contact as read back.
    async fn settle(&self, location: &str, contact_id: &str, key: &str) -> Result<Option<Value>, Failed> {
        let record = self.writeback.settle(location, contact_id, &[key.to_owned()]).await?;
        Ok(record.map(Value::Object))
    }

    /// Performs one action; `Ok(None)` when it leaves no follow-on event.
    async fn perform(&self, planned: &PlannedAction) -> Result<(Outcome, Option<FollowOn>), Failed> {
        let wb = &self.writeback;
        let location = planned.location_id.as_str();
        let key = planned.key.as_str();
        let follow = match &planned.action {
            Action::Deliver { connector } => {
                return Ok((handed(enqueue_delivery(&self.store, connector, planned).await?), None));
            }
            Action::LushaEnrich { .. } => {
                let connector = crate::connectors::lusha::ID;
                return Ok((handed(enqueue_delivery(&self.store, connector, planned).await?), None));
            }
            Action::CreateContact { fields } => {
                let create = create_body(location, fields)?;
                let written = wb.create_contact(key, &create, create.email.as_deref()).await?;
                let id = written
                    .id()
                    .map(str::to_owned)
                    .ok_or_else(|| Failed::Refused("GHL answered the create without a contact id".into()))?;
                let mut new = fields.clone();
                new.insert("id".into(), Value::String(id.clone()));
                let mut follow = FollowOn::about("contact.created", EntityKind::Contact, &id, &id);
                follow.new = Some(Value::Object(new));
                follow
            }
            Action::UpdateContact { contact_id, fields } => {
                let update = update_body(fields)?;
                wb.update_contact(location, contact_id, key, &update).await?;
                let settled = self.settle(location, contact_id, key).await?;
                let mut follow = FollowOn::about("contact.updated", EntityKind::Contact, contact_id, contact_id);
                follow.changed = written_names(&update);
                follow.new = settled.clone();
                follow.contact = settled;
                follow
            }
            Action::DeleteContact { contact_id } => {
                if !self.allow_delete {
                    return Err(Failed::Refused(
                        "contact deletes are not allowed (set [rule_settings] allow_contact_delete = true)".into(),
                    ));
                }
                wb.delete_contact(location, contact_id, key).await?;
                FollowOn::about("contact.deleted", EntityKind::Contact, contact_id, contact_id)
            }
            Action::AddTags { contact_id, tags } => {
                wb.add_tags(location, contact_id, key, tags).await?;
                let settled = self.settle(location, contact_id, key).await?;
                let mut follow = FollowOn::about("tag.added", EntityKind::Contact, contact_id, contact_id);
                follow.tags_added = tags.clone();
                follow.new = settled.clone();
                follow.contact = settled;
                follow
            }
            Action::RemoveTags { contact_id, tags } => {
                wb.remove_tags(location, contact_id, key, tags).await?;
                let settled = self.settle(location, contact_id, key).await?;
                let mut follow = FollowOn::about("tag.removed", EntityKind::Contact, contact_id, contact_id);
                follow.tags_removed = tags.clone();
                follow.new = settled.clone();
                follow.contact = settled;
                follow
            }
            Action::CreateTask { contact_id, title, body, due, assigned_to } => {
                let task = NewTask {
                    title: title.clone(),
                    body: body.clone(),
                    due_date: due.clone(),
                    completed: false,
                    assigned_to: assigned_to.clone(),
                };
                let written = wb.create_task(location, contact_id, key, &task).await?;
                let id = written.id().unwrap_or_default().to_owned();
                let mut follow = FollowOn::about("task.created", EntityKind::Task, &id, contact_id);
                let mut new = serde_json::to_value(&task).unwrap_or_else(|_| json!({}));
                if let Value::Object(map) = &mut new {
                    map.insert("id".into(), Value::String(id.clone()));
                    map.insert("contactId".into(), Value::String(contact_id.clone()));
                }
                follow.new = Some(new);
                follow
            }
            Action::UpdateTask { contact_id, task_id, title, body, due, assigned_to } => {
                let update = TaskUpdate {
                    title: title.clone(),
                    body: body.clone(),
                    due_date: due.clone(),
                    completed: None,
                    assigned_to: assigned_to.clone(),
                };
                wb.update_task(location, contact_id, task_id, key, &update).await?;
                let mut follow = FollowOn::about("task.updated", EntityKind::Task, task_id, contact_id);
                follow.changed = written_names(&update);
                follow
            }
            Action::CompleteTask { contact_id, task_id } => {
                wb.complete_task(location, contact_id, task_id, key).await?;
                let mut follow = FollowOn::about("task.completed", EntityKind::Task, task_id, contact_id);
                follow.changed = vec!["completed".to_owned()];
                follow
            }
            Action::DeleteTask { contact_id, task_id } => {
                wb.delete_task(location, contact_id, task_id, key).await?;
                FollowOn::about("task.deleted", EntityKind::Task, task_id, contact_id)
            }
            Action::CreateNote { contact_id, body } => {
                let note = NoteWrite { body: Some(body.clone()), ..NoteWrite::default() };
                let written = wb.create_note(location, contact_id, key, &note).await?;
                let id = written.id().unwrap_or_default().to_owned();
                let mut follow = FollowOn::about("note.created", EntityKind::Note, &id, contact_id);
                follow.new = Some(json!({"id": id, "contactId": contact_id, "body": body}));
                follow
            }
            Action::UpdateNote { contact_id, note_id, body } => {
                let note = NoteWrite { body: Some(body.clone()), ..NoteWrite::default() };
                wb.update_note(location, contact_id, note_id, key, &note).await?;
                let mut follow = FollowOn::about("note.updated", EntityKind::Note, note_id, contact_id);
                follow.changed = vec!["body".to_owned()];
                follow.new = Some(json!({"id": note_id, "contactId": contact_id, "body": body}));
                follow
            }
            Action::DeleteNote { contact_id, note_id } => {
                wb.delete_note(location, contact_id, note_id, key).await?;
                FollowOn::about("note.deleted", EntityKind::Note, note_id, contact_id)
            }
            Action::UpsertContact { fields } => {
                let upsert =
                    UpsertContact { contact: create_body(location, fields)?, create_new_if_duplicate_allowed: None };
                let written = wb.upsert_contact(key, &upsert).await?;
                let id = written
                    .id()
                    .map(str::to_owned)
                    .ok_or_else(|| Failed::Refused("GHL answered the upsert without a contact id".into()))?;
                let mut new = fields.clone();
                new.insert("id".into(), Value::String(id.clone()));
                let mut follow = FollowOn::about("contact.updated", EntityKind::Contact, &id, &id);
                follow.changed = fields.keys().cloned().collect();
                follow.new = Some(Value::Object(new));
                follow
            }
            Action::LinkBusiness { contact_id, business_id } => {
                let ids = std::slice::from_ref(contact_id);
                wb.link_business(location, ids, business_id.as_deref(), key).await?;
                let settled = self.settle(location, contact_id, key).await?;
                let trigger = if business_id.is_some() { "business.linked" } else { "business.unlinked" };
                let mut follow = FollowOn::about(trigger, EntityKind::Contact, contact_id, contact_id);
                follow.data.insert("business_id".into(), business_id.clone().map_or(Value::Null, Value::String));
                follow.new = settled.clone();
                follow.contact = settled;
                follow
            }
        };
        Ok((Outcome::Done, Some(follow)))
    }

    /// One delivery: parse, perform, write the follow-on event.
    async fn run(&self, delivery: &Delivery) -> (Option<&'static str>, Outcome) {
        let planned: PlannedAction = match serde_json::from_value(delivery.record.clone()) {
            Ok(planned) => planned,
            Err(error) => {
                // The serde message may quote a value: only its position is kept.
                let reason =
                    format!("the row is not a planned action (line {} column {})", error.line(), error.column());
                return (None, Outcome::Permanent(reason));
            }
        };
        let name = action_name(&planned.action);
        if planned.rule != self.rule {
            return (Some(name), Outcome::Permanent(format!("the action belongs to rule `{}`", planned.rule)));
        }
        let outcome = match self.perform(&planned).await {
            Ok((outcome, None)) => outcome,
            Ok((outcome, Some(follow))) => match enqueue_events(&self.store, &[follow.event(&planned)]).await {
                Ok(_) => outcome,
                // The write is done under its key; the retry only writes the event.
                Err(error) => Outcome::Retry(None, Some(format!("the follow-on event could not be stored: {error}"))),
            },
            Err(failed) => {
                let outcome = failure_outcome(&failed);
                if let Outcome::Retry(_, Some(reason)) | Outcome::Permanent(reason) = &outcome {
                    tracing::warn!(connector.id = %self.id, action = name, error = %reason, "Rule action failed");
                }
                outcome
            }
        };
        (Some(name), outcome)
    }
}

fn handed(handed: Handed) -> Outcome {
    match handed {
        Handed::Queued | Handed::Already => Outcome::Done,
        Handed::NoRecord => Outcome::Skip("no record to hand to the connector".into()),
    }
}

#[async_trait::async_trait]
impl Connector for RuleActions {
    fn id(&self) -> &str {
        &self.id
    }

    /// Rule actions write to GHL through the write-back.
    fn calls_ghl(&self) -> bool {
        true
    }

    /// Only the rules connector writes this connector's rows.
    fn interested(&self, _event_type: &str, _location: &str) -> bool {
        false
    }

    async fn check(&self) -> Result<CheckReport, ConnectorError> {
        Ok(CheckReport { detail: format!("rule `{}` acts through the GHL write-back", self.rule) })
    }

    fn preview(&self, delivery: &Delivery) -> Result<Value, ConnectorError> {
        let planned: PlannedAction =
            serde_json::from_value(delivery.record.clone()).map_err(|e| ConnectorError::Other {
                connector: self.id.clone(),
                detail: format!("not a planned action (line {})", e.line()),
            })?;
        Ok(json!({"key": planned.key, "action": planned.action}))
    }

    async fn deliver(&self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            if self.cancel.is_cancelled() {
                outcomes.push(Outcome::not_started());
                continue;
            }
            let (action, outcome) = self.run(delivery).await;
            metrics::counter!(
                "ghl_sync_rule_actions_total",
                "rule" => self.rule.clone(),
                "action" => action.unwrap_or("unreadable"),
                "outcome" => outcome_name(&outcome)
            )
            .increment(1);
            outcomes.push(outcome);
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::StatusCode;

    fn fields(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    /// A value of the right type for a contact field.
    fn sample(name: &str) -> Value {
        match name {
            "dnd" => json!(true),
            "dndSettings" | "inboundDndSettings" => json!({"Email": {"status": "active"}}),
            "customFields" => json!([{"id": "f1", "field_value": "v"}]),
            "tags" => json!(["t"]),
            _ => json!("x"),
        }
    }

    /// The config validates `fields` against these lists; the executor must write every field
    /// they allow (a rule that validates must never fail on its field names at run time).
    #[test]
    fn every_field_the_config_allows_reaches_the_ghl_body() {
        for name in UPDATE_CONTACT_FIELDS {
            let body = update_body(&fields(json!({ *name: sample(name) }))).unwrap_or_else(|_| panic!("{name}"));
            let json = serde_json::to_value(&body).unwrap();
            assert!(json.get(*name).is_some(), "update_contact drops {name}: {json}");
        }
        for name in CREATE_CONTACT_FIELDS {
            let body = create_body("loc", &fields(json!({ *name: sample(name) }))).unwrap_or_else(|_| panic!("{name}"));
            let json = serde_json::to_value(&body).unwrap();
            assert!(json.get(*name).is_some(), "create_contact drops {name}: {json}");
        }
    }

    #[test]
    fn contact_bodies_take_known_fields_and_refuse_the_rest() {
        let update = update_body(&fields(json!({"city": "Paris", "dnd": true, "postalCode": 75001}))).unwrap();
        assert_eq!(
            serde_json::to_value(&update).unwrap(),
            json!({"city": "Paris", "dnd": true, "postalCode": "75001"})
        );
        assert_eq!(written_names(&update), vec!["city", "dnd", "postalCode"]);
        for bad in [json!({"tags": ["x"]}), json!({"companyName": "Acme"}), json!({"nickname": "x"})] {
            let Err(Failed::Refused(reason)) = update_body(&fields(bad.clone())) else { panic!("{bad}") };
            assert!(reason.starts_with("unknown contact field"), "{reason}");
        }
        let Err(Failed::Refused(reason)) = update_body(&fields(json!({"city": ["Paris"]}))) else { panic!() };
        assert_eq!(reason, "field `city` must be a string");
        let create =
            create_body("loc", &fields(json!({"email": "a@example.test", "tags": ["lead"], "companyName": "Acme"})))
                .unwrap();
        assert_eq!(
            serde_json::to_value(&create).unwrap(),
            json!({"locationId": "loc", "email": "a@example.test", "tags": ["lead"], "companyName": "Acme"})
        );
        assert!(create_body("loc", &fields(json!({"tags": "lead"}))).is_err());
    }

    #[test]
    fn failures_map_to_retry_park_or_dead_letters_without_personal_data() {
        let api = |status: StatusCode, retryable: bool| {
            Failed::WriteBack(WriteBackError::Ghl(GhlError::Api {
                route: "/contacts/:contactId",
                status,
                message: "ada@example.test is invalid".into(),
                retryable,
            }))
        };
        let Outcome::Permanent(reason) = failure_outcome(&api(StatusCode::UNPROCESSABLE_ENTITY, false)) else {
            panic!()
        };
        assert!(!reason.contains("ada@"), "{reason}");
        assert!(matches!(failure_outcome(&api(StatusCode::SERVICE_UNAVAILABLE, true)), Outcome::Retry(_, Some(_))));
        assert!(matches!(failure_outcome(&api(StatusCode::NOT_FOUND, false)), Outcome::Retry(_, Some(_))));
        let cancelled = Failed::WriteBack(WriteBackError::Ghl(GhlError::Http(HttpError::Cancelled {
            service: "ghl",
            route: "/contacts/",
        })));
        assert!(failure_outcome(&cancelled).is_not_started());
        let unauthorized =
            Failed::WriteBack(WriteBackError::Ghl(GhlError::Unauthorized { location: "l".into(), route: "/x" }));
        assert_eq!(failure_outcome(&unauthorized), Outcome::Park(REAUTH_WAIT));
        assert_eq!(failure_outcome(&Failed::Refused("no".into())), Outcome::Permanent("no".into()));
    }
}
