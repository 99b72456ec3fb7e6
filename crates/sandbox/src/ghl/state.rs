//! The fake's whole state behind one `std::sync::Mutex`: seeding, clock, search index,
//! tokens, rate-limit buckets and statistics.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use super::appointments::{Appointment, CALENDAR_NAMES};
use super::model::{
    Calendar, Cid, Contact, Fields, Loc, NOTE_BODIES, Note, SEED_BASE_MS, SEED_SPAN_MS, Shape, TASK_BODIES,
    TASK_TITLES, Task, USER_FIRST, USER_LAST, generate_fields, random_hex, render_contact, system_ms,
};
use super::schema::ScopeSet;
use super::{Fault, GhlOptions, GhlStats};

/// An error answer: HTTP status plus GHL body.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

impl ApiError {
    /// `{statusCode, message, error}` — the common GHL body (ghl.md §5).
    pub(crate) fn new(status: u16, message: impl Into<Value>) -> Self {
        Self { status, body: json!({"statusCode": status, "message": message.into(), "error": reason(status)}) }
    }

    /// 422 with an ARRAY `message`, as class-validator produces.
    pub(crate) fn unprocessable(messages: Vec<String>) -> Self {
        Self::new(422, json!(messages))
    }

    pub(crate) fn contact_not_found() -> Self {
        // Quoted body (ghl.md §5): no `error` key.
        Self { status: 404, body: json!({"statusCode": 404, "message": "Contact not found"}) }
    }

    pub(crate) fn not_found(what: &str) -> Self {
        Self::new(404, format!("{what} not found"))
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(401, "Invalid token: access token is invalid")
    }

    pub(crate) fn forbidden() -> Self {
        Self::new(403, "The token does not have access to this location.")
    }

    /// A valid token without the route's scope (reference/ghl.md §3.8).
    pub(crate) fn scope_denied(status: u16) -> Self {
        Self::new(status, "The token is not authorized for this scope.")
    }

    pub(crate) fn too_many() -> Self {
        Self::new(429, "Too many requests")
    }
}

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Principal {
    Location(u16),
    Company,
}

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub(crate) struct AuthCtx {
    pub(crate) principal: Principal,
    pub(crate) bucket: String,
    /// What the token may do (seeded PITs and default grants: every known scope).
    pub(crate) scopes: ScopeSet,
}

#[derive(Debug, Clone)]
pub(crate) struct AccessTok {
    pub(crate) principal: Principal,
    pub(crate) expires: Option<Instant>,
    pub(crate) scopes: ScopeSet,
}

#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) access: String,
    pub(crate) refresh: String,
    pub(crate) expires: Instant,
    pub(crate) scopes: ScopeSet,
}

#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) principal: Principal,
    pub(crate) scopes: ScopeSet,
    pub(crate) dead: bool,
    pub(crate) access: Vec<String>,
    pub(crate) refresh: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct RefreshRec {
    pub(crate) grant: usize,
    pub(crate) used: Option<(Instant, Issued)>,
}

/// A fast, non-DoS-resistant hasher for our random 20-byte ids (FxHash-style).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(buf)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

/// `HashMap` keyed by ids, with [`IdHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Rate-limit bucket: sliding window of accepted request instants plus a daily counter.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    hits: VecDeque<Instant>,
    day: i64,
    daily_used: u64,
}

/// Values of the five `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateHeaders {
    pub(crate) daily_limit: u64,
    pub(crate) daily_remaining: u64,
    pub(crate) interval_ms: u128,
    pub(crate) max: u32,
    pub(crate) remaining: u32,
}

/// The search index of one location: a snapshot of contacts as search sees them.
#[derive(Debug, Default)]
pub(crate) struct SearchIndex {
    pub(crate) docs: FastMap<Cid, Contact>,
    pub(crate) by_updated: BTreeSet<(i64, Cid)>,
    pub(crate) by_added: BTreeSet<(i64, Cid)>,
    pub(crate) generation: u64,
}

impl SearchIndex {
    fn upsert(&mut self, c: Contact) {
        self.by_updated.insert((c.updated, c.id));
        self.by_added.insert((c.added, c.id));
        if let Some(old) = self.docs.insert(c.id, c) {
            let new = self.docs.get(&old.id).map(|n| (n.updated, n.added));
            if new.map(|n| n.0) != Some(old.updated) {
                self.by_updated.remove(&(old.updated, old.id));
            }
            if new.map(|n| n.1) != Some(old.added) {
                self.by_added.remove(&(old.added, old.id));
            }
        }
        self.generation += 1;
    }

    fn remove(&mut self, id: Cid) {
        if let Some(old) = self.docs.remove(&id) {
            self.by_updated.remove(&(old.updated, old.id));
            self.by_added.remove(&(old.added, old.id));
        }
        self.generation += 1;
    }
}

#[derive(Debug)]
pub(crate) enum IndexOp {
    Upsert(Contact),
    Remove(Cid),
}

/// Task, note and appointment ids of one contact.
#[derive(Debug, Default, Clone)]
pub(crate) struct Children {
    pub(crate) tasks: Vec<Cid>,
    pub(crate) notes: Vec<Cid>,
    /// Appointments once written; until then a seeded contact's appointments are generated
    /// on read (see `appointments.rs`).
    pub(crate) appointments: Vec<Cid>,
    pub(crate) appointments_stored: bool,
}

/// A one-time authorization code.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Code {
    pub(crate) principal: Principal,
    pub(crate) used: bool,
    pub(crate) scopes: ScopeSet,
}

/// A webhook that was (or is being) delivered.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SentWebhook {
    pub(crate) seq: u64,
    pub(crate) mode: String,
    pub(crate) url: Option<String>,
    pub(crate) body: String,
    pub(crate) signature: String,
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<String>,
}

pub(crate) struct State {
    pub(crate) opts: GhlOptions,
    pub(crate) company: Cid,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    pub(crate) app_id: Cid,
    pub(crate) version_id: Cid,
    pub(crate) locs: Vec<Loc>,
    pub(crate) loc_by_id: HashMap<String, u16>,
    pub(crate) contacts: FastMap<Cid, Contact>,
    pub(crate) index: Vec<SearchIndex>,
    pub(crate) pending: VecDeque<(Instant, u16, IndexOp)>,
    pub(crate) total_cache: HashMap<(u16, String), (u64, u64)>,
    pub(crate) tasks: FastMap<Cid, Task>,
    /// Task ids per location in the task search's order: `(dateAdded, id)`.
    pub(crate) loc_tasks: Vec<BTreeSet<(i64, Cid)>>,
    pub(crate) notes: FastMap<Cid, Note>,
    /// Stored appointments (of contacts whose appointments were written).
    pub(crate) appointments: FastMap<Cid, Appointment>,
    pub(crate) children: FastMap<Cid, Children>,
    pub(crate) next_n: Vec<u32>,
    pub(crate) rng: fastrand::Rng,
    pub(crate) clock_offset: Duration,
    pub(crate) last_ms: i64,
    pub(crate) tokens: HashMap<String, AccessTok>,
    pub(crate) grants: Vec<Grant>,
    pub(crate) refresh: HashMap<String, RefreshRec>,
    pub(crate) codes: HashMap<String, Code>,
    pub(crate) buckets: HashMap<String, Bucket>,
    pub(crate) daily_exhausted: HashSet<String>,
    pub(crate) stats: GhlStats,
    pub(crate) faults: HashMap<String, Fault>,
    pub(crate) webhook_url: Option<url::Url>,
    pub(crate) signing_key: SigningKey,
    pub(crate) sent: VecDeque<SentWebhook>,
    pub(crate) next_seq: u64,
}

/// Most webhooks kept for read-back.
const SENT_KEEP: usize = 10_000;

impl State {
    /// Builds and seeds the state. Everything derives from `opts.seed`.
    pub(crate) fn new(opts: GhlOptions) -> Self {
        let mut rng = fastrand::Rng::with_seed(opts.seed);
        let company = Cid::random(&mut rng);
        let client_id = format!("{}-{}", random_hex(&mut rng, 24), random_hex(&mut rng, 8));
        let client_secret = format!(
            "{}-{}-{}-{}-{}",
            random_hex(&mut rng, 8),
            random_hex(&mut rng, 4),
            random_hex(&mut rng, 4),
            random_hex(&mut rng, 4),
            random_hex(&mut rng, 12)
        );
        let app_id = Cid::random(&mut rng);
        let version_id = Cid::random(&mut rng);
        let mut key = [0u8; 32];
        for byte in &mut key {
            *byte = rng.u8(..);
        }
        let signing_key = SigningKey::from_bytes(&key);
        let location_count = opts.locations.min(usize::from(u16::MAX));
        let mut locs = Vec::with_capacity(location_count);
        let mut loc_by_id = HashMap::new();
        let mut tokens = HashMap::new();
        for i in 0..location_count {
            let id = Cid::random(&mut rng);
            let pit = format!(
                "pit-{}-{}-{}-{}-{}",
                random_hex(&mut rng, 8),
                random_hex(&mut rng, 4),
                random_hex(&mut rng, 4),
                random_hex(&mut rng, 4),
                random_hex(&mut rng, 12)
            );
            let users = (0..3)
                .map(|u| {
                    let uid: Arc<str> = Arc::from(Cid::random(&mut rng).as_str());
                    (uid, USER_FIRST[u % USER_FIRST.len()], USER_LAST[(u + i) % USER_LAST.len()])
                })
                .collect();
            let businesses = (0..2)
                .map(|b| {
                    let bid: Arc<str> = Arc::from(random_hex(&mut rng, 24).as_str());
                    (bid, format!("Business {b} of Location {i}"))
                })
                .collect();
            // The Lucky Orange bridge's fields draw their ids from a stream of their own, so
            // the ids drawn from `rng` stay as they were.
            let mut lo_rng = fastrand::Rng::with_seed(opts.seed ^ 0x0010_0F1E ^ ((i as u64) << 24));
            let mut lo_field = |name: &'static str, key: &'static str| {
                (Arc::from(Cid::random(&mut lo_rng).as_str()), Arc::from(name), Arc::from(key), "TEXT")
            };
            let lo_fields = [
                lo_field("LO Token", "contact.lo_token"),
                lo_field("LO Session URL", "contact.lo_session_url"),
                lo_field("LO Last Seen", "contact.lo_last_seen"),
                lo_field("LO Visits", "contact.lo_visits"),
                lo_field("LO Last Page", "contact.lo_last_page"),
            ];
            let mut custom_fields = vec![
                (
                    Arc::from(Cid::random(&mut rng).as_str()),
                    Arc::from("Lusha ID"),
                    Arc::from("contact.lusha_id"),
                    "TEXT",
                ),
                (
                    Arc::from(Cid::random(&mut rng).as_str()),
                    Arc::from("Lusha Enriched At"),
                    Arc::from("contact.lusha_enriched_at"),
                    "TEXT",
                ),
                (
                    Arc::from(Cid::random(&mut rng).as_str()),
                    Arc::from("Lucky Orange Recording"),
                    Arc::from("contact.lucky_orange_recording"),
                    "LARGE_TEXT",
                ),
            ];
            custom_fields.extend(lo_fields);
            let index = u16::try_from(i).unwrap_or(u16::MAX);
            loc_by_id.insert(id.as_str().to_owned(), index);
            tokens.insert(
                pit.clone(),
                AccessTok { principal: Principal::Location(index), expires: None, scopes: ScopeSet::ALL },
            );
            // A stream of its own, so the ids drawn from `rng` above stay as they were.
            let mut calendar_rng = fastrand::Rng::with_seed(opts.seed ^ 0xCA1E_0DA5 ^ ((i as u64) << 24));
            let group: Arc<str> = Arc::from(Cid::random(&mut calendar_rng).as_str());
            let calendars = CALENDAR_NAMES
                .iter()
                .enumerate()
                .map(|(c, name)| {
                    let id: Arc<str> = Arc::from(Cid::random(&mut calendar_rng).as_str());
                    Calendar { id, group: (c == 0).then(|| group.clone()), name }
                })
                .collect();
            locs.push(Loc {
                id,
                name: format!("Sandbox Location {}", i + 1),
                pit,
                users,
                businesses,
                custom_fields,
                calendars,
            });
        }
        let runtime_rng = fastrand::Rng::with_seed(opts.seed ^ 0x005E_ED0F_FA4E_0001);
        let mut state = Self {
            company,
            client_id,
            client_secret,
            app_id,
            version_id,
            loc_by_id,
            contacts: FastMap::default(),
            index: (0..locs.len()).map(|_| SearchIndex::default()).collect(),
            pending: VecDeque::new(),
            total_cache: HashMap::new(),
            tasks: FastMap::default(),
            loc_tasks: (0..locs.len()).map(|_| BTreeSet::new()).collect(),
            notes: FastMap::default(),
            appointments: FastMap::default(),
            children: FastMap::default(),
            next_n: vec![0; locs.len()],
            locs,
            rng: runtime_rng,
            clock_offset: Duration::ZERO,
            last_ms: 0,
            tokens,
            grants: Vec::new(),
            refresh: HashMap::new(),
            codes: HashMap::new(),
            buckets: HashMap::new(),
            daily_exhausted: HashSet::new(),
            stats: GhlStats::default(),
            faults: HashMap::new(),
            webhook_url: opts.webhook_url.clone(),
            signing_key,
            sent: VecDeque::new(),
            next_seq: 0,
            opts,
        };
        state.seed_data(&mut rng);
        state
    }

    fn seed_data(&mut self, rng: &mut fastrand::Rng) {
        let per = self.opts.contacts_per_location;
        let max_tasks = self.opts.max_tasks_per_contact;
        let max_notes = self.opts.max_notes_per_contact;
        let total = per * self.locs.len();
        self.contacts.reserve(total);
        self.tasks.reserve(total * max_tasks / 2);
        self.notes.reserve(total * max_notes / 2);
        self.children.reserve(total);
        for li in 0..self.locs.len() {
            let loc = u16::try_from(li).unwrap_or(u16::MAX);
            let mut docs = FastMap::default();
            docs.reserve(per);
            let mut by_updated = Vec::with_capacity(per);
            let mut by_added = Vec::with_capacity(per);
            let mut task_ids = Vec::with_capacity(per * max_tasks / 2);
            for n in 0..per {
                let id = Cid::random(rng);
                let added = SEED_BASE_MS + rng.i64(0..SEED_SPAN_MS);
                let updated = if rng.u8(..4) == 0 {
                    added
                } else {
                    (added + rng.i64(0..30 * 24 * 3600 * 1000)).min(SEED_BASE_MS + SEED_SPAN_MS)
                };
                let contact =
                    Contact { id, loc, n: u32::try_from(n).unwrap_or(u32::MAX), added, updated, fields: None };
                by_updated.push((updated, id));
                by_added.push((added, id));
                self.contacts.insert(id, contact.clone());
                docs.insert(id, contact);
                let task_count = rng.usize(0..=max_tasks);
                let note_count = rng.usize(0..=max_notes);
                if task_count + note_count == 0 {
                    continue;
                }
                let mut kids = Children {
                    tasks: Vec::with_capacity(task_count),
                    notes: Vec::with_capacity(note_count),
                    ..Children::default()
                };
                for _ in 0..task_count {
                    let task = self.new_task_seeded(rng, loc, id, added);
                    kids.tasks.push(task.id);
                    task_ids.push((task.added, task.id));
                    self.tasks.insert(task.id, task);
                }

                for _ in 0..note_count {
                    let note = self.new_note_seeded(rng, loc, id, added);
                    kids.notes.push(note.id);
                    self.notes.insert(note.id, note);
                }
                self.children.insert(id, kids);
            }
            // Bulk-building B-trees from vectors is much faster than random inserts.
            self.index[li] = SearchIndex {
                docs,
                by_updated: by_updated.into_iter().collect(),
                by_added: by_added.into_iter().collect(),
                generation: 1,
            };
            self.loc_tasks[li] = task_ids.into_iter().collect();
            self.next_n[li] = u32::try_from(per).unwrap_or(u32::MAX);
        }
    }

    fn new_task_seeded(&self, rng: &mut fastrand::Rng, loc: u16, contact: Cid, after: i64) -> Task {
        let users = &self.locs[usize::from(loc)].users;
        Task {
            id: Cid::random(rng),
            contact,
            loc,
            title: TASK_TITLES[rng.usize(..TASK_TITLES.len())].into(),
            body: TASK_BODIES[rng.usize(..TASK_BODIES.len())].into(),
            assigned_to: (!users.is_empty() && rng.bool()).then(|| users[rng.usize(..users.len())].0.clone()),
            due: after + rng.i64(0..60 * 24 * 3600 * 1000),
            completed: rng.u8(..3) == 0,
            added: after,
        }
    }

    fn new_note_seeded(&self, rng: &mut fastrand::Rng, loc: u16, contact: Cid, after: i64) -> Note {
        let users = &self.locs[usize::from(loc)].users;
        Note {
            id: Cid::random(rng),
            contact,
            loc,
            body: NOTE_BODIES[rng.usize(..NOTE_BODIES.len())].into(),
            user_id: (!users.is_empty()).then(|| users[rng.usize(..users.len())].0.clone()),
            added: after + rng.i64(0..24 * 3600 * 1000),
            title: None,
            color: None,
            pinned: false,
        }
    }

    // ---------------------------------------------------------------- clock

    /// "Now" for expiry, grace, lag and rate windows (advanceable).
    pub(crate) fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    /// Wall-clock ms including the offset.
    pub(crate) fn wall_ms(&self) -> i64 {
        system_ms() + i64::try_from(self.clock_offset.as_millis()).unwrap_or(0)
    }

    /// A write timestamp: wall-clock ms, strictly increasing within the fake.
    pub(crate) fn stamp(&mut self) -> i64 {
        let t = self.wall_ms().max(self.last_ms + 1);
        self.last_ms = t;
        t
    }

    // ---------------------------------------------------------------- lookups

    pub(crate) fn loc_of(&self, id: &str) -> Option<u16> {
        self.loc_by_id.get(id).copied()
    }

    pub(crate) fn loc_id(&self, loc: u16) -> &str {
        self.locs.get(usize::from(loc)).map(|l| l.id.as_str()).unwrap_or("")
    }

    /// Resolves a location id and checks the caller may touch it.
    pub(crate) fn check_loc(&self, auth: &AuthCtx, location_id: &str) -> Result<u16, ApiError> {
        match (self.loc_of(location_id), auth.principal) {
            (Some(loc), Principal::Location(mine)) if loc == mine => Ok(loc),
            _ => Err(ApiError::forbidden()),
        }
    }

    /// Finds a live contact the caller may see (404 if missing, 403 if another location's).
    pub(crate) fn contact_for(&self, auth: &AuthCtx, id: &str) -> Result<Contact, ApiError> {
        let contact = Cid::parse(id).and_then(|cid| self.contacts.get(&cid)).ok_or_else(ApiError::contact_not_found)?;
        match auth.principal {
            Principal::Location(mine) if mine == contact.loc => Ok(contact.clone()),
            _ => Err(ApiError::forbidden()),
        }
    }

    pub(crate) fn fields_of(&self, c: &Contact) -> Arc<Fields> {
        self.generated_fields(c, true)
    }

    /// Like [`State::fields_of`], without the fields only `GET` shows, for search's hot path
    /// (a written contact's stored fields are returned whole).
    pub(crate) fn search_fields_of(&self, c: &Contact) -> Arc<Fields> {
        self.generated_fields(c, false)
    }

    fn generated_fields(&self, c: &Contact, get_only: bool) -> Arc<Fields> {
        match &c.fields {
            Some(f) => f.clone(),
            None => match self.locs.get(usize::from(c.loc)) {
                Some(loc) => Arc::new(generate_fields(self.opts.seed, c.loc, loc, c.n, get_only)),
                None => Arc::new(Fields::default()),
            },
        }
    }

    pub(crate) fn render(&self, c: &Contact, shape: Shape) -> Value {
        let f = self.fields_of(c);
        render_contact(c, &f, self.loc_id(c.loc), shape)
    }

    // ---------------------------------------------------------------- search index

    pub(crate) fn reindex(&mut self, loc: u16, op: IndexOp) {
        if self.opts.search_lag.is_zero() {
            self.apply_index(loc, op);
        } else {
            let at = self.now() + self.opts.search_lag;
            self.pending.push_back((at, loc, op));
        }
    }

    fn apply_index(&mut self, loc: u16, op: IndexOp) {
        if let Some(index) = self.index.get_mut(usize::from(loc)) {
            match op {
                IndexOp::Upsert(c) => index.upsert(c),
                IndexOp::Remove(id) => index.remove(id),
            }
        }
    }

    /// Applies every index write whose lag has passed.
    pub(crate) fn catch_up(&mut self) {
        let now = self.now();
        while self.pending.front().is_some_and(|(at, ..)| *at <= now) {
            if let Some((_, loc, op)) = self.pending.pop_front() {
                self.apply_index(loc, op);
            }
        }
    }

    // ---------------------------------------------------------------- tokens

    fn new_token(&mut self, prefix: &str) -> String {
        format!("{prefix}{}", random_hex(&mut self.rng, 48))
    }

    /// Issues an access + refresh token pair in grant `grant`, or in a new grant with
    /// `scopes` (a refresh keeps its grant's scopes).
    pub(crate) fn issue(&mut self, principal: Principal, scopes: ScopeSet, grant: Option<usize>) -> Issued {
        let grant = grant.unwrap_or_else(|| {
            self.grants.push(Grant { principal, scopes, dead: false, access: Vec::new(), refresh: Vec::new() });
            self.grants.len() - 1
        });
        let scopes = self.grants.get(grant).map(|g| g.scopes).unwrap_or(scopes);
        let access = self.new_token("eyJhbGciOiJSUzI1NiJ9.fake-");
        let refresh = self.new_token("rt-");
        let expires = self.now() + self.opts.access_token_ttl;
        self.tokens.insert(access.clone(), AccessTok { principal, expires: Some(expires), scopes });
        self.refresh.insert(refresh.clone(), RefreshRec { grant, used: None });
        if let Some(g) = self.grants.get_mut(grant) {
            g.access.push(access.clone());
            g.refresh.push(refresh.clone());
        }
        Issued { access, refresh, expires, scopes }
    }

    /// A new Private Integration Token for a location with the given scopes.
    pub(crate) fn new_pit(&mut self, loc: u16, scopes: ScopeSet) -> String {
        let pit = format!(
            "pit-{}-{}-{}-{}-{}",
            random_hex(&mut self.rng, 8),
            random_hex(&mut self.rng, 4),
            random_hex(&mut self.rng, 4),
            random_hex(&mut self.rng, 4),
            random_hex(&mut self.rng, 12)
        );
        self.tokens.insert(pit.clone(), AccessTok { principal: Principal::Location(loc), expires: None, scopes });
        pit
    }

    /// Resolves a bearer token (None: unknown, expired or revoked).
    pub(crate) fn resolve_token(&self, token: &str) -> Option<AuthCtx> {
        let tok = self.tokens.get(token)?;
        if tok.expires.is_some_and(|at| at <= self.now()) {
            return None;
        }
        let bucket = match tok.principal {
            Principal::Location(loc) => format!("location:{}", self.loc_id(loc)),
            Principal::Company => format!("company:{}", self.company.as_str()),
        };
        Some(AuthCtx { principal: tok.principal, bucket, scopes: tok.scopes })
    }

    /// Kills a grant: every access and refresh token of the chain stops working.
    pub(crate) fn kill_grant(&mut self, grant: usize) {
        let Some(g) = self.grants.get_mut(grant) else {
            return;
        };
        g.dead = true;
        let access = std::mem::take(&mut g.access);
        for token in access {
            self.tokens.remove(&token);
        }
    }

    pub(crate) fn token_body(&self, issued: &Issued, principal: Principal) -> Value {
        let expires_in = issued.expires.saturating_duration_since(self.now()).as_secs();
        let user_id = self.locs.first().and_then(|l| l.users.first()).map(|u| u.0.to_string()).unwrap_or_default();
        let mut body = json!({
            "access_token": issued.access,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "refresh_token": issued.refresh,
            "scope": issued.scopes.to_scope_string(),
            "companyId": self.company.as_str(),
            "userId": user_id,
        });
        match principal {
            Principal::Location(loc) => {
                body["userType"] = json!("Location");
                body["locationId"] = json!(self.loc_id(loc));
            }
            Principal::Company => {
                body["userType"] = json!("Company");
                body["isBulkInstallation"] = json!(true);
                body["approvedLocations"] = json!(self.locs.iter().map(|l| l.id.as_str()).collect::<Vec<_>>());
            }
        }
        body
    }

    /// `POST /oauth/token`.
    pub(crate) fn oauth_token(&mut self, form: &HashMap<String, String>) -> Result<Value, ApiError> {
        let field = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let mut missing = Vec::new();
        for k in ["client_id", "client_secret", "grant_type"] {
            if field(k).is_none() {
                missing.push(format!("{k} should not be empty"));
            }
        }
        if !missing.is_empty() {
            return Err(ApiError::unprocessable(missing));
        }
        if field("client_id") != Some(self.client_id.as_str())
            || field("client_secret") != Some(self.client_secret.as_str())
        {
            return Err(ApiError::new(401, "Invalid client credentials"));
        }
        match field("grant_type") {
            Some("authorization_code") => {
                let code = field("code").unwrap_or("");
                match self.codes.get_mut(code) {
                    Some(c) if !c.used => {
                        c.used = true;
                        let (principal, scopes) = (c.principal, c.scopes);
                        let issued = self.issue(principal, scopes, None);
                        self.stats.authorization_code_grants += 1;
                        Ok(self.token_body(&issued, principal))
                    }
                    _ => {
                        self.stats.invalid_grants += 1;
                        Err(invalid_grant("Invalid authorization code"))
                    }
                }
            }
            Some("refresh_token") => {
                self.stats.refresh_grants += 1;
                let token = field("refresh_token").unwrap_or("").to_owned();
                let now = self.now();
                let grace = self.opts.refresh_grace;
                let Some(rec) = self.refresh.get(&token) else {
                    self.stats.invalid_grants += 1;
                    return Err(invalid_grant("Invalid refresh token"));
                };
                let grant = rec.grant;
                let used = rec.used.clone();
                let (principal, dead) =
                    self.grants.get(grant).map(|g| (g.principal, g.dead)).unwrap_or((Principal::Company, true));
                if dead {
                    self.stats.invalid_grants += 1;
                    return Err(invalid_grant("Refresh token has been revoked"));
                }
                match used {
                    Some((at, issued)) if now.saturating_duration_since(at) <= grace => {
                        self.stats.refresh_reuses += 1;
                        Ok(self.token_body(&issued, principal))
                    }
                    Some(_) => {
                        // Reuse after the grace window: the whole chain dies (as in GHL).
                        self.stats.refresh_reuse_kills += 1;
                        self.kill_grant(grant);
                        self.stats.invalid_grants += 1;
                        Err(invalid_grant("Refresh token has already been used"))
                    }
                    None => {
                        let issued = self.issue(principal, ScopeSet::ALL, Some(grant));
                        if let Some(rec) = self.refresh.get_mut(&token) {
                            rec.used = Some((now, issued.clone()));
                        }
                        Ok(self.token_body(&issued, principal))
                    }
                }
            }
            Some(other) => Err(ApiError::unprocessable(vec![format!("grant_type {other} is not supported")])),
            None => Err(ApiError::unprocessable(vec!["grant_type should not be empty".to_owned()])),
        }
    }

    /// `POST /oauth/locationToken` (agency bearer).
    pub(crate) fn location_token(&mut self, auth: &AuthCtx, form: &HashMap<String, String>) -> Result<Value, ApiError> {
        if auth.principal != Principal::Company {
            return Err(ApiError::new(401, "This route is not yet supported by the IAM Service"));
        }
        let company = form.get("companyId").map(String::as_str).unwrap_or("");
        let location = form.get("locationId").map(String::as_str).unwrap_or("");
        let mut problems = Vec::new();
        if company.is_empty() {
            problems.push("companyId should not be empty".to_owned());
        }
        if location.is_empty() {
            problems.push("locationId should not be empty".to_owned());
        }
        if !problems.is_empty() {
            return Err(ApiError::unprocessable(problems));
        }
        if company != self.company.as_str() {
            return Err(ApiError::forbidden());
        }
        let loc = self.loc_of(location).ok_or_else(|| ApiError::new(400, "Location not found"))?;
        // A location token carries the agency grant's scopes.
        let issued = self.issue(Principal::Location(loc), auth.scopes, None);
        self.stats.location_token_grants += 1;
        let mut body = self.token_body(&issued, Principal::Location(loc));
        body["appId"] = json!(self.app_id.as_str());
        body["versionId"] = json!(self.version_id.as_str());
        body["planId"] = Value::Null;
        Ok(body)
    }

    // ---------------------------------------------------------------- rate limits

    pub(crate) fn rate_peek(&mut self, bucket: Option<&str>) -> RateHeaders {
        let now = self.now();
        let day = self.wall_ms().div_euclid(86_400_000);
        let window = self.opts.burst_window;
        let (burst_used, daily_used, exhausted) = match bucket {
            Some(key) => {
                let exhausted = self.daily_exhausted.contains(key);
                let b = self.buckets.entry(key.to_owned()).or_default();
                prune(b, now, window, day);
                (u32::try_from(b.hits.len()).unwrap_or(u32::MAX), b.daily_used, exhausted)
            }
            None => (0, 0, false),
        };
        RateHeaders {
            daily_limit: self.opts.daily_max,
            daily_remaining: if exhausted { 0 } else { self.opts.daily_max.saturating_sub(daily_used) },
            interval_ms: window.as_millis(),
            max: self.opts.burst_max,
            remaining: self.opts.burst_max.saturating_sub(burst_used),
        }
    }

    /// Requests accepted today per bucket (`location:<id>`, `company:<id>`).
    pub(crate) fn daily_used_by_bucket(&self) -> std::collections::BTreeMap<String, u64> {
        self.buckets.iter().map(|(key, bucket)| (key.clone(), bucket.daily_used)).collect()
    }

    /// Takes one request from `bucket`; false (and a 429 counted) when over a limit.
    pub(crate) fn rate_take(&mut self, bucket: &str) -> (bool, RateHeaders) {
        let headers = self.rate_peek(Some(bucket));
        if headers.daily_remaining == 0 || headers.remaining == 0 {
            return (false, headers);
        }
        let now = self.now();
        if let Some(b) = self.buckets.get_mut(bucket) {
            b.hits.push_back(now);
            b.daily_used += 1;
        }
        (
            true,
            RateHeaders { daily_remaining: headers.daily_remaining - 1, remaining: headers.remaining - 1, ..headers },
        )
    }

    // ---------------------------------------------------------------- webhooks log

    pub(crate) fn record_sent(&mut self, mut sent: SentWebhook) -> u64 {
        self.next_seq += 1;
        sent.seq = self.next_seq;
        self.sent.push_back(sent);
        while self.sent.len() > SENT_KEEP {
            self.sent.pop_front();
        }
        self.stats.webhooks_sent += 1;
        self.next_seq
    }

    pub(crate) fn mark_sent(&mut self, seq: u64, status: Option<u16>, error: Option<String>) {
        if let Some(front) = self.sent.front().map(|s| s.seq)
            && seq >= front
            && let Some(entry) = self.sent.get_mut(usize::try_from(seq - front).unwrap_or(0))
            && entry.seq == seq
        {
            entry.status = status;
            entry.error = error;
        }
    }
}

fn prune(b: &mut Bucket, now: Instant, window: Duration, day: i64) {
    while b.hits.front().is_some_and(|t| now.saturating_duration_since(*t) >= window) {
        b.hits.pop_front();
    }
    if b.day != day {
        b.day = day;
        b.daily_used = 0;
    }
}

fn invalid_grant(description: &str) -> ApiError {
    // The reference leaves the failed-refresh body undocumented (§3.4); we answer the OAuth
    // form the brief asks for, plus the common GHL keys so either parser copes.
    ApiError {
        status: 400,
        body: json!({
            "error": "invalid_grant",
            "error_description": description,
            "statusCode": 400,
            "message": description,
        }),
    }
}
