//! Signed webhook delivery (`x-ghl-signature`: base64 Ed25519 over the raw body).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

use super::model::{iso, random_hex};
use super::state::SentWebhook;
use super::{FakeGhl, WebhookMode};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

pub(crate) fn public_key_spki(key: &SigningKey) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(key.verifying_key().as_bytes());
    STANDARD.encode(der)
}

impl FakeGhl {
    /// Completes, signs, records and (asynchronously) sends events.
    pub(crate) fn dispatch(&self, events: Vec<Value>, mode: WebhookMode) {
        if events.is_empty() {
            return;
        }
        let mut deliveries = Vec::new();
        {
            let mut s = self.lock();
            let url = s.webhook_url.clone();
            for mut event in events {
                let mut ms = s.wall_ms();
                if mode == WebhookMode::StaleTimestamp {
                    ms -= 3_600_000;
                }
                if let Some(obj) = event.as_object_mut() {
                    let webhook_id = format!(
                        "{}-{}-{}-{}-{}",
                        random_hex(&mut s.rng, 8),
                        random_hex(&mut s.rng, 4),
                        random_hex(&mut s.rng, 4),
                        random_hex(&mut s.rng, 4),
                        random_hex(&mut s.rng, 12)
                    );
                    if mode == WebhookMode::StaleTimestamp || !obj.contains_key("timestamp") {
                        obj.insert("timestamp".to_owned(), json!(iso(ms)));
                    }
                    obj.entry("webhookId").or_insert(json!(webhook_id));
                    obj.entry("appId").or_insert(json!(s.app_id.as_str()));
                    obj.entry("versionId").or_insert(json!(s.version_id.as_str()));
                }
                let body = serde_json::to_string(&event).unwrap_or_default();
                let mut signature = s.signing_key.sign(body.as_bytes()).to_bytes();
                if mode == WebhookMode::BadSignature {
                    signature[0] ^= 0x01;
                }
                let signature = STANDARD.encode(signature);
                let copies = if mode == WebhookMode::Duplicate { 2 } else { 1 };
                for _ in 0..copies {
                    let seq = s.record_sent(SentWebhook {
                        seq: 0,
                        mode: format!("{mode:?}"),
                        url: url.as_ref().map(url::Url::to_string),
                        body: body.clone(),
                        signature: signature.clone(),
                        status: None,
                        error: None,
                    });
                    if let Some(url) = &url {
                        deliveries.push((seq, url.clone(), body.clone(), signature.clone()));
                    }
                }
            }
        }
        if deliveries.is_empty() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("No tokio runtime: fake GHL webhooks not delivered");
            return;
        };
        let this = self.clone();
        // One task per batch keeps a write's events in order (duplicates arrive back to back).
        handle.spawn(async move {
            for (seq, url, body, signature) in deliveries {
                let sent = this
                    .client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-ghl-signature", signature)
                    .body(body)
                    .send()
                    .await;
                let (status, error) = match sent {
                    Ok(response) => (Some(response.status().as_u16()), None),
                    Err(error) => (None, Some(error.to_string())),
                };
                this.lock().mark_sent(seq, status, error);
            }
        });
    }
}
