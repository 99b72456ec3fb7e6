//! Where GHL bearer tokens come from: the seam between the GHL client and the token manager.

use std::collections::BTreeMap;

use secrecy::SecretString;

use crate::http::HttpError;

/// Why no token could be had for a location.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("location {location} has no credentials (add a private integration token or run `ghl-sync auth install`)")]
    NoGrant { location: String },
    #[error("location {location} needs re-authorisation: {reason}")]
    NeedsReauth { location: String, reason: String },
    #[error("token refresh failed: {0}")]
    Http(#[from] HttpError),
    #[error("token store failed: {0}")]
    Store(String),
    /// A setup problem no retry fixes (missing or wrong master key, no OAuth app configured,
    /// client credentials refused).
    #[error("GHL credentials are misconfigured: {0}")]
    Config(String),
}

impl AuthError {
    pub fn is_retryable(&self) -> bool {
        match self {
            AuthError::Http(error) => error.is_retryable(),
            AuthError::Store(_) => true,
            AuthError::NoGrant { .. } | AuthError::NeedsReauth { .. } | AuthError::Config(_) => false,
        }
    }
}

/// Hands out bearer tokens per location.
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync {
    /// A token valid for `location` now (refreshing first if it is about to expire).
    async fn bearer(&self, location: &str) -> Result<SecretString, AuthError>;

    /// GHL answered 401 to `rejected`: forget it so the next `bearer()` refreshes once.
    /// Returns false when refreshing cannot help (a static token), so the caller stops.
    async fn invalidate(&self, location: &str, rejected: &SecretString) -> bool;
}

/// Private integration tokens from the config: static, never refreshed.
#[derive(Debug, Clone, Default)]
pub struct StaticTokens {
    tokens: BTreeMap<String, SecretString>,
}

impl StaticTokens {
    pub fn new(tokens: BTreeMap<String, SecretString>) -> Self {
        Self { tokens }
    }

    /// Whether `location` has a token here.
    pub fn contains(&self, location: &str) -> bool {
        self.tokens.contains_key(location)
    }

    /// The locations with a token.
    pub fn locations(&self) -> impl Iterator<Item = &str> {
        self.tokens.keys().map(String::as_str)
    }
}

#[async_trait::async_trait]
impl TokenProvider for StaticTokens {
    async fn bearer(&self, location: &str) -> Result<SecretString, AuthError> {
        self.tokens.get(location).cloned().ok_or_else(|| AuthError::NoGrant { location: location.to_owned() })
    }

    async fn invalidate(&self, _location: &str, _rejected: &SecretString) -> bool {
        // A rejected PIT cannot be refreshed: stop and alert.
        false
    }
}
