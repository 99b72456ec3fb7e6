use std::collections::HashMap;

use secrecy::ExposeSecret;

use super::*;

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    load_from_str(text, ConfigSource::InCode, env)
}

fn problems(text: &str) -> Vec<String> {
    problems_with(text, &[])
}

fn problems_with(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    load(text, env).err().map(|e| e.problems()).unwrap_or_default()
}

#[test]
fn the_example_config_is_valid() {
    let text = include_str!("../../config/ghl-sync.example.toml");
    let config = load(text, &[]).unwrap();
    assert_eq!(config.settings.sync.page_size, 500);
    assert_eq!(config.settings.daemon.shutdown_grace.get(), std::time::Duration::from_secs(8));
}

/// The commented block of the example that starts at `header`, uncommented, up to the next blank
/// line or `stop` line.
fn uncommented(text: &str, header: &str, stop: Option<&str>) -> String {
    let start = text.find(&format!("\n{header}")).unwrap_or_else(|| panic!("{header} is not in the example")) + 1;
    let mut out = String::new();
    for line in text[start..].lines() {
        if line.trim().is_empty() || stop.is_some_and(|stop| line.starts_with(stop)) {
            break;
        }
        out.push_str(line.strip_prefix("# ").or_else(|| line.strip_prefix('#')).unwrap_or(line));
        out.push('\n');
    }
    out
}

#[test]
fn the_example_rules_validate_with_the_example_connectors() {
    let text = include_str!("../../config/ghl-sync.example.toml");
    let rules = uncommented(text, "# [rule_settings]", None);
    // The signing secret's env var is not set in tests; the webhook works without one.
    let team = uncommented(text, "# [connectors.webhook.team_slack]", None)
        .replace("secret_env = \"GHL_SYNC_SLACK_SECRET\"", "");
    let sales = uncommented(text, "# [connectors.webhook.sales_slack]", None);
    // The Lusha key comes from the environment in the example; inline here (the test has no env).
    let lusha = uncommented(text, "# [connectors.lusha] ", Some("# [connectors.lusha.fields]"))
        .replace("api_key_env = \"LUSHA_API_KEY\"", "api_key = \"test-key\"");
    let full = format!("{text}\n{team}\n{sales}\n{lusha}\n{rules}");
    let config = load(&full, &[]).unwrap_or_else(|e| panic!("{}", e.problems().join("\n")));
    let names: Vec<&str> = config.rules.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["enrich-new-leads", "task-completed", "follow-up", "business-contacts", "pricing-call"]);
    // Without the connectors they name, the same rules fail with key paths.
    let problems = problems(&format!("{text}\n{rules}"));
    assert!(
        problems.iter().any(|p| p.contains("rules[0].actions[0].do") && p.contains("[connectors.lusha]")),
        "{problems:#?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("rules[0].actions[1].connector") && p.contains("unknown connector")),
        "{problems:#?}"
    );
}

#[test]
fn rule_problems_carry_key_paths_and_condition_positions() {
    let text = "[connectors.webhook.sales]\nurl = \"https://x.example\"\n\
        [[rules]]\nname = \"ok\"\non = [\"contact.created\"]\n[[rules.actions]]\ndo = \"ghl.upsert_contact\"\nfields = { companyName = \"{new.companyName}\" }\n\
        [[rules]]\nname = \"bad\"\non = [\"contact.created\"]\nwhen = \"'lead' in &&\"\n[[rules.actions]]\ndo = \"deliver\"\nconnector = \"webhook.x\"\n";
    let found = problems(text);
    assert!(found.iter().any(|p| p.contains("rules[1].when") && p.contains("line 1, column")), "{found:#?}");
    assert!(
        found.iter().any(|p| p.contains("rules[1].actions[0].connector")
            && p.contains("unknown connector \"webhook.x\"; configured: webhook.sales")),
        "{found:#?}"
    );
    assert_eq!(found.len(), 2, "camelCase field names survive loading: {found:#?}");
}

#[test]
fn a_rule_delivering_to_a_disabled_connector_validates_with_a_warning() {
    let text = "[[ghl.locations]]\nid = \"a\"\npit = \"p\"\n\
        [connectors.webhook.on]\nurl = \"https://x.example\"\n\
        [connectors.webhook.off]\nurl = \"https://y.example\"\nenabled = false\n\
        [[rules]]\nname = \"r\"\non = [\"contact.created\"]\n\
        [[rules.actions]]\ndo = \"deliver\"\nconnector = \"webhook.on\"\n\
        [[rules.actions]]\ndo = \"deliver\"\nconnector = \"webhook.off\"\n";
    let config = load(text, &[]).unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].starts_with("rules[0].actions[1]: connector webhook.off is disabled"), "{warnings:#?}");
}

#[test]
fn an_empty_file_gives_the_documented_defaults() {
    let config = load("", &[]).unwrap();
    assert_eq!(config.settings.ghl.api_version, "2021-07-28");
    assert_eq!(config.settings.limits.ghl_burst_max, 100);
    assert_eq!(config.settings.server.listen.to_string(), "127.0.0.1:8089");
}

#[test]
fn an_empty_or_blank_config_file_is_refused() {
    for text in ["", "  \n\t\n"] {
        let error = load_from_str(text, ConfigSource::File("/etc/ghl-sync/ghl-sync.toml".into()), HashMap::new())
            .expect_err("a blank file must not load");
        assert!(matches!(error, ConfigError::Empty { .. }), "{error}");
        assert!(error.to_string().starts_with("config file is empty: /etc/ghl-sync/ghl-sync.toml"), "{error}");
    }
}

#[test]
fn a_config_with_nothing_to_do_validates_with_warnings_that_say_how_to_add_one() {
    let config = load("[log]\nlevel = \"info\"\n", &[]).unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings[0].starts_with("ghl.locations: no location to sync: add one"), "{warnings:#?}");
    assert!(warnings[0].contains("[[ghl.locations]]") && warnings[0].contains("GHL_SYNC_LOCATION_ID"));
    assert!(warnings[1].starts_with("connectors: no connector"), "{warnings:#?}");
    assert!(warnings[1].contains("[connectors.webhook."), "{warnings:#?}");
    let busy =
        load("[[ghl.locations]]\nid = \"a\"\npit = \"p\"\n[connectors.webhook.t]\nurl = \"https://x.example\"\n", &[])
            .unwrap();
    assert!(busy.warnings.is_empty(), "{:?}", busy.warnings);
}

#[test]
fn a_webhook_timeout_not_shorter_than_the_shutdown_grace_warns_naming_both_keys() {
    let base = "[[ghl.locations]]\nid = \"a\"\npit = \"p\"\n[connectors.webhook.t]\nurl = \"https://x.example\"\n";
    // The defaults agree: a request in flight at a stop ends within the grace.
    let config = load(base, &[]).unwrap();
    assert!(config.settings.connectors.webhook["t"].timeout.get() < config.settings.daemon.shutdown_grace.get());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    for (extra, warns) in [
        ("timeout = \"10s\"\n", true),
        ("timeout = \"8s\"\n", true),
        ("timeout = \"7s\"\n", false),
        ("timeout = \"10s\"\n[daemon]\nshutdown_grace = \"15s\"\n", false),
        ("timeout = \"10s\"\nenabled = false\n", false),
    ] {
        let config = load(&format!("{base}{extra}"), &[]).unwrap();
        let warnings: Vec<String> =
            config.warnings.iter().map(ToString::to_string).filter(|w| w.contains("timeout")).collect();
        assert_eq!(warnings.len(), usize::from(warns), "{extra:?}: {warnings:#?}");
        if warns {
            assert!(warnings[0].starts_with("connectors.webhook.t.timeout: "), "{warnings:#?}");
            assert!(warnings[0].contains("daemon.shutdown_grace (8s)"), "{warnings:#?}");
        }
    }
}

#[test]
fn a_problem_in_an_environment_override_names_the_variable() {
    let text = "[sync]\npage_size = 100\n[connectors.webhook.t]\nurl = \"http://hooks.example.com/x\"\n";
    let env = [
        ("GHL_SYNC__SYNC__CONTACTS_INTERVALL", "30s"),
        ("GHL_SYNC__LIMITS__GHL_BURST_SHARE", "2"),
        ("GHL_SYNC__SYNCC__PAGE_SIZE", "5"),
    ];
    let found = load(text, &env).err().map(|e| e.problems()).unwrap_or_default();
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(
        found.contains(&"GHL_SYNC__SYNC__CONTACTS_INTERVALL: unknown field `contacts_intervall` (this environment variable overrides sync.contacts_intervall)".to_owned()),
        "{found:#?}"
    );
    assert!(found.iter().any(|p| p.starts_with("GHL_SYNC__LIMITS__GHL_BURST_SHARE: must be a share")), "{found:#?}");
    assert!(found.iter().any(|p| p.starts_with("GHL_SYNC__SYNCC__PAGE_SIZE: unknown field `syncc`")), "{found:#?}");
    // A problem of the file itself still names its key.
    assert!(found.iter().any(|p| p.starts_with("connectors.webhook.t.url: plain http")), "{found:#?}");
}

#[test]
fn a_location_and_its_token_can_come_from_the_environment() {
    let shipped = include_str!("../../config/ghl-sync.toml");
    let config =
        load(shipped, &[("GHL_SYNC_LOCATION_ID", "ve9EPM428h8vShlRW1KT"), ("GHL_SYNC_PIT", "pit-from-env")]).unwrap();
    let locations = &config.settings.ghl.locations;
    assert_eq!(locations.len(), 1);
    assert_eq!((locations[0].id.as_str(), locations[0].auth), ("ve9EPM428h8vShlRW1KT", LocationAuth::Pit));
    assert_eq!(config.secrets.pits["ve9EPM428h8vShlRW1KT"].expose_secret(), "pit-from-env");
    assert!(!format!("{config:?}").contains("pit-from-env"));
    assert!(config.warnings.iter().all(|w| w.key != "ghl.locations"), "{:?}", config.warnings);
}

#[test]
fn an_environment_token_without_its_location_is_refused_with_what_to_set() {
    let found = problems_with("", &[("GHL_SYNC_PIT", "pit-x")]);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("GHL_SYNC_PIT: is set, but no location uses it: set GHL_SYNC_LOCATION_ID"),
        "{found:#?}"
    );
    let found = problems_with("", &[("GHL_SYNC_LOCATION_ID", "loc1")]);
    assert_eq!(
        found,
        [
            "GHL_SYNC_PIT: is not set: GHL_SYNC_LOCATION_ID names location loc1; put its private integration token in GHL_SYNC_PIT"
        ]
    );
    let found = problems_with(
        "[[ghl.locations]]\nid = \"loc1\"\npit = \"p\"\n",
        &[("GHL_SYNC_LOCATION_ID", "loc1"), ("GHL_SYNC_PIT", "q")],
    );
    assert_eq!(
        found,
        ["GHL_SYNC_LOCATION_ID: location loc1 is also listed in the config file; configure it in one place"]
    );
    // A file location that reads GHL_SYNC_PIT itself uses it: no complaint about the variable.
    let var_text = "[[ghl.locations]]\nid = \"loc1\"\npit_env = \"GHL_SYNC_PIT\"\n";
    assert!(!problems_with(var_text, &[("GHL_SYNC_PIT", "q")]).iter().any(|p| p.starts_with("GHL_SYNC_PIT:")));
}

#[test]
fn four_different_mistakes_are_all_reported_with_their_key_paths() {
    let text = r#"
        [sync]
        contacts_intervall = "1m"
        page_size = "many"

        [[ghl.locations]]
        id = "loc1"
        pit_file = "/nonexistent/ghl-sync-test/pit"

        [connectors.webhook.slack]
        url = "http://hooks.example.com/x"
    "#;
    let found = problems(text);
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(found.iter().any(|p| p.starts_with("sync.contacts_intervall: unknown field")), "{found:#?}");
    assert!(found.iter().any(|p| p.starts_with("sync.page_size: wrong type")), "{found:#?}");
    assert!(found.iter().any(|p| p.starts_with("ghl.locations[0].pit_file: cannot read /nonexistent")), "{found:#?}");
    assert!(
        found.iter().any(|p| p.starts_with("connectors.webhook.slack.url: plain http to a remote host")),
        "{found:#?}"
    );
}

#[test]
fn the_bulk_daily_share_defaults_to_half_and_a_bad_one_is_named() {
    let config = load("", &[]).unwrap();
    assert!((config.settings.limits.bulk_daily_share - 0.5).abs() < f64::EPSILON);
    for bad in ["0", "1.5", "-0.2"] {
        let found = problems(&format!("[limits]\nbulk_daily_share = {bad}\n"));
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("limits.bulk_daily_share: must be a share greater than 0 and at most 1")),
            "{bad}: {found:#?}"
        );
    }
    let found = problems_with("", &[("GHL_SYNC__LIMITS__BULK_DAILY_SHARE", "2")]);
    assert!(found.iter().any(|p| p.starts_with("GHL_SYNC__LIMITS__BULK_DAILY_SHARE: must be a share")), "{found:#?}");
    let config = load("[limits]\nbulk_daily_share = 0.25\n", &[]).unwrap();
    assert!((config.settings.limits.bulk_daily_share - 0.25).abs() < f64::EPSILON);
}

#[test]
fn a_relative_url_names_its_key() {
    let found = problems("[connectors.webhook.slack]\nurl = \"/hook\"\n");
    assert_eq!(found, vec!["connectors.webhook.slack.url: relative URL without a base: \"/hook\"".to_owned()]);
}

#[test]
fn missing_required_keys_and_bad_durations_are_named() {
    let found = problems("[daemon]\nshutdown_grace = \"soon\"\n[[ghl.locations]]\nname = \"x\"\n");
    assert!(found.iter().any(|p| p.starts_with("daemon.shutdown_grace: invalid duration")), "{found:#?}");
    assert!(found.iter().any(|p| p == "ghl.locations[0].id: missing (this key is required)"), "{found:#?}");
}

#[test]
fn loopback_http_is_allowed_and_other_schemes_are_not() {
    assert!(problems("[ghl]\nbase_url = \"http://127.0.0.1:9999\"\n").is_empty());
    assert!(problems("[ghl]\nbase_url = \"http://localhost:9999\"\n").is_empty());
    let found = problems("[ghl]\nbase_url = \"ftp://example.com\"\n");
    assert!(found[0].starts_with("ghl.base_url: unsupported scheme"), "{found:#?}");
}

#[test]
fn the_environment_overrides_the_file() {
    let text = "[sync]\ncontacts_interval = \"1m\"\npage_size = 100\n";
    let config =
        load(text, &[("GHL_SYNC__SYNC__CONTACTS_INTERVAL", "30s"), ("GHL_SYNC__LOG__FORMAT", "json")]).unwrap();
    assert_eq!(config.settings.sync.contacts_interval.get(), std::time::Duration::from_secs(30));
    assert_eq!(config.settings.sync.page_size, 100, "keys not in the environment keep the file's value");
    assert_eq!(config.settings.log.format, LogFormat::Json);
}

#[test]
fn an_env_var_reaches_a_nested_connector_key() {
    let text = "[connectors.webhook.team]\nurl = \"https://hooks.example.com/a\"\n";
    let config = load(
        text,
        &[
            ("GHL_SYNC__CONNECTORS__WEBHOOK__TEAM__URL", "https://hooks.example.com/b"),
            ("GHL_SYNC__CONNECTORS__WEBHOOK__TEAM__BATCH_SIZE", "7"),
        ],
    )
    .unwrap();
    let hook = &config.settings.connectors.webhook["team"];
    assert_eq!(hook.url.as_str(), "https://hooks.example.com/b");
    assert_eq!(hook.batch_size, 7);
}

#[test]
fn unrelated_env_vars_are_ignored() {
    assert!(load("", &[("GHL_SYNC_CONFIG", "/x.toml"), ("GHL_SYNC_MASTER_KEY", "abc"), ("PATH", "/bin")]).is_ok());
}

#[test]
fn secrets_come_inline_from_env_vars_or_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pit");
    std::fs::write(&file, "pit-from-file\n").unwrap();
    // A process-unique variable name: tests run in parallel in one process.
    let var = "GHL_SYNC_TEST_PIT_SECRETS_COME_INLINE";
    let text = format!(
        "[[ghl.locations]]\nid = \"a\"\npit = \"pit-inline\"\n[[ghl.locations]]\nid = \"b\"\npit_file = \"{}\"\n[[ghl.locations]]\nid = \"c\"\npit_env = \"{var}\"\n",
        file.display()
    );
    let found = problems(&text);
    assert_eq!(found, vec![format!("ghl.locations[2].pit_env: environment variable {var} is not set")]);
    let text = text.replace(&format!("pit_env = \"{var}\""), "pit = \"pit-c\"");
    let config = load(&text, &[]).unwrap();
    assert_eq!(config.secrets.pits["a"].expose_secret(), "pit-inline");
    assert_eq!(config.secrets.pits["b"].expose_secret(), "pit-from-file");
}

#[test]
fn two_sources_for_one_secret_are_refused() {
    let found = problems("[[ghl.locations]]\nid = \"a\"\npit = \"x\"\npit_file = \"/y\"\n");
    assert_eq!(found, vec!["ghl.locations[0].pit: set only one of ghl.locations[0].pit, ghl.locations[0].pit_env and ghl.locations[0].pit_file".to_owned()]);
}

#[test]
fn oauth_without_a_master_key_is_refused() {
    let text =
        "[ghl.oauth]\nclient_id = \"id\"\nclient_secret = \"s\"\n[[ghl.locations]]\nid = \"a\"\nauth = \"oauth\"\n";
    let found = problems(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].starts_with("store.master_key: OAuth tokens are stored encrypted"));
    let with_key = format!("[store]\nmaster_key = \"{}\"\n{text}", "ab".repeat(32));
    assert!(load(&with_key, &[]).is_ok());
}

#[test]
fn secrets_never_show_in_debug_output() {
    let config = load("[[ghl.locations]]\nid = \"a\"\npit = \"pit-very-secret-value\"\n", &[]).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("pit-very-secret-value"), "{debug}");
}

#[test]
fn unknown_event_types_in_filters_are_named() {
    let found = problems("[connectors.webhook.t]\nurl = \"https://x.example\"\nevents = [\"task.complete\"]\n");
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("connectors.webhook.t.events[0]: unknown event type \"task.complete\""), "{found:#?}");
}

#[test]
fn invalid_toml_is_a_syntax_error() {
    assert!(matches!(load("[sync\n", &[]), Err(ConfigError::Syntax { .. })));
}

#[test]
fn the_export_section_parses_and_bad_values_are_reported() {
    let config = load(
        "[export]\nschedule = \"weekly\"\nat = \"04:30\"\ndirectory = \"/tmp/x\"\nformat = \"jsonl\"\nkeep = 3\n",
        &[],
    )
    .unwrap();
    let export = &config.settings.export;
    assert_eq!((export.schedule, export.format, export.keep), (ExportSchedule::Weekly, ExportFormat::Jsonl, 3));
    assert_eq!(load("", &[]).unwrap().settings.export.schedule, ExportSchedule::Off);
    let found = problems("[export]\nschedule = \"hourly\"\n");
    assert!(found.iter().any(|p| p.contains("export.schedule")), "{found:?}");
    let found = problems("[store]\nurl = \"postgres://db/x\"\n[export]\nschedule = \"nightly\"\n");
    assert!(found.iter().any(|p| p.starts_with("export.directory: must be set")), "{found:?}");
    let found = problems("[store]\nurl = \"postgres://db/x\"\n[export]\nschedule = \"nightly\"\ndirectory = \"/x\"\n");
    assert!(!found.iter().any(|p| p.contains("export.directory")), "{found:?}");
    let found = problems("[export]\nat = \"3am\"\nkeep = 0\n");
    assert!(found.iter().any(|p| p.contains("export.at")), "{found:?}");
    assert!(found.iter().any(|p| p.contains("export.keep")), "{found:?}");
}

#[test]
fn legacy_rsa_keys_decode_and_bad_ones_are_named() {
    let pem = include_str!("../../tests/fixtures/legacy-rsa-test-key.pub.pem");
    let pkcs1 = decode_rsa_spki(pem).expect("the fixture is a 2048-bit RSA SPKI");
    assert_eq!(pkcs1[0], 0x30, "a DER SEQUENCE (RSAPublicKey)");
    assert!(decode_rsa_spki(GHL_WEBHOOK_PUBLIC_KEY).is_none(), "an Ed25519 key is not RSA");
    let truncated: String = pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>()[..200].to_owned();
    assert!(decode_rsa_spki(&truncated).is_none());
    assert!(decode_rsa_spki("not base64 at all").is_none());

    let text = format!("[ghl.webhooks]\nlegacy_rsa_public_keys = [\"\"\"{pem}\"\"\", \"AAAA\"]\n");
    assert_eq!(
        problems(&text).iter().filter(|p| p.contains("legacy_rsa_public_keys")).collect::<Vec<_>>(),
        [
            "ghl.webhooks.legacy_rsa_public_keys[1]: not an RSA public key of at least 2048 bits (PEM \"BEGIN PUBLIC KEY\" or base64 SPKI)"
        ]
    );
}

proptest::proptest! {
    #[test]
    fn key_decoding_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let _ = decode_rsa_spki(&text);
        let _ = decode_ed25519_spki(&text);
    }
}

#[test]
fn alerts_resolve_their_url_secret_and_refuse_bad_ones_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alert-url");
    std::fs::write(&file, "https://hooks.slack.com/services/T0/B0/secretpart\n").unwrap();
    let config = load(
        &format!(
            "[[alerts]]\nformat = \"slack\"\nurl_file = \"{}\"\n\
             [[alerts]]\nname = \"pager\"\nurl = \"https://alerts.example/hook\"\ndead_letters = 0\nsync_lag = \"15m\"\n",
            file.display()
        ),
        &[],
    )
    .unwrap();
    assert_eq!(config.settings.alerts.len(), 2);
    assert_eq!(config.settings.alerts[0].name(), "slack");
    assert_eq!(config.settings.alerts[0].dead_letters, 10, "defaults apply");
    assert_eq!(config.settings.alerts[1].dead_letters, 0);
    assert_eq!(config.settings.alerts[1].sync_lag.get(), std::time::Duration::from_secs(900));
    let url = config.secrets.alert_urls.get("slack").unwrap();
    assert_eq!(url.expose_secret(), "https://hooks.slack.com/services/T0/B0/secretpart");
    assert!(!format!("{config:?}").contains("secretpart"), "the URL is a secret");

    let found = problems(
        "[[alerts]]\nurl = \"not a url secretpart\"\n\
         [[alerts]]\nurl = \"http://remote.example/hook\"\n\
         [[alerts]]\nformat = \"teams\"\n\
         [[alerts]]\nurl = \"https://a.example\"\nname = \"x\"\n[[alerts]]\nurl = \"https://b.example\"\nname = \"x\"\n",
    );
    let text = found.join("\n");
    assert!(text.contains("alerts[0].url: is not a URL"), "{text}");
    assert!(!text.contains("secretpart"), "a secret was echoed: {text}");
    assert!(text.contains("alerts[1].url: plain http to a remote host"), "{text}");
    assert!(text.contains("alerts[2].url"), "a missing URL is named: {text}");
    assert!(text.contains("alerts[4].name: another alert is also named \"x\""), "{text}");
    let text = problems("[[alerts]]\nurl = \"https://c.example\"\nformat = \"pager\"\n").join("\n");
    assert!(text.contains("alerts") && text.contains("pager"), "an unknown format is refused: {text}");
}

#[test]
fn sync_appointments_takes_auto_true_or_false_from_the_file_or_the_environment() {
    let table = [
        ("", &[][..], AppointmentReads::Auto),
        ("[sync]\nappointments = \"auto\"\n", &[][..], AppointmentReads::Auto),
        ("[sync]\nappointments = true\n", &[][..], AppointmentReads::On),
        ("[sync]\nappointments = false\n", &[][..], AppointmentReads::Off),
        ("", &[("GHL_SYNC__SYNC__APPOINTMENTS", "true")][..], AppointmentReads::On),
        ("[sync]\nappointments = true\n", &[("GHL_SYNC__SYNC__APPOINTMENTS", "auto")][..], AppointmentReads::Auto),
    ];
    for (text, env, expected) in table {
        let config = load(text, env).unwrap_or_else(|e| panic!("{text:?} {env:?}: {e}"));
        assert_eq!(config.settings.sync.appointments, expected, "{text:?} {env:?}");
    }
    let found = problems("[sync]\nappointments = \"sometimes\"\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].starts_with("sync.appointments: "), "{found:#?}");
    assert!(found[0].contains(r#""auto", true or false"#), "{found:#?}");
    let found = problems("[sync]\nappointments = 3\n");
    assert!(found.iter().any(|p| p.starts_with("sync.appointments: ")), "{found:#?}");
}

#[test]
fn the_store_url_names_sqlite_or_postgres_and_a_bad_one_is_refused_naming_the_key() {
    let location = "[[ghl.locations]]\nid = \"a\"\npit = \"x\"\n";
    let config = load(&format!("[store]\nurl = \"sqlite:///tmp/x/ghl.db\"\n{location}"), &[]).unwrap();
    assert_eq!(config.settings.store.target(), StoreTarget::Sqlite(PathBuf::from("/tmp/x/ghl.db")));
    assert_eq!(config.settings.store.resolved_path(), PathBuf::from("/tmp/x/ghl.db"));
    let found = problems(&format!("[store]\nurl = \"mysql://db/x\"\n{location}"));
    assert_eq!(found, vec!["store.url: must start with sqlite:// or postgres:// (got \"mysql\")".to_owned()]);
    let found = problems(&format!("[store]\nurl = \"sqlite:///a.db\"\npath = \"/b.db\"\n{location}"));
    assert!(found[0].starts_with("store.url: set store.url or store.path, not both"), "{found:?}");
    let config = load(&format!("[store]\nurl = \"postgres://u:hunter2@db/ghl\"\n{location}"), &[]).unwrap();
    assert_eq!(config.settings.store.target(), StoreTarget::Postgres("postgres://u:hunter2@db/ghl".to_owned()));
    let warning = config.warnings.iter().map(ToString::to_string).find(|w| w.starts_with("store.url")).unwrap();
    assert!(warning.contains("PGPASSWORD") && !warning.contains("hunter2"), "{warning}");
}
