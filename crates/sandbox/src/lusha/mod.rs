//! Fake Lusha V3 API (see `reference/lusha.md` §10): auth by `api_key` header, batched
//! search / enrich / search-and-enrich with a per-account credit ledger that never charges
//! twice for the same revealed datapoint, prospecting, account usage, the nine rate-limit
//! headers on every response, 429s per minute / hour / day window (no `Retry-After`), 402 when
//! the balance cannot cover a call, and injectable faults.
//!
//! Routes (relative to the `/lusha` nest):
//! - `POST /v3/contacts/search`, `POST /v3/contacts/enrich`, `POST /v3/contacts/search-and-enrich`,
//!   `POST /v3/contacts/prospecting`, `GET /v3/account/usage`
//! - admin (no auth, no rate limit): `GET /__admin/ledger`, `POST /__admin/ledger/reset`
//!   (`{"forgetReveals":true}` optional), `POST /__admin/credits {"balance":n}`,
//!   `GET /__admin/stats`, `POST /__admin/leads` (array of leads, or `{"leads":[…]}`),
//!   `POST /__admin/faults {"route":"contacts/search","fault":{…}}`, `DELETE /__admin/faults`,
//!   `POST /__admin/rate-limits/reset`, `POST /__admin/reset` (everything),
//!   `GET /__admin/lookup?email=…` (what an email resolves to).
//!
//! Persons are a pure function of the normalised identity and the seed ([`people`]).

pub mod people;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use people::{Identity, Lookup, Person, RevealKind};

/// Start-up options of the fake Lusha.
#[derive(Debug, Clone)]
pub struct LushaOptions {
    /// Expected value of the `api_key` header. Default `sandbox-lusha-key`.
    pub api_key: String,
    /// Starting credit balance. Default 10 000.
    pub credits: i64,
    /// Requests per rolling minute (0 = unlimited). Default 600.
    pub per_minute: u32,
    /// Requests per rolling hour (0 = unlimited). Default 20 000.
    pub per_hour: u32,
    /// Requests per rolling day (0 = unlimited). Default 100 000.
    pub per_day: u32,
    /// Extra per-minute limit on `GET /v3/account/usage` (0 = unlimited). Default 5, as Lusha.
    pub usage_per_minute: u32,
    /// Lifetime request cap of a trial account; past it every call gets the "trial limit" 429.
    /// Default `None`.
    pub trial_limit: Option<u64>,
    /// Seed of the synthetic database and of every random choice. Default 42.
    pub seed: u64,
    /// Number of generated prospecting leads. Default 50.
    pub prospecting_leads: usize,
    /// Credits per successful search result (`api_search`). Default 1.
    pub search_credits: i64,
    /// Credits per revealed email. Default 1.
    pub email_credits: i64,
    /// Credits per revealed phone. Default 5.
    pub phone_credits: i64,
}

impl Default for LushaOptions {
    fn default() -> Self {
        Self {
            api_key: "sandbox-lusha-key".to_owned(),
            credits: 10_000,
            per_minute: 600,
            per_hour: 20_000,
            per_day: 100_000,
            usage_per_minute: 5,
            trial_limit: None,
            seed: 42,
            prospecting_leads: 50,
            search_credits: 1,
            email_credits: 1,
            phone_credits: 5,
        }
    }
}

/// One credit charge in the ledger. Re-reveals (free) are not listed, only counted in
/// [`Ledger::free_reveals`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charge {
    /// Lusha person id.
    pub person_id: String,
    /// `search`, `email` or `phone`.
    pub kind: String,
    /// Credits taken.
    pub credits: i64,
    /// The revealed value (`email:<addr>` / `phone:<number>`); `None` for searches.
    pub datapoint: Option<String>,
    /// Route that charged (`contacts/search`, `contacts/enrich`, …).
    pub route: String,
}

/// The account's credit ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ledger {
    /// Credits left.
    pub balance: i64,
    /// Credits spent since start or the last reset.
    pub spent: i64,
    /// Datapoints returned for free because they were already revealed by this account.
    pub free_reveals: u64,
    /// Every paid charge, oldest first.
    pub charges: Vec<Charge>,
}

impl Ledger {
    /// Sum of charges of one kind (`search`, `email`, `phone`).
    pub fn spent_on(&self, kind: &str) -> i64 {
        self.charges.iter().filter(|charge| charge.kind == kind).map(|charge| charge.credits).sum()
    }
}

/// Request counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LushaStats {
    /// Requests per route (`contacts/search`, …), including rejected ones.
    pub requests: BTreeMap<String, u64>,
    /// Responses per status code.
    pub statuses: BTreeMap<u16, u64>,
    /// 429s served.
    pub rate_limited: u64,
    /// 402s served.
    pub payment_required: u64,
    /// 401s served.
    pub unauthorized: u64,
    /// 400s served.
    pub bad_requests: u64,
    /// Injected faults that fired.
    pub faults_fired: u64,
}

impl LushaStats {
    /// Requests seen on one route (`contacts/search`, `contacts/enrich`, …).
    pub fn requests_to(&self, route: &str) -> u64 {
        self.requests.get(route).copied().unwrap_or(0)
    }

    /// Requests seen on all API routes.
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }
}

/// A fault injected on a route.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer `status` (e.g. 500/502/503) with probability `rate` (0.0–1.0, deterministic RNG)
    /// before doing anything; nothing is charged.
    Error {
        /// HTTP status to answer.
        status: u16,
        /// Probability per request.
        rate: f64,
    },
    /// Wait this long, then process normally.
    Latency(Duration),
    /// Wait this long without charging, then answer 504 (set it longer than the client
    /// timeout to simulate a hung socket).
    Hang(Duration),
    /// Process and charge the ledger, then wait this long before answering normally (a client
    /// with a shorter timeout never sees the answer but has paid).
    HangAfterCharge(Duration),
    /// Process and charge, then answer 499.
    ClientClosedAfterCharge,
    /// Process and charge, then answer 200 with a truncated JSON body.
    Malformed,
}

/// The API routes, by the names used in stats, charges and faults.
const ROUTES: &[&str] =
    &["contacts/search", "contacts/enrich", "contacts/search-and-enrich", "contacts/prospecting", "account/usage"];

/// Normalises a route name for [`FakeLusha::set_fault`]: accepts `contacts/search`,
/// `/v3/contacts/search`, `/lusha/v3/contacts/search`, `search`, `usage`, `*`.
fn normalize_route(route: &str) -> String {
    let trimmed = route.trim().trim_start_matches('/');
    let trimmed = trimmed.strip_prefix("lusha/").unwrap_or(trimmed);
    let trimmed = trimmed.strip_prefix("v3/").unwrap_or(trimmed);
    match trimmed {
        "search" | "enrich" | "search-and-enrich" | "prospecting" => format!("contacts/{trimmed}"),
        "usage" => "account/usage".to_owned(),
        other => other.to_owned(),
    }
}

struct Window {
    length: Duration,
    started: Option<Instant>,
    count: u32,
}

impl Window {
    fn new(length: Duration) -> Self {
        Self { length, started: None, count: 0 }
    }

    fn roll(&mut self, now: Instant) {
        if let Some(started) = self.started
            && now >= started + self.length
        {
            self.started = None;
            self.count = 0;
        }
    }

    fn hit(&mut self, now: Instant) {
        if self.started.is_none() {
            self.started = Some(now);
        }
        self.count = self.count.saturating_add(1);
    }

    fn resets_in(&self, now: Instant) -> Duration {
        self.started.map(|started| (started + self.length).saturating_duration_since(now)).unwrap_or(self.length)
    }

    fn full(&self, limit: u32) -> bool {
        limit > 0 && self.count >= limit
    }
}

struct LushaState {
    options: LushaOptions,
    balance: i64,
    spent: i64,
    free_reveals: u64,
    charges: Vec<Charge>,
    /// (person id, datapoint key) pairs this account has paid for.
    revealed: HashSet<(String, String)>,
    /// Every person id handed out → person.
    registry: HashMap<String, Person>,
    /// Identity key → person, for added leads (searchable by email / LinkedIn).
    overrides: HashMap<String, Person>,
    /// Prospecting order.
    leads: Vec<String>,
    minute: Window,
    hour: Window,
    day: Window,
    usage_minute: Window,
    lifetime: u64,
    stats: LushaStats,
    faults: HashMap<String, Fault>,
    rng: fastrand::Rng,
    request_seq: u64,
}

impl LushaState {
    fn new(options: LushaOptions) -> Self {
        let mut state = Self {
            balance: options.credits,
            spent: 0,
            free_reveals: 0,
            charges: Vec::new(),
            revealed: HashSet::new(),
            registry: HashMap::new(),
            overrides: HashMap::new(),
            leads: Vec::new(),
            minute: Window::new(Duration::from_secs(60)),
            hour: Window::new(Duration::from_secs(3600)),
            day: Window::new(Duration::from_secs(86_400)),
            usage_minute: Window::new(Duration::from_secs(60)),
            lifetime: 0,
            stats: LushaStats::default(),
            faults: HashMap::new(),
            rng: fastrand::Rng::with_seed(options.seed),
            request_seq: 0,
            options,
        };
        for index in 0..state.options.prospecting_leads {
            let person = people::lead(state.options.seed, index);
            state.add_person(person, true);
        }
        state
    }

    fn add_person(&mut self, person: Person, as_lead: bool) {
        for email in &person.emails {
            self.overrides.insert(Identity::email(email.email.clone()).key(), person.clone());
        }
        self.overrides.insert(Identity::linkedin(person.linkedin_url.clone()).key(), person.clone());
        if as_lead && !self.leads.contains(&person.id) {
            self.leads.push(person.id.clone());
        }
        self.registry.insert(person.id.clone(), person);
    }

    fn lookup(&mut self, identity: &Identity) -> Lookup {
        if let Identity::Id(id) = identity {
            return match self.registry.get(id.trim()) {
                Some(person) => Lookup::Found(Box::new(person.clone())),
                None => Lookup::NotFound { dropped: false },
            };
        }
        if let Some(person) = self.overrides.get(&identity.key()) {
            return Lookup::Found(Box::new(person.clone()));
        }
        let result = people::lookup(self.options.seed, identity);
        if let Lookup::Found(person) = &result {
            self.registry.entry(person.id.clone()).or_insert_with(|| (**person).clone());
        }
        result
    }

    fn price(&self, kind: RevealKind) -> i64 {
        match kind {
            RevealKind::Emails => self.options.email_credits,
            RevealKind::Phones => self.options.phone_credits,
        }
    }

    /// Credits a reveal of `kind` would cost now, given `pending` reveals of this request.
    fn reveal_cost(&self, person: &Person, kind: RevealKind, pending: &HashSet<(String, String)>) -> i64 {
        person
            .datapoints(kind)
            .into_iter()
            .filter(|point| {
                let pair = (person.id.clone(), point.clone());
                !self.revealed.contains(&pair) && !pending.contains(&pair)
            })
            .count() as i64
            * self.price(kind)
    }

    fn can_reveal(&self, person: &Person) -> Value {
        let none = HashSet::new();
        Value::Array(
            [RevealKind::Emails, RevealKind::Phones]
                .into_iter()
                .filter(|kind| person.has(*kind))
                .map(|kind| json!({"field": kind.as_str(), "credits": self.reveal_cost(person, kind, &none)}))
                .collect(),
        )
    }

    fn preview(&self, person: &Person) -> serde_json::Map<String, Value> {
        let mut map = person.base_json();
        let has: Vec<&str> = [RevealKind::Emails, RevealKind::Phones]
            .into_iter()
            .filter(|kind| person.has(*kind))
            .map(RevealKind::as_str)
            .collect();
        map.insert("has".to_owned(), json!(has));
        map.insert("canReveal".to_owned(), self.can_reveal(person));
        map.insert("signalTypes".to_owned(), json!([]));
        map
    }

    fn rate_headers(&self) -> Vec<(&'static str, String)> {
        let o = &self.options;
        let left = |limit: u32, used: u32| limit.saturating_sub(used).to_string();
        vec![
            ("x-rate-limit-daily", o.per_day.to_string()),
            ("x-daily-requests-left", left(o.per_day, self.day.count)),
            ("x-daily-usage", self.day.count.to_string()),
            ("x-rate-limit-hourly", o.per_hour.to_string()),
            ("x-hourly-requests-left", left(o.per_hour, self.hour.count)),
            ("x-hourly-usage", self.hour.count.to_string()),
            ("x-rate-limit-minute", o.per_minute.to_string()),
            ("x-minute-requests-left", left(o.per_minute, self.minute.count)),
            ("x-minute-usage", self.minute.count.to_string()),
        ]
    }

    fn window_json(&self, window: &Window, limit: u32, now: Instant) -> Value {
        let resets_at = time::OffsetDateTime::now_utc()
            + time::Duration::try_from(window.resets_in(now)).unwrap_or(time::Duration::ZERO);
        let resets_at = resets_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        json!({
            "limit": limit,
            "used": window.count,
            "remaining": limit.saturating_sub(window.count),
            "resetsAt": resets_at,
        })
    }

    fn next_request_id(&mut self) -> String {
        self.request_seq += 1;
        format!("sandbox-req-{:08}", self.request_seq)
    }

    fn charge(&mut self, person_id: &str, kind: &str, credits: i64, datapoint: Option<String>, route: &str) {
        self.balance -= credits;
        self.spent += credits;
        self.charges.push(Charge {
            person_id: person_id.to_owned(),
            kind: kind.to_owned(),
            credits,
            datapoint,
            route: route.to_owned(),
        });
    }

    /// Reveals `kinds` of `person` into `map`, charging unrevealed datapoints.
    fn reveal_into(
        &mut self,
        person: &Person,
        kinds: &[RevealKind],
        route: &str,
        map: &mut serde_json::Map<String, Value>,
    ) {
        for &kind in kinds {
            for point in person.datapoints(kind) {
                let pair = (person.id.clone(), point.clone());
                if self.revealed.contains(&pair) {
                    self.free_reveals += 1;
                } else {
                    let price = self.price(kind);
                    self.charge(&person.id, kind.charge_kind(), price, Some(point), route);
                    self.revealed.insert(pair);
                }
            }
            let value = match kind {
                RevealKind::Emails => person.emails_json(),
                RevealKind::Phones => person.phones_json(),
            };
            map.insert(kind.as_str().to_owned(), value);
        }
    }
}

/// A finished answer, computed under the lock; the async part only sleeps and sends.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    delay: Option<Duration>,
}

fn error_body(status: StatusCode, message: Value) -> Vec<u8> {
    let body = json!({
        "statusCode": status.as_u16(),
        "message": message,
        "error": status.canonical_reason().unwrap_or("Error"),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Fake Lusha. Cheap to clone; all clones share state (an `Arc<Mutex<_>>` never held across
/// an `.await`).
#[derive(Clone)]
pub struct FakeLusha {
    state: Arc<Mutex<LushaState>>,
}

impl FakeLusha {
    /// Creates the fake with a fresh ledger and the generated prospecting leads.
    pub fn new(options: LushaOptions) -> Self {
        Self { state: Arc::new(Mutex::new(LushaState::new(options))) }
    }

    fn lock(&self) -> MutexGuard<'_, LushaState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The axum router to nest under `/lusha`.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/v3/contacts/search", post(api_search))
            .route("/v3/contacts/enrich", post(api_enrich))
            .route("/v3/contacts/search-and-enrich", post(api_search_and_enrich))
            .route("/v3/contacts/prospecting", post(api_prospecting))
            .route("/v3/account/usage", get(api_usage))
            .route("/__admin/ledger", get(admin_ledger))
            .route("/__admin/ledger/reset", post(admin_ledger_reset))
            .route("/__admin/credits", post(admin_credits))
            .route("/__admin/stats", get(admin_stats))
            .route("/__admin/leads", post(admin_leads))
            .route("/__admin/faults", post(admin_fault).delete(admin_clear_faults))
            .route("/__admin/rate-limits/reset", post(admin_rate_reset))
            .route("/__admin/reset", post(admin_reset))
            .route("/__admin/lookup", get(admin_lookup))
            .fallback(not_found)
            .with_state(self.clone())
    }

    /// The API key the fake expects in the `api_key` header.
    pub fn api_key(&self) -> String {
        self.lock().options.api_key.clone()
    }

    /// A snapshot of the credit ledger.
    pub fn ledger(&self) -> Ledger {
        let state = self.lock();
        Ledger {
            balance: state.balance,
            spent: state.spent,
            free_reveals: state.free_reveals,
            charges: state.charges.clone(),
        }
    }

    /// Sets the credit balance (e.g. 0 to provoke 402s).
    pub fn set_credits(&self, balance: i64) {
        self.lock().balance = balance;
    }

    /// Restores the starting balance and clears spent credits and charges. The account's
    /// reveal history is **kept** (re-reveals stay free, as on the real account); use
    /// [`FakeLusha::forget_reveals`] or [`FakeLusha::reset`] to clear it too.
    pub fn reset_ledger(&self) {
        let mut state = self.lock();
        state.balance = state.options.credits;
        state.spent = 0;
        state.free_reveals = 0;
        state.charges.clear();
    }

    /// Forgets which datapoints this account revealed (the next reveal is paid again).
    pub fn forget_reveals(&self) {
        self.lock().revealed.clear();
    }

    /// Resets everything but the person registry and leads: ledger, reveals, stats, rate-limit
    /// windows, faults.
    pub fn reset(&self) {
        self.reset_ledger();
        self.forget_reveals();
        self.reset_rate_limits();
        self.clear_faults();
        self.lock().stats = LushaStats::default();
    }

    /// Empties the minute / hour / day (and usage, trial) windows.
    pub fn reset_rate_limits(&self) {
        let mut guard = self.lock();
        let state = &mut *guard;
        for window in [&mut state.minute, &mut state.hour, &mut state.day, &mut state.usage_minute] {
            window.started = None;
            window.count = 0;
        }
        state.lifetime = 0;
    }

    /// Changes the rate limits (0 = unlimited) without restarting.
    pub fn set_limits(&self, per_minute: u32, per_hour: u32, per_day: u32) {
        let mut state = self.lock();
        state.options.per_minute = per_minute;
        state.options.per_hour = per_hour;
        state.options.per_day = per_day;
    }

    /// A snapshot of the request counters.
    pub fn stats(&self) -> LushaStats {
        self.lock().stats.clone()
    }

    /// What an identity resolves to (registers found persons so their ids can be enriched).
    pub fn lookup(&self, identity: &Identity) -> Lookup {
        self.lock().lookup(identity)
    }

    /// `count` emails of the form `test.sample<i>@example.test` whose lookup satisfies
    /// `predicate` — handy to build fixtures of found / EU / restricted / not-found contacts.
    pub fn sample_emails(&self, count: usize, predicate: impl Fn(&Lookup) -> bool) -> Vec<String> {
        let seed = self.lock().options.seed;
        (0..100_000)
            .map(|index| format!("test.sample{index}@example.test"))
            .filter(|email| predicate(&people::lookup(seed, &Identity::email(email.clone()))))
            .take(count)
            .collect()
    }

    /// Credits a call would charge **now** for these identities: `with_search` adds
    /// `api_search` per found person (search / search-and-enrich), `reveal` lists the kinds
    /// revealed (`"emails"`, `"phones"`; empty for a plain search). Already revealed
    /// datapoints cost 0. `Identity::Id` is priced without the search part.
    pub fn predict_cost(&self, identities: &[Identity], reveal: &[&str], with_search: bool) -> i64 {
        let kinds: Vec<RevealKind> = reveal.iter().filter_map(|k| RevealKind::parse(k)).collect();
        let mut state = self.lock();
        let mut pending = HashSet::new();
        let mut total = 0;
        for identity in identities {
            let Lookup::Found(person) = state.lookup(identity) else {
                continue;
            };
            if with_search && !matches!(identity, Identity::Id(_)) {
                total += state.options.search_credits;
            }
            for &kind in &kinds {
                total += state.reveal_cost(&person, kind, &pending);
                for point in person.datapoints(kind) {
                    pending.insert((person.id.clone(), point));
                }
            }
        }
        total
    }

    /// Adds prospecting leads (see [`people::from_lead_json`] for the accepted fields); they
    /// are also findable by email / LinkedIn URL and enrichable by id. Returns their ids.
    pub fn add_leads(&self, leads: Vec<Value>) -> Vec<String> {
        let mut state = self.lock();
        let seed = state.options.seed;
        leads
            .iter()
            .map(|lead| {
                let person = people::from_lead_json(seed, lead);
                let id = person.id.clone();
                state.add_person(person, true);
                id
            })
            .collect()
    }

    /// Ids of all prospecting leads, in paging order.
    pub fn lead_ids(&self) -> Vec<String> {
        self.lock().leads.clone()
    }

    /// Injects a fault on a route (`contacts/search`, `search`, `/v3/contacts/enrich`,
    /// `usage`, … or `*` for every API route). Replaces any previous fault on that route.
    pub fn set_fault(&self, route: &str, fault: Fault) {
        self.lock().faults.insert(normalize_route(route), fault);
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// The sync core of every API call: auth, rate limits, faults, validation, ledger.
    fn process(&self, route: &'static str, headers: &HeaderMap, body: &[u8]) -> Answer {
        let mut state = self.lock();
        let answer = self.process_locked(&mut state, route, headers, body);
        *state.stats.statuses.entry(answer.status.as_u16()).or_default() += 1;
        match answer.status.as_u16() {
            400 => state.stats.bad_requests += 1,
            401 => state.stats.unauthorized += 1,
            402 => state.stats.payment_required += 1,
            429 => state.stats.rate_limited += 1,
            _ => {}
        }
        answer
    }

    fn process_locked(&self, state: &mut LushaState, route: &'static str, headers: &HeaderMap, body: &[u8]) -> Answer {
        *state.stats.requests.entry(route.to_owned()).or_default() += 1;
        let now = Instant::now();
        for window in [&mut state.minute, &mut state.hour, &mut state.day, &mut state.usage_minute] {
            window.roll(now);
        }
        let reply = |state: &LushaState, status: StatusCode, body: Vec<u8>| Answer {
            status,
            body,
            headers: state.rate_headers(),
            delay: None,
        };

        // Auth.
        let key = headers.get("api_key").and_then(|v| v.to_str().ok());
        match key {
            None => {
                let body = error_body(StatusCode::UNAUTHORIZED, json!("No API key found in request"));
                return reply(state, StatusCode::UNAUTHORIZED, body);
            }
            Some(key) if key != state.options.api_key => {
                let body = error_body(StatusCode::UNAUTHORIZED, json!("Invalid API key"));
                return reply(state, StatusCode::UNAUTHORIZED, body);
            }
            Some(_) => {}
        }

        // Rate limits: trial, then day, hour, minute (most severe first).
        let o = state.options.clone();
        let limited = if o.trial_limit.is_some_and(|limit| state.lifetime >= limit) {
            Some("You've reached your trial limit, please contact support for upgrade".to_owned())
        } else if state.day.full(o.per_day) {
            Some(format!("Daily API quota limit exceeded. Limit {} calls per day", o.per_day))
        } else if state.hour.full(o.per_hour) {
            Some(format!(
                "Hourly API rate limit exceeded. Limit: {} calls per hour. Reset in {} seconds",
                o.per_hour,
                state.hour.resets_in(now).as_secs().max(1)
            ))
        } else if state.minute.full(o.per_minute)
            || (route == "account/usage" && state.usage_minute.full(o.usage_per_minute))
        {
            Some("API rate limit exceeded".to_owned())
        } else {
            None
        };
        if let Some(message) = limited {
            let body = error_body(StatusCode::TOO_MANY_REQUESTS, json!(message));
            return reply(state, StatusCode::TOO_MANY_REQUESTS, body);
        }
        state.minute.hit(now);
        state.hour.hit(now);
        state.day.hit(now);
        if route == "account/usage" {
            state.usage_minute.hit(now);
        }
        state.lifetime += 1;

        // Faults.
        let fault = state.faults.get(route).or_else(|| state.faults.get("*")).cloned();
        let mut delay = None;
        let mut after = None;
        match fault {
            Some(Fault::Error { status, rate }) if state.rng.f64() < rate => {
                state.stats.faults_fired += 1;
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let message = status.canonical_reason().unwrap_or("Server error");
                return reply(state, status, error_body(status, json!(message)));
            }
            Some(Fault::Error { .. }) => {}
            Some(Fault::Hang(duration)) => {
                state.stats.faults_fired += 1;
                let mut answer = reply(
                    state,
                    StatusCode::GATEWAY_TIMEOUT,
                    error_body(StatusCode::GATEWAY_TIMEOUT, json!("Gateway Timeout")),
                );
                answer.delay = Some(duration);
                return answer;
            }
            Some(Fault::Latency(duration)) => {
                state.stats.faults_fired += 1;
                delay = Some(duration);
            }
            Some(other) => {
                state.stats.faults_fired += 1;
                after = Some(other);
            }
            None => {}
        }

        // Work.
        let parsed = if route == "account/usage" {
            Ok(Value::Null)
        } else {
            serde_json::from_slice::<Value>(body)
                .map_err(|error| vec![format!("Request body is not valid JSON: {error}")])
        };
        let result: Handling = match parsed {
            Err(violations) => Err(violations),
            Ok(request) => match route {
                "contacts/search" => contacts_search(state, &request, false),
                "contacts/search-and-enrich" => contacts_search(state, &request, true),
                "contacts/enrich" => contacts_enrich(state, &request),
                "contacts/prospecting" => contacts_prospecting(state, &request),
                _ => Ok(account_usage(state, now)),
            },
        };
        let mut answer = match result {
            Ok(Handled::Json(value)) => reply(state, StatusCode::OK, serde_json::to_vec(&value).unwrap_or_default()),
            Ok(Handled::Payment(message)) => {
                reply(state, StatusCode::PAYMENT_REQUIRED, error_body(StatusCode::PAYMENT_REQUIRED, json!(message)))
            }
            Err(violations) => {
                reply(state, StatusCode::BAD_REQUEST, error_body(StatusCode::BAD_REQUEST, json!(violations)))
            }
        };
        answer.delay = delay;
        if answer.status == StatusCode::OK {
            match after {
                Some(Fault::HangAfterCharge(duration)) => answer.delay = Some(duration),
                Some(Fault::ClientClosedAfterCharge) => {
                    answer.status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
                    answer.body = serde_json::to_vec(&json!({
                        "statusCode": 499, "message": "Client Closed Request"
                    }))
                    .unwrap_or_default();
                }
                Some(Fault::Malformed) => {
                    let cut = answer.body.len() / 2;
                    answer.body.truncate(cut);
                    answer.body.extend_from_slice(b"\",,");
                }
                _ => {}
            }
        }
        answer
    }
}

enum Handled {
    Json(Value),
    Payment(String),
}

type Handling = Result<Handled, Vec<String>>;

fn parse_reveal(request: &Value) -> Result<Vec<RevealKind>, Vec<String>> {
    match request.get("reveal") {
        None | Some(Value::Null) => Ok(vec![RevealKind::Emails, RevealKind::Phones]),
        Some(Value::Array(items)) if items.is_empty() => {
            Err(vec!["reveal must contain at least 1 elements".to_owned()])
        }
        Some(Value::Array(items)) => {
            let mut kinds = Vec::new();
            let mut errors = Vec::new();
            for item in items {
                match item.as_str().and_then(RevealKind::parse) {
                    Some(kind) if !kinds.contains(&kind) => kinds.push(kind),
                    Some(_) => {}
                    None => errors.push(format!(
                        "each value in reveal must be one of the following values: emails, phones (got {item})"
                    )),
                }
            }
            if errors.is_empty() { Ok(kinds) } else { Err(errors) }
        }
        Some(_) => Err(vec!["reveal must be an array".to_owned()]),
    }
}

fn batch<'a>(request: &'a Value, field: &str) -> Result<&'a Vec<Value>, Vec<String>> {
    match request.get(field) {
        Some(Value::Array(items)) if (1..=100).contains(&items.len()) => Ok(items),
        Some(Value::Array(_)) => Err(vec![format!("{field} must contain between 1 and 100 items")]),
        _ => Err(vec![format!("{field} must be an array of 1 to 100 items")]),
    }
}

fn non_empty_str<'a>(item: &'a Value, field: &str) -> Option<&'a str> {
    item.get(field).and_then(Value::as_str).filter(|text| !text.trim().is_empty())
}

fn parse_identity(index: usize, item: &Value) -> Result<Identity, String> {
    if !item.is_object() {
        return Err(format!("contacts.{index} must be an object"));
    }
    if let Some(id) = item.get("id") {
        return match id.as_str() {
            Some(id) if !id.trim().is_empty() => Ok(Identity::Id(id.to_owned())),
            _ => Err(format!("contacts.{index}.id must be a string")),
        };
    }
    if let Some(url) = non_empty_str(item, "linkedinUrl") {
        return Ok(Identity::linkedin(url));
    }
    if let Some(email) = item.get("email") {
        return match email.as_str() {
            Some(email) if email.contains('@') && !email.trim().starts_with('@') => Ok(Identity::email(email)),
            _ => Err(format!("contacts.{index}.email must be an email")),
        };
    }
    let first = non_empty_str(item, "firstName");
    let last = non_empty_str(item, "lastName");
    let company = non_empty_str(item, "companyDomain").or_else(|| non_empty_str(item, "companyName"));
    match (first, last, company) {
        (Some(first), Some(last), Some(company)) => Ok(Identity::name(first, last, company)),
        _ => Err(format!(
            "contacts.{index} must have an identifier: id, linkedinUrl, email, or firstName + lastName + companyName|companyDomain"
        )),
    }
}

/// Shuffles deterministically (per seed and request body) and guarantees that a batch of two
/// or more does not come back in input order.
fn shuffle_results(seed: u64, request: &Value, results: &mut [(usize, Value)]) {
    let words = people::digest(seed, &request.to_string());
    let mut rng = fastrand::Rng::with_seed(words[0]);
    rng.shuffle(results);
    if results.len() >= 2 && results.windows(2).all(|pair| pair[0].0 < pair[1].0) {
        results.rotate_left(1);
    }
}

fn item_error(reference: Option<&Value>, code: &str, message: &str) -> Value {
    let mut map = serde_json::Map::new();
    if let Some(reference) = reference {
        map.insert("clientReferenceId".to_owned(), reference.clone());
    }
    map.insert("error".to_owned(), json!({"code": code, "message": message}));
    Value::Object(map)
}

fn contacts_search(state: &mut LushaState, request: &Value, enrich: bool) -> Handling {
    let route = if enrich { "contacts/search-and-enrich" } else { "contacts/search" };
    let items = batch(request, "contacts")?;
    let kinds = if enrich { parse_reveal(request)? } else { Vec::new() };
    let mut errors = Vec::new();
    let mut identities = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match parse_identity(index, item) {
            Ok(identity) => identities.push(identity),
            Err(error) => errors.push(error),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    // Resolve and price before touching the ledger.
    let lookups: Vec<Lookup> = identities.iter().map(|i| state.lookup(i)).collect();
    let mut cost = 0;
    let mut pending = HashSet::new();
    for lookup in &lookups {
        if let Lookup::Found(person) = lookup {
            cost += state.options.search_credits;
            for &kind in &kinds {
                cost += state.reveal_cost(person, kind, &pending);
                for point in person.datapoints(kind) {
                    pending.insert((person.id.clone(), point));
                }
            }
        }
    }
    if cost > state.balance {
        return Ok(Handled::Payment(format!(
            "Insufficient credits: this request needs {cost} credits, {} remaining",
            state.balance.max(0)
        )));
    }

    let before = state.spent;
    let mut results = Vec::new();
    let mut returned = 0;
    for (index, (item, lookup)) in items.iter().zip(lookups).enumerate() {
        let reference = item.get("clientReferenceId");
        match lookup {
            Lookup::Found(person) => {
                let search_credits = state.options.search_credits;
                state.charge(&person.id, "search", search_credits, None, route);
                let mut map = serde_json::Map::new();
                if let Some(reference) = reference {
                    map.insert("clientReferenceId".to_owned(), reference.clone());
                }
                state.reveal_into(&person, &kinds, route, &mut map);
                map.extend(state.preview(&person));
                if enrich {
                    map.insert("tags".to_owned(), json!([]));
                    map.insert("previousEmployment".to_owned(), json!([]));
                }
                returned += 1;
                results.push((index, Value::Object(map)));
            }
            Lookup::ComplianceRestricted => results.push((
                index,
                item_error(
                    reference,
                    "COMPLIANCE_RESTRICTED",
                    "This contact cannot be returned due to compliance restrictions",
                ),
            )),
            Lookup::NotFound { dropped: true } => {}
            Lookup::NotFound { dropped: false } => {
                results.push((index, item_error(reference, "NOT_FOUND", "Contact not found")))
            }
        }
    }
    shuffle_results(state.options.seed, request, &mut results);
    let request_id = state.next_request_id();
    Ok(Handled::Json(json!({
        "requestId": request_id,
        "results": results.into_iter().map(|(_, value)| value).collect::<Vec<_>>(),
        "billing": {"creditsCharged": state.spent - before, "resultsReturned": returned},
    })))
}

fn contacts_enrich(state: &mut LushaState, request: &Value) -> Handling {
    let items = batch(request, "ids")?;
    let kinds = parse_reveal(request)?;
    if items.iter().any(|id| !id.is_string()) {
        return Err(vec!["each value in ids must be a string".to_owned()]);
    }
    if let Some(flag) = request.get("waterfallEnabled")
        && !flag.is_boolean()
    {
        return Err(vec!["waterfallEnabled must be a boolean value".to_owned()]);
    }
    let ids: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
    let lookups: Vec<Lookup> = ids.iter().map(|id| state.lookup(&Identity::Id((*id).to_owned()))).collect();
    let mut cost = 0;
    let mut pending = HashSet::new();
    for lookup in &lookups {
        if let Lookup::Found(person) = lookup {
            for &kind in &kinds {
                cost += state.reveal_cost(person, kind, &pending);
                for point in person.datapoints(kind) {
                    pending.insert((person.id.clone(), point));
                }
            }
        }
    }
    if cost > state.balance {
        return Ok(Handled::Payment(format!(
            "Insufficient credits: this request needs {cost} credits, {} remaining",
            state.balance.max(0)
        )));
    }
    let before = state.spent;
    let mut results = Vec::new();
    let mut returned = 0;
    for (index, (id, lookup)) in ids.iter().zip(lookups).enumerate() {
        match lookup {
            Lookup::Found(person) => {
                let mut map = person.base_json();
                map.insert("tags".to_owned(), json!([]));
                map.insert("previousEmployment".to_owned(), json!([]));
                state.reveal_into(&person, &kinds, "contacts/enrich", &mut map);
                returned += 1;
                results.push((index, Value::Object(map)));
            }
            _ => {
                results.push((index, json!({"id": id, "error": {"code": "NOT_FOUND", "message": "Contact not found"}})))
            }
        }
    }
    shuffle_results(state.options.seed, request, &mut results);
    let request_id = state.next_request_id();
    Ok(Handled::Json(json!({
        "requestId": request_id,
        "results": results.into_iter().map(|(_, value)| value).collect::<Vec<_>>(),
        "billing": {"creditsCharged": state.spent - before, "resultsReturned": returned},
    })))
}

/// Lower-cased strings of `filters.<side>.<section>.<field>`.
fn filter_values(request: &Value, side: &str, section: &str, field: &str) -> Vec<String> {
    let mut values = Vec::new();
    if let Some(items) = request.pointer(&format!("/filters/{side}/{section}/{field}")).and_then(Value::as_array) {
        for item in items {
            match item {
                Value::String(text) => values.push(text.to_lowercase()),
                Value::Object(map) => {
                    for key in ["country", "name", "value", "city"] {
                        if let Some(text) = map.get(key).and_then(Value::as_str) {
                            values.push(text.to_lowercase());
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    values
}

fn lead_matches(request: &Value, person: &Person) -> bool {
    let fields: [(&str, &str, Vec<String>); 7] = [
        ("contacts", "departments", person.departments.iter().map(|d| d.to_lowercase()).collect()),
        ("contacts", "seniority", vec![person.seniority.to_lowercase()]),
        ("contacts", "jobTitles", vec![person.job_title.to_lowercase()]),
        (
            "contacts",
            "countries",
            vec![person.location.country.to_lowercase(), person.location.country_iso2.to_lowercase()],
        ),
        ("contacts", "locations", vec![person.location.country.to_lowercase(), person.location.city.to_lowercase()]),
        ("companies", "domains", vec![person.company.domain.to_lowercase()]),
        ("companies", "names", vec![person.company.name.to_lowercase()]),
    ];
    for (side, field, have) in fields {
        let include = filter_values(request, side, "include", field);
        if !include.is_empty() && !include.iter().any(|wanted| have.contains(wanted)) {
            return false;
        }
        let exclude = filter_values(request, side, "exclude", field);
        if exclude.iter().any(|unwanted| have.contains(unwanted)) {
            return false;
        }
    }
    let exclude_dnc = request.get("excludeDnc").and_then(Value::as_bool).unwrap_or(false);
    !(exclude_dnc && !person.phones.is_empty() && person.phones.iter().all(|p| p.do_not_call))
}

fn contacts_prospecting(state: &mut LushaState, request: &Value) -> Handling {
    let mut errors = Vec::new();
    let page = match request.pointer("/pagination/page") {
        None => 0,
        Some(value) => value.as_u64().unwrap_or_else(|| {
            errors.push("pagination.page must be a non-negative integer".to_owned());
            0
        }),
    };
    let size = match request.pointer("/pagination/size") {
        None => 20,
        Some(value) => match value.as_u64() {
            Some(size @ 1..=50) => size,
            _ => {
                errors.push("pagination.size must be an integer between 1 and 50".to_owned());
                20
            }
        },
    };
    if let Some(filters) = request.get("filters")
        && !filters.is_object()
    {
        errors.push("filters must be an object".to_owned());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let matching: Vec<Person> = state
        .leads
        .iter()
        .filter_map(|id| state.registry.get(id))
        .filter(|person| lead_matches(request, person))
        .cloned()
        .collect();
    let total = matching.len() as u64;
    let start = page.saturating_mul(size);
    let results: Vec<Value> = matching
        .iter()
        .skip(usize::try_from(start).unwrap_or(usize::MAX))
        .take(usize::try_from(size).unwrap_or(usize::MAX))
        .map(|person| Value::Object(state.preview(person)))
        .collect();
    let request_id = state.next_request_id();
    Ok(Handled::Json(json!({
        "requestId": request_id,
        "currentPage": page,
        "pageLength": results.len(),
        "totalResults": total,
        "totalPages": total.div_ceil(size),
        "results": results,
        "billing": {"creditsCharged": 0, "resultsReturned": results.len()},
    })))
}

fn account_usage(state: &mut LushaState, now: Instant) -> Handled {
    let o = state.options.clone();
    Handled::Json(json!({
        "credits": {
            "total": state.balance + state.spent,
            "used": state.spent,
            "remaining": state.balance,
        },
        "rateLimits": {
            "daily": state.window_json(&state.day, o.per_day, now),
            "hourly": state.window_json(&state.hour, o.per_hour, now),
            "minute": state.window_json(&state.minute, o.per_minute, now),
        },
        "plan": {"name": "Sandbox Scale", "isTrial": o.trial_limit.is_some()},
        "pricing": {
            "apiSearch": {"credits": o.search_credits, "perQuantity": 1},
            "revealEmail": {"credits": o.email_credits, "perQuantity": 1},
            "revealPhone": {"credits": o.phone_credits, "perQuantity": 1},
        },
    }))
}

async fn respond(lusha: FakeLusha, route: &'static str, headers: HeaderMap, body: Bytes) -> Response {
    // A Latency fault must delay *before* the work, so peek at it first without charging.
    let pre_delay = {
        let state = lusha.lock();
        match state.faults.get(route).or_else(|| state.faults.get("*")) {
            Some(Fault::Latency(duration)) => Some(*duration),
            _ => None,
        }
    };
    if let Some(duration) = pre_delay {
        tokio::time::sleep(duration).await;
    }
    let mut answer = lusha.process(route, &headers, &body);
    if pre_delay.is_some() {
        answer.delay = None;
    }
    if let Some(duration) = answer.delay {
        tokio::time::sleep(duration).await;
    }
    let mut response = (answer.status, answer.body).into_response();
    let map = response.headers_mut();
    map.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    for (name, value) in answer.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            map.insert(HeaderName::from_static(name), value);
        }
    }
    response
}

async fn api_search(State(lusha): State<FakeLusha>, headers: HeaderMap, body: Bytes) -> Response {
    respond(lusha, ROUTES[0], headers, body).await
}

async fn api_enrich(State(lusha): State<FakeLusha>, headers: HeaderMap, body: Bytes) -> Response {
    respond(lusha, ROUTES[1], headers, body).await
}

async fn api_search_and_enrich(State(lusha): State<FakeLusha>, headers: HeaderMap, body: Bytes) -> Response {
    respond(lusha, ROUTES[2], headers, body).await
}

async fn api_prospecting(State(lusha): State<FakeLusha>, headers: HeaderMap, body: Bytes) -> Response {
    respond(lusha, ROUTES[3], headers, body).await
}

async fn api_usage(State(lusha): State<FakeLusha>, headers: HeaderMap) -> Response {
    respond(lusha, ROUTES[4], headers, Bytes::new()).await
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let status = StatusCode::NOT_FOUND;
    let body = error_body(status, json!(format!("Cannot {method} {}", uri.path())));
    (status, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], body).into_response()
}

async fn admin_ledger(State(lusha): State<FakeLusha>) -> Json<Ledger> {
    Json(lusha.ledger())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LedgerReset {
    #[serde(default)]
    forget_reveals: bool,
}

async fn admin_ledger_reset(State(lusha): State<FakeLusha>, body: Bytes) -> Json<Ledger> {
    let request: LedgerReset = serde_json::from_slice(&body).unwrap_or_default();
    lusha.reset_ledger();
    if request.forget_reveals {
        lusha.forget_reveals();
    }
    Json(lusha.ledger())
}

fn bad_admin(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"ok": false, "error": message}))).into_response()
}

#[derive(Deserialize)]
struct Credits {
    balance: i64,
}

async fn admin_credits(State(lusha): State<FakeLusha>, body: Bytes) -> Response {
    match serde_json::from_slice::<Credits>(&body) {
        Ok(credits) => {
            lusha.set_credits(credits.balance);
            Json(lusha.ledger()).into_response()
        }
        Err(error) => bad_admin(error.to_string()),
    }
}

async fn admin_stats(State(lusha): State<FakeLusha>) -> Json<LushaStats> {
    Json(lusha.stats())
}

async fn admin_leads(State(lusha): State<FakeLusha>, body: Bytes) -> Response {
    let leads = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(leads)) => leads,
        Ok(Value::Object(mut map)) => match map.remove("leads") {
            Some(Value::Array(leads)) => leads,
            _ => return bad_admin("expected an array of leads or {\"leads\":[…]}".to_owned()),
        },
        Ok(_) => return bad_admin("expected an array of leads or {\"leads\":[…]}".to_owned()),
        Err(error) => return bad_admin(error.to_string()),
    };
    let ids = lusha.add_leads(leads);
    Json(json!({"ok": true, "ids": ids})).into_response()
}

/// Wire form of [`Fault`].
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum FaultBody {
    Error {
        status: u16,
        #[serde(default = "one")]
        rate: f64,
    },
    Latency {
        ms: u64,
    },
    Hang {
        ms: u64,
    },
    HangAfterCharge {
        ms: u64,
    },
    ClientClosedAfterCharge,
    Malformed,
}

fn one() -> f64 {
    1.0
}

#[derive(Deserialize)]
struct FaultRequest {
    #[serde(default = "star")]
    route: String,
    fault: FaultBody,
}

fn star() -> String {
    "*".to_owned()
}

async fn admin_fault(State(lusha): State<FakeLusha>, body: Bytes) -> Response {
    let request: FaultRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return bad_admin(error.to_string()),
    };
    let fault = match request.fault {
        FaultBody::Error { status, rate } => Fault::Error { status, rate },
        FaultBody::Latency { ms } => Fault::Latency(Duration::from_millis(ms)),
        FaultBody::Hang { ms } => Fault::Hang(Duration::from_millis(ms)),
        FaultBody::HangAfterCharge { ms } => Fault::HangAfterCharge(Duration::from_millis(ms)),
        FaultBody::ClientClosedAfterCharge => Fault::ClientClosedAfterCharge,
        FaultBody::Malformed => Fault::Malformed,
    };
    lusha.set_fault(&request.route, fault);
    Json(json!({"ok": true, "route": normalize_route(&request.route)})).into_response()
}

async fn admin_clear_faults(State(lusha): State<FakeLusha>) -> StatusCode {
    lusha.clear_faults();
    StatusCode::NO_CONTENT
}

async fn admin_rate_reset(State(lusha): State<FakeLusha>) -> StatusCode {
    lusha.reset_rate_limits();
    StatusCode::NO_CONTENT
}

async fn admin_reset(State(lusha): State<FakeLusha>) -> StatusCode {
    lusha.reset();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LookupQuery {
    email: Option<String>,
    linkedin_url: Option<String>,
    id: Option<String>,
}

async fn admin_lookup(State(lusha): State<FakeLusha>, Query(query): Query<LookupQuery>) -> Response {
    let identity = if let Some(email) = query.email {
        Identity::email(email)
    } else if let Some(url) = query.linkedin_url {
        Identity::linkedin(url)
    } else if let Some(id) = query.id {
        Identity::Id(id)
    } else {
        return bad_admin("pass email, linkedinUrl or id".to_owned());
    };
    let body = match lusha.lookup(&identity) {
        Lookup::Found(person) => json!({"outcome": "found", "person": person}),
        Lookup::ComplianceRestricted => json!({"outcome": "COMPLIANCE_RESTRICTED"}),
        Lookup::NotFound { dropped } => json!({"outcome": "NOT_FOUND", "dropped": dropped}),
    };
    Json(body).into_response()
}

#[cfg(test)]
mod tests;
