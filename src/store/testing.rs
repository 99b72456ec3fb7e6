//! Stores for unit tests: a SQLite file in a temporary directory, and a PostgreSQL schema in
//! a database created for this test run on the machine's server.
//!
//! PostgreSQL: `GHL_SYNC_TEST_POSTGRES` names the server (an admin URL, default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Each test process creates one database
//! (`ghl_sync_t_<pid>_<ms>`; earlier runs' databases older than a day are dropped) and each
//! store gets a fresh schema in it. Without a server the PostgreSQL half of a test is skipped
//! with a message saying why, unless `GHL_SYNC_REQUIRE_POSTGRES=1` (set by `.ci/run`), which
//! turns the skip into a failure.
//!
//! [`postgres_test_url`] is public (hidden from the docs) for the integration tests.

use std::io::Write as _;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{ConnectOptions as _, Connection as _};

#[cfg(test)]
use super::Store;
use super::redact_postgres_url;

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Keeps a test store's files (SQLite) alive; the PostgreSQL schema lives in the run's database.
#[cfg(test)]
pub(crate) struct TempGuard {
    _dir: Option<tempfile::TempDir>,
}

/// A fresh, migrated SQLite store in a temporary directory.
#[cfg(test)]
pub(crate) async fn sqlite_store() -> (TempGuard, Store) {
    let (dir, store) = super::temp_store().await;
    (TempGuard { _dir: Some(dir) }, store)
}

/// A URL of a fresh, empty schema in this test run's PostgreSQL database, or `None` when no
/// server answers and the run does not require one (see the module doc).
pub async fn postgres_test_url() -> Option<String> {
    let base = run_database()?;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let schema = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let mut admin = sqlx::PgConnection::connect(&base).await.unwrap_or_else(|e| panic!("test database: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("create schema: {e}"));
    let _closed = admin.close().await;
    postgres_schema_url(&schema)
}

/// The URL of `schema` in this test run's PostgreSQL database (the integration tests reach a
/// store they did not open by its [`Store::postgres_schema`](super::Store::postgres_schema)).
pub fn postgres_schema_url(schema: &str) -> Option<String> {
    let base = run_database()?;
    Some(format!("{base}?options=-c%20search_path%3D{schema}"))
}

/// A fresh, migrated PostgreSQL store (its own schema), or `None` when no server answers and
/// the run does not require one.
#[cfg(test)]
pub(crate) async fn postgres_store() -> Option<(TempGuard, Store)> {
    let url = postgres_test_url().await?;
    let store = Store::connect_postgres(&url, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL test store: {e}"));
    Some((TempGuard { _dir: None }, store))
}

/// Runs `sql` (no parameters) in its own write transaction (test set-up).
#[cfg(test)]
pub(crate) async fn exec(store: &Store, sql: &str) {
    let mut tx = store.begin_write("test").await.unwrap_or_else(|e| panic!("begin: {e}"));
    super::db::on_db!(tx.conn(), |c| sqlx::query(sql).execute(c).await.map(|done| done.rows_affected()))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("commit: {e}"));
}

/// Both backends' stores (SQLite first; PostgreSQL when a server answers or is required).
#[cfg(test)]
pub(crate) async fn stores() -> Vec<(TempGuard, Store)> {
    let mut out = vec![sqlite_store().await];
    out.extend(postgres_store().await);
    out
}

/// Both backends' stores, each with a second handle on the same database (its own writer
/// connection and read pool), as two replicas have: SQLite (two handles on one file) first,
/// PostgreSQL (two handles on one schema) when a server answers or is required.
#[cfg(test)]
pub(crate) async fn store_pairs() -> Vec<(TempGuard, Store, Store)> {
    let (dir, first) = super::temp_store().await;
    let second = Store::connect(&dir.path().join("t.db"), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("second SQLite handle: {e}"));
    let mut out = vec![(TempGuard { _dir: Some(dir) }, first, second)];
    if let Some(url) = postgres_test_url().await {
        let open = || async {
            Store::connect_postgres(&url, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL test store: {e}"))
        };
        let first = open().await;
        let second = open().await;
        out.push((TempGuard { _dir: None }, first, second));
    }
    out
}

/// The URL of this process's test database, created on first use; `None` (with a message,
/// once) when the server cannot be reached and the run does not require it.
fn run_database() -> Option<String> {
    static DATABASE: StdMutex<Option<Option<String>>> = StdMutex::new(None);
    let mut database = DATABASE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = database.as_ref() {
        return known.clone();
    }
    let admin = std::env::var("GHL_SYNC_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
    let required = std::env::var("GHL_SYNC_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    // Created on a thread of its own: the caller may be inside a current-thread runtime.
    let created = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?
                    .block_on(create_run_database(&admin))
            })
            .join()
            .unwrap_or_else(|_| Err("the thread creating the test database panicked".to_owned()))
    });
    let outcome = match created {
        Ok(url) => Some(url),
        Err(error) if required => panic!(
            "PostgreSQL is required (GHL_SYNC_REQUIRE_POSTGRES=1) but {} cannot be used: {error}",
            redact_postgres_url(&admin)
        ),
        Err(error) => {
            // Straight to the process's stderr: the test harness would capture `eprintln!` of
            // a passing test, and a skip must be seen.
            let _ignored = writeln!(
                std::io::stderr(),
                "SKIPPED: the PostgreSQL tests: {} cannot be used ({error}). Start PostgreSQL or set \
                 GHL_SYNC_TEST_POSTGRES to an admin URL; .ci/run requires them (GHL_SYNC_REQUIRE_POSTGRES=1).",
                redact_postgres_url(&admin)
            );
            None
        }
    };
    *database = Some(outcome.clone());
    outcome
}

async fn create_run_database(admin: &str) -> Result<String, String> {
    let options: sqlx::postgres::PgConnectOptions = admin.parse().map_err(|e: sqlx::Error| e.to_string())?;
    let mut conn = tokio::time::timeout(Duration::from_secs(5), options.connect())
        .await
        .map_err(|_| "no answer within 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let now = crate::store::now_ms();
    // Earlier runs' databases (a test process cannot drop its own on exit).
    let old: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'ghl_sync_t_%'")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    for name in old {
        let created = name.rsplit('_').next().and_then(|ms| ms.parse::<i64>().ok()).unwrap_or(0);
        if now - created > 24 * 3600 * 1000 {
            let _dropped =
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
        }
    }
    let name = format!("ghl_sync_t_{}_{now}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.map_err(|e| e.to_string())?;
    let _closed = conn.close().await;
    let (base, _) = admin.split_once('?').unwrap_or((admin, ""));
    let (server, _) = base.rsplit_once('/').ok_or("the admin URL has no database part")?;
    Ok(format!("{server}/{name}"))
}
