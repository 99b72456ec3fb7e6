//! The connector seam: one trait, one folder per connector (same file names in each), and
//! `build`, a `match` over the closed set of connector kinds.
//!
//! A connector turns outbox rows ([`Delivery`]) into per-item [`Outcome`]s. The dispatcher
//! (`crate::dispatch`) owns batching, retries, dead letters and the circuit breaker; a connector
//! only says what happened to each item.

pub mod lucky_orange;
pub mod lusha;
pub mod mapping;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::{EntityKind, Operation};

/// One outbox row, unpacked, as handed to [`Connector::deliver`].
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// `outbox.id`.
    pub id: i64,
    pub location_id: String,
    pub entity: EntityKind,
    pub entity_id: String,
    pub contact_id: Option<String>,
    pub operation: Operation,
    /// When the change happened (ms since the epoch).
    pub changed_at_ms: i64,
    pub idempotency_key: String,
    /// The record as of the change (contact: normalised contact JSON; task/note: the child JSON).
    pub record: Value,
    /// Task/note/appointment events: the parent contact's current snapshot from the `contacts` table, when known.
    /// Contact events: `None` (the record is the contact).
    pub contact: Option<Value>,
    /// 1 on the first attempt.
    pub attempt: u32,
}

impl Delivery {
    /// `contact.created`, `task.completed`, …
    pub fn event_type(&self) -> String {
        crate::domain::event_type(self.entity, self.operation)
    }

    /// The contact this change is about: the record for contact events, else the parent snapshot.
    pub fn contact_record(&self) -> Option<&Value> {
        match self.entity {
            EntityKind::Contact => Some(&self.record),
            EntityKind::Task | EntityKind::Note | EntityKind::Appointment | EntityKind::Event | EntityKind::Action => {
                self.contact.as_ref()
            }
        }
    }

    /// The change's metadata, readable in mappings as `@event`, `@changed_at`, …
    pub fn meta(&self) -> serde_json::Map<String, Value> {
        let mut meta = serde_json::Map::new();
        meta.insert("event".into(), Value::String(self.event_type()));
        meta.insert("location_id".into(), Value::String(self.location_id.clone()));
        meta.insert("entity".into(), Value::String(self.entity.as_str().into()));
        meta.insert("entity_id".into(), Value::String(self.entity_id.clone()));
        meta.insert("contact_id".into(), self.contact_id.clone().map_or(Value::Null, Value::String));
        meta.insert("changed_at".into(), Value::String(rfc3339_ms(self.changed_at_ms)));
        meta
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// What happened to one item of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (or already delivered: the target acknowledged it).
    Done,
    /// Try again later; the target may have said when. Counts as an attempt. The reason
    /// (no personal data: a kind of failure, a status, a scrubbed excerpt) is stored with the
    /// row and becomes the dead letter's reason when the attempts run out.
    Retry(Option<Duration>, Option<String>),
    /// Not attempted: the connector holds the item back (its own rate limit, credit budget
    /// or a stop) for this long. Does not count as an attempt, so waiting out a daily limit
    /// never ends in dead letters; the wait is not capped by `dispatch.backoff_max`.
    Park(Duration),
    /// Will never succeed as is: goes to dead letters with this reason (no personal data).
    Permanent(String),
    /// Deliberately not delivered (a filter): marked done with this reason.
    Skip(String),
}

impl Outcome {
    /// An item a stopping daemon did not start: held back without an attempt, due again at
    /// once (it goes out on the next start). Connectors answer it for every item of a batch
    /// they have not begun when their `cancel` token (the daemon's stop) is cancelled.
    pub fn not_started() -> Self {
        Outcome::Park(Duration::ZERO)
    }

    /// Whether this is [`Outcome::not_started`].
    pub fn is_not_started(&self) -> bool {
        *self == Outcome::Park(Duration::ZERO)
    }
}

/// Per-connector delivery settings the dispatcher reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverySettings {
    pub batch_size: usize,
    /// Batches in flight at once.
    pub concurrency: usize,
    /// Attempts before a change goes to dead letters.
    pub max_attempts: u32,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self { batch_size: 50, concurrency: 1, max_attempts: 12 }
    }
}

/// The result of a successful [`Connector::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// One line for the operator (`POST https://host/… answered 200 in 35 ms`); no secrets.
    pub detail: String,
}

/// A connector-level failure (not per item).
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("{0}")]
    Mapping(#[from] mapping::MappingError),
    #[error("{connector}: {detail}")]
    Other { connector: String, detail: String },
}

impl ConnectorError {
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectorError::Http(error) => error.is_retryable(),
            ConnectorError::Mapping(_) | ConnectorError::Other { .. } => false,
        }
    }
}

/// The one seam between the dispatcher and a target.
#[async_trait::async_trait]
pub trait Connector: Send + Sync {
    /// The outbox `connector` value: `webhook.<name>`, `lusha`, `lucky_orange`.
    fn id(&self) -> &str;

    /// Pure config filter the sync engine calls before writing an outbox row for this connector.
    /// Record-level filters (tags) are applied at delivery and answer [`Outcome::Skip`].
    fn interested(&self, event_type: &str, location: &str) -> bool;

    /// Batch size, concurrency and attempts for the dispatcher.
    fn settings(&self) -> DeliverySettings {
        DeliverySettings::default()
    }

    /// Whether delivering calls GHL for the delivery's location (write-backs, and the reads
    /// they need), spending that location's rate limit and daily budget. With replicas, the
    /// dispatcher hands such a connector only rows of the locations its replica leases, so each
    /// location's budget is spent by one process. Default: no (webhooks).
    fn calls_ghl(&self) -> bool {
        false
    }

    /// Tests the connection (used by `ghl-sync check`).
    async fn check(&self) -> Result<CheckReport, ConnectorError>;

    /// What `deliver` would send for this item (for `ghl-sync check`); no I/O.
    fn preview(&self, delivery: &Delivery) -> Result<Value, ConnectorError>;

    /// Delivers a batch; returns exactly one outcome per item, in the same order.
    async fn deliver(&self, batch: &[Delivery]) -> Vec<Outcome>;

    /// Work the connector does on its own schedule besides deliveries (Lusha: the lead import
    /// poller and the signal consumer). Runs until `stop`; the daemon restarts it with the
    /// connector on a config reload. Default: nothing.
    async fn run_background(self: Arc<Self>, stop: CancellationToken) {
        stop.cancelled().await;
    }
}

/// What connectors that write back to GHL (Lusha) need besides their config.
#[derive(Clone)]
pub struct Deps {
    pub store: crate::store::Store,
    pub ghl: crate::ghl::GhlClient,
    /// The sync engine's `ignored_custom_fields` (the write-back records hashes the same way).
    pub ignored_custom_fields: Arc<Vec<String>>,
}

/// Builds every enabled connector from the config. `cancel` is cancelled when the daemon
/// starts to stop: it aborts retry sleeps and rate-limit waits, and connectors start no new
/// item of a batch after it (they answer [`Outcome::not_started`]); requests already sent finish.
/// Connectors that write back to GHL are left out (see [`build_with`]).
pub fn build(config: &Config, cancel: &CancellationToken) -> anyhow::Result<Vec<Arc<dyn Connector>>> {
    build_with(config, cancel, None)
}

/// Like [`build`], with what write-back connectors need; without `deps` a configured Lusha
/// connector is left out (with a warning).
pub fn build_with(
    config: &Config,
    cancel: &CancellationToken,
    deps: Option<&Deps>,
) -> anyhow::Result<Vec<Arc<dyn Connector>>> {
    let mut connectors: Vec<Arc<dyn Connector>> = Vec::new();
    if let Some(settings) = config.settings.connectors.lusha.as_ref().filter(|s| s.enabled) {
        match (deps, config.secrets.lusha_api_key.clone()) {
            (Some(deps), Some(key)) => {
                let writeback = crate::writeback::WriteBack::new(
                    deps.store.clone(),
                    deps.ghl.clone(),
                    deps.ignored_custom_fields.clone(),
                );
                let rules = crate::rules::emit::Emitter::new(deps.store.clone(), &config.rules);
                connectors.push(Arc::new(
                    lusha::LushaConnector::new(settings, key, writeback, cancel.clone())?.with_rules(rules),
                ));
            }
            (None, _) => tracing::warn!("The Lusha connector needs the store and the GHL client; not built here"),
            (_, None) => anyhow::bail!("connectors.lusha: the API key is missing"),
        }
    }
    if let Some(settings) = config.settings.connectors.lucky_orange.as_ref().filter(|s| s.enabled) {
        match (deps, lucky_orange::token_keys(config)) {
            (Some(deps), Some(keys)) => {
                let writeback = crate::writeback::WriteBack::new(
                    deps.store.clone(),
                    deps.ghl.clone(),
                    deps.ignored_custom_fields.clone(),
                );
                let rules = crate::rules::emit::Emitter::new(deps.store.clone(), &config.rules);
                connectors.push(Arc::new(
                    lucky_orange::LuckyOrangeConnector::new(settings, keys, writeback).with_rules(rules),
                ));
            }
            (None, _) => {
                tracing::warn!("The Lucky Orange connector needs the store and the GHL client; not built here")
            }
            (_, None) => anyhow::bail!("connectors.lucky_orange: the signing key is missing"),
        }
    }
    for (name, settings) in &config.settings.connectors.webhook {
        if !settings.enabled {
            continue;
        }
        let secret = config.secrets.webhook_secrets.get(name).cloned();
        let connector = webhook::WebhookConnector::new(name, settings, secret, &config.settings, cancel.clone())?;
        connectors.push(Arc::new(connector));
    }
    if !config.rules.is_empty() {
        match deps {
            Some(deps) => {
                let rules = config.rules.clone();
                connectors.push(Arc::new(crate::rules::connector::RulesConnector::new(
                    rules.clone(),
                    deps.store.clone(),
                    deps.ghl.clone(),
                    cancel.clone(),
                )));
                let allow_delete = config.settings.rule_settings.allow_contact_delete;
                for rule in rules.rules() {
                    let writeback = crate::writeback::WriteBack::new(
                        deps.store.clone(),
                        deps.ghl.clone(),
                        deps.ignored_custom_fields.clone(),
                    );
                    connectors.push(Arc::new(crate::rules::executor::RuleActions::new(
                        &rule.name,
                        writeback,
                        deps.store.clone(),
                        allow_delete,
                        cancel.clone(),
                    )));
                }
            }
            None => tracing::warn!("The rules need the store and the GHL client; not built here"),
        }
    }
    Ok(connectors)
}

/// The custom field keys connectors write to GHL as bookkeeping (Lusha's ids and dates, the
/// Lucky Orange token and visit fields), from the config: the one list of what the contact
/// hash leaves out, so the daemon's own bookkeeping writes never fire other connectors.
pub fn bookkeeping_field_keys(settings: &crate::config::Settings) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(lusha) = settings.connectors.lusha.as_ref().filter(|l| l.enabled) {
        keys.extend(lusha.bookkeeping_field_keys());
    }
    if let Some(lucky_orange) = settings.connectors.lucky_orange.as_ref().filter(|l| l.enabled) {
        keys.extend(lucky_orange.bookkeeping_field_keys());
    }
    keys.sort();
    keys.dedup();
    keys
}

/// A GHL custom field the config depends on: a connector's mapping reads it, or the
/// connector writes it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomFieldUse {
    /// The connector id (`webhook.crm`, `lusha`, `lucky_orange`).
    pub connector: String,
    /// As the config writes it: a field key (`contact.lusha_id`, or `lusha_id` in a mapping)
    /// or, in a mapping, a field id.
    pub field: String,
    /// The locations it matters in (the connector's `locations`); empty: every location.
    pub locations: Vec<String>,
}

impl CustomFieldUse {
    /// Whether a field definition (`id`, `fieldKey`) is this one: the id, or the key with or
    /// without the `contact.` prefix (as mappings match values).
    pub fn matches(&self, id: &str, field_key: Option<&str>) -> bool {
        let bare = |k: &str| k.strip_prefix("contact.").unwrap_or(k).to_owned();
        id == self.field || field_key.is_some_and(|key| key == self.field || bare(key) == bare(&self.field))
    }

    pub fn applies_to(&self, location: &str) -> bool {
        self.locations.is_empty() || self.locations.iter().any(|l| l == location)
    }
}

/// Every custom field enabled connectors depend on: webhook mappings and templates
/// (`customFields.<id or key>`, `contact.customFields.…`), Lusha's targets and bookkeeping
/// fields and its LinkedIn field, the Lucky Orange bridge's token, session and visit fields.
/// Sorted and deduplicated.
pub fn custom_field_uses(settings: &crate::config::Settings) -> Vec<CustomFieldUse> {
    let mut uses = Vec::new();
    let mut add = |connector: &str, field: &str, locations: &[String]| {
        let field = field.trim();
        if !field.is_empty() {
            uses.push(CustomFieldUse {
                connector: connector.to_owned(),
                field: field.to_owned(),
                locations: locations.to_vec(),
            });
        }
    };
    for (name, webhook) in settings.connectors.webhook.iter().filter(|(_, w)| w.enabled) {
        let connector = format!("webhook.{name}");
        let mut paths: Vec<String> = Vec::new();
        for field in &webhook.fields {
            paths.extend(field.from.clone());
            paths.extend(field.template.iter().flat_map(|t| template_fields(t)));
        }
        paths.extend(webhook.message.iter().flat_map(|t| template_fields(t)));
        for path in paths {
            let path = path.strip_prefix("contact.").unwrap_or(&path);
            if let Some(field) = path.strip_prefix("customFields.") {
                add(&connector, field, &webhook.locations);
            }
        }
    }
    if let Some(lusha) = settings.connectors.lusha.as_ref().filter(|l| l.enabled) {
        let targets = lusha.fields.mapped().into_iter().map(|(_, target)| target.to_owned());
        let keys = lusha.bookkeeping_field_keys().into_iter().chain(targets).chain(lusha.linkedin_field.clone());
        // Targets without the prefix are standard contact fields (`email`, `city`).
        for key in keys.filter(|k| k.starts_with("contact.")) {
            add(lusha::ID, &key, &lusha.locations);
        }
    }
    if let Some(lucky_orange) = settings.connectors.lucky_orange.as_ref().filter(|l| l.enabled) {
        let keys = lucky_orange.bookkeeping_field_keys().into_iter().chain([lucky_orange.session_field_key.clone()]);
        for key in keys {
            add(lucky_orange::CONNECTOR_ID, &key, &[]);
        }
    }
    uses.sort_by(|a, b| (&a.field, &a.connector).cmp(&(&b.field, &b.connector)));
    uses.dedup();
    uses
}

fn template_fields(template: &str) -> Vec<String> {
    mapping::parse_template(template)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|piece| match piece {
            mapping::Piece::Field(path) => Some(path),
            mapping::Piece::Text(_) => None,
        })
        .collect()
}

/// The ids of [`bookkeeping_field_keys`] in every active location (custom fields are keyed by
/// id in records): the sync engine's `ignored_custom_fields`. Locations whose fields cannot be
/// read are skipped (logged): their bookkeeping fields then count as changes.
pub async fn bookkeeping_field_ids(
    settings: &crate::config::Settings,
    ghl: &crate::ghl::GhlClient,
    store: &crate::store::Store,
) -> Vec<String> {
    let keys = bookkeeping_field_keys(settings);
    if keys.is_empty() {
        return Vec::new();
    }
    let locations = crate::store::locations::active(store).await.unwrap_or_default();
    let mut ids = Vec::new();
    for location in locations {
        match ghl.custom_fields(&location, Some("contact"), crate::http::Priority::Poll).await {
            Ok(fields) => ids.extend(
                fields
                    .into_iter()
                    .filter(|f| f.field_key.as_deref().is_some_and(|k| keys.iter().any(|w| w == k)))
                    .map(|f| f.id),
            ),
            Err(error) => {
                tracing::warn!(location.id = %location, error = %error, "Custom fields could not be read; bookkeeping fields of this location count as changes");
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// Whether any connector wants this event (the sync engine's shortcut before diffing children).
pub fn any_interested(connectors: &[Arc<dyn Connector>], event_type: &str, location: &str) -> bool {
    connectors.iter().any(|c| c.interested(event_type, location))
}
