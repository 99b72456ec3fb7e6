//! The custom-field condition's input: which GHL custom fields the config depends on
//! (`connectors::custom_field_uses`) are missing in which location, read cheaply.
//!
//! Contract:
//! - At most one `GET /locations/:id/customFields` per location per [`FIELD_CHECK_EVERY`],
//!   failed or not, at [`FIELD_CHECK_PRIORITY`] (it yields first when the daily budget runs
//!   short), through the one `GhlClient`.
//! - A read that fails keeps what the last good read found (nothing opens or clears on an
//!   error); a location never read successfully has nothing missing.
//! - Only fields the config uses are compared: fields added or removed that no mapping or
//!   connector uses never matter.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::connectors::CustomFieldUse;
use crate::ghl::GhlClient;
use crate::http::Priority;

/// How often one location's custom fields are read, at most.
pub const FIELD_CHECK_EVERY: Duration = Duration::from_secs(3600);

/// The read's priority: a background check, among the first to yield to the budget.
pub const FIELD_CHECK_PRIORITY: Priority = Priority::Reconcile;

/// A used custom field that does not exist in a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingField {
    pub location: String,
    /// As the config writes it (a key such as `contact.lusha_id`, or an id).
    pub field: String,
    /// The connectors that use it.
    pub connectors: Vec<String>,
}

#[derive(Debug)]
struct Seen {
    read_at: Instant,
    /// From the last successful read; `None` before one.
    missing: Option<Vec<MissingField>>,
}

/// Reads the custom fields of locations when due and remembers what is missing.
pub(crate) struct FieldWatch {
    ghl: GhlClient,
    uses: Vec<CustomFieldUse>,
    every: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

impl FieldWatch {
    /// `None` when the config uses no custom field (nothing to read).
    pub(crate) fn new(ghl: GhlClient, uses: Vec<CustomFieldUse>) -> Option<Self> {
        (!uses.is_empty()).then(|| Self { ghl, uses, every: FIELD_CHECK_EVERY, seen: Mutex::new(HashMap::new()) })
    }

    pub(crate) fn set_every(&mut self, every: Duration) {
        self.every = every;
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The used fields missing in `locations` now: reads the locations that are due first.
    pub(crate) async fn missing(&self, locations: &[String]) -> Vec<MissingField> {
        for location in locations {
            if !self.uses.iter().any(|u| u.applies_to(location)) {
                continue;
            }
            let due = self.seen().get(location).is_none_or(|s| s.read_at.elapsed() >= self.every);
            if !due {
                continue;
            }
            let read = self.ghl.custom_fields(location, Some("contact"), FIELD_CHECK_PRIORITY).await;
            let mut seen = self.seen();
            let previous = seen.remove(location).and_then(|s| s.missing);
            let missing = match read {
                Ok(fields) => Some(missing_in(location, &self.uses, &fields)),
                Err(error) => {
                    tracing::warn!(location.id = %location, error = %error,
                        "Custom fields of location {location} could not be read; trying again in {} min", self.every.as_secs() / 60);
                    previous
                }
            };
            seen.insert(location.clone(), Seen { read_at: Instant::now(), missing });
        }
        let seen = self.seen();
        locations.iter().filter_map(|l| seen.get(l).and_then(|s| s.missing.clone())).flatten().collect()
    }
}

/// The `uses` of `location` that none of its `fields` is. Pure.
pub fn missing_in(
    location: &str,
    uses: &[CustomFieldUse],
    fields: &[crate::ghl::write::CustomField],
) -> Vec<MissingField> {
    let mut missing: Vec<MissingField> = Vec::new();
    for used in uses.iter().filter(|u| u.applies_to(location)) {
        if fields.iter().any(|f| used.matches(&f.id, f.field_key.as_deref())) {
            continue;
        }
        match missing.iter_mut().find(|m| m.field == used.field) {
            Some(known) => known.connectors.push(used.connector.clone()),
            None => missing.push(MissingField {
                location: location.to_owned(),
                field: used.field.clone(),
                connectors: vec![used.connector.clone()],
            }),
        }
    }
    missing
}
