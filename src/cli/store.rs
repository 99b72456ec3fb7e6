//! `ghl-sync store migrate --to postgres://…`: copies the configured SQLite store into an empty
//! PostgreSQL database and proves the copy (`store::transfer`).

use anyhow::{Context as _, bail};

use crate::config::{Config, StoreTarget, parse_store_url};
use crate::store::transfer::migrate_to_postgres;
use crate::store::{ProcessLock, Store, StoreError, redact_postgres_url};

/// `ghl-sync store`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum StoreCommand {
    /// Copy the SQLite store (grants, cursors, snapshot, outbox, dead letters, caches) into an
    /// empty PostgreSQL database and verify every table's row count and digest. Stop the daemon
    /// first: the copy refuses to run while it holds the store.
    Migrate {
        /// The PostgreSQL database, `postgres://user@host:port/database` (a password is best
        /// given by PGPASSWORD or ~/.pgpass).
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

/// Runs `ghl-sync store …`.
pub async fn run_store(config: &Config, args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Migrate { to } => migrate(config, &to).await,
    }
}

async fn migrate(config: &Config, to: &str) -> anyhow::Result<()> {
    let target_name = redact_postgres_url(to);
    match parse_store_url(to) {
        Ok(StoreTarget::Postgres(_)) => {}
        Ok(StoreTarget::Sqlite(_)) => bail!("--to must be a postgres:// URL (the copy goes from SQLite to PostgreSQL)"),
        Err(problem) => bail!("--to {problem}"),
    }
    let path = match config.settings.store.target() {
        StoreTarget::Sqlite(path) => path,
        StoreTarget::Postgres(_) => bail!("the configured store ([store] url) is already PostgreSQL"),
    };
    if !path.exists() {
        bail!("there is no SQLite store at {} ([store] path) to copy", path.display());
    }
    let _lock = ProcessLock::acquire(&path).map_err(|error| match error {
        StoreError::Locked { .. } => anyhow::anyhow!(
            "a ghl-sync daemon (or another command) is using {}: stop it first (e.g. `systemctl stop ghl-sync`), \
             then run `store migrate` again",
            path.display()
        ),
        other => anyhow::Error::new(other),
    })?;
    let busy = config.settings.store.busy_timeout.get();
    let source = Store::connect(&path, busy).await.with_context(|| format!("Failed to open {}", path.display()))?;
    let target = Store::connect_postgres(to, busy).await?;
    eprintln!("Copying {} into {target_name} …", path.display());
    let transfer = migrate_to_postgres(&source, &target).await?;
    for table in &transfer.tables {
        println!("{:<16} {:>10} rows  sha256 {}", table.table, table.rows, &table.digest[..16]);
    }
    println!(
        "Copied {} rows in {} tables at schema version {}; every table's count and digest match.",
        transfer.rows(),
        transfer.tables.len(),
        transfer.schema_version
    );
    println!(
        "Next: set [store] url = \"{target_name}\" (the password through PGPASSWORD or ~/.pgpass) and start the daemon; \
         keep the SQLite file until the daemon runs well on PostgreSQL."
    );
    source.close().await;
    target.close().await;
    Ok(())
}
