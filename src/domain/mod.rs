//! Plain domain types and pure domain code (normalise, hash, diff) shared by sync, store,
//! write-back and connectors. Imports nothing from the crate outside `domain`: everything
//! else imports it, downward.

pub mod diff;
pub mod normalize;
pub mod scrub;

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
    "appointment.created",
    "appointment.updated",
    "appointment.deleted",
];

/// What kind of GHL record a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    Contact,
    Task,
    Note,
    /// A contact's appointment (`GET /contacts/:contactId/appointments`), a child like tasks and notes.
    Appointment,
    /// A rule trigger event (outbox rows of the `rules` connector, `crate::rules`).
    Event,
    /// A rule's action (outbox rows of a `rule.<name>` connector, `crate::rules`).
    Action,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Contact => "contact",
            EntityKind::Task => "task",
            EntityKind::Note => "note",
            EntityKind::Appointment => "appointment",
            EntityKind::Event => "event",
            EntityKind::Action => "action",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "contact" => Some(EntityKind::Contact),
            "task" => Some(EntityKind::Task),
            "note" => Some(EntityKind::Note),
            "appointment" => Some(EntityKind::Appointment),
            "event" => Some(EntityKind::Event),
            "action" => Some(EntityKind::Action),
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

/// The idempotency key of one record version for one connector: the same version always
/// carries the same key (first delivery, retries, dead-letter retries, replays), and any new
/// version a new one. `revision` grows with every content change the sync commits, so a change
/// that reverts to earlier content is still new; the content hash keeps keys distinct after a
/// store is rebuilt from scratch (revisions restart). The operation is not part of it: a
/// replayed `created` record version is the same version as its first delivery. `salt` is empty
/// except for `replay --new-keys`, which asks targets to take a version again.
pub fn idempotency_key(
    connector: &str,
    entity: EntityKind,
    entity_id: &str,
    revision: i64,
    content_hash: &[u8],
    salt: &str,
) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let revision = revision.to_string();
    let content = hex(content_hash);
    for part in [connector, entity.as_str(), entity_id, &revision, &content, salt] {
        // Length-prefixed: no two different part lists hash the same bytes.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hex(&hasher.finalize())
}

/// What identifies a note (body) or task (title + body) the daemon is about to create,
/// compared trimmed: the write-back records it before the call, and the sync recognises the
/// created child by it while the write is still pending.
pub fn child_content_key(title: Option<&str>, body: Option<&str>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(title.map(str::trim).unwrap_or("").as_bytes());
    hasher.update([0u8]);
    hasher.update(body.map(str::trim).unwrap_or("").as_bytes());
    hasher.finalize().into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Decides from `(event type, location)` whether a connector wants a change.
pub type Interest = std::sync::Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// A connector's interest in changes, decided by its config filters (event type, location):
/// the sync writes an outbox row for it only when `wants` says so.
#[derive(Clone)]
pub struct Subscriber {
    pub id: String,
    pub wants: Interest,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Subscriber {
    /// A subscriber that wants everything (tests, the demo).
    pub fn all(id: &str) -> Self {
        Self { id: id.to_owned(), wants: std::sync::Arc::new(|_, _| true) }
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

    #[test]
    fn idempotency_keys_differ_by_every_part_and_not_by_anything_else() {
        let key = |c: &str, e: EntityKind, id: &str, rev: i64, hash: &[u8], salt: &str| {
            idempotency_key(c, e, id, rev, hash, salt)
        };
        let base = key("a", EntityKind::Contact, "1", 3, &[0; 32], "");
        assert_eq!(base, key("a", EntityKind::Contact, "1", 3, &[0; 32], ""));
        assert_eq!(base.len(), 64);
        for other in [
            key("b", EntityKind::Contact, "1", 3, &[0; 32], ""),
            key("a", EntityKind::Task, "1", 3, &[0; 32], ""),
            key("a", EntityKind::Contact, "2", 3, &[0; 32], ""),
            key("a", EntityKind::Contact, "1", 4, &[0; 32], ""),
            key("a", EntityKind::Contact, "1", 3, &[1; 32], ""),
            key("a", EntityKind::Contact, "1", 3, &[0; 32], "replay-1"),
        ] {
            assert_ne!(base, other);
        }
        // Parts cannot run into each other.
        assert_ne!(key("ab", EntityKind::Contact, "c", 1, &[], ""), key("a", EntityKind::Contact, "bc", 1, &[], ""));
    }

    #[test]
    fn hex_is_lower_case_and_two_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }
}
