//! Issue 21: token refresh is single-flight across replicas. Two `TokenManager`s ("replicas",
//! each with its own `Store` handle) on one PostgreSQL schema share one OAuth grant; when its
//! access token is due, only one of them spends the refresh token, the other uses the pair the
//! first committed. Skipped (with a message) where no PostgreSQL server answers, unless
//! `GHL_SYNC_REQUIRE_POSTGRES=1` (`.ci/run`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ghl_sync::cli::auth::{self as auth_cli, InstallOptions};
use ghl_sync::config::{Config, Secret, Settings};
use ghl_sync::ghl::TokenProvider;
use ghl_sync::ghl::tokens::TokenManager;
use ghl_sync::store::{Store, grants};
use ghl_sync_sandbox::ghl::{Fault, GhlOptions};
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

const KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const TTL: Duration = Duration::from_secs(3600);

/// One replica: its own store handle (connections) and token manager, its own clock skew.
struct Replica {
    store: Store,
    tokens: Arc<TokenManager>,
    skew: Arc<AtomicI64>,
}

impl Replica {
    async fn start(config: &Config, url: &str) -> Self {
        let store = Store::connect_postgres(url, Duration::from_secs(5)).await.unwrap();
        let skew = Arc::new(AtomicI64::new(0));
        let clock_skew = skew.clone();
        let tokens = TokenManager::from_config(config, store.clone(), CancellationToken::new()).unwrap().with_clock(
            ghl_sync::clock::Clock::from_fn(move || ghl_sync::store::now_ms() + clock_skew.load(Ordering::SeqCst)),
        );
        Self { store, tokens: Arc::new(tokens), skew }
    }

    fn advance(&self, by: Duration) {
        self.skew.fetch_add(i64::try_from(by.as_millis()).unwrap(), Ordering::SeqCst);
    }
}

/// The sandbox, a config for its OAuth app, and one installed location grant; `None` without
/// PostgreSQL (the skip is reported by the test store helper).
async fn setup(replicas: usize) -> Option<(Sandbox, Vec<Replica>, String)> {
    let url = ghl_sync::store::testing::postgres_test_url().await?;
    let options = GhlOptions { access_token_ttl: TTL, contacts_per_location: 5, ..GhlOptions::default() };
    let sandbox = Sandbox::start(SandboxOptions { ghl: options, ..Default::default() }, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut settings = Settings::default();
    settings.store.path = None;
    settings.store.url = Some(url.clone());
    settings.store.master_key = Some(Secret::new(KEY.to_owned()));
    settings.ghl.base_url = sandbox.ghl_url();
    settings.ghl.oauth = Some(crate::helpers::oauth_settings(&sandbox, "http://127.0.0.1:9/oauth/callback"));
    let config = Config::from_settings(settings).unwrap();
    let mut started = Vec::new();
    for _ in 0..replicas {
        started.push(Replica::start(&config, &url).await);
    }
    let location = sandbox.ghl.locations()[0].id.clone();
    let code = sandbox.ghl.authorization_code(Some(&location));
    let options = InstallOptions { write: false, code: Some(code), timeout: Duration::from_secs(5) };
    auth_cli::install(&config, &started[0].tokens, options, |_| {}).await.unwrap();
    Some((sandbox, started, location))
}

/// Negative control (checked by hand on 2026-12-06, three runs out of three): with
/// `grants::lock_refresh` made a no-op, this test fails in round 1 with `refresh_grants == 2`:
/// both replicas read the due row and spent the same refresh token. The second spend fell in
/// GHL's grace window, so it got the same pair and all 40 callers still agreed on one token;
/// outside the grace it would have killed the grant. The 200 ms latency on `/oauth/token`
/// keeps the race window wide open, so the control fails every time rather than by luck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_refreshing_one_grant_concurrently_spend_its_refresh_token_once() {
    if crate::helpers::runs_postgres_itself() {
        return;
    }
    let Some((sandbox, replicas, location)) = setup(2).await else { return };
    sandbox.ghl.set_fault("POST /oauth/token", Fault { latency: Duration::from_millis(200), ..Fault::default() });
    let mut seen = Vec::new();
    for round in 1..=3u64 {
        for replica in &replicas {
            replica.advance(TTL + Duration::from_secs(1));
        }
        sandbox.ghl.advance_clock(TTL + Duration::from_secs(1));
        let callers: Vec<_> = (0..20)
            .flat_map(|_| replicas.iter())
            .map(|replica| {
                let tokens = replica.tokens.clone();
                let location = location.clone();
                tokio::spawn(async move { tokens.bearer(&location).await.unwrap().expose_secret().to_owned() })
            })
            .collect();
        let mut tokens = Vec::new();
        for caller in callers {
            tokens.push(caller.await.unwrap());
        }
        assert_eq!(tokens.len(), 40);
        tokens.dedup();
        assert_eq!(tokens.len(), 1, "all 40 callers on both replicas share one token in round {round}");
        assert!(!seen.contains(&tokens[0]), "round {round} got a new token");
        seen.push(tokens[0].clone());
        let stats = sandbox.ghl.stats();
        assert_eq!(stats.refresh_grants, round, "one refresh per expiry across both replicas (round {round})");
        assert_eq!(stats.refresh_reuses, 0, "no refresh token was presented twice (round {round})");
        assert_eq!((stats.refresh_reuse_kills, stats.invalid_grants), (0, 0));
        for replica in &replicas {
            let row = grants::load(&replica.store, &location).await.unwrap().unwrap();
            assert_eq!(row.generation, 1 + round as i64, "install + one committed rotation per round");
        }
    }
    sandbox.stop().await;
}

/// A replica whose cached token GHL refuses (401) because another replica rotated the grant
/// re-reads the row and uses the newer generation: no second refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_on_a_token_another_replica_rotated_away_uses_the_newer_generation_without_refreshing() {
    if crate::helpers::runs_postgres_itself() {
        return;
    }
    let Some((sandbox, replicas, location)) = setup(2).await else { return };
    let (a, b) = (&replicas[0], &replicas[1]);
    let first = b.tokens.bearer(&location).await.unwrap();
    // Only A's clock says the token is due: A refreshes, B still holds the first token.
    a.advance(TTL);
    let second = a.tokens.bearer(&location).await.unwrap();
    assert_ne!(second.expose_secret(), first.expose_secret());
    assert_eq!(sandbox.ghl.stats().refresh_grants, 1);
    assert_eq!(b.tokens.bearer(&location).await.unwrap().expose_secret(), first.expose_secret(), "B's cache");
    // GHL answers B's request with 401: B forgets the token and takes the one A committed.
    assert!(b.tokens.invalidate(&location, &first).await);
    assert_eq!(b.tokens.bearer(&location).await.unwrap().expose_secret(), second.expose_secret());
    let stats = sandbox.ghl.stats();
    assert_eq!((stats.refresh_grants, stats.refresh_reuses, stats.invalid_grants), (1, 0, 0));
    assert_eq!(grants::load(&b.store, &location).await.unwrap().unwrap().generation, 2);
    sandbox.stop().await;
}
