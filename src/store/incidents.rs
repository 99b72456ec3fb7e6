//! The `incidents` table: operator-alert incidents per alert target (`crate::alerts`).
//!
//! Contract:
//! - [`reconcile`] is the only way incidents open and resolve: given the conditions active
//!   now for one alert, it opens an incident for each new one and resolves the open ones that
//!   cleared, in one short write transaction. An incident stays open while its condition
//!   stays active (no new incident, no new notification).
//! - Notifications are recorded after the target accepted them ([`mark_sent`]); [`unsent`]
//!   lists what still has to go out. A restart therefore neither repeats a notification that
//!   was recorded nor forgets one that was not (it goes out on the next evaluation; a crash
//!   between the send and the record sends it once more).
//! - Summaries hold ids, counts and thresholds only, never personal data.

use super::db::on_db;
use super::{Store, StoreError, now_ms};

/// A condition active now, as the evaluator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveCondition {
    /// `kind:subject`, e.g. `dead_letters:webhook.crm`.
    pub key: String,
    pub summary: String,
}

/// What [`reconcile`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub opened: u64,
    pub resolved: u64,
}

/// Which notification of an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    Resolved,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Opened => "opened",
            Transition::Resolved => "resolved",
        }
    }
}

/// A notification still to send.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Incident {
    pub id: i64,
    pub alert: String,
    pub condition_key: String,
    pub summary: String,
    pub opened_at: i64,
    pub resolved_at: Option<i64>,
}

impl Incident {
    /// The notification this incident is waiting for.
    pub fn pending(&self) -> Transition {
        if self.resolved_at.is_some() { Transition::Resolved } else { Transition::Opened }
    }
}

/// Opens incidents for `active` conditions that have none open, and resolves the open
/// incidents of `alert` whose condition is not in `active`. One write transaction.
pub async fn reconcile(store: &Store, alert: &str, active: &[ActiveCondition]) -> Result<Reconciled, StoreError> {
    let now = now_ms();
    let mut tx = store.begin_write("incidents").await?;
    let open: Vec<String> = on_db!(tx.conn(), |c| sqlx::query_scalar(
        "SELECT condition_key FROM incidents WHERE alert = $1 AND resolved_at IS NULL"
    )
    .bind(alert)
    .fetch_all(c)
    .await)?;
    let mut changed = Reconciled::default();
    for condition in active.iter().filter(|c| !open.contains(&c.key)) {
        on_db!(tx.conn(), |c| sqlx::query(
            "INSERT INTO incidents (alert, condition_key, summary, opened_at) VALUES ($1, $2, $3, $4)"
        )
        .bind(alert)
        .bind(&condition.key)
        .bind(&condition.summary)
        .bind(now)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
        changed.opened += 1;
    }
    for key in open.iter().filter(|key| !active.iter().any(|c| &c.key == *key)) {
        on_db!(tx.conn(), |c| sqlx::query(
            "UPDATE incidents SET resolved_at = $1 WHERE alert = $2 AND condition_key = $3 AND resolved_at IS NULL",
        )
        .bind(now)
        .bind(alert)
        .bind(key)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
        changed.resolved += 1;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Notifications of `alert` not sent yet, oldest first. An incident that opened and resolved
/// before its opening went out is reported once, as resolved (its opening is marked sent with
/// it: see [`mark_sent`]).
pub async fn unsent(store: &Store, alert: &str) -> Result<Vec<Incident>, StoreError> {
    Ok(on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT id, alert, condition_key, summary, opened_at, resolved_at FROM incidents \
         WHERE alert = $1 AND (opened_sent_at IS NULL OR (resolved_at IS NOT NULL AND resolved_sent_at IS NULL)) \
         ORDER BY id",
    )
    .bind(alert)
    .fetch_all(pool)
    .await)?)
}

/// Records that `transition` of incident `id` was notified (a resolution also covers an
/// opening that never went out).
pub async fn mark_sent(store: &Store, id: i64, transition: Transition) -> Result<(), StoreError> {
    let now = now_ms();
    let mut tx = store.begin_write("incidents").await?;
    let sql = match transition {
        Transition::Opened => "UPDATE incidents SET opened_sent_at = $1, last_error = NULL WHERE id = $2",
        Transition::Resolved => {
            "UPDATE incidents SET resolved_sent_at = $1, opened_sent_at = COALESCE(opened_sent_at, $1), \
             last_error = NULL WHERE id = $2"
        }
    };
    on_db!(tx.conn(), |c| sqlx::query(sql).bind(now).bind(id).execute(c).await.map(|done| done.rows_affected()))?;
    tx.commit().await?;
    Ok(())
}

/// Records why a notification failed (it is tried again on the next evaluation).
pub async fn mark_failed(store: &Store, id: i64, error: &str) -> Result<(), StoreError> {
    let mut tx = store.begin_write("incidents").await?;
    on_db!(tx.conn(), |c| sqlx::query("UPDATE incidents SET last_error = $1 WHERE id = $2")
        .bind(error)
        .bind(id)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(key: &str) -> ActiveCondition {
        ActiveCondition { key: key.to_owned(), summary: format!("{key} is bad") }
    }

    #[tokio::test]
    async fn an_incident_opens_once_stays_open_and_resolves_once() {
        for (_guard, store) in crate::store::testing::stores().await {
            opens_once_stays_open_and_resolves_once(&store).await;
        }
    }

    async fn opens_once_stays_open_and_resolves_once(store: &Store) {
        let first = reconcile(store, "ops", &[active("circuit:webhook.a")]).await.unwrap();
        assert_eq!(first, Reconciled { opened: 1, resolved: 0 });
        let again = reconcile(store, "ops", &[active("circuit:webhook.a")]).await.unwrap();
        assert_eq!(again, Reconciled::default());
        let pending = unsent(store, "ops").await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].pending(), Transition::Opened);
        // A failed notification stays unsent.
        mark_failed(store, pending[0].id, "target answered 503").await.unwrap();
        assert_eq!(unsent(store, "ops").await.unwrap().len(), 1);
        mark_sent(store, pending[0].id, Transition::Opened).await.unwrap();
        assert!(unsent(store, "ops").await.unwrap().is_empty());
        // Another alert target keeps its own incidents.
        assert_eq!(reconcile(store, "other", &[active("circuit:webhook.a")]).await.unwrap().opened, 1);

        let cleared = reconcile(store, "ops", &[]).await.unwrap();
        assert_eq!(cleared, Reconciled { opened: 0, resolved: 1 });
        let pending = unsent(store, "ops").await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].pending(), Transition::Resolved);
        mark_sent(store, pending[0].id, Transition::Resolved).await.unwrap();
        assert!(unsent(store, "ops").await.unwrap().is_empty());
        assert_eq!(reconcile(store, "ops", &[]).await.unwrap(), Reconciled::default());
        // The condition again: a new incident.
        assert_eq!(reconcile(store, "ops", &[active("circuit:webhook.a")]).await.unwrap().opened, 1);
    }
}
