//! Appointments as a child stream (issue 20): read with tasks and notes for the contacts whose
//! children are due, delivered as `appointment.*` events, and never read when nobody asks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ghl_sync::config::{AppointmentReads, Dur};
use ghl_sync::sync::engine::RunOptions;
use ghl_sync_sandbox::Sandbox;
use ghl_sync_sandbox::ghl::GhlOptions;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{config, eventually, fast_ghl, listen_for_webhooks, settings_for, start_sandbox};

const APPOINTMENT_EVENTS: [&str; 3] = ["appointment.created", "appointment.updated", "appointment.deleted"];
const LIST_ROUTE: &str = "GET /contacts/:contactId/appointments";

fn one_location(contacts: usize) -> GhlOptions {
    GhlOptions { locations: 1, ..fast_ghl(contacts) }
}

/// Accepted deliveries to the `test` sink as `(type, entity_id, data)`.
fn delivered(sandbox: &Sandbox) -> Vec<(String, String, Value)> {
    sandbox
        .sink
        .accepted(Some("test"))
        .iter()
        .filter_map(|d| d.json())
        .map(|body| {
            let text = |key: &str| body[key].as_str().unwrap_or_default().to_owned();
            (text("type"), text("entity_id"), body["data"].clone())
        })
        .collect()
}

fn count(deliveries: &[(String, String, Value)], event: &str, id: &str) -> usize {
    deliveries.iter().filter(|(t, e, _)| t == event && e == id).count()
}

/// A write through the sandbox's admin API (`/__admin/ghl/appointments…`), as an operator
/// clicking in GHL would make it; answers the appointment.
async fn admin(sandbox: &Sandbox, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let url = format!("{}__admin/ghl/appointments{path}", sandbox.ghl_url());
    let mut request = reqwest::Client::builder().build().unwrap().request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "admin write answered {}", response.status());
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_subscribed_to_appointments_receives_each_change_made_in_ghl_exactly_once() {
    // Arrange: a webhook connector that names the appointment events (so `"auto"` reads them),
    // the daemon listening for GHL's signed webhooks, polls far apart: after the first pass,
    // only webhooks drive it.
    let sandbox = start_sandbox(one_location(24)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    settings.connectors.webhook.get_mut("test").unwrap().events =
        APPOINTMENT_EVENTS.iter().map(|e| (*e).to_owned()).collect();
    listen_for_webhooks(&mut settings, &sandbox);
    settings.sync.contacts_interval = Dur::secs(3600);
    let app = crate::helpers::app(config(settings)).await.unwrap();
    assert!(app.engine.settings().appointments, "a connector names appointment events: auto reads them");
    let addr = app.server_addr().unwrap();
    let location = sandbox.ghl.locations()[0].id.clone();
    let contacts = sandbox.ghl.contact_ids(&location);
    let seeded: BTreeSet<String> = contacts
        .iter()
        .flat_map(|c| sandbox.ghl.appointments(c))
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!seeded.is_empty(), "the sandbox seeds appointments for some contacts");
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));

    // The first pass announces every appointment GHL already has, as created.
    let first_pass = || seeded.iter().all(|id| count(&delivered(&sandbox), "appointment.created", id) == 1);
    assert!(eventually(Duration::from_secs(60), first_pass).await, "seeded appointments not delivered");
    sandbox.ghl.set_webhook_url(Some(format!("http://{addr}/webhooks/ghl").parse().unwrap()));

    // Act and assert, one change at a time: each arrives through its webhook hint.
    let contact = contacts.iter().find(|c| sandbox.ghl.appointments(c).is_empty()).unwrap().clone();
    let created = admin(
        &sandbox,
        reqwest::Method::POST,
        "",
        Some(json!({"contactId": contact, "title": "Intro call", "startTime": "2031-03-04T10:00:00Z"})),
    )
    .await;
    let id = created["appointment"]["id"].as_str().unwrap().to_owned();
    let arrived = |event: &str, check: &dyn Fn(&Value) -> bool| {
        delivered(&sandbox).iter().any(|(t, e, data)| t == event && *e == id && check(data))
    };
    let is_created = |d: &Value| d["title"] == "Intro call" && d["startTime"] == "2031-03-04 10:00:00";
    assert!(eventually(Duration::from_secs(30), || arrived("appointment.created", &is_created)).await);

    admin(&sandbox, reqwest::Method::PUT, &format!("/{id}"), Some(json!({"title": "Product demo"}))).await;
    let is_renamed = |d: &Value| d["title"] == "Product demo" && d["appointmentStatus"] == "confirmed";
    assert!(eventually(Duration::from_secs(30), || arrived("appointment.updated", &is_renamed)).await);

    admin(&sandbox, reqwest::Method::POST, &format!("/{id}/cancel"), None).await;
    let is_cancelled = |d: &Value| d["appointmentStatus"] == "cancelled";
    assert!(eventually(Duration::from_secs(30), || arrived("appointment.updated", &is_cancelled)).await);

    admin(&sandbox, reqwest::Method::DELETE, &format!("/{id}"), None).await;
    assert!(eventually(Duration::from_secs(30), || arrived("appointment.deleted", &|_| true)).await);

    // Give any duplicate time to show up, then stop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    daemon.await.unwrap().unwrap();
    let all = delivered(&sandbox);
    assert_eq!(count(&all, "appointment.created", &id), 1);
    assert_eq!(count(&all, "appointment.updated", &id), 2, "the rename and the cancellation, once each");
    assert_eq!(count(&all, "appointment.deleted", &id), 1);
    for seeded in &seeded {
        assert_eq!(count(&all, "appointment.created", seeded), 1, "{seeded}");
    }
    assert_eq!(all.len(), seeded.len() + 4, "nothing else was delivered: {all:#?}");
    assert!(all.iter().all(|(t, _, _)| t.starts_with("appointment.")), "the connector's filter holds");
    sandbox.stop().await;
}

/// Runs one full pass (with the sweep) and answers how many appointment lists and task lists
/// GHL served.
async fn requests_of_one_pass(
    sandbox: &Sandbox,
    reads: AppointmentReads,
    events: &[&str],
) -> (u64, u64, BTreeMap<String, u64>) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(sandbox, dir.path());
    settings.sync.appointments = reads;
    settings.connectors.webhook.get_mut("test").unwrap().events = events.iter().map(|e| (*e).to_owned()).collect();
    let app = crate::helpers::app(config(settings)).await.unwrap();
    sandbox.ghl.reset_stats();
    let mut events_written = BTreeMap::new();
    for (location, result) in app.sync_once(None, RunOptions::default()).await.unwrap() {
        let summary = result.unwrap_or_else(|e| panic!("sync of {location} failed: {e}"));
        for (event, n) in summary.events {
            *events_written.entry(event).or_default() += n;
        }
    }
    let stats = sandbox.ghl.stats();
    let listed = |route: &str| stats.requests.get(route).copied().unwrap_or(0);
    (listed(LIST_ROUTE), listed("GET /contacts/:contactId/tasks"), events_written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appointments_are_read_only_when_a_subscriber_asks_for_them_or_config_says_so() {
    let sandbox = start_sandbox(one_location(16)).await;

    // Default ("auto") with a connector that takes every event: no appointment request at all.
    let (appointments, tasks, events) = requests_of_one_pass(&sandbox, AppointmentReads::Auto, &[]).await;
    assert_eq!(appointments, 0, "nobody named appointment events");
    assert_eq!(tasks, 16, "children were read (one task list per contact)");
    assert!(events.keys().all(|e| !e.starts_with("appointment.")), "{events:?}");

    // `false` wins over a subscriber that names them.
    let (appointments, ..) = requests_of_one_pass(&sandbox, AppointmentReads::Off, &APPOINTMENT_EVENTS).await;
    assert_eq!(appointments, 0);

    // `true`: one list per contact, beside tasks and notes, even for a catch-all connector.
    let (appointments, tasks, events) = requests_of_one_pass(&sandbox, AppointmentReads::On, &[]).await;
    assert_eq!((appointments, tasks), (16, 16));
    assert!(events.get("appointment.created").is_some_and(|n| *n > 0), "{events:?}");
    sandbox.stop().await;
}
