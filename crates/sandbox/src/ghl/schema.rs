//! The field lists of GHL's response shapes, copied from the OpenAPI specs, and the few
//! documented fields real GHL adds. Renderers in `model.rs` emit exactly these keys (a
//! field without a value is left out, as GHL leaves it out), so a shape can only drift from
//! the spec by editing this file.
//!
//! `crates/sandbox/fixtures/ghl-schemas.json` holds the same lists as copied from the spec
//! files by a script; the shape tests check that this file, the fixture, the spec files (when
//! present) and the rendered JSON all agree.

/// `GET /contacts/:contactId` (`{contact}`), `PUT` and upsert answers: the properties of
/// `GetContectByIdSchema` (sic) in `apps/contacts.json`.
pub(crate) const GET_CONTACT_FIELDS: &[&str] = &[
    "id",
    "name",
    "locationId",
    "firstName",
    "lastName",
    "email",
    "emailLowerCase",
    "timezone",
    "companyName",
    "phone",
    "dnd",
    "dndSettings",
    "type",
    "source",
    "assignedTo",
    "address1",
    "city",
    "state",
    "country",
    "postalCode",
    "website",
    "tags",
    "dateOfBirth",
    "dateAdded",
    "dateUpdated",
    "attachments",
    "ssn",
    "keyword",
    "firstNameLowerCase",
    "fullNameLowerCase",
    "lastNameLowerCase",
    "lastActivity",
    "customFields",
    "businessId",
    "attributionSource",
    "lastAttributionSource",
    "visitorId",
];

/// Fields real `GET` answers carry beyond the schema (reference/ghl.md §6.7): written
/// `inboundDndSettings` are read back. Present only when set.
pub(crate) const GET_CONTACT_EXTRAS: &[&str] = &["inboundDndSettings"];

/// Items of `POST /contacts/search`: the properties of `Contact`, the item schema of
/// `SearchContactSuccessResponseDto` in `history/be089e5/contacts/contacts.json` (the only
/// spec version that documents the search answer). The drift against `GET` is the point:
/// `address` (not `address1`), `dateOfBirth` as epoch ms, derived `phoneLabel`,
/// `businessName`, `validEmail`, the `searchAfter` cursor; no `timezone`, `attributionSource`,
/// `lastAttributionSource`, `visitorId`, `ssn`, `keyword`, `name`, `emailLowerCase`,
/// `lastActivity`.
#[cfg(test)] // Rendered by a struct or `json!`; the shape tests hold the output to this list.
pub(crate) const SEARCH_ITEM_FIELDS: &[&str] = &[
    "id",
    "phoneLabel",
    "country",
    "address",
    "source",
    "type",
    "locationId",
    "dnd",
    "state",
    "businessName",
    "customFields",
    "tags",
    "dateAdded",
    "additionalEmails",
    "phone",
    "companyName",
    "additionalPhones",
    "dateUpdated",
    "city",
    "dateOfBirth",
    "firstNameLowerCase",
    "lastNameLowerCase",
    "email",
    "assignedTo",
    "followers",
    "validEmail",
    "dndSettings",
    "opportunities",
    "postalCode",
    "businessId",
    "searchAfter",
];

/// Fields real search items carry beyond that schema: `contactName` (reference/ghl.md §6.2)
/// and the names and website (highlevel-api-docs#314, verified live). #314 also lists
/// `attributionSource`, `lastAttributionSource` and `inboundDndSettings`; the sandbox follows
/// the schema there, the harder case for a client (a field only `GET` has).
#[cfg(test)] // Rendered by a struct or `json!`; the shape tests hold the output to this list.
pub(crate) const SEARCH_ITEM_EXTRAS: &[&str] = &["firstName", "lastName", "contactName", "website"];

/// Items of `GET /contacts/business/:businessId` and of the deprecated `GET /contacts/`:
/// the properties of `ContactsSearchSchema` in `apps/contacts.json`.
pub(crate) const LIST_ITEM_FIELDS: &[&str] = &[
    "id",
    "locationId",
    "email",
    "timezone",
    "country",
    "source",
    "dateAdded",
    "customFields",
    "tags",
    "businessId",
    "attributions",
    "followers",
];

/// The 201 answer of `POST /contacts/` (`{contact}`): the properties of
/// `CreateContactSchema` in `apps/contacts.json`.
pub(crate) const CREATED_CONTACT_FIELDS: &[&str] = &[
    "id",
    "dateAdded",
    "dateUpdated",
    "deleted",
    "tags",
    "type",
    "customFields",
    "locationId",
    "firstName",
    "firstNameLowerCase",
    "fullNameLowerCase",
    "lastName",
    "lastNameLowerCase",
    "email",
    "emailLowerCase",
    "bounceEmail",
    "unsubscribeEmail",
    "dnd",
    "dndSettings",
    "phone",
    "address1",
    "city",
    "state",
    "country",
    "postalCode",
    "website",
    "source",
    "companyName",
    "dateOfBirth",
    "birthMonth",
    "birthDay",
    "lastSessionActivityAt",
    "offers",
    "products",
    "businessId",
    "assignedTo",
];

/// `Contact*` webhook payloads: the fields of `docs/webhook events/ContactCreate.md`
/// (reference/ghl.md §8.1) plus `timezone` and `businessId`, which the sandbox has always
/// sent (`type` is replaced by the event name).
pub(crate) const WEBHOOK_CONTACT_FIELDS: &[&str] = &[
    "id",
    "locationId",
    "firstName",
    "lastName",
    "name",
    "email",
    "phone",
    "address1",
    "city",
    "state",
    "country",
    "postalCode",
    "website",
    "timezone",
    "source",
    "companyName",
    "assignedTo",
    "businessId",
    "dnd",
    "tags",
    "customFields",
    "dateAdded",
    "dateOfBirth",
    "attachments",
    "type",
];

/// `events[]` of `GET /contacts/:contactId/appointments`: the properties of
/// `GetEventSchema` in `apps/contacts.json`.
#[cfg(test)] // Rendered by a struct or `json!`; the shape tests hold the output to this list.
pub(crate) const APPOINTMENT_FIELDS: &[&str] = &[
    "id",
    "calendarId",
    "status",
    "title",
    "assignedUserId",
    "notes",
    "startTime",
    "endTime",
    "address",
    "locationId",
    "contactId",
    "groupId",
    "appointmentStatus",
    "users",
    "dateAdded",
    "dateUpdated",
    "assignedResources",
];

/// `TaskSchema` in `apps/contacts.json`.
#[cfg(test)] // Rendered by a struct or `json!`; the shape tests hold the output to this list.
pub(crate) const TASK_FIELDS: &[&str] = &["id", "title", "body", "assignedTo", "dueDate", "completed", "contactId"];

/// `GetNoteSchema` in `apps/contacts.json`.
#[cfg(test)] // Rendered by a struct or `json!`; the shape tests hold the output to this list.
pub(crate) const NOTE_FIELDS: &[&str] = &["id", "body", "userId", "dateAdded", "contactId", "title", "color", "pinned"];

/// The body of `POST /locations/:locationId/tasks/search`: `TaskSearchParamsDto` in
/// `apps/locations.json`.
pub(crate) const TASK_SEARCH_BODY_FIELDS: &[&str] =
    &["contactId", "completed", "assignedTo", "query", "limit", "skip", "businessId"];

/// The body of `POST /contacts/bulk/business`: `ContactsBusinessUpdate` in
/// `apps/contacts.json`.
pub(crate) const BUSINESS_UPDATE_BODY_FIELDS: &[&str] = &["locationId", "ids", "businessId"];

/// Scopes the fake knows (reference/ghl.md §3.8), in bit order of [`ScopeSet`].
pub(crate) const KNOWN_SCOPES: &[&str] = &[
    "contacts.readonly",
    "contacts.write",
    "locations.readonly",
    "locations/tasks.readonly",
    "locations/customFields.readonly",
    "oauth.readonly",
    "oauth.write",
];

/// A set of [`KNOWN_SCOPES`] as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScopeSet(u16);

impl ScopeSet {
    /// Every known scope: what seeded PITs and default grants get.
    pub(crate) const ALL: ScopeSet = ScopeSet((1 << 7) - 1);

    /// The known scopes among `names` (unknown names are ignored).
    pub(crate) fn parse<S: AsRef<str>>(names: &[S]) -> Self {
        let mut bits = 0u16;
        for name in names {
            if let Some(i) = KNOWN_SCOPES.iter().position(|s| *s == name.as_ref().trim()) {
                bits |= 1 << i;
            }
        }
        ScopeSet(bits)
    }

    /// One scope as a set (`None` if unknown).
    pub(crate) fn one(name: &str) -> Option<Self> {
        KNOWN_SCOPES.iter().position(|s| *s == name).map(|i| ScopeSet(1 << i))
    }

    pub(crate) fn contains(self, other: ScopeSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// Space-separated, as the token answer's `scope`.
    pub(crate) fn to_scope_string(self) -> String {
        KNOWN_SCOPES
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, s)| *s)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The scope a route needs (`"METHOD /template"` as the gate names it), after
/// reference/ghl.md §3.8 and the spec's `security` blocks. `None`: no scope check (OAuth token
/// endpoint). The bulk routes (business, tags) list no scope in the spec; they are contact
/// writes.
pub(crate) fn required_scope(route: &str) -> Option<&'static str> {
    let (method, path) = route.split_once(' ')?;
    match path {
        "/oauth/token" => None,
        "/oauth/locationToken" => Some("oauth.write"),
        "/oauth/installedLocations" => Some("oauth.readonly"),
        "/locations/:locationId/tasks/search" => Some("locations/tasks.readonly"),
        "/locations/:locationId/customFields" => Some("locations/customFields.readonly"),
        "/locations/:locationId" => Some("locations.readonly"),
        "/contacts/search" => Some("contacts.readonly"),
        _ if method == "GET" => Some("contacts.readonly"),
        _ => Some("contacts.write"),
    }
}
