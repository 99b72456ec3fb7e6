//! `ghl-sync check`: every connector's own check (Lusha: key, credits, plan and limits from its
//! free usage endpoint), a live GHL token and scope check per location, and one real contact
//! from the snapshot mapped the way each connector sends it: its field names only, the values
//! (personal data) with `--show-data`.

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
use crate::store::{Store, StoreLock};

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
    let target = config.settings.store.target();
    let _lock = match StoreLock::acquire(&target).await {
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
        let store = Store::open(&target, config.settings.store.busy_timeout.get()).await?;
        register_locations(&store, config).await?;
        let calls = CancellationToken::new();
        let tokens = Arc::new(TokenManager::from_config(config, store.clone(), calls.clone())?);
        let workers = build_workers(
            config,
            &store,
            &tokens,
            &calls,
            &Default::default(),
            &crate::clock::Clock::system(),
            &crate::sync::leases::Leases::all(),
        )
        .await?;
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

/// Lusha, checked through its free usage endpoint (key, credits, plan, limits). The connector
/// itself needs the store and a GHL client to be built, so `check` asks the API directly.
pub async fn check_lusha(config: &Config) -> Option<CheckLine> {
    let settings = config.settings.connectors.lusha.as_ref().filter(|l| l.enabled)?;
    let line = |ok: bool, detail: String| CheckLine { name: "lusha".to_owned(), ok, detail };
    let Some(key) = config.secrets.lusha_api_key.clone() else {
        return Some(line(false, "no API key (connectors.lusha.api_key)".to_owned()));
    };
    let client = match crate::connectors::lusha::client::LushaClient::new(settings, key, CancellationToken::new()) {
        Ok(client) => client,
        Err(error) => return Some(line(false, error.to_string())),
    };
    Some(match client.usage().await {
        Ok(usage) => match crate::connectors::lusha::client::describe_usage(&usage, settings) {
            Ok(detail) => line(true, detail),
            Err(detail) => line(false, detail),
        },
        Err(error) => line(false, error.to_string()),
    })
}

/// The field names of a mapped sample, nested ones dotted (`person.email`); no values.
pub fn field_names(value: &Value) -> Vec<String> {
    fn walk(value: &Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    walk(child, &path, out);
                }
            }
            _ if !prefix.is_empty() => out.push(prefix.to_owned()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, "", &mut out);
    out
}

/// `ghl-sync check`: `extra` holds checks done elsewhere (the GHL token and scope checks);
/// exits 1 naming every failed check. Sample contacts are printed only with `show_data`.
pub async fn run_check(config: &Config, extra: Vec<CheckLine>, show_data: bool) -> anyhow::Result<ExitCode> {
    let cancel = tokio_util::sync::CancellationToken::new();
    let connectors = crate::connectors::build(config, &cancel)?;
    let mut lines = extra;
    lines.extend(check_lusha(config).await);
    lines.extend(check_connectors(&connectors).await);
    if connectors.is_empty() && config.settings.connectors.lusha.is_none() {
        println!("no connectors configured");
    }
    for line in &lines {
        println!("{} {}: {}", if line.ok { "ok  " } else { "FAIL" }, line.name, line.detail);
    }
    match open_store(config).await {
        Ok(store) => {
            for connector in &connectors {
                match sample(&store, connector.as_ref()).await {
                    Ok(Some(body)) if show_data => {
                        println!("\nsample for {} (one real contact, as it would be sent):", connector.id());
                        println!("{}", serde_json::to_string_pretty(&body)?);
                    }
                    Ok(Some(body)) => println!(
                        "\nsample for {}: one real contact maps to the fields {} (`--show-data` prints the values)",
                        connector.id(),
                        field_names(&body).join(", ")
                    ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_list_nested_keys_without_values() {
        let body =
            serde_json::json!({"event": "contact.updated", "data": {"email": "a@example.com", "tags": ["x"]}, "e": {}});
        assert_eq!(field_names(&body), ["data.email", "data.tags", "e", "event"]);
    }
}
