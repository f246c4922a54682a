-- Runs: one row per execution attempt (twin of sqlite/migrations/0001_runs.sql).
-- Times are unix nanoseconds (0 = unset), since timestamptz keeps only
-- microseconds; metadata is a JSON object kept as text, exactly as written.
CREATE TABLE runs (
    id                   TEXT    NOT NULL PRIMARY KEY,
    agent_id             TEXT    NOT NULL DEFAULT '',
    sandbox_id           TEXT    NOT NULL,
    language             TEXT    NOT NULL DEFAULT '',
    code                 TEXT    NOT NULL DEFAULT '',
    status               TEXT    NOT NULL CHECK (status IN ('running', 'done', 'blocked', 'error')),
    verdict              TEXT    NOT NULL DEFAULT '',
    exit_code            BIGINT  NOT NULL DEFAULT 0,
    stdout               TEXT    NOT NULL DEFAULT '',
    stderr               TEXT    NOT NULL DEFAULT '',
    stdout_truncated     BOOLEAN NOT NULL DEFAULT false,
    stderr_truncated     BOOLEAN NOT NULL DEFAULT false,
    blocked_rule         TEXT    NOT NULL DEFAULT '',
    blocked_reason       TEXT    NOT NULL DEFAULT '',
    pre_snapshot_id      TEXT    NOT NULL DEFAULT '',
    failure_snapshot_id  TEXT    NOT NULL DEFAULT '',
    restored_snapshot_id TEXT    NOT NULL DEFAULT '',
    rolled_back          BOOLEAN NOT NULL DEFAULT false,
    started_at           BIGINT  NOT NULL,
    completed_at         BIGINT  NOT NULL DEFAULT 0,
    duration_ms          BIGINT  NOT NULL DEFAULT 0,
    metadata             TEXT    NOT NULL DEFAULT '{}'
);

-- ListRuns pages newest first by (started_at, id) within an agent or sandbox.
-- COLLATE "C": ids compare bytewise, as in SQLite, whatever the database's locale.
CREATE INDEX runs_agent_started ON runs (agent_id, started_at, id COLLATE "C");
CREATE INDEX runs_sandbox_started ON runs (sandbox_id, started_at, id COLLATE "C");
-- Unfiltered listing and AbortRunning's scan of in-flight rows.
CREATE INDEX runs_started ON runs (started_at, id COLLATE "C");
CREATE INDEX runs_running ON runs (status) WHERE status = 'running';
