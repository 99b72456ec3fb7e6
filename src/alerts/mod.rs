//! Operator alerts: conditions read from the status read model (`store::status`) on a timer,
//! kept as incidents (`store::incidents`) and sent to the `[[alerts]]` targets (a generic
//! JSON webhook, Slack or Teams) through the one `ApiClient`.
//!
//! Contract:
//! - **Once per incident, once when it clears.** A condition that starts opens an incident
//!   and sends one "problem" message; while it stays, nothing more is sent; when it clears,
//!   one "resolved" message. Incidents and what was sent are stored, so a restart neither
//!   repeats nor forgets a message (a message the target did not accept is retried on the
//!   next evaluation).
//! - **No personal data.** Messages carry location and connector ids, counts, thresholds and
//!   (scrubbed) delivery failure reasons; never contact data.
//! - **No writer held across a send.** Incidents are reconciled in one short write
//!   transaction, then each message is sent, then recorded in its own.
//!
//! Conditions (each per alert target, each can be turned off): a location needs
//! re-authorisation or was uninstalled; a connector's circuit is open; a connector's dead
//! letters reached a threshold; a location's GHL requests today reached a share of
//! `limits.ghl_daily_budget`; Lusha credits today reached a share of its daily cap; a
//! location's last successful pass is older than a threshold; a GHL custom field that a
//! connector's mapping or write-back uses does not exist in a location (removed, or never
//! created; it resolves when the field exists again: see [`fields`] for how cheaply that is
//! read). Not covered: custom fields no mapping uses (added or removed, they never alert).

mod config;
pub mod fields;

use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use config::{AlertFormat, AlertSettings};
pub use fields::{FIELD_CHECK_EVERY, MissingField};

use crate::config::Config;
use crate::dispatch::OpenCircuits;
use crate::ghl::GhlClient;
use crate::http::{ApiClient, ApiRequest, ClientSettings, HeaderScheme, Method, RetryPolicy};
use crate::store::Store;
use crate::store::incidents::{self, ActiveCondition, Incident, Transition};
use crate::store::status::Status;

/// How often the daemon evaluates the conditions.
pub const EVALUATE_EVERY: Duration = Duration::from_secs(30);

/// The limits the budget conditions compare against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budgets {
    pub ghl_daily_budget: u64,
    /// `connectors.lusha.daily_credit_cap` when the Lusha connector is on.
    pub lusha_daily_credit_cap: Option<i64>,
}

impl Budgets {
    pub fn from_config(config: &Config) -> Self {
        let settings = &config.settings;
        Self {
            ghl_daily_budget: settings.limits.ghl_daily_budget,
            lusha_daily_credit_cap: settings
                .connectors
                .lusha
                .as_ref()
                .filter(|l| l.enabled)
                .map(|l| l.daily_credit_cap),
        }
    }
}

/// The conditions active now for one alert target. Pure.
pub fn conditions(
    status: &Status,
    alert: &AlertSettings,
    open_circuits: &[String],
    budgets: Budgets,
    missing_fields: &[MissingField],
) -> Vec<ActiveCondition> {
    let mut active = Vec::new();
    let mut add = |key: String, summary: String| active.push(ActiveCondition { key, summary });
    for location in &status.locations {
        let id = &location.id;
        match location.status.as_str() {
            "needs_reauth" if alert.reauth => add(
                format!("reauth:{id}"),
                format!(
                    "Location {id} needs re-authorisation and is not synced: reinstall the app (`ghl-sync auth install`) \
                     or replace its private integration token"
                ),
            ),
            "uninstalled" if alert.reauth => add(
                format!("uninstalled:{id}"),
                format!("The app was uninstalled from location {id}; it is not synced until it is installed again"),
            ),
            _ => {}
        }
        let percent = u64::from(alert.ghl_budget_percent);
        let used = u64::try_from(location.requests_today).unwrap_or(0);
        if percent > 0 && budgets.ghl_daily_budget > 0 && used * 100 >= budgets.ghl_daily_budget * percent {
            add(
                format!("ghl_budget:{id}"),
                format!(
                    "Location {id} used {used} of its {} GHL requests today ({}%; alert at {percent}%); \
                     syncing pauses when the budget is spent",
                    budgets.ghl_daily_budget,
                    used * 100 / budgets.ghl_daily_budget
                ),
            );
        }
        let lag = alert.sync_lag.get();
        let syncing = matches!(location.status.as_str(), "active" | "configured");
        if !lag.is_zero()
            && syncing
            && let Some(last_ok) = location.last_ok_at
        {
            let behind = Duration::from_millis(u64::try_from(status.generated_at - last_ok).unwrap_or(0));
            if behind > lag {
                add(
                    format!("sync_lag:{id}"),
                    format!(
                        "Location {id} last synced {} min ago (alert after {} min); see `ghl-sync status`",
                        behind.as_secs() / 60,
                        lag.as_secs() / 60
                    ),
                );
            }
        }
    }
    if alert.circuit_open {
        for connector in open_circuits {
            let last = status
                .connectors
                .iter()
                .find(|c| &c.connector == connector)
                .and_then(|c| c.last_error.as_ref())
                .map(|e| format!("; last error: {}", e.message))
                .unwrap_or_default();
            add(
                format!("circuit_open:{connector}"),
                format!("Deliveries to `{connector}` are paused: its circuit opened after repeated failures{last}"),
            );
        }
    }
    if alert.dead_letters > 0 {
        for connector in &status.connectors {
            let dead = u64::try_from(connector.dead_letters).unwrap_or(0);
            if dead >= alert.dead_letters {
                add(
                    format!("dead_letters:{}", connector.connector),
                    format!(
                        "`{}` has {dead} dead letter(s) (alert at {}); see `ghl-sync dlq list`",
                        connector.connector, alert.dead_letters
                    ),
                );
            }
        }
    }
    if alert.custom_fields {
        for missing in missing_fields {
            let (location, field) = (&missing.location, &missing.field);
            add(
                format!("custom_field:{location}:{field}"),
                format!(
                    "Custom field `{field}` used by {} does not exist in location {location} (removed or never \
                     created); it is neither read nor written there until a field with that key exists again",
                    missing.connectors.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
    let percent = i64::from(alert.lusha_credits_percent);
    if let (Some(cap), Some(lusha)) = (budgets.lusha_daily_credit_cap, &status.lusha)
        && percent > 0
        && cap > 0
        && lusha.credits_today * 100 >= cap * percent
    {
        add(
            "lusha_credits".to_owned(),
            format!(
                "Lusha spent {} of its {cap} daily credits ({}%; alert at {percent}%); enrichment pauses at the cap",
                lusha.credits_today,
                lusha.credits_today * 100 / cap
            ),
        );
    }
    active
}

/// The message for one transition. Pure; no personal data goes in (only the summary).
pub fn message(format: AlertFormat, alert: &str, incident: &Incident, transition: Transition) -> Value {
    let text = match transition {
        Transition::Opened => format!("ghl-sync PROBLEM: {}", incident.summary),
        Transition::Resolved => format!("ghl-sync RESOLVED: {}", incident.summary),
    };
    match format {
        AlertFormat::Slack => json!({ "text": text }),
        AlertFormat::Teams => crate::connectors::webhook::mapping::teams(&text),
        AlertFormat::Generic => {
            let (condition, subject) = incident.condition_key.split_once(':').unwrap_or((&incident.condition_key, ""));
            json!({
                "source": "ghl-sync",
                "event": format!("incident.{}", transition.as_str()),
                "alert": alert,
                "incident_id": incident.id,
                "condition": condition,
                "subject": subject,
                "summary": incident.summary,
                "text": text,
                "opened_at": crate::connectors::rfc3339_ms(incident.opened_at),
                "resolved_at": incident.resolved_at.map(crate::connectors::rfc3339_ms),
            })
        }
    }
}

/// What one evaluation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertReport {
    pub opened: u64,
    pub resolved: u64,
    /// Messages the targets accepted.
    pub sent: u64,
    /// Messages that failed (tried again next time).
    pub failed: u64,
}

struct Target {
    name: String,
    settings: AlertSettings,
    url: SecretString,
}

/// Evaluates the conditions and sends the messages of every `[[alerts]]` target.
pub struct Alerter {
    store: Store,
    targets: Vec<Target>,
    budgets: Budgets,
    client: ApiClient,
    /// `None` without GHL custom fields in the config or with the condition off everywhere.
    fields: Option<fields::FieldWatch>,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        f.debug_struct("Alerter").field("targets", &names).finish_non_exhaustive()
    }
}

impl Alerter {
    /// The alerter of `config`, or `None` without `[[alerts]]`. `ghl` reads the custom fields
    /// of locations (see [`fields`]).
    pub fn new(
        config: &Config,
        store: Store,
        ghl: &GhlClient,
        cancel: CancellationToken,
    ) -> anyhow::Result<Option<Self>> {
        let targets: Vec<Target> = config
            .settings
            .alerts
            .iter()
            .filter_map(|settings| {
                let name = settings.name();
                let url = config.secrets.alert_urls.get(&name)?.clone();
                Some(Target { name, settings: settings.clone(), url })
            })
            .collect();
        if targets.is_empty() {
            return Ok(None);
        }
        let client = ApiClient::new(
            ClientSettings {
                service: "alerts",
                connect_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(15),
                retry: RetryPolicy { max_retries: 1, ..RetryPolicy::default() },
                headers: HeaderScheme::None,
                user_agent: crate::app::user_agent(),
            },
            None,
            cancel,
        )?;
        let fields = if targets.iter().any(|t| t.settings.custom_fields) {
            fields::FieldWatch::new(ghl.clone(), crate::connectors::custom_field_uses(&config.settings))
        } else {
            None
        };
        Ok(Some(Self { store, targets, budgets: Budgets::from_config(config), client, fields }))
    }

    /// Reads each location's custom fields at most this often instead of
    /// [`FIELD_CHECK_EVERY`] (tests).
    pub fn with_field_check_every(mut self, every: Duration) -> Self {
        if let Some(fields) = self.fields.as_mut() {
            fields.set_every(every);
        }
        self
    }

    /// One evaluation: reads the status, opens and resolves incidents per target, sends what
    /// is unsent. Errors of one target do not stop the others.
    pub async fn evaluate(&self, open_circuits: &[String]) -> anyhow::Result<AlertReport> {
        let status = crate::store::status::read(&self.store, &[]).await.context("Failed to read the status")?;
        let missing_fields = match &self.fields {
            Some(watch) => {
                // Read only where syncing; a location waiting for re-authorisation keeps what
                // was last read (no "resolved" just because it cannot be read now).
                let ids = |keep: fn(&str) -> bool| -> Vec<String> {
                    status.locations.iter().filter(|l| keep(&l.status)).map(|l| l.id.clone()).collect()
                };
                let syncing = ids(|s| matches!(s, "active" | "configured"));
                let kept = ids(|s| !matches!(s, "disabled" | "uninstalled"));
                watch.missing(&syncing, &kept).await
            }
            None => Vec::new(),
        };
        let mut report = AlertReport::default();
        for target in &self.targets {
            let active = conditions(&status, &target.settings, open_circuits, self.budgets, &missing_fields);
            let changed = incidents::reconcile(&self.store, &target.name, &active).await?;
            report.opened += changed.opened;
            report.resolved += changed.resolved;
            for incident in incidents::unsent(&self.store, &target.name).await? {
                let transition = incident.pending();
                let body = message(target.settings.format, &target.name, &incident, transition);
                match self.send(target, &body).await {
                    Ok(()) => {
                        incidents::mark_sent(&self.store, incident.id, transition).await?;
                        report.sent += 1;
                        tracing::info!(alert = %target.name, condition = %incident.condition_key, transition = transition.as_str(),
                            "Alert `{}`: incident {} {}", target.name, incident.condition_key, transition.as_str());
                    }
                    Err(error) => {
                        let reason = error.reason();
                        incidents::mark_failed(&self.store, incident.id, &reason).await?;
                        report.failed += 1;
                        tracing::warn!(alert = %target.name, condition = %incident.condition_key, error = %reason,
                            "Alert `{}` could not be sent ({reason}); trying again in {} s", target.name, EVALUATE_EVERY.as_secs());
                    }
                }
            }
        }
        Ok(report)
    }

    async fn send(&self, target: &Target, body: &Value) -> Result<(), crate::http::HttpError> {
        let url = url::Url::parse(target.url.expose_secret()).map_err(|e| crate::http::HttpError::Invalid {
            service: "alerts",
            detail: format!("the alert URL does not parse ({e})"),
        })?;
        let request = ApiRequest::new(Method::POST, url, "/alert").json(body)?;
        self.client.send(request).await.map(|_| ())
    }

    /// Evaluates every [`EVALUATE_EVERY`] until `stop`.
    pub async fn run(self, circuits: OpenCircuits, stop: CancellationToken) {
        let mut tick = tokio::time::interval(EVALUATE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.evaluate(&circuits.list()).await {
                tracing::warn!(error = %format!("{error:#}"), "Evaluating alerts failed; trying again on the next tick");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::status::{ConnectorStatus, LocationStatus};

    fn location(id: &str, status: &str, requests: i64, last_ok_at: Option<i64>) -> LocationStatus {
        LocationStatus {
            id: id.into(),
            name: Some("Personal Name Ltd".into()),
            status: status.into(),
            reason: None,
            in_store: true,
            backfill_done: true,
            watermark_ms: None,
            cursor_age_secs: None,
            contacts: 10,
            dirty: 0,
            requests_today: requests,
            rate_limited_today: 0,
            webhooks_today: 0,
            last_run: None,
            last_run_at: None,
            last_run_outcome: None,
            last_error: None,
            last_ok_at,
            streams: Vec::new(),
        }
    }

    fn status(locations: Vec<LocationStatus>, dead: i64) -> Status {
        Status {
            generated_at: 10_000_000,
            day: "2026-12-06".into(),
            store: crate::store::status::StoreHealth { writable: true, failing: None, last_write_ok_at: None },
            locations,
            connectors: vec![ConnectorStatus {
                connector: "webhook.crm".into(),
                pending: 0,
                retrying: 0,
                oldest_pending_at: None,
                oldest_pending_age_secs: None,
                delivered: 0,
                delivered_last_hour: 0,
                dead_letters: dead,
                last_error: None,
            }],
            unattributed_dead_letters: Vec::new(),
            totals: Default::default(),
            deliveries_per_minute: Vec::new(),
            recent_errors: Vec::new(),
            lusha: None,
            incidents: Vec::new(),
            replicas: Vec::new(),
            leases: Vec::new(),
        }
    }

    fn keys(active: &[ActiveCondition]) -> Vec<&str> {
        active.iter().map(|c| c.key.as_str()).collect()
    }

    #[test]
    fn each_condition_fires_at_its_threshold_and_not_below() {
        let alert = AlertSettings { dead_letters: 3, sync_lag: crate::config::Dur::secs(600), ..Default::default() };
        let budgets = Budgets { ghl_daily_budget: 1000, lusha_daily_credit_cap: None };
        let calm = status(vec![location("a", "active", 899, Some(10_000_000 - 60_000))], 2);
        assert!(conditions(&calm, &alert, &[], budgets, &[]).is_empty());

        let bad = status(
            vec![
                location("a", "active", 900, Some(10_000_000 - 601_000)),
                location("b", "needs_reauth", 0, None),
                location("c", "uninstalled", 0, None),
            ],
            3,
        );
        let missing = [MissingField {
            location: "a".into(),
            field: "contact.lusha_id".into(),
            connectors: vec!["lusha".into(), "webhook.crm".into()],
        }];
        let active = conditions(&bad, &alert, &["webhook.crm".to_owned()], budgets, &missing);
        assert_eq!(
            keys(&active),
            [
                "ghl_budget:a",
                "sync_lag:a",
                "reauth:b",
                "uninstalled:c",
                "circuit_open:webhook.crm",
                "dead_letters:webhook.crm",
                "custom_field:a:contact.lusha_id"
            ]
        );
        assert!(
            active[6].summary.contains("`contact.lusha_id` used by `lusha`, `webhook.crm`"),
            "{}",
            active[6].summary
        );
        for condition in &active {
            assert!(!condition.summary.contains("Personal Name"), "{}", condition.summary);
        }

        let off = AlertSettings {
            reauth: false,
            circuit_open: false,
            dead_letters: 0,
            ghl_budget_percent: 0,
            sync_lag: crate::config::Dur::secs(0),
            custom_fields: false,
            ..Default::default()
        };
        assert!(conditions(&bad, &off, &["webhook.crm".to_owned()], budgets, &missing).is_empty());
    }

    #[test]
    fn messages_fit_each_format() {
        let incident = Incident {
            id: 7,
            alert: "ops".into(),
            condition_key: "dead_letters:webhook.crm".into(),
            summary: "`webhook.crm` has 12 dead letter(s)".into(),
            opened_at: 0,
            resolved_at: None,
        };
        let generic = message(AlertFormat::Generic, "ops", &incident, Transition::Opened);
        assert_eq!(generic["event"], "incident.opened");
        assert_eq!(generic["condition"], "dead_letters");
        assert_eq!(generic["subject"], "webhook.crm");
        let slack = message(AlertFormat::Slack, "ops", &incident, Transition::Resolved);
        assert_eq!(slack["text"], "ghl-sync RESOLVED: `webhook.crm` has 12 dead letter(s)");
        let teams = message(AlertFormat::Teams, "ops", &incident, Transition::Opened);
        assert_eq!(teams["type"], "message");
    }
}
