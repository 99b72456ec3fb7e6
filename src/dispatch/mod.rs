//! The dispatcher: one worker per connector draining its outbox rows in batches, recording
//! each item's outcome against the content it delivered, with backoff, dead letters and a
//! circuit breaker per connector.
//!
//! Per-record ordering comes from the outbox contract (at most one pending row per record)
//! plus two rules kept here: a worker never has the same row in flight twice (it waits for a
//! round to finish before reading due rows again), and outcomes are written only
//! `WHERE id = ? AND content_hash = ?`, so a change that replaced the row mid-flight stays
//! pending and goes out next.

mod breaker;
pub mod outbox;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use futures_util::future::join_all;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::DispatchSettings;
use crate::connectors::{Connector, DeliverySettings, Outcome};
use crate::http::RetryPolicy;
use crate::store::{Store, StoreError, now_ms};

pub use breaker::{Breaker, Gate};
pub use outbox::{Enqueued, NewRow, OutboxRow, idempotency_key};

/// Counts for one connector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorSummary {
    pub delivered: u64,
    pub retried: u64,
    /// Held back by the connector (not an attempt).
    pub parked: u64,
    pub dead: u64,
    pub skipped: u64,
    /// Rows whose content was replaced while in flight (they stay pending).
    pub superseded: u64,
    pub batches: u64,
    /// The circuit was open (or opened) during this pass.
    pub circuit_open: bool,
}

impl ConnectorSummary {
    fn add(&mut self, other: &ConnectorSummary) {
        self.delivered += other.delivered;
        self.retried += other.retried;
        self.parked += other.parked;
        self.dead += other.dead;
        self.skipped += other.skipped;
        self.superseded += other.superseded;
        self.batches += other.batches;
        self.circuit_open |= other.circuit_open;
    }
}

/// What one [`Dispatcher::run_once`] did, by connector id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DispatchSummary {
    pub connectors: BTreeMap<String, ConnectorSummary>,
    /// Store errors, one line each (the pass carried on with the other connectors).
    pub errors: Vec<String>,
    pub pruned: u64,
}

impl DispatchSummary {
    pub fn total(&self) -> ConnectorSummary {
        let mut total = ConnectorSummary::default();
        for summary in self.connectors.values() {
            total.add(summary);
        }
        total
    }
}

/// Wakes every worker (the sync engine calls this after committing a page with outbox rows).
#[derive(Debug, Clone, Default)]
pub struct DispatchWake {
    notifies: Arc<Vec<Arc<Notify>>>,
}

impl DispatchWake {
    pub fn wake(&self) {
        for notify in self.notifies.iter() {
            // Stores a permit when the worker is busy, so the wake-up is never lost.
            notify.notify_one();
        }
    }
}

struct Worker {
    connector: Arc<dyn Connector>,
    id: String,
    settings: DeliverySettings,
    breaker: Mutex<Breaker>,
    wake: Arc<Notify>,
}

/// Drains the outbox into the connectors.
pub struct Dispatcher {
    store: Store,
    settings: DispatchSettings,
    workers: Vec<Arc<Worker>>,
    wake: DispatchWake,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("connectors", &self.connector_ids()).finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub fn new(store: Store, connectors: Vec<Arc<dyn Connector>>, settings: DispatchSettings) -> Self {
        let workers: Vec<Arc<Worker>> = connectors
            .into_iter()
            .map(|connector| {
                Arc::new(Worker {
                    id: connector.id().to_owned(),
                    settings: connector.settings(),
                    breaker: Mutex::new(Breaker::new(settings.breaker_threshold, settings.breaker_cooldown.get())),
                    wake: Arc::new(Notify::new()),
                    connector,
                })
            })
            .collect();
        let wake = DispatchWake { notifies: Arc::new(workers.iter().map(|w| w.wake.clone()).collect()) };
        Self { store, settings, workers, wake }
    }

    /// The handle the sync engine uses to wake the workers.
    pub fn waker(&self) -> DispatchWake {
        self.wake.clone()
    }

    pub fn connector_ids(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.id.clone()).collect()
    }

    /// Delivers everything due now (for `sync --once` and tests), connector by connector in
    /// parallel; rows rescheduled during this pass wait for a later one. Also prunes old
    /// delivered rows and refreshes the gauges.
    pub async fn run_once(&self) -> DispatchSummary {
        let cutoff = now_ms();
        let mut summary = DispatchSummary::default();
        let passes = join_all(self.workers.iter().map(|worker| async move {
            let mut total = ConnectorSummary::default();
            loop {
                match self.round(worker, cutoff).await {
                    Ok((0, round)) => {
                        total.add(&round);
                        return (worker.id.clone(), total, None);
                    }
                    Ok((_, round)) => total.add(&round),
                    Err(error) => return (worker.id.clone(), total, Some(format!("{}: {error}", worker.id))),
                }
            }
        }))
        .await;
        for (id, counts, error) in passes {
            summary.connectors.insert(id, counts);
            summary.errors.extend(error);
        }
        match self.housekeeping().await {
            Ok(pruned) => summary.pruned = pruned,
            Err(error) => summary.errors.push(format!("housekeeping: {error}")),
        }
        summary
    }

    /// Runs the workers until `stop` is cancelled: each polls its due rows every
    /// `poll_interval` or when woken, and finishes its in-flight round before stopping.
    pub async fn run(&self, stop: CancellationToken) {
        let poll = self.settings.poll_interval.get();
        let workers = self.workers.iter().map(|worker| {
            let stop = stop.clone();
            async move {
                while !stop.is_cancelled() {
                    let taken = match self.round(worker, now_ms()).await {
                        Ok((taken, _)) => taken,
                        Err(error) => {
                            tracing::warn!(connector.id = %worker.id, error = %error, "Outbox read failed for `{}`", worker.id);
                            0
                        }
                    };
                    if taken > 0 {
                        continue;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = worker.wake.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
            }
        });
        let housekeeping = async {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Err(error) = self.housekeeping().await {
                    tracing::warn!(error = %error, "Outbox housekeeping failed");
                }
            }
        };
        tokio::join!(join_all(workers), housekeeping);
    }

    /// Prunes delivered rows past the retention. The outbox / dead-letter gauges are rendered
    /// from the store at scrape time (`server::prometheus`); setting them here as well made
    /// `/metrics` repeat those families (an invalid exposition).
    async fn housekeeping(&self) -> Result<u64, StoreError> {
        let retention = i64::try_from(self.settings.retention.get().as_millis()).unwrap_or(i64::MAX);
        outbox::prune(self.store.pool(), now_ms().saturating_sub(retention)).await
    }

    /// One round for one connector: read up to `concurrency` batches of due rows, deliver them
    /// in parallel, record the outcomes. Returns the number of rows taken.
    async fn round(&self, worker: &Worker, cutoff: i64) -> Result<(usize, ConnectorSummary), StoreError> {
        let mut summary = ConnectorSummary::default();
        let gate = worker.breaker.lock().unwrap_or_else(|e| e.into_inner()).gate(Instant::now());
        let batches_allowed = match gate {
            Gate::Open => {
                summary.circuit_open = true;
                return Ok((0, summary));
            }
            Gate::Probe => 1,
            Gate::Closed => worker.settings.concurrency.max(1),
        };
        let batch_size = worker.settings.batch_size.max(1);
        let rows = outbox::due(self.store.pool(), &worker.id, cutoff, batch_size * batches_allowed).await?;
        if rows.is_empty() {
            return Ok((0, summary));
        }
        let taken = rows.len();
        let batches: Vec<Vec<OutboxRow>> = rows.chunks(batch_size).map(<[OutboxRow]>::to_vec).collect();
        let results = join_all(batches.into_iter().map(|batch| self.deliver_batch(worker, batch))).await;
        for result in results {
            let batch = result?;
            summary.add(&batch);
        }
        if worker.breaker.lock().unwrap_or_else(|e| e.into_inner()).is_open(Instant::now()) {
            summary.circuit_open = true;
        }
        Ok((taken, summary))
    }

    async fn deliver_batch(&self, worker: &Worker, rows: Vec<OutboxRow>) -> Result<ConnectorSummary, StoreError> {
        let mut summary = ConnectorSummary { batches: 1, ..ConnectorSummary::default() };
        let started = Instant::now();
        // Rows that cannot even be read go straight to dead letters.
        let mut deliverable = Vec::with_capacity(rows.len());
        let mut broken = Vec::new();
        for row in rows {
            let contact = match (row.entity.as_str(), &row.contact_id) {
                ("task" | "note", Some(contact_id)) => {
                    outbox::contact_snapshot(self.store.pool(), &row.location_id, contact_id).await?
                }
                _ => None,
            };
            match outbox::to_delivery(&row, contact) {
                Ok(delivery) => deliverable.push((row, delivery)),
                Err(reason) => broken.push((row, format!("unreadable outbox row: {reason}"))),
            }
        }
        let items: Vec<_> = deliverable.iter().map(|(_, d)| d.clone()).collect();
        let outcomes = if items.is_empty() {
            Vec::new()
        } else {
            match std::panic::AssertUnwindSafe(worker.connector.deliver(&items)).catch_unwind().await {
                Ok(outcomes) if outcomes.len() == items.len() => outcomes,
                Ok(outcomes) => {
                    tracing::error!(
                        connector.id = %worker.id,
                        expected = items.len(),
                        got = outcomes.len(),
                        "Connector `{}` returned the wrong number of outcomes; retrying the batch",
                        worker.id
                    );
                    vec![Outcome::Retry(None); items.len()]
                }
                Err(_) => {
                    tracing::error!(connector.id = %worker.id, "Connector `{}` panicked; retrying the batch", worker.id);
                    vec![Outcome::Retry(None); items.len()]
                }
            }
        };

        let now = now_ms();
        let mut answered = false;
        let mut tx = self.store.begin_write("delivery_outcomes").await?;
        for (row, reason) in &broken {
            if outbox::dead_letter(&mut tx, row, reason, now).await? {
                summary.dead += 1;
                count(&worker.id, "dead");
                tracing::warn!(connector.id = %worker.id, outbox.id = row.id, "Outbox row {} is unreadable; moved to dead letters", row.id);
            }
        }
        for ((row, _), outcome) in deliverable.iter().zip(outcomes) {
            let attempts = u32::try_from(row.attempts + 1).unwrap_or(u32::MAX);
            let applied = match &outcome {
                Outcome::Done => {
                    answered = true;
                    outbox::mark_done(&mut tx, row, None, now).await?.then_some("done")
                }
                Outcome::Skip(reason) => {
                    answered = true;
                    outbox::mark_done(&mut tx, row, Some(reason), now).await?.then_some("skip")
                }
                Outcome::Permanent(reason) => {
                    answered = true;
                    tracing::warn!(connector.id = %worker.id, outbox.id = row.id, entity = %row.entity, reason = %reason,
                        "Delivery {} to `{}` was refused; moved to dead letters", row.id, worker.id);
                    outbox::dead_letter(&mut tx, row, reason, now).await?.then_some("dead")
                }
                Outcome::Park(wait) => {
                    // The connector is healthy and chose to wait: no attempt, no breaker.
                    answered = true;
                    let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX).max(1);
                    let reason = format!("parked by the connector for {} s", wait.as_secs());
                    outbox::park(&mut tx, row, now.saturating_add(wait_ms), &reason, now).await?.then_some("park")
                }
                Outcome::Retry(_) if attempts >= worker.settings.max_attempts => {
                    let reason = format!("gave up after {attempts} attempts (target unavailable)");
                    tracing::warn!(connector.id = %worker.id, outbox.id = row.id, attempts,
                        "Delivery {} to `{}` failed {attempts} times; moved to dead letters", row.id, worker.id);
                    outbox::dead_letter(&mut tx, row, &reason, now).await?.then_some("dead")
                }
                Outcome::Retry(after) => {
                    let wait = self.retry_delay(attempts, *after);
                    let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX).max(1);
                    tracing::warn!(connector.id = %worker.id, outbox.id = row.id, attempts, retry_in_ms = wait_ms,
                        "Delivery {} to `{}` failed; retrying in {wait_ms} ms", row.id, worker.id);
                    let error = format!("attempt {attempts} failed (retryable)");
                    outbox::reschedule(&mut tx, row, now + wait_ms, &error, now).await?.then_some("retry")
                }
            };
            match applied {
                Some("done") => summary.delivered += 1,
                Some("skip") => summary.skipped += 1,
                Some("dead") => summary.dead += 1,
                Some("park") => summary.parked += 1,
                Some(_) => summary.retried += 1,
                None => summary.superseded += 1,
            }
            count(&worker.id, applied.unwrap_or("superseded"));
        }
        tx.commit().await?;
        if !deliverable.is_empty() {
            let opened = worker.breaker.lock().unwrap_or_else(|e| e.into_inner()).record(answered, Instant::now());
            if opened {
                tracing::warn!(connector.id = %worker.id, cooldown_ms = self.settings.breaker_cooldown.get().as_millis() as u64,
                    "Circuit for `{}` opened after repeated failures", worker.id);
            }
        }
        tracing::debug!(
            connector.id = %worker.id,
            items = deliverable.len() + broken.len(),
            delivered = summary.delivered,
            retried = summary.retried,
            dead = summary.dead,
            duration_ms = started.elapsed().as_millis() as u64,
            "Delivered a batch to `{}`", worker.id
        );
        Ok(summary)
    }

    /// `max(Retry-After, exponential backoff with jitter)`, capped at `backoff_max`.
    fn retry_delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        retry_delay(&self.settings, attempts, retry_after)
    }
}

/// `max(Retry-After, backoff(attempts))`, both capped at `backoff_max`.
pub fn retry_delay(settings: &DispatchSettings, attempts: u32, retry_after: Option<Duration>) -> Duration {
    let policy = RetryPolicy {
        max_retries: 0,
        base_backoff: settings.backoff_base.get(),
        max_backoff: settings.backoff_max.get(),
    };
    let backoff = policy.backoff(attempts.saturating_sub(1));
    retry_after.unwrap_or_default().max(backoff).min(settings.backoff_max.get())
}

fn count(connector: &str, outcome: &'static str) {
    metrics::counter!("ghl_sync_deliveries_total", "connector" => connector.to_owned(), "outcome" => outcome)
        .increment(1);
    if outcome == "dead" {
        metrics::counter!("ghl_sync_dead_letters_total", "connector" => connector.to_owned()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    #[test]
    fn retry_delays_honour_retry_after_grow_and_are_capped() {
        let settings =
            DispatchSettings { backoff_base: Dur::secs(1), backoff_max: Dur::secs(60), ..DispatchSettings::default() };
        for _ in 0..50 {
            let first = retry_delay(&settings, 1, None);
            assert!(first >= Duration::from_millis(100) && first <= Duration::from_secs(1), "{first:?}");
            let later = retry_delay(&settings, 5, None);
            assert!(later >= Duration::from_millis(1600) && later <= Duration::from_secs(16), "{later:?}");
            assert!(retry_delay(&settings, 30, None) <= Duration::from_secs(60));
            assert!(retry_delay(&settings, 1, Some(Duration::from_secs(20))) >= Duration::from_secs(20));
            assert_eq!(retry_delay(&settings, 1, Some(Duration::from_secs(3600))), Duration::from_secs(60));
        }
    }
}
