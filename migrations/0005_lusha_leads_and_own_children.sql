-- Lusha prospecting leads imported into GHL, keyed per target location (the same lead may be
-- wanted by searches of two locations). Replaces 0004's lusha_leads, which nothing wrote.
--
-- A lead goes: (new) → enriched (the Lusha result is stored before any GHL write, so a crash
-- never pays twice) → imported (the GHL contact was created or updated); or not_found /
-- skipped (EU contact with eu_policy = "skip") or failed (GHL rejected it; see error). A lead
-- seen again is never enriched again.
DROP TABLE lusha_leads;
CREATE TABLE lusha_leads (
    location_id TEXT NOT NULL,
    lead_id     TEXT NOT NULL,
    -- the configured search's name
    search      TEXT NOT NULL,
    -- enriched | imported | not_found | skipped | failed
    status      TEXT NOT NULL,
    -- the Lusha enrich result, compressed JSON (store::codec::pack); holds personal data
    result      BLOB,
    credits     INTEGER NOT NULL DEFAULT 0,
    contact_id  TEXT,
    -- created | updated: whether the GHL contact already existed
    action      TEXT,
    -- why it was skipped or failed (no personal data)
    error       TEXT,
    first_seen  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (location_id, lead_id)
) WITHOUT ROWID;
CREATE INDEX lusha_leads_pending ON lusha_leads (location_id, status);

-- Echo suppression: the sync asks whether a created note or task is one the write-back made
-- (writeback::is_own_child: by id, or by content while pending) and whether an updated
-- contact is our own write (writeback::is_own_write); both ran as full scans before.
CREATE INDEX writebacks_by_target ON writebacks (target_id) WHERE target_id IS NOT NULL;
CREATE INDEX writebacks_by_contact ON writebacks (location_id, contact_id);
