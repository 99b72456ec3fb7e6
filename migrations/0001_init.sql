-- ghl-sync schema, version 1. Migrations are append-only: never edit a released one.
-- Times are Unix epoch milliseconds (INTEGER). Records are compressed JSON (BLOB).

-- Locations the daemon knows, from config or from OAuth installs.
CREATE TABLE locations (
    id            TEXT PRIMARY KEY,
    name          TEXT,
    company_id    TEXT,
    -- active | needs_reauth | uninstalled | disabled
    status        TEXT NOT NULL DEFAULT 'active',
    status_reason TEXT,
    updated_at    INTEGER NOT NULL
);

-- OAuth grants and private integration tokens; tokens are encrypted with the master key.
CREATE TABLE grants (
    -- location id, or company id for agency grants
    resource_id   TEXT PRIMARY KEY,
    -- location | company | pit
    resource_kind TEXT NOT NULL,
    company_id    TEXT,
    access_token  BLOB,
    refresh_token BLOB,
    expires_at    INTEGER,
    scope         TEXT,
    -- bumped on every rotation so a reader can tell a newer token was stored
    generation    INTEGER NOT NULL DEFAULT 0,
    needs_reauth  INTEGER NOT NULL DEFAULT 0,
    reauth_reason TEXT,
    updated_at    INTEGER NOT NULL
);

-- Per location and stream: how far the poll has read.
CREATE TABLE cursors (
    location_id   TEXT NOT NULL,
    -- contacts | reconcile | sweep
    stream        TEXT NOT NULL,
    watermark_ms  INTEGER NOT NULL DEFAULT 0,
    last_id       TEXT NOT NULL DEFAULT '',
    -- opaque JSON array echoed to GHL to resume a scan mid-way
    search_after  TEXT,
    backfill_done INTEGER NOT NULL DEFAULT 0,
    run_started_at INTEGER,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (location_id, stream)
);

-- The last seen state of every contact.
CREATE TABLE contacts (
    location_id       TEXT NOT NULL,
    contact_id        TEXT NOT NULL,
    hash              BLOB NOT NULL,
    record            BLOB NOT NULL,
    date_updated_ms   INTEGER,
    -- when its tasks and notes were last read (NULL: never)
    children_synced_at INTEGER,
    first_seen_at     INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (location_id, contact_id)
) WITHOUT ROWID;
CREATE INDEX contacts_children_due ON contacts (location_id, children_synced_at);

-- Tasks and notes, hashed per child.
CREATE TABLE children (
    location_id TEXT NOT NULL,
    contact_id  TEXT NOT NULL,
    -- task | note
    kind        TEXT NOT NULL,
    child_id    TEXT NOT NULL,
    hash        BLOB NOT NULL,
    record      BLOB NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (location_id, kind, child_id)
) WITHOUT ROWID;
CREATE INDEX children_by_contact ON children (location_id, contact_id, kind);

-- Changes waiting to be delivered, one row per interested connector.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    connector       TEXT NOT NULL,
    location_id     TEXT NOT NULL,
    -- contact | task | note
    entity          TEXT NOT NULL,
    entity_id       TEXT NOT NULL,
    contact_id      TEXT,
    -- created | updated | completed | deleted
    operation       TEXT NOT NULL,
    record          BLOB,
    content_hash    BLOB NOT NULL,
    idempotency_key TEXT NOT NULL,
    -- pending | done
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    changed_at      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX outbox_due ON outbox (connector, status, next_attempt_at);
CREATE INDEX outbox_record ON outbox (connector, entity, entity_id, status);

-- Changes that could not be delivered (or records that could not be read), set aside.
CREATE TABLE dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- delivery | record | webhook
    source          TEXT NOT NULL,
    connector       TEXT,
    location_id     TEXT,
    entity          TEXT,
    entity_id       TEXT,
    contact_id      TEXT,
    operation       TEXT,
    record          BLOB,
    content_hash    BLOB,
    idempotency_key TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    reason          TEXT NOT NULL,
    changed_at      INTEGER,
    created_at      INTEGER NOT NULL
);
CREATE INDEX dead_letters_by_connector ON dead_letters (connector, created_at);

-- Contacts a webhook (or an operator) asked to re-read soon.
CREATE TABLE dirty_contacts (
    location_id TEXT NOT NULL,
    contact_id  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    -- the hint said the contact was deleted: confirm by a read before emitting a delete
    maybe_deleted INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (location_id, contact_id)
) WITHOUT ROWID;

-- Webhook ids already accepted, for de-duplication.
CREATE TABLE webhook_inbox (
    source      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    event_type  TEXT,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (source, event_id)
) WITHOUT ROWID;

-- Writes the daemon made to GHL, keyed so a replay never writes twice and so the sync
-- recognises its own writes coming back (no echo loops).
CREATE TABLE writebacks (
    idempotency_key TEXT PRIMARY KEY,
    location_id     TEXT NOT NULL,
    contact_id      TEXT,
    -- contact_update | tag_add | tag_remove | note | task | task_complete | contact_create
    kind            TEXT NOT NULL,
    target_id       TEXT,
    -- hash of the contact/child content expected after the write
    content_hash    BLOB,
    -- pending | done
    status          TEXT NOT NULL DEFAULT 'pending',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- One row per sync run, for status and the status page.
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    location_id  TEXT NOT NULL,
    -- contacts | children | reconcile | dirty
    kind         TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    -- running | ok | failed
    outcome      TEXT NOT NULL DEFAULT 'running',
    pages        INTEGER NOT NULL DEFAULT 0,
    records_seen INTEGER NOT NULL DEFAULT 0,
    changes      INTEGER NOT NULL DEFAULT 0,
    requests     INTEGER NOT NULL DEFAULT 0,
    error        TEXT
);
CREATE INDEX runs_recent ON runs (location_id, started_at);

-- GHL requests per location and UTC day (budget accounting for status and the sweep).
CREATE TABLE request_budget (
    location_id TEXT NOT NULL,
    day         TEXT NOT NULL,
    requests    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (location_id, day)
) WITHOUT ROWID;
