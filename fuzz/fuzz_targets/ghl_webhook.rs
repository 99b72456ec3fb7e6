//! A GHL webhook body (after its signature was checked) as the endpoint reads it: never a
//! panic; a readable body always has a bounded type label and an event id.
#![no_main]

use ghl_sync::server::parse_webhook;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = parse_webhook(data) {
        assert!(!parsed.event_id.is_empty());
        assert!(parsed.type_label.len() <= 20);
    }
});
