//! The SQLite store: one pool, WAL, embedded migrations, one repository per table group.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub mod codec;
pub mod outbox;

/// Errors the store reports to its callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the database directory {path}: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("cannot open the database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error(
        "the database {path} was written by a newer ghl-sync (schema version {found}, this build knows up to {known}); \
         upgrade ghl-sync or point [store] path at another file"
    )]
    NewerSchema { path: PathBuf, found: i64, known: i64 },
    #[error("migrating the database {path} failed: {source}")]
    Migrate { path: PathBuf, source: sqlx::migrate::MigrateError },
    #[error("another ghl-sync process is using {path} (lock file {lock} is held)")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database at `path`, refuses a newer schema and migrates.
    pub async fn connect(path: &Path, busy_timeout: Duration) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Directory { path: dir.to_path_buf(), source })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Token rotation must survive power loss; write volume is small (a commit per page).
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(busy_timeout)
            // Statements are logged at debug; only a really slow one (a stalled disk) warns.
            .log_statements(log::LevelFilter::Debug)
            .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        restrict_permissions(path);
        let store = Self { pool, path: path.to_path_buf() };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations; idempotent.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        // No migrations table yet (a new database) reads as None.
        let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = 1")
            .fetch_one(&self.pool)
            .await
            .unwrap_or_default();
        if let Some(found) = applied.filter(|v| *v > known) {
            return Err(StoreError::NewerSchema { path: self.path.clone(), found, known });
        }
        MIGRATOR.run(&self.pool).await.map_err(|source| StoreError::Migrate { path: self.path.clone(), source })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Starts a write transaction with `BEGIN IMMEDIATE`: it takes SQLite's write lock up
    /// front (waiting up to `busy_timeout`), so it cannot fail half-way with "database is
    /// locked" when it upgrades from reading to writing while another writer is active.
    /// Every transaction that writes must start here.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest schema version applied to this database.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(version.unwrap_or(0))
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
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
            .map_err(|source| StoreError::Directory { path: path.clone(), source })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(_) => Err(StoreError::Locked { path: database.to_path_buf(), lock: path }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Milliseconds since the Unix epoch, the store's time unit.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                .fetch_one(again.pool())
                .await
                .unwrap();
        assert_eq!(tables, 1);
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(again.pool()).await.unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(again.pool()).await.unwrap();
        assert_eq!(fk, 1);
    }

    #[tokio::test]
    async fn a_database_from_a_newer_schema_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ghl-sync.db");
        let store = Store::connect(&path, Duration::from_secs(1)).await.unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (9999, 'from the future', 1, x'00', 0)",
        )
        .execute(store.pool())
        .await
        .unwrap();
        store.close().await;
        let error = Store::connect(&path, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(error, StoreError::NewerSchema { found: 9999, .. }), "{error}");
        assert!(error.to_string().contains("newer ghl-sync"));
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
}
