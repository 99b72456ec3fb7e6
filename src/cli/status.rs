//! `ghl-sync status [--json]`: the status read model (`store::status`) printed for a
//! terminal, or as JSON. Reads the store only; works next to a running daemon.

use crate::config::Config;
use crate::store::Store;
use crate::store::locations::ConfiguredLocation;
use crate::store::status::{self, RunStatus, Status};

/// The configured locations as the read model wants them.
pub fn configured_locations(config: &Config) -> Vec<ConfiguredLocation> {
    config
        .settings
        .ghl
        .locations
        .iter()
        .map(|l| ConfiguredLocation {
            id: l.id.clone(),
            name: l.name.clone(),
            enabled: l.enabled,
            pit: l.auth == crate::config::LocationAuth::Pit,
        })
        .collect()
}

/// `status [--json]`.
pub async fn print_status(store: &Store, config: &Config, json: bool) -> anyhow::Result<()> {
    let status = status::read(store, &configured_locations(config)).await?;
    if json {
        let mut value = serde_json::to_value(&status)?;
        if let Some(object) = value.as_object_mut() {
            // GHL, Lusha and Lucky Orange side by side (the `/insights` figures; counts only).
            let now = crate::store::now_ms();
            let mut insights = serde_json::Map::new();
            for days in [7i64, 30] {
                let figures = crate::store::lucky_orange::figures(store, now - days * 86_400_000, now / 1000).await?;
                insights.insert(format!("{days}d"), serde_json::to_value(figures)?);
            }
            object.insert("insights".to_owned(), serde_json::Value::Object(insights));
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", render_text(&status));
    }
    Ok(())
}

/// A run in a few words: "contacts running: 12 page(s), 1200 read, 30 changed, 25 request(s), started 58s ago".
pub fn describe_run(run: &RunStatus, now: i64) -> String {
    let mut figures = format!(
        "{} page(s), {} read, {} changed, {} request(s)",
        run.pages, run.records_seen, run.changes, run.requests
    );
    if run.rate_limited > 0 {
        figures.push_str(&format!(", {} rate-limited (429)", run.rate_limited));
    }
    match run.finished_at {
        None => {
            format!("{} {}: {figures}, started {}s ago", run.kind, run.outcome, (now - run.started_at).max(0) / 1000)
        }
        Some(finished) => {
            format!("{} {}: {figures}, finished {}s ago", run.kind, run.outcome, (now - finished).max(0) / 1000)
        }
    }
}

/// The text form of `status`.
pub fn render_text(status: &Status) -> String {
    use std::fmt::Write as _;
    let now = status.generated_at;
    let mut out = String::new();
    // Writing to a String cannot fail.
    if let Some(reason) = &status.store.failing {
        writeln!(out, "STORE CANNOT WRITE: {reason}").ok();
    }
    writeln!(out, "LOCATIONS").ok();
    if status.locations.is_empty() {
        writeln!(out, "  none configured").ok();
    }
    for l in &status.locations {
        let backfill = if l.backfill_done { "backfill done" } else { "backfill in progress" };
        let cursor = l.cursor_age_secs.map_or("never polled".to_owned(), |s| format!("cursor moved {s}s ago"));
        writeln!(
            out,
            "  {} [{}] {} contacts, {backfill}, {cursor}, today (UTC): {} request(s), {} rate-limited (429), {} webhook(s)",
            l.id, l.status, l.contacts, l.requests_today, l.rate_limited_today, l.webhooks_today
        )
        .ok();
        if let Some(reason) = &l.reason {
            writeln!(out, "    reason: {reason}").ok();
        }
        if let Some(run) = &l.last_run {
            writeln!(out, "    last run: {}", describe_run(run, now)).ok();
        }
        if let Some(error) = &l.last_error {
            writeln!(out, "    last error: {error}").ok();
        }
    }
    if !status.replicas.is_empty() {
        writeln!(out, "REPLICAS (daemons sharing the PostgreSQL store)").ok();
        for r in &status.replicas {
            let state = match r.stopped_at {
                Some(at) => format!("stopped {}s ago", (now - at).max(0) / 1000),
                None => format!("heartbeat {}s ago", (now - r.heartbeat_at).max(0) / 1000),
            };
            writeln!(
                out,
                "  {} (host {}, pid {}, v{}): {state}, {} lease(s)",
                r.id, r.host, r.pid, r.version, r.leases
            )
            .ok();
        }
        for l in &status.leases {
            match &l.holder {
                Some(holder) if l.expires_at > now => writeln!(
                    out,
                    "  {} leased by {holder}, renewed {}s ago, expires in {}s, moved {} time(s)",
                    l.location_id,
                    (now - l.renewed_at).max(0) / 1000,
                    (l.expires_at - now) / 1000,
                    l.moves
                ),
                _ => writeln!(out, "  {} not leased (a replica claims it at its next heartbeat)", l.location_id),
            }
            .ok();
        }
    }
    if !status.incidents.is_empty() {
        writeln!(out, "OPEN INCIDENTS (alerts)").ok();
        for incident in &status.incidents {
            let since = (now - incident.opened_at).max(0) / 1000;
            writeln!(out, "  [{}] {} (open {since}s): {}", incident.alert, incident.condition_key, incident.summary)
                .ok();
        }
    }
    writeln!(out, "CONNECTORS").ok();
    if status.connectors.is_empty() {
        writeln!(out, "  no deliveries queued yet").ok();
    }
    for c in &status.connectors {
        let oldest = c.oldest_pending_age_secs.map_or(String::new(), |s| format!(", oldest pending {s}s"));
        writeln!(
            out,
            "  {}: {} pending{oldest}, {} delivered, {} dead letter(s)",
            c.connector, c.pending, c.delivered, c.dead_letters
        )
        .ok();
        if let Some(error) = &c.last_error {
            let kind = if error.kind == "dead_letter" { "dead letter" } else { "retrying" };
            writeln!(out, "    last error ({kind}, {}s ago): {}", (now - error.at).max(0) / 1000, error.message).ok();
        }
    }
    if let Some(l) = &status.lusha {
        writeln!(out, "LUSHA").ok();
        writeln!(out, "  credits today (UTC): {} in {} call(s)", l.credits_today, l.calls_today).ok();
        writeln!(out, "  enriched contacts: {} found, {} not found (cached; never paid twice)", l.found, l.not_found)
            .ok();
        writeln!(
            out,
            "  leads: {} imported, {} enriched and waiting for GHL, {} failed",
            l.leads_imported, l.leads_waiting, l.leads_failed
        )
        .ok();
        if l.signals_pending > 0 {
            writeln!(out, "  signals waiting for GHL: {}", l.signals_pending).ok();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::status::{ConnectorError, ConnectorStatus, LocationStatus, StoreHealth, Totals};

    #[test]
    fn the_text_shows_a_running_pass_todays_counts_and_each_connectors_last_error() {
        let run = RunStatus {
            id: 1,
            kind: "contacts".into(),
            outcome: "running".into(),
            started_at: 0,
            finished_at: None,
            pages: 12,
            records_seen: 1200,
            changes: 30,
            requests: 2345,
            rate_limited: 2,
            progress_at: Some(55_000),
            error: None,
        };
        let location = LocationStatus {
            id: "loc".into(),
            name: None,
            status: "active".into(),
            reason: None,
            in_store: true,
            backfill_done: false,
            watermark_ms: None,
            cursor_age_secs: None,
            contacts: 1200,
            dirty: 0,
            requests_today: 2345,
            rate_limited_today: 2,
            webhooks_today: 7,
            last_run: Some(run),
            last_run_at: None,
            last_run_outcome: Some("running".into()),
            last_error: None,
            last_ok_at: None,
            streams: Vec::new(),
        };
        let connector = ConnectorStatus {
            connector: "webhook.crm".into(),
            pending: 4,
            retrying: 4,
            oldest_pending_at: Some(0),
            oldest_pending_age_secs: Some(58),
            delivered: 0,
            delivered_last_hour: 0,
            dead_letters: 0,
            last_error: Some(ConnectorError { at: 50_000, kind: "retrying", message: "connection refused".into() }),
        };
        let status = Status {
            generated_at: 58_000,
            day: "1970-01-01".into(),
            store: StoreHealth { writable: true, failing: None, last_write_ok_at: None },
            locations: vec![location],
            connectors: vec![connector],
            unattributed_dead_letters: Vec::new(),
            totals: Totals::default(),
            deliveries_per_minute: vec![0; 60],
            recent_errors: Vec::new(),
            lusha: None,
            incidents: Vec::new(),
            replicas: Vec::new(),
            leases: Vec::new(),
        };
        let text = render_text(&status);
        assert!(text.contains("today (UTC): 2345 request(s), 2 rate-limited (429), 7 webhook(s)"), "{text}");
        assert!(
            text.contains("last run: contacts running: 12 page(s), 1200 read, 30 changed, 2345 request(s), 2 rate-limited (429), started 58s ago"),
            "{text}"
        );
        assert!(text.contains("last error (retrying, 8s ago): connection refused"), "{text}");
    }
}
