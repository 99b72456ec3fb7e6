//! The Lucky Orange bridge's HTTP side (reference/lucky-orange.md §3.2):
//! - `POST /lo/identity` (`{"t": token}`) and `GET /lo/identity?t=`: 200 `{"id","traits"}`
//!   with exactly the allow-listed traits; 204 (empty) for an expired token or an unknown,
//!   deleted, DND or opted-out contact — read from the store at request time, the same answer
//!   in every case; 400 malformed, 401 forged;
//! - `POST /lo/events`: a visit or an allow-listed journey event for the token's contact,
//!   stored in `lo_events` and applied to GHL by the connector (never inline);
//! - `GET /lo/snippet.js`: the site snippet (`assets/lo-snippet.js`);
//! - CORS for exact configured origins only (`Vary: Origin`, preflight answered, never `*`);
//!   a per-IP rate limit; `Cache-Control: no-store` and `Referrer-Policy: no-referrer` on
//!   every answer. Logs carry the contact id and the outcome, never the token or a trait.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use super::ServerState;
use crate::config::{Config, LuckyOrangeSettings};
use crate::connectors::lucky_orange::config::valid_event_name;
use crate::connectors::lucky_orange::token::{TokenError, TokenKeys};
use crate::connectors::lucky_orange::{self as lo, refusal, replay_session_id, traits_of};
use crate::store::lucky_orange::{self as lo_store, EventKind, NewEvent};

/// Request bodies of `/lo/*` are capped at this (bytes).
pub const MAX_BODY: usize = 1024;

/// The site snippet served at `/lo/snippet.js`.
pub const SNIPPET: &str = include_str!("../../assets/lo-snippet.js");

/// Client addresses the rate limiter remembers before it first drops the idle ones.
const LIMITER_KEYS: usize = 10_000;

/// What the `/lo/*` handlers share (built once from the config).
pub struct Bridge {
    settings: LuckyOrangeSettings,
    keys: TokenKeys,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Size at which the limiter is next cleaned: twice what a cleaning kept (at least
    /// [`LIMITER_KEYS`]), so many active clients cost one scan per doubling, not per request.
    clean_at: std::sync::atomic::AtomicUsize,
    /// Raises `lucky_orange.identified` for the rules of the start-up config.
    rules: crate::rules::emit::Emitter,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl Bridge {
    /// `None` when the section is absent, disabled or has no usable key.
    pub fn from_config(config: &Config, store: &crate::store::Store) -> Option<Arc<Self>> {
        let settings = config.settings.connectors.lucky_orange.as_ref().filter(|s| s.enabled)?.clone();
        let keys = lo::token_keys(config)?;
        let per_minute = NonZeroU32::new(settings.rate_limit_per_minute).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::keyed(Quota::per_minute(per_minute));
        let clean_at = std::sync::atomic::AtomicUsize::new(LIMITER_KEYS);
        let rules = crate::rules::emit::Emitter::new(store.clone(), &config.rules);
        Some(Arc::new(Self { settings, keys, limiter, clean_at, rules }))
    }
}

/// The outcome of one request, for logs and metrics (no data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Identified,
    Accepted,
    Expired,
    Unknown,
    Refused(lo::Refusal),
    Malformed,
    Forged,
    Origin,
    Limited,
    Off,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Identified => "identified",
            Outcome::Accepted => "accepted",
            Outcome::Expired => "expired",
            Outcome::Unknown => "unknown",
            Outcome::Refused(r) => r.as_str(),
            Outcome::Malformed => "malformed",
            Outcome::Forged => "forged",
            Outcome::Origin => "origin_refused",
            Outcome::Limited => "rate_limited",
            Outcome::Off => "off",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Outcome::Identified => StatusCode::OK,
            Outcome::Accepted => StatusCode::ACCEPTED,
            Outcome::Expired | Outcome::Unknown | Outcome::Refused(_) => StatusCode::NO_CONTENT,
            Outcome::Malformed => StatusCode::BAD_REQUEST,
            Outcome::Forged => StatusCode::UNAUTHORIZED,
            Outcome::Origin => StatusCode::FORBIDDEN,
            Outcome::Limited => StatusCode::TOO_MANY_REQUESTS,
            Outcome::Off => StatusCode::NOT_FOUND,
        }
    }
}

/// The browser origin when it is allowed: `Ok(Some(origin))` to echo, `Ok(None)` without an
/// `Origin` header (not a cross-origin browser request), `Err` for any other origin.
fn check_origin(settings: &LuckyOrangeSettings, headers: &HeaderMap) -> Result<Option<HeaderValue>, ()> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(None) };
    let allowed = origin.to_str().ok().is_some_and(|o| settings.allowed_origins.iter().any(|a| a == o));
    if allowed { Ok(Some(origin.clone())) } else { Err(()) }
}

/// Headers every `/lo/*` answer carries, plus CORS for an allowed origin.
fn finish(mut response: Response, origin: Option<&HeaderValue>) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    response
}

fn empty(outcome: Outcome, origin: Option<&HeaderValue>) -> Response {
    finish(outcome.status().into_response(), origin)
}

/// The client's address: the peer, or with `server.trust_forwarded_for` the right-most
/// `X-Forwarded-For` entry (the one the reverse proxy added).
fn client_ip(request_headers: &HeaderMap, peer: Option<SocketAddr>, trust_forwarded: bool) -> IpAddr {
    if trust_forwarded
        && let Some(ip) = request_headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    {
        return ip;
    }
    peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip())
}

/// The rate limiter's key: the IPv4 address, or the IPv6 /64 (one subscriber's network, which
/// hands its devices any address inside it).
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(std::net::Ipv6Addr::from(segments))
        }
    }
}

/// The common gate: the bridge is on, the origin allowed, the IP under its limit.
#[allow(clippy::result_large_err, reason = "the error is the finished response")]
fn gate<'a>(
    state: &'a ServerState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    route: &'static str,
) -> Result<(&'a Arc<Bridge>, Option<HeaderValue>), Response> {
    let Some(bridge) = state.lucky_orange.as_ref() else {
        return Err(empty(Outcome::Off, None));
    };
    let Ok(origin) = check_origin(&bridge.settings, headers) else {
        note(route, Outcome::Origin, None);
        return Err(empty(Outcome::Origin, None));
    };
    let ip = client_ip(headers, peer, bridge.settings.trust_forwarded_for);
    // The limiter keeps a cell per address it has seen: forget idle ones before they pile up
    // (the routes face the internet; an IPv6 client can rotate addresses).
    if bridge.limiter.len() > bridge.clean_at.load(std::sync::atomic::Ordering::Relaxed) {
        bridge.limiter.retain_recent();
        bridge.limiter.shrink_to_fit();
        let next = (bridge.limiter.len() * 2).max(LIMITER_KEYS);
        bridge.clean_at.store(next, std::sync::atomic::Ordering::Relaxed);
    }
    if bridge.limiter.check_key(&limit_key(ip)).is_err() {
        note(route, Outcome::Limited, None);
        return Err(empty(Outcome::Limited, origin.as_ref()));
    }
    Ok((bridge, origin))
}

fn note(route: &'static str, outcome: Outcome, contact: Option<&str>) {
    metrics::counter!("ghl_sync_lucky_orange_requests_total", "route" => route, "outcome" => outcome.as_str())
        .increment(1);
    match contact {
        Some(contact) => {
            tracing::info!(route, contact.id = %contact, outcome = outcome.as_str(), "Lucky Orange request")
        }
        None => tracing::info!(route, outcome = outcome.as_str(), "Lucky Orange request"),
    }
}

fn peer_of(request: &Request) -> Option<SocketAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

#[derive(Deserialize)]
struct TokenBody {
    t: String,
}

/// What a token leads to: the contact and its location, or the outcome to answer.
async fn resolve(
    bridge: &Bridge,
    state: &ServerState,
    token: &str,
) -> Result<(String, serde_json::Value, String), Outcome> {
    let now = crate::store::now_ms() / 1000;
    let claims = bridge.keys.verify(token, now).map_err(|error| match error {
        TokenError::Malformed => Outcome::Malformed,
        TokenError::Forged => Outcome::Forged,
        TokenError::Expired => Outcome::Expired,
    })?;
    let found = lo_store::find_contact(&state.store, &claims.sub).await.map_err(|error| {
        tracing::warn!(error = %error, "Lucky Orange: the store could not be read; answering 204");
        Outcome::Unknown
    })?;
    let Some((location, record)) = found else { return Err(Outcome::Unknown) };
    if let Some(why) = refusal(&record, &bridge.settings) {
        return Err(Outcome::Refused(why));
    }
    Ok((claims.sub, record, location))
}

async fn identify(state: &ServerState, bridge: &Bridge, token: &str, origin: Option<&HeaderValue>) -> Response {
    let (contact, record, location) = match resolve(bridge, state, token).await {
        Ok(found) => found,
        Err(outcome) => {
            note("/lo/identity", outcome, None);
            return empty(outcome, origin);
        }
    };
    let traits = traits_of(&record, &bridge.settings.traits);
    let event = NewEvent {
        location_id: &location,
        contact_id: &contact,
        kind: EventKind::Identify,
        name: None,
        page: None,
        session_id: None,
        visits: None,
        occurred_at: crate::store::now_ms(),
        pending: false,
        outcome: None,
    };
    if let Err(error) = lo_store::record_event(&state.store, &event).await {
        tracing::warn!(error = %error, "Lucky Orange: the identification could not be recorded");
    }
    // At most one `lucky_orange.identified` rule event per contact and UTC day.
    let day = (event.occurred_at / 86_400_000).to_string();
    let key = || crate::writeback::key(&["lo_rule_identified", &location, &contact, &day]);
    let at = event.occurred_at;
    if let Err(error) = bridge
        .rules
        .emit_about_contact("lucky_orange.identified", key, &location, &contact, serde_json::Map::new(), at)
        .await
    {
        tracing::warn!(error = %error, "Lucky Orange: the identification's rule event could not be stored");
    }
    note("/lo/identity", Outcome::Identified, Some(&contact));
    let body = serde_json::json!({ "id": contact, "traits": traits });
    finish(axum::Json(body).into_response(), origin)
}

/// `POST /lo/identity` with `{"t": "<token>"}`.
pub(super) async fn identity_post(State(state): State<ServerState>, request: Request) -> Response {
    let peer = peer_of(&request);
    let (parts, body) = request.into_parts();
    let (bridge, origin) = match gate(&state, &parts.headers, peer, "/lo/identity") {
        Ok(passed) => passed,
        Err(response) => return response,
    };
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return finish(StatusCode::PAYLOAD_TOO_LARGE.into_response(), origin.as_ref());
    };
    let Ok(TokenBody { t }) = serde_json::from_slice::<TokenBody>(&bytes) else {
        note("/lo/identity", Outcome::Malformed, None);
        return empty(Outcome::Malformed, origin.as_ref());
    };
    identify(&state, bridge, &t, origin.as_ref()).await
}

#[derive(Deserialize)]
pub(super) struct TokenQuery {
    t: Option<String>,
}

/// `GET /lo/identity?t=<token>` (for sites that cannot POST; same rules).
pub(super) async fn identity_get(
    State(state): State<ServerState>,
    Query(query): Query<TokenQuery>,
    request: Request,
) -> Response {
    let peer = peer_of(&request);
    let (bridge, origin) = match gate(&state, request.headers(), peer, "/lo/identity") {
        Ok(passed) => passed,
        Err(response) => return response,
    };
    let Some(t) = query.t else {
        note("/lo/identity", Outcome::Malformed, None);
        return empty(Outcome::Malformed, origin.as_ref());
    };
    identify(&state, bridge, &t, origin.as_ref()).await
}

/// `OPTIONS /lo/*`: the CORS preflight, answered for an allowed origin only.
pub(super) async fn preflight(State(state): State<ServerState>, headers: HeaderMap) -> Response {
    let Some(bridge) = state.lucky_orange.as_ref() else { return empty(Outcome::Off, None) };
    match check_origin(&bridge.settings, &headers) {
        Ok(Some(origin)) => {
            let mut response = finish(StatusCode::NO_CONTENT.into_response(), Some(&origin));
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST"));
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type"));
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
            response
        }
        _ => empty(Outcome::Origin, None),
    }
}

/// `POST /lo/events` body: a visit or a journey event.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    t: String,
    /// `visit` or `event`.
    #[serde(rename = "type")]
    kind: String,
    /// Journey events: the allow-listed name.
    #[serde(default)]
    name: Option<String>,
    /// The page path (a query string or fragment is dropped).
    #[serde(default)]
    page: Option<String>,
    /// Lucky Orange's visit counter (`lo-visits`).
    #[serde(default)]
    visits: Option<i64>,
    /// Lucky Orange's session id (`lo-session`).
    #[serde(default)]
    session: Option<String>,
    /// The referrer's host (accepted, not stored).
    #[serde(default)]
    #[allow(dead_code, reason = "accepted from the snippet; not stored (no column for it yet)")]
    referrer: Option<String>,
    /// Event metadata (accepted, not stored: it may hold anything).
    #[serde(default)]
    #[allow(dead_code, reason = "accepted from the snippet; never stored")]
    meta: Option<serde_json::Value>,
}

/// A page path without query or fragment, at most 200 characters.
fn clean_page(page: &str) -> Option<String> {
    let path = page.split(['?', '#']).next().unwrap_or("").trim();
    (path.starts_with('/') && !path.chars().any(char::is_control)).then(|| path.chars().take(200).collect())
}

/// `POST /lo/events`.
pub(super) async fn events(State(state): State<ServerState>, request: Request) -> Response {
    let peer = peer_of(&request);
    let (parts, body) = request.into_parts();
    let (bridge, origin) = match gate(&state, &parts.headers, peer, "/lo/events") {
        Ok(passed) => passed,
        Err(response) => return response,
    };
    let origin = origin.as_ref();
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => return finish(StatusCode::PAYLOAD_TOO_LARGE.into_response(), origin),
    };
    let Ok(event) = serde_json::from_slice::<EventBody>(&bytes) else {
        note("/lo/events", Outcome::Malformed, None);
        return empty(Outcome::Malformed, origin);
    };
    let kind = match event.kind.as_str() {
        "visit" => EventKind::Visit,
        "event" => EventKind::Event,
        _ => {
            note("/lo/events", Outcome::Malformed, None);
            return empty(Outcome::Malformed, origin);
        }
    };
    let name = event.name.filter(|n| valid_event_name(n));
    if kind == EventKind::Event && !name.as_ref().is_some_and(|n| bridge.settings.events.contains_key(n)) {
        // Not allow-listed: refused without storing anything.
        note("/lo/events", Outcome::Malformed, None);
        return empty(Outcome::Malformed, origin);
    }
    let session = event.session.filter(|s| replay_session_id(&lo::replay_url(s)).is_some());
    let page = event.page.as_deref().and_then(clean_page);
    let (contact, _record, location) = match resolve(bridge, &state, &event.t).await {
        Ok(found) => found,
        Err(outcome) => {
            note("/lo/events", outcome, None);
            return empty(outcome, origin);
        }
    };
    let new = NewEvent {
        location_id: &location,
        contact_id: &contact,
        kind,
        name: if kind == EventKind::Event { name.as_deref() } else { None },
        page: page.as_deref(),
        session_id: session.as_deref(),
        visits: event.visits.filter(|v| (0..=1_000_000).contains(v)),
        occurred_at: crate::store::now_ms(),
        pending: true,
        outcome: None,
    };
    match lo_store::record_event(&state.store, &new).await {
        Ok(_) => {
            note("/lo/events", Outcome::Accepted, Some(&contact));
            empty(Outcome::Accepted, origin)
        }
        Err(error) => {
            tracing::warn!(error = %error, "Lucky Orange: a site report could not be stored");
            finish(StatusCode::SERVICE_UNAVAILABLE.into_response(), origin)
        }
    }
}

/// `GET /lo/snippet.js`.
pub(super) async fn snippet(State(state): State<ServerState>, method: Method) -> Response {
    if state.lucky_orange.is_none() || method != Method::GET {
        return StatusCode::NOT_FOUND.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        SNIPPET,
    )
        .into_response()
}

/// The contact view's Lucky Orange section (admin only; `pages::render_contact`): token,
/// identifications, visits, journey events and replay links (clickable).
pub(super) async fn contact_section(state: &ServerState, contact_id: &str) -> Result<String, crate::store::StoreError> {
    use std::fmt::Write as _;

    use super::html_escape as esc;
    use super::pages::age;
    if state.config.settings.connectors.lucky_orange.as_ref().is_none_or(|s| !s.enabled) {
        return Ok(String::new());
    }
    let now = crate::store::now_ms();
    let token = lo_store::contact_token(&state.store, contact_id).await?;
    let events = lo_store::contact_events(&state.store, contact_id, 200).await?;
    let mut b = String::from("<h2>Lucky Orange</h2>");
    match token {
        Some((kid, expires_at, minted_at)) => write!(
            b,
            "<p>Identity token (key {}) minted {}, expires {}.</p>",
            esc(&kid),
            age(now, Some(minted_at)),
            super::pages::iso(expires_at.saturating_mul(1000)),
        )
        .ok(),
        None => write!(b, "<p class=\"muted\">No identity token minted yet.</p>").ok(),
    };
    let identified: Vec<&lo_store::StoredEvent> = events.iter().filter(|e| e.kind == EventKind::Identify).collect();
    let visits = events.iter().filter(|e| e.kind == EventKind::Visit).count();
    write!(
        b,
        "<p>Identified on the site {} time(s) (last {}, first {}); {} visit(s) reported.</p>",
        identified.len(),
        age(now, identified.first().map(|e| e.occurred_at)),
        age(now, identified.last().map(|e| e.occurred_at)),
        visits,
    )
    .ok();
    let replays: Vec<&lo_store::StoredEvent> = events.iter().filter(|e| e.kind == EventKind::Replay).collect();
    if !replays.is_empty() {
        b.push_str("<p>Session replays:</p><ul>");
        for replay in replays {
            if let Some(url) =
                replay.session_id.as_deref().and_then(|s| replay_session_id(&lo::replay_url(s)).map(lo::replay_url))
            {
                write!(
                    b,
                    "<li><a href=\"{0}\" rel=\"noopener noreferrer\">{0}</a> ({1})</li>",
                    esc(&url),
                    age(now, Some(replay.occurred_at))
                )
                .ok();
            }
        }
        b.push_str("</ul>");
    }
    let journey: Vec<&lo_store::StoredEvent> =
        events.iter().filter(|e| matches!(e.kind, EventKind::Event | EventKind::Visit)).collect();
    write!(b, "<table><tr><th>What</th><th>Page</th><th>When</th><th>Status</th><th>In GHL</th></tr>").ok();
    for event in journey.iter().take(50) {
        write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(event.name.as_deref().unwrap_or(event.kind.as_str())),
            esc(event.page.as_deref().unwrap_or("")),
            age(now, Some(event.occurred_at)),
            esc(&event.status),
            esc(event.outcome.as_deref().unwrap_or("")),
        )
        .ok();
    }
    b.push_str("</table>");
    Ok(b)
}

/// A small SVG bar chart of daily counts (oldest first).
fn daily_chart(per_day: &[i64]) -> String {
    use std::fmt::Write as _;
    let (width, height, bar) = (per_day.len() * 12, 80usize, 10usize);
    let max = per_day.iter().copied().max().unwrap_or(0).max(1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" role=\"img\" \
         aria-label=\"contacts identified per day\">",
        height + 16
    );
    for (i, n) in per_day.iter().enumerate() {
        if *n > 0 {
            let h = (usize::try_from(*n).unwrap_or(0) * height / usize::try_from(max).unwrap_or(1)).max(1);
            write!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"{bar}\" height=\"{h}\" fill=\"#d9541e\"><title>{n}</title></rect>",
                i * 12,
                height - h
            )
            .ok();
        }
    }
    write!(
        svg,
        "<text x=\"0\" y=\"{}\" font-size=\"11\" fill=\"#777\">-{} days</text><text x=\"{width}\" y=\"{}\" \
         font-size=\"11\" fill=\"#777\" text-anchor=\"end\">today · max {max}/day</text></svg>",
        height + 14,
        per_day.len(),
        height + 14
    )
    .ok();
    svg
}

/// The figures for the last 7 and 30 days.
async fn read_insights(state: &ServerState) -> Result<Vec<(u32, lo_store::Figures)>, crate::store::StoreError> {
    let now = crate::store::now_ms();
    let mut out = Vec::new();
    for days in [7u32, 30] {
        out.push((days, lo_store::figures(&state.store, now - i64::from(days) * 86_400_000, now / 1000).await?));
    }
    Ok(out)
}

/// `GET /insights` (admin token): GHL, Lusha and Lucky Orange side by side, 7 and 30 days.
pub(super) async fn insights(State(state): State<ServerState>, headers: HeaderMap) -> Response {
    use std::fmt::Write as _;

    use super::html_escape as esc;
    match super::pages::authorise(&state, &headers) {
        Ok(()) => {}
        Err(StatusCode::NOT_FOUND) => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
        Err(status) => return (status, [(header::WWW_AUTHENTICATE, "Bearer")], "unauthorized\n").into_response(),
    }
    let figures = match read_insights(&state).await {
        Ok(figures) => figures,
        Err(error) => {
            tracing::warn!(error = %error, "Insights could not be read");
            return (StatusCode::INTERNAL_SERVER_ERROR, "store error\n").into_response();
        }
    };
    let per_day = lo_store::identified_per_day(&state.store, crate::store::now_ms(), 30).await.unwrap_or_default();
    let mut b = String::from("<h1>Insights</h1><p><a href=\"/\">← status</a></p><table><tr><th></th>");
    for (days, _) in &figures {
        write!(b, "<th>last {days} days</th>").ok();
    }
    b.push_str("</tr>");
    type Row = (&'static str, fn(&lo_store::Figures) -> i64);
    let rows: [Row; 9] = [
        ("GHL contacts synced (now)", |f| f.contacts_synced),
        ("GHL contacts new", |f| f.contacts_new),
        ("Enriched by Lusha", |f| f.lusha_enriched),
        ("Lusha credits spent", |f| f.lusha_credits),
        ("Live Lucky Orange tokens (now)", |f| f.tokens_live),
        ("Identified on the site", |f| f.identified),
        ("Visits reported", |f| f.visits),
        ("Contacts with session replays", |f| f.with_replays),
        ("GHL tasks from journey events", |f| f.tasks_created),
    ];
    for (label, get) in rows {
        write!(b, "<tr><td>{}</td>", esc(label)).ok();
        for (_, f) in &figures {
            write!(b, "<td class=\"n\">{}</td>", get(f)).ok();
        }
        b.push_str("</tr>");
    }
    let mut names: Vec<&str> = figures.iter().flat_map(|(_, f)| f.events.iter().map(|(n, _)| n.as_str())).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        write!(b, "<tr><td>Journey event <code>{}</code></td>", esc(name)).ok();
        for (_, f) in &figures {
            let n = f.events.iter().find(|(e, _)| e == name).map_or(0, |(_, n)| *n);
            write!(b, "<td class=\"n\">{n}</td>").ok();
        }
        b.push_str("</tr>");
    }
    b.push_str("</table><h2>Contacts identified on the site per day (30 days)</h2>");
    b.push_str(&daily_chart(&per_day));
    super::pages::page("Insights", &b).into_response()
}

/// Prometheus gauges of the bridge (counts only; no personal data, no per-contact labels).
pub(super) async fn gauges(state: &ServerState) -> String {
    use std::fmt::Write as _;
    if state.lucky_orange.is_none() {
        return String::new();
    }
    let now = crate::store::now_ms();
    let Ok(f) = lo_store::figures(&state.store, now - 30 * 86_400_000, now / 1000).await else {
        return "# lucky orange gauges unavailable\n".to_owned();
    };
    let mut text = String::new();
    for (name, help, value) in [
        ("ghl_sync_lucky_orange_tokens_live", "Contacts with an unexpired identity token", f.tokens_live),
        ("ghl_sync_lucky_orange_identified_30d", "Contacts identified on the site in 30 days", f.identified),
        ("ghl_sync_lucky_orange_visits_30d", "Visits reported in 30 days", f.visits),
        ("ghl_sync_lucky_orange_replays_30d", "Contacts with a replay link noted in 30 days", f.with_replays),
        ("ghl_sync_lucky_orange_tasks_30d", "GHL tasks created from journey events in 30 days", f.tasks_created),
    ] {
        writeln!(text, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}").ok();
    }
    writeln!(text, "# HELP ghl_sync_lucky_orange_events_30d Journey events in 30 days by (allow-listed) name\n# TYPE ghl_sync_lucky_orange_events_30d gauge").ok();
    for (name, n) in &f.events {
        writeln!(text, "ghl_sync_lucky_orange_events_30d{{event=\"{name}\"}} {n}").ok();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LuckyOrangeSettings {
        LuckyOrangeSettings {
            allowed_origins: vec!["https://www.example.com".into()],
            ..LuckyOrangeSettings::default()
        }
    }

    fn with_origin(origin: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        headers
    }

    #[test]
    fn cors_echoes_exact_allowed_origins_only() {
        let settings = settings();
        assert_eq!(
            check_origin(&settings, &with_origin("https://www.example.com")),
            Ok(Some(HeaderValue::from_static("https://www.example.com")))
        );
        for other in ["https://example.com", "https://www.example.com.evil.com", "http://www.example.com", "null", "*"]
        {
            assert_eq!(check_origin(&settings, &with_origin(other)), Err(()), "{other}");
        }
        assert_eq!(check_origin(&settings, &HeaderMap::new()), Ok(None));
        let response = finish(StatusCode::OK.into_response(), None);
        assert!(response.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(response.headers()[header::VARY], "Origin");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }

    #[test]
    fn ipv6_clients_are_limited_per_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_key(a), limit_key(b));
        assert_ne!(limit_key(a), limit_key(other));
        let v4: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(limit_key(v4), v4);
    }

    #[test]
    fn client_ip_trusts_forwarded_for_only_when_told() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9, 198.51.100.7"));
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert_eq!(client_ip(&headers, Some(peer), false), peer.ip());
        assert_eq!(client_ip(&headers, Some(peer), true), "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_daily_chart_has_one_bar_per_busy_day() {
        let svg = daily_chart(&[0, 3, 0, 1]);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("max 3/day"));
    }

    #[test]
    fn pages_lose_query_and_fragment() {
        assert_eq!(clean_page("/pricing?lo_t=abc#x").as_deref(), Some("/pricing"));
        assert_eq!(clean_page("https://evil/x"), None);
    }

    #[test]
    fn the_snippet_is_small_and_self_contained() {
        assert!(SNIPPET.len() < 8 * 1024, "{} bytes", SNIPPET.len());
        assert!(!SNIPPET.contains("import ") && !SNIPPET.contains("require("));
        assert!(SNIPPET.contains("lo_t") && SNIPPET.contains("lo-opt-out") && SNIPPET.contains("lo_session_url"));
    }
}
