//! The read shapes against GHL's schemas: the field lists in `schema.rs` equal the committed
//! fixture (and the OpenAPI files, when they are around), and what the routes answer has
//! exactly those keys, with the same values wherever two shapes carry the same field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::schema::*;
use super::tests::Env;
use super::*;

const FIXTURE: &str = include_str!("../../fixtures/ghl-schemas.json");

/// `name → (spec file, schema, properties)` from the committed fixture.
fn fixture() -> BTreeMap<String, (String, String, Vec<String>)> {
    let doc: Value = serde_json::from_str(FIXTURE).unwrap();
    doc["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let props = s["properties"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_owned()).collect();
            let text = |k: &str| s[k].as_str().unwrap().to_owned();
            (text("name"), (text("file"), text("schema"), props))
        })
        .collect()
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn schema_lists_equal_the_committed_fixture() {
    let fixture = fixture();
    let pairs: &[(&str, &[&str])] = &[
        ("getContact", GET_CONTACT_FIELDS),
        ("searchItem", SEARCH_ITEM_FIELDS),
        ("listItem", LIST_ITEM_FIELDS),
        ("createdContact", CREATED_CONTACT_FIELDS),
        ("appointment", APPOINTMENT_FIELDS),
        ("task", TASK_FIELDS),
        ("note", NOTE_FIELDS),
        ("taskSearchBody", TASK_SEARCH_BODY_FIELDS),
        ("businessUpdateBody", BUSINESS_UPDATE_BODY_FIELDS),
    ];
    assert_eq!(fixture.len(), pairs.len());
    for (name, list) in pairs {
        let (_, _, props) = &fixture[*name];
        assert_eq!(props.iter().map(String::as_str).collect::<Vec<_>>(), *list, "{name}");
    }
    // The documented extras really are extras, not schema fields.
    assert!(GET_CONTACT_EXTRAS.iter().all(|k| !GET_CONTACT_FIELDS.contains(k)));
    assert!(SEARCH_ITEM_EXTRAS.iter().all(|k| !SEARCH_ITEM_FIELDS.contains(k)));
}

/// `GHL_OPENAPI_DIR`, or `shared/ghl-openapi` next to an ancestor of this crate.
fn spec_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("GHL_OPENAPI_DIR") {
        return Some(PathBuf::from(dir));
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared").join("ghl-openapi"))
        .find(|candidate| candidate.join("apps").join("contacts.json").is_file())
}

#[test]
fn the_fixture_equals_the_openapi_specs_when_they_are_present() {
    let Some(dir) = spec_dir() else {
        println!("skipped: no GHL OpenAPI specs (set GHL_OPENAPI_DIR or keep ../shared/ghl-openapi)");
        return;
    };
    for (name, (file, schema, props)) in fixture() {
        let path = dir.join(&file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            println!("skipped {name}: {} is missing", path.display());
            continue;
        };
        let doc: Value = serde_json::from_str(&text).unwrap();
        let spec: Vec<String> = doc["components"]["schemas"][&schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{schema} has no properties in {file}"))
            .keys()
            .cloned()
            .collect();
        // serde_json's map is sorted: compare as sets, the fixture keeps the spec's order.
        let fixture: BTreeSet<String> = props.into_iter().collect();
        assert_eq!(fixture, spec.into_iter().collect::<BTreeSet<_>>(), "{name}: {file}#{schema}");
    }
}

/// Two locations of 100 seeded contacts, generous rate limits.
async fn hundred() -> anyhow::Result<Env> {
    Env::start(GhlOptions { contacts_per_location: 100, burst_max: 10_000, ..GhlOptions::default() }).await
}

/// Keys every contact carries whatever its data.
const ALWAYS_GET: &[&str] = &[
    "id",
    "locationId",
    "type",
    "dnd",
    "tags",
    "customFields",
    "dateAdded",
    "dateUpdated",
    "attachments",
    "lastActivity",
];

#[tokio::test]
async fn get_contact_answers_exactly_the_get_schema_fields() -> anyhow::Result<()> {
    let env = hundred().await?;
    let allowed: BTreeSet<String> = set(GET_CONTACT_FIELDS).union(&set(GET_CONTACT_EXTRAS)).cloned().collect();
    let mut seen = BTreeSet::new();
    for loc in env.ghl().locations() {
        for id in env.ghl().contact_ids(&loc.id) {
            let (status, body) = env.send(env.req(reqwest::Method::GET, &format!("/contacts/{id}"), &loc.pit)).await?;
            assert_eq!(status, 200);
            let contact = &body["contact"];
            assert_eq!(Some(contact), env.ghl().contact(&id).as_ref());
            let k = keys(contact);
            assert!(k.is_subset(&allowed), "extra keys {:?}", k.difference(&allowed).collect::<Vec<_>>());
            assert!(set(ALWAYS_GET).is_subset(&k), "{id}: {k:?}");
            seen.extend(k);
        }
    }
    // Every schema field is filled for some seeded contact (the extras only when written).
    let missing: Vec<_> = set(GET_CONTACT_FIELDS).difference(&seen).cloned().collect();
    assert!(missing.is_empty(), "never rendered: {missing:?}");
    env.sandbox.stop().await;
    Ok(())
}

/// Every search item of every location, over HTTP.
async fn all_search_items(env: &Env) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    for loc in env.ghl().locations() {
        let mut after: Option<Value> = None;
        loop {
            let mut body = json!({"locationId": loc.id, "pageLimit": 40,
                "sort": [{"field": "dateUpdated", "direction": "asc"}]});
            if let Some(sa) = &after {
                body["searchAfter"] = sa.clone();
            }
            let (status, page) = env.search(&loc.pit, body).await?;
            assert_eq!(status, 200, "{page}");
            let contacts = page["contacts"].as_array().cloned().unwrap_or_default();
            after = contacts.last().map(|c| c["searchAfter"].clone());
            let done = contacts.len() < 40;
            items.extend(contacts);
            if done {
                break;
            }
        }
    }
    Ok(items)
}

#[tokio::test]
async fn search_items_answer_exactly_the_search_schema_fields() -> anyhow::Result<()> {
    let env = hundred().await?;
    let items = all_search_items(&env).await?;
    assert_eq!(items.len(), 200);
    let allowed: BTreeSet<String> = set(SEARCH_ITEM_FIELDS).union(&set(SEARCH_ITEM_EXTRAS)).cloned().collect();
    let mut seen = BTreeSet::new();
    for item in &items {
        let k = keys(item);
        assert!(k.is_subset(&allowed), "extra keys {:?}", k.difference(&allowed).collect::<Vec<_>>());
        let id = item["id"].as_str().unwrap_or_default();
        assert_eq!(Some(item), env.ghl().search_item(id).as_ref());
        seen.extend(k);
    }
    assert_eq!(seen, allowed, "every search field and documented extra is rendered for some contact");
    // The drift GET has and search lacks (issue 17, defect 2).
    for absent in ["timezone", "attributionSource", "lastAttributionSource", "visitorId", "address1", "name"] {
        assert!(!seen.contains(absent), "{absent} is not a search field");
    }
    env.sandbox.stop().await;
    Ok(())
}

/// A search item's value in `GET` terms: `address` → `address1`, epoch `dateOfBirth` → date.
fn as_get_field(key: &str, value: &Value) -> (String, Value) {
    match key {
        "address" => ("address1".to_owned(), value.clone()),
        "dateOfBirth" => {
            let ms = value.as_i64().unwrap_or_default();
            (key.to_owned(), json!(model::iso(ms)[..10].to_owned()))
        }
        _ => (key.to_owned(), value.clone()),
    }
}

#[tokio::test]
async fn get_and_search_carry_the_same_values_for_the_fields_both_have() -> anyhow::Result<()> {
    let env = hundred().await?;
    // Written contacts too: fields set through PUT, a dndSettings object, a business.
    let loc = env.loc(0);
    let first = env.ghl().contact_ids(&loc.id)[0].clone();
    assert!(env.ghl().update_contact(
        &first,
        json!({"dateOfBirth": "1990-09-25", "dndSettings": {"SMS": {"status": "active", "message": "", "code": ""}},
               "address1": "9 Written St", "website": "https://written.example.test"}),
    ));
    assert!(env.ghl().set_business(&first, Some(&env.ghl().businesses(&loc.id)[1].id)));
    let mut compared = BTreeMap::<String, usize>::new();
    for item in all_search_items(&env).await? {
        let id = item["id"].as_str().unwrap_or_default().to_owned();
        let get = env.ghl().contact(&id).unwrap_or_default();
        for (key, value) in item.as_object().into_iter().flatten() {
            let (key, value) = as_get_field(key, value);
            if let Some(expected) = get.get(&key) {
                assert_eq!(&value, expected, "{id}.{key}");
                *compared.entry(key).or_default() += 1;
            }
        }
        // Fields GET has, search has not, and the other way round, are exactly the drift.
        for key in keys(&get) {
            let in_search = match key.as_str() {
                "address1" => item.get("address").is_some(),
                other => item.get(other).is_some(),
            };
            assert!(
                in_search || !SEARCH_ITEM_FIELDS.contains(&key.as_str()) && !SEARCH_ITEM_EXTRAS.contains(&key.as_str()),
                "{id}: {key} is a search field but only GET has it"
            );
        }
    }
    for shared in ["firstName", "email", "phone", "address1", "dateOfBirth", "dndSettings", "tags", "businessId"] {
        assert!(compared.get(shared).is_some_and(|n| *n > 0), "{shared} compared: {compared:?}");
    }
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn created_and_listed_contacts_answer_their_schemas() -> anyhow::Result<()> {
    let env = hundred().await?;
    let a = env.loc(0);
    let (status, body) = env
        .send(env.req(reqwest::Method::POST, "/contacts/", &a.pit).json(&json!({
            "locationId": a.id, "firstName": "Nia", "email": "nia@example.test", "timezone": "Europe/Berlin",
            "dateOfBirth": "1990-09-25", "dndSettings": {"Email": {"status": "inactive", "message": "", "code": ""}},
        })))
        .await?;
    assert_eq!(status, 201, "{body}");
    let created = &body["contact"];
    assert!(keys(created).is_subset(&set(CREATED_CONTACT_FIELDS)), "{created}");
    assert_eq!(created["dateOfBirth"], "1990-09-25T00:00:00.000Z");
    assert_eq!((created["birthMonth"].clone(), created["birthDay"].clone()), (json!(9), json!(25)));
    assert!(created.get("timezone").is_none(), "CreateContactSchema has no timezone");
    let id = created["id"].as_str().unwrap_or_default();
    assert_eq!(env.ghl().contact(id).unwrap_or_default()["timezone"], "Europe/Berlin");

    // Business listing and the deprecated listing: ContactsSearchSchema items.
    let business = env.ghl().businesses(&a.id)[0].id.clone();
    let path = format!("/contacts/business/{business}?locationId={}&limit=100", a.id);
    let (status, page) = env.send(env.req(reqwest::Method::GET, &path, &a.pit)).await?;
    assert_eq!(status, 200, "{page}");
    let (status, listed) =
        env.send(env.req(reqwest::Method::GET, &format!("/contacts/?locationId={}&limit=100", a.id), &a.pit)).await?;
    assert_eq!(status, 200);
    let mut seen = BTreeSet::new();
    for item in
        page["contacts"].as_array().into_iter().flatten().chain(listed["contacts"].as_array().into_iter().flatten())
    {
        let k = keys(item);
        assert!(k.is_subset(&set(LIST_ITEM_FIELDS)), "{item}");
        seen.extend(k);
    }
    assert_eq!(seen, set(LIST_ITEM_FIELDS));
    env.sandbox.stop().await;
    Ok(())
}

#[tokio::test]
async fn tasks_notes_and_appointments_answer_their_schemas() -> anyhow::Result<()> {
    let env = hundred().await?;
    let a = env.loc(0);
    let (mut tasks, mut notes, mut events) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for id in env.ghl().contact_ids(&a.id) {
        for (route, key, seen) in
            [("tasks", "tasks", &mut tasks), ("notes", "notes", &mut notes), ("appointments", "events", &mut events)]
        {
            let (status, body) =
                env.send(env.req(reqwest::Method::GET, &format!("/contacts/{id}/{route}"), &a.pit)).await?;
            assert_eq!(status, 200);
            for item in body[key].as_array().into_iter().flatten() {
                seen.extend(keys(item));
            }
        }
    }
    assert_eq!(tasks, set(TASK_FIELDS));
    assert_eq!(notes, set(NOTE_FIELDS));
    assert_eq!(events, set(APPOINTMENT_FIELDS));
    env.sandbox.stop().await;
    Ok(())
}

#[test]
fn scopes_parse_and_print() {
    let set = ScopeSet::parse(&["contacts.readonly", "nonsense", "locations/tasks.readonly"]);
    assert_eq!(set.to_scope_string(), "contacts.readonly locations/tasks.readonly");
    assert!(set.contains(ScopeSet::one("contacts.readonly").unwrap()));
    assert!(!set.contains(ScopeSet::one("contacts.write").unwrap()));
    assert_eq!(ScopeSet::parse(KNOWN_SCOPES), ScopeSet::ALL);
    assert_eq!(required_scope("POST /locations/:locationId/tasks/search"), Some("locations/tasks.readonly"));
    assert_eq!(required_scope("GET /contacts/:contactId/appointments"), Some("contacts.readonly"));
    assert_eq!(required_scope("POST /contacts/bulk/business"), Some("contacts.write"));
    assert_eq!(required_scope("POST /oauth/token"), None);
}
