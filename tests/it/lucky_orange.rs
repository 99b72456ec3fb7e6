//! The Lucky Orange bridge end to end against the fake GHL: identity tokens minted into a GHL
//! custom field (and kept out of the contact hash), the `/lo/identity` endpoint and its rules
//! (traits allow-list, every 204 case, 400/401, CORS, rate limit, body limit, no PII in logs),
//! journey events and visits applied to GHL once, replay links noted once per session.

use std::sync::Arc;
use std::time::Duration;

use ghl_sync::app::App;
use ghl_sync::config::{Dur, LuckyOrangeSettings, Secret, Settings};
use ghl_sync::connectors::lucky_orange::config::{EventAction, EventTask, VisitFields};
use ghl_sync::connectors::lucky_orange::{self as lo, LuckyOrangeConnector};
use ghl_sync::server::{self, RunningServer, ServerState};
use ghl_sync::store::writebacks::{self, NewWrite};
use ghl_sync::sync::engine::RunOptions;
use ghl_sync::writeback::WriteBack;
use ghl_sync_sandbox::ghl::GhlOptions;
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::helpers::{config, settings_for};

const ORIGIN: &str = "https://www.example.com";
const KEY: &str = "lucky-orange-test-key-0123456789-0123456789";

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

fn lo_settings() -> LuckyOrangeSettings {
    let mut events = std::collections::BTreeMap::new();
    events.insert(
        "pricing_viewed".to_owned(),
        EventAction {
            task: Some(EventTask {
                title: "Follow up: {name} viewed {page}".into(),
                body: Some("Lucky Orange event {event}".into()),
                due_in: Dur::secs(3600),
            }),
            note: None,
            tag: Some("lo:pricing".into()),
        },
    );
    LuckyOrangeSettings {
        site_id: "site-1".into(),
        allowed_origins: vec![ORIGIN.into()],
        key: Some(Secret::new(KEY.to_owned())),
        events,
        visit_fields: VisitFields {
            last_seen: Some("contact.lo_last_seen".into()),
            visits: Some("contact.lo_visits".into()),
            last_page: Some("contact.lo_last_page".into()),
            last_replay_url: None,
        },
        ..LuckyOrangeSettings::default()
    }
}

fn settings(sandbox: &Sandbox, dir: &std::path::Path, tweak: impl FnOnce(&mut LuckyOrangeSettings)) -> Settings {
    let mut settings = settings_for(sandbox, dir);
    settings.dispatch.backoff_base = Dur::millis(5);
    settings.dispatch.backoff_max = Dur::millis(20);
    let mut lo = lo_settings();
    tweak(&mut lo);
    settings.connectors.lucky_orange = Some(lo);
    settings
}

fn location(sandbox: &Sandbox) -> String {
    sandbox.ghl.locations()[0].id.clone()
}

async fn sync_all(app: &App) -> u64 {
    let mut changed = 0;
    for (location, result) in app.sync_once(None, RunOptions { dry_run: false, skip_sweep: true }).await.unwrap() {
        changed += result.unwrap_or_else(|e| panic!("sync of {location} failed: {e}")).contacts_changed;
    }
    changed
}

async fn pending(app: &App) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
        .fetch_one(&crate::helpers::db(&app.store).await)
        .await
        .unwrap()
}

async fn drain(app: &App) {
    for _ in 0..300 {
        app.dispatcher.run_once().await;
        if pending(app).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("outbox not drained");
}

/// The connector as the daemon builds it, for calling its passes directly.
fn connector(app: &App) -> LuckyOrangeConnector {
    let keys = lo::token_keys(&app.config).unwrap();
    let ignored = Arc::new(app.engine.settings().ignored_custom_fields.clone());
    let writeback = WriteBack::new(app.store.clone(), app.ghl.clone(), ignored);
    LuckyOrangeConnector::new(app.config.settings.connectors.lucky_orange.as_ref().unwrap(), keys, writeback)
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

fn custom(contact: &Value, id: &str) -> Option<String> {
    contact["customFields"]
        .as_array()?
        .iter()
        .find(|f| f["id"] == id)
        .and_then(|f| f["value"].as_str().map(str::to_owned).or_else(|| Some(f["value"].to_string())))
}

async fn field_id(app: &App, location: &str, key: &str) -> String {
    let fields = app.ghl.custom_fields(location, Some("contact"), ghl_sync::http::Priority::Poll).await.unwrap();
    fields.into_iter().find(|f| f.field_key.as_deref() == Some(key)).unwrap().id
}

fn tags(contact: &Value) -> Vec<String> {
    contact["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect()
}

async fn post_identity(http: &reqwest::Client, url: &str, origin: Option<&str>, body: String) -> reqwest::Response {
    let mut request = http.post(format!("{url}/lo/identity")).header("content-type", "application/json").body(body);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn identity_answers_only_allow_listed_traits_and_the_same_204_for_every_refusal() {
    let (logs, _guard) = crate::helpers::capture();
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let loc = location(&sandbox);
    let ada = sandbox.ghl.create_contact(
        &loc,
        json!({"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com", "phone": "+15550100"}),
    );
    let dnd = sandbox.ghl.create_contact(&loc, json!({"firstName": "Dee", "lastName": "Nd", "dnd": true}));
    let opted =
        sandbox.ghl.create_contact(&loc, json!({"firstName": "Opt", "lastName": "Out", "tags": ["lo:opt-out"]}));
    let later_dnd = sandbox.ghl.create_contact(&loc, json!({"firstName": "Later", "lastName": "Dnd"}));
    let deleted = sandbox.ghl.create_contact(&loc, json!({"firstName": "Gone", "lastName": "Soon"}));
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), |_| {}))).await.unwrap();
    sync_all(&app).await;
    let keys = lo::token_keys(&app.config).unwrap();
    let now = ghl_sync::store::now_ms() / 1000;
    let token = |id: &str| keys.mint(id, now + 3600);
    let (server, stop) = start_server(&app).await;
    let url = server.url();
    let http = reqwest::Client::new();

    // 200 with exactly the allow-listed traits, CORS for the allowed origin, no-store.
    let response = post_identity(&http, &url, Some(ORIGIN), json!({"t": token(&ada)}).to_string()).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["access-control-allow-origin"], ORIGIN);
    assert_eq!(headers["vary"], "Origin");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"id": ada, "traits": {"name": "Ada Lovelace"}}));

    // The GET form answers the same.
    let response = http.get(format!("{url}/lo/identity")).query(&[("t", token(&ada))]).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["traits"], json!({"name": "Ada Lovelace"}));

    // Another origin: 403 and no CORS header; the preflight of the allowed origin is answered.
    let response =
        post_identity(&http, &url, Some("https://evil.example"), json!({"t": token(&ada)}).to_string()).await;
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("access-control-allow-origin").is_none());
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{url}/lo/identity"))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], ORIGIN);
    assert!(preflight.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert_eq!(preflight.headers()["access-control-allow-headers"], "Content-Type");
    let other = http
        .request(reqwest::Method::OPTIONS, format!("{url}/lo/identity"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // A contact who turns DND after the token went out, and one deleted from the store.
    sandbox.ghl.update_contact(&later_dnd, json!({"dnd": true}));
    sync_all(&app).await;
    sqlx::query("DELETE FROM contacts WHERE contact_id = $1")
        .bind(&deleted)
        .execute(&mut crate::helpers::raw(&app.store).await)
        .await
        .unwrap();

    // Every refusal: 204 with an empty body.
    let expired = keys.mint(&ada, now - 1);
    for (case, t) in [
        ("expired", expired),
        ("unknown", token("no_such_contact_1")),
        ("deleted", token(&deleted)),
        ("dnd", token(&dnd)),
        ("dnd later", token(&later_dnd)),
        ("opted out", token(&opted)),
    ] {
        let response = post_identity(&http, &url, Some(ORIGIN), json!({ "t": t }).to_string()).await;
        assert_eq!(response.status(), 204, "{case}");
        assert_eq!(response.headers()["cache-control"], "no-store", "{case}");
        assert!(response.bytes().await.unwrap().is_empty(), "{case}");
    }

    // Malformed (400) and forged (401).
    let good = token(&ada);
    let forged = format!("{}AAAA", &good[..good.len() - 4]);
    for (body, status) in [
        ("not json".to_owned(), 400),
        (json!({"x": 1}).to_string(), 400),
        (json!({"t": "v1.nope"}).to_string(), 400),
        (json!({ "t": forged }).to_string(), 401),
    ] {
        assert_eq!(post_identity(&http, &url, Some(ORIGIN), body).await.status(), status);
    }
    // Bodies over 1 KiB are refused.
    let big = json!({"t": "a".repeat(2000)}).to_string();
    assert_eq!(post_identity(&http, &url, Some(ORIGIN), big).await.status(), 413);

    // The identification was recorded; logs carry the contact id, never the token or a trait.
    let identified: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM lo_events WHERE kind = 'identify' AND contact_id = $1")
            .bind(&ada)
            .fetch_one(&crate::helpers::db(&app.store).await)
            .await
            .unwrap();
    assert_eq!(identified, 2);
    let text = logs.text();
    assert!(text.contains(&ada), "the contact id is logged");
    for secret in [good.as_str(), "Ada Lovelace", "Lovelace", "ada@example.com", "+15550100"] {
        assert!(!text.contains(secret), "{secret} leaked into the logs");
    }
    stop.cancel();
    server.stopped().await.unwrap();
}

#[tokio::test]
async fn a_client_over_its_rate_limit_gets_429() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let app =
        crate::helpers::app(config(settings(&sandbox, dir.path(), |lo| lo.rate_limit_per_minute = 3))).await.unwrap();
    let (server, stop) = start_server(&app).await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let body = json!({"t": "v1.x.y"}).to_string();
        statuses.push(post_identity(&http, &server.url(), Some(ORIGIN), body).await.status().as_u16());
    }
    assert_eq!(statuses, vec![400, 400, 400, 429, 429]);
    stop.cancel();
    server.stopped().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_minted_in_scope_capped_per_pass_and_never_fire_other_connectors() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let loc = location(&sandbox);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(sandbox.ghl.create_contact(&loc, json!({"firstName": format!("P{i}"), "tags": ["newsletter"]})));
    }
    let outsider = sandbox.ghl.create_contact(&loc, json!({"firstName": "Out"}));
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), |lo| {
        lo.max_mints_per_pass = 3;
        lo.scope_tags = vec!["newsletter".into()];
    })))
    .await
    .unwrap();
    sync_all(&app).await;
    drain(&app).await;
    let delivered = sandbox.sink.accepted(Some("test")).len();
    assert_eq!(delivered, 6);
    let connector = connector(&app);

    let first = connector.mint_pass().await;
    assert_eq!((first.minted, first.deferred, first.failed), (3, 2, 0));
    let second = connector.mint_pass().await;
    assert_eq!((second.minted, second.deferred), (2, 0));
    assert_eq!(connector.mint_pass().await.minted, 0, "fresh tokens are not re-minted");

    let field = field_id(&app, &loc, "contact.lo_token").await;
    let keys = lo::token_keys(&app.config).unwrap();
    for id in &ids {
        let token = custom(&sandbox.ghl.contact(id).unwrap(), &field).expect("a token in GHL");
        let claims = keys.verify(&token, ghl_sync::store::now_ms() / 1000).unwrap();
        assert_eq!(&claims.sub, id);
    }
    assert_eq!(custom(&sandbox.ghl.contact(&outsider).unwrap(), &field), None, "out of scope");

    // The sync reads the re-minted contacts back: nothing changes for other connectors.
    sync_all(&app).await;
    drain(&app).await;
    assert_eq!(sandbox.sink.accepted(Some("test")).len(), delivered, "a token write fired no connector");

    // With less than half the life left, a pass re-mints (the clock moves 4 of 7 days on).
    let later = ghl_sync::store::now_ms() + 4 * 86_400_000;
    let connector = connector.with_clock(ghl_sync::clock::Clock::from_fn(move || later));
    assert_eq!(connector.mint_pass().await.minted, 3, "capped again");
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journey_event_makes_exactly_one_task_and_visits_are_throttled() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let loc = location(&sandbox);
    let ada = sandbox.ghl.create_contact(&loc, json!({"firstName": "Ada", "lastName": "Lovelace"}));
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), |_| {}))).await.unwrap();
    sync_all(&app).await;
    drain(&app).await;
    let keys = lo::token_keys(&app.config).unwrap();
    let t = keys.mint(&ada, ghl_sync::store::now_ms() / 1000 + 3600);
    let (server, stop) = start_server(&app).await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let http = http.clone();
        let url = format!("{}/lo/events", server.url());
        async move { http.post(url).header("origin", ORIGIN).json(&body).send().await.unwrap().status().as_u16() }
    };
    // Twice the same event, a name not on the allow-list, two visits.
    assert_eq!(post(json!({"t": t, "type": "event", "name": "pricing_viewed", "page": "/pricing?x=1"})).await, 202);
    assert_eq!(post(json!({"t": t, "type": "event", "name": "pricing_viewed", "page": "/pricing"})).await, 202);
    assert_eq!(post(json!({"t": t, "type": "event", "name": "not_listed"})).await, 400);
    let visit = json!({"t": t, "type": "visit", "page": "/home", "visits": 3, "session": "sess_1"});
    assert_eq!(post(visit.clone()).await, 202);
    assert_eq!(post(visit).await, 202);

    let connector = connector(&app);
    let report = connector.apply_pending().await;
    assert_eq!((report.applied, report.skipped, report.failed), (3, 1, 0), "{report:?}");
    assert_eq!(connector.apply_pending().await, Default::default(), "nothing left");

    let tasks = sandbox.ghl.tasks(&ada);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["title"], "Follow up: Ada Lovelace viewed /pricing");
    let contact = sandbox.ghl.contact(&ada).unwrap();
    assert!(tags(&contact).contains(&"lo:pricing".to_owned()));
    assert_eq!(custom(&contact, &field_id(&app, &loc, "contact.lo_visits").await).as_deref(), Some("3"));
    assert_eq!(custom(&contact, &field_id(&app, &loc, "contact.lo_last_page").await).as_deref(), Some("/home"));

    // A replay of every stored event (as after a crash before they were marked) adds nothing.
    sqlx::query("UPDATE lo_events SET status = 'pending' WHERE kind = 'event'")
        .execute(&mut crate::helpers::raw(&app.store).await)
        .await
        .unwrap();
    connector.apply_pending().await;
    assert_eq!(sandbox.ghl.tasks(&ada).len(), 1);
    stop.cancel();
    server.stopped().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_link_makes_one_note_and_one_tag_after_replays_and_a_crash() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let loc = location(&sandbox);
    let ada = sandbox.ghl.create_contact(&loc, json!({"firstName": "Ada"}));
    let bob = sandbox.ghl.create_contact(&loc, json!({"firstName": "Bob"}));
    let eve = sandbox.ghl.create_contact(&loc, json!({"firstName": "Eve"}));
    let app = crate::helpers::app(config(settings(&sandbox, dir.path(), |_| {}))).await.unwrap();
    sync_all(&app).await;
    drain(&app).await;

    let url = |id: &str| format!("https://app.luckyorange.com/visitors/sessions/{id}/timeline");
    let set = |contact: &str, value: String| {
        assert!(sandbox.ghl.update_contact(
            contact,
            json!({"customFields": [{"key": "contact.lo_session_url", "field_value": value}]})
        ));
    };
    set(&ada, url("sess_ada"));
    set(&eve, "javascript:alert(1)//https://app.luckyorange.com/visitors/sessions/x/timeline".into());
    // Bob: a crash after the key was stored and before the note was created.
    let key = ghl_sync::writeback::key(&["lo_session", &loc, &bob, "sess_bob"]);
    let content = ghl_sync::writeback::child_content_key(
        None,
        Some(&format!("Lucky Orange session replay: {}", url("sess_bob"))),
    );
    let write = NewWrite { key: &key, location: &loc, contact_id: Some(&bob), kind: "note", content: Some(&content) };
    writebacks::begin(&app.store, &write).await.unwrap();
    set(&bob, url("sess_bob"));

    sync_all(&app).await;
    drain(&app).await;
    let notes = |id: &str| sandbox.ghl.notes(id);
    for (id, session) in [(&ada, "sess_ada"), (&bob, "sess_bob")] {
        let notes = notes(id);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0]["body"], format!("Lucky Orange session replay: {}", url(session)));
        assert!(tags(&sandbox.ghl.contact(id).unwrap()).contains(&"lucky-orange:session".to_owned()));
    }
    assert!(notes(&eve).is_empty(), "an invalid URL makes no note");
    assert!(!tags(&sandbox.ghl.contact(&eve).unwrap()).contains(&"lucky-orange:session".to_owned()));

    // `ghl-sync replay` (even under new keys), a re-run of every delivery, and another sync:
    // still one note each.
    let connector = app.connectors.iter().find(|c| c.id() == "lucky_orange").unwrap().clone();
    let filter = ghl_sync::cli::replay::ReplayFilter { new_keys: Some("again".into()), ..Default::default() };
    let replayed = ghl_sync::cli::replay::replay(&app.store, connector.as_ref(), &filter).await.unwrap();
    assert_eq!(replayed.enqueued, 3);
    drain(&app).await;
    sqlx::query("UPDATE outbox SET status = 'pending' WHERE connector = 'lucky_orange'")
        .execute(&mut crate::helpers::raw(&app.store).await)
        .await
        .unwrap();
    drain(&app).await;
    sync_all(&app).await;
    drain(&app).await;
    assert_eq!(notes(&ada).len(), 1);
    assert_eq!(notes(&bob).len(), 1);
    // A new session: a second note.
    set(&ada, url("sess_ada_2"));
    sync_all(&app).await;
    drain(&app).await;
    assert_eq!(notes(&ada).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contact_view_insights_metrics_and_check_show_the_bridge() {
    use ghl_sync::connectors::Connector as _;
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let loc = location(&sandbox);
    let ada = sandbox.ghl.create_contact(&loc, json!({"firstName": "Ada", "lastName": "Lovelace"}));
    let mut settings = settings(&sandbox, dir.path(), |_| {});
    settings.server.admin_token = Some(Secret::new("admin-token-lo".to_owned()));
    let app = crate::helpers::app(config(settings)).await.unwrap();
    sync_all(&app).await;
    drain(&app).await;
    let connector = connector(&app);
    assert_eq!(connector.mint_pass().await.minted, 1);
    let check = connector.check().await.unwrap();
    assert!(check.detail.contains("lo.js?site-id=site-1"), "{}", check.detail);

    let keys = lo::token_keys(&app.config).unwrap();
    let t = keys.mint(&ada, ghl_sync::store::now_ms() / 1000 + 3600);
    let (server, stop) = start_server(&app).await;
    let http = reqwest::Client::new();
    assert_eq!(post_identity(&http, &server.url(), Some(ORIGIN), json!({ "t": t }).to_string()).await.status(), 200);
    let event = json!({"t": t, "type": "event", "name": "pricing_viewed", "page": "/pricing"});
    let status = http.post(format!("{}/lo/events", server.url())).json(&event).send().await.unwrap().status();
    assert_eq!(status, 202);
    connector.apply_pending().await;
    sandbox.ghl.update_contact(
        &ada,
        json!({"customFields": [{"key": "contact.lo_session_url", "field_value": "https://app.luckyorange.com/visitors/sessions/s1/timeline"}]}),
    );
    sync_all(&app).await;
    drain(&app).await;

    let admin = |path: &str| http.get(format!("{}{path}", server.url())).bearer_auth("admin-token-lo").send();
    let view = admin(&format!("/contacts/{ada}")).await.unwrap().text().await.unwrap();
    assert!(view.contains("<h2>Lucky Orange</h2>"), "{view}");
    assert!(view.contains("Identified on the site 1 time(s)"), "{view}");
    assert!(view.contains("<a href=\"https://app.luckyorange.com/visitors/sessions/s1/timeline\""), "{view}");
    assert!(view.contains("pricing_viewed") && view.contains("task+tag"), "{view}");

    let insights = admin("/insights").await.unwrap();
    assert_eq!(insights.status(), 200);
    let insights = insights.text().await.unwrap();
    assert!(insights.contains("<svg") && insights.contains("pricing_viewed"), "{insights}");
    assert!(!insights.contains("Lovelace"), "no personal data on the insights page");
    let anonymous = http.get(format!("{}/insights", server.url())).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    let metrics = http.get(format!("{}/metrics", server.url())).send().await.unwrap().text().await.unwrap();
    for line in [
        "ghl_sync_lucky_orange_tokens_live 1",
        "ghl_sync_lucky_orange_identified_30d 1",
        "ghl_sync_lucky_orange_replays_30d 1",
        "ghl_sync_lucky_orange_tasks_30d 1",
        "ghl_sync_lucky_orange_events_30d{event=\"pricing_viewed\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing");
    }
    assert!(!metrics.contains(&ada) && !metrics.contains("Lovelace"), "no contact data in metrics");
    stop.cancel();
    server.stopped().await.unwrap();

    // A configured field that GHL does not have fails the check, naming it.
    let mut broken = app.config.settings.connectors.lucky_orange.clone().unwrap();
    broken.token_field_key = "contact.no_such_field".into();
    let writeback = WriteBack::new(app.store.clone(), app.ghl.clone(), Arc::new(Vec::new()));
    let error = LuckyOrangeConnector::new(&broken, keys, writeback).check().await.unwrap_err();
    assert!(error.to_string().contains("contact.no_such_field"), "{error}");
}
