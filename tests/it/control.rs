//! Control of a running daemon (issue 18): "sync now" by SIGUSR1, by `POST /admin/sync` and by
//! `ghl-sync sync --now`; `sync --once` that delivers what it queued; delivery failures that
//! say why.

use std::process::Child;
use std::time::Duration;

use ghl_sync_sandbox::Sandbox;
use ghl_sync_sandbox::sink::SinkMode;

use crate::helpers::{eventually, fast_ghl, signal, spawn, start_sandbox, wait_with_limit, write_config};

const ADMIN: &str = "admin-secret-for-tests";

/// A port that was free a moment ago (the child binds it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A daemon config for the sandbox: a poll interval of an hour (only the first pass and a
/// "sync now" can deliver a change), the listener on `port` with the admin token.
fn control_config(sandbox: &Sandbox, dir: &std::path::Path, port: u16) -> String {
    let mut text = format!(
        "[store]\n{}[ghl]\nbase_url = \"{}\"\n\
         [server]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nadmin_token = \"{ADMIN}\"\n\
         [sync]\ncontacts_interval = \"1h\"\nindex_lag_margin = \"0s\"\n\
         [limits]\nghl_burst_max = 100000\nghl_burst_window = \"1s\"\n\
         [dispatch]\npoll_interval = \"100ms\"\n[log]\nlevel = \"info\"\nformat = \"json\"\n",
        crate::helpers::store_keys(&dir.join("ghl-sync.db")),
        sandbox.ghl_url()
    );
    for location in sandbox.ghl.locations() {
        text.push_str(&format!("[[ghl.locations]]\nid = \"{}\"\npit = \"{}\"\n", location.id, location.pit));
    }
    text.push_str(&format!("[connectors.webhook.test]\nurl = \"{}\"\n", sandbox.sink_url("test")));
    text
}

/// Waits until the sink's count of accepted deliveries stops moving (the first pass is
/// delivered); returns it.
async fn settled(sandbox: &Sandbox) -> usize {
    let mut last = usize::MAX;
    for _ in 0..100 {
        let now = sandbox.sink.accepted(Some("test")).len();
        if now == last && now > 0 {
            return now;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    panic!("deliveries never settled");
}

/// Deliveries whose body contains `marker`.
fn with(sandbox: &Sandbox, marker: &str) -> usize {
    sandbox.sink.accepted(Some("test")).iter().filter(|d| d.body.contains(marker)).count()
}

/// Changes one contact's first name to `marker`.
fn change_a_contact(sandbox: &Sandbox, marker: &str) {
    let location = sandbox.ghl.locations()[0].id.clone();
    let contact = sandbox.ghl.contact_ids(&location)[0].clone();
    assert!(sandbox.ghl.update_contact(&contact, serde_json::json!({ "firstName": marker })));
}

/// After a "sync now": the change arrives, exactly once, and nothing else is sent again.
async fn assert_delivered_once(sandbox: &Sandbox, marker: &str, before: usize) {
    assert!(
        eventually(Duration::from_secs(15), || with(sandbox, marker) > 0).await,
        "the change `{marker}` was not delivered after sync now"
    );
    let total = settled(sandbox).await;
    assert_eq!(with(sandbox, marker), 1, "`{marker}` was delivered more than once");
    assert_eq!(total, before + 1, "sync now delivered more than the one change");
}

struct Daemon {
    child: Option<Child>,
    port: u16,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    async fn start(sandbox: &Sandbox) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = write_config(dir.path(), &control_config(sandbox, dir.path(), port));
        let child = spawn(&["run", "--config", config.to_str().unwrap()], &[]);
        Self { child: Some(child), port, config, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stop(&mut self) -> String {
        let child = self.child.take().unwrap();
        signal(&child, "TERM");
        let (status, _, stderr) = wait_with_limit(child, Duration::from_secs(15));
        assert_eq!(status.code(), Some(0), "{stderr}");
        stderr
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_starts_a_pass_at_once_and_the_change_is_delivered_once() {
    let sandbox = start_sandbox(fast_ghl(5)).await;
    let mut daemon = Daemon::start(&sandbox).await;
    let before = settled(&sandbox).await;

    change_a_contact(&sandbox, "Usr1Marker");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(with(&sandbox, "Usr1Marker"), 0, "the interval is an hour: nothing may arrive unasked");
    signal(daemon.child.as_ref().unwrap(), "USR1");
    assert_delivered_once(&sandbox, "Usr1Marker", before).await;

    let log = daemon.stop();
    assert!(log.contains("SIGUSR1: starting a pass for every location now"), "{log}");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_admin_sync_needs_the_token_knows_its_locations_and_delivers_the_change_once() {
    let sandbox = start_sandbox(fast_ghl(5)).await;
    let mut daemon = Daemon::start(&sandbox).await;
    let before = settled(&sandbox).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let location = sandbox.ghl.locations()[0].id.clone();

    let response = http.post(daemon.url("/admin/sync")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = http.post(daemon.url("/admin/sync")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response =
        http.post(daemon.url("/admin/sync?location=nope0000000000000000")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);

    change_a_contact(&sandbox, "PostMarker");
    let response = http
        .post(daemon.url("/admin/sync"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({ "location": location }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["woken"], serde_json::json!([location]), "{answer}");
    assert_delivered_once(&sandbox, "PostMarker", before).await;

    // Without a location: every location is woken.
    let response = http.post(daemon.url("/admin/sync")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["woken"].as_array().map(Vec::len), Some(sandbox.ghl.locations().len()), "{answer}");

    daemon.stop();
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_now_asks_the_running_daemon_and_says_so_when_none_listens() {
    let sandbox = start_sandbox(fast_ghl(5)).await;
    let mut daemon = Daemon::start(&sandbox).await;
    let before = settled(&sandbox).await;
    let config = daemon.config.to_str().unwrap().to_owned();
    let location = sandbox.ghl.locations()[0].id.clone();

    change_a_contact(&sandbox, "CliMarker");
    let args = ["sync", "--now", "--location", location.as_str(), "--config", config.as_str()];
    let child = spawn(&args, &[]);
    let (status, stdout, stderr) = wait_with_limit(child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("Sync started for 1 location(s): {location}")), "{stdout}");
    assert_delivered_once(&sandbox, "CliMarker", before).await;

    // Not the store: the daemon holds its lock, and `--now` never opens it.
    daemon.stop();
    let child = spawn(&["sync", "--now", "--config", config.as_str()], &[]);
    let (status, stdout, stderr) = wait_with_limit(child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("no ghl-sync daemon is listening on http://127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("sync --once"), "{stderr}");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_delivers_everything_it_queued_and_prints_a_summary_per_connector() {
    let sandbox = start_sandbox(fast_ghl(8)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut text = control_config(&sandbox, dir.path(), free_port());
    text = text.replace("enabled = true", "enabled = false");
    let config = write_config(dir.path(), &text);
    let config = config.to_str().unwrap().to_owned();

    let child = spawn(&["sync", "--once", "--config", config.as_str()], &[]);
    let (status, stdout, stderr) = wait_with_limit(child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    let deliveries = sandbox.sink.accepted(Some("test"));
    assert!(!deliveries.is_empty());
    // Every record once: no idempotency key twice.
    let mut keys: Vec<String> =
        deliveries.iter().map(|d| d.header("idempotency-key").unwrap_or_default().to_owned()).collect();
    keys.sort();
    let all = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), all, "a record was delivered twice");
    let contacts = deliveries.iter().filter(|d| d.body.contains("\"contact.created\"")).count();
    assert_eq!(contacts, 16, "every contact of both locations once");
    assert!(
        stdout.contains(&format!(
            "webhook.test: {all} delivered, 0 failed (will retry), 0 dead-lettered, 0 still pending"
        )),
        "{stdout}"
    );
    let store = crate::helpers::open_store(&dir.path().join("ghl-sync.db")).await;
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
        .fetch_one(&crate::helpers::db(&store).await)
        .await
        .unwrap();
    assert_eq!(pending, 0, "the outbox still has pending rows");
    store.close().await;

    // --no-deliver: only queued.
    let location = sandbox.ghl.locations()[0].id.clone();
    let contact = sandbox.ghl.contact_ids(&location)[0].clone();
    sandbox.ghl.update_contact(&contact, serde_json::json!({ "firstName": "Queued" }));
    let child = spawn(&["sync", "--once", "--no-deliver", "--config", config.as_str()], &[]);
    let (status, stdout, stderr) = wait_with_limit(child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("--no-deliver"), "{stdout}");
    assert_eq!(sandbox.sink.accepted(Some("test")).len(), all, "--no-deliver delivered");

    // A target that refuses: the run says so and exits 1; the change is not lost.
    sandbox.sink.set_mode("test", SinkMode::Down);
    let child = spawn(&["sync", "--once", "--config", config.as_str()], &[]);
    let (status, stdout, stderr) = wait_with_limit(child, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("webhook.test: 0 delivered, 1 failed (will retry), 0 dead-lettered, 1 still pending"),
        "{stdout}"
    );
    assert!(stdout.contains("last error: attempt 1: the webhook answered 503 Service Unavailable"), "{stdout}");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delivery_stores_the_status_and_a_scrubbed_excerpt_of_the_answer() {
    let sandbox = start_sandbox(fast_ghl(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = crate::helpers::settings_for(&sandbox, dir.path());
    sandbox.sink.set_mode(
        "test",
        SinkMode::RejectWithBody(
            422,
            r#"{"error":"invalid","message":"email ada.lovelace@example.com is already taken","phone":"+1 (555) 010-9999"}"#,
        ),
    );
    let app = crate::helpers::app(crate::helpers::config(settings)).await.unwrap();
    for (_, result) in app.sync_once(None, Default::default()).await.unwrap() {
        result.unwrap();
    }
    let (capture, guard) = crate::helpers::capture();
    let summary = app.dispatcher.run_once().await;
    drop(guard);
    assert!(summary.total().dead > 0, "{summary:?}");

    let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM dead_letters")
        .fetch_all(&crate::helpers::db(&app.store).await)
        .await
        .unwrap();
    assert!(!reasons.is_empty());
    for reason in &reasons {
        assert!(reason.starts_with("the webhook answered 422 Unprocessable Entity: "), "{reason}");
        assert!(reason.contains("is already taken"), "{reason}");
        // Message fields are kept and scrubbed; other values (here the echoed phone) are dropped.
        assert!(reason.contains("[email]") && reason.contains(r#""phone":"…""#), "{reason}");
        assert!(!reason.contains("ada.lovelace") && !reason.contains("010-9999"), "{reason}");
        assert!(reason.chars().count() < 300, "{reason}");
    }
    // `dlq show` and the status page read the same reason.
    let status = ghl_sync::store::status::read(&app.store, &[]).await.unwrap();
    let error = status.connectors[0].last_error.as_ref().unwrap();
    assert!(error.message.contains("422 Unprocessable Entity"), "{error:?}");
    let log = capture.text();
    assert!(log.contains("422 Unprocessable Entity"), "{log}");
    assert!(!log.contains("ada.lovelace"), "{log}");

    // Nothing listening: the reason says the connection was refused.
    sandbox.sink.set_mode("test", SinkMode::Ok);
    let mut settings = crate::helpers::settings_for(&sandbox, dir.path());
    let closed = format!("http://127.0.0.1:{}/hook", free_port());
    let hook: ghl_sync::config::WebhookConnectorSettings = toml::from_str(&format!("url = \"{closed}\"")).unwrap();
    settings.connectors.webhook.insert("test".into(), hook);
    app.store.close().await;
    drop(app);
    let app = crate::helpers::app(crate::helpers::config(settings)).await.unwrap();
    let location = sandbox.ghl.locations()[0].id.clone();
    let contact = sandbox.ghl.contact_ids(&location)[0].clone();
    sandbox.ghl.update_contact(&contact, serde_json::json!({ "firstName": "Refused" }));
    for (_, result) in app.sync_once(None, Default::default()).await.unwrap() {
        result.unwrap();
    }
    app.dispatcher.run_once().await;
    let errors: Vec<String> =
        sqlx::query_scalar("SELECT last_error FROM outbox WHERE status = 'pending' AND last_error IS NOT NULL")
            .fetch_all(&crate::helpers::db(&app.store).await)
            .await
            .unwrap();
    assert!(!errors.is_empty());
    assert!(errors.iter().all(|e| e == "attempt 1: the webhook failed: connection refused"), "{errors:?}");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_stops_delivering_at_the_deliver_timeout_and_says_so() {
    let sandbox = start_sandbox(fast_ghl(2)).await;
    sandbox.sink.set_mode("test", SinkMode::Slow(Duration::from_secs(5)));
    let dir = tempfile::tempdir().unwrap();
    let text = control_config(&sandbox, dir.path(), free_port()).replace("enabled = true", "enabled = false");
    let config = write_config(dir.path(), &text);
    let args = ["sync", "--once", "--deliver-timeout", "1", "--config", config.to_str().unwrap()];
    let (status, stdout, stderr) = wait_with_limit(spawn(&args, &[]), Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("Delivery stopped after 1 s (--deliver-timeout): what is left stays queued"), "{stdout}");
    assert!(stdout.contains("still pending"), "{stdout}");
    sandbox.stop().await;
}
