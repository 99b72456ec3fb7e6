//! Gauges computed from the store at scrape time, written in Prometheus text format.
//!
//! Rendering them here (instead of setting recorder gauges) means a connector whose queue
//! emptied simply disappears instead of showing a stale value.

use std::fmt::Write as _;

use crate::store::status::Status;
use crate::store::{Store, StoreError};

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

/// The gauges of `/metrics`, from the status read model.
pub(super) async fn store_gauges(store: &Store) -> Result<String, StoreError> {
    let status = crate::store::status::read(store, &[]).await?;
    Ok(render(&status))
}

fn render(status: &Status) -> String {
    let now = status.generated_at;
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let queued: Vec<_> = status.connectors.iter().filter(|c| c.pending > 0).collect();
    f.header("ghl_sync_outbox_depth", "Pending outbox rows per connector.");
    for c in &queued {
        f.sample("ghl_sync_outbox_depth", &[("connector", &c.connector)], c.pending as f64);
    }
    f.header("ghl_sync_outbox_oldest_pending_age_seconds", "Age of the oldest pending outbox row per connector.");
    for c in &queued {
        if let Some(oldest) = c.oldest_pending_at {
            let age = (now - oldest).max(0) as f64 / 1000.0;
            f.sample("ghl_sync_outbox_oldest_pending_age_seconds", &[("connector", &c.connector)], age);
        }
    }

    // Dead letters per connector, or per source for those of no connector (one label space).
    let mut dead: Vec<(&str, i64)> = status
        .connectors
        .iter()
        .filter(|c| c.dead_letters > 0)
        .map(|c| (c.connector.as_str(), c.dead_letters))
        .chain(status.unattributed_dead_letters.iter().map(|s| (s.source.as_str(), s.dead_letters)))
        .collect();
    dead.sort_unstable();
    let mut merged: Vec<(&str, i64)> = Vec::with_capacity(dead.len());
    for (name, n) in dead {
        match merged.last_mut() {
            Some((last, total)) if *last == name => *total += n,
            _ => merged.push((name, n)),
        }
    }
    f.header("ghl_sync_dead_letters", "Dead letters per connector (or source when none).");
    for (connector, n) in merged {
        f.sample("ghl_sync_dead_letters", &[("connector", connector)], n as f64);
    }

    f.header("ghl_sync_sync_lag_seconds", "Now minus the cursor watermark per location and stream.");
    for location in &status.locations {
        for cursor in &location.streams {
            let lag = (now - cursor.watermark_ms).max(0) as f64 / 1000.0;
            f.sample("ghl_sync_sync_lag_seconds", &[("location", &location.id), ("stream", &cursor.stream)], lag);
        }
    }

    f.header("ghl_sync_dirty_contacts", "Contacts waiting for a re-read after a webhook hint.");
    f.sample("ghl_sync_dirty_contacts", &[], status.totals.dirty as f64);

    let signals = status.lusha.as_ref().map_or(0, |l| l.signals_pending);
    f.header("ghl_sync_lusha_signals_pending", "Lusha signals stored and not yet written back.");
    f.sample("ghl_sync_lusha_signals_pending", &[], signals as f64);

    let mut by_status: Vec<(&str, i64)> = Vec::new();
    for location in status.locations.iter().filter(|l| l.in_store) {
        match by_status.iter_mut().find(|(s, _)| *s == location.status) {
            Some((_, n)) => *n += 1,
            None => by_status.push((&location.status, 1)),
        }
    }
    by_status.sort_unstable();
    f.header("ghl_sync_locations", "Known locations by status.");
    for (s, n) in by_status {
        f.sample("ghl_sync_locations", &[("status", s)], n as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
