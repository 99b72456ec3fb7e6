//! The Lusha and Lucky Orange rule triggers end to end: each fires from the real mutation
//! (an enrichment, a lead import, a signal, an identification, a journey event, a replay
//! link), its rule's action lands in the GHL sandbox once, and a second delivery of the same
//! thing (a replay of the source's rows, the same event again, a second identification the
//! same day) does not act again.

use std::sync::Arc;
use std::time::Duration;

use ghl_sync::app::App;
use ghl_sync::config::{Dur, LuckyOrangeSettings, LushaSettings, Secret, Settings};
use ghl_sync::connectors::lucky_orange::config::{EventAction, VisitFields};
use ghl_sync::connectors::lucky_orange::{self as lo, LuckyOrangeConnector};
use ghl_sync::connectors::lusha::LushaConnector;
use ghl_sync::rules::emit::Emitter;
use ghl_sync::server::{self, RunningServer, ServerState};
use ghl_sync::store::lusha::NewSignal;
use ghl_sync::sync::engine::RunOptions;
use ghl_sync::writeback::WriteBack;
use ghl_sync_sandbox::ghl::GhlOptions;
use ghl_sync_sandbox::lusha::{Identity, Lookup, LushaOptions};
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::helpers::{config, settings_for};
use crate::rules::{actions_of, has_tag, location, requests};

const ORIGIN: &str = "https://www.example.com";
const LO_KEY: &str = "lucky-orange-test-key-0123456789-0123456789";

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

/// Sandbox settings plus the rules of `rules_toml` (`rules::with_rules`), with a breaker that
/// never opens.
fn with_rules(settings: Settings, rules_toml: &str) -> Settings {
    let mut settings = crate::rules::with_rules(settings, rules_toml);
    settings.dispatch.breaker_threshold = 1000;
    settings
}

fn lusha_settings(sandbox: &Sandbox) -> LushaSettings {
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
    lusha
}

/// Lucky Orange with two allow-listed journey events (each only tags, so the rule's task is
/// the only task) and visit fields off.
fn lo_settings() -> LuckyOrangeSettings {
    let mut events = std::collections::BTreeMap::new();
    for (name, tag) in [("pricing_viewed", "lo:pricing"), ("docs_viewed", "lo:docs")] {
        events.insert(name.to_owned(), EventAction { task: None, note: None, tag: Some(tag.into()) });
    }
    LuckyOrangeSettings {
        site_id: "site-1".into(),
        allowed_origins: vec![ORIGIN.into()],
        key: Some(Secret::new(LO_KEY.to_owned())),
        events,
        visit_fields: VisitFields::default(),
        ..LuckyOrangeSettings::default()
    }
}

async fn sync(app: &App) {
    for (location, result) in app.sync_once(None, RunOptions { dry_run: false, skip_sweep: true }).await.unwrap() {
        result.unwrap_or_else(|e| panic!("sync of {location} failed: {e}"));
    }
}

async fn pending(app: &App) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap()
}

/// Dispatcher passes until no outbox row is pending (bounded: 400 × 10 ms at most).
async fn drain(app: &App) {
    for _ in 0..400 {
        app.dispatcher.run_once().await;
        if pending(app).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("outbox not drained: {} rows pending", pending(app).await);
}

/// Contacts the action rows of `rule` are about.
async fn action_contacts(app: &App, rule: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT contact_id FROM outbox WHERE connector = $1 ORDER BY id")
        .bind(format!("rule.{rule}"))
        .fetch_all(&crate::helpers::db(&app.store).await)
        .await
        .unwrap()
}

/// Trigger event rows stored for the rules.
async fn events(app: &App) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE connector = 'rules'")
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap()
}

fn tag_posts(sandbox: &Sandbox) -> u64 {
    requests(sandbox, |r| r.starts_with("POST /contacts/:contactId/tags"))
}

async fn reset(app: &App, sql: &str) {
    sqlx::query(sql).execute(&mut crate::helpers::raw(&app.store).await).await.unwrap();
}

const ENRICH_RULES: &str = r#"
[[rules]]
name = "enriched"
on = ["lusha.enriched"]
when = "data.found && data.lusha_id != null"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-enriched"]

[[rules]]
name = "not-found"
on = ["lusha.not_found"]
when = "!data.found"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-not-found"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lusha_enriched_and_not_found_each_act_once_also_after_a_replay_of_the_lusha_rows() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = location(&sandbox);
    let hit = sandbox.lusha.sample_emails(1, |l| matches!(l, Lookup::Found(p) if !p.location.is_eu_contact));
    let miss = sandbox.lusha.sample_emails(1, |l| matches!(l, Lookup::NotFound { .. }));
    let found = sandbox.ghl.create_contact(&location, json!({"firstName": "Hit", "email": hit[0]}));
    let missing = sandbox.ghl.create_contact(&location, json!({"firstName": "Miss", "email": miss[0]}));
    let mut settings = with_rules(settings_for(&sandbox, dir.path()), ENRICH_RULES);
    settings.connectors.lusha = Some(lusha_settings(&sandbox));
    let app = crate::helpers::app(config(settings)).await.unwrap();

    sync(&app).await;
    drain(&app).await;

    assert!(has_tag(&sandbox, &found, "lusha:enriched"), "the enrichment wrote back");
    assert!(has_tag(&sandbox, &found, "r-enriched"), "{:?}", sandbox.ghl.contact(&found));
    assert!(!has_tag(&sandbox, &found, "r-not-found"));
    assert!(has_tag(&sandbox, &missing, "lusha:not_found"));
    assert!(has_tag(&sandbox, &missing, "r-not-found"), "{:?}", sandbox.ghl.contact(&missing));
    assert!(!has_tag(&sandbox, &missing, "r-enriched"));
    assert_eq!(actions_of(&app, "enriched").await, vec!["done"]);
    assert_eq!(action_contacts(&app, "enriched").await, vec![found.clone()]);
    assert_eq!(actions_of(&app, "not-found").await, vec!["done"]);
    assert_eq!(action_contacts(&app, "not-found").await, vec![missing.clone()]);

    // The sync reads the written-back contacts: no Lusha trigger from that.
    sync(&app).await;
    drain(&app).await;
    assert_eq!(actions_of(&app, "enriched").await.len() + actions_of(&app, "not-found").await.len(), 2);

    // A replay of every Lusha row with the write-back marked unfinished (as after a crash
    // before it was recorded): the write-back runs again from the cache, the triggers do not.
    let (events_before, tags_before) = (events(&app).await, tag_posts(&sandbox));
    reset(&app, "UPDATE lusha_cache SET written_at = NULL").await;
    reset(&app, "UPDATE outbox SET status = 'pending', attempts = 0 WHERE connector = 'lusha'").await;
    drain(&app).await;
    assert_eq!(events(&app).await, events_before, "no second trigger event");
    assert_eq!(actions_of(&app, "enriched").await, vec!["done"]);
    assert_eq!(actions_of(&app, "not-found").await, vec!["done"]);
    assert_eq!(tag_posts(&sandbox), tags_before, "no tag sent again");
    sandbox.stop().await;
}

const LEAD_RULES: &str = r#"
[[rules]]
name = "imported"
on = ["lusha.lead_imported"]
when = "data.action == 'created' && data.lead_id != ''"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-imported"]

[[rules]]
name = "company-change"
on = ["lusha.signal"]
when = "data.signal_type == 'companyChange'"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-signal"]
"#;

fn signal(id: &str, signal_type: &str, lead: &str) -> NewSignal {
    NewSignal {
        id: id.to_owned(),
        signal_type: signal_type.to_owned(),
        entity_type: Some("contact".into()),
        entity_id: Some(lead.to_owned()),
        subscription_id: Some("sub_1".into()),
        data: json!({"personId": lead, "currentTitle": "CTO", "currentCompanyName": "Initech"}),
        credits_charged: Some(1.0),
        sent_at: Some("2026-11-23T00:00:00Z".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lusha_lead_imported_and_signal_act_once_also_after_a_replay_of_the_leads_and_signals() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = location(&sandbox);
    // The first three leads of the search; the first one that Lusha finds already is a GHL
    // contact (its import is an `updated`, which the rule's condition leaves out).
    let leads: Vec<String> = sandbox.lusha.lead_ids().into_iter().take(3).collect();
    let (known_lead, person) = leads
        .iter()
        .find_map(|id| match sandbox.lusha.lookup(&Identity::Id(id.clone())) {
            Lookup::Found(p) if !p.location.is_eu_contact => Some((id.clone(), p)),
            _ => None,
        })
        .expect("a findable lead among the first three");
    let known =
        sandbox.ghl.create_contact(&location, json!({"firstName": "Known", "email": person.emails[0].email.clone()}));

    let mut settings = with_rules(settings_for(&sandbox, dir.path()), LEAD_RULES);
    let mut lusha = lusha_settings(&sandbox);
    lusha.leads = vec![toml::from_str(&format!("name = \"s\"\nlocation = \"{location}\"\nmax_per_poll = 3")).unwrap()];
    settings.connectors.lusha = Some(lusha.clone());
    let app = crate::helpers::app(config(settings)).await.unwrap();
    sync(&app).await;
    drain(&app).await;
    // The connector as the daemon builds it (with its rule emitter), for calling its passes.
    let writeback = WriteBack::new(app.store.clone(), app.ghl.clone(), Arc::new(Vec::new()));
    let stop = CancellationToken::new();
    let connector =
        LushaConnector::new(&lusha, secrecy::SecretString::from(sandbox.lusha.api_key()), writeback, stop.clone())
            .unwrap()
            .with_rules(Emitter::new(app.store.clone(), &app.config.rules));
    let search = lusha.leads[0].clone();

    let report = connector.poll_leads(&search, &stop).await.unwrap();
    assert_eq!(report.updated, 1, "{report:?}");
    assert!(report.created >= 1, "{report:?}");
    drain(&app).await;

    let lead_contacts: Vec<String> =
        sandbox.ghl.contact_ids(&location).into_iter().filter(|id| has_tag(&sandbox, id, "lusha:lead")).collect();
    assert_eq!(lead_contacts.len(), report.created + report.updated);
    let created: Vec<String> = lead_contacts.iter().filter(|id| **id != known).cloned().collect();
    for id in &created {
        assert!(has_tag(&sandbox, id, "r-imported"), "a created lead is tagged by the rule");
    }
    assert!(!has_tag(&sandbox, &known, "r-imported"), "an updated contact is not (data.action)");
    let mut acted = action_contacts(&app, "imported").await;
    acted.sort();
    let mut expected = created.clone();
    expected.sort();
    assert_eq!(acted, expected, "one action per created lead");
    assert!(actions_of(&app, "imported").await.iter().all(|s| s == "done"));

    // A replay of the imports (as after a crash before they were marked imported), with no
    // new lead listed: the imports repeat their keyed writes, the trigger does not fire again.
    let (events_before, tags_before) = (events(&app).await, tag_posts(&sandbox));
    reset(&app, "UPDATE lusha_leads SET status = 'enriched' WHERE status = 'imported'").await;
    let replay = ghl_sync::connectors::lusha::config::LeadSearch { max_per_poll: 0, ..search.clone() };
    let again = connector.poll_leads(&replay, &stop).await.unwrap();
    assert_eq!(again.created + again.updated, report.created + report.updated, "{again:?}");
    drain(&app).await;
    assert_eq!(events(&app).await, events_before, "no second lead_imported event");
    assert_eq!(actions_of(&app, "imported").await.len(), created.len());
    assert_eq!(tag_posts(&sandbox), tags_before, "no tag sent again");

    // Signals about the known lead: a companyChange fires the rule; another type does not.
    use ghl_sync::store::lusha::{Recorded, record_signal};
    let change = signal("5d0c1a8e-0000-4000-8000-00000000abcd", "companyChange", &known_lead);
    assert_eq!(record_signal(&app.store, &change).await.unwrap(), Recorded::Stored);
    let other = signal("5d0c1a8e-0000-4000-8000-00000000abce", "promotion", &known_lead);
    assert_eq!(record_signal(&app.store, &other).await.unwrap(), Recorded::Stored);
    let report = connector.process_signals(&stop).await.unwrap();
    assert_eq!(report.applied, 2, "{report:?}");
    drain(&app).await;
    assert!(has_tag(&sandbox, &known, "r-signal"));
    assert_eq!(actions_of(&app, "company-change").await, vec!["done"]);
    assert_eq!(action_contacts(&app, "company-change").await, vec![known.clone()]);

    // The same signal delivered again is a duplicate; a replay of the stored signals (as after
    // a crash before they were marked processed) writes nothing and fires nothing again.
    assert_eq!(record_signal(&app.store, &change).await.unwrap(), Recorded::Duplicate);
    let (events_before, tags_before) = (events(&app).await, tag_posts(&sandbox));
    reset(&app, "UPDATE lusha_signals SET processed_at = NULL").await;
    assert_eq!(connector.process_signals(&stop).await.unwrap().applied, 2);
    drain(&app).await;
    assert_eq!(events(&app).await, events_before, "no second signal event");
    assert_eq!(actions_of(&app, "company-change").await, vec!["done"]);
    assert_eq!(tag_posts(&sandbox), tags_before, "no tag sent again");
    sandbox.stop().await;
}

const LO_RULES: &str = r#"
[[rules]]
name = "identified"
on = ["lucky_orange.identified"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-identified"]

[[rules]]
name = "pricing-call"
on = ["lucky_orange.journey_event"]
when = "data.event == 'pricing_viewed'"
[[rules.actions]]
do = "ghl.create_task"
title = "Call {contact.firstName}: viewed pricing"
due = "in 2h"

[[rules]]
name = "replay"
on = ["lucky_orange.replay_link"]
when = "data.url.startsWith('https://') && data.session_id != ''"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-replay"]
"#;

async fn lo_app(sandbox: &Sandbox, dir: &std::path::Path) -> App {
    let mut settings = with_rules(settings_for(sandbox, dir), LO_RULES);
    settings.connectors.lucky_orange = Some(lo_settings());
    crate::helpers::app(config(settings)).await.unwrap()
}

/// The Lucky Orange connector as the daemon builds it (with its rule emitter).
fn lo_connector(app: &App) -> LuckyOrangeConnector {
    let keys = lo::token_keys(&app.config).unwrap();
    let ignored = Arc::new(app.engine.settings().ignored_custom_fields.clone());
    let writeback = WriteBack::new(app.store.clone(), app.ghl.clone(), ignored);
    LuckyOrangeConnector::new(app.config.settings.connectors.lucky_orange.as_ref().unwrap(), keys, writeback)
        .with_rules(Emitter::new(app.store.clone(), &app.config.rules))
}

async fn start_server(app: &App) -> (RunningServer, CancellationToken) {
    let state = ServerState::new(
        app.store.clone(),
        Arc::new(app.config.clone()),
        Arc::new(Notify::new()),
        server::install_metrics(),
    );
    let stop = CancellationToken::new();
    let running = server::start("127.0.0.1:0".parse().unwrap(), state, stop.clone()).await.unwrap();
    (running, stop)
}

async fn post(url: &str, body: Value) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("origin", ORIGIN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lucky_orange_identified_and_journey_event_act_once_per_day_and_per_event() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = location(&sandbox);
    let ada = sandbox.ghl.create_contact(&location, json!({"firstName": "Ada", "lastName": "Lovelace"}));
    let app = lo_app(&sandbox, dir.path()).await;
    sync(&app).await;
    drain(&app).await;
    let keys = lo::token_keys(&app.config).unwrap();
    let t = keys.mint(&ada, ghl_sync::store::now_ms() / 1000 + 3600);
    let (server, stop) = start_server(&app).await;
    let identity = format!("{}/lo/identity", server.url());
    let site_events = format!("{}/lo/events", server.url());

    // Identified twice the same day: one event, one tag.
    assert_eq!(post(&identity, json!({"t": t})).await, 200);
    drain(&app).await;
    assert!(has_tag(&sandbox, &ada, "r-identified"));
    assert_eq!(actions_of(&app, "identified").await, vec!["done"]);
    let tags_before = tag_posts(&sandbox);
    assert_eq!(post(&identity, json!({"t": t})).await, 200);
    drain(&app).await;
    assert_eq!(actions_of(&app, "identified").await, vec!["done"], "once per contact and UTC day");
    assert_eq!(tag_posts(&sandbox), tags_before);

    // pricing_viewed twice (the same event reported again) and docs_viewed once: one task,
    // from the rule whose condition selects pricing_viewed.
    let pricing = json!({"t": t, "type": "event", "name": "pricing_viewed", "page": "/pricing"});
    assert_eq!(post(&site_events, pricing.clone()).await, 202);
    assert_eq!(post(&site_events, pricing).await, 202);
    let docs = json!({"t": t, "type": "event", "name": "docs_viewed", "page": "/docs"});
    assert_eq!(post(&site_events, docs).await, 202);
    let connector = lo_connector(&app);
    let report = connector.apply_pending().await;
    assert_eq!(report.failed, 0, "{report:?}");
    drain(&app).await;
    let calls = |s: &Sandbox| s.ghl.tasks(&ada).iter().filter(|t| t["title"] == "Call Ada: viewed pricing").count();
    assert_eq!(calls(&sandbox), 1, "{:?}", sandbox.ghl.tasks(&ada));
    assert_eq!(sandbox.ghl.tasks(&ada).len(), 1, "docs_viewed makes no task");
    assert!(has_tag(&sandbox, &ada, "lo:docs"), "the docs event was applied");
    assert_eq!(actions_of(&app, "pricing-call").await, vec!["done"]);

    // A replay of every stored site event (as after a crash before they were marked applied).
    let events_before = events(&app).await;
    reset(&app, "UPDATE lo_events SET status = 'pending' WHERE kind = 'event'").await;
    connector.apply_pending().await;
    drain(&app).await;
    assert_eq!(events(&app).await, events_before, "no second journey event");
    assert_eq!(calls(&sandbox), 1);
    assert_eq!(actions_of(&app, "pricing-call").await, vec!["done"]);
    stop.cancel();
    server.stopped().await.unwrap();
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lucky_orange_replay_link_acts_once_per_session_also_after_a_replay() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = location(&sandbox);
    let ada = sandbox.ghl.create_contact(&location, json!({"firstName": "Ada"}));
    let app = lo_app(&sandbox, dir.path()).await;
    sync(&app).await;
    drain(&app).await;
    assert!(actions_of(&app, "replay").await.is_empty(), "no replay link yet");

    let url = |id: &str| format!("https://app.luckyorange.com/visitors/sessions/{id}/timeline");
    let set =
        |value: String| {
            assert!(sandbox.ghl.update_contact(
                &ada,
                json!({"customFields": [{"key": "contact.lo_session_url", "field_value": value}]})
            ));
        };
    set(url("sess_1"));
    sync(&app).await;
    drain(&app).await;
    assert!(has_tag(&sandbox, &ada, "lucky-orange:session"), "the connector noted the link");
    assert!(has_tag(&sandbox, &ada, "r-replay"));
    assert_eq!(actions_of(&app, "replay").await, vec!["done"]);

    // `ghl-sync replay` under new keys, a re-run of every delivery, another sync: nothing again.
    let (events_before, tags_before) = (events(&app).await, tag_posts(&sandbox));
    let lucky = app.connectors.iter().find(|c| c.id() == "lucky_orange").unwrap().clone();
    let filter = ghl_sync::cli::replay::ReplayFilter { new_keys: Some("again".into()), ..Default::default() };
    assert!(ghl_sync::cli::replay::replay(&app.store, lucky.as_ref(), &filter).await.unwrap().enqueued >= 1);
    drain(&app).await;
    reset(&app, "UPDATE outbox SET status = 'pending', attempts = 0 WHERE connector = 'lucky_orange'").await;
    drain(&app).await;
    sync(&app).await;
    drain(&app).await;
    assert_eq!(events(&app).await, events_before, "no second replay_link event");
    assert_eq!(actions_of(&app, "replay").await, vec!["done"]);
    assert_eq!(tag_posts(&sandbox), tags_before, "no tag sent again");

    // A new session is a new link: the rule acts again, once.
    set(url("sess_2"));
    sync(&app).await;
    drain(&app).await;
    assert_eq!(actions_of(&app, "replay").await, vec!["done", "done"]);
    sandbox.stop().await;
}
