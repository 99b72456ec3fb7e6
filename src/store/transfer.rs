//! `ghl-sync store migrate --to URL`: copies a SQLite store, every table (grants, cursors,
//! snapshot, outbox, dead letters, caches, keys), into an empty PostgreSQL store of the same
//! schema version, and proves the copy: each table's row count and a SHA-256 digest over its
//! rows in key order must be equal on both sides before the one PostgreSQL transaction that
//! holds the copy commits. Any difference, or a target that is not empty, leaves the target
//! as it was.
//!
//! The source is read inside one read transaction (a consistent snapshot); the caller holds the
//! source's process lock, so no daemon writes to it meanwhile (`cli::store`).

use futures_util::TryStreamExt as _;
use sha2::{Digest as _, Sha256};
use sqlx::{Row as _, TypeInfo as _, ValueRef as _};

use super::db::{Db, rows};
use super::{Store, StoreError};

/// The data upgrade markers (`store/upgrades.rs`).
const UPGRADES: &str = "store_upgrades";

/// Rows per multi-row `INSERT` on the target.
const CHUNK: usize = 200;

/// What was copied, per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    pub table: String,
    pub rows: u64,
    /// Hex SHA-256 over the table's rows in key order (the same on both sides).
    pub digest: String,
}

/// What `migrate_to_postgres` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub schema_version: i64,
    pub tables: Vec<TableCopy>,
}

impl Transfer {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// Why a copy was refused or undone.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the source must be a SQLite store and the target a PostgreSQL store")]
    Backends,
    #[error(
        "the stores have different schema versions (SQLite {source_version}, PostgreSQL {target_version}); \
         open both with this build first"
    )]
    Versions { source_version: i64, target_version: i64 },
    #[error("the PostgreSQL store is not empty (table {table} has {rows} rows); migrate into a new database")]
    NotEmpty { table: String, rows: i64 },
    #[error("table {table}, column {column}: a stored value does not fit PostgreSQL's {pg_type} ({found})")]
    Value { table: String, column: String, pg_type: String, found: &'static str },
    #[error("table {table}: the copy differs from the source ({detail}); nothing was written")]
    Differs { table: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// One stored value, typed by the target column.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// The PostgreSQL type of a column, as `information_schema` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgType {
    BigInt,
    Text,
    Bytea,
    Double,
}

impl PgType {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "bigint" => Some(Self::BigInt),
            "text" => Some(Self::Text),
            "bytea" => Some(Self::Bytea),
            "double precision" => Some(Self::Double),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::BigInt => "bigint",
            Self::Text => "text",
            Self::Bytea => "bytea",
            Self::Double => "double precision",
        }
    }
}

struct Column {
    name: String,
    pg: PgType,
}

struct Table {
    name: String,
    columns: Vec<Column>,
    /// The primary key's columns, in key order (the order rows are read and digested in).
    key: Vec<String>,
    /// Has an identity `id` column whose sequence must continue after the copied ids.
    identity: bool,
}

/// Copies every table of the SQLite store `source` into the empty PostgreSQL store `target`
/// (both opened, so both migrated, by this build), verifies and commits; see the module doc.
pub async fn migrate_to_postgres(source: &Store, target: &Store) -> Result<Transfer, TransferError> {
    let (Db::Sqlite(lite), Db::Postgres(pg)) = (source.db(), target.db()) else { return Err(TransferError::Backends) };
    let source_version = source.schema_version().await?;
    let target_version = target.schema_version().await?;
    if source_version != target_version {
        return Err(TransferError::Versions { source_version, target_version });
    }
    let tables = tables(lite, pg).await?;
    // Opening the target marked its data upgrades done (nothing to upgrade in an empty store);
    // the source's markers replace them.
    for table in tables.iter().filter(|t| t.name != UPGRADES) {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", table.name)).fetch_one(pg).await?;
        if rows > 0 {
            return Err(TransferError::NotEmpty { table: table.name.clone(), rows });
        }
    }
    let mut read = lite.begin().await?;
    let mut tx = target.begin_write("store_migrate").await?;
    let mut copies = Vec::new();
    for table in &tables {
        let Db::Postgres(conn) = tx.conn() else { return Err(TransferError::Backends) };
        if table.name == UPGRADES {
            sqlx::query("DELETE FROM store_upgrades").execute(&mut *conn).await?;
        }
        let copied = copy_table(&mut read, conn, table).await?;
        let check = digest_target(conn, table).await?;
        if check != copied {
            return Err(TransferError::Differs {
                table: table.name.clone(),
                detail: format!(
                    "{} rows copied, {} rows read back, digests differ: {}",
                    copied.0,
                    check.0,
                    copied.1 != check.1
                ),
            });
        }
        if table.identity {
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{0}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {0}",
                table.name
            ))
            .execute(&mut *conn)
            .await?;
        }
        copies.push(TableCopy { table: table.name.clone(), rows: copied.0, digest: copied.1 });
    }
    tx.commit().await?;
    read.rollback().await?;
    Ok(Transfer { schema_version: source_version, tables: copies })
}

/// The tables to copy: SQLite's, each with PostgreSQL's type for every column (a column on
/// one side only is a schema mismatch).
async fn tables(lite: &sqlx::SqlitePool, pg: &sqlx::PgPool) -> Result<Vec<Table>, TransferError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name != '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(lite)
    .await?;
    let mut out = Vec::new();
    for name in names {
        let info: Vec<(String, i64)> = sqlx::query_as("SELECT name, pk FROM pragma_table_info($1) ORDER BY cid")
            .bind(&name)
            .fetch_all(lite)
            .await?;
        let pg_types: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text, is_identity::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
        )
        .bind(&name)
        .fetch_all(pg)
        .await?;
        let mut columns = Vec::new();
        for (column, _) in &info {
            let pg_type = pg_types.iter().find(|(c, ..)| c == column).and_then(|(_, t, _)| PgType::parse(t));
            let Some(pg) = pg_type else {
                return Err(TransferError::Differs {
                    table: name.clone(),
                    detail: format!("column {column} has no PostgreSQL counterpart of a known type"),
                });
            };
            columns.push(Column { name: column.clone(), pg });
        }
        if pg_types.len() != columns.len() {
            return Err(TransferError::Differs {
                table: name.clone(),
                detail: format!("{} columns on SQLite, {} on PostgreSQL", columns.len(), pg_types.len()),
            });
        }
        let mut key: Vec<(i64, String)> =
            info.iter().filter(|(_, pk)| *pk > 0).map(|(column, pk)| (*pk, column.clone())).collect();
        key.sort();
        let key: Vec<String> = key.into_iter().map(|(_, column)| column).collect();
        let identity = pg_types.iter().any(|(column, _, identity)| column == "id" && identity == "YES");
        out.push(Table { name, columns, key, identity });
    }
    Ok(out)
}

fn select_sql(table: &Table) -> String {
    let columns: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    format!("SELECT {} FROM {} ORDER BY {}", columns.join(", "), table.name, table.key.join(", "))
}

/// Streams the source table in key order into multi-row inserts; returns (rows, digest).
async fn copy_table(
    read: &mut sqlx::SqliteConnection,
    conn: &mut sqlx::PgConnection,
    table: &Table,
) -> Result<(u64, String), TransferError> {
    let mut hasher = Sha256::new();
    let mut count = 0u64;
    let mut chunk: Vec<Vec<Val>> = Vec::with_capacity(CHUNK);
    let select = select_sql(table);
    let mut stream = sqlx::query(&select).fetch(&mut *read);
    while let Some(row) = stream.try_next().await? {
        let mut values = Vec::with_capacity(table.columns.len());
        for (i, column) in table.columns.iter().enumerate() {
            let value = sqlite_value(&row, i)?;
            let value = fit(value, column.pg).map_err(|found| TransferError::Value {
                table: table.name.clone(),
                column: column.name.clone(),
                pg_type: column.pg.name().to_owned(),
                found,
            })?;
            values.push(value);
        }
        digest_row(&mut hasher, &values);
        count += 1;
        chunk.push(values);
        if chunk.len() == CHUNK {
            insert(conn, table, &chunk).await?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        insert(conn, table, &chunk).await?;
    }
    Ok((count, hex(&hasher.finalize())))
}

fn sqlite_value(row: &sqlx::sqlite::SqliteRow, i: usize) -> Result<Val, sqlx::Error> {
    let raw = row.try_get_raw(i)?;
    if raw.is_null() {
        return Ok(Val::Null);
    }
    let kind = raw.type_info().name().to_owned();
    Ok(match kind.as_str() {
        "INTEGER" => Val::Int(row.try_get(i)?),
        "REAL" => Val::Real(row.try_get(i)?),
        "TEXT" => Val::Text(row.try_get(i)?),
        _ => Val::Blob(row.try_get(i)?),
    })
}

/// A SQLite value as the PostgreSQL column holds it (SQLite stores any value in any column).
fn fit(value: Val, pg: PgType) -> Result<Val, &'static str> {
    Ok(match (value, pg) {
        (Val::Null, _) => Val::Null,
        (Val::Int(i), PgType::BigInt) => Val::Int(i),
        (Val::Text(s), PgType::BigInt) => Val::Int(s.trim().parse().map_err(|_| "text that is not an integer")?),
        (Val::Real(_), PgType::BigInt) => return Err("a real number"),
        (Val::Blob(_), PgType::BigInt | PgType::Double) => return Err("a blob"),
        (Val::Text(s), PgType::Text) => Val::Text(s),
        (Val::Int(i), PgType::Text) => Val::Text(i.to_string()),
        (Val::Real(f), PgType::Text) => Val::Text(f.to_string()),
        (Val::Blob(b), PgType::Text) => Val::Text(String::from_utf8(b).map_err(|_| "a blob that is not UTF-8")?),
        (Val::Blob(b), PgType::Bytea) => Val::Blob(b),
        (Val::Text(s), PgType::Bytea) => Val::Blob(s.into_bytes()),
        (Val::Int(_) | Val::Real(_), PgType::Bytea) => return Err("a number"),
        (Val::Real(f), PgType::Double) => Val::Real(f),
        (Val::Int(i), PgType::Double) => Val::Real(i as f64),
        (Val::Text(s), PgType::Double) => Val::Real(s.trim().parse().map_err(|_| "text that is not a number")?),
    })
}

async fn insert(conn: &mut sqlx::PgConnection, table: &Table, chunk: &[Vec<Val>]) -> Result<(), sqlx::Error> {
    let columns: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
    // Copied ids keep their values (identity columns are GENERATED BY DEFAULT).
    let sql =
        format!("INSERT INTO {} ({}) VALUES {}", table.name, columns.join(", "), rows(0, chunk.len(), columns.len()));
    let mut query = sqlx::query(&sql);
    for row in chunk {
        for (value, column) in row.iter().zip(&table.columns) {
            query = match (value, column.pg) {
                (Val::Int(i), _) => query.bind(*i),
                (Val::Real(f), _) => query.bind(*f),
                (Val::Text(s), _) => query.bind(s.as_str()),
                (Val::Blob(b), _) => query.bind(b.as_slice()),
                (Val::Null, PgType::BigInt) => query.bind(None::<i64>),
                (Val::Null, PgType::Double) => query.bind(None::<f64>),
                (Val::Null, PgType::Text) => query.bind(None::<String>),
                (Val::Null, PgType::Bytea) => query.bind(None::<Vec<u8>>),
            };
        }
    }
    query.execute(conn).await?;
    Ok(())
}

/// Reads the copied table back in key order: (rows, digest).
async fn digest_target(conn: &mut sqlx::PgConnection, table: &Table) -> Result<(u64, String), TransferError> {
    let mut hasher = Sha256::new();
    let mut count = 0u64;
    let select = select_sql(table);
    let mut stream = sqlx::query(&select).fetch(&mut *conn);
    while let Some(row) = stream.try_next().await? {
        let mut values = Vec::with_capacity(table.columns.len());
        for (i, column) in table.columns.iter().enumerate() {
            values.push(match column.pg {
                PgType::BigInt => row.try_get::<Option<i64>, _>(i)?.map_or(Val::Null, Val::Int),
                PgType::Double => row.try_get::<Option<f64>, _>(i)?.map_or(Val::Null, Val::Real),
                PgType::Text => row.try_get::<Option<String>, _>(i)?.map_or(Val::Null, Val::Text),
                PgType::Bytea => row.try_get::<Option<Vec<u8>>, _>(i)?.map_or(Val::Null, Val::Blob),
            });
        }
        digest_row(&mut hasher, &values);
        count += 1;
    }
    Ok((count, hex(&hasher.finalize())))
}

/// A row's canonical bytes: per value a type tag, then its length and bytes.
fn digest_row(hasher: &mut Sha256, values: &[Val]) {
    for value in values {
        let (tag, bytes): (u8, Vec<u8>) = match value {
            Val::Null => (0, Vec::new()),
            Val::Int(i) => (1, i.to_le_bytes().to_vec()),
            Val::Real(f) => (2, f.to_bits().to_le_bytes().to_vec()),
            Val::Text(s) => (3, s.as_bytes().to_vec()),
            Val::Blob(b) => (4, b.clone()),
        };
        hasher.update([tag]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    hasher.update([0xff]);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::on_db;
    use crate::store::testing;

    /// Rows of several shapes: text keys with blobs, identity ids, NULLs, a REAL, an integer
    /// stored in a TEXT column (SQLite allows it).
    async fn fill(store: &Store) {
        let statements = [
            "INSERT INTO locations (id, name, status, updated_at) VALUES ('loc1', 'Acme', 'active', 1), ('loc2', NULL, 'active', 2)",
            "INSERT INTO grants (resource_id, resource_kind, access_token, refresh_token, expires_at, generation, updated_at) \
             VALUES ('loc1', 'location', x'0102', x'0304', 99, 3, 5)",
            "INSERT INTO contacts (location_id, contact_id, hash, record, date_updated_ms, first_seen_at, updated_at, revision) \
             VALUES ('loc1', 'c2', x'aa', x'bbcc', 10, 1, 1, 2), ('loc1', 'c1', x'dd', x'', NULL, 1, 1, 1)",
            "INSERT INTO outbox (id, connector, location_id, entity, entity_id, operation, content_hash, idempotency_key, \
             next_attempt_at, changed_at, created_at, updated_at) VALUES \
             (7, 'webhook.a', 'loc1', 'contact', 'c1', 'created', x'01', 'k7', 0, 0, 0, 0), \
             (41, 'webhook.a', 'loc1', 'contact', 'c2', 'created', x'02', 'k41', 0, 0, 0, 0)",
            "INSERT INTO lusha_signals (id, signal_type, data, credits_charged, received_at) VALUES ('s1', 'promotion', x'00', 1.5, 3)",
            "INSERT INTO lusha_credits (day, spent, calls) VALUES ('2026-12-06', 12, 3)",
            "INSERT INTO dead_letters (source, reason, created_at, entity_id) VALUES ('record', 'bad', 4, 12345)",
        ];
        let mut tx = store.begin_write("test").await.unwrap();
        for sql in statements {
            on_db!(tx.conn(), |c| sqlx::query(sql).execute(c).await.map(|d| d.rows_affected())).unwrap();
        }
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn a_sqlite_store_is_copied_into_an_empty_postgres_store_verified_and_a_second_copy_is_refused() {
        let Some((_guard, pg)) = testing::postgres_store().await else { return };
        let (_dir, lite) = testing::sqlite_store().await;
        fill(&lite).await;
        let transfer = migrate_to_postgres(&lite, &pg).await.unwrap();
        let by_table = |name: &str| transfer.tables.iter().find(|t| t.table == name).unwrap().rows;
        assert_eq!(
            (by_table("contacts"), by_table("outbox"), by_table("grants"), by_table("dead_letters")),
            (2, 2, 1, 1)
        );
        // store_upgrades (the data upgrade marker) travels too.
        assert_eq!(by_table("store_upgrades"), 1);
        assert_eq!(transfer.rows(), 11);

        let Db::Postgres(pool) = pg.db() else { unreachable!() };
        let (access, credits): (Vec<u8>, f64) = sqlx::query_as(
            "SELECT g.access_token, s.credits_charged FROM grants g, lusha_signals s WHERE g.resource_id = 'loc1'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!((access, credits), (vec![1, 2], 1.5));
        let entity_id: String = sqlx::query_scalar("SELECT entity_id FROM dead_letters").fetch_one(pool).await.unwrap();
        assert_eq!(entity_id, "12345", "an integer stored in a TEXT column arrives as text");

        // The identity continues after the copied ids.
        let mut tx = pg.begin_write("test").await.unwrap();
        let Db::Postgres(conn) = tx.conn() else { unreachable!() };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO outbox (connector, location_id, entity, entity_id, operation, content_hash, idempotency_key, \
             next_attempt_at, changed_at, created_at, updated_at) \
             VALUES ('webhook.a', 'loc1', 'contact', 'c3', 'created', '\\x03', 'k', 0, 0, 0, 0) RETURNING id",
        )
        .fetch_one(conn)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(id, 42);

        let again = migrate_to_postgres(&lite, &pg).await.unwrap_err();
        assert!(matches!(again, TransferError::NotEmpty { .. }), "{again}");
        assert!(again.to_string().contains("not empty"), "{again}");
        let backwards = migrate_to_postgres(&pg, &lite).await.unwrap_err();
        assert!(matches!(backwards, TransferError::Backends), "{backwards}");
    }
}
