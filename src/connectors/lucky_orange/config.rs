//! `[connectors.lucky_orange]`: the Lucky Orange identity bridge (signed identity tokens written
//! to a GHL custom field, the `/lo/*` endpoints for the site snippet, visits, journey events and
//! replay links into GHL). Owns the section's shape, its defaults and its validation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

use crate::config::{ConfigProblem, Dur, Secret, Validation};

/// `[connectors.lucky_orange]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LuckyOrangeSettings {
    pub enabled: bool,
    /// The Lucky Orange site id (only shown in the snippet tag `check` prints).
    pub site_id: String,
    /// Exact origins (`https://www.example.com`) allowed to call `/lo/*` from a browser.
    pub allowed_origins: Vec<String>,
    /// The token's audience (`aud`): tokens minted for another site are refused.
    pub audience: String,
    /// Signing key id of new tokens and its key (exactly one of `key`, `key_env`, `key_file`;
    /// at least 32 bytes).
    pub key_id: String,
    pub key: Option<Secret>,
    pub key_env: Option<String>,
    pub key_file: Option<PathBuf>,
    /// The previous key id during a rotation: its tokens are still accepted, never minted.
    pub previous_key_id: Option<String>,
    pub previous_key: Option<Secret>,
    pub previous_key_env: Option<String>,
    pub previous_key_file: Option<PathBuf>,
    /// Lifetime of a token; it is re-minted when less than half of it is left.
    pub token_ttl: Dur,
    /// GHL custom field key the token is written to (`?lo_t={{contact.lo_token}}` in links).
    pub token_field_key: String,
    /// Contacts in scope for tokens: those with any of these tags (empty: every contact).
    pub scope_tags: Vec<String>,
    /// Token writes to GHL per minting pass at most (the rest wait for the next pass).
    pub max_mints_per_pass: usize,
    /// How often the minting pass runs.
    pub mint_interval: Dur,
    /// GHL contact fields returned to the page as Lucky Orange visitor traits
    /// (`name`, `firstName`, `lastName`, `email`, `companyName`, `city`, `country`, …).
    pub traits: Vec<String>,
    /// Contacts with any of these tags are never identified (204).
    pub optout_tags: Vec<String>,
    /// Requests per minute per client IP on `/lo/*`.
    pub rate_limit_per_minute: u32,
    /// Behind a reverse proxy: take the client IP (for the rate limit) from the right-most
    /// `X-Forwarded-For` entry. Only when the proxy sets it; otherwise clients could pick any IP.
    pub trust_forwarded_for: bool,
    /// GHL custom field key of the replay URL (filled by the site's form through the snippet).
    pub session_field_key: String,
    /// Tag added with the replay note.
    pub session_tag: String,
    /// Where visits are written in GHL (custom field keys; unset: not written).
    pub visit_fields: VisitFields,
    /// At most one visit write per contact per this window.
    pub visit_throttle: Dur,
    /// Journey events accepted from `ghlSync.track(name)`, by name, with what each does in GHL.
    pub events: BTreeMap<String, EventAction>,
    /// One GHL action per (contact, event, window).
    pub event_window: Dur,
}

impl Default for LuckyOrangeSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            site_id: String::new(),
            allowed_origins: Vec::new(),
            audience: "lucky_orange".to_owned(),
            key_id: "k1".to_owned(),
            key: None,
            key_env: None,
            key_file: None,
            previous_key_id: None,
            previous_key: None,
            previous_key_env: None,
            previous_key_file: None,
            token_ttl: Dur::secs(7 * 86_400),
            token_field_key: "contact.lo_token".to_owned(),
            scope_tags: Vec::new(),
            max_mints_per_pass: 200,
            mint_interval: Dur::secs(600),
            traits: vec!["name".to_owned()],
            optout_tags: vec!["lo:opt-out".to_owned()],
            rate_limit_per_minute: 30,
            trust_forwarded_for: false,
            session_field_key: "contact.lo_session_url".to_owned(),
            session_tag: "lucky-orange:session".to_owned(),
            visit_fields: VisitFields::default(),
            visit_throttle: Dur::secs(3600),
            events: BTreeMap::new(),
            event_window: Dur::secs(86_400),
        }
    }
}

/// `[connectors.lucky_orange.visit_fields]`: GHL custom field keys a visit updates.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct VisitFields {
    /// RFC 3339 time of the last visit.
    pub last_seen: Option<String>,
    /// Lucky Orange's visit count.
    pub visits: Option<String>,
    /// Path of the last page (no query string).
    pub last_page: Option<String>,
    /// Replay URL of the last session.
    pub last_replay_url: Option<String>,
}

impl VisitFields {
    /// `(name, key)` of every configured field.
    pub fn configured(&self) -> Vec<(&'static str, &str)> {
        [
            ("last_seen", &self.last_seen),
            ("visits", &self.visits),
            ("last_page", &self.last_page),
            ("last_replay_url", &self.last_replay_url),
        ]
        .into_iter()
        .filter_map(|(name, key)| key.as_deref().map(|k| (name, k)))
        .collect()
    }
}

/// `[connectors.lucky_orange.events.NAME]`: what an accepted journey event does in GHL.
/// Templates take `{event}`, `{page}`, `{firstName}`, `{lastName}`, `{name}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EventAction {
    pub task: Option<EventTask>,
    /// A note with this body.
    pub note: Option<String>,
    /// A tag.
    pub tag: Option<String>,
}

/// A task created by an event.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EventTask {
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    /// Due this long after the event.
    #[serde(default = "default_due")]
    pub due_in: Dur,
}

fn default_due() -> Dur {
    Dur::secs(86_400)
}

/// Contact fields that may be returned as traits (never phone, address or custom fields).
pub const TRAIT_FIELDS: &[&str] =
    &["name", "firstName", "lastName", "email", "companyName", "city", "state", "country", "website", "timezone"];

/// Placeholders of event templates.
pub const EVENT_TEMPLATE_FIELDS: &[&str] = &["event", "page", "firstName", "lastName", "name"];

/// Shortest signing key accepted (bytes).
pub const MIN_KEY_BYTES: usize = 32;

impl LuckyOrangeSettings {
    /// Checks the section and resolves its signing keys (the current one is required while enabled).
    pub fn validate_section(&self, v: &mut Validation) {
        let current = (&self.key, &self.key_env, &self.key_file);
        let key = v.secret("connectors.lucky_orange.key", current, self.enabled);
        let previous = (&self.previous_key, &self.previous_key_env, &self.previous_key_file);
        let previous_key = v.secret("connectors.lucky_orange.previous_key", previous, false);
        for (name, secret) in [("key", &key), ("previous_key", &previous_key)] {
            use secrecy::ExposeSecret as _;
            if let Some(secret) = secret
                && secret.expose_secret().len() < MIN_KEY_BYTES
            {
                v.problem(
                    format!("connectors.lucky_orange.{name}"),
                    format!("must be at least {MIN_KEY_BYTES} bytes (e.g. `openssl rand -base64 48`)"),
                );
            }
        }
        if let Some(key) = key {
            v.secrets.lucky_orange_keys.insert(self.key_id.clone(), key);
        }
        match (&self.previous_key_id, previous_key) {
            (Some(id), Some(key)) => {
                v.secrets.lucky_orange_keys.insert(id.clone(), key);
            }
            (Some(_), None) => {
                v.problem("connectors.lucky_orange.previous_key", "previous_key_id is set: give its key too");
            }
            (None, Some(_)) => {
                v.problem("connectors.lucky_orange.previous_key_id", "previous_key is set: name its key id");
            }
            (None, None) => {}
        }
        v.problems.extend(validate(self));
    }

    /// The custom field keys the bridge writes itself (token, visit fields): kept out of the
    /// contact hash so its writes never fire other connectors. The replay field is not one:
    /// it is written by the site's form, and its change is what creates the replay note.
    pub fn bookkeeping_field_keys(&self) -> Vec<String> {
        let mut keys = vec![self.token_field_key.clone()];
        keys.extend(self.visit_fields.configured().into_iter().map(|(_, key)| key.to_owned()));
        keys
    }
}

/// Semantic checks with key paths (`connectors.lucky_orange.…`).
pub fn validate(settings: &LuckyOrangeSettings) -> Vec<ConfigProblem> {
    let key = "connectors.lucky_orange";
    let mut problems = Vec::new();
    let mut check = |ok: bool, field: &str, message: String| {
        if !ok {
            problems.push(ConfigProblem::new(format!("{key}.{field}"), message));
        }
    };
    for (i, origin) in settings.allowed_origins.iter().enumerate() {
        check(
            origin_is_exact(origin),
            &format!("allowed_origins[{i}]"),
            format!(
                "{origin:?} is not an exact origin: scheme://host[:port] without path or wildcard (e.g. https://www.example.com)"
            ),
        );
    }
    if settings.enabled {
        check(
            !settings.allowed_origins.is_empty(),
            "allowed_origins",
            "name the site's origins (e.g. [\"https://www.example.com\"]); browsers from other origins are refused"
                .into(),
        );
    }
    check(!settings.audience.trim().is_empty(), "audience", "must not be empty".into());
    check(valid_key_id(&settings.key_id), "key_id", "letters, digits, - and _ only (1-32)".into());
    if let Some(previous) = &settings.previous_key_id {
        check(valid_key_id(previous), "previous_key_id", "letters, digits, - and _ only (1-32)".into());
        check(previous != &settings.key_id, "previous_key_id", "must differ from key_id".into());
    }
    check(settings.token_ttl.get().as_secs() >= 3600, "token_ttl", "must be at least 1h".into());
    check(settings.max_mints_per_pass >= 1, "max_mints_per_pass", "must be at least 1".into());
    check(!settings.mint_interval.get().is_zero(), "mint_interval", "must be greater than zero".into());
    for (i, name) in settings.traits.iter().enumerate() {
        check(
            TRAIT_FIELDS.contains(&name.as_str()),
            &format!("traits[{i}]"),
            format!("{name:?} cannot be a trait; allowed: {}", TRAIT_FIELDS.join(", ")),
        );
    }
    check(settings.rate_limit_per_minute >= 1, "rate_limit_per_minute", "must be at least 1".into());
    let mut fields = vec![("token_field_key", settings.token_field_key.as_str())];
    fields.push(("session_field_key", settings.session_field_key.as_str()));
    let visit: Vec<(String, &str)> =
        settings.visit_fields.configured().into_iter().map(|(n, k)| (format!("visit_fields.{n}"), k)).collect();
    for (field, target) in fields.iter().map(|(f, t)| ((*f).to_owned(), *t)).chain(visit) {
        check(
            target.starts_with("contact.") && target.len() > 8,
            &field,
            "must be a custom field key (contact.…)".into(),
        );
    }
    check(
        settings.token_field_key != settings.session_field_key,
        "session_field_key",
        "must differ from token_field_key".into(),
    );
    check(!settings.session_tag.trim().is_empty(), "session_tag", "must not be empty".into());
    check(!settings.event_window.get().is_zero(), "event_window", "must be greater than zero".into());
    for (name, action) in &settings.events {
        check(valid_event_name(name), &format!("events.{name}"), "event names: a-z, 0-9, _ and - only (1-64)".into());
        check(
            action.task.is_some() || action.note.is_some() || action.tag.is_some(),
            &format!("events.{name}"),
            "give at least one of task, note, tag".into(),
        );
        let mut templates = vec![("note", action.note.as_deref())];
        if let Some(task) = &action.task {
            check(!task.title.trim().is_empty(), &format!("events.{name}.task.title"), "must not be empty".into());
            templates.push(("task.title", Some(task.title.as_str())));
            templates.push(("task.body", task.body.as_deref()));
        }
        for (field, template) in templates {
            for problem in template.map(validate_template).unwrap_or_default() {
                check(false, &format!("events.{name}.{field}"), problem);
            }
        }
    }
    problems
}

/// An exact browser origin: `http(s)://host[:port]`, nothing else.
pub fn origin_is_exact(origin: &str) -> bool {
    let Ok(url) = Url::parse(origin) else { return false };
    matches!(url.scheme(), "https" | "http")
        && url.host_str().is_some_and(|h| !h.contains('*'))
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.origin().ascii_serialization() == origin
}

fn valid_key_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Event names accepted from the page.
pub fn valid_event_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn validate_template(template: &str) -> Vec<String> {
    use crate::connectors::mapping::{Piece, parse_template};
    match parse_template(template) {
        Ok(pieces) => pieces
            .into_iter()
            .filter_map(|piece| match piece {
                Piece::Field(name) if !EVENT_TEMPLATE_FIELDS.contains(&name.as_str()) => {
                    Some(format!("unknown placeholder {{{name}}}; known: {}", EVENT_TEMPLATE_FIELDS.join(", ")))
                }
                _ => None,
            })
            .collect(),
        Err(message) => vec![message],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_once_origins_are_named_and_bad_values_are_named() {
        let good = LuckyOrangeSettings {
            allowed_origins: vec!["https://www.example.com".into()],
            ..LuckyOrangeSettings::default()
        };
        assert!(validate(&good).is_empty(), "{:?}", validate(&good));
        let bad: LuckyOrangeSettings = toml::from_str(
            r#"
            allowed_origins = ["https://*.example.com", "https://example.com/", "https://example.com"]
            traits = ["name", "phone"]
            token_field_key = "lo_token"
            [events.pricing_viewed]
            note = "{nope}"
            [events."Bad Name"]
            tag = "x"
            [events.empty]
            "#,
        )
        .unwrap();
        let keys: Vec<String> = validate(&bad).into_iter().map(|p| p.key).collect();
        for expected in [
            "connectors.lucky_orange.allowed_origins[0]",
            "connectors.lucky_orange.allowed_origins[1]",
            "connectors.lucky_orange.traits[1]",
            "connectors.lucky_orange.token_field_key",
            "connectors.lucky_orange.events.pricing_viewed.note",
            "connectors.lucky_orange.events.Bad Name",
            "connectors.lucky_orange.events.empty",
        ] {
            assert!(keys.iter().any(|k| k == expected), "{expected} missing in {keys:?}");
        }
        assert!(!keys.iter().any(|k| k.ends_with("allowed_origins[2]")));
        assert!(toml::from_str::<LuckyOrangeSettings>("unknown = 1").is_err());
    }

    #[test]
    fn the_documented_example_block_loads() {
        let example = include_str!("../../../config/ghl-sync.example.toml");
        let start = example.find("# [connectors.lucky_orange]").unwrap();
        let end = example[start..].find("\n# [connectors.lusha]").unwrap() + start;
        let text: String = example[start..end]
            .lines()
            .filter(|line| !line.starts_with("# #"))
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .map(|line| if line.starts_with("key_env") { "key = \"0123456789abcdef0123456789abcdef\"" } else { line })
            .map(|line| format!("{line}\n"))
            .collect();
        let config =
            crate::config::load_from_str(&text, crate::config::ConfigSource::InCode, std::collections::HashMap::new())
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let lo = config.settings.connectors.lucky_orange.unwrap();
        assert_eq!(lo.events["pricing_viewed"].tag.as_deref(), Some("lo:pricing"));
        assert_eq!(lo.visit_fields.visits.as_deref(), Some("contact.lo_visits"));
        assert_eq!(config.secrets.lucky_orange_keys.len(), 1);
    }

    #[test]
    fn bookkeeping_fields_are_the_token_and_visit_fields_not_the_replay_field() {
        let settings = LuckyOrangeSettings {
            visit_fields: VisitFields { last_seen: Some("contact.lo_last_seen".into()), ..VisitFields::default() },
            ..LuckyOrangeSettings::default()
        };
        assert_eq!(settings.bookkeeping_field_keys(), vec!["contact.lo_token", "contact.lo_last_seen"]);
    }
}
