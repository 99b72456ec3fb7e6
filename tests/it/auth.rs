//! Token manager and OAuth against the sandbox's fake GHL: single-flight refresh across
//! expiries, 401 recovery, `invalid_grant` parking one location, the grace window after a
//! lost commit, agency installs, encryption at rest and token-free logs.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use ghl_sync::cli::auth::{self as auth_cli, InstallOptions};
use ghl_sync::config::{Config, Secret, Settings};
use ghl_sync::crypto::MasterKey;
use ghl_sync::ghl::dto::SearchRequest;
use ghl_sync::ghl::oauth::UserType;
use ghl_sync::ghl::tokens::TokenManager;
use ghl_sync::ghl::{AuthError, GhlClient, GhlError, TokenProvider};
use ghl_sync::http::{ApiClient, ClientSettings, HeaderScheme, Priority, RetryPolicy};
use ghl_sync::store::Store;
use ghl_sync::store::grants;
use ghl_sync_sandbox::ghl::GhlOptions;

use crate::helpers::capture;
use ghl_sync_sandbox::{Sandbox, SandboxOptions};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use url::Url;

const KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const TTL: Duration = Duration::from_secs(3600);

struct Env {
    sandbox: Sandbox,
    _dir: tempfile::TempDir,
    config: Config,
    store: Store,
    tokens: Arc<TokenManager>,
    /// Added to our clock; the fake's clock is advanced separately.
    skew: Arc<AtomicI64>,
}

impl Env {
    async fn start(options: GhlOptions) -> Self {
        Self::start_with(options, "http://127.0.0.1:9/oauth/callback").await
    }

    async fn start_with(options: GhlOptions, redirect: &str) -> Self {
        let sandbox =
            Sandbox::start(SandboxOptions { ghl: options, ..Default::default() }, "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        crate::helpers::set_store(&mut settings, &dir.path().join("ghl-sync.db"));
        settings.store.master_key = Some(Secret::new(KEY.to_owned()));
        settings.ghl.base_url = sandbox.ghl_url();
        settings.ghl.oauth = Some(crate::helpers::oauth_settings(&sandbox, redirect));
        let config = Config::from_settings(settings).unwrap();
        let store = crate::helpers::open_store(&dir.path().join("ghl-sync.db")).await;
        let skew = Arc::new(AtomicI64::new(0));
        let clock_skew = skew.clone();
        let tokens = TokenManager::from_config(&config, store.clone(), CancellationToken::new()).unwrap().with_clock(
            ghl_sync::clock::Clock::from_fn(move || ghl_sync::store::now_ms() + clock_skew.load(Ordering::SeqCst)),
        );
        Self { sandbox, _dir: dir, config, store, tokens: Arc::new(tokens), skew }
    }

    /// Moves both clocks: ours (token expiry) and the fake's (token validity, grace).
    fn advance(&self, by: Duration) {
        self.advance_ours(by);
        self.sandbox.ghl.advance_clock(by);
    }

    fn advance_ours(&self, by: Duration) {
        self.skew.fetch_add(i64::try_from(by.as_millis()).unwrap(), Ordering::SeqCst);
    }

    fn location(&self, i: usize) -> String {
        self.sandbox.ghl.locations()[i].id.clone()
    }

    async fn install(&self, location: Option<&str>) -> auth_cli::InstallReport {
        let code = self.sandbox.ghl.authorization_code(location);
        let options = InstallOptions { write: false, code: Some(code), timeout: Duration::from_secs(5) };
        auth_cli::install(&self.config, &self.tokens, options, |_| {}).await.unwrap()
    }

    fn client(&self) -> GhlClient {
        let settings = ClientSettings {
            service: "ghl",
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy {
                max_retries: 3,
                base_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(100),
            },
            headers: HeaderScheme::Ghl,
            user_agent: "ghl-sync-test".into(),
        };
        let api = ApiClient::new(settings, None, CancellationToken::new()).unwrap();
        GhlClient::new(api, self.sandbox.ghl_url(), "2021-07-28".into(), self.tokens.clone())
    }

    async fn read(&self, client: &GhlClient, location: &str) -> Result<usize, GhlError> {
        let request = SearchRequest::updated_since(location, 5, None);
        client.search_contacts(&request, Priority::Poll).await.map(|r| r.contacts.len())
    }

    /// The refresh token stored for `resource`, decrypted.
    async fn stored_refresh_token(&self, resource: &str) -> SecretString {
        let row = grants::load(&self.store, resource).await.unwrap().unwrap();
        let key = MasterKey::parse(&SecretString::from(KEY.to_owned())).unwrap();
        key.open(&row.refresh_token.unwrap().0).unwrap()
    }
}

fn options() -> GhlOptions {
    GhlOptions { access_token_ttl: TTL, contacts_per_location: 5, ..GhlOptions::default() }
}

#[tokio::test]
async fn fifty_concurrent_callers_across_three_expiries_refresh_once_per_expiry() {
    let env = Env::start(options()).await;
    let location = env.location(0);
    env.install(Some(&location)).await;
    let client = env.client();
    let mut seen = Vec::new();
    for round in 1..=3u64 {
        env.advance(TTL + Duration::from_secs(1));
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let tokens = env.tokens.clone();
                let location = location.clone();
                tokio::spawn(async move { tokens.bearer(&location).await.unwrap().expose_secret().to_owned() })
            })
            .collect();
        let mut tokens = Vec::new();
        for caller in callers {
            tokens.push(caller.await.unwrap());
        }
        tokens.dedup();
        assert_eq!(tokens.len(), 1, "all 50 callers share one fresh token in round {round}");
        assert!(!seen.contains(&tokens[0]), "round {round} got a new token");
        seen.push(tokens[0].clone());
        let stats = env.sandbox.ghl.stats();
        assert_eq!(stats.refresh_grants, round, "exactly one refresh per expiry");
        assert_eq!(env.read(&client, &location).await.unwrap(), 5, "the refreshed token works");
    }
    let stats = env.sandbox.ghl.stats();
    assert_eq!(stats.invalid_grants, 0, "no refresh token was ever reused");
    assert_eq!(stats.refresh_grants, 3);
    let row = grants::load(&env.store, &location).await.unwrap().unwrap();
    assert_eq!(row.generation, 4, "install + three rotations, each committed");
    env.sandbox.stop().await;
}

#[tokio::test]
async fn concurrent_401s_mid_run_cause_one_refresh_and_every_request_recovers() {
    let env = Env::start(options()).await;
    let location = env.location(0);
    env.install(Some(&location)).await;
    let client = env.client();
    assert_eq!(env.read(&client, &location).await.unwrap(), 5);
    // GHL expires the access token while we still believe it valid: every call gets a 401.
    env.sandbox.ghl.advance_clock(TTL + Duration::from_secs(1));
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            let location = location.clone();
            tokio::spawn(async move {
                let request = SearchRequest::updated_since(&location, 5, None);
                client.search_contacts(&request, Priority::Poll).await.map(|r| r.contacts.len())
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap(), 5);
    }
    let stats = env.sandbox.ghl.stats();
    assert_eq!(stats.refresh_grants, 1, "ten 401s, one refresh");
    assert_eq!(stats.invalid_grants, 0);
    assert!(stats.statuses.get(&401).copied().unwrap_or(0) >= 1);
    env.sandbox.stop().await;
}

// Current-thread runtime: the log capture (a thread-local default) sees every task.
#[tokio::test(flavor = "current_thread")]
async fn invalid_grant_parks_one_location_while_another_keeps_working() {
    let (logs, _guard) = capture();
    let env = Env::start(options()).await;
    let (a, b) = (env.location(0), env.location(1));
    env.install(Some(&a)).await;
    env.install(Some(&b)).await;
    let client = env.client();
    // Someone else uses A's refresh token (a second process, a copied database): GHL rotates,
    // and once the grace is over the chain is dead.
    let stolen = env.stored_refresh_token(&a).await;
    env.tokens.oauth().unwrap().refresh(&stolen, UserType::Location).await.unwrap();
    env.advance(TTL + Duration::from_secs(1));

    let error = env.tokens.bearer(&a).await.unwrap_err();
    assert!(matches!(error, AuthError::NeedsReauth { ref location, .. } if *location == a), "{error}");
    let row = grants::load(&env.store, &a).await.unwrap().unwrap();
    assert!(row.needs_reauth);
    assert!(row.reauth_reason.as_deref().unwrap().contains("refused the refresh token"));
    let (status, reason) = grants::location_status(&env.store, &a).await.unwrap().unwrap();
    assert_eq!(status, "needs_reauth");
    assert!(reason.is_some());

    // B refreshes and reads as if nothing happened.
    assert_eq!(env.read(&client, &b).await.unwrap(), 5);
    assert_eq!(grants::location_status(&env.store, &b).await.unwrap().unwrap().0, "active");

    // A stays parked without hammering GHL; the client reports it as needing re-authorisation.
    let refreshes = env.sandbox.ghl.stats().refresh_grants;
    let error = env.read(&client, &a).await.unwrap_err();
    assert!(error.needs_reauth() && !error.is_retryable(), "{error}");
    assert_eq!(env.sandbox.ghl.stats().refresh_grants, refreshes);
    assert_eq!(env.sandbox.ghl.stats().invalid_grants, 1);

    let text = logs.text();
    let alerts = text.lines().filter(|l| l.contains("needs re-authorisation") && l.contains("\"ERROR\"")).count();
    assert_eq!(alerts, 1, "the operator is told once:\n{text}");
    assert!(text.contains("ghl-sync auth install"));

    // Re-installing clears the mark.
    env.install(Some(&a)).await;
    assert_eq!(env.read(&client, &a).await.unwrap(), 5);
    assert_eq!(grants::location_status(&env.store, &a).await.unwrap().unwrap().0, "active");
    env.sandbox.stop().await;
}

#[tokio::test]
async fn a_refresh_lost_before_its_commit_is_recovered_inside_the_grace_window() {
    let env = Env::start(options()).await;
    let location = env.location(0);
    env.install(Some(&location)).await;
    // The daemon refreshed, GHL rotated, and the process died before committing.
    let old = env.stored_refresh_token(&location).await;
    let lost = env.tokens.oauth().unwrap().refresh(&old, UserType::Location).await.unwrap();
    // Restarted 10 s later: the token is due, and the store still has the old refresh token.
    env.advance(Duration::from_secs(10));
    env.advance_ours(TTL);
    let token = env.tokens.bearer(&location).await.unwrap();
    assert_eq!(token.expose_secret(), lost.access_token.expose_secret(), "the grace returns the same pair");
    assert_eq!(
        env.stored_refresh_token(&location).await.expose_secret(),
        lost.refresh_token.unwrap().expose_secret(),
        "the rotated refresh token is now committed"
    );
    assert_eq!(env.sandbox.ghl.stats().invalid_grants, 0);
    env.sandbox.stop().await;
}

#[tokio::test]
async fn an_agency_install_stores_its_locations_and_mints_location_tokens() {
    let env = Env::start(options()).await;
    let report = env.install(None).await;
    assert_eq!(report.kind, grants::GrantKind::Company);
    assert_eq!(report.locations.len(), 2);
    let client = env.client();
    let location = env.location(1);
    assert_eq!(env.read(&client, &location).await.unwrap(), 5);
    assert_eq!(env.read(&client, &location).await.unwrap(), 5);
    assert_eq!(env.sandbox.ghl.stats().location_token_grants, 1, "the minted token is reused until it expires");
    env.advance(TTL + Duration::from_secs(1));
    assert_eq!(env.read(&client, &location).await.unwrap(), 5);
    let stats = env.sandbox.ghl.stats();
    assert_eq!((stats.location_token_grants, stats.refresh_grants), (2, 1), "agency token refreshed, new mint");
    let status = auth_cli::status_report(&env.config, &env.tokens).await.unwrap();
    assert!(status.contains("company") && status.contains(&report.resource_id), "{status}");
    env.sandbox.stop().await;
}

#[tokio::test]
async fn install_receives_the_redirect_on_its_own_listener() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let env = Env::start_with(options(), &format!("http://127.0.0.1:{port}/oauth/callback")).await;
    let location = env.location(0);
    let code = env.sandbox.ghl.authorization_code(Some(&location));
    let (url_tx, url_rx) = tokio::sync::oneshot::channel::<Url>();
    let tokens = env.tokens.clone();
    let config = env.config.clone();
    let install = tokio::spawn(async move {
        let options = InstallOptions { write: true, code: None, timeout: Duration::from_secs(10) };
        auth_cli::install(&config, &tokens, options, move |url| url_tx.send(url.clone()).unwrap()).await
    });
    let install_url = url_rx.await.unwrap();
    assert!(install_url.as_str().contains("contacts.write"));
    // GHL sends the browser back with the code and the install's own state.
    let state = install_url.query_pairs().find(|(k, _)| k == "state").map(|(_, v)| v.into_owned()).unwrap();
    let http = reqwest::Client::builder().build().unwrap();
    let redirect = format!("http://127.0.0.1:{port}/oauth/callback?code={code}&state={state}");
    let mut answered = false;
    for _ in 0..200 {
        if http.get(&redirect).send().await.is_ok_and(|r| r.status().is_success()) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered);
    let report = install.await.unwrap().unwrap();
    assert_eq!(report.resource_id, location);
    assert!(report.missing_scopes.is_empty(), "{:?}", report.missing_scopes);
    assert!(env.tokens.bearer(&location).await.is_ok());
    env.sandbox.stop().await;
}

#[tokio::test]
async fn imported_pits_are_served_from_the_store_and_a_401_is_not_refreshed() {
    let env = Env::start(options()).await;
    let info = env.sandbox.ghl.locations()[0].clone();
    let message =
        auth_cli::import_pit(&env.tokens, &info.id, SecretString::from(format!("{}\n", info.pit))).await.unwrap();
    assert!(message.contains(&info.id) && !message.contains(&info.pit));
    let client = env.client();
    assert_eq!(env.read(&client, &info.id).await.unwrap(), 5);
    assert!(!env.tokens.invalidate(&info.id, &SecretString::from(info.pit.clone())).await);
    let status = auth_cli::status_report(&env.config, &env.tokens).await.unwrap();
    assert!(status.contains("pit") && status.contains(&info.id) && !status.contains(&info.pit), "{status}");
    // A wrong PIT: one 401, no refresh, a clear error.
    auth_cli::import_pit(&env.tokens, &info.id, SecretString::from("pit-wrong".to_owned())).await.unwrap();
    let error = env.read(&client, &info.id).await.unwrap_err();
    assert!(matches!(error, GhlError::Unauthorized { .. }), "{error}");
    assert_eq!(env.sandbox.ghl.stats().refresh_grants, 0);
    env.sandbox.stop().await;
}

/// Every file of the database (main, WAL, shared memory).
fn database_bytes(env: &Env) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(env._dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap_or_default());
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "current_thread")]
async fn tokens_are_neither_stored_in_plain_text_nor_logged_through_a_refresh_cycle() {
    let (logs, _guard) = capture();
    let env = Env::start(options()).await;
    let location = env.location(0);
    env.install(Some(&location)).await;
    let client = env.client();
    let mut secrets = vec![env.sandbox.ghl.oauth_client().1];
    secrets.push(env.tokens.bearer(&location).await.unwrap().expose_secret().to_owned());
    secrets.push(env.stored_refresh_token(&location).await.expose_secret().to_owned());
    // A full cycle: read, expiry, refresh, a 401, a second refresh, read again.
    assert_eq!(env.read(&client, &location).await.unwrap(), 5);
    env.advance(TTL + Duration::from_secs(1));
    assert_eq!(env.read(&client, &location).await.unwrap(), 5);
    secrets.push(env.tokens.bearer(&location).await.unwrap().expose_secret().to_owned());
    secrets.push(env.stored_refresh_token(&location).await.expose_secret().to_owned());
    env.sandbox.ghl.advance_clock(TTL + Duration::from_secs(1));
    assert_eq!(env.read(&client, &location).await.unwrap(), 5);
    secrets.push(env.tokens.bearer(&location).await.unwrap().expose_secret().to_owned());
    secrets.push(env.stored_refresh_token(&location).await.expose_secret().to_owned());
    assert_eq!(env.sandbox.ghl.stats().refresh_grants, 2);

    let text = logs.text();
    assert!(text.contains("Refreshed the GHL access token"), "the capture works:\n{text}");
    let db = database_bytes(&env);
    for secret in &secrets {
        assert!(secret.len() > 16);
        assert!(!text.contains(secret.as_str()), "a secret leaked into the logs");
        assert!(!contains(&db, secret), "a secret is stored in plain text");
    }
    env.sandbox.stop().await;
}

#[tokio::test]
async fn write_endpoints_round_trip_against_the_fake() {
    use ghl_sync::ghl::write::{CreateContact, DeleteOutcome, NewTask, NoteWrite, TaskUpdate, UpdateContact};
    let env = Env::start(options()).await;
    let info = env.sandbox.ghl.locations()[0].clone();
    auth_cli::import_pit(&env.tokens, &info.id, SecretString::from(info.pit.clone())).await.unwrap();
    let client = env.client();
    let loc = info.id.as_str();

    let created = client
        .create_contact(&CreateContact {
            location_id: info.id.clone(),
            first_name: Some("Ada".into()),
            email: Some("ada@example.test".into()),
            gender: Some("female".into()),
            tags: vec!["vip".into()],
            ..CreateContact::default()
        })
        .await
        .unwrap();
    let id = created.id.clone();
    let update = UpdateContact { last_name: Some("Lovelace".into()), ..UpdateContact::default() };
    client.update_contact(loc, &id, &update).await.unwrap();
    assert_eq!(env.sandbox.ghl.contact(&id).unwrap()["lastName"], "Lovelace");
    let tags = client.add_tags(loc, &id, &["lusha".into()]).await.unwrap();
    assert!(tags.contains(&"lusha".to_owned()) && tags.contains(&"vip".to_owned()), "{tags:?}");
    let tags = client.remove_tags(loc, &id, &["vip".into()]).await.unwrap();
    assert!(!tags.contains(&"vip".to_owned()), "{tags:?}");

    let task = NewTask {
        title: "Call".into(),
        body: None,
        due_date: "2026-01-01T00:00:00.000Z".into(),
        completed: false,
        assigned_to: None,
    };
    let task = client.create_task(loc, &id, &task).await.unwrap();
    let updated = TaskUpdate { title: Some("Call back".into()), ..TaskUpdate::default() };
    client.update_task(loc, &id, &task.id, &updated).await.unwrap();
    let done = client.complete_task(loc, &id, &task.id, true).await.unwrap();
    assert_eq!(done.completed, Some(true));
    let fetched = client.get_task(loc, &id, &task.id, Priority::Poll).await.unwrap().unwrap();
    assert_eq!(fetched.extra["title"], "Call back");
    assert_eq!(client.delete_task(loc, &id, &task.id).await.unwrap(), DeleteOutcome::Deleted);
    assert!(client.get_task(loc, &id, &task.id, Priority::Poll).await.unwrap().is_none());

    let note = NoteWrite { body: Some("enriched".into()), ..NoteWrite::default() };
    let note = client.create_note(loc, &id, &note).await.unwrap();
    let edit = NoteWrite { body: Some("enriched again".into()), ..NoteWrite::default() };
    client.update_note(loc, &id, &note.id, &edit).await.unwrap();
    let fetched = client.get_note(loc, &id, &note.id, Priority::Poll).await.unwrap().unwrap();
    assert_eq!(fetched.extra["body"], "enriched again");
    assert_eq!(client.delete_note(loc, &id, &note.id).await.unwrap(), DeleteOutcome::Deleted);

    client.list_appointments(loc, &id, Priority::Poll).await.unwrap();
    let fields = client.custom_fields(loc, Some("contact"), Priority::Poll).await.unwrap();
    assert!(fields.iter().all(|f| !f.id.is_empty()));
    client.business_contacts(loc, "no-such-business", 25, 0, Priority::Poll).await.unwrap();

    assert_eq!(client.delete_contact(loc, &id).await.unwrap(), DeleteOutcome::Deleted);
    assert_eq!(client.delete_contact(loc, &id).await.unwrap(), DeleteOutcome::NotFound);
    assert_eq!(env.sandbox.ghl.stats().statuses.get(&422), None, "no body was rejected");
    env.sandbox.stop().await;
}

#[tokio::test]
async fn creates_are_never_blindly_repeated_after_a_timeout_or_a_422() {
    use ghl_sync::ghl::write::CreateContact;
    use ghl_sync_sandbox::ghl::Fault;
    let env = Env::start(options()).await;
    let info = env.sandbox.ghl.locations()[0].clone();
    auth_cli::import_pit(&env.tokens, &info.id, SecretString::from(info.pit.clone())).await.unwrap();
    let settings = ClientSettings {
        service: "ghl",
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_millis(200),
        retry: RetryPolicy {
            max_retries: 3,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        },
        headers: HeaderScheme::Ghl,
        user_agent: "ghl-sync-test".into(),
    };
    let api = ApiClient::new(settings, None, CancellationToken::new()).unwrap();
    let client = GhlClient::new(api, env.sandbox.ghl_url(), "2021-07-28".into(), env.tokens.clone());
    let contact =
        CreateContact { location_id: info.id.clone(), first_name: Some("T".into()), ..CreateContact::default() };
    let route = "POST /contacts/";

    env.sandbox.ghl.set_fault(route, Fault { latency: Duration::from_millis(600), ..Fault::default() });
    let error = client.create_contact(&contact).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert_eq!(env.sandbox.ghl.stats().requests.get(route), Some(&1), "a timed-out create is sent once");

    env.sandbox.ghl.set_fault(route, Fault { status: Some(422), status_after_write: true, ..Fault::default() });
    let error = client.create_contact(&contact).await.unwrap_err();
    assert!(matches!(error, GhlError::Api { ref message, .. } if message == "Unprocessable Entity"), "{error}");
    assert!(!error.is_retryable());
    assert_eq!(env.sandbox.ghl.stats().requests.get(route), Some(&2));
    env.sandbox.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_oauth_grant_of_another_integration_is_imported_with_one_refresh_and_serves_reads() {
    let (logs, _guard) = capture();
    // "The other integration" installed the app and holds a refresh token.
    let env = Env::start(options()).await;
    let location = env.location(0);
    env.install(Some(&location)).await;
    let pasted = env.stored_refresh_token(&location).await;
    let refreshes = env.sandbox.ghl.stats().refresh_grants;

    // Without a master key nothing is refreshed, so the pasted token is not burned.
    let dir = tempfile::tempdir().unwrap();
    let store = crate::helpers::open_store(&dir.path().join("ghl-sync.db")).await;
    let oauth = ghl_sync::ghl::tokens::oauth_client(&env.config, CancellationToken::new()).unwrap();
    let keyless = TokenManager::new(store.clone(), None, oauth, Default::default(), Duration::from_secs(60));
    let error = auth_cli::import_oauth(&env.config, &keyless, &location, pasted.clone()).await.unwrap_err();
    assert!(format!("{error:#}").contains("master key"), "{error:#}");
    assert_eq!(env.sandbox.ghl.stats().refresh_grants, refreshes);

    // ghl-sync's own store takes it over: one refresh, the rotated pair stored sealed.
    let tokens = Arc::new(TokenManager::from_config(&env.config, store.clone(), CancellationToken::new()).unwrap());
    let piped = SecretString::from(format!("{}\n", pasted.expose_secret()));
    let message = auth_cli::import_oauth(&env.config, &tokens, &location, piped).await.unwrap();
    assert!(message.contains(&location) && message.contains("used up"), "{message}");
    assert!(!message.contains(pasted.expose_secret()));
    assert_eq!(env.sandbox.ghl.stats().refresh_grants, refreshes + 1, "exactly one refresh proves the token");
    let row = grants::load(&store, &location).await.unwrap().unwrap();
    assert_eq!((row.kind, row.generation), (grants::GrantKind::Location, 1));
    let key = MasterKey::parse(&SecretString::from(KEY.to_owned())).unwrap();
    let rotated = key.open(&row.refresh_token.unwrap().0).unwrap();
    assert_ne!(rotated.expose_secret(), pasted.expose_secret(), "GHL rotated it; the new one is kept");
    let mut db = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        db.extend(std::fs::read(entry.unwrap().path()).unwrap_or_default());
    }
    assert!(!contains(&db, rotated.expose_secret()), "stored in plain text");

    // The imported grant serves reads and refreshes itself like an installed one.
    let api = ApiClient::new(
        ClientSettings {
            service: "ghl",
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            headers: HeaderScheme::Ghl,
            user_agent: "ghl-sync-test".into(),
        },
        None,
        CancellationToken::new(),
    )
    .unwrap();
    let client = GhlClient::new(api, env.sandbox.ghl_url(), "2021-07-28".into(), tokens.clone());
    assert_eq!(env.read(&client, &location).await.unwrap(), 5);

    // A token that was already used (after GHL's grace) is refused with a message that says so.
    env.sandbox.ghl.advance_clock(Duration::from_secs(60));
    let again = auth_cli::import_oauth(&env.config, &tokens, &location, pasted.clone()).await.unwrap_err();
    assert!(format!("{again:#}").contains("GHL refused the refresh token"), "{again:#}");

    let text = logs.text();
    assert!(text.contains("Imported an OAuth grant"), "{text}");
    assert!(!text.contains(pasted.expose_secret()) && !text.contains(rotated.expose_secret()), "a token was logged");
    env.sandbox.stop().await;
}
