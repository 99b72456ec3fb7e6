-- Operator alerts (issue 18): one row per incident of one alert target. An incident opens
-- when a condition starts (a location needs re-authorisation, a connector's circuit is open,
-- dead letters past a threshold, a budget nearly spent, sync lag) and resolves when it clears.
-- Each transition is notified once: `opened_sent_at` / `resolved_sent_at` are set after the
-- target accepted the message, so a restart neither repeats nor forgets a notification.
CREATE TABLE incidents (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    -- the alert target's name ([[alerts]] name)
    alert            TEXT NOT NULL,
    -- the condition and its subject, e.g. `dead_letters:webhook.crm`, `reauth:<location id>`
    condition_key    TEXT NOT NULL,
    -- what the operator reads: ids, counts and thresholds only, never personal data
    summary          TEXT NOT NULL,
    opened_at        INTEGER NOT NULL,
    opened_sent_at   INTEGER,
    resolved_at      INTEGER,
    resolved_sent_at INTEGER,
    -- the last failed attempt to notify (retried on the next evaluation)
    last_error       TEXT
);
-- At most one open incident per alert and condition.
CREATE UNIQUE INDEX incidents_open ON incidents (alert, condition_key) WHERE resolved_at IS NULL;
CREATE INDEX incidents_unsent ON incidents (alert) WHERE opened_sent_at IS NULL OR (resolved_at IS NOT NULL AND resolved_sent_at IS NULL);
