//! Issue 21: `ghl-sync store migrate --to postgres://…` on a synced SQLite store, through the
//! real binary: refused while another process holds the store, then a verified copy.

use std::time::Duration;

use ghl_sync::app::App;
use ghl_sync::store::ProcessLock;
use ghl_sync::sync::engine::RunOptions;

use crate::helpers::{config, fast_ghl, settings_for, spawn, start_sandbox, wait_with_limit, write_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_migrate_refuses_while_the_store_is_held_then_copies_every_table_verified() {
    let sandbox = start_sandbox(fast_ghl(150)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ghl-sync.db");
    let app = App::build(config(settings_for(&sandbox, dir.path()))).await.unwrap();
    for (location, result) in app.sync_once(None, RunOptions { dry_run: false, skip_sweep: true }).await.unwrap() {
        result.unwrap_or_else(|e| panic!("sync of {location} failed: {e}"));
    }
    let contacts: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM contacts").fetch_one(app.store.read_pool()).await.unwrap();
    let outbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(app.store.read_pool()).await.unwrap();
    assert!(contacts >= 300 && outbox >= contacts, "{contacts} contacts, {outbox} outbox rows");
    app.store.close().await;
    drop(app);
    let cfg = write_config(dir.path(), &format!("[store]\npath = {:?}\n", db.to_str().unwrap()));
    let cfg = cfg.to_str().unwrap();

    // Held (as a running daemon holds it): refused before anything is read or written.
    let held = ProcessLock::acquire(&db).unwrap();
    let unused = "postgres://nobody@127.0.0.1:1/none";
    let (status, _, stderr) =
        wait_with_limit(spawn(&["store", "migrate", "--config", cfg, "--to", unused], &[]), Duration::from_secs(30));
    assert!(!status.success());
    assert!(stderr.contains("stop it first"), "{stderr}");
    drop(held);

    let (status, _, stderr) = wait_with_limit(
        spawn(&["store", "migrate", "--config", cfg, "--to", "sqlite:///tmp/x.db"], &[]),
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(stderr.contains("--to must be a postgres:// URL"), "{stderr}");

    let Some(url) = ghl_sync::store::testing::postgres_test_url().await else { return };
    let (status, stdout, stderr) =
        wait_with_limit(spawn(&["store", "migrate", "--config", cfg, "--to", &url], &[]), Duration::from_secs(120));
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("every table's count and digest match"), "{stdout}");
    let row = |table: &str| {
        stdout
            .lines()
            .find(|line| line.split_whitespace().next() == Some(table))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|n| n.parse::<i64>().ok())
    };
    assert_eq!(row("contacts"), Some(contacts), "{stdout}");
    assert_eq!(row("outbox"), Some(outbox), "{stdout}");
    assert!(!stderr.contains("nobody"), "no credentials or URLs beyond the redacted target: {stderr}");

    // A second copy into the same database is refused: it is no longer empty.
    let (status, _, stderr) =
        wait_with_limit(spawn(&["store", "migrate", "--config", cfg, "--to", &url], &[]), Duration::from_secs(60));
    assert!(!status.success());
    assert!(stderr.contains("not empty"), "{stderr}");
}
