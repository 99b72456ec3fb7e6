-- Lucky Orange identity bridge (issue 19).

-- The last identity token minted per contact (the token itself lives only in GHL's custom
-- field; the snapshot may lag behind our write, so the expiry is remembered here).
CREATE TABLE lo_tokens (
    location_id TEXT NOT NULL,
    contact_id  TEXT NOT NULL,
    kid         TEXT NOT NULL,
    -- Unix seconds
    expires_at  INTEGER NOT NULL,
    minted_at   INTEGER NOT NULL,
    PRIMARY KEY (location_id, contact_id)
) WITHOUT ROWID;

-- What the site reported and what came of it, per contact: identify, visit, event (a journey
-- event: the stored change event `lucky_orange.event`), replay (a replay link noted in GHL).
-- No personal data: names are allow-listed event names, pages are paths without query.
CREATE TABLE lo_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    location_id TEXT NOT NULL,
    contact_id  TEXT NOT NULL,
    -- identify | visit | event | replay
    kind        TEXT NOT NULL,
    name        TEXT,
    page        TEXT,
    session_id  TEXT,
    visits      INTEGER,
    occurred_at INTEGER NOT NULL,
    -- pending | done | skipped (visits and events are applied by the connector)
    status      TEXT NOT NULL DEFAULT 'done',
    -- the GHL action taken (task | note | tag | fields), for the contact view and insights
    outcome     TEXT
);
CREATE INDEX lo_events_by_contact ON lo_events (contact_id, occurred_at);
CREATE INDEX lo_events_pending ON lo_events (status, id);
CREATE INDEX lo_events_by_time ON lo_events (kind, occurred_at);
