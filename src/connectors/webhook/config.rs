//! `[connectors.webhook.NAME]`: the section as written ([`WebhookConnectorSettings`]), its
//! validation, and the same resolved for delivery ([`WebhookConfig`]: filters, template, mapping).

use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

use crate::config::{Dur, FieldMapping, Secret, Validation};
use crate::connectors::DeliverySettings;

/// `[connectors.webhook.NAME]`: POST each change as JSON to a URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConnectorSettings {
    pub url: Url,
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// HMAC-SHA256 signing secret (`X-Ghl-Sync-Signature`).
    #[serde(default)]
    pub secret: Option<Secret>,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Event types to deliver (`contact.created`, `task.completed`, …); empty: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Only contacts carrying one of these tags; empty: all.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only these locations; empty: all.
    #[serde(default)]
    pub locations: Vec<String>,
    /// Body shape: the JSON envelope, or a Slack / Microsoft Teams message.
    #[serde(default)]
    pub template: WebhookTemplate,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Attempts before a change goes to dead letters.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_webhook_timeout")]
    pub timeout: Dur,
    /// Field mapping of the `data` object; empty: the whole record.
    #[serde(default)]
    pub fields: Vec<FieldMapping>,
    /// Slack/Teams message template (`"{@event}: {title}"`); empty: the built-in message.
    #[serde(default)]
    pub message: Option<String>,
}

fn enabled() -> bool {
    true
}

fn default_batch_size() -> usize {
    50
}
fn default_concurrency() -> usize {
    4
}
fn default_max_attempts() -> u32 {
    12
}
/// Shorter than `daemon.shutdown_grace` (8 s): a request in flight at a stop finishes and its
/// outcome is recorded before the daemon exits (validation warns when a config breaks this).
fn default_webhook_timeout() -> Dur {
    Dur::secs(5)
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WebhookTemplate {
    #[default]
    Envelope,
    Slack,
    Teams,
}

impl WebhookConnectorSettings {
    /// Checks `[connectors.webhook.NAME]` and resolves its signing secret.
    pub fn validate(&self, name: &str, v: &mut Validation) {
        let key = format!("connectors.webhook.{name}");
        v.remote_url(&self.url, &format!("{key}.url"));
        let sources = (&self.secret, &self.secret_env, &self.secret_file);
        if let Some(secret) = v.secret(&format!("{key}.secret"), sources, false) {
            v.secrets.webhook_secrets.insert(name.to_owned(), secret);
        }
        v.check((1..=1000).contains(&self.batch_size), &format!("{key}.batch_size"), "must be between 1 and 1000");
        v.check(self.concurrency >= 1, &format!("{key}.concurrency"), "must be at least 1");
        v.check(self.max_attempts >= 1, &format!("{key}.max_attempts"), "must be at least 1");
        for (suffix, message) in crate::connectors::mapping::validate_fields(&self.fields) {
            v.problem(format!("{key}.fields{suffix}"), message);
        }
        if let Some(template) = &self.message {
            for message in crate::connectors::mapping::validate_template(template) {
                v.problem(format!("{key}.message"), message);
            }
        }
        for (i, event) in self.events.iter().enumerate() {
            if !crate::domain::EVENT_TYPES.contains(&event.as_str()) {
                v.problem(
                    format!("{key}.events[{i}]"),
                    format!("unknown event type {event:?}; known: {}", crate::domain::EVENT_TYPES.join(", ")),
                );
            }
        }
    }
}

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
    fn the_section_validates_itself_with_its_key_paths() {
        let settings: WebhookConnectorSettings = toml::from_str(
            "url = \"http://hooks.example.test/x\"\nbatch_size = 0\nevents = [\"nope\"]\nsecret = \"s\"\n",
        )
        .unwrap();
        let mut v = Validation::default();
        settings.validate("team", &mut v);
        let keys: Vec<&str> = v.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["connectors.webhook.team.url", "connectors.webhook.team.batch_size", "connectors.webhook.team.events[0]"]
        );
        assert!(v.secrets.webhook_secrets.contains_key("team"), "the signing secret is resolved on the way");
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
