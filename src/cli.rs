//! The command line: `ghl-sync <command>`. Each command validates the config first.

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
    /// Manage GHL credentials: OAuth install, private integration tokens, status.
    Auth {
        #[command(subcommand)]
        command: crate::ghl::auth_cli::AuthCommand,
    },
}

/// Runs the parsed command and returns the process exit code.
pub async fn execute(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Version => {
            println!("ghl-sync {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Validate => match config::load(cli.config.as_deref()) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(error) => config_failure(&error),
        },
        Command::Auth { command } => {
            let config = match load(cli.config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            crate::telemetry::init(&config.settings.log);
            finish(crate::ghl::auth_cli::run(config, command).await)
        }
        Command::Run => {
            let config = match load(cli.config.as_deref()) {
                Ok(config) => config,
                Err(code) => return code,
            };
            crate::telemetry::init(&config.settings.log);
            finish(run_daemon(config).await)
        }
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

async fn run_daemon(config: Config) -> anyhow::Result<()> {
    let stop = crate::shutdown::listen_for_signals();
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
