//! Sync engine benchmarks against the fake GHL on 127.0.0.1 (issue 6 "Measure", issue 7
//! end-to-end latency). `cargo bench --bench sync` runs the full sizes; under
//! `cargo test --all-targets` (no `--bench` argument) every section runs at a smoke size.
//!
//! Sections (select with `SYNC_BENCH=diff,backfill,rss,latency,fresh,locations`; default all):
//! - `diff`: one backfill of `SYNC_BENCH_CONTACTS` contacts (fast limits, tasks/notes off),
//!   GHL requests per contact on it and on a quiet re-poll against the floor (contacts / page
//!   size), then the diff throughput on unchanged pages: `Engine::diff_page` (normalise, hash,
//!   snapshot lookup, the page's transaction) over every page again, HTTP excluded
//!   (`SYNC_BENCH_ROUNDS` rounds, default 3; 1 above 200,000 contacts, where the pages are
//!   re-read from the fake each round instead of held in memory). The backfill's contacts/s
//!   is the new-contact figure (one webhook connector: an outbox row per contact).
//!   `SYNC_BENCH_BACKENDS=sqlite,postgres` runs it on each store in turn (PostgreSQL from
//!   `GHL_SYNC_TEST_POSTGRES`, default the local server; a fresh database per run).
//! - `backfill`: a backfill with tasks and notes under real-shaped limits (100 per
//!   `SYNC_BENCH_WINDOW_MS`, default 2000; GHL's is 10000, share 0.9 as the daemon's default)
//!   against the rate-limit floor (requests needed ÷ allowed rate); 429s; GHL requests per
//!   contact by route, with tasks read per contact (`[sync] task_search = false`) and by the
//!   location-wide task search (the default) in the same run (issue 22).
//! - `rss`: peak RSS (VmHWM) of a real `ghl-sync sync --once` child process syncing a large
//!   location (`SYNC_BENCH_RSS`, default `100000,1000000` contacts, tasks/notes off) from a
//!   sandbox in another child process (this binary re-executed), so the fake's memory is not
//!   counted. `SYNC_BENCH_DAEMON` runs another build of `ghl-sync` instead of this one's (here
//!   and in `locations`).
//! - `latency`: the full daemon (`App::run_until_stopped`, HTTP server, dispatcher) — from a
//!   GHL change (the fake emits its signed webhook) to the delivery at the webhook sink,
//!   p50/p99, driven by webhook hints, then without webhooks (poll every
//!   `SYNC_BENCH_POLL_MS`, default 2000).
//! - `fresh`: the full daemon on a new location of `SYNC_BENCH_FRESH_CONTACTS` (default 2,000)
//!   contacts with tasks and notes at the scaled rate (100 per `SYNC_BENCH_WINDOW_MS`): while
//!   its children backfill runs, `SYNC_BENCH_FRESH_EDITS` (default 10) contacts are edited one
//!   second apart (the fake emits its webhook); change → delivery latency p50/p99 and GHL requests
//!   per contact for the whole backfill, with `[sync] bulk_yields = false` (each pass finishes
//!   first, the behaviour before issue 22) and `true` (the default) in the same run.
//! - `locations`: one real daemon (`ghl-sync run`, a child process) over `SYNC_BENCH_LOCATIONS`
//!   (default 200; a comma list runs each size in turn, e.g. `25,50,100,200`) new locations of
//!   `SYNC_BENCH_LOCATION_CONTACTS` (default 2,000) contacts with tasks and notes, each location
//!   limited to 100 per `SYNC_BENCH_WINDOW_MS` by the fake, polled every
//!   `SYNC_BENCH_LOCATION_POLL_MS` (default 6 windows, GHL's 60 s scaled), with
//!   `SYNC_BENCH_CONCURRENT` locations at a time (default: `[sync] max_concurrent_locations`),
//!   measured for `SYNC_BENCH_LOCATION_SECONDS` (default 60) while every location backfills:
//!   requests/s against the sum of the per-location ceilings, fairness (max/min requests per
//!   location), the fake's 429s (must be 0), the daemon's CPU and RSS per location, the store's
//!   commits/s, write-lock time (of each daemon's one writer connection) and rows/s.
//!   `SYNC_BENCH_BACKENDS=sqlite,postgres` runs each size on each store in turn (as `diff`);
//!   on PostgreSQL `SYNC_BENCH_REPLICAS=1,2` runs 1, then 2 daemons on the same config file and
//!   store (issue 21's replicas, each with its own listener, splitting the locations by lease;
//!   `[store] lease_ttl` is `SYNC_BENCH_LEASE_TTL` seconds, default 3, so leases spread within
//!   seconds), CPU and RSS per replica, the PostgreSQL server's CPU for their connections, and
//!   how long lease renewals waited for each replica's writer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, reason = "benchmark code")]

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ghl_sync::app::App;
use ghl_sync::config::{Config, Dur, LocationAuth, LocationSettings, Secret, Settings, WebhookConnectorSettings};
use ghl_sync::domain::normalize::{contact_hash, normalize_contact};
use ghl_sync::ghl::dto::SearchRequest;
use ghl_sync::http::Priority;
use ghl_sync::sync::engine::RunOptions;
use ghl_sync_sandbox::ghl::GhlOptions;
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use tokio_util::sync::CancellationToken;

const CHILD_ENV: &str = "GHL_SYNC_BENCH_SANDBOX_CONTACTS";

/// The `ghl-sync` binary the `rss` and `locations` sections run: `SYNC_BENCH_DAEMON` names
/// another build (a before/after run of the same bench), default this one's.
fn daemon_bin() -> String {
    std::env::var("SYNC_BENCH_DAEMON").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ghl-sync").to_owned())
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn fast(contacts: usize, children: bool) -> GhlOptions {
    GhlOptions {
        locations: 1,
        contacts_per_location: contacts,
        max_tasks_per_contact: if children { 3 } else { 0 },
        max_notes_per_contact: if children { 2 } else { 0 },
        burst_max: 1_000_000,
        burst_window: Duration::from_secs(1),
        daily_max: 100_000_000,
        ..GhlOptions::default()
    }
}

async fn start(ghl: GhlOptions) -> Sandbox {
    Sandbox::start(SandboxOptions { ghl, ..Default::default() }, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// Daemon settings for the sandbox: its locations with PITs, fast limits, one webhook
/// connector `bench` to the sink, no HTTP server.
fn settings_for(sandbox: &Sandbox, dir: &Path) -> Settings {
    let mut settings = Settings::default();
    settings.store.path = Some(dir.join("ghl-sync.db"));
    settings.ghl.base_url = sandbox.ghl_url();
    settings.ghl.locations = sandbox
        .ghl
        .locations()
        .into_iter()
        .map(|l| LocationSettings {
            id: l.id,
            name: Some(l.name),
            auth: LocationAuth::Pit,
            pit: Some(Secret::new(l.pit)),
            pit_env: None,
            pit_file: None,
            enabled: true,
        })
        .collect();
    settings.limits.ghl_burst_max = 1_000_000;
    settings.limits.ghl_burst_window = Dur::secs(1);
    settings.limits.ghl_daily_budget = 100_000_000;
    settings.sync.index_lag_margin = Dur::secs(0);
    settings.server.enabled = false;
    settings.log.level = "warn".into();
    let hook: WebhookConnectorSettings = toml::from_str(&format!("url = \"{}\"", sandbox.sink_url("bench"))).unwrap();
    settings.connectors.webhook.insert("bench".into(), hook);
    settings
}

/// Settings for the full daemon at the scaled rate: the daemon's default limits with the
/// window scaled like the fake's, the watermark up to now, the listener on a free port, and
/// (`webhooks`) the fake's signed webhooks accepted.
fn live_settings(sandbox: &Sandbox, dir: &Path, window: Duration, webhooks: bool) -> Settings {
    let mut settings = settings_for(sandbox, dir);
    settings.limits = Default::default();
    settings.limits.ghl_burst_window = Dur::millis(window.as_millis() as u64);
    settings.sync.index_lag_margin = Dur::secs(0);
    settings.server.enabled = true;
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    if webhooks {
        settings.ghl.webhooks.public_keys = vec![sandbox.ghl.webhook_public_key()];
    }
    settings
}

fn config(settings: Settings) -> Config {
    Config::from_settings(settings).unwrap()
}

fn requests(sandbox: &Sandbox) -> u64 {
    sandbox.ghl.stats().requests.values().sum()
}

/// A bench run's store (`SYNC_BENCH_BACKENDS=sqlite,postgres`): a SQLite file in the run's
/// directory, or a fresh PostgreSQL schema on `GHL_SYNC_TEST_POSTGRES` (default the local server).
enum BenchStore {
    Sqlite(PathBuf),
    Postgres(String),
}

impl BenchStore {
    async fn new(backend: &str, dir: &Path) -> Self {
        match backend.trim() {
            "sqlite" => Self::Sqlite(dir.join("ghl-sync.db")),
            "postgres" => Self::Postgres(
                ghl_sync::store::testing::postgres_test_url()
                    .await
                    .expect("a PostgreSQL server (GHL_SYNC_TEST_POSTGRES)"),
            ),
            other => panic!("SYNC_BENCH_BACKENDS: unknown store {other:?} (sqlite or postgres)"),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "SQLite",
            Self::Postgres(_) => "PostgreSQL",
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Points `[store]` at it.
    fn apply(&self, settings: &mut ghl_sync::config::StoreSettings) {
        match self {
            Self::Sqlite(path) => settings.path = Some(path.clone()),
            Self::Postgres(url) => {
                settings.path = None;
                settings.url = Some(url.clone());
            }
        }
    }

    /// The `[store]` key of a config file that points at it.
    fn toml(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("path = {path:?}"),
            Self::Postgres(url) => format!("url = \"{url}\""),
        }
    }

    /// One value of type `T` read with `sql` on a connection of the bench's own (read-only on
    /// SQLite), beside the daemon's; `None` when the store cannot answer yet.
    async fn scalar<T>(&self, sql: &str) -> Option<T>
    where
        T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        use sqlx::Connection as _;
        match self {
            Self::Sqlite(path) => {
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).read_only(true);
                let mut conn = sqlx::SqliteConnection::connect_with(&options).await.ok()?;
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.ok()
            }
            Self::Postgres(url) => {
                let mut conn = sqlx::PgConnection::connect(url).await.ok()?;
                sqlx::query_scalar(sql).fetch_one(&mut conn).await.ok()
            }
        }
    }

    /// CPU seconds so far of the PostgreSQL server processes serving the daemons' connections
    /// to this store's database, by process id (none on SQLite: it runs inside the daemon).
    async fn server_cpu(&self) -> std::collections::HashMap<u32, f64> {
        let pids: Option<String> = match self {
            Self::Sqlite(_) => None,
            Self::Postgres(_) => {
                self.scalar(
                    "SELECT string_agg(pid::text, ',') FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name = 'ghl-sync'",
                )
                .await
            }
        };
        let pids = pids.unwrap_or_default();
        pids.split(',').filter_map(|pid| pid.parse().ok()).map(|pid| (pid, cpu_seconds(pid))).collect()
    }

    async fn count(&self, sql: &str) -> i64 {
        self.scalar(sql).await.unwrap_or_else(|| panic!("{} store: {sql} failed", self.name()))
    }
}

// ---- diff throughput and requests per contact -----------------------------------------------

/// Above this many contacts the diff section re-reads its pages each round instead of holding them.
const HELD_PAGES_UP_TO: usize = 200_000;

async fn diff(contacts: usize, rounds: usize, backend: &str) {
    let sandbox = start(fast(contacts, false)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    let store = BenchStore::new(backend, dir.path()).await;
    store.apply(&mut settings.store);
    println!("store: {}", store.name());
    settings.sync.tasks = false;
    settings.sync.notes = false;
    let page_size = settings.sync.page_size;
    // As `sync --once`: the store to itself, every location polled without leases (a daemon's
    // `App::build` on PostgreSQL holds no lease here, so its pass stopped after one page).
    let app = App::build_one_shot(config(settings)).await.unwrap();
    let location = sandbox.ghl.locations().remove(0).id;
    let once = RunOptions { dry_run: false, skip_sweep: true };

    sandbox.ghl.reset_stats();
    let started = Instant::now();
    let summary = app.engine.run_once(&location, once).await.unwrap();
    let backfill = started.elapsed();
    let backfill_requests = requests(&sandbox);
    assert_eq!(summary.contacts_changed, contacts as u64);
    let floor = contacts.div_ceil(page_size as usize).max(1) as u64;
    println!(
        "requests (tasks/notes off, page size {page_size}): backfill of {contacts} contacts: {backfill_requests} requests \
         = {:.5} per contact (floor {floor} = {:.5}); {:.2} s, {:.0} contacts/s with fast limits",
        backfill_requests as f64 / contacts as f64,
        floor as f64 / contacts as f64,
        backfill.as_secs_f64(),
        contacts as f64 / backfill.as_secs_f64(),
    );
    sandbox.ghl.reset_stats();
    let outbox_before = store.count("SELECT COUNT(*) FROM outbox").await;
    let summary = app.engine.run_once(&location, once).await.unwrap();
    let quiet = requests(&sandbox);
    assert_eq!(summary.changes(), 0);
    assert_eq!(store.count("SELECT COUNT(*) FROM outbox").await, outbox_before);
    println!(
        "requests: quiet re-poll: {quiet} request(s) for {contacts} contacts ({} re-read in the overlap window), 0 changes",
        summary.contacts_seen
    );

    // Every page as GHL sends it; then the commit path alone, timed. Up to
    // `HELD_PAGES_UP_TO` contacts the pages are read once and held (each round diffs them
    // back to back); above it they would not fit in memory (1M contacts as JSON values are
    // several GB), so each round re-reads every page and times only `diff_page`.
    let held = contacts <= HELD_PAGES_UP_TO;
    let read_all = || async {
        let mut pages = Vec::new();
        let mut request = SearchRequest::updated_since(&location, page_size, None);
        loop {
            let page = app.ghl.search_contacts(&request, Priority::Poll).await.unwrap();
            let n = page.contacts.len();
            request.search_after = page.contacts.last().and_then(|c| c.get("searchAfter")).cloned();
            pages.push(page.contacts);
            if n < page_size as usize || !held {
                return pages;
            }
        }
    };
    let pages = if held { read_all().await } else { Vec::new() };
    let mut best = f64::MAX;
    let mut total = Duration::ZERO;
    let mut page_count = pages.len();
    for _ in 0..rounds {
        let mut elapsed = Duration::ZERO;
        let mut seen = 0;
        let mut diff_one = async |page: Vec<serde_json::Value>| {
            let started = Instant::now();
            let summary = app.engine.diff_page(&location, page).await.unwrap();
            elapsed += started.elapsed();
            assert_eq!(summary.contacts_changed, 0, "nothing changed");
            seen += summary.contacts_seen;
        };
        if held {
            for page in pages.clone() {
                diff_one(page).await;
            }
        } else {
            page_count = 0;
            let mut request = SearchRequest::updated_since(&location, page_size, None);
            loop {
                let page = app.ghl.search_contacts(&request, Priority::Poll).await.unwrap();
                let n = page.contacts.len();
                request.search_after = page.contacts.last().and_then(|c| c.get("searchAfter")).cloned();
                page_count += 1;
                diff_one(page.contacts).await;
                if n < page_size as usize {
                    break;
                }
            }
        }
        assert_eq!(seen, contacts as u64);
        total += elapsed;
        best = best.min(elapsed.as_secs_f64());
    }
    assert_eq!(store.count("SELECT COUNT(*) FROM outbox").await, outbox_before);
    // The CPU share of it: normalise + hash alone (on the held pages, else on one page).
    let sample = if held { pages } else { read_all().await };
    let sampled: usize = sample.iter().map(Vec::len).sum();
    let started = Instant::now();
    for page in sample {
        for item in page {
            let serde_json::Value::Object(map) = item else { continue };
            std::hint::black_box(contact_hash(&normalize_contact(map), &[]));
        }
    }
    let cpu = started.elapsed().as_secs_f64();
    println!(
        "diff throughput (unchanged, {contacts} contacts in {page_count} pages, {rounds} rounds, pages {}): best {:.0} contacts/s, \
         mean {:.0} contacts/s (normalise + hash alone: {:.0} contacts/s)",
        if held { "held in memory" } else { "re-read per round, only diff_page timed" },
        contacts as f64 / best,
        (contacts * rounds) as f64 / total.as_secs_f64(),
        sampled as f64 / cpu,
    );
    sandbox.stop().await;
}

// ---- backfill against the rate-limit floor ---------------------------------------------------

async fn backfill(contacts: usize, window: Duration, task_search: bool) {
    let ghl = GhlOptions {
        locations: 1,
        contacts_per_location: contacts,
        burst_max: 100,
        burst_window: window,
        ..GhlOptions::default()
    };
    let sandbox = start(ghl).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&sandbox, dir.path());
    settings.limits = Default::default();
    settings.limits.ghl_burst_window = Dur::millis(window.as_millis() as u64);
    settings.sync.task_search = task_search;
    let quota = ghl_sync::http::QuotaSettings {
        burst_max: settings.limits.ghl_burst_max,
        window,
        share: settings.limits.ghl_burst_share,
        daily_budget: settings.limits.ghl_daily_budget,
        bulk_daily_share: settings.limits.bulk_daily_share,
    };
    let app = App::build(config(settings)).await.unwrap();
    let location = sandbox.ghl.locations().remove(0).id;
    sandbox.ghl.reset_stats();
    let started = Instant::now();
    let summary = app.engine.run_once(&location, RunOptions { dry_run: false, skip_sweep: true }).await.unwrap();
    let wall = started.elapsed().as_secs_f64();
    let stats = sandbox.ghl.stats();
    let served: u64 = stats.requests.values().sum();
    let ceiling = quota.ceiling_per_second();
    let floor = served as f64 / ceiling;
    let tasks: usize = sandbox.ghl.contact_ids(&location).iter().map(|c| sandbox.ghl.tasks(c).len()).sum();
    let per_route = |route: &str| stats.requests.get(route).copied().unwrap_or(0) as f64 / contacts as f64;
    println!(
        "backfill (task_search = {task_search}; tasks+notes on, limit 100 per {window:?}, share {} -> {ceiling:.1} req/s): \
         {contacts} contacts, {tasks} tasks, {} changes, {served} requests in {wall:.2} s; floor {floor:.2} s; \
         wall/floor {:.3}; 429s {}; GHL requests per contact {:.4} (contacts search {:.4}, task lists {:.4}, \
         task search {:.4}, notes {:.4})",
        quota.share,
        summary.changes(),
        wall / floor,
        stats.too_many_requests,
        served as f64 / contacts as f64,
        per_route("POST /contacts/search"),
        per_route("GET /contacts/:contactId/tasks"),
        per_route("POST /locations/:locationId/tasks/search"),
        per_route("GET /contacts/:contactId/notes"),
    );
    sandbox.stop().await;
}

// ---- peak RSS of a real `sync --once` ----------------------------------------------------------

/// Child mode: serve a sandbox of `contacts` contacts until stdin closes.
fn sandbox_child(contacts: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let sandbox = start(fast(contacts, false)).await;
        let location = sandbox.ghl.locations().remove(0);
        println!("READY {} {} {} {}", sandbox.ghl_url(), location.id, location.pit, sandbox.sink_url("bench"));
        std::io::stdout().flush().unwrap();
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {}
        })
        .await
        .unwrap();
        sandbox.stop().await;
    });
}

/// A daemon build `bin` with the config at `config`: `ghl-sync --config CONFIG COMMAND ARGS…`,
/// stderr piped for the bench to read, no `RUST_LOG` from the bench's environment.
fn daemon_command(bin: &str, config: &Path, command: &str, args: &[&str]) -> Command {
    let mut daemon = Command::new(bin);
    daemon
        .args(["--config", config.to_str().unwrap(), command])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    daemon
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn rss(contacts: usize) {
    let started = Instant::now();
    let mut sandbox = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, contacts.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(sandbox.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.first(), Some(&"READY"), "sandbox child said {line:?}");
    let (ghl_url, location, pit, sink) = (parts[1], parts[2], parts[3], parts[4]);
    let seeded = started.elapsed();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ghl-sync.db");
    let text = format!(
        "[store]\npath = {db:?}\n[ghl]\nbase_url = \"{ghl_url}\"\n[[ghl.locations]]\nid = \"{location}\"\npit = \"{pit}\"\n\
         [limits]\nghl_burst_max = 1000000\nghl_burst_window = \"1s\"\nghl_daily_budget = 100000000\n\
         [sync]\ntasks = false\nnotes = false\n[server]\nenabled = false\n[log]\nlevel = \"warn\"\n\
         [connectors.webhook.bench]\nurl = \"{sink}\"\n"
    );
    let path = dir.path().join("ghl-sync.toml");
    std::fs::write(&path, text).unwrap();
    let started = Instant::now();
    let mut daemon = daemon_command(&daemon_bin(), &path, "sync", &["--once"]).spawn().unwrap();
    let pid = daemon.id();
    let (mut hwm, mut rss_max) = (0, 0);
    let status = loop {
        if let Some(v) = status_kb(pid, "VmHWM:") {
            hwm = hwm.max(v);
        }
        if let Some(v) = status_kb(pid, "VmRSS:") {
            rss_max = rss_max.max(v);
        }
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = started.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut daemon.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "sync --once failed: {stderr}");
    let fake_hwm = status_kb(sandbox.id(), "VmHWM:").unwrap_or(0);
    drop(sandbox.stdin.take());
    sandbox.wait().unwrap();
    let db_mb = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    println!(
        "rss: sync --once of {contacts} contacts (tasks/notes off, 1 webhook connector): peak VmHWM {:.1} MB \
         (max VmRSS sampled {:.1} MB); {:.1} s = {:.0} contacts/s; database {db_mb:.0} MB; \
         (sandbox child seeded in {:.1} s, its own VmHWM {:.0} MB, not counted)",
        hwm as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        wall.as_secs_f64(),
        contacts as f64 / wall.as_secs_f64(),
        seeded.as_secs_f64(),
        fake_hwm as f64 / 1024.0,
    );
}

// ---- end-to-end latency ----------------------------------------------------------------------

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Waits until the backfill went out: a finished run and nothing pending.
async fn settled(app_store: &ghl_sync::store::Store) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let runs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE finished_at IS NOT NULL")
            .fetch_one(app_store.read_pool())
            .await
            .unwrap();
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
            .fetch_one(app_store.read_pool())
            .await
            .unwrap();
        if runs > 0 && pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the backfill did not settle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Changes contacts one at a time and times each until its delivery reaches the sink.
async fn changes(sandbox: &Sandbox, ids: &[String], count: usize, tag: &str, gap: Duration) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(count);
    for i in 0..count {
        let id = &ids[i % ids.len()];
        let marker = format!("{tag}{i}x{}", fastrand::u32(..));
        let started = Instant::now();
        assert!(sandbox.ghl.update_contact(id, serde_json::json!({ "lastName": marker })));
        let deadline = started + Duration::from_secs(30);
        loop {
            if sandbox.sink.accepted(Some("bench")).iter().rev().take(20).any(|d| d.body.contains(&marker)) {
                break;
            }
            assert!(Instant::now() < deadline, "change {i} was not delivered");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(started.elapsed());
        tokio::time::sleep(gap.mul_f64(0.5 + fastrand::f64())).await;
    }
    latencies.sort();
    latencies
}

fn report(what: &str, latencies: &[Duration]) {
    println!(
        "latency ({what}), {} changes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        ms(percentile(latencies, 0.50)),
        ms(percentile(latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
}

async fn latency(hinted: usize, polled: usize, poll: Duration, window: Duration) {
    let ghl = GhlOptions {
        locations: 1,
        contacts_per_location: 50,
        burst_max: 100,
        burst_window: window,
        ..GhlOptions::default()
    };
    let sandbox = start(ghl).await;
    let dir = tempfile::tempdir().unwrap();
    let ids = sandbox.ghl.contact_ids(&sandbox.ghl.locations()[0].id);
    let build = |interval: Duration, webhooks: bool| {
        let mut settings = live_settings(&sandbox, dir.path(), window, webhooks);
        settings.sync.contacts_interval = Dur::millis(interval.as_millis() as u64);
        config(settings)
    };

    // Driven by webhook hints: the poll interval is the default (60 s), far above the latency.
    let app = App::build(build(Duration::from_secs(60), true)).await.unwrap();
    let addr = app.server_addr().unwrap();
    sandbox.ghl.set_webhook_url(Some(format!("http://{addr}/webhooks/ghl").parse().unwrap()));
    let store = app.store.clone();
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    settled(&store).await;
    let hinted = changes(&sandbox, &ids, hinted, "hint", Duration::from_millis(300)).await;
    stop.cancel();
    daemon.await.unwrap().unwrap();
    drop(store);
    report("GHL change -> webhook hint -> fetch -> outbox -> sink; debounce 500 ms, default", &hinted);

    // Without webhooks: only the poll finds changes.
    sandbox.ghl.set_webhook_url(None);
    let app = App::build(build(poll, false)).await.unwrap();
    let store = app.store.clone();
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    settled(&store).await;
    let polled = changes(&sandbox, &ids, polled, "poll", poll / 3).await;
    stop.cancel();
    daemon.await.unwrap().unwrap();
    report(&format!("no webhooks, contacts_interval {poll:?}"), &polled);
    sandbox.stop().await;
}

// ---- freshness during a children backfill ---------------------------------------------------

/// One daemon over a new location: edits during its children backfill, then the totals.
async fn fresh_mode(contacts: usize, edits: usize, window: Duration, bulk_yields: bool) {
    let ghl = GhlOptions {
        locations: 1,
        contacts_per_location: contacts,
        burst_max: 100,
        burst_window: window,
        daily_max: 100_000_000,
        ..GhlOptions::default()
    };
    let sandbox = start(ghl).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = live_settings(&sandbox, dir.path(), window, true);
    settings.limits.ghl_daily_budget = 100_000_000;
    settings.sync.bulk_yields = bulk_yields;
    let app = App::build(config(settings)).await.unwrap();
    let addr = app.server_addr().unwrap();
    let store = app.store.clone();
    let location = sandbox.ghl.locations()[0].id.clone();
    let ids = sandbox.ghl.contact_ids(&location);
    let stop = CancellationToken::new();
    let started = Instant::now();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    let child_reads = || {
        let requests = sandbox.ghl.stats().requests;
        requests.get("GET /contacts/:contactId/tasks").copied().unwrap_or(0)
            + requests.get("GET /contacts/:contactId/notes").copied().unwrap_or(0)
    };
    while child_reads() == 0 {
        assert!(started.elapsed() < Duration::from_secs(300), "no children backfill started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let contacts_first = ghl_sync::store::snapshot::contact_count(&store, &location).await.unwrap();
    sandbox.ghl.set_webhook_url(Some(format!("http://{addr}/webhooks/ghl").parse().unwrap()));
    // Edits one second apart during the backfill, each timed until its delivery.
    let mut pending: Vec<(String, Instant)> = Vec::with_capacity(edits);
    let mut latencies = Vec::with_capacity(edits);
    let mut next_edit = Instant::now();
    while latencies.len() < edits {
        if pending.len() + latencies.len() < edits && Instant::now() >= next_edit {
            let i = pending.len() + latencies.len();
            let id = &ids[(i * 7919) % ids.len()];
            let marker = format!("fresh{i}x{}", fastrand::u32(..));
            assert!(sandbox.ghl.update_contact(id, serde_json::json!({ "lastName": marker })));
            pending.push((marker, Instant::now()));
            next_edit = Instant::now() + Duration::from_secs(1);
        }
        let accepted = sandbox.sink.accepted(Some("bench"));
        pending.retain(|(marker, edited)| {
            let arrived = accepted.iter().rev().take(500).any(|d| d.body.contains(marker.as_str()));
            if arrived {
                latencies.push(edited.elapsed());
            }
            !arrived
        });
        assert!(started.elapsed() < Duration::from_secs(3600), "edits were not delivered");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    latencies.sort();
    let none_due = std::collections::HashSet::new();
    loop {
        let due = ghl_sync::store::snapshot::children_due(&store, &location, 1, &none_due).await.unwrap();
        if due.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3600), "the backfill did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wall = started.elapsed();
    let requests = requests(&sandbox);
    stop.cancel();
    daemon.await.unwrap().unwrap();
    sandbox.stop().await;
    println!(
        "fresh (bulk_yields = {bulk_yields}): {contacts} contacts, {contacts_first} stored before the first child read; {edits} edits during the children backfill: change -> delivery p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; backfill {:.1} s, {requests} GHL requests = {:.4} per contact",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        wall.as_secs_f64(),
        requests as f64 / contacts as f64,
    );
}

// ---- many locations on one daemon ------------------------------------------------------------

/// A free port on 127.0.0.1 (bound, then released for the daemon).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// CPU time (user + system) of process `pid`, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = text.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / ticks
}

/// Sum of the samples of `name` (any labels) whose label set contains `filter`.
fn metric_sum(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let metric = key.split('{').next()?;
            (metric == name && key.contains(filter)).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

async fn scrape(client: &reqwest::Client, port: u16) -> Option<String> {
    let response = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.ok()?;
    response.text().await.ok()
}

/// The parameters the `locations` section's runs share.
#[derive(Clone, Copy)]
struct LocationsBench {
    contacts: usize,
    seconds: f64,
    window: Duration,
    poll: Duration,
    concurrent: usize,
    /// `[store] lease_ttl` on PostgreSQL (seconds).
    lease_ttl: u64,
}

/// One `ghl-sync run` process of the `locations` section, its `/metrics` on `port`, its log
/// (stderr, warnings and errors) in the file `log`.
struct Replica {
    daemon: std::process::Child,
    port: u16,
    log: PathBuf,
    metrics_before: String,
    cpu_before: f64,
    rss_max: u64,
}

impl Replica {
    /// Starts the daemon on the config at `path` (the same file for every replica), its
    /// listener on a port of its own (`GHL_SYNC__SERVER__LISTEN`).
    fn spawn(path: &Path, log: PathBuf) -> Self {
        let port = free_port();
        let daemon = daemon_command(&daemon_bin(), path, "run", &[])
            .env("GHL_SYNC__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { daemon, port, log, metrics_before: String::new(), cpu_before: 0.0, rss_max: 0 }
    }

    /// Waits for the first answer of `/metrics`: the daemon is up, its scheduler about to start.
    async fn wait_up(&mut self, client: &reqwest::Client, up: Instant) {
        self.metrics_before = loop {
            if let Some(text) = scrape(client, self.port).await {
                break text;
            }
            assert!(self.daemon.try_wait().unwrap().is_none(), "a daemon exited at start");
            assert!(up.elapsed() < Duration::from_secs(60), "a daemon did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
    }

    fn pid(&self) -> u32 {
        self.daemon.id()
    }

    /// Growth of the sum of metric `name` (samples whose labels contain `filter`) since start-up.
    fn metric_growth(&self, after: &str, name: &str, filter: &str) -> f64 {
        metric_sum(after, name, filter) - metric_sum(&self.metrics_before, name, filter)
    }

    /// SIGTERM, then the clean exit it must make; its log.
    fn stop(mut self) -> String {
        Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        let status = self.daemon.wait().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "a daemon failed: {log}");
        log
    }
}

/// Kibibytes as whole mebibytes.
fn mb(kb: &u64) -> String {
    format!("{:.0}", *kb as f64 / 1024.0)
}

/// `values` joined by `/` (one per replica).
fn per_replica(values: impl IntoIterator<Item = String>) -> String {
    values.into_iter().collect::<Vec<_>>().join("/")
}

/// `replicas` real daemons (`ghl-sync run`, child processes, the same config and store) over
/// `count` new locations of `contacts` contacts each (tasks and notes on) at the scaled rate
/// limit, for `seconds`: every location backfills (contacts, then children, in yielding
/// slices) and re-polls every `poll`. On PostgreSQL the replicas split the locations by lease.
async fn locations(bench: &LocationsBench, count: usize, backend: &str, replicas: usize) {
    let LocationsBench { contacts, seconds, window, poll, concurrent, lease_ttl } = *bench;
    let ghl = GhlOptions {
        locations: count,
        contacts_per_location: contacts,
        max_appointments_per_contact: 0,
        burst_max: 100,
        burst_window: window,
        daily_max: 100_000_000,
        ..GhlOptions::default()
    };
    let seeding = Instant::now();
    let sandbox = start(ghl).await;
    let seeded = seeding.elapsed();
    let dir = tempfile::tempdir().unwrap();
    let store = BenchStore::new(backend, dir.path()).await;
    let lease_ttl = if store.is_postgres() { format!("lease_ttl = \"{lease_ttl}s\"\n") } else { String::new() };
    let mut text = format!(
        "[store]\n{}\n{lease_ttl}[ghl]\nbase_url = \"{}\"\n[limits]\nghl_burst_window = \"{}ms\"\n\
         ghl_daily_budget = 100000000\n[sync]\nindex_lag_margin = \"0s\"\ncontacts_interval = \"{}ms\"\n\
         max_concurrent_locations = {concurrent}\n[server]\nenabled = true\n[log]\nlevel = \"warn\"\n\
         [connectors.webhook.bench]\nurl = \"{}\"\n",
        store.toml(),
        sandbox.ghl_url(),
        window.as_millis(),
        poll.as_millis(),
        sandbox.sink_url("bench"),
    );
    for location in sandbox.ghl.locations() {
        text.push_str(&format!("[[ghl.locations]]\nid = \"{}\"\npit = \"{}\"\n", location.id, location.pit));
    }
    let path = dir.path().join("ghl-sync.toml");
    std::fs::write(&path, text).unwrap();
    let quota = ghl_sync::http::QuotaSettings {
        burst_max: 100,
        window,
        share: ghl_sync::config::LimitSettings::default().ghl_burst_share,
        daily_budget: 100_000_000,
        bulk_daily_share: 1.0,
    };
    let ceiling = quota.ceiling_per_second() * count as f64;
    let client = reqwest::Client::builder().build().unwrap();
    let mut daemons: Vec<Replica> =
        (0..replicas).map(|i| Replica::spawn(&path, dir.path().join(format!("replica-{i}.log")))).collect();
    let up = Instant::now();
    for daemon in &mut daemons {
        daemon.wait_up(&client, up).await;
    }
    let startup = up.elapsed();
    for daemon in &mut daemons {
        daemon.cpu_before = cpu_seconds(daemon.pid());
    }
    let server_before = store.server_cpu().await;
    let requests_before = sandbox.ghl.requests_by_bucket();
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        for daemon in &mut daemons {
            daemon.rss_max = daemon.rss_max.max(status_kb(daemon.pid(), "VmRSS:").unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu: Vec<f64> = daemons.iter().map(|d| cpu_seconds(d.pid()) - d.cpu_before).collect();
    // A server process that started during the measurement counts whole; one that ended, not.
    let server: f64 =
        store.server_cpu().await.iter().map(|(pid, cpu)| cpu - server_before.get(pid).copied().unwrap_or(0.0)).sum();
    let requests_after = sandbox.ghl.requests_by_bucket();
    let hwm: Vec<u64> = daemons.iter().map(|d| status_kb(d.pid(), "VmHWM:").unwrap_or(0)).collect();
    let rss_max: Vec<u64> = daemons.iter().map(|d| d.rss_max).collect();
    // The store metrics of each replica's writer connection, over the measured seconds.
    let (mut commits, mut held, mut waited, mut lease_waits) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for daemon in &daemons {
        let after = scrape(&client, daemon.port).await.unwrap_or_default();
        let growth = |name: &str, filter: &str| daemon.metric_growth(&after, name, filter);
        commits.push(growth("ghl_sync_store_writes_total", "outcome=\"committed\"") / elapsed);
        held.push(growth("ghl_sync_store_write_hold_seconds_sum", "") / elapsed);
        waited.push(growth("ghl_sync_store_write_wait_seconds_sum", "") / elapsed);
        // How long lease renewals queued for the writer (a lease is trusted for 2/3 of the TTL
        // from the start of its renewal).
        let ticks = growth("ghl_sync_store_write_wait_seconds_count", "purpose=\"lease_tick\"");
        let wait = growth("ghl_sync_store_write_wait_seconds_sum", "purpose=\"lease_tick\"");
        lease_waits.push(format!("{ticks:.0} x {:.2} s", if ticks > 0.0 { wait / ticks } else { 0.0 }));
    }
    let rows: i64 =
        store.scalar("SELECT (SELECT COUNT(*) FROM contacts) + (SELECT COUNT(*) FROM children)").await.unwrap_or(0);
    let outbox: i64 = store.scalar("SELECT COUNT(*) FROM outbox").await.unwrap_or(0);
    // Live leases per holder, before the clean stops release them (PostgreSQL only: a SQLite
    // daemon holds every location without lease rows).
    let leases: Option<String> = if store.is_postgres() {
        store
            .scalar(
                "SELECT COALESCE(string_agg(n::text, '/' ORDER BY n DESC), 'none') FROM (SELECT COUNT(*) AS n \
                 FROM location_leases WHERE holder IS NOT NULL \
                 AND expires_at > (extract(epoch FROM now()) * 1000)::bigint GROUP BY holder) AS held",
            )
            .await
    } else {
        None
    };
    let logs: Vec<String> = daemons.into_iter().map(Replica::stop).collect();
    let stats = sandbox.ghl.stats();
    sandbox.stop().await;

    let per_location: Vec<u64> = requests_after
        .iter()
        .filter(|(key, _)| key.starts_with("location:"))
        .map(|(key, n)| n - requests_before.get(key).copied().unwrap_or(0))
        .collect();
    let total: u64 = per_location.iter().sum();
    let (min, max) = (per_location.iter().copied().min().unwrap_or(0), per_location.iter().copied().max().unwrap_or(0));
    let rate = total as f64 / elapsed;
    let cpu_total: f64 = cpu.iter().sum();
    let hwm_total: u64 = hwm.iter().sum();
    println!(
        "locations: {} store, {replicas} replica(s); {count} locations x {contacts} contacts (tasks+notes), limit 100 \
         per {window:?} per location (share {}), poll every {poll:?}, max_concurrent_locations {concurrent}; \
         {elapsed:.0} s measured after a {:.1} s start (seeding {:.1} s); daemon {}",
        store.name(),
        quota.share,
        startup.as_secs_f64(),
        seeded.as_secs_f64(),
        daemon_bin(),
    );
    println!(
        "locations: {total} requests = {rate:.0} req/s of a {ceiling:.0} req/s ceiling ({:.1} %); per location \
         min {min} max {max} (max/min {}); 429s {} (must be 0); {} locations with 0 requests; live leases per \
         replica at the end {}; lease renewals per replica (count x mean wait for the writer) {}",
        rate / ceiling * 100.0,
        if min == 0 { "inf".to_owned() } else { format!("{:.2}", max as f64 / min as f64) },
        stats.too_many_requests,
        per_location.iter().filter(|n| **n == 0).count() + count.saturating_sub(per_location.len()),
        leases.as_deref().unwrap_or("n/a (one daemon holds every location)"),
        if store.is_postgres() { per_replica(lease_waits) } else { "n/a".to_owned() },
    );
    println!(
        "locations: daemon CPU {:.2} cores in all, per replica {} ({:.1} ms CPU per location-second); \
         {}; RSS per replica max {} MB, VmHWM {} MB ({:.2} MB per location in all)",
        cpu_total / elapsed,
        per_replica(cpu.iter().map(|c| format!("{:.2}", c / elapsed))),
        cpu_total * 1000.0 / (elapsed * count as f64),
        if store.is_postgres() {
            format!("PostgreSQL server processes of these connections {:.2} cores", server / elapsed)
        } else {
            "no server process (SQLite)".to_owned()
        },
        per_replica(rss_max.iter().map(mb)),
        per_replica(hwm.iter().map(mb)),
        hwm_total as f64 / 1024.0 / count as f64,
    );
    println!(
        "locations: store {:.0} commits/s in all (per replica {}), each replica's writer connection held {} % of \
         the time, {} s waited per s; {:.0} snapshot rows/s ({rows} rows), {outbox} outbox rows",
        commits.iter().sum::<f64>(),
        per_replica(commits.iter().map(|c| format!("{c:.0}"))),
        per_replica(held.iter().map(|h| format!("{:.0}", h * 100.0))),
        per_replica(waited.iter().map(|w| format!("{w:.2}"))),
        rows as f64 / (elapsed + startup.as_secs_f64()),
    );
    for (i, log) in logs.iter().enumerate().filter(|(_, log)| !log.is_empty()) {
        let last = log.lines().last().unwrap_or_default();
        println!("locations: replica {i} logged {} line(s) at warn or above, the last: {last}", log.lines().count());
    }
}

fn main() {
    if let Ok(contacts) = std::env::var(CHILD_ENV) {
        sandbox_child(contacts.parse().unwrap());
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let sections: String = env("SYNC_BENCH", "diff,backfill,rss,latency,fresh,locations".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let window = Duration::from_millis(env("SYNC_BENCH_WINDOW_MS", 2_000));
    println!("machine: {} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    if sections.contains("diff") {
        let contacts = if full { env("SYNC_BENCH_CONTACTS", 50_000) } else { 1_000 };
        let rounds = if full { env("SYNC_BENCH_ROUNDS", if contacts > HELD_PAGES_UP_TO { 1 } else { 3 }) } else { 1 };
        // `SYNC_BENCH_BACKENDS=sqlite,postgres`: the same section on each store, side by side.
        for backend in env("SYNC_BENCH_BACKENDS", "sqlite".to_owned()).split(',') {
            runtime.block_on(diff(contacts, rounds, backend));
        }
    }
    if sections.contains("backfill") {
        let contacts = if full { env("SYNC_BENCH_BACKFILL_CONTACTS", 400) } else { 10 };
        for task_search in [false, true] {
            runtime.block_on(backfill(contacts, window, task_search));
        }
    }
    if sections.contains("rss") {
        let sizes = if full { env("SYNC_BENCH_RSS", "100000,1000000".to_owned()) } else { "2000".to_owned() };
        for size in sizes.split(',').filter_map(|s| s.trim().parse().ok()) {
            rss(size);
        }
    }
    if sections.contains("latency") {
        let (hinted, polled) =
            if full { (env("SYNC_BENCH_HINTED", 100), env("SYNC_BENCH_POLLED", 20)) } else { (3, 2) };
        let poll = Duration::from_millis(if full { env("SYNC_BENCH_POLL_MS", 2_000) } else { 500 });
        runtime.block_on(latency(hinted, polled, poll, window));
    }
    if sections.contains("fresh") {
        let (contacts, edits) =
            if full { (env("SYNC_BENCH_FRESH_CONTACTS", 2_000), env("SYNC_BENCH_FRESH_EDITS", 10)) } else { (30, 1) };
        let window = if full { window } else { Duration::from_millis(200) };
        for bulk_yields in [false, true] {
            runtime.block_on(fresh_mode(contacts, edits, window, bulk_yields));
        }
    }
    if sections.contains("locations") {
        let (counts, contacts, seconds) = if full {
            (
                env("SYNC_BENCH_LOCATIONS", "200".to_owned()),
                env("SYNC_BENCH_LOCATION_CONTACTS", 2_000),
                env("SYNC_BENCH_LOCATION_SECONDS", 60.0),
            )
        } else {
            ("3".to_owned(), 20, 1.0)
        };
        // The poll interval scaled like the window (GHL's 10 s → 2 s: 60 s → 12 s).
        let poll = Duration::from_millis(env("SYNC_BENCH_LOCATION_POLL_MS", window.as_millis() as u64 * 6));
        let concurrent =
            env("SYNC_BENCH_CONCURRENT", ghl_sync::config::SyncSettings::default().max_concurrent_locations);
        let bench =
            LocationsBench { contacts, seconds, window, poll, concurrent, lease_ttl: env("SYNC_BENCH_LEASE_TTL", 3) };
        let backends: String = env("SYNC_BENCH_BACKENDS", "sqlite".to_owned());
        let replica_counts: Vec<usize> =
            env("SYNC_BENCH_REPLICAS", "1".to_owned()).split(',').filter_map(|s| s.trim().parse().ok()).collect();
        for count in counts.split(',').filter_map(|s| s.trim().parse().ok()) {
            for backend in backends.split(',') {
                // Replicas share a PostgreSQL store; a SQLite file has one daemon (its lock file).
                let replicas = if backend.trim() == "postgres" { &replica_counts[..] } else { &[1] };
                for &n in replicas {
                    runtime.block_on(locations(&bench, count, backend, n));
                }
            }
        }
    }
}
