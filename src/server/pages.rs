//! The status page (`GET /`, aggregates only, public on the listener), its JSON form
//! (`GET /status.json`: the `store::status` read model plus readiness) and the contact view
//! (`GET /contacts/{id}`, personal data, admin token only). Server-rendered HTML strings with
//! inline CSS and an inline SVG chart: no external assets, no build step.
//!
//! The status page refreshes itself: a small inline script re-fetches `/` every few seconds
//! (while the tab is visible) and swaps the status section in place, so the page has one
//! renderer (this file) and keeps its scroll position. Without scripts, a `<noscript>` meta
//! refresh reloads it.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use secrecy::ExposeSecret;

use super::{ServerState, constant_time_eq, html_escape as esc};
use crate::store::contact_view::ContactView;
use crate::store::status::{RunStatus, Status};
use crate::store::{StoreError, now_ms};

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222;background:#fafafa}\
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}\
table{border-collapse:collapse;background:#fff;margin:.5rem 0}\
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}\
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.ok{color:#17692b}.bad{color:#a40e26}.muted{color:#777}\
pre{background:#fff;border:1px solid #ddd;padding:.6rem;overflow:auto;max-height:30rem}\
svg{background:#fff;border:1px solid #ddd}";

pub(super) fn page(title: &str, body: &str) -> Html<String> {
    render_page(title, body, "")
}

/// How often the status page refreshes itself.
const REFRESH_SECS: u32 = 5;

/// The status page's self-refresh: re-fetch `/`, swap `#status` (one renderer, scroll kept);
/// paused while the tab is hidden. Inline, no external assets.
const REFRESH_SCRIPT: &str = "<script>(function(){function tick(){if(document.hidden)return;\
fetch('/',{cache:'no-store'}).then(function(r){return r.ok?r.text():null}).then(function(t){if(!t)return;\
var n=new DOMParser().parseFromString(t,'text/html').getElementById('status');\
var c=document.getElementById('status');if(n&&c)c.replaceWith(n)}).catch(function(){})}\
setInterval(tick,EVERY)})();</script>";

fn render_page(title: &str, body: &str, head_extra: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{CSS}</style>{head_extra}</head><body>{body}\
         <p class=\"muted\">ghl-sync {} · generated {}</p></body></html>",
        esc(title),
        env!("CARGO_PKG_VERSION"),
        esc(&iso(now_ms())),
    ))
}

pub(super) fn iso(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// "3m 20s ago"-style age.
pub(super) fn age(now: i64, then: Option<i64>) -> String {
    let Some(then) = then else { return "never".to_owned() };
    let secs = ((now - then).max(0) / 1000) as u64;
    let text = match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d {}h", secs / 86400, (secs % 86400) / 3600),
    };
    format!("{text} ago")
}

/// Text that might be long (errors): cut at `max` characters.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

fn internal(error: &StoreError) -> Response {
    tracing::error!(error = %error, "Failed to render a page");
    (StatusCode::INTERNAL_SERVER_ERROR, "store unavailable\n").into_response()
}

pub(super) async fn status_page(State(state): State<ServerState>) -> Response {
    match render_status(&state).await {
        Ok(html) => html.into_response(),
        Err(error) => internal(&error),
    }
}

/// The status as the read model has it, with the configured locations of this daemon.
pub(super) async fn read_status(state: &ServerState) -> Result<Status, StoreError> {
    let configured = crate::cli::status::configured_locations(&state.config);
    crate::store::status::read(&state.store, &configured).await
}

async fn render_status(state: &ServerState) -> Result<Html<String>, StoreError> {
    let status = read_status(state).await?;
    let problems = super::health::not_ready(state).await;
    let budget = state.config.settings.limits.ghl_daily_budget;
    let head = format!(
        "<noscript><meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\"></noscript>{}",
        REFRESH_SCRIPT.replace("EVERY", &(REFRESH_SECS * 1000).to_string())
    );
    Ok(render_page("ghl-sync status", &status_body(&status, &problems, budget), &head))
}

/// `GET /status.json`: the read model and readiness, for scripts and monitoring. Aggregates
/// only (ids, counts, times, error texts without record content), like the page.
pub(super) async fn status_json(State(state): State<ServerState>) -> Response {
    match read_status(&state).await {
        Ok(status) => {
            let problems = super::health::not_ready(&state).await;
            let body = StatusJson { ready: problems.is_empty(), not_ready: problems, status };
            ([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response()
        }
        Err(error) => internal(&error),
    }
}

#[derive(serde::Serialize)]
struct StatusJson {
    ready: bool,
    not_ready: Vec<String>,
    #[serde(flatten)]
    status: Status,
}

/// A run in a few words, with its progress while it runs.
fn run_cell(run: &RunStatus, now: i64) -> String {
    let class = match run.outcome.as_str() {
        "failed" => "bad",
        "running" => "muted",
        _ => "ok",
    };
    let mut text = format!("{} <span class=\"{class}\">{}</span>", esc(&run.kind), esc(&run.outcome));
    if run.is_running() {
        write!(
            text,
            ", {} page(s), {} read, {} changes, {} requests, started {}",
            run.pages,
            run.records_seen,
            run.changes,
            run.requests,
            age(now, Some(run.started_at))
        )
        .ok();
        if let Some(at) = run.progress_at {
            write!(text, ", last page {}", age(now, Some(at))).ok();
        }
    } else {
        write!(
            text,
            ", {} changes, {} requests, {}",
            run.changes,
            run.requests,
            age(now, run.finished_at.or(Some(run.started_at)))
        )
        .ok();
    }
    text
}

/// The status page's body: pure formatting of the read model, inside `#status` (the part
/// the refresh script swaps).
fn status_body(status: &Status, problems: &[String], budget: u64) -> String {
    let now = status.generated_at;
    let mut b = String::new();
    b.push_str("<main id=\"status\"><h1>ghl-sync status</h1>");
    if problems.is_empty() {
        b.push_str("<p class=\"ok\">Ready.</p>");
    } else {
        write!(b, "<p class=\"bad\">Not ready: {}</p>", esc(&problems.join("; "))).ok();
    }
    write!(
        b,
        "<p class=\"muted\">As of {} (refreshes every {REFRESH_SECS} s). \"Today\" is the UTC day {}.</p>",
        esc(&iso(now)),
        esc(&status.day)
    )
    .ok();

    b.push_str(
        "<h2>Locations</h2><table><tr><th>Location</th><th>Status</th><th>Contacts</th><th>Cursor</th>\
         <th>Lag</th><th>Last run</th><th>Requests today</th><th>429s today</th><th>Webhooks today</th>\
         <th>Dirty</th></tr>",
    );
    if status.locations.is_empty() {
        b.push_str("<tr><td colspan=\"10\" class=\"muted\">No locations yet.</td></tr>");
    }
    for l in &status.locations {
        let last_run = match &l.last_run {
            Some(run) => run_cell(run, now),
            None => "<span class=\"muted\">none</span>".to_owned(),
        };
        let status_class = if matches!(l.status.as_str(), "active" | "configured") { "ok" } else { "bad" };
        let label = match &l.name {
            Some(name) => format!("{} <span class=\"muted\">{}</span>", esc(name), esc(&l.id)),
            None => esc(&l.id),
        };
        let limited_class = if l.rate_limited_today > 0 { "n bad" } else { "n" };
        write!(
            b,
            "<tr><td>{label}</td><td class=\"{status_class}\">{}{}</td><td class=\"n\">{}</td>\
             <td>{}</td><td>{}</td><td>{last_run}</td><td class=\"n\">{} / {budget}</td>\
             <td class=\"{limited_class}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&l.status),
            l.reason
                .as_ref()
                .map(|r| format!(" <span class=\"muted\">({})</span>", esc(&clip(r, 80))))
                .unwrap_or_default(),
            l.contacts,
            l.watermark_ms.map(iso).unwrap_or_else(|| "—".to_owned()),
            l.watermark_ms.map(|w| age(now, Some(w)).replace(" ago", "")).unwrap_or_else(|| "—".to_owned()),
            l.requests_today,
            l.rate_limited_today,
            l.webhooks_today,
            l.dirty,
        )
        .ok();
    }
    b.push_str("</table>");

    b.push_str(
        "<h2>Connectors</h2><table><tr><th>Connector</th><th>Queue</th><th>Retrying</th><th>Oldest pending</th>\
         <th>Delivered (1h)</th><th>Dead letters</th><th>Last error</th></tr>",
    );
    if status.connectors.is_empty() {
        b.push_str("<tr><td colspan=\"7\" class=\"muted\">Nothing queued or delivered yet.</td></tr>");
    }
    for c in &status.connectors {
        let dead_class = if c.dead_letters > 0 { "n bad" } else { "n" };
        let last_error = match &c.last_error {
            Some(error) => format!(
                "<span class=\"bad\">{}</span> <span class=\"muted\">({}, {})</span>",
                esc(&clip(&error.message, 160)),
                if error.kind == "dead_letter" { "dead letter" } else { "retrying" },
                age(now, Some(error.at))
            ),
            None => "<span class=\"muted\">—</span>".to_owned(),
        };
        write!(
            b,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"{dead_class}\">{}</td><td>{last_error}</td></tr>",
            esc(&c.connector),
            c.pending,
            c.retrying,
            if c.oldest_pending_at.is_some() { age(now, c.oldest_pending_at) } else { "—".to_owned() },
            c.delivered_last_hour,
            c.dead_letters,
        )
        .ok();
    }
    b.push_str("</table>");

    let mut buckets = [0i64; 60];
    for (slot, n) in buckets.iter_mut().zip(&status.deliveries_per_minute) {
        *slot = *n;
    }
    b.push_str("<h2>Deliveries per minute (last hour)</h2>");
    b.push_str(&chart(&buckets));

    if !status.replicas.is_empty() {
        b.push_str(
            "<h2>Replicas</h2><table><tr><th>Replica</th><th>Host</th><th>Version</th><th>Heartbeat</th><th>Leases</th></tr>",
        );
        for r in &status.replicas {
            let heartbeat = match r.stopped_at {
                Some(at) => format!("stopped {}", age(now, Some(at))),
                None => age(now, Some(r.heartbeat_at)),
            };
            write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.id),
                esc(&r.host),
                esc(&r.version),
                esc(&heartbeat),
                r.leases
            )
            .ok();
        }
        b.push_str("</table><table><tr><th>Location</th><th>Leased by</th><th>Renewed</th><th>Moves</th></tr>");
        for l in &status.leases {
            let holder = match &l.holder {
                Some(holder) if l.expires_at > now => esc(holder),
                _ => "<span class=\"muted\">not leased</span>".to_owned(),
            };
            write!(
                b,
                "<tr><td>{}</td><td>{holder}</td><td>{}</td><td>{}</td></tr>",
                esc(&l.location_id),
                age(now, Some(l.renewed_at)),
                l.moves
            )
            .ok();
        }
        b.push_str("</table>");
    }

    if !status.incidents.is_empty() {
        b.push_str(
            "<h2>Open incidents</h2><table><tr><th>Since</th><th>Alert</th><th>Condition</th><th>Summary</th></tr>",
        );
        for incident in &status.incidents {
            write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"bad\">{}</td></tr>",
                age(now, Some(incident.opened_at)),
                esc(&incident.alert),
                esc(&incident.condition_key),
                esc(&clip(&incident.summary, 300))
            )
            .ok();
        }
        b.push_str("</table>");
    }

    // Run errors and dead-letter reasons carry ids, never personal data.
    b.push_str("<h2>Recent errors</h2>");
    if status.recent_errors.is_empty() {
        b.push_str("<p class=\"muted\">None.</p>");
    } else {
        b.push_str("<table><tr><th>When</th><th>Where</th><th>Error</th></tr>");
        for e in &status.recent_errors {
            write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                age(now, Some(e.at)),
                esc(&e.origin),
                esc(&clip(&e.message, 200))
            )
            .ok();
        }
        b.push_str("</table>");
    }
    b.push_str("</main>");
    b
}

/// An inline SVG bar chart of 60 per-minute counts (oldest left).
fn chart(buckets: &[i64; 60]) -> String {
    let (width, height, bar) = (600, 120, 10);
    let max = buckets.iter().copied().max().unwrap_or(0).max(1);
    let total: i64 = buckets.iter().sum();
    let mut svg = format!(
        "<svg role=\"img\" width=\"{width}\" height=\"{}\" viewBox=\"0 0 {width} {}\" \
         xmlns=\"http://www.w3.org/2000/svg\"><title>{total} deliveries in the last hour, at most {max} per minute</title>",
        height + 20,
        height + 20
    );
    for (i, n) in buckets.iter().enumerate() {
        let h = (*n as f64 / max as f64 * f64::from(height)).round() as i64;
        if h > 0 {
            write!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{h}\" fill=\"#3b7dd8\"><title>{n}</title></rect>",
                i * bar,
                i64::from(height) - h,
                bar - 2
            )
            .ok();
        }
    }
    write!(
        svg,
        "<line x1=\"0\" y1=\"{height}\" x2=\"{width}\" y2=\"{height}\" stroke=\"#999\"/>\
         <text x=\"0\" y=\"{}\" font-size=\"11\" fill=\"#777\">-60 min</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#777\" text-anchor=\"end\">now · max {max}/min · total {total}</text></svg>",
        height + 15,
        width,
        height + 15
    )
    .ok();
    svg
}

/// Checks `Authorization: Bearer <server.admin_token>`. `Err` is the status to send:
/// 404 when no admin token is configured (admin routes are off), 401 otherwise.
pub(super) fn authorise(state: &ServerState, headers: &HeaderMap) -> Result<(), StatusCode> {
    let Some(token) = state.config.secrets.admin_token.as_ref() else {
        return Err(StatusCode::NOT_FOUND);
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match presented {
        Some(presented) if constant_time_eq(presented.as_bytes(), token.expose_secret().as_bytes()) => Ok(()),
        _ => Err(StatusCode::UNAUTHORIZED),
    }
}

pub(super) async fn contact_view(
    State(state): State<ServerState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match authorise(&state, &headers) {
        Ok(()) => {}
        Err(StatusCode::NOT_FOUND) => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
        Err(status) => return (status, [(header::WWW_AUTHENTICATE, "Bearer")], "unauthorized\n").into_response(),
    }
    match render_contact(&state, &id).await {
        Ok(Some(html)) => html.into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, page("Contact not found", "<h1>Contact not found</h1>")).into_response(),
        Err(error) => internal(&error),
    }
}

/// The contact's Lusha story: each cached answer (when, what, credits, written back) and
/// whether it came in as a prospecting lead.
fn lusha_section(b: &mut String, view: &ContactView, now: i64) {
    if view.lusha_answers.is_empty() && view.lusha_leads.is_empty() {
        return;
    }
    write!(
        b,
        "<h2>Lusha ({})</h2><table><tr><th>Outcome</th><th>Lusha id</th><th>Revealed</th><th>Credits</th>\
         <th>Enriched</th><th>Written to GHL</th></tr>",
        view.lusha_answers.len()
    )
    .ok();
    for answer in &view.lusha_answers {
        // enriched_at 0: expired by a signal (refreshed by Lusha id on the next change).
        let enriched =
            if answer.enriched_at == 0 { "expired by a signal".to_owned() } else { age(now, Some(answer.enriched_at)) };
        write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&answer.outcome),
            esc(answer.lusha_id.as_deref().unwrap_or("—")),
            esc(&answer.reveal_set),
            answer.credits,
            esc(&enriched),
            age(now, answer.written_at),
        )
        .ok();
    }
    b.push_str("</table>");
    for lead in &view.lusha_leads {
        write!(
            b,
            "<p>Imported as a Lusha lead from search <b>{}</b> into {} ({}, {} credit(s), {}).</p>",
            esc(&lead.search),
            esc(&lead.location_id),
            esc(lead.action.as_deref().unwrap_or("pending")),
            lead.credits,
            age(now, Some(lead.updated_at)),
        )
        .ok();
    }
    if let Some(latest) = view.lusha_answers.iter().find(|a| a.result.is_some()) {
        write!(
            b,
            "<details><summary>Latest Lusha result</summary><pre>{}</pre></details>",
            esc(&pretty(latest.result.as_ref()))
        )
        .ok();
    }
}

fn pretty(record: Option<&serde_json::Value>) -> String {
    match record {
        Some(value) => serde_json::to_string_pretty(value).unwrap_or_default(),
        None => "(record does not decode)".to_owned(),
    }
}

async fn render_contact(state: &ServerState, id: &str) -> Result<Option<Html<String>>, StoreError> {
    let view = crate::store::contact_view::read(&state.store, id).await?;
    if view.is_empty() {
        return Ok(None);
    }
    let mut body = contact_body(id, &view, now_ms());
    body.push_str(&super::lucky_orange::contact_section(state, id).await?);
    Ok(Some(page(&format!("Contact {id}"), &body)))
}

fn contact_body(id: &str, view: &ContactView, now: i64) -> String {
    let mut b = String::new();
    write!(b, "<h1>Contact {}</h1><p><a href=\"/\">← status</a></p>", esc(id)).ok();
    if view.snapshots.is_empty() {
        b.push_str("<p class=\"muted\">Not in the snapshot (deleted, or never synced).</p>");
    }
    for snapshot in &view.snapshots {
        write!(
            b,
            "<h2>GHL record in location {}</h2><p>first seen {}, snapshot updated {}, GHL dateUpdated {}, \
             tasks/notes read {}</p><pre>{}</pre>",
            esc(&snapshot.location_id),
            age(now, Some(snapshot.first_seen_at)),
            age(now, Some(snapshot.updated_at)),
            snapshot.date_updated_ms.map(iso).unwrap_or_else(|| "—".to_owned()),
            age(now, snapshot.children_synced_at),
            esc(&pretty(snapshot.record.as_ref())),
        )
        .ok();
        write!(b, "<h2>Tasks and notes ({})</h2>", snapshot.children.len()).ok();
        for child in &snapshot.children {
            write!(
                b,
                "<h3>{} {} <span class=\"muted\">({})</span></h3><pre>{}</pre>",
                esc(&child.kind),
                esc(&child.child_id),
                age(now, Some(child.updated_at)),
                esc(&pretty(child.record.as_ref()))
            )
            .ok();
        }
    }
    lusha_section(&mut b, view, now);
    // Lucky Orange identification and replay links join here when that connector exists.
    write!(
        b,
        "<h2>Deliveries ({})</h2><table><tr><th>Connector</th><th>Entity</th><th>Operation</th><th>Status</th>\
         <th>Attempts</th><th>Changed</th><th>Last update</th><th>Last error</th></tr>",
        view.deliveries.len()
    )
    .ok();
    for d in &view.deliveries {
        let class = if d.status == "done" { "ok" } else { "muted" };
        write!(
            b,
            "<tr><td>{}</td><td>{} {}</td><td>{}</td><td class=\"{class}\">{}</td><td class=\"n\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.connector),
            esc(&d.entity),
            esc(&d.entity_id),
            esc(&d.operation),
            esc(&d.status),
            d.attempts,
            age(now, Some(d.changed_at)),
            age(now, Some(d.updated_at)),
            esc(&clip(d.last_error.as_deref().unwrap_or(""), 200)),
        )
        .ok();
    }
    b.push_str("</table>");
    write!(
        b,
        "<h2>Dead letters ({})</h2><table><tr><th>Source</th><th>Connector</th><th>Entity</th><th>Operation</th>\
         <th>Attempts</th><th>When</th><th>Reason</th></tr>",
        view.dead_letters.len()
    )
    .ok();
    for d in &view.dead_letters {
        write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td>\
             <td class=\"bad\">{}</td></tr>",
            esc(&d.source),
            esc(d.connector.as_deref().unwrap_or("")),
            esc(d.entity.as_deref().unwrap_or("")),
            esc(d.entity_id.as_deref().unwrap_or("")),
            esc(d.operation.as_deref().unwrap_or("")),
            d.attempts,
            age(now, Some(d.created_at)),
            esc(&clip(&d.reason, 200)),
        )
        .ok();
    }
    b.push_str("</table>");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(100_000, Some(95_000)), "5s ago");
        assert_eq!(age(10_000_000, Some(0)), "2h 46m ago");
        assert_eq!(age(0, None), "never");
    }

    #[test]
    fn the_chart_is_an_svg_with_one_bar_per_busy_minute() {
        let mut buckets = [0i64; 60];
        buckets[3] = 4;
        buckets[59] = 2;
        let svg = chart(&buckets);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("total 6"));
    }
}
