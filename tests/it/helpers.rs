//! Shared helpers for the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The compiled `ghl-sync` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ghl-sync"))
}

/// Writes `text` as a config file in `dir` and returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("ghl-sync.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `ghl-sync ARGS` as a child process with stdout/stderr captured. Both pipes are
/// drained by threads from the start: a daemon that logs more than a pipe buffer (64 KiB)
/// while nobody reads would otherwise block on its next log line and stall.
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(binary());
    command.args(args);
    command.env_remove("RUST_LOG").env_remove("GHL_SYNC_CONFIG");
    for (key, value) in env {
        command.env(key, value);
    }
    spawn_command(command)
}

/// Like [`spawn`], but the child sees only `env` (as a container sees only its own).
pub fn spawn_with_only(args: &[&str], env: &[(String, String)]) -> Child {
    let mut command = Command::new(binary());
    command.args(args).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    spawn_command(command)
}

/// Like [`spawn`], but as user and group `id` (the caller must be root to switch; the standard
/// library drops root's supplementary groups when it switches the user).
pub fn spawn_as(id: u32, args: &[&str], env: &[(&str, &str)]) -> Child {
    use std::os::unix::process::CommandExt as _;
    let mut command = Command::new(binary());
    command.args(args).uid(id).gid(id);
    command.env_remove("RUST_LOG").env_remove("GHL_SYNC_CONFIG");
    for (key, value) in env {
        command.env(key, value);
    }
    spawn_command(command)
}

/// The effective user id of this process (the owner of `/proc/self`).
pub fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn spawn_command(mut command: Command) -> Child {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                std::io::Read::read_to_end(&mut pipe, &mut bytes).ok();
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    OUTPUTS.lock().unwrap().insert(child.id(), (stdout, stderr));
    child
}

type Drained = std::thread::JoinHandle<Vec<u8>>;

/// The drain threads of each spawned child, by process id.
static OUTPUTS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<u32, (Drained, Drained)>>> =
    std::sync::LazyLock::new(Default::default);

/// Everything the (exited) child wrote: (stdout, stderr). Every child's output is scanned
/// for the sandbox's credentials on the way (see [`credentials_in`]): a suite-wide log scan
/// of every test that runs the binary.
fn collect(child: &Child) -> (String, String) {
    let (stdout, stderr) = match OUTPUTS.lock().unwrap().remove(&child.id()) {
        Some((stdout, stderr)) => (
            String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into(),
            String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into(),
        ),
        None => (String::new(), String::new()),
    };
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        let found = credentials_in(text);
        assert!(found.is_empty(), "the child printed credentials on {name}: {found:?} (kinds and offsets only)");
    }
    (stdout, stderr)
}

/// Credentials of the sandbox's shapes found in `text`: (kind, byte offset). Sandbox PITs are
/// `pit-` and a UUID, its OAuth tokens `at-` / `rt-` and 48 hex digits, the fake Lusha's key
/// `sandbox-lusha-key`; the daemon must never print any of them, at any level.
pub fn credentials_in(text: &str) -> Vec<(&'static str, usize)> {
    let hex_run = |from: usize| text[from..].bytes().take_while(u8::is_ascii_hexdigit).count();
    let mut found = Vec::new();
    for (kind, prefix, min_hex) in [("pit", "pit-", 8), ("access token", "at-", 48), ("refresh token", "rt-", 48)] {
        for (at, _) in text.match_indices(prefix) {
            let boundary = at == 0 || !text.as_bytes()[at - 1].is_ascii_alphanumeric();
            if boundary && hex_run(at + prefix.len()) >= min_hex {
                found.push((kind, at));
            }
        }
    }
    found.extend(text.match_indices("sandbox-lusha-key").map(|(at, _)| ("lusha api key", at)));
    found
}

/// Sends a signal to a child process (`TERM`, `INT`, `KILL`).
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Waits for the child to exit, at most `limit`; kills it and panics when it does not.
pub fn wait_with_limit(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let (stdout, stderr) = collect(&child);
            return (status, stdout, stderr);
        }
        if started.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            let (_, stderr) = collect(&child);
            panic!("process did not exit within {limit:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `ghl-sync HEALTH_ARGS` with `env` (a container's or a unit's) until it prints `ok`, as
/// Docker's HEALTHCHECK would; `Err` when the daemon `child` exits first. Panics after 30 s.
pub fn wait_until_healthy(child: &mut Child, health_args: &[String], env: &[(String, String)]) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let output = Command::new(binary())
            .args(health_args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        if output.status.success() {
            assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
            return Ok(());
        }
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("the daemon exited with {status} before it was healthy"));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(started.elapsed() < Duration::from_secs(30), "not healthy within 30 s: {stderr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the sandbox answered a contact search with a token it accepted.
pub async fn wait_for_search(sandbox: &Sandbox, limit: Duration) {
    let started = Instant::now();
    loop {
        let stats = sandbox.ghl.stats();
        if stats.requests.get("POST /contacts/search").is_some_and(|n| *n > 0) {
            assert_eq!(stats.statuses.get(&401), None, "GHL refused the token: {stats:?}");
            return;
        }
        assert!(started.elapsed() < limit, "no contact search within {limit:?}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `path` exists (e.g. the database a daemon creates at start-up).
pub fn wait_for_file(path: &Path, limit: Duration) {
    let started = Instant::now();
    while !path.exists() {
        assert!(started.elapsed() < limit, "{} did not appear within {limit:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

use ghl_sync::config::{Config, LocationSettings, Settings};
use ghl_sync_sandbox::ghl::GhlOptions;
use ghl_sync_sandbox::{Sandbox, SandboxOptions};

/// Sandbox options for fast tests: generous rate limits so tests are not paced.
pub fn fast_ghl(contacts_per_location: usize) -> GhlOptions {
    GhlOptions {
        contacts_per_location,
        burst_max: 100_000,
        burst_window: Duration::from_secs(1),
        daily_max: 10_000_000,
        ..GhlOptions::default()
    }
}

/// Starts the sandbox on 127.0.0.1 with a random port.
pub async fn start_sandbox(ghl: GhlOptions) -> Sandbox {
    Sandbox::start(SandboxOptions { ghl, ..Default::default() }, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// Daemon settings aimed at the sandbox: every sandbox location with its PIT, a database in
/// `dir`, limits high enough not to pace tests, and one webhook connector `test`.
pub fn settings_for(sandbox: &Sandbox, dir: &Path) -> Settings {
    let mut settings = Settings::default();
    set_store(&mut settings, &dir.join("ghl-sync.db"));
    settings.ghl.base_url = sandbox.ghl_url();
    settings.ghl.locations = sandbox
        .ghl
        .locations()
        .into_iter()
        .map(|l| LocationSettings {
            id: l.id,
            name: Some(l.name),
            auth: ghl_sync::config::LocationAuth::Pit,
            pit: Some(ghl_sync::config::Secret::new(l.pit)),
            pit_env: None,
            pit_file: None,
            enabled: true,
        })
        .collect();
    settings.limits.ghl_burst_max = 100_000;
    settings.limits.ghl_burst_window = ghl_sync::config::Dur::secs(1);
    settings.limits.ghl_daily_budget = 10_000_000;
    settings.limits.max_backoff = ghl_sync::config::Dur::millis(200);
    settings.sync.dirty_debounce = ghl_sync::config::Dur::millis(0);
    settings.sync.index_lag_margin = ghl_sync::config::Dur::secs(0);
    settings.server.enabled = false;
    let hook: ghl_sync::config::WebhookConnectorSettings =
        toml::from_str(&format!("url = \"{}\"", sandbox.sink_url("test"))).unwrap();
    settings.connectors.webhook.insert("test".into(), hook);
    settings
}

/// Turns on the daemon's listener on a free port of 127.0.0.1, accepting the sandbox's signed
/// GHL webhooks (`App::server_addr` says where; point the sandbox there to have them sent).
pub fn listen_for_webhooks(settings: &mut Settings, sandbox: &Sandbox) {
    settings.server.enabled = true;
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.ghl.webhooks.public_keys = vec![sandbox.ghl.webhook_public_key()];
}

/// The daemon in-process, holding its store alone as `sync --once` does (SQLite: the file's
/// lock, as every daemon; PostgreSQL: the exclusive lock and every location without leases).
/// Leases are a replica's business: the tests that run `ghl-sync run` processes cover them.
pub async fn app(config: Config) -> anyhow::Result<ghl_sync::app::App> {
    ghl_sync::app::App::build_one_shot(config).await
}

/// A validated config from settings.
pub fn config(settings: Settings) -> Config {
    Config::from_settings(settings).unwrap()
}

/// Polls `check` every 20 ms until it is true or `limit` passes.
pub async fn eventually(limit: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if check() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    check()
}

/// A writable connection of its own on the daemon's database, for test set-up and fault
/// injection (backend-neutral SQL, see [`db`]): the store itself allows writes only through
/// its own operations.
pub async fn raw(store: &ghl_sync::store::Store) -> sqlx::AnyConnection {
    any_connection(&store_url_of(store)).await
}

/// Like [`raw`], for a store named by the path the test gave it (no `Store` at hand).
pub async fn raw_at(path: &Path) -> sqlx::AnyConnection {
    any_connection(&store_url(path)).await
}

async fn any_connection(url: &str) -> sqlx::AnyConnection {
    use sqlx::Connection as _;
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url).await.unwrap_or_else(|e| panic!("connecting to the test's store: {e}"))
}

/// Log lines written by a thread-local subscriber (JSON, every level): a current-thread
/// runtime's tasks all log into it.
#[derive(Clone, Default)]
pub struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Captures this thread's logs (JSON, every level) until the guard drops.
pub fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let settings = ghl_sync::config::LogSettings { format: ghl_sync::config::LogFormat::Json, level: "trace".into() };
    let guard = tracing::subscriber::set_default(ghl_sync::telemetry::subscriber(&settings, capture.clone()));
    (capture, guard)
}

/// Child reads the sandbox has answered (tasks and notes).
pub fn child_reads(sandbox: &ghl_sync_sandbox::Sandbox) -> u64 {
    let requests = sandbox.ghl.stats().requests;
    ["GET /contacts/:contactId/tasks", "GET /contacts/:contactId/notes"]
        .iter()
        .map(|route| requests.get(*route).copied().unwrap_or(0))
        .sum()
}

/// The `[ghl.oauth]` settings of the sandbox's OAuth app, redirecting to `redirect`.
pub fn oauth_settings(sandbox: &Sandbox, redirect: &str) -> ghl_sync::config::OAuthSettings {
    let (client_id, client_secret) = sandbox.ghl.oauth_client();
    ghl_sync::config::OAuthSettings {
        client_id,
        client_secret: Some(ghl_sync::config::Secret::new(client_secret)),
        client_secret_env: None,
        client_secret_file: None,
        redirect_url: redirect.parse().unwrap(),
        refresh_margin: ghl_sync::config::Dur::secs(60),
        install_url: "https://marketplace.gohighlevel.com/v2/oauth/chooselocation".parse().unwrap(),
    }
}

// ---- the store backend of this run ----------------------------------------------------------
//
// The suite runs twice in `scripts/test.sh` (the README's test command): on SQLite (default)
// and with `GHL_SYNC_TEST_BACKEND=postgres`, where every test's daemon keeps its store in a
// fresh schema of the run's PostgreSQL database (`ghl_sync::store::testing`). Tests name their
// store through these helpers, never by a file path or URL of their own, and inspect it with
// [`db`] (backend-neutral SQL: `$1` parameters, no PRAGMA); a test about SQLite itself (its
// files, its lock, a full disk) says so with [`sqlite_only`].

/// True when this run keeps the tests' stores on PostgreSQL (`GHL_SYNC_TEST_BACKEND=postgres`).
pub fn on_postgres() -> bool {
    match std::env::var("GHL_SYNC_TEST_BACKEND").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("GHL_SYNC_TEST_BACKEND must be sqlite or postgres, not {other:?}"),
    }
}

/// True (after saying why on stderr) when the test is about SQLite itself and this run is on
/// PostgreSQL: the caller returns; its SQLite run covers it.
pub fn sqlite_only(why: &str) -> bool {
    if on_postgres() {
        use std::io::Write as _;
        let _ignored = writeln!(std::io::stderr(), "not run on PostgreSQL (SQLite-specific: {why})");
    }
    on_postgres()
}

/// True (after saying so) when the test already runs against PostgreSQL on its own, so the
/// PostgreSQL pass of the suite would only repeat it.
pub fn runs_postgres_itself() -> bool {
    sqlite_only("the test uses PostgreSQL on its own in the default pass")
}

/// The fresh PostgreSQL schema standing in for the SQLite file `path`: one per path for the
/// life of the test process, so a test that names its store twice gets the same one.
fn postgres_url_for(path: &Path) -> String {
    static URLS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<PathBuf, String>>> =
        std::sync::LazyLock::new(Default::default);
    let mut urls = URLS.lock().unwrap();
    if let Some(url) = urls.get(path) {
        return url.clone();
    }
    // On a thread of its own: callers may be inside a runtime.
    let url = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(ghl_sync::store::testing::postgres_test_url())
            })
            .join()
            .unwrap()
    })
    .unwrap_or_else(|| panic!("GHL_SYNC_TEST_BACKEND=postgres, but no PostgreSQL server answers (see above)"));
    urls.insert(path.to_owned(), url.clone());
    url
}

/// The lease TTL of tests' daemons on PostgreSQL: short, so a daemon restarted after `kill -9`
/// gets its locations back within seconds (the default 30 s would outlast most tests).
const TEST_LEASE_TTL_SECS: u64 = 3;

/// The `[store]` keys of a test's store (the lines after `[store]`): `path = "…"` on SQLite,
/// `url = "…"` and a short lease TTL on PostgreSQL. `path` is the SQLite file the test would
/// use; on PostgreSQL it only names the schema.
pub fn store_keys(path: &Path) -> String {
    if on_postgres() {
        format!("url = {:?}\nlease_ttl = \"{TEST_LEASE_TTL_SECS}s\"\n", postgres_url_for(path))
    } else {
        format!("path = {:?}\n", path.to_str().unwrap())
    }
}

/// Points `settings` at the test's store (see [`store_keys`]).
pub fn set_store(settings: &mut Settings, path: &Path) {
    if on_postgres() {
        settings.store.path = None;
        settings.store.url = Some(postgres_url_for(path));
        settings.store.lease_ttl = ghl_sync::config::Dur::secs(TEST_LEASE_TTL_SECS);
    } else {
        settings.store.url = None;
        settings.store.path = Some(path.to_owned());
    }
}

/// The URL of the test's store (`sqlite://…` or `postgres://…`), e.g. for `GHL_SYNC__STORE__URL`.
pub fn store_url(path: &Path) -> String {
    if on_postgres() { postgres_url_for(path) } else { format!("sqlite://{}", path.to_str().unwrap()) }
}

/// Opens the test's store (migrated) as a tool would, on this run's backend.
pub async fn open_store(path: &Path) -> ghl_sync::store::Store {
    open_store_waiting(path, Duration::from_secs(5)).await
}

/// Like [`open_store`], giving up on a held lock after `busy` (SQLite's busy timeout,
/// PostgreSQL's `lock_timeout`).
pub async fn open_store_waiting(path: &Path, busy: Duration) -> ghl_sync::store::Store {
    let target = if on_postgres() {
        ghl_sync::config::StoreTarget::Postgres(postgres_url_for(path))
    } else {
        ghl_sync::config::StoreTarget::Sqlite(path.to_owned())
    };
    ghl_sync::store::Store::open(&target, busy).await.unwrap()
}

/// Opens a transaction on `conn` that keeps others from writing `table` until `ROLLBACK`
/// (SQLite: the database's write lock; PostgreSQL: an exclusive lock on the table, reads go on).
pub async fn hold_write_lock(conn: &mut sqlx::AnyConnection, table: &str) {
    if on_postgres() {
        sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
        sqlx::query(&format!("LOCK TABLE {table} IN EXCLUSIVE MODE")).execute(&mut *conn).await.unwrap();
    } else {
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.unwrap();
    }
}

/// True once the test's store exists (the SQLite file, or on PostgreSQL a migrated schema: the
/// daemon has created it at start-up).
pub async fn store_exists(path: &Path) -> bool {
    if !on_postgres() {
        return path.exists();
    }
    let db = db_at(path).await;
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'outbox'")
        .fetch_one(&db)
        .await
        .is_ok_and(|n| n > 0)
}

/// Waits until the daemon has created the test's store (see [`store_exists`]), at most `limit`.
pub fn wait_for_store(path: &Path, limit: Duration) {
    if !on_postgres() {
        return wait_for_file(path, limit);
    }
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    while !runtime.block_on(store_exists(path)) {
        assert!(started.elapsed() < limit, "the store of {} did not appear within {limit:?}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection pool of its own on the test's store, read-write, for inspection and fault
/// injection with backend-neutral SQL (`$1` parameters). One connection; dropped with the pool.
pub async fn db(store: &ghl_sync::store::Store) -> sqlx::AnyPool {
    any_pool(&store_url_of(store)).await
}

/// The URL of an open store (its location shows no PostgreSQL schema: it is asked).
fn store_url_of(store: &ghl_sync::store::Store) -> String {
    match store.location() {
        ghl_sync::store::Location::Sqlite(path) => format!("sqlite://{}", path.to_str().unwrap()),
        ghl_sync::store::Location::Postgres(_) => {
            ghl_sync::store::testing::postgres_schema_url(store.postgres_schema().unwrap()).unwrap()
        }
    }
}

/// Like [`db`], for a store named by the path the test gave it (no `Store` at hand).
pub async fn db_at(path: &Path) -> sqlx::AnyPool {
    any_pool(&store_url(path)).await
}

async fn any_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::pool::PoolOptions::<sqlx::Any>::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("inspecting the test's store: {e}"))
}

/// The rule "tests name their store only through these helpers" (so the PostgreSQL pass runs
/// every test on PostgreSQL): no test file opens a store, names a database file or reads the
/// SQLite pool by itself, except the files about one backend or about moving between them.
#[test]
fn tests_name_their_store_only_through_the_helpers() {
    const ABOUT_A_BACKEND: [&str; 6] = [
        "helpers.rs",
        "postgres.rs",       // the daemon on a PostgreSQL URL of its own
        "replicas.rs",       // replicas sharing one PostgreSQL store
        "replica_tokens.rs", // refresh across replicas on PostgreSQL
        "replica_outbox.rs", // outbox claims of two PostgreSQL handles
        "store_migrate.rs",  // SQLite into PostgreSQL
    ];
    let needles = [
        "read_pool()",
        "SqliteConnection",
        "Store::connect(",
        "Store::connect_postgres(",
        "store.path = Some",
        "\\npath = ",
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
    let mut offenders = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".rs") || ABOUT_A_BACKEND.contains(&name.as_str()) {
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, line) in text.lines().enumerate() {
            offenders.extend(needles.iter().filter(|n| line.contains(*n)).map(|n| format!("{name}:{}: {n}", i + 1)));
        }
    }
    assert!(checked > 25, "the walk found the test files ({checked})");
    assert!(offenders.is_empty(), "tests naming their store by themselves: {offenders:?}");
}
