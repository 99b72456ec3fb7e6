//! The catalog of triggers and actions: the one source of truth for the config parser (an
//! unknown trigger, action or parameter is a config error) and for `docs/operations.md`
//! ([`markdown`]; a test fails when the two drift).

/// What `old`, `new` and `record` hold for a trigger (and so which field names templates may
/// use after `old.`, `new.` and `record.`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Contact,
    Task,
    Note,
    Appointment,
}

impl RecordKind {
    /// The record's known top-level fields.
    pub fn fields(self) -> Vec<&'static str> {
        match self {
            RecordKind::Contact => contact_fields(),
            RecordKind::Task => TASK_FIELDS.to_vec(),
            RecordKind::Note => NOTE_FIELDS.to_vec(),
            RecordKind::Appointment => APPOINTMENT_FIELDS.to_vec(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Contact => "contact",
            RecordKind::Task => "task",
            RecordKind::Note => "note",
            RecordKind::Appointment => "appointment",
        }
    }
}

/// A task's fields (reference/ghl.md §6.4).
pub const TASK_FIELDS: &[&str] = &["id", "title", "body", "assignedTo", "dueDate", "completed", "contactId"];
/// A note's fields (reference/ghl.md §6.5).
pub const NOTE_FIELDS: &[&str] = &["id", "body", "userId", "dateAdded", "contactId", "title", "color", "pinned"];
/// An appointment's fields (`events[]` of `GET /contacts/:contactId/appointments`, `crate::ghl::write::Appointment`).
pub const APPOINTMENT_FIELDS: &[&str] = &[
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

/// A contact's fields: what `GET /contacts/:contactId` and search return
/// (`crate::domain::normalize`), plus the webhook-only ones the mappings know.
pub fn contact_fields() -> Vec<&'static str> {
    let mut fields: Vec<&'static str> = crate::domain::normalize::HASHED_CONTACT_FIELDS
        .iter()
        .chain(crate::domain::normalize::GET_ONLY_CONTACT_FIELDS)
        .chain(crate::connectors::mapping::CONTACT_FIELDS)
        .copied()
        .collect();
    fields.sort_unstable();
    fields.dedup();
    fields
}

/// One trigger.
#[derive(Debug, Clone, Copy)]
pub struct TriggerDoc {
    pub name: &'static str,
    /// The record `old`/`new`/`record` hold (the contact for non-record triggers, in `contact`).
    pub record: RecordKind,
    /// What produces it: the GHL endpoints read, or the connector.
    pub source: &'static str,
    /// Its `data` fields (name, meaning).
    pub fields: &'static [(&'static str, &'static str)],
    /// A rule using it (TOML).
    pub example: &'static str,
}

/// One action parameter.
#[derive(Debug, Clone, Copy)]
pub struct ParamDoc {
    pub name: &'static str,
    pub required: bool,
    pub meaning: &'static str,
}

/// One action.
#[derive(Debug, Clone, Copy)]
pub struct ActionDoc {
    /// The `do = "…"` name.
    pub name: &'static str,
    /// What it does: the GHL endpoint(s) called, or the outbox row written.
    pub effect: &'static str,
    pub params: &'static [ParamDoc],
    /// An action table using it (TOML).
    pub example: &'static str,
}

const CONTACT_SOURCE: &str = "contact sync: `POST /contacts/search` (changed contacts, `dateUpdated` ascending) and \
                              `GET /contacts/:contactId` (webhook hints, GET-only fields)";
const RECONCILE_SOURCE: &str = "contact sync: a contact gone from `POST /contacts/search` and \
                                `GET /contacts/:contactId` (404), or GHL's `ContactDelete` webhook";
const TASK_SOURCE: &str = "task stream: `GET /contacts/:contactId/tasks`, `GET /contacts/:contactId/tasks/:taskId` \
                           and `POST /locations/:locationId/tasks/search`";
const NOTE_SOURCE: &str = "note stream: `GET /contacts/:contactId/notes` and `GET /contacts/:contactId/notes/:id`";
const APPOINTMENT_SOURCE: &str = "appointment stream: `GET /contacts/:contactId/appointments`";

const NO_FIELDS: &[(&str, &str)] = &[];
const BUSINESS_LINKED: &[(&str, &str)] = &[
    ("business_id", "the business the contact is now linked to"),
    ("business_contacts", "the business's contacts (ids), from `GET /contacts/business/:businessId`"),
];
const BUSINESS_UNLINKED: &[(&str, &str)] = &[("business_id", "the business the contact was linked to")];

/// Every trigger.
pub const TRIGGERS: &[TriggerDoc] = &[
    TriggerDoc {
        name: "contact.created",
        record: RecordKind::Contact,
        source: CONTACT_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"enrich-new-leads\"\non = [\"contact.created\"]\nwhen = \"'lead' in new.tags\"\n[[rules.actions]]\ndo = \"lusha.enrich\"",
    },
    TriggerDoc {
        name: "contact.updated",
        record: RecordKind::Contact,
        source: CONTACT_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"owner-changed\"\non = [\"contact.updated\"]\nwhen = \"'assignedTo' in changed\"\n[[rules.actions]]\ndo = \"deliver\"\nconnector = \"webhook.sales\"",
    },
    TriggerDoc {
        name: "contact.deleted",
        record: RecordKind::Contact,
        source: RECONCILE_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"tell-crm-about-deletes\"\non = [\"contact.deleted\"]\n[[rules.actions]]\ndo = \"deliver\"\nconnector = \"webhook.sales\"",
    },
    TriggerDoc {
        name: "tag.added",
        record: RecordKind::Contact,
        source: CONTACT_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"vip-task\"\non = [\"tag.added\"]\nwhen = \"'vip' in tags_added\"\n[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"Call VIP {contact.firstName}\"\ndue = \"in 2h\"",
    },
    TriggerDoc {
        name: "tag.removed",
        record: RecordKind::Contact,
        source: CONTACT_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"lost-vip\"\non = [\"tag.removed\"]\nwhen = \"'vip' in tags_removed\"\n[[rules.actions]]\ndo = \"ghl.create_note\"\nbody = \"VIP tag removed\"",
    },
    TriggerDoc {
        name: "contact.dnd_changed",
        record: RecordKind::Contact,
        source: CONTACT_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"dnd-on\"\non = [\"contact.dnd_changed\"]\nwhen = \"has(new.dnd) && new.dnd == true\"\n[[rules.actions]]\ndo = \"ghl.add_tags\"\ntags = [\"do-not-contact\"]",
    },
    TriggerDoc {
        name: "task.created",
        record: RecordKind::Task,
        source: TASK_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"follow-up-on-task\"\non = [\"task.created\"]\nwhen = \"depth == 0\"\n[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"Follow up: {new.title}\"\ndue = \"in 1d\"",
    },
    TriggerDoc {
        name: "task.updated",
        record: RecordKind::Task,
        source: TASK_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"task-reassigned\"\non = [\"task.updated\"]\nwhen = \"'assignedTo' in changed\"\n[[rules.actions]]\ndo = \"deliver\"\nconnector = \"webhook.team\"",
    },
    TriggerDoc {
        name: "task.completed",
        record: RecordKind::Task,
        source: TASK_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"task-done\"\non = [\"task.completed\"]\n[[rules.actions]]\ndo = \"ghl.create_note\"\nbody = \"Task done: {new.title}\"",
    },
    TriggerDoc {
        name: "task.deleted",
        record: RecordKind::Task,
        source: TASK_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"task-removed\"\non = [\"task.deleted\"]\n[[rules.actions]]\ndo = \"deliver\"\nconnector = \"webhook.team\"",
    },
    TriggerDoc {
        name: "note.created",
        record: RecordKind::Note,
        source: NOTE_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"follow-up-on-note\"\non = [\"note.created\"]\nwhen = \"depth == 0\"\n[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"Read the new note\"\ndue = \"in 1d\"",
    },
    TriggerDoc {
        name: "note.updated",
        record: RecordKind::Note,
        source: NOTE_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"note-pinned\"\non = [\"note.updated\"]\nwhen = \"'pinned' in changed\"\n[[rules.actions]]\ndo = \"deliver\"\nconnector = \"webhook.team\"",
    },
    TriggerDoc {
        name: "note.deleted",
        record: RecordKind::Note,
        source: NOTE_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"note-removed\"\non = [\"note.deleted\"]\n[[rules.actions]]\ndo = \"deliver\"\nconnector = \"webhook.team\"",
    },
    TriggerDoc {
        name: "business.linked",
        record: RecordKind::Contact,
        source: "contact sync (`businessId` set or changed), with the business's contacts from \
                 `GET /contacts/business/:businessId`",
        fields: BUSINESS_LINKED,
        example: "[[rules]]\nname = \"tag-business-contacts\"\non = [\"business.linked\"]\n[[rules.actions]]\ndo = \"ghl.add_tags\"\ntags = [\"b2b\"]",
    },
    TriggerDoc {
        name: "business.unlinked",
        record: RecordKind::Contact,
        source: "contact sync (`businessId` cleared or changed)",
        fields: BUSINESS_UNLINKED,
        example: "[[rules]]\nname = \"untag-business-contacts\"\non = [\"business.unlinked\"]\n[[rules.actions]]\ndo = \"ghl.remove_tags\"\ntags = [\"b2b\"]",
    },
    TriggerDoc {
        name: "appointment.created",
        record: RecordKind::Appointment,
        source: APPOINTMENT_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"booked\"\non = [\"appointment.created\"]\n[[rules.actions]]\ndo = \"ghl.add_tags\"\ntags = [\"booked\"]",
    },
    TriggerDoc {
        name: "appointment.updated",
        record: RecordKind::Appointment,
        source: APPOINTMENT_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"moved\"\non = [\"appointment.updated\"]\nwhen = \"'startTime' in changed\"\n[[rules.actions]]\ndo = \"deliver\"\nconnector = \"webhook.team\"",
    },
    TriggerDoc {
        name: "appointment.cancelled",
        record: RecordKind::Appointment,
        source: "appointment stream: `GET /contacts/:contactId/appointments` (`appointmentStatus` became `cancelled`)",
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"cancelled\"\non = [\"appointment.cancelled\"]\n[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"Rebook {contact.firstName}\"\ndue = \"in 1d\"",
    },
    TriggerDoc {
        name: "appointment.deleted",
        record: RecordKind::Appointment,
        source: APPOINTMENT_SOURCE,
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"appointment-gone\"\non = [\"appointment.deleted\"]\n[[rules.actions]]\ndo = \"ghl.remove_tags\"\ntags = [\"booked\"]",
    },
    TriggerDoc {
        name: "lusha.enriched",
        record: RecordKind::Contact,
        source: "Lusha connector: an enrichment that found the person and wrote the result back",
        fields: LUSHA_RESULT_FIELDS,
        example: "[[rules]]\nname = \"enriched\"\non = [\"lusha.enriched\"]\n[[rules.actions]]\ndo = \"ghl.add_tags\"\ntags = [\"enriched\"]",
    },
    TriggerDoc {
        name: "lusha.not_found",
        record: RecordKind::Contact,
        source: "Lusha connector: an enrichment that found no one (written back as the not-found tag)",
        fields: LUSHA_RESULT_FIELDS,
        example: "[[rules]]\nname = \"not-found\"\non = [\"lusha.not_found\"]\n[[rules.actions]]\ndo = \"ghl.add_tags\"\ntags = [\"lusha-miss\"]",
    },
    TriggerDoc {
        name: "lusha.lead_imported",
        record: RecordKind::Contact,
        source: "Lusha connector: a prospecting lead created as a GHL contact",
        fields: &[
            ("lead_id", "Lusha's id of the lead"),
            ("action", "what the import did in GHL: `created` or `updated` (an existing contact matched)"),
        ],
        example: "[[rules]]\nname = \"imported\"\non = [\"lusha.lead_imported\"]\n[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"Qualify the imported lead\"\ndue = \"in 1d\"",
    },
    TriggerDoc {
        name: "lusha.signal",
        record: RecordKind::Contact,
        source: "Lusha connector: a signal webhook (`POST /webhooks/lusha`) about a known contact",
        fields: &[
            ("signal_id", "Lusha's id of the signal"),
            ("signal_type", "the signal type, e.g. `job_change`"),
            ("signal", "the signal's data as Lusha sent it"),
        ],
        example: "[[rules]]\nname = \"job-change\"\non = [\"lusha.signal\"]\nwhen = \"data.signal_type == 'job_change'\"\n[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"Congratulate {contact.firstName} on the new job\"\ndue = \"in 1d\"",
    },
    TriggerDoc {
        name: "lucky_orange.identified",
        record: RecordKind::Contact,
        source: "Lucky Orange: a visitor identified as a GHL contact by the identity bridge (`/lo/identity`); \
                 at most once per contact and UTC day",
        fields: NO_FIELDS,
        example: "[[rules]]\nname = \"identified\"\non = [\"lucky_orange.identified\"]\n[[rules.actions]]\ndo = \"ghl.add_tags\"\ntags = [\"visited-site\"]",
    },
    TriggerDoc {
        name: "lucky_orange.journey_event",
        record: RecordKind::Contact,
        source: "Lucky Orange: a journey event of an identified visitor; at most once per contact, event and \
                 `event_window`",
        fields: &[("event", "the event name, e.g. `pricing_viewed`"), ("page", "the page it happened on")],
        example: "[[rules]]\nname = \"pricing-call\"\non = [\"lucky_orange.journey_event\"]\nwhen = \"data.event == 'pricing_viewed'\"\n[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"Call {contact.firstName}: viewed pricing\"\ndue = \"in 2h\"",
    },
    TriggerDoc {
        name: "lucky_orange.replay_link",
        record: RecordKind::Contact,
        source: "Lucky Orange: a session replay link for an identified visitor",
        fields: &[("session_id", "Lucky Orange's session id"), ("url", "the replay link")],
        example: "[[rules]]\nname = \"replay\"\non = [\"lucky_orange.replay_link\"]\n[[rules.actions]]\ndo = \"deliver\"\nconnector = \"webhook.team\"",
    },
    TriggerDoc {
        name: "schedule",
        record: RecordKind::Contact,
        source: "schedule: at the rule's `schedule` (UTC), once per contact of the location in the snapshot; \
                 the condition selects which",
        fields: &[("rule", "the rule whose slot it is"), ("slot_at", "the slot's time, RFC 3339")],
        example: "[[rules]]\nname = \"stale-leads\"\non = [\"schedule\"]\nschedule = { at = \"09:00\", days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"] }\nwhen = \"'lead' in contact.tags && !('contacted' in contact.tags)\"\n[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"Contact {contact.firstName}\"\ndue = \"in 4h\"",
    },
];

/// The data of `lusha.enriched` and `lusha.not_found`.
const LUSHA_RESULT_FIELDS: &[(&str, &str)] = &[
    ("found", "whether Lusha found the person"),
    ("lusha_id", "Lusha's id of the person, when found"),
    ("result", "Lusha's answer for the person as cached (the fields of its contact), when found"),
];

const CONTACT_ID: ParamDoc =
    ParamDoc { name: "contact_id", required: false, meaning: "template; default: the event's contact" };
const TASK_ID: ParamDoc =
    ParamDoc { name: "task_id", required: false, meaning: "template; default: the event's task (task triggers)" };
const NOTE_ID: ParamDoc =
    ParamDoc { name: "note_id", required: false, meaning: "template; default: the event's note (note triggers)" };

/// Every action.
pub const ACTIONS: &[ActionDoc] = &[
    ActionDoc {
        name: "deliver",
        effect: "an outbox row for the named connector carrying the event's record (delivered, retried and \
                 dead-lettered like any change)",
        params: &[ParamDoc {
            name: "connector",
            required: true,
            meaning: "a configured connector id: `webhook.<name>`, `lusha` or `lucky_orange`",
        }],
        example: "[[rules.actions]]\ndo = \"deliver\"\nconnector = \"webhook.sales\"",
    },
    ActionDoc {
        name: "lusha.enrich",
        effect: "an outbox row for the Lusha connector (enrichment, forced even when cached, then write-back)",
        params: &[CONTACT_ID],
        example: "[[rules.actions]]\ndo = \"lusha.enrich\"",
    },
    ActionDoc {
        name: "ghl.create_contact",
        effect: "`GET /contacts/search/duplicate` (look-up by email/phone: an existing contact is not created \
                 again), then `POST /contacts/`",
        params: &[ParamDoc {
            name: "fields",
            required: true,
            meaning: "table of `CreateContactDto` fields; string values are templates",
        }],
        example: "[[rules.actions]]\ndo = \"ghl.create_contact\"\nfields = { email = \"{new.email}\", source = \"rules\" }",
    },
    ActionDoc {
        name: "ghl.upsert_contact",
        effect: "`POST /contacts/upsert` (GHL matches by email/phone per the location's duplicate settings)",
        params: &[ParamDoc {
            name: "fields",
            required: true,
            meaning: "table of `CreateContactDto` fields; string values are templates",
        }],
        example: "[[rules.actions]]\ndo = \"ghl.upsert_contact\"\nfields = { email = \"{new.email}\", companyName = \"{new.companyName}\" }",
    },
    ActionDoc {
        name: "ghl.update_contact",
        effect: "`PUT /contacts/:contactId` (only the given fields; never `tags`)",
        params: &[
            ParamDoc {
                name: "fields",
                required: true,
                meaning: "table of `UpdateContactDto` fields (no `tags`, `gender`, `companyName`); string values are templates",
            },
            CONTACT_ID,
        ],
        example: "[[rules.actions]]\ndo = \"ghl.update_contact\"\nfields = { source = \"rules: {event.trigger}\" }",
    },
    ActionDoc {
        name: "ghl.delete_contact",
        effect: "`DELETE /contacts/:contactId` (refused at load unless `[rule_settings] allow_contact_delete = true`)",
        params: &[CONTACT_ID],
        example: "[[rules.actions]]\ndo = \"ghl.delete_contact\"",
    },
    ActionDoc {
        name: "ghl.add_tags",
        effect: "`POST /contacts/:contactId/tags`",
        params: &[ParamDoc { name: "tags", required: true, meaning: "list of tag templates" }, CONTACT_ID],
        example: "[[rules.actions]]\ndo = \"ghl.add_tags\"\ntags = [\"lead\", \"from-{event.trigger}\"]",
    },
    ActionDoc {
        name: "ghl.remove_tags",
        effect: "`DELETE /contacts/:contactId/tags` (body `{tags}`)",
        params: &[ParamDoc { name: "tags", required: true, meaning: "list of tag templates" }, CONTACT_ID],
        example: "[[rules.actions]]\ndo = \"ghl.remove_tags\"\ntags = [\"cold\"]",
    },
    ActionDoc {
        name: "ghl.create_task",
        effect: "`POST /contacts/:contactId/tasks` (recorded before the call: created once)",
        params: &[
            ParamDoc { name: "title", required: true, meaning: "template" },
            ParamDoc { name: "body", required: false, meaning: "template" },
            ParamDoc {
                name: "due",
                required: true,
                meaning: "`in 30m`, `in 2h`, `in 1d` after the event's time, or a template rendering RFC 3339",
            },
            ParamDoc { name: "assigned_to", required: false, meaning: "template: a GHL user id" },
            CONTACT_ID,
        ],
        example: "[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"Call {contact.firstName}\"\ndue = \"in 1d\"",
    },
    ActionDoc {
        name: "ghl.update_task",
        effect: "`PUT /contacts/:contactId/tasks/:taskId` (only the given fields)",
        params: &[
            ParamDoc { name: "title", required: false, meaning: "template" },
            ParamDoc { name: "body", required: false, meaning: "template" },
            ParamDoc { name: "due", required: false, meaning: "as for `ghl.create_task`" },
            ParamDoc { name: "assigned_to", required: false, meaning: "template: a GHL user id" },
            TASK_ID,
            CONTACT_ID,
        ],
        example: "[[rules.actions]]\ndo = \"ghl.update_task\"\ndue = \"in 2d\"",
    },
    ActionDoc {
        name: "ghl.complete_task",
        effect: "`PUT /contacts/:contactId/tasks/:taskId/completed` (`{completed: true}`)",
        params: &[TASK_ID, CONTACT_ID],
        example: "[[rules.actions]]\ndo = \"ghl.complete_task\"",
    },
    ActionDoc {
        name: "ghl.delete_task",
        effect: "`DELETE /contacts/:contactId/tasks/:taskId`",
        params: &[TASK_ID, CONTACT_ID],
        example: "[[rules.actions]]\ndo = \"ghl.delete_task\"",
    },
    ActionDoc {
        name: "ghl.create_note",
        effect: "`POST /contacts/:contactId/notes` (recorded before the call: created once)",
        params: &[ParamDoc { name: "body", required: true, meaning: "template" }, CONTACT_ID],
        example: "[[rules.actions]]\ndo = \"ghl.create_note\"\nbody = \"Rule {event.trigger} at {event.at}\"",
    },
    ActionDoc {
        name: "ghl.update_note",
        effect: "`PUT /contacts/:contactId/notes/:id`",
        params: &[ParamDoc { name: "body", required: true, meaning: "template" }, NOTE_ID, CONTACT_ID],
        example: "[[rules.actions]]\ndo = \"ghl.update_note\"\nbody = \"{new.body} (seen)\"",
    },
    ActionDoc {
        name: "ghl.delete_note",
        effect: "`DELETE /contacts/:contactId/notes/:id`",
        params: &[NOTE_ID, CONTACT_ID],
        example: "[[rules.actions]]\ndo = \"ghl.delete_note\"",
    },
    ActionDoc {
        name: "ghl.link_business",
        effect: "`POST /contacts/bulk/business` (`{locationId, ids: [contact], businessId}`; `null` unlinks)",
        params: &[
            ParamDoc {
                name: "business_id",
                required: true,
                meaning: "template: the business id; renders empty to unlink",
            },
            CONTACT_ID,
        ],
        example: "[[rules.actions]]\ndo = \"ghl.link_business\"\nbusiness_id = \"{data.business_id}\"",
    },
];

/// The catalog entry of a trigger.
pub fn trigger(name: &str) -> Option<&'static TriggerDoc> {
    TRIGGERS.iter().find(|t| t.name == name)
}

/// The catalog entry of an action.
pub fn action(name: &str) -> Option<&'static ActionDoc> {
    ACTIONS.iter().find(|a| a.name == name)
}

/// The GHL contacts, tasks, notes, tags, appointments and business routes of reference/ghl.md
/// §6.1, §6.4, §6.5 and §6.6: each must be the source of a trigger or the effect of an action,
/// except [`UNUSED_ENDPOINTS`].
pub const SEED_ENDPOINTS: &[&str] = &[
    "POST /contacts/search",
    "GET /contacts/:contactId",
    "POST /contacts/",
    "PUT /contacts/:contactId",
    "DELETE /contacts/:contactId",
    "POST /contacts/upsert",
    "GET /contacts/search/duplicate",
    "GET /contacts/business/:businessId",
    "POST /contacts/bulk/business",
    "GET /contacts/",
    "GET /contacts/:contactId/tasks",
    "GET /contacts/:contactId/tasks/:taskId",
    "POST /contacts/:contactId/tasks",
    "PUT /contacts/:contactId/tasks/:taskId",
    "PUT /contacts/:contactId/tasks/:taskId/completed",
    "DELETE /contacts/:contactId/tasks/:taskId",
    "POST /locations/:locationId/tasks/search",
    "GET /contacts/:contactId/notes",
    "GET /contacts/:contactId/notes/:id",
    "POST /contacts/:contactId/notes",
    "PUT /contacts/:contactId/notes/:id",
    "DELETE /contacts/:contactId/notes/:id",
    "POST /contacts/:contactId/tags",
    "DELETE /contacts/:contactId/tags",
    "POST /contacts/bulk/tags/update/:type",
    "GET /contacts/:contactId/appointments",
];

/// Seed endpoints deliberately in no trigger or action, with the reason.
pub const UNUSED_ENDPOINTS: &[(&str, &str)] = &[
    ("GET /contacts/", "deprecated by GHL (no incremental filter, gone in v3); `POST /contacts/search` replaces it"),
    (
        "POST /contacts/bulk/tags/update/:type",
        "undocumented `:type` and no scope listed; `ghl.add_tags` / `ghl.remove_tags` use the per-contact tag routes, \
         which the write-back service keys exactly once",
    ),
];

const INTRO: &str = "# Operations: rules

<!-- Generated by `ghl_sync::rules::catalog::markdown()` (src/rules/catalog.rs); do not edit by hand.
     Regenerate with `UPDATE_DOCS=1 cargo test --lib rules::catalog`. -->

Rules turn the changes the daemon already sees into actions, without code: *when X happens
(a trigger), if a condition holds, do Y (actions)*. They live in the config file as `[[rules]]`
tables and are checked by `ghl-sync validate`: an unknown trigger, action, connector, template
field or a bad condition fails with its key path and position.

```toml
[rule_settings]
max_depth = 3                 # a chain of rule-caused events is cut at this depth
allow_contact_delete = false  # ghl.delete_contact actions are refused at load unless true
max_actions_per_event = 20    # actions per event, all rules together; the rest are cut and counted

[[rules]]
name = \"enrich-new-leads\"      # [a-z0-9_-]{1,64}, unique
on = [\"contact.created\"]       # triggers (at least one)
when = \"'lead' in new.tags\"    # optional CEL condition (absent: always)
locations = []                 # optional location ids; empty: all
enabled = true
[[rules.actions]]
do = \"lusha.enrich\"
[[rules.actions]]
do = \"deliver\"
connector = \"webhook.sales\"
```

## How rules work

1. Every record version the sync commits (contact, task, note, appointment), every Lusha and
   Lucky Orange result and every schedule slot becomes a **trigger event**, stored in the outbox
   (the sync's in the same transaction as the change itself).
2. The `rules` connector derives the triggers of the event, evaluates every enabled rule whose
   `on` lists the trigger and whose `locations` match, and stores each action it decides as an
   outbox row of its own (connector `rule.<name>`).
3. Each action row is performed through the write-back service (GHL) or becomes a row for the
   named connector. Failures retry with backoff and end in dead letters like any delivery
   (`ghl-sync dlq retry`); `ghl-sync replay --connector rule.<name>` queues a rule's performed
   actions again: under their own keys nothing is done twice, with `--new-keys` they are
   performed again.

A `schedule` rule runs at its `schedule` (`at = \"HH:MM\"` UTC, optional `days = [\"mon\", …]`)
over the location's contacts; its condition selects which (`contact` and `new` are the contact's
snapshot, `old` is not set). A slot missed while the daemon was down still runs when it is back
within the hour (older missed slots are skipped); on a first start it waits until the
location's contacts have been read once. A slot acts at most once per contact (its actions are
keyed by rule, slot and contact), also across restarts.

## Conditions

`when` is a [CEL](https://cel.dev) expression, compiled when the config is loaded; a syntax error
reports its line and column. It can use only these variables (a map that is absent is empty, so
`has(new.tags)` is the way to test for a field):

| Variable | Meaning |
|---|---|
";

const TEMPLATES: &str = "
An expression is at most 2,000 characters. CEL has no loops or user functions; its macros
(`all`, `exists`, `exists_one`, `map`, `filter`) iterate over the event's own lists, so an
evaluation is bounded. A condition that fails (a missing key, a type mismatch) or does not give
a bool does not fire: the failure is counted per rule and reported by `ghl-sync rules test`.

Examples: `'lead' in tags_added`, `new.tags.exists(t, t.startsWith('vip'))`,
`'assignedTo' in changed && record.assignedTo != ''`, `at > now - duration('24h')`.

## Templates

Action parameters marked *template* take text with `{path}` placeholders (`{{` and `}}` are
literal braces). The path starts with a root:

| Root | Value |
|---|---|
| `contact.<field>` | the contact the event is about |
| `old.<field>`, `new.<field>`, `record.<field>` | the record before, after, or whichever exists (its fields depend on the trigger: contact, task, note or appointment) |
| `data.<field>` | the trigger's own fields (see the trigger table) |
| `event.trigger`, `event.location_id`, `event.entity_id`, `event.contact_id`, `event.at` | the event itself (`at` in RFC 3339) |

`customFields.<id or key>` goes to a custom field's value. A missing value renders empty; an
action whose required value renders empty (no contact, an empty task title) is not taken and is
reported. In `fields` tables, a value that is exactly one placeholder keeps its type (a number, a
list). Unknown roots and fields are config errors.

## Exactly once, and chains

Every action is keyed by (rule, event, action index). The key is stored with the action's outbox
row and used by the write-back service, so a retry, a `replay` or a `kill -9` between the key and
the GHL call never creates a second tag, task or note.

An action's own write-back comes back as a change (a tag added by a rule is seen by the next
sync). The sync recognises it as the daemon's own write and does not announce it as a user's
change (to any connector, like every write the daemon makes, except deletes, which every
connector still hears); the action itself raises the event instead, with its origin: **it never
fires the rule that caused it**, and other rules see `depth` (how many rule actions led to it).
At `[rule_settings] max_depth` the chain is cut: the rules that would have run are logged and
counted (`ghl_sync_rule_chain_cut_total`), not run. `max_actions_per_event`
bounds the actions one event can cause (all rules together); the rest are cut and counted.

";

/// `docs/operations.md`, whole.
pub fn markdown() -> String {
    let mut out = String::from(INTRO);
    for (name, meaning) in super::expr::VARIABLES {
        out.push_str(&format!("| `{name}` | {meaning} |\n"));
    }
    out.push_str(TEMPLATES);
    out.push_str("## Triggers\n\n| Trigger | Record | Source | `data` fields |\n|---|---|---|---|\n");
    for t in TRIGGERS {
        let fields = if t.fields.is_empty() {
            "—".to_owned()
        } else {
            t.fields.iter().map(|(name, meaning)| format!("`{name}`: {meaning}")).collect::<Vec<_>>().join("; ")
        };
        out.push_str(&format!("| `{}` | {} | {} | {fields} |\n", t.name, t.record.as_str(), t.source));
    }
    out.push_str("\nRecord fields (`old.`, `new.`, `record.`):\n\n");
    for kind in [RecordKind::Contact, RecordKind::Task, RecordKind::Note, RecordKind::Appointment] {
        let fields = kind.fields().iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
        out.push_str(&format!("- {}: {fields}\n", kind.as_str()));
    }
    out.push_str("\n### Trigger examples\n");
    for t in TRIGGERS {
        out.push_str(&format!("\n`{}`:\n\n```toml\n{}\n```\n", t.name, t.example));
    }
    out.push_str("\n## Actions\n\n| Action | Effect | Parameters |\n|---|---|---|\n");
    for a in ACTIONS {
        let params = a
            .params
            .iter()
            .map(|p| format!("`{}`{}: {}", p.name, if p.required { " (required)" } else { "" }, p.meaning))
            .collect::<Vec<_>>()
            .join("; ");
        out.push_str(&format!("| `{}` | {} | {params} |\n", a.name, a.effect));
    }
    out.push_str("\n### Action examples\n");
    for a in ACTIONS {
        out.push_str(&format!("\n`{}`:\n\n```toml\n{}\n```\n", a.name, a.example));
    }
    out.push_str(
        "\n## GHL endpoints\n\nEvery contacts, tasks, notes, tags, appointments and business route the daemon \
         knows (reference/ghl.md §6.1, §6.4–§6.6) is the source of a trigger or the effect of an action \
         above, except:\n\n",
    );
    for (endpoint, reason) in UNUSED_ENDPOINTS {
        out.push_str(&format!("- `{endpoint}`: {reason}.\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_operations_md_matches_the_catalog() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md");
        let expected = markdown();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &expected).unwrap();
        }
        let actual = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            actual == expected,
            "docs/operations.md is out of date with src/rules/catalog.rs; regenerate it with \
             `UPDATE_DOCS=1 cargo test --lib rules::catalog`"
        );
    }

    #[test]
    fn every_seed_endpoint_is_a_trigger_source_or_an_action_effect() {
        let text: String = TRIGGERS.iter().map(|t| t.source).chain(ACTIONS.iter().map(|a| a.effect)).collect();
        for endpoint in SEED_ENDPOINTS {
            let (method, path) = endpoint.split_once(' ').unwrap();
            // Exact: "`GET /contacts/:contactId`" must not be found inside "…/tasks`".
            let quoted = format!("`{method} {path}`");
            let listed = text.contains(&quoted);
            let excepted = UNUSED_ENDPOINTS.iter().any(|(e, _)| e == endpoint);
            assert!(listed != excepted, "{endpoint}: listed {listed}, excepted {excepted}");
        }
    }

    #[test]
    fn names_are_unique_and_examples_parse_as_toml() {
        let mut triggers: Vec<&str> = TRIGGERS.iter().map(|t| t.name).collect();
        triggers.sort_unstable();
        triggers.dedup();
        assert_eq!(triggers.len(), TRIGGERS.len());
        let mut actions: Vec<&str> = ACTIONS.iter().map(|a| a.name).collect();
        actions.sort_unstable();
        actions.dedup();
        assert_eq!(actions.len(), ACTIONS.len());
        for t in TRIGGERS {
            t.example.parse::<toml::Table>().unwrap_or_else(|e| panic!("{}: {e}", t.name));
        }
        for a in ACTIONS {
            a.example.parse::<toml::Table>().unwrap_or_else(|e| panic!("{}: {e}", a.name));
        }
    }

    #[test]
    fn every_action_example_compiles_in_a_rule() {
        #[derive(serde::Deserialize)]
        struct File {
            rules: Vec<super::super::RuleSettings>,
        }
        let connectors = ["webhook.sales", "webhook.team", "lusha"].map(str::to_owned).into_iter().collect();
        let options = super::super::RuleOptions { allow_contact_delete: true, ..Default::default() };
        for a in ACTIONS {
            let trigger = match a.name {
                n if n.contains("task") => "task.updated",
                n if n.contains("note") => "note.updated",
                "ghl.link_business" => "business.linked",
                _ => "contact.updated",
            };
            let text = format!("[[rules]]\nname = \"r\"\non = [\"{trigger}\"]\n{}\n", a.example);
            let file: File = toml::from_str(&text).unwrap();
            let (_, problems) = super::super::config::compile(&file.rules, &options, &connectors);
            assert!(problems.is_empty(), "{}: {problems:?}", a.name);
        }
    }

    #[test]
    fn every_trigger_example_compiles_against_a_config_with_its_connectors() {
        #[derive(serde::Deserialize)]
        struct File {
            rules: Vec<super::super::RuleSettings>,
        }
        let connectors = ["webhook.sales", "webhook.team", "lusha"].map(str::to_owned).into_iter().collect();
        for t in TRIGGERS {
            let file: File = toml::from_str(t.example).unwrap();
            let (set, problems) =
                super::super::config::compile(&file.rules, &super::super::RuleOptions::default(), &connectors);
            assert!(problems.is_empty(), "{}: {problems:?}", t.name);
            assert_eq!(set.rules()[0].on, [t.name]);
        }
    }
}
