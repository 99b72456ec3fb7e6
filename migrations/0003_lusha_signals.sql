-- Lusha signal webhooks (job changes, promotions, ...) received on POST /webhooks/lusha.
-- A row is a hint for the Lusha connector / write-back service, which turns it into GHL
-- notes or tags later and then sets processed_at. De-duplication is by the payload id,
-- also recorded in webhook_inbox (source 'lusha').
CREATE TABLE lusha_signals (
    -- Lusha's payload `id` (uuid)
    id              TEXT PRIMARY KEY,
    -- payload `type` (e.g. promotion, companyChange)
    signal_type     TEXT NOT NULL,
    -- payload `entityType` (contact | company)
    entity_type     TEXT,
    -- payload `entityId`: the Lusha id the subscription was made for
    entity_id       TEXT,
    subscription_id TEXT,
    -- payload `data`, compressed JSON (store::codec::pack); may hold personal data
    data            BLOB NOT NULL,
    -- payload `billing.creditsCharged`
    credits_charged REAL,
    -- payload `timestamp`, as sent
    sent_at         TEXT,
    received_at     INTEGER NOT NULL,
    -- set by the consumer once the signal became a GHL note/tag (NULL: not yet)
    processed_at    INTEGER,
    -- why the consumer gave up on it, if it did (ids only, no personal data)
    error           TEXT
);
CREATE INDEX lusha_signals_pending ON lusha_signals (processed_at, received_at);
