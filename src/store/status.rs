//! The status read model: one typed answer to "what is the daemon doing?", read from the
//! store alone (no GHL calls) and shared by every screen that shows it: `ghl-sync status`
//! (`cli::status`), the status page and `/status.json` (`server::pages`), the `/metrics`
//! gauges (`server::prometheus`) and the demo's terminal line (`demo`).
//!
//! Contract:
//! - [`read`] takes one read transaction on the read pool, so every figure comes from the
//!   same snapshot (SQLite's WAL; a REPEATABLE READ transaction on PostgreSQL), while the
//!   daemon keeps writing. It never takes the writer.
//! - Figures are as fresh as the store: a run's pages, changes and requests move while it
//!   runs because the engine records its progress per page (`store::runs`), and the
//!   per-location daily counters (requests, 429s, webhooks) are written as they happen.
//! - Nothing here holds personal data: ids, counts, times and error texts (which carry ids
//!   and status codes, never record content).
//! - Screens format; this module only reads. Times are epoch milliseconds.

use serde::Serialize;

use super::db::{Conn, Db, on_db};
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
    /// Daemons sharing the store (PostgreSQL replicas) seen in the last hour, newest heartbeat
    /// first, each with the leases it holds; empty on SQLite (one daemon).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<super::leases::ReplicaRow>,
    /// Which replica polls which location (PostgreSQL replicas; empty on SQLite).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<super::leases::LeaseRow>,
}

/// Replicas whose last heartbeat is older than this are left out of the status.
const REPLICAS_SHOWN_FOR_MS: i64 = 3600 * 1000;

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
    on_db!(store.db(), |pool| sqlx::query_scalar::<_, i64>("SELECT CAST(1 AS BIGINT)").fetch_one(pool).await)?;
    Ok(())
}

/// Reads the status. `configured` adds configured (enabled) locations that have no row yet
/// and supplies names the store does not have.
pub async fn read(store: &Store, configured: &[ConfiguredLocation]) -> Result<Status, StoreError> {
    // One read transaction: every figure from the same snapshot (SQLite: the WAL snapshot of
    // the transaction; PostgreSQL: a REPEATABLE READ transaction, READ COMMITTED would take
    // a new snapshot per statement).
    match store.db() {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let status = read_in(Db::Sqlite(&mut *tx), store, configured).await?;
            tx.rollback().await?;
            Ok(status)
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
            let status = read_in(Db::Postgres(&mut *tx), store, configured).await?;
            tx.rollback().await?;
            Ok(status)
        }
    }
}

/// [`read`] inside its read transaction (`conn`: a read-pool connection, not the writer).
async fn read_in(mut conn: Conn<'_>, store: &Store, configured: &[ConfiguredLocation]) -> Result<Status, StoreError> {
    let now = now_ms();
    let day = super::daily::utc_day(now);
    let locations = read_locations(conn.reborrow(), configured, now, &day).await?;
    let (connectors, unattributed_dead_letters) = read_connectors(conn.reborrow(), now).await?;
    let totals = Totals {
        contacts: count(conn.reborrow(), "SELECT COUNT(*) FROM contacts").await?,
        children: count(conn.reborrow(), "SELECT COUNT(*) FROM children").await?,
        dirty: count(conn.reborrow(), "SELECT COUNT(*) FROM dirty_contacts").await?,
        pending: connectors.iter().map(|c| c.pending).sum(),
        dead_letters: connectors.iter().map(|c| c.dead_letters).sum::<i64>()
            + unattributed_dead_letters.iter().map(|s| s.dead_letters).sum::<i64>(),
    };
    let deliveries_per_minute = read_deliveries_per_minute(conn.reborrow(), now).await?;
    let recent_errors = read_recent_errors(conn.reborrow()).await?;
    let lusha = read_lusha(conn.reborrow(), &day).await?;
    let replicas = super::leases::replicas_in(conn.reborrow(), now, REPLICAS_SHOWN_FOR_MS).await?;
    let leases = super::leases::leases_in(conn.reborrow()).await?;
    let incidents: Vec<OpenIncident> = on_db!(conn, |c| sqlx::query_as(
        "SELECT alert, condition_key, summary, opened_at FROM incidents WHERE resolved_at IS NULL ORDER BY id",
    )
    .fetch_all(c)
    .await)?;
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
        replicas,
        leases,
    })
}

async fn count(conn: Conn<'_>, sql: &'static str) -> Result<i64, StoreError> {
    Ok(on_db!(conn, |c| sqlx::query_scalar::<_, i64>(sql).fetch_one(c).await)?)
}

type LocationRowTuple = (String, Option<String>, String, Option<String>);
async fn read_locations(
    mut conn: Conn<'_>,
    configured: &[ConfiguredLocation],
    now: i64,
    day: &str,
) -> Result<Vec<LocationStatus>, StoreError> {
    let rows: Vec<LocationRowTuple> = on_db!(conn.reborrow(), |c| sqlx::query_as(
        "SELECT id, name, status, status_reason FROM locations ORDER BY id"
    )
    .fetch_all(c)
    .await)?;
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
        let streams: Vec<(String, i64, i64, i64)> = on_db!(conn.reborrow(), |c| {
            sqlx::query_as(
            "SELECT stream, watermark_ms, backfill_done, updated_at FROM cursors WHERE location_id = $1 ORDER BY stream",
        )
        .bind(&id)
        .fetch_all(c)
        .await
        })?;
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
        let contacts: i64 =
            on_db!(conn.reborrow(), |c| sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE location_id = $1")
                .bind(&id)
                .fetch_one(c)
                .await)?;
        let dirty: i64 = on_db!(conn.reborrow(), |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM dirty_contacts WHERE location_id = $1"
        )
        .bind(&id)
        .fetch_one(c)
        .await)?;
        let counters: Option<(i64, i64, i64)> = on_db!(conn.reborrow(), |c| sqlx::query_as(
            "SELECT requests, rate_limited, webhooks FROM request_budget WHERE location_id = $1 AND day = $2",
        )
        .bind(&id)
        .bind(day)
        .fetch_optional(c)
        .await)?;
        let (requests_today, rate_limited_today, webhooks_today) = counters.unwrap_or_default();
        let last_run: Option<RunStatus> = on_db!(conn.reborrow(), |c| {
            sqlx::query_as(
            "SELECT id, kind, outcome, started_at, finished_at, pages, records_seen, changes, requests, rate_limited, \
             progress_at, error \
             FROM runs WHERE location_id = $1 ORDER BY id DESC LIMIT 1",
        )
        .bind(&id)
        .fetch_optional(c)
        .await
        })?;
        let last_ok_at: Option<i64> = on_db!(conn.reborrow(), |c| sqlx::query_scalar(
            "SELECT MAX(finished_at) FROM runs WHERE location_id = $1 AND kind = 'contacts' AND outcome = 'ok'",
        )
        .bind(&id)
        .fetch_one(c)
        .await)?;
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

async fn read_connectors(mut conn: Conn<'_>, now: i64) -> Result<(Vec<ConnectorStatus>, Vec<SourceCount>), StoreError> {
    let hour_ago = now - 3_600_000;
    let rows: Vec<(String, i64, i64, Option<i64>, i64, i64)> = on_db!(conn.reborrow(), |c| sqlx::query_as(
        "SELECT connector, \
           CAST(COALESCE(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0) AS BIGINT), \
           CAST(COALESCE(SUM(CASE WHEN status = 'pending' AND attempts > 0 THEN 1 ELSE 0 END), 0) AS BIGINT), \
           MIN(CASE WHEN status = 'pending' THEN created_at END), \
           CAST(COALESCE(SUM(CASE WHEN status = 'done' THEN 1 ELSE 0 END), 0) AS BIGINT), \
           CAST(COALESCE(SUM(CASE WHEN status = 'done' AND updated_at >= $1 THEN 1 ELSE 0 END), 0) AS BIGINT) \
         FROM outbox GROUP BY connector \
         UNION ALL SELECT DISTINCT connector, 0, 0, CAST(NULL AS BIGINT), 0, 0 FROM dead_letters \
           WHERE connector IS NOT NULL AND connector NOT IN (SELECT DISTINCT connector FROM outbox) \
         ORDER BY 1",
    )
    .bind(hour_ago)
    .fetch_all(c)
    .await)?;
    let mut connectors = Vec::with_capacity(rows.len());
    for (connector, pending, retrying, oldest, delivered, delivered_last_hour) in rows {
        let dead_letters: i64 =
            on_db!(conn.reborrow(), |c| sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters WHERE connector = $1")
                .bind(&connector)
                .fetch_one(c)
                .await)?;
        let retry: Option<(i64, String)> = on_db!(conn.reborrow(), |c| sqlx::query_as(
            "SELECT updated_at, last_error FROM outbox \
             WHERE connector = $1 AND status = 'pending' AND attempts > 0 AND last_error IS NOT NULL \
             ORDER BY updated_at DESC LIMIT 1",
        )
        .bind(&connector)
        .fetch_optional(c)
        .await)?;
        let dead: Option<(i64, String)> = on_db!(conn.reborrow(), |c| {
            sqlx::query_as(
            "SELECT created_at, reason FROM dead_letters WHERE connector = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(&connector)
        .fetch_optional(c)
        .await
        })?;
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
    let sources: Vec<(String, i64)> = on_db!(conn, |c| sqlx::query_as(
        "SELECT source, COUNT(*) FROM dead_letters WHERE connector IS NULL GROUP BY source ORDER BY source",
    )
    .fetch_all(c)
    .await)?;
    let unattributed = sources.into_iter().map(|(source, dead_letters)| SourceCount { source, dead_letters }).collect();
    Ok((connectors, unattributed))
}

async fn read_deliveries_per_minute(conn: Conn<'_>, now: i64) -> Result<Vec<i64>, StoreError> {
    let hour_ago = now - 3_600_000;
    let rows: Vec<(i64, i64)> = on_db!(conn, |c| sqlx::query_as(
        "SELECT (updated_at - $1) / 60000 AS minute, COUNT(*) FROM outbox \
         WHERE status = 'done' AND updated_at >= $2 GROUP BY minute",
    )
    .bind(hour_ago)
    .bind(hour_ago)
    .fetch_all(c)
    .await)?;
    let mut buckets = vec![0i64; 60];
    for (minute, n) in rows {
        if let Some(slot) = usize::try_from(minute).ok().and_then(|m| buckets.get_mut(m)) {
            *slot += n;
        }
    }
    Ok(buckets)
}

async fn read_recent_errors(conn: Conn<'_>) -> Result<Vec<RecentError>, StoreError> {
    let rows: Vec<(i64, String, String)> = on_db!(conn, |c| sqlx::query_as(
        "SELECT at, origin, message FROM ( \
           SELECT COALESCE(finished_at, started_at) AS at, 'run ' || kind || ' ' || location_id AS origin, \
                  error AS message FROM runs WHERE error IS NOT NULL \
           UNION ALL \
           SELECT created_at, 'dead letter ' || COALESCE(connector, source), reason FROM dead_letters \
         ) AS errors ORDER BY at DESC LIMIT 15",
    )
    .fetch_all(c)
    .await)?;
    Ok(rows.into_iter().map(|(at, origin, message)| RecentError { at, origin, message }).collect())
}

async fn read_lusha(mut conn: Conn<'_>, day: &str) -> Result<Option<LushaStatus>, StoreError> {
    let (credits_today, calls_today): (i64, i64) = on_db!(conn.reborrow(), |c| sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(spent), 0) AS BIGINT), CAST(COALESCE(SUM(calls), 0) AS BIGINT) \
         FROM lusha_credits WHERE day = $1"
    )
    .bind(day)
    .fetch_one(c)
    .await)?;
    let status = LushaStatus {
        credits_today,
        calls_today,
        found: count(conn.reborrow(), "SELECT COUNT(*) FROM lusha_cache WHERE found = 1").await?,
        not_found: count(conn.reborrow(), "SELECT COUNT(*) FROM lusha_cache WHERE found = 0").await?,
        enriched_contacts: count(conn.reborrow(), "SELECT COUNT(DISTINCT contact_id) FROM lusha_cache WHERE found = 1")
            .await?,
        leads_imported: count(conn.reborrow(), "SELECT COUNT(*) FROM lusha_leads WHERE status = 'imported'").await?,
        leads_waiting: count(conn.reborrow(), "SELECT COUNT(*) FROM lusha_leads WHERE status = 'enriched'").await?,
        leads_failed: count(conn.reborrow(), "SELECT COUNT(*) FROM lusha_leads WHERE status = 'failed'").await?,
        signals_pending: count(conn, "SELECT COUNT(*) FROM lusha_signals WHERE processed_at IS NULL").await?,
    };
    Ok((status != LushaStatus::default()).then_some(status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::runs::{self, RunProgress};
    use crate::store::testing::stores;

    /// Runs `sql` with `binds` (text or integer) in its own write transaction.
    async fn exec(store: &Store, sql: &str, binds: &[Bind<'_>]) {
        let mut tx = store.begin_write("test").await.unwrap();
        on_db!(tx.conn(), |c| {
            let mut query = sqlx::query(sql);
            for bind in binds {
                query = match *bind {
                    Bind::Text(text) => query.bind(text),
                    Bind::OptText(text) => query.bind(text),
                    Bind::Int(n) => query.bind(n),
                    Bind::OptInt(n) => query.bind(n),
                    Bind::Blob(bytes) => query.bind(bytes),
                };
            }
            query.execute(c).await.map(|done| done.rows_affected())
        })
        .unwrap();
        tx.commit().await.unwrap();
    }

    #[derive(Clone, Copy)]
    enum Bind<'a> {
        Text(&'a str),
        OptText(Option<&'a str>),
        Int(i64),
        OptInt(Option<i64>),
        Blob(&'a [u8]),
    }

    fn configured(id: &str) -> ConfiguredLocation {
        ConfiguredLocation { id: id.into(), name: Some(format!("Name {id}")), enabled: true, pit: true }
    }

    #[tokio::test]
    async fn a_running_pass_shows_its_progress_and_todays_requests() {
        for (_guard, store) in stores().await {
            running_pass_shows_progress(&store).await;
        }
    }

    async fn running_pass_shows_progress(store: &Store) {
        crate::store::locations::register_configured(store, &[configured("loc")]).await.unwrap();
        let run = runs::start(store, "loc", "contacts").await.unwrap();
        let progress = RunProgress { pages: 40, records_seen: 4000, changes: 3900, requests: 2345, rate_limited: 3 };
        runs::record_progress(store, run, &progress).await.unwrap();

        let status = read(store, &[configured("loc"), configured("not_yet")]).await.unwrap();
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
    async fn a_locations_cursor_counters_and_failed_run_show_in_its_status() {
        for (_guard, store) in stores().await {
            location_figures(&store).await;
        }
    }

    async fn location_figures(store: &Store) {
        use crate::store::daily::{self, DailyCounts};
        let now = now_ms();
        exec(
            store,
            "INSERT INTO locations (id, name, status, status_reason, updated_at) VALUES ('loc', NULL, 'active', NULL, $1)",
            &[Bind::Int(now)],
        )
        .await;
        let mut tx = store.begin_write("test").await.unwrap();
        crate::store::cursors::advance_in(tx.conn(), "loc", "contacts", 1234, true, now - 5_000).await.unwrap();
        tx.commit().await.unwrap();
        daily::add(store, "loc", DailyCounts { requests: 7, rate_limited: 1, webhooks: 2 }).await.unwrap();
        for (started, finished, outcome, error) in [
            (now - 9_000, Some(now - 8_000), "ok", None),
            (now - 4_000, Some(now - 3_000), "failed", Some("GHL answered 500")),
        ] {
            exec(
                store,
                "INSERT INTO runs (location_id, kind, started_at, finished_at, outcome, error) \
                 VALUES ('loc', 'contacts', $1, $2, $3, $4)",
                &[Bind::Int(started), Bind::OptInt(finished), Bind::Text(outcome), Bind::OptText(error)],
            )
            .await;
        }
        exec(
            store,
            "INSERT INTO lusha_credits (day, spent, calls) VALUES ($1, 5, 2)",
            &[Bind::Text(&daily::utc_day(now))],
        )
        .await;

        let status = read(store, &[configured("loc")]).await.unwrap();
        let loc = &status.locations[0];
        assert_eq!((loc.name.as_deref(), loc.status.as_str(), loc.in_store), (Some("Name loc"), "active", true));
        assert_eq!((loc.backfill_done, loc.watermark_ms), (true, Some(1234)));
        assert!(loc.cursor_age_secs.is_some_and(|age| age >= 5));
        assert_eq!((loc.requests_today, loc.rate_limited_today, loc.webhooks_today), (7, 1, 2));
        assert_eq!((loc.contacts, loc.dirty), (0, 0));
        assert_eq!(loc.last_run_outcome.as_deref(), Some("failed"));
        assert_eq!(loc.last_error.as_deref(), Some("GHL answered 500"));
        assert_eq!(loc.last_ok_at, Some(now - 8_000));
        assert_eq!(loc.streams.len(), 1);
        assert_eq!(
            status.recent_errors,
            [RecentError { at: now - 3_000, origin: "run contacts loc".into(), message: "GHL answered 500".into() }]
        );
        assert_eq!(status.lusha, Some(LushaStatus { credits_today: 5, calls_today: 2, ..LushaStatus::default() }));
        assert_eq!(status.totals, Totals::default());
        assert!(status.incidents.is_empty());
        ping(store).await.unwrap();
    }

    #[tokio::test]
    async fn each_connector_has_its_own_queue_and_its_newest_failure() {
        for (_guard, store) in stores().await {
            connector_queues(&store).await;
        }
    }

    async fn connector_queues(store: &Store) {
        let now = now_ms();
        for (connector, status, attempts, error, updated) in [
            ("webhook.crm", "pending", 0, None, now),
            ("webhook.crm", "pending", 2, Some("the webhook answered 503 Service Unavailable"), now - 1_000),
            ("webhook.crm", "done", 1, None, now),
            ("lusha", "pending", 0, Some("parked by the connector for 60 s"), now),
        ] {
            exec(
                store,
                "INSERT INTO outbox (connector, location_id, entity, entity_id, operation, content_hash, \
                 idempotency_key, status, attempts, last_error, next_attempt_at, changed_at, created_at, updated_at) \
                 VALUES ($1, 'loc', 'contact', 'c', 'updated', $2, 'k', $3, $4, $5, $6, $6, $6, $7)",
                &[
                    Bind::Text(connector),
                    Bind::Blob(&[0]),
                    Bind::Text(status),
                    Bind::Int(attempts),
                    Bind::OptText(error),
                    Bind::Int(now),
                    Bind::Int(updated),
                ],
            )
            .await;
        }
        exec(
            store,
            "INSERT INTO dead_letters (source, connector, reason, created_at) VALUES \
             ('delivery', 'webhook.crm', 'the webhook answered 410 Gone', $1), \
             ('delivery', 'lucky_orange', 'gave up after 8 attempts (connection refused)', $2), \
             ('record', NULL, 'unreadable contact c9', $2)",
            &[Bind::Int(now - 60_000), Bind::Int(now)],
        )
        .await;
        let status = read(store, &[]).await.unwrap();
        let names: Vec<&str> = status.connectors.iter().map(|c| c.connector.as_str()).collect();
        assert_eq!(names, ["lucky_orange", "lusha", "webhook.crm"]);
        let crm = &status.connectors[2];
        assert_eq!((crm.pending, crm.retrying, crm.delivered, crm.dead_letters), (2, 1, 1, 1));
        assert_eq!((crm.delivered_last_hour, crm.oldest_pending_at), (1, Some(now)));
        let error = crm.last_error.as_ref().unwrap();
        assert_eq!((error.kind, error.message.as_str()), ("retrying", "the webhook answered 503 Service Unavailable"));
        // A parked row is not a failure.
        assert_eq!(status.connectors[1].pending, 1);
        assert!(status.connectors[1].last_error.is_none());
        let lo = &status.connectors[0];
        assert_eq!((lo.pending, lo.oldest_pending_at), (0, None));
        assert_eq!(lo.last_error.as_ref().unwrap().kind, "dead_letter");
        assert_eq!(status.unattributed_dead_letters, [SourceCount { source: "record".into(), dead_letters: 1 }]);
        assert_eq!((status.totals.pending, status.totals.dead_letters), (3, 3));
        assert_eq!(status.deliveries_per_minute.len(), 60);
        assert_eq!(status.deliveries_per_minute.iter().sum::<i64>(), 1);
        assert_eq!(status.recent_errors.len(), 3);
        assert_eq!(status.recent_errors[2].origin, "dead letter webhook.crm");
        assert_eq!(status.lusha, None);
    }
}
