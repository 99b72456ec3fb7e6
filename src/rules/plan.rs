//! Planning (pure): which rules an event fires and the concrete [`Action`]s they take, each
//! with its idempotency key (rule, event, action index), so a retry plans the same keys.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::config::{ActionSettings, RuleOptions, parse_relative};
use super::expr::Condition;
use super::{Action, PlannedAction, RuleEvent};
use crate::connectors::mapping::render;
use crate::domain::EntityKind;
use crate::domain::normalize::{format_timestamp_ms, parse_timestamp_ms};

/// The compiled `[[rules]]`: built once at config load, shared as `Arc<RuleSet>`.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    options: RuleOptions,
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub on: Vec<String>,
    pub condition: Option<Condition>,
    /// Empty: every location.
    pub locations: Vec<String>,
    pub enabled: bool,
    pub schedule: Option<Schedule>,
    pub actions: Vec<ActionSpec>,
}

impl Rule {
    /// The condition as configured.
    pub fn when(&self) -> Option<&str> {
        self.condition.as_ref().map(Condition::source)
    }

    /// One line per action, for listings: `ghl.create_task`, `deliver → webhook.sales`.
    pub fn actions_summary(&self) -> Vec<String> {
        self.actions
            .iter()
            .map(|a| match &a.settings.connector {
                Some(connector) => format!("{} → {connector}", a.name),
                None => a.name.to_owned(),
            })
            .collect()
    }
}

/// One validated action of a rule: its catalog name and its (template) parameters.
#[derive(Debug, Clone)]
pub struct ActionSpec {
    pub name: &'static str,
    pub settings: ActionSettings,
}

/// A rule's schedule: a UTC time of day on some weekdays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Minutes after midnight UTC.
    pub(crate) minute_of_day: u32,
    /// Indexed by days since Sunday.
    pub(crate) days: [bool; 7],
}

const DAY_MS: i64 = 86_400_000;

impl Schedule {
    /// The newest slot at or before `now_ms` (ms since the epoch), `None` when no day is
    /// allowed (cannot happen for a parsed schedule) or time is out of range.
    pub fn last_slot_at_or_before(&self, now_ms: i64) -> Option<i64> {
        let today = now_ms.div_euclid(DAY_MS);
        (0..=7).map(|back| today - back).find_map(|day| {
            // 1970-01-01 was a Thursday (4 days after Sunday).
            let weekday = usize::try_from((day + 4).rem_euclid(7)).ok()?;
            let slot = day.checked_mul(DAY_MS)?.checked_add(i64::from(self.minute_of_day) * 60_000)?;
            (self.days[weekday] && slot <= now_ms).then_some(slot)
        })
    }
}

/// What a rule set decided for one event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<PlannedAction>,
    /// Rules whose condition held (their actions are in `actions`, unless over the limit).
    pub fired: Vec<String>,
    /// Rules not run: the event's chain reached `max_depth`.
    pub cut: Vec<String>,
    /// Rules not run: the event was caused by the rule's own action.
    pub skipped_self: Vec<String>,
    /// Rules whose actions were dropped by `max_actions_per_event` (rule, actions dropped).
    pub over_limit: Vec<(String, usize)>,
    /// (rule, message): a condition that failed or was not a bool, an action that rendered
    /// without a required value. Messages name fields, never values.
    pub errors: Vec<(String, String)>,
}

/// A rule as listed by `ghl-sync rules list`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSummary {
    pub name: String,
    pub on: Vec<String>,
    pub when: Option<String>,
    pub locations: Vec<String>,
    pub enabled: bool,
    pub actions: Vec<String>,
}

impl RuleSet {
    pub(crate) fn new(rules: Vec<Rule>, options: RuleOptions) -> Self {
        Self { rules, options }
    }

    /// No rules configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The compiled rules, in config order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules for listing.
    pub fn summaries(&self) -> Vec<RuleSummary> {
        self.rules
            .iter()
            .map(|r| RuleSummary {
                name: r.name.clone(),
                on: r.on.clone(),
                when: r.when().map(str::to_owned),
                locations: r.locations.clone(),
                enabled: r.enabled,
                actions: r.actions_summary(),
            })
            .collect()
    }

    pub fn options(&self) -> &RuleOptions {
        &self.options
    }

    /// Every trigger an enabled rule uses (the sync can skip events no rule listens to).
    pub fn triggers(&self) -> BTreeSet<String> {
        self.rules.iter().filter(|r| r.enabled).flat_map(|r| r.on.iter().cloned()).collect()
    }

    /// The enabled scheduled rules: (name, schedule).
    pub fn schedules(&self) -> Vec<(&str, Schedule)> {
        self.rules.iter().filter(|r| r.enabled).filter_map(|r| Some((r.name.as_str(), r.schedule?))).collect()
    }

    /// Evaluates every rule against `event` (pure; `now_ms` is the condition's `now`).
    /// A `schedule` event with `data.rule` only runs that rule.
    pub fn plan(&self, event: &RuleEvent, now_ms: i64) -> Plan {
        let mut plan = Plan::default();
        let depth = event.origin.as_ref().map_or(0, |o| o.depth);
        let view = template_view(event);
        let scheduled_rule = event.data.get("rule").and_then(Value::as_str);
        for rule in &self.rules {
            if !rule.enabled || !rule.on.contains(&event.trigger) {
                continue;
            }
            if event.trigger == "schedule" && scheduled_rule.is_some_and(|name| name != rule.name) {
                continue;
            }
            if !rule.locations.is_empty() && !rule.locations.contains(&event.location_id) {
                continue;
            }
            if event.origin.as_ref().is_some_and(|o| o.rule == rule.name) {
                plan.skipped_self.push(rule.name.clone());
                continue;
            }
            if depth >= self.options.max_depth {
                plan.cut.push(rule.name.clone());
                continue;
            }
            if let Some(condition) = &rule.condition {
                match condition.evaluate(event, now_ms) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(message) => {
                        plan.errors.push((rule.name.clone(), format!("when: {message}")));
                        continue;
                    }
                }
            }
            plan.fired.push(rule.name.clone());
            let mut dropped = 0;
            for (index, spec) in rule.actions.iter().enumerate() {
                match render_action(spec, event, &view) {
                    Ok(action) => {
                        if plan.actions.len() >= self.options.max_actions_per_event {
                            dropped += 1;
                            continue;
                        }
                        plan.actions.push(planned(rule, index, event, depth, action));
                    }
                    Err(message) => {
                        plan.errors.push((rule.name.clone(), format!("actions[{index}] ({}): {message}", spec.name)))
                    }
                }
            }
            if dropped > 0 {
                plan.over_limit.push((rule.name.clone(), dropped));
            }
        }
        plan
    }
}

fn planned(rule: &Rule, index: usize, event: &RuleEvent, depth: u32, action: Action) -> PlannedAction {
    let contact_id = action_contact(&action).map(str::to_owned).or_else(|| event.contact_id.clone());
    PlannedAction {
        rule: rule.name.clone(),
        index,
        key: crate::writeback::key(&["rule", &rule.name, &event.key, &index.to_string()]),
        event_key: event.key.clone(),
        trigger: event.trigger.clone(),
        location_id: event.location_id.clone(),
        contact_id,
        depth: depth + 1,
        action,
        entity: event.entity,
        entity_id: event.entity_id.clone(),
        record: event.new.clone().or_else(|| event.old.clone()),
    }
}

fn action_contact(action: &Action) -> Option<&str> {
    match action {
        Action::Deliver { .. } | Action::CreateContact { .. } | Action::UpsertContact { .. } => None,
        Action::LushaEnrich { contact_id }
        | Action::UpdateContact { contact_id, .. }
        | Action::DeleteContact { contact_id }
        | Action::AddTags { contact_id, .. }
        | Action::RemoveTags { contact_id, .. }
        | Action::CreateTask { contact_id, .. }
        | Action::UpdateTask { contact_id, .. }
        | Action::CompleteTask { contact_id, .. }
        | Action::DeleteTask { contact_id, .. }
        | Action::CreateNote { contact_id, .. }
        | Action::UpdateNote { contact_id, .. }
        | Action::DeleteNote { contact_id, .. }
        | Action::LinkBusiness { contact_id, .. } => Some(contact_id),
    }
}

/// The event as templates see it: `{contact, old, new, record, data, event: {…}}`.
fn template_view(event: &RuleEvent) -> Value {
    let mut view = Map::new();
    let mut put = |name: &str, value: Option<&Value>| {
        if let Some(value) = value {
            view.insert(name.to_owned(), value.clone());
        }
    };
    put("contact", event.contact.as_ref());
    put("old", event.old.as_ref());
    put("new", event.new.as_ref());
    put("record", event.new.as_ref().or(event.old.as_ref()));
    view.insert("data".to_owned(), Value::Object(event.data.clone()));
    let mut meta = Map::new();
    meta.insert("trigger".to_owned(), Value::from(event.trigger.as_str()));
    meta.insert("location_id".to_owned(), Value::from(event.location_id.as_str()));
    if let Some(id) = &event.entity_id {
        meta.insert("entity_id".to_owned(), Value::from(id.as_str()));
    }
    if let Some(id) = &event.contact_id {
        meta.insert("contact_id".to_owned(), Value::from(id.as_str()));
    }
    meta.insert("at".to_owned(), Value::from(format_timestamp_ms(event.at_ms)));
    view.insert("event".to_owned(), Value::Object(meta));
    Value::Object(view)
}

/// A dotted path in the view; `customFields.<id or key>` finds the entry by `id`, `key` or
/// `fieldKey` and gives its `value`.
fn lookup(view: &Value, path: &str) -> Option<Value> {
    let mut current = view;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        current = match current {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => {
                if let Ok(index) = part.parse::<usize>() {
                    items.get(index)?
                } else {
                    let entry = items.iter().find(|item| {
                        ["id", "key", "fieldKey"]
                            .iter()
                            .any(|k| item.get(k).and_then(Value::as_str).is_some_and(|v| v == part))
                    })?;
                    // `customFields.<id>` means the value unless the path goes on.
                    if parts.peek().is_none() { entry.get("value").or(entry.get("field_value"))? } else { entry }
                }
            }
            _ => return None,
        };
    }
    (!current.is_null()).then(|| current.clone())
}

fn text(template: &str, view: &Value) -> String {
    render(template, |path| lookup(view, path))
}

fn optional(template: Option<&String>, view: &Value) -> Option<String> {
    template.map(|t| text(t, view)).filter(|s| !s.is_empty())
}

/// Renders every string inside a `fields` value as a template.
fn render_value(value: &Value, view: &Value) -> Value {
    match value {
        Value::String(template) => {
            // A template that is exactly one placeholder keeps the value's type (numbers, lists).
            let trimmed = template.trim();
            if let Some(path) = trimmed.strip_prefix('{').and_then(|s| s.strip_suffix('}'))
                && !path.contains(['{', '}'])
            {
                return lookup(view, path.trim()).unwrap_or(Value::Null);
            }
            Value::String(text(template, view))
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render_value(v, view)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), render_value(v, view))).collect()),
        other => other.clone(),
    }
}

fn render_fields(fields: Option<&Map<String, Value>>, view: &Value) -> Result<Map<String, Value>, String> {
    let rendered: Map<String, Value> = fields
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), render_value(v, view)))
        .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
        .collect();
    if rendered.is_empty() {
        return Err("every field rendered empty".to_owned());
    }
    Ok(rendered)
}

/// The rendered contact id (`contact_id` param, else the event's contact), or an error.
fn contact(settings: &ActionSettings, event: &RuleEvent, view: &Value) -> Result<String, String> {
    match &settings.contact_id {
        Some(template) => Some(text(template, view)).filter(|s| !s.is_empty()),
        None => event.contact_id.clone().filter(|s| !s.is_empty()),
    }
    .ok_or_else(|| "no contact id (the event has no contact; set contact_id)".to_owned())
}

/// The rendered task/note id (param, else the event's entity when it is of `kind`).
fn child_id(
    template: Option<&String>,
    kind: EntityKind,
    event: &RuleEvent,
    view: &Value,
    name: &str,
) -> Result<String, String> {
    match template {
        Some(template) => Some(text(template, view)).filter(|s| !s.is_empty()),
        None if event.entity == Some(kind) => event.entity_id.clone().filter(|s| !s.is_empty()),
        None => None,
    }
    .ok_or_else(|| format!("no {name} (the event is not about a {}; set {name})", kind.as_str()))
}

fn due(template: &str, event: &RuleEvent, view: &Value) -> Result<String, String> {
    if let Some(offset) = parse_relative(template) {
        return Ok(format_timestamp_ms(event.at_ms.saturating_add(offset)));
    }
    let rendered = text(template, view);
    parse_timestamp_ms(&rendered)
        .map(format_timestamp_ms)
        .ok_or_else(|| "due did not render an RFC 3339 time".to_owned())
}

fn tags(settings: &ActionSettings, view: &Value) -> Result<Vec<String>, String> {
    let mut tags: Vec<String> =
        settings.tags.iter().flatten().map(|t| text(t, view)).filter(|t| !t.is_empty()).collect();
    tags.dedup();
    if tags.is_empty() {
        return Err("every tag rendered empty".to_owned());
    }
    Ok(tags)
}

/// One action with its templates rendered.
fn render_action(spec: &ActionSpec, event: &RuleEvent, view: &Value) -> Result<Action, String> {
    let s = &spec.settings;
    Ok(match spec.name {
        "deliver" => Action::Deliver { connector: s.connector.clone().unwrap_or_default() },
        "lusha.enrich" => Action::LushaEnrich { contact_id: contact(s, event, view)? },
        "ghl.create_contact" => Action::CreateContact { fields: render_fields(s.fields.as_ref(), view)? },
        "ghl.upsert_contact" => Action::UpsertContact { fields: render_fields(s.fields.as_ref(), view)? },
        "ghl.update_contact" => Action::UpdateContact {
            contact_id: contact(s, event, view)?,
            fields: render_fields(s.fields.as_ref(), view)?,
        },
        "ghl.delete_contact" => Action::DeleteContact { contact_id: contact(s, event, view)? },
        "ghl.add_tags" => Action::AddTags { contact_id: contact(s, event, view)?, tags: tags(s, view)? },
        "ghl.remove_tags" => Action::RemoveTags { contact_id: contact(s, event, view)?, tags: tags(s, view)? },
        "ghl.create_task" => Action::CreateTask {
            contact_id: contact(s, event, view)?,
            title: optional(s.title.as_ref(), view).ok_or("title rendered empty")?,
            body: optional(s.body.as_ref(), view),
            due: due(s.due.as_deref().unwrap_or_default(), event, view)?,
            assigned_to: optional(s.assigned_to.as_ref(), view),
        },
        "ghl.update_task" => Action::UpdateTask {
            contact_id: contact(s, event, view)?,
            task_id: child_id(s.task_id.as_ref(), EntityKind::Task, event, view, "task_id")?,
            title: optional(s.title.as_ref(), view),
            body: optional(s.body.as_ref(), view),
            due: s.due.as_deref().map(|d| due(d, event, view)).transpose()?,
            assigned_to: optional(s.assigned_to.as_ref(), view),
        },
        "ghl.complete_task" => Action::CompleteTask {
            contact_id: contact(s, event, view)?,
            task_id: child_id(s.task_id.as_ref(), EntityKind::Task, event, view, "task_id")?,
        },
        "ghl.delete_task" => Action::DeleteTask {
            contact_id: contact(s, event, view)?,
            task_id: child_id(s.task_id.as_ref(), EntityKind::Task, event, view, "task_id")?,
        },
        "ghl.create_note" => Action::CreateNote {
            contact_id: contact(s, event, view)?,
            body: optional(s.body.as_ref(), view).ok_or("body rendered empty")?,
        },
        "ghl.update_note" => Action::UpdateNote {
            contact_id: contact(s, event, view)?,
            note_id: child_id(s.note_id.as_ref(), EntityKind::Note, event, view, "note_id")?,
            body: optional(s.body.as_ref(), view).ok_or("body rendered empty")?,
        },
        "ghl.delete_note" => Action::DeleteNote {
            contact_id: contact(s, event, view)?,
            note_id: child_id(s.note_id.as_ref(), EntityKind::Note, event, view, "note_id")?,
        },
        "ghl.link_business" => Action::LinkBusiness {
            contact_id: contact(s, event, view)?,
            business_id: optional(s.business_id.as_ref(), view),
        },
        other => return Err(format!("action {other} has no renderer")),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::domain::Operation;
    use crate::rules::config::{RuleSettings, compile};
    use crate::rules::{Origin, event};

    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        rule_settings: RuleOptions,
        rules: Vec<RuleSettings>,
    }

    fn set(text: &str) -> RuleSet {
        let file: File = toml::from_str(text).unwrap();
        let connectors: BTreeSet<String> = ["webhook.sales", "lusha"].map(str::to_owned).into_iter().collect();
        let (set, problems) = compile(&file.rules, &file.rule_settings, &connectors);
        assert!(problems.is_empty(), "{problems:?}");
        set
    }

    const RULES: &str = r#"
[rule_settings]
max_depth = 2
[[rules]]
name = "leads"
on = ["contact.created", "tag.added"]
when = "'lead' in record.tags"
[[rules.actions]]
do = "lusha.enrich"
[[rules.actions]]
do = "ghl.create_task"
title = "Call {contact.firstName}"
body = "From {event.trigger} at {event.at}"
due = "in 1d"
[[rules.actions]]
do = "deliver"
connector = "webhook.sales"
[[rules]]
name = "only-loc2"
on = ["contact.created"]
locations = ["loc2"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["seen-{event.location_id}"]
"#;

    fn created(key: &str) -> RuleEvent {
        let contact = json!({"id": "c1", "firstName": "Ada", "tags": ["lead"]});
        event::derive(
            EntityKind::Contact,
            Operation::Created,
            None,
            Some(&contact),
            None,
            "loc1",
            key,
            1_700_000_000_000,
            None,
        )
        .remove(0)
    }

    #[test]
    fn a_matching_rule_renders_its_actions_with_keys_and_depth() {
        let plan = set(RULES).plan(&created("v1"), 0);
        assert_eq!(plan.fired, ["leads"]);
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        let actions: Vec<&Action> = plan.actions.iter().map(|a| &a.action).collect();
        assert_eq!(
            actions,
            [
                &Action::LushaEnrich { contact_id: "c1".to_owned() },
                &Action::CreateTask {
                    contact_id: "c1".to_owned(),
                    title: "Call Ada".to_owned(),
                    body: Some("From contact.created at 2023-11-14T22:13:20.000Z".to_owned()),
                    due: "2023-11-15T22:13:20.000Z".to_owned(),
                    assigned_to: None,
                },
                &Action::Deliver { connector: "webhook.sales".to_owned() },
            ]
        );
        let first = &plan.actions[0];
        assert_eq!(first.key, crate::writeback::key(&["rule", "leads", "v1:contact.created", "0"]));
        assert_eq!((first.depth, first.index, first.rule.as_str()), (1, 0, "leads"));
        assert_eq!(plan.actions[2].record.as_ref().and_then(|r| r.get("id")), Some(&json!("c1")));
    }

    #[test]
    fn locations_origin_depth_and_conditions_decide_what_runs() {
        let rules = set(RULES);
        let mut other = created("v1");
        other.location_id = "loc2".to_owned();
        assert_eq!(rules.plan(&other, 0).fired, ["leads", "only-loc2"]);

        let mut own = created("v1");
        own.origin = Some(Origin { rule: "leads".to_owned(), depth: 1 });
        let plan = rules.plan(&own, 0);
        assert_eq!((plan.skipped_self, plan.fired), (vec!["leads".to_owned()], vec![]));

        let mut deep = created("v1");
        deep.origin = Some(Origin { rule: "other".to_owned(), depth: 2 });
        let plan = rules.plan(&deep, 0);
        assert_eq!((plan.cut, plan.actions.len()), (vec!["leads".to_owned()], 0));

        let mut chained = created("v1");
        chained.origin = Some(Origin { rule: "other".to_owned(), depth: 1 });
        assert!(rules.plan(&chained, 0).actions.iter().all(|a| a.depth == 2));

        let mut cold = created("v1");
        cold.new = Some(json!({"id": "c1", "tags": []}));
        assert!(rules.plan(&cold, 0).fired.is_empty());
        let mut broken = created("v1");
        broken.new = Some(json!({"id": "c1"}));
        let plan = rules.plan(&broken, 0);
        assert_eq!(plan.errors.len(), 1, "{:?}", plan.errors);
        assert!(plan.errors[0].1.starts_with("when: "), "{:?}", plan.errors);
    }

    #[test]
    fn an_action_without_its_required_value_is_an_error_not_an_action() {
        let rules = set(RULES);
        let mut anonymous = created("v1");
        anonymous.contact_id = None;
        let plan = rules.plan(&anonymous, 0);
        assert_eq!(plan.fired, ["leads"]);
        // Only the delivery needs no contact.
        assert_eq!(plan.actions.len(), 1);
        assert_eq!(plan.errors.len(), 2, "{:?}", plan.errors);
        assert!(plan.errors.iter().all(|(rule, message)| rule == "leads" && message.contains("no contact id")));

        let empty_title = set(
            "[[rules]]\nname = \"t\"\non = [\"contact.created\"]\n[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"{contact.lastName}\"\ndue = \"in 1h\"\n",
        );
        let plan = empty_title.plan(&created("v1"), 0);
        assert!(plan.actions.is_empty() && plan.errors[0].1.contains("title rendered empty"), "{plan:?}");
    }

    #[test]
    fn task_and_note_actions_default_to_the_events_record() {
        let rules = set(
            "[[rules]]\nname = \"t\"\non = [\"task.created\", \"note.created\"]\n[[rules.actions]]\ndo = \"ghl.complete_task\"\n[[rules.actions]]\ndo = \"ghl.update_note\"\nbody = \"{new.body}!\"\n",
        );
        let task = json!({"id": "t1", "contactId": "c1", "title": "x"});
        let event =
            event::derive(EntityKind::Task, Operation::Created, None, Some(&task), None, "l", "k", 0, None).remove(0);
        let plan = rules.plan(&event, 0);
        assert_eq!(
            plan.actions[0].action,
            Action::CompleteTask { contact_id: "c1".to_owned(), task_id: "t1".to_owned() }
        );
        assert!(plan.errors[0].1.contains("no note_id"), "{:?}", plan.errors);
    }

    #[test]
    fn fields_render_with_types_and_business_links_can_unlink() {
        let rules = set(r#"
[[rules]]
name = "b"
on = ["business.unlinked", "business.linked"]
[[rules.actions]]
do = "ghl.update_contact"
fields = { source = "biz {data.business_id}", dnd = true, customFields = [{ id = "cf1", field_value = "{record.tags}" }] }
[[rules.actions]]
do = "ghl.link_business"
business_id = "{new.businessId}"
"#);
        let old = json!({"id": "c1", "businessId": "b1", "tags": ["x"]});
        let new = json!({"id": "c1", "tags": ["x"]});
        let events =
            event::derive(EntityKind::Contact, Operation::Updated, Some(&old), Some(&new), None, "l", "k", 0, None);
        let unlinked = events.iter().find(|e| e.trigger == "business.unlinked").unwrap();
        let plan = rules.plan(unlinked, 0);
        let Action::UpdateContact { fields, .. } = &plan.actions[0].action else { panic!("{plan:?}") };
        assert_eq!(fields.get("source"), Some(&json!("biz b1")));
        assert_eq!(fields.get("dnd"), Some(&json!(true)));
        assert_eq!(fields.get("customFields"), Some(&json!([{"id": "cf1", "field_value": ["x"]}])));
        assert_eq!(plan.actions[1].action, Action::LinkBusiness { contact_id: "c1".to_owned(), business_id: None });
    }

    #[test]
    fn actions_over_the_per_event_limit_are_cut_and_counted() {
        let rules = set(
            "[rule_settings]\nmax_actions_per_event = 2\n[[rules]]\nname = \"a\"\non = [\"contact.created\"]\n[[rules.actions]]\ndo = \"lusha.enrich\"\n[[rules.actions]]\ndo = \"lusha.enrich\"\n[[rules]]\nname = \"b\"\non = [\"contact.created\"]\n[[rules.actions]]\ndo = \"lusha.enrich\"\n",
        );
        let plan = rules.plan(&created("v"), 0);
        assert_eq!(plan.actions.len(), 2);
        assert_eq!(plan.over_limit, [("b".to_owned(), 1)]);
    }

    #[test]
    fn schedules_find_their_last_slot_and_only_their_rule_runs() {
        let rules = set(
            "[[rules]]\nname = \"weekday\"\non = [\"schedule\"]\nschedule = { at = \"09:00\", days = [\"mon\", \"fri\"] }\n[[rules.actions]]\ndo = \"lusha.enrich\"\n[[rules]]\nname = \"daily\"\non = [\"schedule\"]\nschedule = { at = \"23:30\" }\n[[rules.actions]]\ndo = \"lusha.enrich\"\n",
        );
        let schedules = rules.schedules();
        assert_eq!(schedules.len(), 2);
        let (weekday, daily) = (schedules[0].1, schedules[1].1);
        let ms = |s: &str| parse_timestamp_ms(s).unwrap();
        // 2026-12-07 is a Monday.
        assert_eq!(weekday.last_slot_at_or_before(ms("2026-12-07T09:00:00Z")), Some(ms("2026-12-07T09:00:00Z")));
        assert_eq!(weekday.last_slot_at_or_before(ms("2026-12-07T08:59:59Z")), Some(ms("2026-12-04T09:00:00Z")));
        assert_eq!(weekday.last_slot_at_or_before(ms("2026-12-10T12:00:00Z")), Some(ms("2026-12-07T09:00:00Z")));
        assert_eq!(daily.last_slot_at_or_before(ms("2026-12-07T10:00:00Z")), Some(ms("2026-12-06T23:30:00Z")));
        assert_eq!(rules.triggers(), BTreeSet::from(["schedule".to_owned()]));

        let mut event = RuleEvent {
            trigger: "schedule".to_owned(),
            key: "s".to_owned(),
            contact_id: Some("c".to_owned()),
            ..RuleEvent::default()
        };
        event.data.insert("rule".to_owned(), json!("daily"));
        assert_eq!(rules.plan(&event, 0).fired, ["daily"]);
    }

    #[test]
    fn listing_summarises_rules() {
        let summaries = set(RULES).summaries();
        assert_eq!(summaries[0].actions, ["lusha.enrich", "ghl.create_task", "deliver → webhook.sales"]);
        assert_eq!(summaries[0].when.as_deref(), Some("'lead' in record.tags"));
        assert_eq!(summaries[1].locations, ["loc2"]);
    }

    proptest! {
        #[test]
        fn planning_is_deterministic_and_keys_are_unique(key_a in "[a-z0-9:]{1,20}", key_b in "[a-z0-9:]{1,20}", name in "[a-zA-Z ]{0,12}") {
            let rules = set(RULES);
            let mut a = created(&key_a);
            if let Some(Value::Object(record)) = a.new.as_mut() {
                record.insert("firstName".to_owned(), json!(name));
            }
            let first = rules.plan(&a, 1);
            let second = rules.plan(&a, 2);
            prop_assert_eq!(&first, &second);
            let keys: BTreeSet<&String> = first.actions.iter().map(|x| &x.key).collect();
            prop_assert_eq!(keys.len(), first.actions.len());
            let other = rules.plan(&created(&key_b), 1);
            if key_a != key_b {
                prop_assert!(other.actions.iter().all(|x| !keys.contains(&x.key)));
            }
        }
    }
}
