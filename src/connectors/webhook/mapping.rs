//! Request bodies: the JSON envelope, or a Slack / Microsoft Teams message. Pure.
//!
//! Messages for Slack and Teams go to the customer's own channel and may carry names and
//! titles; they are never logged.

use serde_json::{Value, json};

use crate::config::WebhookTemplate;
use crate::connectors::mapping::{self, MapInput, MappingError, display};
use crate::connectors::{Delivery, rfc3339_ms};
use crate::domain::{EntityKind, Operation};

use super::config::WebhookConfig;

/// The body to POST for one delivery.
pub fn body(config: &WebhookConfig, delivery: &Delivery) -> Result<Value, MappingError> {
    let meta = delivery.meta();
    let input = MapInput { record: &delivery.record, contact: delivery.contact_record(), meta: &meta };
    let data = mapping::apply(&config.fields, input)?;
    Ok(match config.template {
        WebhookTemplate::Envelope => envelope(delivery, data),
        WebhookTemplate::Slack => json!({ "text": message(config, delivery) }),
        WebhookTemplate::Teams => teams(&message(config, delivery)),
    })
}

/// `{id, type, location_id, entity, entity_id, contact_id, changed_at, data}`.
pub fn envelope(delivery: &Delivery, data: Value) -> Value {
    json!({
        "id": delivery.idempotency_key,
        "type": delivery.event_type(),
        "location_id": delivery.location_id,
        "entity": delivery.entity.as_str(),
        "entity_id": delivery.entity_id,
        "contact_id": delivery.contact_id,
        "changed_at": rfc3339_ms(delivery.changed_at_ms),
        "data": data,
    })
}

/// A Teams incoming-webhook message carrying one Adaptive Card.
pub fn teams(text: &str) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [{ "type": "TextBlock", "text": text, "wrap": true }]
            }
        }]
    })
}

/// The human message: the configured `message` template, or the built-in one.
pub fn message(config: &WebhookConfig, delivery: &Delivery) -> String {
    let meta = delivery.meta();
    let input = MapInput { record: &delivery.record, contact: delivery.contact_record(), meta: &meta };
    match &config.message {
        Some(template) => mapping::render(template, |path| input.lookup(path)),
        None => default_message(delivery),
    }
}

fn default_message(delivery: &Delivery) -> String {
    let contact = contact_name(delivery.contact_record())
        .unwrap_or_else(|| delivery.contact_id.clone().map_or_else(|| "unknown".to_owned(), |id| format!("id {id}")));
    let field = |name: &str| delivery.record.get(name).map(display).filter(|t| !t.trim().is_empty());
    let verb = match delivery.operation {
        Operation::Created => "created",
        Operation::Updated => "updated",
        Operation::Completed => "completed",
        Operation::Deleted => "deleted",
    };
    match delivery.entity {
        EntityKind::Contact => match delivery.operation {
            Operation::Created => format!("New contact: {contact}"),
            _ => format!("Contact {verb}: {contact}"),
        },
        EntityKind::Task => {
            let title = field("title").unwrap_or_else(|| "(untitled)".to_owned());
            let mut text = format!("Task {verb}: {title} (contact {contact})");
            if let Some(due) = delivery.record.get("dueDate").and_then(mapping::parse_date)
                && delivery.operation != Operation::Completed
                && let Ok(due) = due.format(time::macros::format_description!("[year]-[month]-[day]"))
            {
                text.push_str(&format!(", due {due}"));
            }
            text
        }
        EntityKind::Note => {
            let body = field("body").map(|b| truncate(&b, 200)).unwrap_or_default();
            let label = if delivery.operation == Operation::Created { "added" } else { verb };
            if body.is_empty() {
                format!("Note {label} (contact {contact})")
            } else {
                format!("Note {label} (contact {contact}): {body}")
            }
        }
        EntityKind::Appointment => {
            let title = field("title").unwrap_or_else(|| "(untitled)".to_owned());
            format!("Appointment {verb}: {title} (contact {contact})")
        }
        EntityKind::Event | EntityKind::Action => format!("{} {verb} (contact {contact})", delivery.entity),
    }
}

/// `name`, else first + last name, else the email; `None` when none is set.
pub fn contact_name(contact: Option<&Value>) -> Option<String> {
    let contact = contact?;
    let text = |name: &str| contact.get(name).and_then(Value::as_str).map(str::trim).filter(|t| !t.is_empty());
    if let Some(name) = text("name").or_else(|| text("contactName")) {
        return Some(name.to_owned());
    }
    let full = [text("firstName"), text("lastName")].into_iter().flatten().collect::<Vec<_>>().join(" ");
    if !full.is_empty() {
        return Some(full);
    }
    text("email").map(str::to_owned)
}

fn truncate(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FieldMapping, WebhookConnectorSettings};

    fn config(extra: &str) -> WebhookConfig {
        let settings: WebhookConnectorSettings =
            toml::from_str(&format!("url = \"https://hooks.example.test/x\"\n{extra}")).unwrap();
        WebhookConfig::from_settings("t", &settings)
    }

    fn task_completed() -> Delivery {
        Delivery {
            id: 7,
            location_id: "loc1".into(),
            entity: EntityKind::Task,
            entity_id: "t1".into(),
            contact_id: Some("c1".into()),
            operation: Operation::Completed,
            changed_at_ms: 1_772_358_900_000,
            idempotency_key: "k1".into(),
            record: json!({"id": "t1", "title": "Call back", "completed": true, "dueDate": "2026-03-02T10:00:00Z"}),
            contact: Some(json!({"id": "c1", "firstName": "Ada", "lastName": "Lovelace", "tags": ["vip"]})),
            attempt: 1,
        }
    }

    #[test]
    fn the_envelope_carries_the_change_and_the_mapped_record() {
        let body = body(&config(""), &task_completed()).unwrap();
        assert_eq!(
            body,
            json!({
                "id": "k1",
                "type": "task.completed",
                "location_id": "loc1",
                "entity": "task",
                "entity_id": "t1",
                "contact_id": "c1",
                "changed_at": "2026-03-01T09:55:00Z",
                "data": {"id": "t1", "title": "Call back", "completed": true, "dueDate": "2026-03-02T10:00:00Z"}
            })
        );
    }

    #[test]
    fn mapped_fields_can_read_the_parent_contact() {
        let mut hook = config("");
        hook.fields = vec![
            FieldMapping { from: Some("title".into()), to: "task".into(), ..FieldMapping::default() },
            FieldMapping {
                to: "who".into(),
                template: Some("{contact.firstName} {contact.lastName}".into()),
                ..FieldMapping::default()
            },
        ];
        let body = body(&hook, &task_completed()).unwrap();
        assert_eq!(body["data"], json!({"task": "Call back", "who": "Ada Lovelace"}));
    }

    #[test]
    fn slack_and_teams_get_human_messages() {
        let slack = body(&config("template = \"slack\""), &task_completed()).unwrap();
        assert_eq!(slack, json!({"text": "Task completed: Call back (contact Ada Lovelace)"}));
        let teams = body(&config("template = \"teams\""), &task_completed()).unwrap();
        assert_eq!(teams["type"], "message");
        assert_eq!(
            teams["attachments"][0]["content"]["body"][0]["text"],
            "Task completed: Call back (contact Ada Lovelace)"
        );
        let custom = body(
            &config("template = \"slack\"\nmessage = \"{@event}: {title} for {contact.firstName}\""),
            &task_completed(),
        )
        .unwrap();
        assert_eq!(custom, json!({"text": "task.completed: Call back for Ada"}));
    }

    #[test]
    fn built_in_messages_cover_every_entity() {
        let mut delivery = task_completed();
        delivery.operation = Operation::Created;
        assert_eq!(default_message(&delivery), "Task created: Call back (contact Ada Lovelace), due 2026-03-02");
        delivery.entity = EntityKind::Note;
        delivery.record = json!({"id": "n1", "body": "Met at the fair"});
        assert_eq!(default_message(&delivery), "Note added (contact Ada Lovelace): Met at the fair");
        delivery.contact = None;
        assert_eq!(default_message(&delivery), "Note added (contact id c1): Met at the fair");
        delivery.entity = EntityKind::Contact;
        delivery.record = json!({"id": "c1", "email": "ada@example.test"});
        assert_eq!(default_message(&delivery), "New contact: ada@example.test");
        delivery.operation = Operation::Deleted;
        delivery.record = json!({"id": "c1", "name": "Ada L"});
        assert_eq!(default_message(&delivery), "Contact deleted: Ada L");
    }
}
