//! Plain domain types and pure domain code (normalise, hash, diff) shared by sync, store,
//! write-back and connectors. Imports nothing from the crate outside `domain`: everything
//! else imports it, downward.

pub mod diff;
pub mod normalize;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every event type a connector can subscribe to, as written in config filters.
pub const EVENT_TYPES: &[&str] = &[
    "contact.created",
    "contact.updated",
    "contact.deleted",
    "task.created",
    "task.updated",
    "task.completed",
    "task.deleted",
    "note.created",
    "note.updated",
    "note.deleted",
];

/// What kind of GHL record a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    Contact,
    Task,
    Note,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Contact => "contact",
            EntityKind::Task => "task",
            EntityKind::Note => "note",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "contact" => Some(EntityKind::Contact),
            "task" => Some(EntityKind::Task),
            "note" => Some(EntityKind::Note),
            _ => None,
        }
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Created,
    Updated,
    /// A task went from open to completed (an event of its own).
    Completed,
    Deleted,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Created => "created",
            Operation::Updated => "updated",
            Operation::Completed => "completed",
            Operation::Deleted => "deleted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "created" => Some(Operation::Created),
            "updated" => Some(Operation::Updated),
            "completed" => Some(Operation::Completed),
            "deleted" => Some(Operation::Deleted),
            _ => None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `contact.created`, `task.completed`, …
pub fn event_type(entity: EntityKind, operation: Operation) -> String {
    format!("{}.{}", entity.as_str(), operation.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_meaningful_event_type_is_listed() {
        for entity in [EntityKind::Contact, EntityKind::Task, EntityKind::Note] {
            for op in [Operation::Created, Operation::Updated, Operation::Deleted] {
                assert!(EVENT_TYPES.contains(&event_type(entity, op).as_str()));
            }
        }
        assert!(EVENT_TYPES.contains(&"task.completed"));
    }
}
