//! PostgreSQL planner statistics kept fresh while the daemon writes in bulk.
//!
//! PostgreSQL plans each statement from its table statistics, which only `ANALYZE` (usually
//! autovacuum's) updates. A first sync fills tables from empty within minutes: before the
//! statistics catch up the planner may pick an index that matches fewer columns, e.g. the fold
//! lookup of every enqueue (`outbox` by connector, entity, entity id and status) scanned the
//! whole pending queue through `outbox_due` at 17 ms per row instead of 0.03 ms through
//! `outbox_record` (20,000 contacts with tasks and notes took 489 s instead of ~60 s, on a
//! server with autovacuum off). So the store checks, at most every [`CHECK_EVERY`], which of
//! its tables changed by more than autovacuum's default threshold since their last analyze
//! and analyzes them, on a connection of its own in the background (`ANALYZE` takes no lock
//! that blocks reads or writes). With autovacuum on and keeping up there is nothing to do.

use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};

/// How often at most a write checks the statistics.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(10);

/// When the statistics were last checked (`None`: never).
#[derive(Default)]
pub(super) struct Freshness {
    checked: StdMutex<Option<Instant>>,
}

impl Freshness {
    /// True (and the check counted as done now) when the last check is older than
    /// [`CHECK_EVERY`]: the caller starts one.
    pub(super) fn due(&self) -> bool {
        let mut checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if checked.is_some_and(|at| now.duration_since(at) < CHECK_EVERY) {
            return false;
        }
        *checked = Some(now);
        true
    }
}

/// Analyzes the store's tables (the connection's `current_schema()`) whose rows changed by
/// more than 50 + 10 % since their last analyze (autovacuum's default trigger). Failures are
/// logged at debug: statistics are an optimisation, the next check tries again.
pub(super) async fn analyze_stale_tables(options: PgConnectOptions) {
    let result: Result<Vec<String>, sqlx::Error> = async {
        let mut conn = options.connect().await?;
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT relname::text FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND n_mod_since_analyze > 50 + 0.1 * n_live_tup \
             ORDER BY relname",
        )
        .fetch_all(&mut conn)
        .await?;
        for table in &stale {
            sqlx::query(&format!("ANALYZE \"{}\"", table.replace('"', "\"\""))).execute(&mut conn).await?;
        }
        let _closed = conn.close().await;
        Ok(stale)
    }
    .await;
    match result {
        Ok(tables) if !tables.is_empty() => {
            metrics::counter!("ghl_sync_store_analyze_total").increment(tables.len() as u64);
            tracing::debug!(tables = %tables.join(","), "Refreshed PostgreSQL planner statistics");
        }
        Ok(_) => {}
        Err(error) => tracing::debug!(error = %error, "Could not refresh PostgreSQL planner statistics"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_is_due_at_first_then_not_again_within_the_interval() {
        let freshness = Freshness::default();
        assert!(freshness.due());
        assert!(!freshness.due());
    }

    /// Tables filled from empty get statistics from the store itself, and the fold lookup
    /// then uses the index that matches the record (autovacuum off on the test server or not).
    #[tokio::test]
    async fn bulk_written_tables_are_analyzed_and_the_fold_lookup_uses_outbox_record() {
        let Some((_guard, store)) = crate::store::testing::postgres_store().await else { return };
        crate::store::testing::exec(
            &store,
            "INSERT INTO outbox (connector, location_id, entity, entity_id, contact_id, operation, record, \
             content_hash, idempotency_key, status, attempts, next_attempt_at, changed_at, created_at, updated_at) \
             SELECT 'webhook.crm', 'loc', 'task', 't' || g, 'c', 'created', NULL, '\\x00'::bytea, 'k' || g, 'pending', \
             0, 0, 0, 0, 0 FROM generate_series(1, 5000) g",
        )
        .await;
        let crate::store::db::Db::Postgres(pool) = store.db() else { unreachable!() };
        let options = pool.connect_options().as_ref().clone();
        // The statistics reach pg_stat_user_tables when the writing backend flushes them (up to
        // 10 s later while its connection idles: PostgreSQL's idle flush interval). The store's
        // own background check (spawned by the insert's write) may get there first: either
        // way outbox ends analyzed with nothing left over the threshold.
        let analyzed = || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL) AND n_mod_since_analyze < 50 \
                 FROM pg_stat_user_tables WHERE schemaname = current_schema() AND relname = 'outbox'",
            )
            .fetch_one(pool)
            .await
            .unwrap()
        };
        let started = Instant::now();
        while !analyzed().await {
            analyze_stale_tables(options.clone()).await;
            assert!(started.elapsed() < Duration::from_secs(30), "outbox was never analyzed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let plan: Vec<String> = sqlx::query_scalar(
            "EXPLAIN SELECT id, operation FROM outbox WHERE connector = 'webhook.crm' AND entity = 'task' \
             AND entity_id = 't7' AND status = 'pending' LIMIT 1",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert!(plan.iter().any(|line| line.contains("outbox_record")), "{plan:#?}");
    }
}
