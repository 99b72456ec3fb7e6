//! Pure diffing: what changed between the snapshot and what GHL returned.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::normalize::Hash;
use crate::domain::Operation;

/// A child record (task or note) as read from GHL, normalised and hashed.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildRecord {
    pub id: String,
    pub hash: Hash,
    pub record: Map<String, Value>,
}

/// What the snapshot knows of a child.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KnownChild {
    pub hash: Hash,
    /// Tasks only: whether it was completed.
    pub completed: bool,
}

/// One change to a child.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildChange {
    pub id: String,
    pub operation: Operation,
    /// The new record; for deletes, `None` (the caller loads the last known one).
    pub record: Option<ChildRecord>,
}

/// Set diff of one contact's children: created, updated (or completed, for a task that went
/// from open to done) and deleted. Unchanged children produce nothing. Output is ordered by id.
pub fn diff_children(known: &HashMap<String, KnownChild>, current: Vec<ChildRecord>) -> Vec<ChildChange> {
    let mut changes = Vec::new();
    let mut seen = std::collections::HashSet::with_capacity(current.len());
    for child in current {
        seen.insert(child.id.clone());
        match known.get(&child.id) {
            None => {
                changes.push(ChildChange { id: child.id.clone(), operation: Operation::Created, record: Some(child) })
            }
            Some(old) if old.hash == child.hash => {}
            Some(old) => {
                let now_completed = is_completed(&child.record);
                let operation = if now_completed && !old.completed { Operation::Completed } else { Operation::Updated };
                changes.push(ChildChange { id: child.id.clone(), operation, record: Some(child) });
            }
        }
    }
    for id in known.keys() {
        if !seen.contains(id) {
            changes.push(ChildChange { id: id.clone(), operation: Operation::Deleted, record: None });
        }
    }
    changes.sort_by(|a, b| a.id.cmp(&b.id));
    changes
}

/// What a contact read means against the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactChange {
    /// `Created` (unknown id), `Updated` (other content), `None` (same content).
    pub operation: Option<Operation>,
    /// Its tasks and notes must be read: it changed, or only its `dateUpdated` moved (which may
    /// mean a task or note changed; whether GHL bumps it is unknown).
    pub children_due: bool,
}

/// Compares a contact read (its content hash and `dateUpdated`) with what the snapshot knows
/// (`known`: hash and `dateUpdated`), pure. `get_only_changed`: a `GET` read differs from the
/// stored record in a field only `GET` returns (`normalize::get_only_changed`).
pub fn contact_change(
    known: Option<(Hash, Option<i64>)>,
    hash: Hash,
    date_updated_ms: Option<i64>,
    get_only_changed: bool,
) -> ContactChange {
    match known {
        None => ContactChange { operation: Some(Operation::Created), children_due: true },
        Some((old, _)) if old != hash || get_only_changed => {
            ContactChange { operation: Some(Operation::Updated), children_due: true }
        }
        Some((_, old_updated)) => {
            ContactChange { operation: None, children_due: date_updated_ms.is_some() && date_updated_ms != old_updated }
        }
    }
}

/// Whether a task record says it is completed.
pub fn is_completed(record: &Map<String, Value>) -> bool {
    record.get("completed").and_then(Value::as_bool).unwrap_or(false)
}

/// How a pending outbox row and a newer change to the same record combine: the target sees
/// the latest state, but a record it never saw created still arrives as `created`.
pub fn coalesce(pending: Operation, newer: Operation) -> Operation {
    match (pending, newer) {
        (_, Operation::Deleted) => Operation::Deleted,
        (Operation::Created, _) => Operation::Created,
        (Operation::Completed, Operation::Updated) => Operation::Completed,
        (_, newer) => newer,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::normalize::value_hash;

    fn child(id: &str, value: Value) -> ChildRecord {
        let Value::Object(mut record) = value else { panic!() };
        record.insert("id".into(), json!(id));
        ChildRecord { id: id.into(), hash: value_hash(&record), record }
    }

    fn known(children: &[&ChildRecord]) -> HashMap<String, KnownChild> {
        children
            .iter()
            .map(|c| (c.id.clone(), KnownChild { hash: c.hash, completed: is_completed(&c.record) }))
            .collect()
    }

    #[test]
    fn set_diff_finds_created_updated_completed_and_deleted() {
        let open = child("t1", json!({"title": "Call", "completed": false}));
        let renamed = child("t2", json!({"title": "Old"}));
        let gone = child("t3", json!({"title": "Bye"}));
        let same = child("t4", json!({"title": "Same"}));
        let before = known(&[&open, &renamed, &gone, &same]);
        let now = vec![
            child("t1", json!({"title": "Call", "completed": true})),
            child("t2", json!({"title": "New"})),
            same.clone(),
            child("t5", json!({"title": "Fresh"})),
        ];
        let ops: Vec<(String, Operation)> =
            diff_children(&before, now).into_iter().map(|c| (c.id, c.operation)).collect();
        assert_eq!(
            ops,
            vec![
                ("t1".into(), Operation::Completed),
                ("t2".into(), Operation::Updated),
                ("t3".into(), Operation::Deleted),
                ("t5".into(), Operation::Created),
            ]
        );
    }

    fn appointment(id: &str, value: Value) -> ChildRecord {
        let Value::Object(mut record) = value else { panic!() };
        record.insert("id".into(), json!(id));
        let record = crate::domain::normalize::normalize_appointment(record);
        ChildRecord { id: id.into(), hash: value_hash(&record), record }
    }

    #[test]
    fn appointments_diff_to_created_updated_and_deleted_and_a_cancellation_is_an_update() {
        let booked = json!({"title": "Demo", "appointmentStatus": "confirmed", "startTime": "2021-07-16 11:00:00"});
        let a1 = appointment("a1", booked.clone());
        let a2 = appointment("a2", booked.clone());
        let a3 = appointment("a3", booked.clone());
        let a4 = appointment("a4", booked.clone());
        let before: HashMap<String, KnownChild> = [&a1, &a2, &a3, &a4]
            .iter()
            .map(|c| (c.id.clone(), KnownChild { hash: c.hash, completed: false }))
            .collect();
        let mut cancelled = booked.clone();
        cancelled["appointmentStatus"] = json!("cancelled");
        // `completed` is not an appointment field: it cannot make a cancellation look completed.
        cancelled["completed"] = json!(true);
        let mut moved = booked.clone();
        moved["startTime"] = json!("2021-07-17 09:30:00");
        let now =
            vec![appointment("a1", cancelled), appointment("a2", moved), a3.clone(), appointment("a5", booked.clone())];
        let ops: Vec<(String, Operation)> =
            diff_children(&before, now).into_iter().map(|c| (c.id, c.operation)).collect();
        assert_eq!(
            ops,
            vec![
                ("a1".into(), Operation::Updated),
                ("a2".into(), Operation::Updated),
                ("a4".into(), Operation::Deleted),
                ("a5".into(), Operation::Created),
            ]
        );
    }

    #[test]
    fn a_contact_read_is_created_updated_or_unchanged_with_children_due_when_its_date_moved() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let table = [
            (None, a, Some(5), false, Some(Operation::Created), true),
            (Some((a, Some(5))), b, Some(5), false, Some(Operation::Updated), true),
            (Some((a, Some(5))), a, Some(5), false, None, false),
            (Some((a, Some(5))), a, Some(5), true, Some(Operation::Updated), true),
            (Some((a, Some(5))), a, Some(6), false, None, true),
            (Some((a, Some(5))), a, None, false, None, false),
        ];
        for (known, hash, updated, get_only, operation, children_due) in table {
            let change = contact_change(known, hash, updated, get_only);
            assert_eq!(change, ContactChange { operation, children_due }, "{known:?} {updated:?} {get_only}");
        }
    }

    #[test]
    fn an_unchanged_set_produces_nothing() {
        let a = child("a", json!({"body": "x"}));
        assert!(diff_children(&known(&[&a]), vec![a.clone()]).is_empty());
        assert!(diff_children(&HashMap::new(), Vec::new()).is_empty());
    }

    #[test]
    fn coalescing_keeps_creates_and_deletes_meaningful() {
        use Operation::*;
        let table = [
            (Created, Updated, Created),
            (Created, Completed, Created),
            (Created, Deleted, Deleted),
            (Updated, Updated, Updated),
            (Updated, Completed, Completed),
            (Completed, Updated, Completed),
            (Updated, Deleted, Deleted),
        ];
        for (pending, newer, expected) in table {
            assert_eq!(coalesce(pending, newer), expected, "{pending:?} + {newer:?}");
        }
    }
}
