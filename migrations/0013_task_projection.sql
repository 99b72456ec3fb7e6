-- One-time data upgrades run by the store when it opens, after the migrations (src/store/
-- upgrades.rs): a row per upgrade done, so each runs once. `task_projection`: the task
-- records stored before tasks were projected onto `TaskSchema` (issue 22) are re-normalised
-- and re-hashed, so the next read of an unchanged task does not deliver it as updated.
CREATE TABLE store_upgrades (
    name    TEXT PRIMARY KEY,
    -- epoch ms
    done_at INTEGER NOT NULL
) WITHOUT ROWID;
