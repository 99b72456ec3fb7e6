//! Webhook hints: `dirty_contacts` (contacts a GHL webhook named, waiting to be re-read) and
//! the `webhook_inbox` they arrive through. A hint is only a nudge: the sync re-reads the
//! contact from GHL, so order, duplicates and lost hints do not matter.

use sqlx::SqliteConnection;
use std::time::Duration;

use super::daily::{self, DailyCounts};
use super::{Store, StoreError, locations, now_ms};

/// A contact a webhook named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// Empty for a child event that named no contact (a `TaskCreate` without `contactId`).
    pub contact_id: String,
    pub created_at: i64,
}

/// Hints of `location` older than `ready_before` (debounced), oldest first.
pub async fn ready(store: &Store, location: &str, ready_before: i64, limit: u32) -> Result<Vec<Hint>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT contact_id, created_at FROM dirty_contacts WHERE location_id = ? AND created_at <= ? \
         ORDER BY created_at LIMIT ?",
    )
    .bind(location)
    .bind(ready_before)
    .bind(i64::from(limit))
    .fetch_all(store.read_pool())
    .await?;
    Ok(rows.into_iter().map(|(contact_id, created_at)| Hint { contact_id, created_at }).collect())
}

/// Drops a handled hint; a newer one for the same contact (arrived meanwhile) stays.
pub async fn drop_handled(store: &Store, location: &str, hint: &Hint) -> Result<(), StoreError> {
    let mut tx = store.begin_write("hint_done").await?;
    sqlx::query("DELETE FROM dirty_contacts WHERE location_id = ? AND contact_id = ? AND created_at <= ?")
        .bind(location)
        .bind(&hint.contact_id)
        .bind(hint.created_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Locations that have hints waiting.
pub async fn locations_with_hints(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT DISTINCT location_id FROM dirty_contacts").fetch_all(store.read_pool()).await?)
}

/// Whether hints are waiting for `location`.
pub async fn has_hints(store: &Store, location: &str) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM dirty_contacts WHERE location_id = ? LIMIT 1")
        .bind(location)
        .fetch_optional(store.read_pool())
        .await?;
    Ok(found.is_some())
}

/// What an accepted GHL webhook asks the store to do (decided from its payload by the
/// receiver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookAction {
    /// Mark a contact (or an unresolved task/note hint: empty contact id) dirty.
    Dirty {
        location_id: String,
        contact_id: String,
        reason: String,
        maybe_deleted: bool,
    },
    Install {
        location_id: Option<String>,
        company_id: Option<String>,
    },
    Uninstall {
        location_id: Option<String>,
        company_id: Option<String>,
    },
    /// Known shape but nothing to do (e.g. a task event without any id).
    Nothing,
    Unknown,
}

impl WebhookAction {
    /// The location the event is about, if it names one.
    pub fn location_id(&self) -> Option<&str> {
        match self {
            WebhookAction::Dirty { location_id, .. } => Some(location_id),
            WebhookAction::Install { location_id, .. } | WebhookAction::Uninstall { location_id, .. } => {
                location_id.as_deref()
            }
            WebhookAction::Nothing | WebhookAction::Unknown => None,
        }
    }
}

/// What [`record_webhook`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Accepted,
    /// Its event id was seen before: nothing written.
    Duplicate,
    /// A hint for a location that is not synced (not configured, disabled, uninstalled).
    IgnoredLocation,
    UnknownType,
}

/// How the configured locations decide whether a hint is kept.
pub trait LocationFilter: Sync {
    /// `None`: not configured; `Some(enabled)` otherwise.
    fn configured(&self, location_id: &str) -> Option<bool>;
}

/// Records one verified GHL webhook: the inbox row (dedupe by event id), its action and the
/// location's "webhooks today", in one short transaction. Waits at most `deadline` for the
/// writer (then [`StoreError::Busy`]: the receiver answers 429, which GHL retries).
pub async fn record_webhook(
    store: &Store,
    event_id: &str,
    type_label: &str,
    action: &WebhookAction,
    configured: &dyn LocationFilter,
    deadline: Duration,
) -> Result<Recorded, StoreError> {
    let now = now_ms();
    // The inbox insert comes first, so the transaction writes at once.
    let mut tx = store.begin_write_within("ghl_webhook", deadline).await?;
    let inserted = first_delivery(&mut tx, "ghl", event_id, type_label, now).await?;
    if !inserted {
        tx.rollback().await?;
        return Ok(Recorded::Duplicate);
    }
    let recorded = match action {
        WebhookAction::Dirty { location_id, contact_id, reason, maybe_deleted } => {
            let status = locations::status_in(&mut tx, location_id).await?;
            let synced = match (configured.configured(location_id), status.as_deref()) {
                (Some(false), _) => false,
                (_, Some(locations::status::UNINSTALLED | locations::status::DISABLED)) => false,
                (_, Some(_)) => true,
                (configured, None) => configured.is_some(),
            };
            if synced {
                sqlx::query(
                    "INSERT INTO dirty_contacts (location_id, contact_id, reason, maybe_deleted, created_at) \
                     VALUES (?, ?, ?, ?, ?) \
                     ON CONFLICT (location_id, contact_id) DO UPDATE SET reason = excluded.reason, \
                     maybe_deleted = MAX(dirty_contacts.maybe_deleted, excluded.maybe_deleted), \
                     created_at = MAX(dirty_contacts.created_at, excluded.created_at)",
                )
                .bind(location_id)
                .bind(contact_id)
                .bind(reason)
                .bind(i64::from(*maybe_deleted))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Recorded::Accepted
            } else {
                Recorded::IgnoredLocation
            }
        }
        WebhookAction::Install { location_id, company_id } => {
            if let Some(location_id) = location_id {
                locations::install_in(&mut tx, location_id, company_id.as_deref(), now).await?;
            }
            Recorded::Accepted
        }
        WebhookAction::Uninstall { location_id, company_id } => {
            if let Some(location_id) = location_id {
                let uninstall = locations::Uninstall::Location { location_id, company_id: company_id.as_deref() };
                locations::uninstall_in(&mut tx, uninstall, now).await?;
            } else if let Some(company_id) = company_id {
                locations::uninstall_in(&mut tx, locations::Uninstall::Company { company_id }, now).await?;
            }
            Recorded::Accepted
        }
        WebhookAction::Nothing => Recorded::Accepted,
        WebhookAction::Unknown => Recorded::UnknownType,
    };
    if recorded == Recorded::Accepted
        && let Some(location_id) = action.location_id()
    {
        // "Webhooks today" per location on the status page, committed with the hint.
        let one = DailyCounts { webhooks: 1, ..DailyCounts::default() };
        daily::add_in(tx.conn(), location_id, &daily::utc_day(now), one).await?;
    }
    tx.commit().await?;
    Ok(recorded)
}

/// Records `(source, event_id)` in the `webhook_inbox`, the one deduplication point of every
/// inbound webhook (GHL, Lusha): `true` the first time the id is seen, `false` for a redelivery.
pub(super) async fn first_delivery(
    conn: &mut SqliteConnection,
    source: &str,
    event_id: &str,
    event_type: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO webhook_inbox (source, event_id, event_type, received_at) VALUES (?, ?, ?, ?) \
         ON CONFLICT (source, event_id) DO NOTHING",
    )
    .bind(source)
    .bind(event_id)
    .bind(event_type)
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Deletes `webhook_inbox` rows (every source) received before `cutoff_ms`, in chunks (one
/// short transaction each). Returns how many were removed.
pub async fn purge_inbox(store: &Store, cutoff_ms: i64) -> Result<u64, StoreError> {
    super::delete_in_chunks(
        store,
        "inbox_purge",
        "DELETE FROM webhook_inbox WHERE (source, event_id) IN \
         (SELECT source, event_id FROM webhook_inbox WHERE received_at < ? LIMIT ?)",
        cutoff_ms,
    )
    .await
}
