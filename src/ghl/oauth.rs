//! GHL's OAuth endpoints (reference/ghl.md §3): the token endpoint (authorization code and
//! refresh grants), agency → location tokens and the agency's installed locations.
//!
//! These calls go through their own [`ApiClient`] with no rate-limit bucket (the token
//! endpoint is not metered per location) and redirects off (as every `ApiClient`).
//! The v2 token response is snake_case except `userType`; v3's camelCase names are accepted
//! as aliases so a later version switch cannot silently drop a token.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

use crate::http::{
    ApiClient, ApiRequest, ClientSettings, HeaderScheme, HttpError, Method, Priority, RetryPolicy, StatusCode,
};

use super::dto::ErrorBody;

/// Who a token acts for (`user_type` in requests, `userType` in answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserType {
    Location,
    Company,
}

impl UserType {
    pub fn as_str(self) -> &'static str {
        match self {
            UserType::Location => "Location",
            UserType::Company => "Company",
        }
    }
}

/// A failed OAuth call.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The code or refresh token is dead (used, revoked, expired): refreshing again with the
    /// same token cannot help; the install must be redone (unless a newer token was stored).
    #[error("GHL refused the grant ({status}): {message}")]
    InvalidGrant { status: StatusCode, message: String },
    /// Another 4xx (bad client credentials, missing fields, inactive location).
    #[error("GHL {route} answered {status}: {message}")]
    Rejected { route: &'static str, status: StatusCode, message: String },
    #[error(transparent)]
    Http(HttpError),
}

impl OAuthError {
    pub fn is_retryable(&self) -> bool {
        match self {
            OAuthError::InvalidGrant { .. } | OAuthError::Rejected { .. } => false,
            OAuthError::Http(error) => error.is_retryable(),
        }
    }

    /// Classifies a failed token-endpoint answer. `refresh` marks a refresh-token grant, where
    /// GHL's (undocumented) answer for a dead token is a 400 or 401 (ghl.md §3.4).
    fn from_http(error: HttpError, refresh: bool) -> Self {
        let HttpError::Status { route, status, body, .. } = &error else {
            return OAuthError::Http(error);
        };
        let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
        let oauth_error = serde_json::from_slice::<OAuthErrorBody>(body).ok();
        let message = oauth_error
            .as_ref()
            .and_then(|e| e.error_description.clone())
            .or_else(|| parsed.message.as_ref().map(|m| m.joined()))
            .or_else(|| parsed.error.clone())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        // Messages name the problem, not the token; keep them short anyway.
        let message: String = message.chars().take(200).collect();
        let invalid_grant = oauth_error.as_ref().and_then(|e| e.error.as_deref()) == Some("invalid_grant");
        // A refused *client* (wrong secret) is a config error, not a dead grant: don't park
        // every location over a typo.
        let client_refused = message.to_ascii_lowercase().contains("client");
        let dead_token =
            refresh && !client_refused && (*status == StatusCode::BAD_REQUEST || *status == StatusCode::UNAUTHORIZED);
        if invalid_grant || dead_token {
            OAuthError::InvalidGrant { status: *status, message }
        } else if status.is_client_error() && *status != StatusCode::TOO_MANY_REQUESTS {
            OAuthError::Rejected { route, status: *status, message }
        } else {
            OAuthError::Http(error)
        }
    }
}

#[derive(Debug, Deserialize, Default)]
struct OAuthErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// `POST /oauth/token` (and `/oauth/locationToken`) answer, §3.3. Tokens are secrets; any
/// field GHL adds lands in `extra`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    #[serde(alias = "accessToken")]
    pub access_token: SecretString,
    #[serde(default, alias = "tokenType")]
    pub token_type: Option<String>,
    /// Seconds.
    #[serde(default, alias = "expiresIn")]
    pub expires_in: Option<u64>,
    /// Absent on some `/oauth/locationToken` answers (v2 schema).
    #[serde(default, alias = "refreshToken")]
    pub refresh_token: Option<SecretString>,
    #[serde(default)]
    pub scope: Option<String>,
    /// camelCase in v2, unlike its neighbours.
    #[serde(default, rename = "userType", alias = "user_type")]
    pub user_type: Option<UserType>,
    #[serde(default, rename = "locationId", alias = "location_id")]
    pub location_id: Option<String>,
    #[serde(default, rename = "companyId", alias = "company_id")]
    pub company_id: Option<String>,
    #[serde(default, rename = "userId", alias = "user_id")]
    pub user_id: Option<String>,
    #[serde(default, rename = "approvedLocations")]
    pub approved_locations: Option<Vec<String>>,
    #[serde(default, rename = "isBulkInstallation")]
    pub is_bulk_installation: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TokenResponse {
    /// Epoch ms when the access token expires, from `expires_in` counted from `now_ms`.
    /// Without `expires_in`, assume GHL's documented day minus a minute.
    pub fn expires_at(&self, now_ms: i64) -> i64 {
        let secs = self.expires_in.unwrap_or(86_340);
        now_ms.saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
    }
}

/// One `GET /oauth/installedLocations` item.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledLocation {
    #[serde(rename = "_id", alias = "id")]
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub is_installed: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstalledLocations {
    #[serde(default)]
    locations: Vec<InstalledLocation>,
    #[serde(default)]
    count: Option<u64>,
}

/// The marketplace app's OAuth client.
#[derive(Clone)]
pub struct OAuthClient {
    api: ApiClient,
    base: Url,
    version: String,
    client_id: String,
    client_secret: SecretString,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("base", &self.base.as_str())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct TokenForm<'a> {
    client_id: &'a str,
    client_secret: &'a str,
    grant_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redirect_uri: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LocationTokenForm<'a> {
    company_id: &'a str,
    location_id: &'a str,
}

impl OAuthClient {
    /// Settings for the OAuth `ApiClient`: short per-attempt timeout and quick retries so
    /// that every retry of a refresh lands inside GHL's 30 s grace window (§3.4).
    pub fn client_settings(connect_timeout: Duration) -> ClientSettings {
        ClientSettings {
            service: "ghl-oauth",
            connect_timeout,
            request_timeout: Duration::from_secs(8),
            retry: RetryPolicy {
                max_retries: 2,
                base_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(2),
            },
            headers: HeaderScheme::None,
            user_agent: format!("ghl-sync/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// `api` must have no rate limits; `base` is the GHL API base URL.
    pub fn new(api: ApiClient, base: Url, version: String, client_id: String, client_secret: SecretString) -> Self {
        Self { api, base, version, client_id, client_secret }
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The marketplace app id: GHL client ids are `<appId>-<suffix>` [R].
    pub fn app_id(&self) -> &str {
        self.client_id.split('-').next().unwrap_or(&self.client_id)
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}{}", self.base.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        url
    }

    /// `POST /oauth/token`, `grant_type=authorization_code`: the one-time install exchange.
    /// Never retried after an ambiguous failure: a code works once.
    pub async fn exchange_code(
        &self,
        code: &SecretString,
        redirect_uri: &str,
        user_type: Option<UserType>,
    ) -> Result<TokenResponse, OAuthError> {
        let form = TokenForm {
            client_id: &self.client_id,
            client_secret: self.client_secret.expose_secret(),
            grant_type: "authorization_code",
            code: Some(code.expose_secret()),
            refresh_token: None,
            user_type: user_type.map(UserType::as_str),
            redirect_uri: Some(redirect_uri),
        };
        let request = ApiRequest::new(Method::POST, self.url("/oauth/token"), "/oauth/token")
            .priority(Priority::Webhook)
            .idempotent(false)
            .header("accept", "application/json")
            .form(&form)
            .map_err(OAuthError::Http)?;
        let response = self.api.send(request).await.map_err(|e| OAuthError::from_http(e, false))?;
        response.json().map_err(OAuthError::Http)
    }

    /// `POST /oauth/token`, `grant_type=refresh_token`. Marked idempotent: repeating it with
    /// the same refresh token inside GHL's 30 s grace returns the same new pair, so the
    /// client retries timeouts and 5xx promptly (§3.5 step 5).
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
        user_type: UserType,
    ) -> Result<TokenResponse, OAuthError> {
        let form = TokenForm {
            client_id: &self.client_id,
            client_secret: self.client_secret.expose_secret(),
            grant_type: "refresh_token",
            code: None,
            refresh_token: Some(refresh_token.expose_secret()),
            user_type: Some(user_type.as_str()),
            redirect_uri: None,
        };
        let request = ApiRequest::new(Method::POST, self.url("/oauth/token"), "/oauth/token")
            .priority(Priority::Webhook)
            .idempotent(true)
            .header("accept", "application/json")
            .form(&form)
            .map_err(OAuthError::Http)?;
        let response = self.api.send(request).await.map_err(|e| OAuthError::from_http(e, true))?;
        response.json().map_err(OAuthError::Http)
    }

    /// `POST /oauth/locationToken`: a location token minted from the agency (company) token.
    pub async fn location_token(
        &self,
        company_token: &SecretString,
        company_id: &str,
        location_id: &str,
    ) -> Result<TokenResponse, OAuthError> {
        let form = LocationTokenForm { company_id, location_id };
        let request = ApiRequest::new(Method::POST, self.url("/oauth/locationToken"), "/oauth/locationToken")
            .priority(Priority::Webhook)
            // Minting twice only wastes a token.
            .idempotent(true)
            .header("version", &self.version)
            .header("accept", "application/json")
            .bearer(company_token)
            .form(&form)
            .map_err(OAuthError::Http)?;
        let response = self.api.send(request).await.map_err(|e| OAuthError::from_http(e, false))?;
        response.json().map_err(OAuthError::Http)
    }

    /// `GET /oauth/installedLocations`: every location the agency installed the app on
    /// (all pages).
    pub async fn installed_locations(
        &self,
        company_token: &SecretString,
        company_id: &str,
    ) -> Result<Vec<InstalledLocation>, OAuthError> {
        const PAGE: usize = 100;
        let mut all: Vec<InstalledLocation> = Vec::new();
        loop {
            let mut url = self.url("/oauth/installedLocations");
            url.query_pairs_mut()
                .append_pair("companyId", company_id)
                .append_pair("appId", self.app_id())
                .append_pair("isInstalled", "true")
                .append_pair("skip", &all.len().to_string())
                .append_pair("limit", &PAGE.to_string());
            let request = ApiRequest::new(Method::GET, url, "/oauth/installedLocations")
                .priority(Priority::Webhook)
                .header("version", &self.version)
                .header("accept", "application/json")
                .bearer(company_token);
            let response = self.api.send(request).await.map_err(|e| OAuthError::from_http(e, false))?;
            let page: InstalledLocations = response.json().map_err(OAuthError::Http)?;
            let got = page.locations.len();
            all.extend(page.locations.into_iter().filter(|l| l.is_installed != Some(false)));
            let total = page.count.and_then(|c| usize::try_from(c).ok());
            if got < PAGE || total.is_some_and(|t| all.len() >= t) || got == 0 {
                return Ok(all);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn status(code: u16, body: &str) -> HttpError {
        HttpError::Status {
            service: "ghl-oauth",
            route: "/oauth/token",
            status: StatusCode::from_u16(code).unwrap(),
            body: Bytes::from(body.to_owned()),
            retry_after: None,
        }
    }

    #[test]
    fn token_responses_keep_camel_case_user_type_and_unknown_fields() {
        let body = r#"{"access_token":"at-1","token_type":"Bearer","expires_in":86399,"refresh_token":"rt-1",
            "scope":"contacts.readonly","userType":"Location","locationId":"loc1","companyId":"co1",
            "userId":"u1","planId":"p","brandNew":1}"#;
        let token: TokenResponse = serde_json::from_str(body).unwrap();
        assert_eq!(token.access_token.expose_secret(), "at-1");
        assert_eq!(token.refresh_token.as_ref().unwrap().expose_secret(), "rt-1");
        assert_eq!(token.user_type, Some(UserType::Location));
        assert_eq!(token.location_id.as_deref(), Some("loc1"));
        assert_eq!(token.company_id.as_deref(), Some("co1"));
        assert_eq!(token.extra.get("brandNew"), Some(&serde_json::json!(1)));
        assert!(token.extra.get("planId").is_some());
        assert_eq!(token.expires_at(1_000), 1_000 + 86_399_000);
        // Debug never shows a token.
        let debug = format!("{token:?}");
        assert!(!debug.contains("at-1") && !debug.contains("rt-1"), "{debug}");
    }

    #[test]
    fn v3_camel_case_token_names_are_accepted() {
        let token: TokenResponse =
            serde_json::from_str(r#"{"accessToken":"a","refreshToken":"r","expiresIn":5,"userType":"Company"}"#)
                .unwrap();
        assert_eq!(token.refresh_token.unwrap().expose_secret(), "r");
        assert_eq!(token.expires_in, Some(5));
        assert!(token.extra.is_empty());
    }

    #[test]
    fn invalid_grant_and_dead_refresh_tokens_are_a_distinct_error() {
        let oauth =
            status(400, r#"{"error":"invalid_grant","error_description":"Refresh token has already been used"}"#);
        assert!(matches!(
            OAuthError::from_http(oauth, false),
            OAuthError::InvalidGrant { ref message, .. } if message == "Refresh token has already been used"
        ));
        let ghl_401 = status(401, r#"{"statusCode":401,"message":"Invalid token","error":"Unauthorized"}"#);
        assert!(matches!(OAuthError::from_http(ghl_401, true), OAuthError::InvalidGrant { .. }));
        // Refused client credentials are a config problem, even on a refresh.
        let creds = status(401, r#"{"statusCode":401,"message":"Invalid client credentials"}"#);
        assert!(matches!(OAuthError::from_http(creds, true), OAuthError::Rejected { .. }));
        let unprocessable = status(422, r#"{"statusCode":422,"message":["refresh_token should not be empty"]}"#);
        let error = OAuthError::from_http(unprocessable, true);
        assert!(matches!(error, OAuthError::Rejected { .. }), "{error:?}");
        let unavailable = OAuthError::from_http(status(503, "{}"), true);
        assert!(matches!(unavailable, OAuthError::Http(_)) && unavailable.is_retryable());
    }

    #[test]
    fn token_forms_are_flat_and_skip_absent_fields() {
        let form = TokenForm {
            client_id: "cid",
            client_secret: "sec",
            grant_type: "refresh_token",
            code: None,
            refresh_token: Some("rt"),
            user_type: Some("Location"),
            redirect_uri: None,
        };
        let request = ApiRequest::new(Method::POST, Url::parse("http://127.0.0.1/oauth/token").unwrap(), "/t")
            .form(&form)
            .unwrap();
        let Some(crate::http::Body::Form(text)) = request.body else { panic!("form body expected") };
        assert_eq!(
            text,
            "client_id=cid&client_secret=sec&grant_type=refresh_token&refresh_token=rt&user_type=Location"
        );
    }

    #[tokio::test]
    async fn the_app_id_is_the_client_id_prefix() {
        let api = ApiClient::new(
            OAuthClient::client_settings(Duration::from_secs(1)),
            None,
            tokio_util::sync::CancellationToken::new(),
        )
        .unwrap();
        let base = Url::parse("http://127.0.0.1:9/").unwrap();
        let client = OAuthClient::new(api, base, "2021-07-28".into(), "66ab12-lxyz".into(), crate::ghl::secret("s"));
        assert_eq!(client.app_id(), "66ab12");
        assert_eq!(client.url("/oauth/token").as_str(), "http://127.0.0.1:9/oauth/token");
    }
}
