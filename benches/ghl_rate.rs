//! Achieved GHL request rate against the configured ceiling, through the real `GhlClient` →
//! `ApiClient` → `RateLimits` stack, against the fake GHL on 127.0.0.1 enforcing the same
//! burst limit (sliding window, `X-RateLimit-*` headers, 429 when over).
//!
//! `cargo bench --bench ghl_rate` runs the measurement; under `cargo test --all-targets` (no
//! `--bench` argument) a one-second smoke run. Knobs (environment):
//! - `GHL_RATE_SECONDS` (default 40): length of the run;
//! - `GHL_RATE_WINDOW_MS` (default 2000): the burst window on both sides; GHL's real one is
//!   10000 (100 per 10 s), the default scales it to 100 per 2 s to keep the run short;
//! - `GHL_RATE_MAX` (default 100): requests per window on both sides;
//! - `GHL_RATE_SHARE` (default 0.9): the daemon's `limits.ghl_burst_share`;
//! - `GHL_RATE_CONCURRENCY` (default 4): concurrent pagers on one location (one bucket);
//! - `GHL_RATE_PRIORITIES` (default `poll`): the pagers' priorities, round robin over this comma
//!   list (`webhook`, `poll`, `write_back`, `sweep`, `reconcile`, `export`); with a mix, the
//!   limiter serves the highest priority waiting first, and the run reports pages per priority.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark code")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ghl_sync::ghl::dto::SearchRequest;
use ghl_sync::ghl::{GhlClient, StaticTokens, TokenProvider, secret};
use ghl_sync::http::{ApiClient, ClientSettings, HeaderScheme, Priority, QuotaSettings, RateLimits, RetryPolicy};
use ghl_sync_sandbox::ghl::GhlOptions;
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use tokio_util::sync::CancellationToken;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn bench(seconds: f64, window: Duration, max: u32, share: f64, concurrency: usize, priorities: &[Priority]) {
    let ghl = GhlOptions {
        locations: 1,
        contacts_per_location: 1_000,
        max_tasks_per_contact: 0,
        max_notes_per_contact: 0,
        burst_max: max,
        burst_window: window,
        daily_max: 10_000_000,
        ..GhlOptions::default()
    };
    let sandbox =
        Sandbox::start(SandboxOptions { ghl, ..Default::default() }, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let location = sandbox.ghl.locations().remove(0);
    let quota = QuotaSettings { burst_max: max, window, share, daily_budget: 10_000_000, bulk_daily_share: 1.0 };
    let limits = Arc::new(RateLimits::new(quota));
    let api = ApiClient::new(
        ClientSettings {
            service: "ghl",
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            headers: HeaderScheme::Ghl,
            user_agent: "ghl-sync-bench".into(),
        },
        Some(limits.clone()),
        CancellationToken::new(),
    )
    .unwrap();
    let tokens: Arc<dyn TokenProvider> =
        Arc::new(StaticTokens::new(BTreeMap::from([(location.id.clone(), secret(&location.pit))])));
    let client = GhlClient::new(api, sandbox.ghl_url(), "2021-07-28".into(), tokens);

    let done = Arc::new(AtomicU64::new(0));
    let per_priority: Arc<Vec<AtomicU64>> = Arc::new(priorities.iter().map(|_| AtomicU64::new(0)).collect());
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let slot = worker % priorities.len();
        let priority = priorities[slot];
        let per_priority = per_priority.clone();
        let client = client.clone();
        let location = location.id.clone();
        let done = done.clone();
        let failed = failed.clone();
        workers.push(tokio::spawn(async move {
            // Pages through the location again and again (a long backfill), 20 per page.
            let mut request = SearchRequest::all_by_date_added(&location, 20);
            while Instant::now() < deadline {
                match client.search_contacts(&request, priority).await {
                    Ok(page) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        per_priority[slot].fetch_add(1, Ordering::Relaxed);
                        request.search_after = page.contacts.last().and_then(|c| c.get("searchAfter")).cloned();
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = done.load(Ordering::Relaxed);
    let stats = sandbox.ghl.stats();
    let served: u64 = stats.requests.values().sum();
    let ceiling = quota.ceiling_per_second();
    let rate = requests as f64 / elapsed;
    // The limiter's start-up burst (at most the headroom) is a one-off; the steady share leaves it out.
    let burst = f64::from(max.saturating_sub(quota.allowed_per_window()).max(1));
    let steady = (requests as f64 - burst).max(0.0) / elapsed;
    println!(
        "ghl_rate: limit {max} per {:?} (share {share}) -> ceiling {ceiling:.2} req/s; {concurrency} pagers, {elapsed:.1} s",
        window
    );
    println!(
        "ghl_rate: {requests} pages ok ({served} served), {rate:.2} req/s = {:.1} % of ceiling \
         (without up to {burst} start-up burst requests: {:.1} %); 429s: {}; failed calls: {}",
        rate / ceiling * 100.0,
        steady / ceiling * 100.0,
        stats.too_many_requests,
        failed.load(Ordering::Relaxed),
    );
    if priorities.len() > 1 {
        let mut pages: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
        for (slot, priority) in priorities.iter().enumerate() {
            let pagers = (0..concurrency).filter(|w| w % priorities.len() == slot).count();
            let entry = pages.entry(priority.as_str()).or_default();
            entry.0 += per_priority[slot].load(Ordering::Relaxed);
            entry.1 += pagers;
        }
        let text: Vec<String> = pages
            .iter()
            .map(|(name, (n, pagers))| {
                format!("{name} ({pagers} pagers): {n} pages = {:.2} req/s", *n as f64 / elapsed)
            })
            .collect();
        println!("ghl_rate: by priority: {}", text.join("; "));
    }
    sandbox.stop().await;
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let seconds = if full { env("GHL_RATE_SECONDS", 40.0) } else { 1.0 };
    let window = Duration::from_millis(env("GHL_RATE_WINDOW_MS", 2_000));
    let max = env("GHL_RATE_MAX", 100);
    let share = env("GHL_RATE_SHARE", 0.9);
    let concurrency = env("GHL_RATE_CONCURRENCY", 4);
    let priorities: Vec<Priority> = env("GHL_RATE_PRIORITIES", "poll".to_owned())
        .split(',')
        .map(|name| match name.trim() {
            "webhook" => Priority::Webhook,
            "poll" => Priority::Poll,
            "write_back" => Priority::WriteBack,
            "sweep" => Priority::Sweep,
            "reconcile" => Priority::Reconcile,
            "export" => Priority::Export,
            other => panic!("GHL_RATE_PRIORITIES: unknown priority {other:?}"),
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(bench(seconds, window, max, share, concurrency, &priorities));
}
