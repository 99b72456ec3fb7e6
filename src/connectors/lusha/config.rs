//! `[connectors.lusha]`: enrichment of GHL contacts through Lusha, credit-safe.

use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

use crate::config::{ConfigProblem, Dur, Secret, Validation};

/// `[connectors.lusha]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LushaSettings {
    pub enabled: bool,
    /// Lusha API key (header `api_key`): exactly one of `api_key`, `api_key_env`, `api_key_file`.
    pub api_key: Option<Secret>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub base_url: Url,
    /// What to reveal: `emails`, `phones` (each revealed datapoint costs credits).
    pub reveal: Vec<String>,
    /// Lusha's Data Waterfall (third-party fallback; cost undocumented). Sent explicitly.
    pub waterfall: bool,
    /// A found result is re-used this long before the contact is enriched again (by Lusha id).
    pub reenrich_after: Dur,
    /// A not-found (or compliance-restricted) result is re-used this long.
    pub not_found_ttl: Dur,
    /// Credits the connector may spend per UTC day (0: no cap).
    pub daily_credit_cap: i64,
    /// Never spend below this balance (read from `/v3/account/usage`).
    pub credit_reserve: i64,
    /// Upper-bound estimate of one contact's cost, used to size a batch under the cap.
    pub max_credits_per_contact: i64,
    /// EU contacts (`isEuContact`): `full`, `firmographics` (no emails/phones) or `skip`.
    pub eu_policy: EuPolicy,
    /// Overwrite GHL fields that already hold a value (default: fill empty fields only).
    pub overwrite: bool,
    /// Only these locations; empty: all.
    pub locations: Vec<String>,
    /// Where the result goes in GHL.
    pub fields: LushaFields,
    /// Custom field key of the contact's LinkedIn URL (an identity besides email), if any.
    pub linkedin_field: Option<String>,
    pub tags: LushaTags,
    /// Also add a note with the enrichment summary (once per result).
    pub note: bool,
    /// Contacts per Lusha call and per dispatcher batch (1–100).
    pub batch_size: usize,
    /// Failed attempts (timeouts, 5xx, GHL write-back errors) before a change goes to dead
    /// letters. Waiting on a Lusha limit, the credit budget or an empty balance is parking
    /// and does not count.
    pub max_attempts: u32,
    pub limits: LushaLimits,
    /// `/v3/account/usage` is read at most this often (Lusha allows 5 per minute).
    pub usage_interval: Dur,
    /// After a 402 (no credits) the connector stops this long, then re-checks the balance.
    pub stop_on_no_credits: Dur,
    pub timeout: Dur,
    /// Prospecting searches polled for new leads (Lusha → GHL).
    pub leads: Vec<LeadSearch>,
    /// Pending Lusha signals (`/webhooks/lusha`) become GHL notes and tags this often.
    pub signals_interval: Dur,
}

impl Default for LushaSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            api_key: None,
            api_key_env: None,
            api_key_file: None,
            base_url: Url::parse("https://api.lusha.com").unwrap_or_else(|_| unreachable!("constant URL parses")),
            reveal: vec!["emails".to_owned(), "phones".to_owned()],
            waterfall: false,
            reenrich_after: Dur::secs(120 * 86_400),
            not_found_ttl: Dur::secs(30 * 86_400),
            daily_credit_cap: 500,
            credit_reserve: 100,
            max_credits_per_contact: 12,
            eu_policy: EuPolicy::Firmographics,
            overwrite: false,
            locations: Vec::new(),
            fields: LushaFields::default(),
            linkedin_field: None,
            tags: LushaTags::default(),
            note: false,
            batch_size: 100,
            max_attempts: 12,
            limits: LushaLimits::default(),
            usage_interval: Dur::secs(60),
            stop_on_no_credits: Dur::secs(1800),
            timeout: Dur::secs(30),
            leads: Vec::new(),
            signals_interval: Dur::secs(30),
        }
    }
}

/// What to do with EU contacts.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EuPolicy {
    /// Write everything Lusha returned.
    Full,
    /// Write firmographics (title, company, location) only, no emails or phones.
    #[default]
    Firmographics,
    /// Write nothing but the bookkeeping fields and the tag.
    Skip,
}

/// Targets in GHL: a standard contact field (`email`, `phone`, `city`, `state`, `country`,
/// `website`, …) or a custom field key (`contact.job_title`). Unset: not written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LushaFields {
    /// Best work email.
    pub email: Option<String>,
    /// First phone without do-not-call.
    pub phone: Option<String>,
    pub job_title: Option<String>,
    pub seniority: Option<String>,
    pub company: Option<String>,
    pub domain: Option<String>,
    pub country: Option<String>,
    pub state: Option<String>,
    pub city: Option<String>,
    pub linkedin: Option<String>,
    /// Bookkeeping: the Lusha person id (kept out of the contact hash).
    pub lusha_id: String,
    /// Bookkeeping: when it was enriched (kept out of the contact hash).
    pub enriched_at: String,
}

impl Default for LushaFields {
    fn default() -> Self {
        Self {
            email: Some("email".to_owned()),
            phone: Some("phone".to_owned()),
            job_title: None,
            seniority: None,
            company: None,
            domain: None,
            country: None,
            state: None,
            city: None,
            linkedin: None,
            lusha_id: "contact.lusha_id".to_owned(),
            enriched_at: "contact.lusha_enriched_at".to_owned(),
        }
    }
}

impl LushaFields {
    /// `(source name, target)` of every mapped (non-bookkeeping) field.
    pub fn mapped(&self) -> Vec<(&'static str, &str)> {
        [
            ("email", &self.email),
            ("phone", &self.phone),
            ("job_title", &self.job_title),
            ("seniority", &self.seniority),
            ("company", &self.company),
            ("domain", &self.domain),
            ("country", &self.country),
            ("state", &self.state),
            ("city", &self.city),
            ("linkedin", &self.linkedin),
        ]
        .into_iter()
        .filter_map(|(name, target)| target.as_deref().map(|t| (name, t)))
        .collect()
    }
}

/// Standard contact fields the connector may write (`PUT /contacts/:id`, reference/ghl.md §6.8).
pub const STANDARD_FIELDS: &[&str] =
    &["email", "phone", "city", "state", "country", "website", "address1", "postalCode"];

/// Tags added after an enrichment.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LushaTags {
    pub enriched: String,
    pub not_found: String,
    pub lead: String,
    /// Prefix of the tag a Lusha signal adds (`lusha:signal:promotion`).
    pub signal_prefix: String,
}

impl Default for LushaTags {
    fn default() -> Self {
        Self {
            enriched: "lusha:enriched".to_owned(),
            not_found: "lusha:not_found".to_owned(),
            lead: "lusha:lead".to_owned(),
            signal_prefix: "lusha:signal:".to_owned(),
        }
    }
}

/// Lusha's per-key request limits (your plan's numbers; reference/lusha.md §5).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LushaLimits {
    pub per_minute: u32,
    pub per_hour: u32,
    pub per_day: u32,
}

impl Default for LushaLimits {
    fn default() -> Self {
        Self { per_minute: 50, per_hour: 150, per_day: 1500 }
    }
}

/// One `[[connectors.lusha.leads]]`: a prospecting search whose new leads become GHL contacts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeadSearch {
    pub name: String,
    /// The GHL location the leads go to.
    pub location: String,
    /// V3 prospecting `filters` object (`{contacts:{include:{…}}, companies:{…}}`).
    #[serde(default)]
    pub filters: Option<toml::Value>,
    #[serde(default = "default_lead_interval")]
    pub interval: Dur,
    /// Leads imported per poll at most.
    #[serde(default = "default_max_leads")]
    pub max_per_poll: usize,
    /// Result pages (50 leads each) listed per poll at most; listing is free of credits but
    /// counts against Lusha's request limits. Leads beyond them are not seen: narrow the filters.
    #[serde(default = "default_max_pages")]
    pub max_pages: u64,
    /// A GHL task created on each imported lead (once per lead and location).
    #[serde(default)]
    pub task: Option<LeadTask>,
}

/// `[connectors.lusha.leads.task]`: the initial task of an imported lead. Templates take
/// `{firstName}`, `{lastName}`, `{jobTitle}`, `{company}`, `{email}`, `{phone}`, `{search}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeadTask {
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    /// Due this long after the import.
    #[serde(default = "default_task_due")]
    pub due_in: Dur,
    /// GHL user id to assign it to.
    #[serde(default)]
    pub assigned_to: Option<String>,
}

fn default_task_due() -> Dur {
    Dur::secs(86_400)
}

fn default_lead_interval() -> Dur {
    Dur::secs(3600)
}

fn default_max_leads() -> usize {
    100
}

fn default_max_pages() -> u64 {
    10
}

const REVEAL_KINDS: &[&str] = &["emails", "phones"];

impl LushaSettings {
    /// Custom field keys the write-back sets as bookkeeping (`lusha_id`, `lusha_enriched_at`),
    /// kept out of the contact hash.
    pub fn bookkeeping_field_keys(&self) -> Vec<String> {
        vec![self.fields.lusha_id.clone(), self.fields.enriched_at.clone()]
    }

    /// Checks `[connectors.lusha]` and resolves its API key (required while enabled).
    pub fn validate_section(&self, v: &mut Validation) {
        v.remote_url(&self.base_url, "connectors.lusha.base_url");
        let sources = (&self.api_key, &self.api_key_env, &self.api_key_file);
        v.secrets.lusha_api_key = v.secret("connectors.lusha.api_key", sources, self.enabled);
        v.problems.extend(validate(self));
    }
}

/// Semantic checks with key paths (`connectors.lusha.…`).
pub fn validate(settings: &LushaSettings) -> Vec<ConfigProblem> {
    let key = "connectors.lusha";
    let mut problems = Vec::new();
    let mut check = |ok: bool, field: &str, message: String| {
        if !ok {
            problems.push(ConfigProblem::new(format!("{key}.{field}"), message));
        }
    };
    for (i, kind) in settings.reveal.iter().enumerate() {
        check(
            REVEAL_KINDS.contains(&kind.as_str()),
            &format!("reveal[{i}]"),
            format!("unknown reveal kind {kind:?}; known: emails, phones"),
        );
    }
    check(!settings.reveal.is_empty(), "reveal", "must name at least one of emails, phones".into());
    check((1..=100).contains(&settings.batch_size), "batch_size", "must be between 1 and 100 (Lusha's maximum)".into());
    check(settings.max_attempts >= 1, "max_attempts", "must be at least 1".into());
    check(settings.daily_credit_cap >= 0, "daily_credit_cap", "must not be negative".into());
    check(settings.credit_reserve >= 0, "credit_reserve", "must not be negative".into());
    check(settings.max_credits_per_contact >= 1, "max_credits_per_contact", "must be at least 1".into());
    check(!settings.reenrich_after.get().is_zero(), "reenrich_after", "must be greater than zero".into());
    check(!settings.timeout.get().is_zero(), "timeout", "must be greater than zero".into());
    check(settings.limits.per_minute >= 1, "limits.per_minute", "must be at least 1".into());
    check(settings.limits.per_hour >= 1, "limits.per_hour", "must be at least 1".into());
    check(settings.limits.per_day >= 1, "limits.per_day", "must be at least 1".into());
    for (name, target) in settings.fields.mapped() {
        check(
            target.starts_with("contact.") || STANDARD_FIELDS.contains(&target),
            &format!("fields.{name}"),
            format!(
                "{target:?} is neither a custom field key (contact.…) nor a writable contact field ({})",
                STANDARD_FIELDS.join(", ")
            ),
        );
    }
    for (name, target) in [("lusha_id", &settings.fields.lusha_id), ("enriched_at", &settings.fields.enriched_at)] {
        check(
            target.starts_with("contact."),
            &format!("fields.{name}"),
            "must be a custom field key (contact.…)".into(),
        );
    }
    check(!settings.signals_interval.get().is_zero(), "signals_interval", "must be greater than zero".into());
    for (name, tag) in [
        ("enriched", &settings.tags.enriched),
        ("not_found", &settings.tags.not_found),
        ("lead", &settings.tags.lead),
        ("signal_prefix", &settings.tags.signal_prefix),
    ] {
        check(!tag.trim().is_empty(), &format!("tags.{name}"), "must not be empty".into());
    }
    for (i, search) in settings.leads.iter().enumerate() {
        check(!search.name.trim().is_empty(), &format!("leads[{i}].name"), "must not be empty".into());
        check(!search.location.trim().is_empty(), &format!("leads[{i}].location"), "must not be empty".into());
        check(!search.interval.get().is_zero(), &format!("leads[{i}].interval"), "must be greater than zero".into());
        check(search.max_per_poll >= 1, &format!("leads[{i}].max_per_poll"), "must be at least 1".into());
        check(search.max_pages >= 1, &format!("leads[{i}].max_pages"), "must be at least 1".into());
        let duplicate = settings.leads[..i].iter().any(|s| s.name == search.name);
        check(!duplicate, &format!("leads[{i}].name"), format!("{:?} is used by another search", search.name));
        if let Some(task) = &search.task {
            check(!task.title.trim().is_empty(), &format!("leads[{i}].task.title"), "must not be empty".into());
            for (field, template) in [("title", Some(&task.title)), ("body", task.body.as_ref())] {
                for problem in template.map(|t| validate_lead_template(t)).unwrap_or_default() {
                    check(false, &format!("leads[{i}].task.{field}"), problem);
                }
            }
        }
        if let Some(filters) = &search.filters {
            for problem in validate_filters(filters) {
                check(false, &format!("leads[{i}].filters"), problem);
            }
        }
    }
    problems
}

/// Placeholders a lead task template may use.
pub const LEAD_TEMPLATE_FIELDS: &[&str] = &["firstName", "lastName", "jobTitle", "company", "email", "phone", "search"];

fn validate_lead_template(template: &str) -> Vec<String> {
    use crate::connectors::mapping::{Piece, parse_template};
    match parse_template(template) {
        Ok(pieces) => pieces
            .into_iter()
            .filter_map(|piece| match piece {
                Piece::Field(name) if !LEAD_TEMPLATE_FIELDS.contains(&name.as_str()) => {
                    Some(format!("unknown placeholder {{{name}}}; known: {}", LEAD_TEMPLATE_FIELDS.join(", ")))
                }
                _ => None,
            })
            .collect(),
        Err(message) => vec![message],
    }
}

/// Prospecting filter names Lusha's V3 API knows (reference/lusha.md; the fake matches them).
const CONTACT_FILTERS: &[&str] =
    &["departments", "seniority", "jobTitles", "countries", "locations", "existingDataPoints"];
const COMPANY_FILTERS: &[&str] = &["domains", "names", "sizes", "revenues", "industries", "locations", "technologies"];

fn validate_filters(filters: &toml::Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(table) = filters.as_table() else {
        return vec!["must be a table ({contacts = {include = {…}}, companies = {…}})".into()];
    };
    for (side, value) in table {
        let known = match side.as_str() {
            "contacts" => CONTACT_FILTERS,
            "companies" => COMPANY_FILTERS,
            other => {
                problems.push(format!("unknown filter side {other:?}; known: contacts, companies"));
                continue;
            }
        };
        let Some(sections) = value.as_table() else {
            problems.push(format!("{side} must be a table"));
            continue;
        };
        for (section, fields) in sections {
            if section != "include" && section != "exclude" {
                problems.push(format!("{side}.{section}: expected include or exclude"));
                continue;
            }
            for name in fields.as_table().map(|t| t.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                if !known.contains(&name.as_str()) {
                    problems
                        .push(format!("{side}.{section}.{name} is not a Lusha filter; known: {}", known.join(", ")));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        assert!(validate(&LushaSettings::default()).is_empty());
        let bad: LushaSettings = toml::from_str(
            r#"
            reveal = ["emails", "faxes"]
            batch_size = 101
            fields = { job_title = "jobTitle", lusha_id = "lusha_id" }
            [[leads]]
            name = "cto"
            location = "L1"
            filters = { contacts = { include = { seniority = ["C-Level"], shoeSize = [42] } }, people = {} }
            "#,
        )
        .unwrap();
        let keys: Vec<String> = validate(&bad).into_iter().map(|p| p.key).collect();
        for expected in [
            "connectors.lusha.reveal[1]",
            "connectors.lusha.batch_size",
            "connectors.lusha.fields.job_title",
            "connectors.lusha.fields.lusha_id",
            "connectors.lusha.leads[0].filters",
        ] {
            assert!(keys.iter().any(|k| k == expected), "{expected} missing in {keys:?}");
        }
        assert!(toml::from_str::<LushaSettings>("unknown = 1").is_err());
    }

    #[test]
    fn the_documented_example_block_loads() {
        let example = include_str!("../../../config/ghl-sync.example.toml");
        let start = example.find("# [connectors.lusha]").unwrap();
        let end = example[start..].find("\n# [dispatch]").unwrap() + start;
        let text: String = example[start..end]
            .lines()
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .map(|line| if line.starts_with("api_key_env") { "api_key = \"k\"" } else { line })
            .map(|line| format!("{line}\n"))
            .collect();
        let config =
            crate::config::load_from_str(&text, crate::config::ConfigSource::InCode, std::collections::HashMap::new())
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let lusha = config.settings.connectors.lusha.unwrap();
        assert_eq!(lusha.fields.job_title.as_deref(), Some("contact.job_title"));
        assert_eq!(lusha.leads.len(), 1);
        assert!(config.secrets.lusha_api_key.is_some());
    }
}
