//! Lusha's tables (`lusha_signals`, and later `lusha_cache`, `lusha_credits`, `lusha_leads`).
//!
//! Contract: public functions take `&Store` and plain data and run their whole transaction
//! themselves. So far this file holds the signal inbox; the rest of Lusha's SQL moves here
//! from `connectors::lusha` later.

use super::{Store, StoreError, codec, now_ms};

/// A Lusha signal as received (the payload's fields, already signature-checked).
#[derive(Debug, Clone, PartialEq)]
pub struct NewSignal {
    /// The payload `id`: the dedupe key.
    pub id: String,
    pub signal_type: String,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub subscription_id: Option<String>,
    /// The payload `data` (may hold personal data; stored compressed).
    pub data: serde_json::Value,
    pub credits_charged: Option<f64>,
    /// The payload `timestamp`, as sent.
    pub sent_at: Option<String>,
}

/// Whether a signal was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Stored,
    /// The id was seen before (`webhook_inbox`, source `lusha`): nothing written.
    Duplicate,
}

/// Dedupes a signal on its id through `webhook_inbox` and stores it in `lusha_signals`, in
/// one transaction. The inbox insert comes first so the transaction takes the write lock at
/// once.
pub async fn record_signal(store: &Store, signal: &NewSignal) -> Result<Recorded, StoreError> {
    let now = now_ms();
    let mut tx = store.begin_write("lusha_webhook").await?;
    let inserted = sqlx::query(
        "INSERT INTO webhook_inbox (source, event_id, event_type, received_at) VALUES ('lusha', ?, ?, ?) \
         ON CONFLICT (source, event_id) DO NOTHING",
    )
    .bind(&signal.id)
    .bind(&signal.signal_type)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(Recorded::Duplicate);
    }
    sqlx::query(
        "INSERT INTO lusha_signals (id, signal_type, entity_type, entity_id, subscription_id, data, \
         credits_charged, sent_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&signal.id)
    .bind(&signal.signal_type)
    .bind(&signal.entity_type)
    .bind(&signal.entity_id)
    .bind(&signal.subscription_id)
    .bind(codec::pack(&signal.data))
    .bind(signal.credits_charged)
    .bind(&signal.sent_at)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Recorded::Stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&dir.path().join("t.db"), std::time::Duration::from_secs(5)).await.unwrap();
        let signal = NewSignal {
            id: "s1".into(),
            signal_type: "promotion".into(),
            entity_type: Some("contact".into()),
            entity_id: Some("42".into()),
            subscription_id: None,
            data: serde_json::json!({"title": "CTO"}),
            credits_charged: Some(1.0),
            sent_at: Some("2025-01-01T00:00:00Z".into()),
        };
        assert_eq!(record_signal(&store, &signal).await.unwrap(), Recorded::Stored);
        assert_eq!(record_signal(&store, &signal).await.unwrap(), Recorded::Duplicate);
        let stored: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM lusha_signals").fetch_one(store.read_pool()).await.unwrap();
        assert_eq!(stored, 1);
    }
}
