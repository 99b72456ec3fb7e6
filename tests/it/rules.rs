//! Rules end to end against the sandbox: each trigger fires from a GHL mutation, each action's
//! effect lands in GHL exactly once (also after a replay and after a crash between the action's
//! key and its GHL call), a rule's own write does not fire it again, chains are cut at the depth.

use std::time::Duration;

use ghl_sync::app::App;
use ghl_sync::config::{Dur, Settings};
use ghl_sync::sync::engine::RunOptions;
use ghl_sync_sandbox::Sandbox;
use ghl_sync_sandbox::ghl::GhlOptions;
use serde_json::{Value, json};

use crate::helpers::{config, settings_for, start_sandbox};

/// One location, no seeded contacts, tasks, notes or appointments, limits that never pace.
pub(crate) async fn sandbox() -> Sandbox {
    start_sandbox(GhlOptions {
        locations: 1,
        contacts_per_location: 0,
        max_tasks_per_contact: 0,
        max_notes_per_contact: 0,
        max_appointments_per_contact: 0,
        burst_max: 100_000,
        burst_window: Duration::from_secs(1),
        daily_max: 10_000_000,
        ..GhlOptions::default()
    })
    .await
}

/// `settings` plus the `[[rules]]` and `[rule_settings]` of `rules_toml`, with short backoffs.
pub(crate) fn with_rules(mut settings: Settings, rules_toml: &str) -> Settings {
    settings.dispatch.backoff_base = Dur::millis(5);
    settings.dispatch.backoff_max = Dur::millis(20);
    let rules: Settings = toml::from_str(rules_toml).unwrap_or_else(|e| panic!("rules TOML: {e}"));
    settings.rules = rules.rules;
    settings.rule_settings = rules.rule_settings;
    settings
}

/// Sandbox settings plus the rules of `rules_toml` ([`with_rules`]).
pub(crate) fn settings(sandbox: &Sandbox, dir: &std::path::Path, rules_toml: &str) -> Settings {
    with_rules(settings_for(sandbox, dir), rules_toml)
}

pub(crate) fn location(sandbox: &Sandbox) -> String {
    sandbox.ghl.locations()[0].id.clone()
}

/// One full pass (with the children sweep, so new tasks and notes are read).
pub(crate) async fn sync(app: &App) {
    for (location, result) in app.sync_once(None, RunOptions { dry_run: false, skip_sweep: false }).await.unwrap() {
        result.unwrap_or_else(|e| panic!("sync of {location} failed: {e}"));
    }
}

async fn pending_rule_rows(app: &App) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND (connector = 'rules' OR connector LIKE 'rule.%')",
    )
    .fetch_one(&crate::helpers::db(&app.store).await)
    .await
    .unwrap()
}

/// Dispatcher passes until no trigger event or action is pending (bounded).
pub(crate) async fn drain(app: &App) {
    for _ in 0..400 {
        app.dispatcher.run_once().await;
        if pending_rule_rows(app).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("rule rows not drained: {} pending", pending_rule_rows(app).await);
}

/// What a `TaskCreate` / `NoteUpdate` / … webhook does: the contact's children are read on the next pass.
pub(crate) async fn hint(app: &App, location: &str, contact: &str) {
    ghl_sync::store::snapshot::mark_children_due(&app.store, location, contact).await.unwrap();
}

pub(crate) async fn sync_and_drain(app: &App) {
    sync(app).await;
    drain(app).await;
}

/// Action rows of `rule` by status.
pub(crate) async fn actions_of(app: &App, rule: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT status FROM outbox WHERE connector = $1 ORDER BY id")
        .bind(format!("rule.{rule}"))
        .fetch_all(&crate::helpers::db(&app.store).await)
        .await
        .unwrap()
}

pub(crate) fn tags(contact: &Value) -> Vec<String> {
    contact["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect()
}

/// Requests the sandbox served for routes that satisfy `route`.
pub(crate) fn has_tag(sandbox: &Sandbox, contact: &str, tag: &str) -> bool {
    tags(&sandbox.ghl.contact(contact).unwrap()).iter().any(|t| t == tag)
}

/// Requests the sandbox served for routes that satisfy `route`.
pub(crate) fn requests(sandbox: &Sandbox, route: impl Fn(&str) -> bool) -> u64 {
    sandbox.ghl.stats().requests.iter().filter(|(r, _)| route(r)).map(|(_, n)| *n).sum()
}

const TRIGGER_RULES: &str = r#"
[rule_settings]
max_depth = 3

[[rules]]
name = "created"
on = ["contact.created"]
when = "'lead' in new.tags"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-created"]

[[rules]]
name = "updated"
on = ["contact.updated"]
when = "'firstName' in changed"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-updated"]

[[rules]]
name = "tagged"
on = ["tag.added"]
when = "'vip' in tags_added"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-tagged"]

[[rules]]
name = "untagged"
on = ["tag.removed"]
when = "'vip' in tags_removed"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-untagged"]

[[rules]]
name = "dnd"
on = ["contact.dnd_changed"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-dnd"]

[[rules]]
name = "linked"
on = ["business.linked"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-linked"]

[[rules]]
name = "unlinked"
on = ["business.unlinked"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-unlinked"]

[[rules]]
name = "task-created"
on = ["task.created"]
[[rules.actions]]
do = "ghl.create_note"
body = "follow up on {new.title}"

[[rules]]
name = "task-updated"
on = ["task.updated"]
when = "'title' in changed"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-task-updated"]

[[rules]]
name = "task-completed"
on = ["task.completed"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-task-completed"]

[[rules]]
name = "task-deleted"
on = ["task.deleted"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-task-deleted"]

[[rules]]
name = "note-created"
on = ["note.created"]
when = "new.body.startsWith('user')"
[[rules.actions]]
do = "ghl.create_task"
title = "Read the note"
body = "{new.body}"
due = "in 1d"

[[rules]]
name = "note-updated"
on = ["note.updated"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-note-updated"]

[[rules]]
name = "note-deleted"
on = ["note.deleted"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-note-deleted"]

[[rules]]
name = "deleted"
on = ["contact.deleted"]
[[rules.actions]]
do = "deliver"
connector = "webhook.test"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_trigger_fires_from_a_sandbox_mutation_and_each_action_lands_once() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = location(&sandbox);
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), TRIGGER_RULES))).await.unwrap();
    let business = sandbox.ghl.businesses(&location)[0].id.clone();

    let id = sandbox
        .ghl
        .create_contact(&location, json!({"firstName": "Ada", "email": "ada@example.com", "tags": ["lead"]}));
    sync_and_drain(&app).await;
    assert!(tags(&sandbox.ghl.contact(&id).unwrap()).contains(&"r-created".to_owned()));

    assert!(
        sandbox
            .ghl
            .update_contact(&id, json!({"firstName": "Ada B", "tags": ["lead", "r-created", "vip"], "dnd": true}))
    );
    assert!(sandbox.ghl.set_business(&id, Some(&business)));
    sync_and_drain(&app).await;
    assert!(sandbox.ghl.update_contact(
        &id,
        json!({"tags": tags(&sandbox.ghl.contact(&id).unwrap()).into_iter().filter(|t| t != "vip").collect::<Vec<_>>()})
    ));
    assert!(sandbox.ghl.set_business(&id, None));
    sync_and_drain(&app).await;

    let task = sandbox
        .ghl
        .create_task(
            &id,
            json!({"title": "Call", "body": "about pricing", "dueDate": "2026-12-10T09:00:00Z", "completed": false}),
        )
        .unwrap();
    let note = sandbox.ghl.create_note(&id, json!({"body": "user wrote this"})).unwrap();
    hint(&app, &location, &id).await;
    sync_and_drain(&app).await;
    assert!(sandbox.ghl.update_task(&task, json!({"title": "Call back"})));
    assert!(sandbox.ghl.update_note(&note, json!({"body": "user wrote that"})));
    hint(&app, &location, &id).await;
    sync_and_drain(&app).await;
    assert!(sandbox.ghl.complete_task(&task, true));
    hint(&app, &location, &id).await;
    sync_and_drain(&app).await;
    assert!(sandbox.ghl.delete_task(&task));
    assert!(sandbox.ghl.delete_note(&note));
    hint(&app, &location, &id).await;
    sync_and_drain(&app).await;

    let contact = sandbox.ghl.contact(&id).unwrap();
    for rule in [
        "created",
        "updated",
        "tagged",
        "untagged",
        "dnd",
        "linked",
        "unlinked",
        "task-updated",
        "task-completed",
        "task-deleted",
        "note-updated",
        "note-deleted",
    ] {
        assert!(tags(&contact).contains(&format!("r-{rule}")), "rule {rule} left its tag: {:?}", tags(&contact));
        assert_eq!(actions_of(&app, rule).await, vec!["done"], "rule {rule} acted exactly once");
    }
    // The user's task → one note; the user's note → one task, whose `task.created` (caused by
    // rule note-created, depth 1) chains into task-created once more; that rule's note does not
    // start with "user", so the chain ends there.
    let notes = sandbox.ghl.notes(&id);
    assert_eq!(notes.iter().filter(|n| n["body"] == "follow up on Call").count(), 1, "{notes:?}");
    assert_eq!(notes.iter().filter(|n| n["body"] == "follow up on Read the note").count(), 1, "{notes:?}");
    let tasks = sandbox.ghl.tasks(&id);
    assert_eq!(tasks.iter().filter(|t| t["title"] == "Read the note").count(), 1, "{tasks:?}");
    assert_eq!(actions_of(&app, "task-created").await, vec!["done", "done"]);
    assert_eq!(actions_of(&app, "note-created").await, vec!["done"]);

    // Another pass over unchanged data: nothing fires again, nothing is written again.
    let writes = |s: &Sandbox| requests(s, |r| r.starts_with("POST /contacts/:") || r.starts_with("PUT"));
    let before = writes(&sandbox);
    sync_and_drain(&app).await;
    assert_eq!(writes(&sandbox), before, "no second write");

    // A replay of every action: the keys are done, GHL sees no second write.
    let tag_posts = requests(&sandbox, |r| r.starts_with("POST /contacts/:contactId/tags"));
    let creates = requests(&sandbox, |r| r.ends_with("/tasks") || r.ends_with("/notes"));
    let mut replayed = 0;
    for rule in ["created", "tagged", "task-created", "note-created", "task-updated"] {
        let done = ghl_sync::store::rules::replay_actions(&app.store, rule, None, None, None, None).await.unwrap();
        replayed += done.enqueued;
    }
    assert_eq!(replayed, 6, "every performed action of those rules is queued again");
    drain(&app).await;
    assert_eq!(requests(&sandbox, |r| r.starts_with("POST /contacts/:contactId/tags")), tag_posts, "no tag re-sent");
    assert_eq!(
        requests(&sandbox, |r| r.ends_with("/tasks") || r.ends_with("/notes")),
        creates,
        "no task or note re-created"
    );

    // contact.deleted → delivered to the webhook connector under the action's key.
    let before = sandbox.sink.accepted(Some("test")).len();
    assert!(sandbox.ghl.delete_contact(&id));
    app.engine.reconcile(&location, RunOptions::default()).await.unwrap();
    drain(&app).await;
    for _ in 0..50 {
        if sandbox.sink.accepted(Some("test")).len() > before {
            break;
        }
        app.dispatcher.run_once().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(actions_of(&app, "deleted").await, vec!["done"]);
    assert!(sandbox.sink.accepted(Some("test")).len() > before, "the deleted contact reached webhook.test");
}

const CHAIN_RULES: &str = r#"
[rule_settings]
max_depth = 2

[[rules]]
name = "self"
on = ["tag.added"]
when = "'x' in tags_added"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["x"]

[[rules]]
name = "touch"
on = ["task.updated"]
[[rules.actions]]
do = "ghl.update_task"
body = "touched by a rule"

[[rules]]
name = "step1"
on = ["tag.added"]
when = "'c0' in tags_added"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["c1"]

[[rules]]
name = "step2"
on = ["tag.added"]
when = "'c1' in tags_added"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["c2"]

[[rules]]
name = "step3"
on = ["tag.added"]
when = "'c2' in tags_added"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["c3"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_does_not_fire_on_its_own_write_and_a_chain_stops_at_the_depth() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = location(&sandbox);
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), CHAIN_RULES))).await.unwrap();
    let id = sandbox.ghl.create_contact(&location, json!({"firstName": "Bo", "email": "bo@example.com"}));
    sync_and_drain(&app).await;

    assert!(sandbox.ghl.update_contact(&id, json!({"tags": ["x", "c0"]})));
    sync_and_drain(&app).await;
    sync_and_drain(&app).await;

    // A rule whose own task update is a `task.updated` (the sync reads it back, too).
    let task = sandbox
        .ghl
        .create_task(&id, json!({"title": "Call", "body": "b", "dueDate": "2026-12-10T09:00:00Z", "completed": false}))
        .unwrap();
    hint(&app, &location, &id).await;
    sync_and_drain(&app).await;
    assert!(sandbox.ghl.update_task(&task, json!({"title": "Call back"})));
    for _ in 0..3 {
        hint(&app, &location, &id).await;
        sync_and_drain(&app).await;
    }
    assert_eq!(actions_of(&app, "touch").await, vec!["done"], "its own task update does not fire it again");
    let body = sandbox.ghl.tasks(&id).into_iter().find(|t| t["id"] == task.as_str()).unwrap()["body"].clone();
    assert_eq!(body, "touched by a rule");

    let contact_tags = tags(&sandbox.ghl.contact(&id).unwrap());
    assert_eq!(actions_of(&app, "self").await, vec!["done"], "its own tag.added does not fire it again");
    assert!(contact_tags.contains(&"c1".to_owned()) && contact_tags.contains(&"c2".to_owned()), "{contact_tags:?}");
    assert!(!contact_tags.contains(&"c3".to_owned()), "the chain is cut at depth 2: {contact_tags:?}");
    assert!(actions_of(&app, "step3").await.is_empty());
}

const TASK_RULE: &str = r#"
[[rules]]
name = "call"
on = ["tag.added"]
when = "'hot' in tags_added"
[[rules.actions]]
do = "ghl.create_task"
title = "Call {contact.firstName}"
body = "They became hot"
due = "in 2h"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_an_actions_key_and_its_ghl_call_creates_the_task_once() {
    for call_went_through in [false, true] {
        let sandbox = sandbox().await;
        let dir = tempfile::tempdir().unwrap();
        let location = location(&sandbox);
        let app = crate::helpers::app(config(settings(&sandbox, dir.path(), TASK_RULE))).await.unwrap();
        let id = sandbox.ghl.create_contact(&location, json!({"firstName": "Cy", "email": "cy@example.com"}));
        sync_and_drain(&app).await;
        assert!(sandbox.ghl.update_contact(&id, json!({"tags": ["hot"]})));
        sync(&app).await;
        // One dispatcher pass delivers the trigger event; the action row it stores is due after
        // the pass began, so it waits for the next pass.
        app.dispatcher.run_once().await;
        assert_eq!(actions_of(&app, "call").await, vec!["pending"]);
        let key: String = sqlx::query_scalar("SELECT idempotency_key FROM outbox WHERE connector = 'rule.call'")
            .fetch_one(&crate::helpers::db(&app.store).await)
            .await
            .unwrap();
        // The state `kill -9` leaves: the key recorded `pending` before the call, and the call
        // made (or not) when the process died.
        let content = ghl_sync::domain::child_content_key(Some("Call Cy"), Some("They became hot"));
        let write = ghl_sync::store::writebacks::NewWrite {
            key: &key,
            location: &location,
            contact_id: Some(&id),
            kind: "task",
            content: Some(&content),
        };
        ghl_sync::store::writebacks::begin(&app.store, &write).await.unwrap();
        if call_went_through {
            sandbox.ghl.create_task(&id, json!({"title": "Call Cy", "body": "They became hot", "dueDate": "2026-12-10T09:00:00Z", "completed": false}));
        }
        drain(&app).await;
        let tasks = sandbox.ghl.tasks(&id);
        assert_eq!(
            tasks.iter().filter(|t| t["title"] == "Call Cy").count(),
            1,
            "call made before the crash: {call_went_through}; {tasks:?}"
        );
        assert_eq!(actions_of(&app, "call").await, vec!["done"]);
    }
}
