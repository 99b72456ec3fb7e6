//! `ghl-sync check`: every connector's own check, a live GHL token and scope check per
//! location, and one real contact from the snapshot mapped the way each connector sends it.

use std::process::ExitCode;
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::open_store;
use crate::app::{build_workers, register_locations};
use crate::config::Config;
use crate::connectors::{Connector, Delivery};
use crate::domain::{EntityKind, Operation};
use crate::ghl::{TokenManager, needed_scopes};
use crate::store::{ProcessLock, Store};

/// One line of `ghl-sync check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    /// What was checked: a connector id, `ghl:<location>`, …
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// Runs every connector's `check()`. GHL token/scope checks are added by the caller
/// (`extra`, see `run_check`).
pub async fn check_connectors(connectors: &[Arc<dyn Connector>]) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    for connector in connectors {
        let line = match connector.check().await {
            Ok(report) => CheckLine { name: connector.id().to_owned(), ok: true, detail: report.detail },
            Err(error) => CheckLine { name: connector.id().to_owned(), ok: false, detail: error.to_string() },
        };
        lines.push(line);
    }
    lines
}

/// One real contact from the snapshot, mapped the way `connector` would send it
/// (`Ok(None)`: no contact in the store for this connector's locations yet).
pub async fn sample(store: &Store, connector: &dyn Connector) -> anyhow::Result<Option<Value>> {
    for contact in crate::store::snapshot::recent_contacts(store, 200).await? {
        if !connector.interested("contact.updated", &contact.location_id) {
            continue;
        }
        let delivery = Delivery {
            id: 0,
            location_id: contact.location_id,
            entity: EntityKind::Contact,
            entity_id: contact.contact_id.clone(),
            contact_id: Some(contact.contact_id),
            operation: Operation::Updated,
            changed_at_ms: contact.changed_at,
            idempotency_key: "sample".to_owned(),
            record: contact.record,
            contact: None,
            attempt: 1,
        };
        return Ok(Some(connector.preview(&delivery)?));
    }
    Ok(None)
}

/// `ghl-sync check`, GHL part: for every location, a token and one cheap read (a search of
/// one contact), plus missing scopes. When a daemon holds the database, the live check is
/// skipped: two processes refreshing one OAuth grant is how installs get bricked.
pub async fn check_ghl(config: &Config) -> Vec<CheckLine> {
    let line = |name: &str, ok: bool, detail: String| CheckLine { name: name.to_owned(), ok, detail };
    let path = config.settings.store.resolved_path();
    let _lock = match ProcessLock::acquire(&path) {
        Ok(lock) => lock,
        Err(_) => {
            return vec![line(
                "ghl",
                true,
                "a running daemon holds the database; live GHL check skipped (see `ghl-sync auth status`)".into(),
            )];
        }
    };
    let result = async {
        let store = Store::connect(&path, config.settings.store.busy_timeout.get()).await?;
        register_locations(&store, config).await?;
        let calls = CancellationToken::new();
        let tokens = Arc::new(TokenManager::from_config(config, store.clone(), calls.clone())?);
        let workers = build_workers(config, &store, &tokens, &calls).await?;
        let mut lines = Vec::new();
        let locations = crate::store::locations::active(&store).await?;
        if locations.is_empty() {
            lines.push(line("ghl", false, "no locations configured".into()));
        }
        for location in locations {
            let request = crate::ghl::dto::SearchRequest::updated_since(&location, 1, None);
            let name = format!("ghl:{location}");
            match workers.ghl.search_contacts(&request, crate::http::Priority::Poll).await {
                Ok(page) => lines.push(line(
                    &name,
                    true,
                    format!("token accepted; {} contact(s)", page.total.map_or("?".into(), |t| t.to_string())),
                )),
                Err(error) => lines.push(line(&name, false, error.to_string())),
            }
        }
        for (resource, missing) in tokens.scope_report(&needed_scopes(false)).await? {
            lines.push(line(&format!("ghl:{resource} scopes"), false, format!("missing {}", missing.join(" "))));
        }
        store.close().await;
        anyhow::Ok(lines)
    }
    .await;
    result.unwrap_or_else(|error| vec![line("ghl", false, format!("{error:#}"))])
}

/// `ghl-sync check`: `extra` holds checks done elsewhere (the GHL token and scope checks);
/// exits 1 naming every failed check.
pub async fn run_check(config: &Config, extra: Vec<CheckLine>) -> anyhow::Result<ExitCode> {
    let cancel = tokio_util::sync::CancellationToken::new();
    let connectors = crate::connectors::build(config, &cancel)?;
    let mut lines = extra;
    lines.extend(check_connectors(&connectors).await);
    if connectors.is_empty() {
        println!("no connectors configured");
    }
    for line in &lines {
        println!("{} {}: {}", if line.ok { "ok  " } else { "FAIL" }, line.name, line.detail);
    }
    match open_store(config).await {
        Ok(store) => {
            for connector in &connectors {
                match sample(&store, connector.as_ref()).await {
                    Ok(Some(body)) => {
                        println!("\nsample for {} (one real contact, as it would be sent):", connector.id());
                        println!("{}", serde_json::to_string_pretty(&body)?);
                    }
                    Ok(None) => {
                        println!("\nsample for {}: no contact in the store yet (run a sync first)", connector.id())
                    }
                    Err(error) => {
                        println!("\nsample for {}: cannot map: {error:#}", connector.id());
                        lines.push(CheckLine {
                            name: format!("{} mapping", connector.id()),
                            ok: false,
                            detail: format!("{error:#}"),
                        });
                    }
                }
            }
            store.close().await;
        }
        Err(error) => println!("\nno samples: {error:#}"),
    }
    let failed: Vec<&str> = lines.iter().filter(|l| !l.ok).map(|l| l.name.as_str()).collect();
    if failed.is_empty() {
        println!("\nall checks passed");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("check failed: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}
