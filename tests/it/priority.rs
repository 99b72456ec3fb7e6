//! Issue 22, budget by priority: bulk work (the children backfill, the sweep) stops at its
//! share of the day's budget without failing the pass, and incremental work goes on. Counted
//! in requests, not timed.

use ghl_sync::http::Priority;
use ghl_sync::store::snapshot;
use ghl_sync::sync::engine::RunOptions;
use serde_json::json;

use crate::helpers::{child_reads, config, fast_ghl, settings_for, start_sandbox};

#[tokio::test]
async fn bulk_work_stops_at_its_share_of_the_day_and_the_pass_still_succeeds() {
    let mut ghl = fast_ghl(100);
    ghl.locations = 1;
    let sandbox = start_sandbox(ghl).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    // 1,000 requests a day, bulk work at most 5 % of them: 50 child reads, for 100 contacts
    // that need 200.
    settings.limits.ghl_daily_budget = 1_000;
    settings.limits.bulk_daily_share = 0.05;
    // Tasks per contact: the share is spent on child reads only (a location-wide task search
    // would spend part of it on its pages).
    settings.sync.task_search = false;
    let app = crate::helpers::app(config(settings)).await.unwrap();
    let location = sandbox.ghl.locations()[0].id.clone();

    let summary = app.engine.run_once(&location, RunOptions::default()).await.unwrap();
    // The contacts stream (poll priority) is complete; the children backlog stopped at the share.
    assert_eq!(summary.contacts_changed, 100);
    assert_eq!(snapshot::contact_count(&app.store, &location).await.unwrap(), 100);
    assert_eq!(child_reads(&sandbox), 50, "bulk work spent exactly its share of the day");
    let due = snapshot::children_due(&app.store, &location, 1_000, &Default::default()).await.unwrap();
    assert!(due.len() >= 75, "{} contacts still wait for their children", due.len());

    // The next pass is not a failure either, and spends no bulk request: it is refused by the
    // limiter before reaching GHL.
    let summary = app.engine.run_once(&location, RunOptions::default()).await.unwrap();
    assert_eq!(summary.changes(), 0);
    assert_eq!(child_reads(&sandbox), 50);
    // Incremental work still has the rest of the day.
    let contact = sandbox.ghl.contact_ids(&location)[0].clone();
    assert!(app.ghl.get_contact(&location, &contact, Priority::Webhook).await.unwrap().is_some());
    assert!(app.ghl.get_contact(&location, &contact, Priority::Poll).await.unwrap().is_some());
    assert!(app.ghl.get_contact(&location, &contact, Priority::Sweep).await.is_err());

    // A contact changed in GHL: the poll finds it and its children are read at poll priority,
    // not refused with the backlog that waits for tomorrow's share.
    let changed = sandbox
        .ghl
        .contact_ids(&location)
        .into_iter()
        .find(|id| !due.contains(id))
        .expect("a contact whose children were read");
    assert!(sandbox.ghl.update_contact(&changed, json!({"city": "Freshton"})));
    let summary = app.engine.run_once(&location, RunOptions::default()).await.unwrap();
    assert_eq!(summary.contacts_changed, 1);
    assert_eq!(child_reads(&sandbox), 52, "the changed contact's tasks and notes were read, no backlog contact's");
    let still_due = snapshot::children_due(&app.store, &location, 1_000, &Default::default()).await.unwrap();
    assert!(!still_due.contains(&changed), "the changed contact's children are read");
    assert_eq!(still_due.len(), due.len(), "the backlog still waits for its share");
}
