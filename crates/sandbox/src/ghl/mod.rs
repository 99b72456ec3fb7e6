//! A faithful fake of the GoHighLevel (LeadConnector) API v2, built from
//! `shared/reference/ghl.md` (§10 lists what it emulates) and the OpenAPI specs.
//!
//! - OAuth (`/oauth/token`, `/oauth/locationToken`) with single-use rotating refresh tokens,
//!   a grace window and grant death on reuse; Private Integration Tokens per location.
//! - Scopes per token (reference/ghl.md §3.8): seeded PITs and default grants have all of
//!   them; [`FakeGhl::create_pit`] and [`FakeGhl::authorization_code_with_scopes`] make
//!   narrower ones. A token without a route's scope gets
//!   `{"statusCode":401,"message":"The token is not authorized for this scope."}`
//!   ([`GhlOptions::scope_denied_status`] makes it 403).
//! - Contacts (search with `searchAfter`, lagged index, shape drift), tasks, notes, tags,
//!   appointments, businesses, the deprecated listing, location info, custom fields.
//! - Per-bucket sliding-window and daily rate limits with the five `X-RateLimit-*` headers.
//! - Ed25519-signed webhooks for every write, with duplicate / stale / bad-signature modes.
//! - Fault injection per route template and an admin API under `/__admin/ghl/`.
//!
//! All data is synthetic and deterministic from [`GhlOptions::seed`].
//!
//! Read shapes (the field lists live in `schema.rs`, copied from the specs and checked against
//! them by the tests): `GET /contacts/:id` answers exactly `GetContectByIdSchema`'s fields
//! (`attributionSource`, `lastAttributionSource`, `timezone`, `dndSettings`, `businessId`,
//! `visitorId`, `ssn`, `keyword`, …; a field without a value is left out), search items exactly
//! the be089e5 `Contact` item fields plus the documented live extras (`firstName`, `lastName`,
//! `contactName`, `website`), the business listing and deprecated `GET /contacts/`
//! `ContactsSearchSchema`, the 201 of `POST /contacts/` `CreateContactSchema`. All shapes read
//! one stored record, so a field two shapes carry has the same value in both (up to the
//! drift: `address` / epoch `dateOfBirth` in search).
//!
//! Routes besides OAuth: `POST /contacts/search`, `GET|PUT|DELETE /contacts/:contactId`,
//! `POST /contacts/` (201), `POST /contacts/upsert`, `GET /contacts/` (deprecated),
//! `POST|DELETE /contacts/:contactId/tags` (201 / 200), `GET /contacts/:contactId/appointments`
//! (`{events}`), `GET /contacts/business/:businessId?locationId&limit&skip&query`
//! (`{contacts, count}`), `POST /contacts/bulk/business` (`{locationId, ids, businessId|null}`
//! → `{success, ids}`), `POST /contacts/bulk/tags/update/:type` (`add`/`remove`;
//! `{contacts, tags, locationId, removeAllTags}` → 201 `{succeded, errorCount, responses}`), tasks (`GET|POST /contacts/:contactId/tasks`,
//! `GET|PUT|DELETE …/tasks/:taskId`, `PUT …/tasks/:taskId/completed`), notes
//! (`GET|POST /contacts/:contactId/notes`, `GET|PUT|DELETE …/notes/:id`),
//! `GET /locations/:locationId`, `GET /locations/:locationId/customFields`,
//! `POST /locations/:locationId/tasks/search` (scope `locations/tasks.readonly`; body
//! `TaskSearchParamsDto`, 422 for anything else; items with `_id`, `contactDetails`,
//! `assignedToUserDetails`, ordered by `(dateAdded, id)`, `skip`/`limit` paged, defaults 0 and
//! 25). A child route of a deleted contact answers 404 `Contact not found`.
//!
//! Admin routes (no auth, loopback only), under `/__admin/ghl/`:
//! `POST seed {seed?, locations?, contacts_per_location?, max_tasks_per_contact?,
//! max_notes_per_contact?}` (reseed; answers credentials), `POST mutate {locationId?, count,
//! kinds?}` (`kinds`: [`MutationKind`] names; without it the default contacts/tasks/notes mix),
//! `GET state?limit=N`, `GET stats`, `POST stats/reset`,
//! `POST faults {route, errorRate, latencyMs, hang, malformedJson, status, storm429,
//! statusAfterWrite}`, `DELETE faults`, `GET credentials`, `GET webhooks` (sent log),
//! `POST webhooks/emit {event, mode}`, `POST webhooks/url {url}`, `POST clock/advance {ms}`,
//! `POST daily-exhausted {locationId, exhausted}`, `POST pits {locationId, scopes}` (a PIT with
//! those scopes), `POST codes {locationId?, scopes}` (an authorization code for such a grant),
//! `POST appointments {contactId, startTime, …}`, `PUT appointments/:id {…}`,
//! `POST appointments/:id/cancel`, `DELETE appointments/:id` (each fires its
//! `Appointment*` webhook), `POST business {contactId, businessId|null}` (fires
//! `ContactUpdate`).
//!
//! Where the OpenAPI spec and `reference/ghl.md` disagree, the reference wins (comments mark
//! the spots): search answers `{contacts, total}` with `searchAfter` items (spec: `count`, no
//! body fields); location task search items carry `_id` (spec: `array<array>`);
//! `/oauth/locationToken` also returns `refresh_token`; the deprecated `GET /contacts/` adds
//! `meta`.

mod appointments;
mod business;
mod model;
mod ops;
mod routes;
mod schema;
mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_children;
#[cfg(test)]
mod tests_shapes;
mod webhook;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use model::Cid;
use state::{Principal, State};

/// Start-up options of the fake GHL.
#[derive(Debug, Clone)]
pub struct GhlOptions {
    /// Seed of all generated data (ids, names, tokens, keys).
    pub seed: u64,
    /// Number of seeded locations.
    pub locations: usize,
    /// Seeded contacts per location.
    pub contacts_per_location: usize,
    /// Each seeded contact gets `0..=max` tasks.
    pub max_tasks_per_contact: usize,
    /// Each seeded contact gets `0..=max` notes.
    pub max_notes_per_contact: usize,
    /// About one seeded contact in four gets `1..=max` appointments (0: none).
    pub max_appointments_per_contact: usize,
    /// Life of OAuth access tokens (`expires_in`).
    pub access_token_ttl: Duration,
    /// Reusing a refresh token within this window returns the same new pair.
    pub refresh_grace: Duration,
    /// Writes become visible to `POST /contacts/search` only after this.
    pub search_lag: Duration,
    /// Requests allowed per `burst_window` (sliding) per bucket.
    pub burst_max: u32,
    /// Length of the burst window.
    pub burst_window: Duration,
    /// Requests allowed per UTC day per bucket.
    pub daily_max: u64,
    /// Whether task/note writes bump the contact's `dateUpdated` (unknown in GHL, ghl.md §7).
    pub children_bump_contact: bool,
    /// Where webhook events are POSTed.
    pub webhook_url: Option<url::Url>,
    /// Add `Retry-After` (burst window, seconds) to 429s. GHL documents none; default false.
    pub retry_after: bool,
    /// Accept any non-empty `Version` header (default false: only `2021-07-28`).
    pub lenient_version: bool,
    /// Status of the answer to a token that lacks the route's scope. The spec lists only
    /// 401 for these routes and reference/ghl.md §3.8 reports
    /// `401 "The token is not authorized for this scope."`; default 401, 403 on request.
    pub scope_denied_status: u16,
}

impl Default for GhlOptions {
    fn default() -> Self {
        Self {
            seed: 42,
            locations: 2,
            contacts_per_location: 50,
            max_tasks_per_contact: 3,
            max_notes_per_contact: 2,
            max_appointments_per_contact: 2,
            access_token_ttl: Duration::from_secs(86_399),
            refresh_grace: Duration::from_secs(30),
            search_lag: Duration::ZERO,
            burst_max: 100,
            burst_window: Duration::from_secs(10),
            daily_max: 200_000,
            children_bump_contact: false,
            webhook_url: None,
            retry_after: false,
            lenient_version: false,
            scope_denied_status: 401,
        }
    }
}

/// A seeded location and its Private Integration Token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocationInfo {
    /// GHL location id (20 alphanumerics).
    pub id: String,
    /// Display name.
    pub name: String,
    /// `pit-…` token valid for this location only.
    pub pit: String,
}

/// Request/response counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct GhlStats {
    /// Requests per `"METHOD /route/:template"`.
    pub requests: BTreeMap<String, u64>,
    /// Responses per HTTP status code.
    pub statuses: BTreeMap<u16, u64>,
    /// 429 responses served (rate limit and storms).
    pub too_many_requests: u64,
    /// `grant_type=refresh_token` calls to `/oauth/token` (successful or not).
    pub refresh_grants: u64,
    /// Refresh tokens presented again after they were rotated, inside the grace window (GHL
    /// answers the same new pair): two clients spent one refresh token.
    pub refresh_reuses: u64,
    /// Refresh tokens presented again after the grace window: the whole grant was killed.
    pub refresh_reuse_kills: u64,
    /// `invalid_grant` answers.
    pub invalid_grants: u64,
    /// Successful `authorization_code` grants.
    pub authorization_code_grants: u64,
    /// Successful `/oauth/locationToken` calls.
    pub location_token_grants: u64,
    /// Webhook deliveries attempted.
    pub webhooks_sent: u64,
}

/// A fault injected on a route template (`"METHOD /template"`, e.g.
/// `"POST /contacts/search"`, or `"*"` for every route).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fault {
    /// Probability (0..=1) of answering 503 with a GHL body.
    pub error_rate: f64,
    /// Added delay before answering.
    pub latency: Duration,
    /// Never answer (until the fault is cleared; at most ten minutes).
    pub hang: bool,
    /// Answer with a truncated, invalid JSON body.
    pub malformed_json: bool,
    /// Force this status (with a GHL body) without running the handler.
    pub status: Option<u16>,
    /// The next N requests get 429.
    pub storm_429: Option<u32>,
    /// The storm's 429s carry no rate-limit headers and no `Retry-After` (a proxy or a CDN in
    /// front of GHL answering for it).
    pub bare_429: bool,
    /// Run the handler (the write happens) but answer `status` (default 422) anyway:
    /// "create returns 422 yet creates" (ghl.md §6.8, #64).
    pub status_after_write: bool,
}

/// How [`FakeGhl::emit_webhook`] delivers an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WebhookMode {
    /// One signed delivery.
    #[default]
    Normal,
    /// The same delivery twice (same `webhookId`).
    Duplicate,
    /// `timestamp` one hour old.
    StaleTimestamp,
    /// A signature byte flipped.
    BadSignature,
}

/// What a mutation changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MutationKind {
    ContactCreate,
    ContactUpdate,
    ContactDelete,
    TaskCreate,
    TaskUpdate,
    TaskComplete,
    TaskDelete,
    NoteCreate,
    NoteUpdate,
    NoteDelete,
    /// An appointment booked (`AppointmentCreate`). Not in `mutate`'s default mix.
    AppointmentCreate,
    /// An appointment edited (`AppointmentUpdate`). Not in the default mix.
    AppointmentUpdate,
    /// An appointment cancelled: it stays, `appointmentStatus: "cancelled"`
    /// (`AppointmentUpdate`). Not in the default mix.
    AppointmentCancel,
    /// An appointment deleted (`AppointmentDelete`). Not in the default mix.
    AppointmentDelete,
    /// A contact linked to a business (`ContactUpdate`; `object_id` is the contact). Not in
    /// the default mix.
    BusinessLink,
    /// A contact unlinked from its business (`ContactUpdate`). Not in the default mix.
    BusinessUnlink,
}

impl MutationKind {
    /// Every kind, for `FakeGhl::mutate_kinds`.
    pub const ALL: &'static [MutationKind] = &[
        MutationKind::ContactCreate,
        MutationKind::ContactUpdate,
        MutationKind::ContactDelete,
        MutationKind::TaskCreate,
        MutationKind::TaskUpdate,
        MutationKind::TaskComplete,
        MutationKind::TaskDelete,
        MutationKind::NoteCreate,
        MutationKind::NoteUpdate,
        MutationKind::NoteDelete,
        MutationKind::AppointmentCreate,
        MutationKind::AppointmentUpdate,
        MutationKind::AppointmentCancel,
        MutationKind::AppointmentDelete,
        MutationKind::BusinessLink,
        MutationKind::BusinessUnlink,
    ];
}

/// One change made by [`FakeGhl::mutate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mutation {
    /// What happened.
    pub kind: MutationKind,
    /// Location of the contact.
    pub location_id: String,
    /// The contact (for contact mutations, the same as `object_id`).
    pub contact_id: String,
    /// The contact, task, note or appointment id (the contact for business links).
    pub object_id: String,
}

/// A business of a seeded location (`GET /contacts/business/:businessId`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusinessInfo {
    /// 24 hex digits, like GHL's.
    pub id: String,
    pub name: String,
}

/// The fake GHL server. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct FakeGhl {
    inner: Arc<Mutex<State>>,
    client: reqwest::Client,
}

impl FakeGhl {
    /// Builds and seeds the fake.
    pub fn new(options: GhlOptions) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State::new(options))),
            client: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// All GHL routes plus `/__admin/ghl/*`.
    pub fn router(&self) -> axum::Router {
        routes::router(self.clone())
    }

    /// The seeded locations with their PITs.
    pub fn locations(&self) -> Vec<LocationInfo> {
        self.lock()
            .locs
            .iter()
            .map(|l| LocationInfo { id: l.id.as_str().to_owned(), name: l.name.clone(), pit: l.pit.clone() })
            .collect()
    }

    /// The agency (company) id.
    pub fn company_id(&self) -> String {
        self.lock().company.as_str().to_owned()
    }

    /// `(client_id, client_secret)` accepted by `/oauth/token`.
    pub fn oauth_client(&self) -> (String, String) {
        let s = self.lock();
        (s.client_id.clone(), s.client_secret.clone())
    }

    /// A one-time authorization code; `None` means a Company (agency) install.
    /// An unknown location id yields a code that fails with `invalid_grant`.
    /// Its grant has every scope the fake knows.
    pub fn authorization_code(&self, location_id: Option<&str>) -> String {
        self.authorization_code_with_scopes(location_id, schema::KNOWN_SCOPES)
    }

    /// Like [`FakeGhl::authorization_code`], for a grant with only `scopes` (e.g. without
    /// `locations/tasks.readonly`). Unknown scope names are ignored. Location tokens minted
    /// from an agency token of this grant carry the same scopes.
    pub fn authorization_code_with_scopes<S: AsRef<str>>(&self, location_id: Option<&str>, scopes: &[S]) -> String {
        let scopes = schema::ScopeSet::parse(scopes);
        let mut s = self.lock();
        let code = model::random_hex(&mut s.rng, 40);
        let principal = match location_id {
            None => Some(Principal::Company),
            Some(id) => s.loc_of(id).map(Principal::Location),
        };
        if let Some(principal) = principal {
            s.codes.insert(code.clone(), state::Code { principal, used: false, scopes });
        }
        code
    }

    /// A new Private Integration Token for a seeded location with only `scopes` (unknown
    /// names are ignored); `None` if the location is unknown. The seeded PITs
    /// ([`FakeGhl::locations`]) have every scope.
    pub fn create_pit<S: AsRef<str>>(&self, location_id: &str, scopes: &[S]) -> Option<String> {
        let mut s = self.lock();
        let loc = s.loc_of(location_id)?;
        Some(s.new_pit(loc, schema::ScopeSet::parse(scopes)))
    }

    /// The webhook Ed25519 public key: base64 of the SPKI DER (`MCowBQYDK2VwAyEA…`).
    pub fn webhook_public_key(&self) -> String {
        webhook::public_key_spki(&self.lock().signing_key)
    }

    /// Sets (or clears) where webhooks go.
    pub fn set_webhook_url(&self, url: Option<url::Url>) {
        self.lock().webhook_url = url;
    }

    /// Advances the fake's clock (token expiry, refresh grace, search lag, rate windows,
    /// timestamps of later writes).
    pub fn advance_clock(&self, by: Duration) {
        self.lock().clock_offset += by;
    }

    /// `count` seeded random changes (in `location_id`, or random locations); emits webhooks.
    /// The mix covers contacts, tasks and notes only (create 15 %, update 30 %, delete 5 %,
    /// tasks 30 %, notes 20 %); [`FakeGhl::mutate_kinds`] reaches appointments and businesses.
    pub fn mutate(&self, location_id: Option<&str>, count: usize) -> Vec<Mutation> {
        self.mutate_with(location_id, count, None)
    }

    /// `count` seeded random changes of kinds drawn uniformly from `kinds` (e.g.
    /// `&[MutationKind::AppointmentCancel]`, or [`MutationKind::ALL`]); emits webhooks. A
    /// kind that needs an object the chosen contact lacks creates one instead, and says so in
    /// the returned [`Mutation`].
    pub fn mutate_kinds(&self, location_id: Option<&str>, count: usize, kinds: &[MutationKind]) -> Vec<Mutation> {
        if kinds.is_empty() {
            return Vec::new();
        }
        self.mutate_with(location_id, count, Some(kinds))
    }

    fn mutate_with(&self, location_id: Option<&str>, count: usize, kinds: Option<&[MutationKind]>) -> Vec<Mutation> {
        let mut out = Vec::with_capacity(count);
        let mut events = Vec::new();
        {
            let mut s = self.lock();
            let fixed = location_id.map(|id| s.loc_of(id));
            if fixed == Some(None) || s.locs.is_empty() {
                return out;
            }
            for _ in 0..count {
                let loc = match fixed {
                    Some(Some(loc)) => loc,
                    _ => {
                        let n = s.locs.len();
                        u16::try_from(s.rng.usize(..n)).unwrap_or(0)
                    }
                };
                let one = match kinds {
                    Some(kinds) => s.mutate_one_of(loc, kinds),
                    None => s.mutate_one(loc),
                };
                if let Some((m, e)) = one {
                    out.push(m);
                    events.extend(e);
                }
            }
        }
        self.dispatch(events, WebhookMode::Normal);
        out
    }

    fn write<T>(&self, f: impl FnOnce(&mut State) -> Option<(T, Vec<Value>)>) -> Option<T> {
        let result = f(&mut self.lock());
        result.map(|(value, events)| {
            self.dispatch(events, WebhookMode::Normal);
            value
        })
    }

    /// Creates a contact (fields as `CreateContactDto`, `locationId` optional); returns its id
    /// (empty string if the location is unknown or the fields are invalid).
    pub fn create_contact(&self, location_id: &str, fields: Value) -> String {
        self.write(|s| {
            let loc = s.loc_of(location_id)?;
            let mut obj = fields.as_object().cloned().unwrap_or_default();
            obj.remove("locationId");
            let (c, events) = s.create_contact(loc, &obj).ok()?;
            Some((c.id.as_str().to_owned(), events))
        })
        .unwrap_or_default()
    }

    /// Updates a contact (`UpdateContactDto` fields); false if missing or invalid.
    pub fn update_contact(&self, id: &str, fields: Value) -> bool {
        self.write(|s| {
            let (_, events) = s.update_contact(Cid::parse(id)?, fields.as_object()?).ok()?;
            Some(((), events))
        })
        .is_some()
    }

    /// Deletes a contact with its tasks and notes.
    pub fn delete_contact(&self, id: &str) -> bool {
        self.write(|s| Some(((), s.delete_contact(Cid::parse(id)?).ok()?))).is_some()
    }

    /// Creates a task (`{title, body, dueDate, completed, assignedTo}`) on a contact.
    pub fn create_task(&self, contact_id: &str, fields: Value) -> Option<String> {
        self.write(|s| {
            let (t, events) = s.create_task(Cid::parse(contact_id)?, fields.as_object()?).ok()?;
            Some((t.id.as_str().to_owned(), events))
        })
    }

    /// Updates a task by id.
    pub fn update_task(&self, task_id: &str, fields: Value) -> bool {
        self.write(|s| {
            let (_, events) = s.update_task(Cid::parse(task_id)?, fields.as_object()?, false).ok()?;
            Some(((), events))
        })
        .is_some()
    }

    /// Sets a task's `completed` flag (fires `TaskComplete` when it becomes true).
    pub fn complete_task(&self, task_id: &str, completed: bool) -> bool {
        self.write(|s| {
            let body = serde_json::json!({ "completed": completed });
            let (_, events) = s.update_task(Cid::parse(task_id)?, body.as_object()?, true).ok()?;
            Some(((), events))
        })
        .is_some()
    }

    /// Deletes a task by id.
    pub fn delete_task(&self, task_id: &str) -> bool {
        self.write(|s| Some(((), s.delete_task(Cid::parse(task_id)?).ok()?))).is_some()
    }

    /// Creates a note (`{body, userId, title, color, pinned}`) on a contact.
    pub fn create_note(&self, contact_id: &str, fields: Value) -> Option<String> {
        self.write(|s| {
            let (n, events) = s.create_note(Cid::parse(contact_id)?, fields.as_object()?).ok()?;
            Some((n.id.as_str().to_owned(), events))
        })
    }

    /// Updates a note by id.
    pub fn update_note(&self, note_id: &str, fields: Value) -> bool {
        self.write(|s| {
            let (_, events) = s.update_note(Cid::parse(note_id)?, fields.as_object()?).ok()?;
            Some(((), events))
        })
        .is_some()
    }

    /// Deletes a note by id.
    pub fn delete_note(&self, note_id: &str) -> bool {
        self.write(|s| Some(((), s.delete_note(Cid::parse(note_id)?).ok()?))).is_some()
    }

    /// The contact's appointments as `GET /contacts/:id/appointments` renders them.
    pub fn appointments(&self, contact_id: &str) -> Vec<Value> {
        let s = self.lock();
        Cid::parse(contact_id).map(|c| s.render_appointments(c)).unwrap_or_default()
    }

    /// Books an appointment on a contact (`{startTime*, endTime, title, calendarId,
    /// appointmentStatus, assignedUserId, notes, address}`; times as ISO-8601, epoch ms or
    /// `YYYY-MM-DD HH:MM:SS` UTC); fires `AppointmentCreate`.
    pub fn create_appointment(&self, contact_id: &str, fields: Value) -> Option<String> {
        self.write(|s| {
            let (a, events) = s.create_appointment(Cid::parse(contact_id)?, fields.as_object()?).ok()?;
            Some((a.id.as_str().to_owned(), events))
        })
    }

    /// Edits an appointment by id; fires `AppointmentUpdate`.
    pub fn update_appointment(&self, appointment_id: &str, fields: Value) -> bool {
        self.write(|s| {
            let (_, events) = s.update_appointment(Cid::parse(appointment_id)?, fields.as_object()?).ok()?;
            Some(((), events))
        })
        .is_some()
    }

    /// Cancels an appointment (it stays listed, `appointmentStatus: "cancelled"`); fires
    /// `AppointmentUpdate`.
    pub fn cancel_appointment(&self, appointment_id: &str) -> bool {
        self.write(|s| Some(((), s.cancel_appointment(Cid::parse(appointment_id)?).ok()?.1))).is_some()
    }

    /// Deletes an appointment; fires `AppointmentDelete`.
    pub fn delete_appointment(&self, appointment_id: &str) -> bool {
        self.write(|s| Some(((), s.delete_appointment(Cid::parse(appointment_id)?).ok()?))).is_some()
    }

    /// The businesses of a seeded location.
    pub fn businesses(&self, location_id: &str) -> Vec<BusinessInfo> {
        let s = self.lock();
        s.loc_of(location_id)
            .and_then(|loc| s.locs.get(usize::from(loc)))
            .map(|l| {
                l.businesses.iter().map(|(id, name)| BusinessInfo { id: id.to_string(), name: name.clone() }).collect()
            })
            .unwrap_or_default()
    }

    /// Deletes a location's custom field definition by its `fieldKey` (`contact.lusha_id`), as
    /// deleting it in GHL's settings does (values on contacts stay as they were). False if the
    /// location or the field is missing.
    pub fn delete_custom_field(&self, location_id: &str, field_key: &str) -> bool {
        let mut s = self.lock();
        let Some(loc) = s.loc_of(location_id) else {
            return false;
        };
        let Some(l) = s.locs.get_mut(usize::from(loc)) else {
            return false;
        };
        let before = l.custom_fields.len();
        l.custom_fields.retain(|(_, _, key, _)| &**key != field_key);
        l.custom_fields.len() != before
    }

    /// Creates a TEXT custom field with a new id (as GHL's settings do); returns the id, or
    /// `None` if the location is unknown or the key is taken.
    pub fn create_custom_field(&self, location_id: &str, name: &str, field_key: &str) -> Option<String> {
        let mut s = self.lock();
        let loc = s.loc_of(location_id)?;
        let id = Cid::random(&mut s.rng);
        let l = s.locs.get_mut(usize::from(loc))?;
        if l.custom_fields.iter().any(|(_, _, key, _)| &**key == field_key) {
            return None;
        }
        l.custom_fields.push((Arc::from(id.as_str()), Arc::from(name), Arc::from(field_key), "TEXT"));
        Some(id.as_str().to_owned())
    }

    /// Links a contact to a business (`Some`) or unlinks it (`None`), as
    /// `POST /contacts/bulk/business` does: bumps `dateUpdated` and fires `ContactUpdate`
    /// (nothing when unchanged). False if the contact is missing.
    pub fn set_business(&self, contact_id: &str, business_id: Option<&str>) -> bool {
        self.write(|s| {
            let (_, events) = s.set_business(Cid::parse(contact_id)?, business_id).ok()?;
            Some(((), events))
        })
        .is_some()
    }

    /// The live contact as a `POST /contacts/search` item renders it (sorted by
    /// `dateUpdated`, so `searchAfter` is `[dateUpdated ms, id]`), read from the live record
    /// rather than the lagged index: for comparing the two read shapes of one contact.
    pub fn search_item(&self, id: &str) -> Option<Value> {
        let s = self.lock();
        let c = s.contacts.get(&Cid::parse(id)?)?;
        let f = s.search_fields_of(c);
        serde_json::from_str(&model::search_item(c, &f, s.loc_id(c.loc), c.updated)).ok()
    }

    /// The live contact as `GET /contacts/:id` renders it.
    pub fn contact(&self, id: &str) -> Option<Value> {
        let s = self.lock();
        let c = s.contacts.get(&Cid::parse(id)?)?;
        Some(s.render(c, model::Shape::Full))
    }

    /// Ids of the live contacts of a location, sorted.
    pub fn contact_ids(&self, location_id: &str) -> Vec<String> {
        let s = self.lock();
        let Some(loc) = s.loc_of(location_id) else {
            return Vec::new();
        };
        let mut ids: Vec<String> =
            s.contacts.values().filter(|c| c.loc == loc).map(|c| c.id.as_str().to_owned()).collect();
        ids.sort();
        ids
    }

    /// The contact's tasks as `GET /contacts/:id/tasks` renders them.
    pub fn tasks(&self, contact_id: &str) -> Vec<Value> {
        let s = self.lock();
        Cid::parse(contact_id).map(|c| s.tasks_of(c).iter().map(|t| t.render()).collect()).unwrap_or_default()
    }

    /// The contact's notes as `GET /contacts/:id/notes` renders them.
    pub fn notes(&self, contact_id: &str) -> Vec<Value> {
        let s = self.lock();
        Cid::parse(contact_id).map(|c| s.notes_of(c).iter().map(|n| n.render()).collect()).unwrap_or_default()
    }

    /// Counters since start or the last [`FakeGhl::reset_stats`].
    pub fn stats(&self) -> GhlStats {
        self.lock().stats.clone()
    }

    /// Requests accepted today per rate-limit bucket: `location:<id>` (a location's token) or
    /// `company:<id>` (the agency's). Not reset by [`FakeGhl::reset_stats`].
    pub fn requests_by_bucket(&self) -> BTreeMap<String, u64> {
        self.lock().daily_used_by_bucket()
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.lock().stats = GhlStats::default();
    }

    /// Injects a fault on `route` (`"METHOD /template"` such as `"GET /contacts/:contactId"`,
    /// or `"*"`).
    pub fn set_fault(&self, route: &str, fault: Fault) {
        self.lock().faults.insert(route.to_owned(), fault);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Forces (or lifts) "daily quota exhausted" for a location's bucket (or the company's,
    /// when given the company id).
    pub fn set_daily_exhausted(&self, location_id: &str, exhausted: bool) {
        let mut s = self.lock();
        let key = if location_id == s.company.as_str() {
            format!("company:{location_id}")
        } else {
            format!("location:{location_id}")
        };
        if exhausted {
            s.daily_exhausted.insert(key);
        } else {
            s.daily_exhausted.remove(&key);
        }
    }

    /// Sends an arbitrary event (missing `timestamp`/`webhookId`/`appId`/`versionId` are filled).
    pub fn emit_webhook(&self, event: Value, mode: WebhookMode) {
        self.dispatch(vec![event], mode);
    }

    /// Webhooks sent so far (most recent 10,000), as JSON.
    pub fn sent_webhooks(&self) -> Vec<Value> {
        self.lock().sent.iter().map(|w| serde_json::to_value(w).unwrap_or(Value::Null)).collect()
    }

    /// Replaces all data with a fresh seed (keeps the webhook URL and faults).
    pub fn reseed(&self, options: GhlOptions) {
        let mut s = self.lock();
        let url = s.webhook_url.clone();
        let faults = std::mem::take(&mut s.faults);
        *s = State::new(options);
        s.webhook_url = url;
        s.faults = faults;
    }

    /// The current options.
    pub fn options(&self) -> GhlOptions {
        self.lock().opts.clone()
    }
}
