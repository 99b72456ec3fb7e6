//! `ghl-sync sync --once` (sync in this process, then deliver what it queued) and
//! `ghl-sync sync --now` (ask the running daemon to start a pass).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::app::App;
use crate::config::Config;
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

/// `sync --now [--location ID]`: asks the daemon listening on `server.listen` to start a pass.
pub async fn sync_now(config: &Config, location: Option<&str>) -> anyhow::Result<()> {
    let server = &config.settings.server;
    anyhow::ensure!(
        server.enabled,
        "server.enabled is false: the daemon has no listener to ask; send it SIGUSR1 instead \
         (systemctl kill -s USR1 ghl-sync, docker kill -s USR1 <container>)"
    );
    let Some(token) = config.secrets.admin_token.as_ref() else {
        anyhow::bail!(
            "server.admin_token is not set: `sync --now` authenticates with it (set the same token for the daemon); \
             or send the daemon SIGUSR1"
        );
    };
    let base = crate::server::local_url(server.listen)?;
    let answer = crate::server::request_sync_now(&base, token, location).await?;
    if answer.woken.is_empty() {
        println!("The daemon has no location to sync.");
    } else {
        println!("Sync started for {} location(s): {}", answer.woken.len(), answer.woken.join(", "));
    }
    Ok(())
}

/// `sync --once [--location ID] [--dry-run]`: one run, then (with `deliver`, a time limit)
/// delivery of what it queued for the synced locations, and a summary. `Ok(false)` (exit 1)
/// when a location failed or a change was not delivered.
pub async fn sync_once(
    app: App,
    location: Option<&str>,
    dry_run: bool,
    deliver: Option<Duration>,
) -> anyhow::Result<bool> {
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
    let synced: Vec<String> = results.iter().map(|(location, _)| location.clone()).collect();
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
                for event in summary.trigger_events {
                    let report = crate::cli::rules::test(&app.config, event);
                    for action in report.actions() {
                        let what = serde_json::to_string(&action.action).unwrap_or_default();
                        println!(
                            "  rule {} on {} would run action {}: {what}",
                            action.rule, action.trigger, action.index
                        );
                    }
                }
            }
            Err(error) => {
                ok = false;
                println!("{location}: FAILED: {error}");
            }
        }
    }
    if let Some(limit) = deliver {
        ok &= deliver_queued(&app, &synced, limit).await?;
    } else if !dry_run {
        println!("Not delivered now (--no-deliver): the daemon delivers the queue when it runs.");
    }
    app.store.close().await;
    Ok(ok)
}

/// At most this many dispatcher passes per `sync --once` (trigger events → rule actions →
/// rows a `deliver` action hands on, with room to spare).
const DELIVERY_PASSES: usize = 8;

/// Drains the outbox rows of `locations` (bounded by `limit`) and prints, per connector,
/// delivered / failed (waiting to retry) / dead-lettered / still pending. Returns whether
/// everything was delivered.
async fn deliver_queued(app: &App, locations: &[String], limit: Duration) -> anyhow::Result<bool> {
    if app.dispatcher.connector_ids().is_empty() {
        println!("No connector is configured: nothing to deliver.");
        return Ok(true);
    }
    let started = std::time::Instant::now();
    // A pass delivers the rows due when it began. What it queues on the way (the actions the
    // rules decide, a rule's `deliver` row for another connector) is due after that, so more
    // passes follow while the last one delivered something (bounded: a chain is short).
    let passes = async {
        let mut summary = crate::dispatch::DispatchSummary::default();
        for _ in 0..DELIVERY_PASSES {
            let pass = app.dispatcher.run_once_for(Some(locations)).await;
            let progressed = pass.total().delivered > 0 && pass.errors.is_empty();
            summary.merge(pass);
            if !progressed {
                break;
            }
        }
        summary
    };
    let drained = tokio::time::timeout(limit, passes).await;
    let (summary, timed_out) = match drained {
        Ok(summary) => (summary, false),
        Err(_) => (Default::default(), true),
    };
    println!("Delivery ({:.1} s):", started.elapsed().as_secs_f64());
    let mut all = !timed_out && summary.errors.is_empty();
    for connector in app.dispatcher.connector_ids() {
        let counts = summary.connectors.get(&connector).cloned().unwrap_or_default();
        let left = crate::store::outbox::undelivered(&app.store, &connector, locations).await?;
        all &= counts.dead == 0 && left.pending == 0;
        println!(
            "  {connector}: {} delivered, {} failed (will retry), {} dead-lettered, {} still pending{}",
            counts.delivered,
            left.retrying,
            counts.dead,
            left.pending,
            if counts.circuit_open { " (circuit open)" } else { "" }
        );
        if let Some(error) = left.last_error.filter(|_| left.pending > 0) {
            println!("    last error: {error}");
        }
    }
    for error in &summary.errors {
        println!("  error: {error}");
    }
    if timed_out {
        println!(
            "Delivery stopped after {} s (--deliver-timeout): what is left stays queued for the daemon \
             (changes cut off mid-delivery are sent again under the same idempotency key).",
            limit.as_secs()
        );
    } else if !all {
        println!("Not everything was delivered: see `ghl-sync status` and `ghl-sync dlq list`.");
    }
    Ok(all)
}
