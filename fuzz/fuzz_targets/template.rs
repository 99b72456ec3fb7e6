//! Mapping templates: rendering never panics, and validation agrees with parsing (a valid
//! template parses; one that does not parse is reported).
#![no_main]

use ghl_sync::connectors::mapping::{parse_template, render, validate_template};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(template) = std::str::from_utf8(data) else { return };
    drop(render(template, |path| Some(Value::String(path.to_owned()))));
    // `validate_template` also flags unknown source fields, so only one way: a template it
    // reports valid parses (equivalently, one that does not parse is never reported valid).
    if validate_template(template).is_empty() {
        assert!(parse_template(template).is_ok(), "valid by validate, refused by parse: {template:?}");
    }
});
