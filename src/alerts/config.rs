//! `[[alerts]]`: operator alert targets and their thresholds, and their validation.

use std::path::PathBuf;

use secrecy::ExposeSecret as _;
use serde::Deserialize;

use crate::config::{Dur, Secret, Validation};

/// The body an alert target expects.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AlertFormat {
    /// `{"event":"incident.opened", "condition":…, "summary":…}` (JSON, for any receiver).
    #[default]
    Generic,
    /// A Slack incoming webhook (`{"text": …}`).
    Slack,
    /// A Microsoft Teams incoming webhook (an Adaptive Card).
    Teams,
}

impl AlertFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertFormat::Generic => "generic",
            AlertFormat::Slack => "slack",
            AlertFormat::Teams => "teams",
        }
    }
}

/// One `[[alerts]]` entry: where to send and when. Every condition is on by default; a
/// threshold of 0 turns its condition off.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    /// Incidents are kept per name (default: the format's name). Unique.
    pub name: Option<String>,
    pub format: AlertFormat,
    /// Where to POST. A secret: Slack and Teams URLs carry their own credential.
    pub url: Option<Secret>,
    pub url_env: Option<String>,
    pub url_file: Option<PathBuf>,
    /// A location needs re-authorisation or the app was uninstalled.
    pub reauth: bool,
    /// A connector's circuit is open (its target keeps failing).
    pub circuit_open: bool,
    /// A connector has at least this many dead letters (0: off).
    pub dead_letters: u64,
    /// A location used this share of `limits.ghl_daily_budget` today (0: off).
    pub ghl_budget_percent: u8,
    /// The Lusha connector spent this share of `connectors.lusha.daily_credit_cap` today (0: off).
    pub lusha_credits_percent: u8,
    /// A location's last successful pass finished longer ago than this (0s: off).
    pub sync_lag: Dur,
    /// A GHL custom field a connector's mapping or write-back uses is missing in a location
    /// (each location's fields are read at most once an hour).
    pub custom_fields: bool,
}

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            name: None,
            format: AlertFormat::Generic,
            url: None,
            url_env: None,
            url_file: None,
            reauth: true,
            circuit_open: true,
            dead_letters: 10,
            ghl_budget_percent: 90,
            lusha_credits_percent: 90,
            sync_lag: Dur::secs(3600),
            custom_fields: true,
        }
    }
}

impl AlertSettings {
    /// The name incidents are kept under.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.format.as_str().to_owned())
    }

    /// Checks `alerts[index]` and resolves its URL into `v.secrets.alert_urls`.
    pub fn validate(&self, index: usize, v: &mut Validation) {
        let key = format!("alerts[{index}]");
        let name = self.name();
        v.check(
            !name.trim().is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')),
            &format!("{key}.name"),
            "must be letters, digits, `_`, `-` or `.`",
        );
        v.check(
            self.ghl_budget_percent <= 100 && self.lusha_credits_percent <= 100,
            &format!("{key}.ghl_budget_percent"),
            "percentages are 0 (off) to 100",
        );
        let sources = (&self.url, &self.url_env, &self.url_file);
        let Some(url) = v.secret(&format!("{key}.url"), sources, true) else {
            return;
        };
        match url::Url::parse(url.expose_secret()) {
            Ok(parsed) => {
                v.remote_url(&parsed, &format!("{key}.url"));
                if v.secrets.alert_urls.insert(name.clone(), url).is_some() {
                    v.problem(
                        format!("{key}.name"),
                        format!("another alert is also named {name:?}; names must be unique"),
                    );
                }
            }
            // Never echo the value: it is a secret.
            Err(error) => v.problem(format!("{key}.url"), format!("is not a URL ({error})")),
        }
    }
}
