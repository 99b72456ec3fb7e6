//! Reading the file and the environment into [`Settings`], collecting every problem.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Config, LocationAuth, LocationSettings, Secret, Settings, validate};

/// Env var naming the config file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "GHL_SYNC_CONFIG";
/// The file used when neither `--config` nor `GHL_SYNC_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/ghl-sync.toml";
/// A one-location deployment without editing the file (Docker): this location's id …
pub const LOCATION_ID_ENV: &str = "GHL_SYNC_LOCATION_ID";
/// … and its private integration token.
pub const PIT_ENV: &str = "GHL_SYNC_PIT";

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    InCode,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(path) => write!(f, "{}", path.display()),
            ConfigSource::InCode => f.write_str("built-in settings"),
        }
    }
}

/// One problem with a key path, e.g. `connectors.webhook.slack.url: relative URL without a base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl ConfigProblem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.key, self.message) }
    }
}

/// Why a configuration could not be used. Every variant maps to exit code 78 (`EX_CONFIG`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path} could not be read: {error}")]
    Unreadable { path: PathBuf, error: std::io::Error },
    /// Empty or whitespace only: a truncated file must not start a daemon that syncs nothing.
    #[error(
        "config file is empty: {path} (a truncated or blank file is refused; every key is documented in \
         config/ghl-sync.example.toml)"
    )]
    Empty { path: PathBuf },
    #[error("{origin} is not valid TOML: {message}")]
    Syntax { origin: ConfigSource, message: String },
    #[error("{origin} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid { origin: ConfigSource, problems: Vec<ConfigProblem> },
}

fn list(problems: &[ConfigProblem]) -> String {
    problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
}

impl ConfigError {
    /// The process exit code for a configuration error (`EX_CONFIG`).
    pub const EXIT_CODE: u8 = 78;

    /// Every problem, one per entry, for printing.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { problems, .. } => problems.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Which file to read: `--config`, else `GHL_SYNC_CONFIG`, else `config/ghl-sync.toml`.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    match std::env::var_os(CONFIG_PATH_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// Loads the config file (see [`config_path`]) with `GHL_SYNC__…` env overrides and validates it.
pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
    let path = config_path(explicit);
    let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Unreadable { path: path.clone(), error })?;
    let env = std::env::vars().collect();
    load_from_str(&text, ConfigSource::File(path), env)
}

/// Loads from TOML text and an explicit environment (tests pass their own map).
pub fn load_from_str(
    text: &str,
    source: ConfigSource,
    env: std::collections::HashMap<String, String>,
) -> Result<Config, ConfigError> {
    if let ConfigSource::File(path) = &source
        && text.trim().is_empty()
    {
        return Err(ConfigError::Empty { path: path.clone() });
    }
    let overrides = EnvOverrides::new(text, &env);
    let env_location = [LOCATION_ID_ENV, PIT_ENV].map(|var| env.get(var).map(|v| v.trim().to_owned()));
    let tree = merge(text, &source, env)?;
    let (settings, mut problems) = deserialize_collecting(tree);
    let Some(mut settings) = settings else {
        return Err(ConfigError::Invalid { origin: source, problems: overrides.attribute(problems) });
    };
    add_env_location(&mut settings, &env_location, &mut problems);
    let validation = validate::validate(&settings);
    problems.extend(validation.problems);
    if problems.is_empty() {
        Ok(Config {
            settings,
            secrets: validation.secrets,
            warnings: validation.warnings,
            source,
            rules: validation.rules,
        })
    } else {
        Err(ConfigError::Invalid { origin: source, problems: overrides.attribute(problems) })
    }
}

/// `GHL_SYNC_LOCATION_ID` + `GHL_SYNC_PIT`: one more location with a private integration token,
/// so a container (or a quick try) needs no edit of the shipped file. A `GHL_SYNC_PIT` that no
/// location uses is a problem: the daemon would start and sync nothing.
fn add_env_location(settings: &mut Settings, [id, pit]: &[Option<String>; 2], problems: &mut Vec<ConfigProblem>) {
    let id = id.as_deref().filter(|v| !v.is_empty());
    let pit = pit.as_deref().filter(|v| !v.is_empty());
    let file_uses_pit = settings.ghl.locations.iter().any(|l| l.pit_env.as_deref() == Some(PIT_ENV));
    match (id, pit) {
        (Some(id), _) if settings.ghl.locations.iter().any(|l| l.id == id) => problems.push(ConfigProblem::new(
            LOCATION_ID_ENV,
            format!("location {id} is also listed in the config file; configure it in one place"),
        )),
        (Some(id), Some(pit)) => settings.ghl.locations.push(LocationSettings {
            id: id.to_owned(),
            name: None,
            auth: LocationAuth::Pit,
            pit: Some(Secret::new(pit.to_owned())),
            pit_env: None,
            pit_file: None,
            enabled: true,
        }),
        (Some(id), None) => problems.push(ConfigProblem::new(
            PIT_ENV,
            format!(
                "is not set: {LOCATION_ID_ENV} names location {id}; put its private integration token in {PIT_ENV}"
            ),
        )),
        (None, Some(_)) if !file_uses_pit => problems.push(ConfigProblem::new(
            PIT_ENV,
            format!(
                "is set, but no location uses it: set {LOCATION_ID_ENV} to the id of the location (sub-account) \
                 the token belongs to, or pit_env = \"{PIT_ENV}\" in a [[ghl.locations]] entry"
            ),
        )),
        _ => {}
    }
}

/// The `GHL_SYNC__SECTION__KEY` variables of an environment with the key paths they set, so a
/// problem in an overridden key names the variable rather than the file.
struct EnvOverrides {
    /// (variable, key path such as `sync.contacts_interval`)
    vars: Vec<(String, String)>,
    /// The file's own tree, to tell keys the file has from keys only the environment made.
    file: Option<toml::Table>,
}

impl EnvOverrides {
    fn new(text: &str, env: &std::collections::HashMap<String, String>) -> Self {
        let mut vars: Vec<(String, String)> = env
            .keys()
            .filter_map(|var| {
                let rest = var.strip_prefix("GHL_SYNC__")?;
                let path = rest.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".");
                (!path.is_empty()).then(|| (var.clone(), path))
            })
            .collect();
        vars.sort();
        Self { vars, file: toml::from_str(text).ok() }
    }

    /// Renames problems caused by an environment override after its variable: the key
    /// itself or a key under it, or a parent the file does not have (an unknown section the
    /// variable made up).
    fn attribute(&self, problems: Vec<ConfigProblem>) -> Vec<ConfigProblem> {
        problems
            .into_iter()
            .map(|problem| match self.variable_for(&problem.key) {
                Some((var, path)) => ConfigProblem::new(
                    var.clone(),
                    format!("{} (this environment variable overrides {path})", problem.message),
                ),
                None => problem,
            })
            .collect()
    }

    fn variable_for(&self, key: &str) -> Option<&(String, String)> {
        let under = |child: &str, parent: &str| {
            child == parent || child.strip_prefix(parent).is_some_and(|rest| rest.starts_with(['.', '[']))
        };
        self.vars.iter().find(|(_, path)| under(key, path)).or_else(|| {
            if self.file_has(key) {
                return None;
            }
            self.vars.iter().find(|(_, path)| under(path, key))
        })
    }

    fn file_has(&self, key: &str) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        let mut node: Option<&toml::Value> = None;
        for (i, part) in key.split('.').enumerate() {
            let name = part.split('[').next().unwrap_or(part);
            let next = if i == 0 { file.get(name) } else { node.and_then(|n| n.get(name)) };
            match next {
                Some(value) => node = Some(value),
                None => return false,
            }
        }
        true
    }
}

/// File < environment, merged by the `config` crate into one JSON tree.
fn merge(
    text: &str,
    source: &ConfigSource,
    env: std::collections::HashMap<String, String>,
) -> Result<Value, ConfigError> {
    let env = config::Environment::with_prefix("GHL_SYNC")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .source(Some(env.into_iter().collect()));
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(env)
        .build()
        .map_err(|e| ConfigError::Syntax { origin: source.clone(), message: e.to_string() })?;
    built.try_deserialize::<Value>().map_err(|e| ConfigError::Syntax { origin: source.clone(), message: e.to_string() })
}

/// Deserializes, and on each error records it with its key path, removes the offending
/// key and tries again, so one run reports every structural problem.
fn deserialize_collecting(mut tree: Value) -> (Option<Settings>, Vec<ConfigProblem>) {
    let mut problems = Vec::new();
    // Each round removes one key, so this terminates; the bound guards against surprises.
    for _ in 0..256 {
        let error = match serde_path_to_error::deserialize::<_, Settings>(&tree) {
            Ok(settings) => return (Some(settings), problems),
            Err(error) => error,
        };
        let mut segments = path_segments(error.path());
        let message = error.inner().to_string();
        if let Some(field) = quoted_after(&message, "unknown field `") {
            if segments.last().is_none_or(|last| *last != Segment::Key(field.clone())) {
                segments.push(Segment::Key(field));
            }
            let message = message.split(", expected").next().unwrap_or(&message).to_owned();
            problems.push(ConfigProblem::new(render(&segments), message));
        } else if let Some(field) = quoted_after(&message, "missing field `") {
            let mut key = segments.clone();
            key.push(Segment::Key(field));
            let key = render(&key);
            // A required key removed after its own error was reported is not missing twice.
            if !problems.iter().any(|p| p.key == key) {
                problems.push(ConfigProblem::new(key, "missing (this key is required)"));
            }
        } else {
            problems.push(ConfigProblem::new(render(&segments), clean(&message)));
        }
        if segments.is_empty() || !remove(&mut tree, &segments) {
            // The root itself is wrong, or the path could not be found: nothing more to learn.
            return (None, problems);
        }
    }
    (None, problems)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn path_segments(path: &serde_path_to_error::Path) -> Vec<Segment> {
    path.iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

fn render(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.split_once(prefix)?.1;
    Some(rest.split('`').next()?.to_owned())
}

/// serde's messages mention Rust types; keep them but drop the noise users can't act on.
fn clean(message: &str) -> String {
    message.replace("invalid type: ", "wrong type: ")
}

/// Removes the node at `segments`, or its nearest existing ancestor's child on the way.
fn remove(tree: &mut Value, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = tree;
    for segment in parents {
        let next = match (segment, node) {
            (Segment::Key(key), Value::Object(map)) => map.get_mut(key),
            (Segment::Index(index), Value::Array(items)) => items.get_mut(*index),
            _ => None,
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    match (last, node) {
        (Segment::Key(key), Value::Object(map)) => map.remove(key).is_some(),
        (Segment::Index(index), Value::Array(items)) if *index < items.len() => {
            // Later entries shift down by one: a second broken entry in the same list is
            // reported with its shifted index. Rare enough to accept.
            items.remove(*index);
            true
        }
        _ => false,
    }
}
