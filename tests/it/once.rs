//! Issue 17, "exactly once, under pressure": one regression test per defect found from
//! outside (each named after the behaviour it keeps).

use std::time::Duration;

use ghl_sync::app::App;
use ghl_sync::config::Dur;
use ghl_sync::store::hints::{LocationFilter, WebhookAction, record_webhook};
use ghl_sync::store::snapshot;
use ghl_sync::sync::engine::RunOptions;
use ghl_sync_sandbox::ghl::WebhookMode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{config, eventually, fast_ghl, settings_for, start_sandbox};

const ONCE: RunOptions = RunOptions { dry_run: false, skip_sweep: true };

async fn sync_all(app: &App) {
    for (location, result) in app.sync_once(None, ONCE).await.unwrap() {
        result.unwrap_or_else(|e| panic!("sync of {location} failed: {e}"));
    }
}

async fn outbox_rows(app: &App) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT entity, entity_id, operation FROM outbox ORDER BY id")
        .fetch_all(&crate::helpers::db(&app.store).await)
        .await
        .unwrap()
}

async fn max_revision(app: &App) -> i64 {
    sqlx::query_scalar("SELECT MAX(revision) FROM outbox WHERE entity = 'contact'")
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap()
}

struct AllConfigured;

impl LocationFilter for AllConfigured {
    fn configured(&self, _location_id: &str) -> Option<bool> {
        Some(true)
    }
}

/// Records a webhook hint the way the receiver does.
async fn hint(app: &App, location: &str, contact: &str, id: &str) {
    let action = WebhookAction::Dirty {
        location_id: location.to_owned(),
        contact_id: contact.to_owned(),
        reason: "ContactUpdate".to_owned(),
        maybe_deleted: false,
    };
    record_webhook(&app.store, id, "ContactUpdate", &action, &AllConfigured, Duration::from_secs(5)).await.unwrap();
}

/// Defect 2: `GET /contacts/:id` carries fields search items lack; a hint for a contact that
/// did not change must not deliver it again under a new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_for_an_unchanged_contact_read_by_get_delivers_nothing() {
    let sandbox = start_sandbox(fast_ghl(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let app = crate::helpers::app(config(settings_for(&sandbox, dir.path()))).await.unwrap();
    sync_all(&app).await;
    let before = outbox_rows(&app).await.len();
    let location = sandbox.ghl.locations()[0].id.clone();
    let contacts = sandbox.ghl.contact_ids(&location);
    // The GET shape really differs from the search shape (the sandbox follows both schemas).
    let got = sandbox.ghl.contact(&contacts[0]).unwrap();
    assert!(got.get("attributionSource").is_some() || got.get("timezone").is_some(), "{got}");
    for (i, contact) in contacts.iter().enumerate() {
        hint(&app, &location, contact, &format!("unchanged-{i}")).await;
    }
    let summary = app.engine.run_hints(&location, ONCE).await.unwrap();
    assert_eq!(summary.contacts_seen, contacts.len() as u64, "every hinted contact was read by GET");
    assert_eq!(summary.changes(), 0, "{summary:?}");
    assert_eq!(outbox_rows(&app).await.len(), before, "nothing changed, nothing is delivered");
    // A spurious update would have folded into the pending rows: their versions prove it did not.
    assert_eq!(max_revision(&app).await, 1, "no contact got a new version");
    // And a real change read by GET still is one.
    assert!(sandbox.ghl.update_contact(&contacts[1], json!({"city": "Hintville"})));
    hint(&app, &location, &contacts[1], "changed-1").await;
    let summary = app.engine.run_hints(&location, ONCE).await.unwrap();
    assert_eq!(summary.events.get("contact.updated"), Some(&1), "{summary:?}");
    assert_eq!(max_revision(&app).await, 2);
    sandbox.stop().await;
}

/// Defect 3: a contact deleted between the search page and its children read answers 404 on
/// `/tasks`; the pass used to fail there forever (cursor stalled, deletes never delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_gone_before_its_children_are_read_is_deleted_and_the_pass_finishes() {
    let sandbox = start_sandbox(fast_ghl(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let app = crate::helpers::app(config(settings_for(&sandbox, dir.path()))).await.unwrap();
    sync_all(&app).await;
    let location = sandbox.ghl.locations()[0].id.clone();
    let gone = sandbox.ghl.contact_ids(&location)[3].clone();
    // Its children are due (its dateUpdated moved, or a hint named it), then it is deleted
    // before the pass reads them (no webhook: the sandbox sends none here).
    snapshot::mark_children_due(&app.store, &location, &gone).await.unwrap();
    assert!(sandbox.ghl.delete_contact(&gone));
    let summary = app.engine.run_once(&location, ONCE).await.expect("one gone contact never fails a pass");
    assert_eq!(summary.events.get("contact.deleted"), Some(&1), "{summary:?}");
    assert!(!snapshot::has_contact(&app.store, &location, &gone).await.unwrap());
    let rows = outbox_rows(&app).await;
    assert!(rows.contains(&("contact".to_owned(), gone.clone(), "deleted".to_owned())));
    // The next pass is quiet: nothing is left due, nothing fails.
    sandbox.ghl.reset_stats();
    app.engine.run_once(&location, ONCE).await.unwrap();
    let requests = sandbox.ghl.stats().requests;
    assert!(requests.keys().all(|route| !route.contains("/tasks") && !route.contains("/notes")), "{requests:?}");
    sandbox.stop().await;
}

/// Defect 7: a webhook for one contact ran a whole pass of its location (a search, the
/// sweep). It must cost the reads of that contact and its children only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_for_one_contact_costs_that_contacts_reads_and_no_search() {
    let sandbox = start_sandbox(fast_ghl(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    crate::helpers::listen_for_webhooks(&mut settings, &sandbox);
    settings.sync.contacts_interval = Dur::secs(3600);
    settings.sync.dirty_debounce = Dur::millis(50);
    let app = crate::helpers::app(config(settings)).await.unwrap();
    let addr = app.server_addr().unwrap();
    let store = app.store.clone();
    let locations: Vec<String> = sandbox.ghl.locations().into_iter().map(|l| l.id).collect();
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    // The first (scheduled) pass backfills and reconciles every location; then it is quiet
    // for an hour.
    let mut settled = false;
    for _ in 0..500 {
        let mut done = 0;
        for location in &locations {
            if ghl_sync::store::cursors::last_reconcile(&store, location).await.unwrap().is_some() {
                done += 1;
            }
        }
        if done == locations.len() {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(settled, "the first pass did not finish");
    tokio::time::sleep(Duration::from_millis(200)).await;
    sandbox.ghl.set_webhook_url(Some(format!("http://{addr}/webhooks/ghl").parse().unwrap()));
    sandbox.ghl.reset_stats();
    let delivered = sandbox.sink.accepted(Some("test")).len();

    let contact = sandbox.ghl.contact_ids(&locations[0])[0].clone();
    assert!(sandbox.ghl.update_contact(&contact, json!({"city": "Webhookton"})));
    assert!(
        eventually(Duration::from_secs(10), || {
            sandbox.sink.accepted(Some("test")).iter().skip(delivered).any(|d| d.body.contains("Webhookton"))
        })
        .await,
        "the change was not delivered"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = sandbox.ghl.stats().requests;
    let count = |route: &str| requests.get(route).copied().unwrap_or(0);
    assert_eq!(count("POST /contacts/search"), 0, "a hint is not a pass: {requests:?}");
    assert_eq!(count("GET /contacts/:contactId"), 1, "{requests:?}");
    assert_eq!(count("GET /contacts/:contactId/tasks"), 1, "{requests:?}");
    assert_eq!(count("GET /contacts/:contactId/notes"), 1, "{requests:?}");
    stop.cancel();
    daemon.await.unwrap().unwrap();
    sandbox.stop().await;
}

/// Defect 1 and the done-when test: 500 signed webhooks arriving while a 20k-contact backfill
/// commits pages are all answered 2xx, none lost, none refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_webhooks_during_a_twenty_thousand_contact_backfill_are_all_accepted() {
    let ghl = ghl_sync_sandbox::ghl::GhlOptions { locations: 1, ..fast_ghl(20_000) };
    let sandbox = start_sandbox(ghl).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    crate::helpers::listen_for_webhooks(&mut settings, &sandbox);
    settings.sync.contacts_interval = Dur::secs(3600);
    let app = crate::helpers::app(config(settings)).await.unwrap();
    let addr = app.server_addr().unwrap();
    let store = app.store.clone();
    let location = sandbox.ghl.locations()[0].id.clone();
    let contacts = sandbox.ghl.contact_ids(&location);
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    // Webhooks start once the backfill is committing pages.
    let mut committing = false;
    for _ in 0..1000 {
        if snapshot::contact_count(&store, &location).await.unwrap() > 0 {
            committing = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(committing, "the backfill never committed a page");
    sandbox.ghl.set_webhook_url(Some(format!("http://{addr}/webhooks/ghl").parse().unwrap()));
    for (i, contact) in contacts.iter().step_by(contacts.len() / 500).take(500).enumerate() {
        let event =
            json!({"type": "ContactUpdate", "locationId": location, "id": contact, "webhookId": format!("w-{i}")});
        sandbox.ghl.emit_webhook(event, WebhookMode::Normal);
        if i % 25 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let answered = || sandbox.ghl.sent_webhooks().iter().filter(|w| w["status"].is_number()).count();
    assert!(eventually(Duration::from_secs(60), || answered() >= 500).await, "only {} answered", answered());
    let sent = sandbox.ghl.sent_webhooks();
    let statuses: Vec<u64> = sent.iter().filter_map(|w| w["status"].as_u64()).collect();
    assert_eq!(statuses.len(), 500);
    assert!(
        statuses.iter().all(|s| *s == 200),
        "refused: {:?}",
        statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
    );
    let backfill_done = ghl_sync::store::cursors::contacts_watermark(&store, &location).await.unwrap().is_some();
    let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_inbox WHERE source = 'ghl'")
        .fetch_one(&crate::helpers::db(&store).await)
        .await
        .unwrap();
    assert_eq!(recorded, 500, "every accepted webhook is durable");
    stop.cancel();
    daemon.await.unwrap().unwrap();
    assert!(!backfill_done, "the webhooks arrived after the backfill, not during it: make it larger");
    sandbox.stop().await;
}
