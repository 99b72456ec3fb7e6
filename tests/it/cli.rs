//! The binary as a user runs it: `validate`, `version`, `run` and its shutdown.

use std::time::Duration;

use crate::helpers::{signal, spawn, wait_with_limit, write_config};

#[test]
fn validate_says_ok_for_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ghl-sync.example.toml");
    let (status, stdout, _) = wait_with_limit(spawn(&["validate", "--config", example], &[]), Duration::from_secs(20));
    assert!(status.success());
    assert_eq!(stdout.trim(), "ok");
}

#[test]
fn validate_prints_every_problem_with_its_key_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        r#"
[sync]
contacts_intervall = "1m"
page_size = "many"

[[ghl.locations]]
id = "loc1"
pit_file = "/nonexistent/ghl-sync-it/pit"

[connectors.webhook.slack]
url = "http://hooks.example.com/x"
"#,
    );
    let (status, _, stderr) =
        wait_with_limit(spawn(&["validate", "--config", path.to_str().unwrap()], &[]), Duration::from_secs(20));
    assert_eq!(status.code(), Some(78), "{stderr}");
    for key in
        ["sync.contacts_intervall:", "sync.page_size:", "ghl.locations[0].pit_file:", "connectors.webhook.slack.url:"]
    {
        assert!(stderr.contains(key), "missing {key} in:\n{stderr}");
    }
}

#[test]
fn every_command_refuses_a_bad_config_with_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "[sync]\npage_size = 9000\n");
    let (status, _, stderr) =
        wait_with_limit(spawn(&["run", "--config", path.to_str().unwrap()], &[]), Duration::from_secs(20));
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("sync.page_size: must be between 1 and 500"), "{stderr}");
}

#[test]
fn the_config_path_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "[log]\nformat = \"xml\"\n");
    let (status, _, stderr) =
        wait_with_limit(spawn(&["validate"], &[("GHL_SYNC_CONFIG", path.to_str().unwrap())]), Duration::from_secs(20));
    assert_eq!(status.code(), Some(78));
    assert!(stderr.contains("log.format: unknown variant `xml`"), "{stderr}");
}

#[test]
fn an_empty_config_file_exits_78_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "\n   \n");
    for command in ["validate", "run"] {
        let (status, _, stderr) =
            wait_with_limit(spawn(&[command, "--config", path.to_str().unwrap()], &[]), Duration::from_secs(20));
        assert_eq!(status.code(), Some(78), "{command}: {stderr}");
        assert!(stderr.contains("config file is empty"), "{command}: {stderr}");
    }
}

#[test]
fn a_bad_environment_override_is_named_by_its_variable() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ghl-sync.toml");
    let (status, _, stderr) = wait_with_limit(
        spawn(&["validate", "--config", shipped], &[("GHL_SYNC__SYNC__CONTACTS_INTERVALL", "30s")]),
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("  GHL_SYNC__SYNC__CONTACTS_INTERVALL: unknown field `contacts_intervall`"), "{stderr}");
}

#[test]
fn the_shipped_config_validates_with_warnings_that_say_how_to_add_a_location_and_a_connector() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/ghl-sync.toml");
    let (status, stdout, stderr) =
        wait_with_limit(spawn(&["validate", "--config", shipped], &[]), Duration::from_secs(20));
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "ok");
    assert!(stderr.contains("warning: ghl.locations: no location to sync: add one"), "{stderr}");
    assert!(stderr.contains("warning: connectors: no connector"), "{stderr}");
}

#[test]
fn auth_init_key_needs_no_config_writes_0600_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master_key");
    let args = ["auth", "init-key", "--output", key.to_str().unwrap()];
    let no_config = [("GHL_SYNC_CONFIG", "/nonexistent/ghl-sync.toml")];
    let (status, stdout, stderr) = wait_with_limit(spawn(&args, &no_config), Duration::from_secs(20));
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("Wrote a new master key") && !stdout.contains(std::fs::read_to_string(&key).unwrap().trim())
    );
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let (status, _, stderr) = wait_with_limit(spawn(&args, &no_config), Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("already exists"), "{stderr}");
    // The key is usable as the store's master key.
    let config = write_config(dir.path(), &format!("[store]\nmaster_key_file = \"{}\"\n", key.display()));
    let (status, _, stderr) =
        wait_with_limit(spawn(&["validate", "--config", config.to_str().unwrap()], &[]), Duration::from_secs(20));
    assert!(status.success(), "{stderr}");
}

#[test]
fn version_prints_the_crate_version() {
    let (status, stdout, _) = wait_with_limit(spawn(&["version"], &[]), Duration::from_secs(20));
    assert!(status.success());
    assert_eq!(stdout.trim(), format!("ghl-sync {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn run_stops_cleanly_on_sigterm_within_the_grace_and_never_logs_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state/ghl-sync.db");
    let path = write_config(
        dir.path(),
        &format!(
            "[store]\n{}[server]\nenabled = false\n[daemon]\nshutdown_grace = \"2s\"\n[log]\nlevel = \"trace\"\n\
             [[ghl.locations]]\nid = \"loc1\"\npit = \"pit-shutdown-test-secret\"\n",
            crate::helpers::store_keys(&db)
        ),
    );
    let child = spawn(&["run", "--config", path.to_str().unwrap()], &[]);
    crate::helpers::wait_for_store(&db, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "TERM");
    let (status, _, stderr) = wait_with_limit(child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("ghl-sync stopped"), "{stderr}");
    assert!(!stderr.contains("pit-shutdown-test-secret"), "secret leaked into logs:\n{stderr}");
}
