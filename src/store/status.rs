//! The status read model: one typed answer to "what is the daemon doing?", read from the
//! store alone (no GHL calls) and shared by every screen that shows it: `ghl-sync status`
//! (`cli::status`), the status page and `/status.json` (`server::pages`), the `/metrics`
//! gauges (`server::prometheus`) and the demo's terminal line (`demo`).
//!
//! Contract:
//! - [`read`] takes one read transaction on the read pool, so every figure comes from the
//!   same snapshot (WAL), while the daemon keeps writing. It never takes the writer.
//! - Figures are as fresh as the store: a run's pages, changes and requests move while it
//!   runs because the engine records its progress per page (`store::runs`), and the
//!   per-location daily counters (requests, 429s, webhooks) are written as they happen.
//! - Nothing here holds personal data: ids, counts, times and error texts (which carry ids
//!   and status codes, never record content).
//! - Screens format; this module only reads. Times are epoch milliseconds.

use serde::Serialize;
use sqlx::SqliteConnection;

use super::locations::ConfiguredLocation;
use super::{Store, StoreError, WriteHealth, now_ms};

/// Everything the status screens show.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// When this was read (epoch ms) and the UTC day its "today" figures are for.
    pub generated_at: i64,
    pub day: String,
    /// Whether the store can write (from the writer's last transaction).
    pub store: StoreHealth,
    pub locations: Vec<LocationStatus>,
    pub connectors: Vec<ConnectorStatus>,
    /// Dead letters that belong to no connector (unreadable records, webhooks), by source.
    pub unattributed_dead_letters: Vec<SourceCount>,
    pub totals: Totals,
    /// Deliveries per minute over the last hour, oldest first (60 entries).
    pub deliveries_per_minute: Vec<i64>,
    /// The latest run errors and dead-letter reasons, newest first.
    pub recent_errors: Vec<RecentError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lusha: Option<LushaStatus>,
    /// Open operator-alert incidents (`[[alerts]]`), oldest first.
    pub incidents: Vec<OpenIncident>,
}

/// An open operator-alert incident (ids, counts and thresholds; no personal data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct OpenIncident {
    pub alert: String,
    /// `kind:subject`, e.g. `dead_letters:webhook.crm`.
    pub condition_key: String,
    pub summary: String,
    pub opened_at: i64,
}

/// The writer's health, from [`Store::write_health`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreHealth {
    pub writable: bool,
    /// Why the last write failed (no write succeeded since).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
    pub last_write_ok_at: Option<i64>,
}

impl From<WriteHealth> for StoreHealth {
    fn from(health: WriteHealth) -> Self {
        Self { writable: health.failing.is_none(), failing: health.failing, last_write_ok_at: health.last_ok_ms }
    }
}

/// One location's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocationStatus {
    pub id: String,
    pub name: Option<String>,
    /// The row's status, or `configured` for a configured location without a row yet.
    pub status: String,
    pub reason: Option<String>,
    /// Whether the location has a row in the store (false: only configured so far).
    pub in_store: bool,
    pub backfill_done: bool,
    /// The contacts stream's watermark and how long ago its cursor moved.
    pub watermark_ms: Option<i64>,
    pub cursor_age_secs: Option<i64>,
    pub contacts: i64,
    /// Contacts waiting for a re-read after a webhook hint.
    pub dirty: i64,
    /// GHL requests, GHL 429 answers and GHL webhooks received today (UTC).
    pub requests_today: i64,
    pub rate_limited_today: i64,
    pub webhooks_today: i64,
    /// The latest run (running or finished).
    pub last_run: Option<RunStatus>,
    /// When the latest run finished, its outcome and error (flat copies of `last_run` kept
    /// for `status --json` readers).
    pub last_run_at: Option<i64>,
    pub last_run_outcome: Option<String>,
    pub last_error: Option<String>,
    /// When the latest successful contacts pass finished (the sync lag is measured from it).
    pub last_ok_at: Option<i64>,
    /// Every cursor of the location (contacts, reconcile, sweep).
    pub streams: Vec<StreamCursor>,
}

/// A sync run as recorded in `runs`: while it runs, its figures are its progress so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct RunStatus {
    pub id: i64,
    /// contacts | children | reconcile | dirty
    pub kind: String,
    /// running | ok | failed
    pub outcome: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub pages: i64,
    pub records_seen: i64,
    pub changes: i64,
    pub requests: i64,
    pub rate_limited: i64,
    /// When the run last recorded progress (a page committed).
    pub progress_at: Option<i64>,
    pub error: Option<String>,
}

impl RunStatus {
    pub fn is_running(&self) -> bool {
        self.outcome == "running"
    }
}

/// One cursor of a location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamCursor {
    pub stream: String,
    pub watermark_ms: i64,
    pub backfill_done: bool,
    pub updated_at: i64,
}

/// One connector's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectorStatus {
    pub connector: String,
    pub pending: i64,
    /// Pending rows that failed at least once and wait for another attempt.
    pub retrying: i64,
    pub oldest_pending_at: Option<i64>,
    pub oldest_pending_age_secs: Option<i64>,
    /// Delivered rows still in the outbox, in all and in the last hour.
    pub delivered: i64,
    pub delivered_last_hour: i64,
    pub dead_letters: i64,
    /// The newest failure: a pending row's last attempt, or the newest dead letter.
    pub last_error: Option<ConnectorError>,
}

/// Why a connector's delivery last failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectorError {
    pub at: i64,
    /// `retrying` (a pending row's last attempt) or `dead_letter`.
    pub kind: &'static str,
    pub message: String,
}

/// A count of dead letters by source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceCount {
    pub source: String,
    pub dead_letters: i64,
}

/// Store-wide counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub contacts: i64,
    /// Tasks and notes.
    pub children: i64,
    pub dirty: i64,
    pub pending: i64,
    pub dead_letters: i64,
}

/// A run error or a dead-letter reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecentError {
    pub at: i64,
    /// `run <kind> <location>` or `dead letter <connector or source>`.
    pub origin: String,
    pub message: String,
}

/// The Lusha connector's books (absent until it has done anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LushaStatus {
    /// Credits spent today (UTC) and Lusha calls that spent them.
    pub credits_today: i64,
    pub calls_today: i64,
    /// Cached answers: found / not found (or restricted).
    pub found: i64,
    pub not_found: i64,
    /// Distinct contacts with a found answer.
    pub enriched_contacts: i64,
    /// Prospecting leads by state.
    pub leads_imported: i64,
    pub leads_waiting: i64,
    pub leads_failed: i64,
    /// Signals received and not yet written to GHL.
    pub signals_pending: i64,
}

/// Whether the store answers a trivial read.
pub async fn ping(store: &Store) -> Result<(), StoreError> {
    sqlx::query_scalar::<_, i64>("SELECT 1").fetch_one(store.read_pool()).await?;
    Ok(())
}

/// Reads the status. `configured` adds configured (enabled) locations that have no row yet
/// and supplies names the store does not have.
pub async fn read(store: &Store, configured: &[ConfiguredLocation]) -> Result<Status, StoreError> {
    let now = now_ms();
    let day = super::daily::utc_day(now);
    // One read transaction: every figure from the same snapshot.
    let mut tx = store.read_pool().begin().await?;
    let locations = read_locations(&mut tx, configured, now, &day).await?;
    let (connectors, unattributed_dead_letters) = read_connectors(&mut tx, now).await?;
    let totals = Totals {
        contacts: count(&mut tx, "SELECT COUNT(*) FROM contacts").await?,
        children: count(&mut tx, "SELECT COUNT(*) FROM children").await?,
        dirty: count(&mut tx, "SELECT COUNT(*) FROM dirty_contacts").await?,
        pending: connectors.iter().map(|c| c.pending).sum(),
        dead_letters: connectors.iter().map(|c| c.dead_letters).sum::<i64>()
            + unattributed_dead_letters.iter().map(|s| s.dead_letters).sum::<i64>(),
    };
    let deliveries_per_minute = read_deliveries_per_minute(&mut tx, now).await?;
    let recent_errors = read_recent_errors(&mut tx).await?;
    let lusha = read_lusha(&mut tx, &day).await?;
    let incidents: Vec<OpenIncident> = sqlx::query_as(
        "SELECT alert, condition_key, summary, opened_at FROM incidents WHERE resolved_at IS NULL ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok(Status {
        generated_at: now,
        day,
        store: store.write_health().into(),
        locations,
        connectors,
        unattributed_dead_letters,
        totals,
        deliveries_per_minute,
        recent_errors,
        lusha,
        incidents,
    })
}

async fn count(conn: &mut SqliteConnection, sql: &'static str) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(conn).await?)
}

type LocationRowTuple = (String, Option<String>, String, Option<String>);
async fn read_locations(
    conn: &mut SqliteConnection,
    configured: &[ConfiguredLocation],
    now: i64,
    day: &str,
) -> Result<Vec<LocationStatus>, StoreError> {
    let rows: Vec<LocationRowTuple> =
        sqlx::query_as("SELECT id, name, status, status_reason FROM locations ORDER BY id")
            .fetch_all(&mut *conn)
            .await?;
    let mut ids: Vec<(String, Option<LocationRowTuple>)> =
        rows.into_iter().map(|row| (row.0.clone(), Some(row))).collect();
    for location in configured.iter().filter(|l| l.enabled) {
        if !ids.iter().any(|(id, _)| *id == location.id) {
            ids.push((location.id.clone(), None));
        }
    }
    ids.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(ids.len());
    for (id, row) in ids {
        let config_name = configured.iter().find(|l| l.id == id).and_then(|l| l.name.clone());
        let in_store = row.is_some();
        let (name, status, reason) = match row {
            Some((_, name, status, reason)) => (name.or(config_name), status, reason),
            None => (config_name, "configured".to_owned(), None),
        };
        let streams: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT stream, watermark_ms, backfill_done, updated_at FROM cursors WHERE location_id = ? ORDER BY stream",
        )
        .bind(&id)
        .fetch_all(&mut *conn)
        .await?;
        let streams: Vec<StreamCursor> = streams
            .into_iter()
            .map(|(stream, watermark_ms, backfill, updated_at)| StreamCursor {
                stream,
                watermark_ms,
                backfill_done: backfill != 0,
                updated_at,
            })
            .collect();
        let contacts_cursor = streams.iter().find(|s| s.stream == "contacts");
        let contacts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE location_id = ?")
            .bind(&id)
            .fetch_one(&mut *conn)
            .await?;
        let dirty: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dirty_contacts WHERE location_id = ?")
            .bind(&id)
            .fetch_one(&mut *conn)
            .await?;
        let counters: Option<(i64, i64, i64)> = sqlx::query_as(
            "SELECT requests, rate_limited, webhooks FROM request_budget WHERE location_id = ? AND day = ?",
        )
        .bind(&id)
        .bind(day)
        .fetch_optional(&mut *conn)
        .await?;
        let (requests_today, rate_limited_today, webhooks_today) = counters.unwrap_or_default();
        let last_run: Option<RunStatus> = sqlx::query_as(
            "SELECT id, kind, outcome, started_at, finished_at, pages, records_seen, changes, requests, rate_limited, \
             progress_at, error \
             FROM runs WHERE location_id = ? ORDER BY id DESC LIMIT 1",
        )
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?;
        let last_ok_at: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(finished_at) FROM runs WHERE location_id = ? AND kind = 'contacts' AND outcome = 'ok'",
        )
        .bind(&id)
        .fetch_one(&mut *conn)
        .await?;
        out.push(LocationStatus {
            last_ok_at,
            name,
            status,
            reason,
            in_store,
            backfill_done: contacts_cursor.is_some_and(|c| c.backfill_done),
            watermark_ms: contacts_cursor.map(|c| c.watermark_ms),
            cursor_age_secs: contacts_cursor.map(|c| (now - c.updated_at) / 1000),
            contacts,
            dirty,
            requests_today,
            rate_limited_today,
            webhooks_today,
            last_run_at: last_run.as_ref().and_then(|r| r.finished_at),
            last_run_outcome: last_run.as_ref().map(|r| r.outcome.clone()),
            last_error: last_run.as_ref().and_then(|r| r.error.clone()),
            last_run,
            streams,
            id,
        });
    }
    Ok(out)
}

async fn read_connectors(
    conn: &mut SqliteConnection,
    now: i64,
) -> Result<(Vec<ConnectorStatus>, Vec<SourceCount>), StoreError> {
    let hour_ago = now - 3_600_000;
    let rows: Vec<(String, i64, i64, Option<i64>, i64, i64)> = sqlx::query_as(
        "SELECT connector, \
           COALESCE(SUM(status = 'pending'), 0), \
           COALESCE(SUM(status = 'pending' AND attempts > 0), 0), \
           MIN(CASE WHEN status = 'pending' THEN created_at END), \
           COALESCE(SUM(status = 'done'), 0), \
           COALESCE(SUM(status = 'done' AND updated_at >= ?), 0) \
         FROM outbox GROUP BY connector \
         UNION ALL SELECT DISTINCT connector, 0, 0, NULL, 0, 0 FROM dead_letters \
           WHERE connector IS NOT NULL AND connector NOT IN (SELECT DISTINCT connector FROM outbox) \
         ORDER BY 1",
    )
    .bind(hour_ago)
    .fetch_all(&mut *conn)
    .await?;
    let mut connectors = Vec::with_capacity(rows.len());
    for (connector, pending, retrying, oldest, delivered, delivered_last_hour) in rows {
        let dead_letters: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE connector = ?")
            .bind(&connector)
            .fetch_one(&mut *conn)
            .await?;
        let retry: Option<(i64, String)> = sqlx::query_as(
            "SELECT updated_at, last_error FROM outbox \
             WHERE connector = ? AND status = 'pending' AND attempts > 0 AND last_error IS NOT NULL \
             ORDER BY updated_at DESC LIMIT 1",
        )
        .bind(&connector)
        .fetch_optional(&mut *conn)
        .await?;
        let dead: Option<(i64, String)> = sqlx::query_as(
            "SELECT created_at, reason FROM dead_letters WHERE connector = ? ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(&connector)
        .fetch_optional(&mut *conn)
        .await?;
        let last_error = match (retry, dead) {
            (Some((at, message)), Some((dead_at, _))) if at >= dead_at => {
                Some(ConnectorError { at, kind: "retrying", message })
            }
            (Some((at, message)), None) => Some(ConnectorError { at, kind: "retrying", message }),
            (_, Some((at, message))) => Some(ConnectorError { at, kind: "dead_letter", message }),
            (None, None) => None,
        };
        connectors.push(ConnectorStatus {
            connector,
            pending,
            retrying,
            oldest_pending_at: oldest,
            oldest_pending_age_secs: oldest.map(|o| (now - o).max(0) / 1000),
            delivered,
            delivered_last_hour,
            dead_letters,
            last_error,
        });
    }
    let sources: Vec<(String, i64)> = sqlx::query_as(
        "SELECT source, COUNT(*) FROM dead_letters WHERE connector IS NULL GROUP BY source ORDER BY source",
    )
    .fetch_all(&mut *conn)
    .await?;
    let unattributed = sources.into_iter().map(|(source, dead_letters)| SourceCount { source, dead_letters }).collect();
    Ok((connectors, unattributed))
}

async fn read_deliveries_per_minute(conn: &mut SqliteConnection, now: i64) -> Result<Vec<i64>, StoreError> {
    let hour_ago = now - 3_600_000;
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT (updated_at - ?) / 60000 AS minute, COUNT(*) FROM outbox \
         WHERE status = 'done' AND updated_at >= ? GROUP BY minute",
    )
    .bind(hour_ago)
    .bind(hour_ago)
    .fetch_all(&mut *conn)
    .await?;
    let mut buckets = vec![0i64; 60];
    for (minute, n) in rows {
        if let Some(slot) = usize::try_from(minute).ok().and_then(|m| buckets.get_mut(m)) {
            *slot += n;
        }
    }
    Ok(buckets)
}

async fn read_recent_errors(conn: &mut SqliteConnection) -> Result<Vec<RecentError>, StoreError> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT at, origin, message FROM ( \
           SELECT COALESCE(finished_at, started_at) AS at, 'run ' || kind || ' ' || location_id AS origin, \
                  error AS message FROM runs WHERE error IS NOT NULL \
           UNION ALL \
           SELECT created_at, 'dead letter ' || COALESCE(connector, source), reason FROM dead_letters \
         ) ORDER BY at DESC LIMIT 15",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(at, origin, message)| RecentError { at, origin, message }).collect())
}

async fn read_lusha(conn: &mut SqliteConnection, day: &str) -> Result<Option<LushaStatus>, StoreError> {
    let (credits_today, calls_today): (i64, i64) =
        sqlx::query_as("SELECT COALESCE(SUM(spent), 0), COALESCE(SUM(calls), 0) FROM lusha_credits WHERE day = ?")
            .bind(day)
            .fetch_one(&mut *conn)
            .await?;
    let status = LushaStatus {
        credits_today,
        calls_today,
        found: count(conn, "SELECT COUNT(*) FROM lusha_cache WHERE found = 1").await?,
        not_found: count(conn, "SELECT COUNT(*) FROM lusha_cache WHERE found = 0").await?,
        enriched_contacts: count(conn, "SELECT COUNT(DISTINCT contact_id) FROM lusha_cache WHERE found = 1").await?,
        leads_imported: count(conn, "SELECT COUNT(*) FROM lusha_leads WHERE status = 'imported'").await?,
        leads_waiting: count(conn, "SELECT COUNT(*) FROM lusha_leads WHERE status = 'enriched'").await?,
        leads_failed: count(conn, "SELECT COUNT(*) FROM lusha_leads WHERE status = 'failed'").await?,
        signals_pending: count(conn, "SELECT COUNT(*) FROM lusha_signals WHERE processed_at IS NULL").await?,
    };
    Ok((status != LushaStatus::default()).then_some(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::runs::{self, RunProgress};

    use crate::store::temp_store as store;

    async fn exec(store: &Store, sql: &str) {
        let mut tx = store.begin_write("test").await.unwrap();
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }

    fn configured(id: &str) -> ConfiguredLocation {
        ConfiguredLocation { id: id.into(), name: Some(format!("Name {id}")), enabled: true, pit: true }
    }

    #[tokio::test]
    async fn a_running_pass_shows_its_progress_and_todays_requests() {
        let (_dir, store) = store().await;
        crate::store::locations::register_configured(&store, &[configured("loc")]).await.unwrap();
        let run = runs::start(&store, "loc", "contacts").await.unwrap();
        let progress = RunProgress { pages: 40, records_seen: 4000, changes: 3900, requests: 2345, rate_limited: 3 };
        runs::record_progress(&store, run, &progress).await.unwrap();

        let status = read(&store, &[configured("loc"), configured("not_yet")]).await.unwrap();
        assert!(status.store.writable);
        let loc = &status.locations[0];
        assert_eq!((loc.id.as_str(), loc.name.as_deref(), loc.in_store), ("loc", Some("Name loc"), true));
        assert_eq!((loc.requests_today, loc.rate_limited_today), (2345, 3));
        let last = loc.last_run.as_ref().unwrap();
        assert!(last.is_running());
        assert_eq!((last.pages, last.changes, last.requests), (40, 3900, 2345));
        assert!(last.progress_at.is_some());
        assert_eq!(loc.last_run_at, None, "not finished");
        // A configured location without a row yet is listed too.
        let pending = &status.locations[1];
        assert_eq!((pending.id.as_str(), pending.status.as_str(), pending.in_store), ("not_yet", "configured", false));
    }

    #[tokio::test]
    async fn each_connector_has_its_own_queue_and_its_newest_failure() {
        let (_dir, store) = store().await;
        let now = now_ms();
        for (connector, status, attempts, error, updated) in [
            ("webhook.crm", "pending", 0, None, now),
            ("webhook.crm", "pending", 2, Some("the webhook answered 503 Service Unavailable"), now - 1_000),
            ("webhook.crm", "done", 1, None, now),
            ("lusha", "pending", 0, Some("parked by the connector for 60 s"), now),
        ] {
            exec(
                &store,
                &format!(
                    "INSERT INTO outbox (connector, location_id, entity, entity_id, operation, content_hash, \
                     idempotency_key, status, attempts, last_error, next_attempt_at, changed_at, created_at, updated_at) \
                     VALUES ('{connector}', 'loc', 'contact', 'c', 'updated', x'00', 'k', '{status}', {attempts}, {}, \
                     {now}, {now}, {now}, {updated})",
                    error.map_or("NULL".to_owned(), |e| format!("'{e}'"))
                ),
            )
            .await;
        }
        exec(
            &store,
            &format!(
                "INSERT INTO dead_letters (source, connector, reason, created_at) VALUES \
                 ('delivery', 'webhook.crm', 'the webhook answered 410 Gone', {}), \
                 ('delivery', 'lucky_orange', 'gave up after 8 attempts (connection refused)', {now}), \
                 ('record', NULL, 'unreadable contact c9', {now})",
                now - 60_000
            ),
        )
        .await;
        let status = read(&store, &[]).await.unwrap();
        let names: Vec<&str> = status.connectors.iter().map(|c| c.connector.as_str()).collect();
        assert_eq!(names, ["lucky_orange", "lusha", "webhook.crm"]);
        let crm = &status.connectors[2];
        assert_eq!((crm.pending, crm.retrying, crm.delivered, crm.dead_letters), (2, 1, 1, 1));
        let error = crm.last_error.as_ref().unwrap();
        assert_eq!((error.kind, error.message.as_str()), ("retrying", "the webhook answered 503 Service Unavailable"));
        // A parked row is not a failure.
        assert_eq!(status.connectors[1].pending, 1);
        assert!(status.connectors[1].last_error.is_none());
        let lo = &status.connectors[0];
        assert_eq!(lo.last_error.as_ref().unwrap().kind, "dead_letter");
        assert_eq!(status.unattributed_dead_letters, [SourceCount { source: "record".into(), dead_letters: 1 }]);
        assert_eq!((status.totals.pending, status.totals.dead_letters), (3, 3));
        assert_eq!(status.deliveries_per_minute.len(), 60);
        assert_eq!(status.deliveries_per_minute.iter().sum::<i64>(), 1);
    }
}
