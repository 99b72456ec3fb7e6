//! Records are stored as deflate-compressed JSON: compact, and readable without GHL calls.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;

use super::StoreError;

/// Compresses a JSON value for storage.
pub fn pack(value: &serde_json::Value) -> Vec<u8> {
    let json = serde_json::to_vec(value).unwrap_or_default();
    pack_bytes(&json)
}

/// Compresses a JSON object for storage, as [`pack`] of `Value::Object` (without a copy).
pub fn pack_map(map: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let json = serde_json::to_vec(map).unwrap_or_default();
    pack_bytes(&json)
}

/// Compresses already-serialized JSON.
pub fn pack_bytes(json: &[u8]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::with_capacity(json.len() / 2 + 16), Compression::fast());
    // Writing to a Vec cannot fail.
    if encoder.write_all(json).is_err() {
        return Vec::new();
    }
    encoder.finish().unwrap_or_default()
}

/// Reverses [`pack`].
pub fn unpack(bytes: &[u8]) -> Result<serde_json::Value, StoreError> {
    let mut json = Vec::with_capacity(bytes.len() * 3);
    DeflateDecoder::new(bytes)
        .read_to_end(&mut json)
        .map_err(|e| StoreError::Corrupt(format!("record does not decompress: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| StoreError::Corrupt(format!("record is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_shrink() {
        let value = serde_json::json!({"id": "abc", "tags": vec!["x"; 50], "customFields": [{"id": "f", "value": 3}]});
        let packed = pack(&value);
        assert!(packed.len() < serde_json::to_vec(&value).unwrap().len());
        assert_eq!(unpack(&packed).unwrap(), value);
    }

    #[test]
    fn a_map_packs_as_its_object() {
        let value = serde_json::json!({"id": "abc", "tags": ["x", "y"], "n": 3});
        let serde_json::Value::Object(map) = &value else { unreachable!() };
        assert_eq!(pack_map(map), pack(&value));
        assert_eq!(unpack(&pack_map(map)).unwrap(), value);
    }

    #[test]
    fn garbage_is_reported_as_corrupt() {
        assert!(matches!(unpack(b"not deflate"), Err(StoreError::Corrupt(_))));
    }
}
