//! `ghl-sync export`: one location's contacts from the snapshot as CSV or JSON Lines, to a file
//! (atomically) or stdout. The formats and writers live in `crate::export`.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::{Config, ExportFormat};
use crate::export::{export_location, export_to_path};
use crate::store::{Store, locations};

/// `ghl-sync export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// The location whose contacts are exported.
    #[arg(long, value_name = "ID")]
    pub location: String,
    /// File format (default: from the --output extension, else csv).
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
    /// Write here (atomically) instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs `ghl-sync export`: the summary goes to stderr, the data to `--output` or stdout.
pub async fn run_export(config: &Config, args: ExportArgs) -> anyhow::Result<()> {
    let format = args.format.unwrap_or_else(|| {
        match args.output.as_ref().and_then(|p| p.extension()).and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("jsonl") || ext.eq_ignore_ascii_case("ndjson") => ExportFormat::Jsonl,
            _ => ExportFormat::Csv,
        }
    });
    let settings = &config.settings.store;
    let store = Store::open(&settings.target(), settings.busy_timeout.get()).await?;
    let result = async {
        ensure_known_location(&store, &args.location).await?;
        // A bar on stderr, unless the export itself scrolls past on the same terminal.
        let bar = if std::io::stderr().is_terminal() && (args.output.is_some() || !std::io::stdout().is_terminal()) {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {pos}/{len} contacts {wide_bar} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        let summary = match &args.output {
            Some(path) => export_to_path(&store, &args.location, format, path, &bar).await?,
            None => {
                let mut out = BufWriter::with_capacity(256 * 1024, std::io::stdout());
                let summary = export_location(&store, &args.location, format, &mut out, &bar).await?;
                out.flush().context("cannot write to stdout")?;
                summary
            }
        };
        bar.finish_and_clear();
        let target = args.output.as_ref().map_or_else(|| "stdout".to_owned(), |p| p.display().to_string());
        eprintln!("Exported {} contact(s) of location {} to {target} ({}).", summary.contacts, args.location, {
            match format {
                ExportFormat::Csv => format!("csv, {} custom field column(s)", summary.custom_fields),
                ExportFormat::Jsonl => "jsonl".to_owned(),
            }
        });
        anyhow::Ok(())
    }
    .await;
    store.close().await;
    result
}

/// A location that is neither registered nor has contacts is most likely a typo.
async fn ensure_known_location(store: &Store, location: &str) -> anyhow::Result<()> {
    if !locations::is_known(store, location).await? {
        let ids: Vec<String> = locations::list(store).await?.into_iter().map(|row| row.id).collect();
        anyhow::bail!(
            "unknown location {location}; known: {}",
            if ids.is_empty() { "none (run a sync first)".to_owned() } else { ids.join(", ") }
        );
    }
    Ok(())
}
