//! Operator alerts (issue 18): one message per incident, none while it stays, none after a
//! restart, one when it clears; a message the target refused is sent later, not forgotten.

use ghl_sync::alerts::{AlertSettings, Alerter};
use ghl_sync::app::App;
use ghl_sync::config::Secret;
use ghl_sync_sandbox::Sandbox;
use ghl_sync_sandbox::sink::SinkMode;
use tokio_util::sync::CancellationToken;

use crate::helpers::{config, fast_ghl, settings_for, start_sandbox};

fn alert_bodies(sandbox: &Sandbox) -> Vec<serde_json::Value> {
    sandbox.sink.accepted(Some("alerts")).iter().filter_map(|d| d.json()).collect()
}

async fn build(sandbox: &Sandbox, dir: &std::path::Path) -> App {
    let mut settings = settings_for(sandbox, dir);
    settings.alerts = vec![AlertSettings {
        name: Some("ops".to_owned()),
        url: Some(Secret::new(sandbox.sink_url("alerts").to_string())),
        dead_letters: 1,
        ..AlertSettings::default()
    }];
    crate::helpers::app(config(settings)).await.unwrap()
}

fn alerter(app: &App) -> Alerter {
    Alerter::new(&app.config, app.store.clone(), &app.ghl, CancellationToken::new())
        .unwrap()
        .expect("alerts are configured")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_incident_alerts_once_survives_a_restart_silently_and_alerts_once_when_cleared() {
    let sandbox = start_sandbox(fast_ghl(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let app = build(&sandbox, dir.path()).await;
    let alerts = alerter(&app);

    // Nothing wrong yet: no incident, no message.
    let report = alerts.evaluate(&[]).await.unwrap();
    assert_eq!((report.opened, report.sent), (0, 0), "{report:?}");

    // The target refuses everything: dead letters.
    sandbox.sink.set_mode("test", SinkMode::Reject(400));
    for (_, result) in app.sync_once(None, Default::default()).await.unwrap() {
        result.unwrap();
    }
    assert!(app.dispatcher.run_once().await.total().dead > 0);

    // The alert target is down at first: the incident opens, the message is not lost.
    sandbox.sink.set_mode("alerts", SinkMode::Down);
    let report = alerts.evaluate(&[]).await.unwrap();
    assert_eq!((report.opened, report.sent, report.failed), (1, 0, 1), "{report:?}");
    sandbox.sink.set_mode("alerts", SinkMode::Ok);
    let report = alerts.evaluate(&[]).await.unwrap();
    assert_eq!((report.opened, report.sent), (0, 1), "{report:?}");
    let bodies = alert_bodies(&sandbox);
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["event"], "incident.opened");
    assert_eq!(bodies[0]["condition"], "dead_letters");
    assert_eq!(bodies[0]["subject"], "webhook.test");

    // It stays: nothing more. `status` and the status page list it.
    let report = alerts.evaluate(&[]).await.unwrap();
    assert_eq!((report.opened, report.sent), (0, 0), "{report:?}");
    let status = ghl_sync::store::status::read(&app.store, &[]).await.unwrap();
    assert_eq!(status.incidents.len(), 1, "{:?}", status.incidents);
    assert_eq!(status.incidents[0].condition_key, "dead_letters:webhook.test");

    // A restart: the incident is remembered, nothing is sent again.
    drop(alerts);
    app.store.close().await;
    drop(app);
    let app = build(&sandbox, dir.path()).await;
    let alerts = alerter(&app);
    let report = alerts.evaluate(&[]).await.unwrap();
    assert_eq!((report.opened, report.sent), (0, 0), "{report:?}");
    assert_eq!(alert_bodies(&sandbox).len(), 1);

    // Cleared (`dlq drop`): one "resolved" message, then silence.
    for id in ghl_sync::store::dead_letters::delivery_ids(&app.store, None).await.unwrap() {
        ghl_sync::store::dead_letters::remove(&app.store, id).await.unwrap();
    }
    let report = alerts.evaluate(&[]).await.unwrap();
    assert_eq!((report.resolved, report.sent), (1, 1), "{report:?}");
    let report = alerts.evaluate(&[]).await.unwrap();
    assert_eq!(report.sent, 0, "{report:?}");
    assert!(ghl_sync::store::status::read(&app.store, &[]).await.unwrap().incidents.is_empty());
    let bodies = alert_bodies(&sandbox);
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[1]["event"], "incident.resolved");
    assert_eq!(bodies[1]["incident_id"], bodies[0]["incident_id"]);

    // No personal data in any alert.
    let text: String = sandbox.sink.deliveries(Some("alerts")).iter().map(|d| d.body.clone()).collect();
    for location in sandbox.ghl.locations() {
        for id in sandbox.ghl.contact_ids(&location.id) {
            let contact = sandbox.ghl.contact(&id).unwrap();
            for field in ["email", "phone", "firstName", "lastName"] {
                if let Some(value) = contact.get(field).and_then(|v| v.as_str()).filter(|v| v.len() > 3) {
                    assert!(!text.contains(value), "an alert carries a contact's {field}");
                }
            }
        }
    }
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_alerts_in_the_slack_format_and_resolves_when_it_closes() {
    let sandbox = start_sandbox(fast_ghl(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    settings.alerts = vec![AlertSettings {
        format: ghl_sync::alerts::AlertFormat::Slack,
        url: Some(Secret::new(sandbox.sink_url("alerts").to_string())),
        ..AlertSettings::default()
    }];
    let app = crate::helpers::app(config(settings)).await.unwrap();
    let alerts = alerter(&app);
    let open = vec!["webhook.test".to_owned()];
    assert_eq!(alerts.evaluate(&open).await.unwrap().sent, 1);
    assert_eq!(alerts.evaluate(&open).await.unwrap().sent, 0);
    assert_eq!(alerts.evaluate(&[]).await.unwrap().sent, 1);
    let bodies = alert_bodies(&sandbox);
    assert_eq!(bodies.len(), 2);
    assert!(
        bodies[0]["text"].as_str().unwrap().starts_with("ghl-sync PROBLEM: Deliveries to `webhook.test` are paused")
    );
    assert!(bodies[1]["text"].as_str().unwrap().starts_with("ghl-sync RESOLVED: "));
    sandbox.stop().await;
}

fn custom_field_requests(sandbox: &Sandbox) -> u64 {
    sandbox.ghl.stats().requests.get("GET /locations/:locationId/customFields").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_custom_field_a_mapping_uses_alerts_once_and_resolves_when_it_is_created_again() {
    let sandbox = start_sandbox(fast_ghl(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    // The mapping reads one custom field by key; the other seeded fields are not used.
    let hook = settings.connectors.webhook.get_mut("test").unwrap();
    hook.fields = toml::from_str::<toml::Table>(
        "fields = [{ from = \"email\", to = \"email\" }, { from = \"customFields.contact.lusha_id\", to = \"lusha\" }]",
    )
    .unwrap()["fields"]
        .clone()
        .try_into()
        .unwrap();
    settings.alerts = vec![AlertSettings {
        name: Some("ops".to_owned()),
        url: Some(Secret::new(sandbox.sink_url("alerts").to_string())),
        ..AlertSettings::default()
    }];
    let app = crate::helpers::app(config(settings)).await.unwrap();
    let alerts = alerter(&app).with_field_check_every(std::time::Duration::ZERO);
    let locations = sandbox.ghl.locations();
    let (first, second) = (&locations[0].id, &locations[1].id);

    // Every field exists: nothing.
    let before = custom_field_requests(&sandbox);
    let report = alerts.evaluate(&[]).await.unwrap();
    assert_eq!((report.opened, report.sent), (0, 0), "{report:?}");
    assert_eq!(custom_field_requests(&sandbox) - before, 2, "one read per location");

    // The used field is deleted in one location; an unused one is deleted and another one
    // created: one alert, naming the location and the key.
    assert!(sandbox.ghl.delete_custom_field(first, "contact.lusha_id"));
    assert!(sandbox.ghl.delete_custom_field(first, "contact.lo_visits"));
    assert!(sandbox.ghl.create_custom_field(second, "Unrelated", "contact.unrelated").is_some());
    let report = alerts.evaluate(&[]).await.unwrap();
    assert_eq!((report.opened, report.sent), (1, 1), "{report:?}");
    let bodies = alert_bodies(&sandbox);
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["event"], "incident.opened");
    assert_eq!(bodies[0]["condition"], "custom_field");
    assert_eq!(bodies[0]["subject"], format!("{first}:contact.lusha_id"));
    let summary = bodies[0]["summary"].as_str().unwrap();
    assert!(summary.contains("`contact.lusha_id`") && summary.contains(first.as_str()), "{summary}");
    assert!(summary.contains("`webhook.test`") && !summary.contains(second.as_str()), "{summary}");

    // It stays: nothing more.
    let report = alerts.evaluate(&[]).await.unwrap();
    assert_eq!((report.opened, report.sent), (0, 0), "{report:?}");

    // Created again (a new id, the same key): one "resolved".
    assert!(sandbox.ghl.create_custom_field(first, "Lusha ID", "contact.lusha_id").is_some());
    let report = alerts.evaluate(&[]).await.unwrap();
    assert_eq!((report.resolved, report.sent), (1, 1), "{report:?}");
    let report = alerts.evaluate(&[]).await.unwrap();
    assert_eq!((report.opened, report.resolved, report.sent), (0, 0, 0), "{report:?}");
    let bodies = alert_bodies(&sandbox);
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[1]["event"], "incident.resolved");
    assert_eq!(bodies[1]["incident_id"], bodies[0]["incident_id"]);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_fields_are_read_once_an_hour_per_location_and_the_condition_can_be_turned_off() {
    let sandbox = start_sandbox(fast_ghl(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    settings.connectors.webhook.get_mut("test").unwrap().message = Some("{@event} {customFields.lusha_id}".to_owned());
    let alert = |name: &str, custom_fields: bool| AlertSettings {
        name: Some(name.to_owned()),
        url: Some(Secret::new(sandbox.sink_url("alerts").to_string())),
        custom_fields,
        ..AlertSettings::default()
    };
    settings.alerts = vec![alert("on", true)];
    let app = crate::helpers::app(config(settings.clone())).await.unwrap();
    let location = sandbox.ghl.locations()[0].id.clone();
    assert!(sandbox.ghl.delete_custom_field(&location, "contact.lusha_id"));

    // Default interval: the first evaluation reads each location, later ones within the
    // hour read nothing (the incident stays open though the field is back).
    let alerts = alerter(&app);
    let before = custom_field_requests(&sandbox);
    assert_eq!(alerts.evaluate(&[]).await.unwrap().opened, 1);
    let read = custom_field_requests(&sandbox) - before;
    assert_eq!(read, 2, "one read per location");
    assert!(sandbox.ghl.create_custom_field(&location, "Lusha ID", "contact.lusha_id").is_some());
    for _ in 0..3 {
        assert_eq!(alerts.evaluate(&[]).await.unwrap().resolved, 0);
    }
    assert_eq!(custom_field_requests(&sandbox) - before, read);
    drop(alerts);
    app.store.close().await;
    drop(app);

    // Turned off: no read at all, no incident.
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::set_store(&mut settings, &dir.path().join("ghl-sync.db"));
    settings.alerts = vec![alert("off", false)];
    let app = crate::helpers::app(config(settings)).await.unwrap();
    assert!(sandbox.ghl.delete_custom_field(&location, "contact.lusha_id"));
    let alerts = alerter(&app).with_field_check_every(std::time::Duration::ZERO);
    let before = custom_field_requests(&sandbox);
    assert_eq!(alerts.evaluate(&[]).await.unwrap(), Default::default());
    assert_eq!(custom_field_requests(&sandbox), before);
    sandbox.stop().await;
}
