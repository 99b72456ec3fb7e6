//! Webhook sink: records every delivery the daemon makes to `POST /sink/{name}` and answers
//! according to a per-name [`SinkMode`], so tests can count deliveries, retries and
//! redeliveries.
//!
//! Routes (relative to the `/sink` nest):
//! - `POST /{name}` records a delivery and answers per the mode of `name` (default [`SinkMode::Ok`]:
//!   `200 {"ok":true}`).
//! - `GET /__admin/deliveries?name=` lists recorded deliveries (all names when `name` is absent).
//! - `DELETE /__admin/deliveries` forgets all deliveries (modes are kept).
//! - `POST /__admin/mode` with `{"name":"x","mode":…}` sets a mode. `mode` is one of
//!   `"ok"`, `"down"`, `{"fail_rate":0.5}`, `{"slow_ms":250}`, `{"reject":400}`,
//!   `{"retry_after":30}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

/// Start-up options of the sink (none yet; kept for symmetry with the other fakes).
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {}

/// How the sink answers deliveries to one name.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SinkMode {
    /// `200 {"ok":true}`.
    #[default]
    Ok,
    /// `503` on every delivery.
    Down,
    /// `500` with the given probability (0.0–1.0), drawn from a deterministic RNG; else 200.
    FailRate(f64),
    /// Waits this long, then answers 200 (use it to trip the daemon's timeout).
    Slow(Duration),
    /// Answers this status on every delivery (e.g. 400, 410: a permanent rejection).
    Reject(u16),
    /// `429` with `Retry-After: <secs>`.
    RetryAfter(u64),
    /// Answers this status with this body (e.g. a 422 whose message echoes the e-mail
    /// address it refused, as real validation errors do).
    RejectWithBody(u16, &'static str),
}

/// One recorded delivery attempt, successful or not.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The `{name}` path segment it was posted to.
    pub name: String,
    /// Request headers in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Raw body (lossy UTF-8).
    pub body: String,
    /// When the request arrived.
    #[serde(serialize_with = "serialize_system_time")]
    pub received_at: SystemTime,
    /// The status the sink answered.
    pub status: u16,
}

impl Delivery {
    /// First header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// Whether the sink answered 2xx.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

fn serialize_system_time<S: serde::Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    let millis = time.duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis()).unwrap_or(0);
    serializer.serialize_u128(millis)
}

struct SinkState {
    deliveries: Vec<Delivery>,
    modes: HashMap<String, SinkMode>,
    rng: fastrand::Rng,
}

/// The webhook sink. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Sink {
    state: Arc<Mutex<SinkState>>,
}

impl Sink {
    /// Creates an empty sink where every name is in [`SinkMode::Ok`].
    pub fn new(_options: SinkOptions) -> Self {
        Self {
            state: Arc::new(Mutex::new(SinkState {
                deliveries: Vec::new(),
                modes: HashMap::new(),
                rng: fastrand::Rng::with_seed(0x5eed_5111),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The axum router to nest under `/sink`.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/__admin/deliveries", get(admin_deliveries).delete(admin_clear))
            .route("/__admin/mode", post(admin_mode))
            .route("/{name}", post(deliver))
            .with_state(self.clone())
    }

    /// Every recorded delivery attempt (for `name`, or all names), oldest first, failures included.
    pub fn deliveries(&self, name: Option<&str>) -> Vec<Delivery> {
        self.lock()
            .deliveries
            .iter()
            .filter(|delivery| name.is_none_or(|name| delivery.name == name))
            .cloned()
            .collect()
    }

    /// Only the deliveries the sink answered with 2xx.
    pub fn accepted(&self, name: Option<&str>) -> Vec<Delivery> {
        let mut all = self.deliveries(name);
        all.retain(Delivery::accepted);
        all
    }

    /// Sets how deliveries to `name` are answered from now on.
    pub fn set_mode(&self, name: &str, mode: SinkMode) {
        self.lock().modes.insert(name.to_owned(), mode);
    }

    /// The current mode of `name`.
    pub fn mode(&self, name: &str) -> SinkMode {
        self.lock().modes.get(name).copied().unwrap_or_default()
    }

    /// Removes and returns the recorded deliveries for `name` (or all), oldest first: a
    /// long-running reader (the soak benchmark) sees each delivery once and keeps memory flat.
    pub fn take(&self, name: Option<&str>) -> Vec<Delivery> {
        let mut state = self.lock();
        let (taken, kept) =
            std::mem::take(&mut state.deliveries).into_iter().partition(|d| name.is_none_or(|name| d.name == name));
        state.deliveries = kept;
        taken
    }

    /// Forgets all recorded deliveries (modes are kept).
    pub fn clear(&self) {
        self.lock().deliveries.clear();
    }

    /// Waits until at least `count` deliveries (for `name`, or all) were recorded, or `timeout`
    /// passes; returns what was recorded either way.
    pub async fn wait_for(&self, name: Option<&str>, count: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.deliveries(name);
            if got.len() >= count || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn deliver(State(sink): State<Sink>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let received_at = SystemTime::now();
    let (mode, fail) = {
        let mut state = sink.lock();
        let mode = state.modes.get(&name).copied().unwrap_or_default();
        let fail = match mode {
            SinkMode::FailRate(rate) => state.rng.f64() < rate,
            _ => false,
        };
        (mode, fail)
    };
    if let SinkMode::Slow(delay) = mode {
        tokio::time::sleep(delay).await;
    }
    let (status, response) = match mode {
        SinkMode::Ok | SinkMode::Slow(_) => ok(),
        SinkMode::FailRate(_) if !fail => ok(),
        SinkMode::FailRate(_) => error(StatusCode::INTERNAL_SERVER_ERROR),
        SinkMode::Down => error(StatusCode::SERVICE_UNAVAILABLE),
        SinkMode::Reject(code) => error(StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)),
        SinkMode::RejectWithBody(code, body) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
            (status, (status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        SinkMode::RetryAfter(secs) => {
            let (status, mut response) = error(StatusCode::TOO_MANY_REQUESTS);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            (status, response)
        }
    };
    let delivery = Delivery {
        name,
        headers: headers
            .iter()
            .map(|(key, value)| (key.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        received_at,
        status: status.as_u16(),
    };
    sink.lock().deliveries.push(delivery);
    response
}

fn ok() -> (StatusCode, Response) {
    (StatusCode::OK, (StatusCode::OK, Json(serde_json::json!({"ok": true}))).into_response())
}

fn error(status: StatusCode) -> (StatusCode, Response) {
    let body = serde_json::json!({
        "ok": false,
        "status": status.as_u16(),
        "error": status.canonical_reason().unwrap_or("error"),
    });
    (status, (status, Json(body)).into_response())
}

#[derive(Deserialize)]
struct NameQuery {
    name: Option<String>,
}

async fn admin_deliveries(State(sink): State<Sink>, Query(query): Query<NameQuery>) -> Json<Vec<Delivery>> {
    Json(sink.deliveries(query.name.as_deref()))
}

async fn admin_clear(State(sink): State<Sink>) -> StatusCode {
    sink.clear();
    StatusCode::NO_CONTENT
}

/// Wire form of [`SinkMode`] for `POST /__admin/mode`.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ModeBody {
    Ok,
    Down,
    FailRate(f64),
    SlowMs(u64),
    Reject(u16),
    RetryAfter(u64),
}

#[derive(Deserialize)]
struct ModeRequest {
    name: String,
    mode: ModeBody,
}

async fn admin_mode(State(sink): State<Sink>, body: Bytes) -> Response {
    let request: ModeRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({"ok": false, "error": error.to_string()})))
                .into_response();
        }
    };
    let mode = match request.mode {
        ModeBody::Ok => SinkMode::Ok,
        ModeBody::Down => SinkMode::Down,
        ModeBody::FailRate(rate) => SinkMode::FailRate(rate),
        ModeBody::SlowMs(ms) => SinkMode::Slow(Duration::from_millis(ms)),
        ModeBody::Reject(code) => SinkMode::Reject(code),
        ModeBody::RetryAfter(secs) => SinkMode::RetryAfter(secs),
    };
    sink.set_mode(&request.name, mode);
    Json(serde_json::json!({"ok": true})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Sandbox, SandboxOptions};

    fn url(sandbox: &Sandbox, path: &str) -> String {
        format!("http://{}{}", sandbox.addr(), path)
    }

    async fn start() -> anyhow::Result<(Sandbox, reqwest::Client)> {
        let sandbox = Sandbox::start(SandboxOptions::default(), "127.0.0.1:0".parse()?).await?;
        Ok((sandbox, reqwest::Client::builder().build()?))
    }

    #[tokio::test]
    async fn records_deliveries_and_answers_ok() -> anyhow::Result<()> {
        let (sandbox, client) = start().await?;
        let response = client
            .post(sandbox.sink_url("hook"))
            .header("x-signature", "abc")
            .json(&serde_json::json!({"event": "contact.created"}))
            .send()
            .await?;
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<serde_json::Value>().await?, serde_json::json!({"ok": true}));
        let got = sandbox.sink.deliveries(Some("hook"));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].header("X-Signature"), Some("abc"));
        assert_eq!(got[0].json(), Some(serde_json::json!({"event": "contact.created"})));
        assert_eq!(sandbox.sink.accepted(None).len(), 1);
        assert!(sandbox.sink.deliveries(Some("other")).is_empty());

        // Admin listing and clearing over HTTP.
        let base = url(&sandbox, "/sink/__admin/deliveries?name=hook");
        let listed: serde_json::Value = client.get(base).send().await?.json().await?;
        assert_eq!(listed.as_array().map(Vec::len), Some(1));
        assert_eq!(listed[0]["status"], 200);
        let cleared = client.delete(url(&sandbox, "/sink/__admin/deliveries")).send().await?;
        assert_eq!(cleared.status(), 204);
        assert!(sandbox.sink.deliveries(None).is_empty());
        sandbox.stop().await;
        Ok(())
    }

    #[tokio::test]
    async fn failure_modes_answer_as_configured() -> anyhow::Result<()> {
        let (sandbox, client) = start().await?;
        let post = |name: &str| client.post(sandbox.sink_url(name)).body("{}").send();

        sandbox.sink.set_mode("down", SinkMode::Down);
        assert_eq!(post("down").await?.status(), 503);

        sandbox.sink.set_mode("reject", SinkMode::Reject(400));
        assert_eq!(post("reject").await?.status(), 400);
        assert_eq!(post("reject").await?.status(), 400);

        sandbox.sink.set_mode("busy", SinkMode::RetryAfter(7));
        let busy = post("busy").await?;
        assert_eq!(busy.status(), 429);
        assert_eq!(busy.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));

        sandbox.sink.set_mode("slow", SinkMode::Slow(Duration::from_millis(300)));
        let started = std::time::Instant::now();
        assert_eq!(post("slow").await?.status(), 200);
        assert!(started.elapsed() >= Duration::from_millis(300));
        let timed_out = client.post(sandbox.sink_url("slow")).timeout(Duration::from_millis(50)).send().await;
        assert!(timed_out.is_err());

        sandbox.sink.set_mode("always", SinkMode::FailRate(1.0));
        assert_eq!(post("always").await?.status(), 500);
        sandbox.sink.set_mode("never", SinkMode::FailRate(0.0));
        assert_eq!(post("never").await?.status(), 200);
        sandbox.sink.set_mode("half", SinkMode::FailRate(0.5));
        let mut failed = 0;
        for _ in 0..40 {
            if post("half").await?.status() == 500 {
                failed += 1;
            }
        }
        assert!((5..=35).contains(&failed), "{failed} of 40 failed");

        // Mode over the admin route, then back to Ok.
        let set = client
            .post(url(&sandbox, "/sink/__admin/mode"))
            .json(&serde_json::json!({"name": "down", "mode": "ok"}))
            .send()
            .await?;
        assert_eq!(set.status(), 200);
        assert_eq!(post("down").await?.status(), 200);
        let set = client
            .post(url(&sandbox, "/sink/__admin/mode"))
            .json(&serde_json::json!({"name": "x", "mode": {"reject": 410}}))
            .send()
            .await?;
        assert_eq!(set.status(), 200);
        assert_eq!(post("x").await?.status(), 410);

        // Failed attempts are recorded with the status answered, so redeliveries can be counted.
        let down = sandbox.sink.deliveries(Some("down"));
        assert_eq!(down.iter().map(|d| d.status).collect::<Vec<_>>(), vec![503, 200]);
        assert_eq!(sandbox.sink.accepted(Some("down")).len(), 1);
        assert_eq!(sandbox.sink.deliveries(Some("reject")).len(), 2);
        assert!(sandbox.sink.accepted(Some("reject")).is_empty());
        let waited = sandbox.sink.wait_for(Some("half"), 40, Duration::from_millis(100)).await;
        assert_eq!(waited.len(), 40);
        sandbox.stop().await;
        Ok(())
    }
}
