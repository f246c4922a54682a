-- Runs: one row per execution attempt. Times are unix nanoseconds (0 = unset);
-- booleans are 0/1; metadata is a JSON object.
CREATE TABLE runs (
    id                   TEXT    NOT NULL PRIMARY KEY,
    agent_id             TEXT    NOT NULL DEFAULT '',
    sandbox_id           TEXT    NOT NULL,
    language             TEXT    NOT NULL DEFAULT '',
    code                 TEXT    NOT NULL DEFAULT '',
    status               TEXT    NOT NULL CHECK (status IN ('running', 'done', 'blocked', 'error')),
    verdict              TEXT    NOT NULL DEFAULT '',
    exit_code            INTEGER NOT NULL DEFAULT 0,
    stdout               TEXT    NOT NULL DEFAULT '',
    stderr               TEXT    NOT NULL DEFAULT '',
    stdout_truncated     INTEGER NOT NULL DEFAULT 0,
    stderr_truncated     INTEGER NOT NULL DEFAULT 0,
    blocked_rule         TEXT    NOT NULL DEFAULT '',
    blocked_reason       TEXT    NOT NULL DEFAULT '',
    pre_snapshot_id      TEXT    NOT NULL DEFAULT '',
    failure_snapshot_id  TEXT    NOT NULL DEFAULT '',
    restored_snapshot_id TEXT    NOT NULL DEFAULT '',
    rolled_back          INTEGER NOT NULL DEFAULT 0,
    started_at           INTEGER NOT NULL,
    completed_at         INTEGER NOT NULL DEFAULT 0,
    duration_ms          INTEGER NOT NULL DEFAULT 0,
    metadata             TEXT    NOT NULL DEFAULT '{}'
) STRICT;

-- ListRuns pages newest first by (started_at, id) within an agent or sandbox.
CREATE INDEX runs_agent_started ON runs (agent_id, started_at, id);
CREATE INDEX runs_sandbox_started ON runs (sandbox_id, started_at, id);
-- Unfiltered listing and AbortRunning's scan of in-flight rows.
CREATE INDEX runs_started ON runs (started_at, id);
CREATE INDEX runs_running ON runs (status) WHERE status = 'running';
