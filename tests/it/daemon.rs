//! The whole daemon: scheduler, dispatcher and HTTP server together, in-process and as a
//! real child process (signals).

use std::time::{Duration, Instant};

use ghl_sync::config::Dur;
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    capture, config, eventually, fast_ghl, settings_for, signal, spawn, start_sandbox, wait_with_limit, write_config,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_ghl_webhook_gets_the_change_delivered_within_a_second() {
    let sandbox = start_sandbox(fast_ghl(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    crate::helpers::listen_for_webhooks(&mut settings, &sandbox);
    // Polling alone would take a minute: only the webhook can make this fast.
    settings.sync.contacts_interval = Dur::secs(60);
    settings.sync.dirty_debounce = Dur::millis(50);
    let app = crate::helpers::app(config(settings)).await.unwrap();
    let addr = app.server_addr().unwrap();
    sandbox.ghl.set_webhook_url(Some(format!("http://{addr}/webhooks/ghl").parse().unwrap()));
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));

    // The first (scheduled) run backfills and delivers everything.
    assert!(eventually(Duration::from_secs(20), || sandbox.sink.accepted(Some("test")).len() >= 60).await);
    let location = sandbox.ghl.locations()[0].id.clone();
    let contact = sandbox.ghl.contact_ids(&location)[0].clone();
    let delivered_before = sandbox.sink.accepted(Some("test")).len();

    let changed = Instant::now();
    assert!(sandbox.ghl.update_contact(&contact, serde_json::json!({"firstName": "Webhooked"})));
    let arrived = eventually(Duration::from_secs(5), || {
        sandbox.sink.accepted(Some("test")).iter().skip(delivered_before).any(|d| d.body.contains("Webhooked"))
    })
    .await;
    let latency = changed.elapsed();
    assert!(arrived, "the change was not delivered");
    // Bound, not a benchmark: the interval is 60 s, so only the webhook path can meet it.
    assert!(latency < Duration::from_secs(3), "took {latency:?}");

    stop.cancel();
    daemon.await.unwrap().unwrap();
    sandbox.stop().await;
}

fn daemon_config(sandbox: &ghl_sync_sandbox::Sandbox, dir: &std::path::Path, to: &str) -> String {
    let mut text = format!(
        "[store]\n{}[ghl]\nbase_url = \"{}\"\n[server]\nenabled = false\n\
         [sync]\ncontacts_interval = \"1s\"\nindex_lag_margin = \"0s\"\n[limits]\nghl_burst_max = 100000\nghl_burst_window = \"1s\"\n\
         [dispatch]\npoll_interval = \"100ms\"\n[log]\nlevel = \"info\"\nformat = \"json\"\n",
        crate::helpers::store_keys(&dir.join("ghl-sync.db")),
        sandbox.ghl_url()
    );
    for location in sandbox.ghl.locations() {
        text.push_str(&format!("[[ghl.locations]]\nid = \"{}\"\npit = \"{}\"\n", location.id, location.pit));
    }
    text.push_str(&format!(
        "[connectors.webhook.test]\nurl = \"{}\"\nfields = [{{ from = \"firstName\", to = \"{to}\" }}]\n",
        sandbox.sink_url("test")
    ));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_changed_mapping_and_keeps_the_old_config_when_the_new_one_is_broken() {
    let sandbox = start_sandbox(fast_ghl(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &daemon_config(&sandbox, dir.path(), "first_name"));
    let child = spawn(&["run", "--config", path.to_str().unwrap()], &[]);
    let has = |key: &str| {
        let key = format!("\"{key}\"");
        move |sink: &ghl_sync_sandbox::sink::Sink| sink.accepted(Some("test")).iter().any(|d| d.body.contains(&key))
    };
    assert!(
        eventually(Duration::from_secs(20), || has("first_name")(&sandbox.sink)).await,
        "first shape never arrived"
    );

    // A broken file: rejected, logged, the daemon keeps running with the old mapping.
    std::fs::write(&path, "[sync\nbroken").unwrap();
    signal(&child, "HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let location = sandbox.ghl.locations()[0].id.clone();
    let contact = sandbox.ghl.contact_ids(&location)[0].clone();
    sandbox.ghl.update_contact(&contact, serde_json::json!({"firstName": "StillOld"}));
    assert!(
        eventually(Duration::from_secs(10), || sandbox
            .sink
            .accepted(Some("test"))
            .iter()
            .any(|d| d.body.contains("StillOld") && d.body.contains("\"first_name\"")))
        .await,
        "the old config stopped working after a bad reload"
    );

    // A good file with a new mapping: applied without a restart.
    std::fs::write(&path, daemon_config(&sandbox, dir.path(), "given_name")).unwrap();
    signal(&child, "HUP");
    // The reload first lets in-flight work finish, so a change made while it runs may still
    // go out in the old shape: change the contact again until one arrives in the new shape.
    let mut applied = false;
    for round in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let name = format!("Reloaded{round}");
        sandbox.ghl.update_contact(&contact, serde_json::json!({ "firstName": name }));
        applied = eventually(Duration::from_secs(3), || {
            sandbox
                .sink
                .accepted(Some("test"))
                .iter()
                .any(|d| d.body.contains("Reloaded") && d.body.contains("\"given_name\""))
        })
        .await;
        if applied {
            break;
        }
    }
    signal(&child, "TERM");
    let (status, _, stderr) = wait_with_limit(child, Duration::from_secs(15));
    assert!(applied, "the new mapping was not applied; daemon log:\n{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("keeping the running one"), "{stderr}");
    assert!(stderr.contains("Configuration reloaded"), "{stderr}");
    for location in sandbox.ghl.locations() {
        assert!(!stderr.contains(&location.pit), "a token leaked into the logs");
    }
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tests_the_ghl_token_of_every_location_and_names_a_bad_one() {
    let sandbox = start_sandbox(fast_ghl(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let text = daemon_config(&sandbox, dir.path(), "first_name");
    let path = write_config(dir.path(), &text);
    let child = spawn(&["check", "--config", path.to_str().unwrap()], &[]);
    let (status, stdout, stderr) =
        tokio::task::spawn_blocking(move || wait_with_limit(child, Duration::from_secs(30))).await.unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    for location in sandbox.ghl.locations() {
        assert!(stdout.contains(&format!("ok   ghl:{}: token accepted; 3 contact(s)", location.id)), "{stdout}");
    }

    let bad = sandbox.ghl.locations()[1].pit.clone();
    std::fs::write(&path, text.replace(&bad, "pit-wrong")).unwrap();
    let child = spawn(&["check", "--config", path.to_str().unwrap()], &[]);
    let (status, stdout, _) =
        tokio::task::spawn_blocking(move || wait_with_limit(child, Duration::from_secs(30))).await.unwrap();
    assert_ne!(status.code(), Some(0));
    assert!(stdout.contains(&format!("FAIL ghl:{}", sandbox.ghl.locations()[1].id)), "{stdout}");
    assert!(!stdout.contains("pit-wrong"), "a token was printed");
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_lusha_key_credits_and_plan_and_prints_contact_data_only_with_show_data() {
    let sandbox = start_sandbox(fast_ghl(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut text = daemon_config(&sandbox, dir.path(), "first_name");
    let lusha = format!(
        "[connectors.lusha]\nbase_url = \"{}\"\napi_key = \"{}\"\n",
        sandbox.lusha_url(),
        sandbox.lusha.api_key()
    );
    text.push_str(&lusha);
    let path = write_config(dir.path(), &text);
    let path = path.to_str().unwrap().to_owned();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            wait_with_limit(spawn(&args, &[]), Duration::from_secs(60))
        })
    };
    let args =
        |list: &[&str]| list.iter().map(|s| (*s).to_owned()).chain(["--config".to_owned(), path.clone()]).collect();
    let (status, _, stderr) = run(args(&["sync", "--once"])).await.unwrap();
    assert!(status.success(), "{stderr}");
    let names: Vec<String> = sandbox
        .ghl
        .locations()
        .iter()
        .flat_map(|l| sandbox.ghl.contact_ids(&l.id))
        .filter_map(|id| sandbox.ghl.contact(&id)?.get("firstName")?.as_str().map(str::to_owned))
        .filter(|name| name.len() > 2)
        .collect();
    assert!(!names.is_empty());

    let (status, stdout, stderr) = run(args(&["check"])).await.unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ok   lusha: API key accepted (GET /v3/account/usage, no credits spent); credits: "),
        "{stdout}"
    );
    assert!(stdout.contains("plan: Sandbox Scale") && stdout.contains("requests left: "), "{stdout}");
    assert!(stdout.contains("sample for webhook.test: one real contact maps to the fields"), "{stdout}");
    assert!(stdout.contains("first_name"), "{stdout}");
    assert!(
        !names.iter().any(|name| stdout.contains(name.as_str())),
        "contact data printed without --show-data:\n{stdout}"
    );

    let (status, stdout, _) = run(args(&["check", "--show-data"])).await.unwrap();
    assert_eq!(status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("one real contact, as it would be sent"), "{stdout}");
    assert!(names.iter().any(|name| stdout.contains(name.as_str())), "{stdout}");

    std::fs::write(&path, text.replace(&sandbox.lusha.api_key(), "wrong-key")).unwrap();
    let (status, stdout, _) = run(args(&["check"])).await.unwrap();
    assert_ne!(status.code(), Some(0));
    assert!(
        stdout.contains("FAIL lusha: Lusha /v3/account/usage: refused (401); check the API key and plan"),
        "{stdout}"
    );
    sandbox.stop().await;
}

// Current-thread runtime: the log capture (a thread-local default) sees every task.
#[tokio::test(flavor = "current_thread")]
async fn log_lines_name_each_field_once_and_print_no_debug_options() {
    let (logs, _guard) = capture();
    let sandbox = start_sandbox(fast_ghl(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    settings.server.enabled = true;
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    let app = crate::helpers::app(config(settings)).await.unwrap();
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    assert!(eventually(Duration::from_secs(20), || logs.text().contains("\"message\":\"Synced `")).await);
    stop.cancel();
    daemon.await.unwrap().unwrap();
    sandbox.stop().await;

    let text = logs.text();
    assert!(text.contains("HTTP server listening on 127.0.0.1:"), "{text}");
    for line in text.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        // Our own events (libraries log at trace level in their own style).
        if !event["target"].as_str().is_some_and(|t| t.starts_with("ghl_sync")) {
            continue;
        }
        assert!(!line.contains("Some("), "a Debug-printed Option in the logs: {line}");
        // The event's own fields, without the span it runs in (which carries location.id).
        let in_span = event.pointer("/span/location.id").is_some();
        let own = event.as_object().unwrap().contains_key("location.id");
        assert!(!(in_span && own), "location.id both in the span and in the event: {line}");
    }
}
