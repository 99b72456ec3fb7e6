//! The rule action executor against the sandbox: each action's effect exactly once (also on
//! replay and after a crash between the key and the GHL call), deletes refused unless
//! allowed, and the follow-on events written with their origin.

use std::sync::Arc;
use std::time::Duration;

use ghl_sync::connectors::{Connector, Delivery, Outcome};
use ghl_sync::domain::{EntityKind, Operation, child_content_key};
use ghl_sync::rules::executor::RuleActions;
use ghl_sync::rules::{Action, Origin, PlannedAction, RuleEvent};
use ghl_sync::store::writebacks::{self, Begun, NewWrite};
use ghl_sync::store::{Store, codec, outbox};
use ghl_sync::writeback::WriteBack;
use ghl_sync_sandbox::ghl::GhlOptions;
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{config, settings_for};

async fn sandbox() -> Sandbox {
    let ghl = GhlOptions {
        locations: 1,
        contacts_per_location: 0,
        max_tasks_per_contact: 0,
        max_notes_per_contact: 0,
        burst_max: 100_000,
        burst_window: Duration::from_secs(1),
        daily_max: 10_000_000,
        ..GhlOptions::default()
    };
    Sandbox::start(SandboxOptions { ghl, ..Default::default() }, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn planned(location: &str, contact: &str, index: usize, action: Action) -> PlannedAction {
    let key = ghl_sync::writeback::key(&["rule", "r", "event-1", &index.to_string()]);
    PlannedAction {
        rule: "r".into(),
        index,
        key,
        event_key: "event-1".into(),
        trigger: "contact.created".into(),
        location_id: location.into(),
        contact_id: Some(contact.into()),
        depth: 1,
        action,
        entity: Some(EntityKind::Contact),
        entity_id: Some(contact.into()),
        record: Some(json!({"id": contact})),
    }
}

fn delivery(id: i64, planned: &PlannedAction) -> Delivery {
    Delivery {
        id,
        location_id: planned.location_id.clone(),
        entity: EntityKind::Action,
        entity_id: planned.key.clone(),
        contact_id: planned.contact_id.clone(),
        operation: Operation::Created,
        changed_at_ms: 1,
        idempotency_key: planned.key.clone(),
        record: serde_json::to_value(planned).unwrap(),
        contact: None,
        attempt: 1,
    }
}

async fn follow_on_events(store: &Store) -> Vec<RuleEvent> {
    outbox::due(store, "rules", i64::MAX, 1000, None)
        .await
        .unwrap()
        .into_iter()
        .map(|row| {
            let row = row.unwrap();
            assert_eq!(row.entity, EntityKind::Event);
            serde_json::from_value(codec::unpack(&row.record.unwrap()).unwrap()).unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_action_takes_effect_once_also_on_replay_and_after_a_crash_before_the_call() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = sandbox.ghl.locations()[0].id.clone();
    let contact = sandbox.ghl.create_contact(&location, json!({"firstName": "Rule", "email": "rule@example.test"}));
    let app = crate::helpers::app(config(settings_for(&sandbox, dir.path()))).await.unwrap();
    let writeback = WriteBack::new(app.store.clone(), app.ghl.clone(), Arc::new(Vec::new()));
    let actions = RuleActions::new("r", writeback.clone(), app.store.clone(), false, CancellationToken::new());

    let c = contact.clone();
    let batch: Vec<PlannedAction> = vec![
        planned(&location, &c, 0, Action::AddTags { contact_id: c.clone(), tags: vec!["vip".into()] }),
        planned(
            &location,
            &c,
            1,
            Action::CreateTask {
                contact_id: c.clone(),
                title: "Call back".into(),
                body: Some("from a rule".into()),
                due: "2030-01-01T09:00:00Z".into(),
                assigned_to: None,
            },
        ),
        planned(&location, &c, 2, Action::CreateNote { contact_id: c.clone(), body: "noted by a rule".into() }),
        planned(&location, &c, 3, Action::LinkBusiness { contact_id: c.clone(), business_id: Some("biz-1".into()) }),
        planned(
            &location,
            &c,
            4,
            Action::UpdateContact {
                contact_id: c.clone(),
                fields: json!({"city": "Lyon"}).as_object().cloned().unwrap(),
            },
        ),
        planned(&location, &c, 5, Action::DeleteContact { contact_id: c.clone() }),
    ];
    let deliveries: Vec<Delivery> = batch.iter().enumerate().map(|(i, p)| delivery(i as i64, p)).collect();

    // First delivery and a replay of the same batch.
    for round in 0..2 {
        let outcomes = actions.deliver(&deliveries).await;
        assert_eq!(
            &outcomes[..5],
            &[Outcome::Done, Outcome::Done, Outcome::Done, Outcome::Done, Outcome::Done],
            "round {round}"
        );
        let Outcome::Permanent(reason) = &outcomes[5] else { panic!("{:?}", outcomes[5]) };
        assert!(reason.contains("allow_contact_delete"), "{reason}");
    }
    let after = sandbox.ghl.contact(&contact).expect("the contact was not deleted");
    assert!(after["tags"].as_array().unwrap().iter().any(|t| t == "vip"), "{after}");
    assert_eq!(after["businessId"], "biz-1");
    assert_eq!(after["city"], "Lyon");
    assert_eq!(sandbox.ghl.tasks(&contact).len(), 1, "one task");
    assert_eq!(sandbox.ghl.notes(&contact).len(), 1, "one note");

    // A crash between the key and the call: the key is pending and GHL has the task.
    let crashed = planned(
        &location,
        &c,
        6,
        Action::CreateTask {
            contact_id: c.clone(),
            title: "Crash task".into(),
            body: None,
            due: "2030-01-02T09:00:00Z".into(),
            assigned_to: None,
        },
    );
    let content = child_content_key(Some("Crash task"), None);
    let pending = NewWrite {
        key: &crashed.key,
        location: &location,
        contact_id: Some(&contact),
        kind: "task",
        content: Some(&content),
    };
    assert_eq!(writebacks::begin(&app.store, &pending).await.unwrap(), Begun::New);
    sandbox
        .ghl
        .create_task(&contact, json!({"title": "Crash task", "dueDate": "2030-01-02T09:00:00Z", "completed": false}))
        .unwrap();
    assert_eq!(actions.deliver(&[delivery(7, &crashed)]).await, vec![Outcome::Done]);
    assert_eq!(sandbox.ghl.tasks(&contact).len(), 2, "the pending task was found, not created again");

    // The follow-on events, once each, caused by rule `r` at depth 1.
    let events = follow_on_events(&app.store).await;
    let mut triggers: Vec<&str> = events.iter().map(|e| e.trigger.as_str()).collect();
    triggers.sort_unstable();
    assert_eq!(
        triggers,
        ["business.linked", "contact.updated", "note.created", "tag.added", "task.created", "task.created"]
    );
    for event in &events {
        assert_eq!(event.origin, Some(Origin { rule: "r".into(), depth: 1 }));
        assert!(event.key.ends_with(&format!(":{}", event.trigger)));
    }
    let tagged = events.iter().find(|e| e.trigger == "tag.added").unwrap();
    assert_eq!(tagged.tags_added, vec!["vip".to_owned()]);
    let updated = events.iter().find(|e| e.trigger == "contact.updated").unwrap();
    assert_eq!(updated.changed, vec!["city".to_owned()]);
    assert_eq!(updated.new.as_ref().and_then(|n| n.get("city")), Some(&Value::from("Lyon")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_delete_removes_the_contact_once_and_a_gone_contact_counts_as_deleted() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = sandbox.ghl.locations()[0].id.clone();
    let contact = sandbox.ghl.create_contact(&location, json!({"firstName": "Gone"}));
    let app = crate::helpers::app(config(settings_for(&sandbox, dir.path()))).await.unwrap();
    let writeback = WriteBack::new(app.store.clone(), app.ghl.clone(), Arc::new(Vec::new()));
    let actions = RuleActions::new("r", writeback, app.store.clone(), true, CancellationToken::new());
    let delete = planned(&location, &contact, 0, Action::DeleteContact { contact_id: contact.clone() });
    assert_eq!(actions.deliver(&[delivery(1, &delete)]).await, vec![Outcome::Done]);
    assert!(sandbox.ghl.contact(&contact).is_none());
    // A second key for the same, already deleted contact: the 404 means done.
    let again = planned(&location, &contact, 1, Action::DeleteContact { contact_id: contact.clone() });
    assert_eq!(actions.deliver(&[delivery(2, &again)]).await, vec![Outcome::Done]);
    // A bad row goes to dead letters; a stopping daemon starts nothing.
    let mut bad = delivery(3, &again);
    bad.record = json!({"rule": "r", "do": "nothing"});
    assert!(matches!(actions.deliver(&[bad]).await[0], Outcome::Permanent(_)));
    let stop = CancellationToken::new();
    let writeback = WriteBack::new(app.store.clone(), app.ghl.clone(), Arc::new(Vec::new()));
    let stopping = RuleActions::new("r", writeback, app.store.clone(), true, stop.clone());
    stop.cancel();
    assert!(stopping.deliver(&[delivery(4, &again)]).await[0].is_not_started());
}
