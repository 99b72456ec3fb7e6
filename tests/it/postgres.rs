//! Issue 21: the whole daemon on a PostgreSQL store (`[store] url = "postgres://…"`): every
//! change delivered once, a webhook-driven edit arrives, and a restart on the same database
//! sends no contact again and no idempotency key twice. Skipped (with a message) where no PostgreSQL server answers, unless
//! `GHL_SYNC_REQUIRE_POSTGRES=1` (`.ci/run`).

use std::collections::HashMap;
use std::time::Duration;

use ghl_sync::app::App;
use ghl_sync::config::Dur;
use tokio_util::sync::CancellationToken;

use crate::helpers::{config, eventually, fast_ghl, listen_for_webhooks, settings_for, start_sandbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_on_postgres_delivers_every_change_once_and_a_restart_sends_nothing_twice() {
    if crate::helpers::runs_postgres_itself() {
        return;
    }
    let Some(url) = ghl_sync::store::testing::postgres_test_url().await else { return };
    let sandbox = start_sandbox(fast_ghl(80)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    listen_for_webhooks(&mut settings, &sandbox);
    settings.store.path = None;
    settings.store.url = Some(url);
    settings.sync.contacts_interval = Dur::secs(60);
    settings.sync.dirty_debounce = Dur::millis(50);
    let contacts: usize = sandbox.ghl.locations().iter().map(|l| sandbox.ghl.contact_ids(&l.id).len()).sum();

    let app = App::build(config(settings.clone())).await.unwrap();
    assert!(app.store.is_postgres());
    let addr = app.server_addr().unwrap();
    sandbox.ghl.set_webhook_url(Some(format!("http://{addr}/webhooks/ghl").parse().unwrap()));
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    let created = |sandbox: &ghl_sync_sandbox::Sandbox| {
        sandbox.sink.accepted(Some("test")).iter().filter(|d| d.body.contains("\"contact.created\"")).count()
    };
    assert!(
        eventually(Duration::from_secs(60), || created(&sandbox) >= contacts).await,
        "{} of {contacts} contacts delivered",
        created(&sandbox)
    );
    // A GHL edit arrives through the webhook hint (the poll interval is a minute).
    let location = sandbox.ghl.locations()[0].id.clone();
    let contact = sandbox.ghl.contact_ids(&location)[0].clone();
    assert!(sandbox.ghl.update_contact(&contact, serde_json::json!({"firstName": "Postgresed"})));
    assert!(
        eventually(Duration::from_secs(20), || {
            sandbox.sink.accepted(Some("test")).iter().any(|d| d.body.contains("Postgresed"))
        })
        .await,
        "the edit was not delivered"
    );
    stop.cancel();
    daemon.await.unwrap().unwrap();

    // Restart on the same database: a full pass finds nothing new to deliver.
    let before = sandbox.sink.accepted(Some("test")).len();
    let app = App::build(config(settings)).await.unwrap();
    for (location, result) in
        app.sync_once(None, ghl_sync::sync::engine::RunOptions { dry_run: false, skip_sweep: false }).await.unwrap()
    {
        result.unwrap_or_else(|e| panic!("sync of {location} failed: {e}"));
    }
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    daemon.await.unwrap().unwrap();

    // The restart may finish the tasks and notes backfill the stop cut short, but must not send
    // any contact again (all were delivered, the edit included, before the stop).
    let accepted = sandbox.sink.accepted(Some("test"));
    let contacts_again: Vec<&str> = accepted[before..]
        .iter()
        .filter(|d| d.body.contains("\"contact."))
        .map(|d| d.header("idempotency-key").unwrap())
        .collect();
    assert!(contacts_again.is_empty(), "the restart delivered contacts again: {contacts_again:?}");
    let mut keys: HashMap<String, usize> = HashMap::new();
    for delivery in &accepted {
        *keys.entry(delivery.header("idempotency-key").unwrap().to_owned()).or_default() += 1;
    }
    let doubled: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "keys delivered twice: {doubled:?}");
    assert_eq!(created(&sandbox), contacts, "each contact created once");
    assert_eq!(sandbox.ghl.stats().too_many_requests, 0);
    sandbox.stop().await;
}
