-- The status page tells the truth while work is in progress (issue 18).
-- Per location and UTC day, next to the GHL request count: GHL's 429 answers and the GHL
-- webhooks received (accepted, not duplicates).
ALTER TABLE request_budget ADD COLUMN rate_limited INTEGER NOT NULL DEFAULT 0;
ALTER TABLE request_budget ADD COLUMN webhooks INTEGER NOT NULL DEFAULT 0;
-- A run's figures are recorded per page while it runs (store::runs::record_progress): its
-- 429s so far, and when it last recorded progress.
ALTER TABLE runs ADD COLUMN rate_limited INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN progress_at INTEGER;
