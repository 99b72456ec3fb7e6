//! `[rule_settings]` and `[[rules]]`: the TOML shape and its compilation into a [`RuleSet`]
//! (conditions compiled, triggers, actions, connectors, templates and fields checked against
//! the [`catalog`]), every problem with its key path.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::catalog::{self, RecordKind};
use super::expr::Condition;
use super::plan::{ActionSpec, Rule, RuleSet, Schedule};
use crate::connectors::mapping::{Piece, parse_template};

/// `[rule_settings]`: limits and permissions for every rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleOptions {
    /// A chain of rule-caused events is cut at this depth (the cut is reported and counted).
    pub max_depth: u32,
    /// `ghl.delete_contact` actions are refused at load unless this is true.
    pub allow_contact_delete: bool,
    /// Actions per event, all rules together; the rest are cut and counted.
    pub max_actions_per_event: usize,
}

impl Default for RuleOptions {
    fn default() -> Self {
        Self { max_depth: 3, allow_contact_delete: false, max_actions_per_event: 20 }
    }
}

/// One `[[rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// `[a-z0-9_-]{1,64}`, unique; the rule's actions go to connector `rule.<name>`.
    pub name: String,
    /// Trigger names from the catalog (at least one).
    pub on: Vec<String>,
    /// A CEL condition (absent: always).
    #[serde(default)]
    pub when: Option<String>,
    /// Location ids the rule applies to (empty: all).
    #[serde(default)]
    pub locations: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Required iff `on = ["schedule"]`.
    #[serde(default)]
    pub schedule: Option<ScheduleSettings>,
    pub actions: Vec<ActionSettings>,
}

fn yes() -> bool {
    true
}

/// `schedule = { at = "09:00", days = ["mon", …] }` (UTC; no days: every day).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    pub at: String,
    #[serde(default)]
    pub days: Vec<String>,
}

/// One `[[rules.actions]]` entry: `do` plus the parameters the catalog lists for it.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ActionSettings {
    #[serde(rename = "do")]
    pub action: String,
    #[serde(default)]
    pub connector: Option<String>,
    #[serde(default)]
    pub fields: Option<Map<String, Value>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub due: Option<String>,
    #[serde(default)]
    pub assigned_to: Option<String>,
    #[serde(default)]
    pub contact_id: Option<String>,
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub note_id: Option<String>,
    #[serde(default)]
    pub business_id: Option<String>,
}

impl ActionSettings {
    /// The parameters that are set, by name.
    fn given(&self) -> Vec<&'static str> {
        let flags = [
            ("connector", self.connector.is_some()),
            ("fields", self.fields.is_some()),
            ("tags", self.tags.is_some()),
            ("title", self.title.is_some()),
            ("body", self.body.is_some()),
            ("due", self.due.is_some()),
            ("assigned_to", self.assigned_to.is_some()),
            ("contact_id", self.contact_id.is_some()),
            ("task_id", self.task_id.is_some()),
            ("note_id", self.note_id.is_some()),
            ("business_id", self.business_id.is_some()),
        ];
        flags.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect()
    }

    /// The template parameters that are set (name, template).
    fn templates(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for (name, value) in [
            ("title", &self.title),
            ("body", &self.body),
            ("assigned_to", &self.assigned_to),
            ("contact_id", &self.contact_id),
            ("task_id", &self.task_id),
            ("note_id", &self.note_id),
            ("business_id", &self.business_id),
        ] {
            if let Some(value) = value {
                out.push((name.to_owned(), value.as_str()));
            }
        }
        if let Some(due) = &self.due
            && parse_relative(due).is_none()
        {
            out.push(("due".to_owned(), due.as_str()));
        }
        for (i, tag) in self.tags.iter().flatten().enumerate() {
            out.push((format!("tags[{i}]"), tag.as_str()));
        }
        if let Some(fields) = &self.fields {
            for (name, value) in fields {
                collect_strings(value, &format!("fields.{name}"), &mut out);
            }
        }
        out
    }
}

fn collect_strings<'a>(value: &'a Value, key: &str, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::String(s) => out.push((key.to_owned(), s.as_str())),
        Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, v)| collect_strings(v, &format!("{key}[{i}]"), out));
        }
        Value::Object(map) => map.iter().for_each(|(k, v)| collect_strings(v, &format!("{key}.{k}"), out)),
        _ => {}
    }
}

/// `in 30m` / `in 2h` / `in 1d` as milliseconds.
pub(crate) fn parse_relative(text: &str) -> Option<i64> {
    let rest = text.trim().strip_prefix("in ")?.trim();
    let (number, unit) = rest.split_at(rest.len().checked_sub(1)?);
    let number: i64 = number.trim().parse().ok().filter(|n| *n > 0 && *n <= 10_000)?;
    let unit_ms = match unit {
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    Some(number * unit_ms)
}

/// `CreateContactDto` fields a rule may set (reference/ghl.md §6.1; `locationId` is the event's).
pub const CREATE_CONTACT_FIELDS: &[&str] = &[
    "firstName",
    "lastName",
    "name",
    "email",
    "gender",
    "phone",
    "address1",
    "city",
    "state",
    "postalCode",
    "website",
    "timezone",
    "dnd",
    "dndSettings",
    "inboundDndSettings",
    "tags",
    "customFields",
    "source",
    "dateOfBirth",
    "country",
    "companyName",
    "assignedTo",
];

/// `UpdateContactDto` fields a rule may set (`crate::ghl::write::UpdateContact`: no `tags`,
/// `gender`, `companyName`).
pub const UPDATE_CONTACT_FIELDS: &[&str] = &[
    "firstName",
    "lastName",
    "name",
    "email",
    "phone",
    "address1",
    "city",
    "state",
    "postalCode",
    "website",
    "timezone",
    "dnd",
    "dndSettings",
    "inboundDndSettings",
    "customFields",
    "source",
    "dateOfBirth",
    "country",
    "assignedTo",
];

const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Compiles the rules. `connectors` are the connector ids the config defines (`webhook.<name>`,
/// `lusha`, `lucky_orange`). Returns the set (the rules that compiled) and every problem as
/// (key path, message); the set is only to be used when there are none.
pub fn compile(
    rules: &[RuleSettings],
    options: &RuleOptions,
    connectors: &BTreeSet<String>,
) -> (RuleSet, Vec<(String, String)>) {
    let mut problems = Vec::new();
    if options.max_depth == 0 {
        problems.push(("rule_settings.max_depth".to_owned(), "must be at least 1".to_owned()));
    }
    if options.max_actions_per_event == 0 {
        problems.push(("rule_settings.max_actions_per_event".to_owned(), "must be at least 1".to_owned()));
    }
    let mut names = BTreeSet::new();
    let mut compiled = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let key = format!("rules[{i}]");
        let before = problems.len();
        let mut problem = |path: String, message: String| problems.push((path, message));
        if !name_is_valid(&rule.name) {
            problem(format!("{key}.name"), format!("{:?} must match [a-z0-9_-]{{1,64}}", rule.name));
        } else if !names.insert(rule.name.clone()) {
            problem(format!("{key}.name"), format!("rule {:?} is defined twice", rule.name));
        }
        // Triggers.
        if rule.on.is_empty() {
            problem(format!("{key}.on"), "must name at least one trigger".to_owned());
        }
        let mut kinds: Vec<RecordKind> = Vec::new();
        let mut data_fields: BTreeSet<&str> = BTreeSet::new();
        for (j, trigger) in rule.on.iter().enumerate() {
            match catalog::trigger(trigger) {
                Some(doc) => {
                    if !kinds.contains(&doc.record) {
                        kinds.push(doc.record);
                    }
                    data_fields.extend(doc.fields.iter().map(|(name, _)| *name));
                }
                None => problem(format!("{key}.on[{j}]"), format!("unknown trigger {trigger:?}; {}", trigger_list())),
            }
        }
        let scheduled = rule.on.iter().any(|t| t == "schedule");
        let schedule = match (&rule.schedule, scheduled) {
            (Some(_), true) if rule.on.len() > 1 => {
                problem(format!("{key}.on"), "\"schedule\" cannot be mixed with other triggers".to_owned());
                None
            }
            (Some(settings), true) => match Schedule::parse(settings) {
                Ok(schedule) => Some(schedule),
                Err((field, message)) => {
                    problem(format!("{key}.schedule.{field}"), message);
                    None
                }
            },
            (None, true) => {
                problem(
                    format!("{key}.schedule"),
                    "missing: on = [\"schedule\"] needs schedule = { at = \"HH:MM\", days = [...] }".to_owned(),
                );
                None
            }
            (Some(_), false) => {
                problem(format!("{key}.schedule"), "only used with on = [\"schedule\"]".to_owned());
                None
            }
            (None, false) => None,
        };
        // Condition.
        let condition = match &rule.when {
            Some(source) => match Condition::compile(source) {
                Ok(condition) => Some(condition),
                Err(message) => {
                    problem(format!("{key}.when"), message);
                    None
                }
            },
            None => None,
        };
        for (j, location) in rule.locations.iter().enumerate() {
            if location.trim().is_empty() {
                problem(format!("{key}.locations[{j}]"), "must not be empty".to_owned());
            }
        }
        // Actions.
        if rule.actions.is_empty() {
            problem(format!("{key}.actions"), "must have at least one [[rules.actions]]".to_owned());
        }
        let scope = Scope { kinds: &kinds, data_fields: &data_fields };
        let mut actions = Vec::new();
        for (k, action) in rule.actions.iter().enumerate() {
            let action_key = format!("{key}.actions[{k}]");
            let found = check_action(action, options, connectors, &scope);
            if found.is_empty() {
                if let Some(doc) = catalog::action(&action.action) {
                    actions.push(ActionSpec { name: doc.name, settings: action.clone() });
                }
            } else {
                for (suffix, message) in found {
                    problem(format!("{action_key}{suffix}"), message);
                }
            }
        }
        if problems.len() == before {
            compiled.push(Rule {
                name: rule.name.clone(),
                on: rule.on.clone(),
                condition,
                locations: rule.locations.clone(),
                enabled: rule.enabled,
                schedule,
                actions,
            });
        }
    }
    (RuleSet::new(compiled, options.clone()), problems)
}

fn name_is_valid(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn trigger_list() -> String {
    format!("known: {}", catalog::TRIGGERS.iter().map(|t| t.name).collect::<Vec<_>>().join(", "))
}

/// What the templates of one rule may name.
struct Scope<'a> {
    kinds: &'a [RecordKind],
    data_fields: &'a BTreeSet<&'a str>,
}

/// The template roots and the `event.` names.
pub const TEMPLATE_ROOTS: &[&str] = &["contact", "old", "new", "record", "data", "event"];
pub const EVENT_FIELDS: &[&str] = &["trigger", "location_id", "entity_id", "contact_id", "at"];

/// Problems of one action as (key suffix such as `.connector`, message).
fn check_action(
    action: &ActionSettings,
    options: &RuleOptions,
    connectors: &BTreeSet<String>,
    scope: &Scope<'_>,
) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let Some(doc) = catalog::action(&action.action) else {
        let known: Vec<&str> = catalog::ACTIONS.iter().map(|a| a.name).collect();
        found.push((".do".to_owned(), format!("unknown action {:?}; known: {}", action.action, known.join(", "))));
        return found;
    };
    let given = action.given();
    for name in &given {
        if !doc.params.iter().any(|p| p.name == *name) {
            let takes: Vec<&str> = doc.params.iter().map(|p| p.name).collect();
            found
                .push((format!(".{name}"), format!("not a parameter of {}; it takes: {}", doc.name, takes.join(", "))));
        }
    }
    for param in doc.params.iter().filter(|p| p.required) {
        if !given.contains(&param.name) {
            found.push((format!(".{}", param.name), format!("missing: {} needs `{}`", doc.name, param.name)));
        }
    }
    match doc.name {
        "deliver" => {
            if let Some(connector) = &action.connector
                && !connectors.contains(connector)
            {
                let configured: Vec<&str> = connectors.iter().map(String::as_str).collect();
                found.push((
                    ".connector".to_owned(),
                    format!(
                        "unknown connector {connector:?}; configured: {}",
                        if configured.is_empty() { "none".to_owned() } else { configured.join(", ") }
                    ),
                ));
            }
        }
        "lusha.enrich" if !connectors.contains("lusha") => {
            found.push((".do".to_owned(), "lusha.enrich needs [connectors.lusha]".to_owned()));
        }
        "ghl.delete_contact" if !options.allow_contact_delete => found.push((
            ".do".to_owned(),
            "ghl.delete_contact is refused unless [rule_settings] allow_contact_delete = true".to_owned(),
        )),
        "ghl.create_contact" | "ghl.upsert_contact" | "ghl.update_contact" => {
            let allowed = if doc.name == "ghl.update_contact" { UPDATE_CONTACT_FIELDS } else { CREATE_CONTACT_FIELDS };
            for name in action.fields.iter().flat_map(|f| f.keys()) {
                if !allowed.contains(&name.as_str()) {
                    found.push((
                        format!(".fields.{name}"),
                        format!("unknown field {name:?} for {}; allowed: {}", doc.name, allowed.join(", ")),
                    ));
                }
            }
            if action.fields.as_ref().is_some_and(Map::is_empty) {
                found.push((".fields".to_owned(), "must set at least one field".to_owned()));
            }
        }
        "ghl.add_tags" | "ghl.remove_tags" if action.tags.as_ref().is_some_and(Vec::is_empty) => {
            found.push((".tags".to_owned(), "must name at least one tag".to_owned()));
        }
        "ghl.update_task"
            if action.title.is_none()
                && action.body.is_none()
                && action.due.is_none()
                && action.assigned_to.is_none() =>
        {
            found.push((".title".to_owned(), "set at least one of title, body, due, assigned_to".to_owned()));
        }
        _ => {}
    }
    if let Some(due) = &action.due
        && due.trim_start().starts_with("in ")
        && parse_relative(due).is_none()
    {
        found.push((".due".to_owned(), "write `in <n>m`, `in <n>h` or `in <n>d` (n from 1 to 10000)".to_owned()));
    }
    for (name, template) in action.templates() {
        for message in check_template(template, scope) {
            found.push((format!(".{name}"), message));
        }
    }
    found
}

/// Problems of one template: syntax, roots, and fields unknown for the rule's triggers.
fn check_template(template: &str, scope: &Scope<'_>) -> Vec<String> {
    let pieces = match parse_template(template) {
        Ok(pieces) => pieces,
        Err(message) => return vec![message],
    };
    let mut found = Vec::new();
    for piece in pieces {
        let Piece::Field(path) = piece else { continue };
        let mut parts = path.splitn(3, '.');
        let root = parts.next().unwrap_or("");
        let field = parts.next();
        if !TEMPLATE_ROOTS.contains(&root) {
            found.push(format!(
                "unknown template root in {{{path}}}: write one of {}",
                TEMPLATE_ROOTS.iter().map(|r| format!("{r}.")).collect::<Vec<_>>().join(", ")
            ));
            continue;
        }
        let Some(field) = field.filter(|f| !f.is_empty()) else {
            found.push(format!("{{{path}}} names no field: write {root}.<field>"));
            continue;
        };
        let known: Vec<&str> = match root {
            "event" => EVENT_FIELDS.to_vec(),
            "data" => scope.data_fields.iter().copied().collect(),
            "contact" => catalog::contact_fields(),
            _ => scope.kinds.iter().flat_map(|kind| kind.fields()).collect(),
        };
        if !known.contains(&field) {
            let whose = match root {
                "event" => "an event".to_owned(),
                "data" => "the data of this rule's triggers".to_owned(),
                "contact" => "a contact".to_owned(),
                _ => format!("a {} record", scope.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" or ")),
            };
            let hint = if known.is_empty() { " (it has none)".to_owned() } else { String::new() };
            found.push(format!("unknown field {field:?} in {{{path}}}: not a field of {whose}{hint}"));
        }
    }
    found
}

impl Schedule {
    /// Parses `{ at, days }`; the error is (field, message).
    fn parse(settings: &ScheduleSettings) -> Result<Self, (&'static str, String)> {
        let at = crate::export::parse_time_of_day(&settings.at)
            .ok_or(("at", format!("{:?} is not a UTC time of day as HH:MM", settings.at)))?;
        let mut days = [settings.days.is_empty(); 7];
        for day in &settings.days {
            let index = DAYS
                .iter()
                .position(|d| d.eq_ignore_ascii_case(day))
                .ok_or(("days", format!("{day:?} is not a day; write {}", DAYS.join(", "))))?;
            days[index] = true;
        }
        let minute_of_day = u32::from(at.hour()) * 60 + u32::from(at.minute());
        Ok(Schedule { minute_of_day, days })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connectors() -> BTreeSet<String> {
        ["webhook.sales", "lusha"].iter().map(|s| (*s).to_owned()).collect()
    }

    fn compile_toml(text: &str) -> (RuleSet, Vec<(String, String)>) {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            rule_settings: RuleOptions,
            rules: Vec<RuleSettings>,
        }
        let file: File = toml::from_str(text).unwrap();
        compile(&file.rules, &file.rule_settings, &connectors())
    }

    fn problems(text: &str) -> Vec<(String, String)> {
        compile_toml(text).1
    }

    const GOOD: &str = r#"
[[rules]]
name = "enrich-new-leads"
on = ["contact.created"]
when = "'lead' in new.tags"
[[rules.actions]]
do = "lusha.enrich"
[[rules.actions]]
do = "deliver"
connector = "webhook.sales"
[[rules.actions]]
do = "ghl.create_task"
title = "Call {contact.firstName} {new.lastName}"
due = "in 1d"
[[rules.actions]]
do = "ghl.update_contact"
fields = { source = "rule {event.trigger}", customFields = [{ id = "abc", field_value = "{contact.customFields.abc}" }] }
"#;

    #[test]
    fn a_good_rule_compiles() {
        let (set, problems) = compile_toml(GOOD);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(set.rules().len(), 1);
        assert_eq!(set.rules()[0].actions.len(), 4);
    }

    #[test]
    fn each_mistake_is_reported_with_its_key_path() {
        let cases: &[(&str, &str, &str)] = &[
            ("name = \"Bad Name\"", "rules[0].name", "must match"),
            ("on = [\"contact.create\"]", "rules[0].on[0]", "unknown trigger"),
            ("on = []", "rules[0].on", "at least one"),
            ("when = \"new.tags &&\"", "rules[0].when", "line 1, column"),
            ("when = \"person.x\"", "rules[0].when", "unknown variable `person`"),
            (
                "do = \"deliver\"\nconnector = \"webhook.x\"",
                "rules[0].actions[0].connector",
                "configured: lusha, webhook.sales",
            ),
            ("do = \"deliver\"", "rules[0].actions[0].connector", "missing"),
            ("do = \"ghl.fly\"", "rules[0].actions[0].do", "unknown action"),
            ("do = \"ghl.delete_contact\"", "rules[0].actions[0].do", "allow_contact_delete"),
            ("do = \"ghl.add_tags\"\ntags = [\"{firstName}\"]", "rules[0].actions[0].tags[0]", "unknown template root"),
            (
                "do = \"ghl.add_tags\"\ntags = [\"{new.favouriteColour}\"]",
                "rules[0].actions[0].tags[0]",
                "unknown field",
            ),
            ("do = \"ghl.add_tags\"\ntags = [\"{data.nothing}\"]", "rules[0].actions[0].tags[0]", "unknown field"),
            ("do = \"ghl.add_tags\"\ntags = [\"{event.when}\"]", "rules[0].actions[0].tags[0]", "unknown field"),
            ("do = \"ghl.add_tags\"\ntags = [\"{new.x\"]", "rules[0].actions[0].tags[0]", "unclosed"),
            ("do = \"ghl.add_tags\"\ntags = []", "rules[0].actions[0].tags", "at least one"),
            ("do = \"ghl.add_tags\"\ntags = [\"a\"]\ntitle = \"x\"", "rules[0].actions[0].title", "not a parameter"),
            (
                "do = \"ghl.update_contact\"\nfields = { tags = \"a\" }",
                "rules[0].actions[0].fields.tags",
                "unknown field",
            ),
            ("do = \"ghl.create_task\"\ntitle = \"t\"\ndue = \"in 3w\"", "rules[0].actions[0].due", "in <n>m"),
            ("do = \"ghl.create_task\"\ntitle = \"t\"", "rules[0].actions[0].due", "missing"),
            ("on = [\"schedule\"]", "rules[0].schedule", "missing"),
            ("schedule = { at = \"09:00\" }", "rules[0].schedule", "only used with"),
            (
                "on = [\"schedule\", \"contact.created\"]\nschedule = { at = \"09:00\" }",
                "rules[0].on",
                "cannot be mixed",
            ),
            ("on = [\"schedule\"]\nschedule = { at = \"9am\" }", "rules[0].schedule.at", "HH:MM"),
            (
                "on = [\"schedule\"]\nschedule = { at = \"09:00\", days = [\"monday\"] }",
                "rules[0].schedule.days",
                "not a day",
            ),
        ];
        for (line, key, message) in cases {
            // A line names either a rule key or an action; fill in the rest.
            let rule_line = if line.starts_with("do =") { "" } else { line };
            let action = if line.starts_with("do =") { line } else { "do = \"ghl.add_tags\"\ntags = [\"x\"]" };
            let name = if line.starts_with("name") { "" } else { "name = \"r\"\n" };
            let on = if line.starts_with("on") { "" } else { "on = [\"contact.created\"]\n" };
            let text = format!("[[rules]]\n{name}{on}{rule_line}\n[[rules.actions]]\n{action}\n");
            let found = problems(&text);
            assert!(
                found.iter().any(|(k, m)| k == key && m.contains(message)),
                "{line}: expected {key}: …{message}…, got {found:?}"
            );
        }
    }

    #[test]
    fn field_names_depend_on_the_triggers_record() {
        let task = "[[rules]]\nname = \"r\"\non = [\"task.completed\"]\n[[rules.actions]]\ndo = \"ghl.create_note\"\nbody = \"{new.title} {new.dueDate} {contact.email}\"\n";
        assert!(problems(task).is_empty(), "{:?}", problems(task));
        let wrong = task.replace("{new.title}", "{new.firstName}");
        assert!(problems(&wrong).iter().any(|(k, _)| k == "rules[0].actions[0].body"));
        let business = "[[rules]]\nname = \"r\"\non = [\"business.linked\"]\n[[rules.actions]]\ndo = \"ghl.link_business\"\nbusiness_id = \"{data.business_id}\"\n";
        assert!(problems(business).is_empty(), "{:?}", problems(business));
    }

    #[test]
    fn lusha_enrich_needs_the_lusha_connector_and_names_are_unique() {
        let text = "[[rules]]\nname = \"r\"\non = [\"contact.created\"]\n[[rules.actions]]\ndo = \"lusha.enrich\"\n";
        let (_, found) =
            compile(&toml::from_str::<File>(text).unwrap().rules, &RuleOptions::default(), &BTreeSet::new());
        assert!(found.iter().any(|(k, m)| k == "rules[0].actions[0].do" && m.contains("[connectors.lusha]")));
        let twice = format!("{text}{text}");
        assert!(problems(&twice).iter().any(|(k, m)| k == "rules[1].name" && m.contains("twice")));

        #[derive(Deserialize)]
        struct File {
            rules: Vec<RuleSettings>,
        }
    }

    #[test]
    fn contact_delete_is_allowed_when_configured() {
        let text = "[rule_settings]\nallow_contact_delete = true\n[[rules]]\nname = \"r\"\non = [\"tag.added\"]\nwhen = \"'spam' in tags_added\"\n[[rules.actions]]\ndo = \"ghl.delete_contact\"\n";
        assert!(problems(text).is_empty(), "{:?}", problems(text));
    }

    #[test]
    fn relative_due_dates_parse() {
        assert_eq!(parse_relative("in 30m"), Some(1_800_000));
        assert_eq!(parse_relative("in 2h"), Some(7_200_000));
        assert_eq!(parse_relative(" in 1d "), Some(86_400_000));
        assert_eq!(parse_relative("in 0d"), None);
        assert_eq!(parse_relative("in d"), None);
        assert_eq!(parse_relative("1d"), None);
    }
}
