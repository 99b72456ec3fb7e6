//! Webhook hints: `dirty_contacts` (contacts a GHL webhook named, waiting to be re-read) and
//! the `webhook_inbox` they arrive through. A hint is only a nudge: the sync re-reads the
//! contact from GHL, so order, duplicates and lost hints do not matter.

use std::time::Duration;

use super::daily::{self, DailyCounts};
use super::db::{Conn, Db, on_db};
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
    let rows: Vec<(String, i64)> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT contact_id, created_at FROM dirty_contacts WHERE location_id = $1 AND created_at <= $2 \
         ORDER BY created_at LIMIT $3",
    )
    .bind(location)
    .bind(ready_before)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await)?;
    Ok(rows.into_iter().map(|(contact_id, created_at)| Hint { contact_id, created_at }).collect())
}

/// Drops a handled hint; a newer one for the same contact (arrived meanwhile) stays.
pub async fn drop_handled(store: &Store, location: &str, hint: &Hint) -> Result<(), StoreError> {
    let mut tx = store.begin_write("hint_done").await?;
    on_db!(tx.conn(), |c| sqlx::query(
        "DELETE FROM dirty_contacts WHERE location_id = $1 AND contact_id = $2 AND created_at <= $3"
    )
    .bind(location)
    .bind(&hint.contact_id)
    .bind(hint.created_at)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    tx.commit().await
}

/// Locations that have hints waiting.
pub async fn locations_with_hints(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(on_db!(store.db(), |pool| sqlx::query_scalar("SELECT DISTINCT location_id FROM dirty_contacts")
        .fetch_all(pool)
        .await)?)
}

/// Whether hints are waiting for `location`.
pub async fn has_hints(store: &Store, location: &str) -> Result<bool, StoreError> {
    let found: Option<i64> = on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT CAST(1 AS BIGINT) FROM dirty_contacts WHERE location_id = $1 LIMIT 1"
    )
    .bind(location)
    .fetch_optional(pool)
    .await)?;
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
    let inserted = first_delivery(tx.conn(), "ghl", event_id, type_label, now).await?;
    if !inserted {
        tx.rollback().await?;
        return Ok(Recorded::Duplicate);
    }
    let recorded = match action {
        WebhookAction::Dirty { location_id, contact_id, reason, maybe_deleted } => {
            let status = locations::status_in(tx.conn(), location_id).await?;
            let synced = match (configured.configured(location_id), status.as_deref()) {
                (Some(false), _) => false,
                (_, Some(locations::status::UNINSTALLED | locations::status::DISABLED)) => false,
                (_, Some(_)) => true,
                (configured, None) => configured.is_some(),
            };
            if synced {
                on_db!(tx.conn(), |c| sqlx::query(
                    "INSERT INTO dirty_contacts (location_id, contact_id, reason, maybe_deleted, created_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (location_id, contact_id) DO UPDATE SET reason = excluded.reason, \
                     maybe_deleted = CASE WHEN excluded.maybe_deleted > dirty_contacts.maybe_deleted \
                       THEN excluded.maybe_deleted ELSE dirty_contacts.maybe_deleted END, \
                     created_at = CASE WHEN excluded.created_at > dirty_contacts.created_at \
                       THEN excluded.created_at ELSE dirty_contacts.created_at END",
                )
                .bind(location_id)
                .bind(contact_id)
                .bind(reason)
                .bind(i64::from(*maybe_deleted))
                .bind(now)
                .execute(c)
                .await
                .map(|done| done.rows_affected()))?;
                Recorded::Accepted
            } else {
                Recorded::IgnoredLocation
            }
        }
        WebhookAction::Install { location_id, company_id } => {
            if let Some(location_id) = location_id {
                locations::install_in(tx.conn(), location_id, company_id.as_deref(), now).await?;
            }
            Recorded::Accepted
        }
        WebhookAction::Uninstall { location_id, company_id } => {
            if let Some(location_id) = location_id {
                let uninstall = locations::Uninstall::Location { location_id, company_id: company_id.as_deref() };
                locations::uninstall_in(tx.conn(), uninstall, now).await?;
            } else if let Some(company_id) = company_id {
                locations::uninstall_in(tx.conn(), locations::Uninstall::Company { company_id }, now).await?;
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
        notify_in(tx.conn(), location_id).await?;
    }
    tx.commit().await?;
    Ok(recorded)
}

/// The PostgreSQL channel that tells replicas a webhook was stored (payload: the location id):
/// one per store, since notifications are database-wide and one database may hold several
/// stores (a schema each).
const HINTS_CHANNEL_SQL: &str = "'ghl_sync_hints_' || md5(current_schema())";

/// On PostgreSQL, notifies every replica (sent when the caller's transaction commits, so the
/// hint is readable when they wake); nothing on SQLite (one daemon: the receiver wakes it).
pub(crate) async fn notify_in(conn: Conn<'_>, location: &str) -> Result<(), StoreError> {
    if let Db::Postgres(c) = conn {
        sqlx::query(&format!("SELECT pg_notify({HINTS_CHANNEL_SQL}, $1)")).bind(location).execute(c).await?;
    }
    Ok(())
}

/// Wake-ups for webhooks stored by any replica (`LISTEN` on the store's channel, on a
/// connection of its own). Only on PostgreSQL.
pub struct HintListener {
    listener: sqlx::postgres::PgListener,
}

impl HintListener {
    /// Listens on the store's database; `Ok(None)` on SQLite.
    pub async fn connect(store: &Store) -> Result<Option<Self>, StoreError> {
        let Db::Postgres(pool) = store.db() else { return Ok(None) };
        let options = (*pool.connect_options()).clone();
        let own = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_lazy_with(options);
        let mut listener = sqlx::postgres::PgListener::connect_with(&own).await?;
        let channel: String =
            sqlx::query_scalar(&format!("SELECT {HINTS_CHANNEL_SQL}")).fetch_one(&mut listener).await?;
        listener.listen(&channel).await?;
        Ok(Some(Self { listener }))
    }

    /// Waits for the next notification: `Ok(Some(location))`, or `Ok(None)` when the
    /// connection was lost and re-established (notifications may have been missed: look at
    /// every location's hints).
    pub async fn next(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self.listener.try_recv().await?.map(|n| n.payload().to_owned()))
    }
}

/// Records `(source, event_id)` in the `webhook_inbox`, the one deduplication point of every
/// inbound webhook (GHL, Lusha): `true` the first time the id is seen, `false` for a redelivery.
pub(super) async fn first_delivery(
    conn: Conn<'_>,
    source: &str,
    event_id: &str,
    event_type: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let inserted = on_db!(conn, |c| sqlx::query(
        "INSERT INTO webhook_inbox (source, event_id, event_type, received_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (source, event_id) DO NOTHING",
    )
    .bind(source)
    .bind(event_id)
    .bind(event_type)
    .bind(now)
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(inserted == 1)
}

/// Deletes `webhook_inbox` rows (every source) received before `cutoff_ms`, in chunks (one
/// short transaction each). Returns how many were removed.
pub async fn purge_inbox(store: &Store, cutoff_ms: i64) -> Result<u64, StoreError> {
    super::delete_in_chunks(
        store,
        "inbox_purge",
        "DELETE FROM webhook_inbox WHERE (source, event_id) IN \
         (SELECT source, event_id FROM webhook_inbox WHERE received_at < $1 LIMIT $2)",
        cutoff_ms,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a` is configured and enabled, `off` configured but disabled; nothing else is.
    struct Configured;

    impl LocationFilter for Configured {
        fn configured(&self, location_id: &str) -> Option<bool> {
            match location_id {
                "a" => Some(true),
                "off" => Some(false),
                _ => None,
            }
        }
    }

    fn dirty(location: &str, contact: &str, maybe_deleted: bool) -> WebhookAction {
        WebhookAction::Dirty {
            location_id: location.into(),
            contact_id: contact.into(),
            reason: "ContactUpdate".into(),
            maybe_deleted,
        }
    }

    /// A webhook stored through one replica wakes every replica listening on the database,
    /// once its transaction has committed; a duplicate wakes nobody.
    #[tokio::test]
    async fn a_stored_webhook_notifies_listening_replicas_on_postgres() {
        let Some(store) = crate::store::testing::postgres_store().await else { return };
        let (_guard, store) = store;
        let mut listener = HintListener::connect(&store).await.unwrap().expect("a listener on PostgreSQL");
        let other = HintListener::connect(&store).await.unwrap().expect("a second replica's listener");
        let record = |id: &'static str| {
            let store = store.clone();
            async move {
                record_webhook(&store, id, "t", &dirty("a", "c1", false), &Configured, Duration::from_secs(5)).await
            }
        };
        assert_eq!(record("n1").await.unwrap(), Recorded::Accepted);
        let woken = tokio::time::timeout(Duration::from_secs(10), listener.next()).await.expect("notified");
        assert_eq!(woken.unwrap().as_deref(), Some("a"));
        let mut other = other;
        let woken = tokio::time::timeout(Duration::from_secs(10), other.next()).await.expect("notified");
        assert_eq!(woken.unwrap().as_deref(), Some("a"));
        assert_eq!(record("n1").await.unwrap(), Recorded::Duplicate);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), listener.next()).await.is_err(),
            "a duplicate wakes nobody"
        );
        let sqlite = crate::store::testing::sqlite_store().await;
        assert!(HintListener::connect(&sqlite.1).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn webhooks_dedupe_on_their_id_and_leave_hints_for_synced_locations_only() {
        for (_guard, store) in crate::store::testing::stores().await {
            webhooks_dedupe_and_leave_hints(&store).await;
        }
    }

    async fn webhooks_dedupe_and_leave_hints(store: &Store) {
        let record = |id: &'static str, action: WebhookAction| async move {
            record_webhook(store, id, "t", &action, &Configured, Duration::from_secs(5)).await.unwrap()
        };
        assert_eq!(record("e1", dirty("a", "c1", true)).await, Recorded::Accepted);
        assert_eq!(record("e1", dirty("a", "c2", false)).await, Recorded::Duplicate);
        // A later hint for the same contact keeps "maybe deleted" and moves the time on.
        assert_eq!(record("e2", dirty("a", "c1", false)).await, Recorded::Accepted);
        assert_eq!(record("e3", dirty("off", "c1", false)).await, Recorded::IgnoredLocation);
        assert_eq!(record("e4", dirty("elsewhere", "c1", false)).await, Recorded::IgnoredLocation);
        assert_eq!(record("e5", WebhookAction::Unknown).await, Recorded::UnknownType);
        // An install makes a location known: its hints are kept though it is not configured.
        let install = WebhookAction::Install { location_id: Some("new".into()), company_id: Some("co".into()) };
        assert_eq!(record("e6", install).await, Recorded::Accepted);
        assert_eq!(record("e7", dirty("new", "c5", false)).await, Recorded::Accepted);
        let uninstall = WebhookAction::Uninstall { location_id: None, company_id: Some("co".into()) };
        assert_eq!(record("e8", uninstall).await, Recorded::Accepted);
        assert_eq!(record("e9", dirty("new", "c6", false)).await, Recorded::IgnoredLocation);
        assert_eq!(locations::status_of(store, "new").await.unwrap().as_deref(), Some(locations::status::UNINSTALLED));

        let mut with_hints = locations_with_hints(store).await.unwrap();
        with_hints.sort();
        assert_eq!(with_hints, ["a", "new"]);
        let hints = ready(store, "a", i64::MAX, 10).await.unwrap();
        assert_eq!(hints.len(), 1);
        assert_eq!(hints[0].contact_id, "c1");
        let maybe_deleted: i64 = on_db!(store.db(), |pool| sqlx::query_scalar(
            "SELECT maybe_deleted FROM dirty_contacts WHERE location_id = 'a' AND contact_id = 'c1'"
        )
        .fetch_one(pool)
        .await)
        .unwrap();
        assert_eq!(maybe_deleted, 1);
        assert!(ready(store, "a", hints[0].created_at - 1, 10).await.unwrap().is_empty());
        // A hint older than the one handled stays dropped; "webhooks today" counted the accepted ones.
        drop_handled(store, "a", &hints[0]).await.unwrap();
        assert!(!has_hints(store, "a").await.unwrap());
        assert!(has_hints(store, "new").await.unwrap());
        let today = daily::read(store, "a", &daily::utc_day(now_ms())).await.unwrap();
        assert_eq!(today.webhooks, 2);
    }
}
