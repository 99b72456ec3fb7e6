//! Mapping templates: rendering never panics, and validation agrees with parsing.
#![no_main]

use ghl_sync::connectors::mapping::{parse_template, render, validate_template};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(template) = std::str::from_utf8(data) else { return };
    drop(render(template, |path| Some(Value::String(path.to_owned()))));
    let valid = validate_template(template).is_empty();
    assert_eq!(valid, parse_template(template).is_ok(), "validate and parse disagree on {template:?}");
});
