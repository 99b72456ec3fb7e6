//! The status page (`GET /`, aggregates only, public on the listener) and the contact view
//! (`GET /contacts/{id}`, personal data, admin token only). Server-rendered HTML strings with
//! inline CSS and an inline SVG chart: no scripts, no external assets, no build step.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use secrecy::ExposeSecret;
use sqlx::Row as _;

use super::{ServerState, constant_time_eq, html_escape as esc};
use crate::store::{StoreError, codec, now_ms};

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2rem;color:#222;background:#fafafa}\
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}\
table{border-collapse:collapse;background:#fff;margin:.5rem 0}\
th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}\
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.ok{color:#17692b}.bad{color:#a40e26}.muted{color:#777}\
pre{background:#fff;border:1px solid #ddd;padding:.6rem;overflow:auto;max-height:30rem}\
svg{background:#fff;border:1px solid #ddd}";

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head><body>{body}\
         <p class=\"muted\">ghl-sync {} · generated {}</p></body></html>",
        esc(title),
        env!("CARGO_PKG_VERSION"),
        esc(&iso(now_ms())),
    ))
}

fn iso(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// "3m 20s ago"-style age.
fn age(now: i64, then: Option<i64>) -> String {
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

async fn render_status(state: &ServerState) -> Result<Html<String>, StoreError> {
    let pool = state.store.pool();
    let now = now_ms();
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let mut b = String::new();
    b.push_str("<h1>ghl-sync status</h1>");
    let problems = super::health::not_ready(state).await;
    if problems.is_empty() {
        b.push_str("<p class=\"ok\">Ready.</p>");
    } else {
        write!(b, "<p class=\"bad\">Not ready: {}</p>", esc(&problems.join("; "))).ok();
    }

    // Locations: those in the store plus configured ones the engine has not written yet.
    let configured = &state.config.settings.ghl.locations;
    let mut ids: Vec<String> = sqlx::query_scalar("SELECT id FROM locations").fetch_all(pool).await?;
    ids.extend(configured.iter().filter(|l| l.enabled).map(|l| l.id.clone()));
    ids.sort_unstable();
    ids.dedup();
    let mut locations = Vec::with_capacity(ids.len());
    for id in &ids {
        let config_name = configured.iter().find(|l| &l.id == id).and_then(|l| l.name.clone());
        let row = sqlx::query(
            "SELECT ?1 AS id, COALESCE((SELECT name FROM locations WHERE id = ?1), ?3) AS name, \
               COALESCE((SELECT status FROM locations WHERE id = ?1), 'configured') AS status, \
               (SELECT status_reason FROM locations WHERE id = ?1) AS status_reason, \
               (SELECT watermark_ms FROM cursors c WHERE c.location_id = ?1 AND c.stream = 'contacts') AS watermark, \
               (SELECT requests FROM request_budget r WHERE r.location_id = ?1 AND r.day = ?2) AS requests_today, \
               (SELECT COUNT(*) FROM dirty_contacts d WHERE d.location_id = ?1) AS dirty, \
               (SELECT COUNT(*) FROM contacts k WHERE k.location_id = ?1) AS contacts",
        )
        .bind(id)
        .bind(&today)
        .bind(config_name)
        .fetch_one(pool)
        .await?;
        locations.push(row);
    }
    b.push_str(
        "<h2>Locations</h2><table><tr><th>Location</th><th>Status</th><th>Contacts</th><th>Cursor</th>\
         <th>Lag</th><th>Last run</th><th>Requests today</th><th>Dirty</th></tr>",
    );
    if locations.is_empty() {
        b.push_str("<tr><td colspan=\"8\" class=\"muted\">No locations yet.</td></tr>");
    }
    let budget = state.config.settings.limits.ghl_daily_budget;
    for row in &locations {
        let id: String = row.try_get("id")?;
        let name: Option<String> = row.try_get("name")?;
        let status: String = row.try_get("status")?;
        let reason: Option<String> = row.try_get("status_reason")?;
        let watermark: Option<i64> = row.try_get("watermark")?;
        let requests: Option<i64> = row.try_get("requests_today")?;
        let dirty: i64 = row.try_get("dirty")?;
        let contacts: i64 = row.try_get("contacts")?;
        let run = sqlx::query(
            "SELECT kind, outcome, started_at, finished_at, changes FROM runs WHERE location_id = ? \
             ORDER BY started_at DESC LIMIT 1",
        )
        .bind(&id)
        .fetch_optional(pool)
        .await?;
        let last_run = match run {
            Some(run) => {
                let kind: String = run.try_get("kind")?;
                let outcome: String = run.try_get("outcome")?;
                let started: i64 = run.try_get("started_at")?;
                let changes: i64 = run.try_get("changes")?;
                let class = if outcome == "failed" { "bad" } else { "ok" };
                format!(
                    "{} <span class=\"{class}\">{}</span>, {changes} changes, {}",
                    esc(&kind),
                    esc(&outcome),
                    age(now, Some(started))
                )
            }
            None => "<span class=\"muted\">none</span>".to_owned(),
        };
        let status_class = if matches!(status.as_str(), "active" | "configured") { "ok" } else { "bad" };
        let label = match name {
            Some(name) => format!("{} <span class=\"muted\">{}</span>", esc(&name), esc(&id)),
            None => esc(&id),
        };
        write!(
            b,
            "<tr><td>{label}</td><td class=\"{status_class}\">{}{}</td><td class=\"n\">{contacts}</td>\
             <td>{}</td><td>{}</td><td>{last_run}</td><td class=\"n\">{} / {budget}</td><td class=\"n\">{dirty}</td></tr>",
            esc(&status),
            reason.map(|r| format!(" <span class=\"muted\">({})</span>", esc(&clip(&r, 80)))).unwrap_or_default(),
            watermark.map(iso).unwrap_or_else(|| "—".to_owned()),
            watermark.map(|w| age(now, Some(w)).replace(" ago", "")).unwrap_or_else(|| "—".to_owned()),
            requests.unwrap_or(0),
        )
        .ok();
    }
    b.push_str("</table>");

    // Connectors.
    let hour_ago = now - 3_600_000;
    let connectors = sqlx::query(
        "SELECT connector, \
           SUM(status = 'pending') AS pending, \
           MIN(CASE WHEN status = 'pending' THEN created_at END) AS oldest, \
           SUM(status = 'done' AND updated_at >= ?) AS done_hour, \
           (SELECT COUNT(*) FROM dead_letters d WHERE d.connector = o.connector) AS dead \
         FROM outbox o GROUP BY connector \
         UNION SELECT connector, 0, NULL, 0, COUNT(*) FROM dead_letters \
           WHERE connector IS NOT NULL AND connector NOT IN (SELECT connector FROM outbox) GROUP BY connector \
         ORDER BY 1",
    )
    .bind(hour_ago)
    .fetch_all(pool)
    .await?;
    b.push_str(
        "<h2>Connectors</h2><table><tr><th>Connector</th><th>Queue</th><th>Oldest pending</th>\
         <th>Delivered (1h)</th><th>Dead letters</th></tr>",
    );
    if connectors.is_empty() {
        b.push_str("<tr><td colspan=\"5\" class=\"muted\">Nothing queued or delivered yet.</td></tr>");
    }
    for row in &connectors {
        let connector: String = row.try_get("connector")?;
        let pending: Option<i64> = row.try_get("pending")?;
        let oldest: Option<i64> = row.try_get("oldest")?;
        let done: Option<i64> = row.try_get("done_hour")?;
        let dead: i64 = row.try_get("dead")?;
        let dead_class = if dead > 0 { "n bad" } else { "n" };
        write!(
            b,
            "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"{dead_class}\">{dead}</td></tr>",
            esc(&connector),
            pending.unwrap_or(0),
            if oldest.is_some() { age(now, oldest) } else { "—".to_owned() },
            done.unwrap_or(0),
        )
        .ok();
    }
    b.push_str("</table>");

    // Deliveries per minute, last hour.
    let per_minute = sqlx::query(
        "SELECT (updated_at - ?) / 60000 AS minute, COUNT(*) AS n FROM outbox \
         WHERE status = 'done' AND updated_at >= ? GROUP BY minute",
    )
    .bind(hour_ago)
    .bind(hour_ago)
    .fetch_all(pool)
    .await?;
    let mut buckets = [0i64; 60];
    for row in &per_minute {
        let minute: i64 = row.try_get("minute")?;
        let n: i64 = row.try_get("n")?;
        if let Some(slot) = usize::try_from(minute).ok().and_then(|m| buckets.get_mut(m)) {
            *slot += n;
        }
    }
    b.push_str("<h2>Deliveries per minute (last hour)</h2>");
    b.push_str(&chart(&buckets));

    // Recent errors (run errors and dead-letter reasons carry ids, never personal data).
    let errors = sqlx::query(
        "SELECT at, origin, message FROM ( \
           SELECT COALESCE(finished_at, started_at) AS at, 'run ' || kind || ' ' || location_id AS origin, \
                  error AS message FROM runs WHERE error IS NOT NULL \
           UNION ALL \
           SELECT created_at, 'dead letter ' || COALESCE(connector, source), reason FROM dead_letters \
         ) ORDER BY at DESC LIMIT 15",
    )
    .fetch_all(pool)
    .await?;
    b.push_str("<h2>Recent errors</h2>");
    if errors.is_empty() {
        b.push_str("<p class=\"muted\">None.</p>");
    } else {
        b.push_str("<table><tr><th>When</th><th>Where</th><th>Error</th></tr>");
        for row in &errors {
            let at: i64 = row.try_get("at")?;
            let origin: String = row.try_get("origin")?;
            let message: String = row.try_get("message")?;
            write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                age(now, Some(at)),
                esc(&origin),
                esc(&clip(&message, 200))
            )
            .ok();
        }
        b.push_str("</table>");
    }
    Ok(page("ghl-sync status", &b))
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
fn authorise(state: &ServerState, headers: &HeaderMap) -> Result<(), StatusCode> {
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
async fn lusha_section(b: &mut String, pool: &sqlx::SqlitePool, id: &str, now: i64) -> Result<(), StoreError> {
    let cached = sqlx::query(
        "SELECT location_id, outcome, lusha_id, reveal_set, credits, enriched_at, written_at, result FROM lusha_cache \
         WHERE contact_id = ? ORDER BY enriched_at DESC",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let leads = sqlx::query(
        "SELECT location_id, lead_id, search, action, credits, updated_at FROM lusha_leads WHERE contact_id = ? \
         ORDER BY updated_at DESC",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    if cached.is_empty() && leads.is_empty() {
        return Ok(());
    }
    write!(
        b,
        "<h2>Lusha ({})</h2><table><tr><th>Outcome</th><th>Lusha id</th><th>Revealed</th><th>Credits</th>\
         <th>Enriched</th><th>Written to GHL</th></tr>",
        cached.len()
    )
    .ok();
    let mut results = Vec::new();
    for row in &cached {
        let outcome: String = row.try_get("outcome")?;
        let lusha_id: Option<String> = row.try_get("lusha_id")?;
        let reveal: String = row.try_get("reveal_set")?;
        let credits: i64 = row.try_get("credits")?;
        let enriched: i64 = row.try_get("enriched_at")?;
        let written: Option<i64> = row.try_get("written_at")?;
        if let Some(result) = row.try_get::<Option<Vec<u8>>, _>("result")? {
            results.push(result);
        }
        // enriched_at 0: expired by a signal (refreshed by Lusha id on the next change).
        let enriched = if enriched == 0 { "expired by a signal".to_owned() } else { age(now, Some(enriched)) };
        write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{credits}</td><td>{}</td><td>{}</td></tr>",
            esc(&outcome),
            esc(lusha_id.as_deref().unwrap_or("—")),
            esc(&reveal),
            esc(&enriched),
            age(now, written),
        )
        .ok();
    }
    b.push_str("</table>");
    for lead in &leads {
        let location: String = lead.try_get("location_id")?;
        let search: String = lead.try_get("search")?;
        let action: Option<String> = lead.try_get("action")?;
        let credits: i64 = lead.try_get("credits")?;
        let at: i64 = lead.try_get("updated_at")?;
        write!(
            b,
            "<p>Imported as a Lusha lead from search <b>{}</b> into {} ({}, {credits} credit(s), {}).</p>",
            esc(&search),
            esc(&location),
            esc(action.as_deref().unwrap_or("pending")),
            age(now, Some(at)),
        )
        .ok();
    }
    if let Some(latest) = results.first() {
        write!(b, "<details><summary>Latest Lusha result</summary><pre>{}</pre></details>", esc(&pretty(latest))).ok();
    }
    Ok(())
}

fn pretty(record: &[u8]) -> String {
    match codec::unpack(record) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_default(),
        Err(_) => "(record does not decode)".to_owned(),
    }
}

async fn render_contact(state: &ServerState, id: &str) -> Result<Option<Html<String>>, StoreError> {
    let pool = state.store.pool();
    let now = now_ms();
    let contacts = sqlx::query(
        "SELECT location_id, record, date_updated_ms, children_synced_at, first_seen_at, updated_at \
         FROM contacts WHERE contact_id = ? ORDER BY location_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let outbox = sqlx::query(
        "SELECT connector, entity, entity_id, operation, status, attempts, last_error, changed_at, updated_at \
         FROM outbox WHERE contact_id = ? OR (entity = 'contact' AND entity_id = ?) ORDER BY changed_at DESC, id DESC",
    )
    .bind(id)
    .bind(id)
    .fetch_all(pool)
    .await?;
    let dead = sqlx::query(
        "SELECT source, connector, entity, entity_id, operation, attempts, reason, created_at FROM dead_letters \
         WHERE contact_id = ? OR (entity = 'contact' AND entity_id = ?) ORDER BY created_at DESC, id DESC",
    )
    .bind(id)
    .bind(id)
    .fetch_all(pool)
    .await?;
    if contacts.is_empty() && outbox.is_empty() && dead.is_empty() {
        return Ok(None);
    }
    let mut b = String::new();
    write!(b, "<h1>Contact {}</h1><p><a href=\"/\">← status</a></p>", esc(id)).ok();
    if contacts.is_empty() {
        b.push_str("<p class=\"muted\">Not in the snapshot (deleted, or never synced).</p>");
    }
    for row in &contacts {
        let location: String = row.try_get("location_id")?;
        let record: Vec<u8> = row.try_get("record")?;
        let date_updated: Option<i64> = row.try_get("date_updated_ms")?;
        let children_at: Option<i64> = row.try_get("children_synced_at")?;
        let first_seen: i64 = row.try_get("first_seen_at")?;
        let updated: i64 = row.try_get("updated_at")?;
        write!(
            b,
            "<h2>GHL record in location {}</h2><p>first seen {}, snapshot updated {}, GHL dateUpdated {}, \
             tasks/notes read {}</p><pre>{}</pre>",
            esc(&location),
            age(now, Some(first_seen)),
            age(now, Some(updated)),
            date_updated.map(iso).unwrap_or_else(|| "—".to_owned()),
            age(now, children_at),
            esc(&pretty(&record)),
        )
        .ok();
        let children = sqlx::query(
            "SELECT kind, child_id, record, updated_at FROM children WHERE location_id = ? AND contact_id = ? \
             ORDER BY kind, updated_at DESC",
        )
        .bind(&location)
        .bind(id)
        .fetch_all(pool)
        .await?;
        write!(b, "<h2>Tasks and notes ({})</h2>", children.len()).ok();
        for child in &children {
            let kind: String = child.try_get("kind")?;
            let child_id: String = child.try_get("child_id")?;
            let record: Vec<u8> = child.try_get("record")?;
            let updated: i64 = child.try_get("updated_at")?;
            write!(
                b,
                "<h3>{} {} <span class=\"muted\">({})</span></h3><pre>{}</pre>",
                esc(&kind),
                esc(&child_id),
                age(now, Some(updated)),
                esc(&pretty(&record))
            )
            .ok();
        }
    }
    lusha_section(&mut b, pool, id, now).await?;
    // Lucky Orange identification and replay links join here when that connector exists.
    write!(
        b,
        "<h2>Deliveries ({})</h2><table><tr><th>Connector</th><th>Entity</th><th>Operation</th><th>Status</th>\
         <th>Attempts</th><th>Changed</th><th>Last update</th><th>Last error</th></tr>",
        outbox.len()
    )
    .ok();
    for row in &outbox {
        let connector: String = row.try_get("connector")?;
        let entity: String = row.try_get("entity")?;
        let entity_id: String = row.try_get("entity_id")?;
        let operation: String = row.try_get("operation")?;
        let status: String = row.try_get("status")?;
        let attempts: i64 = row.try_get("attempts")?;
        let last_error: Option<String> = row.try_get("last_error")?;
        let changed: i64 = row.try_get("changed_at")?;
        let updated: i64 = row.try_get("updated_at")?;
        let class = if status == "done" { "ok" } else { "muted" };
        write!(
            b,
            "<tr><td>{}</td><td>{} {}</td><td>{}</td><td class=\"{class}\">{}</td><td class=\"n\">{attempts}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&connector),
            esc(&entity),
            esc(&entity_id),
            esc(&operation),
            esc(&status),
            age(now, Some(changed)),
            age(now, Some(updated)),
            esc(&clip(last_error.as_deref().unwrap_or(""), 200)),
        )
        .ok();
    }
    b.push_str("</table>");
    write!(
        b,
        "<h2>Dead letters ({})</h2><table><tr><th>Source</th><th>Connector</th><th>Entity</th><th>Operation</th>\
         <th>Attempts</th><th>When</th><th>Reason</th></tr>",
        dead.len()
    )
    .ok();
    for row in &dead {
        let source: String = row.try_get("source")?;
        let connector: Option<String> = row.try_get("connector")?;
        let entity: Option<String> = row.try_get("entity")?;
        let entity_id: Option<String> = row.try_get("entity_id")?;
        let operation: Option<String> = row.try_get("operation")?;
        let attempts: i64 = row.try_get("attempts")?;
        let reason: String = row.try_get("reason")?;
        let created: i64 = row.try_get("created_at")?;
        write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td class=\"n\">{attempts}</td><td>{}</td>\
             <td class=\"bad\">{}</td></tr>",
            esc(&source),
            esc(connector.as_deref().unwrap_or("")),
            esc(entity.as_deref().unwrap_or("")),
            esc(entity_id.as_deref().unwrap_or("")),
            esc(operation.as_deref().unwrap_or("")),
            age(now, Some(created)),
            esc(&clip(&reason, 200)),
        )
        .ok();
    }
    b.push_str("</table>");
    Ok(Some(page(&format!("Contact {id}"), &b)))
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
