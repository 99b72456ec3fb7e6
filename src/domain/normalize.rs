//! Pure normalisation of GHL records into one canonical shape, and their content hash.
//!
//! A contact read through `POST /contacts/search` and the same contact read through
//! `GET /contacts/:id` differ in shape (reference/ghl.md §6.2): search says `address` where GET
//! says `address1`, gives `dateOfBirth` as epoch milliseconds, and adds derived fields. Both
//! are mapped to the GET shape here, so a contact's hash does not depend on how it was read.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A 32-byte content hash.
pub type Hash = [u8; 32];

/// Fields kept out of the contact's hash: those that change without the contact changing
/// (`dateUpdated`, `lastActivity`), and those only one read path returns, so a contact read
/// by search and by `GET` hashes the same. `name` is derived from first and last name;
/// `attachments` is documented but never filled (#324); `dndSettings` and
/// `inboundDndSettings` are missing from search items (reference/ghl.md §6.2), so a change of
/// the per-channel DND settings alone is seen only through a `ContactDndUpdate` hint (the
/// `dnd` flag itself is hashed). They stay in the stored record when read.
const CONTACT_VOLATILE: &[&str] = &[
    "dateUpdated",
    "lastActivity",
    "lastSessionActivityAt",
    "searchAfter",
    "sort",
    "score",
    "name",
    "attachments",
    "dndSettings",
    "inboundDndSettings",
];

/// Derived fields that only search items carry (`contactName` is `firstName lastName`, …).
const SEARCH_ONLY: &[&str] = &[
    "searchAfter",
    "sort",
    "score",
    "contactName",
    "phoneLabel",
    "validEmail",
    "businessName",
    "followers",
    "additionalPhones",
    "opportunities",
    "emailLowerCase",
    "firstNameLowerCase",
    "lastNameLowerCase",
    "fullNameLowerCase",
    "companyNameLowerCase",
    "firstNameRaw",
    "lastNameRaw",
];

/// Derived fields of location-wide task search items.
const TASK_DERIVED: &[&str] = &["contactDetails", "assignedToUserDetails", "_id", "deleted", "isLocation"];

/// Maps a contact (from search or GET) to the canonical GET shape. `dateUpdated` is kept in
/// the record (it is informative) but never hashed.
pub fn normalize_contact(mut contact: Map<String, Value>) -> Map<String, Value> {
    for key in SEARCH_ONLY {
        contact.remove(*key);
    }
    if let Some(address) = contact.remove("address") {
        contact.entry("address1").or_insert(address);
    }
    if let Some(Value::Number(millis)) = contact.get("dateOfBirth")
        && let Some(date) = millis.as_i64().and_then(epoch_ms_to_date)
    {
        contact.insert("dateOfBirth".into(), Value::String(date));
    }
    // Tag order carries no meaning; GHL returns them in insertion order.
    if let Some(Value::Array(tags)) = contact.get_mut("tags") {
        tags.sort_by(|a, b| a.as_str().unwrap_or("").cmp(b.as_str().unwrap_or("")));
        tags.dedup();
    }
    sort_by_id(&mut contact, "customFields");
    drop_nulls(&mut contact);
    contact
}

/// Maps a task (per-contact list or location-wide search item) to one shape.
pub fn normalize_task(mut task: Map<String, Value>) -> Map<String, Value> {
    for key in TASK_DERIVED {
        task.remove(*key);
    }
    drop_nulls(&mut task);
    task
}

/// Notes need no reshaping beyond dropping nulls.
pub fn normalize_note(mut note: Map<String, Value>) -> Map<String, Value> {
    drop_nulls(&mut note);
    note
}

/// The contact's content hash: canonical JSON of everything but volatile fields and the
/// bookkeeping fields the daemon writes itself (`ignored_custom_fields`, by custom field id).
pub fn contact_hash(contact: &Map<String, Value>, ignored_custom_fields: &[String]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(b"{");
    for (key, value) in sorted(contact) {
        if CONTACT_VOLATILE.contains(&key.as_str()) {
            continue;
        }
        if key == "customFields" && !ignored_custom_fields.is_empty() {
            let kept: Vec<&Value> = value
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter(|item| {
                            let id = item.get("id").and_then(Value::as_str).unwrap_or("");
                            !ignored_custom_fields.iter().any(|ignored| ignored == id)
                        })
                        .collect()
                })
                .unwrap_or_default();
            write_str(&mut hasher, key);
            hasher.update(b":[");
            for (i, item) in kept.iter().enumerate() {
                if i > 0 {
                    hasher.update(b",");
                }
                write_canonical(&mut hasher, item);
            }
            hasher.update(b"],");
            continue;
        }
        write_str(&mut hasher, key);
        hasher.update(b":");
        write_canonical(&mut hasher, value);
        hasher.update(b",");
    }
    hasher.update(b"}");
    hasher.finalize().into()
}

/// Hash of a whole JSON object (tasks, notes).
pub fn value_hash(value: &Map<String, Value>) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(b"{");
    for (key, value) in sorted(value) {
        write_str(&mut hasher, key);
        hasher.update(b":");
        write_canonical(&mut hasher, value);
        hasher.update(b",");
    }
    hasher.update(b"}");
    hasher.finalize().into()
}

/// Entries in key order, whatever order the map keeps.
fn sorted(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Writes a value with object keys in sorted order, whatever the map's own order.
fn write_canonical(hasher: &mut Sha256, value: &Value) {
    match value {
        Value::Null => hasher.update(b"null"),
        Value::Bool(true) => hasher.update(b"true"),
        Value::Bool(false) => hasher.update(b"false"),
        Value::Number(number) => hasher.update(number.to_string().as_bytes()),
        Value::String(text) => write_str(hasher, text),
        Value::Array(items) => {
            hasher.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    hasher.update(b",");
                }
                write_canonical(hasher, item);
            }
            hasher.update(b"]");
        }
        Value::Object(map) => {
            hasher.update(b"{");
            for (key, value) in sorted(map) {
                write_str(hasher, key);
                hasher.update(b":");
                write_canonical(hasher, value);
                hasher.update(b",");
            }
            hasher.update(b"}");
        }
    }
}

/// Length-prefixed so `"a","bc"` and `"ab","c"` never collide.
fn write_str(hasher: &mut Sha256, text: &str) {
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
}

fn sort_by_id(map: &mut Map<String, Value>, key: &str) {
    if let Some(Value::Array(items)) = map.get_mut(key) {
        items.sort_by(|a, b| {
            let a = a.get("id").and_then(Value::as_str).unwrap_or("");
            let b = b.get("id").and_then(Value::as_str).unwrap_or("");
            a.cmp(b)
        });
    }
}

fn drop_nulls(map: &mut Map<String, Value>) {
    map.retain(|_, value| !value.is_null());
}

fn epoch_ms_to_date(millis: i64) -> Option<String> {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok()?;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time.format(&format).ok()
}

/// Parses GHL's ISO-8601 timestamps (`2021-07-02T05:18:26.704Z`) into epoch milliseconds.
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Formats epoch milliseconds the way GHL does.
pub fn format_timestamp_ms(millis: i64) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time.format(&format).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn search_items_and_get_answers_normalise_to_the_same_contact() {
        let from_get = obj(json!({
            "id": "c1", "firstName": "Ada", "address1": "1 Test St", "dateOfBirth": "1990-05-17",
            "tags": ["b", "a"], "customFields": [{"id": "z", "value": 1}, {"id": "a", "value": "x"}],
            "dateUpdated": "2026-01-01T00:00:00.000Z", "email": null
        }));
        let from_search = obj(json!({
            "id": "c1", "firstName": "Ada", "address": "1 Test St", "dateOfBirth": 642902400000i64,
            "tags": ["a", "b"], "customFields": [{"id": "a", "value": "x"}, {"id": "z", "value": 1}],
            "dateUpdated": "2026-01-02T00:00:00.000Z", "contactName": "ada test", "searchAfter": [1, "c1"]
        }));
        let a = normalize_contact(from_get);
        let b = normalize_contact(from_search);
        assert_eq!(contact_hash(&a, &[]), contact_hash(&b, &[]));
        assert_eq!(b["address1"], "1 Test St");
        assert_eq!(b["dateOfBirth"], "1990-05-17");
        assert!(!b.contains_key("searchAfter"));
    }

    #[test]
    fn hash_tables() {
        let base = normalize_contact(obj(json!({"id": "c1", "email": "a@example.test", "tags": ["x"]})));
        let cases: Vec<(&str, Value, bool)> = vec![
            (
                "dateUpdated only",
                json!({"id": "c1", "email": "a@example.test", "tags": ["x"], "dateUpdated": "2030-01-01T00:00:00.000Z"}),
                true,
            ),
            (
                "lastActivity only",
                json!({"id": "c1", "email": "a@example.test", "tags": ["x"], "lastActivity": 5}),
                true,
            ),
            ("email changed", json!({"id": "c1", "email": "b@example.test", "tags": ["x"]}), false),
            ("tag added", json!({"id": "c1", "email": "a@example.test", "tags": ["x", "y"]}), false),
            ("null field", json!({"id": "c1", "email": "a@example.test", "tags": ["x"], "phone": null}), true),
        ];
        for (name, value, same) in cases {
            let other = normalize_contact(obj(value));
            assert_eq!(contact_hash(&base, &[]) == contact_hash(&other, &[]), same, "{name}");
        }
    }

    #[test]
    fn bookkeeping_custom_fields_are_not_hashed() {
        let a = normalize_contact(obj(
            json!({"id": "c", "customFields": [{"id": "lusha_at", "value": "1"}, {"id": "f", "value": 2}]}),
        ));
        let b = normalize_contact(obj(
            json!({"id": "c", "customFields": [{"id": "lusha_at", "value": "2"}, {"id": "f", "value": 2}]}),
        ));
        assert_ne!(contact_hash(&a, &[]), contact_hash(&b, &[]));
        let ignored = vec!["lusha_at".to_owned()];
        assert_eq!(contact_hash(&a, &ignored), contact_hash(&b, &ignored));
    }

    #[test]
    fn location_task_items_match_per_contact_items() {
        let listed = normalize_task(obj(json!({"id": "t1", "title": "Call", "completed": false, "contactId": "c1"})));
        let searched = normalize_task(obj(
            json!({"_id": "t1", "id": "t1", "title": "Call", "completed": false, "contactId": "c1", "contactDetails": {"firstName": "Ada"}}),
        ));
        assert_eq!(value_hash(&listed), value_hash(&searched));
    }

    #[test]
    fn timestamps_round_trip() {
        let ms = parse_timestamp_ms("2021-07-02T05:18:26.704Z").unwrap();
        assert_eq!(format_timestamp_ms(ms), "2021-07-02T05:18:26.704Z");
        assert_eq!(parse_timestamp_ms("yesterday"), None);
    }

    proptest! {
        #[test]
        fn the_hash_ignores_key_order_and_tag_order(keys in proptest::collection::btree_map("[a-z]{1,6}", "[a-z0-9]{0,6}", 0..12), tags in proptest::collection::vec("[a-z]{1,4}", 0..6)) {
            let mut forward = Map::new();
            for (k, v) in &keys { forward.insert(k.clone(), Value::String(v.clone())); }
            forward.insert("tags".into(), json!(tags.clone()));
            let mut reversed_tags = tags.clone();
            reversed_tags.reverse();
            let mut backward = Map::new();
            for (k, v) in keys.iter().rev() { backward.insert(k.clone(), Value::String(v.clone())); }
            backward.insert("tags".into(), json!(reversed_tags));
            prop_assert_eq!(contact_hash(&normalize_contact(forward), &[]), contact_hash(&normalize_contact(backward), &[]));
        }

        #[test]
        fn different_values_give_different_hashes(a in "[a-z]{0,8}", b in "[a-z]{0,8}") {
            prop_assume!(a != b);
            let x = normalize_contact(obj(json!({"id": "c", "firstName": a})));
            let y = normalize_contact(obj(json!({"id": "c", "firstName": b})));
            prop_assert_ne!(contact_hash(&x, &[]), contact_hash(&y, &[]));
        }
    }
}
