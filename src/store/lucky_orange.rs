//! The Lucky Orange bridge's tables: `lo_tokens` (the last identity token minted per contact:
//! its key id and expiry, never the token) and `lo_events` (what the site reported per contact
//! — identify, visit, journey event, replay link — and what came of it in GHL).
//!
//! Contract: public functions take `&Store` and plain data and run their whole (short)
//! transaction themselves; no network I/O happens here. Rows hold no personal data: contact
//! ids, allow-listed event names, page paths without query strings, Lucky Orange session ids.

use std::collections::HashMap;

use serde_json::Value;

use super::db::on_db;
use super::snapshot::with_locations_holding_contacts;
use super::{Store, StoreError, codec};

/// The newest stored row of contact `$1`, in any location.
pub(super) const FIND_CONTACT: &str = with_locations_holding_contacts!(
    "SELECT c.location_id, c.record FROM held JOIN contacts c ON c.location_id = held.location_id \
     WHERE c.contact_id = $1 ORDER BY c.updated_at DESC LIMIT 1"
);

/// The stored contact an identity token names, in whichever location holds it (GHL contact
/// ids are unique across locations). `None`: unknown or deleted.
pub async fn find_contact(store: &Store, contact_id: &str) -> Result<Option<(String, Value)>, StoreError> {
    let row: Option<(String, Vec<u8>)> =
        on_db!(store.db(), |pool| sqlx::query_as(FIND_CONTACT).bind(contact_id).fetch_optional(pool).await)?;
    match row {
        Some((location, blob)) => Ok(Some((location, codec::unpack(&blob)?))),
        None => Ok(None),
    }
}

/// Expiry (Unix seconds) of the last token minted for each contact of a location.
pub async fn token_expiries(store: &Store, location: &str) -> Result<HashMap<String, i64>, StoreError> {
    let rows: Vec<(String, i64)> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT contact_id, expires_at FROM lo_tokens WHERE location_id = $1"
    )
    .bind(location)
    .fetch_all(pool)
    .await)?;
    Ok(rows.into_iter().collect())
}

/// Remembers a token written to GHL (after the write succeeded).
pub async fn record_minted(
    store: &Store,
    location: &str,
    contact_id: &str,
    kid: &str,
    expires_at: i64,
) -> Result<(), StoreError> {
    let mut tx = store.begin_write("lo_token").await?;
    on_db!(tx.conn(), |c| sqlx::query(
        "INSERT INTO lo_tokens (location_id, contact_id, kid, expires_at, minted_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (location_id, contact_id) DO UPDATE SET kid = excluded.kid, expires_at = excluded.expires_at, \
         minted_at = excluded.minted_at",
    )
    .bind(location)
    .bind(contact_id)
    .bind(kid)
    .bind(expires_at)
    .bind(super::now_ms())
    .execute(c)
    .await
    .map(|done| done.rows_affected()))?;
    tx.commit().await
}

/// Kinds of `lo_events` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Identify,
    Visit,
    /// A journey event (`ghlSync.track`): the change event `lucky_orange.event`.
    Event,
    Replay,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Identify => "identify",
            EventKind::Visit => "visit",
            EventKind::Event => "event",
            EventKind::Replay => "replay",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "identify" => EventKind::Identify,
            "visit" => EventKind::Visit,
            "replay" => EventKind::Replay,
            _ => EventKind::Event,
        }
    }
}

/// A row to add to `lo_events`.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub location_id: &'a str,
    pub contact_id: &'a str,
    pub kind: EventKind,
    pub name: Option<&'a str>,
    pub page: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub visits: Option<i64>,
    pub occurred_at: i64,
    /// `pending` (the connector applies it) or `done`.
    pub pending: bool,
    pub outcome: Option<&'a str>,
}

/// A stored `lo_events` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: i64,
    pub location_id: String,
    pub contact_id: String,
    pub kind: EventKind,
    pub name: Option<String>,
    pub page: Option<String>,
    pub session_id: Option<String>,
    pub visits: Option<i64>,
    pub occurred_at: i64,
    pub status: String,
    pub outcome: Option<String>,
}

type EventRow = (
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    i64,
    String,
    Option<String>,
);

fn event_of(row: EventRow) -> StoredEvent {
    let (id, location_id, contact_id, kind, name, page, session_id, visits, occurred_at, status, outcome) = row;
    StoredEvent {
        id,
        location_id,
        contact_id,
        kind: EventKind::parse(&kind),
        name,
        page,
        session_id,
        visits,
        occurred_at,
        status,
        outcome,
    }
}

const EVENT_COLUMNS: &str =
    "id, location_id, contact_id, kind, name, page, session_id, visits, occurred_at, status, outcome";

/// Stores one report of the site; returns its id.
pub async fn record_event(store: &Store, event: &NewEvent<'_>) -> Result<i64, StoreError> {
    let mut tx = store.begin_write("lo_event").await?;
    let id: i64 = on_db!(tx.conn(), |c| {
        sqlx::query_scalar(
        "INSERT INTO lo_events (location_id, contact_id, kind, name, page, session_id, visits, occurred_at, status, outcome) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(event.location_id)
    .bind(event.contact_id)
    .bind(event.kind.as_str())
    .bind(event.name)
    .bind(event.page)
    .bind(event.session_id)
    .bind(event.visits)
    .bind(event.occurred_at)
    .bind(if event.pending { "pending" } else { "done" })
    .bind(event.outcome)
    .fetch_one(c)
    .await
    })?;
    tx.commit().await?;
    Ok(id)
}

/// Pending rows (visits and journey events to apply to GHL), oldest first.
pub async fn pending_events(store: &Store, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM lo_events WHERE status = 'pending' ORDER BY id LIMIT $1");
    let rows: Vec<EventRow> =
        on_db!(store.db(), |pool| sqlx::query_as(&sql).bind(i64::from(limit)).fetch_all(pool).await)?;
    Ok(rows.into_iter().map(event_of).collect())
}

/// Deletes applied or set-aside site reports that occurred before `cutoff_ms`, in short
/// chunks (pending ones stay until applied).
pub async fn purge_events(store: &Store, cutoff_ms: i64) -> Result<u64, StoreError> {
    super::delete_in_chunks(
        store,
        "lo_events_purge",
        "DELETE FROM lo_events WHERE id IN \
         (SELECT id FROM lo_events WHERE occurred_at < $1 AND status != 'pending' LIMIT $2)",
        cutoff_ms,
    )
    .await
}

/// Marks a row applied (`done`) or deliberately not (`skipped`), with what was done.
pub async fn finish_event(store: &Store, id: i64, status: &str, outcome: Option<&str>) -> Result<(), StoreError> {
    let mut tx = store.begin_write("lo_event_done").await?;
    on_db!(tx.conn(), |c| sqlx::query("UPDATE lo_events SET status = $1, outcome = $2 WHERE id = $3")
        .bind(status)
        .bind(outcome)
        .bind(id)
        .execute(c)
        .await
        .map(|done| done.rows_affected()))?;
    tx.commit().await
}

/// When a visit of this contact was last written to GHL (epoch ms), for the per-contact throttle.
pub async fn last_visit_write(store: &Store, contact_id: &str) -> Result<Option<i64>, StoreError> {
    Ok(on_db!(store.db(), |pool| sqlx::query_scalar(
        "SELECT MAX(occurred_at) FROM lo_events WHERE contact_id = $1 AND kind = 'visit' AND status = 'done' \
         AND outcome = 'fields'",
    )
    .bind(contact_id)
    .fetch_one(pool)
    .await)?)
}

/// Everything recorded for one contact, newest first (the contact view).
pub async fn contact_events(store: &Store, contact_id: &str, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM lo_events WHERE contact_id = $1 ORDER BY occurred_at DESC, id DESC LIMIT $2"
    );
    let rows: Vec<EventRow> =
        on_db!(store.db(), |pool| sqlx::query_as(&sql).bind(contact_id).bind(i64::from(limit)).fetch_all(pool).await)?;
    Ok(rows.into_iter().map(event_of).collect())
}

/// The token bookkeeping of one contact: `(kid, expires_at, minted_at)`.
pub async fn contact_token(store: &Store, contact_id: &str) -> Result<Option<(String, i64, i64)>, StoreError> {
    Ok(on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT kid, expires_at, minted_at FROM lo_tokens WHERE contact_id = $1 ORDER BY minted_at DESC LIMIT 1"
    )
    .bind(contact_id)
    .fetch_optional(pool)
    .await)?)
}

/// Figures since `since_ms` across the systems (the insights page, `status --json`,
/// `/metrics`): counts only, no personal data.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Figures {
    /// Contacts in the snapshot now.
    pub contacts_synced: i64,
    /// Contacts first seen since.
    pub contacts_new: i64,
    /// Distinct contacts Lusha found since.
    pub lusha_enriched: i64,
    /// Lusha credits spent on answers since.
    pub lusha_credits: i64,
    /// Contacts with a live token.
    pub tokens_live: i64,
    /// Distinct contacts identified on the site.
    pub identified: i64,
    pub visits: i64,
    /// Distinct contacts with a replay link noted in GHL.
    pub with_replays: i64,
    /// Journey events by name.
    pub events: Vec<(String, i64)>,
    /// GHL tasks created from journey events.
    pub tasks_created: i64,
}

/// Counts since `since_ms`; `now_secs` decides which tokens are live.
pub async fn figures(store: &Store, since_ms: i64, now_secs: i64) -> Result<Figures, StoreError> {
    Ok(on_db!(store.db(), |pool| {
        let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).bind(since_ms);
        let identified =
            count("SELECT COUNT(DISTINCT contact_id) FROM lo_events WHERE kind = 'identify' AND occurred_at >= $1")
                .fetch_one(pool)
                .await?;
        let visits =
            count("SELECT COUNT(*) FROM lo_events WHERE kind = 'visit' AND occurred_at >= $1").fetch_one(pool).await?;
        let with_replays =
            count("SELECT COUNT(DISTINCT contact_id) FROM lo_events WHERE kind = 'replay' AND occurred_at >= $1")
                .fetch_one(pool)
                .await?;
        let tasks_created = count(
            "SELECT COUNT(*) FROM lo_events WHERE kind = 'event' AND status = 'done' AND outcome LIKE '%task%' \
             AND occurred_at >= $1",
        )
        .fetch_one(pool)
        .await?;
        let events: Vec<(String, i64)> = sqlx::query_as(
            "SELECT name, COUNT(*) FROM lo_events WHERE kind = 'event' AND name IS NOT NULL AND occurred_at >= $1 \
             GROUP BY name ORDER BY COUNT(*) DESC, name",
        )
        .bind(since_ms)
        .fetch_all(pool)
        .await?;
        let tokens_live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM lo_tokens WHERE expires_at > $1")
            .bind(now_secs)
            .fetch_one(pool)
            .await?;
        let contacts_synced: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts").fetch_one(pool).await?;
        let contacts_new = count("SELECT COUNT(*) FROM contacts WHERE first_seen_at >= $1").fetch_one(pool).await?;
        let lusha_enriched =
            count("SELECT COUNT(DISTINCT contact_id) FROM lusha_cache WHERE found = 1 AND enriched_at >= $1")
                .fetch_one(pool)
                .await?;
        let lusha_credits =
            count("SELECT CAST(COALESCE(SUM(credits), 0) AS BIGINT) FROM lusha_cache WHERE enriched_at >= $1")
                .fetch_one(pool)
                .await?;
        Figures {
            contacts_synced,
            contacts_new,
            lusha_enriched,
            lusha_credits,
            tokens_live,
            identified,
            visits,
            with_replays,
            events,
            tasks_created,
        }
    }))
}

/// Identifications per UTC day for the last `days` days, oldest first (the insights chart).
pub async fn identified_per_day(store: &Store, now_ms: i64, days: i64) -> Result<Vec<i64>, StoreError> {
    const DAY: i64 = 86_400_000;
    let today = now_ms.div_euclid(DAY);
    let first = today - days + 1;
    let rows: Vec<(i64, i64)> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT occurred_at / 86400000 AS day, COUNT(DISTINCT contact_id) FROM lo_events \
         WHERE kind = 'identify' AND occurred_at >= $1 GROUP BY day",
    )
    .bind(first * DAY)
    .fetch_all(pool)
    .await)?;
    let mut per_day = vec![0; usize::try_from(days.max(0)).unwrap_or(0)];
    for (day, n) in rows {
        if let Some(slot) = usize::try_from(day - first).ok().and_then(|i| per_day.get_mut(i)) {
            *slot = n;
        }
    }
    Ok(per_day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn event(kind: EventKind, contact_id: &str, occurred_at: i64, pending: bool) -> NewEvent<'_> {
        NewEvent {
            location_id: "loc",
            contact_id,
            kind,
            name: (kind == EventKind::Event).then_some("signup"),
            page: Some("/pricing"),
            session_id: None,
            visits: (kind == EventKind::Visit).then_some(3),
            occurred_at,
            pending,
            outcome: None,
        }
    }

    #[tokio::test]
    async fn tokens_events_and_figures_round_trip() {
        for (_guard, store) in crate::store::testing::stores().await {
            tokens_events_and_figures(&store).await;
        }
    }

    async fn tokens_events_and_figures(store: &Store) {
        let store = store.clone();
        let now = 10 * DAY + 5;
        assert_eq!(find_contact(&store, "c1").await.unwrap(), None);
        record_minted(&store, "loc", "c1", "k1", 100).await.unwrap();
        record_minted(&store, "loc", "c1", "k2", 200).await.unwrap();
        record_minted(&store, "loc", "c2", "k2", 50).await.unwrap();
        assert_eq!(
            token_expiries(&store, "loc").await.unwrap(),
            HashMap::from([("c1".into(), 200), ("c2".into(), 50)])
        );
        let (kid, expires_at, _minted) = contact_token(&store, "c1").await.unwrap().unwrap();
        assert_eq!((kid.as_str(), expires_at), ("k2", 200));
        assert_eq!(contact_token(&store, "c3").await.unwrap(), None);

        let identify = record_event(&store, &event(EventKind::Identify, "c1", now - DAY, false)).await.unwrap();
        let visit = record_event(&store, &event(EventKind::Visit, "c1", now - 10, true)).await.unwrap();
        let journey = record_event(&store, &event(EventKind::Event, "c2", now - 5, true)).await.unwrap();
        record_event(&store, &event(EventKind::Identify, "c2", now, false)).await.unwrap();
        assert!(identify < visit && visit < journey);
        let pending = pending_events(&store, 10).await.unwrap();
        assert_eq!(pending.iter().map(|e| e.id).collect::<Vec<_>>(), [visit, journey]);
        assert_eq!(
            (pending[0].kind, pending[0].visits, pending[0].page.as_deref()),
            (EventKind::Visit, Some(3), Some("/pricing"))
        );
        assert_eq!(pending_events(&store, 1).await.unwrap().len(), 1);

        assert_eq!(last_visit_write(&store, "c1").await.unwrap(), None);
        finish_event(&store, visit, "done", Some("fields")).await.unwrap();
        finish_event(&store, journey, "done", Some("task created")).await.unwrap();
        assert_eq!(last_visit_write(&store, "c1").await.unwrap(), Some(now - 10));
        assert!(pending_events(&store, 10).await.unwrap().is_empty());
        let history = contact_events(&store, "c1", 10).await.unwrap();
        assert_eq!(history.iter().map(|e| e.id).collect::<Vec<_>>(), [visit, identify]);
        assert_eq!((history[0].status.as_str(), history[0].outcome.as_deref()), ("done", Some("fields")));

        let figures = figures(&store, now - DAY, 100).await.unwrap();
        assert_eq!(
            figures,
            Figures {
                tokens_live: 1,
                identified: 2,
                visits: 1,
                events: vec![("signup".into(), 1)],
                tasks_created: 1,
                ..Figures::default()
            }
        );
        assert_eq!(identified_per_day(&store, now, 3).await.unwrap(), [0, 1, 1]);

        // Set-aside and applied reports older than the cutoff go; pending ones stay.
        record_event(&store, &event(EventKind::Visit, "c3", 1, true)).await.unwrap();
        assert_eq!(purge_events(&store, now - 7).await.unwrap(), 2);
        assert!(contact_events(&store, "c1", 10).await.unwrap().is_empty());
        assert_eq!(contact_events(&store, "c2", 10).await.unwrap().len(), 2);
        assert_eq!(pending_events(&store, 10).await.unwrap().len(), 1);
    }
}
