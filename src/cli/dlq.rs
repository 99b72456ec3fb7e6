//! `ghl-sync dlq …`: list, show, retry and drop dead letters. The work is done by
//! `store::dead_letters`; this module prints and picks the exit code.

use std::process::ExitCode;

use serde_json::Value;

use super::open_store;
use crate::config::Config;
use crate::store::dead_letters::{self, Retried};
use crate::store::{Store, codec};

/// `ghl-sync dlq …`
#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters (ids and reasons only).
    List {
        #[arg(long)]
        connector: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Show one dead letter; the record's content only with --full (it holds personal data).
    Show {
        id: i64,
        #[arg(long)]
        full: bool,
    },
    /// Put dead letters back into the outbox.
    ///
    /// Each goes out again under the idempotency key of its first delivery, so a target that
    /// took it before recognises it. A newer pending change for the same record wins (nothing is
    /// added); if a newer version was delivered since, the current version is sent instead.
    Retry {
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[arg(long)]
        connector: Option<String>,
    },
    /// Delete a dead letter.
    Drop { id: i64 },
}

/// `dlq retry`: one id, or every delivery dead letter (of one connector). Errors on an
/// unknown id.
pub async fn retry_dead_letters(
    store: &Store,
    id: Option<i64>,
    connector: Option<&str>,
) -> anyhow::Result<Vec<(i64, Retried)>> {
    let ids = match id {
        Some(id) => vec![id],
        None => dead_letters::delivery_ids(store, connector).await?,
    };
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(outcome) = dead_letters::retry(store, id).await? else {
            anyhow::bail!("no dead letter with id {id}");
        };
        results.push((id, outcome));
    }
    Ok(results)
}

/// The line `dlq retry` prints for one dead letter.
pub fn retried_text(outcome: Retried) -> &'static str {
    match outcome {
        Retried::Requeued => "re-enqueued under the idempotency key of its first delivery",
        Retried::RequeuedCurrent => "re-enqueued the current version instead (a newer one was delivered since)",
        Retried::NewerPending => "not re-enqueued: a newer change for the same record is pending and wins",
        Retried::Gone => "dropped: a newer version was delivered and the record no longer exists",
        Retried::NotADelivery => "left alone: not a delivery dead letter",
    }
}

fn time_text(ms: i64) -> String {
    crate::connectors::rfc3339_ms(ms)
}

/// `ghl-sync dlq …`
pub async fn run_dlq(config: &Config, args: DlqArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    let result = dlq(&store, args.command).await;
    store.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

async fn dlq(store: &Store, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { connector, limit } => {
            let letters = dead_letters::list(store, connector.as_deref(), limit).await?;
            if letters.is_empty() {
                println!("no dead letters");
            }
            for l in letters {
                println!(
                    "{:>6}  {:<20} {:<8} {:<26} {:<10} attempts={:<3} {}  {}",
                    l.id,
                    l.connector.as_deref().unwrap_or(&l.source),
                    l.entity.as_deref().unwrap_or("-"),
                    l.entity_id.as_deref().unwrap_or("-"),
                    l.operation.as_deref().unwrap_or("-"),
                    l.attempts,
                    time_text(l.created_at),
                    l.reason
                );
            }
        }
        DlqCommand::Show { id, full } => {
            let Some((l, record)) = dead_letters::get(store, id).await? else {
                anyhow::bail!("no dead letter with id {id}");
            };
            println!("id:          {}", l.id);
            println!("source:      {}", l.source);
            println!("connector:   {}", l.connector.as_deref().unwrap_or("-"));
            println!("location:    {}", l.location_id.as_deref().unwrap_or("-"));
            println!("entity:      {} {}", l.entity.as_deref().unwrap_or("-"), l.entity_id.as_deref().unwrap_or("-"));
            println!("contact:     {}", l.contact_id.as_deref().unwrap_or("-"));
            println!("operation:   {}", l.operation.as_deref().unwrap_or("-"));
            println!("revision:    {}", l.revision.map_or("-".to_owned(), |r| r.to_string()));
            println!("attempts:    {}", l.attempts);
            println!("changed_at:  {}", l.changed_at.map(time_text).unwrap_or_default());
            println!("dead since:  {}", time_text(l.created_at));
            println!("reason:      {}", l.reason);
            match record.as_deref().map(codec::unpack).transpose() {
                Ok(Some(value)) if full => println!("record:\n{}", serde_json::to_string_pretty(&value)?),
                Ok(Some(Value::Object(map))) => {
                    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                    println!("record:      {} fields ({}); --full prints the values", keys.len(), keys.join(", "));
                }
                Ok(Some(_)) => println!("record:      (not an object); --full prints it"),
                Ok(None) => println!("record:      (none)"),
                Err(error) => println!("record:      unreadable ({error})"),
            }
        }
        DlqCommand::Retry { id, all, connector } => {
            if id.is_none() && !all {
                anyhow::bail!("name a dead letter id, or pass --all (optionally with --connector)");
            }
            let results = retry_dead_letters(store, id, connector.as_deref()).await?;
            for (id, outcome) in &results {
                println!("{id}: {}", retried_text(*outcome));
            }
            println!("{} dead letter(s) handled", results.len());
        }
        DlqCommand::Drop { id } => {
            if !dead_letters::remove(store, id).await? {
                anyhow::bail!("no dead letter with id {id}");
            }
            println!("dropped {id}");
        }
    }
    Ok(())
}
