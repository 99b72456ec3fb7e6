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
    Connect,
    /// The request may have reached the server (e.g. the connection broke mid-response).
    Ambiguous,
    Other,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "could not connect",
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

    /// The response body of a non-2xx answer.
    pub fn body(&self) -> Option<&[u8]> {
        match self {
            HttpError::Status { body, .. } => Some(body),
            _ => None,
        }
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
}
