//! Issue 22, "halve the children requests": a children backlog reads the location's tasks
//! with `POST /locations/:locationId/tasks/search` (staged in the store), notes per contact;
//! a token without the search's scope falls back to per-contact task reads with the same
//! outbox; paging by `skip` survives deletes and restarts. Counted in requests, not timed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use ghl_sync::app::App;
use ghl_sync::config::Secret;
use ghl_sync::store::{Store, staged_tasks};
use ghl_sync::sync::engine::{RunOptions, TASK_SEARCH_PAGE};
use ghl_sync_sandbox::Sandbox;
use ghl_sync_sandbox::ghl::GhlOptions;

use crate::helpers::{config, fast_ghl, settings_for, start_sandbox};
use crate::reliability::{assert_exactly_once, outbox};

const CONTACTS: usize = 150;
const SEARCH: &str = "POST /locations/:locationId/tasks/search";
const TASK_LISTS: &str = "GET /contacts/:contactId/tasks";
const NOTE_LISTS: &str = "GET /contacts/:contactId/notes";
const ONCE: RunOptions = RunOptions { dry_run: false, skip_sweep: true };

fn one_location(contacts: usize) -> GhlOptions {
    GhlOptions { locations: 1, max_tasks_per_contact: 4, ..fast_ghl(contacts) }
}

fn requests(sandbox: &Sandbox, route: &str) -> u64 {
    sandbox.ghl.stats().requests.get(route).copied().unwrap_or(0)
}

fn tasks_in(sandbox: &Sandbox, location: &str) -> usize {
    sandbox.ghl.contact_ids(location).iter().map(|c| sandbox.ghl.tasks(c).len()).sum()
}

/// Search pages a staging of `tasks` tasks needs: pages of [`TASK_SEARCH_PAGE`], each after
/// the first starting five items early (the overlap).
fn pages_for(tasks: usize) -> u64 {
    let limit = TASK_SEARCH_PAGE as usize;
    let (mut position, mut pages) = (0usize, 0);
    loop {
        let skip = position.saturating_sub(if position == 0 { 0 } else { 5 });
        let items = tasks.saturating_sub(skip).min(limit);
        pages += 1;
        position = skip + items;
        if items < limit {
            return pages;
        }
    }
}

async fn build(sandbox: &Sandbox, dir: &Path, pit: Option<String>) -> App {
    let mut settings = settings_for(sandbox, dir);
    if let Some(pit) = pit {
        settings.ghl.locations[0].pit = Some(Secret::new(pit));
    }
    crate::helpers::app(config(settings)).await.unwrap()
}

/// Task id → stored hash (hex).
async fn task_hashes(store: &Store) -> BTreeMap<String, String> {
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as("SELECT child_id, hash FROM children WHERE kind = 'task'")
        .fetch_all(&crate::helpers::db(store).await)
        .await
        .unwrap();
    rows.into_iter().map(|(id, hash)| (id, hash.iter().map(|b| format!("{b:02x}")).collect())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_reads_tasks_by_location_search_and_falls_back_per_contact_without_the_scope() {
    let sandbox = start_sandbox(one_location(CONTACTS)).await;
    let location = sandbox.ghl.locations()[0].id.clone();
    let tasks = tasks_in(&sandbox, &location);
    assert!(tasks > 2 * TASK_SEARCH_PAGE as usize, "several pages of tasks: {tasks}");

    // With the scope: tasks by search pages, notes per contact.
    let dir = tempfile::tempdir().unwrap();
    let app = build(&sandbox, dir.path(), None).await;
    sandbox.ghl.reset_stats();
    app.engine.run_once(&location, ONCE).await.unwrap();
    assert_exactly_once(&sandbox, &app.store).await;
    assert_eq!(requests(&sandbox, TASK_LISTS), 0, "no per-contact task read");
    assert_eq!(requests(&sandbox, SEARCH), pages_for(tasks), "task requests = search pages");
    assert_eq!(requests(&sandbox, NOTE_LISTS), CONTACTS as u64, "notes stay per contact");
    assert_eq!(staged_tasks::count(&app.store, &location).await.unwrap(), tasks as u64);

    // Without it (a PIT lacking `locations/tasks.readonly`): one refused search, then per
    // contact, the same outbox and the same task hashes; the location is not paused.
    let pit = sandbox.ghl.create_pit(&location, &["contacts.readonly", "contacts.write"]).unwrap();
    let fallback_dir = tempfile::tempdir().unwrap();
    let fallback = build(&sandbox, fallback_dir.path(), Some(pit)).await;
    sandbox.ghl.reset_stats();
    fallback.engine.run_once(&location, ONCE).await.unwrap();
    assert_exactly_once(&sandbox, &fallback.store).await;
    assert_eq!(requests(&sandbox, SEARCH), 1, "refused once");
    assert_eq!(requests(&sandbox, TASK_LISTS), CONTACTS as u64);
    assert_eq!(outbox(&fallback.store).await, outbox(&app.store).await);
    assert_eq!(task_hashes(&fallback.store).await, task_hashes(&app.store).await, "search and GET hash alike");
    let status = ghl_sync::store::locations::status_of(&fallback.store, &location).await.unwrap();
    assert!(!matches!(status.as_deref(), Some("needs_reauth")), "{status:?}");

    // The refusal is remembered: new contacts later are read per contact, no search again.
    for i in 0..120 {
        sandbox.ghl.create_contact(&location, serde_json::json!({"firstName": format!("Late{i}")}));
    }
    sandbox.ghl.reset_stats();
    fallback.engine.run_once(&location, ONCE).await.unwrap();
    assert_eq!(requests(&sandbox, SEARCH), 0);
    assert_exactly_once(&sandbox, &fallback.store).await;
    sandbox.stop().await;
}

/// Runs a full pass whose bulk part yields after `pages` task search pages.
async fn stage_some(app: &App, location: &str, pages: usize) {
    let asked = AtomicUsize::new(0);
    let should_yield = || asked.fetch_add(1, Ordering::SeqCst) + 1 >= pages;
    let summary = app.engine.run_sliced(location, &should_yield).await.unwrap();
    assert!(summary.bulk_remaining, "the staging yielded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_deleted_while_paging_is_neither_lost_nor_doubled() {
    let sandbox = start_sandbox(GhlOptions { children_bump_contact: true, ..one_location(CONTACTS) }).await;
    let location = sandbox.ghl.locations()[0].id.clone();
    let dir = tempfile::tempdir().unwrap();
    let app = build(&sandbox, dir.path(), None).await;
    stage_some(&app, &location, 1).await;
    let staging = staged_tasks::current(&app.store, &location).await.unwrap().unwrap();
    assert_eq!((staging.position, staging.done_at), (u64::from(TASK_SEARCH_PAGE), None));

    // Three tasks of the first page are deleted: every later task moves three places up, so
    // a next page at `skip = 100` would miss three.
    let first_page: Vec<String> =
        sqlx::query_scalar("SELECT task_id FROM staged_tasks WHERE location_id = $1 ORDER BY task_id LIMIT 3")
            .bind(&location)
            .fetch_all(&crate::helpers::db(&app.store).await)
            .await
            .unwrap();
    for id in &first_page {
        assert!(sandbox.ghl.delete_task(id));
    }
    let summary = app.engine.run_bulk(&location, &|| false).await.unwrap();
    assert!(!summary.bulk_remaining);

    // Every task that exists arrived exactly once, as created.
    let rows = outbox(&app.store).await;
    for contact in sandbox.ghl.contact_ids(&location) {
        for task in sandbox.ghl.tasks(&contact) {
            let key = ("task".to_owned(), task["id"].as_str().unwrap().to_owned());
            assert_eq!(rows.get(&key).map(Vec::as_slice), Some(&["created".to_owned()][..]), "{key:?}");
        }
    }
    // The deleted ones were read before their delete (as a per-contact read then would have):
    // the next pass sees their contacts' moved `dateUpdated` and deletes them (a `created`
    // still pending is superseded by the `deleted`).
    app.engine.run_once(&location, ONCE).await.unwrap();
    let rows = outbox(&app.store).await;
    for id in &first_page {
        let ops = rows.get(&("task".to_owned(), id.clone())).cloned().unwrap_or_default();
        assert!(ops.is_empty() || ops.last().map(String::as_str) == Some("deleted"), "{id}: {ops:?}");
    }
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_staging_resumes_it_with_nothing_doubled() {
    let sandbox = start_sandbox(one_location(CONTACTS)).await;
    let location = sandbox.ghl.locations()[0].id.clone();
    let tasks = tasks_in(&sandbox, &location);
    let dir = tempfile::tempdir().unwrap();
    let app = build(&sandbox, dir.path(), None).await;
    sandbox.ghl.reset_stats();
    stage_some(&app, &location, 2).await;
    assert_eq!(requests(&sandbox, SEARCH), 2);
    let before = staged_tasks::current(&app.store, &location).await.unwrap().unwrap();
    assert!(before.done_at.is_none() && before.position > 0);
    app.store.close().await;
    drop(app);

    // A new daemon on the same database resumes at the stored position.
    let app = build(&sandbox, dir.path(), None).await;
    app.engine.run_once(&location, ONCE).await.unwrap();
    let after = staged_tasks::current(&app.store, &location).await.unwrap().unwrap();
    assert_eq!(after.started_at, before.started_at, "the same staging, resumed");
    assert_eq!(after.restarts, 0);
    assert_eq!(requests(&sandbox, SEARCH), pages_for(tasks), "no page read twice but the overlap");
    assert_eq!(requests(&sandbox, TASK_LISTS), 0);
    assert_exactly_once(&sandbox, &app.store).await;
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_that_stays_due_is_read_once_per_pass_not_once_per_slice() {
    // Every notes read answers 404 while the contacts exist: each stays due after its read.
    let contacts = 40;
    let sandbox = start_sandbox(one_location(contacts)).await;
    let location = sandbox.ghl.locations()[0].id.clone();
    let dir = tempfile::tempdir().unwrap();
    let app = build(&sandbox, dir.path(), None).await;
    sandbox.ghl.set_fault(NOTE_LISTS, ghl_sync_sandbox::ghl::Fault { status: Some(404), ..Default::default() });
    sandbox.ghl.reset_stats();
    // Yield after every chunk (16 contacts): the pass is sliced into runs.
    let always = || true;
    let mut summary = app.engine.run_sliced(&location, &always).await.unwrap();
    let mut runs = 1;
    while summary.bulk_remaining {
        summary = app.engine.run_bulk(&location, &always).await.unwrap();
        runs += 1;
        assert!(runs < 10, "the backlog never ends");
    }
    assert_eq!(requests(&sandbox, NOTE_LISTS), contacts as u64, "each contact once in the pass");
    assert_eq!(runs, 4, "three slices of 16, 16 and 8 contacts, then the empty rest");
    // A new full pass reads them again (once).
    sandbox.ghl.reset_stats();
    app.engine.run_once(&location, ONCE).await.unwrap();
    assert_eq!(requests(&sandbox, NOTE_LISTS), contacts as u64);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_finds_deleted_and_changed_tasks_through_a_new_staging() {
    // No webhooks and no `dateUpdated` bump: only the sweep can notice these task edits.
    let sandbox = start_sandbox(one_location(CONTACTS)).await;
    let location = sandbox.ghl.locations()[0].id.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    // A sweep that covers every contact each run, with a staging never reused.
    settings.sync.contacts_interval = ghl_sync::config::Dur::millis(1);
    settings.sync.children_sweep_period = ghl_sync::config::Dur::millis(1);
    settings.limits.ghl_daily_budget = 1_000_000_000_000;
    let app = crate::helpers::app(config(settings)).await.unwrap();
    app.engine.run_once(&location, ONCE).await.unwrap();
    assert_exactly_once(&sandbox, &app.store).await;

    let contacts = sandbox.ghl.contact_ids(&location);
    let with_tasks: Vec<&String> = contacts.iter().filter(|c| sandbox.ghl.tasks(c).len() >= 2).take(2).collect();
    let deleted = sandbox.ghl.tasks(with_tasks[0])[0]["id"].as_str().unwrap().to_owned();
    let changed = sandbox.ghl.tasks(with_tasks[1])[1]["id"].as_str().unwrap().to_owned();
    assert!(sandbox.ghl.delete_task(&deleted));
    assert!(sandbox.ghl.update_task(&changed, serde_json::json!({"title": "Swept"})));
    tokio::time::sleep(std::time::Duration::from_millis(20)).await; // past `contacts_interval`
    sandbox.ghl.reset_stats();
    let summary = app.engine.run_once(&location, RunOptions::default()).await.unwrap();
    let tasks = tasks_in(&sandbox, &location);
    assert_eq!(requests(&sandbox, TASK_LISTS), 0, "the sweep took its tasks from the staging");
    assert_eq!(requests(&sandbox, SEARCH), pages_for(tasks));
    assert_eq!(requests(&sandbox, NOTE_LISTS), CONTACTS as u64);
    let rows = outbox(&app.store).await;
    // (A pending `created` row is superseded by a delete, and takes an update's record.)
    assert_eq!(rows[&("task".to_owned(), deleted.clone())].last().map(String::as_str), Some("deleted"));
    let stored: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT child_id, record FROM children WHERE child_id IN ($1, $2)")
            .bind(&deleted)
            .bind(&changed)
            .fetch_all(&crate::helpers::db(&app.store).await)
            .await
            .unwrap();
    assert_eq!(stored.len(), 1, "the deleted task is gone from the snapshot");
    let record = ghl_sync::store::codec::unpack(&stored[0].1).unwrap();
    assert_eq!((stored[0].0.as_str(), record["title"].as_str()), (changed.as_str(), Some("Swept")));
    let events: Vec<(&str, u64)> = summary.events.iter().map(|(e, n)| (e.as_str(), *n)).collect();
    assert_eq!(events, [("task.deleted", 1), ("task.updated", 1)], "nothing else changed");
    sandbox.stop().await;
}

/// An installation upgrading from before tasks were projected onto `TaskSchema`: its stored
/// task records kept every field GHL sent. The store's one-time upgrade on open re-projects
/// and re-hashes them, so the next read of the unchanged task delivers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_stored_before_the_projection_are_reprojected_on_open_and_not_delivered_again() {
    use ghl_sync::domain::EntityKind;
    use ghl_sync::domain::normalize::{normalize_child, value_hash};
    use ghl_sync::store::codec;

    let sandbox = start_sandbox(one_location(20)).await;
    let location = sandbox.ghl.locations()[0].id.clone();
    let contact = sandbox.ghl.contact_ids(&location).into_iter().find(|c| !sandbox.ghl.tasks(c).is_empty()).unwrap();
    let task_id = sandbox.ghl.tasks(&contact)[0]["id"].as_str().unwrap().to_owned();
    // Per-contact task reads (a PIT without the search's scope), as before issue 22.
    let pit = sandbox.ghl.create_pit(&location, &["contacts.readonly", "contacts.write"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = build(&sandbox, dir.path(), Some(pit.clone())).await;
    app.engine.run_once(&location, ONCE).await.unwrap();

    // The task as the old normalisation stored it: with the fields beyond `TaskSchema` a
    // per-contact read of real GHL carries; the database from before the upgrade marker.
    let fresh = |sandbox: &Sandbox| {
        let listed = sandbox.ghl.tasks(&contact).into_iter().find(|t| t["id"] == task_id.as_str()).unwrap();
        normalize_child(EntityKind::Task, listed.as_object().unwrap().clone())
    };
    let mut old = fresh(&sandbox);
    old.insert("locationId".into(), serde_json::json!(location));
    old.insert("status".into(), serde_json::json!("incompleted"));
    old.insert("isLocation".into(), serde_json::json!(false));
    let mut conn = crate::helpers::raw(&app.store).await;
    let updated = sqlx::query("UPDATE children SET record = $1, hash = $2 WHERE kind = 'task' AND child_id = $3")
        .bind(codec::pack(&serde_json::Value::Object(old.clone())))
        .bind(&value_hash(&old)[..])
        .bind(&task_id)
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 1);
    sqlx::query("DELETE FROM store_upgrades").execute(&mut conn).await.unwrap();
    // Everything so far was delivered: any row from here on is a new delivery.
    sqlx::query("UPDATE outbox SET status = 'done'").execute(&mut conn).await.unwrap();
    drop(conn);
    app.store.close().await;
    drop(app);

    // The upgrade: opening the store re-projects the record and re-hashes it.
    let app = build(&sandbox, dir.path(), Some(pit)).await;
    let (hash, record): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT hash, record FROM children WHERE kind = 'task' AND child_id = $1")
            .bind(&task_id)
            .fetch_one(&crate::helpers::db(&app.store).await)
            .await
            .unwrap();
    let expected = fresh(&sandbox);
    assert_eq!(codec::unpack(&record).unwrap(), serde_json::Value::Object(expected.clone()));
    assert_eq!(hash, value_hash(&expected).to_vec(), "the hash a fresh per-contact read produces");

    // A pass that reads the contact's tasks again delivers nothing for them.
    ghl_sync::store::snapshot::mark_children_due(&app.store, &location, &contact).await.unwrap();
    sandbox.ghl.reset_stats();
    let summary = app.engine.run_once(&location, ONCE).await.unwrap();
    assert!(requests(&sandbox, TASK_LISTS) >= 1, "the contact's tasks were read");
    assert!(!summary.events.iter().any(|(event, _)| event.as_str() == "task.updated"), "{:?}", summary.events);
    let updates: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE entity = 'task' AND operation = 'updated'")
            .fetch_one(&crate::helpers::db(&app.store).await)
            .await
            .unwrap();
    assert_eq!(updates, 0, "no task.updated enqueued");
    sandbox.stop().await;
}
