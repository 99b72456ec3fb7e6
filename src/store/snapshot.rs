//! The snapshot: `contacts` and `children`, the last seen state of every synced record.

// --- Reads for exports and `check` -------------------------------------------------------
// (Kept at the end of the file: the sync engine's snapshot writes live above.)

/// One step of [`scan_location_contacts`].
#[derive(Debug)]
pub enum ScanItem<'a> {
    /// The number of contacts of the location (first, once).
    Total(u64),
    /// A pass over the contacts begins (0-based).
    Pass(u32),
    /// One contact of pass `pass`, in contact id order.
    Contact { pass: u32, contact_id: &'a str, record: &'a serde_json::Value },
}

/// Streams one location's contacts `passes` times to `visit`, in contact id order, inside one
/// read transaction on the read pool: every pass sees the same snapshot while the daemon
/// keeps writing, and the writer is never taken. Memory stays flat (rows are streamed).
/// Stops at the first error `visit` returns. A record that does not decode is
/// [`StoreError::Corrupt`](super::StoreError::Corrupt) naming the contact.
pub async fn scan_location_contacts<E, F>(
    store: &super::Store,
    location: &str,
    passes: u32,
    mut visit: F,
) -> Result<(), E>
where
    E: From<super::StoreError>,
    F: FnMut(ScanItem<'_>) -> Result<(), E>,
{
    use super::StoreError;
    use futures_util::TryStreamExt as _;
    const ROWS: &str = "SELECT contact_id, record FROM contacts WHERE location_id = ? ORDER BY contact_id";
    let mut tx = store.read_pool().begin().await.map_err(StoreError::from)?;
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM contacts WHERE location_id = ?")
        .bind(location)
        .fetch_one(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    visit(ScanItem::Total(u64::try_from(total).unwrap_or(0)))?;
    for pass in 0..passes {
        visit(ScanItem::Pass(pass))?;
        let mut rows = sqlx::query_as::<_, (String, Vec<u8>)>(ROWS).bind(location).fetch(&mut *tx);
        while let Some((contact_id, record)) = rows.try_next().await.map_err(StoreError::from)? {
            let record = super::codec::unpack(&record).map_err(|e| naming_contact(e, &contact_id))?;
            visit(ScanItem::Contact { pass, contact_id: &contact_id, record: &record })?;
        }
    }
    tx.rollback().await.map_err(StoreError::from)?;
    Ok(())
}

/// A decoding error that names the contact whose record it is.
fn naming_contact(error: super::StoreError, contact_id: &str) -> super::StoreError {
    match error {
        super::StoreError::Corrupt(why) => super::StoreError::Corrupt(format!("contact {contact_id}: {why}")),
        other => other,
    }
}

/// A contact of the snapshot, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredContact {
    pub location_id: String,
    pub contact_id: String,
    pub record: serde_json::Value,
    /// GHL's `dateUpdated`, else when the snapshot last changed (epoch ms).
    pub changed_at: i64,
}

/// The `limit` most recently updated contacts of the snapshot, newest first.
pub async fn recent_contacts(store: &super::Store, limit: u32) -> Result<Vec<StoredContact>, super::StoreError> {
    let rows: Vec<(String, String, Vec<u8>, i64)> = sqlx::query_as(
        "SELECT location_id, contact_id, record, COALESCE(date_updated_ms, updated_at) \
         FROM contacts ORDER BY updated_at DESC LIMIT ?",
    )
    .bind(limit)
    .fetch_all(store.read_pool())
    .await?;
    rows.into_iter()
        .map(|(location_id, contact_id, record, changed_at)| {
            let record = super::codec::unpack(&record).map_err(|e| naming_contact(e, &contact_id))?;
            Ok(StoredContact { location_id, contact_id, record, changed_at })
        })
        .collect()
}
