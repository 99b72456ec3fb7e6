//! Rules end to end, continued: the appointment triggers from the sandbox's appointment
//! writes, the schedule trigger in the running daemon (exactly once per rule, slot and
//! contact, also across a restart), and `business.linked` with the business's contacts.

use std::time::Duration;

use ghl_sync_sandbox::Sandbox;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{capture, config, eventually};
use crate::rules::{actions_of, has_tag, hint, location, sandbox, settings, sync, sync_and_drain, tags};

const APPOINTMENT_RULES: &str = r#"
[[rules]]
name = "appt-created"
on = ["appointment.created"]
when = "new.title == 'Intro call'"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-appt-created"]

[[rules]]
name = "appt-updated"
on = ["appointment.updated"]
when = "'title' in changed"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-appt-updated"]

[[rules]]
name = "appt-cancelled"
on = ["appointment.cancelled"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-appt-cancelled"]

[[rules]]
name = "appt-deleted"
on = ["appointment.deleted"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-appt-deleted"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_appointment_trigger_fires_once_from_the_sandboxs_appointment_writes() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = location(&sandbox);
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), APPOINTMENT_RULES))).await.unwrap();
    assert!(app.engine.settings().appointments, "`appointments = \"auto\"` reads them for appointment.* rules");
    let id = sandbox.ghl.create_contact(&location, json!({"firstName": "Ann", "email": "ann@example.com"}));
    sync_and_drain(&app).await;
    let steps: [(&str, &str); 4] = [
        ("appt-created", "r-appt-created"),
        ("appt-updated", "r-appt-updated"),
        ("appt-cancelled", "r-appt-cancelled"),
        ("appt-deleted", "r-appt-deleted"),
    ];
    assert!(steps.iter().all(|(_, tag)| !has_tag(&sandbox, &id, tag)));

    // Act: one GHL appointment write at a time, each followed by its webhook's hint and a pass.
    let appointment = sandbox
        .ghl
        .create_appointment(&id, json!({"title": "Intro call", "startTime": "2031-03-04T10:00:00Z"}))
        .unwrap();
    hint(&app, &location, &id).await;
    sync_and_drain(&app).await;
    assert!(has_tag(&sandbox, &id, "r-appt-created"));
    assert!(!has_tag(&sandbox, &id, "r-appt-updated"), "creating is not updating");

    assert!(sandbox.ghl.update_appointment(&appointment, json!({"title": "Product demo"})));
    hint(&app, &location, &id).await;
    sync_and_drain(&app).await;
    assert!(has_tag(&sandbox, &id, "r-appt-updated"));
    assert!(!has_tag(&sandbox, &id, "r-appt-cancelled"), "a rename is not a cancellation");

    assert!(sandbox.ghl.cancel_appointment(&appointment));
    hint(&app, &location, &id).await;
    sync_and_drain(&app).await;
    assert!(has_tag(&sandbox, &id, "r-appt-cancelled"));
    assert!(!has_tag(&sandbox, &id, "r-appt-deleted"));

    assert!(sandbox.ghl.delete_appointment(&appointment));
    hint(&app, &location, &id).await;
    sync_and_drain(&app).await;

    // Another hinted pass over unchanged data fires nothing again.
    hint(&app, &location, &id).await;
    sync_and_drain(&app).await;

    // Assert: each rule acted exactly once and left its tag.
    for (rule, tag) in steps {
        assert!(has_tag(&sandbox, &id, tag), "rule {rule}: {:?}", tags(&sandbox.ghl.contact(&id).unwrap()));
        assert_eq!(actions_of(&app, rule).await, vec!["done"], "rule {rule} acted exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appointments_are_not_read_when_no_rule_names_an_appointment_trigger() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let rules =
        APPOINTMENT_RULES.replace("on = [\"appointment.", "on = [\"task.").replace("task.cancelled", "task.completed");
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), &rules))).await.unwrap();
    assert!(!app.engine.settings().appointments, "no rule or connector asks for appointments");
    let id = sandbox.ghl.create_contact(&sandbox.ghl.locations()[0].id, json!({"firstName": "Al"}));
    sandbox.ghl.create_appointment(&id, json!({"title": "Intro call", "startTime": "2031-03-04T10:00:00Z"})).unwrap();
    sandbox.ghl.reset_stats();
    sync(&app).await;
    let stats = sandbox.ghl.stats();
    assert_eq!(stats.requests.get("GET /contacts/:contactId/appointments"), None, "{stats:?}");
    assert!(stats.requests.get("GET /contacts/:contactId/tasks").is_some_and(|n| *n > 0), "children were read");
}

/// `HH:MM` (UTC) of two minutes ago: the newest slot of a daily schedule at that time is
/// two minutes old now, also just after midnight (it is then yesterday's).
fn two_minutes_ago() -> String {
    let now_ms =
        i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let minute_of_day = (now_ms - 2 * 60_000).rem_euclid(86_400_000) / 60_000;
    format!("{:02}:{:02}", minute_of_day / 60, minute_of_day % 60)
}

fn schedule_rules() -> String {
    format!(
        r#"
[[rules]]
name = "vip-call"
on = ["schedule"]
schedule = {{ at = "{}" }}
when = "'vip' in contact.tags"
[[rules.actions]]
do = "ghl.create_task"
title = "Call {{contact.firstName}}"
body = "scheduled for {{data.slot_at}}"
due = "in 1d"
"#,
        two_minutes_ago()
    )
}

const SCHEDULE_RAN: &str = "schedule rule `vip-call` ran for the slot";

/// The `actions` field of each "schedule rule ran" log line that covered every location (none
/// waiting for its first full read), in order.
fn schedule_runs(logs: &str) -> Vec<u64> {
    logs.lines()
        .filter(|line| line.contains(SCHEDULE_RAN))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["waiting_locations"].as_u64() == Some(0))
        .filter_map(|event| event["actions"].as_u64())
        .collect()
}

// Current-thread runtime: the log capture (a thread-local default) sees every task.
#[tokio::test(flavor = "current_thread")]
async fn a_schedule_rule_creates_one_task_per_selected_contact_and_slot_also_across_a_restart() {
    let (logs, _guard) = capture();
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = location(&sandbox);
    let vip = sandbox.ghl.create_contact(&location, json!({"firstName": "Vi", "tags": ["vip", "lead"]}));
    let others = [
        sandbox.ghl.create_contact(&location, json!({"firstName": "Lee", "tags": ["lead"]})),
        sandbox.ghl.create_contact(&location, json!({"firstName": "Noa"})),
    ];
    let rules = schedule_rules();
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), &rules))).await.unwrap();

    // First start, empty store: the slot (two minutes old) waits for the first full read of
    // the location, then fires; the vip contact gets its task.
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    let called = |s: &Sandbox| s.ghl.tasks(&vip).iter().filter(|t| t["title"] == "Call Vi").count();
    assert!(eventually(Duration::from_secs(30), || called(&sandbox) == 1).await, "no task for the vip contact");
    assert!(eventually(Duration::from_secs(10), || schedule_runs(&logs.text()).len() == 1).await);
    stop.cancel();
    daemon.await.unwrap().unwrap();

    // Second start over the same store: the slot is still the newest and within the catch-up
    // window, so it is planned again, under the same keys: nothing new.
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), &rules))).await.unwrap();
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    assert!(eventually(Duration::from_secs(30), || schedule_runs(&logs.text()).len() == 2).await);
    // Let the dispatcher run a few passes: a duplicate would be created now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    daemon.await.unwrap().unwrap();

    assert_eq!(schedule_runs(&logs.text()), vec![1, 0], "one action planned on the first start, none on the second");
    let tasks = sandbox.ghl.tasks(&vip);
    assert_eq!(called(&sandbox), 1, "{tasks:?}");
    assert!(tasks.iter().any(|t| t["body"].as_str().is_some_and(|b| b.starts_with("scheduled for "))), "{tasks:?}");
    for other in &others {
        assert!(sandbox.ghl.tasks(other).is_empty(), "the condition did not select {other}");
    }
    let store = crate::helpers::open_store(&dir.path().join("ghl-sync.db")).await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT status FROM outbox WHERE connector = 'rule.vip-call'")
        .fetch_all(&crate::helpers::db(&store).await)
        .await
        .unwrap();
    assert_eq!(rows, vec!["done"]);
    store.close().await;
    sandbox.stop().await;
}

const BUSINESS_RULES: &str = r#"
[[rules]]
name = "with-colleagues"
on = ["business.linked"]
when = "size(data.business_contacts) > 0 && new.id in data.business_contacts"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-business"]

[[rules]]
name = "big-business"
on = ["business.linked"]
when = "size(data.business_contacts) > 1000"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-big-business"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_linked_carries_the_businesss_contacts_for_the_condition() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = location(&sandbox);
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), BUSINESS_RULES))).await.unwrap();
    let business = sandbox.ghl.businesses(&location)[0].id.clone();
    let id = sandbox.ghl.create_contact(&location, json!({"firstName": "Bea", "email": "bea@example.com"}));
    sync_and_drain(&app).await;
    sandbox.ghl.reset_stats();

    assert!(sandbox.ghl.set_business(&id, Some(&business)));
    sync_and_drain(&app).await;

    let listed = sandbox.ghl.stats().requests.get("GET /contacts/business/:businessId").copied().unwrap_or(0);
    assert!(listed >= 1, "the business's contacts were read");
    assert!(has_tag(&sandbox, &id, "r-business"), "{:?}", tags(&sandbox.ghl.contact(&id).unwrap()));
    assert_eq!(actions_of(&app, "with-colleagues").await, vec!["done"]);
    assert!(!has_tag(&sandbox, &id, "r-big-business"), "the condition saw the real count");
    assert!(actions_of(&app, "big-business").await.is_empty());
}
