//! Config-driven field mapping shared by every connector: pure functions from a GHL record
//! (plus its parent contact and the change's metadata) to the object a target receives.
//!
//! Source paths:
//! - a GHL field by name (`email`, `tags`, `dndSettings.Email.status`: the first segment must be a
//!   known contact, task or note field),
//! - `customFields.<id or key>`: the value of the custom field whose `id` (or `key`/`fieldKey`,
//!   with or without the `contact.` prefix) matches,
//! - `contact.<path>`: the same, on the parent contact of a task or note (the record itself for
//!   contact events),
//! - `@event`, `@location_id`, `@entity`, `@entity_id`, `@contact_id`, `@changed_at`: the change.
//!
//! Errors name fields, never values (they end up in dead letters and logs).

use serde_json::{Map, Value};

use crate::config::{FieldMapping, FieldTransform};

/// Top-level fields of a GHL contact (GET, search item and webhook shapes, reference/ghl.md §6.7).
pub const CONTACT_FIELDS: &[&str] = &[
    "id",
    "name",
    "locationId",
    "firstName",
    "lastName",
    "firstNameLowerCase",
    "lastNameLowerCase",
    "fullNameLowerCase",
    "email",
    "emailLowerCase",
    "timezone",
    "companyName",
    "companyNameLowerCase",
    "phone",
    "phoneLabel",
    "dnd",
    "dndSettings",
    "inboundDndSettings",
    "type",
    "source",
    "assignedTo",
    "address1",
    "address",
    "city",
    "state",
    "country",
    "postalCode",
    "website",
    "tags",
    "dateOfBirth",
    "dateAdded",
    "dateUpdated",
    "attachments",
    "ssn",
    "keyword",
    "lastActivity",
    "customFields",
    "businessId",
    "businessName",
    "attributionSource",
    "lastAttributionSource",
    "visitorId",
    "additionalEmails",
    "additionalPhones",
    "followers",
    "contactName",
    "validEmail",
    "gender",
];

/// Fields of a GHL task (REST and webhook shapes, reference/ghl.md §6.4).
pub const TASK_FIELDS: &[&str] =
    &["id", "title", "body", "assignedTo", "dueDate", "completed", "contactId", "dateAdded", "locationId"];

/// Fields of a GHL note (reference/ghl.md §6.5).
pub const NOTE_FIELDS: &[&str] =
    &["id", "body", "userId", "dateAdded", "contactId", "title", "color", "pinned", "locationId"];

/// Metadata of the change, usable as `@name`.
pub const META_FIELDS: &[&str] = &["event", "location_id", "entity", "entity_id", "contact_id", "changed_at"];

/// Why a record could not be mapped. Names fields only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("required field `{to}` has no value (source `{from}`)")]
    Missing { to: String, from: String },
    #[error("field `{to}`: source `{from}` is not a date")]
    NotADate { to: String, from: String },
    #[error("field `{to}`: cannot format the date as `{format}`")]
    Format { to: String, format: String },
    #[error("field `{to}` conflicts with another mapped field")]
    Conflict { to: String },
}

/// Everything a mapping can read.
#[derive(Debug, Clone, Copy)]
pub struct MapInput<'a> {
    pub record: &'a Value,
    /// The parent contact's snapshot (task/note events); for contact events, the record.
    pub contact: Option<&'a Value>,
    pub meta: &'a Map<String, Value>,
}

impl<'a> MapInput<'a> {
    /// Resolves a source path; `None` when missing.
    pub fn lookup(&self, path: &str) -> Option<Value> {
        if let Some(name) = path.strip_prefix('@') {
            return self.meta.get(name).cloned();
        }
        if let Some(rest) = path.strip_prefix("contact.") {
            return lookup_in(self.contact?, rest);
        }
        lookup_in(self.record, path)
    }
}

fn lookup_in(record: &Value, path: &str) -> Option<Value> {
    if let Some(key) = path.strip_prefix("customFields.") {
        return custom_field(record, key);
    }
    let mut current = record;
    for segment in path.split('.') {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current.clone())
}

/// `customFields: [{id, value}]` (read shape); also matches `key`/`fieldKey` when the record has
/// them, with or without the `contact.` prefix GHL puts on field keys.
fn custom_field(record: &Value, wanted: &str) -> Option<Value> {
    let fields = record.get("customFields")?.as_array()?;
    let bare = wanted.strip_prefix("contact.").unwrap_or(wanted);
    fields
        .iter()
        .find(|field| {
            ["id", "key", "fieldKey"].iter().any(|name| {
                field
                    .get(*name)
                    .and_then(Value::as_str)
                    .is_some_and(|value| value == wanted || value.strip_prefix("contact.").unwrap_or(value) == bare)
            })
        })
        .and_then(|field| field.get("value").or_else(|| field.get("fieldValue")).or_else(|| field.get("field_value")))
        .cloned()
}

/// Maps a record; an empty field list passes the whole record through.
pub fn apply(fields: &[FieldMapping], input: MapInput<'_>) -> Result<Value, MappingError> {
    if fields.is_empty() {
        return Ok(input.record.clone());
    }
    let mut out = Map::new();
    for field in fields {
        let value = map_field(field, input)?;
        if let Some(value) = value {
            insert_path(&mut out, &field.to, value).map_err(|()| MappingError::Conflict { to: field.to.clone() })?;
        }
    }
    Ok(Value::Object(out))
}

fn map_field(field: &FieldMapping, input: MapInput<'_>) -> Result<Option<Value>, MappingError> {
    let source = field.from.clone().unwrap_or_else(|| field.template.clone().unwrap_or_default());
    let mut value = match (&field.template, &field.from) {
        (Some(template), _) => {
            Some(render(template, |path| input.lookup(path))).filter(|t| !t.is_empty()).map(Value::String)
        }
        (None, Some(from)) => input.lookup(from),
        (None, None) => None,
    };
    if let Some(transform) = field.transform
        && let Some(current) = value.take()
    {
        value = transform_value(transform, current, field, &source)?;
    }
    if value.as_ref().is_none_or(is_empty) {
        value = field.default.clone().or(value);
    }
    match value {
        Some(value) if !is_empty(&value) => Ok(Some(value)),
        _ if field.required => Err(MappingError::Missing { to: field.to.clone(), from: source }),
        other => Ok(other.filter(|v| !v.is_null())),
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(text) => text.trim().is_empty(),
        _ => false,
    }
}

fn transform_value(
    transform: FieldTransform,
    value: Value,
    field: &FieldMapping,
    source: &str,
) -> Result<Option<Value>, MappingError> {
    let strings = |value: Value, f: &dyn Fn(&str) -> String| -> Value {
        match value {
            Value::String(text) => Value::String(f(&text)),
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|item| if let Value::String(t) = item { Value::String(f(&t)) } else { item })
                    .collect(),
            ),
            other => other,
        }
    };
    Ok(Some(match transform {
        FieldTransform::Lowercase => strings(value, &|t| t.to_lowercase()),
        FieldTransform::Uppercase => strings(value, &|t| t.to_uppercase()),
        FieldTransform::Trim => strings(value, &|t| t.trim().to_owned()),
        FieldTransform::Join => match value {
            Value::Array(items) => {
                let separator = field.separator.as_deref().unwrap_or(", ");
                let parts: Vec<String> = items.iter().filter(|v| !v.is_null()).map(display).collect();
                Value::String(parts.join(separator))
            }
            other => other,
        },
        FieldTransform::FormatDate => {
            if is_empty(&value) {
                return Ok(None);
            }
            let Some(when) = parse_date(&value) else {
                return Err(MappingError::NotADate { to: field.to.clone(), from: source.to_owned() });
            };
            let format = field.format.as_deref().unwrap_or("rfc3339");
            format_date(when, format)
                .ok_or_else(|| MappingError::Format { to: field.to.clone(), format: format.to_owned() })?
        }
    }))
}

/// A scalar as text (strings without quotes).
pub fn display(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(display).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// ISO-8601/RFC 3339 text, a `YYYY-MM-DD` date, or epoch milliseconds.
pub fn parse_date(value: &Value) -> Option<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    match value {
        Value::String(text) => {
            let text = text.trim();
            if let Ok(when) = time::OffsetDateTime::parse(text, &Rfc3339) {
                return Some(when);
            }
            let date_only = time::macros::format_description!("[year]-[month]-[day]");
            if let Ok(date) = time::Date::parse(text, date_only) {
                return Some(date.midnight().assume_utc());
            }
            text.parse::<i64>().ok().and_then(from_epoch_ms)
        }
        Value::Number(number) => number.as_i64().and_then(from_epoch_ms),
        _ => None,
    }
}

fn from_epoch_ms(ms: i64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

fn format_date(when: time::OffsetDateTime, format: &str) -> Option<Value> {
    match format {
        "rfc3339" => when.format(&time::format_description::well_known::Rfc3339).ok().map(Value::String),
        "unix" => Some(Value::from(when.unix_timestamp())),
        "unix_ms" => i64::try_from(when.unix_timestamp_nanos() / 1_000_000).ok().map(Value::from),
        custom => {
            let description = time::format_description::parse_borrowed::<1>(custom).ok()?;
            when.format(&description).ok().map(Value::String)
        }
    }
}

/// Checks a `format_date` format at config time.
pub fn date_format_is_valid(format: &str) -> bool {
    matches!(format, "rfc3339" | "unix" | "unix_ms") || time::format_description::parse_borrowed::<1>(format).is_ok()
}

fn insert_path(out: &mut Map<String, Value>, path: &str, value: Value) -> Result<(), ()> {
    let mut segments = path.split('.').peekable();
    let mut current = out;
    while let Some(segment) = segments.next() {
        if segments.peek().is_none() {
            if current.contains_key(segment) {
                return Err(());
            }
            current.insert(segment.to_owned(), value);
            return Ok(());
        }
        let next = current.entry(segment.to_owned()).or_insert_with(|| Value::Object(Map::new()));
        current = match next {
            Value::Object(map) => map,
            _ => return Err(()),
        };
    }
    Ok(())
}

/// A piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Field(String),
}

/// Parses `"{firstName} {lastName}"`; `{{` and `}}` are literal braces.
pub fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => return Err("unclosed `{` in template".to_owned()),
                        Some(c) => name.push(c),
                    }
                }
                let name = name.trim().to_owned();
                if name.is_empty() {
                    return Err("empty `{}` in template".to_owned());
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Field(name));
            }
            '}' => return Err("unmatched `}` in template (write `}}` for a brace)".to_owned()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// Renders a template; missing fields render empty and the result is trimmed. A template
/// that does not parse renders literally (validation rejects those at start-up).
pub fn render(template: &str, lookup: impl Fn(&str) -> Option<Value>) -> String {
    let Ok(pieces) = parse_template(template) else {
        return template.to_owned();
    };
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(&text),
            Piece::Field(path) => out.push_str(&lookup(&path).map(|v| display(&v)).unwrap_or_default()),
        }
    }
    // Collapse the double spaces a missing middle field leaves.
    out.split(' ').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Whether `path` names something a mapping can read (config validation).
pub fn source_is_known(path: &str) -> bool {
    if let Some(name) = path.strip_prefix('@') {
        return META_FIELDS.contains(&name);
    }
    let path = path.strip_prefix("contact.").map_or(path, |rest| rest);
    if let Some(key) = path.strip_prefix("customFields.") {
        return !key.trim().is_empty();
    }
    let root = path.split('.').next().unwrap_or("");
    CONTACT_FIELDS.contains(&root) || TASK_FIELDS.contains(&root) || NOTE_FIELDS.contains(&root)
}

/// Every problem in a field list, as (key suffix such as `[2].from`, message).
pub fn validate_fields(fields: &[FieldMapping]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut targets = std::collections::BTreeSet::new();
    let unknown = |path: &str| {
        format!(
            "unknown source field {path:?}: not a GHL contact, task or note field \
             (custom fields: customFields.<id or key>; parent contact: contact.<field>; change: @event, @changed_at, …)"
        )
    };
    for (i, field) in fields.iter().enumerate() {
        if field.to.trim().is_empty() || field.to.split('.').any(str::is_empty) {
            problems.push((format!("[{i}].to"), "must be a non-empty key (dots nest: person.email)".to_owned()));
        } else if !targets.insert(field.to.clone()) {
            problems.push((format!("[{i}].to"), format!("target {:?} is mapped twice", field.to)));
        }
        match (&field.from, &field.template) {
            (Some(_), Some(_)) => {
                problems.push((format!("[{i}].template"), "set either `from` or `template`, not both".to_owned()))
            }
            (None, None) if field.default.is_none() => problems
                .push((format!("[{i}].from"), "missing: set `from`, `template` or a constant `default`".to_owned())),
            _ => {}
        }
        if let Some(from) = &field.from
            && !source_is_known(from)
        {
            problems.push((format!("[{i}].from"), unknown(from)));
        }
        if let Some(template) = &field.template {
            match parse_template(template) {
                Ok(pieces) => {
                    for piece in pieces {
                        if let Piece::Field(path) = piece
                            && !source_is_known(&path)
                        {
                            problems.push((format!("[{i}].template"), unknown(&path)));
                        }
                    }
                }
                Err(message) => problems.push((format!("[{i}].template"), message)),
            }
        }
        if field.transform == Some(FieldTransform::FormatDate) {
            if let Some(format) = &field.format
                && !date_format_is_valid(format)
            {
                problems.push((
                    format!("[{i}].format"),
                    "not a date format: use rfc3339, unix, unix_ms or e.g. \"[year]-[month]-[day]\"".to_owned(),
                ));
            }
        } else if field.format.is_some() {
            problems.push((format!("[{i}].format"), "only used with transform = \"format_date\"".to_owned()));
        }
        if field.separator.is_some() && field.transform != Some(FieldTransform::Join) {
            problems.push((format!("[{i}].separator"), "only used with transform = \"join\"".to_owned()));
        }
    }
    problems
}

/// Checks a message template (`message = "…"`) at config time.
pub fn validate_template(template: &str) -> Vec<String> {
    match parse_template(template) {
        Ok(pieces) => pieces
            .into_iter()
            .filter_map(|piece| match piece {
                Piece::Field(path) if !source_is_known(&path) => Some(format!("unknown source field {path:?}")),
                _ => None,
            })
            .collect(),
        Err(message) => vec![message],
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn field(from: &str, to: &str) -> FieldMapping {
        FieldMapping { from: Some(from.into()), to: to.into(), ..FieldMapping::default() }
    }

    fn contact() -> Value {
        json!({
            "id": "c1",
            "firstName": "Ada",
            "lastName": "Lovelace",
            "email": "Ada@Example.TEST",
            "tags": ["vip", "newsletter"],
            "dateAdded": "2026-03-01T09:55:00.000Z",
            "dndSettings": {"Email": {"status": "active"}},
            "customFields": [{"id": "f1", "value": 42}, {"id": "f2", "key": "contact.lusha_id", "value": "L-9"}]
        })
    }

    fn run(fields: &[FieldMapping], record: &Value) -> Result<Value, MappingError> {
        let meta = Map::from_iter([("event".to_owned(), json!("contact.updated"))]);
        apply(fields, MapInput { record, contact: Some(record), meta: &meta })
    }

    #[test]
    fn an_empty_mapping_passes_the_whole_record() {
        assert_eq!(run(&[], &contact()).unwrap(), contact());
    }

    #[test]
    fn mappings_produce_the_expected_objects() {
        let with = |f: FieldMapping, change: &dyn Fn(&mut FieldMapping)| {
            let mut f = f;
            change(&mut f);
            f
        };
        let cases: Vec<(FieldMapping, Value)> = vec![
            (field("email", "email"), json!({"email": "Ada@Example.TEST"})),
            (
                with(field("email", "email"), &|f| f.transform = Some(FieldTransform::Lowercase)),
                json!({"email": "ada@example.test"}),
            ),
            (
                with(field("firstName", "name"), &|f| f.transform = Some(FieldTransform::Uppercase)),
                json!({"name": "ADA"}),
            ),
            (
                with(field("tags", "tags"), &|f| f.transform = Some(FieldTransform::Join)),
                json!({"tags": "vip, newsletter"}),
            ),
            (
                with(field("tags", "tags"), &|f| {
                    f.transform = Some(FieldTransform::Join);
                    f.separator = Some("|".into());
                }),
                json!({"tags": "vip|newsletter"}),
            ),
            (
                with(field("dateAdded", "added"), &|f| {
                    f.transform = Some(FieldTransform::FormatDate);
                    f.format = Some("[year]-[month]-[day]".into());
                }),
                json!({"added": "2026-03-01"}),
            ),
            (
                with(field("dateAdded", "added"), &|f| {
                    f.transform = Some(FieldTransform::FormatDate);
                    f.format = Some("unix".into());
                }),
                json!({"added": 1_772_358_900}),
            ),
            (field("customFields.f1", "score"), json!({"score": 42})),
            (field("customFields.lusha_id", "lusha"), json!({"lusha": "L-9"})),
            (field("customFields.contact.lusha_id", "lusha"), json!({"lusha": "L-9"})),
            (field("dndSettings.Email.status", "dnd.email"), json!({"dnd": {"email": "active"}})),
            (field("contact.firstName", "first"), json!({"first": "Ada"})),
            (field("@event", "event"), json!({"event": "contact.updated"})),
            (field("phone", "phone"), json!({})),
            (with(field("phone", "phone"), &|f| f.default = Some(json!("n/a"))), json!({"phone": "n/a"})),
            (
                FieldMapping { to: "source".into(), default: Some(json!("ghl")), ..FieldMapping::default() },
                json!({"source": "ghl"}),
            ),
            (
                FieldMapping {
                    to: "full".into(),
                    template: Some("{firstName} {middleName} {lastName}".into()),
                    ..FieldMapping::default()
                },
                json!({"full": "Ada Lovelace"}),
            ),
        ];
        for (mapping, expected) in cases {
            assert_eq!(run(std::slice::from_ref(&mapping), &contact()).unwrap(), expected, "{mapping:?}");
        }
    }

    #[test]
    fn unmappable_records_are_errors_that_name_fields_not_values() {
        let mut required = field("phone", "phone");
        required.required = true;
        let error = run(&[required], &contact()).unwrap_err();
        assert_eq!(error.to_string(), "required field `phone` has no value (source `phone`)");

        let mut date = field("firstName", "when");
        date.transform = Some(FieldTransform::FormatDate);
        let error = run(&[date], &contact()).unwrap_err();
        assert!(!error.to_string().contains("Ada"), "{error}");
        assert!(matches!(error, MappingError::NotADate { .. }));

        let conflict = run(&[field("email", "a"), field("firstName", "a.b")], &contact()).unwrap_err();
        assert!(matches!(conflict, MappingError::Conflict { .. }));
    }

    #[test]
    fn config_validation_names_unknown_sources_and_bad_options() {
        let mut bad_format = field("dateAdded", "d");
        bad_format.transform = Some(FieldTransform::FormatDate);
        bad_format.format = Some("[nope]".into());
        let fields = vec![
            field("email", "email"),
            field("emial", "e2"),
            FieldMapping { to: "t".into(), template: Some("{firstName} {surname}".into()), ..FieldMapping::default() },
            bad_format,
            field("customFields.abc", "email"),
            FieldMapping { to: "x".into(), ..FieldMapping::default() },
        ];
        let problems = validate_fields(&fields);
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["[1].from", "[2].template", "[3].format", "[4].to", "[5].from"], "{problems:#?}");
        assert!(problems[0].1.contains("\"emial\""));
        assert!(problems[1].1.contains("\"surname\""));
    }

    #[test]
    fn templates_parse_escapes_and_reject_broken_braces() {
        assert_eq!(parse_template("{{x}} {a}").unwrap(), vec![Piece::Text("{x} ".into()), Piece::Field("a".into())]);
        assert!(parse_template("{a").is_err());
        assert!(parse_template("a}").is_err());
        assert!(parse_template("{}").is_err());
    }

    #[test]
    fn dates_parse_from_iso_text_dates_and_epoch_milliseconds() {
        let iso = parse_date(&json!("2026-03-01T09:55:00.000Z")).unwrap();
        assert_eq!(parse_date(&json!(1_772_358_900_000_i64)), Some(iso));
        assert_eq!(parse_date(&json!("1772358900000")), Some(iso));
        assert!(parse_date(&json!("2026-03-01")).is_some());
        assert!(parse_date(&json!("soon")).is_none());
    }

    proptest! {
        #[test]
        fn mapping_never_panics_and_copies_strings_verbatim(value in ".*", key in "[a-z]{1,8}") {
            let record = json!({"email": value.clone()});
            let meta = Map::new();
            let fields = vec![field("email", &key)];
            let out = apply(&fields, MapInput { record: &record, contact: None, meta: &meta }).unwrap();
            prop_assert_eq!(out, json!({ key: value }));
        }

        #[test]
        fn templates_render_without_panicking(template in ".{0,40}") {
            let _rendered = render(&template, |_| Some(json!("x")));
        }
    }
}
