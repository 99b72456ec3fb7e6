//! `ghl-sync sync --once`.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

use crate::app::App;
use crate::sync::engine::{Progress, RunOptions};

/// A terminal progress bar for pages and children.
struct Bar {
    bar: ProgressBar,
}

impl Progress for Bar {
    fn page(&self, _location: &str, contacts: u64, total: Option<u64>) {
        if let Some(total) = total {
            let length = self.bar.length().unwrap_or(0).max(total);
            self.bar.set_length(length);
        }
        self.bar.inc(contacts);
    }

    fn children(&self, _location: &str, contacts: u64) {
        self.bar.set_message(format!("tasks/notes read for {contacts} more contact(s)"));
    }
}

/// `sync --once [--location ID] [--dry-run]`: one run, a summary, exit 1 if any location failed.
pub async fn sync_once(app: App, location: Option<&str>, dry_run: bool) -> anyhow::Result<bool> {
    let app = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} contacts {wide_bar} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let progress: Arc<dyn Progress> = Arc::new(Bar { bar });
        app.with_progress(progress)
    } else {
        app
    };
    let results = app.sync_once(location, RunOptions { dry_run, skip_sweep: false }).await?;
    let mut ok = true;
    if dry_run {
        println!("Dry run: nothing was written and no connector was called.");
    }
    for (location, result) in results {
        match result {
            Ok(summary) => {
                println!(
                    "{location}: {} page(s), {} contact(s) read, {} changed, {} with tasks/notes read, {} request(s), {} set aside",
                    summary.pages,
                    summary.contacts_seen,
                    summary.contacts_changed,
                    summary.children_read_for,
                    summary.requests,
                    summary.dead_letters
                );
                let verb = if dry_run { "would be queued" } else { "queued" };
                if summary.events.is_empty() {
                    println!("  no deliveries {verb}");
                }
                for (event, count) in &summary.events {
                    println!("  {event}: {count} deliver(ies) {verb}");
                }
            }
            Err(error) => {
                ok = false;
                println!("{location}: FAILED: {error}");
            }
        }
    }
    app.store.close().await;
    Ok(ok)
}
