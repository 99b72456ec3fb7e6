//! `ghl-sync dlq …`, `ghl-sync replay …` and `ghl-sync check`: the operator's tools for
//! deliveries. The logic lives in functions taking a `Store` (tested directly); the `run_*`
//! wrappers print and pick the exit code.

use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::Value;
use sqlx::Row;

use crate::config::Config;
use crate::connectors::Connector;
use crate::domain::Operation;
use crate::store::{Store, codec, now_ms};

use crate::dispatch::outbox::{self, Enqueued, NewRow};

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
    /// Put dead letters back into the outbox (the current state if a newer change was delivered since).
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

/// `ghl-sync replay …`
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Connector id, e.g. `webhook.crm`.
    #[arg(long)]
    pub connector: String,
    /// Only records changed since: RFC 3339 (`2026-03-01T00:00:00Z`) or an age (`2h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub location: Option<String>,
    /// One contact (and its tasks and notes).
    #[arg(long)]
    pub contact: Option<String>,
}

/// One dead letter, without the record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub source: String,
    pub connector: Option<String>,
    pub location_id: Option<String>,
    pub entity: Option<String>,
    pub entity_id: Option<String>,
    pub contact_id: Option<String>,
    pub operation: Option<String>,
    pub attempts: i64,
    pub reason: String,
    pub changed_at: Option<i64>,
    pub created_at: i64,
}

const DL_COLUMNS: &str = "id, source, connector, location_id, entity, entity_id, contact_id, operation, attempts, reason, changed_at, created_at";

fn dead_letter_from(row: &sqlx::sqlite::SqliteRow) -> Result<DeadLetter, sqlx::Error> {
    Ok(DeadLetter {
        id: row.try_get("id")?,
        source: row.try_get("source")?,
        connector: row.try_get("connector")?,
        location_id: row.try_get("location_id")?,
        entity: row.try_get("entity")?,
        entity_id: row.try_get("entity_id")?,
        contact_id: row.try_get("contact_id")?,
        operation: row.try_get("operation")?,
        attempts: row.try_get("attempts")?,
        reason: row.try_get("reason")?,
        changed_at: row.try_get("changed_at")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Dead letters, oldest first.
pub async fn list_dead_letters(store: &Store, connector: Option<&str>, limit: i64) -> anyhow::Result<Vec<DeadLetter>> {
    let sql =
        format!("SELECT {DL_COLUMNS} FROM dead_letters WHERE (?1 IS NULL OR connector = ?1) ORDER BY id LIMIT ?2");
    let rows = sqlx::query(&sql).bind(connector).bind(limit).fetch_all(store.pool()).await?;
    Ok(rows.iter().map(dead_letter_from).collect::<Result<_, _>>()?)
}

async fn dead_letter(store: &Store, id: i64) -> anyhow::Result<Option<(DeadLetter, Option<Vec<u8>>, Option<Vec<u8>>)>> {
    let sql = format!("SELECT {DL_COLUMNS}, record, content_hash FROM dead_letters WHERE id = ?");
    let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(store.pool()).await? else {
        return Ok(None);
    };
    Ok(Some((dead_letter_from(&row)?, row.try_get("record")?, row.try_get("content_hash")?)))
}

/// What `dlq retry` did with one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    /// Re-enqueued as it was.
    Requeued,
    /// A newer change was delivered since: the current snapshot was enqueued instead.
    RequeuedCurrent,
    /// A newer change is already pending (or the record is gone after a newer delivery): dropped.
    Superseded,
    /// Not a delivery dead letter (source record/webhook): left alone.
    NotADelivery,
}

/// `dlq retry`: re-enqueues dead letters (one id, or all, optionally of one connector).
pub async fn retry_dead_letters(
    store: &Store,
    id: Option<i64>,
    connector: Option<&str>,
) -> anyhow::Result<Vec<(i64, Retried)>> {
    let ids: Vec<i64> =
        match id {
            Some(id) => vec![id],
            None => sqlx::query_scalar(
                "SELECT id FROM dead_letters WHERE source = 'delivery' AND (?1 IS NULL OR connector = ?1) ORDER BY id",
            )
            .bind(connector)
            .fetch_all(store.pool())
            .await?,
        };
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        let Some((letter, record, hash)) = dead_letter(store, id).await? else {
            anyhow::bail!("no dead letter with id {id}");
        };
        results.push((id, retry_one(store, &letter, record, hash).await?));
    }
    Ok(results)
}

async fn retry_one(
    store: &Store,
    letter: &DeadLetter,
    record: Option<Vec<u8>>,
    hash: Option<Vec<u8>>,
) -> anyhow::Result<Retried> {
    let (Some(connector), Some(location), Some(entity), Some(entity_id), Some(operation), Some(hash)) = (
        letter.connector.as_deref(),
        letter.location_id.as_deref(),
        letter.entity.as_deref(),
        letter.entity_id.as_deref(),
        letter.operation.as_deref(),
        hash,
    ) else {
        return Ok(Retried::NotADelivery);
    };
    if letter.source != "delivery" {
        return Ok(Retried::NotADelivery);
    }
    let now = now_ms();
    let mut tx = store.begin_write("dlq").await?;
    let newer_delivered: Option<i64> = sqlx::query_scalar(
        "SELECT id FROM outbox WHERE connector = ? AND entity = ? AND entity_id = ? AND status = 'done' \
         AND changed_at > ? LIMIT 1",
    )
    .bind(connector)
    .bind(entity)
    .bind(entity_id)
    .bind(letter.changed_at.unwrap_or(0))
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = if newer_delivered.is_some() {
        // Re-sending the old content would regress the target: send what is current now.
        match snapshot(&mut tx, location, entity, entity_id).await? {
            Some(current) => {
                let row = NewRow {
                    connector,
                    location_id: location,
                    entity,
                    entity_id,
                    contact_id: current.contact_id.as_deref().or(letter.contact_id.as_deref()),
                    operation: Operation::Updated.as_str(),
                    record: Some(&current.record),
                    content_hash: &current.hash,
                    changed_at: current.changed_at,
                };
                match outbox::enqueue(&mut tx, &row, now).await? {
                    Enqueued::Inserted => Retried::RequeuedCurrent,
                    Enqueued::AlreadyPending => Retried::Superseded,
                }
            }
            None => Retried::Superseded,
        }
    } else {
        let row = NewRow {
            connector,
            location_id: location,
            entity,
            entity_id,
            contact_id: letter.contact_id.as_deref(),
            operation,
            record: record.as_deref(),
            content_hash: &hash,
            changed_at: letter.changed_at.unwrap_or(now),
        };
        match outbox::enqueue(&mut tx, &row, now).await? {
            Enqueued::Inserted => Retried::Requeued,
            Enqueued::AlreadyPending => Retried::Superseded,
        }
    };
    sqlx::query("DELETE FROM dead_letters WHERE id = ?").bind(letter.id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(outcome)
}

struct Snapshot {
    contact_id: Option<String>,
    hash: Vec<u8>,
    record: Vec<u8>,
    changed_at: i64,
}

async fn snapshot(
    tx: &mut sqlx::SqliteConnection,
    location: &str,
    entity: &str,
    entity_id: &str,
) -> anyhow::Result<Option<Snapshot>> {
    let row = if entity == "contact" {
        sqlx::query(
            "SELECT contact_id, hash, record, COALESCE(date_updated_ms, updated_at) AS changed_at FROM contacts \
             WHERE location_id = ? AND contact_id = ?",
        )
        .bind(location)
        .bind(entity_id)
        .fetch_optional(&mut *tx)
        .await?
    } else {
        sqlx::query(
            "SELECT contact_id, hash, record, updated_at AS changed_at FROM children \
             WHERE location_id = ? AND kind = ? AND child_id = ?",
        )
        .bind(location)
        .bind(entity)
        .bind(entity_id)
        .fetch_optional(&mut *tx)
        .await?
    };
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Snapshot {
        contact_id: row.try_get("contact_id")?,
        hash: row.try_get("hash")?,
        record: row.try_get("record")?,
        changed_at: row.try_get("changed_at")?,
    }))
}

/// `dlq drop ID`. Returns whether it existed.
pub async fn drop_dead_letter(store: &Store, id: i64) -> anyhow::Result<bool> {
    let done = sqlx::query("DELETE FROM dead_letters WHERE id = ?").bind(id).execute(store.pool()).await?;
    Ok(done.rows_affected() == 1)
}

/// Filters of `ghl-sync replay`.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    pub since_ms: Option<i64>,
    pub location: Option<String>,
    pub contact: Option<String>,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub enqueued: u64,
    /// A change for the record was already pending (it goes out with the current mapping anyway).
    pub already_pending: u64,
    /// Not wanted by the connector's event/location filters.
    pub filtered: u64,
}

/// Re-enqueues `updated` rows from the snapshot tables for one connector.
pub async fn replay(store: &Store, connector: &dyn Connector, filter: &ReplayFilter) -> anyhow::Result<ReplaySummary> {
    let mut summary = ReplaySummary::default();
    let now = now_ms();
    let contacts = sqlx::query(
        "SELECT location_id, contact_id, hash, record, COALESCE(date_updated_ms, updated_at) AS changed_at \
         FROM contacts WHERE (?1 IS NULL OR location_id = ?1) AND (?2 IS NULL OR contact_id = ?2) \
         AND (?3 IS NULL OR COALESCE(date_updated_ms, updated_at) >= ?3) ORDER BY location_id, contact_id",
    )
    .bind(&filter.location)
    .bind(&filter.contact)
    .bind(filter.since_ms)
    .fetch_all(store.pool())
    .await?;
    let children = sqlx::query(
        "SELECT location_id, contact_id, kind, child_id, hash, record, updated_at AS changed_at FROM children \
         WHERE (?1 IS NULL OR location_id = ?1) AND (?2 IS NULL OR contact_id = ?2) \
         AND (?3 IS NULL OR updated_at >= ?3) ORDER BY location_id, kind, child_id",
    )
    .bind(&filter.location)
    .bind(&filter.contact)
    .bind(filter.since_ms)
    .fetch_all(store.pool())
    .await?;
    let mut rows = Vec::with_capacity(contacts.len() + children.len());
    for row in &contacts {
        let contact_id: String = row.try_get("contact_id")?;
        rows.push(("contact".to_owned(), contact_id.clone(), contact_id, row));
    }
    for row in &children {
        rows.push((row.try_get("kind")?, row.try_get("child_id")?, row.try_get("contact_id")?, row));
    }
    for chunk in rows.chunks(500) {
        let mut tx = store.begin_write("dlq").await?;
        for (entity, entity_id, contact_id, row) in chunk {
            let location: String = row.try_get("location_id")?;
            let event = format!("{entity}.updated");
            if !connector.interested(&event, &location) {
                summary.filtered += 1;
                continue;
            }
            let hash: Vec<u8> = row.try_get("hash")?;
            let record: Vec<u8> = row.try_get("record")?;
            let new = NewRow {
                connector: connector.id(),
                location_id: &location,
                entity,
                entity_id,
                contact_id: Some(contact_id),
                operation: "updated",
                record: Some(&record),
                content_hash: &hash,
                changed_at: row.try_get("changed_at")?,
            };
            match outbox::enqueue(&mut tx, &new, now).await? {
                Enqueued::Inserted => summary.enqueued += 1,
                Enqueued::AlreadyPending => summary.already_pending += 1,
            }
        }
        tx.commit().await?;
    }
    Ok(summary)
}

/// Parses `--since`: RFC 3339, or an age such as `2h` / `7d` before now.
pub fn parse_since(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Ok(when) = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return i64::try_from(when.unix_timestamp_nanos() / 1_000_000).context("--since is out of range");
    }
    let age = humantime::parse_duration(text)
        .with_context(|| format!("--since {text:?} is neither RFC 3339 (2026-03-01T00:00:00Z) nor an age (2h, 7d)"))?;
    Ok(now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)))
}

pub(crate) async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let path = config.settings.store.resolved_path();
    Store::connect(&path, config.settings.store.busy_timeout.get())
        .await
        .with_context(|| format!("Failed to open the store at {}", path.display()))
}

fn time_text(ms: i64) -> String {
    crate::connectors::rfc3339_ms(ms)
}

/// `ghl-sync dlq …`
pub async fn run_dlq(config: &Config, args: DlqArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
    match args.command {
        DlqCommand::List { connector, limit } => {
            let letters = list_dead_letters(&store, connector.as_deref(), limit).await?;
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
            let Some((l, record, _)) = dead_letter(&store, id).await? else {
                anyhow::bail!("no dead letter with id {id}");
            };
            println!("id:          {}", l.id);
            println!("source:      {}", l.source);
            println!("connector:   {}", l.connector.as_deref().unwrap_or("-"));
            println!("location:    {}", l.location_id.as_deref().unwrap_or("-"));
            println!("entity:      {} {}", l.entity.as_deref().unwrap_or("-"), l.entity_id.as_deref().unwrap_or("-"));
            println!("contact:     {}", l.contact_id.as_deref().unwrap_or("-"));
            println!("operation:   {}", l.operation.as_deref().unwrap_or("-"));
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
            let results = retry_dead_letters(&store, id, connector.as_deref()).await?;
            for (id, outcome) in &results {
                let text = match outcome {
                    Retried::Requeued => "re-enqueued",
                    Retried::RequeuedCurrent => "re-enqueued the current state (a newer change was delivered since)",
                    Retried::Superseded => "dropped: a newer change is pending or was delivered",
                    Retried::NotADelivery => "left alone: not a delivery dead letter",
                };
                println!("{id}: {text}");
            }
            println!("{} dead letter(s) handled", results.len());
        }
        DlqCommand::Drop { id } => {
            if !drop_dead_letter(&store, id).await? {
                anyhow::bail!("no dead letter with id {id}");
            }
            println!("dropped {id}");
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `ghl-sync replay …`
pub async fn run_replay(config: &Config, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let cancel = tokio_util::sync::CancellationToken::new();
    let connectors = crate::connectors::build(config, &cancel)?;
    let Some(connector) = connectors.iter().find(|c| c.id() == args.connector) else {
        let known: Vec<&str> = connectors.iter().map(|c| c.id()).collect();
        anyhow::bail!("no enabled connector {:?}; configured: {}", args.connector, known.join(", "));
    };
    let since_ms = args.since.as_deref().map(|s| parse_since(s, now_ms())).transpose()?;
    let filter = ReplayFilter { since_ms, location: args.location, contact: args.contact };
    let store = open_store(config).await?;
    let summary = replay(&store, connector.as_ref(), &filter).await?;
    println!(
        "{}: {} enqueued, {} already pending, {} filtered out",
        args.connector, summary.enqueued, summary.already_pending, summary.filtered
    );
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_rfc3339_or_an_age() {
        assert_eq!(parse_since("2026-03-01T09:55:00Z", 0).unwrap(), 1_772_358_900_000);
        assert_eq!(parse_since("2h", 10_000_000).unwrap(), 10_000_000 - 7_200_000);
        assert!(parse_since("yesterday", 0).is_err());
    }
}
