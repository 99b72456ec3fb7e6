//! `ghl-sync sync --once` and `ghl-sync status`.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use crate::app::App;
use crate::store::{Store, now_ms};
use crate::sync::engine::{Progress, RunOptions};

/// A terminal progress bar for pages and children.
struct Bar {
    bar: ProgressBar,
}

impl Progress for Bar {
    fn page(&self, _location: &str, contacts: u64, total: Option<u64>) {
        if let Some(total) = total {
            let length = self.bar.length().unwrap_or(0).max(total);
            self.bar.set_length(length);
        }
        self.bar.inc(contacts);
    }

    fn children(&self, _location: &str, contacts: u64) {
        self.bar.set_message(format!("tasks/notes read for {contacts} more contact(s)"));
    }
}

/// `sync --once [--location ID] [--dry-run]`: one run, a summary, exit 1 if any location failed.
pub async fn sync_once(app: App, location: Option<&str>, dry_run: bool) -> anyhow::Result<bool> {
    let app = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} contacts {wide_bar} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let progress: Arc<dyn Progress> = Arc::new(Bar { bar });
        app.with_progress(progress)
    } else {
        app
    };
    let results = app.sync_once(location, RunOptions { dry_run, skip_sweep: false }).await?;
    let mut ok = true;
    if dry_run {
        println!("Dry run: nothing was written and no connector was called.");
    }
    for (location, result) in results {
        match result {
            Ok(summary) => {
                println!(
                    "{location}: {} page(s), {} contact(s) read, {} changed, {} with tasks/notes read, {} request(s), {} set aside",
                    summary.pages,
                    summary.contacts_seen,
                    summary.contacts_changed,
                    summary.children_read_for,
                    summary.requests,
                    summary.dead_letters
                );
                let verb = if dry_run { "would be queued" } else { "queued" };
                if summary.events.is_empty() {
                    println!("  no deliveries {verb}");
                }
                for (event, count) in &summary.events {
                    println!("  {event}: {count} deliver(ies) {verb}");
                }
            }
            Err(error) => {
                ok = false;
                println!("{location}: FAILED: {error}");
            }
        }
    }
    app.store.close().await;
    Ok(ok)
}

/// One location's state for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LocationStatus {
    pub id: String,
    pub status: String,
    pub reason: Option<String>,
    pub backfill_done: bool,
    pub watermark_ms: Option<i64>,
    pub cursor_age_secs: Option<i64>,
    pub contacts: i64,
    pub last_run_at: Option<i64>,
    pub last_run_outcome: Option<String>,
    pub last_error: Option<String>,
    pub requests_today: i64,
}

/// One connector's queue for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectorStatus {
    pub connector: String,
    pub pending: i64,
    pub oldest_pending_age_secs: Option<i64>,
    pub delivered: i64,
    pub dead_letters: i64,
}

/// The Lusha connector's books for `status` (absent until it has done anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LushaStatus {
    /// Credits spent today (UTC) and Lusha calls that spent them.
    pub credits_today: i64,
    pub calls_today: i64,
    /// Cached answers: contacts found / not found (or restricted).
    pub found: i64,
    pub not_found: i64,
    /// Prospecting leads by state.
    pub leads_imported: i64,
    pub leads_waiting: i64,
    pub leads_failed: i64,
    /// Signals received and not yet written to GHL.
    pub signals_pending: i64,
}

/// Everything `status` shows, also used by the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub locations: Vec<LocationStatus>,
    pub connectors: Vec<ConnectorStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lusha: Option<LushaStatus>,
}

async fn read_lusha_status(store: &Store, day: &str) -> Result<Option<LushaStatus>, sqlx::Error> {
    let count = |sql: &'static str| async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(store.pool()).await };
    let (credits_today, calls_today): (i64, i64) =
        sqlx::query_as("SELECT COALESCE(SUM(spent), 0), COALESCE(SUM(calls), 0) FROM lusha_credits WHERE day = ?")
            .bind(day)
            .fetch_one(store.pool())
            .await?;
    let status = LushaStatus {
        credits_today,
        calls_today,
        found: count("SELECT COUNT(*) FROM lusha_cache WHERE found = 1").await?,
        not_found: count("SELECT COUNT(*) FROM lusha_cache WHERE found = 0").await?,
        leads_imported: count("SELECT COUNT(*) FROM lusha_leads WHERE status = 'imported'").await?,
        leads_waiting: count("SELECT COUNT(*) FROM lusha_leads WHERE status = 'enriched'").await?,
        leads_failed: count("SELECT COUNT(*) FROM lusha_leads WHERE status = 'failed'").await?,
        signals_pending: count("SELECT COUNT(*) FROM lusha_signals WHERE processed_at IS NULL").await?,
    };
    Ok((status != LushaStatus::default()).then_some(status))
}

/// Reads the status from the store alone (no GHL calls).
pub async fn read_status(store: &Store) -> anyhow::Result<Status> {
    let now = now_ms();
    let day: String = crate::domain::normalize::format_timestamp_ms(now).chars().take(10).collect();
    let rows: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, status, status_reason FROM locations ORDER BY id").fetch_all(store.pool()).await?;
    let mut locations = Vec::with_capacity(rows.len());
    for (id, status, reason) in rows {
        let cursor: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT watermark_ms, backfill_done, updated_at FROM cursors WHERE location_id = ? AND stream = 'contacts'",
        )
        .bind(&id)
        .fetch_optional(store.pool())
        .await?;
        let contacts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE location_id = ?")
            .bind(&id)
            .fetch_one(store.pool())
            .await?;
        let last_run: Option<(Option<i64>, String, Option<String>)> = sqlx::query_as(
            "SELECT finished_at, outcome, error FROM runs WHERE location_id = ? ORDER BY id DESC LIMIT 1",
        )
        .bind(&id)
        .fetch_optional(store.pool())
        .await?;
        let requests_today: Option<i64> =
            sqlx::query_scalar("SELECT requests FROM request_budget WHERE location_id = ? AND day = ?")
                .bind(&id)
                .bind(&day)
                .fetch_optional(store.pool())
                .await?;
        locations.push(LocationStatus {
            status,
            reason,
            backfill_done: cursor.is_some_and(|c| c.1 == 1),
            watermark_ms: cursor.map(|c| c.0),
            cursor_age_secs: cursor.map(|c| (now - c.2) / 1000),
            contacts,
            last_run_at: last_run.as_ref().and_then(|r| r.0),
            last_run_outcome: last_run.as_ref().map(|r| r.1.clone()),
            last_error: last_run.and_then(|r| r.2),
            requests_today: requests_today.unwrap_or(0),
            id,
        });
    }
    let rows: Vec<(String, i64, Option<i64>, i64)> = sqlx::query_as(
        "SELECT connector, SUM(status = 'pending'), MIN(CASE WHEN status = 'pending' THEN created_at END), SUM(status = 'done') \
         FROM outbox GROUP BY connector ORDER BY connector",
    )
    .fetch_all(store.pool())
    .await?;
    let mut connectors = Vec::with_capacity(rows.len());
    for (connector, pending, oldest, delivered) in rows {
        let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE connector = ?")
            .bind(&connector)
            .fetch_one(store.pool())
            .await?;
        connectors.push(ConnectorStatus {
            connector,
            pending,
            oldest_pending_age_secs: oldest.map(|o| (now - o) / 1000),
            delivered,
            dead_letters: dead,
        });
    }
    let lusha = read_lusha_status(store, &day).await?;
    Ok(Status { locations, connectors, lusha })
}

/// `status [--json]`.
pub async fn print_status(store: &Store, json: bool) -> anyhow::Result<()> {
    let status = read_status(store).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("LOCATIONS");
    if status.locations.is_empty() {
        println!("  none configured");
    }
    for l in &status.locations {
        let backfill = if l.backfill_done { "backfill done" } else { "backfill in progress" };
        let cursor = l.cursor_age_secs.map_or("never polled".to_owned(), |s| format!("cursor moved {s}s ago"));
        println!(
            "  {} [{}] {} contacts, {backfill}, {cursor}, {} request(s) today",
            l.id, l.status, l.contacts, l.requests_today
        );
        if let Some(reason) = &l.reason {
            println!("    reason: {reason}");
        }
        if let (Some(outcome), Some(at)) = (&l.last_run_outcome, l.last_run_at) {
            println!("    last run: {outcome}, {}s ago", (now_ms() - at) / 1000);
        }
        if let Some(error) = &l.last_error {
            println!("    last error: {error}");
        }
    }
    println!("CONNECTORS");
    if status.connectors.is_empty() {
        println!("  no deliveries queued yet");
    }
    for c in &status.connectors {
        let oldest = c.oldest_pending_age_secs.map_or(String::new(), |s| format!(", oldest pending {s}s"));
        println!(
            "  {}: {} pending{oldest}, {} delivered, {} dead letter(s)",
            c.connector, c.pending, c.delivered, c.dead_letters
        );
    }
    if let Some(l) = &status.lusha {
        println!("LUSHA");
        println!("  credits today (UTC): {} in {} call(s)", l.credits_today, l.calls_today);
        println!("  enriched contacts: {} found, {} not found (cached; never paid twice)", l.found, l.not_found);
        println!(
            "  leads: {} imported, {} enriched and waiting for GHL, {} failed",
            l.leads_imported, l.leads_waiting, l.leads_failed
        );
        if l.signals_pending > 0 {
            println!("  signals waiting for GHL: {}", l.signals_pending);
        }
    }
    Ok(())
}
