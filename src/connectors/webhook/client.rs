//! Signed POSTs to the customer's URL and the classification of the answer.

use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::connectors::Outcome;
use crate::http::{ApiClient, ApiRequest, HttpError, Method, is_retryable_status};

/// Route template used in logs and metrics (the customer's URL is never logged).
pub const ROUTE: &str = "/webhook";

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &SecretString, timestamp: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) {
        Ok(mac) => mac,
        // HMAC accepts keys of any length.
        Err(_) => unreachable!("HMAC takes any key length"),
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ignored = write!(out, "{b:02x}");
        out
    })
}

/// Builds the signed request: `Idempotency-Key`, `X-Ghl-Sync-Timestamp` and, with a secret,
/// `X-Ghl-Sync-Signature`.
pub fn request(
    url: &url::Url,
    body: &[u8],
    idempotency_key: &str,
    secret: Option<&SecretString>,
    timestamp: i64,
    timeout: Duration,
) -> ApiRequest {
    let timestamp = timestamp.to_string();
    let mut request = ApiRequest::new(Method::POST, url.clone(), ROUTE)
        .timeout(timeout)
        .header("idempotency-key", idempotency_key)
        .header("x-ghl-sync-timestamp", &timestamp);
    if let Some(secret) = secret {
        let signed = SecretString::from(signature(secret, &timestamp, body));
        request = request.secret_header("x-ghl-sync-signature", &signed);
    }
    request.body = Some(crate::http::Body::Json(bytes::Bytes::copy_from_slice(body)));
    request
}

/// Sends one request; the answer classified as an outcome.
pub async fn send(client: &ApiClient, request: ApiRequest) -> Outcome {
    classify(client.send(request).await.map(|_| ()))
}

/// 2xx = done; 408/429/5xx (not 501), timeouts and transport errors = retry (honouring
/// `Retry-After`); other 4xx = permanent. Each failure carries its reason
/// ([`HttpError::reason`]: connection refused, timeout, TLS, or the status and a scrubbed
/// excerpt of the body).
pub fn classify(result: Result<(), HttpError>) -> Outcome {
    let error = match result {
        Ok(()) => return Outcome::Done,
        Err(error) => error,
    };
    let reason = format!("the webhook {}", describe(&error));
    match &error {
        HttpError::Status { status, retry_after, .. } if is_retryable_status(*status) => {
            Outcome::Retry(*retry_after, Some(reason))
        }
        HttpError::Status { .. } => Outcome::Permanent(reason),
        HttpError::RateLimited { retry_after, .. } => Outcome::Retry(*retry_after, Some(reason)),
        HttpError::Timeout { .. }
        | HttpError::Transport { .. }
        | HttpError::Cancelled { .. }
        | HttpError::BudgetExhausted { .. } => Outcome::Retry(None, Some(reason)),
        HttpError::Decode { .. } | HttpError::Invalid { .. } => Outcome::Permanent(error.to_string()),
    }
}

/// "answered 422 Unprocessable Entity: {…}", "failed: connection refused", …
fn describe(error: &HttpError) -> String {
    match error {
        HttpError::Status { .. } | HttpError::RateLimited { .. } => format!("answered {}", error.reason()),
        _ => format!("failed: {}", error.reason()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{LimitScope, StatusCode, TransportKind};

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_dot_body() {
        // Known answer computed with: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret
        let secret = SecretString::from("s3cret".to_owned());
        let got = signature(&secret, "1700000000", br#"{"a":1}"#);
        assert_eq!(got, "sha256=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940");
        // Deterministic, and bound to both timestamp and body.
        assert_eq!(got, signature(&secret, "1700000000", br#"{"a":1}"#));
        assert_ne!(got, signature(&secret, "1700000001", br#"{"a":1}"#));
        assert_ne!(got, signature(&secret, "1700000000", br#"{"a":2}"#));
    }

    #[test]
    fn answers_are_classified_by_the_status_table() {
        let status = |code: u16, retry_after: Option<u64>| {
            Err(HttpError::Status {
                service: "webhook",
                route: ROUTE,
                status: StatusCode::from_u16(code).unwrap(),
                body: bytes::Bytes::new(),
                retry_after: retry_after.map(Duration::from_secs),
            })
        };
        assert_eq!(classify(Ok(())), Outcome::Done);
        let retry = |after: Option<u64>, reason: &str| {
            Outcome::Retry(after.map(Duration::from_secs), Some(format!("the webhook {reason}")))
        };
        assert_eq!(classify(status(500, None)), retry(None, "answered 500 Internal Server Error"));
        assert_eq!(classify(status(503, Some(7))), retry(Some(7), "answered 503 Service Unavailable"));
        assert_eq!(classify(status(408, None)), retry(None, "answered 408 Request Timeout"));
        assert!(
            matches!(classify(status(400, None)), Outcome::Permanent(reason) if reason == "the webhook answered 400 Bad Request")
        );
        assert!(matches!(classify(status(410, None)), Outcome::Permanent(_)));
        assert!(matches!(classify(status(501, None)), Outcome::Permanent(_)));
        let limited = Err(HttpError::RateLimited {
            service: "webhook",
            route: ROUTE,
            scope: LimitScope::Burst,
            retry_after: Some(Duration::from_secs(3)),
        });
        assert_eq!(classify(limited), retry(Some(3), "answered 429 Too Many Requests (retry after 3s)"));
        let timeout = Err(HttpError::Timeout { service: "webhook", route: ROUTE, timeout: Duration::from_secs(1) });
        assert_eq!(classify(timeout), retry(None, "failed: timed out after 1s"));
        let refused = Err(HttpError::Transport { service: "webhook", route: ROUTE, kind: TransportKind::Refused });
        assert_eq!(classify(refused), retry(None, "failed: connection refused"));
    }
}
