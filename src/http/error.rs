//! Errors of outbound HTTP, each answering "retry or not?".

use std::time::Duration;

use reqwest::StatusCode;

/// Which limit a 429 or a refusal refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// The short window (GHL: 100 per 10 s); waiting a little fixes it.
    Burst,
    /// An hourly window (Lusha); park until it resets.
    Hourly,
    /// The daily cap; park the location or connector until the next day.
    Daily,
}

/// A failed outbound call. Never contains response bodies of endpoints that return personal
/// data in its `Display`: only service, route template and status.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{service} {route} timed out after {timeout:?}")]
    Timeout { service: &'static str, route: &'static str, timeout: Duration },
    #[error("{service} {route} rate-limited us ({scope:?})")]
    RateLimited { service: &'static str, route: &'static str, scope: LimitScope, retry_after: Option<Duration> },
    #[error("{service} budget for this priority is used up ({scope:?}); the call was not made")]
    BudgetExhausted { service: &'static str, route: &'static str, scope: LimitScope },
    #[error("{service} {route} returned {status}")]
    Status {
        service: &'static str,
        route: &'static str,
        status: StatusCode,
        /// Raw body, for the caller to parse (GHL's `{statusCode, message, error}`). Not displayed.
        body: bytes::Bytes,
        retry_after: Option<Duration>,
    },
    #[error("{service} {route} request failed: {kind}")]
    Transport { service: &'static str, route: &'static str, kind: TransportKind },
    #[error("{service} {route}: the response body is not what we expected ({detail})")]
    Decode { service: &'static str, route: &'static str, detail: String },
    #[error("{service} {route}: cancelled by shutdown")]
    Cancelled { service: &'static str, route: &'static str },
    #[error("{service}: invalid request: {detail}")]
    Invalid { service: &'static str, detail: String },
}

/// A transport failure, classified without keeping the (URL-bearing) reqwest error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Could not connect, for another reason than the ones below.
    Connect,
    /// The host answered the connection attempt with a refusal (nothing listens on the port).
    Refused,
    /// The host name did not resolve.
    Dns,
    /// The TLS handshake failed (certificate not trusted, expired, wrong host name, protocol).
    Tls,
    /// The request may have reached the server (e.g. the connection broke mid-response).
    Ambiguous,
    Other,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "could not connect",
            TransportKind::Refused => "connection refused",
            TransportKind::Dns => "host name did not resolve",
            TransportKind::Tls => "TLS handshake failed",
            TransportKind::Ambiguous => "connection failed mid-request",
            TransportKind::Other => "transport error",
        })
    }
}

impl HttpError {
    /// Whether trying the same call again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpError::Timeout { .. } | HttpError::Transport { .. } => true,
            HttpError::RateLimited { .. } | HttpError::BudgetExhausted { .. } => true,
            HttpError::Status { status, .. } => is_retryable_status(*status),
            HttpError::Decode { .. } | HttpError::Cancelled { .. } | HttpError::Invalid { .. } => false,
        }
    }

    /// The status code, when the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            HttpError::RateLimited { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            _ => None,
        }
    }

    /// How long the server asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::RateLimited { retry_after, .. } | HttpError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Why the call failed, for an operator: the kind of transport failure, the timeout, or
    /// the status with a short excerpt of the body scrubbed of e-mail addresses, phone
    /// numbers and long digit runs ([`crate::domain::scrub::excerpt`]). No URL, no header.
    pub fn reason(&self) -> String {
        match self {
            HttpError::Timeout { timeout, .. } => format!("timed out after {}", human(*timeout)),
            HttpError::Transport { kind, .. } => kind.to_string(),
            HttpError::RateLimited { retry_after, .. } => match retry_after {
                Some(wait) => format!("429 Too Many Requests (retry after {})", human(*wait)),
                None => "429 Too Many Requests".to_owned(),
            },
            HttpError::Status { status, body, .. } => {
                let code = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
                let code = code.trim_end().to_owned();
                let excerpt = crate::domain::scrub::excerpt(body, REASON_EXCERPT_CHARS);
                if excerpt.is_empty() { code } else { format!("{code}: {excerpt}") }
            }
            HttpError::BudgetExhausted { scope, .. } => format!("our own {scope:?} budget is used up; not called"),
            HttpError::Decode { detail, .. } => format!("unexpected answer ({detail})"),
            HttpError::Cancelled { .. } => "cancelled by shutdown".to_owned(),
            HttpError::Invalid { detail, .. } => format!("invalid request: {detail}"),
        }
    }

    /// The response body of a non-2xx answer.
    pub fn body(&self) -> Option<&[u8]> {
        match self {
            HttpError::Status { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// How much of a response body [`HttpError::reason`] keeps.
pub const REASON_EXCERPT_CHARS: usize = 200;

/// `1.5s`, `10s`, `2m 5s`.
fn human(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 10_000 && !ms.is_multiple_of(1000) {
        format!("{:.1}s", duration.as_secs_f64())
    } else if ms < 60_000 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}m {}s", duration.as_secs() / 60, duration.as_secs() % 60)
    }
}

/// 408, 429 and 5xx (except 501) are worth retrying; other statuses are permanent.
pub fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classification_follows_the_status_table() {
        let cases = [
            (200, false),
            (400, false),
            (401, false),
            (404, false),
            (408, true),
            (422, false),
            (429, true),
            (500, true),
            (501, false),
            (502, true),
            (503, true),
        ];
        for (code, retry) in cases {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(is_retryable_status(status), retry, "{code}");
        }
    }

    #[test]
    fn display_never_includes_the_body() {
        let error = HttpError::Status {
            service: "ghl",
            route: "/contacts/:contactId",
            status: StatusCode::BAD_REQUEST,
            body: bytes::Bytes::from_static(b"{\"email\":\"ada@example.test\"}"),
            retry_after: None,
        };
        assert_eq!(error.to_string(), "ghl /contacts/:contactId returned 400 Bad Request");
    }

    #[test]
    fn reasons_name_the_failure_and_scrub_the_body() {
        let error = HttpError::Status {
            service: "webhook",
            route: "/webhook",
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: bytes::Bytes::from_static(b"{\"error\":\"email ada@example.test is invalid\"}"),
            retry_after: None,
        };
        let reason = error.reason();
        assert!(reason.starts_with("422 Unprocessable Entity: "), "{reason}");
        assert!(reason.contains("is invalid"), "{reason}");
        assert!(!reason.contains("ada@"), "{reason}");
        let timeout = HttpError::Timeout { service: "webhook", route: "/webhook", timeout: Duration::from_secs(10) };
        assert_eq!(timeout.reason(), "timed out after 10s");
        let refused = HttpError::Transport { service: "webhook", route: "/webhook", kind: TransportKind::Refused };
        assert_eq!(refused.reason(), "connection refused");
        let tls = HttpError::Transport { service: "webhook", route: "/webhook", kind: TransportKind::Tls };
        assert_eq!(tls.reason(), "TLS handshake failed");
        let empty = HttpError::Status {
            service: "webhook",
            route: "/webhook",
            status: StatusCode::BAD_GATEWAY,
            body: bytes::Bytes::new(),
            retry_after: None,
        };
        assert_eq!(empty.reason(), "502 Bad Gateway");
    }
}
