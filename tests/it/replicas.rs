//! Issue 21: replicas. Three real `ghl-sync run` processes share one PostgreSQL store and 30
//! sandbox locations, each on an OAuth grant whose access token lives 2 s (refreshes all the
//! time), while contacts keep changing; one replica is `kill -9`ed mid-delivery (and
//! mid-refresh), a second one later, and a fresh replica joins. Asserted from the outside (the
//! sandbox's counters and the store's tables): the dead replicas' locations are taken over
//! within the lease TTL plus one heartbeat, every change is delivered and repeats come only
//! under the same idempotency key, GHL never answers 429, no grant dies (no refresh token spent
//! outside GHL's grace), and no location is ever polled by two replicas at once (the `runs`
//! each replica records never overlap across replicas). Skipped (with a message) where
//! no PostgreSQL server answers, unless `GHL_SYNC_REQUIRE_POSTGRES=1` (`.ci/run`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant};

use ghl_sync_sandbox::Sandbox;
use ghl_sync_sandbox::ghl::{Fault, GhlOptions};
use ghl_sync_sandbox::sink::Delivery;

use crate::crash::{MASTER_KEY, assert_one_key_per_version, record_of};
use crate::helpers::{eventually, signal, spawn, start_sandbox, wait_with_limit, write_config};

const LOCATIONS: usize = 30;

/// A `runs` row: location, replica, started, finished, last progress.
type RunRow = (String, String, i64, Option<i64>, Option<i64>);
const LEASE_TTL: Duration = Duration::from_secs(3);

/// Installs the app on every sandbox location through OAuth into the PostgreSQL store at
/// `url` (what `ghl-sync auth install` does once per location).
async fn install_grants(sandbox: &Sandbox, url: &str) {
    use ghl_sync::config::{Config, Secret, Settings};
    let mut settings = Settings::default();
    settings.store.path = None;
    settings.store.url = Some(url.to_owned());
    settings.store.master_key = Some(Secret::new(MASTER_KEY.to_owned()));
    settings.ghl.base_url = sandbox.ghl_url();
    settings.ghl.oauth = Some(crate::helpers::oauth_settings(sandbox, "http://127.0.0.1:9/oauth/callback"));
    let config = Config::from_settings(settings).unwrap();
    let store = ghl_sync::store::Store::connect_postgres(url, Duration::from_secs(5)).await.unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let tokens = ghl_sync::ghl::tokens::TokenManager::from_config(&config, store.clone(), cancel).unwrap();
    for location in sandbox.ghl.locations() {
        let code = sandbox.ghl.authorization_code(Some(&location.id));
        let options =
            ghl_sync::cli::auth::InstallOptions { write: false, code: Some(code), timeout: Duration::from_secs(5) };
        ghl_sync::cli::auth::install(&config, &tokens, options, |_| {}).await.unwrap();
    }
    store.close().await;
}

/// The replicas' rows: pid → replica id.
async fn replica_ids(pool: &sqlx::PgPool) -> BTreeMap<i64, String> {
    let rows: Vec<(i64, String)> = sqlx::query_as("SELECT pid, id FROM replicas").fetch_all(pool).await.unwrap();
    rows.into_iter().collect()
}

/// Unexpired leases: location → holder (the test and the replicas share a clock). Empty until
/// the first replica has created the tables.
async fn holders(pool: &sqlx::PgPool) -> BTreeMap<String, String> {
    let now = ghl_sync::store::now_ms();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT location_id, holder FROM location_leases WHERE holder IS NOT NULL AND expires_at > $1")
            .bind(now)
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    rows.into_iter().collect()
}

async fn kill(child: Child) {
    signal(&child, "KILL");
    let mut child = child;
    tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_thirty_locations_survive_kill_9_and_deliver_every_change_once_per_key() {
    if crate::helpers::runs_postgres_itself() {
        return;
    }
    let Some(url) = ghl_sync::store::testing::postgres_test_url().await else { return };
    // GHL's window scaled to one second: 40 requests per location per second.
    let ghl = GhlOptions {
        locations: LOCATIONS,
        contacts_per_location: 15,
        max_tasks_per_contact: 2,
        max_notes_per_contact: 1,
        burst_max: 40,
        burst_window: Duration::from_secs(1),
        daily_max: 10_000_000,
        access_token_ttl: Duration::from_secs(2),
        ..GhlOptions::default()
    };
    let sandbox: Sandbox = start_sandbox(ghl).await;
    // Every location runs on an OAuth grant whose access token lives 2 s: the replicas refresh
    // (and GHL rotates the refresh token) about 30 times a second between them, each refresh
    // slowed to 150 ms, so each kill lands in the middle of refreshes as well as deliveries.
    install_grants(&sandbox, &url).await;
    sandbox.ghl.set_fault("POST /oauth/token", Fault { latency: Duration::from_millis(150), ..Fault::default() });
    let dir = tempfile::tempdir().unwrap();
    let (client_id, client_secret) = sandbox.ghl.oauth_client();
    let text = format!(
        "[store]\nurl = {url:?}\nlease_ttl = \"3s\"\nmaster_key = \"{MASTER_KEY}\"\n\
         [ghl]\nbase_url = \"{ghl}\"\n[ghl.oauth]\nclient_id = \"{client_id}\"\nclient_secret = \"{client_secret}\"\n\
         redirect_url = \"http://127.0.0.1:9/oauth/callback\"\n\
         [server]\nenabled = false\n\
         [sync]\ncontacts_interval = \"2s\"\nindex_lag_margin = \"0s\"\ndirty_debounce = \"0s\"\n\
         [limits]\nghl_burst_max = 40\nghl_burst_window = \"1s\"\nghl_daily_budget = 10000000\nmax_backoff = \"200ms\"\n\
         [dispatch]\npoll_interval = \"100ms\"\nbackoff_base = \"50ms\"\nbackoff_max = \"500ms\"\n\
         [log]\nlevel = \"info\"\nformat = \"json\"\n\
         [connectors.webhook.test]\nurl = \"{sink}\"\nbatch_size = 20\n",
        ghl = sandbox.ghl_url(),
        sink = sandbox.sink_url("test"),
    );
    let path = write_config(dir.path(), &text);
    let path = path.to_str().unwrap().to_owned();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();

    let started = Instant::now();
    let mut replicas: Vec<Child> = (0..3).map(|_| spawn(&["run", "--config", &path], &[])).collect();
    let spread = eventually(Duration::from_secs(30), || {
        let holders = futures_executor_block(holders(&pool));
        let mut per: BTreeMap<&String, usize> = BTreeMap::new();
        for holder in holders.values() {
            *per.entry(holder).or_insert(0) += 1;
        }
        holders.len() == LOCATIONS && per.len() == 3 && per.values().all(|n| *n == LOCATIONS / 3)
    })
    .await;
    assert!(spread, "leases never spread 10/10/10: {:?}", holders(&pool).await);
    eprintln!("replicas: 30 leases spread 10/10/10 after {:.1} s", started.elapsed().as_secs_f64());

    // Contacts keep changing in every location while replicas die and join.
    let locations: Vec<String> = sandbox.ghl.locations().into_iter().map(|l| l.id).collect();
    let mut rng = fastrand::Rng::with_seed(21);
    let mut changed: BTreeMap<String, String> = BTreeMap::new();
    let mut changes: BTreeMap<String, usize> = BTreeMap::new();
    let mut mutate = |round: usize, sandbox: &Sandbox| {
        for _ in 0..3 {
            let location = &locations[rng.usize(..locations.len())];
            let ids = sandbox.ghl.contact_ids(location);
            let id = ids[rng.usize(..ids.len())].clone();
            let marker = format!("Replica{round}x{}", rng.u32(..1_000_000));
            assert!(sandbox.ghl.update_contact(&id, serde_json::json!({ "firstName": marker })));
            *changes.entry(id.clone()).or_insert(0) += 1;
            changed.insert(id, marker);
        }
    };

    // Kill one replica in the middle of delivering the backfill.
    let expected = crate::reliability::expected(&sandbox);
    let mut round = 0;
    while sandbox.sink.accepted(Some("test")).len() < expected.len() / 3 {
        assert!(started.elapsed() < Duration::from_secs(90), "deliveries never got a third of the way");
        mutate(round, &sandbox);
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids = replica_ids(&pool).await;
    let victim = replicas.remove(0);
    let victim_id = ids[&i64::from(victim.id())].clone();
    let before = holders(&pool).await;
    let orphaned = before.values().filter(|h| **h == victim_id).count();
    assert!(orphaned > 0, "the victim held no lease: {before:?}");
    // Mid-refresh: wait (briefly) until the victim holds a grant's refresh lock, that is, it
    // is between reading the row and committing the rotated pair (GHL's answer takes 150 ms).
    let refreshing = format!("ghl-sync refresh {victim_id}");
    let mut mid_refresh = false;
    for _ in 0..200 {
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
        )
        .bind(&refreshing)
        .fetch_one(&pool)
        .await
        .unwrap();
        if held > 0 {
            mid_refresh = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kill(victim).await;
    let killed = Instant::now();
    assert!(mid_refresh, "the victim never held a refresh lock (10 grants due every second)");
    eprintln!(
        "replicas: killed {victim_id} holding {orphaned} leases with {} of {} records delivered",
        sandbox.sink.accepted(Some("test")).len(),
        expected.len()
    );
    // Its locations move to the survivors within the TTL plus a heartbeat (plus slack).
    loop {
        let now = holders(&pool).await;
        if now.len() == LOCATIONS && now.values().all(|h| *h != victim_id) {
            break;
        }
        assert!(killed.elapsed() < LEASE_TTL * 3, "leases not taken over after {:?}: {now:?}", killed.elapsed());
        mutate(round, &sandbox);
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let takeover = killed.elapsed();
    eprintln!("replicas: {orphaned} leases taken over {} ms after kill -9", takeover.as_millis());
    assert!(takeover <= LEASE_TTL + LEASE_TTL / 3 + Duration::from_millis(1500), "takeover took {takeover:?}");

    // A fresh replica joins, then another one dies.
    replicas.push(spawn(&["run", "--config", &path], &[]));
    for _ in 0..15 {
        mutate(round, &sandbox);
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kill(replicas.remove(0)).await;
    for _ in 0..10 {
        mutate(round, &sandbox);
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Everything arrives: every record, and the latest change of every changed contact.
    let expected = crate::reliability::expected(&sandbox);
    let latest_arrived = |deliveries: &[Delivery]| {
        changed.values().all(|marker| deliveries.iter().any(|d| d.body.contains(marker.as_str())))
    };
    let complete = eventually(Duration::from_secs(90), || {
        let deliveries = sandbox.sink.accepted(Some("test"));
        deliveries.iter().map(record_of).collect::<BTreeSet<_>>() == expected && latest_arrived(&deliveries)
    })
    .await;
    let status_child = spawn(&["status", "--json", "--config", &path], &[]);
    let status =
        tokio::task::spawn_blocking(move || wait_with_limit(status_child, Duration::from_secs(20))).await.unwrap();
    let mut stderrs = Vec::new();
    for child in replicas {
        signal(&child, "TERM");
        let (exit, _, stderr) =
            tokio::task::spawn_blocking(move || wait_with_limit(child, Duration::from_secs(20))).await.unwrap();
        assert_eq!(exit.code(), Some(0), "{stderr}");
        stderrs.push(stderr);
    }
    assert!(complete, "not every change arrived; last replicas' logs: {}", stderrs.join("\n---\n"));

    // `status` showed the replicas and their leases.
    let shown: serde_json::Value = serde_json::from_str(&status.1).unwrap_or_else(|e| panic!("{e}: {}", status.2));
    assert!(shown["replicas"].as_array().is_some_and(|r| r.len() >= 2), "{}", shown["replicas"]);
    assert_eq!(shown["leases"].as_array().map(Vec::len), Some(LOCATIONS));

    // Repeats only under the same key.
    let deliveries = sandbox.sink.accepted(Some("test"));
    let redeliveries = assert_one_key_per_version(&deliveries, &changes);

    // GHL never throttled anyone, and no grant died: a refresh token is spent again only by
    // a replica that took over from one killed between GHL's answer and its commit, inside
    // GHL's grace (counted as a reuse, answered with the same pair).
    let stats = sandbox.ghl.stats();
    assert_eq!(stats.too_many_requests, 0, "{:?}", stats.statuses);
    assert_eq!((stats.refresh_reuse_kills, stats.invalid_grants), (0, 0), "a grant died: {stats:?}");
    assert!(stats.refresh_grants >= 100, "refreshes all along: {}", stats.refresh_grants);
    let needs_reauth: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM grants WHERE needs_reauth <> 0").fetch_one(&pool).await.unwrap();
    assert_eq!(needs_reauth, 0);

    // No location was ever polled by two replicas at once: each replica's runs of a location
    // end before another replica's next run of it starts. A run cut short by kill -9 has no
    // end: its last recorded progress is the bound.
    let runs: Vec<RunRow> = sqlx::query_as(
        "SELECT location_id, replica, started_at, finished_at, progress_at FROM runs ORDER BY location_id, started_at, id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut by_location: BTreeMap<&str, Vec<(&str, i64, i64)>> = BTreeMap::new();
    for (location, replica, started_at, finished_at, progress_at) in &runs {
        let end = finished_at.or(*progress_at).unwrap_or(*started_at);
        by_location.entry(location).or_default().push((replica, *started_at, end));
    }
    let mut moves = 0;
    for (location, runs) in &by_location {
        for pair in runs.windows(2) {
            let ((a, _, a_end), (b, b_start, _)) = (pair[0], pair[1]);
            if a != b {
                moves += 1;
                assert!(
                    a_end <= b_start,
                    "{location}: {a}'s run ended at {a_end}, after {b}'s began at {b_start}; runs (replica, start, end): {runs:?}"
                );
            }
        }
    }
    assert_eq!(by_location.len(), LOCATIONS);
    assert!(moves >= 10, "locations moved between replicas {moves} times");
    eprintln!(
        "replicas: {} records, {} changes, {} accepted deliveries, {} same-key redeliveries, {} runs, {moves} moves between replicas, {} GHL requests, 0 × 429, {} refreshes, {} refresh-token reuses inside the grace, 0 grants lost",
        expected.len(),
        changed.len(),
        deliveries.len(),
        redeliveries,
        runs.len(),
        stats.requests.values().sum::<u64>(),
        stats.refresh_grants,
        stats.refresh_reuses
    );
    pool.close().await;
    sandbox.stop().await;
}

/// Runs a store read from inside a synchronous `eventually` check.
fn futures_executor_block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

/// A replica that loses a location's lease in the middle of a contacts stream reads no further
/// page (the page in hand is committed) and starts no bulk work; the next holder resumes from
/// the stored cursor and reads the rest once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contacts_stream_stops_at_the_page_where_the_lease_is_lost_and_the_next_holder_resumes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ghl_sync::sync::engine::{Engine, RunOptions};

    let sandbox = start_sandbox(GhlOptions { locations: 1, ..crate::helpers::fast_ghl(350) }).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::helpers::settings_for(&sandbox, dir.path());
    settings.sync.page_size = 100;
    let app = crate::helpers::app(crate::helpers::config(settings)).await.unwrap();
    let location = sandbox.ghl.locations()[0].id.clone();
    let engine = |fence: Option<ghl_sync::sync::engine::Fence>| {
        let engine = Engine::new(
            app.store.clone(),
            app.ghl.clone(),
            app.engine.settings().clone(),
            app.engine.subscribers().to_vec(),
        );
        match fence {
            Some(fence) => engine.with_fence(fence),
            None => engine,
        }
    };
    let searches = || sandbox.ghl.stats().requests.get("POST /contacts/search").copied().unwrap_or(0);
    let tasks = || sandbox.ghl.stats().requests.keys().filter(|k| k.contains("/tasks") || k.contains("/notes")).count();

    // The lease holds at the first page and is gone at the second.
    let checks = Arc::new(AtomicUsize::new(0));
    let counted = checks.clone();
    let fenced = engine(Some(Arc::new(move |_: &str| counted.fetch_add(1, Ordering::SeqCst) == 0)));
    let summary = fenced.run_once(&location, RunOptions::default()).await.unwrap();
    assert_eq!((summary.pages, summary.contacts_seen), (2, 200), "{summary:?}");
    assert_eq!(searches(), 2, "no page read after the lease was lost");
    assert_eq!(tasks(), 0, "no bulk work after the lease was lost");

    // The next holder reads on from the cursor (the seeded contacts share timestamps, so the
    // overlap re-reads them) and stores the other 150 as new; none of the first 200 again.
    let summary = engine(None).run_once(&location, RunOptions::default()).await.unwrap();
    assert_eq!(summary.events.get("contact.created").copied(), Some(150), "{summary:?}");
    assert_eq!(summary.contacts_changed, 150, "{summary:?}");
    sandbox.stop().await;
}
