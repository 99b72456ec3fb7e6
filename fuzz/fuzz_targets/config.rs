//! The config loader on arbitrary text: never a panic; a refusal always names its problems.
#![no_main]

use std::collections::HashMap;

use ghl_sync::config::{ConfigSource, load_from_str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(error) = load_from_str(text, ConfigSource::InCode, HashMap::new()) {
        assert!(!error.problems().is_empty(), "a refused config without a problem");
    }
});
