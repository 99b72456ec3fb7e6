//! Delivery throughput and latency against the sandbox's webhook sink on 127.0.0.1.
//!
//! `cargo bench --bench dispatch` runs the full size; under `cargo test --all-targets` (no
//! `--bench` argument) it runs a small smoke size so the test suite stays quick.
//!
//! Measures:
//! 1. throughput: N outbox rows (one per contact) drained by `Dispatcher::run_once`;
//! 2. latency: from committing one outbox row and waking the running dispatcher (what the sync
//!    engine does after a page) to the sink receiving the POST; p50/p99 over M changes.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark code")]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ghl_sync::config::{ConfigSource, load_from_str};
use ghl_sync::dispatch::Dispatcher;
use ghl_sync::domain::{EntityKind, Operation};
use ghl_sync::store::outbox::{self, EnqueuePolicy, NewChange};
use ghl_sync::store::{Store, codec, now_ms};
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// One outbox row, written the way the sync engine writes it.
async fn insert(store: &Store, id: &str) {
    let record =
        serde_json::json!({"id": id, "firstName": "Bench", "email": format!("{id}@example.test"), "tags": ["x"]});
    let hash: [u8; 32] = Sha256::digest(serde_json::to_vec(&record).unwrap()).into();
    let packed = codec::pack(&record);
    let change = NewChange {
        connector: "webhook.bench",
        location_id: "loc1",
        entity: EntityKind::Contact,
        entity_id: id,
        contact_id: Some(id),
        operation: Operation::Updated,
        record: &packed,
        content_hash: &hash,
        revision: 1,
        changed_at: now_ms(),
    };
    outbox::enqueue_all(store, "bench", &[(change, None)], EnqueuePolicy::Fold).await.unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn bench(rows: usize, changes: usize) {
    let sandbox = Sandbox::start(SandboxOptions::default(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let text = format!(
        "[store]\npath = {db:?}\n[connectors.webhook.bench]\nurl = \"{}\"\nsecret = \"bench\"\nbatch_size = 50\nconcurrency = 4\n",
        sandbox.sink_url("bench")
    );
    let config = load_from_str(&text, ConfigSource::InCode, HashMap::new()).unwrap();
    let store = Store::connect(&db, Duration::from_secs(5)).await.unwrap();
    let connectors = ghl_sync::connectors::build(&config, &CancellationToken::new()).unwrap();
    let dispatcher = Arc::new(Dispatcher::new(store.clone(), connectors, config.settings.dispatch.clone()));

    for i in 0..rows {
        insert(&store, &format!("c{i:06}")).await;
    }
    let started = Instant::now();
    let mut delivered = 0;
    while delivered < rows as u64 {
        delivered += dispatcher.run_once().await.total().delivered;
    }
    let elapsed = started.elapsed();
    assert_eq!(sandbox.sink.accepted(Some("bench")).len(), rows);
    println!(
        "throughput: {rows} deliveries in {:.3} s = {:.0} deliveries/s (batch_size 50, concurrency 4, signed)",
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64()
    );

    let stop = CancellationToken::new();
    let runner = tokio::spawn({
        let dispatcher = dispatcher.clone();
        let stop = stop.clone();
        async move { dispatcher.run(stop).await }
    });
    let waker = dispatcher.waker();
    let mut latencies = Vec::with_capacity(changes);
    for i in 0..changes {
        let before = sandbox.sink.deliveries(Some("bench")).len();
        let started = Instant::now();
        insert(&store, &format!("l{i:06}")).await;
        waker.wake();
        let got = sandbox.sink.wait_for(Some("bench"), before + 1, Duration::from_secs(5)).await;
        assert!(got.len() > before, "change {i} was not delivered");
        latencies.push(started.elapsed());
    }
    stop.cancel();
    runner.await.unwrap();
    latencies.sort();
    println!(
        "latency (outbox commit + wake -> webhook received), {changes} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
    );
    sandbox.stop().await;
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rows, changes) = if full { (2000, 200) } else { (50, 10) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(bench(rows, changes));
}
