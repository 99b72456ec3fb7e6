//! The rules tooling as a user runs it: `validate` on bad rules (exit 78, key paths, the
//! position in an expression), `rules list | test | catalog` and `sync --once --dry-run`.

use std::path::Path;
use std::time::Duration;

use ghl_sync_sandbox::Sandbox;
use serde_json::json;

use crate::helpers::{spawn, wait_with_limit, write_config};
use crate::rules::sandbox;

/// Runs `ghl-sync ARGS --config CONFIG` to its end (from a blocking thread: the sandbox keeps
/// serving on the test's runtime meanwhile).
async fn run(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.extend(["--config".to_owned(), config.display().to_string()]);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, stdout, stderr) = wait_with_limit(spawn(&args, &[]), Duration::from_secs(60));
        (status.code(), stdout, stderr)
    })
    .await
    .unwrap()
}

/// `validate` on a config made of `rules` alone: (exit code, stderr).
async fn validate(rules: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), rules);
    let (code, _, stderr) = run(&["validate"], &path).await;
    (code, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_points_into_a_bad_expression_with_its_line_and_column_and_exits_78() {
    let (code, stderr) = validate(
        r#"
[[rules]]
name = "bad-cel"
on = ["tag.added"]
when = "'vip' in tags_added &&"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["x"]
"#,
    )
    .await;
    assert_eq!(code, Some(78), "{stderr}");
    let line = stderr.lines().find(|l| l.contains("rules[0].when:")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("line 1, column "), "{line}");
    let column: u32 = line
        .split("line 1, column ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no column number in {line}"));
    assert!((1..=25).contains(&column), "the column lies within the expression: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_the_key_path_of_an_unknown_connector_and_of_an_unknown_template_field() {
    let (code, stderr) = validate(
        r#"
[[rules]]
name = "to-nowhere"
on = ["contact.created"]
[[rules.actions]]
do = "deliver"
connector = "webhook.nowhere"
"#,
    )
    .await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("rules[0].actions[0].connector:"), "{stderr}");
    assert!(stderr.contains("webhook.nowhere"), "{stderr}");

    let (code, stderr) = validate(
        r#"
[[rules]]
name = "fine"
on = ["contact.created"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["ok"]

[[rules]]
name = "typo"
on = ["tag.added"]
[[rules.actions]]
do = "ghl.add_tags"
tags = ["ok"]
[[rules.actions]]
do = "ghl.create_note"
body = "Hello {contact.notAField}"
"#,
    )
    .await;
    assert_eq!(code, Some(78), "{stderr}");
    let line = stderr.lines().find(|l| l.contains("rules[1].actions[1].body:")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("notAField"), "{line}");
    assert!(!stderr.contains("rules[0]"), "the good rule has no problem: {stderr}");
}

const RULES: &str = r#"
[[rules]]
name = "vip-note"
on = ["tag.added"]
when = "'vip' in tags_added"
[[rules.actions]]
do = "ghl.create_note"
body = "VIP: {contact.firstName}"

[[rules]]
name = "lead-created"
on = ["contact.created"]
when = "'lead' in new.tags"
[[rules.actions]]
do = "ghl.add_tags"
tags = ["r-lead"]

[[rules]]
name = "lead-touched"
on = ["contact.updated"]
when = "'lead' in contact.tags"
[[rules.actions]]
do = "ghl.create_task"
title = "Call {contact.firstName}"
due = "in 1d"
"#;

/// The daemon's config for the sandbox (no listener, one webhook connector) plus [`RULES`].
fn config_text(sandbox: &Sandbox, dir: &Path) -> String {
    let mut text = format!(
        "[store]\n{}[ghl]\nbase_url = \"{}\"\n[server]\nenabled = false\n\
         [sync]\nindex_lag_margin = \"0s\"\n[limits]\nghl_burst_max = 100000\nghl_burst_window = \"1s\"\n\
         [log]\nlevel = \"warn\"\n",
        crate::helpers::store_keys(&dir.join("ghl-sync.db")),
        sandbox.ghl_url()
    );
    for location in sandbox.ghl.locations() {
        text.push_str(&format!("[[ghl.locations]]\nid = \"{}\"\npit = \"{}\"\n", location.id, location.pit));
    }
    text.push_str(&format!("[connectors.webhook.test]\nurl = \"{}\"\n", sandbox.sink_url("test")));
    text.push_str(RULES);
    text
}

/// Rows in the store's outbox (0 when the database was never created).
async fn outbox_rows(dir: &Path) -> i64 {
    let path = dir.join("ghl-sync.db");
    if !crate::helpers::store_exists(&path).await {
        return 0;
    }
    let store = crate::helpers::open_store(&path).await;
    let rows =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(&crate::helpers::db(&store).await).await.unwrap();
    store.close().await;
    rows
}

/// Requests that write to GHL (anything but reads and the contact search).
fn ghl_writes(sandbox: &Sandbox) -> u64 {
    let stats = sandbox.ghl.stats();
    stats
        .requests
        .iter()
        .filter(|(route, _)| !route.starts_with("GET ") && *route != "POST /contacts/search")
        .map(|(_, n)| *n)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_list_test_and_catalog_show_what_would_happen_and_change_nothing() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(&sandbox, dir.path()));
    let location = sandbox.ghl.locations()[0].id.clone();

    // `rules list`: every rule with its trigger, condition and actions.
    let (code, stdout, stderr) = run(&["rules", "list"], &config).await;
    assert_eq!(code, Some(0), "{stderr}");
    for expected in [
        "vip-note\n  on: tag.added\n  when: 'vip' in tags_added\n  action 0: ",
        "lead-created\n  on: contact.created\n",
        "lead-touched\n  on: contact.updated\n",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in:\n{stdout}");
    }

    // `rules catalog` is docs/operations.md.
    let (code, stdout, stderr) = run(&["rules", "catalog"], &config).await;
    assert_eq!(code, Some(0), "{stderr}");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    assert!(stdout == docs, "`rules catalog` differs from docs/operations.md");

    // `rules test --event`: a record change expanded like the sync's; nothing is done.
    let event = dir.path().join("event.json");
    let change = json!({
        "trigger": "contact.updated",
        "location_id": location,
        "entity": "contact",
        "entity_id": "c-test-1",
        "contact_id": "c-test-1",
        "old": {"id": "c-test-1", "firstName": "Ada", "tags": []},
        "new": {"id": "c-test-1", "firstName": "Ada", "tags": ["vip"]},
    });
    std::fs::write(&event, change.to_string()).unwrap();
    let (code, stdout, stderr) = run(&["rules", "test", "--event", event.to_str().unwrap()], &config).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("event tag.added:\n  rule vip-note fires\n    action 0: "), "{stdout}");
    let action = stdout.lines().find(|l| l.contains("action 0: ") && l.contains("create_note")).unwrap();
    assert!(action.contains("\"body\":\"VIP: Ada\"") && action.contains("\"contact_id\":\"c-test-1\""), "{action}");
    assert!(!stdout.contains("rule lead-created"), "{stdout}");
    assert!(stdout.contains("nothing was done"), "{stdout}");
    assert_eq!(outbox_rows(dir.path()).await, 0, "rules test queued nothing");
    assert_eq!(ghl_writes(&sandbox), 0, "rules test wrote nothing to GHL");

    // `rules test --contact` against a store synced once.
    let lead = sandbox.ghl.create_contact(&location, json!({"firstName": "Lu", "tags": ["lead"]}));
    let plain = sandbox.ghl.create_contact(&location, json!({"firstName": "Pat"}));
    let (code, stdout, stderr) = run(&["sync", "--once"], &config).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    // `sync --once` also delivers the actions its rules decided on the way.
    assert!(
        stdout.contains("rule.lead-created: 1 delivered, 0 failed (will retry), 0 dead-lettered, 0 still pending"),
        "{stdout}"
    );
    assert!(sandbox.ghl.contact(&lead).unwrap()["tags"].as_array().unwrap().iter().any(|t| t == "r-lead"));
    let rows = outbox_rows(dir.path()).await;
    let writes = ghl_writes(&sandbox);
    let tasks = sandbox.ghl.tasks(&lead).len();

    let (code, stdout, stderr) = run(&["rules", "test", "--contact", &lead], &config).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("event contact.updated:\n  rule lead-touched fires\n    action 0: "), "{stdout}");
    assert!(stdout.contains("\"title\":\"Call Lu\""), "{stdout}");
    let (code, stdout, stderr) = run(&["rules", "test", "--contact", &plain], &config).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("event contact.updated:\n  no rule fires\n"), "{stdout}");
    let (code, _, stderr) = run(&["rules", "test", "--contact", "not-a-synced-contact"], &config).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is not in the store"), "{stderr}");

    assert_eq!(outbox_rows(dir.path()).await, rows, "rules test queued nothing");
    assert_eq!(ghl_writes(&sandbox), writes, "rules test wrote nothing to GHL");
    assert_eq!(sandbox.ghl.tasks(&lead).len(), tasks);
    sandbox.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_dry_run_prints_the_rule_actions_it_would_run() {
    let sandbox = sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(&sandbox, dir.path()));
    let location = sandbox.ghl.locations()[0].id.clone();
    let lead = sandbox.ghl.create_contact(&location, json!({"firstName": "Lu", "tags": ["lead"]}));
    sandbox.ghl.create_contact(&location, json!({"firstName": "Pat"}));

    let (code, stdout, stderr) = run(&["sync", "--once", "--dry-run"], &config).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("would run action")).collect();
    assert_eq!(lines.len(), 1, "one contact matches one rule: {stdout}");
    assert!(lines[0].starts_with("  rule lead-created on contact.created would run action 0: "), "{stdout}");
    assert!(lines[0].contains(&lead) && lines[0].contains("r-lead"), "{stdout}");

    assert_eq!(outbox_rows(dir.path()).await, 0, "a dry run queues nothing");
    assert_eq!(ghl_writes(&sandbox), 0, "a dry run writes nothing to GHL");
    assert!(!sandbox.ghl.contact(&lead).unwrap()["tags"].as_array().unwrap().iter().any(|t| t == "r-lead"));
    sandbox.stop().await;
}
