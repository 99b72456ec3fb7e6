-- Replicas over one store (issue 21); the SQLite twin (migrations/0014_replicas.sql) says
-- what each table is for.
CREATE TABLE replicas (
    id           TEXT COLLATE "C" PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    version      TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    stopped_at   BIGINT
);

CREATE TABLE location_leases (
    location_id  TEXT COLLATE "C" PRIMARY KEY,
    holder       TEXT COLLATE "C",
    acquired_at  BIGINT NOT NULL DEFAULT 0,
    expires_at   BIGINT NOT NULL DEFAULT 0,
    renewed_at   BIGINT NOT NULL DEFAULT 0,
    moves        BIGINT NOT NULL DEFAULT 0
);

ALTER TABLE outbox ADD COLUMN claimed_by TEXT COLLATE "C";
ALTER TABLE outbox ADD COLUMN claimed_until BIGINT;

ALTER TABLE runs ADD COLUMN replica TEXT COLLATE "C";
