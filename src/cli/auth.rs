//! `ghl-sync auth …`: install the marketplace app (OAuth), import a private integration
//! token, and show the stored grants (never a token).
//!
//! `auth install` prints the install URL and receives GHL's redirect (`?code=…`) on a small
//! one-shot listener at the host:port of `ghl.oauth.redirect_url` (or `server.listen` when the
//! redirect URL is a public host behind a reverse proxy). Run it while the daemon is stopped:
//! it takes the database lock, and the daemon's listener would hold the same port.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use secrecy::SecretString;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config::Config;
use crate::ghl::encode;
use crate::ghl::oauth::UserType;
use crate::ghl::tokens::{GrantStatus, TokenManager, missing_scopes, needed_scopes};
use crate::store::grants::{GrantKind, LocationRow, Sealed};
use crate::store::{Store, StoreLock};

/// `ghl-sync auth <command>`.
#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Install the app on a location or agency: prints the install URL, waits for GHL's
    /// redirect and stores the grant(s).
    Install {
        /// Also ask for `contacts.write` (needed by write-back connectors).
        #[arg(long)]
        write: bool,
        /// Exchange this authorization code (from the redirect URL) instead of listening.
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
        /// How long to wait for the redirect.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Store a private integration token for a location; the token is read from stdin.
    ImportPit {
        /// The GHL location (sub-account) id.
        #[arg(long)]
        location: String,
    },
    /// Take over an OAuth grant from another integration: its refresh token is read from stdin
    /// (never echoed), refreshed once to prove it, and the rotated pair stored encrypted (needs
    /// [ghl.oauth] of the app that issued it and a master key). The pasted token is used up.
    ImportOauth {
        /// The GHL location (sub-account) id the grant belongs to.
        #[arg(long)]
        location: String,
    },
    /// Show the stored grants: kind, expiry, scopes, re-authorisation needs. Never a token.
    Status,
    /// Create a fresh random master key (encrypts OAuth tokens and imported tokens in the store):
    /// written to FILE with mode 0600 (an existing file is never overwritten), else printed.
    /// Needs no config.
    InitKey {
        /// Where to write the key (e.g. /etc/ghl-sync/credentials/master_key).
        #[arg(long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
    /// Re-encrypt every stored token with the configured master key (key rotation). The old
    /// key is read from an env var or a file; run with the daemon stopped.
    Rekey {
        /// Env var holding the old master key.
        #[arg(long, value_name = "VAR", conflicts_with = "old_key_file")]
        old_key_env: Option<String>,
        /// File holding the old master key.
        #[arg(long, value_name = "FILE")]
        old_key_file: Option<std::path::PathBuf>,
    },
}

/// Re-seals every token in `grants` from `old` to `new` in one transaction; returns how
/// many grants were re-encrypted. Nothing changes if any token fails to open with `old`.
pub async fn rekey(
    store: &Store,
    old: &crate::crypto::MasterKey,
    new: &crate::crypto::MasterKey,
) -> anyhow::Result<usize> {
    crate::store::grants::reseal_all(store, |sealed: &Sealed| -> anyhow::Result<Sealed> {
        let plain = old.open(&sealed.0).context("A stored token does not open with the old key")?;
        Ok(Sealed(new.seal(secrecy::ExposeSecret::expose_secret(&plain))?))
    })
    .await
}

/// A fresh random master key: 32 bytes from the system's CSPRNG, as 64 hex digits.
pub fn new_master_key() -> anyhow::Result<SecretString> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Writes a fresh master key to `path`, created with mode 0600; refuses an existing file (the
/// tokens its key encrypted would be lost).
pub fn write_new_master_key(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = new_master_key()?;
    let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} already exists; a master key is never overwritten (tokens it encrypted would be lost). \
             To replace a key, write the new one elsewhere and run `ghl-sync auth rekey`",
            path.display()
        ),
        Err(error) => return Err(error).with_context(|| format!("Failed to create {}", path.display())),
    };
    file.write_all(format!("{}\n", secrecy::ExposeSecret::expose_secret(&key)).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("Failed to write {}", path.display()))?;
    Ok(())
}

/// `ghl-sync auth init-key [--output FILE]`.
pub fn init_key(output: Option<&std::path::Path>) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            write_new_master_key(path)?;
            println!(
                "Wrote a new master key to {} (mode 0600). Keep a copy in a safe place: OAuth tokens in the \
                 store cannot be decrypted without it.",
                path.display()
            );
        }
        None => println!("{}", secrecy::ExposeSecret::expose_secret(&new_master_key()?)),
    }
    Ok(())
}

/// Options of `auth install`.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub write: bool,
    pub code: Option<String>,
    pub timeout: Duration,
}

/// What an install stored.
#[derive(Debug, Clone)]
pub struct InstallReport {
    pub resource_id: String,
    pub kind: GrantKind,
    pub generation: i64,
    pub locations: Vec<String>,
    pub missing_scopes: Vec<String>,
}

impl std::fmt::Display for InstallReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Stored a {} grant for {} (generation {}).",
            self.kind.as_str(),
            self.resource_id,
            self.generation
        )?;
        if self.kind == GrantKind::Company {
            writeln!(f, "Installed locations ({}):", self.locations.len())?;
            for location in &self.locations {
                writeln!(f, "  {location}")?;
            }
        }
        if !self.missing_scopes.is_empty() {
            writeln!(f, "Warning: the grant lacks scopes: {}", self.missing_scopes.join(" "))?;
        }
        Ok(())
    }
}

/// Runs an `auth` command: takes the database lock, opens the store, dispatches.
pub async fn run(config: Config, command: AuthCommand) -> anyhow::Result<()> {
    let target = config.settings.store.target();
    let _lock = StoreLock::acquire(&target).await.context("Failed to lock the database (stop the daemon first)")?;
    let store = Store::open(&target, config.settings.store.busy_timeout.get())
        .await
        .with_context(|| format!("Failed to open the store at {}", crate::store::Location::of(&target)))?;
    let tokens = TokenManager::from_config(&config, store.clone(), CancellationToken::new())?;
    let result = match command {
        AuthCommand::Install { write, code, timeout } => {
            let options = InstallOptions { write, code, timeout };
            let report = install(&config, &tokens, options, |url| {
                println!("Open this URL in a browser and choose the location(s) to install ghl-sync on:\n\n  {url}\n");
                println!(
                    "Waiting for GHL to redirect to {} …",
                    redirect_url(&config).map(|u| u.to_string()).unwrap_or_default()
                );
            })
            .await;
            report.map(|report| print!("{report}"))
        }
        AuthCommand::ImportPit { location } => {
            let text = read_secret("Private integration token (not shown): ")?;
            import_pit(&tokens, &location, text).await.map(|message| println!("{message}"))
        }
        AuthCommand::ImportOauth { location } => {
            let text = read_secret("Refresh token (not shown): ")?;
            import_oauth(&config, &tokens, &location, text).await.map(|message| println!("{message}"))
        }
        AuthCommand::Status => status_report(&config, &tokens).await.map(|report| print!("{report}")),
        AuthCommand::InitKey { output } => init_key(output.as_deref()),
        AuthCommand::Rekey { old_key_env, old_key_file } => {
            let old = match (old_key_env, old_key_file) {
                (Some(var), _) => {
                    std::env::var(&var).with_context(|| format!("environment variable {var} is not set"))?
                }
                (None, Some(file)) => std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
                    .trim()
                    .to_owned(),
                (None, None) => anyhow::bail!("give the old key with --old-key-env VAR or --old-key-file FILE"),
            };
            let old = crate::crypto::MasterKey::parse(&SecretString::from(old))?;
            let new = config
                .secrets
                .master_key
                .as_ref()
                .context("no new master key configured (store.master_key_env or store.master_key_file)")?;
            let new = crate::crypto::MasterKey::parse(new)?;
            rekey(&store, &old, &new).await.map(|n| println!("Re-encrypted {n} grant(s) with the new master key."))
        }
    };
    store.close().await;
    result
}

fn redirect_url(config: &Config) -> anyhow::Result<&Url> {
    config
        .settings
        .ghl
        .oauth
        .as_ref()
        .map(|o| &o.redirect_url)
        .context("`auth install` needs the app's credentials in [ghl.oauth] (client_id, client_secret)")
}

/// GHL's install (authorization) URL:
/// `install_url?response_type=code&redirect_uri=…&client_id=…&scope=…&state=…`.
pub fn install_url(install: &Url, client_id: &str, redirect: &Url, scopes: &[&str], state: &str) -> Url {
    let mut url = install.clone();
    // Spaces as %20, not `+`: the scope list is space-separated.
    let query = format!(
        "response_type=code&redirect_uri={}&client_id={}&scope={}&state={}",
        encode(redirect.as_str()),
        encode(client_id),
        encode(&scopes.join(" ")),
        encode(state)
    );
    url.set_query(Some(&query));
    url
}

/// The full install: URL → code (listener or `--code`) → token → grant(s) in the store.
pub async fn install(
    config: &Config,
    tokens: &TokenManager,
    options: InstallOptions,
    on_url: impl FnOnce(&Url),
) -> anyhow::Result<InstallReport> {
    let settings = config.settings.ghl.oauth.as_ref().context("`auth install` needs [ghl.oauth]")?;
    let oauth = tokens.oauth().context("`auth install` needs [ghl.oauth] with a client secret")?;
    let scopes = needed_scopes(options.write);
    let state = new_state()?;
    let url = install_url(&settings.install_url, &settings.client_id, &settings.redirect_url, &scopes, &state);
    on_url(&url);
    let code = match options.code {
        Some(code) => code,
        None => {
            let bind = callback_address(config).await?;
            wait_for_code(bind, settings.redirect_url.path(), options.timeout, &state).await?
        }
    };
    let answer = oauth
        .exchange_code(&SecretString::from(code.trim().to_owned()), settings.redirect_url.as_str(), None)
        .await
        .context("GHL refused the authorization code")?;
    let company_install = answer.user_type == Some(UserType::Company) || answer.location_id.is_none();
    let mut rows = Vec::new();
    if company_install {
        let company = answer.company_id.clone().context("GHL returned a company token without a companyId")?;
        let installed = oauth
            .installed_locations(&answer.access_token, &company)
            .await
            .context("Failed to list the agency's installed locations")?;
        rows = installed
            .into_iter()
            .map(|l| LocationRow { id: l.id, name: l.name, company_id: Some(company.clone()) })
            .collect();
    }
    let (resource_id, kind, generation) = tokens.store_install(&answer, &rows).await?;
    let locations =
        if kind == GrantKind::Company { rows.into_iter().map(|r| r.id).collect() } else { vec![resource_id.clone()] };
    let missing = missing_scopes(answer.scope.as_deref().unwrap_or(""), &scopes);
    tracing::info!(grant.resource = %resource_id, grant.kind = kind.as_str(), locations = locations.len(), "Stored a GHL grant");
    Ok(InstallReport { resource_id, kind, generation, locations, missing_scopes: missing })
}

/// Where to listen for the redirect: the redirect URL's own host:port when it is local,
/// else the daemon's `server.listen` (a reverse proxy forwards the public URL there).
async fn callback_address(config: &Config) -> anyhow::Result<SocketAddr> {
    let redirect = redirect_url(config)?;
    let host = redirect.host_str().context("ghl.oauth.redirect_url has no host")?;
    let port = redirect.port_or_known_default().context("ghl.oauth.redirect_url has no port")?;
    let local = host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !local {
        return Ok(config.settings.server.listen);
    }
    let host = if host.eq_ignore_ascii_case("localhost") { "127.0.0.1" } else { host.trim_matches(['[', ']']) };
    let addr = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("Cannot resolve {host}:{port}"))?
        .next()
        .with_context(|| format!("Cannot resolve {host}:{port}"))?;
    Ok(addr)
}

/// A fresh OAuth `state` (128 random bits, hex): the redirect must carry it back, so a
/// redirect forged by another site (CSRF) cannot slip its own code into this install.
pub fn new_state() -> anyhow::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

type CodeSender = Arc<Mutex<Option<oneshot::Sender<Result<String, String>>>>>;

#[derive(Clone)]
struct Callback {
    sender: CodeSender,
    state: Arc<str>,
}

/// Serves `path` on `bind` until one request brings `?code=…` (or `?error=…`) with the
/// expected `state`, or `timeout`. A redirect with another `state` is refused (400) and the
/// wait goes on; one without any is accepted with a warning (it cannot be checked).
pub async fn wait_for_code(bind: SocketAddr, path: &str, timeout: Duration, state: &str) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("Failed to listen on {bind} for the OAuth redirect (is the daemon running?)"))?;
    let (sender, receiver) = oneshot::channel();
    let callback_state = Callback { sender: Arc::new(Mutex::new(Some(sender))), state: state.into() };
    let path = if path.is_empty() { "/" } else { path };
    let app = axum::Router::new().route(path, get(callback)).with_state(callback_state);
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { stopped.cancelled().await }).await
    });
    let outcome = tokio::time::timeout(timeout, receiver).await;
    // Let the browser get its answer, then stop.
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.cancel();
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(error = %error, "The OAuth redirect listener failed"),
        Err(error) => tracing::warn!(error = %error, "The OAuth redirect listener task ended abnormally"),
    }
    match outcome {
        Err(_) => bail!("No redirect from GHL within {}", humantime::format_duration(timeout)),
        Ok(Err(_)) => bail!("The OAuth redirect listener stopped unexpectedly"),
        Ok(Ok(Err(error))) => bail!("GHL redirected with an error: {error}"),
        Ok(Ok(Ok(code))) => Ok(code),
    }
}

async fn callback(
    State(callback): State<Callback>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, &'static str) {
    match query.get("state") {
        Some(state) if state.as_str() == &*callback.state => {}
        Some(_) => {
            tracing::warn!("Refused an OAuth redirect whose state does not match this install (forged or stale)");
            return (StatusCode::BAD_REQUEST, "ghl-sync: this redirect does not belong to the running install\n");
        }
        None => tracing::warn!("GHL's redirect carried no state parameter; accepted, but it could not be checked"),
    }
    let sender = &callback.sender;
    let result = match (query.get("code"), query.get("error")) {
        (Some(code), _) if !code.trim().is_empty() => Ok(code.clone()),
        (_, Some(error)) => Err(error.chars().take(200).collect()),
        _ => return (StatusCode::BAD_REQUEST, "ghl-sync: the redirect carries no ?code=\n"),
    };
    let ok = result.is_ok();
    if let Some(sender) = sender.lock().unwrap_or_else(|e| e.into_inner()).take()
        && sender.send(result).is_err()
    {
        tracing::debug!("The install stopped waiting before the redirect arrived");
    }
    if ok {
        (StatusCode::OK, "ghl-sync: installation received. You can close this tab.\n")
    } else {
        (StatusCode::BAD_REQUEST, "ghl-sync: GHL reported an error; see the terminal.\n")
    }
}

/// A secret from stdin: on a terminal, one line typed or pasted without echo (`stty -echo`,
/// restored afterwards); otherwise everything piped in.
fn read_secret(prompt: &str) -> anyhow::Result<SecretString> {
    use std::io::IsTerminal as _;
    let stdin = std::io::stdin();
    let mut text = String::new();
    if stdin.is_terminal() {
        eprint!("{prompt}");
        let _echo = EchoOff::new();
        stdin.read_line(&mut text).context("Failed to read from the terminal")?;
        eprintln!();
    } else {
        stdin.lock().read_to_string(&mut text).context("Failed to read stdin")?;
    }
    Ok(SecretString::from(text))
}

/// Terminal echo off while it lives (through `stty`, which acts on the inherited stdin).
struct EchoOff {
    active: bool,
}

impl EchoOff {
    fn new() -> Self {
        let active = std::process::Command::new("stty").arg("-echo").status().is_ok_and(|s| s.success());
        if !active {
            eprintln!("(could not turn terminal echo off: pipe the token in instead, e.g. `< token.txt`)");
        }
        Self { active }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if self.active && !std::process::Command::new("stty").arg("echo").status().is_ok_and(|s| s.success()) {
            eprintln!("(could not turn terminal echo back on: run `stty echo`)");
        }
    }
}

/// `auth import-oauth`: refreshes the OAuth refresh token `text` once and stores the rotated
/// pair for `location`; returns what to tell the user (never a token).
pub async fn import_oauth(
    config: &Config,
    tokens: &TokenManager,
    location: &str,
    text: SecretString,
) -> anyhow::Result<String> {
    use secrecy::ExposeSecret;
    let location = location.trim();
    if location.is_empty() {
        bail!("--location must not be empty");
    }
    let token = text.expose_secret().trim();
    if token.is_empty() {
        bail!("No refresh token on stdin (pipe it in: `ghl-sync auth import-oauth --location ID < refresh-token.txt`)");
    }
    if token.contains(char::is_whitespace) {
        bail!("The refresh token on stdin contains whitespace; expected one token");
    }
    let grant = tokens
        .import_refresh_token(location, &SecretString::from(token.to_owned()))
        .await
        .context("The OAuth grant could not be imported")?;
    let mut message = format!(
        "Stored the OAuth grant of {} ({}, generation {}). GHL rotated the refresh token: the copy you pasted is \
         used up. Stop the integration it came from now: if it refreshes with its old token, GHL revokes the whole \
         grant.",
        grant.resource_id,
        grant.kind.as_str(),
        grant.generation
    );
    if grant.resource_id != location {
        message.push_str(&format!("\nNote: GHL says the token belongs to {}, not {location}.", grant.resource_id));
    }
    let write_back = config.settings.connectors.lusha.as_ref().is_some_and(|l| l.enabled);
    let missing = missing_scopes(grant.scope.as_deref().unwrap_or(""), &needed_scopes(write_back));
    if !missing.is_empty() {
        message.push_str(&format!(
            "\nWarning: the grant lacks scopes: {} (reinstall the app with them: `ghl-sync auth install`)",
            missing.join(" ")
        ));
    }
    Ok(message)
}

/// Stores a PIT read from stdin for `location`.
pub async fn import_pit(tokens: &TokenManager, location: &str, text: SecretString) -> anyhow::Result<String> {
    use secrecy::ExposeSecret;
    let location = location.trim();
    if location.is_empty() {
        bail!("--location must not be empty");
    }
    let token = text.expose_secret().trim();
    if token.is_empty() {
        bail!("No token on stdin (pipe it in: `ghl-sync auth import-pit --location ID < token.txt`)");
    }
    if token.contains(char::is_whitespace) {
        bail!("The token on stdin contains whitespace; expected one `pit-…` token");
    }
    let note = if token.starts_with("pit-") { "" } else { " (note: it does not start with `pit-`)" };
    let generation = tokens.import_pit(location, &SecretString::from(token.to_owned())).await?;
    let shadowed = if tokens.config_pit_locations().iter().any(|l| l == location) {
        "\nNote: the config also sets a token for this location; the config token is used."
    } else {
        ""
    };
    Ok(format!("Stored the private integration token for {location} (generation {generation}){note}.{shadowed}"))
}

fn iso(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn status_line(grant: &GrantStatus, needed: &[&str]) -> String {
    let mut line = format!("{:<9} {}", grant.kind.as_str(), grant.resource_id);
    if let Some(company) = grant.company_id.as_deref().filter(|c| *c != grant.resource_id) {
        line.push_str(&format!("  company={company}"));
    }
    if let Some(expires) = grant.expires_at {
        line.push_str(&format!("  expires={}", iso(expires)));
    }
    if let Some(scope) = &grant.scope {
        line.push_str(&format!("  scopes=\"{scope}\""));
        let missing = missing_scopes(scope, needed);
        if !missing.is_empty() {
            line.push_str(&format!("  missing=\"{}\"", missing.join(" ")));
        }
    }
    line.push_str(&format!("  generation={}", grant.generation));
    if grant.needs_reauth {
        line.push_str(&format!(
            "  NEEDS REAUTH: {} (run `ghl-sync auth install`)",
            grant.reauth_reason.as_deref().unwrap_or("no reason recorded")
        ));
    } else {
        line.push_str("  ok");
    }
    line
}

/// `auth status` text: one line per stored grant and per config PIT.
pub async fn status_report(config: &Config, tokens: &TokenManager) -> anyhow::Result<String> {
    let grants = tokens.grant_statuses().await?;
    let needed = needed_scopes(false);
    let mut out = String::new();
    for grant in &grants {
        out.push_str(&status_line(grant, &needed));
        out.push('\n');
    }
    for location in tokens.config_pit_locations() {
        out.push_str(&format!("{:<9} {location}  (from the config)  ok\n", "pit"));
    }
    let configured_oauth = config
        .settings
        .ghl
        .locations
        .iter()
        .filter(|l| l.auth == crate::config::LocationAuth::Oauth)
        .filter(|l| !grants.iter().any(|g| g.resource_id == l.id))
        .map(|l| l.id.as_str())
        .collect::<Vec<_>>();
    for location in configured_oauth {
        out.push_str(&format!(
            "{:<9} {location}  no grant of its own (served by an agency grant, or run `ghl-sync auth install`)\n",
            "-"
        ));
    }
    if out.is_empty() {
        out.push_str("No grants stored and no private integration tokens configured.\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_url_carries_the_least_scopes_space_separated() {
        let url = install_url(
            &Url::parse("https://marketplace.gohighlevel.com/v2/oauth/chooselocation").unwrap(),
            "66ab-lxyz",
            &Url::parse("http://127.0.0.1:8089/oauth/callback").unwrap(),
            &needed_scopes(false),
            "0123abcd",
        );
        let text = url.as_str();
        assert!(text.starts_with("https://marketplace.gohighlevel.com/v2/oauth/chooselocation?response_type=code&"));
        assert!(text.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A8089%2Foauth%2Fcallback"), "{text}");
        assert!(text.contains("client_id=66ab-lxyz"));
        assert!(text.contains("scope=contacts.readonly%20locations%2Ftasks.readonly%20"), "{text}");
        assert!(!text.contains("contacts.write"));
        let pairs: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs["scope"].split(' ').count(), 4);
        assert_eq!(pairs["state"], "0123abcd");
        let write = install_url(&url, "c", &Url::parse("http://127.0.0.1/cb").unwrap(), &needed_scopes(true), "s");
        assert!(write.as_str().contains("contacts.write"));
    }

    #[test]
    fn status_lines_show_expiry_scopes_and_reauth_but_no_token() {
        let grant = GrantStatus {
            resource_id: "loc1".into(),
            kind: GrantKind::Location,
            company_id: Some("co".into()),
            expires_at: Some(0),
            scope: Some("contacts.readonly".into()),
            generation: 3,
            needs_reauth: true,
            reauth_reason: Some("GHL refused the refresh token: used".into()),
        };
        let line = status_line(&grant, &needed_scopes(false));
        assert!(line.starts_with("location  loc1  company=co  expires=1970-01-01T00:00:00Z"), "{line}");
        assert!(line.contains("missing=\"locations/tasks.readonly"));
        assert!(line.contains("NEEDS REAUTH: GHL refused the refresh token: used"));
    }

    #[tokio::test]
    async fn the_callback_listener_returns_the_code_once() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let state = new_state().unwrap();
        assert_eq!(state.len(), 32);
        assert_ne!(state, new_state().unwrap());
        let expected = state.clone();
        let waiting =
            tokio::spawn(
                async move { wait_for_code(addr, "/oauth/callback", Duration::from_secs(10), &expected).await },
            );
        let http = reqwest::Client::builder().build().unwrap();
        let get = |query: String| {
            let http = http.clone();
            async move {
                for _ in 0..100 {
                    match http.get(format!("http://{addr}/oauth/callback?{query}")).send().await {
                        Ok(response) => return Some(response.status()),
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                None
            }
        };
        // A forged redirect (another state) is refused and the wait goes on.
        assert_eq!(get("code=forged&state=0000".into()).await, Some(reqwest::StatusCode::BAD_REQUEST));
        assert_eq!(get(format!("code=abc123&state={state}")).await, Some(reqwest::StatusCode::OK));
        assert_eq!(waiting.await.unwrap().unwrap(), "abc123");
    }

    #[tokio::test]
    async fn the_callback_listener_gives_up_after_the_timeout() {
        let error =
            wait_for_code("127.0.0.1:0".parse().unwrap(), "/cb", Duration::from_millis(50), "s").await.unwrap_err();
        assert!(error.to_string().contains("No redirect"), "{error}");
    }
}

#[cfg(test)]
mod init_key_tests {
    use std::os::unix::fs::PermissionsExt as _;

    use secrecy::{ExposeSecret, SecretString};

    use super::write_new_master_key;
    use crate::crypto::MasterKey;

    #[test]
    fn init_key_writes_a_0600_key_the_store_can_use_and_never_overwrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master_key");
        write_new_master_key(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        // The config resolves it like any master_key_file, and it seals and opens tokens.
        let config = crate::config::load_from_str(
            &format!("[store]\nmaster_key_file = \"{}\"\n", path.display()),
            crate::config::ConfigSource::InCode,
            Default::default(),
        )
        .unwrap();
        let key = MasterKey::parse(config.secrets.master_key.as_ref().unwrap()).unwrap();
        assert_eq!(key.open(&key.seal("refresh-token").unwrap()).unwrap().expose_secret(), "refresh-token");

        let error = write_new_master_key(&path).unwrap_err();
        assert!(error.to_string().contains("already exists; a master key is never overwritten"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "the first key is untouched");
        let other = dir.path().join("other");
        write_new_master_key(&other).unwrap();
        assert_ne!(std::fs::read_to_string(&other).unwrap(), text, "every key is fresh");
        assert!(MasterKey::parse(&SecretString::from(text)).is_ok());
    }
}

#[cfg(test)]
mod rekey_tests {
    use secrecy::{ExposeSecret, SecretString};

    use super::rekey;
    use crate::crypto::MasterKey;
    use crate::store::Store;
    use crate::store::grants::{self, GrantKind, NewGrant, Sealed};

    fn key(byte: &str) -> MasterKey {
        MasterKey::parse(&SecretString::from(byte.repeat(32))).unwrap()
    }

    #[tokio::test]
    async fn rekey_reseals_every_token_so_only_the_new_key_opens_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("t.db"), std::time::Duration::from_secs(1)).await.unwrap();
        let (old, new) = (key("ab"), key("cd"));
        let grant = NewGrant {
            resource_id: "loc".into(),
            kind: GrantKind::Location,
            company_id: None,
            access_token: Sealed(old.seal("access-1").unwrap()),
            refresh_token: Some(Sealed(old.seal("refresh-1").unwrap())),
            expires_at: None,
            scope: None,
        };
        grants::store_grant(&store, &grant, &[]).await.unwrap();
        let tokens = |store: Store| async move {
            let row = grants::load(&store, "loc").await.unwrap().unwrap();
            (row.access_token.unwrap().0, row.refresh_token.unwrap().0)
        };
        assert_eq!(rekey(&store, &old, &new).await.unwrap(), 1);
        let (access, refresh) = tokens(store.clone()).await;
        assert_eq!(new.open(&access).unwrap().expose_secret(), "access-1");
        assert_eq!(new.open(&refresh).unwrap().expose_secret(), "refresh-1");
        assert!(old.open(&access).is_err());
        // A wrong old key changes nothing.
        assert!(rekey(&store, &old, &new).await.is_err());
        let (still, _) = tokens(store.clone()).await;
        assert_eq!(new.open(&still).unwrap().expose_secret(), "access-1");
    }
}
