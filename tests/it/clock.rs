//! The system clock jumping back and forward under the daemon. Timers and rate limits use the
//! monotonic clock; what is stored with a time (the outbox's `next_attempt_at`, token expiry)
//! uses the wall clock of `ghl_sync::clock`. A step back must not hold rows waiting to retry
//! for the size of the step; a step forward must not send anything twice; OAuth tokens must
//! keep working either way. In-process through the dispatcher's injected clock
//! (`Dispatcher::with_clock`, `clock::Jumps`), and end to end on the real binary through the
//! test-only `GHL_SYNC_TEST_CLOCK_OFFSET_FILE`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ghl_sync::app::App;
use ghl_sync::clock::Jumps;
use ghl_sync::config::Dur;
use ghl_sync::dispatch::Dispatcher;
use ghl_sync::sync::engine::RunOptions;
use ghl_sync_sandbox::sink::SinkMode;

use crate::crash::{accepted_by_key, record_of};
use crate::helpers::{config, fast_ghl, settings_for, signal, spawn, start_sandbox, wait_with_limit, write_config};

const RUN: RunOptions = RunOptions { dry_run: false, skip_sweep: true };
const HOUR_MS: i64 = 3_600_000;

async fn pending(app: &App) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap()
}

/// Dispatcher passes (100 ms apart, at most `passes`) until nothing is pending; whether it
/// drained.
async fn drain(app: &App, dispatcher: &Dispatcher, passes: usize) -> bool {
    for _ in 0..passes {
        dispatcher.run_once().await;
        if pending(app).await == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The dispatcher on a clock the test jumps (the engine writes with the process clock, so the
/// test only enqueues while the dispatcher's clock is at or ahead of it, as one process clock
/// would be). A row waiting 300 ms to retry when the clock steps back an hour goes out after
/// its backoff, not after the hour; after a step forward the rows due early go out once, and
/// later passes send nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_step_back_delays_waiting_retries_by_their_backoff_not_the_step_and_a_step_forward_sends_nothing_twice()
{
    let sandbox = start_sandbox(fast_ghl(10)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    settings.dispatch.backoff_base = Dur::millis(300);
    settings.dispatch.backoff_max = Dur::millis(600);
    settings.dispatch.breaker_threshold = 1_000;
    let app = crate::helpers::app(config(settings)).await.unwrap();
    let jumps = Jumps::default();
    let dispatcher = Dispatcher::new(app.store.clone(), app.connectors.clone(), app.config.settings.dispatch.clone())
        .with_clock(jumps.clock());
    for (location, result) in app.sync_once(None, RUN).await.unwrap() {
        result.unwrap_or_else(|e| panic!("{location}: {e}"));
    }
    let rows = pending(&app).await;
    assert!(rows > 20, "{rows} rows");

    // Every row fails once and waits 300 ms; then the clock steps back an hour.
    sandbox.sink.set_mode("test", SinkMode::Down);
    let summary = dispatcher.run_once().await;
    assert_eq!(summary.connectors["webhook.test"].retried, u64::try_from(rows).unwrap(), "{summary:?}");
    jumps.jump(-HOUR_MS);
    sandbox.sink.set_mode("test", SinkMode::Ok);
    // 50 passes 100 ms apart are minutes short of the hour: only the fix drains the rows.
    assert!(drain(&app, &dispatcher, 50).await, "{} rows still wait for the hour", pending(&app).await);
    let attempts: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT attempts FROM outbox")
        .fetch_all(&crate::helpers::db(&app.store).await)
        .await
        .unwrap();
    assert_eq!(attempts, vec![2], "one failed and one good attempt per row");

    // Back to the process clock and two hours on: changes that wait to retry are due at once
    // and go out once; more passes send nothing.
    jumps.jump(HOUR_MS);
    let location = sandbox.ghl.locations()[0].id.clone();
    let changed: Vec<String> = sandbox.ghl.contact_ids(&location).into_iter().take(3).collect();
    for (i, id) in changed.iter().enumerate() {
        assert!(sandbox.ghl.update_contact(id, serde_json::json!({ "firstName": format!("Forward{i}") })));
    }
    for (_, result) in app.sync_once(None, RUN).await.unwrap() {
        result.unwrap();
    }
    sandbox.sink.set_mode("test", SinkMode::Down);
    assert_eq!(dispatcher.run_once().await.connectors["webhook.test"].retried, 3);
    jumps.jump(2 * HOUR_MS);
    sandbox.sink.set_mode("test", SinkMode::Ok);
    assert_eq!(dispatcher.run_once().await.connectors["webhook.test"].delivered, 3, "due at once after the step");
    for _ in 0..3 {
        assert_eq!(dispatcher.run_once().await.connectors["webhook.test"].delivered, 0, "nothing goes out twice");
    }
    let accepted = sandbox.sink.accepted(Some("test"));
    let records: BTreeSet<_> = accepted.iter().map(record_of).collect();
    assert_eq!(records, crate::reliability::expected(&sandbox));
    assert_eq!(accepted.len(), usize::try_from(rows).unwrap() + 3, "each record once, each change once");
    assert!(accepted_by_key(&accepted).values().all(|n| *n == 1), "a key was accepted twice");
    sandbox.stop().await;
}

/// Writes the daemon's clock offset (ms) into the file it watches.
fn set_offset(file: &Path, offset_ms: i64) {
    let temporary = file.with_extension("tmp");
    std::fs::write(&temporary, offset_ms.to_string()).unwrap();
    std::fs::rename(&temporary, file).unwrap();
}

/// The real daemon on an OAuth grant whose access tokens live 3 s, delivering to a webhook,
/// while its system clock (the test-only offset file) steps an hour back, then two hours
/// forward. Back: rows waiting to retry go out after their backoff (not after the hour),
/// changes made after the step are synced and delivered, and the token that looks valid for
/// an hour more but is expired at GHL costs one 401 and a refresh. Forward: tokens look
/// expired and are refreshed, nothing is delivered twice. The grant stays alive throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_steps_of_the_running_daemon_keep_retries_to_their_backoff_send_nothing_twice_and_keep_the_grant_alive() {
    use ghl_sync_sandbox::ghl::GhlOptions;
    use ghl_sync_sandbox::{Sandbox, SandboxOptions};

    let ghl = GhlOptions { locations: 1, access_token_ttl: Duration::from_secs(3), ..fast_ghl(15) };
    let sandbox =
        Sandbox::start(SandboxOptions { ghl, ..Default::default() }, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let location = sandbox.ghl.locations()[0].id.clone();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ghl-sync.db");
    crate::crash::install_oauth(&sandbox, &db).await;
    let (client_id, client_secret) = sandbox.ghl.oauth_client();
    let text = format!(
        "[store]\n{store}master_key = \"{key}\"\n\
         [ghl]\nbase_url = \"{ghl}\"\n[ghl.oauth]\nclient_id = \"{client_id}\"\nclient_secret = \"{client_secret}\"\n\
         redirect_url = \"http://127.0.0.1:9/oauth/callback\"\n\
         [server]\nenabled = false\n\
         [sync]\ncontacts_interval = \"1s\"\nindex_lag_margin = \"0s\"\ndirty_debounce = \"0s\"\n\
         [limits]\nghl_burst_max = 100000\nghl_burst_window = \"1s\"\nghl_daily_budget = 10000000\nmax_backoff = \"200ms\"\n\
         [dispatch]\npoll_interval = \"100ms\"\nbackoff_base = \"500ms\"\nbackoff_max = \"1s\"\nbreaker_threshold = 1000\n\
         [log]\nlevel = \"info\"\nformat = \"json\"\n\
         [connectors.webhook.test]\nurl = \"{sink}\"\n",
        store = crate::helpers::store_keys(&db),
        key = crate::crash::MASTER_KEY,
        ghl = sandbox.ghl_url(),
        sink = sandbox.sink_url("test"),
    );
    let path = write_config(dir.path(), &text);
    let path = path.to_str().unwrap().to_owned();
    let offset = dir.path().join("clock-offset");
    set_offset(&offset, 0);
    let offset_env = offset.to_str().unwrap().to_owned();
    let expected = crate::reliability::expected(&sandbox);
    use crate::helpers::eventually as until;

    // The target is down: every row fails and waits to retry.
    sandbox.sink.set_mode("test", SinkMode::Down);
    let mut child = spawn(&["run", "--config", &path], &[("GHL_SYNC_TEST_CLOCK_OFFSET_FILE", &offset_env)]);
    let failing = until(Duration::from_secs(30), || sandbox.sink.deliveries(Some("test")).len() >= 3).await;
    assert!(failing, "no delivery attempt");
    assert!(child.try_wait().unwrap().is_none());

    // An hour back; the target is up again; a change is made after the step.
    set_offset(&offset, -HOUR_MS);
    tokio::time::sleep(Duration::from_millis(200)).await;
    sandbox.sink.set_mode("test", SinkMode::Ok);
    let ids = sandbox.ghl.contact_ids(&location);
    assert!(sandbox.ghl.update_contact(&ids[0], serde_json::json!({ "firstName": "AfterStepBack" })));
    let refreshes_before = sandbox.ghl.stats().refresh_grants;
    let delivered = until(Duration::from_secs(60), || {
        let accepted = sandbox.sink.accepted(Some("test"));
        accepted.iter().map(record_of).collect::<BTreeSet<_>>() == expected
            && accepted.iter().any(|d| d.body.contains("AfterStepBack"))
    })
    .await;
    // Three-second tokens outlive the test's waits only through refreshes after 401s.
    let refreshed_back = until(Duration::from_secs(20), || sandbox.ghl.stats().refresh_grants > refreshes_before).await;
    if !delivered {
        let accepted = sandbox.sink.accepted(Some("test"));
        let arrived = accepted.iter().map(record_of).collect::<BTreeSet<_>>().len();
        let changed = accepted.iter().any(|d| d.body.contains("AfterStepBack"));
        let stats = sandbox.ghl.stats();
        signal(&child, "KILL");
        let (_, _, stderr) =
            tokio::task::spawn_blocking(move || wait_with_limit(child, Duration::from_secs(20))).await.unwrap();
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        panic!(
            "held by the step back: {arrived} of {} records, change arrived: {changed}, GHL statuses {:?}, refreshes {}: {tail:#?}",
            expected.len(),
            stats.statuses,
            stats.refresh_grants
        );
    }
    assert!(refreshed_back, "no token refresh after the step back");

    // Two hours forward: tokens look expired (refreshed at once), rows are due early.
    let refreshes_before = sandbox.ghl.stats().refresh_grants;
    set_offset(&offset, HOUR_MS);
    assert!(sandbox.ghl.update_contact(&ids[1], serde_json::json!({ "firstName": "AfterStepForward" })));
    let delivered = until(Duration::from_secs(60), || {
        sandbox.sink.accepted(Some("test")).iter().any(|d| d.body.contains("AfterStepForward"))
    })
    .await;
    let refreshed_forward =
        until(Duration::from_secs(20), || sandbox.ghl.stats().refresh_grants > refreshes_before).await;
    // A few more polls: nothing more goes out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&child, "TERM");
    let (status, _, stderr) =
        tokio::task::spawn_blocking(move || wait_with_limit(child, Duration::from_secs(20))).await.unwrap();
    assert!(delivered, "the change after the step forward was not delivered: {stderr}");
    assert!(refreshed_forward, "no refresh after the step forward: {stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("Test clock"), "the daemon warns that the test clock is on: {stderr}");
    assert!(stderr.contains("The system clock went back"), "{stderr}");
    assert!(!stderr.contains("needs re-authorisation"), "the grant died: {stderr}");

    let accepted = sandbox.sink.accepted(Some("test"));
    assert!(accepted_by_key(&accepted).values().all(|n| *n == 1), "a key was accepted twice");
    for marker in ["AfterStepBack", "AfterStepForward"] {
        assert_eq!(accepted.iter().filter(|d| d.body.contains(marker)).count(), 1, "{marker} went out more than once");
    }
    // Each record once; the two changed contacts at most once more (the first change may have
    // replaced the contact's row while it still waited for the target).
    let mut per_record: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for delivery in &accepted {
        *per_record.entry(record_of(delivery)).or_insert(0) += 1;
    }
    for (record, count) in &per_record {
        let changed = record.0 == "contact" && (record.1 == ids[0] || record.1 == ids[1]);
        assert!(*count == 1 || (changed && *count == 2), "{record:?} was delivered {count} times");
    }
    eprintln!(
        "clock steps: {} deliveries accepted, {} refreshes in all",
        accepted.len(),
        sandbox.ghl.stats().refresh_grants
    );
    sandbox.stop().await;
}
