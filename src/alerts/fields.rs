//! The custom-field condition's input: which GHL custom fields the config depends on
//! (`connectors::custom_field_uses`) are missing in which location, read cheaply.
//!
//! Contract:
//! - At most one `GET /locations/:id/customFields` per location per [`FIELD_CHECK_EVERY`],
//!   failed or not, at [`FIELD_CHECK_PRIORITY`] (it yields first when the daily budget runs
//!   short), through the one `GhlClient`.
//! - A read that fails keeps what the last good read found (nothing opens or clears on an
//!   error); a location never read successfully has nothing missing.
//! - Only fields the config uses are compared: fields added or removed that no mapping or
//!   connector uses never matter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::connectors::CustomFieldUse;
use crate::ghl::GhlClient;
use crate::http::Priority;

/// How often one location's custom fields are read, at most.
pub const FIELD_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// The read's priority: a background check, among the first to yield to the budget.
pub const FIELD_CHECK_PRIORITY: Priority = Priority::Reconcile;

/// A used custom field that does not exist in a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingField {
    pub location: String,
    /// As the config writes it (a key such as `contact.lusha_id`, or an id).
    pub field: String,
    /// The connectors that use it.
    pub connectors: Vec<String>,
}

#[derive(Debug)]
struct Seen {
    read_at: Instant,
    /// From the last successful read; `None` before one.
    missing: Option<Vec<MissingField>>,
}

/// Reads the custom fields of locations when due and remembers what is missing.
pub(crate) struct FieldWatch {
    ghl: GhlClient,
    uses: Vec<CustomFieldUse>,
    every: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

impl FieldWatch {
    /// `None` when the config uses no custom field (nothing to read).
    pub(crate) fn new(ghl: GhlClient, uses: Vec<CustomFieldUse>) -> Option<Self> {
        (!uses.is_empty()).then(|| Self { ghl, uses, every: FIELD_CHECK_EVERY, seen: Mutex::new(HashMap::new()) })
    }

    pub(crate) fn set_every(&mut self, every: Duration) {
        self.every = every;
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The used fields missing in the `report` locations as last read; reads the `read`
    /// locations that are due first.
    pub(crate) async fn missing(&self, read: &[String], report: &[String]) -> Vec<MissingField> {
        for location in read {
            if !self.uses.iter().any(|u| u.applies_to(location)) {
                continue;
            }
            let due = self.seen().get(location).is_none_or(|s| s.read_at.elapsed() >= self.every);
            if !due {
                continue;
            }
            let read = self.ghl.custom_fields(location, Some("contact"), FIELD_CHECK_PRIORITY).await;
            let mut seen = self.seen();
            let previous = seen.remove(location).and_then(|s| s.missing);
            let missing = match read {
                Ok(fields) => Some(missing_in(location, &self.uses, &fields)),
                Err(error) => {
                    tracing::warn!(location.id = %location, error = %error,
                        "Custom fields of location {location} could not be read; trying again in {} min", self.every.as_secs() / 60);
                    previous
                }
            };
            seen.insert(location.clone(), Seen { read_at: Instant::now(), missing });
        }
        let seen = self.seen();
        report.iter().filter_map(|l| seen.get(l).and_then(|s| s.missing.clone())).flatten().collect()
    }
}

/// The `uses` of `location` that none of its `fields` is. Pure.
pub fn missing_in(
    location: &str,
    uses: &[CustomFieldUse],
    fields: &[crate::ghl::write::CustomField],
) -> Vec<MissingField> {
    let mut missing: Vec<MissingField> = Vec::new();
    for used in uses.iter().filter(|u| u.applies_to(location)) {
        if fields.iter().any(|f| used.matches(&f.id, f.field_key.as_deref())) {
            continue;
        }
        match missing.iter_mut().find(|m| m.field == used.field) {
            Some(known) => known.connectors.push(used.connector.clone()),
            None => missing.push(MissingField {
                location: location.to_owned(),
                field: used.field.clone(),
                connectors: vec![used.connector.clone()],
            }),
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::connectors::custom_field_uses;

    fn settings() -> Settings {
        let mut settings = Settings::default();
        let hook: crate::config::WebhookConnectorSettings = toml::from_str(
            "url = \"https://crm.example/hook\"\n\
             fields = [{ from = \"customFields.f1\", to = \"score\" }, { template = \"{firstName} {contact.customFields.region}\", to = \"t\" }]\n\
             message = \"{@event} {customFields.contact.lusha_id}\"",
        )
        .unwrap();
        settings.connectors.webhook.insert("crm".into(), hook);
        let mut lusha = crate::config::LushaSettings { enabled: true, ..Default::default() };
        lusha.locations = vec!["loc-a".into()];
        lusha.fields.job_title = Some("contact.job_title".into());
        lusha.fields.city = Some("city".into());
        settings.connectors.lusha = Some(lusha);
        settings
    }

    fn field(id: &str, key: &str) -> crate::ghl::write::CustomField {
        serde_json::from_value(serde_json::json!({"id": id, "fieldKey": key})).unwrap()
    }

    #[test]
    fn uses_come_from_mappings_templates_and_connector_fields_but_not_standard_fields() {
        let uses = custom_field_uses(&settings());
        let listed: Vec<(&str, &str)> = uses.iter().map(|u| (u.field.as_str(), u.connector.as_str())).collect();
        assert_eq!(
            listed,
            [
                ("contact.job_title", "lusha"),
                ("contact.lusha_enriched_at", "lusha"),
                ("contact.lusha_id", "lusha"),
                ("contact.lusha_id", "webhook.crm"),
                ("f1", "webhook.crm"),
                ("region", "webhook.crm"),
            ]
        );
    }

    #[test]
    fn a_used_field_is_missing_unless_its_id_or_key_exists_and_unused_fields_never_matter() {
        let uses = custom_field_uses(&settings());
        let fields = [
            field("f1", "contact.score"),
            field("f2", "contact.lusha_id"),
            field("f3", "contact.region"),
            field("f4", "contact.unused"),
        ];
        let missing = missing_in("loc-a", &uses, &fields);
        let listed: Vec<(&str, Vec<String>)> =
            missing.iter().map(|m| (m.field.as_str(), m.connectors.clone())).collect();
        assert_eq!(
            listed,
            [("contact.job_title", vec!["lusha".to_owned()]), ("contact.lusha_enriched_at", vec!["lusha".to_owned()])]
        );
        // Lusha is limited to loc-a: elsewhere only the webhook's fields count.
        assert!(missing_in("loc-b", &uses, &fields).is_empty());
        let missing = missing_in("loc-b", &uses, &[]);
        assert_eq!(missing.iter().map(|m| m.field.as_str()).collect::<Vec<_>>(), ["contact.lusha_id", "f1", "region"]);
        assert_eq!(missing[0].connectors, ["webhook.crm"]);
        assert!(missing.iter().all(|m| m.location == "loc-b"));
    }
}
