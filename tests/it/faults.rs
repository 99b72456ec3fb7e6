//! Faults of GHL and of the machine, each test named after the behaviour it proves: hung
//! responses, malformed JSON, a revoked token, a full disk. (429 and 5xx storms and the
//! `kill -9` of `sync --once` are in `reliability.rs`; a target down for a while and a store
//! that cannot record delivery outcomes are in `dispatch.rs`.)

use std::time::Duration;

use ghl_sync::config::Dur;
use ghl_sync::store::locations;
use ghl_sync::sync::engine::{RunOptions, SyncError};
use ghl_sync_sandbox::ghl::Fault;

use crate::helpers::{config, fast_ghl, settings_for, start_sandbox};
use crate::reliability::{assert_exactly_once, sync_until_done};

const RUN: RunOptions = RunOptions { dry_run: false, skip_sweep: true };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_ghl_responses_time_out_are_retried_and_nothing_is_lost() {
    let sandbox = start_sandbox(fast_ghl(40)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    settings.limits.request_timeout = Dur::millis(300);
    settings.limits.max_retries = 30;
    settings.limits.max_backoff = Dur::millis(100);
    let app = crate::helpers::app(config(settings)).await.unwrap();
    // GHL accepts the search and never answers.
    sandbox.ghl.set_fault("POST /contacts/search", Fault { hang: true, ..Fault::default() });
    let run = tokio::spawn(async move {
        let results = app.sync_once(None, RUN).await.unwrap();
        (app, results)
    });
    // Every location's search times out and is sent again while the fault lasts.
    let hung = crate::helpers::eventually(Duration::from_secs(20), || {
        sandbox.ghl.stats().requests.get("POST /contacts/search").is_some_and(|n| *n >= 6)
    })
    .await;
    sandbox.ghl.clear_faults();
    let (app, results) = run.await.unwrap();
    assert!(hung, "the hung searches were not retried: {:?}", sandbox.ghl.stats().requests);
    for (location, result) in results {
        result.unwrap_or_else(|e| panic!("{location}: the run did not survive the hang: {e}"));
    }
    assert_exactly_once(&sandbox, &app.store).await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_from_ghl_fails_the_run_is_counted_and_the_next_run_resumes_exactly_once() {
    let sandbox = start_sandbox(fast_ghl(40)).await;
    let dir = tempfile::tempdir().unwrap();
    let app = crate::helpers::app(config(settings_for(&sandbox, dir.path()))).await.unwrap();
    // A truncated body on the children of every contact: the first page's reads fail.
    sandbox.ghl.set_fault("GET /contacts/:contactId/tasks", Fault { malformed_json: true, ..Fault::default() });
    for (location, result) in app.sync_once(None, RUN).await.unwrap() {
        let error = result.expect_err("a malformed answer fails the run");
        let text = format!("{error:#}");
        assert!(text.contains("malformed JSON") || text.contains("truncated JSON"), "{location}: {text}");
    }
    // Counted as failed runs (the status screens show them).
    let failed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE outcome = 'failed'")
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap();
    assert_eq!(failed, 2, "one failed run per location");
    // The contacts themselves were read fine and are committed; no task or note row exists
    // yet: the children that could not be read are read again by the next run.
    let by_entity: Vec<(String, i64)> =
        sqlx::query_as("SELECT entity, COUNT(*) FROM outbox GROUP BY entity ORDER BY entity")
            .fetch_all(&crate::helpers::db(&app.store).await)
            .await
            .unwrap();
    assert!(by_entity.iter().all(|(entity, _)| entity == "contact"), "{by_entity:?}");

    sandbox.ghl.clear_faults();
    sync_until_done(&app, 3).await;
    assert_exactly_once(&sandbox, &app.store).await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_pauses_its_location_as_needs_reauth_while_the_others_sync() {
    let sandbox = start_sandbox(fast_ghl(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    // GHL answers a revoked PIT exactly as an unknown one: 401.
    let revoked = settings.ghl.locations[1].id.clone();
    settings.ghl.locations[1].pit = Some(ghl_sync::config::Secret::new("pit-revoked-0000000000000000".to_owned()));
    let app = crate::helpers::app(config(settings)).await.unwrap();

    let results = app.sync_once(None, RUN).await.unwrap();
    for (location, result) in &results {
        if *location == revoked {
            assert!(result.is_err(), "the revoked location cannot sync");
        } else {
            assert!(result.is_ok(), "{location} must not suffer from another location's token: {result:?}");
        }
    }
    assert_eq!(locations::status_of(&app.store, &revoked).await.unwrap().as_deref(), Some("needs_reauth"));
    let synced: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE location_id != $1")
        .bind(&revoked)
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap();
    assert_eq!(synced, 20, "the healthy location synced all its contacts");

    // Paused: later runs of that location stop before calling GHL, the others go on.
    let unauthorized = sandbox.ghl.stats().statuses.get(&401).copied().unwrap_or(0);
    for (location, result) in app.sync_once(None, RUN).await.unwrap() {
        if location == revoked {
            assert!(matches!(result, Err(SyncError::NeedsReauth(_))), "{result:?}");
        } else {
            assert!(result.is_ok());
        }
    }
    assert_eq!(sandbox.ghl.stats().statuses.get(&401).copied().unwrap_or(0), unauthorized, "no more refused calls");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_run_with_a_clear_error_corrupts_nothing_and_the_sync_resumes_after() {
    if crate::helpers::sqlite_only("SQLite\'s page limit stands in for a full disk") {
        return;
    }
    let sandbox = start_sandbox(fast_ghl(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let app = crate::helpers::app(config(settings_for(&sandbox, dir.path()))).await.unwrap();
    // The disk is full: not one more page fits in the database file.
    let pages: i64 =
        sqlx::query_scalar("PRAGMA page_count").fetch_one(&crate::helpers::db(&app.store).await).await.unwrap();
    app.store.limit_pages_for_tests(Some(u64::try_from(pages).unwrap())).await.unwrap();

    for (location, result) in app.sync_once(None, RUN).await.unwrap() {
        let error = result.expect_err("nothing can be committed on a full disk");
        let text = format!("{error:#}");
        assert!(text.contains("full"), "{location}: the error says what is wrong: {text}");
    }
    let integrity: String =
        sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&crate::helpers::db(&app.store).await).await.unwrap();
    assert_eq!(integrity, "ok");
    let contacts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts")
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap();
    let outbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap();
    assert_eq!((contacts, outbox), (0, 0), "no half-committed page");

    // Space again: the same daemon resumes and every record arrives exactly once.
    app.store.limit_pages_for_tests(None).await.unwrap();
    sync_until_done(&app, 3).await;
    assert_exactly_once(&sandbox, &app.store).await;
    let integrity: String =
        sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&crate::helpers::db(&app.store).await).await.unwrap();
    assert_eq!(integrity, "ok");
    sandbox.stop().await;
}

/// Every file of `dir` by name with its bytes.
fn files_of(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap()))
        .collect()
}

/// Sets the mode of `dir` and of every file in it.
fn chmod_all(dir: &std::path::Path, dir_mode: u32, file_mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    for name in files_of(dir).keys() {
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(file_mode)).unwrap();
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
}

/// The real binary on a store it can read but not write. As root (the suite's usual case, where
/// file modes stop nothing) it runs as the unprivileged uid 65534 over root's files; otherwise
/// as this user over files without write permission. Both `sync --once` and `run` refuse to
/// start, exit 1 with an error naming the database and saying "read-only", and change no byte
/// of the store; once the store is writable, the same user's run delivers every change made in
/// between, each record under keys the target had not accepted before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_stops_the_start_with_exit_1_naming_it_changes_nothing_and_resumes_once_writable() {
    if crate::helpers::sqlite_only("the database files are made read-only") {
        return;
    }
    use crate::crash::{accepted_by_key, record_of, run_config};
    use crate::helpers::{euid, spawn, spawn_as, wait_with_limit, write_config};

    let sandbox = start_sandbox(fast_ghl(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    std::fs::create_dir(&store_dir).unwrap();
    let db = store_dir.join("ghl-sync.db");
    // The config lives outside the store directory, readable by everyone.
    let path = write_config(dir.path(), &run_config(&sandbox, &store_dir, "", ""));
    chmod_all(dir.path(), 0o755, 0o644);
    let path = path.to_str().unwrap().to_owned();
    let sync = ["sync", "--once", "--config", path.as_str()];
    let limit = Duration::from_secs(60);

    // A first pass by the owner of the store: everything delivered.
    let (status, stdout, stderr) = wait_with_limit(spawn(&sync, &[]), limit);
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    let first = sandbox.sink.accepted(Some("test")).len();
    assert!(first > 0);
    // Changes while the store cannot be written: three edits and two new contacts.
    let location = sandbox.ghl.locations()[0].id.clone();
    let mut markers = Vec::new();
    for (i, id) in sandbox.ghl.contact_ids(&location).into_iter().take(3).enumerate() {
        let marker = format!("ReadOnly{i}");
        assert!(sandbox.ghl.update_contact(&id, serde_json::json!({ "firstName": marker })));
        markers.push(marker);
    }
    for i in 0..2 {
        let marker = format!("ReadOnlyNew{i}");
        sandbox.ghl.create_contact(&location, serde_json::json!({ "firstName": marker }));
        markers.push(marker);
    }

    // The store becomes readable but not writable by the user who runs the daemon.
    let root = euid() == 0;
    let (as_user, dir_mode, file_mode) = if root { (65_534, 0o755, 0o644) } else { (euid(), 0o555, 0o444) };
    chmod_all(&store_dir, dir_mode, file_mode);
    let start = |args: &[&str]| if root { spawn_as(as_user, args, &[]) } else { spawn(args, &[]) };
    let before = files_of(&store_dir);
    assert!(before.contains_key("ghl-sync.db"), "{:?}", before.keys());
    let run = ["run", "--config", path.as_str()];
    for args in [&sync[..], &run[..]] {
        let (status, stdout, stderr) = wait_with_limit(start(args), limit);
        assert_eq!(status.code(), Some(1), "{args:?} as uid {as_user}: {stdout}\n{stderr}");
        assert!(stderr.contains(db.to_str().unwrap()), "{args:?}: the error names the database: {stderr}");
        assert!(stderr.contains("read-only"), "{args:?}: the error says read-only: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert_eq!(sandbox.sink.accepted(Some("test")).len(), first, "nothing was delivered");
    assert!(files_of(&store_dir) == before, "a byte of the store changed while it was read-only");

    // Writable again (the volume given to the daemon's user): the same user's run resumes.
    if root {
        std::os::unix::fs::chown(&store_dir, Some(as_user), Some(as_user)).unwrap();
        for name in before.keys() {
            std::os::unix::fs::chown(store_dir.join(name), Some(as_user), Some(as_user)).unwrap();
        }
    }
    chmod_all(&store_dir, 0o700, 0o600);
    let (status, stdout, stderr) = wait_with_limit(start(&sync), limit);
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    let store = crate::helpers::open_store(&db).await;
    let integrity: String =
        sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&crate::helpers::db(&store).await).await.unwrap();
    assert_eq!(integrity, "ok");
    store.close().await;

    // Every record arrived, every change made while read-only too, and no key twice.
    let accepted = sandbox.sink.accepted(Some("test"));
    let records: std::collections::BTreeSet<_> = accepted.iter().map(record_of).collect();
    assert_eq!(records, crate::reliability::expected(&sandbox));
    for marker in &markers {
        let carrying = accepted.iter().filter(|d| d.body.contains(marker.as_str())).count();
        assert_eq!(carrying, 1, "the change {marker} was delivered {carrying} times");
    }
    let repeated: Vec<_> = accepted_by_key(&accepted).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(repeated.is_empty(), "keys accepted twice: {repeated:?}");
    sandbox.stop().await;
}
