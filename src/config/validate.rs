//! Cross-field and semantic checks: ranges, URLs, secrets that must exist.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use secrecy::SecretString;
use url::Url;

use super::{ConfigProblem, LocationAuth, Secret, Secrets, Settings};

/// Checks everything serde cannot, and resolves secrets. Returns every problem found.
pub(super) fn validate(settings: &Settings) -> (Secrets, Vec<ConfigProblem>) {
    let mut problems = Vec::new();
    let mut secrets = Secrets::default();
    let mut check = |ok: bool, key: &str, message: &str| {
        if !ok {
            problems.push(ConfigProblem::new(key, message));
        }
    };

    // [store]
    let store = &settings.store;
    check(!store.busy_timeout.get().is_zero(), "store.busy_timeout", "must be greater than zero");

    // [sync]
    let sync = &settings.sync;
    check((1..=500).contains(&sync.page_size), "sync.page_size", "must be between 1 and 500 (GHL's maximum)");
    check(!sync.contacts_interval.get().is_zero(), "sync.contacts_interval", "must be greater than zero");
    check(!sync.reconcile_interval.get().is_zero(), "sync.reconcile_interval", "must be greater than zero");
    check(!sync.children_sweep_period.get().is_zero(), "sync.children_sweep_period", "must be greater than zero");
    check(
        share(sync.children_sweep_budget_share),
        "sync.children_sweep_budget_share",
        "must be a share between 0 and 1",
    );
    check(sync.max_concurrent_locations >= 1, "sync.max_concurrent_locations", "must be at least 1");

    // [limits]
    let limits = &settings.limits;
    check(limits.ghl_burst_max >= 1, "limits.ghl_burst_max", "must be at least 1");
    check(!limits.ghl_burst_window.get().is_zero(), "limits.ghl_burst_window", "must be greater than zero");
    check(
        share(limits.ghl_burst_share) && limits.ghl_burst_share > 0.0,
        "limits.ghl_burst_share",
        "must be a share greater than 0 and at most 1",
    );
    check(limits.ghl_daily_budget >= 1, "limits.ghl_daily_budget", "must be at least 1");
    check(!limits.request_timeout.get().is_zero(), "limits.request_timeout", "must be greater than zero");
    check(!limits.connect_timeout.get().is_zero(), "limits.connect_timeout", "must be greater than zero");

    // [daemon]
    check(
        settings.daemon.shutdown_grace.get() <= std::time::Duration::from_secs(300),
        "daemon.shutdown_grace",
        "must be at most 5m",
    );

    // [dispatch]
    let dispatch = &settings.dispatch;
    check(!dispatch.poll_interval.get().is_zero(), "dispatch.poll_interval", "must be greater than zero");
    check(!dispatch.backoff_base.get().is_zero(), "dispatch.backoff_base", "must be greater than zero");
    check(
        dispatch.backoff_max.get() >= dispatch.backoff_base.get(),
        "dispatch.backoff_max",
        "must be at least dispatch.backoff_base",
    );
    check(dispatch.breaker_threshold >= 1, "dispatch.breaker_threshold", "must be at least 1");

    // [export]
    let export = &settings.export;
    check(export.keep >= 1, "export.keep", "must be at least 1");
    check(crate::export::parse_time_of_day(&export.at).is_some(), "export.at", "must be a UTC time of day as HH:MM");
    check(
        export.directory.as_ref().is_none_or(|d| !d.as_os_str().is_empty()),
        "export.directory",
        "must not be empty (leave it out for exports/ next to the database)",
    );

    // [ghl]
    let ghl = &settings.ghl;
    check_remote_url(&ghl.base_url, "ghl.base_url", &mut problems);
    if ghl.api_version.trim().is_empty() {
        problems.push(ConfigProblem::new("ghl.api_version", "must not be empty"));
    }
    for (i, key) in ghl.webhooks.public_keys.iter().enumerate() {
        if crate::config::validate::decode_ed25519_spki(key).is_none() {
            problems.push(ConfigProblem::new(
                format!("ghl.webhooks.public_keys[{i}]"),
                "not a base64 Ed25519 public key (SPKI, as GHL publishes it)",
            ));
        }
    }
    for (i, key) in ghl.webhooks.legacy_rsa_public_keys.iter().enumerate() {
        if decode_rsa_spki(key).is_none() {
            problems.push(ConfigProblem::new(
                format!("ghl.webhooks.legacy_rsa_public_keys[{i}]"),
                "not an RSA public key of at least 2048 bits (PEM \"BEGIN PUBLIC KEY\" or base64 SPKI)",
            ));
        }
    }
    if let Some(oauth) = &ghl.oauth {
        if oauth.client_id.trim().is_empty() {
            problems.push(ConfigProblem::new("ghl.oauth.client_id", "must not be empty"));
        }
        secrets.oauth_client_secret = resolve(
            "ghl.oauth.client_secret",
            (&oauth.client_secret, &oauth.client_secret_env, &oauth.client_secret_file),
            true,
            &mut problems,
        );
        check_remote_url(&oauth.install_url, "ghl.oauth.install_url", &mut problems);
        check_remote_url(&oauth.redirect_url, "ghl.oauth.redirect_url", &mut problems);
    }
    let mut seen = BTreeSet::new();
    let mut any_oauth = false;
    for (i, location) in ghl.locations.iter().enumerate() {
        let key = format!("ghl.locations[{i}]");
        if location.id.trim().is_empty() {
            problems.push(ConfigProblem::new(format!("{key}.id"), "must not be empty"));
        } else if !seen.insert(location.id.clone()) {
            problems.push(ConfigProblem::new(format!("{key}.id"), format!("location {} is listed twice", location.id)));
        }
        match location.auth {
            LocationAuth::Pit => {
                let pit = resolve(
                    &format!("{key}.pit"),
                    (&location.pit, &location.pit_env, &location.pit_file),
                    true,
                    &mut problems,
                );
                if let Some(pit) = pit {
                    secrets.pits.insert(location.id.clone(), pit);
                }
            }
            LocationAuth::Oauth => {
                any_oauth = true;
                if location.pit.is_some() || location.pit_env.is_some() || location.pit_file.is_some() {
                    problems.push(ConfigProblem::new(
                        format!("{key}.pit"),
                        "a private integration token is set but auth = \"oauth\"; remove one",
                    ));
                }
                if ghl.oauth.is_none() {
                    problems.push(ConfigProblem::new(
                        format!("{key}.auth"),
                        "auth = \"oauth\" needs the app's credentials in [ghl.oauth]",
                    ));
                }
            }
        }
    }

    secrets.master_key = resolve(
        "store.master_key",
        (&store.master_key, &store.master_key_env, &store.master_key_file),
        false,
        &mut problems,
    );
    if let Some(key) = &secrets.master_key {
        if crate::crypto::MasterKey::parse(key).is_err() {
            problems.push(ConfigProblem::new(
                "store.master_key",
                "must be 32 bytes written as 64 hex digits or base64 (generate one with `openssl rand -hex 32`)",
            ));
        }
    } else if any_oauth || ghl.oauth.is_some() {
        problems.push(ConfigProblem::new(
            "store.master_key",
            "OAuth tokens are stored encrypted: set store.master_key_env (e.g. GHL_SYNC_MASTER_KEY) or store.master_key_file",
        ));
    }

    // [server]
    let server = &settings.server;
    secrets.admin_token = resolve(
        "server.admin_token",
        (&server.admin_token, &server.admin_token_env, &server.admin_token_file),
        false,
        &mut problems,
    );
    secrets.lusha_webhook_secret = resolve(
        "server.lusha_webhook_secret",
        (&server.lusha_webhook_secret, &server.lusha_webhook_secret_env, &server.lusha_webhook_secret_file),
        false,
        &mut problems,
    );
    check_request_timeout(server.request_timeout.get(), &mut problems);
    if server.max_body_bytes < 1024 {
        problems.push(ConfigProblem::new("server.max_body_bytes", "must be at least 1024"));
    }

    // [connectors.webhook.NAME]
    for (name, hook) in &settings.connectors.webhook {
        let key = format!("connectors.webhook.{name}");
        check_remote_url(&hook.url, &format!("{key}.url"), &mut problems);
        if let Some(secret) =
            resolve(&format!("{key}.secret"), (&hook.secret, &hook.secret_env, &hook.secret_file), false, &mut problems)
        {
            secrets.webhook_secrets.insert(name.clone(), secret);
        }
        if !(1..=1000).contains(&hook.batch_size) {
            problems.push(ConfigProblem::new(format!("{key}.batch_size"), "must be between 1 and 1000"));
        }
        if hook.concurrency == 0 {
            problems.push(ConfigProblem::new(format!("{key}.concurrency"), "must be at least 1"));
        }
        if hook.max_attempts == 0 {
            problems.push(ConfigProblem::new(format!("{key}.max_attempts"), "must be at least 1"));
        }
        for (suffix, message) in crate::connectors::mapping::validate_fields(&hook.fields) {
            problems.push(ConfigProblem::new(format!("{key}.fields{suffix}"), message));
        }
        if let Some(template) = &hook.message {
            for message in crate::connectors::mapping::validate_template(template) {
                problems.push(ConfigProblem::new(format!("{key}.message"), message));
            }
        }
        for (i, event) in hook.events.iter().enumerate() {
            if !crate::domain::EVENT_TYPES.contains(&event.as_str()) {
                problems.push(ConfigProblem::new(
                    format!("{key}.events[{i}]"),
                    format!("unknown event type {event:?}; known: {}", crate::domain::EVENT_TYPES.join(", ")),
                ));
            }
        }
    }

    // [connectors.lusha]
    if let Some(lusha) = &settings.connectors.lusha {
        check_remote_url(&lusha.base_url, "connectors.lusha.base_url", &mut problems);
        secrets.lusha_api_key = resolve(
            "connectors.lusha.api_key",
            (&lusha.api_key, &lusha.api_key_env, &lusha.api_key_file),
            lusha.enabled,
            &mut problems,
        );
        problems.extend(crate::connectors::lusha::config::validate(lusha));
    }

    (secrets, problems)
}

fn check_request_timeout(timeout: std::time::Duration, problems: &mut Vec<ConfigProblem>) {
    if timeout.is_zero() || timeout > std::time::Duration::from_secs(300) {
        problems.push(ConfigProblem::new("server.request_timeout", "must be greater than zero and at most 5m"));
    }
}

fn share(value: f64) -> bool {
    (0.0..=1.0).contains(&value)
}

/// Plain HTTP is only allowed to this machine; everything else must be HTTPS.
fn check_remote_url(url: &Url, key: &str, problems: &mut Vec<ConfigProblem>) {
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(url) => {}
        "http" => problems.push(ConfigProblem::new(
            key,
            format!("plain http to a remote host ({}) is not allowed; use https", url.host_str().unwrap_or("?")),
        )),
        other => problems.push(ConfigProblem::new(key, format!("unsupported scheme {other:?}; use https"))),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Resolves `key`, `key_env` or `key_file` into a secret. At most one may be set.
fn resolve(
    key: &str,
    (inline, env, file): (&Option<Secret>, &Option<String>, &Option<PathBuf>),
    required: bool,
    problems: &mut Vec<ConfigProblem>,
) -> Option<SecretString> {
    let set = usize::from(inline.is_some()) + usize::from(env.is_some()) + usize::from(file.is_some());
    if set > 1 {
        problems.push(ConfigProblem::new(key, format!("set only one of {key}, {key}_env and {key}_file")));
        return None;
    }
    if let Some(secret) = inline {
        if secret.is_empty() {
            problems.push(ConfigProblem::new(key, "is empty"));
            return None;
        }
        return Some(secret.secret().clone());
    }
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(value) if !value.trim().is_empty() => Some(SecretString::from(value.trim().to_owned())),
            Ok(_) => {
                problems.push(ConfigProblem::new(format!("{key}_env"), format!("environment variable {var} is empty")));
                None
            }
            Err(_) => {
                problems
                    .push(ConfigProblem::new(format!("{key}_env"), format!("environment variable {var} is not set")));
                None
            }
        };
    }
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(value) if !value.trim().is_empty() => Some(SecretString::from(value.trim().to_owned())),
            Ok(_) => {
                problems.push(ConfigProblem::new(format!("{key}_file"), format!("file {} is empty", path.display())));
                None
            }
            Err(error) => {
                problems.push(ConfigProblem::new(
                    format!("{key}_file"),
                    format!("cannot read {}: {error}", path.display()),
                ));
                None
            }
        };
    }
    if required {
        problems.push(ConfigProblem::new(key, format!("missing: set {key}, {key}_env or {key}_file")));
    }
    None
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
