//! The command line: `ghl-sync <command>`. Each command validates the config first.

pub mod auth;
pub mod check;
pub mod dlq;
pub mod export;
pub mod replay;
pub mod rules;
pub mod status;
pub mod store;
pub mod sync;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::App;
use crate::config::{self, Config, ConfigError};

#[derive(Debug, Parser)]
#[command(name = "ghl-sync", version, about = "Keeps Lusha, Lucky Orange and webhooks in step with GoHighLevel")]
pub struct Cli {
    /// Config file (default: $GHL_SYNC_CONFIG, else config/ghl-sync.toml).
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM/SIGINT.
    Run,
    /// Check the config file: prints `ok`, or every problem with its key path (exit 78).
    Validate,
    /// Print the version.
    Version,
    /// Run the fake GHL, Lusha and webhook sink until Ctrl-C (prints URLs and tokens).
    Sandbox {
        /// Seed of the generated data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 8090)]
        port: u16,
        /// Contacts per location.
        #[arg(long, default_value_t = 50)]
        contacts: usize,
    },
    /// Run the real daemon against the built-in sandbox: no setup, no credentials.
    Demo {
        /// Contacts per location (two locations).
        #[arg(long, default_value_t = 1500)]
        contacts: usize,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Seconds between rounds of simulated user edits.
        #[arg(long, default_value_t = 3)]
        edit_every: u64,
        /// Seed of the generated data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// `--once`: sync, deliver and exit, printing a summary (with a progress bar on a
    /// terminal). `--now`: ask the running daemon to start a pass at once.
    #[command(group(clap::ArgGroup::new("mode").required(true).args(["once", "now"])))]
    Sync {
        /// Run once in this process, deliver what it queued, and exit (no daemon may run).
        #[arg(long)]
        once: bool,
        /// Ask the running daemon (through `server.listen`, with `server.admin_token`) to
        /// start a pass now, like SIGUSR1.
        #[arg(long, conflicts_with_all = ["dry_run", "no_deliver", "deliver_timeout"])]
        now: bool,
        /// Only this location.
        #[arg(long, value_name = "ID")]
        location: Option<String>,
        /// Compute and print what would be delivered; write nothing, call no connector.
        #[arg(long)]
        dry_run: bool,
        /// Only queue the changes (the daemon delivers them later); do not call connectors.
        #[arg(long)]
        no_deliver: bool,
        /// Stop delivering after this many seconds (what is left stays queued).
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        deliver_timeout: u64,
    },
    /// Show per-location sync state and per-connector queues, from the store.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check a running daemon: GET /healthz (exit 0 when healthy, 1 otherwise). Docker's HEALTHCHECK.
    Health {
        /// Base URL of the daemon (default: http://<server.listen>/ from the config).
        #[arg(long, value_name = "URL")]
        url: Option<url::Url>,
    },
    /// Dead letters: list, show, retry, drop.
    Dlq(crate::cli::dlq::DlqArgs),
    /// Re-send records from the snapshot to one connector (e.g. after a mapping change); each
    /// version keeps the idempotency key of its first delivery unless --new-keys.
    Replay(crate::cli::replay::ReplayArgs),
    /// plan) and map one real contact for each connector.
    Check {
        /// Also print the mapped sample contact (personal data); without it only its field names.
        #[arg(long)]
        show_data: bool,
    },
    /// Rules: list them, test which fire for an event or a stored contact, print the catalog.
    Rules(crate::cli::rules::RulesArgs),
    /// Export one location's contacts from the snapshot as CSV or JSON Lines.
    Export(crate::cli::export::ExportArgs),
    /// The store itself: `store migrate --to postgres://…` copies the SQLite store into PostgreSQL.
    Store(crate::cli::store::StoreArgs),
    /// Manage GHL credentials: OAuth install, private integration tokens, status.
    Auth {
        #[command(subcommand)]
        command: crate::cli::auth::AuthCommand,
    },
}

/// Opens the store named by the config (the operator commands).
pub(crate) async fn open_store(config: &Config) -> anyhow::Result<crate::store::Store> {
    use anyhow::Context as _;
    let target = config.settings.store.target();
    crate::store::Store::open(&target, config.settings.store.busy_timeout.get())
        .await
        .with_context(|| format!("Failed to open the store at {}", crate::store::Location::of(&target)))
}

/// Runs the parsed command and returns the process exit code.
pub async fn execute(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Version => {
            println!("ghl-sync {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Sandbox { seed, port, contacts } => {
            finish(crate::demo::run_sandbox(crate::demo::SandboxArgs { seed, port, contacts }).await)
        }
        Command::Demo { contacts, seconds, edit_every, seed } => {
            crate::telemetry::init(&crate::config::LogSettings { level: "warn".into(), ..Default::default() });
            finish(
                crate::demo::run_demo(crate::demo::DemoArgs {
                    contacts,
                    duration: seconds.map(std::time::Duration::from_secs),
                    edit_every: std::time::Duration::from_secs(edit_every.max(1)),
                    seed,
                })
                .await,
            )
        }
        Command::Validate => match config::load(cli.config.as_deref()) {
            Ok(config) => {
                for warning in &config.warnings {
                    eprintln!("warning: {warning}");
                }
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(error) => config_failure(&error),
        },
        Command::Health { url } => health(cli.config.as_deref(), url).await,
        Command::Dlq(args) => match load(cli.config.as_deref()) {
            Ok(config) => finish_with(crate::cli::dlq::run_dlq(&config, args).await),
            Err(code) => code,
        },
        Command::Replay(args) => match load(cli.config.as_deref()) {
            Ok(config) => finish_with(crate::cli::replay::run_replay(&config, args).await),
            Err(code) => code,
        },
        Command::Check { show_data } => match load(cli.config.as_deref()) {
            Ok(config) => {
                let ghl_checks = check::check_ghl(&config).await;
                finish_with(check::run_check(&config, ghl_checks, show_data).await)
            }
            Err(code) => code,
        },
        Command::Rules(args) => match load(cli.config.as_deref()) {
            Ok(config) => finish(crate::cli::rules::run_rules(&config, args).await),
            Err(code) => code,
        },
        Command::Export(args) => match load(cli.config.as_deref()) {
            Ok(config) => finish(crate::cli::export::run_export(&config, args).await),
            Err(code) => code,
        },
        Command::Store(args) => match load(cli.config.as_deref()) {
            Ok(config) => finish(crate::cli::store::run_store(&config, args).await),
            Err(code) => code,
        },
        // Needs no config: it runs before there is one (install steps).
        Command::Auth { command: crate::cli::auth::AuthCommand::InitKey { output } } => {
            finish(crate::cli::auth::init_key(output.as_deref()))
        }
        Command::Auth { command } => {
            let config = match load(cli.config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            crate::telemetry::init(&config.settings.log);
            finish(crate::cli::auth::run(config, command).await)
        }
        Command::Run => {
            // Before anything else: a stop requested while the daemon starts is a graceful one.
            let stop = crate::shutdown::listen_for_signals();
            let config = match load(cli.config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            crate::telemetry::init(&config.settings.log);
            log_warnings(&config);
            finish(run_daemon(config, stop).await)
        }
        Command::Sync { once: _, now: true, location, .. } => match load(cli.config.as_deref()) {
            Ok(config) => finish(crate::cli::sync::sync_now(&config, location.as_deref()).await),
            Err(code) => code,
        },
        Command::Sync { once: _, now: false, location, dry_run, no_deliver, deliver_timeout } => {
            let config = match load(cli.config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            crate::telemetry::init(&config.settings.log);
            log_warnings(&config);
            let deliver =
                if dry_run || no_deliver { None } else { Some(std::time::Duration::from_secs(deliver_timeout.max(1))) };
            let result = async {
                let app = App::build_one_shot(config).await?;
                crate::cli::sync::sync_once(app, location.as_deref(), dry_run, deliver).await
            }
            .await;
            match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(error) => finish(Err(error)),
            }
        }
        Command::Status { json } => {
            let config = match load(cli.config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let result = async {
                let settings = &config.settings.store;
                let store = crate::store::Store::open(&settings.target(), settings.busy_timeout.get()).await?;
                crate::cli::status::print_status(&store, &config, json).await
            }
            .await;
            finish(result)
        }
    }
}

/// `ghl-sync health`: without `--url`, the address comes from the config when it loads
/// (secrets may be missing in a health-check shell) and from the defaults otherwise.
async fn health(config_path: Option<&Path>, url: Option<url::Url>) -> ExitCode {
    let url = match url {
        Some(url) => Ok(url),
        None => {
            let listen = config::load(config_path)
                .map(|c| c.settings.server.listen)
                .unwrap_or_else(|_| config::ServerSettings::default().listen);
            crate::server::local_url(listen)
        }
    };
    let result = match url {
        Ok(url) => crate::server::check_health(&url).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("unhealthy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs the config's warnings (valid, but probably not what was meant) once at start-up.
fn log_warnings(config: &Config) {
    for warning in &config.warnings {
        tracing::warn!(config.key = %warning.key, "Config: {}", warning.message);
    }
}

fn load(path: Option<&Path>) -> Result<Config, ExitCode> {
    config::load(path).map_err(|error| config_failure(&error))
}

/// Prints every config problem and returns exit code 78 (`EX_CONFIG`).
pub fn config_failure(error: &ConfigError) -> ExitCode {
    match error {
        ConfigError::Invalid { origin, problems } => {
            eprintln!("{origin}: {} problem(s):", problems.len());
            for problem in problems {
                eprintln!("  {problem}");
            }
        }
        other => eprintln!("{other}"),
    }
    ExitCode::from(ConfigError::EXIT_CODE)
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "ghl-sync failed");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn finish_with(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_daemon(config: Config, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    let app = App::build(config).await?;
    app.run_until_stopped(stop).await
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
