//! `ApiClient`: the only way the daemon talks to the outside. One pooled `reqwest` client
//! per service with timeouts, keyed rate limits, classified retries and metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::limits::{LimitObservation, Priority, RateLimits};
use super::{HttpError, LimitScope, TransportKind};

/// How a service reports its rate limits in response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderScheme {
    /// GHL's `X-RateLimit-*` headers.
    Ghl,
    /// Lusha's `x-{minute,hourly,daily}-requests-left` family.
    Lusha,
    /// Nothing to read (customer webhooks).
    None,
}

/// Retry behaviour for retryable failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_retries: 6, base_backoff: Duration::from_millis(250), max_backoff: Duration::from_secs(60) }
    }
}

impl RetryPolicy {
    /// Exponential backoff with full jitter: a random wait in `[0, min(max, base·2^attempt)]`,
    /// never below 10% of the cap so a storm still spreads out.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.base_backoff.saturating_mul(1u32 << attempt.min(16)).min(self.max_backoff);
        let floor = cap / 10;
        floor + cap.saturating_sub(floor).mul_f64(fastrand::f64())
    }
}

/// Settings to build one client.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub service: &'static str,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    pub headers: HeaderScheme,
    pub user_agent: String,
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    Json(Bytes),
    Form(String),
}

/// One outbound request. `route` is the template (`/contacts/:contactId`) used in logs and
/// metrics; the URL with real ids is never logged.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    pub url: Url,
    pub route: &'static str,
    pub bucket: Option<String>,
    pub priority: Priority,
    pub headers: HeaderMap,
    pub body: Option<Body>,
    /// Whether sending twice is harmless. POST creates are not: after an ambiguous failure
    /// the caller decides, using its idempotency key.
    pub idempotent: bool,
    pub timeout: Option<Duration>,
}

impl ApiRequest {
    pub fn new(method: Method, url: Url, route: &'static str) -> Self {
        let idempotent = method != Method::POST && method != Method::PATCH;
        Self {
            method,
            url,
            route,
            bucket: None,
            priority: Priority::Poll,
            headers: HeaderMap::new(),
            body: None,
            idempotent,
            timeout: None,
        }
    }

    /// The rate-limit bucket (location, company or API key id).
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = Some(bucket.into());
        self
    }

    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds a header; invalid names or values are skipped (they are ours, not user input).
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.insert(HeaderName::from_static(name), value);
        }
        self
    }

    /// Adds a secret header, marked sensitive so it is never printed.
    pub fn secret_header(mut self, name: &'static str, value: &SecretString) -> Self {
        if let Ok(mut value) = HeaderValue::from_str(value.expose_secret()) {
            value.set_sensitive(true);
            self.headers.insert(HeaderName::from_static(name), value);
        }
        self
    }

    pub fn bearer(self, token: &SecretString) -> Self {
        let value = SecretString::from(format!("Bearer {}", token.expose_secret()));
        self.secret_header("authorization", &value)
    }

    pub fn json<T: Serialize + ?Sized>(mut self, body: &T) -> Result<Self, HttpError> {
        let bytes = serde_json::to_vec(body)
            .map_err(|e| HttpError::Invalid { service: "request", detail: format!("body does not serialize: {e}") })?;
        self.body = Some(Body::Json(Bytes::from(bytes)));
        Ok(self)
    }

    pub fn form<T: Serialize + ?Sized>(mut self, body: &T) -> Result<Self, HttpError> {
        let text = serde_urlencoded_string(body)?;
        self.body = Some(Body::Form(text));
        Ok(self)
    }
}

fn serde_urlencoded_string<T: Serialize + ?Sized>(body: &T) -> Result<String, HttpError> {
    // Form bodies are flat string maps: go through JSON to an object of scalars.
    let value = serde_json::to_value(body)
        .map_err(|e| HttpError::Invalid { service: "request", detail: format!("form does not serialize: {e}") })?;
    let serde_json::Value::Object(map) = value else {
        return Err(HttpError::Invalid { service: "request", detail: "form body must be an object".into() });
    };
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in map {
        match value {
            serde_json::Value::Null => {}
            serde_json::Value::String(text) => {
                form.append_pair(&key, &text);
            }
            other => {
                form.append_pair(&key, &other.to_string());
            }
        }
    }
    Ok(form.finish())
}

/// A 2xx answer.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub route: &'static str,
    pub service: &'static str,
}

impl ApiResponse {
    /// Parses the body; the error names the route, never the body (it may hold personal data).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Decode {
            service: self.service,
            route: self.route,
            detail: format!("{} at line {} column {}", classify_serde(&e), e.line(), e.column()),
        })
    }
}

fn classify_serde(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "unexpected shape",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

/// The client of one outbound service.
#[derive(Clone)]
pub struct ApiClient {
    service: &'static str,
    http: reqwest::Client,
    limits: Option<Arc<RateLimits>>,
    retry: RetryPolicy,
    scheme: HeaderScheme,
    request_timeout: Duration,
    cancel: CancellationToken,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient").field("service", &self.service).finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Builds the client. `cancel` aborts retry sleeps at shutdown.
    pub fn new(
        settings: ClientSettings,
        limits: Option<Arc<RateLimits>>,
        cancel: CancellationToken,
    ) -> Result<Self, HttpError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .user_agent(settings.user_agent.clone())
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| HttpError::Invalid {
                service: settings.service,
                detail: format!("cannot build HTTP client: {e}"),
            })?;
        Ok(Self {
            service: settings.service,
            http,
            limits,
            retry: settings.retry,
            scheme: settings.headers,
            request_timeout: settings.request_timeout,
            cancel,
        })
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    pub fn limits(&self) -> Option<&Arc<RateLimits>> {
        self.limits.as_ref()
    }

    /// Sends with rate limiting and retries. Returns 2xx answers; everything else is an error.
    pub async fn send(&self, request: ApiRequest) -> Result<ApiResponse, HttpError> {
        let mut attempt = 0u32;
        loop {
            let result = self.send_once(&request).await;
            let error = match result {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            let retry_in = match &error {
                // Daily limits park; they are not retried here.
                HttpError::RateLimited { scope: LimitScope::Daily | LimitScope::Hourly, .. }
                | HttpError::BudgetExhausted { .. } => None,
                HttpError::RateLimited { retry_after, .. } => {
                    Some(retry_after.unwrap_or_else(|| self.retry.backoff(attempt)))
                }
                // A POST that may have reached the server is not blindly repeated.
                HttpError::Timeout { .. } | HttpError::Transport { kind: TransportKind::Ambiguous, .. }
                    if !request.idempotent =>
                {
                    None
                }
                other if other.is_retryable() => {
                    Some(other.retry_after().unwrap_or_default().max(self.retry.backoff(attempt)))
                }
                _ => None,
            };
            let Some(wait) = retry_in.filter(|_| attempt < self.retry.max_retries) else {
                return Err(error);
            };
            attempt += 1;
            metrics::counter!("ghl_sync_http_retries_total", "service" => self.service, "route" => request.route)
                .increment(1);
            tracing::debug!(
                service = self.service,
                route = request.route,
                attempt,
                retry_in_ms = wait.as_millis() as u64,
                error = %error,
                "Retrying {} {}", self.service, request.route
            );
            tokio::select! {
                _ = self.cancel.cancelled() => {
                    return Err(HttpError::Cancelled { service: self.service, route: request.route });
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn send_once(&self, request: &ApiRequest) -> Result<ApiResponse, HttpError> {
        let service = self.service;
        let route = request.route;
        if let (Some(limits), Some(bucket)) = (&self.limits, &request.bucket) {
            let acquired = tokio::select! {
                _ = self.cancel.cancelled() => return Err(HttpError::Cancelled { service, route }),
                acquired = limits.acquire(bucket, request.priority) => acquired,
            };
            if let Err(scope) = acquired {
                return Err(HttpError::BudgetExhausted { service, route, scope });
            }
        }
        let mut builder =
            self.http.request(request.method.clone(), request.url.clone()).headers(request.headers.clone());
        if let Some(timeout) = request.timeout {
            builder = builder.timeout(timeout);
        }
        builder = match &request.body {
            Some(Body::Json(bytes)) => builder.header("content-type", "application/json").body(bytes.clone()),
            Some(Body::Form(text)) => {
                builder.header("content-type", "application/x-www-form-urlencoded").body(text.clone())
            }
            None => builder,
        };
        let started = Instant::now();
        let sent = builder.send().await;
        let elapsed = started.elapsed();
        metrics::histogram!("ghl_sync_http_request_duration_seconds", "service" => service, "route" => route)
            .record(elapsed.as_secs_f64());
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                let status_label = if error.is_timeout() { "timeout" } else { "error" };
                metrics::counter!("ghl_sync_http_requests_total", "service" => service, "route" => route, "status" => status_label)
                    .increment(1);
                return Err(self.transport_error(route, &error, request.timeout.unwrap_or(self.request_timeout)));
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        metrics::counter!("ghl_sync_http_requests_total", "service" => service, "route" => route, "status" => status.as_u16().to_string())
            .increment(1);
        let observation = self.observe(&headers);
        if let (Some(limits), Some(bucket)) = (&self.limits, &request.bucket) {
            limits.observe(bucket, observation);
            if let Some(left) = observation.daily_remaining {
                metrics::gauge!("ghl_sync_rate_limit_daily_remaining", "service" => service).set(left as f64);
            }
            if let Some(left) = observation.remaining {
                metrics::gauge!("ghl_sync_rate_limit_remaining", "service" => service).set(left as f64);
            }
        }
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => return Err(self.transport_error(route, &error, self.request_timeout)),
        };
        if status.is_success() {
            return Ok(ApiResponse { status, headers, body, route, service });
        }
        let retry_after = parse_retry_after(&headers);
        if status == StatusCode::TOO_MANY_REQUESTS {
            metrics::counter!("ghl_sync_http_429_total", "service" => service, "route" => route).increment(1);
            let scope = self.limit_scope(&headers, &body, observation);
            let wait = retry_after.or(observation.interval);
            if let (Some(limits), Some(bucket)) = (&self.limits, &request.bucket) {
                limits.note_rate_limited(bucket);
                match scope {
                    LimitScope::Daily => limits.exhaust_daily(bucket),
                    LimitScope::Burst | LimitScope::Hourly => {
                        limits.pause(bucket, wait.unwrap_or(limits.quota().window));
                    }
                }
            }
            tracing::warn!(service, route, scope = ?scope, "{service} rate-limited us on {route}");
            return Err(HttpError::RateLimited { service, route, scope, retry_after: wait });
        }
        Err(HttpError::Status { service, route, status, body, retry_after })
    }

    fn transport_error(&self, route: &'static str, error: &reqwest::Error, timeout: Duration) -> HttpError {
        if error.is_timeout() {
            HttpError::Timeout { service: self.service, route, timeout }
        } else if error.is_connect() {
            HttpError::Transport { service: self.service, route, kind: connect_failure(error) }
        } else if error.is_request() || error.is_body() || error.is_decode() {
            HttpError::Transport { service: self.service, route, kind: TransportKind::Ambiguous }
        } else {
            HttpError::Transport { service: self.service, route, kind: TransportKind::Other }
        }
    }

    fn observe(&self, headers: &HeaderMap) -> LimitObservation {
        match self.scheme {
            HeaderScheme::Ghl => LimitObservation {
                remaining: header_u64(headers, "x-ratelimit-remaining"),
                max: header_u64(headers, "x-ratelimit-max"),
                interval: header_u64(headers, "x-ratelimit-interval-milliseconds").map(Duration::from_millis),
                daily_remaining: header_u64(headers, "x-ratelimit-daily-remaining"),
                daily_limit: header_u64(headers, "x-ratelimit-limit-daily"),
            },
            HeaderScheme::Lusha => LimitObservation {
                remaining: header_u64(headers, "x-minute-requests-left"),
                max: header_u64(headers, "x-rate-limit-minute"),
                interval: Some(Duration::from_secs(60)),
                daily_remaining: header_u64(headers, "x-daily-requests-left")
                    .or_else(|| header_u64(headers, "x-ratelimit-remaining-daily")),
                daily_limit: header_u64(headers, "x-rate-limit-daily"),
            },
            HeaderScheme::None => LimitObservation::default(),
        }
    }

    fn limit_scope(&self, headers: &HeaderMap, body: &[u8], seen: LimitObservation) -> LimitScope {
        if seen.daily_remaining == Some(0) {
            return LimitScope::Daily;
        }
        if self.scheme == HeaderScheme::Lusha {
            if header_u64(headers, "x-hourly-requests-left") == Some(0) {
                return LimitScope::Hourly;
            }
            let text = String::from_utf8_lossy(body).to_ascii_lowercase();
            if text.contains("daily") {
                return LimitScope::Daily;
            }
            if text.contains("hour") {
                return LimitScope::Hourly;
            }
        }
        LimitScope::Burst
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok().filter(|v| *v >= 0.0).map(|v| v as u64)
}

/// `Retry-After` in seconds (the HTTP-date form is not used by our APIs).
fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers.get("retry-after")?.to_str().ok()?.trim().parse::<f64>().ok()?;
    (0.0..86_400.0).contains(&seconds).then(|| Duration::from_secs_f64(seconds))
}

/// Why a connection could not be made, from the error's source chain: an I/O refusal, a DNS
/// failure or a TLS failure (rustls and hyper name them in their messages); else `Connect`.
/// Only the kind is kept, never the (URL-bearing) messages.
fn connect_failure(error: &reqwest::Error) -> TransportKind {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    let mut kind = TransportKind::Connect;
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return TransportKind::Refused;
        }
        let text = current.to_string().to_ascii_lowercase();
        if text.contains("connection refused") {
            return TransportKind::Refused;
        }
        // rustls reports a handshake that went wrong (a plain-HTTP port, a corrupt record) as
        // invalid data inside the connector's I/O error.
        // (hyper wraps rustls' error: an `Other` I/O error around an `InvalidData` one.)
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            let inner = io.get_ref().and_then(|e| e.downcast_ref::<std::io::Error>()).map(std::io::Error::kind);
            if io.kind() == std::io::ErrorKind::InvalidData || inner == Some(std::io::ErrorKind::InvalidData) {
                kind = TransportKind::Tls;
            }
        }
        if text.contains("certificate") || text.contains("tls") || text.contains("handshake") || text.contains("ssl") {
            kind = TransportKind::Tls;
        } else if kind == TransportKind::Connect && (text.contains("dns") || text.contains("lookup address")) {
            kind = TransportKind::Dns;
        }
        source = current.source();
    }
    kind
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_retries: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        };
        for _ in 0..100 {
            assert!(policy.backoff(0) <= Duration::from_millis(100));
            assert!(policy.backoff(0) >= Duration::from_millis(10));
            assert!(policy.backoff(10) <= Duration::from_secs(2));
            assert!(policy.backoff(10) >= Duration::from_millis(200));
        }
    }

    #[test]
    fn rate_limit_headers_are_read_from_ghl_responses() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-ratelimit-remaining", "7"),
            ("x-ratelimit-max", "100"),
            ("x-ratelimit-interval-milliseconds", "10000"),
            ("x-ratelimit-daily-remaining", "199000"),
            ("x-ratelimit-limit-daily", "200000"),
        ] {
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let client = ApiClient::new(
            ClientSettings {
                service: "ghl",
                connect_timeout: Duration::from_secs(1),
                request_timeout: Duration::from_secs(1),
                retry: RetryPolicy::default(),
                headers: HeaderScheme::Ghl,
                user_agent: "test".into(),
            },
            None,
            CancellationToken::new(),
        )
        .unwrap();
        let seen = client.observe(&headers);
        assert_eq!(seen.remaining, Some(7));
        assert_eq!(seen.max, Some(100));
        assert_eq!(seen.interval, Some(Duration::from_secs(10)));
        assert_eq!(seen.daily_remaining, Some(199_000));
        assert_eq!(seen.daily_limit, Some(200_000));
    }

    fn probe_client() -> ApiClient {
        ApiClient::new(
            ClientSettings {
                service: "webhook",
                connect_timeout: Duration::from_secs(2),
                request_timeout: Duration::from_secs(2),
                retry: RetryPolicy { max_retries: 0, ..RetryPolicy::default() },
                headers: HeaderScheme::None,
                user_agent: "test".into(),
            },
            None,
            CancellationToken::new(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn connection_failures_say_refused_or_tls() {
        let client = probe_client();
        // Nothing listens on a port that was just freed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let error = client.send(ApiRequest::new(Method::POST, url, "/x")).await.unwrap_err();
        assert!(matches!(error, HttpError::Transport { kind: TransportKind::Refused, .. }), "{error:?}");
        assert_eq!(error.reason(), "connection refused");

        // HTTPS to a plain-HTTP port: the TLS handshake fails.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _read = socket.read(&mut buf).await;
                let _written = socket.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
            }
        });
        let url = Url::parse(&format!("https://{addr}/")).unwrap();
        let error = client.send(ApiRequest::new(Method::POST, url, "/x")).await.unwrap_err();
        assert!(matches!(error, HttpError::Transport { kind: TransportKind::Tls, .. }), "{error:?}");
        assert_eq!(error.reason(), "TLS handshake failed");
        server.abort();
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after", HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(parse_retry_after(&headers), None);
    }

    #[test]
    fn forms_are_url_encoded_without_nulls() {
        let text = serde_urlencoded_string(
            &serde_json::json!({"grant_type": "refresh_token", "a": null, "n": 5, "s": "x y&z"}),
        )
        .unwrap();
        assert!(text.contains("grant_type=refresh_token"));
        assert!(text.contains("n=5"));
        assert!(text.contains("s=x+y%26z"));
        assert!(!text.contains("a="));
    }
}
