-- Issue 22: the location's tasks read by `POST /locations/:locationId/tasks/search`, staged
-- so the children backlog and the sweep take a contact's tasks from here instead of one
-- `GET /contacts/:id/tasks` per contact. One staging per location at a time: its paging
-- position is stored with every page, so a restart resumes it.
CREATE TABLE task_stagings (
    location_id TEXT PRIMARY KEY,
    -- the staging's id: when it started (ms); only contacts whose children were last read,
    -- and that were marked due, before this instant may take their tasks from it
    started_at  INTEGER NOT NULL,
    -- items of the search consumed so far (the next page starts a few before: overlap)
    position    INTEGER NOT NULL,
    -- JSON array of the ids of the last items consumed, the anchor of the next page's overlap
    tail        TEXT NOT NULL,
    -- NULL while paging; set when the last page was read
    done_at     INTEGER,
    -- times the paging had to start over (an overlap found no anchor)
    restarts    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE staged_tasks (
    location_id TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    contact_id  TEXT NOT NULL,
    -- normalised exactly as a per-contact read (`domain::normalize::normalize_child`)
    hash        BLOB NOT NULL,
    record      BLOB NOT NULL,
    -- the staging it belongs to (`task_stagings.started_at`)
    staging_id  INTEGER NOT NULL,
    PRIMARY KEY (location_id, task_id)
) WITHOUT ROWID;
CREATE INDEX staged_tasks_by_contact ON staged_tasks (location_id, contact_id);

-- When a contact was last marked due (its children to be read); NULL for marks made before
-- this migration, which are older than any staging.
ALTER TABLE contacts ADD COLUMN children_due_at INTEGER;
