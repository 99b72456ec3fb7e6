//! Soak benchmark (issue 23): the real `ghl-sync run` daemon as a child process for a long
//! while against the sandbox, under continuous GHL changes (contacts created, updated and
//! deleted, tasks and notes) with GHL's signed webhooks, delivering to the webhook sink.
//! Every `SOAK_SAMPLE_SECONDS` it records the daemon's RSS and open file descriptors (from
//! `/proc`), its queue depths (outbox rows pending, webhook hints waiting, dead letters, read
//! from its SQLite store read-only) and the change → delivery lag of probe edits made in that
//! period (p50/p99/max), then prints the series as a Markdown table and the RSS drift.
//!
//! `cargo bench --bench soak` runs 30 minutes (`SOAK_SECONDS`, default 1800; samples every 60 s);
//! under `cargo test --all-targets` (no `--bench` argument) it runs 8 seconds. Other knobs:
//! `SOAK_LOCATIONS` (3), `SOAK_CONTACTS` (300 per location), `SOAK_CHANGES_PER_SECOND` (5,
//! random changes), `SOAK_PROBES_PER_SECOND` (2, timed contact edits), `SOAK_WINDOW_MS` (2000:
//! the sandbox allows 100 requests per window per location, GHL's limit scaled 5×).
//!
//! Correctness is checked, time is not: at the end every probe edit must have reached the sink
//! (probes on contacts that a random change deleted meanwhile are excluded and counted). A probe
//! edits a contact with no probe edit still on its way, so no edit is folded into a later one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, reason = "benchmark code")]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ghl_sync_sandbox::ghl::GhlOptions;
use ghl_sync_sandbox::{Sandbox, SandboxOptions};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Knobs {
    run: Duration,
    sample: Duration,
    locations: usize,
    contacts: usize,
    changes_per_second: f64,
    probes_per_second: f64,
    window: Duration,
}

impl Knobs {
    fn from_env(full: bool) -> Self {
        Self {
            run: Duration::from_secs(env("SOAK_SECONDS", if full { 1_800 } else { 8 })),
            sample: Duration::from_secs(env("SOAK_SAMPLE_SECONDS", if full { 60 } else { 2 })),
            locations: env("SOAK_LOCATIONS", if full { 3 } else { 2 }),
            contacts: env("SOAK_CONTACTS", if full { 300 } else { 40 }),
            changes_per_second: env("SOAK_CHANGES_PER_SECOND", 5.0),
            probes_per_second: env("SOAK_PROBES_PER_SECOND", 2.0),
            window: Duration::from_millis(env("SOAK_WINDOW_MS", 2_000)),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The daemon's config: the sandbox's locations by PIT, its webhooks verified with the
/// sandbox's key, one webhook connector `soak` to the sink; everything else the defaults.
fn config_text(sandbox: &Sandbox, dir: &Path, port: u16) -> String {
    let mut text = format!(
        "[store]\npath = {:?}\n[ghl]\nbase_url = \"{}\"\n[ghl.webhooks]\npublic_keys = [\"{}\"]\n\
         [server]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\
         [sync]\ncontacts_interval = \"30s\"\n\
         [log]\nlevel = \"info\"\nformat = \"json\"\n",
        dir.join("ghl-sync.db"),
        sandbox.ghl_url(),
        sandbox.ghl.webhook_public_key(),
    );
    for location in sandbox.ghl.locations() {
        text.push_str(&format!("[[ghl.locations]]\nid = \"{}\"\npit = \"{}\"\n", location.id, location.pit));
    }
    text.push_str(&format!("[connectors.webhook.soak]\nurl = \"{}\"\n", sandbox.sink_url("soak")));
    text
}

fn spawn_daemon(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_ghl-sync"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env_remove("GHL_SYNC_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn rss_mib(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|entries| entries.count()).unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Queue depths read from the daemon's store (read-only; WAL lets a reader in beside it).
async fn depths(db: &Path) -> (i64, i64, i64) {
    let url = format!("sqlite://{}?mode=ro", db.display());
    let Ok(pool) = sqlx::SqlitePool::connect(&url).await else { return (-1, -1, -1) };
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap_or(-1) }
    };
    let pending = count("SELECT COUNT(*) FROM outbox WHERE status = 'pending'").await;
    let hints = count("SELECT COUNT(*) FROM dirty_contacts").await;
    let dead = count("SELECT COUNT(*) FROM dead_letters").await;
    pool.close().await;
    (pending, hints, dead)
}

struct Sample {
    at: Duration,
    rss: f64,
    fds: usize,
    pending: i64,
    hints: i64,
    dead: i64,
    delivered: usize,
    probes: usize,
    p50: f64,
    p99: f64,
    max: f64,
    throttled: u64,
}

/// Probe edits waiting for their delivery: marker → (contact, when it was made).
type Waiting = HashMap<String, (String, Instant)>;

/// Takes the sink's new deliveries and resolves the probes they carry.
fn collect(sandbox: &Sandbox, waiting: &mut Waiting, lags: &mut Vec<Duration>) -> usize {
    let deliveries = sandbox.sink.take(Some("soak"));
    let mut accepted = 0;
    for delivery in deliveries.iter().filter(|d| d.accepted()) {
        accepted += 1;
        // Every marker the body names (an envelope may carry the record before the change too).
        for (start, _) in delivery.body.match_indices("Soak") {
            let marker: String = delivery.body[start..].chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            if let Some((_, made)) = waiting.remove(&marker) {
                lags.push(made.elapsed());
            }
        }
    }
    accepted
}

async fn soak(knobs: Knobs) {
    let ghl = GhlOptions {
        locations: knobs.locations,
        contacts_per_location: knobs.contacts,
        max_tasks_per_contact: 2,
        max_notes_per_contact: 1,
        burst_max: 100,
        burst_window: knobs.window,
        daily_max: 100_000_000,
        ..GhlOptions::default()
    };
    let sandbox = Sandbox::start(SandboxOptions { ghl, ..SandboxOptions::default() }, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dir =
        if std::env::var_os("SOAK_DEBUG").is_some() { tempfile::TempDir::with_prefix("soak").unwrap() } else { dir };
    let port = free_port();
    let config = dir.path().join("ghl-sync.toml");
    std::fs::write(&config, config_text(&sandbox, dir.path(), port)).unwrap();
    let log = dir.path().join("daemon.log");
    let mut daemon = spawn_daemon(&config, &log);
    let pid = daemon.id();
    sandbox.ghl.set_webhook_url(Some(format!("http://127.0.0.1:{port}/webhooks/ghl").parse().unwrap()));

    // Probe contacts of our own in every location: their edits are timed to the sink.
    let mut probes = Vec::new();
    for location in sandbox.ghl.locations() {
        for i in 0..10 {
            let id = sandbox
                .ghl
                .create_contact(&location.id, serde_json::json!({ "firstName": "Probe", "lastName": format!("P{i}") }));
            probes.push((location.id.clone(), id));
        }
    }

    let db = dir.path().join("ghl-sync.db");
    let started = Instant::now();
    let mut next_sample = started + knobs.sample;
    let change_gap = Duration::from_secs_f64(1.0 / knobs.changes_per_second.max(0.01));
    let probe_gap = Duration::from_secs_f64(1.0 / knobs.probes_per_second.max(0.01));
    let (mut next_change, mut next_probe) = (started, started);
    let mut waiting: Waiting = HashMap::new();
    let mut lags = Vec::new();
    let mut delivered = 0;
    let mut probes_made = 0usize;
    let mut probes_replaced = 0usize;
    let mut samples = Vec::new();
    let mut serial = 0u64;
    let mut throttled_before = sandbox.ghl.stats().too_many_requests;
    while started.elapsed() < knobs.run {
        let now = Instant::now();
        if now >= next_change {
            sandbox.ghl.mutate(None, 1);
            next_change += change_gap;
        }
        // A probe goes to a contact with no edit still on its way: the daemon delivers a
        // record's latest state, so a second edit before the first was read folds both into
        // one delivery (by design) and the first would never arrive as such.
        let free: Vec<usize> =
            (0..probes.len()).filter(|&i| !waiting.values().any(|(w, _)| *w == probes[i].1)).collect();
        if now >= next_probe && !free.is_empty() {
            let slot = free[fastrand::usize(..free.len())];
            serial += 1;
            let marker = format!("Soak{serial}x{}", fastrand::u32(..));
            if sandbox.ghl.update_contact(&probes[slot].1, serde_json::json!({ "lastName": marker })) {
                waiting.insert(marker, (probes[slot].1.clone(), Instant::now()));
                probes_made += 1;
            } else {
                // A random change deleted this probe contact: a new one takes its place.
                let location = probes[slot].0.clone();
                probes[slot].1 = sandbox
                    .ghl
                    .create_contact(&location, serde_json::json!({ "firstName": "Probe", "lastName": "Replaced" }));
                probes_replaced += 1;
            }
            next_probe += probe_gap;
        }
        delivered += collect(&sandbox, &mut waiting, &mut lags);
        if now >= next_sample {
            if std::env::var_os("SOAK_DEBUG").is_some() {
                for (marker, (id, made)) in
                    waiting.iter().filter(|(_, (_, made))| made.elapsed() > Duration::from_secs(20))
                {
                    eprintln!("stuck {marker} on {id} for {:?} (db {})", made.elapsed(), db.display());
                }
            }
            assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited: {}", tail(&log));
            lags.sort();
            let (pending, hints, dead) = depths(&db).await;
            let throttled = sandbox.ghl.stats().too_many_requests;
            samples.push(Sample {
                at: started.elapsed(),
                rss: rss_mib(pid),
                fds: open_fds(pid),
                pending,
                hints,
                dead,
                delivered,
                probes: lags.len(),
                p50: percentile(&lags, 0.50),
                p99: percentile(&lags, 0.99),
                max: percentile(&lags, 1.0),
                throttled: throttled - throttled_before,
            });
            throttled_before = throttled;
            lags.clear();
            delivered = 0;
            next_sample += knobs.sample;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Drain: every probe edit must arrive (unless a random change deleted its contact).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut superseded = 0;
    while !waiting.is_empty() && Instant::now() < deadline {
        collect(&sandbox, &mut waiting, &mut lags);
        // Still the contact's last name? A random change may have deleted the contact or
        // rewritten the name since: that edit was rightly folded into a later version.
        let before = waiting.len();
        waiting.retain(|marker, (id, _)| {
            sandbox.ghl.contact(id).is_some_and(|c| c["lastName"].as_str() == Some(marker.as_str()))
        });
        superseded += before - waiting.len();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_end = rss_mib(pid);
    let fds_end = open_fds(pid);
    signal_term(pid);
    let status = tokio::task::spawn_blocking(move || daemon.wait().unwrap()).await.unwrap();
    assert!(waiting.is_empty(), "{} probe edits never reached the sink: {}", waiting.len(), tail(&log));
    assert!(status.success(), "the daemon did not stop cleanly: {}", tail(&log));

    println!(
        "soak: {} s, {} locations × {} contacts, {:.1} random changes/s + {:.1} probe edits/s with webhooks, sandbox limit 100 per {} ms",
        knobs.run.as_secs(),
        knobs.locations,
        knobs.contacts,
        knobs.changes_per_second,
        knobs.probes_per_second,
        knobs.window.as_millis()
    );
    println!();
    println!(
        "| t (min) | RSS (MiB) | open fds | outbox pending | hints waiting | dead letters | deliveries | probes | lag p50 (ms) | lag p99 (ms) | lag max (ms) | GHL 429s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &samples {
        println!(
            "| {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {} |",
            s.at.as_secs_f64() / 60.0,
            s.rss,
            s.fds,
            s.pending,
            s.hints,
            s.dead,
            s.delivered,
            s.probes,
            s.p50,
            s.p99,
            s.max,
            s.throttled
        );
    }
    // Drift: the last sample against the first one after the first quarter (warm-up: the
    // backfill and SQLite's page cache filling).
    let warm = samples.iter().find(|s| s.at >= knobs.run / 4).or(samples.first());
    if let (Some(warm), Some(last)) = (warm, samples.last()) {
        println!();
        println!(
            "RSS after warm-up {:.1} MiB → at the end {:.1} MiB ({:+.1} %); open fds {} → {}; probe edits {} ({} deleted or rewritten by a random change before delivery, excluded; {} probe contacts deleted and replaced); all others delivered",
            warm.rss,
            last.rss,
            (last.rss / warm.rss - 1.0) * 100.0,
            warm.fds,
            fds_end,
            probes_made,
            superseded,
            probes_replaced
        );
        println!("RSS at stop {rss_end:.1} MiB");
    }
    sandbox.stop().await;
}

fn signal_term(pid: u32) {
    if let Err(error) = Command::new("kill").args(["-TERM", &pid.to_string()]).status() {
        eprintln!("kill -TERM {pid}: {error}");
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let knobs = Knobs::from_env(full);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(soak(knobs));
}
