//! Bad input at volume (proptest, bounded case counts): the config loader, GHL contact
//! decoding and normalising, the GHL webhook endpoint (verification and parsing) and mapping
//! templates never panic, answer with a clear error, and leave the rest of a batch alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use ghl_sync::config::{Config, ConfigSource, LocationSettings, Secret, Settings, load_from_str};
use ghl_sync::connectors::mapping::{parse_template, render, validate_template};
use ghl_sync::domain::normalize::{contact_hash, normalize_contact};
use ghl_sync::ghl::dto::{Contact, SearchResponse};
use ghl_sync::server::{self, ServerState};
use ghl_sync::store::now_ms;
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

/// Any JSON value: nulls, bools, numbers at the edges, unicode and long strings, nesting.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,40}".prop_map(Value::String),
        (0usize..70_000).prop_map(|n| Value::String("é".repeat(n / 2))),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A GHL contact as the API might send it on a bad day: known fields with any value,
/// custom fields of unknown types, unknown fields.
fn wild_contact() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just(json!("c_0123456789")), any_json()],
        any_json(),
        any_json(),
        any_json(),
        proptest::collection::vec((any_json(), any_json(), "[a-zA-Z_]{0,12}"), 0..4),
        any_json(),
    )
        .prop_map(|(id, email, phone, tags, custom, extra)| {
            let custom: Vec<Value> =
                custom.into_iter().map(|(id, value, kind)| json!({"id": id, "value": value, "type": kind})).collect();
            json!({
                "id": id, "email": email, "phone": phone, "tags": tags, "customFields": custom,
                "dateUpdated": extra.clone(), "firstName": extra, "unknownField": {"x": [1, null]},
            })
        })
}

const TOML_SECTIONS: &[&str] = &[
    "",
    "store",
    "ghl",
    "ghl.oauth",
    "ghl.webhooks",
    "sync",
    "limits",
    "dispatch",
    "daemon",
    "server",
    "log",
    "export",
    "connectors.lusha",
    "connectors.webhook.x",
    "bogus",
];
const TOML_KEYS: &[&str] = &[
    "path",
    "base_url",
    "url",
    "interval",
    "contacts_interval",
    "shutdown_grace",
    "level",
    "format",
    "enabled",
    "listen",
    "batch_size",
    "concurrency",
    "timeout",
    "api_key",
    "poll_interval",
    "max_retries",
    "fields",
    "events",
    "typo_key",
];

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[0-9]{1,4}(ms|s|m|h|d|x)?".prop_map(|s| format!("\"{s}\"")),
        "\\PC{0,20}".prop_map(|s| format!("{s:?}")),
        Just("\"http://127.0.0.1:1/x\"".to_owned()),
        Just("[1, \"a\", true]".to_owned()),
        Just("{ a = 1 }".to_owned()),
        "\\PC{0,12}",
    ]
}

fn random_toml() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        (proptest::sample::select(TOML_SECTIONS), proptest::sample::select(TOML_KEYS), toml_value()),
        0..10,
    )
    .prop_map(|entries| {
        let mut text = String::new();
        for (section, key, value) in entries {
            if !section.is_empty() {
                text.push_str(&format!("[{section}]\n"));
            }
            text.push_str(&format!("{key} = {value}\n"));
        }
        text
    })
}

proptest! {
    #![proptest_config(cases(96))]

    #[test]
    fn the_config_loader_never_panics_on_random_toml_and_every_problem_names_its_key(text in random_toml()) {
        match load_from_str(&text, ConfigSource::InCode, HashMap::new()) {
            Ok(_) => {}
            Err(error) => {
                let problems = error.problems();
                prop_assert!(!problems.is_empty());
                let whole = error.to_string();
                if !whole.contains("is not valid TOML") {
                    for problem in problems {
                        let (key, message) = problem.split_once(": ").unwrap_or(("", ""));
                        prop_assert!(
                            !key.is_empty() && !key.contains(' ') && !message.trim().is_empty(),
                            "a problem without its key: {problem:?} for\n{text}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_config_loader_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        if let Err(error) = load_from_str(&text, ConfigSource::InCode, HashMap::new()) {
            prop_assert!(!error.problems().is_empty());
        }
    }

    #[test]
    fn ghl_contacts_with_nulls_huge_strings_unicode_and_unknown_custom_fields_decode_or_fail_cleanly(
        items in proptest::collection::vec(wild_contact(), 1..4)
    ) {
        // One good item among bad ones: it decodes whatever its neighbours hold.
        let good = json!({"id": "c_good", "email": "good@example.com", "customFields": [{"id": "f", "value": 1}]});
        let mut page = items.clone();
        page.insert(items.len() / 2, good.clone());
        let response: SearchResponse = serde_json::from_value(json!({"contacts": page, "total": 3})).unwrap();
        let mut decoded_good = false;
        for item in response.contacts {
            let is_good = item == good;
            match Contact::try_from(item) {
                Ok(contact) => {
                    let mut map = contact.extra.clone();
                    map.insert("id".into(), Value::String(contact.id.clone()));
                    let normal = normalize_contact(map);
                    let _ = contact_hash(&normal, &["f".to_owned()]);
                    decoded_good |= is_good;
                }
                Err(error) => {
                    prop_assert!(!is_good, "the good item failed: {error}");
                    prop_assert!(!error.to_string().is_empty());
                }
            }
        }
        prop_assert!(decoded_good);
    }

    #[test]
    fn mapping_templates_never_panic_and_validation_agrees_with_parsing(
        template in "(\\PC|\\{|\\}|@|\\.|\\|){0,40}",
        value in any_json(),
    ) {
        drop(render(&template, |_| Some(value.clone())));
        let problems = validate_template(&template);
        if problems.is_empty() {
            prop_assert!(parse_template(&template).is_ok(), "valid by validate, refused by parse: {template:?}");
        }
        if parse_template(&template).is_err() {
            prop_assert!(!problems.is_empty(), "refused by parse, valid by validate: {template:?}");
        }
    }
}

/// Pieces of CEL: the allowed variables, unknown ones, operators, literals, macros, brackets
/// and stray characters, so random joins hit both valid and broken expressions.
fn cel_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "trigger",
            "contact",
            "old",
            "new",
            "record",
            "data",
            "changed",
            "tags_added",
            "tags_removed",
            "now",
            "at",
            "depth",
            "location",
            "nobody",
            "contact.email",
            "data.score",
            "new.customFields",
            "size(",
            "has(",
            ".exists(f, ",
            ".all(x, ",
            ".map(x, ",
            "timestamp(",
            "duration(",
            "int(",
            "string(",
            " in ",
            " && ",
            " || ",
            " == ",
            " != ",
            " < ",
            " >= ",
            " + ",
            " - ",
            " * ",
            " / ",
            " % ",
            "!",
            "-",
            "?",
            " : ",
            "(",
            ")",
            "[",
            "]",
            "{",
            "}",
            ",",
            ".",
            "'",
            "\"",
            "\\",
            "1",
            "0",
            "-9223372036854775808",
            "1e309",
            "3.5",
            "true",
            "null",
            "b'x'",
            "'vip'",
            "\"2026-01-01T00:00:00Z\"",
            "\"1h\"",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,6}",
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn rule_conditions_compile_or_fail_with_a_message_and_never_panic_when_evaluated(
        pieces in proptest::collection::vec(cel_piece(), 0..24)
    ) {
        use ghl_sync::rules::expr::Condition;
        let source = pieces.concat();
        let event: ghl_sync::rules::RuleEvent = serde_json::from_value(json!({
            "trigger": "contact.updated", "key": "k", "location_id": "loc", "entity": "contact",
            "entity_id": "c1", "contact_id": "c1",
            "old": {"id": "c1", "tags": ["a"], "email": "a@example.com"},
            "new": {"id": "c1", "tags": ["a", "b"], "email": "b@example.com", "customFields": [{"id": "f", "value": 3}]},
            "contact": {"id": "c1", "tags": ["a", "b"]}, "changed": ["email", "tags"], "tags_added": ["b"],
            "data": {"score": 7, "list": [1, 2, 3]}, "at_ms": 1_700_000_000_000i64
        }))
        .unwrap();
        match Condition::compile(&source) {
            // Evaluation gives a verdict or an error message, never a panic (the CEL interpreter's
            // own panics are caught inside `evaluate`).
            Ok(condition) => {
                if let Err(message) = condition.evaluate(&event, 1_700_000_000_000) {
                    prop_assert!(!message.trim().is_empty());
                }
            }
            Err(message) => prop_assert!(!message.trim().is_empty(), "an empty error for {source:?}"),
        }
    }
}

const LOCATION: &str = "loc_bad_input";

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32])
}

fn public_key_spki() -> String {
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(&signing_key().verifying_key().to_bytes());
    base64::engine::general_purpose::STANDARD.encode(der)
}

struct Receiver {
    runtime: tokio::runtime::Runtime,
    url: String,
    http: reqwest::Client,
    _stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn receiver() -> Receiver {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let url = runtime.block_on(async {
        let mut settings = Settings::default();
        crate::helpers::set_store(&mut settings, &dir.path().join("ghl-sync.db"));
        settings.ghl.webhooks.public_keys = vec![public_key_spki()];
        settings.ghl.locations = vec![LocationSettings {
            id: LOCATION.to_owned(),
            name: None,
            auth: Default::default(),
            pit: Some(Secret::new("pit-bad-input".to_owned())),
            pit_env: None,
            pit_file: None,
            enabled: true,
        }];
        let config = Config::from_settings(settings).unwrap();
        let store = crate::helpers::open_store(&dir.path().join("ghl-sync.db")).await;
        sqlx::query("INSERT INTO locations (id, name, status, updated_at) VALUES ($1, 'x', 'active', $2)")
            .bind(LOCATION)
            .bind(now_ms())
            .execute(&mut crate::helpers::raw(&store).await)
            .await
            .unwrap();
        let state = ServerState::new(store, Arc::new(config), Arc::new(Notify::new()), server::install_metrics());
        let running = server::start("127.0.0.1:0".parse().unwrap(), state, stop.clone()).await.unwrap();
        let url = running.url();
        std::mem::forget(running);
        url
    });
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    Receiver { runtime, url, http, _stop: stop, _dir: dir }
}

fn webhook_body() -> impl Strategy<Value = Vec<u8>> {
    let kind = prop_oneof![
        Just(json!("ContactCreate")),
        Just(json!("ContactUpdate")),
        Just(json!("ContactDelete")),
        Just(json!("NoteCreate")),
        Just(json!("TaskComplete")),
        Just(json!("AppUninstall")),
        any_json(),
    ];
    prop_oneof![
        (kind, any_json(), any_json(), any_json(), any_json()).prop_map(|(kind, id, stamp, webhook_id, extra)| {
            let location = if extra.is_null() { json!(LOCATION) } else { extra.clone() };
            serde_json::to_vec(&json!({
                "type": kind, "locationId": location, "id": id, "timestamp": stamp,
                "webhookId": webhook_id, "contactId": extra,
            }))
            .unwrap()
        }),
        any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        proptest::collection::vec(any::<u8>(), 0..300),
    ]
}

#[test]
fn the_ghl_webhook_endpoint_answers_any_signed_or_unsigned_body_without_a_5xx_and_stays_up() {
    let receiver = receiver();
    let mut runner = proptest::test_runner::TestRunner::new(cases(64));
    runner
        .run(&(webhook_body(), any::<bool>()), |(body, signed)| {
            let signature = if signed {
                base64::engine::general_purpose::STANDARD.encode(signing_key().sign(&body).to_bytes())
            } else {
                base64::engine::general_purpose::STANDARD.encode(&body[..body.len().min(64)])
            };
            let status = receiver.runtime.block_on(async {
                receiver
                    .http
                    .post(format!("{}/webhooks/ghl", receiver.url))
                    .header("content-type", "application/json")
                    .header("x-ghl-signature", signature)
                    .body(body.clone())
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            });
            let status = status.map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
            prop_assert!(status < 500, "answered {status}");
            if !signed {
                prop_assert!(status == 401 || status == 400, "an unsigned body was answered {status}");
            }
            Ok(())
        })
        .unwrap();
    let health = receiver.runtime.block_on(async {
        receiver.http.get(format!("{}/healthz", receiver.url)).send().await.map(|r| r.status().as_u16())
    });
    assert_eq!(health.unwrap(), 200, "the receiver stayed up");
}
