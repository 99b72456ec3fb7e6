//! `TokenManager`: bearer tokens for every location, from config PITs, imported PITs and
//! OAuth grants in the `grants` table (reference/ghl.md §3.5).
//!
//! - `bearer()` answers from an in-memory cache unless the token expires within
//!   `ghl.oauth.refresh_margin`, capped at half the token's lifetime (a token that lives less
//!   than twice the margin would otherwise be refreshed before every request).
//! - Refresh is **single-flight per grant, across replicas**: in this process a
//!   `tokio::sync::Mutex` per grant is held for the whole refresh; across processes sharing a
//!   PostgreSQL store, the grant's advisory lock ([`grants::lock_refresh`]) is taken once a
//!   refresh looks due, and the row is re-read under it: a newer generation another task or
//!   replica committed meanwhile is used as is, without a call to GHL. So no two processes
//!   ever spend the same refresh token. (SQLite has one daemon per file: the mutex suffices.)
//! - The rotated refresh token and the new access token are committed to the store in one
//!   transaction **before** the access token is handed out and before the advisory lock is
//!   released.
//! - A 401 (`invalidate`) forgets the refused token; the next `bearer` re-reads the row and
//!   uses a newer generation if another replica rotated the grant, refreshing (under the lock,
//!   after one more re-read) only if the row still holds the refused token.
//! - Timeouts and 5xx are retried promptly by the OAuth `ApiClient` with the *same* refresh
//!   token: GHL's 30 s grace answers a repeat with the same new pair.
//! - `invalid_grant`: the row is re-read; a newer generation is used if there is one. Else the
//!   grant and its locations are marked `needs_reauth` with the reason, an error line names the
//!   command that fixes it (`ghl-sync auth install`, logged once), and `AuthError::NeedsReauth`
//!   is returned. Other grants keep working.
//! - Agency grants: a location without a grant of its own whose `locations.company_id` has a
//!   company grant gets a location token minted via `/oauth/locationToken` whenever the last
//!   one expires (the simplest policy of §3.6). Minted tokens live in memory only; their
//!   refresh token is ignored, so there is one rotation chain per agency.
//!
//! # Crash between the token call and the commit
//!
//! GHL rotates the refresh token when it answers; we commit the new pair afterwards. If the
//! process dies (or the commit fails) in between, the store still holds the old refresh
//! token, which GHL now considers used:
//! - restarted (or retried) **within 30 s**, the refresh with the old token falls in GHL's
//!   grace window and returns the same new pair, which is then committed: nothing is lost;
//! - **later than 30 s**, GHL answers `invalid_grant`; the grant is marked `needs_reauth` and
//!   the customer must reinstall the app (`ghl-sync auth install`): GHL has no recovery
//!   endpoint (§3.4). This window is a few milliseconds per day per grant; `synchronous=FULL`
//!   makes the commit itself durable.
//!
//! The same applies to a refresh whose answer never arrives (timeout): the client retries at
//! once with the same token, inside the grace.
//!
//! With replicas, a replica killed in that window also ends its PostgreSQL session, which frees
//! the grant's advisory lock: the next replica to need the token re-reads the row (still the
//! old refresh token) and refreshes with it, inside the grace if it comes within 30 s. That is
//! the one case where a refresh token is presented twice; without a crash it never is.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::auth::{AuthError, StaticTokens, TokenProvider};
use super::oauth::{OAuthClient, OAuthError, TokenResponse, UserType};
use crate::config::Config;
use crate::crypto::MasterKey;
use crate::http::{ApiClient, HttpError, StatusCode};
use crate::store::Store;
use crate::store::grants::{self, GrantKind, GrantRow, Sealed};

/// Token expiry is wall-clock time: the one clock type of the crate.
pub use crate::clock::Clock;

/// How long a refresh waits for another replica's refresh of the same grant: longer than one
/// refresh with its retries (three attempts of at most 8 s, `OAuthClient::client_settings`).
const REFRESH_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Scopes the daemon needs to read (reference/ghl.md §3.8).
pub const READ_SCOPES: &[&str] =
    &["contacts.readonly", "locations/tasks.readonly", "locations/customFields.readonly", "locations.readonly"];
/// Added when a write-back connector is configured.
pub const WRITE_SCOPES: &[&str] = &["contacts.write"];

/// The least scopes for this deployment.
pub fn needed_scopes(write_back: bool) -> Vec<&'static str> {
    let mut scopes = READ_SCOPES.to_vec();
    if write_back {
        scopes.extend_from_slice(WRITE_SCOPES);
    }
    scopes
}

/// The scopes of `needed` that the space-separated `granted` string lacks, in order.
pub fn missing_scopes(granted: &str, needed: &[&str]) -> Vec<String> {
    let have: HashSet<&str> = granted.split_whitespace().collect();
    needed.iter().filter(|s| !have.contains(**s)).map(|s| (*s).to_owned()).collect()
}

/// Where a cached token came from.
#[derive(Debug, Clone)]
enum Source {
    /// An imported PIT: never refreshed.
    Pit,
    /// An OAuth grant row (location or company).
    Grant,
    /// Minted from a company grant.
    Minted,
}

#[derive(Clone)]
struct Cached {
    token: SecretString,
    /// Epoch ms; `None` never expires.
    expires_at: Option<i64>,
    /// Refreshed this long before `expires_at` (see [`refresh_margin_ms`]).
    margin_ms: i64,
    source: Source,
}

/// How long before `expires_at` a token issued at `issued_at` is refreshed: the configured
/// margin, but never more than half the token's lifetime.
fn refresh_margin_ms(configured_ms: i64, issued_at: i64, expires_at: i64) -> i64 {
    configured_ms.min(expires_at.saturating_sub(issued_at).max(0) / 2)
}

#[derive(Default)]
struct State {
    /// By location id (and company id for agency tokens).
    cache: HashMap<String, Cached>,
    /// One async mutex per grant (and per minted location): the single flight.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// SHA-256 of tokens GHL answered 401 to, by resource: never served again.
    rejected: HashMap<String, [u8; 32]>,
    /// Resources whose `needs_reauth` was already logged by this process.
    reauth_logged: HashSet<String>,
}

/// Per-grant status for `auth status` and the scope check; never holds a token.
#[derive(Debug, Clone)]
pub struct GrantStatus {
    pub resource_id: String,
    pub kind: GrantKind,
    pub company_id: Option<String>,
    pub expires_at: Option<i64>,
    pub scope: Option<String>,
    pub generation: i64,
    pub needs_reauth: bool,
    pub reauth_reason: Option<String>,
}

impl From<&GrantRow> for GrantStatus {
    fn from(row: &GrantRow) -> Self {
        Self {
            resource_id: row.resource_id.clone(),
            kind: row.kind,
            company_id: row.company_id.clone(),
            expires_at: row.expires_at,
            scope: row.scope.clone(),
            generation: row.generation,
            needs_reauth: row.needs_reauth,
            reauth_reason: row.reauth_reason.clone(),
        }
    }
}

/// What `import_refresh_token` stored (never a token).
#[derive(Debug, Clone)]
pub struct ImportedGrant {
    pub resource_id: String,
    pub kind: GrantKind,
    pub generation: i64,
    /// The scopes GHL reported with the refresh.
    pub scope: Option<String>,
}

/// Bearer tokens for every location; see the module docs.
pub struct TokenManager {
    store: Store,
    key: Option<MasterKey>,
    oauth: Option<OAuthClient>,
    pits: StaticTokens,
    margin_ms: i64,
    clock: Clock,
    reauth_command: String,
    state: Mutex<State>,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager").field("margin_ms", &self.margin_ms).finish_non_exhaustive()
    }
}

fn digest(token: &SecretString) -> [u8; 32] {
    Sha256::digest(token.expose_secret().as_bytes()).into()
}

fn db(error: crate::store::StoreError) -> AuthError {
    AuthError::Store(error.to_string())
}

impl TokenManager {
    /// `oauth` may be `None` when only PITs are used; `key` is needed for any stored grant.
    pub fn new(
        store: Store,
        key: Option<MasterKey>,
        oauth: Option<OAuthClient>,
        pits: StaticTokens,
        refresh_margin: Duration,
    ) -> Self {
        Self {
            store,
            key,
            oauth,
            pits,
            margin_ms: i64::try_from(refresh_margin.as_millis()).unwrap_or(i64::MAX),
            clock: Clock::system(),
            reauth_command: "ghl-sync auth install".to_owned(),
            state: Mutex::new(State::default()),
        }
    }

    /// Builds the manager from the loaded config: config PITs, the OAuth app of
    /// `[ghl.oauth]` (own `ApiClient`, no rate limits) and the master key.
    pub fn from_config(config: &Config, store: Store, cancel: CancellationToken) -> Result<Self, AuthError> {
        let key = config
            .secrets
            .master_key
            .as_ref()
            .map(MasterKey::parse)
            .transpose()
            .map_err(|e| AuthError::Config(e.to_string()))?;
        let oauth = oauth_client(config, cancel)?;
        let margin =
            config.settings.ghl.oauth.as_ref().map(|o| o.refresh_margin.get()).unwrap_or(Duration::from_secs(300));
        let pits = StaticTokens::new(config.secrets.pits.clone());
        let mut manager = Self::new(store, key, oauth, pits, margin);
        if let crate::config::ConfigSource::File(path) = &config.source {
            manager.reauth_command = format!("ghl-sync --config {} auth install", path.display());
        }
        Ok(manager)
    }

    /// Replaces the clock (tests advance it instead of sleeping).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The command logged when a grant needs re-authorisation.
    pub fn with_reauth_command(mut self, command: impl Into<String>) -> Self {
        self.reauth_command = command.into();
        self
    }

    pub fn oauth(&self) -> Option<&OAuthClient> {
        self.oauth.as_ref()
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.state().locks.entry(key.to_owned()).or_default().clone()
    }

    fn fresh(&self, entry: &Cached) -> bool {
        entry.expires_at.is_none_or(|at| at.saturating_sub(entry.margin_ms) > self.now())
    }

    /// Whether a token issued at `issued_at` and expiring at `expires_at` is still used as is.
    fn usable(&self, issued_at: i64, expires_at: Option<i64>) -> bool {
        expires_at.is_some_and(|at| at.saturating_sub(refresh_margin_ms(self.margin_ms, issued_at, at)) > self.now())
    }

    fn cached_fresh(&self, key: &str) -> Option<SecretString> {
        let state = self.state();
        let entry = state.cache.get(key)?;
        self.fresh(entry).then(|| entry.token.clone())
    }

    /// Caches `token`; `issued_at` (epoch ms) sizes its refresh margin.
    fn remember(&self, key: &str, token: &SecretString, issued_at: i64, expires_at: Option<i64>, source: Source) {
        let margin_ms = expires_at.map_or(0, |at| refresh_margin_ms(self.margin_ms, issued_at, at));
        self.state().cache.insert(key.to_owned(), Cached { token: token.clone(), expires_at, margin_ms, source });
    }

    fn key(&self) -> Result<&MasterKey, AuthError> {
        self.key.as_ref().ok_or_else(|| {
            AuthError::Config(
                "GHL tokens in the store are encrypted, but no master key is configured \
                 (set GHL_SYNC_MASTER_KEY, store.master_key_env or store.master_key_file)"
                    .to_owned(),
            )
        })
    }

    fn seal(&self, token: &SecretString) -> Result<Sealed, AuthError> {
        self.key()?.seal(token.expose_secret()).map(Sealed).map_err(|e| AuthError::Config(e.to_string()))
    }

    fn open(&self, sealed: Option<&Sealed>, resource: &str) -> Result<SecretString, AuthError> {
        let sealed = sealed.ok_or_else(|| AuthError::NeedsReauth {
            location: resource.to_owned(),
            reason: "the stored grant has no token".to_owned(),
        })?;
        self.key()?.open(&sealed.0).map_err(|e| AuthError::Config(e.to_string()))
    }

    /// Checks every stored grant can be decrypted: call at start-up so a missing or wrong
    /// master key stops the daemon with a clear message. Returns the grants' status.
    pub async fn check_grants(&self) -> Result<Vec<GrantStatus>, AuthError> {
        let rows = grants::list(&self.store).await.map_err(db)?;
        for row in &rows {
            self.open(row.access_token.as_ref(), &row.resource_id)?;
            if row.refresh_token.is_some() {
                self.open(row.refresh_token.as_ref(), &row.resource_id)?;
            }
        }
        if rows.iter().any(|r| r.kind != GrantKind::Pit) && self.oauth.is_none() {
            return Err(AuthError::Config(
                "the store holds OAuth grants but [ghl.oauth] is not configured, so they cannot be refreshed".into(),
            ));
        }
        Ok(rows.iter().map(GrantStatus::from).collect())
    }

    /// Per OAuth grant, the scopes of `needed` it lacks (only grants that lack some).
    pub async fn scope_report(&self, needed: &[&str]) -> Result<Vec<(String, Vec<String>)>, AuthError> {
        let rows = grants::list(&self.store).await.map_err(db)?;
        Ok(rows
            .iter()
            .filter(|r| r.kind != GrantKind::Pit)
            .filter_map(|r| {
                let missing = missing_scopes(r.scope.as_deref().unwrap_or(""), needed);
                (!missing.is_empty()).then(|| (r.resource_id.clone(), missing))
            })
            .collect())
    }

    /// Stores a private integration token for `location` (sealed), replacing any grant.
    pub async fn import_pit(&self, location: &str, token: &SecretString) -> Result<i64, AuthError> {
        let grant = grants::NewGrant {
            resource_id: location.to_owned(),
            kind: GrantKind::Pit,
            company_id: None,
            access_token: self.seal(token)?,
            refresh_token: None,
            expires_at: None,
            scope: None,
        };
        let row = grants::LocationRow { id: location.to_owned(), name: None, company_id: None };
        let generation = grants::store_grant(&self.store, &grant, &[row]).await.map_err(db)?;
        self.forget(location);
        Ok(generation)
    }

    /// Stores the grant a token response describes (install), with its location rows.
    pub async fn store_install(
        &self,
        token: &TokenResponse,
        locations: &[grants::LocationRow],
    ) -> Result<(String, GrantKind, i64), AuthError> {
        let company = token.company_id.clone();
        let (resource, kind) = match (token.user_type, &token.location_id) {
            (Some(UserType::Company), _) | (None, None) => {
                let company = company
                    .clone()
                    .ok_or_else(|| AuthError::Config("GHL returned a company token without a companyId".to_owned()))?;
                (company, GrantKind::Company)
            }
            (_, Some(location)) => (location.clone(), GrantKind::Location),
            (Some(UserType::Location), None) => {
                return Err(AuthError::Config("GHL returned a location token without a locationId".to_owned()));
            }
        };
        let refresh = token.refresh_token.as_ref().ok_or_else(|| {
            AuthError::Config("GHL returned no refresh token; the grant could not be kept".to_owned())
        })?;
        let grant = grants::NewGrant {
            resource_id: resource.clone(),
            kind,
            company_id: company.clone(),
            access_token: self.seal(&token.access_token)?,
            refresh_token: Some(self.seal(refresh)?),
            expires_at: Some(token.expires_at(self.now())),
            scope: token.scope.clone(),
        };
        let mut rows = locations.to_vec();
        if kind == GrantKind::Location {
            rows.push(grants::LocationRow { id: resource.clone(), name: None, company_id: company });
        }
        let generation = grants::store_grant(&self.store, &grant, &rows).await.map_err(db)?;
        self.forget(&resource);
        Ok((resource, kind, generation))
    }

    /// Takes over an OAuth grant another integration holds: refreshes `refresh_token` once to
    /// prove it (GHL rotates it, so the caller's copy is used up) and stores the new pair for
    /// `location`, sealed, like an install. The master key and `[ghl.oauth]` are checked first,
    /// so a missing one never burns the token. A token GHL reports for another location is
    /// stored for that one (the caller says so); the rotated pair is never dropped.
    pub async fn import_refresh_token(
        &self,
        location: &str,
        refresh_token: &SecretString,
    ) -> Result<ImportedGrant, AuthError> {
        self.key()?;
        let oauth = self.oauth.as_ref().ok_or_else(|| {
            AuthError::Config(
                "importing an OAuth grant needs [ghl.oauth] with the client id and secret of the app that issued it"
                    .to_owned(),
            )
        })?;
        let lock = self.lock_for(location);
        let _flight = lock.lock().await;
        let mut answer = match oauth.refresh(refresh_token, UserType::Location).await {
            Ok(answer) => answer,
            Err(OAuthError::InvalidGrant { message, .. }) => {
                return Err(AuthError::Config(format!(
                    "GHL refused the refresh token: {message} (already used, revoked, or issued to another app)"
                )));
            }
            Err(OAuthError::Rejected { status, message, .. }) => {
                return Err(AuthError::Config(format!("GHL refused the token refresh ({status}): {message}")));
            }
            Err(OAuthError::Http(error)) => return Err(AuthError::Http(error)),
        };
        if answer.user_type != Some(UserType::Company) && answer.location_id.is_none() {
            answer.location_id = Some(location.to_owned());
            answer.user_type = Some(UserType::Location);
        }
        let (resource_id, kind, generation) = self.store_install(&answer, &[]).await?;
        tracing::info!(grant.resource = %resource_id, grant.kind = kind.as_str(), "Imported an OAuth grant");
        Ok(ImportedGrant { resource_id, kind, generation, scope: answer.scope.clone() })
    }

    fn forget(&self, key: &str) {
        let mut state = self.state();
        state.cache.remove(key);
        state.rejected.remove(key);
        state.reauth_logged.remove(key);
    }

    /// The token of a grant row's resource: cached, read from the row, or refreshed.
    /// Single-flight: the grant's mutex is held throughout, and a refresh also holds the
    /// grant's cross-replica lock ([`grants::lock_refresh`]) from the re-read of the row to
    /// the commit of the rotated pair.
    async fn grant_token(&self, resource: &str) -> Result<SecretString, AuthError> {
        let lock = self.lock_for(resource);
        let _flight = lock.lock().await;
        // Another task may have refreshed while we waited.
        if let Some(token) = self.cached_fresh(resource) {
            return Ok(token);
        }
        if let Some(token) = self.stored_token(&self.load_grant(resource).await?)? {
            return Ok(token);
        }
        // A refresh is due. Another replica may be refreshing this grant right now, or may
        // have rotated it since we read the row: take the grant's cross-replica lock and read
        // the row again under it, so only one process ever spends a given refresh token.
        let replicas = grants::lock_refresh(&self.store, resource, REFRESH_LOCK_WAIT).await.map_err(db)?;
        let outcome = async {
            let row = self.load_grant(resource).await?;
            match self.stored_token(&row)? {
                Some(token) => {
                    tracing::debug!(
                        grant.resource = resource,
                        generation = row.generation,
                        "The GHL token of `{resource}` was rotated by another process; using it"
                    );
                    Ok(token)
                }
                None => self.refresh(row).await,
            }
        }
        .await;
        replicas.release().await;
        outcome
    }

    /// The grant row of `resource`; `NoGrant` if there is none.
    async fn load_grant(&self, resource: &str) -> Result<GrantRow, AuthError> {
        grants::load(&self.store, resource)
            .await
            .map_err(db)?
            .ok_or_else(|| AuthError::NoGrant { location: resource.to_owned() })
    }

    /// The token `row` holds if it can be used as is (remembered in the cache), `None` when it
    /// needs a refresh (due, or refused by GHL with a 401), the parked error for a parked grant.
    fn stored_token(&self, row: &GrantRow) -> Result<Option<SecretString>, AuthError> {
        let resource = row.resource_id.as_str();
        if row.needs_reauth {
            return Err(self.parked(row, row.reauth_reason.as_deref().unwrap_or("re-authorisation required")));
        }
        let access = self.open(row.access_token.as_ref(), resource)?;
        if row.kind == GrantKind::Pit {
            self.remember(resource, &access, row.updated_at, None, Source::Pit);
            return Ok(Some(access));
        }
        let rejected = self.state().rejected.get(resource).is_some_and(|d| *d == digest(&access));
        // The row was written when the token was issued (install or rotation).
        if self.usable(row.updated_at, row.expires_at) && !rejected {
            self.remember(resource, &access, row.updated_at, row.expires_at, Source::Grant);
            return Ok(Some(access));
        }
        Ok(None)
    }

    /// Refreshes `row` and commits before returning; the caller holds the grant's mutex and
    /// its cross-replica lock, so the `invalid_grant` re-read below is under both too.
    async fn refresh(&self, row: GrantRow) -> Result<SecretString, AuthError> {
        let resource = row.resource_id.as_str();
        let oauth = self.oauth.as_ref().ok_or_else(|| {
            AuthError::Config(format!("grant {resource} needs a refresh but [ghl.oauth] is not configured"))
        })?;
        let refresh_token = self.open(row.refresh_token.as_ref(), resource)?;
        let user_type = if row.kind == GrantKind::Company { UserType::Company } else { UserType::Location };
        tracing::debug!(
            grant.resource = resource,
            grant.kind = row.kind.as_str(),
            generation = row.generation,
            "Refreshing the GHL access token of `{resource}`"
        );
        match oauth.refresh(&refresh_token, user_type).await {
            Ok(answer) => {
                let issued_at = self.now();
                let expires_at = answer.expires_at(issued_at);
                let access = self.seal(&answer.access_token)?;
                let rotated = answer.refresh_token.as_ref().map(|t| self.seal(t)).transpose()?;
                let committed = grants::rotate(
                    &self.store,
                    resource,
                    row.generation,
                    &access,
                    rotated.as_ref(),
                    expires_at,
                    answer.scope.as_deref(),
                )
                .await
                .map_err(db)?;
                if committed.is_none() {
                    // The row moved on under us (a re-install): its token wins.
                    return self.use_newer(resource, row.generation).await?.ok_or_else(|| {
                        AuthError::Store(format!("grant {resource} changed during a refresh and vanished"))
                    });
                }
                self.state().rejected.remove(resource);
                self.remember(resource, &answer.access_token, issued_at, Some(expires_at), Source::Grant);
                tracing::info!(
                    grant.resource = resource,
                    grant.kind = row.kind.as_str(),
                    expires_in_s = answer.expires_in.unwrap_or_default(),
                    "Refreshed the GHL access token of `{resource}`"
                );
                Ok(answer.access_token)
            }
            Err(OAuthError::InvalidGrant { message, .. }) => {
                if let Some(token) = self.use_newer(resource, row.generation).await? {
                    return Ok(token);
                }
                let reason = format!("GHL refused the refresh token: {message}");
                let parked = grants::mark_needs_reauth(&self.store, &row, &reason).await.map_err(db)?;
                if !parked && let Some(token) = self.use_newer(resource, row.generation).await? {
                    return Ok(token);
                }
                Err(self.parked(&row, &reason))
            }
            Err(OAuthError::Rejected { status, message, .. }) => {
                Err(AuthError::Config(format!("GHL refused the token refresh of {resource} ({status}): {message}")))
            }
            Err(OAuthError::Http(error)) => Err(AuthError::Http(error)),
        }
    }

    /// A token from a row newer than `generation`, if one was stored meanwhile.
    async fn use_newer(&self, resource: &str, generation: i64) -> Result<Option<SecretString>, AuthError> {
        let Some(row) = grants::load(&self.store, resource).await.map_err(db)? else {
            return Ok(None);
        };
        if row.generation <= generation || row.needs_reauth {
            return Ok(None);
        }
        let access = self.open(row.access_token.as_ref(), resource)?;
        self.remember(resource, &access, row.updated_at, row.expires_at, Source::Grant);
        Ok(Some(access))
    }

    /// The error for a parked grant; logs the fix once per process.
    fn parked(&self, row: &GrantRow, reason: &str) -> AuthError {
        let first = self.state().reauth_logged.insert(row.resource_id.clone());
        if first {
            let command = &self.reauth_command;
            tracing::error!(
                grant.resource = %row.resource_id,
                grant.kind = row.kind.as_str(),
                reason,
                "GHL grant `{}` needs re-authorisation; its locations are stopped until someone runs `{command}`",
                row.resource_id
            );
        }
        AuthError::NeedsReauth { location: row.resource_id.clone(), reason: reason.to_owned() }
    }

    /// A location token minted from the agency grant of `company` (single-flight per location).
    async fn minted_token(&self, location: &str, company: &str) -> Result<SecretString, AuthError> {
        let lock = self.lock_for(&format!("mint:{location}"));
        let _flight = lock.lock().await;
        if let Some(token) = self.cached_fresh(location) {
            return Ok(token);
        }
        let oauth = self.oauth.as_ref().ok_or_else(|| {
            AuthError::Config(format!("location {location} uses an agency grant but [ghl.oauth] is not configured"))
        })?;
        let relabel = |error: AuthError| match error {
            AuthError::NeedsReauth { reason, .. } => AuthError::NeedsReauth { location: location.to_owned(), reason },
            other => other,
        };
        let mut retried = false;
        loop {
            let company_token = self.grant_token(company).await.map_err(relabel)?;
            match oauth.location_token(&company_token, company, location).await {
                Ok(answer) => {
                    let issued_at = self.now();
                    let expires_at = answer.expires_at(issued_at);
                    self.remember(location, &answer.access_token, issued_at, Some(expires_at), Source::Minted);
                    tracing::info!(
                        location.id = location,
                        company.id = company,
                        "Minted a GHL location token for `{location}` from the agency grant"
                    );
                    return Ok(answer.access_token);
                }
                Err(OAuthError::Http(HttpError::Status { status: StatusCode::UNAUTHORIZED, .. }))
                | Err(OAuthError::Rejected { status: StatusCode::UNAUTHORIZED, .. })
                    if !retried =>
                {
                    // The agency token was refused: refresh it once and try again.
                    retried = true;
                    self.reject(company, &company_token);
                }
                Err(OAuthError::Http(error)) => return Err(AuthError::Http(error)),
                Err(error) => {
                    return Err(AuthError::Config(format!("minting a token for location {location} failed: {error}")));
                }
            }
        }
    }

    /// Forgets `token` for `key` and remembers it was refused, unless a newer one is cached.
    fn reject(&self, key: &str, token: &SecretString) {
        let mut state = self.state();
        let current = state.cache.get(key).is_some_and(|c| c.token.expose_secret() == token.expose_secret());
        if current || !state.cache.contains_key(key) {
            state.cache.remove(key);
            state.rejected.insert(key.to_owned(), digest(token));
        }
    }

    /// Status of every stored grant (never a token).
    pub async fn grant_statuses(&self) -> Result<Vec<GrantStatus>, AuthError> {
        let rows = grants::list(&self.store).await.map_err(db)?;
        Ok(rows.iter().map(GrantStatus::from).collect())
    }

    /// Locations served by a config PIT.
    pub fn config_pit_locations(&self) -> Vec<String> {
        self.pits.locations().map(str::to_owned).collect()
    }
}

/// The OAuth client of `[ghl.oauth]`, if configured.
pub fn oauth_client(config: &Config, cancel: CancellationToken) -> Result<Option<OAuthClient>, AuthError> {
    let Some(settings) = &config.settings.ghl.oauth else {
        return Ok(None);
    };
    let secret = config
        .secrets
        .oauth_client_secret
        .clone()
        .ok_or_else(|| AuthError::Config("ghl.oauth.client_secret is not set".to_owned()))?;
    let api = ApiClient::new(OAuthClient::client_settings(config.settings.limits.connect_timeout.get()), None, cancel)
        .map_err(AuthError::Http)?;
    Ok(Some(OAuthClient::new(
        api,
        config.settings.ghl.base_url.clone(),
        config.settings.ghl.api_version.clone(),
        settings.client_id.clone(),
        secret,
    )))
}

#[async_trait::async_trait]
impl TokenProvider for TokenManager {
    async fn bearer(&self, location: &str) -> Result<SecretString, AuthError> {
        if let Ok(token) = self.pits.bearer(location).await {
            return Ok(token);
        }
        if let Some(token) = self.cached_fresh(location) {
            return Ok(token);
        }
        match grants::load(&self.store, location).await.map_err(db)? {
            Some(row) if row.kind != GrantKind::Company => self.grant_token(location).await,
            _ => {
                let company = grants::company_of_location(&self.store, location).await.map_err(db)?;
                let Some(company) = company else {
                    return Err(AuthError::NoGrant { location: location.to_owned() });
                };
                match grants::load(&self.store, &company).await.map_err(db)? {
                    Some(row) if row.kind == GrantKind::Company => self.minted_token(location, &company).await,
                    _ => Err(AuthError::NoGrant { location: location.to_owned() }),
                }
            }
        }
    }

    async fn invalidate(&self, location: &str, rejected: &SecretString) -> bool {
        if self.pits.contains(location) {
            return false;
        }
        let source = self.state().cache.get(location).map(|c| c.source.clone());
        let source = match source {
            Some(source) => source,
            None => match grants::load(&self.store, location).await {
                Ok(Some(row)) if row.kind == GrantKind::Pit => Source::Pit,
                Ok(Some(_)) => Source::Grant,
                Ok(None) => Source::Minted,
                Err(error) => {
                    tracing::warn!(location.id = location, error = %error, "Could not read the grant after a 401");
                    return false;
                }
            },
        };
        match source {
            // A refused PIT cannot be refreshed: stop and alert.
            Source::Pit => false,
            Source::Grant | Source::Minted => {
                self.reject(location, rejected);
                tracing::debug!(location.id = location, "GHL refused a cached token; it will be refreshed once");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_scopes_lists_what_the_grant_lacks_in_order() {
        let granted = "contacts.readonly locations.readonly  locations/tasks.readonly";
        assert_eq!(
            missing_scopes(granted, &needed_scopes(true)),
            vec!["locations/customFields.readonly".to_owned(), "contacts.write".to_owned()]
        );
        assert!(missing_scopes(&READ_SCOPES.join(" "), READ_SCOPES).is_empty());
        assert_eq!(missing_scopes("", &["a"]), vec!["a".to_owned()]);
    }

    async fn manager(key: Option<MasterKey>) -> (tempfile::TempDir, TokenManager) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("t.db"), Duration::from_secs(5)).await.unwrap();
        let pits = StaticTokens::new([("cfg".to_owned(), crate::ghl::secret("pit-config"))].into());
        (dir, TokenManager::new(store, key, None, pits, Duration::from_secs(60)))
    }

    fn key() -> MasterKey {
        MasterKey::parse(&crate::ghl::secret(&"ab".repeat(32))).unwrap()
    }

    #[tokio::test]
    async fn config_and_imported_pits_are_served_and_never_refreshed() {
        let (_dir, tokens) = manager(Some(key())).await;
        tokens.import_pit("imp", &crate::ghl::secret("pit-imported")).await.unwrap();
        assert_eq!(tokens.bearer("cfg").await.unwrap().expose_secret(), "pit-config");
        assert_eq!(tokens.bearer("imp").await.unwrap().expose_secret(), "pit-imported");
        assert!(!tokens.invalidate("cfg", &crate::ghl::secret("pit-config")).await);
        assert!(!tokens.invalidate("imp", &crate::ghl::secret("pit-imported")).await);
        assert!(matches!(tokens.bearer("other").await, Err(AuthError::NoGrant { .. })));
        let row = crate::store::grants::load(&tokens.store, "imp").await.unwrap().unwrap();
        let stored = row.access_token.unwrap().0;
        assert!(!stored.windows(12).any(|w| w == b"pit-imported"));
    }

    #[test]
    fn the_refresh_margin_is_capped_at_half_the_token_lifetime() {
        let five_minutes = 300_000;
        assert_eq!(refresh_margin_ms(five_minutes, 0, 86_400_000), five_minutes, "a day-long token: the margin");
        assert_eq!(refresh_margin_ms(five_minutes, 1_000, 121_000), 60_000, "a 2-minute token: half of it");
        assert_eq!(refresh_margin_ms(five_minutes, 5_000, 5_000), 0);
        assert_eq!(refresh_margin_ms(five_minutes, 9_000, 5_000), 0, "a clock step back never widens it");
    }

    #[tokio::test]
    async fn a_token_shorter_than_the_margin_is_used_for_half_its_life_not_refreshed_before_every_request() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("t.db"), Duration::from_secs(5)).await.unwrap();
        let skew = Arc::new(AtomicI64::new(0));
        let clock = skew.clone();
        // A 5-minute margin and no OAuth client: any refresh attempt fails loudly.
        let tokens = TokenManager::new(store, Some(key()), None, StaticTokens::default(), Duration::from_secs(300))
            .with_clock(Clock::from_fn(move || crate::store::now_ms() + clock.load(Ordering::SeqCst)));
        let answer: TokenResponse = serde_json::from_value(serde_json::json!({
            "access_token": "access-1", "refresh_token": "refresh-1", "expires_in": 120,
            "userType": "Location", "locationId": "loc", "companyId": "co"
        }))
        .unwrap();
        tokens.store_install(&answer, &[]).await.unwrap();
        for seconds in [0, 10, 55] {
            skew.store(seconds * 1000, Ordering::SeqCst);
            assert_eq!(tokens.bearer("loc").await.unwrap().expose_secret(), "access-1", "at {seconds} s");
        }
        skew.store(65_000, Ordering::SeqCst);
        let error = tokens.bearer("loc").await.unwrap_err();
        assert!(matches!(error, AuthError::Config(ref m) if m.contains("needs a refresh")), "{error}");
    }

    #[tokio::test]
    async fn stored_grants_without_a_master_key_are_a_clear_config_error() {
        let (_dir, tokens) = manager(Some(key())).await;
        tokens.import_pit("imp", &crate::ghl::secret("pit-imported")).await.unwrap();
        let keyless = TokenManager::new(tokens.store.clone(), None, None, StaticTokens::default(), Duration::ZERO);
        let error = keyless.check_grants().await.unwrap_err();
        assert!(matches!(error, AuthError::Config(ref m) if m.contains("master key")), "{error}");
        let wrong = MasterKey::parse(&crate::ghl::secret(&"cd".repeat(32))).unwrap();
        let wrong = TokenManager::new(tokens.store.clone(), Some(wrong), None, StaticTokens::default(), Duration::ZERO);
        assert!(matches!(wrong.bearer("imp").await, Err(AuthError::Config(_))));
        assert_eq!(tokens.check_grants().await.unwrap().len(), 1);
    }
}
