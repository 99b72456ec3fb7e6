//! Typed GHL endpoints over the rate-limited `ApiClient`, plus the token seam.

pub mod auth;
pub mod dto;
pub mod oauth;
pub mod tokens;
pub mod write;

use std::sync::Arc;

use secrecy::SecretString;
use serde::de::DeserializeOwned;
use url::Url;

use crate::http::{ApiClient, ApiRequest, ApiResponse, HttpError, Method, Priority, StatusCode};
pub use auth::{AuthError, StaticTokens, TokenProvider};
use dto::{Contact, ContactEnvelope, ErrorBody, NoteList, SearchRequest, SearchResponse, TaskList, TaskSearchRequest};
pub use oauth::{OAuthClient, OAuthError, TokenResponse, UserType};
use serde_json::Value;
pub use tokens::{TokenManager, missing_scopes, needed_scopes};

/// A failed GHL call.
#[derive(Debug, thiserror::Error)]
pub enum GhlError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("GHL rejected the credentials of location {location} ({route}) even after a refresh")]
    Unauthorized { location: String, route: &'static str },
    /// GHL refused the call because the token lacks the route's scope (a 401 "The token is
    /// not authorized for this scope.", reference/ghl.md §3.8): refreshing cannot fix it, and
    /// it says nothing about the location's other calls.
    #[error("GHL {route}: the token is not authorized for this route's scope")]
    MissingScope { route: &'static str },
    #[error("GHL {route} answered {status}: {message}")]
    Api { route: &'static str, status: StatusCode, message: String, retryable: bool },
    #[error(transparent)]
    Http(HttpError),
}

impl GhlError {
    pub fn is_retryable(&self) -> bool {
        match self {
            GhlError::Auth(error) => error.is_retryable(),
            GhlError::Unauthorized { .. } | GhlError::MissingScope { .. } => false,
            GhlError::Api { retryable, .. } => *retryable,
            GhlError::Http(error) => error.is_retryable(),
        }
    }

    /// The location can't be used until someone re-authorises it. A missing scope counts:
    /// only callers with a fallback (the location-wide task search) catch it first.
    pub fn needs_reauth(&self) -> bool {
        matches!(
            self,
            GhlError::Unauthorized { .. }
                | GhlError::MissingScope { .. }
                | GhlError::Auth(AuthError::NeedsReauth { .. } | AuthError::NoGrant { .. })
        )
    }

    /// GHL says the resource does not exist: 404, or a 400 "not found" as GHL sometimes answers.
    pub fn is_not_found(&self) -> bool {
        match self {
            GhlError::Api { status, message, .. } => {
                *status == StatusCode::NOT_FOUND
                    || (*status == StatusCode::BAD_REQUEST && message.to_ascii_lowercase().contains("not found"))
            }
            _ => false,
        }
    }

    /// GHL refused this one request for good (a 4xx other than auth, scope, not found and rate
    /// limits): retrying the same request cannot help, so the record is set aside.
    pub fn is_refusal(&self) -> bool {
        match self {
            GhlError::Api { status, retryable, .. } => {
                status.is_client_error()
                    && !*retryable
                    && !matches!(status.as_u16(), 401 | 403 | 404 | 408 | 429)
                    && !self.is_not_found()
            }
            _ => false,
        }
    }

    pub fn status(&self) -> Option<StatusCode> {
        match self {
            GhlError::Api { status, .. } => Some(*status),
            GhlError::Http(error) => error.status(),
            GhlError::MissingScope { .. } => Some(StatusCode::UNAUTHORIZED),
            _ => None,
        }
    }
}

impl From<HttpError> for GhlError {
    /// Turns a non-2xx answer into GHL's own message. 4xx messages name fields, not values,
    /// so they are safe to log (e.g. `property gender should not exist`).
    fn from(error: HttpError) -> Self {
        match &error {
            HttpError::Status { route, status, body, .. } => {
                let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
                let message = match (parsed.message, parsed.error) {
                    (Some(message), _) => message.joined(),
                    (None, Some(error)) => error,
                    (None, None) => status.canonical_reason().unwrap_or("error").to_owned(),
                };
                // Truncate: the message is for operators, and long ones may echo input.
                let message: String = message.chars().take(200).collect();
                GhlError::Api { route, status: *status, message, retryable: error.is_retryable() }
            }
            _ => GhlError::Http(error),
        }
    }
}

/// The GHL API for every configured location.
#[derive(Clone)]
pub struct GhlClient {
    api: ApiClient,
    base: Url,
    version: String,
    tokens: Arc<dyn TokenProvider>,
}

impl std::fmt::Debug for GhlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GhlClient").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

impl GhlClient {
    pub fn new(api: ApiClient, base: Url, version: String, tokens: Arc<dyn TokenProvider>) -> Self {
        Self { api, base, version, tokens }
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    pub fn tokens(&self) -> &Arc<dyn TokenProvider> {
        &self.tokens
    }

    /// GHL 429 answers received for `location` since this client was built (monotonic; a
    /// run diffs it to report its own in `store::runs::RunProgress::rate_limited`).
    pub fn rate_limited_total(&self, location: &str) -> u64 {
        self.api.limits().map_or(0, |limits| limits.rate_limited_total(location))
    }

    /// `base` joined with an absolute API path, keeping any path prefix of the base URL.
    pub fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}{}", self.base.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        url
    }

    /// Sends a request for `location` with its bearer token and the `Version` header; on a
    /// 401 the token is invalidated and the request replayed once with a fresh token.
    pub async fn send(
        &self,
        location: &str,
        build: impl Fn() -> Result<ApiRequest, HttpError>,
    ) -> Result<ApiResponse, GhlError> {
        let mut refreshed = false;
        loop {
            let token = self.tokens.bearer(location).await?;
            let request =
                build()?.bucket(location).header("version", &self.version).header("accept", "application/json");
            let route = request.route;
            match self.api.send(request.bearer(&token)).await {
                Err(HttpError::Status { status: StatusCode::UNAUTHORIZED, body, .. }) if is_scope_refusal(&body) => {
                    return Err(GhlError::MissingScope { route });
                }
                Err(HttpError::Status { status: StatusCode::UNAUTHORIZED, .. }) if !refreshed => {
                    refreshed = true;
                    if !self.tokens.invalidate(location, &token).await {
                        return Err(GhlError::Unauthorized { location: location.to_owned(), route });
                    }
                }
                Err(HttpError::Status { status: StatusCode::UNAUTHORIZED, .. }) => {
                    return Err(GhlError::Unauthorized { location: location.to_owned(), route });
                }
                Err(error) => return Err(error.into()),
                Ok(response) => return Ok(response),
            }
        }
    }

    /// Like [`GhlClient::send`], then parses the body.
    pub async fn call<T: DeserializeOwned>(
        &self,
        location: &str,
        build: impl Fn() -> Result<ApiRequest, HttpError>,
    ) -> Result<T, GhlError> {
        let response = self.send(location, build).await?;
        response.json::<T>().map_err(GhlError::Http)
    }

    /// `POST /contacts/search`: one page.
    pub async fn search_contacts(
        &self,
        request: &SearchRequest,
        priority: Priority,
    ) -> Result<SearchResponse, GhlError> {
        let url = self.url("/contacts/search");
        self.call(&request.location_id, || {
            ApiRequest::new(Method::POST, url.clone(), "/contacts/search")
                .priority(priority)
                .idempotent(true)
                .json(request)
        })
        .await
    }

    /// `GET /contacts/:contactId`; `None` when GHL says it does not exist (404, or 400
    /// "not found" as GHL sometimes answers).
    pub async fn get_contact(&self, location: &str, id: &str, priority: Priority) -> Result<Option<Contact>, GhlError> {
        let url = self.url(&format!("/contacts/{}", encode(id)));
        let result: Result<ContactEnvelope, GhlError> = self
            .call(location, || Ok(ApiRequest::new(Method::GET, url.clone(), "/contacts/:contactId").priority(priority)))
            .await;
        match result {
            Ok(envelope) => Ok(Some(envelope.contact)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `GET /contacts/:contactId/tasks` (unpaginated).
    pub async fn list_tasks(
        &self,
        location: &str,
        contact_id: &str,
        priority: Priority,
    ) -> Result<Vec<Value>, GhlError> {
        let url = self.url(&format!("/contacts/{}/tasks", encode(contact_id)));
        let list: TaskList = self
            .call(location, || {
                Ok(ApiRequest::new(Method::GET, url.clone(), "/contacts/:contactId/tasks").priority(priority))
            })
            .await?;
        Ok(list.tasks)
    }

    /// `GET /contacts/:contactId/notes` (unpaginated).
    pub async fn list_notes(
        &self,
        location: &str,
        contact_id: &str,
        priority: Priority,
    ) -> Result<Vec<Value>, GhlError> {
        let url = self.url(&format!("/contacts/{}/notes", encode(contact_id)));
        let list: NoteList = self
            .call(location, || {
                Ok(ApiRequest::new(Method::GET, url.clone(), "/contacts/:contactId/notes").priority(priority))
            })
            .await?;
        Ok(list.notes)
    }

    /// `POST /locations/:locationId/tasks/search`: one page of the location's tasks (items
    /// raw, as [`TaskList`]: one malformed item is set aside, not the page). A token without
    /// `locations/tasks.readonly` gives [`GhlError::MissingScope`].
    pub async fn search_location_tasks(
        &self,
        location: &str,
        request: &TaskSearchRequest,
        priority: Priority,
    ) -> Result<Vec<Value>, GhlError> {
        let url = self.url(&format!("/locations/{}/tasks/search", encode(location)));
        let list: TaskList = self
            .call(location, || {
                ApiRequest::new(Method::POST, url.clone(), "/locations/:locationId/tasks/search")
                    .priority(priority)
                    .idempotent(true)
                    .json(request)
            })
            .await?;
        Ok(list.tasks)
    }
}

/// Whether a 401 body is GHL's "The token is not authorized for this scope." (a missing scope,
/// not a bad token).
fn is_scope_refusal(body: &[u8]) -> bool {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    parsed.message.is_some_and(|m| m.joined().to_ascii_lowercase().contains("not authorized for this scope"))
}

/// Percent-encodes an id for use as one path segment.
pub fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect::<String>().replace('+', "%20")
}

/// A bearer token for tests and the sandbox.
pub fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}
