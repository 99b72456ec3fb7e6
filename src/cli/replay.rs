//! `ghl-sync replay`: re-send records from the snapshot to one connector (after a mapping
//! change, or to a target that lost data). Reads and writes go through `store::snapshot` and
//! `store::outbox`; this module decides what to send and prints.
//!
//! Keys: by default each record version goes out under the idempotency key of that version
//! (the key of its first delivery, if it had one), so a target that de-duplicates on the key
//! ignores versions it already took. `--new-keys` salts the keys with the replay's start time,
//! asking such targets to take every version again.

use std::process::ExitCode;

use anyhow::Context as _;

use super::open_store;
use crate::config::Config;
use crate::connectors::Connector;
use crate::domain::{Operation, idempotency_key};
use crate::store::outbox::{self, EnqueuePolicy, Enqueued};
use crate::store::snapshot::{self, VersionFilter};
use crate::store::{Store, now_ms};

/// `ghl-sync replay …`
#[derive(Debug, clap::Args)]
#[command(after_help = "Each record version is sent under the idempotency key of its first delivery, so a \
    target that de-duplicates on Idempotency-Key ignores versions it already took. Pass --new-keys to make \
    such targets take them again (e.g. after a mapping change).")]
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
    /// Send under new idempotency keys (salted with this replay's start time), so targets
    /// take versions they already have again. Default: each version keeps its first key.
    #[arg(long)]
    pub new_keys: bool,
}

/// What to replay and under which keys.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    pub since_ms: Option<i64>,
    pub location: Option<String>,
    pub contact: Option<String>,
    /// `Some(salt)`: send under new keys salted with it (`--new-keys`); `None`: the key of each
    /// record version.
    pub new_keys: Option<String>,
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

/// Records per write transaction.
const CHUNK: usize = 500;

/// Enqueues the current version of every snapshot record `filter` selects as `updated` for
/// `connector` (a pending change for a record wins: nothing is added for it).
pub async fn replay(store: &Store, connector: &dyn Connector, filter: &ReplayFilter) -> anyhow::Result<ReplaySummary> {
    let mut summary = ReplaySummary::default();
    let select =
        VersionFilter { location: filter.location.clone(), contact: filter.contact.clone(), since_ms: filter.since_ms };
    let versions = snapshot::record_versions(store, &select).await?;
    let wanted: Vec<_> =
        versions.iter().filter(|v| connector.interested(&format!("{}.updated", v.entity), &v.location_id)).collect();
    summary.filtered = (versions.len() - wanted.len()) as u64;
    let id = connector.id();
    for chunk in wanted.chunks(CHUNK) {
        let keys: Vec<Option<String>> = chunk
            .iter()
            .map(|v| {
                filter
                    .new_keys
                    .as_deref()
                    .map(|salt| idempotency_key(id, v.entity, &v.entity_id, v.revision, &v.content_hash, salt))
            })
            .collect();
        let changes: Vec<_> =
            chunk.iter().zip(&keys).map(|(v, key)| (v.change(id, Operation::Updated), key.as_deref())).collect();
        for done in outbox::enqueue_all(store, "replay", &changes, EnqueuePolicy::KeepPending).await? {
            match done {
                Enqueued::Inserted | Enqueued::Folded => summary.enqueued += 1,
                Enqueued::AlreadyPending => summary.already_pending += 1,
            }
        }
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

/// `ghl-sync replay …`
pub async fn run_replay(config: &Config, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if let Some(rule) = args.connector.strip_prefix("rule.").map(str::to_owned) {
        return replay_rule(config, &rule, args).await;
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let connectors = crate::connectors::build(config, &cancel)?;
    let Some(connector) = connectors.iter().find(|c| c.id() == args.connector) else {
        let known: Vec<&str> = connectors.iter().map(|c| c.id()).collect();
        anyhow::bail!("no enabled connector {:?}; configured: {}", args.connector, known.join(", "));
    };
    let started = now_ms();
    let since_ms = args.since.as_deref().map(|s| parse_since(s, started)).transpose()?;
    let new_keys = args.new_keys.then(|| format!("replay-{started}"));
    let filter = ReplayFilter { since_ms, location: args.location, contact: args.contact, new_keys };
    let store = open_store(config).await?;
    let result = replay(&store, connector.as_ref(), &filter).await;
    store.close().await;
    let summary = result?;
    let keys = if args.new_keys {
        "under new idempotency keys"
    } else {
        "under the keys of their first delivery (targets that de-duplicate ignore versions they have; --new-keys to resend)"
    };
    println!(
        "{}: {} enqueued {keys}, {} already pending, {} filtered out",
        args.connector, summary.enqueued, summary.already_pending, summary.filtered
    );
    Ok(ExitCode::SUCCESS)
}

/// `replay --connector rule.<name>`: the rule's performed actions queued again (see
/// [`crate::store::rules::replay_actions`]).
async fn replay_rule(config: &Config, rule: &str, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if !config.rules.rules().iter().any(|r| r.name == rule) {
        let known: Vec<String> = config.rules.rules().iter().map(|r| format!("rule.{}", r.name)).collect();
        anyhow::bail!(
            "no rule {rule:?}; configured: {}",
            if known.is_empty() { "none".into() } else { known.join(", ") }
        );
    }
    let started = now_ms();
    let since_ms = args.since.as_deref().map(|s| parse_since(s, started)).transpose()?;
    let salt = args.new_keys.then(|| format!("replay-{started}"));
    let store = open_store(config).await?;
    let result = crate::store::rules::replay_actions(
        &store,
        rule,
        since_ms,
        args.location.as_deref(),
        args.contact.as_deref(),
        salt.as_deref(),
    )
    .await;
    store.close().await;
    let done = result?;
    let keys = if args.new_keys {
        "under new keys: they are performed again"
    } else {
        "under their own keys: actions already performed are not performed again (--new-keys to redo them)"
    };
    println!("{}: {} action(s) queued {keys}, {} already pending", args.connector, done.enqueued, done.already_pending);
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

    #[test]
    fn help_says_which_keys_replay_and_dlq_retry_send() {
        use clap::CommandFactory as _;
        let mut cli = crate::cli::Cli::command();
        let replay = cli.find_subcommand_mut("replay").unwrap().render_long_help().to_string();
        assert!(replay.contains("--new-keys") && replay.contains("key of its first delivery"), "{replay}");
        let retry = cli
            .find_subcommand_mut("dlq")
            .and_then(|dlq| dlq.find_subcommand_mut("retry"))
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(retry.contains("key of its first") && retry.contains("newer pending change"), "{retry}");
    }
}
