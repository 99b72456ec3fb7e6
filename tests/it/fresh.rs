//! Issue 22, "fresh while it backfills": the running daemon serves a webhook hint before the
//! rest of a location's children backfill, and a new location's contacts reach connectors
//! before its children are read. Counted in requests and in the order of events, not timed.

use std::time::Duration;

use ghl_sync::config::Dur;
use ghl_sync::store::snapshot;
use ghl_sync_sandbox::ghl::GhlOptions;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{child_reads, config, eventually, settings_for, start_sandbox};

const CONTACTS: usize = 240;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_hint_is_served_before_the_rest_of_the_children_backfill() {
    // A paced GHL (40 requests a second): the children backfill of 240 contacts is 480 reads,
    // many seconds, during which the hint arrives.
    let ghl = GhlOptions {
        locations: 1,
        contacts_per_location: CONTACTS,
        burst_max: 40,
        burst_window: Duration::from_secs(1),
        daily_max: 10_000_000,
        ..GhlOptions::default()
    };
    let sandbox = start_sandbox(ghl).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    settings.limits.ghl_burst_max = 40;
    settings.limits.ghl_burst_window = Dur::secs(1);
    crate::helpers::listen_for_webhooks(&mut settings, &sandbox);
    settings.sync.contacts_interval = Dur::secs(3600);
    let app = crate::helpers::app(config(settings)).await.unwrap();
    let addr = app.server_addr().unwrap();
    let store = app.store.clone();
    let location = sandbox.ghl.locations()[0].id.clone();
    let contacts = sandbox.ghl.contact_ids(&location);
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));

    // Contacts first: when the first child read happens, every contact is already stored
    // (and in the outbox), the stream did not wait for children.
    assert!(eventually(Duration::from_secs(60), || child_reads(&sandbox) > 0).await, "no child read started");
    let stored = snapshot::contact_count(&store, &location).await.unwrap();
    assert_eq!(stored, CONTACTS as u64, "the contacts stream finished before the children backlog");

    // A change made in GHL during the backfill, announced by a webhook.
    sandbox.ghl.set_webhook_url(Some(format!("http://{addr}/webhooks/ghl").parse().unwrap()));
    let edited = contacts[CONTACTS / 2].clone();
    assert!(sandbox.ghl.update_contact(&edited, json!({"city": "Freshton"})));
    let delivered = || sandbox.sink.accepted(Some("test")).iter().any(|d| d.body.contains("Freshton"));
    assert!(eventually(Duration::from_secs(60), delivered).await, "the edit was never delivered");
    let reads_when_served = child_reads(&sandbox);
    // The hint itself marks the edited contact's children due again: count the others.
    let backlog_when_served = snapshot::children_due(&store, &location, CONTACTS, &Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|id| *id != edited)
        .count();
    assert!(
        backlog_when_served > 0,
        "the hint waited for the whole children backfill ({reads_when_served} child reads before it)"
    );

    // The backlog then resumes and finishes: every task and note exactly once.
    let mut finished = false;
    for _ in 0..1200 {
        if snapshot::children_due(&store, &location, 1, &Default::default()).await.unwrap().is_empty() {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(finished, "the children backlog did not finish after the hint");
    let is_child = |(entity, _): &&(String, String)| entity != "contact";
    let outbox = crate::reliability::outbox(&store).await;
    let expected: Vec<_> = crate::reliability::expected(&sandbox).into_iter().collect();
    let expected_children: Vec<_> = expected.iter().filter(is_child).collect();
    for child in &expected_children {
        assert_eq!(outbox.get(*child).map(Vec::len), Some(1), "{child:?}");
    }
    assert_eq!(outbox.keys().filter(is_child).count(), expected_children.len());
    stop.cancel();
    daemon.await.unwrap().unwrap();
    sandbox.stop().await;
}
