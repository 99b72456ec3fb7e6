//! Pure normalisation of GHL records into one canonical shape, and their content hash.
//!
//! **Hash parity (issue 17).** A contact read through `POST /contacts/search` and the same
//! contact read through `GET /contacts/:id` differ in shape (reference/ghl.md §6.2): search says
//! `address` where GET says `address1`, gives `dateOfBirth` as epoch milliseconds, carries only
//! lower-case names, and each path has fields the other lacks. The hash is therefore computed over
//! one canonical projection, [`HASHED_CONTACT_FIELDS`]: exactly the fields both schemas have
//! (`GetContectByIdSchema` in `ghl-openapi/apps/contacts.json` ∩ the search item `Contact` in
//! `ghl-openapi/history/be089e5/contacts/contacts.json`), each mapped to one form. A field that
//! only one read path returns is kept in the stored record but never hashed, so how a contact
//! was read can never make it look changed. [`fill_from_snapshot`] carries GET-only fields over
//! to a record read by search, so a later search read does not lose them.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// A 32-byte content hash.
pub type Hash = [u8; 32];

/// The fields a contact's hash covers: those both read paths carry (see the module doc), by
/// their canonical (GET) names. Left out although both schemas list them: `dateUpdated` (moves
/// without a content change), `dndSettings` (missing from search items in real answers,
/// reference/ghl.md §6.2; the `dnd` flag is hashed, per-channel settings arrive by
/// `ContactDndUpdate` hints). Names are hashed in their lower-case form, the only one search
/// carries: a change of letter case alone is not a change.
pub const HASHED_CONTACT_FIELDS: &[&str] = &[
    "address1",
    "assignedTo",
    "businessId",
    "city",
    "companyName",
    "country",
    "customFields",
    "dateAdded",
    "dateOfBirth",
    "dnd",
    "email",
    "firstNameLowerCase",
    "id",
    "lastNameLowerCase",
    "locationId",
    "phone",
    "postalCode",
    "source",
    "state",
    "tags",
    "type",
];

/// Fields only `GET /contacts/:id` returns (`GetContectByIdSchema` minus the search item):
/// kept in the record, carried over to later search reads, never hashed.
pub const GET_ONLY_CONTACT_FIELDS: &[&str] = &[
    "attachments",
    "attributionSource",
    "emailLowerCase",
    "firstName",
    "fullNameLowerCase",
    "keyword",
    "lastActivity",
    "lastAttributionSource",
    "lastName",
    "name",
    "ssn",
    "timezone",
    "visitorId",
    "website",
];

/// GET-only fields compared between two reads of a contact: a change to one of them is a
/// change, but only when the stored record has the field (it came from an earlier `GET`); a
/// field the snapshot never saw is unknown, not changed. Derived (`name`, `fullNameLowerCase`,
/// `emailLowerCase`) and volatile (`lastActivity`) fields are left out.
const GET_ONLY_COMPARED: &[&str] = &[
    "attachments",
    "attributionSource",
    "firstName",
    "keyword",
    "lastAttributionSource",
    "lastName",
    "ssn",
    "timezone",
    "visitorId",
    "website",
];

/// Whether a contact read by `GET` (`new`) differs from its stored record (`old`) in a field
/// only `GET` returns and the stored record knows. Such a change cannot show in the hash
/// (search never returns the field), so a webhook-driven read decides it this way.
pub fn get_only_changed(old: &Map<String, Value>, new: &Map<String, Value>) -> bool {
    GET_ONLY_COMPARED.iter().any(|key| old.get(*key).is_some_and(|before| new.get(*key) != Some(before)))
}

/// Derived fields that only search items carry (`contactName` is `firstName lastName`, …),
/// dropped from the record.
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
    "firstNameRaw",
    "lastNameRaw",
    "companyNameLowerCase",
];

/// The fields of a task, stored and hashed: `TaskSchema` of `GET /contacts/:contactId/tasks`
/// in `ghl-openapi/apps/contacts.json`, the common set of both read paths (the location-wide
/// task search adds `_id` for `id`, `contactDetails`, `assignedToUserDetails`, `status`,
/// `locationId`, `deleted`, reference/ghl.md §6.4). Sorted. A task read either way normalises
/// to the same record and hash, as contacts do through [`HASHED_CONTACT_FIELDS`].
pub const TASK_FIELDS: &[&str] = &["assignedTo", "body", "completed", "contactId", "dueDate", "id", "title"];

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
    // Search carries names only in lower case: derive that form from GET's names, so both
    // read paths hash the same name.
    for (name, lower) in [("firstName", "firstNameLowerCase"), ("lastName", "lastNameLowerCase")] {
        if let Some(Value::String(text)) = contact.get(name) {
            let lowered = Value::String(text.to_lowercase());
            contact.insert(lower.into(), lowered);
        }
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

/// How a contact was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPath {
    /// `POST /contacts/search`: the search item shape (no GET-only fields).
    Search,
    /// `GET /contacts/:id`: the full shape.
    Get,
}

/// Carries GET-only fields from the stored record `old` over to `new`, a record read by
/// search (which never has them), so delivered records keep them between GET reads. A name
/// is carried only while it still matches the lower-case name search returned; derived
/// fields that can be recomputed are recomputed instead.
pub fn fill_from_snapshot(new: &mut Map<String, Value>, old: &Map<String, Value>) {
    let lower = |map: &Map<String, Value>, key: &str| map.get(key).and_then(Value::as_str).map(str::to_owned);
    for key in GET_ONLY_CONTACT_FIELDS {
        if new.contains_key(*key) {
            continue;
        }
        let Some(value) = old.get(*key) else { continue };
        let consistent = match *key {
            "firstName" | "lastName" => {
                let lower_key = if *key == "firstName" { "firstNameLowerCase" } else { "lastNameLowerCase" };
                value.as_str().map(str::to_lowercase) == lower(new, lower_key)
            }
            // Recomputed below from what search returned.
            "name" | "fullNameLowerCase" | "emailLowerCase" => false,
            _ => true,
        };
        if consistent {
            new.insert((*key).to_owned(), value.clone());
        }
    }
    if let Some(Value::String(email)) = new.get("email") {
        let lowered = Value::String(email.to_lowercase());
        new.insert("emailLowerCase".into(), lowered);
    }
    let first = new.get("firstName").and_then(Value::as_str);
    let last = new.get("lastName").and_then(Value::as_str);
    if first.is_some() || last.is_some() {
        let name = [first, last].into_iter().flatten().collect::<Vec<_>>().join(" ");
        new.insert("fullNameLowerCase".into(), Value::String(name.to_lowercase()));
        new.insert("name".into(), Value::String(name));
    }
}

/// Maps a task (per-contact list or location-wide search item) to one shape: the search's
/// `_id` becomes `id`, then only [`TASK_FIELDS`] are kept, nulls dropped.
pub fn normalize_task(mut task: Map<String, Value>) -> Map<String, Value> {
    if !task.contains_key("id")
        && let Some(id) = task.remove("_id")
    {
        task.insert("id".into(), id);
    }
    task.retain(|key, value| TASK_FIELDS.contains(&key.as_str()) && !value.is_null());
    task
}

/// Notes need no reshaping beyond dropping nulls.
pub fn normalize_note(mut note: Map<String, Value>) -> Map<String, Value> {
    drop_nulls(&mut note);
    note
}

/// The fields of an appointment: the properties of `GetEventSchema`, the `events[]` item of
/// `GET /contacts/:contactId/appointments` in `ghl-openapi/apps/contacts.json`.
pub const APPOINTMENT_FIELDS: &[&str] = &[
    "address",
    "appointmentStatus",
    "assignedResources",
    "assignedUserId",
    "calendarId",
    "contactId",
    "dateAdded",
    "dateUpdated",
    "endTime",
    "groupId",
    "id",
    "locationId",
    "notes",
    "startTime",
    "status",
    "title",
    "users",
];

/// Maps an appointment to the schema's fields ([`APPOINTMENT_FIELDS`]): anything else GHL adds
/// is dropped, times are kept as given (GHL's `2021-07-16 11:00:00`), nulls are dropped. Hashed
/// whole with [`value_hash`], like tasks and notes; a cancellation is an update
/// (`appointmentStatus: "cancelled"`).
pub fn normalize_appointment(mut appointment: Map<String, Value>) -> Map<String, Value> {
    appointment.retain(|key, _| APPOINTMENT_FIELDS.contains(&key.as_str()));
    drop_nulls(&mut appointment);
    appointment
}

/// A child record (task, note, appointment) in its canonical shape, as the sync stores and
/// hashes it ([`value_hash`]). The one place both the sync's child reads and the write-back's
/// read-back of a child it changed normalise through, so their hashes agree.
pub fn normalize_child(kind: crate::domain::EntityKind, record: Map<String, Value>) -> Map<String, Value> {
    match kind {
        crate::domain::EntityKind::Task => normalize_task(record),
        crate::domain::EntityKind::Appointment => normalize_appointment(record),
        _ => normalize_note(record),
    }
}

/// The contact's content hash over the canonical projection ([`HASHED_CONTACT_FIELDS`]),
/// without the bookkeeping custom fields the daemon writes itself (`ignored_custom_fields`,
/// by custom field id). `contact` must come from [`normalize_contact`].
pub fn contact_hash(contact: &Map<String, Value>, ignored_custom_fields: &[String]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(b"{");
    // HASHED_CONTACT_FIELDS is sorted, so the projection is in canonical key order.
    for key in HASHED_CONTACT_FIELDS {
        let Some(value) = contact.get(*key) else { continue };
        if *key == "customFields" {
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
    fn task_fields_are_the_task_schema_sorted() {
        let mut sorted = TASK_FIELDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, TASK_FIELDS);
        let mut schema = crate::rules::catalog::TASK_FIELDS.to_vec();
        schema.sort_unstable();
        assert_eq!(schema, TASK_FIELDS, "TaskSchema of GET /contacts/:contactId/tasks");
    }

    /// A task, as `GET /contacts/:contactId/tasks` and the location-wide search render it.
    fn task_both_ways(
        id: &str,
        title: &str,
        body: Option<&str>,
        due: &str,
        completed: bool,
        assigned: Option<&str>,
    ) -> (Map<String, Value>, Map<String, Value>) {
        let listed = obj(json!({
            "id": id, "title": title, "body": body, "assignedTo": assigned, "dueDate": due,
            "completed": completed, "contactId": "c1",
        }));
        let searched = obj(json!({
            "_id": id, "title": title, "body": body, "dueDate": due, "completed": completed,
            "status": if completed { "completed" } else { "incompleted" }, "contactId": "c1",
            "assignedTo": assigned, "locationId": "loc", "deleted": false,
            "contactDetails": {"id": "c1", "firstName": "Ada", "lastName": null, "email": "a@example.com"},
            "assignedToUserDetails": assigned.map(|u| json!({"id": u, "firstName": "Bo", "lastName": "C"})),
        }));
        (listed, searched)
    }

    proptest::proptest! {
        #[test]
        fn a_task_hashes_the_same_read_by_search_or_per_contact(
            id in "[A-Za-z0-9]{1,24}",
            title in "\\PC{0,40}",
            body in proptest::option::of("\\PC{0,60}"),
            due in "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9].000Z",
            completed: bool,
            assigned in proptest::option::of("[A-Za-z0-9]{20}"),
        ) {
            let (listed, searched) = task_both_ways(&id, &title, body.as_deref(), &due, completed, assigned.as_deref());
            let listed = normalize_child(crate::domain::EntityKind::Task, listed);
            let searched = normalize_child(crate::domain::EntityKind::Task, searched);
            proptest::prop_assert_eq!(&listed, &searched);
            proptest::prop_assert_eq!(value_hash(&listed), value_hash(&searched));
        }
    }

    #[test]
    fn timestamps_round_trip() {
        let ms = parse_timestamp_ms("2021-07-02T05:18:26.704Z").unwrap();
        assert_eq!(format_timestamp_ms(ms), "2021-07-02T05:18:26.704Z");
        assert_eq!(parse_timestamp_ms("yesterday"), None);
    }

    #[test]
    fn a_get_only_field_counts_as_changed_only_when_the_snapshot_knew_it() {
        let searched = normalize_contact(obj(json!({"id": "c", "firstNameLowerCase": "ada"})));
        let got = normalize_contact(obj(json!({"id": "c", "firstName": "Ada", "website": "https://a.example"})));
        assert!(!get_only_changed(&searched, &got), "never read by GET: unknown, not changed");
        assert!(!get_only_changed(&got, &got.clone()));
        let moved = normalize_contact(obj(json!({"id": "c", "firstName": "Ada", "website": "https://b.example"})));
        assert!(get_only_changed(&got, &moved));
        let recased = normalize_contact(obj(json!({"id": "c", "firstName": "ADA", "website": "https://a.example"})));
        assert!(get_only_changed(&got, &recased), "a case-only name change shows in the GET-only name");
        let cleared = normalize_contact(obj(json!({"id": "c", "firstName": "Ada"})));
        assert!(get_only_changed(&got, &cleared));
        assert!(GET_ONLY_COMPARED.iter().all(|f| GET_ONLY_CONTACT_FIELDS.contains(f)));
    }

    #[test]
    fn the_hashed_projection_is_sorted_and_disjoint_from_the_get_only_fields() {
        let mut sorted = HASHED_CONTACT_FIELDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, HASHED_CONTACT_FIELDS, "contact_hash relies on the canonical (sorted) order");
        for field in GET_ONLY_CONTACT_FIELDS {
            assert!(!HASHED_CONTACT_FIELDS.contains(field), "{field} is GET-only and must not be hashed");
        }
    }

    #[test]
    fn a_search_read_keeps_get_only_fields_from_the_snapshot_while_they_still_match() {
        let old = normalize_contact(obj(json!({
            "id": "c1", "firstName": "Ada", "lastName": "Lovelace", "timezone": "Europe/London",
            "website": "https://ada.example", "email": "Ada@Example.test"
        })));
        let mut renamed = normalize_contact(obj(json!({
            "id": "c1", "firstNameLowerCase": "augusta", "lastNameLowerCase": "lovelace", "email": "ada@example.test"
        })));
        fill_from_snapshot(&mut renamed, &old);
        assert_eq!(renamed["timezone"], "Europe/London");
        assert_eq!(renamed["website"], "https://ada.example");
        assert_eq!(renamed["lastName"], "Lovelace");
        assert!(!renamed.contains_key("firstName"), "a stale first name is not carried over");
        assert_eq!(renamed["name"], "Lovelace");
        assert_eq!(renamed["emailLowerCase"], "ada@example.test");
    }

    /// One contact as GHL holds it; rendered below in the two shapes GHL's specs give it.
    #[derive(Debug, Clone)]
    struct Truth {
        first: Option<String>,
        last: Option<String>,
        email: Option<String>,
        phone: Option<String>,
        address: Option<String>,
        city: Option<String>,
        company: Option<String>,
        business: Option<String>,
        dnd: Option<bool>,
        birth_ms: Option<i64>,
        tags: Vec<String>,
        custom: Vec<(String, Value)>,
        timezone: Option<String>,
        website: Option<String>,
    }

    fn set(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
        if let Some(value) = value {
            map.insert(key.into(), value);
        }
    }

    /// `GET /contacts/:id` (`GetContectByIdSchema`): GET-only fields, `address1`, ISO dates.
    fn as_get(t: &Truth) -> Map<String, Value> {
        let mut m = obj(json!({"id": "c1", "locationId": "loc", "dateAdded": "2026-01-01T00:00:00.000Z",
            "dateUpdated": "2026-02-02T00:00:00.000Z", "type": "lead", "source": "form",
            "attributionSource": {"url": "https://site.example/landing", "campaign": "spring"}}));
        set(&mut m, "firstName", t.first.clone().map(Value::String));
        set(&mut m, "lastName", t.last.clone().map(Value::String));
        set(&mut m, "firstNameLowerCase", t.first.as_ref().map(|v| Value::String(v.to_lowercase())));
        set(&mut m, "lastNameLowerCase", t.last.as_ref().map(|v| Value::String(v.to_lowercase())));
        let name = [t.first.as_deref(), t.last.as_deref()].into_iter().flatten().collect::<Vec<_>>().join(" ");
        set(&mut m, "name", (!name.is_empty()).then_some(Value::String(name)));
        set(&mut m, "email", t.email.clone().map(Value::String));
        set(&mut m, "emailLowerCase", t.email.as_ref().map(|v| Value::String(v.to_lowercase())));
        set(&mut m, "phone", t.phone.clone().map(Value::String));
        set(&mut m, "address1", t.address.clone().map(Value::String));
        set(&mut m, "city", t.city.clone().map(Value::String));
        set(&mut m, "companyName", t.company.clone().map(Value::String));
        set(&mut m, "businessId", t.business.clone().map(Value::String));
        set(&mut m, "dnd", t.dnd.map(Value::Bool));
        set(&mut m, "dateOfBirth", t.birth_ms.and_then(epoch_ms_to_date).map(Value::String));
        set(&mut m, "timezone", t.timezone.clone().map(Value::String));
        set(&mut m, "website", t.website.clone().map(Value::String));
        m.insert("tags".into(), json!(t.tags));
        m.insert(
            "customFields".into(),
            json!(t.custom.iter().map(|(id, v)| json!({"id": id, "value": v})).collect::<Vec<_>>()),
        );
        m.insert("dndSettings".into(), json!({"Email": {"status": "active"}}));
        m.insert("lastActivity".into(), json!(1_767_225_600_000i64));
        m
    }

    /// A `POST /contacts/search` item (be089e5 `Contact`): `address`, epoch `dateOfBirth`,
    /// lower-case names only, derived extras, reversed tag order, no GET-only fields.
    fn as_search(t: &Truth) -> Map<String, Value> {
        let mut m = obj(json!({"id": "c1", "locationId": "loc", "dateAdded": "2026-01-01T00:00:00.000Z",
            "dateUpdated": "2026-03-03T00:00:00.000Z", "type": "lead", "source": "form",
            "searchAfter": [1, "c1"], "followers": [], "additionalEmails": [], "additionalPhones": [],
            "phoneLabel": "Mobile", "opportunities": []}));
        set(&mut m, "firstNameLowerCase", t.first.as_ref().map(|v| Value::String(v.to_lowercase())));
        set(&mut m, "lastNameLowerCase", t.last.as_ref().map(|v| Value::String(v.to_lowercase())));
        set(&mut m, "email", t.email.clone().map(Value::String));
        set(&mut m, "validEmail", t.email.as_ref().map(|_| Value::Bool(true)));
        set(&mut m, "phone", t.phone.clone().map(Value::String));
        set(&mut m, "address", t.address.clone().map(Value::String));
        set(&mut m, "city", t.city.clone().map(Value::String));
        set(&mut m, "companyName", t.company.clone().map(Value::String));
        set(&mut m, "businessName", t.company.clone().map(Value::String));
        set(&mut m, "businessId", t.business.clone().map(Value::String));
        set(&mut m, "dnd", t.dnd.map(Value::Bool));
        set(&mut m, "dateOfBirth", t.birth_ms.map(|ms| json!(ms)));
        let mut tags = t.tags.clone();
        tags.reverse();
        m.insert("tags".into(), json!(tags));
        let mut custom: Vec<Value> = t.custom.iter().map(|(id, v)| json!({"id": id, "value": v})).collect();
        custom.reverse();
        m.insert("customFields".into(), json!(custom));
        m
    }

    fn truth() -> impl Strategy<Value = Truth> {
        let text = || proptest::option::of("[A-Za-zÀ-ÿ' .-]{1,12}");
        let mail = proptest::option::of("[A-Za-z0-9]{1,8}@[a-z]{1,6}\\.test");
        (
            (text(), text(), mail, proptest::option::of("\\+1[0-9]{10}"), text(), text(), text()),
            (
                proptest::option::of("[a-f0-9]{24}"),
                proptest::option::of(any::<bool>()),
                proptest::option::of(-2_000_000_000_000i64..2_000_000_000_000i64),
                proptest::collection::btree_set("[a-z:]{1,8}", 0..5),
                proptest::collection::btree_map("[a-zA-Z0-9]{4,8}", "[a-z0-9 ]{0,6}", 0..4),
                text(),
                text(),
            ),
        )
            .prop_map(
                |(
                    (first, last, email, phone, address, city, company),
                    (business, dnd, birth_ms, tags, custom, timezone, website),
                )| Truth {
                    first,
                    last,
                    email,
                    phone,
                    address,
                    city,
                    company,
                    business,
                    dnd,
                    // Whole days: GET gives a date, search the epoch of that date.
                    birth_ms: birth_ms.map(|ms| ms - ms.rem_euclid(86_400_000)),
                    tags: tags.into_iter().collect(),
                    custom: custom.into_iter().map(|(k, v)| (k, Value::String(v))).collect(),
                    timezone,
                    website,
                },
            )
    }

    #[test]
    fn appointments_keep_exactly_the_schema_fields_with_times_as_given() {
        let item = obj(json!({
            "id": "a1", "calendarId": "cal", "status": "booked", "title": "Intro call",
            "startTime": "2021-07-16 11:00:00", "endTime": "2021-07-16 11:30:00",
            "appointmentStatus": "confirmed", "users": ["u1"], "assignedUserId": null,
            "dateUpdated": "2021-07-16 10:00:00", "someFutureField": {"x": 1}, "traceId": "t"
        }));
        let record = normalize_appointment(item);
        let keys: Vec<&str> = record.keys().map(String::as_str).collect();
        let mut expected = vec![
            "id",
            "calendarId",
            "status",
            "title",
            "startTime",
            "endTime",
            "appointmentStatus",
            "users",
            "dateUpdated",
        ];
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(record["startTime"], json!("2021-07-16 11:00:00"));
    }

    #[test]
    fn an_appointment_hash_moves_with_a_cancellation_but_not_with_fields_outside_the_schema() {
        let base =
            json!({"id": "a1", "title": "Demo", "appointmentStatus": "confirmed", "startTime": "2021-07-16 11:00:00"});
        let hash = |v: &Value| value_hash(&normalize_appointment(obj(v.clone())));
        let mut cancelled = base.clone();
        cancelled["appointmentStatus"] = json!("cancelled");
        let mut extra = base.clone();
        extra["unknownField"] = json!("ignored");
        let mut moved = base.clone();
        moved["startTime"] = json!("2021-07-17 11:00:00");
        assert_ne!(hash(&base), hash(&cancelled));
        assert_ne!(hash(&base), hash(&moved));
        assert_eq!(hash(&base), hash(&extra));
    }

    #[test]
    fn appointment_fields_equal_the_spec_schema_in_the_sandbox_fixture() {
        let fixture: Value =
            serde_json::from_str(include_str!("../../crates/sandbox/fixtures/ghl-schemas.json")).unwrap();
        let schema = fixture["schemas"].as_array().unwrap().iter().find(|s| s["name"] == "appointment").unwrap();
        assert_eq!(schema["schema"], "GetEventSchema");
        let mut spec: Vec<&str> =
            schema["properties"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        spec.sort_unstable();
        assert_eq!(spec, APPOINTMENT_FIELDS);
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
        fn a_contact_hashes_the_same_whether_read_by_get_or_by_search(t in truth()) {
            let by_get = normalize_contact(as_get(&t));
            let by_search = normalize_contact(as_search(&t));
            prop_assert_eq!(contact_hash(&by_get, &[]), contact_hash(&by_search, &[]));
            // And a search read filled from a GET snapshot keeps hashing the same.
            let mut filled = by_search.clone();
            fill_from_snapshot(&mut filled, &by_get);
            prop_assert_eq!(contact_hash(&filled, &[]), contact_hash(&by_get, &[]));
        }

        #[test]
        fn a_change_to_a_field_both_paths_carry_changes_the_hash_on_both(t in truth(), which in 0usize..6) {
            let mut changed = t.clone();
            match which {
                0 => changed.email = Some(format!("x{}", t.email.clone().unwrap_or_default())),
                1 => changed.phone = Some(format!("{}9", t.phone.clone().unwrap_or_default())),
                2 => changed.tags.push("zz-new-tag".into()),
                3 => changed.first = Some(format!("{}q", t.first.clone().unwrap_or_default())),
                4 => changed.dnd = Some(!t.dnd.unwrap_or(false)),
                _ => changed.custom.push(("zzfield".into(), json!("v"))),
            }
            let before = contact_hash(&normalize_contact(as_get(&t)), &[]);
            prop_assert_ne!(before, contact_hash(&normalize_contact(as_get(&changed)), &[]));
            prop_assert_ne!(before, contact_hash(&normalize_contact(as_search(&changed)), &[]));
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
