//! The one way connectors outside the sync (Lusha, Lucky Orange) raise trigger events: an
//! [`Emitter`] stores the event as an outbox row of the `rules` connector, and only when some
//! rule listens to its trigger (with no rule, nothing is written and no row waits for a
//! connector that does not exist).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::RuleEvent;
use crate::domain::EntityKind;
use crate::store::{Store, StoreError};

/// Raises trigger events for the rules that listen to them.
#[derive(Clone, Default)]
pub struct Emitter {
    store: Option<Store>,
    triggers: Arc<BTreeSet<String>>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter").field("triggers", &self.triggers).finish_non_exhaustive()
    }
}

impl Emitter {
    /// Emits the triggers some rule of `rules` uses into `store`.
    pub fn new(store: Store, rules: &super::RuleSet) -> Self {
        Self { store: Some(store), triggers: Arc::new(rules.triggers()) }
    }

    /// An emitter that emits nothing (no rules, tests).
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether some rule listens to `trigger` (build the event only then).
    pub fn wants(&self, trigger: &str) -> bool {
        self.store.is_some() && self.triggers.contains(trigger)
    }

    /// Stores a trigger event about one contact (Lusha's and Lucky Orange's triggers) when some
    /// rule listens to `trigger`; `key` makes a repeat add nothing. The event is built only then.
    pub async fn emit_about_contact(
        &self,
        trigger: &str,
        key: impl FnOnce() -> String,
        location: &str,
        contact_id: &str,
        data: Map<String, Value>,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        if !self.wants(trigger) {
            return Ok(());
        }
        let event = RuleEvent {
            trigger: trigger.to_owned(),
            key: key(),
            location_id: location.to_owned(),
            entity: Some(EntityKind::Contact),
            entity_id: Some(contact_id.to_owned()),
            contact_id: Some(contact_id.to_owned()),
            data,
            at_ms,
            ..RuleEvent::default()
        };
        self.emit(event).await.map(|_| ())
    }

    /// Stores `event` when some rule listens to its trigger (idempotent by `event.key`).
    /// Returns whether it was stored.
    pub async fn emit(&self, event: RuleEvent) -> Result<bool, StoreError> {
        match &self.store {
            Some(store) if self.triggers.contains(&event.trigger) => {
                crate::store::rules::enqueue_events(store, std::slice::from_ref(&event)).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
