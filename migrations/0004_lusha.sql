-- Lusha enrichment (connector `lusha`): what Lusha told us, so no credit is ever spent twice
-- for the same person and reveal set, and what the connector spent per UTC day.

-- One row per (contact, identity, reveal set): a positive or negative (not found, compliance
-- restricted) result. A fresh row (enriched_at within the TTL) means "no Lusha call".
CREATE TABLE lusha_cache (
    location_id   TEXT NOT NULL,
    contact_id    TEXT NOT NULL,
    -- hex sha256 of the normalised identity (email | LinkedIn URL | first+last+company)
    identity_hash TEXT NOT NULL,
    -- sorted, comma-joined reveal kinds (`emails,phones`)
    reveal_set    TEXT NOT NULL,
    lusha_id      TEXT,
    -- 1 found, 0 not found / restricted
    found         INTEGER NOT NULL,
    -- found | not_found | restricted
    outcome       TEXT NOT NULL,
    -- the Lusha result, compressed JSON (store::codec::pack); holds personal data
    result        BLOB,
    -- credits attributed to this row (the batch's billing.creditsCharged shared out)
    credits       INTEGER NOT NULL DEFAULT 0,
    enriched_at   INTEGER NOT NULL,
    -- when the result was written back to GHL (NULL: not yet; the next delivery does it
    -- from this row without calling Lusha)
    written_at    INTEGER,
    PRIMARY KEY (contact_id, identity_hash, reveal_set)
) WITHOUT ROWID;
CREATE INDEX lusha_cache_by_contact ON lusha_cache (location_id, contact_id);

-- Credits spent per UTC day (`YYYY-MM-DD`), from Lusha's billing.creditsCharged.
CREATE TABLE lusha_credits (
    day   TEXT PRIMARY KEY,
    spent INTEGER NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Prospecting leads already imported into GHL (a lead seen again costs nothing).
CREATE TABLE lusha_leads (
    lead_id     TEXT PRIMARY KEY,
    location_id TEXT NOT NULL,
    search      TEXT NOT NULL,
    contact_id  TEXT,
    -- imported | pending
    status      TEXT NOT NULL DEFAULT 'pending',
    first_seen  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
