//! The one way connectors outside the sync (Lusha, Lucky Orange) raise trigger events: an
//! [`Emitter`] stores the event as an outbox row of the `rules` connector, and only when some
//! rule listens to its trigger (with no rule, nothing is written and no row waits for a
//! connector that does not exist).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::RuleEvent;
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
        Self { store: Some(store), triggers: Arc::new(rules.triggers().iter().map(|t| t.to_string()).collect()) }
    }

    /// An emitter that emits nothing (no rules, tests).
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether some rule listens to `trigger` (build the event only then).
    pub fn wants(&self, trigger: &str) -> bool {
        self.store.is_some() && self.triggers.contains(trigger)
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
