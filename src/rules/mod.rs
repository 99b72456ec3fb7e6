//! Rules: triggers → conditions → actions, configured in `[[rules]]`.
//!
//! The flow, each step through the outbox so that nothing is lost or doubled:
//! 1. A **trigger event** ([`RuleEvent`]) is stored as an outbox row for the `rules` connector
//!    (entity [`EntityKind::Event`]): the sync writes one per record version it commits (with
//!    the record before and after), Lusha, Lucky Orange, the schedule and the rules' own
//!    actions write theirs through [`crate::store::rules`].
//! 2. The `rules` connector ([`connector`]) derives the triggers of a row ([`event::derive`]),
//!    evaluates every rule ([`RuleSet::plan`], pure) and stores each action it decides as an
//!    outbox row of its own (entity [`EntityKind::Action`], connector `rule.<name>`), keyed by
//!    (rule, event, action index).
//! 3. The rule's connector ([`executor`]) performs the action: a GHL write through the
//!    write-back service under the action's key (at most once, also after `kill -9` between
//!    the key and the call), or an outbox row for a named connector under the same key.
//!
//! This file holds the types the three steps share.

pub mod catalog;
pub mod config;
pub mod connector;
pub mod emit;
pub mod event;
pub mod executor;
pub mod expr;
pub mod plan;

pub use config::{ActionSettings, RuleOptions, RuleSettings, ScheduleSettings};
pub use event::derive;
pub use plan::{Plan, Rule, RuleSet, RuleSummary, Schedule};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::EntityKind;

/// The connector id of step 2 (the outbox `connector` of trigger events).
pub const EVENTS_CONNECTOR: &str = "rules";

/// The connector id of a rule's actions (step 3).
pub fn actions_connector(rule: &str) -> String {
    format!("rule.{rule}")
}

/// Which rule's action caused an event, and how deep in a chain it is (1: caused by an action
/// of a rule that fired on an outside event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub rule: String,
    pub depth: u32,
}

/// One trigger event, as the conditions and templates see it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RuleEvent {
    /// The trigger name from the catalog: `contact.created`, `tag.added`, `lusha.enriched`, …
    pub trigger: String,
    /// Unique per event: the source's key (record version key, Lusha result key, …) plus the
    /// trigger. Action keys are derived from it. (Optional in a `rules test --event` file.)
    #[serde(default)]
    pub key: String,
    pub location_id: String,
    /// The record kind the event is about, when it is about one.
    pub entity: Option<EntityKind>,
    pub entity_id: Option<String>,
    pub contact_id: Option<String>,
    /// The record before the change (`None`: created, or not a record event).
    pub old: Option<Value>,
    /// The record after the change (`None`: deleted, or not a record event).
    pub new: Option<Value>,
    /// The contact the event is about (its latest snapshot), when known.
    pub contact: Option<Value>,
    /// Top-level fields whose value differs between `old` and `new`.
    #[serde(default)]
    pub changed: Vec<String>,
    #[serde(default)]
    pub tags_added: Vec<String>,
    #[serde(default)]
    pub tags_removed: Vec<String>,
    /// Trigger-specific data (the Lusha result summary, the Lucky Orange event, …).
    #[serde(default)]
    pub data: Map<String, Value>,
    /// When it happened (ms since the epoch; 0 in a `rules test --event` file: now).
    #[serde(default)]
    pub at_ms: i64,
    /// Set when a rule's own action caused it.
    pub origin: Option<Origin>,
}

/// One action with its templates rendered: what the executor does, exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Action {
    /// An outbox row for the named connector (webhook, Slack/Teams template) carrying the event's record.
    Deliver {
        connector: String,
    },
    /// An outbox row for the Lusha connector for this contact.
    LushaEnrich {
        contact_id: String,
    },
    CreateContact {
        fields: Map<String, Value>,
    },
    /// `POST /contacts/upsert` (GHL matches by email/phone).
    UpsertContact {
        fields: Map<String, Value>,
    },
    UpdateContact {
        contact_id: String,
        fields: Map<String, Value>,
    },
    /// Only when `[rule_settings] allow_contact_delete = true`.
    DeleteContact {
        contact_id: String,
    },
    AddTags {
        contact_id: String,
        tags: Vec<String>,
    },
    RemoveTags {
        contact_id: String,
        tags: Vec<String>,
    },
    CreateTask {
        contact_id: String,
        title: String,
        body: Option<String>,
        /// RFC 3339.
        due: String,
        assigned_to: Option<String>,
    },
    UpdateTask {
        contact_id: String,
        task_id: String,
        title: Option<String>,
        body: Option<String>,
        due: Option<String>,
        assigned_to: Option<String>,
    },
    CompleteTask {
        contact_id: String,
        task_id: String,
    },
    DeleteTask {
        contact_id: String,
        task_id: String,
    },
    CreateNote {
        contact_id: String,
        body: String,
    },
    UpdateNote {
        contact_id: String,
        note_id: String,
        body: String,
    },
    DeleteNote {
        contact_id: String,
        note_id: String,
    },
    /// `business_id: None` unlinks.
    LinkBusiness {
        contact_id: String,
        business_id: Option<String>,
    },
}

/// An action a rule decided for an event, ready for the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedAction {
    pub rule: String,
    /// The action's position in the rule's `actions` (0-based).
    pub index: usize,
    /// `crate::writeback::key(["rule", rule, event key, index])`: the action's idempotency key.
    pub key: String,
    pub event_key: String,
    pub trigger: String,
    pub location_id: String,
    pub contact_id: Option<String>,
    /// The chain depth of events this action causes (the event's depth + 1).
    pub depth: u32,
    pub action: Action,
    /// The event's record (`new`, else `old`) and its entity, for [`Action::Deliver`].
    pub entity: Option<EntityKind>,
    pub entity_id: Option<String>,
    pub record: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_file_needs_only_the_trigger_and_the_location() {
        let minimal: RuleEvent = serde_json::from_str(
            r#"{"trigger": "contact.updated", "location_id": "loc1", "entity": "contact", "new": {"id": "c1"}}"#,
        )
        .unwrap();
        assert_eq!((minimal.key.as_str(), minimal.at_ms, minimal.entity), ("", 0, Some(EntityKind::Contact)));
        assert!(minimal.changed.is_empty() && minimal.data.is_empty() && minimal.old.is_none());
        for missing in [r#"{"location_id": "loc1"}"#, r#"{"trigger": "contact.updated"}"#] {
            assert!(serde_json::from_str::<RuleEvent>(missing).is_err(), "{missing}");
        }
    }
}
