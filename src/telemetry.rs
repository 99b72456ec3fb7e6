//! Logging: `tracing` with pretty or JSON output; the level from config unless `RUST_LOG` is set.
//!
//! Nothing in the crate logs secrets or personal data: secrets are `SecretString`, and log
//! lines carry ids and route templates, never emails, phones, names or tokens.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogFormat, LogSettings};

/// Builds the filter: `RUST_LOG` wins, else the configured level, else `info`.
pub fn filter(settings: &LogSettings) -> EnvFilter {
    match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => EnvFilter::try_new(value).unwrap_or_else(|_| EnvFilter::new("info")),
        _ => EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info")),
    }
}

/// A subscriber writing to `writer` (stderr in the daemon, a buffer in tests).
pub fn subscriber<W>(settings: &LogSettings, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    // Colours only on a terminal: journald, Docker logs and files get plain text (`NO_COLOR`
    // turns them off everywhere).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter(settings)).with_writer(writer).with_ansi(ansi);
    match settings.format {
        LogFormat::Json => Box::new(builder.json().flatten_event(true).with_current_span(true).finish()),
        LogFormat::Pretty => {
            // journald stamps lines itself; keep timestamps for terminals and files.
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                Box::new(builder.compact().without_time().finish())
            } else {
                Box::new(builder.compact().finish())
            }
        }
    }
}

/// Installs the global subscriber writing to stderr. Safe to call once; later calls are ignored.
pub fn init(settings: &LogSettings) {
    let subscriber = subscriber(settings, std::io::stderr);
    // A second init (tests, demo) keeps the first subscriber.
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        tracing::debug!("A global subscriber was already installed; keeping it");
    }
}
