//! Typed configuration: one TOML file plus `GHL_SYNC__SECTION__KEY` environment overrides.
//!
//! Loading never stops at the first problem: every unknown key, wrong type, missing secret and
//! unsafe URL is collected with its key path, so `ghl-sync validate` can print them all at once.

mod duration;
mod load;
mod secret;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

pub use duration::Dur;
pub use load::{ConfigError, ConfigProblem, ConfigSource, LOCATION_ID_ENV, PIT_ENV, load, load_from_str};
pub use secret::Secret;
pub use validate::{decode_ed25519_spki, decode_rsa_spki};

pub use validate::{SecretSources, Validation};

pub use crate::alerts::{AlertFormat, AlertSettings};
pub use crate::connectors::lucky_orange::config::LuckyOrangeSettings;
pub use crate::connectors::lusha::config::LushaSettings;
pub use crate::connectors::webhook::config::{WebhookConnectorSettings, WebhookTemplate};
pub use crate::rules::{ActionSettings, RuleOptions, RuleSettings, ScheduleSettings};

/// The whole configuration, as read from the file and the environment.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub store: StoreSettings,
    pub ghl: GhlSettings,
    pub sync: SyncSettings,
    pub limits: LimitSettings,
    pub server: ServerSettings,
    pub connectors: ConnectorSettings,
    pub log: LogSettings,
    pub daemon: DaemonSettings,
    pub dispatch: DispatchSettings,
    pub export: ExportSettings,
    /// `[[alerts]]`: operator alert targets (none: no alerts).
    pub alerts: Vec<AlertSettings>,
    /// `[rule_settings]`: limits and permissions of every rule.
    pub rule_settings: RuleOptions,
    /// `[[rules]]`: triggers → conditions → actions (`crate::rules`).
    pub rules: Vec<RuleSettings>,
}

/// `[store]`: where the database lives and how secrets in it are encrypted.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// SQLite database file. Empty: `$STATE_DIRECTORY/ghl-sync.db` under systemd, else
    /// `./data/ghl-sync.db`. The shorthand of `url = "sqlite://PATH"`.
    pub path: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://user@host:port/database`. A PostgreSQL password is best
    /// left out of the URL (libpq's `PGPASSWORD` or `~/.pgpass` are read).
    pub url: Option<String>,
    /// How long a writer waits for SQLite's lock before failing.
    pub busy_timeout: Dur,
    /// PostgreSQL only: how long a replica's lease on a location lives without renewal
    /// (renewed every third of it). A dead replica's locations move within about this long.
    pub lease_ttl: Dur,
    /// Key that encrypts OAuth tokens at rest (32 bytes, base64 or hex).
    pub master_key: Option<Secret>,
    pub master_key_env: Option<String>,
    pub master_key_file: Option<PathBuf>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            path: None,
            url: None,
            busy_timeout: Dur::secs(5),
            lease_ttl: Dur::secs(30),
            master_key: None,
            master_key_env: None,
            master_key_file: None,
        }
    }
}

/// Which database `[store]` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    Sqlite(PathBuf),
    /// The URL as configured (may hold a password: show it through
    /// [`crate::store::redact_postgres_url`] only).
    Postgres(String),
}

/// Parses `store.url`: `Ok(None)` when unset, `Err` with the problem's message.
pub fn parse_store_url(url: &str) -> Result<StoreTarget, String> {
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err("sqlite:// needs a file path, e.g. sqlite:///var/lib/ghl-sync/ghl-sync.db".to_owned());
        }
        return Ok(StoreTarget::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(StoreTarget::Postgres(url.to_owned()));
    }
    Err(format!(
        "must start with sqlite:// or postgres:// (got {:?})",
        url.split_once("://").map_or("no scheme", |(scheme, _)| scheme)
    ))
}

impl StoreSettings {
    /// The database after applying the defaults (`url`, else `path`, else the default file).
    pub fn target(&self) -> StoreTarget {
        match self.url.as_deref().map(parse_store_url) {
            Some(Ok(target)) => target,
            // Validation refuses a bad URL before anything opens the store.
            _ => StoreTarget::Sqlite(self.resolved_path()),
        }
    }

    /// The SQLite database path after applying the defaults (`sqlite://` URLs included).
    pub fn resolved_path(&self) -> PathBuf {
        if let Some(Ok(StoreTarget::Sqlite(path))) = self.url.as_deref().map(parse_store_url) {
            return path;
        }
        if let Some(path) = &self.path {
            return path.clone();
        }
        match std::env::var_os("STATE_DIRECTORY") {
            // systemd may pass several colon-separated directories; the first is ours.
            Some(dirs) => {
                let first = dirs.to_string_lossy().split(':').next().unwrap_or("").to_owned();
                PathBuf::from(first).join("ghl-sync.db")
            }
            None => PathBuf::from("data").join("ghl-sync.db"),
        }
    }
}

/// `[ghl]`: the GHL API, the OAuth app and the locations to sync.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GhlSettings {
    pub base_url: Url,
    pub api_version: String,
    pub oauth: Option<OAuthSettings>,
    pub locations: Vec<LocationSettings>,
    pub webhooks: GhlWebhookSettings,
}

impl Default for GhlSettings {
    fn default() -> Self {
        Self {
            base_url: Url::parse("https://services.leadconnectorhq.com")
                .unwrap_or_else(|_| unreachable!("constant URL parses")),
            api_version: "2021-07-28".to_owned(),
            oauth: None,
            locations: Vec::new(),
            webhooks: GhlWebhookSettings::default(),
        }
    }
}

/// `[ghl.oauth]`: the marketplace app's client credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthSettings {
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Where GHL redirects after an install (served by the daemon's listener).
    #[serde(default = "default_redirect_url")]
    pub redirect_url: Url,
    /// Refresh access tokens this long before they expire.
    #[serde(default = "default_refresh_margin")]
    pub refresh_margin: Dur,
    /// The install page (white-label agencies use their own host).
    #[serde(default = "default_install_url")]
    pub install_url: Url,
}

fn default_redirect_url() -> Url {
    Url::parse("http://127.0.0.1:8089/oauth/callback").unwrap_or_else(|_| unreachable!("constant URL parses"))
}

fn default_install_url() -> Url {
    Url::parse("https://marketplace.gohighlevel.com/v2/oauth/chooselocation")
        .unwrap_or_else(|_| unreachable!("constant URL parses"))
}

fn default_refresh_margin() -> Dur {
    Dur::secs(300)
}

/// One `[[ghl.locations]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationSettings {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// How this location authenticates: a private integration token, or an OAuth grant
    /// stored by `ghl-sync auth install`.
    #[serde(default)]
    pub auth: LocationAuth,
    #[serde(default)]
    pub pit: Option<Secret>,
    #[serde(default)]
    pub pit_env: Option<String>,
    #[serde(default)]
    pub pit_file: Option<PathBuf>,
    /// Set false to keep the location configured but not synced.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LocationAuth {
    /// A private integration token (`pit`, `pit_env` or `pit_file`).
    #[default]
    Pit,
    /// An OAuth grant in the store (installed with `ghl-sync auth install`).
    Oauth,
}

/// `[ghl.webhooks]`: verification of GHL's signed webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GhlWebhookSettings {
    /// Ed25519 public keys (base64 SPKI, as GHL publishes them); several allow rotation.
    pub public_keys: Vec<String>,
    /// RSA public keys (PEM) for GHL's legacy `x-wh-signature`, deprecated by GHL on
    /// 2026-07-01. Empty (default): a delivery signed only that way is rejected. Set: it is
    /// verified (RSA-SHA256) and accepted, with a deprecation warning.
    pub legacy_rsa_public_keys: Vec<String>,
    /// Deliveries older than this are rejected as replays.
    pub max_age: Dur,
    /// How long webhook ids are remembered for de-duplication.
    pub dedupe_for: Dur,
}

/// GHL's published webhook key (reference/ghl.md §8.2). Check it against the guide.
pub const GHL_WEBHOOK_PUBLIC_KEY: &str = "MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=";

impl Default for GhlWebhookSettings {
    fn default() -> Self {
        Self {
            public_keys: vec![GHL_WEBHOOK_PUBLIC_KEY.to_owned()],
            legacy_rsa_public_keys: Vec::new(),
            max_age: Dur::secs(300),
            dedupe_for: Dur::secs(3 * 24 * 3600),
        }
    }
}

/// `[sync]`: what is polled, how often, and with which safety margins.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// How often each location's contacts are polled.
    pub contacts_interval: Dur,
    /// Re-read this much before the watermark on every poll (covers the search index lag).
    pub overlap: Dur,
    /// Never move the watermark past `now - index_lag_margin`.
    pub index_lag_margin: Dur,
    /// Contacts per search page (GHL allows up to 500).
    pub page_size: u32,
    /// Every contact's tasks and notes are re-read at least once per this period.
    pub children_sweep_period: Dur,
    /// Share of the daily request budget the tasks/notes sweep may use (0–1).
    pub children_sweep_budget_share: f64,
    /// How often deletes are reconciled by listing ids.
    pub reconcile_interval: Dur,
    /// Locations synced at the same time.
    pub max_concurrent_locations: usize,
    /// Webhook hints are gathered for this long before the contact is fetched.
    pub dirty_debounce: Dur,
    /// Whether to fetch tasks and notes at all.
    pub tasks: bool,
    pub notes: bool,
    /// Whether to read every due contact's appointments (one more request per contact):
    /// `"auto"` (only when a connector's `events` names an `appointment.*` type), `true`, `false`.
    pub appointments: AppointmentReads,
    /// Bulk work (a first sync's children backlog, the sweep, reconciliation) yields to
    /// webhook hints and polls. `false` finishes each pass before anything else (the
    /// behaviour before 0.2; kept for comparison, not recommended).
    pub bulk_yields: bool,
    /// Read tasks location-wide (`POST /locations/:locationId/tasks/search`, scope
    /// `locations/tasks.readonly`) for the children backlog and the sweep instead of one
    /// request per contact; a location whose token lacks the scope falls back to per-contact
    /// reads. `false`: always per contact.
    pub task_search: bool,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            contacts_interval: Dur::secs(60),
            overlap: Dur::secs(300),
            index_lag_margin: Dur::secs(120),
            page_size: 500,
            children_sweep_period: Dur::secs(24 * 3600),
            children_sweep_budget_share: 0.2,
            reconcile_interval: Dur::secs(24 * 3600),
            max_concurrent_locations: 4,
            dirty_debounce: Dur::millis(500),
            tasks: true,
            notes: true,
            appointments: AppointmentReads::Auto,
            bulk_yields: true,
            task_search: true,
        }
    }
}

/// `[sync] appointments`: when `GET /contacts/:contactId/appointments` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppointmentReads {
    /// Only when some subscriber asks for an `appointment.*` event type by name (decided where
    /// the subscribers are built, `app.rs`); a connector without an `events` filter does not
    /// count, so adding appointments never costs requests nobody asked for.
    #[default]
    Auto,
    /// Always (`true`).
    On,
    /// Never (`false`).
    Off,
}

impl<'de> Deserialize<'de> for AppointmentReads {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = AppointmentReads;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(r#""auto", true or false"#)
            }
            fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Self::Value, E> {
                Ok(if value { AppointmentReads::On } else { AppointmentReads::Off })
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
                // Environment overrides arrive as text.
                match value.trim() {
                    "auto" => Ok(AppointmentReads::Auto),
                    "true" => Ok(AppointmentReads::On),
                    "false" => Ok(AppointmentReads::Off),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(value), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `[limits]`: outbound HTTP limits (GHL's quotas and our own timeouts).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// GHL's burst quota per location and window.
    pub ghl_burst_max: u32,
    pub ghl_burst_window: Dur,
    /// Share of the burst quota the daemon uses (0–1); the rest is headroom for other apps.
    pub ghl_burst_share: f64,
    /// Requests per location per day the daemon allows itself (GHL's cap is 200,000).
    pub ghl_daily_budget: u64,
    /// Share (0–1] of the day's budget bulk work (children backfill and sweep, reconciliation,
    /// exports) may spend; incremental work (webhooks, polls, write-backs) keeps the rest.
    pub bulk_daily_share: f64,
    pub connect_timeout: Dur,
    pub request_timeout: Dur,
    /// Retries of a retryable failure before giving up for this run.
    pub max_retries: u32,
    /// Upper bound for one backoff sleep.
    pub max_backoff: Dur,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            ghl_burst_max: 100,
            ghl_burst_window: Dur::secs(10),
            ghl_burst_share: 0.9,
            ghl_daily_budget: 180_000,
            bulk_daily_share: 0.5,
            connect_timeout: Dur::secs(5),
            request_timeout: Dur::secs(30),
            max_retries: 6,
            max_backoff: Dur::secs(60),
        }
    }
}

/// `[server]`: the inbound HTTP listener (webhooks, health, metrics, status page).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// Bearer token for admin pages (status details, contact view). None: admin pages are off.
    pub admin_token: Option<Secret>,
    pub admin_token_env: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A request that takes longer than this is answered 503 (webhook senders retry).
    pub request_timeout: Dur,
    /// HMAC secret of Lusha signal webhooks (`POST /webhooks/lusha`). None: that route is off.
    pub lusha_webhook_secret: Option<Secret>,
    pub lusha_webhook_secret_env: Option<String>,
    pub lusha_webhook_secret_file: Option<PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8089)),
            admin_token: None,
            admin_token_env: None,
            admin_token_file: None,
            max_body_bytes: 1024 * 1024,
            request_timeout: Dur::secs(10),
            lusha_webhook_secret: None,
            lusha_webhook_secret_env: None,
            lusha_webhook_secret_file: None,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `ghl_sync=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, level: "info".to_owned() }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// `[daemon]`: process lifecycle.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonSettings {
    /// In-flight work gets this long to finish after SIGTERM (Docker kills after 10 s).
    pub shutdown_grace: Dur,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        Self { shutdown_grace: Dur::secs(8) }
    }
}

/// `[connectors]`: one table per connector kind; webhooks are named.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectorSettings {
    /// `[connectors.webhook.NAME]`
    pub webhook: BTreeMap<String, WebhookConnectorSettings>,
    /// `[connectors.lusha]`: enrichment with write-back to GHL.
    pub lusha: Option<LushaSettings>,
    /// `[connectors.lucky_orange]`: the identity bridge (tokens, `/lo/*`, replay links).
    pub lucky_orange: Option<LuckyOrangeSettings>,
}

/// One entry of a connector's `fields = [...]`: where a GHL field goes and how it is shaped.
#[derive(Debug, Clone, Deserialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FieldMapping {
    /// Source path: `email`, `tags`, `customFields.<id or key>`, `contact.<field>` (task/note events),
    /// `@event` / `@location_id` / `@entity_id` / `@contact_id` / `@changed_at`.
    #[serde(default)]
    pub from: Option<String>,
    /// Target key in the mapped object; dots nest (`person.email`).
    pub to: String,
    #[serde(default)]
    pub transform: Option<FieldTransform>,
    /// `"{firstName} {lastName}"`: placeholders are source paths (instead of `from`).
    #[serde(default)]
    pub template: Option<String>,
    /// Used when the source is missing, null or empty.
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    /// `join`: the separator (default `", "`).
    #[serde(default)]
    pub separator: Option<String>,
    /// `format_date`: `rfc3339` (default), `unix`, `unix_ms` or a `time` format such as `[year]-[month]-[day]`.
    #[serde(default)]
    pub format: Option<String>,
    /// A record without a value here (after the default) cannot be mapped: it goes to dead letters.
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FieldTransform {
    Lowercase,
    Uppercase,
    Trim,
    /// An array joined into one string.
    Join,
    /// An ISO-8601 or epoch-ms date re-written in `format`.
    FormatDate,
}

/// `[dispatch]`: how the outbox is drained.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchSettings {
    /// How often each connector's worker looks for due rows (the sync also wakes it).
    pub poll_interval: Dur,
    /// First retry delay; doubles per attempt, with jitter.
    pub backoff_base: Dur,
    /// Longest retry delay.
    pub backoff_max: Dur,
    /// Consecutive failed batches that open a connector's circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit waits before probing with one batch.
    pub breaker_cooldown: Dur,
    /// Delivered rows are kept this long (for `replay` and inspection), then pruned.
    pub retention: Dur,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            poll_interval: Dur::millis(200),
            backoff_base: Dur::secs(1),
            backoff_max: Dur::secs(600),
            breaker_threshold: 5,
            breaker_cooldown: Dur::secs(30),
            retention: Dur::secs(7 * 24 * 3600),
        }
    }
}

/// `[export]`: scheduled exports of each location's contacts from the snapshot (see `src/export.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportSettings {
    pub schedule: ExportSchedule,
    /// Time of day (UTC, `HH:MM`) of the scheduled export; weekly exports run on Sundays.
    pub at: String,
    /// Where files go. None: `exports/` next to the database.
    pub directory: Option<PathBuf>,
    pub format: ExportFormat,
    /// Exports kept per location (older ones are deleted after each new one).
    pub keep: usize,
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            schedule: ExportSchedule::Off,
            at: "03:00".to_owned(),
            directory: None,
            format: ExportFormat::Csv,
            keep: 7,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExportSchedule {
    #[default]
    Off,
    Nightly,
    Weekly,
}

/// File format of an export (also `ghl-sync export --format`).
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// Fixed columns plus one `cf.<id>` column per custom field (RFC 4180).
    #[default]
    Csv,
    /// One GHL contact record (JSON) per line.
    Jsonl,
}

/// Every secret the configuration names, resolved from inline values, env vars or files.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub master_key: Option<SecretString>,
    pub oauth_client_secret: Option<SecretString>,
    pub admin_token: Option<SecretString>,
    /// Verifies Lusha's signal webhooks (`[server] lusha_webhook_secret`).
    pub lusha_webhook_secret: Option<SecretString>,
    /// By location id.
    pub pits: BTreeMap<String, SecretString>,
    /// By webhook connector name.
    pub webhook_secrets: BTreeMap<String, SecretString>,
    /// `[connectors.lusha] api_key`.
    pub lusha_api_key: Option<SecretString>,
    /// `[connectors.lucky_orange]` signing keys by key id (current and previous).
    pub lucky_orange_keys: BTreeMap<String, SecretString>,
    /// `[[alerts]]` URLs by alert name.
    pub alert_urls: BTreeMap<String, SecretString>,
}

/// A loaded, validated configuration with its secrets resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub secrets: Secrets,
    /// Valid, but probably not what was meant (nothing to sync, nowhere to deliver); `validate`
    /// prints them and `run` logs them.
    pub warnings: Vec<ConfigProblem>,
    /// Where it came from, for messages.
    pub source: ConfigSource,
    /// The `[[rules]]`, compiled once at load.
    pub rules: Arc<crate::rules::RuleSet>,
}

impl Config {
    /// Builds a config from settings in code (tests, demo); runs the same validation.
    pub fn from_settings(settings: Settings) -> Result<Self, ConfigError> {
        let validation = validate::validate(&settings);
        if validation.problems.is_empty() {
            Ok(Self {
                settings,
                secrets: validation.secrets,
                warnings: validation.warnings,
                source: ConfigSource::InCode,
                rules: validation.rules,
            })
        } else {
            Err(ConfigError::Invalid { origin: ConfigSource::InCode, problems: validation.problems })
        }
    }
}

#[cfg(test)]
mod tests;
