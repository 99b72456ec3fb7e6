//! Semantic checks: ranges, URLs, secrets that must exist. Each section validates itself
//! (`validate(&self, &mut Validation)`, next to the section's other code: Vector's way); this
//! file holds the sections that live in `config/`, the shared helpers ([`Validation`]: problems
//! and warnings with key paths, secret resolution, URL rules) and the rules that span sections.
//! Connector sections validate in their own folders (`connectors/webhook/config.rs`,
//! `connectors/lusha/config.rs`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::{
    ConfigProblem, DaemonSettings, DispatchSettings, ExportSettings, GhlSettings, LimitSettings, LocationAuth, Secret,
    Secrets, ServerSettings, Settings, StoreSettings, SyncSettings,
};

/// What validation found: every problem and warning with its key path, and the secrets it
/// resolved on the way. Sections add to it; nothing stops at the first problem.
#[derive(Debug, Default)]
pub struct Validation {
    pub problems: Vec<ConfigProblem>,
    /// Valid but probably not what was meant (printed by `validate`, logged by `run`).
    pub warnings: Vec<ConfigProblem>,
    pub secrets: Secrets,
    /// The compiled `[[rules]]` (only meaningful when there are no problems).
    pub rules: Arc<crate::rules::RuleSet>,
}

/// The three ways to give one secret: inline, an env var's name, a file.
pub type SecretSources<'a> = (&'a Option<Secret>, &'a Option<String>, &'a Option<PathBuf>);

impl Validation {
    /// Records a problem at `key` unless `ok`.
    pub fn check(&mut self, ok: bool, key: &str, message: &str) {
        if !ok {
            self.problem(key, message);
        }
    }

    pub fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(ConfigProblem::new(key, message));
    }

    pub fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(ConfigProblem::new(key, message));
    }

    /// Plain HTTP is only allowed to this machine; everything else must be HTTPS.
    pub fn remote_url(&mut self, url: &Url, key: &str) {
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(url) => {}
            "http" => self.problem(
                key,
                format!("plain http to a remote host ({}) is not allowed; use https", url.host_str().unwrap_or("?")),
            ),
            other => self.problem(key, format!("unsupported scheme {other:?}; use https")),
        }
    }

    /// Resolves `key`, `key_env` or `key_file` into a secret. At most one may be set.
    pub fn secret(&mut self, key: &str, sources: SecretSources<'_>, required: bool) -> Option<SecretString> {
        match resolve(key, sources, required) {
            Ok(secret) => secret,
            Err(problem) => {
                self.problems.push(problem);
                None
            }
        }
    }
}

/// Checks everything serde cannot, section by section, then the rules that span sections.
pub(super) fn validate(settings: &Settings) -> Validation {
    let mut v = Validation::default();
    settings.store.validate(&mut v);
    settings.sync.validate(&mut v);
    settings.limits.validate(&mut v);
    settings.daemon.validate(&mut v);
    settings.dispatch.validate(&mut v);
    settings.export.validate(&mut v);
    // On PostgreSQL there is no database file to put exports next to.
    v.check(
        settings.export.schedule == super::ExportSchedule::Off
            || settings.export.directory.is_some()
            || matches!(settings.store.target(), super::StoreTarget::Sqlite(_)),
        "export.directory",
        "must be set for scheduled exports when the store is PostgreSQL (there is no database file to put exports/ next to)",
    );
    settings.ghl.validate(&mut v);
    settings.server.validate(&mut v);
    for (name, hook) in &settings.connectors.webhook {
        hook.validate(name, &mut v);
    }
    if let Some(lusha) = &settings.connectors.lusha {
        lusha.validate_section(&mut v);
    }
    if let Some(lucky_orange) = &settings.connectors.lucky_orange {
        lucky_orange.validate_section(&mut v);
    }
    for (index, alert) in settings.alerts.iter().enumerate() {
        alert.validate(index, &mut v);
    }
    rules(settings, &mut v);
    across_sections(settings, &mut v);
    v
}

/// `[rule_settings]` and `[[rules]]`: compiled against the connectors this config defines.
fn rules(settings: &Settings, v: &mut Validation) {
    let connectors = &settings.connectors;
    let mut known: BTreeSet<String> = connectors.webhook.keys().map(|name| format!("webhook.{name}")).collect();
    if connectors.lusha.is_some() {
        known.insert("lusha".to_owned());
    }
    if connectors.lucky_orange.is_some() {
        known.insert("lucky_orange".to_owned());
    }
    let (set, problems) = crate::rules::config::compile(&settings.rules, &settings.rule_settings, &known);
    for (key, message) in problems {
        v.problem(key, message);
    }
    // A disabled connector is still configured (the rule is valid), but nothing delivers its
    // rows until it is enabled again.
    let disabled = |id: &str| match id.strip_prefix("webhook.") {
        Some(name) => connectors.webhook.get(name).is_some_and(|hook| !hook.enabled),
        None if id == "lusha" => connectors.lusha.as_ref().is_some_and(|lusha| !lusha.enabled),
        None => false,
    };
    for (r, rule) in settings.rules.iter().enumerate().filter(|(_, rule)| rule.enabled) {
        for (a, action) in rule.actions.iter().enumerate() {
            let target = match action.action.as_str() {
                "deliver" => action.connector.as_deref(),
                "lusha.enrich" => Some("lusha"),
                _ => None,
            };
            if let Some(target) = target.filter(|t| disabled(t)) {
                v.warn(
                    format!("rules[{r}].actions[{a}]"),
                    format!("connector {target} is disabled: this action's rows wait until it is enabled again"),
                );
            }
        }
    }
    v.rules = Arc::new(set);
}

/// Rules that involve more than one section, and the warnings for a config that does nothing.
fn across_sections(settings: &Settings, v: &mut Validation) {
    let ghl = &settings.ghl;
    // OAuth installs add locations to the store, not to the file: no warning with [ghl.oauth].
    if ghl.locations.is_empty() && ghl.oauth.is_none() {
        v.warn(
            "ghl.locations",
            "no location to sync: add one to the config ([[ghl.locations]] with id = \"<location id>\" and \
             pit_env = \"GHL_SYNC_PIT\"), or set GHL_SYNC_LOCATION_ID and GHL_SYNC_PIT in the environment, or \
             install the marketplace app ([ghl.oauth], then `ghl-sync auth install`); see docs/getting-started.md",
        );
    }
    let connectors = settings.connectors.webhook.values().filter(|h| h.enabled).count()
        + usize::from(settings.connectors.lusha.as_ref().is_some_and(|l| l.enabled))
        + usize::from(settings.connectors.lucky_orange.as_ref().is_some_and(|l| l.enabled));
    if connectors == 0 {
        v.warn(
            "connectors",
            "no connector: changes are recorded but delivered nowhere; add one, e.g. [connectors.webhook.team] \
             with url = \"https://…\" (every connector: config/ghl-sync.example.toml)",
        );
    }
    // A stop waits `daemon.shutdown_grace` for the requests in flight; a webhook request allowed
    // to run longer can make the stop exit "anyway", and its batch is sent again after the restart.
    let grace = settings.daemon.shutdown_grace.get();
    for (name, hook) in settings.connectors.webhook.iter().filter(|(_, hook)| hook.enabled) {
        if hook.timeout.get() >= grace {
            v.warn(
                format!("connectors.webhook.{name}.timeout"),
                format!(
                    "{} is not shorter than daemon.shutdown_grace ({}): a request still in flight at a stop can \
                     outlast the grace, the daemon then exits without recording its outcome and the batch is sent \
                     again (same idempotency keys) after the restart; lower the timeout or raise the grace",
                    hook.timeout, settings.daemon.shutdown_grace
                ),
            );
        }
    }
    let any_oauth = ghl.locations.iter().any(|l| l.auth == LocationAuth::Oauth);
    if v.secrets.master_key.is_none() && (any_oauth || ghl.oauth.is_some()) {
        v.problem(
            "store.master_key",
            "OAuth tokens are stored encrypted: set store.master_key_env (e.g. GHL_SYNC_MASTER_KEY) or store.master_key_file",
        );
    }
}

impl StoreSettings {
    /// `[store]`: the busy timeout and the master key (parsed here, needed by OAuth). Without a
    /// configured key, a systemd credential `master_key` is used when the unit passes a non-empty
    /// one (`LoadCredential=master_key:…`; see deploy/systemd/ghl-sync.service).
    pub(super) fn validate(&self, v: &mut Validation) {
        v.check(!self.busy_timeout.get().is_zero(), "store.busy_timeout", "must be greater than zero");
        let ttl = self.lease_ttl.get();
        v.check(
            ttl >= std::time::Duration::from_secs(3) && ttl <= std::time::Duration::from_secs(600),
            "store.lease_ttl",
            "must be between 3s and 10m",
        );
        if let Some(url) = &self.url {
            if self.path.is_some() {
                v.problem(
                    "store.url",
                    "set store.url or store.path, not both (path is the shorthand of sqlite://PATH)",
                );
            }
            match super::parse_store_url(url) {
                Err(message) => v.problem("store.url", message),
                Ok(super::StoreTarget::Sqlite(_)) => {}
                Ok(super::StoreTarget::Postgres(url)) => {
                    if url.split_once("://").is_some_and(|(_, rest)| {
                        rest.rsplit_once('@').is_some_and(|(credentials, _)| credentials.contains(':'))
                    }) {
                        v.warn(
                            "store.url",
                            "holds a password: prefer the PGPASSWORD environment variable or a ~/.pgpass file, \
                             so the config file holds no secret",
                        );
                    }
                }
            }
        }
        let sources = (&self.master_key, &self.master_key_env, &self.master_key_file);
        v.secrets.master_key = if sources.0.is_none() && sources.1.is_none() && sources.2.is_none() {
            systemd_credential(MASTER_KEY_CREDENTIAL)
        } else {
            v.secret("store.master_key", sources, false)
        };
        if let Some(key) = &v.secrets.master_key
            && crate::crypto::MasterKey::parse(key).is_err()
        {
            v.problem(
                "store.master_key",
                "must be 32 bytes written as 64 hex digits or base64 (generate one with `openssl rand -hex 32`)",
            );
        }
    }
}

impl SyncSettings {
    pub(super) fn validate(&self, v: &mut Validation) {
        v.check((1..=500).contains(&self.page_size), "sync.page_size", "must be between 1 and 500 (GHL's maximum)");
        v.check(!self.contacts_interval.get().is_zero(), "sync.contacts_interval", "must be greater than zero");
        v.check(!self.reconcile_interval.get().is_zero(), "sync.reconcile_interval", "must be greater than zero");
        v.check(!self.children_sweep_period.get().is_zero(), "sync.children_sweep_period", "must be greater than zero");
        v.check(
            share(self.children_sweep_budget_share),
            "sync.children_sweep_budget_share",
            "must be a share between 0 and 1",
        );
        v.check(self.max_concurrent_locations >= 1, "sync.max_concurrent_locations", "must be at least 1");
    }
}

impl LimitSettings {
    pub(super) fn validate(&self, v: &mut Validation) {
        v.check(self.ghl_burst_max >= 1, "limits.ghl_burst_max", "must be at least 1");
        v.check(!self.ghl_burst_window.get().is_zero(), "limits.ghl_burst_window", "must be greater than zero");
        v.check(
            share(self.ghl_burst_share) && self.ghl_burst_share > 0.0,
            "limits.ghl_burst_share",
            "must be a share greater than 0 and at most 1",
        );
        v.check(self.ghl_daily_budget >= 1, "limits.ghl_daily_budget", "must be at least 1");
        v.check(
            share(self.bulk_daily_share) && self.bulk_daily_share > 0.0,
            "limits.bulk_daily_share",
            "must be a share greater than 0 and at most 1",
        );
        v.check(!self.request_timeout.get().is_zero(), "limits.request_timeout", "must be greater than zero");
        v.check(!self.connect_timeout.get().is_zero(), "limits.connect_timeout", "must be greater than zero");
    }
}

impl DaemonSettings {
    pub(super) fn validate(&self, v: &mut Validation) {
        v.check(self.shutdown_grace.get() <= Duration::from_secs(300), "daemon.shutdown_grace", "must be at most 5m");
    }
}

impl DispatchSettings {
    pub(super) fn validate(&self, v: &mut Validation) {
        v.check(!self.poll_interval.get().is_zero(), "dispatch.poll_interval", "must be greater than zero");
        v.check(!self.backoff_base.get().is_zero(), "dispatch.backoff_base", "must be greater than zero");
        v.check(
            self.backoff_max.get() >= self.backoff_base.get(),
            "dispatch.backoff_max",
            "must be at least dispatch.backoff_base",
        );
        v.check(self.breaker_threshold >= 1, "dispatch.breaker_threshold", "must be at least 1");
    }
}

impl ExportSettings {
    pub(super) fn validate(&self, v: &mut Validation) {
        v.check(self.keep >= 1, "export.keep", "must be at least 1");
        v.check(
            crate::export::parse_time_of_day(&self.at).is_some(),
            "export.at",
            "must be a UTC time of day as HH:MM",
        );
        v.check(
            self.directory.as_ref().is_none_or(|d| !d.as_os_str().is_empty()),
            "export.directory",
            "must not be empty (leave it out for exports/ next to the database)",
        );
    }
}

impl GhlSettings {
    /// `[ghl]`: the API, webhook keys, the OAuth app and every location with its credentials.
    pub(super) fn validate(&self, v: &mut Validation) {
        v.remote_url(&self.base_url, "ghl.base_url");
        v.check(!self.api_version.trim().is_empty(), "ghl.api_version", "must not be empty");
        for (i, key) in self.webhooks.public_keys.iter().enumerate() {
            v.check(
                decode_ed25519_spki(key).is_some(),
                &format!("ghl.webhooks.public_keys[{i}]"),
                "not a base64 Ed25519 public key (SPKI, as GHL publishes it)",
            );
        }
        for (i, key) in self.webhooks.legacy_rsa_public_keys.iter().enumerate() {
            v.check(
                decode_rsa_spki(key).is_some(),
                &format!("ghl.webhooks.legacy_rsa_public_keys[{i}]"),
                "not an RSA public key of at least 2048 bits (PEM \"BEGIN PUBLIC KEY\" or base64 SPKI)",
            );
        }
        if let Some(oauth) = &self.oauth {
            v.check(!oauth.client_id.trim().is_empty(), "ghl.oauth.client_id", "must not be empty");
            v.secrets.oauth_client_secret = v.secret(
                "ghl.oauth.client_secret",
                (&oauth.client_secret, &oauth.client_secret_env, &oauth.client_secret_file),
                true,
            );
            v.remote_url(&oauth.install_url, "ghl.oauth.install_url");
            v.remote_url(&oauth.redirect_url, "ghl.oauth.redirect_url");
        }
        let mut seen = BTreeSet::new();
        for (i, location) in self.locations.iter().enumerate() {
            let key = format!("ghl.locations[{i}]");
            if location.id.trim().is_empty() {
                v.problem(format!("{key}.id"), "must not be empty");
            } else if !seen.insert(location.id.clone()) {
                v.problem(format!("{key}.id"), format!("location {} is listed twice", location.id));
            }
            let has_pit = location.pit.is_some() || location.pit_env.is_some() || location.pit_file.is_some();
            match location.auth {
                LocationAuth::Pit => {
                    let sources = (&location.pit, &location.pit_env, &location.pit_file);
                    if let Some(pit) = v.secret(&format!("{key}.pit"), sources, true) {
                        v.secrets.pits.insert(location.id.clone(), pit);
                    }
                }
                LocationAuth::Oauth => {
                    v.check(
                        !has_pit,
                        &format!("{key}.pit"),
                        "a private integration token is set but auth = \"oauth\"; remove one",
                    );
                    v.check(
                        self.oauth.is_some(),
                        &format!("{key}.auth"),
                        "auth = \"oauth\" needs the app's credentials in [ghl.oauth]",
                    );
                }
            }
        }
    }
}

impl ServerSettings {
    pub(super) fn validate(&self, v: &mut Validation) {
        v.secrets.admin_token =
            v.secret("server.admin_token", (&self.admin_token, &self.admin_token_env, &self.admin_token_file), false);
        v.secrets.lusha_webhook_secret = v.secret(
            "server.lusha_webhook_secret",
            (&self.lusha_webhook_secret, &self.lusha_webhook_secret_env, &self.lusha_webhook_secret_file),
            false,
        );
        let timeout = self.request_timeout.get();
        v.check(
            !timeout.is_zero() && timeout <= Duration::from_secs(300),
            "server.request_timeout",
            "must be greater than zero and at most 5m",
        );
        v.check(self.max_body_bytes >= 1024, "server.max_body_bytes", "must be at least 1024");
    }
}

/// The systemd credential that holds the master key when the config names none.
pub const MASTER_KEY_CREDENTIAL: &str = "master_key";

/// A credential systemd passed to this service (`$CREDENTIALS_DIRECTORY/<name>`), if it is there
/// and not empty (an empty one is the unit's `SetCredential=` default: "not given").
fn systemd_credential(name: &str) -> Option<SecretString> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let text = std::fs::read_to_string(std::path::Path::new(&dir).join(name)).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| SecretString::from(text.to_owned()))
}

fn share(value: f64) -> bool {
    (0.0..=1.0).contains(&value)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// `key`, `key_env` or `key_file` as a secret (`Ok(None)`: none set and not `required`).
fn resolve(
    key: &str,
    (inline, env, file): SecretSources<'_>,
    required: bool,
) -> Result<Option<SecretString>, ConfigProblem> {
    let set = usize::from(inline.is_some()) + usize::from(env.is_some()) + usize::from(file.is_some());
    if set > 1 {
        return Err(ConfigProblem::new(key, format!("set only one of {key}, {key}_env and {key}_file")));
    }
    if let Some(secret) = inline {
        if secret.is_empty() {
            return Err(ConfigProblem::new(key, "is empty"));
        }
        return Ok(Some(secret.secret().clone()));
    }
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => Ok(Some(SecretString::from(value.trim().to_owned()))),
            Ok(_) => Err(ConfigProblem::new(format!("{key}_env"), format!("environment variable {var} is empty"))),
            Err(_) => Err(ConfigProblem::new(format!("{key}_env"), format!("environment variable {var} is not set"))),
        };
    }
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(value) if !value.trim().is_empty() => Ok(Some(SecretString::from(value.trim().to_owned()))),
            Ok(_) => Err(ConfigProblem::new(format!("{key}_file"), format!("file {} is empty", path.display()))),
            Err(error) => {
                Err(ConfigProblem::new(format!("{key}_file"), format!("cannot read {}: {error}", path.display())))
            }
        };
    }
    if required {
        return Err(ConfigProblem::new(key, format!("missing: set {key}, {key}_env or {key}_file")));
    }
    Ok(None)
}

/// Decodes GHL's published key format (base64 SPKI DER) into the raw 32-byte Ed25519 key.
pub fn decode_ed25519_spki(text: &str) -> Option<[u8; 32]> {
    // SPKI header for Ed25519: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (33 bytes) }
    const PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    let der = pem_or_base64_der(text)?;
    match der.len() {
        44 if der[..12] == PREFIX => der[12..].try_into().ok(),
        32 => der.as_slice().try_into().ok(),
        _ => None,
    }
}

/// The DER bytes of a PEM block or of bare base64 (whitespace ignored).
fn pem_or_base64_der(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let cleaned: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect::<String>()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(cleaned).ok()
}

/// The PKCS#1 `RSAPublicKey` inside an RSA `SubjectPublicKeyInfo` (PEM or base64 DER), the
/// form `ring` verifies with. `None` unless it is an RSA key of at least 2048 bits.
pub fn decode_rsa_spki(text: &str) -> Option<Vec<u8>> {
    // AlgorithmIdentifier starts with OID 1.2.840.113549.1.1.1 (rsaEncryption).
    const RSA_OID: [u8; 11] = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let der = pem_or_base64_der(text)?;
    let (spki, rest) = der_take(&der, 0x30)?;
    let (algorithm, after) = der_take(spki, 0x30)?;
    let (bits, _) = der_take(after, 0x03)?;
    let (&unused_bits, key) = bits.split_first()?;
    if !rest.is_empty() || !algorithm.starts_with(&RSA_OID) || unused_bits != 0 {
        return None;
    }
    // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
    let (fields, _) = der_take(key, 0x30)?;
    let (modulus, exponent) = der_take(fields, 0x02)?;
    der_take(exponent, 0x02)?;
    let significant = modulus.iter().skip_while(|b| **b == 0).count();
    (significant >= 256).then(|| key.to_vec())
}

/// One DER element of type `tag` at the start of `input`: (its contents, what follows).
fn der_take(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    let (&length, rest) = rest.split_first()?;
    if first != tag {
        return None;
    }
    let (length, rest) = if length < 0x80 {
        (usize::from(length), rest)
    } else {
        let count = usize::from(length & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        (bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), rest)
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}
