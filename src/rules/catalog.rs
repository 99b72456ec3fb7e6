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

const TAGS: &[(&str, &str)] = &[];
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
        fields: TAGS,
        example: "[[rules]]\nname = \"vip-task\"\non = [\"tag.added\"]\nwhen = \"'vip' in tags_added\"\n[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"Call VIP {contact.firstName}\"\ndue = \"in 2h\"",
    },
    TriggerDoc {
        name: "tag.removed",
        record: RecordKind::Contact,
        source: CONTACT_SOURCE,
        fields: TAGS,
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
        fields: &[
            ("fields_written", "list: the GHL fields the enrichment filled"),
            ("company_name", "the company Lusha found, when any"),
        ],
        example: "[[rules]]\nname = \"enriched\"\non = [\"lusha.enriched\"]\n[[rules.actions]]\ndo = \"ghl.add_tags\"\ntags = [\"enriched\"]",
    },
    TriggerDoc {
        name: "lusha.not_found",
        record: RecordKind::Contact,
        source: "Lusha connector: an enrichment that found no one",
        fields: &[("reason", "why nothing was found (no match, not enough input)")],
        example: "[[rules]]\nname = \"not-found\"\non = [\"lusha.not_found\"]\n[[rules.actions]]\ndo = \"ghl.add_tags\"\ntags = [\"lusha-miss\"]",
    },
    TriggerDoc {
        name: "lusha.lead_imported",
        record: RecordKind::Contact,
        source: "Lusha connector: a prospecting lead created as a GHL contact",
        fields: &[("list", "the Lusha list or search the lead came from")],
        example: "[[rules]]\nname = \"imported\"\non = [\"lusha.lead_imported\"]\n[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"Qualify the imported lead\"\ndue = \"in 1d\"",
    },
    TriggerDoc {
        name: "lusha.signal",
        record: RecordKind::Contact,
        source: "Lusha connector: a signal webhook (`POST /webhooks/lusha`) about a known contact",
        fields: &[("signal", "the signal type, e.g. `job_change`"), ("summary", "Lusha's one-line summary")],
        example: "[[rules]]\nname = \"job-change\"\non = [\"lusha.signal\"]\nwhen = \"data.signal == 'job_change'\"\n[[rules.actions]]\ndo = \"ghl.create_note\"\nbody = \"Lusha: {data.summary}\"",
    },
    TriggerDoc {
        name: "lucky_orange.identified",
        record: RecordKind::Contact,
        source: "Lucky Orange: a visitor identified as a GHL contact",
        fields: &[("visitor_id", "Lucky Orange's visitor id")],
        example: "[[rules]]\nname = \"identified\"\non = [\"lucky_orange.identified\"]\n[[rules.actions]]\ndo = \"ghl.add_tags\"\ntags = [\"visited-site\"]",
    },
    TriggerDoc {
        name: "lucky_orange.journey_event",
        record: RecordKind::Contact,
        source: "Lucky Orange: a journey event of an identified visitor",
        fields: &[("event", "the event name, e.g. `pricing_viewed`"), ("url", "the page it happened on")],
        example: "[[rules]]\nname = \"pricing-call\"\non = [\"lucky_orange.journey_event\"]\nwhen = \"data.event == 'pricing_viewed'\"\n[[rules.actions]]\ndo = \"ghl.create_task\"\ntitle = \"Call {contact.firstName}: viewed pricing\"\ndue = \"in 2h\"",
    },
    TriggerDoc {
        name: "lucky_orange.replay_link",
        record: RecordKind::Contact,
        source: "Lucky Orange: a session replay link for an identified visitor",
        fields: &[("url", "the replay link")],
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

const CONTACT_ID: ParamDoc = ParamDoc {
    name: "contact_id",
    required: false,
    meaning: "template; default: the event's contact",
};
const TASK_ID: ParamDoc = ParamDoc {
    name: "task_id",
    required: false,
    meaning: "template; default: the event's task (task triggers)",
};
const NOTE_ID: ParamDoc = ParamDoc {
    name: "note_id",
    required: false,
    meaning: "template; default: the event's note (note triggers)",
};

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
        example: "[[rules.actions]]\ndo = \"ghl.create_contact\"\nfields = { email = \"{data.email}\", source = \"rules\" }",
    },
    ActionDoc {
        name: "ghl.upsert_contact",
        effect: "`POST /contacts/upsert` (GHL matches by email/phone per the location's duplicate settings)",
        params: &[ParamDoc {
            name: "fields",
            required: true,
            meaning: "table of `CreateContactDto` fields; string values are templates",
        }],
        example: "[[rules.actions]]\ndo = \"ghl.upsert_contact\"\nfields = { email = \"{data.email}\", companyName = \"{data.company_name}\" }",
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
        params: &[
            ParamDoc { name: "tags", required: true, meaning: "list of tag templates" },
            CONTACT_ID,
        ],
        example: "[[rules.actions]]\ndo = \"ghl.add_tags\"\ntags = [\"lead\", \"from-{event.trigger}\"]",
    },
    ActionDoc {
        name: "ghl.remove_tags",
        effect: "`DELETE /contacts/:contactId/tags` (body `{tags}`)",
        params: &[
            ParamDoc { name: "tags", required: true, meaning: "list of tag templates" },
            CONTACT_ID,
        ],
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
