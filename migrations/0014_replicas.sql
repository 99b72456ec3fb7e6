-- Replicas over one store (issue 21). Used on PostgreSQL, where several daemons may share the
-- store; a SQLite store has one daemon (its lock file) and these tables stay empty there
-- except for that daemon's own rows.
--
-- `replicas`: one row per daemon process, its heartbeat (epoch ms) renewed every third of the
-- lease TTL; a replica whose heartbeat is older than the TTL is gone and its leases are free.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    -- set when the replica stopped cleanly (its leases were released)
    stopped_at   INTEGER
) WITHOUT ROWID;

-- `location_leases`: which replica polls a location. Only the holder reads GHL for it; a
-- lease expires `expires_at` (epoch ms) unless renewed, and moves when replicas join or leave.
CREATE TABLE location_leases (
    location_id  TEXT PRIMARY KEY,
    holder       TEXT,
    acquired_at  INTEGER NOT NULL DEFAULT 0,
    expires_at   INTEGER NOT NULL DEFAULT 0,
    renewed_at   INTEGER NOT NULL DEFAULT 0,
    -- how many times the lease changed holder
    moves        INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Outbox rows handed to a delivery worker: which replica holds them and until when (epoch
-- ms). A claim that outlives its replica expires and the row is claimed again (same key).
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE outbox ADD COLUMN claimed_until INTEGER;

-- The replica that ran a sync run (`status`; a test checks no two replicas ran one location
-- at once).
ALTER TABLE runs ADD COLUMN replica TEXT;
