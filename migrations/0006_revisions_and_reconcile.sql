-- One idempotency key per record version (issue 17). A record's `revision` grows by one on
-- every content change the sync commits (and on its delete), so a change that reverts to an
-- earlier content still gets a new key; replays and dead-letter retries of one revision carry
-- the key of its first delivery. Rows written before this migration keep their stored keys.
ALTER TABLE contacts ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE children ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letters ADD COLUMN revision INTEGER;

-- Reconciliation lists a location's ids here page by page (one short write per page) instead
-- of holding a connection with a TEMP table across GHL calls.
CREATE TABLE reconcile_seen (
    location_id TEXT NOT NULL,
    contact_id  TEXT NOT NULL,
    PRIMARY KEY (location_id, contact_id)
) WITHOUT ROWID;
