//! The inbound HTTP server: signed webhooks, health, readiness, metrics, pages.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use futures_util::StreamExt as _;
use ghl_sync::config::{Config, LocationSettings, Secret, Settings};
use ghl_sync::server::{self, RunningServer, ServerState};
use ghl_sync::store::{Store, codec, now_ms};
use hmac::Mac as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const LOCATION: &str = "loc_server_1";
const ADMIN: &str = "admin-token-for-tests";
const LUSHA_SECRET: &str = "whsec_test_secret";

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// The test key as GHL publishes keys: base64 of the 44-byte SPKI DER.
fn public_key_spki() -> String {
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(&signing_key().verifying_key().to_bytes());
    base64::engine::general_purpose::STANDARD.encode(der)
}

fn sign(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(signing_key().sign(body).to_bytes())
}

struct TestServer {
    running: Option<RunningServer>,
    url: String,
    store: Store,
    wake: Arc<Notify>,
    readiness: server::ReadinessFlags,
    stop: CancellationToken,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start(admin: bool) -> Self {
        Self::start_with(admin, |_| {}).await
    }

    async fn start_with(admin: bool, tweak: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        crate::helpers::set_store(&mut settings, &dir.path().join("ghl-sync.db"));
        settings.ghl.webhooks.public_keys = vec![public_key_spki()];
        settings.ghl.locations = vec![LocationSettings {
            id: LOCATION.to_owned(),
            name: Some("Server test".to_owned()),
            auth: Default::default(),
            pit: Some(Secret::new("pit-test".to_owned())),
            pit_env: None,
            pit_file: None,
            enabled: true,
        }];
        settings.server.max_body_bytes = 64 * 1024;
        if admin {
            settings.server.admin_token = Some(Secret::new(ADMIN.to_owned()));
        }
        settings.server.lusha_webhook_secret = Some(Secret::new(LUSHA_SECRET.to_owned()));
        tweak(&mut settings);
        let config = Config::from_settings(settings).unwrap();
        let store = crate::helpers::open_store(&dir.path().join("ghl-sync.db")).await;
        sqlx::query("INSERT INTO locations (id, name, status, updated_at) VALUES ($1, 'Server test', 'active', $2)")
            .bind(LOCATION)
            .bind(now_ms())
            .execute(&mut crate::helpers::raw(&store).await)
            .await
            .unwrap();
        let wake = Arc::new(Notify::new());
        let state = ServerState::new(store.clone(), Arc::new(config), wake.clone(), server::install_metrics());
        let readiness = state.readiness();
        let stop = CancellationToken::new();
        let running = server::start("127.0.0.1:0".parse().unwrap(), state, stop.clone()).await.unwrap();
        let url = running.url();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        Self { running: Some(running), url, store, wake, readiness, stop, http, _dir: dir }
    }

    async fn post_ghl(&self, body: &[u8], signature: Option<&str>) -> (u16, String) {
        let mut request = self
            .http
            .post(format!("{}/webhooks/ghl", self.url))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("x-ghl-signature", signature);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&crate::helpers::db(&self.store).await).await.unwrap()
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(5), running.stopped()).await.unwrap().unwrap();
        }
    }
}

fn iso_now_offset(offset: Duration, past: bool) -> String {
    let now = time::OffsetDateTime::now_utc();
    let at = if past { now - offset } else { now + offset };
    at.format(&time::format_description::well_known::Rfc3339).unwrap()
}

fn event(kind: &str, webhook_id: &str, contact: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": kind,
        "locationId": LOCATION,
        "id": contact,
        "email": "someone@example.com",
        "timestamp": iso_now_offset(Duration::ZERO, true),
        "webhookId": webhook_id,
        "appId": "app_test",
    }))
    .unwrap()
}

/// Sum of `ghl_sync_webhook_events_total` samples whose labels contain every `needle`.
async fn webhook_counter(server: &TestServer, needles: &[&str]) -> f64 {
    let (_, text) = server.get("/metrics", None).await;
    text.lines()
        .filter(|l| l.starts_with("ghl_sync_webhook_events_total{") && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_signed_webhook_is_accepted_and_its_dirty_hint_is_durable() {
    let server = TestServer::start(false).await;
    let body = event("ContactUpdate", "wh-accept-1", "contact_a");
    let (status, _) = server.post_ghl(&body, Some(&sign(&body))).await;
    assert_eq!(status, 200);
    // The scheduler is woken (notify_one stores a permit when nobody waits yet).
    tokio::time::timeout(Duration::from_secs(1), server.wake.notified()).await.unwrap();
    let row: (String, String, i64) =
        sqlx::query_as("SELECT contact_id, reason, maybe_deleted FROM dirty_contacts WHERE location_id = $1")
            .bind(LOCATION)
            .fetch_one(&crate::helpers::db(&server.store).await)
            .await
            .unwrap();
    assert_eq!(row, ("contact_a".to_owned(), "ContactUpdate".to_owned(), 0));
    assert_eq!(server.count("SELECT COUNT(*) FROM webhook_inbox WHERE event_id = 'wh-accept-1'").await, 1);

    // A delete is only a hint: flagged for confirmation, and the flag survives a later update.
    let delete = event("ContactDelete", "wh-accept-2", "contact_a");
    assert_eq!(server.post_ghl(&delete, Some(&sign(&delete))).await.0, 200);
    let update = event("ContactUpdate", "wh-accept-3", "contact_a");
    assert_eq!(server.post_ghl(&update, Some(&sign(&update))).await.0, 200);
    assert_eq!(server.count("SELECT maybe_deleted FROM dirty_contacts WHERE contact_id = 'contact_a'").await, 1);

    // A task event without contactId leaves an unresolved hint (contact '' , reason task:<id>).
    let task = serde_json::to_vec(&serde_json::json!({
        "type": "TaskCreate", "locationId": LOCATION, "id": "task_9", "title": "Call back",
        "timestamp": iso_now_offset(Duration::ZERO, true), "webhookId": "wh-accept-4",
    }))
    .unwrap();
    assert_eq!(server.post_ghl(&task, Some(&sign(&task))).await.0, 200);
    assert_eq!(
        server.count("SELECT COUNT(*) FROM dirty_contacts WHERE contact_id = '' AND reason = 'task:task_9'").await,
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn tampered_unsigned_badly_signed_and_stale_deliveries_are_rejected_and_counted() {
    let server = TestServer::start(false).await;
    let bad_before = webhook_counter(&server, &["source=\"ghl\"", "verdict=\"bad_signature\""]).await;
    let missing_before = webhook_counter(&server, &["source=\"ghl\"", "verdict=\"missing_signature\""]).await;
    let stale_before = webhook_counter(&server, &["source=\"ghl\"", "verdict=\"stale\""]).await;

    let body = event("ContactUpdate", "wh-reject-1", "contact_b");
    let signature = sign(&body);
    // Tampered: one byte of the body changed after signing.
    let mut tampered = body.clone();
    let at = tampered.iter().position(|b| *b == b'@').unwrap();
    tampered[at] = b'#';
    assert_eq!(server.post_ghl(&tampered, Some(&signature)).await.0, 401);
    // Signed by another key.
    let other =
        base64::engine::general_purpose::STANDARD.encode(SigningKey::from_bytes(&[9u8; 32]).sign(&body).to_bytes());
    assert_eq!(server.post_ghl(&body, Some(&other)).await.0, 401);
    // Not base64 at all.
    assert_eq!(server.post_ghl(&body, Some("%%%")).await.0, 401);
    // No signature; only the legacy RSA header.
    assert_eq!(server.post_ghl(&body, None).await.0, 401);
    let legacy = server
        .http
        .post(format!("{}/webhooks/ghl", server.url))
        .header("x-wh-signature", "c2lnbmF0dXJl")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status().as_u16(), 401);
    // Correctly signed but ten minutes old, or ten minutes in the future.
    for past in [true, false] {
        let stale = serde_json::to_vec(&serde_json::json!({
            "type": "ContactUpdate", "locationId": LOCATION, "id": "contact_b",
            "timestamp": iso_now_offset(Duration::from_secs(600), past), "webhookId": format!("wh-stale-{past}"),
        }))
        .unwrap();
        assert_eq!(server.post_ghl(&stale, Some(&sign(&stale))).await.0, 401);
    }

    assert_eq!(server.count("SELECT COUNT(*) FROM dirty_contacts").await, 0);
    assert_eq!(server.count("SELECT COUNT(*) FROM webhook_inbox").await, 0);
    // Counters are process-wide (other tests run alongside): check they grew by at least ours.
    assert!(webhook_counter(&server, &["source=\"ghl\"", "verdict=\"bad_signature\""]).await >= bad_before + 3.0);
    assert!(
        webhook_counter(&server, &["source=\"ghl\"", "verdict=\"missing_signature\""]).await >= missing_before + 1.0
    );
    assert!(webhook_counter(&server, &["source=\"ghl\"", "verdict=\"stale\""]).await >= stale_before + 2.0);
    server.stop().await;
}

#[tokio::test]
async fn a_duplicate_webhook_id_is_acknowledged_once() {
    let server = TestServer::start(false).await;
    let before = webhook_counter(&server, &["verdict=\"duplicate\""]).await;
    let body = event("ContactCreate", "wh-dup-1", "contact_c");
    let signature = sign(&body);
    assert_eq!(server.post_ghl(&body, Some(&signature)).await, (200, "ok\n".to_owned()));
    assert_eq!(server.post_ghl(&body, Some(&signature)).await, (200, "duplicate\n".to_owned()));
    assert_eq!(server.count("SELECT COUNT(*) FROM webhook_inbox WHERE source = 'ghl'").await, 1);
    assert_eq!(server.count("SELECT COUNT(*) FROM dirty_contacts").await, 1);
    assert!(webhook_counter(&server, &["verdict=\"duplicate\""]).await >= before + 1.0);
    // Old ids are purged after dedupe_for.
    sqlx::query("UPDATE webhook_inbox SET received_at = received_at - 86400000")
        .execute(&mut crate::helpers::raw(&server.store).await)
        .await
        .unwrap();
    assert_eq!(server::purge_webhook_inbox(&server.store, Duration::from_secs(3600)).await.unwrap(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_a_thousand_webhooks_is_acknowledged_without_loss() {
    let server = TestServer::start(false).await;
    let bodies: Vec<Vec<u8>> =
        (0..1000).map(|i| event("ContactUpdate", &format!("wh-burst-{i}"), &format!("burst_{i}"))).collect();
    let statuses: Vec<u16> = futures_util::stream::iter(bodies.iter())
        .map(|body| async { server.post_ghl(body, Some(&sign(body))).await.0 })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(statuses.len(), 1000);
    assert!(statuses.iter().all(|s| *s == 200), "not all acknowledged: {:?}", statuses.iter().collect::<BTreeSet<_>>());
    assert_eq!(server.count("SELECT COUNT(*) FROM webhook_inbox WHERE event_id LIKE 'wh-burst-%'").await, 1000);
    assert_eq!(server.count("SELECT COUNT(*) FROM dirty_contacts WHERE contact_id LIKE 'burst_%'").await, 1000);
    server.stop().await;
}

#[tokio::test]
async fn unknown_types_and_unsynced_locations_are_acknowledged_and_ignored() {
    let server = TestServer::start(false).await;
    let odd = serde_json::to_vec(&serde_json::json!({
        "type": "OpportunityCreate", "locationId": LOCATION, "id": "opp_1",
        "timestamp": iso_now_offset(Duration::ZERO, true), "webhookId": "wh-odd-1",
    }))
    .unwrap();
    assert_eq!(server.post_ghl(&odd, Some(&sign(&odd))).await, (200, "unknown type\n".to_owned()));
    let elsewhere = serde_json::to_vec(&serde_json::json!({
        "type": "ContactUpdate", "locationId": "someone_else", "id": "c_x",
        "timestamp": iso_now_offset(Duration::ZERO, true), "webhookId": "wh-else-1",
    }))
    .unwrap();
    assert_eq!(server.post_ghl(&elsewhere, Some(&sign(&elsewhere))).await, (200, "ignored\n".to_owned()));
    assert_eq!(server.count("SELECT COUNT(*) FROM dirty_contacts").await, 0);
    server.stop().await;
}

#[tokio::test]
async fn uninstall_stops_the_location_and_keeps_its_data() {
    let server = TestServer::start(false).await;
    let uninstall = serde_json::to_vec(&serde_json::json!({
        "type": "UNINSTALL", "appId": "app_test", "locationId": LOCATION,
        "timestamp": iso_now_offset(Duration::ZERO, true), "webhookId": "wh-uninstall-1",
    }))
    .unwrap();
    assert_eq!(server.post_ghl(&uninstall, Some(&sign(&uninstall))).await.0, 200);
    let status: String = sqlx::query_scalar("SELECT status FROM locations WHERE id = $1")
        .bind(LOCATION)
        .fetch_one(&crate::helpers::db(&server.store).await)
        .await
        .unwrap();
    assert_eq!(status, "uninstalled");
    let body = event("ContactUpdate", "wh-after-uninstall", "contact_d");
    assert_eq!(server.post_ghl(&body, Some(&sign(&body))).await, (200, "ignored\n".to_owned()));
    assert_eq!(server.get("/readyz", None).await.0, 503);

    // Re-installing without a stored grant waits for OAuth.
    let install = serde_json::to_vec(&serde_json::json!({
        "type": "INSTALL", "appId": "app_test", "locationId": LOCATION, "companyId": "comp_1",
        "timestamp": iso_now_offset(Duration::ZERO, true), "webhookId": "wh-install-1",
    }))
    .unwrap();
    assert_eq!(server.post_ghl(&install, Some(&sign(&install))).await.0, 200);
    let status: String = sqlx::query_scalar("SELECT status FROM locations WHERE id = $1")
        .bind(LOCATION)
        .fetch_one(&crate::helpers::db(&server.store).await)
        .await
        .unwrap();
    assert_eq!(status, "needs_reauth");
    server.stop().await;
}

#[tokio::test]
async fn readyz_flips_to_503_when_the_only_location_needs_reauth() {
    let server = TestServer::start(false).await;
    assert_eq!(server.get("/healthz", None).await, (200, "ok".to_owned()));
    let (status, body) = server.get("/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    sqlx::query("UPDATE locations SET status = 'needs_reauth' WHERE id = $1")
        .bind(LOCATION)
        .execute(&mut crate::helpers::raw(&server.store).await)
        .await
        .unwrap();
    let (status, body) = server.get("/readyz", None).await;
    assert_eq!(status, 503);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], false);
    assert!(json["not_ready"][0].as_str().unwrap().contains("locations"), "{body}");

    // Same when the location is active but its grant needs re-authorisation.
    sqlx::query("UPDATE locations SET status = 'active' WHERE id = $1")
        .bind(LOCATION)
        .execute(&mut crate::helpers::raw(&server.store).await)
        .await
        .unwrap();
    assert_eq!(server.get("/readyz", None).await.0, 200);
    sqlx::query(
        "INSERT INTO grants (resource_id, resource_kind, needs_reauth, updated_at) VALUES ($1, 'location', 1, 0)",
    )
    .bind(LOCATION)
    .execute(&mut crate::helpers::raw(&server.store).await)
    .await
    .unwrap();
    assert_eq!(server.get("/readyz", None).await.0, 503);

    // A configured location the engine has not written a row for yet counts as ready.
    sqlx::query("DELETE FROM grants").execute(&mut crate::helpers::raw(&server.store).await).await.unwrap();
    sqlx::query("DELETE FROM locations").execute(&mut crate::helpers::raw(&server.store).await).await.unwrap();
    assert_eq!(server.get("/readyz", None).await.0, 200);
    // Once stopping, readiness is withdrawn.
    let ready = server.readiness.clone();
    ready.set_shutting_down();
    let (status, body) = server.get("/readyz", None).await;
    assert_eq!(status, 503);
    assert!(body.contains("shutting down"), "{body}");
    server.stop().await;
}

/// Issue 17 defect 1: a webhook the store cannot take in time (here another process holds
/// SQLite's write lock) is answered 429 with `Retry-After`, never 5xx (GHL retries only 429s
/// for sure), and GHL's retry is accepted and durable once the lock is gone.
#[tokio::test]
async fn a_webhook_the_store_cannot_take_in_time_is_answered_429_never_5xx_and_its_retry_is_kept() {
    if crate::helpers::sqlite_only("another process holds SQLite's write lock") {
        return;
    }
    use sqlx::Connection as _;
    let server = TestServer::start(false).await;
    let path = server._dir.path().join("ghl-sync.db");
    let mut other = crate::helpers::raw_at(&path).await;
    crate::helpers::hold_write_lock(&mut other, "webhook_inbox").await;
    let body = event("ContactUpdate", "wh-locked-1", "contact-locked");
    let response = server
        .http
        .post(format!("{}/webhooks/ghl", server.url))
        .header("content-type", "application/json")
        .header("x-ghl-signature", sign(&body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429, "a busy store is a 429, never a 5xx");
    assert!(response.headers().get("retry-after").is_some(), "GHL is told when to retry");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    assert_eq!(server.post_ghl(&body, Some(&sign(&body))).await.0, 200, "the retry is accepted");
    assert_eq!(server.count("SELECT COUNT(*) FROM dirty_contacts WHERE contact_id = 'contact-locked'").await, 1);
    server.stop().await;
}

/// A store whose writes fail (here: another process holds SQLite's write lock past the busy
/// timeout, as a full or read-only disk would fail them) makes `/readyz` answer 503 with the
/// reason, and ready again once a write succeeds.
#[tokio::test]
async fn readyz_says_the_store_cannot_write_until_a_write_succeeds_again() {
    if crate::helpers::sqlite_only("another process holds SQLite's write lock") {
        return;
    }
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ghl-sync.db");
    let mut settings = Settings::default();
    crate::helpers::set_store(&mut settings, &path.clone());
    settings.ghl.locations = vec![LocationSettings {
        id: LOCATION.to_owned(),
        name: None,
        auth: Default::default(),
        pit: Some(Secret::new("pit-test".to_owned())),
        pit_env: None,
        pit_file: None,
        enabled: true,
    }];
    let config = Config::from_settings(settings).unwrap();
    let configured = ghl_sync::cli::status::configured_locations(&config);
    let store = crate::helpers::open_store_waiting(&path, Duration::from_millis(100)).await;
    ghl_sync::store::locations::register_configured(&store, &configured).await.unwrap();
    let state = ServerState::new(store.clone(), Arc::new(config), Arc::new(Notify::new()), server::install_metrics());
    let stop = CancellationToken::new();
    let running = server::start("127.0.0.1:0".parse().unwrap(), state, stop.clone()).await.unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let readyz = || async {
        let response = http.get(format!("{}/readyz", running.url())).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(readyz().await.0, 200);

    // Another process takes the write lock and keeps it.
    let mut other = crate::helpers::raw_at(&path).await;
    crate::helpers::hold_write_lock(&mut other, "webhook_inbox").await;
    let failed = ghl_sync::store::locations::register_configured(&store, &configured).await;
    assert!(failed.is_err(), "the write should time out on the lock");
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let problems = json["not_ready"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("store: cannot write") && p.as_str().unwrap().contains("locked")),
        "{body}"
    );

    // The lock goes away; the next write succeeds and readiness returns.
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    ghl_sync::store::locations::register_configured(&store, &configured).await.unwrap();
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), running.stopped()).await.unwrap().unwrap();
}

/// A long first pass, mid-way: the status page and `/status.json` show the run's progress,
/// today's requests and 429s (recorded per page, not only when the run ends), the webhooks
/// received today, and each connector's last delivery error. The page refreshes itself.
#[tokio::test]
async fn the_status_page_shows_a_running_pass_as_it_goes_and_refreshes_itself() {
    use ghl_sync::store::runs::{self, RunProgress};
    let server = TestServer::start(false).await;
    let run = runs::start(&server.store, LOCATION, "contacts").await.unwrap();
    let mut progress = RunProgress { pages: 20, records_seen: 2000, changes: 1990, requests: 2100, rate_limited: 3 };
    runs::record_progress(&server.store, run, &progress).await.unwrap();
    for n in 0..2 {
        let body = event("ContactUpdate", &format!("wh-status-{n}"), "contact_s");
        assert_eq!(server.post_ghl(&body, Some(&sign(&body))).await.0, 200);
    }
    // A duplicate delivery is not counted again.
    let body = event("ContactUpdate", "wh-status-0", "contact_s");
    assert_eq!(server.post_ghl(&body, Some(&sign(&body))).await.0, 200);
    // A delivery that keeps failing (what the dispatcher records in `last_error`).
    let db = crate::helpers::db_at(&server._dir.path().join("ghl-sync.db")).await;
    let now = now_ms();
    sqlx::query(
        "INSERT INTO outbox (connector, location_id, entity, entity_id, contact_id, operation, record, content_hash, \
         idempotency_key, status, attempts, last_error, next_attempt_at, changed_at, created_at, updated_at) \
         VALUES ('webhook.crm', $1, 'contact', 'c1', 'c1', 'updated', NULL, $6, 'k', 'pending', 2, \
         'connection refused', $2, $3, $4, $5)",
    )
    .bind(LOCATION)
    .bind(now)
    .bind(now)
    .bind(now)
    .bind(now)
    .bind(vec![0_u8])
    .execute(&db)
    .await
    .unwrap();
    db.close().await;

    let (status, body) = server.get("/status.json", None).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], true, "{body}");
    let location = json["locations"].as_array().unwrap().iter().find(|l| l["id"] == LOCATION).unwrap();
    assert_eq!(location["requests_today"], 2100, "{location}");
    assert_eq!(location["rate_limited_today"], 3, "{location}");
    assert_eq!(location["webhooks_today"], 2, "{location}");
    assert_eq!(location["last_run"]["outcome"], "running", "{location}");
    assert_eq!(location["last_run"]["changes"], 1990, "{location}");
    assert_eq!(location["last_run"]["requests"], 2100, "{location}");
    let crm = json["connectors"].as_array().unwrap().iter().find(|c| c["connector"] == "webhook.crm").unwrap();
    assert_eq!(crm["pending"], 1);
    assert_eq!(crm["last_error"]["message"], "connection refused", "{crm}");

    // The page says the same, and carries its own refresh (inline, no external assets).
    let (status, html) = server.get("/", None).await;
    assert_eq!(status, 200);
    assert!(
        html.contains(
            "contacts <span class=\"muted\">running</span>, 20 page(s), 2000 read, 1990 changes, 2100 requests"
        ),
        "{html}"
    );
    assert!(html.contains("<td class=\"n\">2100 / "), "{html}");
    assert!(html.contains("connection refused"), "{html}");
    assert!(html.contains("<main id=\"status\">") && html.contains("<script>") && html.contains("fetch('/'"), "{html}");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "no external assets");

    // The next page moves the figures; the finished run counts its requests once.
    progress.pages = 21;
    progress.requests = 2150;
    runs::finish(&server.store, run, &progress, runs::RunOutcome::Ok, None).await.unwrap();
    let (_, body) = server.get("/status.json", None).await;
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let location = json["locations"].as_array().unwrap().iter().find(|l| l["id"] == LOCATION).unwrap();
    assert_eq!(location["requests_today"], 2150, "{location}");
    assert_eq!(location["last_run"]["outcome"], "ok", "{location}");
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text_with_store_gauges() {
    let server = TestServer::start(false).await;
    let now = now_ms();
    for (connector, status) in [("webhook.crm", "pending"), ("webhook.crm", "done"), ("lusha", "pending")] {
        sqlx::query(
            "INSERT INTO outbox (connector, location_id, entity, entity_id, contact_id, operation, record, \
             content_hash, idempotency_key, status, next_attempt_at, changed_at, created_at, updated_at) \
             VALUES ($1, $2, 'contact', 'c1', 'c1', 'updated', NULL, $8, 'k', $3, $4, $5, $6, $7)",
        )
        .bind(connector)
        .bind(LOCATION)
        .bind(status)
        .bind(now)
        .bind(now)
        .bind(now - 30_000)
        .bind(now)
        .bind(vec![0_u8])
        .execute(&mut crate::helpers::raw(&server.store).await)
        .await
        .unwrap();
    }
    sqlx::query("INSERT INTO cursors (location_id, stream, watermark_ms, updated_at) VALUES ($1, 'contacts', $2, $3)")
        .bind(LOCATION)
        .bind(now - 90_000)
        .bind(now)
        .execute(&mut crate::helpers::raw(&server.store).await)
        .await
        .unwrap();
    let body = event("ContactUpdate", "wh-metrics-1", "contact_m");
    assert_eq!(server.post_ghl(&body, Some(&sign(&body))).await.0, 200);

    let response = server.http.get(format!("{}/metrics", server.url)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    if let Err(problem) = check_prometheus_text(&text) {
        panic!("invalid exposition: {problem}\n{text}");
    }
    assert!(text.contains("ghl_sync_outbox_depth{connector=\"webhook.crm\"} 1"), "{text}");
    assert!(text.contains("ghl_sync_outbox_depth{connector=\"lusha\"} 1"), "{text}");
    assert!(text.contains("ghl_sync_outbox_oldest_pending_age_seconds{connector=\"lusha\"}"), "{text}");
    assert!(text.contains(&format!("ghl_sync_sync_lag_seconds{{location=\"{LOCATION}\",stream=\"contacts\"}}")));
    assert!(text.contains("ghl_sync_webhook_events_total{"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn the_contact_view_requires_the_admin_token() {
    let server = TestServer::start(true).await;
    let now = now_ms();
    let record = serde_json::json!({"id": "contact_v", "firstName": "Ada", "email": "ada@example.com"});
    sqlx::query(
        "INSERT INTO contacts (location_id, contact_id, hash, record, first_seen_at, updated_at) \
         VALUES ($1, 'contact_v', $5, $2, $3, $4)",
    )
    .bind(LOCATION)
    .bind(codec::pack(&record))
    .bind(now)
    .bind(now)
    .bind(vec![0_u8])
    .execute(&mut crate::helpers::raw(&server.store).await)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO children (location_id, contact_id, kind, child_id, hash, record, updated_at) \
         VALUES ($1, 'contact_v', 'task', 'task_v', $4, $2, $3)",
    )
    .bind(LOCATION)
    .bind(codec::pack(&serde_json::json!({"id": "task_v", "title": "Send the quote"})))
    .bind(now)
    .bind(vec![0_u8])
    .execute(&mut crate::helpers::raw(&server.store).await)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO dead_letters (source, connector, location_id, entity, entity_id, contact_id, operation, \
         attempts, reason, created_at) VALUES ('delivery', 'webhook.crm', $1, 'contact', 'contact_v', 'contact_v', \
         'updated', 12, 'HTTP 410 from webhook.crm', $2)",
    )
    .bind(LOCATION)
    .bind(now)
    .execute(&mut crate::helpers::raw(&server.store).await)
    .await
    .unwrap();

    assert_eq!(server.get("/contacts/contact_v", None).await.0, 401);
    assert_eq!(server.get("/contacts/contact_v", Some("wrong")).await.0, 401);
    let (status, html) = server.get("/contacts/contact_v", Some(ADMIN)).await;
    assert_eq!(status, 200);
    assert!(html.contains("ada@example.com") && html.contains("Send the quote") && html.contains("HTTP 410"));
    assert_eq!(server.get("/contacts/nobody", Some(ADMIN)).await.0, 404);

    // The public status page shows aggregates, never the contact's data.
    let (status, page) = server.get("/", None).await;
    assert_eq!(status, 200);
    assert!(page.contains(LOCATION) && page.contains("<svg") && page.contains("webhook.crm"));
    assert!(!page.contains("ada@example.com"));
    server.stop().await;

    // Without an admin token the admin routes do not exist.
    let server = TestServer::start(false).await;
    assert_eq!(server.get("/contacts/contact_v", Some(ADMIN)).await.0, 404);
    server.stop().await;
}

fn lusha_signature(timestamp: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(LUSHA_SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn lusha_signals_are_verified_deduplicated_and_stored() {
    let server = TestServer::start(false).await;
    let body = serde_json::to_vec(&serde_json::json!({
        "id": "9b2f6c1e-0000-4000-8000-000000000001", "type": "promotion", "entityType": "contact",
        "entityId": "lusha_person_1", "subscriptionId": "sub_1",
        "data": {"personId": "p1", "currentTitle": "CTO"}, "timestamp": "2026-01-01T00:00:00Z",
        "billing": {"creditsCharged": 1},
    }))
    .unwrap();
    let timestamp = (now_ms() / 1000).to_string();
    let post = |signature: String, timestamp: String| {
        server
            .http
            .post(format!("{}/webhooks/lusha", server.url))
            .header("content-type", "application/json")
            .header("x-lusha-timestamp", timestamp)
            .header("x-lusha-signature", signature)
            .body(body.clone())
            .send()
    };
    let response = post(lusha_signature(&timestamp, &body), timestamp.clone()).await.unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let ack: serde_json::Value = response.json().await.unwrap();
    assert_eq!(ack["received"], true);
    assert_eq!(ack["webhookId"], "9b2f6c1e-0000-4000-8000-000000000001");
    assert!(ack["timestamp"].is_string());
    // Duplicate: same answer, one stored signal.
    assert_eq!(post(lusha_signature(&timestamp, &body), timestamp.clone()).await.unwrap().status().as_u16(), 201);
    assert_eq!(server.count("SELECT COUNT(*) FROM lusha_signals WHERE processed_at IS NULL").await, 1);
    // Bad signature and stale timestamp.
    assert_eq!(post("00".repeat(32), timestamp.clone()).await.unwrap().status().as_u16(), 401);
    let old = (now_ms() / 1000 - 3600).to_string();
    assert_eq!(post(lusha_signature(&old, &body), old.clone()).await.unwrap().status().as_u16(), 401);
    server.stop().await;
}

async fn post_legacy(server: &TestServer, body: &[u8], signature: &str) -> u16 {
    let response = server
        .http
        .post(format!("{}/webhooks/ghl", server.url))
        .header("content-type", "application/json")
        .header("x-wh-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// RSA-SHA256 (PKCS#1 v1.5) with the test-only fixture key, base64, as GHL's legacy header.
fn sign_legacy(body: &[u8]) -> String {
    let key = ring::signature::RsaKeyPair::from_pkcs8(include_bytes!("../fixtures/legacy-rsa-test-key.pk8")).unwrap();
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(&ring::signature::RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), body, &mut signature).unwrap();
    base64::engine::general_purpose::STANDARD.encode(signature)
}

#[tokio::test]
async fn legacy_rsa_signatures_are_accepted_only_with_a_configured_key() {
    let body = event("ContactUpdate", "wh-legacy-1", "contact_l");
    let signature = sign_legacy(&body);

    // Not configured (the default): refused even when genuine.
    let server = TestServer::start(false).await;
    assert_eq!(post_legacy(&server, &body, &signature).await, 401);
    assert_eq!(server.count("SELECT COUNT(*) FROM dirty_contacts").await, 0);
    server.stop().await;

    // Configured: a genuine one is recorded; tampered or foreign ones are not.
    let pem = include_str!("../fixtures/legacy-rsa-test-key.pub.pem").to_owned();
    let server = TestServer::start_with(false, |s| s.ghl.webhooks.legacy_rsa_public_keys = vec![pem]).await;
    let mut tampered = body.clone();
    let at = tampered.iter().position(|b| *b == b'@').unwrap();
    tampered[at] = b'#';
    assert_eq!(post_legacy(&server, &tampered, &signature).await, 401);
    assert_eq!(post_legacy(&server, &body, "c2lnbmF0dXJl").await, 401);
    assert_eq!(server.count("SELECT COUNT(*) FROM dirty_contacts").await, 0);
    assert_eq!(post_legacy(&server, &body, &signature).await, 200);
    assert_eq!(server.count("SELECT COUNT(*) FROM dirty_contacts WHERE contact_id = 'contact_l'").await, 1);
    // Ed25519 still wins when both headers are present: a bad x-ghl-signature is not rescued.
    let other = event("ContactUpdate", "wh-legacy-2", "contact_m");
    let response = server
        .http
        .post(format!("{}/webhooks/ghl", server.url))
        .header("x-ghl-signature", "%%%")
        .header("x-wh-signature", sign_legacy(&other))
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    server.stop().await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_and_health_checks_pass() {
    let server = TestServer::start(false).await;
    let big = vec![b' '; 128 * 1024];
    assert_eq!(server.post_ghl(&big, Some(&sign(&big))).await.0, 413);
    let url = url::Url::parse(&server.url).unwrap();
    server::check_health(&url).await.unwrap();
    server.stop().await;
    // After a graceful stop nothing answers.
    assert!(server::check_health(&url).await.is_err());
}

/// A small checker of the Prometheus text exposition format (version 0.0.4).
fn check_prometheus_text(text: &str) -> Result<(), String> {
    fn is_name(name: &str) -> bool {
        let mut chars = name.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn is_value(value: &str) -> bool {
        matches!(value, "NaN" | "+Inf" | "-Inf") || value.parse::<f64>().is_ok()
    }
    let mut typed = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(at("TYPE needs a name and a type"));
            };
            if !is_name(name) || !matches!(kind, "counter" | "gauge" | "histogram" | "summary" | "untyped") {
                return Err(at("bad TYPE"));
            }
            if !typed.insert(name.to_owned()) {
                return Err(at("TYPE repeated"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if !rest.split(' ').next().is_some_and(is_name) {
                return Err(at("bad HELP"));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        // name{labels} value [timestamp]
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return Err(at("sample without value")),
        };
        if !is_name(name) {
            return Err(at("bad metric name"));
        }
        let rest = if let Some(labels) = rest.strip_prefix('{') {
            // Walk label pairs: key="escaped value", separated by commas.
            let mut chars = labels.char_indices().peekable();
            let mut end = None;
            loop {
                let start = match chars.peek() {
                    Some((_, '}')) => {
                        end = chars.next().map(|(i, _)| i);
                        break;
                    }
                    Some((i, _)) => *i,
                    None => break,
                };
                let eq = labels[start..].find('=').map(|i| start + i).ok_or_else(|| at("label without ="))?;
                if !is_name(&labels[start..eq]) {
                    return Err(at("bad label name"));
                }
                while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                    chars.next();
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(at("label value not quoted"));
                }
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, '\\' | '"' | 'n')) => {}
                            _ => return Err(at("bad escape")),
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\n' => return Err(at("newline in label value")),
                        _ => {}
                    }
                }
                if !closed {
                    return Err(at("unterminated label value"));
                }
                if chars.peek().map(|(_, c)| *c) == Some(',') {
                    chars.next();
                }
            }
            let end = end.ok_or_else(|| at("unterminated label set"))?;
            &labels[end + 1..]
        } else {
            rest
        };
        let mut fields = rest.split_whitespace();
        match (fields.next(), fields.next(), fields.next()) {
            (Some(value), None, None) if is_value(value) => {}
            (Some(value), Some(ts), None) if is_value(value) && ts.parse::<i64>().is_ok() => {}
            _ => return Err(at("bad value")),
        }
    }
    Ok(())
}

#[test]
fn the_prometheus_checker_rejects_broken_lines() {
    assert!(check_prometheus_text("# TYPE a counter\na{b=\"c\\\"d\",e=\"f\"} 1\na 2 1700000000\n").is_ok());
    assert!(check_prometheus_text("a{b=c} 1\n").is_err());
    assert!(check_prometheus_text("a{b=\"c\"} x\n").is_err());
    assert!(check_prometheus_text("1a 1\n").is_err());
    assert!(check_prometheus_text("# TYPE a counter\n# TYPE a gauge\n").is_err());
    assert!(check_prometheus_text("a{b=\"c\" 1\n").is_err());
}

#[tokio::test]
async fn the_health_command_exits_zero_when_the_daemon_answers_and_one_when_not() {
    let server = TestServer::start(false).await;
    let url = server.url.clone();
    let run = |url: String| {
        tokio::task::spawn_blocking(move || {
            let child = crate::helpers::spawn(&["health", "--url", &url], &[]);
            crate::helpers::wait_with_limit(child, Duration::from_secs(20))
        })
    };
    let (status, stdout, _) = run(url.clone()).await.unwrap();
    assert!(status.success(), "health failed against a running server");
    assert_eq!(stdout.trim(), "ok");
    server.stop().await;
    let (status, _, stderr) = run(url).await.unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("unhealthy"), "{stderr}");
}
