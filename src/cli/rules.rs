//! `ghl-sync rules list | test | catalog`: what the configured rules are and what they would
//! do, without doing it.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::config::Config;
use crate::rules::connector::expand;
use crate::rules::{PlannedAction, RuleEvent};

#[derive(Debug, Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    pub command: RulesCommand,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// The configured rules: triggers, condition, locations, actions.
    List,
    /// Which rules an event fires and the actions they would take (nothing is done).
    #[command(group(clap::ArgGroup::new("input").required(true).args(["event", "contact"])))]
    Test {
        /// A trigger event as JSON (`{"trigger": "contact.updated", "location_id": …, "old": {…},
        /// "new": {…}}`, the fields of docs/operations.md). A record change is expanded into its
        /// triggers like the sync's (`contact.updated` with a new tag also gives `tag.added`).
        #[arg(long, value_name = "FILE")]
        event: Option<PathBuf>,
        /// A contact from the store, as the event `--trigger` (default `contact.updated`, the
        /// contact unchanged) about it.
        #[arg(long, value_name = "ID")]
        contact: Option<String>,
        /// The trigger for `--contact`.
        #[arg(long, default_value = "contact.updated", requires = "contact")]
        trigger: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the trigger and action catalog (docs/operations.md).
    Catalog,
}

/// Runs a `rules` command.
pub async fn run_rules(config: &Config, args: RulesArgs) -> anyhow::Result<()> {
    match args.command {
        RulesCommand::List => {
            print!("{}", list(config));
            Ok(())
        }
        RulesCommand::Catalog => {
            print!("{}", crate::rules::catalog::markdown());
            Ok(())
        }
        RulesCommand::Test { event, contact, trigger, json } => {
            let event = match (event, contact) {
                (Some(path), _) => read_event(&path)?,
                (None, Some(contact)) => contact_event(config, &contact, &trigger).await?,
                (None, None) => anyhow::bail!("give --event FILE or --contact ID"),
            };
            let report = test(config, event);
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.text());
            }
            Ok(())
        }
    }
}

/// One block per rule: triggers, condition, locations, actions.
pub fn list(config: &Config) -> String {
    let rules = config.rules.summaries();
    if rules.is_empty() {
        return "no rules configured ([[rules]] in the config file)\n".to_owned();
    }
    let mut out = String::new();
    for rule in rules {
        let state = if rule.enabled { "" } else { " (disabled)" };
        out.push_str(&format!("{}{state}\n  on: {}\n", rule.name, rule.on.join(", ")));
        if let Some(when) = &rule.when {
            out.push_str(&format!("  when: {when}\n"));
        }
        if !rule.locations.is_empty() {
            out.push_str(&format!("  locations: {}\n", rule.locations.join(", ")));
        }
        for (index, action) in rule.actions.iter().enumerate() {
            out.push_str(&format!("  action {index}: {action}\n"));
        }
    }
    out
}

fn read_event(path: &std::path::Path) -> anyhow::Result<RuleEvent> {
    let text = std::fs::read_to_string(path).with_context(|| format!("Failed to read {}", path.display()))?;
    let mut event: RuleEvent =
        serde_json::from_str(&text).with_context(|| format!("{} is not a trigger event", path.display()))?;
    if event.key.is_empty() {
        event.key = format!("test:{}", path.display());
    }
    if event.at_ms == 0 {
        event.at_ms = crate::store::now_ms();
    }
    Ok(event)
}

/// The contact's snapshot as an event about it (unchanged: `old` = `new`).
async fn contact_event(config: &Config, contact_id: &str, trigger: &str) -> anyhow::Result<RuleEvent> {
    let store = super::open_store(config).await?;
    let view = crate::store::contact_view::read(&store, contact_id).await?;
    let (location, record) = view
        .snapshots
        .into_iter()
        .find_map(|s| s.record.map(|record| (s.location_id, record)))
        .with_context(|| format!("contact {contact_id} is not in the store (has it been synced?)"))?;
    Ok(RuleEvent {
        trigger: trigger.to_owned(),
        key: format!("test:{contact_id}"),
        location_id: location,
        entity: Some(crate::domain::EntityKind::Contact),
        entity_id: Some(contact_id.to_owned()),
        contact_id: Some(contact_id.to_owned()),
        old: (trigger != "contact.created").then(|| record.clone()),
        new: (trigger != "contact.deleted").then(|| record.clone()),
        contact: Some(record),
        at_ms: crate::store::now_ms(),
        ..RuleEvent::default()
    })
}

/// What `rules test` found for each derived event.
pub struct TestReport {
    pub events: Vec<(RuleEvent, crate::rules::Plan)>,
}

impl TestReport {
    pub fn actions(&self) -> impl Iterator<Item = &PlannedAction> {
        self.events.iter().flat_map(|(_, plan)| plan.actions.iter())
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (event, plan) in &self.events {
            out.push_str(&format!("event {}:\n", event.trigger));
            if plan.fired.is_empty() && plan.errors.is_empty() && plan.cut.is_empty() {
                out.push_str("  no rule fires\n");
            }
            for rule in &plan.fired {
                out.push_str(&format!("  rule {rule} fires\n"));
                for action in plan.actions.iter().filter(|a| &a.rule == rule) {
                    let what = serde_json::to_string(&action.action).unwrap_or_default();
                    out.push_str(&format!("    action {}: {what}\n", action.index));
                }
            }
            for rule in &plan.cut {
                out.push_str(&format!("  rule {rule} is cut: the chain reached rule_settings.max_depth\n"));
            }
            for rule in &plan.skipped_self {
                out.push_str(&format!("  rule {rule} skipped: the event comes from its own action\n"));
            }
            for (rule, error) in &plan.errors {
                out.push_str(&format!("  rule {rule} failed: {error}\n"));
            }
        }
        out.push_str("(nothing was done: `rules test` only shows what would happen)\n");
        out
    }

    fn to_json(&self) -> Value {
        Value::Array(
            self.events
                .iter()
                .map(|(event, plan)| {
                    serde_json::json!({
                        "trigger": event.trigger,
                        "fired": plan.fired,
                        "cut": plan.cut,
                        "skipped_self": plan.skipped_self,
                        "errors": plan.errors.iter().map(|(rule, error)| serde_json::json!({"rule": rule, "error": error})).collect::<Vec<_>>(),
                        "actions": plan.actions,
                    })
                })
                .collect(),
        )
    }
}

/// Plans an event (expanded like the `rules` connector does) against the configured rules.
pub fn test(config: &Config, event: RuleEvent) -> TestReport {
    let now = crate::store::now_ms();
    let contact = event.contact.clone();
    let events = expand(event, contact)
        .into_iter()
        .map(|event| {
            let plan = config.rules.plan(&event, now);
            (event, plan)
        })
        .collect();
    TestReport { events }
}
