//! `[connectors.webhook.NAME]`: POSTs each change to a URL as a signed JSON envelope, or as a
//! Slack / Microsoft Teams message.

pub mod client;
pub mod config;
pub mod mapping;

use secrecy::SecretString;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, WebhookConnectorSettings, WebhookTemplate};
use crate::connectors::{CheckReport, Connector, ConnectorError, Delivery, DeliverySettings, Outcome};
use crate::http::{ApiClient, ClientSettings, HeaderScheme, RetryPolicy};

use self::config::WebhookConfig;

/// One configured webhook target.
pub struct WebhookConnector {
    id: String,
    config: WebhookConfig,
    secret: Option<SecretString>,
    client: ApiClient,
    /// Cancelled when the daemon stops: no item of a batch is started after that.
    stopping: CancellationToken,
}

impl std::fmt::Debug for WebhookConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConnector").field("id", &self.id).finish_non_exhaustive()
    }
}

impl WebhookConnector {
    pub fn new(
        name: &str,
        settings: &WebhookConnectorSettings,
        secret: Option<SecretString>,
        global: &Settings,
        cancel: CancellationToken,
    ) -> Result<Self, ConnectorError> {
        let config = WebhookConfig::from_settings(name, settings);
        let client = ApiClient::new(
            ClientSettings {
                service: "webhook",
                connect_timeout: global.limits.connect_timeout.get().min(config.timeout),
                request_timeout: config.timeout,
                // The dispatcher owns retries (backoff, dead letters, circuit breaker).
                retry: RetryPolicy { max_retries: 0, ..RetryPolicy::default() },
                headers: HeaderScheme::None,
                user_agent: format!("ghl-sync/{}", env!("CARGO_PKG_VERSION")),
            },
            None,
            cancel.clone(),
        )?;
        Ok(Self { id: format!("webhook.{name}"), config, secret, client, stopping: cancel })
    }

    fn body_bytes(&self, delivery: &Delivery) -> Result<Vec<u8>, ConnectorError> {
        let body = mapping::body(&self.config, delivery)?;
        serde_json::to_vec(&body)
            .map_err(|e| ConnectorError::Other { connector: self.id.clone(), detail: e.to_string() })
    }

    async fn deliver_one(&self, delivery: &Delivery) -> Outcome {
        if !self.config.tags_match(delivery.contact_record()) {
            return Outcome::Skip("the contact has none of the configured tags".to_owned());
        }
        let body = match self.body_bytes(delivery) {
            Ok(body) => body,
            Err(error) => return Outcome::Permanent(format!("cannot map the record: {error}")),
        };
        let request = client::request(
            &self.config.url,
            &body,
            &delivery.idempotency_key,
            self.secret.as_ref(),
            crate::store::now_ms() / 1000,
            self.config.timeout,
        );
        client::send(&self.client, request).await
    }
}

#[async_trait::async_trait]
impl Connector for WebhookConnector {
    fn id(&self) -> &str {
        &self.id
    }

    fn interested(&self, event_type: &str, location: &str) -> bool {
        self.config.interested(event_type, location)
    }

    fn settings(&self) -> DeliverySettings {
        self.config.delivery
    }

    /// Posts a signed `{"type":"ghl_sync.check"}` envelope (Slack/Teams: a short "connection
    /// check" message, since those endpoints reject other bodies). Any 2xx passes.
    async fn check(&self) -> Result<CheckReport, ConnectorError> {
        let now = crate::store::now_ms();
        let key = format!("ghl_sync.check.{now}");
        let body = match self.config.template {
            WebhookTemplate::Envelope => serde_json::json!({
                "id": key,
                "type": "ghl_sync.check",
                "changed_at": crate::connectors::rfc3339_ms(now),
                "data": {},
            }),
            WebhookTemplate::Slack => serde_json::json!({"text": "ghl-sync connection check"}),
            WebhookTemplate::Teams => mapping::teams("ghl-sync connection check"),
        };
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| ConnectorError::Other { connector: self.id.clone(), detail: e.to_string() })?;
        let request =
            client::request(&self.config.url, &bytes, &key, self.secret.as_ref(), now / 1000, self.config.timeout);
        let started = std::time::Instant::now();
        let response = self.client.send(request).await?;
        Ok(CheckReport {
            detail: format!(
                "POST {} answered {} in {} ms{}",
                redacted_url(&self.config.url),
                response.status.as_u16(),
                started.elapsed().as_millis(),
                if self.secret.is_some() { " (signed)" } else { "" }
            ),
        })
    }

    fn preview(&self, delivery: &Delivery) -> Result<Value, ConnectorError> {
        Ok(mapping::body(&self.config, delivery)?)
    }

    async fn deliver(&self, batch: &[Delivery]) -> Vec<Outcome> {
        // One request at a time per batch: the dispatcher runs `concurrency` batches at once,
        // so that is the number of requests in flight to this target.
        // Once the daemon is stopping, the request in flight finishes and the rest of the batch
        // is handed back unstarted (no attempt spent), so the stop is quick and every outcome
        // of what was sent gets recorded.
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            if self.stopping.is_cancelled() {
                outcomes.push(Outcome::not_started());
            } else {
                outcomes.push(self.deliver_one(delivery).await);
            }
        }
        outcomes
    }
}

/// Scheme, host and port only: webhook URLs often carry a secret in the path (Slack, Teams).
pub fn redacted_url(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}/…", url.scheme()),
        (Some(host), None) => format!("{}://{host}/…", url.scheme()),
        _ => url.scheme().to_owned(),
    }
}
