//! Trigger events from a record change (pure): one committed record version (old and new)
//! gives one or more [`RuleEvent`]s, e.g. a contact update that adds a tag gives
//! `contact.updated` and `tag.added`.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::{Origin, RuleEvent};
use crate::domain::{EntityKind, Operation};

/// The events of one record change. `contact` is the parent contact's latest snapshot (task,
/// note and appointment changes; for contact changes the record itself is used when `None`).
/// Each event's key is `{base_key}:{trigger}`. Event, action and unknown combinations give none.
#[expect(clippy::too_many_arguments, reason = "the signature the rules connector codes against")]
pub fn derive(
    entity: EntityKind,
    operation: Operation,
    old: Option<&Value>,
    new: Option<&Value>,
    contact: Option<&Value>,
    location: &str,
    base_key: &str,
    at_ms: i64,
    origin: Option<Origin>,
) -> Vec<RuleEvent> {
    let triggers: Vec<(&str, Map<String, Value>)> = match (entity, operation) {
        (EntityKind::Contact, Operation::Created) => vec![("contact.created", Map::new())],
        (EntityKind::Contact, Operation::Updated | Operation::Completed) => contact_updates(old, new),
        (EntityKind::Contact, Operation::Deleted) => vec![("contact.deleted", Map::new())],
        (EntityKind::Task, Operation::Created) => vec![("task.created", Map::new())],
        (EntityKind::Task, Operation::Updated | Operation::Completed) => {
            let mut out = vec![("task.updated", Map::new())];
            let completed =
                |record: Option<&Value>| record.and_then(|r| r.get("completed")) == Some(&Value::Bool(true));
            if operation == Operation::Completed || (completed(new) && !completed(old)) {
                out.push(("task.completed", Map::new()));
            }
            out
        }
        (EntityKind::Task, Operation::Deleted) => vec![("task.deleted", Map::new())],
        (EntityKind::Note, Operation::Created) => vec![("note.created", Map::new())],
        (EntityKind::Note, Operation::Updated | Operation::Completed) => vec![("note.updated", Map::new())],
        (EntityKind::Note, Operation::Deleted) => vec![("note.deleted", Map::new())],
        (EntityKind::Appointment, Operation::Created) => vec![("appointment.created", Map::new())],
        (EntityKind::Appointment, Operation::Updated | Operation::Completed) => {
            let mut out = vec![("appointment.updated", Map::new())];
            let status = |record: Option<&Value>| {
                record.and_then(|r| r.get("appointmentStatus")).and_then(Value::as_str).map(str::to_ascii_lowercase)
            };
            if status(new).as_deref() == Some("cancelled") && status(old).as_deref() != Some("cancelled") {
                out.push(("appointment.cancelled", Map::new()));
            }
            out
        }
        (EntityKind::Appointment, Operation::Deleted) => vec![("appointment.deleted", Map::new())],
        (EntityKind::Event | EntityKind::Action, _) => Vec::new(),
    };
    if triggers.is_empty() {
        return Vec::new();
    }
    let record = new.or(old);
    let entity_id = record.and_then(|r| r.get("id")).and_then(Value::as_str).map(str::to_owned);
    let contact = match entity {
        EntityKind::Contact => contact.or(record).cloned(),
        _ => contact.cloned(),
    };
    let contact_id = match entity {
        EntityKind::Contact => entity_id.clone(),
        _ => record
            .and_then(|r| r.get("contactId"))
            .or_else(|| contact.as_ref().and_then(|c| c.get("id")))
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    let changed = changed_fields(old, new);
    let (tags_added, tags_removed) = tag_changes(old, new);
    triggers
        .into_iter()
        .map(|(trigger, data)| RuleEvent {
            trigger: trigger.to_owned(),
            key: format!("{base_key}:{trigger}"),
            location_id: location.to_owned(),
            entity: Some(entity),
            entity_id: entity_id.clone(),
            contact_id: contact_id.clone(),
            old: old.cloned(),
            new: new.cloned(),
            contact: contact.clone(),
            changed: changed.clone(),
            tags_added: tags_added.clone(),
            tags_removed: tags_removed.clone(),
            data,
            at_ms,
            origin: origin.clone(),
        })
        .collect()
}

/// `contact.updated` plus the specific triggers the update implies.
fn contact_updates(old: Option<&Value>, new: Option<&Value>) -> Vec<(&'static str, Map<String, Value>)> {
    let mut out = vec![("contact.updated", Map::new())];
    let (added, removed) = tag_changes(old, new);
    if !added.is_empty() {
        out.push(("tag.added", Map::new()));
    }
    if !removed.is_empty() {
        out.push(("tag.removed", Map::new()));
    }
    let changed = changed_fields(old, new);
    if changed.iter().any(|f| f == "dnd" || f == "dndSettings") {
        out.push(("contact.dnd_changed", Map::new()));
    }
    let business = |record: Option<&Value>| {
        record.and_then(|r| r.get("businessId")).and_then(Value::as_str).filter(|id| !id.is_empty()).map(str::to_owned)
    };
    let (before, after) = (business(old), business(new));
    if before != after {
        let data = |id: String| Map::from_iter([("business_id".to_owned(), Value::String(id))]);
        if let Some(id) = before {
            out.push(("business.unlinked", data(id)));
        }
        if let Some(id) = after {
            out.push(("business.linked", data(id)));
        }
    }
    out
}

/// Top-level fields whose value differs (a field missing on one side and null on the other is
/// not a change), sorted.
fn changed_fields(old: Option<&Value>, new: Option<&Value>) -> Vec<String> {
    let empty = Map::new();
    let old = old.and_then(Value::as_object).unwrap_or(&empty);
    let new = new.and_then(Value::as_object).unwrap_or(&empty);
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| {
            let before = old.get(*k).filter(|v| !v.is_null());
            let after = new.get(*k).filter(|v| !v.is_null());
            before != after
        })
        .cloned()
        .collect()
}

/// Tags in `new` and not in `old`, and the reverse (in record order).
fn tag_changes(old: Option<&Value>, new: Option<&Value>) -> (Vec<String>, Vec<String>) {
    let tags = |record: Option<&Value>| -> Vec<String> {
        record
            .and_then(|r| r.get("tags"))
            .and_then(Value::as_array)
            .map(|tags| tags.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let (before, after) = (tags(old), tags(new));
    let added = after.iter().filter(|t| !before.contains(t)).cloned().collect();
    let removed = before.iter().filter(|t| !after.contains(t)).cloned().collect();
    (added, removed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn triggers(entity: EntityKind, operation: Operation, old: Option<Value>, new: Option<Value>) -> Vec<String> {
        derive(entity, operation, old.as_ref(), new.as_ref(), None, "loc", "base", 1, None)
            .into_iter()
            .map(|e| e.trigger)
            .collect()
    }

    #[test]
    fn every_branch_gives_its_triggers() {
        use EntityKind::{Action, Appointment, Contact, Event, Note, Task};
        use Operation::{Completed, Created, Deleted, Updated};
        let c = |v: Value| Some(v);
        type Case = (EntityKind, Operation, Option<Value>, Option<Value>, &'static [&'static str]);
        let cases: Vec<Case> = vec![
            (Contact, Created, None, c(json!({"id": "c1", "tags": ["a"]})), &["contact.created"]),
            (Contact, Deleted, c(json!({"id": "c1"})), None, &["contact.deleted"]),
            (
                Contact,
                Updated,
                c(json!({"id": "c1", "city": "A"})),
                c(json!({"id": "c1", "city": "B"})),
                &["contact.updated"],
            ),
            (
                Contact,
                Updated,
                c(json!({"id": "c1", "tags": ["a"]})),
                c(json!({"id": "c1", "tags": ["a", "b"]})),
                &["contact.updated", "tag.added"],
            ),
            (
                Contact,
                Updated,
                c(json!({"id": "c1", "tags": ["a"]})),
                c(json!({"id": "c1", "tags": []})),
                &["contact.updated", "tag.removed"],
            ),
            (
                Contact,
                Updated,
                c(json!({"id": "c1", "tags": ["a"]})),
                c(json!({"id": "c1", "tags": ["b"]})),
                &["contact.updated", "tag.added", "tag.removed"],
            ),
            (
                Contact,
                Updated,
                c(json!({"id": "c1", "dnd": false})),
                c(json!({"id": "c1", "dnd": true})),
                &["contact.updated", "contact.dnd_changed"],
            ),
            (
                Contact,
                Updated,
                c(json!({"id": "c1"})),
                c(json!({"id": "c1", "dndSettings": {"SMS": {"status": "active"}}})),
                &["contact.updated", "contact.dnd_changed"],
            ),
            (
                Contact,
                Updated,
                c(json!({"id": "c1"})),
                c(json!({"id": "c1", "businessId": "b1"})),
                &["contact.updated", "business.linked"],
            ),
            (
                Contact,
                Updated,
                c(json!({"id": "c1", "businessId": "b1"})),
                c(json!({"id": "c1", "businessId": null})),
                &["contact.updated", "business.unlinked"],
            ),
            (
                Contact,
                Updated,
                c(json!({"id": "c1", "businessId": "b1"})),
                c(json!({"id": "c1", "businessId": "b2"})),
                &["contact.updated", "business.unlinked", "business.linked"],
            ),
            (Task, Created, None, c(json!({"id": "t1", "contactId": "c1"})), &["task.created"]),
            (
                Task,
                Updated,
                c(json!({"id": "t1", "title": "a"})),
                c(json!({"id": "t1", "title": "b"})),
                &["task.updated"],
            ),
            (
                Task,
                Completed,
                c(json!({"id": "t1", "completed": false})),
                c(json!({"id": "t1", "completed": true})),
                &["task.updated", "task.completed"],
            ),
            (
                Task,
                Updated,
                c(json!({"id": "t1", "completed": false})),
                c(json!({"id": "t1", "completed": true})),
                &["task.updated", "task.completed"],
            ),
            (Task, Deleted, c(json!({"id": "t1"})), None, &["task.deleted"]),
            (Note, Created, None, c(json!({"id": "n1"})), &["note.created"]),
            (
                Note,
                Updated,
                c(json!({"id": "n1", "body": "a"})),
                c(json!({"id": "n1", "body": "b"})),
                &["note.updated"],
            ),
            (Note, Deleted, c(json!({"id": "n1"})), None, &["note.deleted"]),
            (Appointment, Created, None, c(json!({"id": "a1"})), &["appointment.created"]),
            (
                Appointment,
                Updated,
                c(json!({"id": "a1", "appointmentStatus": "confirmed"})),
                c(json!({"id": "a1", "appointmentStatus": "showed"})),
                &["appointment.updated"],
            ),
            (
                Appointment,
                Updated,
                c(json!({"id": "a1", "appointmentStatus": "confirmed"})),
                c(json!({"id": "a1", "appointmentStatus": "cancelled"})),
                &["appointment.updated", "appointment.cancelled"],
            ),
            (
                Appointment,
                Updated,
                c(json!({"id": "a1", "appointmentStatus": "cancelled", "title": "x"})),
                c(json!({"id": "a1", "appointmentStatus": "cancelled", "title": "y"})),
                &["appointment.updated"],
            ),
            (Appointment, Deleted, c(json!({"id": "a1"})), None, &["appointment.deleted"]),
            (Event, Created, None, c(json!({})), &[]),
            (Action, Created, None, c(json!({})), &[]),
        ];
        for (entity, operation, old, new, expected) in cases {
            let got = triggers(entity, operation, old.clone(), new.clone());
            assert_eq!(got, *expected, "{entity:?} {operation:?} {old:?} → {new:?}");
        }
    }

    #[test]
    fn events_carry_keys_ids_changes_and_data() {
        let old = json!({"id": "c1", "tags": ["a"], "businessId": "b1", "city": "A", "phone": null});
        let new = json!({"id": "c1", "tags": ["a", "b"], "businessId": "b2", "city": "A"});
        let origin = Some(Origin { rule: "r".to_owned(), depth: 1 });
        let events = derive(
            EntityKind::Contact,
            Operation::Updated,
            Some(&old),
            Some(&new),
            None,
            "loc",
            "k1",
            42,
            origin.clone(),
        );
        let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["k1:contact.updated", "k1:tag.added", "k1:business.unlinked", "k1:business.linked"]);
        for event in &events {
            assert_eq!(event.entity_id.as_deref(), Some("c1"));
            assert_eq!(event.contact_id.as_deref(), Some("c1"));
            assert_eq!(event.contact.as_ref(), Some(&new));
            assert_eq!(event.changed, ["businessId", "tags"]);
            assert_eq!(event.tags_added, ["b"]);
            assert!(event.tags_removed.is_empty());
            assert_eq!((event.at_ms, event.location_id.as_str(), &event.origin), (42, "loc", &origin));
        }
        assert_eq!(events[2].data.get("business_id"), Some(&json!("b1")));
        assert_eq!(events[3].data.get("business_id"), Some(&json!("b2")));
    }

    #[test]
    fn child_events_take_the_contact_from_the_record_or_the_snapshot() {
        let contact = json!({"id": "c9", "firstName": "A"});
        let task = json!({"id": "t1", "title": "x"});
        let events =
            derive(EntityKind::Task, Operation::Created, None, Some(&task), Some(&contact), "loc", "k", 0, None);
        assert_eq!(events[0].contact_id.as_deref(), Some("c9"));
        assert_eq!(events[0].entity_id.as_deref(), Some("t1"));
        assert_eq!(events[0].entity, Some(EntityKind::Task));
        let with_id = json!({"id": "t1", "contactId": "c1"});
        let events = derive(EntityKind::Task, Operation::Deleted, Some(&with_id), None, None, "loc", "k", 0, None);
        assert_eq!(events[0].contact_id.as_deref(), Some("c1"));
        assert_eq!(events[0].changed, ["contactId", "id"]);
    }
}
