//! `[connectors.webhook.NAME]` resolved for delivery: filters, template and mapping.

use crate::config::{FieldMapping, WebhookConnectorSettings, WebhookTemplate};
use crate::connectors::DeliverySettings;

/// What the webhook connector needs from its config table (the secret is kept apart).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub name: String,
    pub url: url::Url,
    pub events: Vec<String>,
    pub tags: Vec<String>,
    pub locations: Vec<String>,
    pub template: WebhookTemplate,
    pub fields: Vec<FieldMapping>,
    pub message: Option<String>,
    pub delivery: DeliverySettings,
    pub timeout: std::time::Duration,
}

impl WebhookConfig {
    pub fn from_settings(name: &str, settings: &WebhookConnectorSettings) -> Self {
        Self {
            name: name.to_owned(),
            url: settings.url.clone(),
            events: settings.events.clone(),
            tags: settings.tags.clone(),
            locations: settings.locations.clone(),
            template: settings.template,
            fields: settings.fields.clone(),
            message: settings.message.clone(),
            delivery: DeliverySettings {
                batch_size: settings.batch_size.max(1),
                concurrency: settings.concurrency.max(1),
                max_attempts: settings.max_attempts.max(1),
            },
            timeout: settings.timeout.get(),
        }
    }

    /// Event and location filters (empty lists let everything through).
    pub fn interested(&self, event_type: &str, location: &str) -> bool {
        (self.events.is_empty() || self.events.iter().any(|e| e == event_type))
            && (self.locations.is_empty() || self.locations.iter().any(|l| l == location))
    }

    /// Tag filter on the contact (the record, or a task/note's parent). A change whose contact
    /// is unknown passes only when no tags are configured.
    pub fn tags_match(&self, contact: Option<&serde_json::Value>) -> bool {
        if self.tags.is_empty() {
            return true;
        }
        let Some(tags) = contact.and_then(|c| c.get("tags")).and_then(|t| t.as_array()) else {
            return false;
        };
        tags.iter()
            .filter_map(|t| t.as_str())
            .any(|tag| self.tags.iter().any(|wanted| wanted.eq_ignore_ascii_case(tag)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(events: &[&str], tags: &[&str], locations: &[&str]) -> WebhookConfig {
        let text = format!(
            "url = \"https://hooks.example.test/x\"\nevents = {events:?}\ntags = {tags:?}\nlocations = {locations:?}\n"
        );
        let settings: WebhookConnectorSettings = toml::from_str(&text).unwrap();
        WebhookConfig::from_settings("t", &settings)
    }

    #[test]
    fn filters_by_event_and_location_and_empty_lists_pass_all() {
        let all = config(&[], &[], &[]);
        assert!(all.interested("contact.created", "loc1"));
        let some = config(&["task.completed"], &[], &["loc1"]);
        assert!(some.interested("task.completed", "loc1"));
        assert!(!some.interested("task.created", "loc1"));
        assert!(!some.interested("task.completed", "loc2"));
    }

    #[test]
    fn tags_match_case_insensitively_and_need_a_known_contact() {
        let hook = config(&[], &["VIP"], &[]);
        assert!(hook.tags_match(Some(&json!({"tags": ["vip", "x"]}))));
        assert!(!hook.tags_match(Some(&json!({"tags": ["x"]}))));
        assert!(!hook.tags_match(None));
        assert!(config(&[], &[], &[]).tags_match(None));
    }
}
