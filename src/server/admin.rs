//! `POST /admin/sync` ("sync now", admin token only) and its client side, used by
//! `ghl-sync sync --now` to ask the running daemon instead of opening the locked store.
//!
//! The handler only wakes the scheduler (`sync::scheduler::SyncNow`): it never runs a pass
//! inline, so it answers at once (202) with the locations it woke.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::ServerState;
use crate::http::{ApiClient, ApiRequest, ClientSettings, HeaderScheme, HttpError, Method, RetryPolicy, TransportKind};
use crate::sync::scheduler::Woken;

/// `?location=ID` or `{"location": "ID"}`; neither: every location.
#[derive(Debug, Default, Deserialize)]
pub(super) struct SyncQuery {
    location: Option<String>,
}

/// The answer of `POST /admin/sync`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncNowAnswer {
    /// The locations that start a full pass now.
    pub woken: Vec<String>,
}

pub(super) async fn sync_now(
    State(state): State<ServerState>,
    Query(query): Query<SyncQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match super::pages::authorise(&state, &headers) {
        Ok(()) => {}
        Err(StatusCode::NOT_FOUND) => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
        Err(status) => return (status, [(header::WWW_AUTHENTICATE, "Bearer")], "unauthorized\n").into_response(),
    }
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        SyncQuery::default()
    } else {
        match serde_json::from_slice::<SyncQuery>(&body) {
            Ok(parsed) => parsed,
            Err(_) => {
                let error = serde_json::json!({"error": "bad_request", "message": "expected {\"location\": \"ID\"} or no body"});
                return (StatusCode::BAD_REQUEST, Json(error)).into_response();
            }
        }
    };
    let location = query.location.or(from_body.location).filter(|l| !l.trim().is_empty());
    match state.sync_now.wake(location.as_deref()) {
        Woken::Locations(woken) => {
            tracing::info!(locations = woken.len(), "Sync now requested over HTTP");
            (StatusCode::ACCEPTED, Json(SyncNowAnswer { woken })).into_response()
        }
        Woken::Unknown => {
            let error = serde_json::json!({
                "error": "unknown_location",
                "message": "this daemon does not sync that location",
            });
            (StatusCode::NOT_FOUND, Json(error)).into_response()
        }
    }
}

/// `ghl-sync sync --now`: asks the daemon listening at `base` to start a pass (for every
/// location, or `location`). The errors say what to do.
pub async fn request_sync_now(
    base: &Url,
    admin_token: &SecretString,
    location: Option<&str>,
) -> anyhow::Result<SyncNowAnswer> {
    let mut url = base.join("/admin/sync")?;
    if let Some(location) = location {
        url.query_pairs_mut().append_pair("location", location);
    }
    let client = ApiClient::new(
        ClientSettings {
            service: "daemon",
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy { max_retries: 0, ..RetryPolicy::default() },
            headers: HeaderScheme::None,
            user_agent: format!("ghl-sync/{} sync --now", env!("CARGO_PKG_VERSION")),
        },
        None,
        CancellationToken::new(),
    )?;
    let request = ApiRequest::new(Method::POST, url, "/admin/sync").bearer(admin_token);
    match client.send(request).await {
        Ok(response) => Ok(response.json::<SyncNowAnswer>()?),
        Err(HttpError::Transport { kind: TransportKind::Connect | TransportKind::Refused, .. }) => anyhow::bail!(
            "no ghl-sync daemon is listening on {base} (server.listen); start it with `ghl-sync run`, \
             or use `ghl-sync sync --once` while no daemon runs"
        ),
        Err(HttpError::Status { status, body, .. }) if status == StatusCode::NOT_FOUND => {
            if body.windows(16).any(|w| w == b"unknown_location") {
                anyhow::bail!(
                    "the running daemon does not sync location {} (see `ghl-sync status`)",
                    location.unwrap_or("?")
                )
            }
            anyhow::bail!(
                "the daemon at {base} has no admin routes: set server.admin_token in its config (and restart it)"
            )
        }
        Err(HttpError::Status { status, .. }) if status == StatusCode::UNAUTHORIZED => anyhow::bail!(
            "the daemon at {base} refused the admin token: server.admin_token differs from the running daemon's"
        ),
        Err(error) => Err(anyhow::Error::new(error).context(format!("Failed to ask the daemon at {base} to sync"))),
    }
}
