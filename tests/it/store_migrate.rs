//! Issue 21: `ghl-sync store migrate --to postgres://…` on a synced SQLite store, through the
//! real binary: refused while another process holds the store, then a verified copy.

use std::time::Duration;

use ghl_sync::app::App;
use ghl_sync::store::ProcessLock;
use ghl_sync::sync::engine::RunOptions;

use crate::helpers::{config, fast_ghl, settings_for, spawn, start_sandbox, wait_with_limit, write_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_migrate_refuses_while_the_store_is_held_then_copies_every_table_verified() {
    if crate::helpers::runs_postgres_itself() {
        return;
    }
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

/// "Mid-backfill migrated, then continued on PostgreSQL with nothing re-delivered and nothing
/// lost": the daemon is stopped on SQLite part-way through a location's first sync (children
/// backfill and deliveries pending), the store is copied, and the daemon finishes on
/// PostgreSQL. Every contact, task and note arrives, each idempotency key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_migrated_mid_backfill_finishes_on_postgres_with_every_record_once() {
    if crate::helpers::runs_postgres_itself() {
        return;
    }
    use std::collections::HashMap;

    use ghl_sync::config::Dur;
    use ghl_sync::store::Store;
    use tokio_util::sync::CancellationToken;

    use crate::helpers::{eventually, listen_for_webhooks};

    let Some(url) = ghl_sync::store::testing::postgres_test_url().await else { return };
    // Slow enough that the stop lands mid-backfill: 40 requests per second.
    let mut ghl = fast_ghl(200);
    ghl.burst_max = 40;
    let sandbox = start_sandbox(ghl).await;
    let expected: usize = sandbox
        .ghl
        .locations()
        .iter()
        .flat_map(|l| sandbox.ghl.contact_ids(&l.id))
        .map(|c| 1 + sandbox.ghl.tasks(&c).len() + sandbox.ghl.notes(&c).len())
        .sum();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    listen_for_webhooks(&mut settings, &sandbox);
    // The daemon's limit matches the fake's: 0 × 429 is part of the claim.
    settings.limits.ghl_burst_max = 40;
    settings.sync.contacts_interval = Dur::secs(2);
    let created = |sandbox: &ghl_sync_sandbox::Sandbox| {
        sandbox.sink.accepted(Some("test")).iter().filter(|d| d.body.contains(".created\"")).count()
    };

    let app = App::build(config(settings.clone())).await.unwrap();
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    assert!(eventually(Duration::from_secs(60), || created(&sandbox) >= expected / 4).await);
    stop.cancel();
    daemon.await.unwrap().unwrap();
    let at_stop = created(&sandbox);
    assert!(at_stop < expected, "the stop came after the backfill ({at_stop} of {expected}): nothing left to continue");

    let db = dir.path().join("ghl-sync.db");
    let lite = Store::connect(&db, Duration::from_secs(5)).await.unwrap();
    let pg = Store::connect_postgres(&url, Duration::from_secs(5)).await.unwrap();
    let copied = ghl_sync::store::transfer::migrate_to_postgres(&lite, &pg).await.unwrap();
    assert!(copied.rows() > 0);
    lite.close().await;
    pg.close().await;

    settings.store.path = None;
    settings.store.url = Some(url);
    let app = App::build(config(settings)).await.unwrap();
    assert!(app.store.is_postgres());
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    let finished = eventually(Duration::from_secs(120), || created(&sandbox) >= expected).await;
    // A little longer: anything sent twice would show now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    daemon.await.unwrap().unwrap();
    assert!(finished, "{} of {expected} records delivered after the move", created(&sandbox));

    let accepted = sandbox.sink.accepted(Some("test"));
    let mut keys: HashMap<String, usize> = HashMap::new();
    for delivery in &accepted {
        *keys.entry(delivery.header("idempotency-key").unwrap().to_owned()).or_default() += 1;
    }
    let doubled: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "keys delivered twice: {doubled:?}");
    assert_eq!(created(&sandbox), expected, "every contact, task and note created once");
    assert_eq!(sandbox.ghl.stats().too_many_requests, 0);
    sandbox.stop().await;
}
