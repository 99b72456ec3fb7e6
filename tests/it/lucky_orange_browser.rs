//! The site snippet in a real browser: headless Chromium (`chromium --headless --dump-dom`)
//! loads pages served by this test (another origin than the daemon, so CORS is real) with
//! `/lo/snippet.js` from the daemon and a stub `window.LO` that records calls. Each page writes
//! what it saw as JSON into `<pre id="result">`, which the test reads from the dumped DOM.
//!
//! Without a `chromium` binary the test is skipped with a message, unless
//! `GHL_SYNC_REQUIRE_BROWSER=1` (set by `.ci/run`, which installs Chromium) makes it fail.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::Html;
use ghl_sync::config::{Dur, LuckyOrangeSettings, Secret};
use ghl_sync::connectors::lucky_orange::config::{EventAction, EventTask};
use ghl_sync::connectors::lucky_orange::{self as lo, LuckyOrangeConnector};
use ghl_sync::server::{self, ServerState};
use ghl_sync::sync::engine::RunOptions;
use ghl_sync::writeback::WriteBack;
use ghl_sync_sandbox::ghl::GhlOptions;
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"].into_iter().find_map(|name| {
        let found = std::process::Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().ok()?;
        let path = String::from_utf8_lossy(&found.stdout).trim().to_owned();
        (found.status.success() && !path.is_empty()).then_some(path)
    })
}

/// The test page. `mode`: `stub` (Lucky Orange loads 50 ms later), `absent` (never loads),
/// `optout` (the visitor has the `lo-opt-out` cookie).
fn page(daemon: &str, mode: &str) -> String {
    let optout = if mode == "optout" { "document.cookie = 'lo-opt-out=true; path=/';" } else { "" };
    let load_stub = if mode == "absent" { "" } else { "setTimeout(loadStub, 50);" };
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8">
<script>
  window.__errors = [];
  window.addEventListener('error', function (e) {{ __errors.push(String(e.message)); }});
  window.addEventListener('unhandledrejection', function (e) {{ __errors.push('rejection: ' + e.reason); }});
  window.__calls = [];
  window.__urlBeforeSnippet = location.href;
  {optout}
  localStorage.setItem('lo-session', JSON.stringify({{ id: 'test-session-1' }}));
</script>
<script src="{daemon}/lo/snippet.js"></script>
<script>
  window.__urlAfterSnippet = location.href;
  function loadStub() {{
    window.__urlWhenStubLoads = location.href;
    var ready = {{ visitor: Promise.resolve(), events: Promise.resolve(), privacy: Promise.resolve() }};
    var LO = {{
      $internal: {{ ready: function (m) {{ return ready[m]; }} }},
      visitor: {{ identify: function () {{ __calls.push(['identify'].concat([].slice.call(arguments))); }} }},
      events: {{ track: function () {{ __calls.push(['track'].concat([].slice.call(arguments))); }} }},
      privacy: {{ setConsentStatus: function (v) {{ __calls.push(['consent', v]); }} }}
    }};
    (window.LOQ || []).forEach(function (c) {{ if (c[0] === 'ready') c[1](LO); }});
    window.LOQ = {{ push: function (c) {{ if (c[0] === 'ready') c[1](LO); }} }};
  }}
  {load_stub}
</script>
</head><body>
<form id="f" action="/never"><input type="hidden" name="lo_session_url" value=""></form>
<pre id="result">pending</pre>
<script>
  var form = document.getElementById('f');
  form.addEventListener('submit', function (e) {{ e.preventDefault(); window.__submitted = form.elements.lo_session_url.value; }});
  setTimeout(function () {{
    try {{ window.ghlSync.track('pricing_viewed', {{ plan: 'pro' }}); }} catch (e) {{ __errors.push('track: ' + e); }}
    form.requestSubmit();
  }}, 1500);
  setTimeout(function () {{
    document.getElementById('result').textContent = JSON.stringify({{
      before: __urlBeforeSnippet, after: __urlAfterSnippet, atStub: window.__urlWhenStubLoads || null,
      calls: __calls, submitted: window.__submitted, errors: __errors, hasGhlSync: typeof window.ghlSync
    }});
  }}, 3000);
</script>
</body></html>"#
    )
}

/// Loads `url` in headless Chromium and returns the JSON the page wrote.
async fn run_page(chromium: &str, url: &str) -> Value {
    let profile = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            &format!("--user-data-dir={}", profile.path().display()),
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await.expect("chromium finished").unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    let start = dom.find("<pre id=\"result\">").map(|i| i + "<pre id=\"result\">".len());
    let text = start.and_then(|s| dom[s..].find("</pre>").map(|e| &dom[s..s + e])).unwrap_or("");
    let text = text.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    serde_json::from_str(&text).unwrap_or_else(|_| {
        panic!("no result in the page:\n{dom}\nstderr:\n{}", String::from_utf8_lossy(&output.stderr))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snippet_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var("GHL_SYNC_REQUIRE_BROWSER").is_err(),
            "GHL_SYNC_REQUIRE_BROWSER is set but chromium is missing"
        );
        eprintln!("SKIPPED: no chromium binary (apt-get install chromium)");
        return;
    };
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
    let sandbox =
        Sandbox::start(SandboxOptions { ghl, ..Default::default() }, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let loc = sandbox.ghl.locations()[0].id.clone();
    let ada = sandbox
        .ghl
        .create_contact(&loc, json!({"firstName": "Ada", "lastName": "Lovelace", "email": "ada@example.com"}));

    // The page server first: its origin goes into allowed_origins.
    let pages = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", pages.local_addr().unwrap());
    let daemon_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon_url = format!("http://{}", daemon_listener.local_addr().unwrap());

    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::helpers::settings_for(&sandbox, dir.path());
    let mut events = std::collections::BTreeMap::new();
    events.insert(
        "pricing_viewed".to_owned(),
        EventAction {
            task: Some(EventTask { title: "Call {name}".into(), body: None, due_in: Dur::secs(3600) }),
            ..EventAction::default()
        },
    );
    settings.connectors.lucky_orange = Some(LuckyOrangeSettings {
        allowed_origins: vec![page_origin.clone()],
        key: Some(Secret::new("browser-test-key-0123456789-0123456789".to_owned())),
        events,
        ..LuckyOrangeSettings::default()
    });
    let app = crate::helpers::app(crate::helpers::config(settings)).await.unwrap();
    for (_, result) in app.sync_once(None, RunOptions { dry_run: false, skip_sweep: true }).await.unwrap() {
        result.unwrap();
    }
    let keys = lo::token_keys(&app.config).unwrap();
    let now = ghl_sync::store::now_ms() / 1000;
    let token = keys.mint(&ada, now + 3600);
    let unknown = keys.mint("no_such_contact", now + 3600);

    let state = ServerState::new(
        app.store.clone(),
        Arc::new(app.config.clone()),
        Arc::new(Notify::new()),
        server::install_metrics(),
    );
    let stop = CancellationToken::new();
    tokio::spawn(server::serve(daemon_listener, state, stop.clone()));
    let daemon = Arc::new(daemon_url);
    let router = axum::Router::new()
        .route(
            "/page/{mode}",
            axum::routing::get(|State(d): State<Arc<String>>, Path(mode): Path<String>| async move {
                Html(page(&d, &mode))
            }),
        )
        .with_state(daemon.clone());
    let stop_pages = stop.clone();
    tokio::spawn(async move { axum::serve(pages, router).with_graceful_shutdown(stop_pages.cancelled_owned()).await });

    // 1. A visitor from an email link.
    let result = run_page(&chromium, &format!("{page_origin}/page/stub?utm=x&lo_t={token}#top")).await;
    assert!(result["before"].as_str().unwrap().contains("lo_t="), "{result}");
    for key in ["after", "atStub"] {
        let url = result[key].as_str().unwrap_or_else(|| panic!("{key} missing: {result}"));
        assert!(!url.contains("lo_t") && !url.contains(&token), "{key}: {url}");
        assert!(url.ends_with("/page/stub?utm=x#top"), "{key}: {url}");
    }
    let calls = result["calls"].as_array().unwrap();
    let identifies: Vec<&Value> = calls.iter().filter(|c| c[0] == "identify").collect();
    assert_eq!(identifies, vec![&json!(["identify", ada, {"name": "Ada Lovelace"}])], "{result}");
    assert!(calls.iter().any(|c| c[0] == "track" && c[1] == "ghl_identified"), "{result}");
    assert_eq!(result["submitted"], "https://app.luckyorange.com/visitors/sessions/test-session-1/timeline");
    assert_eq!(result["errors"], json!([]));

    // ghlSync.track reached the daemon: exactly one GHL task.
    let connector = LuckyOrangeConnector::new(
        app.config.settings.connectors.lucky_orange.as_ref().unwrap(),
        lo::token_keys(&app.config).unwrap(),
        WriteBack::new(app.store.clone(), app.ghl.clone(), Arc::new(Vec::new())),
    );
    connector.apply_pending().await;
    let tasks = sandbox.ghl.tasks(&ada);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(tasks[0]["title"], "Call Ada Lovelace");

    // 2. Lucky Orange never loads, 3. an opted-out visitor, 4. a token the daemon answers 204:
    // no error, no call; the opted-out visitor is not even looked up.
    let identified = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM lo_events WHERE kind = 'identify'")
            .fetch_one(&crate::helpers::db(&app.store).await)
            .await
            .unwrap()
    };
    let before = identified().await;
    for (mode, t) in [("absent", &token), ("optout", &token), ("stub", &unknown)] {
        let result = run_page(&chromium, &format!("{page_origin}/page/{mode}?lo_t={t}")).await;
        assert_eq!(result["errors"], json!([]), "{mode}: {result}");
        assert_eq!(result["calls"], json!([]), "{mode}: {result}");
        assert!(!result["after"].as_str().unwrap().contains("lo_t"), "{mode}: {result}");
        assert_eq!(result["hasGhlSync"], "object", "{mode}");
    }
    assert_eq!(identified().await, before + 1, "only the page without Lucky Orange asked who the visitor is");
    connector.apply_pending().await;
    assert_eq!(sandbox.ghl.tasks(&ada).len(), 1, "the same (contact, event, window) makes no second task");
    stop.cancel();
}
