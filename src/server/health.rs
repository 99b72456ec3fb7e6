//! `/healthz`, `/readyz`, `/metrics`, and the client side used by `ghl-sync health`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::ServerState;
use crate::http::{ApiClient, ApiRequest, ClientSettings, HeaderScheme, Method, RetryPolicy};
use crate::store::{StoreError, grants, locations};

/// The process is alive and serving HTTP.
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// What keeps the daemon from being ready, empty when it is ready.
pub(super) async fn not_ready(state: &ServerState) -> Vec<String> {
    let mut problems = Vec::new();
    if state.ready.is_shutting_down() {
        problems.push("shutting down".to_owned());
    }
    // A store that cannot write (disk full, read-only, locked by another process) loses
    // webhooks and stalls every run: not ready until a write succeeds again.
    if let Some(reason) = state.store.write_health().failing {
        problems.push(format!("store: cannot write ({reason})"));
    }
    match crate::store::status::ping(&state.store).await {
        Err(_) => problems.push("store: not open".to_owned()),
        Ok(()) => match authorised_locations(state).await {
            Ok(0) => problems.push("locations: none active and authorised".to_owned()),
            Ok(_) => {}
            Err(_) => problems.push("store: query failed".to_owned()),
        },
    }
    problems
}

/// Locations that can sync now. A location counts when its `locations` row is `active`,
/// or when it is configured (enabled) and has no row yet (the engine writes one only when
/// something goes wrong); never when its grant is flagged `needs_reauth`, and a configured
/// OAuth location also needs a stored grant.
async fn authorised_locations(state: &ServerState) -> Result<usize, StoreError> {
    use std::collections::BTreeMap;
    let status: BTreeMap<String, String> =
        locations::list(&state.store).await?.into_iter().map(|row| (row.id, row.status)).collect();
    let grants: BTreeMap<String, bool> = grants::reauth_flags(&state.store).await?.into_iter().collect();
    let configured = &state.config.settings.ghl.locations;
    let mut ids: Vec<&str> = status.keys().map(String::as_str).collect();
    ids.extend(configured.iter().filter(|l| l.enabled).map(|l| l.id.as_str()));
    ids.sort_unstable();
    ids.dedup();
    let count = ids
        .into_iter()
        .filter(|id| {
            let config = configured.iter().find(|l| l.id == *id);
            if config.is_some_and(|l| !l.enabled) || grants.get(*id) == Some(&true) {
                return false;
            }
            let oauth = config.is_some_and(|l| l.auth == crate::config::LocationAuth::Oauth);
            if oauth && !grants.contains_key(*id) {
                return false;
            }
            match status.get(*id).map(String::as_str) {
                Some("active") => true,
                Some(_) => false,
                None => config.is_some(),
            }
        })
        .count();
    Ok(count)
}

/// 200 `{"ready":true}` or 503 `{"ready":false,"not_ready":[…]}`.
pub(super) async fn readyz(State(state): State<ServerState>) -> Response {
    let problems = not_ready(&state).await;
    if problems.is_empty() {
        (StatusCode::OK, Json(serde_json::json!({"ready": true}))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"ready": false, "not_ready": problems})))
            .into_response()
    }
}

/// Prometheus text: the recorder's metrics, then gauges read from the store now.
pub(super) async fn metrics(State(state): State<ServerState>) -> Response {
    state.metrics.run_upkeep();
    let mut text = state.metrics.render();
    match super::prometheus::store_gauges(&state.store).await {
        Ok(gauges) => {
            text.push_str(&gauges);
            text.push_str(&super::lucky_orange::gauges(&state).await);
        }
        Err(error) => {
            tracing::warn!(error = %error, "Failed to read store gauges for /metrics");
            text.push_str("# store gauges unavailable\n");
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// `ghl-sync health`: GETs `<base>/healthz` once (no retries, 5 s timeout).
pub async fn check_health(base: &Url) -> anyhow::Result<()> {
    let url = base.join("/healthz")?;
    let client = ApiClient::new(
        ClientSettings {
            service: "health",
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy { max_retries: 0, ..RetryPolicy::default() },
            headers: HeaderScheme::None,
            user_agent: format!("ghl-sync/{} health", env!("CARGO_PKG_VERSION")),
        },
        None,
        CancellationToken::new(),
    )?;
    client.send(ApiRequest::new(Method::GET, url, "/healthz")).await?;
    Ok(())
}

/// The URL `ghl-sync health` calls by default: `server.listen`, with a wildcard address
/// replaced by loopback (the check runs inside the same host or container).
pub fn local_url(listen: std::net::SocketAddr) -> anyhow::Result<Url> {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(Url::parse(&format!("http://{}/", std::net::SocketAddr::new(ip, listen.port())))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_checked_on_loopback() {
        assert_eq!(local_url("0.0.0.0:8089".parse().unwrap()).unwrap().as_str(), "http://127.0.0.1:8089/");
        assert_eq!(local_url("[::]:9000".parse().unwrap()).unwrap().as_str(), "http://[::1]:9000/");
        assert_eq!(local_url("10.0.0.5:80".parse().unwrap()).unwrap().as_str(), "http://10.0.0.5/");
    }
}
