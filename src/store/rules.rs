//! The rules' outbox rows (see [`crate::rules`] for the flow): trigger events for the `rules`
//! connector, planned actions for each rule's connector, and the rows an action hands to a
//! named connector. All of them go through [`outbox::enqueue`], the one way into the outbox.
//!
//! Contract:
//! - **Once per key.** An event, an action or a delivery whose key already has a row for its
//!   connector (any status, or a dead letter) adds nothing: a replayed batch, a repeated sync
//!   commit or an action delivered twice never doubles a row. Rows pruned after delivery are
//!   no longer seen; the action's GHL write is still guarded by its write-back key.
//! - **Plain data in, short transactions.** [`enqueue_events`] and [`enqueue_actions`] write a
//!   batch in one short write transaction; [`enqueue_events_on`] writes inside the caller's
//!   (the sync's page commit).

use sha2::{Digest, Sha256};

use super::db::{Conn, on_db};
use super::outbox::{self, EnqueuePolicy, Enqueued, NewChange};
use super::{Store, StoreError, codec, now_ms, snapshot};
use crate::domain::{EntityKind, Operation, hex};
use crate::rules::{Action, EVENTS_CONNECTOR, PlannedAction, RuleEvent, actions_connector};

/// The outbox `entity_id` (and key) of a trigger event: hex sha256 of its key (event keys
/// can be long).
pub fn event_id(event_key: &str) -> String {
    hex(&Sha256::digest(event_key.as_bytes()))
}

/// Whether `connector` already has a row (any status) or a dead letter for (`entity`,
/// `entity_id`) under `key`.
async fn known(
    mut conn: Conn<'_>,
    connector: &str,
    entity: EntityKind,
    entity_id: &str,
    key: &str,
) -> Result<bool, StoreError> {
    // `CAST(1 AS BIGINT)`: a bare `1` is an INT4 on PostgreSQL, which does not decode as i64.
    let in_outbox: Option<i64> = on_db!(conn.reborrow(), |c| sqlx::query_scalar(
        "SELECT CAST(1 AS BIGINT) FROM outbox \
         WHERE connector = $1 AND entity = $2 AND entity_id = $3 AND idempotency_key = $4 LIMIT 1",
    )
    .bind(connector)
    .bind(entity.as_str())
    .bind(entity_id)
    .bind(key)
    .fetch_optional(c)
    .await)?;
    if in_outbox.is_some() {
        return Ok(true);
    }
    let dead: Option<i64> = on_db!(conn, |c| sqlx::query_scalar(
        "SELECT CAST(1 AS BIGINT) FROM dead_letters \
         WHERE connector = $1 AND entity = $2 AND entity_id = $3 AND idempotency_key = $4 LIMIT 1",
    )
    .bind(connector)
    .bind(entity.as_str())
    .bind(entity_id)
    .bind(key)
    .fetch_optional(c)
    .await)?;
    Ok(dead.is_some())
}

/// One row to write once: its change and its key.
struct OnceRow<'a> {
    change: NewChange<'a>,
    key: &'a str,
}

/// Inserts `row` unless its key is known; `policy` applies to a pending row of the same record.
async fn enqueue_once(
    mut conn: Conn<'_>,
    row: OnceRow<'_>,
    policy: EnqueuePolicy,
) -> Result<Option<Enqueued>, StoreError> {
    let change = row.change;
    if known(conn.reborrow(), change.connector, change.entity, change.entity_id, row.key).await? {
        return Ok(None);
    }
    Ok(Some(outbox::enqueue(conn, change, policy, Some(row.key)).await?))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Serializes a value the outbox carries as a record (the shared rule types always serialize).
fn packed<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_value(value).map_err(|e| StoreError::Corrupt(format!("unserializable record: {e}")))?;
    Ok(codec::pack(&json))
}

/// [`enqueue_events`] inside the caller's write transaction (the sync writes its events in
/// its page commit). Returns how many rows were added.
pub async fn enqueue_events_on(mut conn: Conn<'_>, events: &[RuleEvent]) -> Result<u64, StoreError> {
    let mut added = 0;
    for event in events {
        let id = event_id(&event.key);
        let record = packed(event)?;
        let hash = sha256(&record);
        let change = NewChange {
            connector: EVENTS_CONNECTOR,
            location_id: &event.location_id,
            entity: EntityKind::Event,
            entity_id: &id,
            contact_id: event.contact_id.as_deref(),
            operation: Operation::Created,
            record: &record,
            content_hash: &hash,
            revision: 0,
            changed_at: if event.at_ms > 0 { event.at_ms } else { now_ms() },
        };
        let row = OnceRow { change, key: &id };
        if enqueue_once(conn.reborrow(), row, EnqueuePolicy::KeepPending).await?.is_some() {
            added += 1;
        }
    }
    Ok(added)
}

/// One outbox row per trigger event for the `rules` connector (entity `event`, id and key the
/// hex sha256 of the event's key, record the packed event), in one short write transaction.
/// An event whose key already has a row adds nothing. Returns how many rows were added.
pub async fn enqueue_events(store: &Store, events: &[RuleEvent]) -> Result<u64, StoreError> {
    if events.is_empty() {
        return Ok(0);
    }
    let mut tx = store.begin_write("rule_events").await?;
    let added = enqueue_events_on(tx.conn(), events).await?;
    tx.commit().await?;
    Ok(added)
}

/// The outbox change of a planned action: entity `action`, id its key, record the packed action.
fn action_change<'a>(
    connector: &'a str,
    action: &'a PlannedAction,
    record: &'a [u8],
    hash: &'a [u8; 32],
    now: i64,
) -> NewChange<'a> {
    NewChange {
        connector,
        location_id: &action.location_id,
        entity: EntityKind::Action,
        entity_id: &action.key,
        contact_id: action.contact_id.as_deref(),
        operation: Operation::Created,
        record,
        content_hash: hash,
        revision: 0,
        changed_at: now,
    }
}

/// One outbox row per planned action for its rule's connector (`rule.<name>`, entity
/// `action`, id and key the action's key, record the packed action), in one short write
/// transaction. An action whose key already has a row adds nothing. Returns how many rows
/// were added.
pub async fn enqueue_actions(store: &Store, actions: &[PlannedAction]) -> Result<u64, StoreError> {
    if actions.is_empty() {
        return Ok(0);
    }
    let now = now_ms();
    let mut tx = store.begin_write("rule_actions").await?;
    let mut added = 0;
    for action in actions {
        let connector = actions_connector(&action.rule);
        let record = packed(action)?;
        let hash = sha256(&record);
        let change = action_change(&connector, action, &record, &hash, now);
        let row = OnceRow { change, key: &action.key };
        if enqueue_once(tx.conn(), row, EnqueuePolicy::KeepPending).await?.is_some() {
            added += 1;
        }
    }
    tx.commit().await?;
    Ok(added)
}

/// What [`replay_actions`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Action rows queued again.
    pub enqueued: u64,
    /// The action already has a pending row (it runs anyway).
    pub already_pending: u64,
}

/// `ghl-sync replay --connector rule.<name>`: the rule's performed actions (outbox rows still
/// kept) queued again. Without `salt` each keeps its key, so the executor finds its write-back
/// key done and GHL sees nothing twice (what a replay of a webhook connector does for targets
/// that de-duplicate); with `salt` (`--new-keys`) each gets a new key and is performed again.
/// `since_ms`, `location` and `contact` narrow the rows (by when the action was stored).
pub async fn replay_actions(
    store: &Store,
    rule: &str,
    since_ms: Option<i64>,
    location: Option<&str>,
    contact: Option<&str>,
    salt: Option<&str>,
) -> Result<Replayed, StoreError> {
    let connector = actions_connector(rule);
    let rows: Vec<(Vec<u8>,)> = on_db!(store.db(), |pool| sqlx::query_as(
        "SELECT record FROM outbox WHERE connector = $1 AND entity = 'action' AND status = 'done' \
         AND created_at >= $2 AND (CAST($3 AS TEXT) IS NULL OR location_id = $4) \
         AND (CAST($5 AS TEXT) IS NULL OR contact_id = $6) ORDER BY id",
    )
    .bind(&connector)
    .bind(since_ms.unwrap_or(0))
    .bind(location)
    .bind(location)
    .bind(contact)
    .bind(contact)
    .fetch_all(pool)
    .await)?;
    let mut actions = Vec::with_capacity(rows.len());
    for (blob,) in rows {
        let Some(mut planned) = codec::unpack(&blob).ok().and_then(|v| serde_json::from_value::<PlannedAction>(v).ok())
        else {
            continue;
        };
        if let Some(salt) = salt {
            planned.key = crate::writeback::key(&["replay", &planned.key, salt]);
        }
        actions.push(planned);
    }
    let mut done = Replayed::default();
    let now = now_ms();
    let mut tx = store.begin_write("rule_replay").await?;
    for action in &actions {
        let record = packed(action)?;
        let hash = sha256(&record);
        let change = action_change(&connector, action, &record, &hash, now);
        match outbox::enqueue(tx.conn(), change, EnqueuePolicy::KeepPending, Some(&action.key)).await? {
            Enqueued::Inserted | Enqueued::Folded => done.enqueued += 1,
            Enqueued::AlreadyPending => done.already_pending += 1,
        }
    }
    tx.commit().await?;
    Ok(done)
}

/// What [`enqueue_delivery`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// A row for the target connector was added.
    Queued,
    /// The action's key already has a row for the connector, or the record already has a
    /// pending row there (it carries the newer state): nothing was added.
    Already,
    /// Nothing to send: the action has no record (Deliver) or the contact has no snapshot
    /// (Lusha enrich).
    NoRecord,
}

/// The operation a trigger name ends with (`task.completed` → completed), for the row handed
/// to a connector; anything else is an update.
fn operation_of(trigger: &str) -> Operation {
    let last = trigger.rsplit('.').next().unwrap_or("");
    match last {
        "created" => Operation::Created,
        "deleted" => Operation::Deleted,
        "completed" => Operation::Completed,
        _ => Operation::Updated,
    }
}

/// For [`Action::Deliver`] and [`Action::LushaEnrich`]: a row for `connector` under the
/// action's key ([`EnqueuePolicy::KeepPending`]). Deliver carries the event's record
/// (entity, id, record of the planned action); Lusha enrich carries the contact's snapshot
/// from the `contacts` table. Other actions hand nothing ([`Handed::NoRecord`]).
pub async fn enqueue_delivery(store: &Store, connector: &str, planned: &PlannedAction) -> Result<Handed, StoreError> {
    let (entity, entity_id, contact_id, record, operation) = match &planned.action {
        Action::Deliver { .. } => {
            let (Some(entity), Some(entity_id), Some(record)) =
                (planned.entity, planned.entity_id.as_deref(), planned.record.as_ref())
            else {
                return Ok(Handed::NoRecord);
            };
            let contact_id = planned.contact_id.clone();
            (entity, entity_id.to_owned(), contact_id, record.clone(), operation_of(&planned.trigger))
        }
        Action::LushaEnrich { contact_id } => {
            let Some(record) = snapshot::contact_record(store, &planned.location_id, contact_id).await? else {
                return Ok(Handed::NoRecord);
            };
            (EntityKind::Contact, contact_id.clone(), Some(contact_id.clone()), record, Operation::Updated)
        }
        _ => return Ok(Handed::NoRecord),
    };
    let packed = codec::pack(&record);
    let hash = sha256(&packed);
    let change = NewChange {
        connector,
        location_id: &planned.location_id,
        entity,
        entity_id: &entity_id,
        contact_id: contact_id.as_deref(),
        operation,
        record: &packed,
        content_hash: &hash,
        revision: 0,
        changed_at: now_ms(),
    };
    let mut tx = store.begin_write("rule_delivery").await?;
    let done = enqueue_once(tx.conn(), OnceRow { change, key: &planned.key }, EnqueuePolicy::KeepPending).await?;
    tx.commit().await?;
    Ok(match done {
        Some(Enqueued::Inserted | Enqueued::Folded) => Handed::Queued,
        Some(Enqueued::AlreadyPending) | None => Handed::Already,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(key: &str) -> RuleEvent {
        RuleEvent {
            trigger: "contact.created".into(),
            key: key.into(),
            location_id: "loc".into(),
            entity: Some(EntityKind::Contact),
            entity_id: Some("c1".into()),
            contact_id: Some("c1".into()),
            new: Some(json!({"id": "c1"})),
            at_ms: 5,
            ..RuleEvent::default()
        }
    }

    fn planned(rule: &str, key: &str, action: Action) -> PlannedAction {
        PlannedAction {
            rule: rule.into(),
            index: 0,
            key: key.into(),
            event_key: "e".into(),
            trigger: "task.completed".into(),
            location_id: "loc".into(),
            contact_id: Some("c1".into()),
            depth: 1,
            action,
            entity: Some(EntityKind::Task),
            entity_id: Some("t1".into()),
            record: Some(json!({"id": "t1", "title": "Call"})),
        }
    }

    async fn rows(store: &Store) -> Vec<(String, String, String, String, String, Vec<u8>)> {
        on_db!(store.db(), |pool| sqlx::query_as(
            "SELECT connector, entity, entity_id, idempotency_key, operation, record FROM outbox ORDER BY id",
        )
        .fetch_all(pool)
        .await)
        .unwrap()
    }

    use crate::store::testing::stores;

    #[tokio::test]
    async fn events_are_stored_once_per_key_with_the_whole_event() {
        for (_guard, store) in stores().await {
            events_stored_once_per_key(&store).await;
        }
    }

    async fn events_stored_once_per_key(store: &Store) {
        let store = store.clone();
        let long = "x".repeat(500);
        let events = [event("v1:contact.created"), event(&long)];
        assert_eq!(enqueue_events(&store, &events).await.unwrap(), 2);
        // Again (a replayed commit), and after delivery: nothing new.
        assert_eq!(enqueue_events(&store, &events).await.unwrap(), 0);
        let mut tx = store.begin_write("test").await.unwrap();
        on_db!(tx.conn(), |c| sqlx::query("UPDATE outbox SET status = 'done'")
            .execute(c)
            .await
            .map(|done| done.rows_affected()))
        .unwrap();
        assert_eq!(enqueue_events_on(tx.conn(), &events[..1]).await.unwrap(), 0);
        tx.commit().await.unwrap();
        let rows = rows(&store).await;
        assert_eq!(rows.len(), 2);
        let (connector, entity, id, key, operation, record) = &rows[1];
        assert_eq!((connector.as_str(), entity.as_str(), operation.as_str()), ("rules", "event", "created"));
        assert_eq!(id.len(), 64);
        assert_eq!((id, key), (&event_id(&long), &event_id(&long)));
        let back: RuleEvent = serde_json::from_value(codec::unpack(record).unwrap()).unwrap();
        assert_eq!(back, events[1]);
        assert_ne!(rows[0].2, rows[1].2);
    }

    #[tokio::test]
    async fn a_dead_lettered_event_is_not_enqueued_again() {
        for (_guard, store) in stores().await {
            dead_lettered_event_not_enqueued_again(&store).await;
        }
    }

    async fn dead_lettered_event_not_enqueued_again(store: &Store) {
        let store = store.clone();
        enqueue_events(&store, &[event("k")]).await.unwrap();
        let row = outbox::due(&store, "rules", i64::MAX, 10, None).await.unwrap().remove(0).unwrap();
        let dead = outbox::DeliveryOutcome { row: row.version(), verdict: outbox::Verdict::Dead("no".into()) };
        outbox::record_outcomes(&store, "test", &[dead], crate::store::now_ms()).await.unwrap();
        assert_eq!(enqueue_events(&store, &[event("k")]).await.unwrap(), 0);
        assert!(rows(&store).await.is_empty());
    }

    #[tokio::test]
    async fn actions_go_to_their_rules_connector_once_per_key() {
        for (_guard, store) in stores().await {
            actions_go_to_their_rules_connector(&store).await;
        }
    }

    async fn actions_go_to_their_rules_connector(store: &Store) {
        let store = store.clone();
        let tag = Action::AddTags { contact_id: "c1".into(), tags: vec!["vip".into()] };
        let a = planned("vip", "k1", tag.clone());
        let b = planned("vip", "k2", tag);
        let c = planned("other", "k3", Action::Deliver { connector: "webhook.crm".into() });
        assert_eq!(enqueue_actions(&store, &[a.clone(), b, c]).await.unwrap(), 3);
        assert_eq!(enqueue_actions(&store, std::slice::from_ref(&a)).await.unwrap(), 0);
        let rows = rows(&store).await;
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.as_str()), ("rule.vip", "action", "k1"));
        assert_eq!(rows[0].3, "k1");
        assert_eq!(rows[2].0, "rule.other");
        let back: PlannedAction = serde_json::from_value(codec::unpack(&rows[0].5).unwrap()).unwrap();
        assert_eq!(back, a);
    }

    #[tokio::test]
    async fn a_delivery_carries_the_event_record_under_the_action_key_once() {
        for (_guard, store) in stores().await {
            delivery_carries_the_event_record(&store).await;
        }
    }

    async fn delivery_carries_the_event_record(store: &Store) {
        let store = store.clone();
        let deliver = planned("done", "k1", Action::Deliver { connector: "webhook.crm".into() });
        assert_eq!(enqueue_delivery(&store, "webhook.crm", &deliver).await.unwrap(), Handed::Queued);
        assert_eq!(enqueue_delivery(&store, "webhook.crm", &deliver).await.unwrap(), Handed::Already);
        let rows = rows(&store).await;
        assert_eq!(rows.len(), 1);
        let (connector, entity, id, key, operation, record) = &rows[0];
        assert_eq!(
            (connector.as_str(), entity.as_str(), id.as_str(), key.as_str(), operation.as_str()),
            ("webhook.crm", "task", "t1", "k1", "completed")
        );
        assert_eq!(codec::unpack(record).unwrap(), json!({"id": "t1", "title": "Call"}));
        let mut bare = deliver.clone();
        bare.record = None;
        assert_eq!(enqueue_delivery(&store, "webhook.crm", &bare).await.unwrap(), Handed::NoRecord);
    }

    #[tokio::test]
    async fn a_lusha_enrich_without_a_snapshot_hands_nothing() {
        for (_guard, store) in stores().await {
            lusha_enrich_without_snapshot(&store).await;
        }
    }

    async fn lusha_enrich_without_snapshot(store: &Store) {
        let store = store.clone();
        let enrich = planned("enrich", "k1", Action::LushaEnrich { contact_id: "c1".into() });
        assert_eq!(enqueue_delivery(&store, "lusha", &enrich).await.unwrap(), Handed::NoRecord);
        assert!(rows(&store).await.is_empty());
    }

    #[test]
    fn operations_follow_the_trigger_name() {
        for (trigger, operation) in [
            ("contact.created", Operation::Created),
            ("task.completed", Operation::Completed),
            ("note.deleted", Operation::Deleted),
            ("tag.added", Operation::Updated),
            ("", Operation::Updated),
        ] {
            assert_eq!(operation_of(trigger), operation, "{trigger}");
        }
    }
}
