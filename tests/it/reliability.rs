//! Reliability against the fake GHL: 429 and 5xx storms ridden out with nothing lost, no
//! secret in trace-level logs, and `kill -9` of a real `ghl-sync sync --once` child at random
//! points of a backfill followed by a clean run: every record in the outbox exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ghl_sync::app::App;
use ghl_sync::config::{LogFormat, LogSettings};
use ghl_sync::store::Store;
use ghl_sync::sync::engine::RunOptions;
use ghl_sync_sandbox::Sandbox;
use ghl_sync_sandbox::ghl::Fault;

use crate::helpers::{config, fast_ghl, settings_for, signal, spawn, start_sandbox, wait_with_limit, write_config};

/// Every (entity, id) the sandbox holds: contacts, tasks and notes of every location.
pub(crate) fn expected(sandbox: &Sandbox) -> BTreeSet<(String, String)> {
    let mut expected = BTreeSet::new();
    for location in sandbox.ghl.locations() {
        for contact in sandbox.ghl.contact_ids(&location.id) {
            for task in sandbox.ghl.tasks(&contact) {
                expected.insert(("task".to_owned(), task["id"].as_str().unwrap().to_owned()));
            }
            for note in sandbox.ghl.notes(&contact) {
                expected.insert(("note".to_owned(), note["id"].as_str().unwrap().to_owned()));
            }
            expected.insert(("contact".to_owned(), contact));
        }
    }
    expected
}

/// Outbox rows of `webhook.test`: (entity, id) → operations, in row order.
pub(crate) async fn outbox(store: &Store) -> BTreeMap<(String, String), Vec<String>> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT entity, entity_id, operation FROM outbox WHERE connector = 'webhook.test' ORDER BY id")
            .fetch_all(&crate::helpers::db(store).await)
            .await
            .unwrap();
    let mut map: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (entity, id, op) in rows {
        map.entry((entity, id)).or_default().push(op);
    }
    map
}

/// Asserts every record of the sandbox is in the outbox exactly once, as `created`.
pub(crate) async fn assert_exactly_once(sandbox: &Sandbox, store: &Store) {
    let rows = outbox(store).await;
    let expected = expected(sandbox);
    let actual: BTreeSet<_> = rows.keys().cloned().collect();
    let missing: Vec<_> = expected.difference(&actual).take(5).collect();
    let extra: Vec<_> = actual.difference(&expected).take(5).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, unexpected {extra:?}");
    let repeated: Vec<_> = rows.iter().filter(|(_, ops)| ops.as_slice() != ["created"]).take(5).collect();
    assert!(repeated.is_empty(), "every record exactly once, as created: {repeated:?}");
}

async fn sync_all(app: &App) {
    for (location, result) in app.sync_once(None, RunOptions { dry_run: false, skip_sweep: true }).await.unwrap() {
        result.unwrap_or_else(|e| panic!("sync of {location} failed: {e}"));
    }
}

/// What the scheduler does: a location whose run failed (a request out of retries) runs
/// again on its next interval, from its last committed page. Returns the runs needed.
pub(crate) async fn sync_until_done(app: &App, max_runs: usize) -> usize {
    let mut pending: Vec<String> = app.locations().await.unwrap();
    for run in 1..=max_runs {
        let mut failed = Vec::new();
        for location in &pending {
            let result = app.engine.run_once(location, RunOptions { dry_run: false, skip_sweep: true }).await;
            if let Err(error) = result {
                assert!(
                    matches!(&error, ghl_sync::sync::engine::SyncError::Ghl(e) if e.is_retryable()),
                    "only retryable failures: {error}"
                );
                failed.push(location.clone());
            }
        }
        if failed.is_empty() {
            return run;
        }
        pending = failed;
    }
    panic!("the sync did not complete within {max_runs} runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_is_ridden_out_and_every_record_reaches_the_outbox() {
    let sandbox = start_sandbox(fast_ghl(150)).await;
    let dir = tempfile::tempdir().unwrap();
    let app = crate::helpers::app(config(settings_for(&sandbox, dir.path()))).await.unwrap();
    // The next 40 requests, whatever their route, are answered 429 (with GHL's headers: the
    // interval says when the window rolls over). Each 429 pauses the bucket and is retried;
    // a request that meets more 429s than `limits.max_retries` fails its run, and the next
    // run resumes from the last committed page.
    sandbox.ghl.set_fault("*", Fault { storm_429: Some(40), ..Fault::default() });

    let runs = sync_until_done(&app, 8).await;

    let stats = sandbox.ghl.stats();
    assert_eq!(stats.too_many_requests, 40, "the whole storm was served (in {runs} runs)");
    // The client counted every 429 against its location (the status page's "429s today").
    let counted: u64 = app.locations().await.unwrap().iter().map(|l| app.ghl.rate_limited_total(l)).sum();
    assert_eq!(counted, 40);
    assert_exactly_once(&sandbox, &app.store).await;
    // And a quiet re-poll after the storm changes nothing.
    sync_all(&app).await;
    assert_exactly_once(&sandbox, &app.store).await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_without_rate_limit_headers_pauses_for_the_configured_window_and_every_record_reaches_the_outbox() {
    let sandbox = start_sandbox(fast_ghl(150)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    settings.limits.ghl_burst_window = ghl_sync::config::Dur::millis(200);
    let app = crate::helpers::app(config(settings)).await.unwrap();
    // 429s with no `X-RateLimit-*` and no `Retry-After` (a proxy answering for GHL): nothing
    // says how long to wait, so the bucket pauses for the configured window and retries.
    sandbox.ghl.set_fault("*", Fault { storm_429: Some(12), bare_429: true, ..Fault::default() });

    sync_until_done(&app, 8).await;

    let stats = sandbox.ghl.stats();
    assert_eq!(stats.too_many_requests, 12, "the whole storm was served");
    let counted: u64 = app.locations().await.unwrap().iter().map(|l| app.ghl.rate_limited_total(l)).sum();
    assert_eq!(counted, 12, "every header-less 429 was counted against its location");
    assert_exactly_once(&sandbox, &app.store).await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_is_ridden_out_and_every_record_reaches_the_outbox() {
    let sandbox = start_sandbox(fast_ghl(150)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    settings.limits.max_backoff = ghl_sync::config::Dur::millis(50);
    let app = crate::helpers::app(config(settings)).await.unwrap();
    // A quarter of all requests fail with 503 and are retried with backoff; the rare request
    // that fails seven times in a row fails its run, and the next run resumes.
    sandbox.ghl.set_fault("*", Fault { error_rate: 0.25, ..Fault::default() });

    sync_until_done(&app, 8).await;

    let stats = sandbox.ghl.stats();
    let unavailable = stats.statuses.get(&503).copied().unwrap_or(0);
    assert!(unavailable > 50, "the storm happened: {:?}", stats.statuses);
    assert_exactly_once(&sandbox, &app.store).await;
    sandbox.stop().await;
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

// Current-thread runtime: the capture (a thread-local default subscriber) sees every task,
// the daemon's and the fake's.
#[tokio::test(flavor = "current_thread")]
async fn trace_level_logs_of_a_sync_with_storms_hold_no_token_secret_or_contact_data() {
    let logs = Capture::default();
    let settings = LogSettings { format: LogFormat::Json, level: "trace".into() };
    let _guard = tracing::subscriber::set_default(ghl_sync::telemetry::subscriber(&settings, logs.clone()));

    let sandbox = start_sandbox(fast_ghl(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    settings.limits.max_retries = 10;
    let hook_secret = "whsec-bench-0123456789abcdef";
    settings.connectors.webhook.get_mut("test").unwrap().secret =
        Some(ghl_sync::config::Secret::new(hook_secret.to_owned()));
    let app = crate::helpers::app(config(settings)).await.unwrap();
    // Storms exercise the retry and rate-limit log lines too.
    sandbox.ghl.set_fault("POST /contacts/search", Fault { storm_429: Some(2), ..Fault::default() });
    sandbox.ghl.set_fault("GET /contacts/:contactId/tasks", Fault { error_rate: 0.2, ..Fault::default() });
    sync_all(&app).await;
    let report = app.dispatcher.run_once().await.total();
    assert!(report.delivered > 0, "the dispatcher delivered with its signing secret");
    assert_exactly_once(&sandbox, &app.store).await;

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(text.contains("Retrying ghl"), "the capture saw the retries:\n{}", &text[..text.len().min(2000)]);
    let mut secrets: Vec<String> = sandbox.ghl.locations().into_iter().map(|l| l.pit).collect();
    secrets.push(hook_secret.to_owned());
    for secret in &secrets {
        assert!(secret.len() > 16);
        assert!(!text.contains(secret.as_str()), "a secret leaked into the trace-level logs");
    }
    // Personal data of the synced contacts stays out of the logs as well.
    let mut checked = 0;
    for location in sandbox.ghl.locations() {
        for id in sandbox.ghl.contact_ids(&location.id) {
            let contact = sandbox.ghl.contact(&id).unwrap();
            for field in ["email", "phone"] {
                if let Some(value) = contact[field].as_str().filter(|v| v.len() > 5) {
                    checked += 1;
                    assert!(!text.contains(value), "a contact's {field} leaked into the logs");
                }
            }
        }
    }
    assert!(checked > 10);
    sandbox.stop().await;
}

/// A config file for a `ghl-sync` child aimed at the sandbox (PIT locations, fast limits,
/// one webhook connector `test`, no HTTP server).
fn child_config(sandbox: &Sandbox, dir: &std::path::Path) -> std::path::PathBuf {
    let mut text = format!(
        "[store]\n{}[ghl]\nbase_url = \"{}\"\n",
        crate::helpers::store_keys(&dir.join("ghl-sync.db")),
        sandbox.ghl_url()
    );
    for location in sandbox.ghl.locations() {
        text.push_str(&format!("[[ghl.locations]]\nid = \"{}\"\npit = \"{}\"\n", location.id, location.pit));
    }
    text.push_str(
        "[limits]\nghl_burst_max = 100000\nghl_burst_window = \"1s\"\nghl_daily_budget = 10000000\nmax_backoff = \"200ms\"\n\
         [sync]\nindex_lag_margin = \"0s\"\n[server]\nenabled = false\n[log]\nlevel = \"warn\"\n",
    );
    text.push_str(&format!("[connectors.webhook.test]\nurl = \"{}\"\n", sandbox.sink_url("test")));
    write_config(dir, &text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_backfill_then_a_clean_run_loses_and_duplicates_nothing() {
    let sandbox = start_sandbox(fast_ghl(600)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = child_config(&sandbox, dir.path());
    let path = path.to_str().unwrap().to_owned();
    let db = dir.path().join("ghl-sync.db");

    // How long an uninterrupted backfill would take is unknown on a loaded machine: kill at
    // random points early on, growing, so the kills land in contacts pages, children fetches
    // and commits alike.
    let mut killed = 0;
    let mut completed_early = false;
    for round in 0..4u64 {
        let child = spawn(&["--config", &path, "sync", "--once"], &[]);
        let delay = Duration::from_millis(150 + round * 250 + fastrand::u64(..250));
        let started = Instant::now();
        let mut child = child;
        let exited = tokio::task::block_in_place(|| {
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break Some(status);
                }
                if started.elapsed() >= delay {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        match exited {
            Some(status) => {
                assert!(status.success(), "sync --once failed before it was killed");
                completed_early = true;
                break;
            }
            None => {
                signal(&child, "KILL");
                let status = tokio::task::block_in_place(|| child.wait().unwrap());
                assert!(!status.success());
                killed += 1;
            }
        }
    }
    assert!(killed > 0 || completed_early);
    if killed > 0 {
        // At least the first kill interrupted a backfill that had started writing.
        assert!(crate::helpers::store_exists(&db).await, "the child created its database before being killed");
    }

    // The clean run: finishes the backfill from where the last committed page left it.
    let child = spawn(&["--config", &path, "sync", "--once"], &[]);
    let (status, _, stderr) = tokio::task::block_in_place(|| wait_with_limit(child, Duration::from_secs(25)));
    assert!(status.success(), "the clean run failed: {stderr}");

    let store = crate::helpers::open_store(&db).await;
    assert_exactly_once(&sandbox, &store).await;
    let contacts: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM contacts").fetch_one(&crate::helpers::db(&store).await).await.unwrap();
    assert_eq!(contacts, 1_200);
    sandbox.stop().await;
}
