//! Security properties of the running daemon: a full run at trace level (backfill, GHL
//! webhooks, Lusha enrichment with write-back, signed webhook deliveries, the admin view)
//! prints no token, secret, email, phone or name; the admin contact view refuses
//! unauthenticated and cross-origin use. (Every other test that runs the binary has its
//! output scanned for credentials by `helpers::collect`.)

use std::time::Duration;

use ghl_sync_sandbox::ghl::GhlOptions;
use ghl_sync_sandbox::lusha::{Lookup, LushaOptions};
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use serde_json::Value;

use crate::helpers::{credentials_in, eventually, signal, spawn, wait_with_limit, write_config};

const ADMIN: &str = "admin-token-5f1c0e7a9b2d4c68";
const HOOK_SECRET: &str = "whsec-security-0123456789abcdef";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn sandbox() -> Sandbox {
    let ghl = GhlOptions {
        locations: 1,
        contacts_per_location: 15,
        burst_max: 100_000,
        burst_window: Duration::from_secs(1),
        daily_max: 10_000_000,
        ..GhlOptions::default()
    };
    let lusha = LushaOptions { usage_per_minute: 0, ..LushaOptions::default() };
    Sandbox::start(SandboxOptions { ghl, lusha, ..Default::default() }, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

fn daemon_config(sandbox: &Sandbox, dir: &std::path::Path, port: u16) -> String {
    let location = &sandbox.ghl.locations()[0];
    format!(
        "[store]\n{store}\
         [ghl]\nbase_url = \"{ghl}\"\n[[ghl.locations]]\nid = \"{id}\"\npit = \"{pit}\"\n\
         [ghl.webhooks]\npublic_keys = [\"{key}\"]\n\
         [server]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nadmin_token = \"{ADMIN}\"\n\
         [sync]\ncontacts_interval = \"60s\"\nindex_lag_margin = \"0s\"\ndirty_debounce = \"0s\"\n\
         [limits]\nghl_burst_max = 100000\nghl_burst_window = \"1s\"\nghl_daily_budget = 10000000\n\
         [dispatch]\npoll_interval = \"100ms\"\nbackoff_base = \"20ms\"\nbackoff_max = \"200ms\"\n\
         [log]\nlevel = \"trace\"\nformat = \"json\"\n\
         [connectors.webhook.test]\nurl = \"{sink}\"\nsecret = \"{HOOK_SECRET}\"\n\
         [connectors.lusha]\nbase_url = \"{lusha}\"\napi_key = \"{lusha_key}\"\ndaily_credit_cap = 0\ncredit_reserve = 0\n\
         [connectors.lusha.limits]\nper_minute = 60000\nper_hour = 1000000\nper_day = 1000000\n",
        store = crate::helpers::store_keys(&dir.join("ghl-sync.db")),
        ghl = sandbox.ghl_url(),
        id = location.id,
        pit = location.pit,
        key = sandbox.ghl.webhook_public_key().replace('\n', "\\n"),
        sink = sandbox.sink_url("test"),
        lusha = sandbox.lusha_url(),
        lusha_key = sandbox.lusha.api_key(),
    )
}

/// Values of personal data in a GHL contact: email, phone, "first last".
fn personal_values(contact: &Value) -> Vec<String> {
    let mut values = Vec::new();
    for field in ["email", "phone"] {
        if let Some(value) = contact[field].as_str().filter(|v| v.len() > 5) {
            values.push(value.to_owned());
        }
    }
    if let (Some(first), Some(last)) = (contact["firstName"].as_str(), contact["lastName"].as_str())
        && !first.is_empty()
        && !last.is_empty()
    {
        values.push(format!("{first} {last}"));
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_run_at_trace_level_logs_no_token_secret_email_phone_or_name() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let location = sandbox.ghl.locations()[0].id.clone();
    // Contacts Lusha knows (so enrichment writes emails and phones back to GHL).
    let emails = sandbox.lusha.sample_emails(6, |l| matches!(l, Lookup::Found(p) if !p.location.is_eu_contact));
    for (i, email) in emails.iter().enumerate() {
        sandbox.ghl.create_contact(
            &location,
            serde_json::json!({"firstName": format!("Leakcheck{i}"), "lastName": "Person", "email": email}),
        );
    }
    let port = free_port();
    let path = write_config(dir.path(), &daemon_config(&sandbox, dir.path(), port));
    sandbox.ghl.set_webhook_url(Some(format!("http://127.0.0.1:{port}/webhooks/ghl").parse().unwrap()));

    let child = spawn(&["run", "--config", path.to_str().unwrap()], &[]);
    let contacts = sandbox.ghl.contact_ids(&location);
    let enriched = eventually(Duration::from_secs(40), || {
        contacts.iter().filter_map(|id| sandbox.ghl.contact(id)).filter(|c| c.to_string().contains("lusha:")).count()
            == contacts.len()
            && sandbox.sink.accepted(Some("test")).len() >= contacts.len()
    })
    .await;
    // A change announced by a signed GHL webhook.
    let changed = contacts[0].clone();
    sandbox.ghl.update_contact(&changed, serde_json::json!({"lastName": "Webhooked"}));
    let webhook = eventually(Duration::from_secs(15), || {
        sandbox.sink.accepted(Some("test")).iter().any(|d| d.body.contains("Webhooked"))
    })
    .await;
    // The admin view, with and without its token.
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/contacts/{changed}");
    let denied = http.get(&url).send().await.unwrap().status().as_u16();
    let shown = http.get(&url).bearer_auth(ADMIN).send().await.unwrap().status().as_u16();
    signal(&child, "TERM");
    let (status, stdout, stderr) =
        tokio::task::spawn_blocking(move || wait_with_limit(child, Duration::from_secs(20))).await.unwrap();
    assert!(enriched, "not every contact was enriched and delivered");
    assert!(webhook, "the webhooked change was not delivered");
    assert_eq!((denied, shown), (401, 200));
    assert_eq!(status.code(), Some(0));

    let logs = format!("{stdout}\n{stderr}");
    // The capture is the trace-level log of all of it.
    for needle in ["\"level\":\"TRACE\"", "webhook", "lusha", "Delivered a batch"] {
        assert!(logs.contains(needle), "the capture lacks {needle:?}; {} bytes", logs.len());
    }
    assert!(credentials_in(&logs).is_empty());
    let mut secrets =
        vec![sandbox.ghl.locations()[0].pit.clone(), sandbox.lusha.api_key(), ADMIN.into(), HOOK_SECRET.into()];
    secrets.push(sandbox.ghl.oauth_client().1);
    for (i, secret) in secrets.iter().enumerate() {
        assert!(!logs.contains(secret.as_str()), "secret #{i} appears in the logs");
    }
    let mut checked = 0;
    for id in &contacts {
        for value in personal_values(&sandbox.ghl.contact(id).unwrap()) {
            checked += 1;
            assert!(!logs.contains(&value), "personal data of contact {id} appears in the logs");
        }
    }
    assert!(checked >= contacts.len() * 2, "checked {checked} values");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_contact_view_refuses_unauthenticated_and_cross_origin_use() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = write_config(dir.path(), &daemon_config(&sandbox, dir.path(), port));
    let child = spawn(&["run", "--config", path.to_str().unwrap()], &[]);
    let location = sandbox.ghl.locations()[0].id.clone();
    let contact = sandbox.ghl.contact_ids(&location)[0].clone();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let url = format!("{base}/contacts/{contact}");
    let up = eventually(Duration::from_secs(20), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).await;
    assert!(up, "the daemon never listened");
    // Synced: the view has something to show.
    let mut shown = 0;
    for _ in 0..100 {
        shown = http.get(&url).bearer_auth(ADMIN).send().await.unwrap().status().as_u16();
        if shown == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown, 200);

    // No token, a wrong one, the token in another scheme or in the query: refused.
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(http.get(&url).send().await.unwrap()), 401);
    assert_eq!(status(http.get(&url).bearer_auth("wrong").send().await.unwrap()), 401);
    assert_eq!(status(http.get(&url).basic_auth("admin", Some(ADMIN)).send().await.unwrap()), 401);
    assert_eq!(status(http.get(format!("{url}?token={ADMIN}")).send().await.unwrap()), 401);

    // Cross-origin: a page elsewhere can neither pass a preflight nor read an answer, because
    // the daemon grants no origin (browsers send `Authorization` cross-origin only after a
    // preflight that allows it).
    let evil = "https://evil.example";
    let preflight = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", evil)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(!preflight.status().is_success(), "a preflight was accepted: {}", preflight.status());
    assert!(preflight.headers().get("access-control-allow-origin").is_none());
    assert!(preflight.headers().get("access-control-allow-headers").is_none());
    for path in [format!("/contacts/{contact}"), "/status.json".to_owned(), "/".to_owned()] {
        let response =
            http.get(format!("{base}{path}")).header("origin", evil).bearer_auth(ADMIN).send().await.unwrap();
        assert!(response.headers().get("access-control-allow-origin").is_none(), "{path} grants an origin");
        assert!(response.headers().get("access-control-allow-credentials").is_none(), "{path}");
    }
    signal(&child, "TERM");
    let (status, _, stderr) =
        tokio::task::spawn_blocking(move || wait_with_limit(child, Duration::from_secs(20))).await.unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    sandbox.stop().await;
}

#[tokio::test]
async fn the_credential_scan_finds_sandbox_tokens_and_ignores_flags_and_words() {
    let sandbox = sandbox().await;
    let pit = sandbox.ghl.locations()[0].pit.clone();
    let line = format!("{{\"msg\":\"calling GHL\",\"auth\":\"Bearer {pit}\"}}");
    assert_eq!(credentials_in(&line).iter().map(|(kind, _)| *kind).collect::<Vec<_>>(), ["pit"]);
    let tokens = format!("at-{} rt-{}", "0a".repeat(24), "f1".repeat(24));
    assert_eq!(credentials_in(&tokens).len(), 2);
    assert_eq!(credentials_in(&sandbox.lusha.api_key()).len(), 1);
    let harmless = "ghl-sync auth import-pit --pit-stdin; format-deadbeef; a pit-wrong token; Chat-0123";
    assert!(credentials_in(harmless).is_empty(), "{:?}", credentials_in(harmless));
    sandbox.stop().await;
}
