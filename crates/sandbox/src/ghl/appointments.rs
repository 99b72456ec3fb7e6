//! Appointments of a contact: `GET /contacts/:contactId/appointments` (`GetEventSchema`),
//! seeded for some contacts, and the writes the admin API and `mutate` make (create, update,
//! cancel, delete), each firing its `Appointment*` webhook.
//!
//! GHL writes appointments through its calendars API, which is not part of the contacts spec;
//! the sandbox offers those writes only through the Rust API and `/__admin/ghl/appointments`.
//! A cancel keeps the appointment (`appointmentStatus: "cancelled"`) and fires
//! `AppointmentUpdate`; a delete removes it and fires `AppointmentDelete`
//! (`docs/webhook events/Appointment*.md`).
//!
//! Like contact fields, a seeded contact's appointments cost nothing until touched: they are
//! generated from `(seed, location, n)` on read, and stored only when one of the contact's
//! appointments is written. A seeded appointment's id is an invertible scramble of its
//! contact's id, so a write by appointment id finds the contact without an index.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::model::{ALNUM, Cid, Contact, iso, parse_ms};
use super::state::{ApiError, State};

/// `appointmentStatus` values GHL uses.
const STATUSES: &[&str] = &["new", "confirmed", "cancelled", "showed", "noshow", "invalid"];
/// Properties an appointment write accepts.
const WRITABLE: &[&str] =
    &["calendarId", "title", "startTime", "endTime", "appointmentStatus", "assignedUserId", "notes", "address"];
const TITLES: &[&str] = &["Intro call", "Product demo", "Onboarding session", "Quarterly review"];
const NOTES: &[&str] = &["", "Bring the pricing sheet.", "Wants to see the reporting module.", ""];
pub(crate) const CALENDAR_NAMES: &[&str] = &["Sales calls", "Demos"];

/// Seeds the per-contact stream of seeded appointments.
const SEED_STREAM: u64 = 0xA990_1D7E_5EED_0002;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

/// One appointment (calendar event) of a contact.
#[derive(Debug, Clone)]
pub(crate) struct Appointment {
    pub(crate) id: Cid,
    pub(crate) contact: Cid,
    pub(crate) loc: u16,
    pub(crate) calendar: Arc<str>,
    pub(crate) group: Option<Arc<str>>,
    pub(crate) title: Cow<'static, str>,
    /// One of [`STATUSES`].
    pub(crate) status: &'static str,
    pub(crate) assigned_user: Option<Arc<str>>,
    pub(crate) notes: Cow<'static, str>,
    pub(crate) address: Cow<'static, str>,
    pub(crate) source: &'static str,
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) added: i64,
    pub(crate) updated: i64,
}

fn alnum_index(byte: u8) -> Option<usize> {
    ALNUM.iter().position(|b| *b == byte)
}

/// The id of seeded appointment `k` of `contact`: each character shifted in the id alphabet
/// by an amount that depends on `k` and its position, the order reversed.
fn seeded_id(contact: Cid, k: usize) -> Cid {
    let n = ALNUM.len();
    let mut out = [0u8; 20];
    for (i, byte) in contact.0.iter().enumerate() {
        let index = alnum_index(*byte).unwrap_or(0);
        out[19 - i] = ALNUM[(index + 7 * (k + 1) + i) % n];
    }
    Cid(out)
}

/// The contact whose seeded appointment `k` would have id `id` (inverse of [`seeded_id`]).
fn seeded_contact(id: Cid, k: usize) -> Option<Cid> {
    let n = ALNUM.len();
    let mut out = [0u8; 20];
    for (i, slot) in out.iter_mut().enumerate() {
        let index = alnum_index(id.0[19 - i])?;
        *slot = ALNUM[(index + n * (k + 2) - (7 * (k + 1) + i) % n) % n];
    }
    Some(Cid(out))
}

/// `2021-07-16 11:00:00`, the REST format of the spec's examples (UTC).
fn spaced(ms: i64) -> String {
    let text = iso(ms);
    format!("{} {}", &text[..10], &text[11..19])
}

/// `2023-09-25T16:00:00+00:00`, the webhook format of the docs' examples.
fn offset(ms: i64) -> String {
    format!("{}+00:00", &iso(ms)[..19])
}

/// Parses a write's time: epoch ms, RFC 3339, or the REST `YYYY-MM-DD HH:MM:SS` (UTC).
fn parse_time(value: &Value) -> Option<i64> {
    if let Some(text) = value.as_str()
        && text.len() == 19
        && text.as_bytes().get(10) == Some(&b' ')
    {
        return parse_ms(&Value::String(format!("{}T{}Z", &text[..10], &text[11..])));
    }
    parse_ms(value)
}

impl Appointment {
    /// The legacy `status` that goes with `appointmentStatus`.
    fn legacy_status(&self) -> &'static str {
        match self.status {
            "cancelled" | "showed" | "noshow" | "invalid" => self.status,
            _ => "booked",
        }
    }

    fn users(&self) -> Vec<&str> {
        self.assigned_user.as_deref().into_iter().collect()
    }

    /// One `events[]` item: exactly `schema::APPOINTMENT_FIELDS` (an unassigned appointment
    /// or one outside a calendar group leaves `assignedUserId` / `groupId` out).
    pub(crate) fn render(&self, loc_id: &str) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id.as_str()));
        m.insert("calendarId".into(), json!(&*self.calendar));
        m.insert("status".into(), json!(self.legacy_status()));
        m.insert("title".into(), json!(self.title));
        if let Some(user) = &self.assigned_user {
            m.insert("assignedUserId".into(), json!(&**user));
        }
        m.insert("notes".into(), json!(self.notes));
        m.insert("startTime".into(), json!(spaced(self.start)));
        m.insert("endTime".into(), json!(spaced(self.end)));
        m.insert("address".into(), json!(self.address));
        m.insert("locationId".into(), json!(loc_id));
        m.insert("contactId".into(), json!(self.contact.as_str()));
        if let Some(group) = &self.group {
            m.insert("groupId".into(), json!(&**group));
        }
        m.insert("appointmentStatus".into(), json!(self.status));
        m.insert("users".into(), json!(self.users()));
        m.insert("dateAdded".into(), json!(spaced(self.added)));
        m.insert("dateUpdated".into(), json!(spaced(self.updated)));
        m.insert("assignedResources".into(), json!([]));
        Value::Object(m)
    }

    /// An `Appointment*` webhook body (`{type, locationId, appointment}`).
    pub(crate) fn event(&self, kind: &str, loc_id: &str) -> Value {
        json!({
            "type": kind,
            "locationId": loc_id,
            "appointment": {
                "id": self.id.as_str(),
                "address": self.address,
                "title": self.title,
                "calendarId": &*self.calendar,
                "contactId": self.contact.as_str(),
                "groupId": self.group.as_deref(),
                "appointmentStatus": self.status,
                "assignedUserId": self.assigned_user.as_deref(),
                "users": self.users(),
                "notes": self.notes,
                "source": self.source,
                "startTime": offset(self.start),
                "endTime": offset(self.end),
                "dateAdded": offset(self.added),
                "dateUpdated": offset(self.updated),
            },
        })
    }
}

impl State {
    /// The appointments seeded contact `c` was born with: about one contact in four has
    /// `1..=max_appointments_per_contact`; contacts created later have none.
    fn seeded_appointments(&self, c: &Contact) -> Vec<Appointment> {
        let max = self.opts.max_appointments_per_contact;
        if max == 0 || usize::try_from(c.n).unwrap_or(usize::MAX) >= self.opts.contacts_per_location {
            return Vec::new();
        }
        let mut rng = fastrand::Rng::with_seed(
            self.opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ SEED_STREAM
                ^ (u64::from(c.loc) << 40)
                ^ u64::from(c.n),
        );
        if rng.u8(..4) != 0 {
            return Vec::new();
        }
        (0..rng.usize(1..=max)).map(|k| self.new_appointment_seeded(&mut rng, c, seeded_id(c.id, k))).collect()
    }

    fn new_appointment_seeded(&self, rng: &mut fastrand::Rng, c: &Contact, id: Cid) -> Appointment {
        let l = &self.locs[usize::from(c.loc)];
        let (calendar, group) = match l.calendars.get(rng.usize(..l.calendars.len().max(1))) {
            Some(cal) => (cal.id.clone(), cal.group.clone()),
            None => (Arc::from(""), None),
        };
        let users = &l.users;
        // Whole half hours, up to 60 days after the contact was added.
        let start = (c.added + rng.i64(DAY_MS..60 * DAY_MS)) / (30 * MINUTE_MS) * (30 * MINUTE_MS);
        let added = c.added + rng.i64(0..DAY_MS);
        let status = ["confirmed", "confirmed", "new", "showed", "cancelled"][rng.usize(..5)];
        let address = if rng.bool() {
            Cow::Owned(format!("https://meet.example.test/{}", Cid::random(rng).as_str()))
        } else {
            Cow::Borrowed("")
        };
        Appointment {
            id,
            contact: c.id,
            loc: c.loc,
            calendar,
            group,
            title: TITLES[rng.usize(..TITLES.len())].into(),
            status,
            assigned_user: (!users.is_empty() && rng.u8(..4) != 0).then(|| users[rng.usize(..users.len())].0.clone()),
            notes: NOTES[rng.usize(..NOTES.len())].into(),
            address,
            source: "booking_widget",
            start,
            end: start + [30, 60][rng.usize(..2)] * MINUTE_MS,
            added,
            updated: if status == "confirmed" { added } else { added + rng.i64(0..DAY_MS) },
        }
    }

    fn appointments_stored(&self, contact: Cid) -> bool {
        self.children.get(&contact).is_some_and(|k| k.appointments_stored)
    }

    /// Stores a contact's seeded appointments before the first write to any of them.
    fn store_appointments(&mut self, contact: Cid) {
        if self.appointments_stored(contact) {
            return;
        }
        let seeded = self.contacts.get(&contact).map(|c| self.seeded_appointments(c)).unwrap_or_default();
        let kids = self.children.entry(contact).or_default();
        kids.appointments_stored = true;
        kids.appointments = seeded.iter().map(|a| a.id).collect();
        for a in seeded {
            self.appointments.insert(a.id, a);
        }
    }

    /// Finds a live appointment by id (storing its contact's seeded ones first).
    fn find_appointment(&mut self, id: Cid) -> Result<Cid, ApiError> {
        if self.appointments.contains_key(&id) {
            return Ok(id);
        }
        for k in 0..self.opts.max_appointments_per_contact {
            let Some(contact) = seeded_contact(id, k) else { continue };
            if self.appointments_stored(contact) {
                continue;
            }
            let seeded = self.contacts.get(&contact).map(|c| self.seeded_appointments(c)).unwrap_or_default();
            if seeded.iter().any(|a| a.id == id) {
                self.store_appointments(contact);
                return Ok(id);
            }
        }
        Err(ApiError::not_found("Appointment"))
    }

    fn apply_appointment(&self, a: &mut Appointment, obj: &Map<String, Value>) -> Result<(), ApiError> {
        let mut problems: Vec<String> = obj
            .keys()
            .filter(|k| !WRITABLE.contains(&k.as_str()))
            .map(|k| format!("property {k} should not exist"))
            .collect();
        let text = |v: &Value| v.as_str().map(str::to_owned);
        for (key, value) in obj {
            match key.as_str() {
                "calendarId" => match text(value) {
                    Some(id) => a.calendar = Arc::from(id.as_str()),
                    None => problems.push("calendarId must be a string".to_owned()),
                },
                "title" => match text(value) {
                    Some(t) => a.title = Cow::Owned(t),
                    None => problems.push("title must be a string".to_owned()),
                },
                "notes" => a.notes = Cow::Owned(text(value).unwrap_or_default()),
                "address" => a.address = Cow::Owned(text(value).unwrap_or_default()),
                "assignedUserId" => a.assigned_user = value.as_str().map(Arc::from),
                "startTime" | "endTime" => match parse_time(value) {
                    Some(ms) if key == "startTime" => a.start = ms,
                    Some(ms) => a.end = ms,
                    None => problems.push(format!("{key} must be a valid ISO 8601 date string")),
                },
                "appointmentStatus" => match value.as_str().and_then(|s| STATUSES.iter().find(|x| **x == s)) {
                    Some(status) => a.status = status,
                    None => problems.push(format!("appointmentStatus must be one of: {}", STATUSES.join(", "))),
                },
                _ => {}
            }
        }
        if a.end <= a.start {
            if obj.contains_key("endTime") {
                problems.push("endTime must be after startTime".to_owned());
            } else {
                a.end = a.start + 30 * MINUTE_MS;
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ApiError::unprocessable(problems)) }
    }

    /// Books an appointment for a live contact (`startTime` required; calendar defaults to
    /// the location's first).
    pub(crate) fn create_appointment(
        &mut self,
        contact: Cid,
        obj: &Map<String, Value>,
    ) -> Result<(Appointment, Vec<Value>), ApiError> {
        let c = self.contacts.get(&contact).cloned().ok_or_else(ApiError::contact_not_found)?;
        if !obj.contains_key("startTime") {
            return Err(ApiError::unprocessable(vec!["startTime must be a valid ISO 8601 date string".to_owned()]));
        }
        self.store_appointments(contact);
        let now = self.stamp();
        let (calendar, group) = self
            .locs
            .get(usize::from(c.loc))
            .and_then(|l| l.calendars.first())
            .map(|c| (c.id.clone(), c.group.clone()))
            .unwrap_or_else(|| (Arc::from(""), None));
        let mut appointment = Appointment {
            id: Cid::random(&mut self.rng),
            contact,
            loc: c.loc,
            calendar,
            group,
            title: Cow::Borrowed("Appointment"),
            status: "confirmed",
            assigned_user: None,
            notes: Cow::Borrowed(""),
            address: Cow::Borrowed(""),
            source: "third_party",
            start: now,
            end: now,
            added: now,
            updated: now,
        };
        self.apply_appointment(&mut appointment, obj)?;
        self.appointments.insert(appointment.id, appointment.clone());
        self.children.entry(contact).or_default().appointments.push(appointment.id);
        self.bump_for_child(contact);
        let event = appointment.event("AppointmentCreate", self.loc_id(c.loc));
        Ok((appointment, vec![event]))
    }

    /// Edits an appointment (`WRITABLE` fields); fires `AppointmentUpdate`.
    pub(crate) fn update_appointment(
        &mut self,
        id: Cid,
        obj: &Map<String, Value>,
    ) -> Result<(Appointment, Vec<Value>), ApiError> {
        let id = self.find_appointment(id)?;
        let mut appointment = self.appointments.get(&id).cloned().ok_or_else(|| ApiError::not_found("Appointment"))?;
        self.apply_appointment(&mut appointment, obj)?;
        appointment.updated = self.stamp();
        self.appointments.insert(id, appointment.clone());
        self.bump_for_child(appointment.contact);
        let event = appointment.event("AppointmentUpdate", self.loc_id(appointment.loc));
        Ok((appointment, vec![event]))
    }

    /// Cancels an appointment: it stays listed with `appointmentStatus: "cancelled"`.
    pub(crate) fn cancel_appointment(&mut self, id: Cid) -> Result<(Appointment, Vec<Value>), ApiError> {
        let body = json!({"appointmentStatus": "cancelled"});
        let obj = body.as_object().cloned().unwrap_or_default();
        self.update_appointment(id, &obj)
    }

    /// Deletes an appointment; fires `AppointmentDelete`.
    pub(crate) fn delete_appointment(&mut self, id: Cid) -> Result<Vec<Value>, ApiError> {
        let id = self.find_appointment(id)?;
        let appointment = self.appointments.remove(&id).ok_or_else(|| ApiError::not_found("Appointment"))?;
        if let Some(kids) = self.children.get_mut(&appointment.contact) {
            kids.appointments.retain(|a| *a != id);
        }
        self.bump_for_child(appointment.contact);
        Ok(vec![appointment.event("AppointmentDelete", self.loc_id(appointment.loc))])
    }

    /// The contact's appointments, earliest start first.
    pub(crate) fn appointments_of(&self, contact: Cid) -> Vec<Appointment> {
        let mut list: Vec<Appointment> = match self.children.get(&contact) {
            Some(k) if k.appointments_stored => {
                k.appointments.iter().filter_map(|a| self.appointments.get(a)).cloned().collect()
            }
            _ => self.contacts.get(&contact).map(|c| self.seeded_appointments(c)).unwrap_or_default(),
        };
        list.sort_by_key(|a| (a.start, a.id));
        list
    }

    /// A random live appointment of `contact` (for `mutate`).
    pub(crate) fn some_appointment(&mut self, contact: Cid, live_only: bool) -> Option<Cid> {
        let ids: Vec<Cid> = self
            .appointments_of(contact)
            .into_iter()
            .filter(|a| !live_only || a.status != "cancelled")
            .map(|a| a.id)
            .collect();
        (!ids.is_empty()).then(|| ids[self.rng.usize(..ids.len())])
    }

    /// Rendered appointments of a contact.
    pub(crate) fn render_appointments(&self, contact: Cid) -> Vec<Value> {
        self.appointments_of(contact).iter().map(|a| a.render(self.loc_id(a.loc))).collect()
    }

    /// The start of a new appointment a `mutate` books: tomorrow, on the hour.
    pub(crate) fn next_slot(&self) -> i64 {
        (self.wall_ms() + DAY_MS) / (60 * MINUTE_MS) * (60 * MINUTE_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_lead_back_to_their_contact() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let contact = Cid::random(&mut rng);
            for k in 0..4 {
                let id = seeded_id(contact, k);
                assert_ne!(id, contact);
                assert_eq!(seeded_contact(id, k), Some(contact));
                assert_ne!(seeded_id(contact, k + 1), id);
            }
        }
        assert_eq!(spaced(1_626_433_200_000), "2021-07-16 11:00:00");
        assert_eq!(offset(1_626_433_200_000), "2021-07-16T11:00:00+00:00");
        assert_eq!(parse_time(&Value::String("2021-07-16 11:00:00".into())), Some(1_626_433_200_000));
    }
}
