//! The store: every table, every SQL statement and every transaction of the daemon.
//!
//! Contract (what this module promises, and how it keeps it):
//! - **SQL lives here only.** Every `sqlx::query*` call is under `src/store/`; clippy's
//!   `disallowed-methods` (clippy.toml) rejects them anywhere else in the crate, and this
//!   module alone allows them. Write transactions can only be opened here: `begin_write` is
//!   private to `store`, and the store hands out no writable pool.
//! - **Two backends, one set of statements.** SQLite (the default, a file) or PostgreSQL
//!   (`store.url = "postgres://…"`). Store functions write each statement once and run it
//!   through [`db::on_db!`], compiled for both backends ([`db`] says which SQL both accept).
//! - **One writer, fair, short.** All writes go through one dedicated connection behind a fair
//!   (FIFO) async mutex: [`Store::begin_write`] takes it and starts the transaction
//!   (`BEGIN IMMEDIATE` on SQLite). Waiters queue in order instead of polling SQLite's busy
//!   handler, so a webhook insert waits only for the writes queued before it, never for a
//!   lucky sleeper. Write transactions are opened inside the store's own operations, which
//!   take plain data: no caller can hold the write lock across a network call.
//! - **Reads cannot write.** Reads use a separate pool whose connections are read-only
//!   (`PRAGMA query_only = ON` on SQLite, `default_transaction_read_only` on PostgreSQL): a
//!   write that bypasses the writer fails loudly instead of contending for the lock.
//! - **A failed transaction never poisons the writer.** A transaction that is dropped or fails
//!   to commit is rolled back before the next one begins; if the rollback itself fails, the
//!   connection is closed and a fresh one opened. The outcome of the last write is kept for
//!   `/readyz` ([`Store::write_health`]).

#![allow(
    clippy::disallowed_methods,
    reason = "the store is the one place that runs SQL (clippy.toml bans sqlx::query* elsewhere)"
)]

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions as _, Connection as _};
use tokio::sync::{Mutex, MutexGuard};

use self::db::{Conn, Db, Pool, on_db};

pub mod codec;
pub mod contact_view;
pub mod cursors;
pub mod daily;
pub(crate) mod db;
pub mod dead_letters;
pub mod grants;
pub mod hints;
pub mod incidents;
pub mod leases;
pub mod locations;
pub mod lucky_orange;
pub mod lusha;
pub mod outbox;
mod planner;
pub mod rules;
pub mod runs;
pub mod snapshot;
pub mod staged_tasks;
pub mod status;
#[doc(hidden)]
pub mod testing;
pub mod transfer;
mod upgrades;
pub mod writebacks;

/// Errors the store reports to its callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the database directory {path}: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("cannot open the lock file {path}: {source}{}", not_writable_hint(source))]
    LockFile { path: PathBuf, source: std::io::Error },
    #[error("cannot open the database {path}: {source}{hint}")]
    Open { path: PathBuf, source: sqlx::Error, hint: &'static str },
    #[error("cannot connect to the PostgreSQL store {target}: {source}")]
    OpenPostgres { target: String, source: sqlx::Error },
    #[error(
        "the database {path} was written by a newer ghl-sync (schema version {found}, this build knows up to {known}); \
         upgrade ghl-sync or point [store] path at another file"
    )]
    NewerSchema { path: PathBuf, found: i64, known: i64 },
    #[error("migrating the database {path} failed: {source}")]
    Migrate { path: PathBuf, source: sqlx::migrate::MigrateError },
    #[error("another ghl-sync process is using {path} (lock file {lock} is held)")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error(
        "other ghl-sync processes are using the PostgreSQL store {target} (a tool that needs it to itself, or daemons \
         while a tool asks for it alone: stop them first)"
    )]
    LockedPostgres { target: String },
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
    /// The writer was not free within the caller's deadline (only callers that set one, such
    /// as the webhook receiver, see this; they answer "try again later").
    #[error("the store is busy (no write slot within {0:?})")]
    Busy(Duration),
    /// Another replica held the token refresh lock of a grant for longer than the wait allows
    /// (its refresh hangs, or its connection is stuck); the caller retries later.
    #[error("the token refresh of grant {resource} is held by another replica (not free within {waited:?})")]
    RefreshLockTimeout { resource: String, waited: Duration },
}

impl StoreError {
    /// Whether the error says the disk is full or the database cannot be written at all
    /// (SQLite codes 13 `SQLITE_FULL`, 8 `SQLITE_READONLY`, 10 `SQLITE_IOERR`; PostgreSQL
    /// SQLSTATE 53100 `disk_full`, 25006 `read_only_sql_transaction`, 58030 `io_error`).
    pub fn is_disk_problem(&self) -> bool {
        let db = match self {
            StoreError::Query(sqlx::Error::Database(db))
            | StoreError::Open { source: sqlx::Error::Database(db), .. } => db,
            _ => return false,
        };
        if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() {
            return matches!(db.code().as_deref(), Some("53100" | "25006" | "58030"));
        }
        let code = db.code().and_then(|c| c.parse::<i64>().ok());
        matches!(code.map(|c| c & 0xff), Some(8 | 10 | 13))
    }
}

/// The SQLite writer connection's page cache, in KiB (`PRAGMA cache_size = -N`).
const WRITER_CACHE_KIB: u32 = 32 * 1024;

/// WAL pages (4 KiB) after which the SQLite writer checkpoints (`PRAGMA wal_autocheckpoint`;
/// SQLite's default is 1,000), and the size the WAL file is cut back to after one. 48,000
/// pages (~190 MB) against 16,000: a 1M-contact first sync wrote 17.3 GB instead of 20.0 GB
/// and ran 8,140–8,462 contacts/s instead of 7,151–7,811 (docs/benchmarks.md).
const WAL_CHECKPOINT_PAGES: u32 = 48_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How the last write went, for `/readyz` and `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteHealth {
    /// The last write transaction failed (and none succeeded since): why, without data.
    pub failing: Option<String>,
    /// Epoch ms of the last successful commit.
    pub last_ok_ms: Option<i64>,
}

/// The single write connection and what the last transaction left behind.
struct WriterSlot<C> {
    conn: Option<C>,
    /// A transaction was dropped without commit or rollback: roll back before the next.
    dirty: bool,
}

/// The one write connection of a backend and how to open it again.
struct Writer<C: sqlx::Connection> {
    slot: Mutex<WriterSlot<C>>,
    options: C::Options,
}

impl<C: sqlx::Connection> Writer<C> {
    fn new(conn: C, options: C::Options) -> Self {
        Self { slot: Mutex::new(WriterSlot { conn: Some(conn), dirty: false }), options }
    }

    /// A writer that connects on first use.
    fn lazy(options: C::Options) -> Self {
        Self { slot: Mutex::new(WriterSlot { conn: None, dirty: false }), options }
    }
}

enum Backend {
    Sqlite {
        read: SqlitePool,
        writer: Writer<SqliteConnection>,
    },
    /// `schema`: where the tables live (`current_schema()` at open). `urgent`: a second writer
    /// connection for short writes that must not queue behind page commits (lease renewals:
    /// a replica whose renewal waits past its fence stops polling its own locations).
    Postgres {
        read: PgPool,
        writer: Writer<PgConnection>,
        urgent: Box<Writer<PgConnection>>,
        schema: String,
    },
}

/// Where the store lives, for messages (a PostgreSQL URL without its credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Location {
    /// Where `[store]` points, as messages may show it.
    pub fn of(target: &crate::config::StoreTarget) -> Self {
        match target {
            crate::config::StoreTarget::Sqlite(path) => Location::Sqlite(path.clone()),
            crate::config::StoreTarget::Postgres(url) => Location::Postgres(redact_postgres_url(url)),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(target) => f.write_str(target),
        }
    }
}

struct Inner {
    backend: Backend,
    health: StdMutex<WriteHealth>,
    location: Location,
    /// PostgreSQL: when the planner statistics were last checked ([`planner`]).
    statistics: planner::Freshness,
}

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("location", &self.inner.location).finish_non_exhaustive()
    }
}

type SlotGuard<'a> = Db<MutexGuard<'a, WriterSlot<SqliteConnection>>, MutexGuard<'a, WriterSlot<PgConnection>>>;
type SlotMut<'a> = Db<&'a mut WriterSlot<SqliteConnection>, &'a mut WriterSlot<PgConnection>>;

fn slot_mut<'a>(slot: &'a mut SlotGuard<'_>) -> SlotMut<'a> {
    match slot {
        Db::Sqlite(guard) => Db::Sqlite(&mut **guard),
        Db::Postgres(guard) => Db::Postgres(&mut **guard),
    }
}

/// An open write transaction on the store's one writer connection.
/// Commit it with [`WriteTx::commit`]; dropping it rolls it back (before the next write).
pub(crate) struct WriteTx<'a> {
    slot: SlotGuard<'a>,
    health: &'a StdMutex<WriteHealth>,
    purpose: &'static str,
    started: Instant,
    finished: bool,
}

impl WriteTx<'_> {
    /// The transaction's connection, for the backend's statements ([`db::on_db!`]).
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        // A WriteTx exists only with an open connection (begin_write guarantees it).
        match &mut self.slot {
            Db::Sqlite(slot) => {
                Db::Sqlite(slot.conn.as_mut().unwrap_or_else(|| unreachable!("write transaction without a connection")))
            }
            Db::Postgres(slot) => Db::Postgres(
                slot.conn.as_mut().unwrap_or_else(|| unreachable!("write transaction without a connection")),
            ),
        }
    }
}

impl WriteTx<'_> {
    /// Commits. On failure the transaction is rolled back (or the connection replaced) so
    /// the next writer starts clean, and the error is returned.
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        let result = on_db!(slot_mut(&mut self.slot), |slot| match slot.conn.as_mut() {
            Some(conn) => sqlx::query("COMMIT").execute(conn).await.map(|_| ()),
            None => Ok(()),
        });
        // Only now: a commit cancelled while `COMMIT` is on the wire drops this transaction
        // unfinished, which marks the slot for a rollback by the next writer.
        self.finished = true;
        match result {
            Ok(()) => {
                record(self.health, self.purpose, self.started, None);
                Ok(())
            }
            Err(error) => {
                recover(slot_mut(&mut self.slot)).await;
                let error = StoreError::Query(error);
                record(self.health, self.purpose, self.started, Some(&error));
                Err(error)
            }
        }
    }

    /// Rolls back (a dry run, or a decision to write nothing).
    pub(crate) async fn rollback(mut self) -> Result<(), StoreError> {
        let failed = on_db!(slot_mut(&mut self.slot), |slot| match slot.conn.as_mut() {
            Some(conn) => sqlx::query("ROLLBACK").execute(conn).await.is_err(),
            None => false,
        });
        // As in `commit`: finished only once the rollback has answered.
        self.finished = true;
        if failed {
            recover(slot_mut(&mut self.slot)).await;
        }
        Ok(())
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if !self.finished {
            // A statement failed (the caller returned its error) or the task was cancelled
            // half-way: the next `begin_write` rolls back first. Until a later commit
            // succeeds, readiness reports the store as failing to write: a full or read-only
            // disk fails statements before it fails commits.
            on_db!(slot_mut(&mut self.slot), |slot| slot.dirty = true);
            let held = self.started.elapsed();
            metrics::counter!("ghl_sync_store_writes_total", "purpose" => self.purpose, "outcome" => "abandoned")
                .increment(1);
            metrics::histogram!("ghl_sync_store_write_hold_seconds", "purpose" => self.purpose)
                .record(held.as_secs_f64());
            let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
            health.failing = Some(format!("a `{}` write did not complete", self.purpose));
        }
    }
}

/// Brings the writer connection back to "no transaction": a rollback, else a new connection.
async fn recover(slot: SlotMut<'_>) {
    on_db!(slot, |slot| {
        // Clean only once the rollback has answered: a recovery cancelled half-way must not
        // let the next writer commit what is left of an abandoned transaction.
        slot.dirty = true;
        let Some(conn) = slot.conn.as_mut() else {
            slot.dirty = false;
            return;
        };
        match sqlx::query("ROLLBACK").execute(&mut *conn).await {
            Ok(_) => {}
            // "cannot rollback - no transaction is active": already clean.
            Err(error) if error.to_string().contains("no transaction is active") => {}
            Err(error) => {
                tracing::warn!(error = %error, "The store's write connection could not roll back; reopening it");
                if let Some(conn) = slot.conn.take() {
                    let _closed = conn.close().await;
                }
            }
        }
        slot.dirty = false;
    })
}

/// Counts a finished write transaction and keeps its outcome for `/readyz`.
fn record(health: &StdMutex<WriteHealth>, purpose: &'static str, started: Instant, error: Option<&StoreError>) {
    let held = started.elapsed();
    let outcome = if error.is_some() { "failed" } else { "committed" };
    metrics::counter!("ghl_sync_store_writes_total", "purpose" => purpose, "outcome" => outcome).increment(1);
    metrics::histogram!("ghl_sync_store_write_hold_seconds", "purpose" => purpose).record(held.as_secs_f64());
    if held > Duration::from_secs(2) {
        tracing::warn!(purpose, held_ms = held.as_millis() as u64, "A store write held the write lock for over 2 s");
    }
    let mut health = health.lock().unwrap_or_else(|e| e.into_inner());
    match error {
        None => {
            health.failing = None;
            health.last_ok_ms = Some(now_ms());
        }
        Some(error) => health.failing = Some(error.to_string()),
    }
}

/// What a read-only connection is told on open.
const QUERY_ONLY: &str = "query_only";

/// A PostgreSQL URL as it may be shown: scheme, host, port and database, no credentials.
pub fn redact_postgres_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "postgres://…".to_owned() };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    format!("{scheme}://{rest}")
}

impl Store {
    /// Opens (creating if needed) the database at `path`, refuses a newer schema and migrates.
    pub async fn connect(path: &Path, busy_timeout: Duration) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory { path: dir.to_path_buf(), source })?;
        }
        let open_error = |source: sqlx::Error| {
            let hint = open_hint(path, &source);
            StoreError::Open { path: path.to_path_buf(), source, hint }
        };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_error)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Token rotation must survive power loss; write volume is small (a commit per page).
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Only another process (a CLI command next to the daemon) can make the writer wait
            // on SQLite's own lock; in-process writers queue on the writer mutex instead.
            .busy_timeout(busy_timeout)
            // Statements are logged at debug; only a really slow one (a stalled disk) warns.
            .log_statements(log::LevelFilter::Debug)
            .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(5));
        // The writer's page cache holds the interior and hot leaf pages of the random-key
        // indexes a first sync inserts into (the contacts key, `outbox_record`): with SQLite's
        // default 2 MiB, a store of 1M contacts re-read most of them from the OS for each page
        // commit. A bound, so RSS stays flat in the store's size (issue 22, docs/benchmarks.md).
        //
        // The writer also checkpoints less often than SQLite's default 1,000 WAL pages (4 MiB,
        // less than one page commit of a first sync, so every commit also checkpointed): a
        // random-key leaf dirtied by several commits is then copied into the database once per
        // checkpoint instead of once per commit. The WAL file is cut back to the same bound
        // after a checkpoint. Durability is the WAL's either way (`synchronous = FULL`).
        let writer_options = options
            .clone()
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
            .pragma("wal_autocheckpoint", WAL_CHECKPOINT_PAGES.to_string())
            .pragma("journal_size_limit", (WAL_CHECKPOINT_PAGES * 4096).to_string());
        // The writer connects first: it creates the file and switches it to WAL.
        let writer_conn = writer_options.connect().await.map_err(open_error)?;
        restrict_permissions(path);
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone().pragma(QUERY_ONLY, "ON"))
            .await
            .map_err(open_error)?;
        let backend = Backend::Sqlite { read, writer: Writer::new(writer_conn, writer_options) };
        let store = Self::from_backend(backend, Location::Sqlite(path.to_path_buf()));
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user:password@host/db`),
    /// refuses a newer schema and migrates (sqlx's migrator holds an advisory lock, so
    /// replicas starting together migrate once).
    pub async fn connect_postgres(url: &str, busy_timeout: Duration) -> Result<Self, StoreError> {
        let target = redact_postgres_url(url);
        let open_error = |source: sqlx::Error| StoreError::OpenPostgres { target: target.clone(), source };
        let options = PgConnectOptions::from_str(url)
            .map_err(open_error)?
            .application_name("ghl-sync")
            // A statement waiting on a lock longer than this fails like SQLite's busy timeout.
            .options([("lock_timeout", format!("{}", busy_timeout.as_millis()))])
            // Plan each execution with its values: the generic plan of a prepared statement
            // assumes a location holds few rows and scans the whole location for a page's
            // `contact_id IN (…)` lookup (455 ms per page at 50,000 contacts: the diff ran at
            // 1,085 contacts/s instead of 26,476; docs/benchmarks.md, "Both backends").
            .options([("plan_cache_mode", "force_custom_plan")])
            .log_statements(log::LevelFilter::Debug)
            .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(5));
        let writer_conn = options.connect().await.map_err(open_error)?;
        let read = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone().options([("default_transaction_read_only", "on")]))
            .await
            .map_err(open_error)?;
        // NULL when the search_path names no existing schema (the migrations then say so).
        let schema: Option<String> =
            sqlx::query_scalar("SELECT current_schema()").fetch_one(&read).await.map_err(open_error)?;
        let schema = schema.unwrap_or_default();
        let backend = Backend::Postgres {
            read,
            urgent: Box::new(Writer::lazy(options.clone().application_name("ghl-sync urgent"))),
            writer: Writer::new(writer_conn, options),
            schema,
        };
        let store = Self::from_backend(backend, Location::Postgres(target));
        store.migrate().await?;
        Ok(store)
    }

    /// Opens the store `[store]` names: a SQLite file or a PostgreSQL database.
    pub async fn open(target: &crate::config::StoreTarget, busy_timeout: Duration) -> Result<Self, StoreError> {
        match target {
            crate::config::StoreTarget::Sqlite(path) => Self::connect(path, busy_timeout).await,
            crate::config::StoreTarget::Postgres(url) => Self::connect_postgres(url, busy_timeout).await,
        }
    }

    fn from_backend(backend: Backend, location: Location) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                health: StdMutex::new(WriteHealth::default()),
                location,
                statistics: planner::Freshness::default(),
            }),
        }
    }

    /// Applies pending migrations, then the one-time data upgrades not done yet; idempotent.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = match &self.inner.backend {
            Backend::Sqlite { .. } => &MIGRATOR,
            Backend::Postgres { .. } => &PG_MIGRATOR,
        };
        let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        // No migrations table yet (a new database) reads as None.
        let applied: Option<i64> =
            on_db!(self.db(), |pool| sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(pool)
                .await
                .unwrap_or_default());
        let path = PathBuf::from(self.inner.location.to_string());
        if let Some(found) = applied.filter(|v| *v > known) {
            return Err(StoreError::NewerSchema { path, found, known });
        }
        let migrated = match &self.inner.backend {
            Backend::Sqlite { writer, .. } => {
                let mut slot = writer.slot.lock().await;
                let conn = writer_conn(writer, &mut slot, &self.inner.location).await?;
                migrator.run(conn).await
            }
            Backend::Postgres { writer, .. } => {
                let mut slot = writer.slot.lock().await;
                let conn = writer_conn(writer, &mut slot, &self.inner.location).await?;
                migrator.run(conn).await
            }
        };
        migrated.map_err(|source| StoreError::Migrate { path, source })?;
        // Data upgrades write through the one writer like every other write.
        upgrades::run(self).await
    }

    /// The read pool of the backend, for statements run through [`db::on_db!`].
    pub(crate) fn db(&self) -> Pool<'_> {
        match &self.inner.backend {
            Backend::Sqlite { read, .. } => Db::Sqlite(read),
            Backend::Postgres { read, .. } => Db::Postgres(read),
        }
    }

    /// A new PostgreSQL connection of its own (not the writer, not from the read pool), with the
    /// store's connect options (so the same schema), for session-level advisory locks that must
    /// not be held by a shared connection; `None` on SQLite.
    pub(in crate::store) async fn dedicated_postgres(
        &self,
        application_name: &str,
    ) -> Result<Option<PgConnection>, StoreError> {
        let Backend::Postgres { writer, .. } = &self.inner.backend else { return Ok(None) };
        let conn = writer
            .options
            .clone()
            .application_name(application_name)
            .connect()
            .await
            .map_err(|source| StoreError::OpenPostgres { target: self.inner.location.to_string(), source })?;
        Ok(Some(conn))
    }

    /// Whether this store runs on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.inner.backend, Backend::Postgres { .. })
    }

    /// The SQLite read pool (`query_only`: writing through it fails), for tests that inspect a
    /// SQLite store's tables. Store functions use [`Store::db`] (a unit test keeps it so).
    ///
    /// # Panics
    /// On a PostgreSQL store.
    pub fn read_pool(&self) -> &SqlitePool {
        match &self.inner.backend {
            Backend::Sqlite { read, .. } => read,
            Backend::Postgres { .. } => unreachable!("a SQLite-only store operation ran on PostgreSQL (issue 21)"),
        }
    }

    /// Starts a write transaction on the one writer connection, waiting in line (FIFO) for
    /// it. `purpose` labels metrics and slow-write warnings.
    pub(in crate::store) async fn begin_write(&self, purpose: &'static str) -> Result<WriteTx<'_>, StoreError> {
        self.begin_lane(purpose, false).await
    }

    /// Like [`Store::begin_write`], on PostgreSQL on the urgent writer connection, which no
    /// page commit holds: for short writes whose delay costs more than their own time (lease
    /// renewals). SQLite has one writer per database whatever the connection, so there it is
    /// `begin_write`.
    pub(in crate::store) async fn begin_urgent_write(&self, purpose: &'static str) -> Result<WriteTx<'_>, StoreError> {
        self.begin_lane(purpose, true).await
    }

    /// Waits for the writer (on PostgreSQL the `urgent` one when asked) and begins.
    async fn begin_lane(&self, purpose: &'static str, urgent: bool) -> Result<WriteTx<'_>, StoreError> {
        let waited = Instant::now();
        let slot = match &self.inner.backend {
            Backend::Sqlite { writer, .. } => Db::Sqlite(writer.slot.lock().await),
            Backend::Postgres { writer, urgent: side, .. } => {
                Db::Postgres(if urgent { &**side } else { writer }.slot.lock().await)
            }
        };
        metrics::histogram!("ghl_sync_store_write_wait_seconds", "purpose" => purpose)
            .record(waited.elapsed().as_secs_f64());
        self.begin_on(slot, purpose, urgent).await
    }

    /// Like [`Store::begin_write`], but gives up with [`StoreError::Busy`] when the writer is
    /// not free within `deadline` (the webhook receiver answers 429 then, never 5xx).
    pub(in crate::store) async fn begin_write_within(
        &self,
        purpose: &'static str,
        deadline: Duration,
    ) -> Result<WriteTx<'_>, StoreError> {
        let waited = Instant::now();
        let locked = match &self.inner.backend {
            Backend::Sqlite { writer, .. } => tokio::time::timeout(deadline, writer.slot.lock()).await.map(Db::Sqlite),
            Backend::Postgres { writer, .. } => {
                tokio::time::timeout(deadline, writer.slot.lock()).await.map(Db::Postgres)
            }
        };
        let Ok(slot) = locked else {
            metrics::counter!("ghl_sync_store_busy_total", "purpose" => purpose).increment(1);
            return Err(StoreError::Busy(deadline));
        };
        metrics::histogram!("ghl_sync_store_write_wait_seconds", "purpose" => purpose)
            .record(waited.elapsed().as_secs_f64());
        self.begin_on(slot, purpose, false).await
    }

    /// Begins a transaction on `slot`, the writer's (or on PostgreSQL the `urgent` writer's).
    async fn begin_on<'a>(
        &'a self,
        mut slot: SlotGuard<'a>,
        purpose: &'static str,
        urgent: bool,
    ) -> Result<WriteTx<'a>, StoreError> {
        let started = Instant::now();
        let location = &self.inner.location;
        let begun = match (&mut slot, &self.inner.backend) {
            (Db::Sqlite(slot), Backend::Sqlite { writer, .. }) => {
                if slot.dirty {
                    recover(Db::Sqlite(&mut **slot)).await;
                }
                // Until the transaction is handed out: a caller cancelled while `BEGIN` is on
                // the wire leaves it open, and the next writer rolls back first.
                slot.dirty = true;
                match writer_conn(writer, &mut **slot, location).await {
                    Ok(conn) => {
                        sqlx::query("BEGIN IMMEDIATE").execute(conn).await.map(|_| ()).map_err(StoreError::Query)
                    }
                    Err(error) => Err(error),
                }
            }
            (Db::Postgres(slot), Backend::Postgres { writer, urgent: urgent_writer, .. }) => {
                let writer = if urgent { &**urgent_writer } else { writer };
                if slot.dirty {
                    recover(Db::Postgres(&mut **slot)).await;
                }
                if self.inner.statistics.due() {
                    tokio::spawn(planner::analyze_stale_tables(writer.options.clone()));
                }
                // See the SQLite arm.
                slot.dirty = true;
                match writer_conn(writer, &mut **slot, location).await {
                    Ok(conn) => sqlx::query("BEGIN").execute(conn).await.map(|_| ()).map_err(StoreError::Query),
                    Err(error) => Err(error),
                }
            }
            _ => unreachable!("a writer slot of another backend"),
        };
        if let Err(error) = begun {
            // Whatever the state of this connection, the next writer gets a fresh one.
            on_db!(slot_mut(&mut slot), |slot| if let Some(conn) = slot.conn.take() {
                let _closed = conn.close().await;
            });
            record(&self.inner.health, purpose, started, Some(&error));
            return Err(error);
        }
        // Handed out: from here an unfinished transaction marks the slot when it drops.
        on_db!(slot_mut(&mut slot), |slot| slot.dirty = false);
        Ok(WriteTx { slot, health: &self.inner.health, purpose, started, finished: false })
    }

    /// Fault injection for tests and drills: caps the database at `pages` pages on the
    /// writer connection (SQLite's `max_page_count`), so a write that needs more space fails
    /// exactly as on a full disk (`SQLITE_FULL`); `None` lifts the cap. A reopened writer
    /// connection starts uncapped. SQLite only (a no-op on PostgreSQL).
    pub async fn limit_pages_for_tests(&self, pages: Option<u64>) -> Result<(), StoreError> {
        let Backend::Sqlite { writer, .. } = &self.inner.backend else { return Ok(()) };
        let mut slot = writer.slot.lock().await;
        let conn = writer_conn(writer, &mut slot, &self.inner.location).await?;
        let pages = pages.unwrap_or(1_073_741_823);
        sqlx::query(&format!("PRAGMA max_page_count = {pages}")).execute(conn).await?;
        Ok(())
    }

    /// How the last write went (for `/readyz`).
    pub fn write_health(&self) -> WriteHealth {
        self.inner.health.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The SQLite database file (empty for a PostgreSQL store).
    pub fn path(&self) -> &Path {
        match &self.inner.location {
            Location::Sqlite(path) => path,
            Location::Postgres(_) => Path::new(""),
        }
    }

    /// Where the store lives (a PostgreSQL URL without credentials).
    pub fn location(&self) -> &Location {
        &self.inner.location
    }

    /// The newest schema version applied to this database.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let version: Option<i64> =
            on_db!(self.db(), |pool| sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(pool)
                .await?);
        Ok(version.unwrap_or(0))
    }

    /// The PostgreSQL schema holding the store's tables (`current_schema()` when it was opened:
    /// `public` unless the URL's `options` set a `search_path`); `None` on SQLite. The
    /// integration tests reach a store's schema by it ([`Location`] shows no query string: it
    /// may hold credentials).
    pub fn postgres_schema(&self) -> Option<&str> {
        match &self.inner.backend {
            Backend::Sqlite { .. } => None,
            Backend::Postgres { schema, .. } => Some(schema),
        }
    }

    /// Closes the pools and the writer, waiting for connections to finish.
    pub async fn close(&self) {
        match &self.inner.backend {
            Backend::Sqlite { read, writer } => {
                read.close().await;
                if let Some(conn) = writer.slot.lock().await.conn.take() {
                    let _closed = conn.close().await;
                }
            }
            Backend::Postgres { read, writer, urgent, .. } => {
                read.close().await;
                for writer in [writer, &**urgent] {
                    if let Some(conn) = writer.slot.lock().await.conn.take() {
                        let _closed = conn.close().await;
                    }
                }
            }
        }
    }
}

/// The writer connection, reopened if an earlier failure closed it.
async fn writer_conn<'s, C: sqlx::Connection>(
    writer: &Writer<C>,
    slot: &'s mut WriterSlot<C>,
    location: &Location,
) -> Result<&'s mut C, StoreError> {
    if slot.conn.is_none() {
        let conn = writer.options.connect().await.map_err(|source| match location {
            Location::Sqlite(path) => {
                let hint = open_hint(path, &source);
                StoreError::Open { path: path.clone(), source, hint }
            }
            Location::Postgres(target) => StoreError::OpenPostgres { target: target.clone(), source },
        })?;
        slot.conn = Some(conn);
    }
    slot.conn.as_mut().ok_or_else(|| StoreError::Corrupt("writer connection vanished".into()))
}

/// A plain-words hint for the errors users actually meet when opening a database.
fn open_hint(path: &Path, error: &sqlx::Error) -> &'static str {
    let code = match error {
        sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<i64>().ok()).map(|c| c & 0xff),
        _ => None,
    };
    match code {
        Some(13) => " (the disk is full: free space on the volume holding the database)",
        Some(10) if disk_nearly_full(path) => " (disk I/O error; the volume holding the database is full)",
        Some(10) => " (disk I/O error: check the volume holding the database, e.g. free space or a read-only mount)",
        Some(8) | Some(14) => " (the database or its directory is read-only or not writable by this user)",
        _ => "",
    }
}

/// A plain-words hint for a file the daemon must write but may not.
fn not_writable_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            " (read-only: the directory holding the database is not writable by this user or is on a read-only \
             mount; nothing was changed: make it writable and start again)"
        }
        _ => "",
    }
}

/// Best effort: whether the directory holding `path` has (almost) no free space left.
fn disk_nearly_full(path: &Path) -> bool {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Creating a small file is the portable probe for "no space left on device".
    let probe = dir.join(".ghl-sync-space-probe");
    let result = std::fs::write(&probe, [0u8; 4096]);
    let _removed = std::fs::remove_file(&probe);
    matches!(result, Err(ref e) if e.raw_os_error() == Some(28))
}

/// The database holds OAuth tokens (encrypted) and personal data: owner-only.
fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in [path.to_path_buf(), with_suffix(path, "-wal"), with_suffix(path, "-shm")] {
            if file.exists()
                && let Err(error) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
            {
                tracing::warn!(error = %error, "Could not restrict permissions of the database file");
            }
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The first half of the session advisory lock a daemon holds on a PostgreSQL store (`ghls`);
/// the second half is the hash of the store's schema, since advisory locks are per database and
/// one database may hold several stores (a schema each).
const DAEMON_LOCK_KEY: i32 = 0x6768_6c73;

/// What keeps processes that must not run together off one store: the SQLite lock file (one
/// process per file), or on PostgreSQL a session advisory lock held by a connection of its own
/// for the life of the process, shared by the daemons (replicas) and exclusive for the tools
/// that need the store to themselves.
#[derive(Debug)]
pub enum StoreLock {
    File(ProcessLock),
    Postgres(PgConnection),
}

impl StoreLock {
    /// Takes the lock of `target` for a tool that needs the store to itself (no daemon may
    /// run), failing at once if another process holds it.
    pub async fn acquire(target: &crate::config::StoreTarget) -> Result<Self, StoreError> {
        Self::take(target, false).await
    }

    /// Takes the lock of `target` for a daemon: exclusive on SQLite (one daemon per file);
    /// shared on PostgreSQL, where replicas run side by side (they lease the locations,
    /// `store::leases`) but no tool holding [`StoreLock::acquire`] runs beside them.
    pub async fn acquire_daemon(target: &crate::config::StoreTarget) -> Result<Self, StoreError> {
        Self::take(target, true).await
    }

    async fn take(target: &crate::config::StoreTarget, shared: bool) -> Result<Self, StoreError> {
        match target {
            crate::config::StoreTarget::Sqlite(path) => ProcessLock::acquire(path).map(Self::File),
            crate::config::StoreTarget::Postgres(url) => {
                let target = redact_postgres_url(url);
                let open_error = |source: sqlx::Error| StoreError::OpenPostgres { target: target.clone(), source };
                let mut conn = PgConnectOptions::from_str(url)
                    .map_err(open_error)?
                    .application_name("ghl-sync lock")
                    .connect()
                    .await
                    .map_err(open_error)?;
                let sql = if shared {
                    "SELECT pg_try_advisory_lock_shared($1, hashtext(current_schema()))"
                } else {
                    "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))"
                };
                let locked: bool = sqlx::query_scalar(sql).bind(DAEMON_LOCK_KEY).fetch_one(&mut conn).await?;
                if !locked {
                    let _closed = conn.close().await;
                    return Err(StoreError::LockedPostgres { target });
                }
                Ok(Self::Postgres(conn))
            }
        }
    }
}

/// An exclusive lock held while a process writes to the database: one daemon per database.
#[derive(Debug)]
pub struct ProcessLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl ProcessLock {
    /// Takes `<database>.lock`, failing at once if another process holds it.
    pub fn acquire(database: &Path) -> Result<Self, StoreError> {
        let path = with_suffix(database, ".lock");
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory { path: dir.to_path_buf(), source })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StoreError::LockFile { path: path.clone(), source })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(_) => Err(StoreError::Locked { path: database.to_path_buf(), lock: path }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Milliseconds since the Unix epoch, the store's time unit: the process's wall clock
/// ([`crate::clock::now_ms`]).
pub fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// This process's replica id, the same for its whole life: `{hostname}-{pid}-{4 random hex
/// digits}` (the hostname from `/etc/hostname`, else the `HOSTNAME` variable, else `host`; only
/// ASCII letters, digits, `-`, `_` and `.` are kept). Outbox claims and location leases name
/// their holder with it; the random part tells apart two processes that reuse a pid on one host
/// (a container restarted with pid 1).
pub fn replica_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{}-{}-{:04x}", host_name(), std::process::id(), fastrand::u16(..)))
}

/// The machine's host name as a replica shows it (a container's id under Docker): from
/// `/etc/hostname`, else `HOSTNAME`, else `host`.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|name| clean_host(&name))
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().map(|name| clean_host(&name)).filter(|name| !name.is_empty()))
        .unwrap_or_else(|| "host".to_owned())
}

/// A hostname as a replica id may carry it (trimmed, at most 64 safe characters).
fn clean_host(name: &str) -> String {
    name.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).take(64).collect()
}

/// Rows a chunked delete removes per transaction.
const DELETE_CHUNK: i64 = 2000;

/// Runs `sql` (a `DELETE … WHERE key IN (SELECT key … WHERE … < $1 … LIMIT $2)`, binding
/// `cutoff` then the chunk size) in short transactions until a chunk removes fewer rows than
/// its size, so purging a large table never holds the writer long. Returns the rows removed.
async fn delete_in_chunks(
    store: &Store,
    purpose: &'static str,
    sql: &'static str,
    cutoff: i64,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    loop {
        let mut tx = store.begin_write(purpose).await?;
        let done = on_db!(tx.conn(), |c| sqlx::query(sql)
            .bind(cutoff)
            .bind(DELETE_CHUNK)
            .execute(c)
            .await
            .map(|done| done.rows_affected()))?;
        tx.commit().await?;
        removed += done;
        if done < DELETE_CHUNK as u64 {
            return Ok(removed);
        }
    }
}

/// A fresh, migrated store in a temporary directory (unit tests of the store modules).
#[cfg(test)]
pub(crate) async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let store = Store::connect(&dir.path().join("t.db"), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("temp store: {e}"));
    (dir, store)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQLite connection of a SQLite store's write transaction (these tests are SQLite's).
    fn sqlite<'a>(tx: &'a mut WriteTx<'_>) -> &'a mut SqliteConnection {
        match tx.conn() {
            Db::Sqlite(conn) => conn,
            Db::Postgres(_) => unreachable!("a SQLite test store"),
        }
    }

    #[tokio::test]
    async fn migrations_apply_to_an_empty_database_and_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/ghl-sync.db");
        let store = Store::connect(&path, Duration::from_secs(1)).await.unwrap();
        let version = store.schema_version().await.unwrap();
        assert!(version >= 1);
        store.migrate().await.unwrap();
        store.close().await;
        let again = Store::connect(&path, Duration::from_secs(1)).await.unwrap();
        assert_eq!(again.schema_version().await.unwrap(), version);
        let tables: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'outbox'")
                .fetch_one(again.read_pool())
                .await
                .unwrap();
        assert_eq!(tables, 1);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(again.read_pool()).await.unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(again.read_pool()).await.unwrap();
        assert_eq!(fk, 1);
        let mut tx = again.begin_write("test").await.unwrap();
        let cache: i64 = sqlx::query_scalar("PRAGMA cache_size").fetch_one(sqlite(&mut tx)).await.unwrap();
        assert_eq!(cache, -i64::from(WRITER_CACHE_KIB), "the writer's own page cache");
        let checkpoint: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint").fetch_one(sqlite(&mut tx)).await.unwrap();
        assert_eq!(checkpoint, i64::from(WAL_CHECKPOINT_PAGES));
        let limit: i64 = sqlx::query_scalar("PRAGMA journal_size_limit").fetch_one(sqlite(&mut tx)).await.unwrap();
        assert_eq!(limit, i64::from(WAL_CHECKPOINT_PAGES) * 4096);
        tx.rollback().await.unwrap();
    }

    /// Rows of contacts in three locations, one id held by two of them (written `updated_at`
    /// apart so the newest is known), and a fourth location with other ids.
    async fn contacts_in_locations(store: &Store) {
        for (location, id, updated) in
            [("loc_a", "c1", 1), ("loc_b", "c1", 3), ("loc_b", "c2", 2), ("loc_c", "c3", 2), ("loc_d", "c4", 2)]
        {
            let mut tx = store.begin_write("test").await.unwrap();
            on_db!(tx.conn(), |c| sqlx::query(
                "INSERT INTO contacts (location_id, contact_id, hash, record, first_seen_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 0, $5)"
            )
            .bind(location)
            .bind(id)
            .bind(vec![0_u8; 32])
            .bind(codec::pack(&serde_json::json!({ "id": id })))
            .bind(updated)
            .execute(c)
            .await
            .map(|done| done.rows_affected()))
            .unwrap();
            tx.commit().await.unwrap();
        }
    }

    /// The lookups by contact id alone (`snapshot::with_locations_holding_contacts`) find a
    /// contact in whichever location holds it, on both backends, and on SQLite never scan
    /// `contacts`: every access to it is a search of its key (the plan), so dropping the index
    /// on `contact_id` (migration 0015) did not make them scans.
    #[tokio::test]
    async fn lookups_by_contact_id_alone_seek_the_key_index() {
        for (_guard, store) in testing::stores().await {
            contacts_in_locations(&store).await;
            let found = lucky_orange::find_contact(&store, "c1").await.unwrap().map(|(location, _)| location);
            assert_eq!(found.as_deref(), Some("loc_b"), "the newest of the two rows");
            assert_eq!(lucky_orange::find_contact(&store, "c3").await.unwrap().unwrap().0, "loc_c");
            assert!(lucky_orange::find_contact(&store, "nobody").await.unwrap().is_none());
            for (sql, expect) in [(lucky_orange::FIND_CONTACT, 1), (contact_view::SNAPSHOTS, 2)] {
                let rows: Vec<(String,)> =
                    on_db!(store.db(), |p| sqlx::query_as(sql).bind("c1").fetch_all(p).await).unwrap();
                assert_eq!(rows.len(), expect, "{sql}");
            }
            if store.is_postgres() {
                continue;
            }
            for sql in [lucky_orange::FIND_CONTACT, contact_view::SNAPSHOTS] {
                let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .bind("c1")
                    .fetch_all(store.read_pool())
                    .await
                    .unwrap();
                let steps: Vec<&str> = plan.iter().map(|(_, _, _, detail)| detail.as_str()).collect();
                let searches = steps.iter().filter(|d| d.starts_with("SEARCH") && d.contains("INDEX")).count();
                assert!(searches >= 3, "the key searched for the first, next and wanted rows: {steps:?}");
                let scans: Vec<&&str> = steps.iter().filter(|d| d.starts_with("SCAN") && **d != "SCAN held").collect();
                assert!(scans.is_empty(), "a scan of contacts: {scans:?} in {steps:?}");
            }
        }
    }

    /// Migration 0015 rebuilds SQLite's `contacts` as a rowid table: every row and column
    /// survives, the table is no longer WITHOUT ROWID, and the index on `contact_id` is gone.
    #[tokio::test]
    async fn the_contacts_rebuild_keeps_every_row_and_column() {
        use std::borrow::Cow;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let columns = "location_id, contact_id, hash, record, date_updated_ms, children_synced_at, \
                       first_seen_at, updated_at, revision, children_due_at";
        type Row = (String, String, Vec<u8>, Vec<u8>, Option<i64>, Option<i64>, i64, i64, i64, Option<i64>);
        let before: Vec<Row> = {
            let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            let old = sqlx::migrate::Migrator {
                migrations: Cow::Owned(MIGRATOR.iter().filter(|m| m.version < 15).cloned().collect()),
                ..sqlx::migrate::Migrator::DEFAULT
            };
            old.run(&pool).await.unwrap();
            let shape: String = sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'contacts'")
                .fetch_one(&pool)
                .await
                .unwrap();
            assert!(shape.contains("WITHOUT ROWID"), "{shape}");
            for i in 0..300_i64 {
                sqlx::query(&format!(
                    "INSERT INTO contacts ({columns}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                ))
                .bind(format!("loc_{}", i % 3))
                .bind(format!("c{i:04}"))
                .bind(vec![u8::try_from(i % 256).unwrap(); 32])
                .bind(codec::pack(&serde_json::json!({ "id": i, "pad": "x".repeat(600) })))
                .bind((i % 2 == 0).then_some(i * 1_000))
                .bind((i % 5 == 0).then_some(i))
                .bind(i)
                .bind(i + 1)
                .bind(i % 4)
                .bind((i % 3 == 0).then_some(i + 2))
                .execute(&pool)
                .await
                .unwrap();
            }
            let rows = sqlx::query_as(&format!("SELECT {columns} FROM contacts ORDER BY location_id, contact_id"))
                .fetch_all(&pool)
                .await
                .unwrap();
            pool.close().await;
            rows
        };
        let store = Store::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), MIGRATOR.iter().map(|m| m.version).max().unwrap());
        let after: Vec<Row> =
            sqlx::query_as(&format!("SELECT {columns} FROM contacts ORDER BY location_id, contact_id"))
                .fetch_all(store.read_pool())
                .await
                .unwrap();
        assert_eq!(after.len(), 300);
        assert!(before == after, "rows changed by the rebuild");
        let shape: String = sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'contacts'")
            .fetch_one(store.read_pool())
            .await
            .unwrap();
        assert!(!shape.contains("WITHOUT ROWID"), "{shape}");
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'contacts' ORDER BY name",
        )
        .fetch_all(store.read_pool())
        .await
        .unwrap();
        assert_eq!(indexes, ["contacts_children_due_recent", "sqlite_autoindex_contacts_1"]);
        assert_eq!(lucky_orange::find_contact(&store, "c0007").await.unwrap().unwrap().0, "loc_1");
    }

    /// Both backends' migrations must describe the same tables and columns at the same
    /// schema version: a migration added to one directory only fails here.
    #[tokio::test]
    async fn postgres_and_sqlite_migrations_reach_the_same_version_tables_and_columns() {
        use std::collections::BTreeSet;
        let Some((_guard, pg)) = testing::postgres_store().await else { return };
        let (_dir, lite) = temp_store().await;
        assert_eq!(pg.schema_version().await.unwrap(), lite.schema_version().await.unwrap());
        pg.migrate().await.unwrap();
        let lite_columns: BTreeSet<(String, String)> = sqlx::query_as(
            "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name != '_sqlx_migrations'",
        )
        .fetch_all(lite.read_pool())
        .await
        .unwrap()
        .into_iter()
        .collect();
        let Db::Postgres(pool) = pg.db() else { unreachable!() };
        let pg_columns: BTreeSet<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name != '_sqlx_migrations'",
        )
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        assert!(lite_columns.len() > 100, "{}", lite_columns.len());
        assert_eq!(
            lite_columns.symmetric_difference(&pg_columns).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "columns on one backend only"
        );
    }

    #[tokio::test]
    async fn on_postgres_a_dropped_write_is_rolled_back_a_commit_lands_and_the_read_pool_cannot_write() {
        let Some((_guard, store)) = testing::postgres_store().await else { return };
        let insert = "INSERT INTO webhook_inbox (source, event_id, received_at) VALUES ('t', $1, 0)";
        {
            let mut tx = store.begin_write("test").await.unwrap();
            on_db!(tx.conn(), |c| sqlx::query(insert).bind("dropped").execute(c).await.map(|d| d.rows_affected()))
                .unwrap();
        }
        let mut tx = store.begin_write("test").await.unwrap();
        on_db!(tx.conn(), |c| sqlx::query(insert).bind("kept").execute(c).await.map(|d| d.rows_affected())).unwrap();
        tx.commit().await.unwrap();
        let ids: Vec<String> =
            on_db!(store.db(), |p| sqlx::query_scalar("SELECT event_id FROM webhook_inbox").fetch_all(p).await)
                .unwrap();
        assert_eq!(ids, vec!["kept".to_owned()]);
        let error = on_db!(store.db(), |p| sqlx::query(insert).bind("x").execute(p).await.map(|d| d.rows_affected()))
            .unwrap_err();
        assert!(error.to_string().contains("read-only"), "{error}");
        let busy = {
            let _held = store.begin_write("long").await.unwrap();
            store.begin_write_within("webhook", Duration::from_millis(50)).await.err()
        };
        assert!(matches!(busy, Some(StoreError::Busy(_))));
        store.begin_write("test").await.unwrap().commit().await.unwrap();
        assert_eq!(store.write_health().failing, None);
    }

    /// Replicas share a PostgreSQL store: daemon locks coexist, and a tool that needs the
    /// store to itself is refused while any daemon runs (and keeps daemons out while it runs).
    #[tokio::test]
    async fn postgres_daemons_share_the_store_and_exclude_tools_that_need_it_alone() {
        use crate::config::StoreTarget;
        let Some(url) = testing::postgres_test_url().await else { return };
        let target = StoreTarget::Postgres(url);
        let first = StoreLock::acquire_daemon(&target).await.unwrap();
        let second = StoreLock::acquire_daemon(&target).await.unwrap();
        let tool = StoreLock::acquire(&target).await.unwrap_err();
        assert!(matches!(tool, StoreError::LockedPostgres { .. }), "{tool}");
        drop((first, second));
        let mut tool = None;
        for _ in 0..50 {
            if let Ok(lock) = StoreLock::acquire(&target).await {
                tool = Some(lock);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(tool.is_some(), "the daemons' locks were not freed with their connections");
        assert!(StoreLock::acquire_daemon(&target).await.is_err(), "no daemon while a tool holds the store");
    }

    /// One daemon per store, not per database: stores in two schemas of one database lock
    /// independently, a second lock on the same store is refused until the first is gone.
    #[tokio::test]
    async fn the_postgres_daemon_lock_is_per_store() {
        use crate::config::StoreTarget;
        let (Some(a), Some(b)) = (testing::postgres_test_url().await, testing::postgres_test_url().await) else {
            return;
        };
        let (a, b) = (StoreTarget::Postgres(a), StoreTarget::Postgres(b));
        let held = StoreLock::acquire(&a).await.unwrap();
        let other_schema = StoreLock::acquire(&b).await.unwrap();
        let again = StoreLock::acquire(&a).await.unwrap_err();
        assert!(matches!(again, StoreError::LockedPostgres { .. }), "{again}");
        drop(held);
        // The server frees a session lock when its connection ends; that takes a moment.
        let mut retaken = None;
        for _ in 0..50 {
            if let Ok(lock) = StoreLock::acquire(&a).await {
                retaken = Some(lock);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(retaken.is_some(), "the lock was not freed with its connection");
        drop(other_schema);
    }

    #[tokio::test]
    async fn a_database_from_a_newer_schema_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ghl-sync.db");
        let store = Store::connect(&path, Duration::from_secs(1)).await.unwrap();
        let mut tx = store.begin_write("test").await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (9999, 'from the future', 1, x'00', 0)",
        )
        .execute(sqlite(&mut tx))
        .await
        .unwrap();
        tx.commit().await.unwrap();
        store.close().await;
        let error = Store::connect(&path, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(error, StoreError::NewerSchema { found: 9999, .. }), "{error}");
        assert!(error.to_string().contains("newer ghl-sync"));
    }

    /// Issue 17, defect 6: after a failed commit the writer used to stay in a transaction
    /// ("attempted to call begin_with at non-zero transaction depth") until a restart.
    #[tokio::test]
    async fn a_failed_write_on_a_full_disk_is_rolled_back_and_writes_resume_once_space_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("t.db"), Duration::from_secs(1)).await.unwrap();
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(store.read_pool()).await.unwrap();
        store.limit_pages_for_tests(Some(u64::try_from(pages).unwrap())).await.unwrap();
        let big = vec![7u8; 64 * 1024];
        for attempt in 0..3 {
            let result = async {
                let mut tx = store.begin_write("test").await?;
                sqlx::query(
                    "INSERT INTO webhook_inbox (source, event_id, event_type, received_at) VALUES ('t', ?, ?, 0)",
                )
                .bind(format!("e{attempt}"))
                .bind(String::from_utf8_lossy(&big).into_owned())
                .execute(sqlite(&mut tx))
                .await?;
                tx.commit().await
            }
            .await;
            let error = result.expect_err("the disk is full");
            assert!(error.is_disk_problem(), "attempt {attempt}: {error}");
            assert!(store.write_health().failing.is_some());
        }
        store.limit_pages_for_tests(None).await.unwrap();
        let mut tx = store.begin_write("test").await.unwrap();
        sqlx::query("INSERT INTO webhook_inbox (source, event_id, event_type, received_at) VALUES ('t', 'ok', 'x', 0)")
            .execute(sqlite(&mut tx))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.write_health().failing, None);
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM webhook_inbox").fetch_one(store.read_pool()).await.unwrap();
        assert_eq!(rows, 1, "only the write after the disk was freed landed");
    }

    #[tokio::test]
    async fn a_dropped_write_transaction_is_rolled_back_before_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("t.db"), Duration::from_secs(1)).await.unwrap();
        {
            let mut tx = store.begin_write("test").await.unwrap();
            sqlx::query("INSERT INTO webhook_inbox (source, event_id, received_at) VALUES ('t', 'dropped', 0)")
                .execute(sqlite(&mut tx))
                .await
                .unwrap();
            // Dropped without commit: a cancelled run.
        }
        let mut tx = store.begin_write("test").await.unwrap();
        sqlx::query("INSERT INTO webhook_inbox (source, event_id, received_at) VALUES ('t', 'kept', 0)")
            .execute(sqlite(&mut tx))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT event_id FROM webhook_inbox").fetch_all(store.read_pool()).await.unwrap();
        assert_eq!(ids, vec!["kept".to_owned()]);
    }

    #[tokio::test]
    async fn the_read_pool_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("t.db"), Duration::from_secs(1)).await.unwrap();
        let error = sqlx::query("INSERT INTO webhook_inbox (source, event_id, received_at) VALUES ('t', 'x', 0)")
            .execute(store.read_pool())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("readonly"), "{error}");
    }

    #[tokio::test]
    async fn a_webhook_writer_that_cannot_get_the_lock_in_time_is_told_busy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("t.db"), Duration::from_secs(1)).await.unwrap();
        let held = store.begin_write("long").await.unwrap();
        let busy = store.begin_write_within("webhook", Duration::from_millis(50)).await;
        assert!(matches!(busy, Err(StoreError::Busy(_))));
        held.commit().await.unwrap();
        store.begin_write_within("webhook", Duration::from_millis(50)).await.unwrap().commit().await.unwrap();
    }

    /// The rule "every store statement runs on both backends": outside their tests, store
    /// modules reach the database only through `Store::db()` / `WriteTx::conn()` and
    /// `on_db!`, never through the SQLite-only read pool or a bare SQLite connection.
    /// (`transfer` copies SQLite into PostgreSQL and `planner` refreshes PostgreSQL's planner
    /// statistics: each is specific to a backend by nature.)
    #[test]
    fn store_modules_run_every_statement_on_both_backends() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
        let mut offenders = Vec::new();
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".rs")
                || ["mod.rs", "db.rs", "testing.rs", "transfer.rs", "planner.rs"].contains(&name.as_str())
            {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            checked += 1;
            for needle in ["read_pool()", "SqliteConnection", "SqlitePool", "sqlite_only"] {
                if code.contains(needle) {
                    offenders.push(format!("{name}: {needle}"));
                }
            }
            // A statement that runs outside `on_db!` is compiled for one backend only.
            for (i, line) in code.lines().enumerate() {
                if line.contains("sqlx::query") && !code.contains("on_db!") {
                    offenders.push(format!("{name}:{}: a statement and no on_db! in the file", i + 1));
                }
            }
        }
        assert!(checked > 15, "the walk found the store modules ({checked})");
        assert!(offenders.is_empty(), "SQLite-only access in store modules: {offenders:?}");
    }

    /// The rule "SQL lives in src/store/ only" also holds where someone silenced clippy.
    #[test]
    fn no_sql_runs_outside_the_store() {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        let store = src.join("store");
        let offenders: Vec<String> = files
            .iter()
            .filter(|file| !file.starts_with(&store))
            .filter(|file| {
                let text = std::fs::read_to_string(file).unwrap();
                ["sqlx::query", "sqlx::raw_sql", "begin_write", "Executor"].iter().any(|needle| text.contains(needle))
            })
            .map(|file| file.display().to_string())
            .collect();
        assert!(offenders.is_empty(), "SQL outside src/store/: {offenders:?}");
        assert!(files.len() > 50, "the walk found the sources");
    }

    #[test]
    fn a_second_process_lock_on_the_same_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ghl-sync.db");
        let first = ProcessLock::acquire(&path).unwrap();
        assert!(matches!(ProcessLock::acquire(&path), Err(StoreError::Locked { .. })));
        drop(first);
        assert!(ProcessLock::acquire(&path).is_ok());
    }

    #[test]
    fn the_replica_id_is_stable_and_names_host_pid_and_a_random_part() {
        let id = replica_id();
        assert_eq!(id, replica_id(), "one id per process");
        let mut parts = id.rsplitn(3, '-');
        let random = parts.next().unwrap();
        assert_eq!(parts.next().unwrap(), std::process::id().to_string());
        assert!(!parts.next().unwrap().is_empty(), "a host part: {id}");
        assert!(random.len() == 4 && random.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(clean_host(" web-1.example\n"), "web-1.example");
        assert_eq!(clean_host("a b/c\u{e9}"), "abc");
    }
}
