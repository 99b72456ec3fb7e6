//! The fake Lusha's "database": a pure, deterministic function from a normalised identity
//! (and the seed) to a person, so nothing has to be shared with the fake GHL.
//!
//! Buckets (by a hash of seed + identity key): 0–79 found (non-EU), 80–84 found with
//! `isEuContact: true`, 85–91 `COMPLIANCE_RESTRICTED` (EU, refused on GDPR grounds), 92–99
//! `NOT_FOUND`. A third of the NOT_FOUND identities are silently dropped from `results` (as
//! Lusha's own mock does) instead of coming back as an error item. All data is synthetic:
//! "Test" first names, `*.example.test` domains, `+1 555` phone numbers.

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// What a search can be keyed on (V3 search identifiers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A Lusha person id (`v1.…` or numeric); only ids this fake handed out resolve.
    Id(String),
    /// An email address (matched lower-cased, trimmed).
    Email(String),
    /// A LinkedIn profile URL (scheme, `www.`, query and trailing `/` ignored).
    Linkedin(String),
    /// First + last name + company name or domain.
    Name {
        /// First name.
        first: String,
        /// Last name.
        last: String,
        /// Company domain or name.
        company: String,
    },
}

impl Identity {
    /// Shorthand for [`Identity::Email`].
    pub fn email(email: impl Into<String>) -> Self {
        Self::Email(email.into())
    }

    /// Shorthand for [`Identity::Linkedin`].
    pub fn linkedin(url: impl Into<String>) -> Self {
        Self::Linkedin(url.into())
    }

    /// Shorthand for [`Identity::Name`].
    pub fn name(first: impl Into<String>, last: impl Into<String>, company: impl Into<String>) -> Self {
        Self::Name { first: first.into(), last: last.into(), company: company.into() }
    }

    /// The normalised key the person is derived from.
    pub fn key(&self) -> String {
        match self {
            Self::Id(id) => format!("id:{}", id.trim()),
            Self::Email(email) => format!("email:{}", normalize_email(email)),
            Self::Linkedin(url) => format!("linkedin:{}", normalize_linkedin(url)),
            Self::Name { first, last, company } => format!(
                "name:{}|{}|{}",
                first.trim().to_lowercase(),
                last.trim().to_lowercase(),
                normalize_company(company)
            ),
        }
    }
}

/// Lower-cased, trimmed email.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// `linkedin.com/in/slug` form of a LinkedIn URL.
pub fn normalize_linkedin(url: &str) -> String {
    let lower = url.trim().to_lowercase();
    let no_scheme = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")).unwrap_or(&lower);
    let no_www = no_scheme.strip_prefix("www.").unwrap_or(no_scheme);
    let no_query = no_www.split(['?', '#']).next().unwrap_or(no_www);
    no_query.trim_end_matches('/').to_owned()
}

fn normalize_company(company: &str) -> String {
    let lower = company.trim().to_lowercase();
    let no_scheme = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")).unwrap_or(&lower);
    no_scheme.strip_prefix("www.").unwrap_or(no_scheme).trim_end_matches('/').to_owned()
}

/// Outcome of looking an identity up.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A person was found (EU persons have `location.is_eu_contact`).
    Found(Box<Person>),
    /// Lusha refuses on GDPR grounds: item error `COMPLIANCE_RESTRICTED`, nothing charged.
    ComplianceRestricted,
    /// No match, nothing charged; `dropped` means the input is silently left out of `results`
    /// instead of coming back as a `NOT_FOUND` error item.
    NotFound {
        /// Omitted from `results` rather than reported.
        dropped: bool,
    },
}

impl Lookup {
    /// The person, if found.
    pub fn person(&self) -> Option<&Person> {
        match self {
            Self::Found(person) => Some(person),
            _ => None,
        }
    }
}

/// Company of a person.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Company {
    /// Lusha company id (numeric string).
    pub id: String,
    /// Company name.
    pub name: String,
    /// Company domain.
    pub domain: String,
    /// Industry label.
    pub industry: String,
}

/// Location of a person.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Location {
    /// Country name.
    pub country: String,
    /// ISO 3166-1 alpha-2.
    pub country_iso2: String,
    /// State / region.
    pub state: String,
    /// City.
    pub city: String,
    /// Continent.
    pub continent: String,
    /// GDPR flag (`location.isEuContact`).
    pub is_eu_contact: bool,
}

/// A revealable email.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmailAddress {
    /// The address.
    pub email: String,
    /// `work` | `private` | `unknown`.
    pub kind: String,
    /// Confidence grade (`A+`, `A`, `B`).
    pub confidence: String,
}

/// A revealable phone.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhoneNumber {
    /// The number, E.164-ish with spaces.
    pub number: String,
    /// `mobile` | `direct` | `work` | `unknown`.
    pub kind: String,
    /// Must never be written to GHL.
    pub do_not_call: bool,
}

/// A person in the fake database.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Person {
    /// Opaque Lusha id: `v1.<token>` (≈80%) or a legacy numeric id.
    pub id: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Job title.
    pub job_title: String,
    /// Departments.
    pub departments: Vec<String>,
    /// Seniority label.
    pub seniority: String,
    /// Current company.
    pub company: Company,
    /// Location and EU flag.
    pub location: Location,
    /// Emails (one work email for generated persons).
    pub emails: Vec<EmailAddress>,
    /// 0–2 phones, some `do_not_call`.
    pub phones: Vec<PhoneNumber>,
    /// LinkedIn profile URL.
    pub linkedin_url: String,
    /// Last update of the record (ISO 8601).
    pub update_date: String,
}

const LAST_NAMES: &[&str] = &[
    "Ashdown", "Barlow", "Carrow", "Dunmore", "Elling", "Fenwick", "Garrick", "Hollis", "Ingram", "Jessop", "Kestrel",
    "Lowther", "Marlow", "Norcott", "Oakley", "Pryce", "Quill", "Rowan", "Stroud", "Thorne", "Upton", "Vail", "Wexley",
    "Yardley",
];

const TITLES: &[(&str, &str, &str)] = &[
    ("Chief Executive Officer", "Executive", "C-Level"),
    ("VP of Sales", "Sales", "VP"),
    ("Head of Marketing", "Marketing", "Director"),
    ("Engineering Manager", "Engineering & Technical", "Manager"),
    ("Senior Software Engineer", "Engineering & Technical", "Senior"),
    ("Account Executive", "Sales", "Senior"),
    ("Operations Coordinator", "Operations", "Entry"),
    ("Finance Director", "Finance", "Director"),
    ("HR Business Partner", "Human Resources", "Manager"),
    ("Customer Success Manager", "Customer Service", "Manager"),
];

const INDUSTRIES: &[&str] =
    &["Software", "Marketing & Advertising", "Financial Services", "Healthcare", "Retail", "Manufacturing"];

/// (country, iso2, state, city, continent)
const NON_EU: &[(&str, &str, &str, &str, &str)] = &[
    ("United States", "US", "California", "San Francisco", "North America"),
    ("United States", "US", "New York", "New York", "North America"),
    ("United States", "US", "Texas", "Austin", "North America"),
    ("Canada", "CA", "Ontario", "Toronto", "North America"),
    ("Australia", "AU", "New South Wales", "Sydney", "Oceania"),
    ("Israel", "IL", "Tel Aviv District", "Tel Aviv", "Asia"),
];

const EU: &[(&str, &str, &str, &str, &str)] = &[
    ("Germany", "DE", "Berlin", "Berlin", "Europe"),
    ("France", "FR", "Île-de-France", "Paris", "Europe"),
    ("Netherlands", "NL", "North Holland", "Amsterdam", "Europe"),
    ("Spain", "ES", "Community of Madrid", "Madrid", "Europe"),
];

/// Four 64-bit words of SHA-256(seed ‖ key): stable across runs and platforms.
pub(crate) fn digest(seed: u64, key: &str) -> [u64; 4] {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update([0u8]);
    hasher.update(key.as_bytes());
    let bytes = hasher.finalize();
    let mut words = [0u64; 4];
    for (index, word) in words.iter_mut().enumerate() {
        let mut chunk = [0u8; 8];
        chunk.copy_from_slice(&bytes[index * 8..index * 8 + 8]);
        *word = u64::from_le_bytes(chunk);
    }
    words
}

fn pick<T: Copy>(items: &[T], value: u64) -> T {
    // `items` is a non-empty const table; the modulo keeps the index in range.
    items[(value % items.len() as u64) as usize]
}

/// Looks an identity up in the synthetic database. `Identity::Id` never resolves here (ids are
/// resolved by the fake's registry of ids it handed out).
pub fn lookup(seed: u64, identity: &Identity) -> Lookup {
    if let Identity::Id(_) = identity {
        return Lookup::NotFound { dropped: false };
    }
    let key = identity.key();
    let words = digest(seed, &key);
    let bucket = words[0] % 100;
    match bucket {
        0..85 => Lookup::Found(Box::new(synthesize(seed, &key, identity, bucket >= 80))),
        85..92 => Lookup::ComplianceRestricted,
        _ => Lookup::NotFound { dropped: words[1].is_multiple_of(3) },
    }
}

/// A generated prospecting lead (always found, never compliance-restricted).
pub fn lead(seed: u64, index: usize) -> Person {
    let key = format!("lead:{index}");
    let words = digest(seed, &key);
    let eu = words[0] % 100 >= 88;
    let mut person = synthesize(seed, &key, &Identity::Id(key.clone()), eu);
    let last = person.last_name.to_lowercase();
    person.emails[0].email = format!("test.{last}.lead{index}@{}", person.company.domain.as_str());
    person
}

/// Builds the person for `key`. Pure: same seed + key ⇒ same person.
fn synthesize(seed: u64, key: &str, identity: &Identity, eu: bool) -> Person {
    let words = digest(seed, key);
    let [w0, w1, w2, w3] = words;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([w1.to_le_bytes(), w2.to_le_bytes()].concat());
    let id = if w3 % 5 == 0 { format!("{}", 1_000_000_000 + w2 % 8_999_999_999) } else { format!("v1.{token}") };
    let (first_name, last_name) = match identity {
        Identity::Name { first, last, .. } => (first.trim().to_owned(), last.trim().to_owned()),
        _ => ("Test".to_owned(), pick(LAST_NAMES, w1 >> 7).to_owned()),
    };
    let company_index = (w1 >> 13) % 40;
    let (company_name, company_domain) = match identity {
        Identity::Name { company, .. } => {
            let normalized = normalize_company(company);
            if normalized.contains('.') {
                let label = normalized.split('.').next().unwrap_or(&normalized);
                (format!("Test {}", capitalize(label)), normalized)
            } else {
                let slug: String =
                    normalized.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
                (company.trim().to_owned(), format!("{slug}.example.test"))
            }
        }
        _ => (format!("Test Company {company_index}"), format!("company{company_index}.example.test")),
    };
    let (title, department, seniority) = pick(TITLES, w2 >> 11);
    let place = if eu { pick(EU, w3 >> 5) } else { pick(NON_EU, w3 >> 5) };
    let email = match identity {
        Identity::Email(email) => normalize_email(email),
        _ => format!("test.{}.{}@{company_domain}", slugify(&last_name), w0 % 10_000),
    };
    let confidence = pick(&["A+", "A", "B"], w0 >> 9);
    let phone_count = (w1 >> 21) % 3;
    let phones = (0..phone_count)
        .map(|index| PhoneNumber {
            number: format!("+1 555 {:03} {:04}", (w2 >> (index * 10)) % 1000, (w3 >> (index * 14)) % 10_000),
            kind: if index == 0 { "mobile" } else { "direct" }.to_owned(),
            do_not_call: (w0 >> (20 + index * 3)) % 4 == 0,
        })
        .collect();
    let linkedin_url = match identity {
        Identity::Linkedin(url) => format!("https://www.{}", normalize_linkedin(url)),
        _ => format!("https://www.linkedin.com/in/test-{}-{}", slugify(&last_name), w2 % 100_000),
    };
    Person {
        id,
        first_name,
        last_name,
        job_title: title.to_owned(),
        departments: vec![department.to_owned()],
        seniority: seniority.to_owned(),
        company: Company {
            id: format!("{}", 10_000_000 + (w1 >> 13) % 40),
            name: company_name,
            domain: company_domain,
            industry: pick(INDUSTRIES, w1 >> 29).to_owned(),
        },
        location: Location {
            country: place.0.to_owned(),
            country_iso2: place.1.to_owned(),
            state: place.2.to_owned(),
            city: place.3.to_owned(),
            continent: place.4.to_owned(),
            is_eu_contact: eu,
        },
        emails: vec![EmailAddress { email, kind: "work".to_owned(), confidence: confidence.to_owned() }],
        phones,
        linkedin_url,
        update_date: format!("2025-{:02}-{:02}T00:00:00.000Z", 1 + (w3 >> 40) % 12, 1 + (w3 >> 48) % 28),
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

fn slugify(text: &str) -> String {
    text.to_lowercase().chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

/// Builds a person from a test-supplied lead JSON (lenient; missing fields are synthesised
/// from the lead's id or email). Accepts `id`, `firstName`, `lastName`, `email` or
/// `emails` (strings or `{email, type, confidence}`), `phones` (strings or
/// `{number, type, doNotCall}`), `company` (`{name, domain, industry}`) or
/// `companyName`/`companyDomain`, `jobTitle` (string or `{title, seniority, departments}`),
/// `location` (`{country, countryIso2, city, state, isEuContact}`), `linkedinUrl`.
pub fn from_lead_json(seed: u64, lead: &Value) -> Person {
    let text = |value: Option<&Value>| -> Option<String> {
        match value? {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            _ => None,
        }
    };
    let email = text(lead.get("email")).or_else(|| {
        lead.get("emails")?
            .as_array()?
            .first()
            .and_then(|first| first.as_str().map(str::to_owned).or_else(|| text(first.get("email"))))
    });
    let id = text(lead.get("id"));
    let key = match (&id, &email) {
        (Some(id), _) => format!("added-lead-id:{id}"),
        (None, Some(email)) => format!("added-lead-email:{}", normalize_email(email)),
        (None, None) => format!("added-lead-json:{lead}"),
    };
    let words = digest(seed, &key);
    let mut person = synthesize(seed, &key, &Identity::Id(key.clone()), false);
    if id.is_none() {
        person.id =
            format!("v1.added-{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(words[1].to_le_bytes()));
    }
    if let Some(id) = id {
        person.id = id;
    }
    if let Some(first) = text(lead.get("firstName")) {
        person.first_name = first;
    }
    if let Some(last) = text(lead.get("lastName")) {
        person.last_name = last;
    }
    if let Some(emails) = lead.get("emails").and_then(Value::as_array) {
        person.emails = emails
            .iter()
            .filter_map(|item| {
                let address = item.as_str().map(str::to_owned).or_else(|| text(item.get("email")))?;
                Some(EmailAddress {
                    email: address,
                    kind: text(item.get("type")).unwrap_or_else(|| "work".to_owned()),
                    confidence: text(item.get("confidence")).unwrap_or_else(|| "A+".to_owned()),
                })
            })
            .collect();
    } else if let Some(email) = email {
        person.emails = vec![EmailAddress { email, kind: "work".to_owned(), confidence: "A+".to_owned() }];
    }
    if let Some(phones) = lead.get("phones").and_then(Value::as_array) {
        person.phones = phones
            .iter()
            .filter_map(|item| {
                let number = item.as_str().map(str::to_owned).or_else(|| text(item.get("number")))?;
                Some(PhoneNumber {
                    number,
                    kind: text(item.get("type")).unwrap_or_else(|| "mobile".to_owned()),
                    do_not_call: item.get("doNotCall").and_then(Value::as_bool).unwrap_or(false),
                })
            })
            .collect();
    }
    if let Some(company) = lead.get("company").filter(|c| c.is_object()) {
        if let Some(name) = text(company.get("name")) {
            person.company.name = name;
        }
        if let Some(domain) = text(company.get("domain")) {
            person.company.domain = domain;
        }
        if let Some(industry) = text(company.get("industry")) {
            person.company.industry = industry;
        }
    }
    if let Some(name) = text(lead.get("companyName")) {
        person.company.name = name;
    }
    if let Some(domain) = text(lead.get("companyDomain")) {
        person.company.domain = domain;
    }
    match lead.get("jobTitle") {
        Some(Value::String(title)) => person.job_title = title.clone(),
        Some(object @ Value::Object(_)) => {
            if let Some(title) = text(object.get("title")) {
                person.job_title = title;
            }
            if let Some(seniority) = text(object.get("seniority")) {
                person.seniority = seniority;
            }
            if let Some(departments) = object.get("departments").and_then(Value::as_array) {
                person.departments = departments.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect();
            }
        }
        _ => {}
    }
    if let Some(location) = lead.get("location").filter(|l| l.is_object()) {
        if let Some(country) = text(location.get("country")) {
            person.location.country = country;
        }
        if let Some(iso) = text(location.get("countryIso2")) {
            person.location.country_iso2 = iso;
        }
        if let Some(city) = text(location.get("city")) {
            person.location.city = city;
        }
        if let Some(state) = text(location.get("state")) {
            person.location.state = state;
        }
        if let Some(eu) = location.get("isEuContact").and_then(Value::as_bool) {
            person.location.is_eu_contact = eu;
        }
    }
    if let Some(url) = text(lead.get("linkedinUrl")) {
        person.linkedin_url = url;
    }
    person
}

/// Which reveal kind a datapoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevealKind {
    /// `emails`
    Emails,
    /// `phones`
    Phones,
}

impl RevealKind {
    /// Wire name (`emails` / `phones`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Emails => "emails",
            Self::Phones => "phones",
        }
    }

    /// Ledger charge kind (`email` / `phone`).
    pub fn charge_kind(self) -> &'static str {
        match self {
            Self::Emails => "email",
            Self::Phones => "phone",
        }
    }

    /// Parses a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "emails" => Some(Self::Emails),
            "phones" => Some(Self::Phones),
            _ => None,
        }
    }
}

impl Person {
    /// The revealable datapoints of one kind, as ledger keys (`email:<addr>`, `phone:<number>`).
    pub fn datapoints(&self, kind: RevealKind) -> Vec<String> {
        match kind {
            RevealKind::Emails => self.emails.iter().map(|e| format!("email:{}", e.email)).collect(),
            RevealKind::Phones => self.phones.iter().map(|p| format!("phone:{}", p.number)).collect(),
        }
    }

    /// Whether the person has any datapoint of this kind.
    pub fn has(&self, kind: RevealKind) -> bool {
        match kind {
            RevealKind::Emails => !self.emails.is_empty(),
            RevealKind::Phones => !self.phones.is_empty(),
        }
    }

    /// Fields shared by every V3 person shape (search preview and enrich result).
    pub(crate) fn base_json(&self) -> serde_json::Map<String, Value> {
        let value = json!({
            "id": self.id,
            "firstName": self.first_name,
            "lastName": self.last_name,
            "fullName": format!("{} {}", self.first_name, self.last_name),
            "jobTitle": {
                "title": self.job_title,
                "departments": self.departments,
                "seniority": self.seniority,
            },
            "company": {
                "id": self.company.id,
                "name": self.company.name,
                "domain": self.company.domain,
                "industry": self.company.industry,
            },
            "location": {
                "country": self.location.country,
                "countryIso2": self.location.country_iso2,
                "state": self.location.state,
                "city": self.location.city,
                "continent": self.location.continent,
                "coordinates": {"latitude": 0.0, "longitude": 0.0},
                "isEuContact": self.location.is_eu_contact,
            },
            "socialLinks": { "linkedin": self.linkedin_url, "xUrl": Value::Null },
            "updateDate": self.update_date,
        });
        match value {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }

    /// `emails[]` in the V3 enrich shape.
    pub(crate) fn emails_json(&self) -> Value {
        Value::Array(
            self.emails
                .iter()
                .map(|e| {
                    json!({
                        "email": e.email,
                        "type": e.kind,
                        "confidence": e.confidence,
                        "updateDate": self.update_date,
                    })
                })
                .collect(),
        )
    }

    /// `phones[]` in the V3 enrich shape.
    pub(crate) fn phones_json(&self) -> Value {
        Value::Array(
            self.phones
                .iter()
                .map(|p| {
                    json!({
                        "number": p.number,
                        "type": p.kind,
                        "doNotCall": p.do_not_call,
                        "updateDate": self.update_date,
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_deterministic_and_distributed() {
        let mut found = 0;
        let mut eu = 0;
        let mut restricted = 0;
        let mut dropped = 0;
        for index in 0..2000 {
            let identity = Identity::email(format!("Test.User{index}@Example.test "));
            let first = lookup(42, &identity);
            assert_eq!(first, lookup(42, &identity));
            match first {
                Lookup::Found(person) => {
                    found += 1;
                    if person.location.is_eu_contact {
                        eu += 1;
                    }
                    assert_eq!(person.emails[0].email, format!("test.user{index}@example.test"));
                    assert!(person.phones.len() <= 2);
                }
                Lookup::ComplianceRestricted => restricted += 1,
                Lookup::NotFound { dropped: true } => dropped += 1,
                Lookup::NotFound { dropped: false } => {}
            }
        }
        assert!((1600..1800).contains(&found), "{found}");
        assert!((50..150).contains(&eu), "{eu}");
        assert!((90..200).contains(&restricted), "{restricted}");
        assert!(dropped > 10, "{dropped}");
        assert_ne!(lookup(42, &Identity::email("a@b.test")), lookup(43, &Identity::email("a@b.test")));
    }

    #[test]
    fn identities_normalise() {
        assert_eq!(
            Identity::linkedin("https://www.LinkedIn.com/in/ada/?x=1").key(),
            Identity::linkedin("linkedin.com/in/ada").key()
        );
        assert_eq!(
            Identity::name(" Ada ", "Lovelace", "https://www.Example.test/").key(),
            Identity::name("ada", "lovelace", "example.test").key()
        );
    }
}
