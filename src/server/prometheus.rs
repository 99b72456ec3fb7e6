//! Gauges computed from the store at scrape time, written in Prometheus text format.
//!
//! Rendering them here (instead of setting recorder gauges) means a connector whose queue
//! emptied simply disappears instead of showing a stale value.

use std::fmt::Write as _;

use sqlx::Row as _;

use crate::store::{Store, StoreError, now_ms};

/// Escapes a label value (`\`, `"` and newlines).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, help: &str) {
        // Writing to a String cannot fail.
        writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} gauge").ok();
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
        if labels.is_empty() {
            writeln!(self.out, "{name} {value}").ok();
        } else {
            writeln!(self.out, "{name}{{{}}} {value}", labels.join(",")).ok();
        }
    }
}

pub(super) async fn store_gauges(store: &Store) -> Result<String, StoreError> {
    let pool = store.pool();
    let now = now_ms();
    let mut out = String::new();
    let mut f = Family { out: &mut out };

    let outbox = crate::store::outbox::depth(store).await?;
    f.header("ghl_sync_outbox_depth", "Pending outbox rows per connector.");
    for queue in &outbox {
        f.sample("ghl_sync_outbox_depth", &[("connector", &queue.connector)], queue.pending as f64);
    }
    f.header("ghl_sync_outbox_oldest_pending_age_seconds", "Age of the oldest pending outbox row per connector.");
    for queue in &outbox {
        let age = (now - queue.oldest_created_at).max(0) as f64 / 1000.0;
        f.sample("ghl_sync_outbox_oldest_pending_age_seconds", &[("connector", &queue.connector)], age);
    }

    let dead = crate::store::dead_letters::counts(store).await?;
    f.header("ghl_sync_dead_letters", "Dead letters per connector (or source when none).");
    for (connector, n) in &dead {
        f.sample("ghl_sync_dead_letters", &[("connector", connector)], *n as f64);
    }

    let cursors = sqlx::query("SELECT location_id, stream, watermark_ms FROM cursors ORDER BY location_id, stream")
        .fetch_all(pool)
        .await?;
    f.header("ghl_sync_sync_lag_seconds", "Now minus the cursor watermark per location and stream.");
    for row in &cursors {
        let location: String = row.try_get("location_id")?;
        let stream: String = row.try_get("stream")?;
        let watermark: i64 = row.try_get("watermark_ms")?;
        let lag = (now - watermark).max(0) as f64 / 1000.0;
        f.sample("ghl_sync_sync_lag_seconds", &[("location", &location), ("stream", &stream)], lag);
    }

    let dirty: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dirty_contacts").fetch_one(pool).await?;
    f.header("ghl_sync_dirty_contacts", "Contacts waiting for a re-read after a webhook hint.");
    f.sample("ghl_sync_dirty_contacts", &[], dirty as f64);

    let signals: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM lusha_signals WHERE processed_at IS NULL").fetch_one(pool).await?;
    f.header("ghl_sync_lusha_signals_pending", "Lusha signals stored and not yet written back.");
    f.sample("ghl_sync_lusha_signals_pending", &[], signals as f64);

    let locations = sqlx::query("SELECT status, COUNT(*) AS n FROM locations GROUP BY status ORDER BY status")
        .fetch_all(pool)
        .await?;
    f.header("ghl_sync_locations", "Known locations by status.");
    for row in &locations {
        let status: String = row.try_get("status")?;
        let n: i64 = row.try_get("n")?;
        f.sample("ghl_sync_locations", &[("status", &status)], n as f64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
