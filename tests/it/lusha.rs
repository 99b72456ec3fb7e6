//! The Lusha connector end to end: GHL contacts (fake GHL) → sync → outbox → Lusha (fake
//! Lusha, with its credit ledger) → write-back to GHL → the sync sees our own write and
//! neither re-enriches nor re-delivers it.

use std::sync::Arc;
use std::time::Duration;

use ghl_sync::app::App;
use ghl_sync::config::{Dur, LushaSettings, Secret, Settings};
use ghl_sync::ghl::write::NoteWrite;
use ghl_sync::store::writebacks::{self, Begun, NewWrite};
use ghl_sync::sync::engine::RunOptions;
use ghl_sync::writeback::{WriteBack, Written};
use ghl_sync_sandbox::ghl::GhlOptions;
use ghl_sync_sandbox::lusha::{Identity, Lookup, LushaOptions};
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use serde_json::{Value, json};

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
    let lusha = LushaOptions { usage_per_minute: 0, ..LushaOptions::default() };
    Sandbox::start(SandboxOptions { ghl, lusha, ..Default::default() }, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn settings(sandbox: &Sandbox, dir: &std::path::Path, tweak: impl FnOnce(&mut LushaSettings)) -> Settings {
    let mut settings = settings_for(sandbox, dir);
    settings.dispatch.backoff_base = Dur::millis(5);
    settings.dispatch.backoff_max = Dur::millis(20);
    settings.dispatch.breaker_threshold = 1000;
    let mut lusha = LushaSettings {
        api_key: Some(Secret::new(sandbox.lusha.api_key())),
        base_url: sandbox.lusha_url(),
        daily_credit_cap: 0,
        credit_reserve: 0,
        stop_on_no_credits: Dur::millis(150),
        ..LushaSettings::default()
    };
    lusha.limits.per_minute = 60_000;
    lusha.limits.per_hour = 1_000_000;
    lusha.limits.per_day = 1_000_000;
    tweak(&mut lusha);
    settings.connectors.lusha = Some(lusha);
    settings
}

fn location(sandbox: &Sandbox) -> String {
    sandbox.ghl.locations()[0].id.clone()
}

/// Creates one GHL contact per email (no phone), returns their ids.
fn create_contacts(sandbox: &Sandbox, emails: &[String]) -> Vec<String> {
    let location = location(sandbox);
    emails
        .iter()
        .enumerate()
        .map(|(i, email)| {
            sandbox.ghl.create_contact(
                &location,
                json!({"firstName": format!("Test{i}"), "lastName": "Person", "email": email}),
            )
        })
        .collect()
}

fn found(lookup: &Lookup) -> bool {
    matches!(lookup, Lookup::Found(person) if !person.location.is_eu_contact)
}

async fn sync_all(app: &App) -> u64 {
    let mut changed = 0;
    for (location, result) in app.sync_once(None, RunOptions { dry_run: false, skip_sweep: true }).await.unwrap() {
        changed += result.unwrap_or_else(|e| panic!("sync of {location} failed: {e}")).contacts_changed;
    }
    changed
}

async fn pending(app: &App, connector: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND connector = $1")
        .bind(connector)
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap()
}

/// Dispatcher passes until nothing is pending (bounded).
async fn drain(app: &App) {
    for _ in 0..300 {
        app.dispatcher.run_once().await;
        if pending(app, "lusha").await + pending(app, "webhook.test").await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("outbox not drained: {} lusha rows pending", pending(app, "lusha").await);
}

fn tags(contact: &Value) -> Vec<String> {
    contact["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect()
}

fn custom(contact: &Value, id: &str) -> Option<String> {
    contact["customFields"]
        .as_array()?
        .iter()
        .find(|f| f["id"] == id)
        .and_then(|f| f["value"].as_str().map(str::to_owned))
}

/// Custom field key → id in the fake GHL location.
async fn field_id(app: &App, location: &str, key: &str) -> String {
    let fields = app.ghl.custom_fields(location, Some("contact"), ghl_sync::http::Priority::Poll).await.unwrap();
    fields.into_iter().find(|f| f.field_key.as_deref() == Some(key)).unwrap().id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrichment_spends_exactly_the_predicted_credits_once_and_never_echoes() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let mut emails = sandbox.lusha.sample_emails(8, found);
    let missing = sandbox.lusha.sample_emails(2, |l| matches!(l, Lookup::NotFound { .. }));
    emails.extend(missing.iter().cloned());
    let ids = create_contacts(&sandbox, &emails);
    let identities: Vec<Identity> = emails.iter().map(|e| Identity::email(e.clone())).collect();
    let predicted = sandbox.lusha.predict_cost(&identities, &["emails", "phones"], true);
    assert!(predicted > 0);

    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), |_| {}))).await.unwrap();
    assert_eq!(sync_all(&app).await, 10);
    drain(&app).await;

    // Exactly what the ledger predicted; one search-and-enrich call for the batch.
    assert_eq!(sandbox.lusha.ledger().spent, predicted);
    assert_eq!(sandbox.lusha.stats().requests_to("contacts/search-and-enrich"), 1);
    let location = location(&sandbox);
    let lusha_id_field = field_id(&app, &location, "contact.lusha_id").await;
    let enriched_at_field = field_id(&app, &location, "contact.lusha_enriched_at").await;
    let mut phones = 0;
    for (i, id) in ids.iter().enumerate() {
        let contact = sandbox.ghl.contact(id).unwrap();
        if i < 8 {
            assert!(tags(&contact).contains(&"lusha:enriched".to_owned()), "{contact}");
            let person = sandbox.lusha.lookup(&identities[i]);
            assert_eq!(custom(&contact, &lusha_id_field), person.person().map(|p| p.id.clone()));
            if contact["phone"].as_str().is_some_and(|p| !p.is_empty()) {
                phones += 1;
            }
        } else {
            assert!(tags(&contact).contains(&"lusha:not_found".to_owned()), "{contact}");
            assert_eq!(custom(&contact, &lusha_id_field), None);
        }
        assert!(custom(&contact, &enriched_at_field).is_some());
    }
    assert!(phones > 0, "some found persons have a callable phone");
    let webhook_deliveries = sandbox.sink.accepted(Some("test")).len();
    assert_eq!(webhook_deliveries, 10, "one contact.created each");

    // The write-back comes back through the sync: stored, but neither enriched nor delivered.
    let requests = sandbox.lusha.stats().total_requests();
    assert_eq!(sync_all(&app).await, 10, "the sync sees the written-back contacts");
    assert_eq!(pending(&app, "lusha").await + pending(&app, "webhook.test").await, 0);
    drain(&app).await;
    assert_eq!(sandbox.lusha.stats().total_requests(), requests, "no Lusha call for unchanged identities");
    assert_eq!(sandbox.lusha.ledger().spent, predicted);
    assert_eq!(sandbox.sink.accepted(Some("test")).len(), webhook_deliveries, "no echo delivered");

    // A restart and a sync of unchanged contacts: zero Lusha calls.
    drop(app);
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), |_| {}))).await.unwrap();
    sync_all(&app).await;
    drain(&app).await;
    assert_eq!(sandbox.lusha.stats().total_requests(), requests);

    // A replay of every Lusha delivery (even with the write-back marked unfinished) costs
    // nothing and writes nothing twice.
    sqlx::query("UPDATE lusha_cache SET written_at = NULL")
        .execute(&mut crate::helpers::raw(&app.store).await)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET status = 'pending' WHERE connector = 'lusha'")
        .execute(&mut crate::helpers::raw(&app.store).await)
        .await
        .unwrap();
    let ghl_writes = |s: &Sandbox| {
        s.ghl
            .stats()
            .requests
            .iter()
            .filter(|(r, _)| r.starts_with("PUT") || r.starts_with("POST /contacts/:"))
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    let writes_before = ghl_writes(&sandbox);
    drain(&app).await;
    assert_eq!(sandbox.lusha.stats().total_requests(), requests);
    assert_eq!(ghl_writes(&sandbox), writes_before, "done write-back keys are not sent again");

    // One contact changes its email: credits for that contact only.
    let new_email = sandbox.lusha.sample_emails(20, found).into_iter().find(|e| !emails.contains(e)).unwrap();
    let cost = sandbox.lusha.predict_cost(&[Identity::email(new_email.clone())], &["emails", "phones"], true);
    sandbox.ghl.update_contact(&ids[0], json!({"email": new_email}));
    sync_all(&app).await;
    drain(&app).await;
    assert_eq!(sandbox.lusha.ledger().spent, predicted + cost);
    assert_eq!(sandbox.lusha.stats().requests_to("contacts/search-and-enrich"), 2);
    assert_eq!(sandbox.sink.accepted(Some("test")).len(), webhook_deliveries + 1, "the user's change is delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_credits_loses_nothing_and_resumes_when_credits_return() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let emails = sandbox.lusha.sample_emails(12, found);
    let ids = create_contacts(&sandbox, &emails);
    let identities: Vec<Identity> = emails.iter().map(|e| Identity::email(e.clone())).collect();
    let predicted = sandbox.lusha.predict_cost(&identities, &["emails", "phones"], true);
    // Too few credits for any batch: the call is refused with 402 and charges nothing.
    sandbox.lusha.set_credits(3);
    let tweak = |l: &mut LushaSettings| {
        l.batch_size = 4;
        l.max_credits_per_contact = 1;
        l.stop_on_no_credits = Dur::secs(1);
    };
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), tweak))).await.unwrap();
    sync_all(&app).await;
    for _ in 0..5 {
        app.dispatcher.run_once().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pending(&app, "lusha").await, 12, "everything waits for credits");
    assert_eq!(sandbox.lusha.stats().payment_required, 1, "one 402, then the connector stops");
    assert_eq!(sandbox.lusha.ledger().spent, 0);
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    // Stopped: no call at all while the balance is known to be too low.
    let requests = sandbox.lusha.stats().total_requests();
    app.dispatcher.run_once().await;
    assert_eq!(sandbox.lusha.stats().total_requests(), requests);
    // The 402 stops only the Lusha connector: the webhook connector delivered everything.
    assert_eq!(pending(&app, "webhook.test").await, 0);
    assert_eq!(sandbox.sink.accepted(Some("test")).len(), 12);

    sandbox.lusha.set_credits(100_000);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    drain(&app).await;
    for id in &ids {
        assert!(tags(&sandbox.ghl.contact(id).unwrap()).contains(&"lusha:enriched".to_owned()));
    }
    assert_eq!(sandbox.lusha.ledger().spent, predicted, "nothing paid twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_and_daily_limits_park_instead_of_hammering() {
    for (hour, day) in [(1, 100_000), (20_000, 1)] {
        let sandbox = sandbox().await;
        let dir = tempfile::tempdir().unwrap();
        let emails = sandbox.lusha.sample_emails(3, found);
        create_contacts(&sandbox, &emails);
        let app = crate::helpers::app(config(settings(&sandbox, dir.path(), |_| {}))).await.unwrap();
        sync_all(&app).await;
        // The balance read takes the one allowed request; the search gets the 429.
        sandbox.lusha.set_limits(600, hour, day);
        for _ in 0..3 {
            app.dispatcher.run_once().await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let stats = sandbox.lusha.stats();
        assert!(
            stats.rate_limited <= 1 && stats.total_requests() <= 2,
            "one 429 at most, then parked ({hour}/{day}): {stats:?}"
        );
        for _ in 0..3 {
            app.dispatcher.run_once().await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert_eq!(sandbox.lusha.stats().total_requests(), stats.total_requests(), "parked: no calls");
        assert_eq!(pending(&app, "lusha").await, 3, "nothing lost");
        assert_eq!(sandbox.lusha.ledger().spent, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_creates_a_note_once_even_after_a_crash_mid_create() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let ids = create_contacts(&sandbox, &["wb.test@example.test".to_owned()]);
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), |_| {}))).await.unwrap();
    let location = location(&sandbox);
    let writeback = WriteBack::new(app.store.clone(), app.ghl.clone(), Arc::new(Vec::new()));
    let note = NoteWrite { body: Some("Enriched by Lusha — test".into()), ..NoteWrite::default() };

    let first = writeback.create_note(&location, &ids[0], "key-1", &note).await.unwrap();
    assert!(first.sent());
    let again = writeback.create_note(&location, &ids[0], "key-1", &note).await.unwrap();
    assert_eq!(again, Written::Already(first.id().map(str::to_owned)));
    assert_eq!(sandbox.ghl.notes(&ids[0]).len(), 1);

    // A crash after GHL created the note but before the key was marked done.
    let other = NoteWrite { body: Some("second note".into()), ..NoteWrite::default() };
    let pending_key =
        NewWrite { key: "key-2", location: &location, contact_id: Some(&ids[0]), kind: "note", content: None };
    assert_eq!(writebacks::begin(&app.store, &pending_key).await.unwrap(), Begun::New);
    let created = sandbox.ghl.create_note(&ids[0], json!({"body": "second note"})).unwrap();
    let resumed = writeback.create_note(&location, &ids[0], "key-2", &other).await.unwrap();
    assert_eq!(resumed, Written::Found(created));
    assert_eq!(sandbox.ghl.notes(&ids[0]).len(), 2, "no duplicate");

    // Tags are keyed too; settle() records the content the sync will see as our own.
    writeback.add_tags(&location, &ids[0], "key-3", &["vip".to_owned()]).await.unwrap();
    let record = writeback.settle(&location, &ids[0], &["key-3".to_owned()]).await.unwrap().unwrap();
    let hash = ghl_sync::domain::normalize::contact_hash(&record, &[]);
    assert!(writebacks::was_own_write(&app.store, &location, &ids[0], &hash).await.unwrap());
}

fn lusha_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Lusha → GHL: 50 prospecting leads (10 already in GHL by email) become 50 GHL contacts, each
/// with its task, through the running daemon; the next poll creates nothing and spends
/// nothing; the enrichment never pays again for an imported contact; a signal for a lead
/// becomes a note and a tag on its contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prospecting_leads_become_ghl_contacts_once_and_signals_become_notes() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = location(&sandbox);
    let lead_ids = sandbox.lusha.lead_ids();
    assert_eq!(lead_ids.len(), 50);
    let persons: Vec<_> = lead_ids
        .iter()
        .map(|id| match sandbox.lusha.lookup(&Identity::Id(id.clone())) {
            Lookup::Found(person) => person,
            other => panic!("lead {id} does not resolve: {other:?}"),
        })
        .collect();
    let known: Vec<usize> = (0..persons.len()).filter(|&i| !persons[i].location.is_eu_contact).take(10).collect();
    let known_ids: Vec<String> = known
        .iter()
        .map(|&i| {
            sandbox.ghl.create_contact(
                &location,
                json!({"firstName": "Known", "lastName": format!("Lead{i}"), "email": persons[i].emails[0].email}),
            )
        })
        .collect();

    // Phase 1: the enrichment connector handles the 10 known contacts first.
    {
        let app = crate::helpers::app(config(settings(&sandbox, dir.path(), |_| {}))).await.unwrap();
        sync_all(&app).await;
        drain(&app).await;
    }
    let spent_before = sandbox.lusha.ledger().spent;
    let searches_before = sandbox.lusha.stats().requests_to("contacts/search-and-enrich");
    let all: Vec<Identity> = lead_ids.iter().map(|id| Identity::Id(id.clone())).collect();
    let predicted = sandbox.lusha.predict_cost(&all, &["emails", "phones"], false);
    assert!(predicted > 0);

    // Phase 2: the daemon with a lead search, signals and the webhook listener.
    const SECRET: &str = "whsec_leads";
    let mut settings = settings(&sandbox, dir.path(), |lusha| {
        lusha.signals_interval = Dur::millis(100);
        lusha.leads = vec![
            toml::from_str(&format!(
                "name = \"all\"\nlocation = \"{location}\"\ninterval = \"300ms\"\n\
                 task = {{ title = \"Call {{firstName}} at {{company}}\", due_in = \"2d\" }}"
            ))
            .unwrap(),
        ];
    });
    settings.server.enabled = true;
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.server.lusha_webhook_secret = Some(Secret::new(SECRET.to_owned()));
    settings.server.admin_token = Some(Secret::new("admin-token".to_owned()));
    settings.sync.contacts_interval = Dur::millis(200);
    let app = crate::helpers::app(config(settings)).await.unwrap();
    let addr = app.server_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));

    let lead_tagged = |s: &Sandbox| {
        s.ghl
            .contact_ids(&location)
            .iter()
            .filter_map(|id| s.ghl.contact(id))
            .filter(|c| tags(c).contains(&"lusha:lead".to_owned()))
            .count()
    };
    // Imported = tagged and given its task (the task is written right after the contact).
    let imported =
        |s: &Sandbox| lead_tagged(s) == 50 && s.ghl.contact_ids(&location).iter().all(|id| !s.ghl.tasks(id).is_empty());
    assert!(
        crate::helpers::eventually(Duration::from_secs(30), || imported(&sandbox)).await,
        "{} of 50 leads imported",
        lead_tagged(&sandbox)
    );
    // Every contact of the location is a lead: 10 updated, 40 created, no duplicate email.
    let contacts: Vec<Value> =
        sandbox.ghl.contact_ids(&location).iter().filter_map(|id| sandbox.ghl.contact(id)).collect();
    assert_eq!(contacts.len(), 50, "10 known contacts were updated, not duplicated");
    for (&i, id) in known.iter().zip(&known_ids) {
        let contact = sandbox.ghl.contact(id).unwrap();
        assert_eq!(contact["firstName"], "Known", "an existing contact keeps its own values");
        assert!(tags(&contact).contains(&"lusha:lead".to_owned()));
        assert_eq!(contact["email"].as_str().unwrap().to_lowercase(), persons[i].emails[0].email.to_lowercase());
    }
    for contact in &contacts {
        let id = contact["id"].as_str().unwrap();
        let tasks = sandbox.ghl.tasks(id);
        assert_eq!(tasks.len(), 1, "one lead task per contact");
        assert!(tasks[0]["title"].as_str().unwrap().starts_with("Call "), "{}", tasks[0]);
    }
    let created_by_us: Vec<&Value> = contacts.iter().filter(|c| c["firstName"] != "Known").collect();
    assert_eq!(created_by_us.len(), 40);
    for person in persons.iter().filter(|p| !p.location.is_eu_contact) {
        let email = person.emails[0].email.to_lowercase();
        let same = contacts.iter().filter(|c| c["email"].as_str().is_some_and(|e| e.to_lowercase() == email)).count();
        assert_eq!(same, 1, "exactly one GHL contact per lead email");
    }
    assert_eq!(
        sandbox.lusha.ledger().spent - spent_before,
        predicted,
        "exactly the enrich cost of the leads; requests {:?}",
        sandbox.lusha.stats()
    );

    // The next polls list the same leads and change nothing, and the sync of the imported
    // contacts makes no enrichment call (their results are cached under their identities).
    let polls = sandbox.lusha.stats().requests_to("contacts/prospecting");
    assert!(
        crate::helpers::eventually(Duration::from_secs(10), || sandbox
            .lusha
            .stats()
            .requests_to("contacts/prospecting")
            >= polls + 3)
        .await
    );
    let created =
        |s: &Sandbox| s.sink.accepted(Some("test")).iter().filter(|d| d.body.contains("\"contact.created\"")).count();
    assert!(
        crate::helpers::eventually(Duration::from_secs(20), || created(&sandbox) == 50).await,
        "{} contact.created",
        created(&sandbox)
    );
    assert_eq!(sandbox.ghl.contact_ids(&location).len(), 50);
    assert_eq!(sandbox.lusha.ledger().spent - spent_before, predicted, "seen leads cost nothing");
    assert_eq!(sandbox.lusha.stats().requests_to("contacts/enrich"), 1, "one enrich call for the 50 new leads");
    assert_eq!(
        sandbox.lusha.stats().requests_to("contacts/search-and-enrich"),
        searches_before,
        "imported contacts are not enriched again"
    );

    // A Lusha signal for a lead: a note and a tag on its contact.
    let target = known_ids[0].clone();
    let lead = &lead_ids[known[0]];
    let body = serde_json::to_vec(&json!({
        "id": "5d0c1a8e-0000-4000-8000-00000000abcd", "type": "companyChange", "entityType": "contact",
        "entityId": lead, "subscriptionId": "sub_1",
        "data": {"personId": lead, "currentTitle": "CTO", "currentCompanyName": "Initech", "previousCompanyName": "Acme"},
        "timestamp": "2026-11-23T00:00:00Z", "billing": {"creditsCharged": 1},
    }))
    .unwrap();
    let timestamp = (ghl_sync::store::now_ms() / 1000).to_string();
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/lusha"))
        .header("content-type", "application/json")
        .header("x-lusha-timestamp", &timestamp)
        .header("x-lusha-signature", lusha_signature(SECRET, &timestamp, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let noted = |s: &Sandbox| {
        let contact = s.ghl.contact(&target).unwrap();
        tags(&contact).contains(&"lusha:signal:companychange".to_owned())
            && s.ghl
                .notes(&target)
                .iter()
                .any(|n| n["body"].as_str().is_some_and(|b| b.contains("Now: CTO at Initech")))
    };
    assert!(crate::helpers::eventually(Duration::from_secs(10), || noted(&sandbox)).await, "signal not written");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sandbox.ghl.notes(&target).len(), 1, "one note per signal");
    // The contact view tells the Lusha story of a lead.
    let created_id = created_by_us[0]["id"].as_str().unwrap().to_owned();
    let view = reqwest::Client::new()
        .get(format!("http://{addr}/contacts/{created_id}"))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(view.status().as_u16(), 200);
    let html = view.text().await.unwrap();
    assert!(html.contains("<h2>Lusha (1)</h2>"), "{html}");
    assert!(html.contains("Imported as a Lusha lead from search <b>all</b>"), "{html}");
    // The daemon's own tasks and notes are not announced as users' changes.
    let announced = sandbox
        .sink
        .accepted(Some("test"))
        .iter()
        .filter(|d| d.body.contains("\"task.created\"") || d.body.contains("\"note.created\""))
        .count();
    assert_eq!(announced, 0, "own tasks/notes delivered as user changes");

    stop.cancel();
    daemon.await.unwrap().unwrap();
    // `ghl-sync status` shows the books.
    let store = crate::helpers::open_store(&dir.path().join("ghl-sync.db")).await;
    let lusha = ghl_sync::store::status::read(&store, &[]).await.unwrap().lusha.expect("a Lusha section");
    assert_eq!((lusha.leads_imported, lusha.leads_waiting, lusha.leads_failed), (50, 0, 0));
    assert!(lusha.found >= 50, "{lusha:?}");
    assert_eq!(lusha.signals_pending, 0);
    sandbox.stop().await;
}

/// A crash after a lead's Lusha result was stored but before (or right after) its GHL
/// contact was written: the next poll imports it from the stored result without calling
/// Lusha again, and a repeat never creates a second contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lead_enriched_before_a_crash_is_imported_without_paying_again_and_only_once() {
    use ghl_sync::connectors::lusha::LushaConnector;
    use ghl_sync::store::lusha::{NewLead, Spend};
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = location(&sandbox);
    let settings = settings(&sandbox, dir.path(), |lusha| {
        lusha.leads = vec![toml::from_str(&format!("name = \"s\"\nlocation = \"{location}\"")).unwrap()];
    });
    let lusha_settings = settings.connectors.lusha.clone().unwrap();
    let app = crate::helpers::app(config(settings)).await.unwrap();
    let writeback = WriteBack::new(app.store.clone(), app.ghl.clone(), Arc::new(Vec::new()));
    let key = secrecy::SecretString::from(sandbox.lusha.api_key());
    let stop = tokio_util::sync::CancellationToken::new();
    let connector = LushaConnector::new(&lusha_settings, key, writeback, stop.clone()).unwrap();
    let search = &lusha_settings.leads[0];

    // Before the crash: the lead was enriched (paid) and its result stored; every other lead
    // of the search is already known.
    let leads = sandbox.lusha.lead_ids();
    let lead = leads.iter().find(|id| matches!(sandbox.lusha.lookup(&Identity::Id((*id).clone())), Lookup::Found(p) if !p.location.is_eu_contact)).unwrap().clone();
    let reveal = vec!["emails".to_owned(), "phones".to_owned()];
    let response = connector.lusha().enrich(std::slice::from_ref(&lead), &reveal, false).await.unwrap();
    let result = response["results"][0].clone();
    assert_eq!(result["id"].as_str(), Some(lead.as_str()));
    let recorded: Vec<NewLead> =
        leads.iter().map(|id| NewLead { lead_id: id, result: (*id == lead).then_some(&result), credits: 6 }).collect();
    let day = ghl_sync::connectors::lusha::utc_day(ghl_sync::store::now_ms());
    let spend = Spend { day: &day, credits: 6 };
    ghl_sync::store::lusha::record_leads(&app.store, spend, &location, "s", &recorded).await.unwrap();
    let enrich_calls = sandbox.lusha.stats().requests_to("contacts/enrich");
    let spent = sandbox.lusha.ledger().spent;

    let report = connector.poll_leads(search, &stop).await.unwrap();
    assert_eq!((report.new, report.created, report.updated), (0, 1, 0), "{report:?}");
    assert_eq!(sandbox.lusha.stats().requests_to("contacts/enrich"), enrich_calls, "no second Lusha call");
    assert_eq!(sandbox.lusha.ledger().spent, spent);
    assert_eq!(sandbox.ghl.contact_ids(&location).len(), 1);

    // A crash right after the GHL create, before the lead was marked imported: the repeat
    // finds its own done write and creates nothing.
    sqlx::query("UPDATE lusha_leads SET status = 'enriched' WHERE lead_id = $1")
        .bind(&lead)
        .execute(&mut crate::helpers::raw(&app.store).await)
        .await
        .unwrap();
    let again = connector.poll_leads(search, &stop).await.unwrap();
    assert_eq!(again.created + again.updated, 1, "{again:?}");
    assert_eq!(sandbox.ghl.contact_ids(&location).len(), 1, "no duplicate contact");
    assert_eq!(sandbox.lusha.stats().requests_to("contacts/enrich"), enrich_calls);
    sandbox.stop().await;
}

/// Issue 17, defect 5: with the default budget (`daily_credit_cap = 500`,
/// `max_credits_per_contact = 12`) 60 new contacts used to get one call of floor(500/12) = 41
/// lookups and the other 19 were parked until the next UTC midnight, although the 41 had
/// really cost a fraction of the cap. Admission now runs before every call on what Lusha
/// really charged: the daemon enriches all 60 at once, over two calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_new_contacts_are_all_enriched_the_same_day_when_real_spend_leaves_room() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let emails = sandbox.lusha.sample_emails(60, found);
    let ids = create_contacts(&sandbox, &emails);
    let identities: Vec<Identity> = emails.iter().map(|e| Identity::email(e.clone())).collect();
    let predicted = sandbox.lusha.predict_cost(&identities, &["emails", "phones"], true);
    let defaults = LushaSettings::default();
    let (cap, per_contact) = (defaults.daily_credit_cap, defaults.max_credits_per_contact);
    assert_eq!((cap, per_contact), (500, 12), "the defaults the issue names");
    let worst_case_batch = usize::try_from(cap / per_contact).unwrap();
    assert!(ids.len() > worst_case_batch, "more contacts than the worst case admits at once");
    assert!(predicted + per_contact <= cap, "all 60 really fit under the cap ({predicted} credits)");

    let settings = settings(&sandbox, dir.path(), |lusha| {
        lusha.daily_credit_cap = defaults.daily_credit_cap;
        lusha.max_credits_per_contact = defaults.max_credits_per_contact;
        lusha.credit_reserve = defaults.credit_reserve;
    });
    let app = crate::helpers::app(config(settings)).await.unwrap();
    assert_eq!(sync_all(&app).await, 60, "all 60 are in the outbox before the daemon starts");
    let stop = tokio_util::sync::CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));

    let enriched = |s: &Sandbox| {
        ids.iter()
            .filter(|id| s.ghl.contact(id).is_some_and(|c| tags(&c).contains(&"lusha:enriched".to_owned())))
            .count()
    };
    let all = crate::helpers::eventually(Duration::from_secs(30), || enriched(&sandbox) == ids.len()).await;
    stop.cancel();
    daemon.await.unwrap().unwrap();
    assert!(all, "{} of 60 enriched; Lusha requests {:?}", enriched(&sandbox), sandbox.lusha.stats());
    let store = crate::helpers::open_store(&dir.path().join("ghl-sync.db")).await;

    // Every credit is accounted for: what Lusha's ledger charged is what we booked.
    let ledger = sandbox.lusha.ledger();
    assert_eq!(ledger.spent, predicted, "each contact paid for once");
    let today = ghl_sync::connectors::lusha::utc_day(ghl_sync::store::now_ms());
    let booked = ghl_sync::store::lusha::spent_on(&store, &today).await.unwrap();
    assert_eq!(booked.spent, ledger.spent, "our books match Lusha's ledger");
    assert!(booked.spent <= cap);
    // The worst case bounds the first call at 41 contacts; the real spend admits the rest in
    // the calls that follow, the same day.
    let calls = sandbox.lusha.stats().requests_to("contacts/search-and-enrich");
    assert!(calls >= 2, "{calls} calls");
    assert_eq!(u64::try_from(booked.calls).unwrap(), calls, "every call booked");
    // Nothing was parked: no Lusha row is left waiting, none was set aside.
    let waiting: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE connector = 'lusha' AND status = 'pending'")
            .fetch_one(&crate::helpers::db(&store).await)
            .await
            .unwrap();
    assert_eq!(waiting, 0, "no contact parked while the real budget had room");
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(&crate::helpers::db(&store).await)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    sandbox.stop().await;
}

/// The other side of defect 5: a cap that the real spend has used up (less than one contact's
/// worst case left) still parks the rest until the next UTC day, without a Lusha call, and the
/// cap is never passed. The contacts admitted before that are far more than the worst case
/// alone would have allowed (cap / per contact), because each call is admitted on real spend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_cap_used_up_by_real_spend_parks_the_rest_until_the_next_utc_day() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let emails = sandbox.lusha.sample_emails(20, found);
    create_contacts(&sandbox, &emails);
    let (cap, per_contact) = (30, 12);
    let tweak = |lusha: &mut LushaSettings| {
        lusha.daily_credit_cap = cap;
        lusha.max_credits_per_contact = per_contact;
    };
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), tweak))).await.unwrap();
    let started = ghl_sync::store::now_ms();
    let next_day =
        started + i64::try_from(ghl_sync::connectors::lusha::until_next_utc_day(started).as_millis()).unwrap();
    sync_all(&app).await;
    for _ in 0..5 {
        app.dispatcher.run_once().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let spent = sandbox.lusha.ledger().spent;
    assert!(spent <= cap, "the cap is never passed: {spent}");
    assert!(cap - spent < per_contact, "parked only once less than one contact's worst case was left: {spent}");
    let today = ghl_sync::connectors::lusha::utc_day(started);
    assert_eq!(ghl_sync::store::lusha::spent_on(&app.store, &today).await.unwrap().spent, spent);
    let enriched: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE connector = 'lusha' AND status = 'done'")
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap();
    assert!(enriched > cap / per_contact, "{enriched} enriched: admission used the real spend, not the worst case");
    let parked: Vec<i64> =
        sqlx::query_scalar("SELECT next_attempt_at FROM outbox WHERE connector = 'lusha' AND status = 'pending'")
            .fetch_all(&crate::helpers::db(&app.store).await)
            .await
            .unwrap();
    assert_eq!(parked.len() as i64 + enriched, 20, "nothing lost");
    assert!(!parked.is_empty());
    assert!(parked.iter().all(|at| *at >= next_day), "parked until the next UTC day: {parked:?} vs {next_day}");
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    // Parked: no more Lusha calls. The other connector delivered everything meanwhile.
    let requests = sandbox.lusha.stats().total_requests();
    app.dispatcher.run_once().await;
    assert_eq!(sandbox.lusha.stats().total_requests(), requests);
    assert_eq!(pending(&app, "webhook.test").await, 0);
    assert_eq!(sandbox.sink.accepted(Some("test")).len(), 20);
    sandbox.stop().await;
}

// Current-thread runtime: the log capture (a thread-local default) sees every task.
#[tokio::test(flavor = "current_thread")]
async fn no_budget_warning_is_logged_while_nothing_has_been_spent_today() {
    let (logs, _guard) = crate::helpers::capture();
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    // The defaults: 500 credits a day, at most 12 per contact, so one batch of 60 new contacts
    // is bounded to 41 lookups by the worst case alone.
    let settings = settings(&sandbox, dir.path(), |lusha| {
        lusha.daily_credit_cap = 500;
        lusha.max_credits_per_contact = 12;
    });
    create_contacts(&sandbox, &sandbox.lusha.sample_emails(60, |_| true));
    let app = crate::helpers::app(config(settings)).await.unwrap();
    sync_all(&app).await;
    app.dispatcher.run_once().await;
    assert!(sandbox.lusha.ledger().spent > 0, "the first batch was enriched");
    let text = logs.text();
    let warned = text.lines().filter(|l| l.contains("\"level\":\"WARN\"")).find(|l| l.contains("budget reached"));
    assert!(warned.is_none(), "a budget warning with nothing spent before the batch: {warned:?}");
    sandbox.stop().await;
}
