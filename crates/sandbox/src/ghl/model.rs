//! Data model of the fake GHL: compact records, deterministic generation and JSON rendering.
//!
//! Seeded contacts are stored as a 64-byte record (`Contact`); their fields are generated
//! from `(seed, location, n)` when rendered, and only materialised (`Fields`) when written.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::schema;

pub(crate) const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A GHL-style id: 20 ASCII alphanumerics, stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(crate) struct Cid(pub(crate) [u8; 20]);

impl Cid {
    pub(crate) const MIN: Cid = Cid([0; 20]);
    pub(crate) const MAX: Cid = Cid([255; 20]);

    pub(crate) fn random(rng: &mut fastrand::Rng) -> Self {
        let mut bytes = [0u8; 20];
        for byte in &mut bytes {
            *byte = ALNUM[rng.usize(..ALNUM.len())];
        }
        Cid(bytes)
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; 20] = text.as_bytes().try_into().ok()?;
        bytes.iter().all(u8::is_ascii_alphanumeric).then_some(Cid(bytes))
    }
}

/// Random token-ish string (hex) of `len` chars.
pub(crate) fn random_hex(rng: &mut fastrand::Rng, len: usize) -> String {
    const HEX: &[u8] = b"0123456789abcdef";
    (0..len).map(|_| HEX[rng.usize(..16)] as char).collect()
}

/// Milliseconds since the Unix epoch, from the system clock.
pub(crate) fn system_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// ISO-8601 UTC with milliseconds, e.g. `2021-07-02T05:18:26.704Z`.
pub(crate) fn iso(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => "1970-01-01T00:00:00.000Z".to_owned(),
    }
}

/// Parses an ISO-8601 / RFC 3339 timestamp (or epoch ms as a number or digit string) to ms.
pub(crate) fn parse_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => {
            if let Ok(n) = s.parse::<i64>() {
                return Some(n);
            }
            let parsed =
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok().or_else(|| {
                    // Date only: YYYY-MM-DD.
                    let date = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
                    Some(date.midnight().assume_utc())
                })?;
            i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
        }
        _ => None,
    }
}

/// A custom field definition: `(id, name, fieldKey, dataType)`.
pub(crate) type CustomFieldDef = (Arc<str>, Arc<str>, Arc<str>, &'static str);

/// A seeded location.
#[derive(Debug, Clone)]
pub(crate) struct Loc {
    pub(crate) id: Cid,
    pub(crate) name: String,
    pub(crate) pit: String,
    pub(crate) users: Vec<(Arc<str>, &'static str, &'static str)>,
    pub(crate) businesses: Vec<(Arc<str>, String)>,
    pub(crate) custom_fields: Vec<CustomFieldDef>,
    pub(crate) calendars: Vec<Calendar>,
}

/// A calendar of a location (appointments are booked on one).
#[derive(Debug, Clone)]
pub(crate) struct Calendar {
    pub(crate) id: Arc<str>,
    /// The calendar group, if the calendar is in one.
    pub(crate) group: Option<Arc<str>>,
    pub(crate) name: &'static str,
}

/// The compact contact record. `fields == None` means "as generated from `n`".
#[derive(Debug, Clone)]
pub(crate) struct Contact {
    pub(crate) id: Cid,
    pub(crate) loc: u16,
    pub(crate) n: u32,
    pub(crate) added: i64,
    pub(crate) updated: i64,
    pub(crate) fields: Option<Arc<Fields>>,
}

/// Materialised contact fields.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fields {
    pub(crate) first_name: Option<String>,
    pub(crate) last_name: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) email: Option<String>,
    pub(crate) phone: Option<String>,
    pub(crate) address1: Option<String>,
    pub(crate) city: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) postal_code: Option<String>,
    pub(crate) country: Option<String>,
    pub(crate) website: Option<String>,
    pub(crate) timezone: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) company_name: Option<String>,
    pub(crate) assigned_to: Option<String>,
    pub(crate) date_of_birth: Option<String>,
    pub(crate) gender: Option<String>,
    pub(crate) dnd: bool,
    pub(crate) dnd_settings: Option<Value>,
    pub(crate) inbound_dnd_settings: Option<Value>,
    pub(crate) tags: Vec<String>,
    pub(crate) custom_fields: Vec<(String, Value)>,
    pub(crate) business_id: Option<String>,
    /// `AttributionSource` objects (GET only).
    pub(crate) attribution_source: Option<Value>,
    pub(crate) last_attribution_source: Option<Value>,
    /// Live-chat visitor id (GET only).
    pub(crate) visitor_id: Option<String>,
    pub(crate) ssn: Option<String>,
    pub(crate) keyword: Option<String>,
}

impl Fields {
    pub(crate) fn contact_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let first = self.first_name.as_deref().unwrap_or("");
        let last = self.last_name.as_deref().unwrap_or("");
        format!("{first} {last}").trim().to_owned()
    }

    /// Looks up a field the way the search filters name it.
    pub(crate) fn get(&self, field: &str) -> Value {
        let text = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
        match field {
            "firstName" | "firstNameLowerCase" => text(&self.first_name),
            "lastName" | "lastNameLowerCase" => text(&self.last_name),
            "contactName" | "name" | "fullNameLowerCase" => Value::String(self.contact_name()),
            "email" | "emailLowerCase" => text(&self.email),
            "phone" => text(&self.phone),
            "address" | "address1" => text(&self.address1),
            "city" => text(&self.city),
            "state" => text(&self.state),
            "postalCode" => text(&self.postal_code),
            "country" => text(&self.country),
            "website" => text(&self.website),
            "timezone" => text(&self.timezone),
            "source" => text(&self.source),
            "companyName" | "businessName" => text(&self.company_name),
            "assignedTo" => text(&self.assigned_to),
            "dateOfBirth" => text(&self.date_of_birth),
            "businessId" => text(&self.business_id),
            "dnd" => Value::Bool(self.dnd),
            "tags" => json!(self.tags),
            "type" => json!("lead"),
            _ => Value::Null,
        }
    }
}

const FIRST: &[&str] = &[
    "Ada", "Bo", "Cyd", "Dee", "Eli", "Fen", "Gus", "Hal", "Ivo", "Jo", "Kit", "Lu", "Mo", "Nia", "Oz", "Pip", "Quin",
    "Rue", "Sol", "Tam", "Uma", "Vi", "Wes", "Xan", "Yui", "Zed",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("Testville", "CA", "US"),
    ("Sampleton", "TX", "US"),
    ("Mockford", "NY", "US"),
    ("Fakeburg", "WA", "US"),
    ("Stubham", "ON", "CA"),
    ("Dummyport", "BE", "DE"),
];
const TIMEZONES: &[&str] = &["America/Los_Angeles", "America/Chicago", "America/New_York", "Europe/Berlin"];
const SOURCES: &[&str] = &["public api", "web form", "import", "chat widget"];
const TAGS: &[&str] = &["lead", "customer", "vip", "newsletter", "trial", "cold"];
const COMPANIES: &[&str] = &["Acme Test Co", "Example Labs", "Sample Widgets", "Fixture Inc"];
pub(crate) const TASK_TITLES: &[&str] = &["Call back", "Send quote", "Follow up", "Book demo", "Check renewal"];
pub(crate) const TASK_BODIES: &[&str] =
    &["Ask about the budget.", "Mention the new plan.", "Confirm the meeting time.", ""];
pub(crate) const NOTE_BODIES: &[&str] =
    &["Spoke briefly; interested.", "Prefers email over phone.", "Asked for pricing sheet.", "Left a voicemail."];
pub(crate) const USER_FIRST: &[&str] = &["Sam", "Alex", "Robin", "Casey"];
pub(crate) const USER_LAST: &[&str] = &["Agent", "Seller", "Closer", "Helper"];

/// Seeded data starts here (2025-01-01T00:00:00Z) and spans a year.
pub(crate) const SEED_BASE_MS: i64 = 1_735_689_600_000;
pub(crate) const SEED_SPAN_MS: i64 = 365 * 24 * 3600 * 1000;

/// Generates the seeded fields of contact `n` of location `loc`: every field when
/// `get_only` (for `GET` and the other full shapes), or without the fields only `GET` shows
/// (attribution, visitor id, keyword, ssn), which search never renders: search is the hot path.
pub(crate) fn generate_fields(seed: u64, loc_index: u16, loc: &Loc, n: u32, get_only: bool) -> Fields {
    let mut rng = fastrand::Rng::with_seed(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (u64::from(loc_index) << 40) ^ u64::from(n),
    );
    let (city, state, country) = CITIES[rng.usize(..CITIES.len())];
    let mut tags: Vec<String> = TAGS.iter().filter(|_| rng.u8(..4) == 0).map(|t| (*t).to_owned()).collect();
    tags.sort();
    let global = u64::from(loc_index) * 10_000_000 + u64::from(n);
    let assigned = if loc.users.is_empty() || rng.bool() {
        None
    } else {
        Some(loc.users[rng.usize(..loc.users.len())].0.to_string())
    };
    let business = if loc.businesses.is_empty() || rng.u8(..3) != 0 {
        None
    } else {
        Some(loc.businesses[rng.usize(..loc.businesses.len())].0.to_string())
    };
    let custom_fields = match loc.custom_fields.first() {
        Some((id, ..)) if rng.u8(..3) == 0 => {
            vec![(id.to_string(), json!(format!("seed-{global}")))]
        }
        _ => Vec::new(),
    };
    let mut f = Fields {
        first_name: Some(FIRST[rng.usize(..FIRST.len())].to_owned()),
        last_name: Some(format!("Test{n}")),
        name: None,
        email: Some(format!("user{global}@example.test")),
        phone: Some(format!("+1555{:07}", rng.u32(..10_000_000))),
        address1: Some(format!("{} Fixture St", rng.u16(1..999))),
        city: Some(city.to_owned()),
        state: Some(state.to_owned()),
        postal_code: Some(format!("{:05}", rng.u32(..100_000))),
        country: Some(country.to_owned()),
        website: rng.bool().then(|| format!("https://site{global}.example.test")),
        timezone: Some(TIMEZONES[rng.usize(..TIMEZONES.len())].to_owned()),
        source: Some(SOURCES[rng.usize(..SOURCES.len())].to_owned()),
        company_name: (rng.u8(..3) == 0).then(|| COMPANIES[rng.usize(..COMPANIES.len())].to_owned()),
        assigned_to: assigned,
        date_of_birth: (rng.u8(..2) == 0)
            .then(|| format!("{}-{:02}-{:02}", rng.u16(1950..2005), rng.u8(1..13), rng.u8(1..29))),
        gender: None,
        dnd: rng.u8(..20) == 0,
        tags,
        custom_fields,
        business_id: business,
        ..Fields::default()
    };
    // Drawn after every field above, so adding it left the older seeded values unchanged.
    f.dnd_settings = seeded_dnd_settings(&mut rng, f.dnd);
    if !get_only {
        return f;
    }
    // A stream of its own: the fields above do not depend on whether these are drawn.
    let mut rng = fastrand::Rng::with_seed(rng_seed_get_only(seed, loc_index, n));
    f.attribution_source = seeded_attribution(&mut rng, f.source.as_deref(), global, false);
    if f.attribution_source.is_some() && rng.u8(..3) == 0 {
        f.last_attribution_source = seeded_attribution(&mut rng, f.source.as_deref(), global, true);
    }
    if f.source.as_deref() == Some("chat widget") {
        f.visitor_id = Some(Cid::random(&mut rng).as_str().to_owned());
    }
    if rng.u8(..8) == 0 {
        f.keyword = Some(KEYWORDS[rng.usize(..KEYWORDS.len())].to_owned());
    }
    if rng.u8(..25) == 0 {
        // Synthetic: the 000 area number is never issued.
        f.ssn = Some(format!("000-{:02}-{:04}", rng.u8(1..100), rng.u16(1..10_000)));
    }
    f
}

fn rng_seed_get_only(seed: u64, loc_index: u16, n: u32) -> u64 {
    (seed ^ 0x6E70_0001_A771_B0CE).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (u64::from(loc_index) << 40) ^ u64::from(n)
}

const KEYWORDS: &[&str] = &["pricing", "demo", "newsletter", "webinar"];
const DND_CHANNELS: &[&str] = &["Call", "Email", "SMS", "WhatsApp", "GMB", "FB"];

/// `DndSettingsSchema`: every channel active for DND contacts, one channel set for a few
/// others, none for most.
fn seeded_dnd_settings(rng: &mut fastrand::Rng, dnd: bool) -> Option<Value> {
    let setting = |status: &str| json!({"status": status, "message": "", "code": ""});
    if dnd {
        let all: Map<String, Value> = DND_CHANNELS.iter().map(|c| ((*c).to_owned(), setting("active"))).collect();
        return Some(Value::Object(all));
    }
    match rng.u8(..6) {
        0 => Some(json!({"Email": setting("inactive")})),
        1 => Some(json!({"SMS": {"status": "permanent", "message": "Opted out by replying STOP", "code": "103"}})),
        _ => None,
    }
}

/// `AttributionSource`: where a contact came from (`url` is required by the schema).
fn seeded_attribution(rng: &mut fastrand::Rng, source: Option<&str>, global: u64, last: bool) -> Option<Value> {
    let page = if last { "pricing" } else { "contact" };
    let mut m = Map::new();
    match source {
        Some("web form") => {
            m.insert("url".into(), json!(format!("https://www.example.test/{page}")));
            m.insert("medium".into(), json!("form"));
            m.insert("mediumId".into(), json!(Cid::random(rng).as_str()));
            if rng.bool() {
                m.insert("utmSource".into(), json!("google"));
                m.insert("utmMedium".into(), json!("cpc"));
                m.insert("campaign".into(), json!(format!("spring-{}", global % 3)));
                m.insert("gclid".into(), json!(random_hex(rng, 32)));
            }
            m.insert("referrer".into(), json!("https://www.google.com/"));
        }
        Some("chat widget") => {
            m.insert("url".into(), json!(format!("https://www.example.test/{page}")));
            m.insert("medium".into(), json!("chat_widget"));
            m.insert("mediumId".into(), json!(Cid::random(rng).as_str()));
        }
        Some("import") if !last => {
            m.insert("url".into(), json!("CRM UI"));
            m.insert("medium".into(), json!("import"));
        }
        _ if rng.bool() => {
            m.insert("url".into(), json!("Third Party"));
            m.insert("medium".into(), json!("api"));
        }
        _ => return None,
    }
    // Documentation address range (RFC 5737), a generic agent: nothing personal.
    m.insert("ip".into(), json!(format!("203.0.113.{}", rng.u8(1..255))));
    m.insert("userAgent".into(), json!("Mozilla/5.0 (X11; Linux x86_64)"));
    Some(Value::Object(m))
}

/// Which JSON shape to render a contact in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `GET /contacts/:id`, update, upsert (`GetContectByIdSchema`).
    Full,
    /// 201 of `POST /contacts/` (`CreateContactSchema`).
    Created,
    /// Items of the business listing and the deprecated `GET /contacts/`
    /// (`ContactsSearchSchema`).
    List,
    /// Webhook payloads (no `dateUpdated`).
    Webhook,
}

impl Shape {
    /// The keys this shape may carry (see `schema.rs`).
    pub(crate) fn fields(self) -> [&'static [&'static str]; 2] {
        match self {
            Shape::Full => [schema::GET_CONTACT_FIELDS, schema::GET_CONTACT_EXTRAS],
            Shape::Created => [schema::CREATED_CONTACT_FIELDS, &[]],
            Shape::List => [schema::LIST_ITEM_FIELDS, &[]],
            Shape::Webhook => [schema::WEBHOOK_CONTACT_FIELDS, &[]],
        }
    }
}

fn opt(v: &Option<String>) -> Value {
    v.clone().map(Value::String).unwrap_or(Value::Null)
}

fn lower(v: &Option<String>) -> Value {
    v.as_ref().map(|s| Value::String(s.to_lowercase())).unwrap_or(Value::Null)
}

fn non_empty(s: String) -> Value {
    if s.is_empty() { Value::Null } else { Value::String(s) }
}

/// `customFields` as every read shape renders them: `[{id, value}]`.
fn custom_fields(f: &Fields) -> Value {
    Value::Array(f.custom_fields.iter().map(|(id, value)| json!({"id": id, "value": value})).collect())
}

/// `(month, day)` of a `YYYY-MM-DD` date of birth.
fn birth_month_day(dob: &str) -> Option<(u32, u32)> {
    let mut parts = dob.split('-').skip(1);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// One field of a contact under its `GET` name; `Null` when the contact has no value (the
/// field is then left out). Every shape reads the same stored fields, so two shapes that
/// carry a field carry the same value (up to the documented format drift).
fn contact_value(key: &str, c: &Contact, f: &Fields, loc_id: &str, shape: Shape) -> Value {
    match key {
        "id" => json!(c.id.as_str()),
        "locationId" => json!(loc_id),
        "name" => non_empty(f.contact_name()),
        "firstName" => opt(&f.first_name),
        "lastName" => opt(&f.last_name),
        "email" => opt(&f.email),
        "emailLowerCase" => lower(&f.email),
        "firstNameLowerCase" => lower(&f.first_name),
        "lastNameLowerCase" => lower(&f.last_name),
        "fullNameLowerCase" => non_empty(f.contact_name().to_lowercase()),
        "timezone" => opt(&f.timezone),
        "companyName" => opt(&f.company_name),
        "phone" => opt(&f.phone),
        "dnd" => json!(f.dnd),
        "dndSettings" => f.dnd_settings.clone().unwrap_or(Value::Null),
        "inboundDndSettings" => f.inbound_dnd_settings.clone().unwrap_or(Value::Null),
        "type" => json!("lead"),
        "source" => opt(&f.source),
        "assignedTo" => opt(&f.assigned_to),
        "address1" => opt(&f.address1),
        "city" => opt(&f.city),
        "state" => opt(&f.state),
        "country" => opt(&f.country),
        "postalCode" => opt(&f.postal_code),
        "website" => opt(&f.website),
        "tags" => json!(f.tags),
        // CreateContactSchema documents a full timestamp; GET and webhooks the date.
        "dateOfBirth" if shape == Shape::Created => f
            .date_of_birth
            .as_ref()
            .and_then(|d| parse_ms(&Value::String(d.clone())))
            .map(|ms| Value::String(iso(ms)))
            .unwrap_or(Value::Null),
        "dateOfBirth" => opt(&f.date_of_birth),
        "birthMonth" => f.date_of_birth.as_deref().and_then(birth_month_day).map(|md| json!(md.0)).unwrap_or_default(),
        "birthDay" => f.date_of_birth.as_deref().and_then(birth_month_day).map(|md| json!(md.1)).unwrap_or_default(),
        "dateAdded" => json!(iso(c.added)),
        "dateUpdated" => json!(iso(c.updated)),
        "lastActivity" => json!(iso(c.updated)),
        "attachments" | "followers" | "offers" | "products" => json!([]),
        "deleted" | "bounceEmail" | "unsubscribeEmail" => json!(false),
        "ssn" => opt(&f.ssn),
        "keyword" => opt(&f.keyword),
        "visitorId" => opt(&f.visitor_id),
        "customFields" => custom_fields(f),
        "businessId" => opt(&f.business_id),
        "attributionSource" => f.attribution_source.clone().unwrap_or(Value::Null),
        "lastAttributionSource" => f.last_attribution_source.clone().unwrap_or(Value::Null),
        "attributions" => {
            Value::Array([&f.attribution_source, &f.last_attribution_source].into_iter().flatten().cloned().collect())
        }
        // Never set by the sandbox: a documented field GHL leaves out until a session exists.
        _ => Value::Null,
    }
}

/// Renders a contact in `shape`: exactly the shape's keys that have a value.
pub(crate) fn render_contact(c: &Contact, f: &Fields, loc_id: &str, shape: Shape) -> Value {
    let mut m = Map::new();
    for key in shape.fields().into_iter().flatten() {
        let value = contact_value(key, c, f, loc_id, shape);
        if !value.is_null() {
            m.insert((*key).to_owned(), value);
        }
    }
    Value::Object(m)
}

/// One `POST /contacts/search` item, serialized directly (hot path). Its keys are
/// `schema::SEARCH_ITEM_FIELDS` plus `SEARCH_ITEM_EXTRAS`; the values come from the same
/// stored fields as `GET`, with the search drift (ghl.md §6.2): `address` not `address1`,
/// epoch-ms `dateOfBirth`, derived `contactName`, `phoneLabel`, `businessName`,
/// `validEmail`, `searchAfter`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SearchItem<'a> {
    id: &'a str,
    location_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_name_lower_case: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_name_lower_case: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    contact_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_email: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phone: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phone_label: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    city: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postal_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    website: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    company_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    business_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    assigned_to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    business_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    date_of_birth: Option<i64>,
    dnd: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    dnd_settings: Option<&'a Value>,
    tags: &'a [String],
    custom_fields: Value,
    additional_emails: [(); 0],
    additional_phones: [(); 0],
    followers: [(); 0],
    opportunities: [(); 0],
    #[serde(rename = "type")]
    kind: &'static str,
    date_added: String,
    date_updated: String,
    search_after: (i64, &'a str),
}

/// Serializes one search item; `sort_ms` is the sort field's value for `searchAfter`.
pub(crate) fn search_item(c: &Contact, f: &Fields, loc_id: &str, sort_ms: i64) -> String {
    let contact_name = f.contact_name();
    let item = SearchItem {
        id: c.id.as_str(),
        location_id: loc_id,
        first_name: f.first_name.as_deref(),
        last_name: f.last_name.as_deref(),
        first_name_lower_case: f.first_name.as_ref().map(|s| s.to_lowercase()),
        last_name_lower_case: f.last_name.as_ref().map(|s| s.to_lowercase()),
        contact_name: (!contact_name.is_empty()).then_some(contact_name),
        email: f.email.as_deref(),
        valid_email: f.email.as_ref().map(|_| true),
        phone: f.phone.as_deref(),
        phone_label: f.phone.as_ref().map(|_| "Mobile"),
        address: f.address1.as_deref(),
        city: f.city.as_deref(),
        state: f.state.as_deref(),
        country: f.country.as_deref(),
        postal_code: f.postal_code.as_deref(),
        website: f.website.as_deref(),
        source: f.source.as_deref(),
        company_name: f.company_name.as_deref(),
        business_name: f.company_name.as_deref(),
        assigned_to: f.assigned_to.as_deref(),
        business_id: f.business_id.as_deref(),
        date_of_birth: f.date_of_birth.as_ref().and_then(|d| parse_ms(&Value::String(d.clone()))),
        dnd: f.dnd,
        dnd_settings: f.dnd_settings.as_ref(),
        tags: &f.tags,
        custom_fields: custom_fields(f),
        additional_emails: [],
        additional_phones: [],
        followers: [],
        opportunities: [],
        kind: "lead",
        date_added: iso(c.added),
        date_updated: iso(c.updated),
        search_after: (sort_ms, c.id.as_str()),
    };
    serde_json::to_string(&item).unwrap_or_default()
}

/// A task. No timestamps are exposed by REST (`date_added` is for webhooks only).
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub(crate) id: Cid,
    pub(crate) contact: Cid,
    pub(crate) loc: u16,
    pub(crate) title: Cow<'static, str>,
    pub(crate) body: Cow<'static, str>,
    pub(crate) assigned_to: Option<Arc<str>>,
    pub(crate) due: i64,
    pub(crate) completed: bool,
    pub(crate) added: i64,
}

impl Task {
    pub(crate) fn render(&self) -> Value {
        json!({
            "id": self.id.as_str(),
            "title": self.title,
            "body": self.body,
            "assignedTo": self.assigned_to.as_deref(),
            "dueDate": iso(self.due),
            "completed": self.completed,
            "contactId": self.contact.as_str(),
        })
    }
}

/// A note. No `dateUpdated`.
#[derive(Debug, Clone)]
pub(crate) struct Note {
    pub(crate) id: Cid,
    pub(crate) contact: Cid,
    pub(crate) loc: u16,
    pub(crate) body: Cow<'static, str>,
    pub(crate) user_id: Option<Arc<str>>,
    pub(crate) added: i64,
    pub(crate) title: Option<String>,
    pub(crate) color: Option<String>,
    pub(crate) pinned: bool,
}

impl Note {
    pub(crate) fn render(&self) -> Value {
        json!({
            "id": self.id.as_str(),
            "body": self.body,
            "userId": self.user_id.as_deref(),
            "dateAdded": iso(self.added),
            "contactId": self.contact.as_str(),
            "title": self.title,
            "color": self.color,
            "pinned": self.pinned,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trips() {
        let ms = 1_625_203_106_704;
        assert_eq!(iso(ms), "2021-07-02T05:18:26.704Z");
        assert_eq!(parse_ms(&json!(iso(ms))), Some(ms));
        assert_eq!(parse_ms(&json!("2021-07-02")), Some(1_625_184_000_000));
    }
}
