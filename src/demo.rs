//! `ghl-sync sandbox` and `ghl-sync demo`: the fakes on their own, and the real daemon
//! running against them with a temporary database. Every number the demo prints is read
//! from real traffic: the sandbox's request counters and the daemon's store.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{self, Config, Dur, LocationAuth, LocationSettings, Secret, Settings};
use ghl_sync_sandbox::ghl::GhlOptions;
use ghl_sync_sandbox::{Sandbox, SandboxOptions};

/// Options of `ghl-sync sandbox`.
#[derive(Debug, Clone)]
pub struct SandboxArgs {
    pub seed: u64,
    pub port: u16,
    pub contacts: usize,
}

/// Runs the fakes until Ctrl-C, printing what a user needs to point a daemon at them.
pub async fn run_sandbox(args: SandboxArgs) -> anyhow::Result<()> {
    let ghl = GhlOptions { seed: args.seed, contacts_per_location: args.contacts, ..GhlOptions::default() };
    let sandbox = Sandbox::start(
        SandboxOptions { ghl, ..SandboxOptions::default() },
        SocketAddr::from(([127, 0, 0, 1], args.port)),
    )
    .await?;
    let (client_id, client_secret) = sandbox.ghl.oauth_client();
    println!("ghl-sync sandbox (seed {}) listening on {}", args.seed, sandbox.addr());
    println!();
    println!("Fake GHL      {}", sandbox.ghl_url());
    println!("Fake Lusha    {}   (header api_key: {})", sandbox.lusha_url(), sandbox.lusha.api_key());
    println!("Webhook sink  {}", sandbox.sink_url("NAME"));
    println!("OAuth client  id {client_id}  secret {client_secret}");
    println!("Webhook key   {}", sandbox.ghl.webhook_public_key());
    println!();
    println!("Locations (private integration tokens):");
    for location in sandbox.ghl.locations() {
        println!("  {}  {}  pit {}", location.id, location.name, location.pit);
    }
    println!();
    println!(
        "Admin: GET {0}__admin/ghl/stats | GET {0}__admin/ghl/state | POST {0}__admin/ghl/mutate {{\"count\":10}}",
        sandbox.ghl_url()
    );
    println!(
        "       GET {0}/__admin/ledger | GET {1}/__admin/deliveries",
        sandbox.lusha_url(),
        sandbox.sink_url("").as_str().trim_end_matches('/')
    );
    println!();
    println!("A config for the daemon:");
    println!("{}", sample_config(&sandbox));
    println!("Ctrl-C stops the sandbox.");
    tokio::signal::ctrl_c().await.context("Failed to wait for Ctrl-C")?;
    sandbox.stop().await;
    Ok(())
}

fn sample_config(sandbox: &Sandbox) -> String {
    let mut text = format!("[ghl]\nbase_url = \"{}\"\n", sandbox.ghl_url());
    text.push_str(&format!("[ghl.webhooks]\npublic_keys = [\"{}\"]\n", sandbox.ghl.webhook_public_key()));
    for location in sandbox.ghl.locations() {
        text.push_str(&format!("[[ghl.locations]]\nid = \"{}\"\npit = \"{}\"\n", location.id, location.pit));
    }
    text.push_str(&format!("[connectors.webhook.demo]\nurl = \"{}\"\n", sandbox.sink_url("demo")));
    text.push_str(&format!(
        "[connectors.lusha]\napi_key = \"{}\"\nbase_url = \"{}\"\n",
        sandbox.lusha.api_key(),
        sandbox.lusha_url()
    ));
    text
}

/// Options of `ghl-sync demo`.
#[derive(Debug, Clone)]
pub struct DemoArgs {
    pub contacts: usize,
    /// Stop after this long (None: until Ctrl-C).
    pub duration: Option<Duration>,
    /// Seconds between rounds of simulated user edits.
    pub edit_every: Duration,
    pub seed: u64,
}

/// Requests per 10 s the demo's fake GHL allows (real GHL: 100). Higher so the demo's
/// backfill finishes in a minute or two; the daemon is configured to the same limit.
const DEMO_BURST: u32 = 1_000;

/// Starts the sandbox, runs the real daemon against it, edits records like users do and
/// prints what flows, until Ctrl-C (or `duration`).
pub async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let ghl = GhlOptions {
        seed: args.seed,
        locations: 2,
        contacts_per_location: args.contacts,
        burst_max: DEMO_BURST,
        ..GhlOptions::default()
    };
    let sandbox = Sandbox::start(SandboxOptions { ghl, ..SandboxOptions::default() }, "127.0.0.1:0".parse()?).await?;
    let dir = tempfile_dir()?;
    let config = demo_config(&sandbox, &dir)?;
    let app = App::build(config).await?;
    let addr = app.server_addr().context("the demo's HTTP server did not start")?;
    sandbox.ghl.set_webhook_url(Some(url::Url::parse(&format!("http://{addr}/webhooks/ghl"))?));
    let store = app.store.clone();
    let app_config = app.config.clone();

    println!("ghl-sync demo: the real daemon against the built-in sandbox (nothing leaves this machine)");
    println!(
        "  fake GHL {}  ·  2 locations × {} contacts  ·  database {}",
        sandbox.ghl_url(),
        args.contacts,
        dir.display()
    );
    println!("  status page http://{addr}/   metrics http://{addr}/metrics");
    println!(
        "  simulated users edit contacts, tasks and notes every {}s; GHL webhooks hint the daemon",
        args.edit_every.as_secs()
    );
    println!("  Lusha (fake) enriches new contacts within a credit budget and imports 50 prospecting leads");
    println!(
        "  Lucky Orange: simulated site visitors are identified, visit, view pricing (a GHL task) and leave replay links"
    );
    println!("  insights http://{addr}/insights (admin token: demo)");
    println!("  Ctrl-C to stop");
    println!();

    let stop = CancellationToken::new();
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));
    let started = Instant::now();
    let mut edits = tokio::time::interval(args.edit_every);
    let mut report = tokio::time::interval(Duration::from_secs(2));
    let mut edited: usize = 0;
    let mut visitors = tokio::time::interval(Duration::from_secs(3));
    let mut visited: usize = 0;
    let config = app_config;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sleep_until_end(started, args.duration) => break,
            _ = edits.tick() => {
                if started.elapsed() > Duration::from_secs(5) {
                    edited += sandbox.ghl.mutate(None, 6).len();
                }
            }
            _ = report.tick() => print_line(&sandbox, &store, started, edited).await,
            _ = visitors.tick() => {
                if started.elapsed() > Duration::from_secs(8) {
                    simulate_visitor(&sandbox, &store, &config, addr, visited).await;
                    visited += 1;
                }
            }
        }
    }
    println!();
    println!("Stopping the daemon…");
    stop.cancel();
    match daemon.await {
        Ok(result) => result?,
        Err(error) => anyhow::bail!("the daemon task failed: {error}"),
    }
    print_line(&sandbox, &store_reopen(&dir).await?, started, edited).await;
    sandbox.stop().await;
    if let Err(error) = std::fs::remove_dir_all(&dir) {
        tracing::debug!(error = %error, "Could not remove the demo's temporary directory");
    }
    println!("Demo finished.");
    Ok(())
}

async fn sleep_until_end(started: Instant, duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration.saturating_sub(started.elapsed())).await,
        None => std::future::pending().await,
    }
}

async fn store_reopen(dir: &std::path::Path) -> anyhow::Result<crate::store::Store> {
    Ok(crate::store::Store::connect(&dir.join("ghl-sync.db"), Duration::from_secs(5)).await?)
}

/// One status line, read from the sandbox's counters and the daemon's store.
async fn print_line(sandbox: &Sandbox, store: &crate::store::Store, started: Instant, edited: usize) {
    let status = match crate::store::status::read(store, &[]).await {
        Ok(status) => status,
        Err(error) => {
            println!("[{:>4}s] status unavailable: {error}", started.elapsed().as_secs());
            return;
        }
    };
    println!("{}", demo_line(&status, &DemoCounters::read(sandbox, started, edited)));
}

/// What the sandbox saw, for the demo's line.
#[derive(Debug, Clone, Default)]
struct DemoCounters {
    elapsed_secs: u64,
    edited: usize,
    ghl_requests: u64,
    ghl_webhooks: u64,
    ghl_429s: u64,
    delivered_to_sink: usize,
    lusha_credits: i64,
    lusha_requests: u64,
    lusha_429s: u64,
}

impl DemoCounters {
    fn read(sandbox: &Sandbox, started: Instant, edited: usize) -> Self {
        let stats = sandbox.ghl.stats();
        let lusha = sandbox.lusha.stats();
        Self {
            elapsed_secs: started.elapsed().as_secs(),
            edited,
            ghl_requests: stats.requests.values().sum(),
            ghl_webhooks: stats.webhooks_sent,
            ghl_429s: stats.too_many_requests,
            delivered_to_sink: sandbox.sink.accepted(Some("demo")).len(),
            lusha_credits: sandbox.lusha.ledger().spent,
            lusha_requests: lusha.total_requests(),
            lusha_429s: lusha.rate_limited,
        }
    }
}

/// The demo's terminal line: the store's status next to the sandbox's own counters. Queues
/// are per connector (pending and dead letters of each).
fn demo_line(status: &crate::store::status::Status, c: &DemoCounters) -> String {
    let queues = if status.connectors.is_empty() {
        "none yet".to_owned()
    } else {
        status
            .connectors
            .iter()
            .map(|q| format!("{} pending {} dead {}", q.connector, q.pending, q.dead_letters))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (enriched, leads) = status.lusha.as_ref().map_or((0, 0), |l| (l.enriched_contacts, l.leads_imported));
    format!(
        "[{:>4}s] contacts synced {:>6} · tasks+notes {:>6} · delivered to webhook.demo {:>6} · queues: {queues} · \
         user edits {} · GHL requests {} · webhooks {} · 429s {} · \
         Lusha: enriched {enriched}, leads imported {leads}, credits {}, requests {}, 429s {}",
        c.elapsed_secs,
        status.totals.contacts,
        status.totals.children,
        c.delivered_to_sink,
        c.edited,
        c.ghl_requests,
        c.ghl_webhooks,
        c.ghl_429s,
        c.lusha_credits,
        c.lusha_requests,
        c.lusha_429s,
    )
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("ghl-sync-demo-{}-{}", std::process::id(), crate::store::now_ms()));
    std::fs::create_dir_all(&dir).with_context(|| format!("Failed to create {}", dir.display()))?;
    Ok(dir)
}

/// The simulated site of the demo's Lucky Orange visitors.
const DEMO_SITE: &str = "https://www.example.com";

/// One simulated site visitor, as the snippet in a browser would act: a contact clicks a
/// link with its token, is identified, reports a visit; every second one views pricing (a
/// journey event → a GHL task); every third one submits a form with a replay link.
async fn simulate_visitor(
    sandbox: &Sandbox,
    app_store: &crate::store::Store,
    config: &Config,
    addr: SocketAddr,
    n: usize,
) {
    use crate::http::{ApiClient, ApiRequest, ClientSettings, HeaderScheme, Method, RetryPolicy};
    let Some(keys) = crate::connectors::lucky_orange::token_keys(config) else { return };
    let Ok(contacts) = crate::store::snapshot::recent_contacts(app_store, 200).await else { return };
    if contacts.is_empty() {
        return;
    }
    let contact = &contacts[fastrand::usize(..contacts.len())];
    let token = keys.mint(&contact.contact_id, crate::store::now_ms() / 1000 + 3600);
    let Ok(client) = ApiClient::new(
        ClientSettings {
            service: "demo-site",
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy { max_retries: 0, ..RetryPolicy::default() },
            headers: HeaderScheme::None,
            user_agent: "ghl-sync demo visitor".to_owned(),
        },
        None,
        CancellationToken::new(),
    ) else {
        return;
    };
    let post = |path: &'static str, body: serde_json::Value| {
        let url = url::Url::parse(&format!("http://{addr}{path}"));
        let client = client.clone();
        async move {
            let Ok(url) = url else { return };
            if let Ok(request) = ApiRequest::new(Method::POST, url, path).header("origin", DEMO_SITE).json(&body) {
                let _answer = client.send(request).await;
            }
        }
    };
    post("/lo/identity", serde_json::json!({ "t": token })).await;
    let session = format!("demo-session-{n}");
    let visit = serde_json::json!({"t": token, "type": "visit", "page": "/", "visits": 1 + n % 5, "session": session});
    post("/lo/events", visit).await;
    if n.is_multiple_of(2) {
        post(
            "/lo/events",
            serde_json::json!({"t": token, "type": "event", "name": "pricing_viewed", "page": "/pricing"}),
        )
        .await;
    }
    if n.is_multiple_of(3) {
        let url = crate::connectors::lucky_orange::replay_url(&session);
        let field = serde_json::json!({"customFields": [{"key": "contact.lo_session_url", "field_value": url}]});
        sandbox.ghl.update_contact(&contact.contact_id, field);
    }
}

fn demo_config(sandbox: &Sandbox, dir: &std::path::Path) -> anyhow::Result<Config> {
    let mut settings = Settings::default();
    settings.store.path = Some(dir.join("ghl-sync.db"));
    settings.ghl.base_url = sandbox.ghl_url();
    settings.ghl.webhooks.public_keys = vec![sandbox.ghl.webhook_public_key()];
    settings.ghl.locations = sandbox
        .ghl
        .locations()
        .into_iter()
        .map(|l| LocationSettings {
            id: l.id,
            name: Some(l.name),
            auth: LocationAuth::Pit,
            pit: Some(Secret::new(l.pit)),
            pit_env: None,
            pit_file: None,
            enabled: true,
        })
        .collect();
    settings.limits.ghl_burst_max = DEMO_BURST;
    settings.sync.contacts_interval = Dur::secs(5);
    settings.sync.overlap = Dur::secs(30);
    settings.sync.index_lag_margin = Dur::secs(2);
    settings.sync.dirty_debounce = Dur::millis(200);
    settings.server.listen = "127.0.0.1:0".parse()?;
    // The admin views (contact view, insights) on the loopback-only demo.
    settings.server.admin_token = Some(Secret::new("demo".to_owned()));
    settings.log.level = "warn".to_owned();
    let hook: config::WebhookConnectorSettings = toml::from_str(&format!("url = \"{}\"", sandbox.sink_url("demo")))?;
    settings.connectors.webhook.insert("demo".to_owned(), hook);
    // Lusha: enrichment of every contact (credit-safe) and a prospecting search whose leads
    // become contacts of the first location.
    let first = settings.ghl.locations.first().map(|l| l.id.clone()).unwrap_or_default();
    let lusha: config::LushaSettings = toml::from_str(&format!(
        "api_key = \"{key}\"\nbase_url = \"{url}\"\ndaily_credit_cap = 0\nusage_interval = \"15s\"\n\
         [[leads]]\nname = \"demo-leads\"\nlocation = \"{first}\"\ninterval = \"15s\"\n\
         task = {{ title = \"Call {{firstName}} ({{jobTitle}} at {{company}})\", due_in = \"1d\" }}\n",
        key = sandbox.lusha.api_key(),
        url = sandbox.lusha_url(),
    ))?;
    settings.connectors.lusha = Some(lusha);
    // Lucky Orange: the identity bridge, with simulated site visitors (see `simulate_visitor`).
    let key: String = (0..48).map(|_| fastrand::alphanumeric()).collect();
    let lucky_orange: config::LuckyOrangeSettings = toml::from_str(&format!(
        "site_id = \"demo-site\"\nallowed_origins = [\"{DEMO_SITE}\"]\nkey = \"{key}\"\nmint_interval = \"15s\"\n\
         max_mints_per_pass = 50\nrate_limit_per_minute = 600\nvisit_throttle = \"30s\"\n\
         visit_fields = {{ last_seen = \"contact.lo_last_seen\", visits = \"contact.lo_visits\", last_page = \"contact.lo_last_page\" }}\n\
         [events.pricing_viewed]\ntask = {{ title = \"Follow up: {{name}} viewed {{page}}\", due_in = \"1d\" }}\ntag = \"lo:pricing\"\n"
    ))?;
    settings.connectors.lucky_orange = Some(lucky_orange);
    Config::from_settings(settings).map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::status::{ConnectorStatus, Status, StoreHealth, Totals};

    fn queue(connector: &str, pending: i64, dead_letters: i64) -> ConnectorStatus {
        ConnectorStatus {
            connector: connector.into(),
            pending,
            retrying: 0,
            oldest_pending_at: None,
            oldest_pending_age_secs: None,
            delivered: 0,
            delivered_last_hour: 0,
            dead_letters,
            last_error: None,
        }
    }

    #[test]
    fn the_demo_line_shows_pending_per_connector_not_one_total() {
        let status = Status {
            generated_at: 0,
            day: "1970-01-01".into(),
            store: StoreHealth { writable: true, failing: None, last_write_ok_at: None },
            locations: Vec::new(),
            connectors: vec![queue("lusha", 7, 1), queue("webhook.demo", 3, 0)],
            unattributed_dead_letters: Vec::new(),
            totals: Totals { contacts: 10, children: 4, dirty: 0, pending: 10, dead_letters: 1 },
            deliveries_per_minute: vec![0; 60],
            recent_errors: Vec::new(),
            lusha: None,
            incidents: Vec::new(),
            replicas: Vec::new(),
            leases: Vec::new(),
        };
        let line = demo_line(&status, &DemoCounters { delivered_to_sink: 5, ..DemoCounters::default() });
        assert!(line.contains("queues: lusha pending 7 dead 1, webhook.demo pending 3 dead 0"), "{line}");
        assert!(line.contains("delivered to webhook.demo      5"), "{line}");
        assert!(!line.contains("pending 10"), "no total next to one connector: {line}");
    }
}
