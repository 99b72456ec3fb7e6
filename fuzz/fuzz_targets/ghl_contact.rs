//! A page of GHL's contact search as bytes: decoding, the per-item conversion, normalising
//! and hashing never panic, whatever the items hold.
#![no_main]

use ghl_sync::domain::normalize::{contact_hash, normalize_contact};
use ghl_sync::ghl::dto::{Contact, SearchResponse};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(page) = serde_json::from_slice::<SearchResponse>(data) else { return };
    for item in page.contacts {
        if let Ok(contact) = Contact::try_from(item) {
            let mut map = contact.extra.clone();
            map.insert("id".into(), Value::String(contact.id.clone()));
            let normal = normalize_contact(map);
            let _ = contact_hash(&normal, &["f".to_owned()]);
        }
    }
});
