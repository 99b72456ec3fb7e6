//! Pure parts of the Lusha connector: a contact's identity and its hash, Lusha results matched
//! to contacts, and a result mapped into GHL fields. No I/O.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::config::{EuPolicy, LushaSettings};

/// What Lusha can search a contact by, normalised; the first available wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Email(String),
    Linkedin(String),
    Name { first: String, last: String, company: String },
}

impl Identity {
    /// The identity of a (normalised GHL) contact: email, else LinkedIn URL (from the custom
    /// field whose id is `linkedin_field_id`), else first + last name + company name.
    pub fn of(contact: &Map<String, Value>, linkedin_field_id: Option<&str>) -> Option<Self> {
        let text = |key: &str| contact.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
        if let Some(email) = text("email").filter(|e| e.contains('@')) {
            return Some(Identity::Email(email.to_lowercase()));
        }
        if let Some(id) = linkedin_field_id
            && let Some(url) = custom_value(contact, id).as_deref().map(normalize_linkedin).filter(|u| !u.is_empty())
        {
            return Some(Identity::Linkedin(url));
        }
        match (text("firstName"), text("lastName"), text("companyName")) {
            (Some(first), Some(last), Some(company)) => Some(Identity::Name {
                first: first.to_lowercase(),
                last: last.to_lowercase(),
                company: company.to_lowercase(),
            }),
            _ => None,
        }
    }

    /// `email:…`, `linkedin:…`, `name:first|last|company`.
    pub fn canonical(&self) -> String {
        match self {
            Identity::Email(email) => format!("email:{email}"),
            Identity::Linkedin(url) => format!("linkedin:{url}"),
            Identity::Name { first, last, company } => format!("name:{first}|{last}|{company}"),
        }
    }

    /// Hex sha256 of [`Identity::canonical`]: the cache key (never logged with the identity).
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.canonical().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `email`, `linkedin`, `name` (safe to log).
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Email(_) => "email",
            Identity::Linkedin(_) => "linkedin",
            Identity::Name { .. } => "name",
        }
    }

    /// One item of a V3 search / search-and-enrich request.
    pub fn search_item(&self, reference: &str) -> Value {
        match self {
            Identity::Email(email) => json!({"clientReferenceId": reference, "email": email}),
            Identity::Linkedin(url) => json!({"clientReferenceId": reference, "linkedinUrl": format!("https://{url}")}),
            Identity::Name { first, last, company } => {
                let mut item = json!({"clientReferenceId": reference, "firstName": first, "lastName": last});
                let key = if company.contains('.') && !company.contains(' ') { "companyDomain" } else { "companyName" };
                item[key] = Value::String(company.clone());
                item
            }
        }
    }
}

/// `linkedin.com/in/slug`: scheme, `www.`, query and trailing `/` dropped, lower-cased.
pub fn normalize_linkedin(url: &str) -> String {
    let lower = url.trim().to_lowercase();
    let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")).unwrap_or(&lower);
    let rest = rest.strip_prefix("www.").unwrap_or(rest);
    rest.split(['?', '#']).next().unwrap_or(rest).trim_end_matches('/').to_owned()
}

/// The value of a custom field (by id) of a normalised contact, as text.
pub fn custom_value(contact: &Map<String, Value>, id: &str) -> Option<String> {
    contact.get("customFields")?.as_array()?.iter().find_map(|item| {
        if item.get("id").and_then(Value::as_str) != Some(id) {
            return None;
        }
        match item.get("value").or_else(|| item.get("field_value"))? {
            Value::String(text) if !text.trim().is_empty() => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            _ => None,
        }
    })
}

/// The reveal set as stored in the cache key: sorted, comma-joined.
pub fn reveal_set(reveal: &[String]) -> String {
    let mut kinds: Vec<&str> = reveal.iter().map(String::as_str).collect();
    kinds.sort_unstable();
    kinds.dedup();
    kinds.join(",")
}

/// What Lusha said about one contact.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Found(Value),
    NotFound,
    /// `COMPLIANCE_RESTRICTED` (GDPR): cached like not found, never retried automatically.
    Restricted,
    /// `ENRICH_FAILED` or another item error: try again later.
    Failed(String),
}

/// Matches a search / search-and-enrich response to the contacts asked for, by
/// `clientReferenceId` (never by position). A contact without a result is "not found"
/// (Lusha drops not-found inputs at times).
pub fn match_by_reference(response: &Value, references: &[String]) -> HashMap<String, Answer> {
    let mut answers: HashMap<String, Answer> = HashMap::new();
    for result in response.get("results").and_then(Value::as_array).into_iter().flatten() {
        let Some(reference) = result.get("clientReferenceId").and_then(reference_text) else { continue };
        answers.insert(reference, answer_of(result));
    }
    references.iter().map(|r| (r.clone(), answers.remove(r).unwrap_or(Answer::NotFound))).collect()
}

/// Matches an enrich-by-id response by Lusha `id`.
pub fn match_by_id(response: &Value, ids: &[String]) -> HashMap<String, Answer> {
    let mut answers: HashMap<String, Answer> = HashMap::new();
    for result in response.get("results").and_then(Value::as_array).into_iter().flatten() {
        let Some(id) = result.get("id").and_then(reference_text) else { continue };
        answers.insert(id, answer_of(result));
    }
    ids.iter().map(|id| (id.clone(), answers.remove(id).unwrap_or(Answer::NotFound))).collect()
}

pub(super) fn reference_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn answer_of(result: &Value) -> Answer {
    match result.get("error").filter(|e| !e.is_null()) {
        None => Answer::Found(result.clone()),
        Some(error) => match error.get("code").and_then(Value::as_str).unwrap_or("") {
            "NOT_FOUND" | "EMPTY_DATA" => Answer::NotFound,
            "COMPLIANCE_RESTRICTED" => Answer::Restricted,
            other => Answer::Failed(if other.is_empty() { "item error".to_owned() } else { other.to_owned() }),
        },
    }
}

/// `billing.creditsCharged` of a response (0 when absent).
pub fn credits_charged(response: &Value) -> i64 {
    response.pointer("/billing/creditsCharged").and_then(|v| v.as_f64()).map_or(0, |v| v.ceil() as i64)
}

/// The values Lusha gives for each mappable field.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    pub lusha_id: Option<String>,
    pub values: Vec<(&'static str, String)>,
    pub eu: bool,
}

/// Picks the values to write from a found result: the best work email (highest confidence),
/// the first phone that is not do-not-call, firmographics. EU contacts follow `eu_policy`.
pub fn extract(result: &Value, settings: &LushaSettings) -> Extracted {
    let text = |pointer: &str| {
        result.pointer(pointer).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
    };
    let eu = result.pointer("/location/isEuContact").and_then(Value::as_bool).unwrap_or(false);
    let pii = !eu || settings.eu_policy == EuPolicy::Full;
    let firmographics = !eu || settings.eu_policy != EuPolicy::Skip;
    let mut values = Vec::new();
    if pii {
        if let Some(email) = best_email(result) {
            values.push(("email", email));
        }
        if let Some(phone) = best_phone(result) {
            values.push(("phone", phone));
        }
    }
    if firmographics {
        let title = text("/jobTitle/title").or_else(|| text("/jobTitle"));
        for (name, value) in [
            ("job_title", title),
            ("seniority", text("/jobTitle/seniority")),
            ("company", text("/company/name")),
            ("domain", text("/company/domain")),
            ("country", text("/location/country")),
            ("state", text("/location/state")),
            ("city", text("/location/city")),
            ("linkedin", text("/socialLinks/linkedin")),
        ] {
            if let Some(value) = value {
                values.push((name, value));
            }
        }
    }
    Extracted { lusha_id: result.get("id").and_then(reference_text), values, eu }
}

fn confidence_rank(confidence: Option<&str>) -> u8 {
    match confidence.unwrap_or("") {
        "A+" => 4,
        "A" => 3,
        "B+" => 2,
        "B" => 1,
        _ => 0,
    }
}

fn best_email(result: &Value) -> Option<String> {
    let emails = result.get("emails")?.as_array()?;
    emails
        .iter()
        .filter_map(|e| {
            let address = e.get("email").or_else(|| e.get("address")).and_then(Value::as_str)?;
            let work = e.get("type").or_else(|| e.get("emailType")).and_then(Value::as_str) == Some("work");
            Some((work, confidence_rank(e.get("confidence").and_then(Value::as_str)), address.trim().to_owned()))
        })
        .max_by_key(|(work, rank, _)| (*work, *rank))
        .map(|(_, _, address)| address)
}

fn best_phone(result: &Value) -> Option<String> {
    let phones = result.get("phones")?.as_array()?;
    let rank = |kind: Option<&str>| match kind.unwrap_or("") {
        "direct" => 3,
        "mobile" => 2,
        "work" => 1,
        _ => 0,
    };
    phones
        .iter()
        .filter(|p| !p.get("doNotCall").and_then(Value::as_bool).unwrap_or(false))
        .filter_map(|p| {
            let number = p.get("number").or_else(|| p.get("internationalNumber")).and_then(Value::as_str)?;
            Some((rank(p.get("type").and_then(Value::as_str)), number.trim().to_owned()))
        })
        .max_by_key(|(rank, _)| *rank)
        .map(|(_, number)| number)
}

/// A short, human summary of a found result for the optional GHL note.
pub fn note_body(result: &Value) -> String {
    let text = |pointer: &str| result.pointer(pointer).and_then(Value::as_str).unwrap_or("").trim().to_owned();
    let mut parts = vec!["Enriched by Lusha".to_owned()];
    let title = text("/jobTitle/title");
    let company = text("/company/name");
    match (title.is_empty(), company.is_empty()) {
        (false, false) => parts.push(format!("{title} at {company}")),
        (false, true) => parts.push(title),
        (true, false) => parts.push(company),
        (true, true) => {}
    }
    let seniority = text("/jobTitle/seniority");
    if !seniority.is_empty() {
        parts.push(format!("seniority: {seniority}"));
    }
    parts.join(" — ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn identity_prefers_email_then_linkedin_then_name() {
        let email =
            obj(json!({"email": " Ada@Example.TEST ", "firstName": "Ada", "lastName": "L", "companyName": "X"}));
        assert_eq!(Identity::of(&email, None), Some(Identity::Email("ada@example.test".into())));
        let linked = obj(json!({
            "firstName": "Ada", "lastName": "L", "companyName": "X",
            "customFields": [{"id": "li", "value": "https://www.LinkedIn.com/in/ada/?x=1"}]
        }));
        assert_eq!(Identity::of(&linked, Some("li")), Some(Identity::Linkedin("linkedin.com/in/ada".into())));
        let named = Identity::of(&linked, None).unwrap();
        assert_eq!(named.kind(), "name");
        assert_eq!(named.search_item("c1")["companyName"], "x");
        assert!(Identity::of(&obj(json!({"firstName": "Ada"})), None).is_none());
        assert!(Identity::of(&obj(json!({"email": "not-an-email"})), None).is_none());
    }

    #[test]
    fn identity_hash_ignores_case_and_other_fields() {
        let a = obj(json!({"email": "ada@example.test", "phone": "1", "tags": ["x"]}));
        let b = obj(json!({"email": "ADA@example.test", "phone": "2", "tags": []}));
        let c = obj(json!({"email": "bob@example.test"}));
        let hash = |m: &Map<String, Value>| Identity::of(m, None).unwrap().hash();
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(hash(&a), hash(&c));
        assert_eq!(hash(&a).len(), 64);
        assert_eq!(reveal_set(&["phones".into(), "emails".into(), "phones".into()]), "emails,phones");
    }

    #[test]
    fn results_are_matched_by_reference_never_by_position() {
        let response = json!({"results": [
            {"clientReferenceId": "c3", "id": "v1.z", "firstName": "C"},
            {"clientReferenceId": "c1", "error": {"code": "NOT_FOUND"}},
            {"clientReferenceId": "c4", "error": {"code": "COMPLIANCE_RESTRICTED"}},
            {"clientReferenceId": "c5", "error": {"code": "ENRICH_FAILED"}},
            {"clientReferenceId": "stranger", "id": "v1.q"}
        ], "billing": {"creditsCharged": 7}});
        let refs: Vec<String> = ["c1", "c2", "c3", "c4", "c5"].iter().map(|s| s.to_string()).collect();
        let answers = match_by_reference(&response, &refs);
        assert_eq!(answers.len(), 5);
        assert_eq!(answers["c1"], Answer::NotFound);
        assert_eq!(answers["c2"], Answer::NotFound, "a dropped input is not found");
        assert!(matches!(&answers["c3"], Answer::Found(v) if v["id"] == "v1.z"));
        assert_eq!(answers["c4"], Answer::Restricted);
        assert_eq!(answers["c5"], Answer::Failed("ENRICH_FAILED".into()));
        assert_eq!(credits_charged(&response), 7);
        let by_id = match_by_id(&json!({"results": [{"id": 42, "firstName": "N"}]}), &["42".into(), "v1.x".into()]);
        assert!(matches!(by_id["42"], Answer::Found(_)));
        assert_eq!(by_id["v1.x"], Answer::NotFound);
    }

    #[test]
    fn extraction_skips_do_not_call_and_respects_the_eu_policy() {
        let result = json!({
            "id": "v1.a",
            "jobTitle": {"title": "CTO", "seniority": "C-Level"},
            "company": {"name": "Example", "domain": "example.test"},
            "location": {"country": "Germany", "city": "Berlin", "isEuContact": true},
            "emails": [{"email": "p@example.test", "type": "private", "confidence": "A+"},
                       {"email": "w@example.test", "type": "work", "confidence": "B"}],
            "phones": [{"number": "+1 555 0100", "type": "direct", "doNotCall": true},
                       {"number": "+1 555 0101", "type": "mobile", "doNotCall": false}]
        });
        let mut settings = LushaSettings { eu_policy: EuPolicy::Full, ..LushaSettings::default() };
        let full = extract(&result, &settings);
        assert_eq!(full.lusha_id.as_deref(), Some("v1.a"));
        assert!(full.values.contains(&("email", "w@example.test".into())));
        assert!(full.values.contains(&("phone", "+1 555 0101".into())));
        assert!(full.values.contains(&("job_title", "CTO".into())));
        settings.eu_policy = EuPolicy::Firmographics;
        let firm = extract(&result, &settings);
        assert!(firm.eu && !firm.values.iter().any(|(k, _)| *k == "email" || *k == "phone"));
        assert!(firm.values.contains(&("company", "Example".into())));
        settings.eu_policy = EuPolicy::Skip;
        assert!(extract(&result, &settings).values.is_empty());
        assert_eq!(note_body(&result), "Enriched by Lusha — CTO at Example — seniority: C-Level");
    }
}
