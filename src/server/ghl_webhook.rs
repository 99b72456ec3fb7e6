//! `POST /webhooks/ghl`: GHL's signed webhooks become durable "dirty" hints.
//!
//! Recipe (reference/ghl.md §8.5): verify the Ed25519 `x-ghl-signature` over the raw body,
//! parse, check the timestamp window, dedupe on `webhookId` and mark the contact dirty in ONE
//! transaction, answer 200, wake the scheduler. The payload is a hint, never data: the
//! scheduler re-reads the contact from the API.
//!
//! `dirty_contacts` conventions (read by the scheduler):
//! - `reason` is the GHL event type (`ContactUpdate`, `TaskComplete`, `NoteCreate`, …).
//! - `maybe_deleted = 1` after `ContactDelete`: the scheduler confirms with a GET (404)
//!   before it emits a delete. The flag is sticky until the row is consumed.
//! - Task/Note events without `contactId` (TaskCreate often lacks it, ghl.md §8.1) are kept
//!   as `contact_id = ''` with `reason = "task:<taskId>"` / `"note:<noteId>"`. The sync
//!   engine drops such rows and leaves the task to the location task search / children
//!   sweep; the reason keeps the id for a future resolver. (The primary key is
//!   `(location_id, contact_id)`, so only the latest unresolved hint per location is kept.)
//! - `created_at` is refreshed by every new hint: the engine deletes a hint only
//!   `WHERE created_at <= <the one it handled>`, so a hint that arrives while the contact is
//!   being read survives for the next run.
//! - `AppointmentCreate/Update/Delete` name the contact in `appointment.contactId`: a hint
//!   for that contact's children (read when `[sync] appointments` is on), like a task event;
//!   without it, `reason = "appointment:<id>"` and an empty contact id.
//!
//! The legacy RSA `x-wh-signature` (RSA-SHA256 PKCS#1 v1.5 over the raw body, deprecated by
//! GHL on 2026-07-01) is checked only when `x-ghl-signature` is absent and
//! `ghl.webhooks.legacy_rsa_public_keys` is configured; an accepted one logs a deprecation
//! warning (at most hourly) and counts `ghl_sync_webhook_legacy_signatures_total`. Without
//! configured keys such a delivery gets a 401 and a log line saying how to fix it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ed25519_dalek::{Signature, Verifier as _};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::ServerState;
use crate::store::{Store, StoreError, hints, now_ms};

/// The GHL event types we label metrics with; anything else is counted as `other`
/// (the type field is attacker-controlled until the signature is checked, and unbounded).
const KNOWN_TYPES: &[&str] = &[
    "ContactCreate",
    "ContactUpdate",
    "ContactDelete",
    "ContactTagUpdate",
    "ContactDndUpdate",
    "TaskCreate",
    "TaskComplete",
    "TaskDelete",
    "NoteCreate",
    "NoteUpdate",
    "NoteDelete",
    "AppointmentCreate",
    "AppointmentUpdate",
    "AppointmentDelete",
    "INSTALL",
    "UNINSTALL",
];

/// How a delivery ended, for `ghl_sync_webhook_events_total{verdict}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Accepted,
    Duplicate,
    MissingSignature,
    LegacySignature,
    BadSignature,
    Stale,
    Malformed,
    UnknownType,
    IgnoredLocation,
    Error,
}

impl Verdict {
    pub(super) fn label(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Duplicate => "duplicate",
            Verdict::MissingSignature => "missing_signature",
            Verdict::LegacySignature => "legacy_signature",
            Verdict::BadSignature => "bad_signature",
            Verdict::Stale => "stale",
            Verdict::Malformed => "malformed",
            Verdict::UnknownType => "unknown_type",
            Verdict::IgnoredLocation => "ignored_location",
            Verdict::Error => "error",
        }
    }
}

pub(super) fn count(source: &'static str, event_type: &'static str, verdict: Verdict) {
    metrics::counter!(
        "ghl_sync_webhook_events_total",
        "source" => source,
        "type" => event_type,
        "verdict" => verdict.label()
    )
    .increment(1);
}

/// The fields we read; everything else in the payload is ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(rename = "type")]
    event_type: Option<String>,
    location_id: Option<String>,
    company_id: Option<String>,
    id: Option<String>,
    contact_id: Option<String>,
    webhook_id: Option<String>,
    timestamp: Option<serde_json::Value>,
    /// `Appointment*` events carry their ids in this object, not at the top level.
    appointment: Option<AppointmentRef>,
}

/// The ids of an `Appointment*` event's `appointment` object.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppointmentRef {
    id: Option<String>,
    contact_id: Option<String>,
}

use crate::store::hints::{LocationFilter, Recorded, WebhookAction as Action};

fn action_for(event: &Envelope) -> Action {
    let event_type = event.event_type.as_deref().unwrap_or("");
    let location = event.location_id.clone().filter(|l| !l.is_empty());
    let id = event.id.clone().filter(|i| !i.is_empty());
    let contact = event.contact_id.clone().filter(|c| !c.is_empty());
    let dirty = |location_id: String, contact_id: String, maybe_deleted: bool| Action::Dirty {
        location_id,
        contact_id,
        reason: event_type.to_owned(),
        maybe_deleted,
    };
    let unresolved = |location_id: String, reason: String| Action::Dirty {
        location_id,
        contact_id: String::new(),
        reason,
        maybe_deleted: false,
    };
    match event_type {
        "INSTALL" => Action::Install { location_id: location, company_id: event.company_id.clone() },
        "UNINSTALL" => Action::Uninstall { location_id: location, company_id: event.company_id.clone() },
        t if t.starts_with("Contact") && KNOWN_TYPES.contains(&t) => match (location, id) {
            (Some(l), Some(c)) => dirty(l, c, t == "ContactDelete"),
            _ => Action::Nothing,
        },
        t if (t.starts_with("Task") || t.starts_with("Note")) && KNOWN_TYPES.contains(&t) => {
            let prefix = if t.starts_with("Task") { "task" } else { "note" };
            match (location, contact, id) {
                (Some(l), Some(c), _) => dirty(l, c, false),
                (Some(l), None, Some(child)) => unresolved(l, format!("{prefix}:{child}")),
                _ => Action::Nothing,
            }
        }
        // The contact's children (its appointments among them) are read again; a delete is
        // found by the set diff, like a deleted task.
        t if t.starts_with("Appointment") && KNOWN_TYPES.contains(&t) => {
            let appointment = event.appointment.as_ref();
            let contact = appointment.and_then(|a| a.contact_id.clone()).filter(|c| !c.is_empty()).or(contact);
            let child = appointment.and_then(|a| a.id.clone()).filter(|i| !i.is_empty()).or(id);
            match (location, contact, child) {
                (Some(l), Some(c), _) => dirty(l, c, false),
                (Some(l), None, Some(child)) => unresolved(l, format!("appointment:{child}")),
                _ => Action::Nothing,
            }
        }
        _ => Action::Unknown,
    }
}

/// A verified body, read: what the delivery asks of the store. Pure, so the fuzz target
/// `ghl_webhook` (`fuzz/`) drives exactly the parsing the endpoint uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedWebhook {
    /// The event type if it is one we know, else `other` (a bounded metrics label).
    pub type_label: &'static str,
    pub sent_at_ms: i64,
    /// `webhookId`, or the body's SHA-256 when it has none (exact re-sends still dedupe).
    pub event_id: String,
    pub action: Action,
}

/// Why a body could not be read (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    Json,
    Timestamp { type_label: &'static str },
}

/// Reads a GHL webhook body (after its signature was checked).
pub fn parse_webhook(body: &[u8]) -> Result<ParsedWebhook, Unreadable> {
    let event: Envelope = serde_json::from_slice(body).map_err(|_| Unreadable::Json)?;
    let type_label =
        event.event_type.as_deref().and_then(|t| KNOWN_TYPES.iter().find(|k| **k == t).copied()).unwrap_or("other");
    let sent_at_ms = event.timestamp.as_ref().and_then(timestamp_ms).ok_or(Unreadable::Timestamp { type_label })?;
    let event_id = event
        .webhook_id
        .clone()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| format!("sha256:{}", hex(&Sha256::digest(body))));
    Ok(ParsedWebhook { type_label, sent_at_ms, event_id, action: action_for(&event) })
}

/// Parses GHL's `timestamp`: ISO 8601 text, or a number of seconds / milliseconds.
fn timestamp_ms(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::String(text) => {
            let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
            i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).ok()
        }
        serde_json::Value::Number(n) => {
            let n = n.as_i64()?;
            // Seconds until the year 5138; anything larger is milliseconds.
            Some(if n < 100_000_000_000 { n.saturating_mul(1000) } else { n })
        }
        _ => None,
    }
}

fn verify(state: &ServerState, headers: &HeaderMap, body: &[u8]) -> Result<(), Verdict> {
    let Some(header) = headers.get("x-ghl-signature") else {
        return match headers.get("x-wh-signature") {
            Some(legacy) => verify_legacy(state, legacy, body),
            None => Err(Verdict::MissingSignature),
        };
    };
    let signature = header
        .to_str()
        .ok()
        .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text.trim()).ok())
        .and_then(|bytes| Signature::from_slice(&bytes).ok())
        .ok_or(Verdict::BadSignature)?;
    if state.ghl_keys.iter().any(|key| key.verify(body, &signature).is_ok()) {
        Ok(())
    } else {
        Err(Verdict::BadSignature)
    }
}

/// The deprecated RSA `x-wh-signature`, only with configured keys.
fn verify_legacy(state: &ServerState, header: &HeaderValue, body: &[u8]) -> Result<(), Verdict> {
    if state.ghl_rsa_keys.is_empty() {
        tracing::warn!(
            "GHL webhook carries only the legacy RSA x-wh-signature, which is refused unless \
             ghl.webhooks.legacy_rsa_public_keys is set; enable Ed25519 (x-ghl-signature) signing for the app"
        );
        return Err(Verdict::LegacySignature);
    }
    let signature = header
        .to_str()
        .ok()
        .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text.trim()).ok())
        .ok_or(Verdict::BadSignature)?;
    let valid = state.ghl_rsa_keys.iter().any(|key| {
        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, key)
            .verify(body, &signature)
            .is_ok()
    });
    if !valid {
        return Err(Verdict::BadSignature);
    }
    metrics::counter!("ghl_sync_webhook_legacy_signatures_total").increment(1);
    static LAST_WARNED_MS: AtomicI64 = AtomicI64::new(i64::MIN);
    let now = now_ms();
    let last = LAST_WARNED_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 3_600_000
        && LAST_WARNED_MS.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    {
        tracing::warn!(
            "Accepted a GHL webhook signed only with the legacy RSA x-wh-signature, which GHL deprecated on \
             2026-07-01; switch the app to Ed25519 (x-ghl-signature) and remove ghl.webhooks.legacy_rsa_public_keys"
        );
    }
    Ok(())
}

fn reject(status: StatusCode, event_type: &'static str, verdict: Verdict, message: &'static str) -> Response {
    count("ghl", event_type, verdict);
    (status, message).into_response()
}

/// How long a webhook waits for the store's writer before it is answered 429. Writers queue
/// fairly and every write transaction is short, so this is only reached when the disk stalls.
const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

pub(super) async fn receive(State(state): State<ServerState>, headers: HeaderMap, body: Bytes) -> Response {
    // 1. Authenticity first, over the untouched bytes.
    if let Err(verdict) = verify(&state, &headers, &body) {
        return reject(StatusCode::UNAUTHORIZED, "unknown", verdict, "invalid signature\n");
    }
    // 2. Parse and 3. freshness.
    let ParsedWebhook { type_label, sent_at_ms: sent_at, event_id, action } = match parse_webhook(&body) {
        Ok(parsed) => parsed,
        Err(Unreadable::Json) => {
            return reject(StatusCode::BAD_REQUEST, "unknown", Verdict::Malformed, "malformed JSON\n");
        }
        Err(Unreadable::Timestamp { type_label }) => {
            return reject(
                StatusCode::BAD_REQUEST,
                type_label,
                Verdict::Malformed,
                "missing or unreadable timestamp\n",
            );
        }
    };
    // A stale or far-future delivery is answered 401, not 400: the payload is well-formed,
    // but a correctly signed old body is exactly what a replay looks like, and freshness is
    // part of GHL's webhook authentication (WebhookAuthentication doc). The window is
    // `ghl.webhooks.max_age` both ways (it also absorbs clock skew). A genuine delivery
    // retried later than that is lost as a hint; polling still picks the change up.
    let max_age_ms = i64::try_from(state.config.settings.ghl.webhooks.max_age.get().as_millis()).unwrap_or(i64::MAX);
    let now = now_ms();
    if now.saturating_sub(sent_at) > max_age_ms || sent_at.saturating_sub(now) > max_age_ms {
        tracing::warn!(event.r#type = type_label, age_ms = now.saturating_sub(sent_at), "Rejected a stale GHL webhook");
        return reject(StatusCode::UNAUTHORIZED, type_label, Verdict::Stale, "stale timestamp\n");
    }
    // 4. Durable record, then answer.
    match record(&state, &event_id, type_label, &action).await {
        Ok(verdict) => {
            count("ghl", type_label, verdict);
            if verdict == Verdict::Accepted && matches!(action, Action::Dirty { .. }) {
                state.wake.notify_one();
            }
            match verdict {
                Verdict::Duplicate => (StatusCode::OK, "duplicate\n").into_response(),
                Verdict::IgnoredLocation => (StatusCode::OK, "ignored\n").into_response(),
                Verdict::UnknownType => (StatusCode::OK, "unknown type\n").into_response(),
                _ => (StatusCode::OK, "ok\n").into_response(),
            }
        }
        Err(error) => {
            // 429, never 5xx: GHL's help centre says it retries a webhook only when answered
            // 429 (reference/ghl.md §8.4); any other error may be final.
            if matches!(error, StoreError::Busy(_)) {
                tracing::warn!(event.r#type = type_label, "The store was busy; asked GHL to retry a webhook (429)");
            } else {
                tracing::error!(error = %error, event.r#type = type_label, "Failed to record a GHL webhook; asked GHL to retry (429)");
            }
            count("ghl", type_label, Verdict::Error);
            (StatusCode::TOO_MANY_REQUESTS, [(axum::http::header::RETRY_AFTER, "30")], "try again\n").into_response()
        }
    }
}

/// The configured locations, as the store's webhook filter sees them.
struct Configured<'a>(&'a ServerState);

impl LocationFilter for Configured<'_> {
    fn configured(&self, location_id: &str) -> Option<bool> {
        self.0.config.settings.ghl.locations.iter().find(|l| l.id == location_id).map(|l| l.enabled)
    }
}

/// Records the webhook (inbox, action, counters) in one store transaction, then logs installs.
async fn record(state: &ServerState, event_id: &str, type_label: &str, action: &Action) -> Result<Verdict, StoreError> {
    let recorded =
        hints::record_webhook(&state.store, event_id, type_label, action, &Configured(state), STORE_WAIT).await?;
    if recorded == Recorded::Accepted {
        match action {
            Action::Install { location_id: Some(location_id), .. } => {
                tracing::info!(location.id = %location_id, "GHL app installed for location `{location_id}`");
            }
            Action::Install { company_id, .. } => {
                tracing::info!(company.id = company_id.as_deref().unwrap_or(""), "GHL app installed for a company");
            }
            Action::Uninstall { location_id: Some(location_id), .. } => {
                tracing::warn!(location.id = %location_id, "GHL app uninstalled from location `{location_id}`; syncing stops");
            }
            Action::Uninstall { company_id: Some(company_id), .. } => {
                tracing::warn!(company.id = %company_id, "GHL app uninstalled from company `{company_id}`; syncing stops");
            }
            _ => {}
        }
    }
    Ok(match recorded {
        Recorded::Accepted => Verdict::Accepted,
        Recorded::Duplicate => Verdict::Duplicate,
        Recorded::IgnoredLocation => Verdict::IgnoredLocation,
        Recorded::UnknownType => Verdict::UnknownType,
    })
}

pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        // Writing to a String cannot fail.
        write!(out, "{b:02x}").ok();
        out
    })
}

/// Deletes `webhook_inbox` rows (every source) received more than `older_than` ago.
/// Returns how many were removed.
pub async fn purge_webhook_inbox(store: &Store, older_than: Duration) -> Result<u64, StoreError> {
    let cutoff = now_ms().saturating_sub(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX));
    hints::purge_inbox(store, cutoff).await
}

/// How often [`purge_inbox_periodically`] runs.
pub const INBOX_PURGE_INTERVAL: Duration = Duration::from_secs(3600);

/// Purges the inbox every hour (first run at once) until `stop`. Spawn it on the tracker.
pub async fn purge_inbox_periodically(store: Store, dedupe_for: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(INBOX_PURGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match purge_webhook_inbox(&store, dedupe_for).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "Purged old webhook ids"),
            Err(error) => tracing::warn!(error = %error, "Failed to purge old webhook ids"),
        }
        // Lucky Orange site reports (visits, identifications) older than the insights need.
        let cutoff = crate::store::now_ms() - LO_EVENTS_KEPT.as_millis() as i64;
        match crate::store::lucky_orange::purge_events(&store, cutoff).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "Purged old Lucky Orange site reports"),
            Err(error) => tracing::warn!(error = %error, "Failed to purge old Lucky Orange site reports"),
        }
    }
}

/// How long Lucky Orange site reports are kept (the insights page looks back 30 days).
const LO_EVENTS_KEPT: Duration = Duration::from_secs(90 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(json: serde_json::Value) -> Envelope {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn contact_events_mark_the_contact_and_deletes_are_flagged() {
        let update = envelope(serde_json::json!({"type": "ContactUpdate", "locationId": "L", "id": "C"}));
        assert_eq!(
            action_for(&update),
            Action::Dirty {
                location_id: "L".into(),
                contact_id: "C".into(),
                reason: "ContactUpdate".into(),
                maybe_deleted: false
            }
        );
        let delete = envelope(serde_json::json!({"type": "ContactDelete", "locationId": "L", "id": "C"}));
        assert!(matches!(action_for(&delete), Action::Dirty { maybe_deleted: true, .. }));
    }

    #[test]
    fn task_events_use_the_contact_id_or_keep_a_task_hint() {
        let with =
            envelope(serde_json::json!({"type": "TaskComplete", "locationId": "L", "id": "T", "contactId": "C"}));
        assert!(matches!(action_for(&with), Action::Dirty { ref contact_id, .. } if contact_id == "C"));
        let without = envelope(serde_json::json!({"type": "TaskCreate", "locationId": "L", "id": "T"}));
        assert!(matches!(
            action_for(&without),
            Action::Dirty { ref contact_id, ref reason, .. } if contact_id.is_empty() && reason == "task:T"
        ));
        let note = envelope(serde_json::json!({"type": "NoteCreate", "locationId": "L", "id": "N"}));
        assert!(matches!(action_for(&note), Action::Dirty { ref reason, .. } if reason == "note:N"));
    }

    #[test]
    fn appointment_events_mark_the_contact_named_in_their_appointment_object() {
        for kind in ["AppointmentCreate", "AppointmentUpdate", "AppointmentDelete"] {
            let event = envelope(serde_json::json!({
                "type": kind, "locationId": "L",
                "appointment": {"id": "A", "contactId": "C", "appointmentStatus": "cancelled"}
            }));
            assert_eq!(
                action_for(&event),
                Action::Dirty {
                    location_id: "L".into(),
                    contact_id: "C".into(),
                    reason: kind.into(),
                    maybe_deleted: false
                },
                "{kind}"
            );
        }
        let without =
            envelope(serde_json::json!({"type": "AppointmentCreate", "locationId": "L", "appointment": {"id": "A"}}));
        assert!(matches!(
            action_for(&without),
            Action::Dirty { ref contact_id, ref reason, .. } if contact_id.is_empty() && reason == "appointment:A"
        ));
        let empty = envelope(serde_json::json!({"type": "AppointmentDelete", "locationId": "L"}));
        assert_eq!(action_for(&empty), Action::Nothing);
        let odd = envelope(serde_json::json!({"type": "AppointmentSomethingNew", "locationId": "L"}));
        assert_eq!(action_for(&odd), Action::Unknown);
    }

    #[test]
    fn unknown_and_install_events_are_classified() {
        let odd = envelope(serde_json::json!({"type": "OpportunityCreate", "locationId": "L", "id": "O"}));
        assert_eq!(action_for(&odd), Action::Unknown);
        let contactish = envelope(serde_json::json!({"type": "ContactSomethingNew", "locationId": "L", "id": "C"}));
        assert_eq!(action_for(&contactish), Action::Unknown);
        let uninstall = envelope(serde_json::json!({"type": "UNINSTALL", "locationId": "L", "appId": "A"}));
        assert!(matches!(action_for(&uninstall), Action::Uninstall { location_id: Some(_), .. }));
    }

    #[test]
    fn timestamps_parse_as_iso_seconds_or_milliseconds() {
        let iso = timestamp_ms(&serde_json::json!("2025-01-02T03:04:05.678Z")).unwrap();
        assert_eq!(iso, 1_735_787_045_678);
        assert_eq!(timestamp_ms(&serde_json::json!(1_735_787_045)), Some(1_735_787_045_000));
        assert_eq!(timestamp_ms(&serde_json::json!(1_735_787_045_678i64)), Some(1_735_787_045_678));
        assert_eq!(timestamp_ms(&serde_json::json!("yesterday")), None);
    }
}
