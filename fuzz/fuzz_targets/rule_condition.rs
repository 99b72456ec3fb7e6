//! Rule conditions (CEL) from config: compiling and evaluating never take the process down.
//! `Condition` catches panics of the third-party parser and interpreter on purpose (a bad
//! expression, not a crash), so the panic hook is made quiet here and only a panic that
//! escapes `Condition` aborts the run.
#![no_main]

use std::sync::Once;

use ghl_sync::rules::RuleEvent;
use ghl_sync::rules::expr::Condition;
use libfuzzer_sys::fuzz_target;

static QUIET: Once = Once::new();

fn event() -> RuleEvent {
    serde_json::from_value(serde_json::json!({
        "trigger": "contact.updated",
        "key": "k",
        "location_id": "loc",
        "entity": "contact",
        "entity_id": "c1",
        "contact_id": "c1",
        "old": {"id": "c1", "tags": ["a"], "email": "a@example.com"},
        "new": {"id": "c1", "tags": ["a", "b"], "email": "b@example.com", "customFields": [{"id": "f", "value": 3}]},
        "contact": {"id": "c1", "tags": ["a", "b"]},
        "changed": ["email", "tags"],
        "tags_added": ["b"],
        "data": {"score": 7, "list": [1, 2, 3]},
        "at_ms": 1_700_000_000_000i64
    }))
    .expect("the sample event is valid")
}

fuzz_target!(|data: &[u8]| {
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Ok(source) = std::str::from_utf8(data) else { return };
    if let Ok(condition) = Condition::compile(source) {
        let _ = condition.evaluate(&event(), 1_700_000_000_000);
    }
});
