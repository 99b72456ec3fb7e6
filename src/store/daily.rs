//! `request_budget`: per location and UTC day, the GHL requests made, GHL's 429 answers and
//! the GHL webhooks received. The status read model shows them as "today"; the sweep budget
//! reads the requests.
//!
//! Contract: counters only grow. Writers add deltas, either in their own transaction
//! ([`add`]) or inside another store module's transaction ([`add_in`]: a run's progress, a
//! webhook's inbox row), so a count is committed together with the work it counts.

use super::db::{Conn, on_db};
use super::{Store, StoreError, now_ms};

/// Amounts to add to one location's counters for one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DailyCounts {
    pub requests: i64,
    pub rate_limited: i64,
    pub webhooks: i64,
}

impl DailyCounts {
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// The UTC day (`YYYY-MM-DD`) of an epoch-ms time: the key of the counters.
pub fn utc_day(ms: i64) -> String {
    crate::domain::normalize::format_timestamp_ms(ms).chars().take(10).collect()
}

/// Adds `counts` to `location`'s counters of `day`, inside the caller's write transaction.
pub(crate) async fn add_in(conn: Conn<'_>, location: &str, day: &str, counts: DailyCounts) -> Result<(), StoreError> {
    if counts.is_zero() {
        return Ok(());
    }
    on_db!(conn, |c| sqlx::query(
        "INSERT INTO request_budget (location_id, day, requests, rate_limited, webhooks) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (location_id, day) DO UPDATE SET requests = request_budget.requests + excluded.requests, \
           rate_limited = request_budget.rate_limited + excluded.rate_limited, \
           webhooks = request_budget.webhooks + excluded.webhooks",
    )
    .bind(location)
    .bind(day)
    .bind(counts.requests)
    .bind(counts.rate_limited)
    .bind(counts.webhooks)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(())
}

/// Adds `counts` to `location`'s counters of today (UTC), in its own transaction.
pub async fn add(store: &Store, location: &str, counts: DailyCounts) -> Result<(), StoreError> {
    if counts.is_zero() {
        return Ok(());
    }
    let mut tx = store.begin_write("daily_counts").await?;
    add_in(tx.conn(), location, &utc_day(now_ms()), counts).await?;
    tx.commit().await
}

/// `location`'s counters of `day` (zero when nothing was counted).
pub async fn read(store: &Store, location: &str, day: &str) -> Result<DailyCounts, StoreError> {
    let row: Option<(i64, i64, i64)> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT requests, rate_limited, webhooks FROM request_budget WHERE location_id = $1 AND day = $2"
    )
    .bind(location)
    .bind(day)
    .fetch_optional(pool)
    .await)?;
    Ok(row
        .map(|(requests, rate_limited, webhooks)| DailyCounts { requests, rate_limited, webhooks })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_add_up_per_location_and_day() {
        for (_guard, store) in crate::store::testing::stores().await {
            counters_add_up(&store).await;
        }
    }

    async fn counters_add_up(store: &Store) {
        let store = store.clone();
        let today = utc_day(now_ms());
        add(&store, "a", DailyCounts { requests: 3, rate_limited: 1, webhooks: 0 }).await.unwrap();
        add(&store, "a", DailyCounts { requests: 2, rate_limited: 0, webhooks: 4 }).await.unwrap();
        add(&store, "b", DailyCounts::default()).await.unwrap();
        assert_eq!(read(&store, "a", &today).await.unwrap(), DailyCounts { requests: 5, rate_limited: 1, webhooks: 4 });
        assert_eq!(read(&store, "b", &today).await.unwrap(), DailyCounts::default());
        assert_eq!(utc_day(0), "1970-01-01");
    }
}
