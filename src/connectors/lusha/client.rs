//! The Lusha V3 API over `ApiClient` (header `api_key`, one rate-limit bucket per key) and the
//! classification of its failures (reference/lusha.md §5–§6).

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::config::LushaSettings;
use crate::http::{
    ApiClient, ApiRequest, ClientSettings, HeaderScheme, HttpError, LimitScope, Method, Priority, QuotaSettings,
    RateLimits, RetryPolicy, StatusCode, TransportKind,
};

/// A failed Lusha call, classified for the connector.
#[derive(Debug, thiserror::Error)]
pub enum LushaError {
    /// 402: the balance cannot cover the call. Nothing was charged.
    #[error("Lusha {route}: not enough credits (402)")]
    NoCredits { route: &'static str },
    /// 429 (or our own limiter) for the minute window: wait about a minute.
    #[error("Lusha {route}: rate-limited (minute window)")]
    Minute { route: &'static str },
    /// Hourly limit: park until it resets.
    #[error("Lusha {route}: hourly limit reached")]
    Hourly { route: &'static str, wait: Duration },
    /// Daily limit (or trial limit): park until the next UTC day.
    #[error("Lusha {route}: daily limit reached")]
    Daily { route: &'static str },
    /// The call may have reached Lusha and been charged (timeout, broken connection, 499,
    /// 5xx, unreadable answer).
    #[error("Lusha {route}: ambiguous failure ({detail})")]
    Ambiguous { route: &'static str, detail: String },
    /// 401/403: the key or the plan is wrong; nothing will work until the operator acts.
    #[error("Lusha {route}: refused ({status}); check the API key and plan")]
    Config { route: &'static str, status: u16 },
    /// 400/404/412/422 and other answers that will not change on retry.
    #[error("Lusha {route}: rejected the request ({status})")]
    Rejected { route: &'static str, status: u16 },
    /// Could not connect, or shutdown: nothing was sent.
    #[error("Lusha {route}: not sent ({detail})")]
    NotSent { route: &'static str, detail: String },
}

impl LushaError {
    fn from_http(error: HttpError) -> Self {
        match error {
            // The ApiClient classified the window from the headers and message; Lusha sends no
            // Retry-After, so an hourly limit parks for the longest the window can last.
            HttpError::RateLimited { route, scope, .. } => match scope {
                LimitScope::Daily => LushaError::Daily { route },
                LimitScope::Hourly => LushaError::Hourly { route, wait: Duration::from_secs(3600) },
                LimitScope::Burst => LushaError::Minute { route },
            },
            HttpError::BudgetExhausted { route, .. } => LushaError::Daily { route },
            HttpError::Status { route, status, body, .. } => classify_status(route, status, &body),
            HttpError::Timeout { route, .. } => LushaError::Ambiguous { route, detail: "timeout".into() },
            HttpError::Transport {
                route,
                kind: TransportKind::Connect | TransportKind::Refused | TransportKind::Dns | TransportKind::Tls,
                ..
            } => LushaError::NotSent { route, detail: "could not connect".into() },
            HttpError::Transport { route, kind, .. } => LushaError::Ambiguous { route, detail: kind.to_string() },
            HttpError::Decode { route, detail, .. } => LushaError::Ambiguous { route, detail },
            HttpError::Cancelled { route, .. } => LushaError::NotSent { route, detail: "shutdown".into() },
            HttpError::Invalid { detail, .. } => {
                LushaError::Rejected { route: "request", status: 0 }.with_detail(detail)
            }
        }
    }

    fn with_detail(self, detail: String) -> Self {
        tracing::warn!(detail = %detail, "Invalid Lusha request");
        self
    }
}

fn classify_status(route: &'static str, status: StatusCode, body: &[u8]) -> LushaError {
    let code = status.as_u16();
    match code {
        402 => LushaError::NoCredits { route },
        401 | 403 => LushaError::Config { route, status: code },
        429 => {
            let text = String::from_utf8_lossy(body).to_ascii_lowercase();
            if text.contains("daily") || text.contains("trial") {
                LushaError::Daily { route }
            } else if text.contains("hour") {
                LushaError::Hourly { route, wait: reset_in(&text).unwrap_or(Duration::from_secs(3600)) }
            } else {
                LushaError::Minute { route }
            }
        }
        408 | 499 | 500..=599 => LushaError::Ambiguous { route, detail: format!("status {code}") },
        _ => LushaError::Rejected { route, status: code },
    }
}

/// "… Reset in 1234 seconds" → 1234 s.
fn reset_in(text: &str) -> Option<Duration> {
    let after = text.split("reset in").nth(1)?;
    let digits: String = after.trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<u64>().ok().map(Duration::from_secs)
}

/// The Lusha API for one key.
#[derive(Clone)]
pub struct LushaClient {
    api: ApiClient,
    base: Url,
    key: SecretString,
    /// Rate-limit bucket: a hash of the key, never the key.
    bucket: String,
}

impl std::fmt::Debug for LushaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LushaClient").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

impl LushaClient {
    pub fn new(settings: &LushaSettings, key: SecretString, cancel: CancellationToken) -> Result<Self, HttpError> {
        let limits = Arc::new(RateLimits::new(QuotaSettings {
            burst_max: settings.limits.per_minute,
            window: Duration::from_secs(60),
            share: 1.0,
            daily_budget: u64::from(settings.limits.per_day),
            // Lusha's calls are all incremental work.
            bulk_daily_share: 1.0,
        }));
        let api = ApiClient::new(
            ClientSettings {
                service: "lusha",
                connect_timeout: Duration::from_secs(5),
                request_timeout: settings.timeout.get(),
                // Retries are the connector's decision: a search that may have been charged
                // is repeated at most once.
                retry: RetryPolicy { max_retries: 0, ..RetryPolicy::default() },
                headers: HeaderScheme::Lusha,
                user_agent: crate::app::user_agent(),
            },
            Some(limits),
            cancel,
        )?;
        let digest = Sha256::digest(key.expose_secret().as_bytes());
        let bucket = format!("lusha-key-{}", digest.iter().take(4).map(|b| format!("{b:02x}")).collect::<String>());
        Ok(Self { api, base: settings.base_url.clone(), key, bucket })
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("{}{}", self.base.path().trim_end_matches('/'), path));
        url
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        route: &'static str,
        body: Option<&Value>,
    ) -> Result<Value, LushaError> {
        let mut request = ApiRequest::new(method, self.url(path), route)
            .bucket(self.bucket.clone())
            // No share of the per-key daily budget is held back for other work: it is all ours.
            .priority(Priority::Webhook)
            .idempotent(false)
            .header("accept", "application/json")
            .secret_header("api_key", &self.key);
        if let Some(body) = body {
            request = request.json(body).map_err(LushaError::from_http)?;
        }
        let response = self.api.send(request).await.map_err(LushaError::from_http)?;
        response.json::<Value>().map_err(LushaError::from_http)
    }

    /// `POST /v3/contacts/search-and-enrich` (charged: search + reveals).
    pub async fn search_and_enrich(
        &self,
        items: &[Value],
        reveal: &[String],
        waterfall: bool,
    ) -> Result<Value, LushaError> {
        let body = json!({"contacts": items, "reveal": reveal, "waterfallEnabled": waterfall,
            "options": {"includePartialProfiles": false}});
        self.call(Method::POST, "/v3/contacts/search-and-enrich", "/v3/contacts/search-and-enrich", Some(&body)).await
    }

    /// `POST /v3/contacts/enrich` by Lusha ids (already revealed datapoints are free).
    pub async fn enrich(&self, ids: &[String], reveal: &[String], waterfall: bool) -> Result<Value, LushaError> {
        let body = json!({"ids": ids, "reveal": reveal, "waterfallEnabled": waterfall});
        self.call(Method::POST, "/v3/contacts/enrich", "/v3/contacts/enrich", Some(&body)).await
    }

    /// `POST /v3/contacts/prospecting`: one page of a search (free: no reveals).
    pub async fn prospecting(&self, filters: &Value, page: u64, size: u64) -> Result<Value, LushaError> {
        let body = json!({"filters": filters, "pagination": {"page": page, "size": size}});
        self.call(Method::POST, "/v3/contacts/prospecting", "/v3/contacts/prospecting", Some(&body)).await
    }

    /// `GET /v3/account/usage`: `credits.remaining` and the windows (free; 5 per minute).
    pub async fn usage(&self) -> Result<Value, LushaError> {
        self.call(Method::GET, "/v3/account/usage", "/v3/account/usage", None).await
    }
}

/// `ghl-sync check`'s line for Lusha from a `/v3/account/usage` answer: the key works (the
/// answer came), credits left, the plan and its request windows, and what this config allows
/// itself. `Err` (with the same facts) when no credit is left above `credit_reserve`, since then
/// nothing will be enriched.
pub fn describe_usage(usage: &Value, settings: &LushaSettings) -> Result<String, String> {
    let number = |path: &str| usage.pointer(path).and_then(Value::as_f64).map(|n| n.round() as i64);
    let remaining = number("/credits/remaining");
    let mut parts = vec!["API key accepted (GET /v3/account/usage, no credits spent)".to_owned()];
    parts.push(match (remaining, number("/credits/total"), number("/credits/used")) {
        (Some(left), Some(total), Some(used)) => format!("credits: {left} left of {total} ({used} used)"),
        (Some(left), _, _) => format!("credits: {left} left"),
        _ => "credits: not reported".to_owned(),
    });
    if let Some(plan) = usage.pointer("/plan/name").and_then(Value::as_str) {
        let trial = usage.pointer("/plan/isTrial").and_then(Value::as_bool) == Some(true);
        parts.push(format!("plan: {plan}{}", if trial { " (trial)" } else { "" }));
    }
    let windows: Vec<String> = [("daily", "today"), ("hourly", "this hour"), ("minute", "this minute")]
        .into_iter()
        .filter_map(|(key, label)| {
            let limit = number(&format!("/rateLimits/{key}/limit"))?;
            let left = number(&format!("/rateLimits/{key}/remaining"))?;
            Some(format!("{left}/{limit} {label}"))
        })
        .collect();
    if !windows.is_empty() {
        parts.push(format!("requests left: {}", windows.join(", ")));
    }
    let cap = match settings.daily_credit_cap {
        0 => "no daily cap".to_owned(),
        cap => format!("at most {cap} credits a day"),
    };
    parts.push(format!("this config spends {cap} and keeps {} in reserve", settings.credit_reserve));
    let line = parts.join("; ");
    match remaining {
        Some(left) if left <= settings.credit_reserve => Err(format!(
            "{line}. No credits above the reserve: enrichment waits until the balance is topped up \
             (or lower connectors.lusha.credit_reserve)"
        )),
        _ => Ok(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_line_shows_key_credits_plan_and_limits_and_fails_below_the_reserve() {
        let usage = json!({
            "credits": {"total": 10000, "used": 180, "remaining": 9820},
            "rateLimits": {
                "daily": {"limit": 25000, "used": 10, "remaining": 24990},
                "hourly": {"limit": 1200, "used": 5, "remaining": 1195},
                "minute": {"limit": 60, "used": 1, "remaining": 59}
            },
            "plan": {"name": "Scale", "isTrial": false}
        });
        let settings = LushaSettings::default();
        let line = describe_usage(&usage, &settings).unwrap();
        assert_eq!(
            line,
            "API key accepted (GET /v3/account/usage, no credits spent); credits: 9820 left of 10000 (180 used); \
             plan: Scale; requests left: 24990/25000 today, 1195/1200 this hour, 59/60 this minute; \
             this config spends at most 500 credits a day and keeps 100 in reserve"
        );
        let poor = json!({"credits": {"remaining": 80}});
        let error = describe_usage(&poor, &settings).unwrap_err();
        assert!(error.contains("credits: 80 left") && error.contains("No credits above the reserve"), "{error}");
    }

    #[test]
    fn statuses_are_classified_per_the_reference() {
        let c = |code: u16, body: &str| classify_status("/r", StatusCode::from_u16(code).unwrap(), body.as_bytes());
        assert!(matches!(c(402, ""), LushaError::NoCredits { .. }));
        assert!(matches!(c(401, ""), LushaError::Config { .. }));
        assert!(matches!(
            c(429, r#"{"message":"Daily API quota limit exceeded. Limit 5 calls per day"}"#),
            LushaError::Daily { .. }
        ));
        assert!(matches!(c(429, "You've reached your trial limit"), LushaError::Daily { .. }));
        match c(429, "Hourly API rate limit exceeded. Limit: 5 calls per hour. Reset in 120 seconds") {
            LushaError::Hourly { wait, .. } => assert_eq!(wait, Duration::from_secs(120)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(c(429, "API rate limit exceeded"), LushaError::Minute { .. }));
        assert!(matches!(c(499, ""), LushaError::Ambiguous { .. }));
        assert!(matches!(c(503, ""), LushaError::Ambiguous { .. }));
        assert!(matches!(c(400, ""), LushaError::Rejected { .. }));
    }
}
