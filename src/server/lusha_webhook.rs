//! `POST /webhooks/lusha`: Lusha signal webhooks (reference/lusha.md §8).
//!
//! Verify `X-Lusha-Signature` (hex HMAC-SHA256 of `timestamp + "." + body`) with
//! `[server] lusha_webhook_secret`, check `X-Lusha-Timestamp` is within ±5 minutes, dedupe
//! on the payload `id` through `webhook_inbox` (source `lusha`) and store the signal in
//! `lusha_signals` in the same transaction, then answer 201 with Lusha's expected body.
//!
//! Lusha signs `JSON.stringify(payload)`, a re-serialisation. When the check over the raw
//! bytes fails we try once more over the body with insignificant whitespace removed (what
//! `JSON.stringify` emits, key order kept) before rejecting.
//!
//! The Lusha connector's background loop (`connectors::lusha::leads`) turns each stored
//! signal into a GHL note and tag on the contacts enriched with that Lusha id, through the
//! write-back service, and sets `processed_at` (or `error`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::Sha256;

use super::ServerState;
use super::ghl_webhook::{Verdict, count};
use crate::store::lusha::{self, NewSignal, Recorded};
use crate::store::{StoreError, now_ms};

/// Lusha documents no tolerance; ±5 minutes (lusha.md §8).
const MAX_SKEW_SECS: i64 = 300;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Signal {
    id: Option<String>,
    #[serde(rename = "type")]
    signal_type: Option<String>,
    entity_type: Option<String>,
    entity_id: Option<serde_json::Value>,
    subscription_id: Option<serde_json::Value>,
    #[serde(default)]
    data: serde_json::Value,
    timestamp: Option<serde_json::Value>,
    billing: Option<Billing>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Billing {
    credits_charged: Option<f64>,
}

fn id_text(value: &Option<serde_json::Value>) -> Option<String> {
    match value {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    let text = text.strip_prefix("sha256=").unwrap_or(text);
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The body without whitespace outside strings: `JSON.stringify` of the same object.
fn compact_json(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in raw {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
    out
}

fn signature_matches(secret: &[u8], timestamp: &str, body: &[u8], signature: &[u8]) -> bool {
    let check = |bytes: &[u8]| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return false;
        };
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(bytes);
        mac.verify_slice(signature).is_ok() // constant time
    };
    check(body) || {
        let compact = compact_json(body);
        compact.as_slice() != body && check(&compact)
    }
}

fn reject(status: StatusCode, verdict: Verdict, message: &'static str) -> Response {
    count("lusha", "unknown", verdict);
    (status, message).into_response()
}

pub(super) async fn receive(State(state): State<ServerState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = state.config.secrets.lusha_webhook_secret.as_ref() else {
        // Not configured: nobody should be sending here.
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let (Some(timestamp), Some(signature)) = (header("x-lusha-timestamp"), header("x-lusha-signature")) else {
        return reject(StatusCode::UNAUTHORIZED, Verdict::MissingSignature, "missing signature\n");
    };
    let Some(signature) = decode_hex(signature) else {
        return reject(StatusCode::UNAUTHORIZED, Verdict::BadSignature, "invalid signature\n");
    };
    if !signature_matches(secret.expose_secret().as_bytes(), timestamp, &body, &signature) {
        return reject(StatusCode::UNAUTHORIZED, Verdict::BadSignature, "invalid signature\n");
    }
    // Signed, so the timestamp is authentic; stale means a replay (401, like GHL's).
    let fresh = timestamp
        .parse::<i64>()
        .ok()
        .map(|ts| if ts > 100_000_000_000 { ts / 1000 } else { ts })
        .is_some_and(|ts| (now_ms() / 1000 - ts).abs() <= MAX_SKEW_SECS);
    if !fresh {
        return reject(StatusCode::UNAUTHORIZED, Verdict::Stale, "stale timestamp\n");
    }
    let signal: Signal = match serde_json::from_slice(&body) {
        Ok(signal) => signal,
        Err(_) => return reject(StatusCode::BAD_REQUEST, Verdict::Malformed, "malformed JSON\n"),
    };
    let Some(id) = signal.id.clone().filter(|id| !id.is_empty()) else {
        return reject(StatusCode::BAD_REQUEST, Verdict::Malformed, "missing id\n");
    };
    match record(&state, &id, &signal).await {
        Ok(verdict) => {
            count("lusha", "signal", verdict);
            if verdict == Verdict::Accepted {
                tracing::info!(signal.id = %id, "Stored a Lusha signal");
                state.wake.notify_one();
            }
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            // Lusha recommends 201 with this body, duplicates included.
            (StatusCode::CREATED, Json(serde_json::json!({"received": true, "timestamp": now, "webhookId": id})))
                .into_response()
        }
        Err(error) => {
            tracing::error!(error = %error, "Failed to record a Lusha signal");
            count("lusha", "signal", Verdict::Error);
            (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response()
        }
    }
}

async fn record(state: &ServerState, id: &str, signal: &Signal) -> Result<Verdict, StoreError> {
    let sent_at = match &signal.timestamp {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other @ serde_json::Value::Number(_)) => Some(other.to_string()),
        _ => None,
    };
    let new = NewSignal {
        id: id.to_owned(),
        signal_type: signal.signal_type.clone().unwrap_or_default(),
        entity_type: signal.entity_type.clone(),
        entity_id: id_text(&signal.entity_id),
        subscription_id: id_text(&signal.subscription_id),
        data: signal.data.clone(),
        credits_charged: signal.billing.as_ref().and_then(|b| b.credits_charged),
        sent_at,
    };
    Ok(match lusha::record_signal(&state.store, &new).await? {
        Recorded::Stored => Verdict::Accepted,
        Recorded::Duplicate => Verdict::Duplicate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_decodes_with_or_without_prefix() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("sha256=0A"), Some(vec![10]));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
    }

    #[test]
    fn compaction_keeps_strings_and_key_order() {
        let raw = br#"{ "b": "x y",
  "a": [1, 2], "c": "q\" z" }"#;
        assert_eq!(compact_json(raw), br#"{"b":"x y","a":[1,2],"c":"q\" z"}"#.to_vec());
    }

    #[test]
    fn signatures_verify_over_raw_or_compacted_body() {
        let secret = b"whsec_test";
        let compact = br#"{"id":"1","type":"promotion"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(b"1700000000.");
        mac.update(compact);
        let signature = mac.finalize().into_bytes().to_vec();
        assert!(signature_matches(secret, "1700000000", compact, &signature));
        assert!(signature_matches(secret, "1700000000", br#"{"id": "1", "type": "promotion"}"#, &signature));
        assert!(!signature_matches(secret, "1700000001", compact, &signature));
        assert!(!signature_matches(b"other", "1700000000", compact, &signature));
    }
}
