-- Sandboxes: the durable record of each sandbox, so that a sandbox (and its agent's
-- claim on it) outlives a daemon restart. Agents: per-agent execution policy as JSON.
CREATE TABLE sandboxes (
    id         TEXT   NOT NULL PRIMARY KEY,
    agent_id   TEXT   NOT NULL DEFAULT '',
    name       TEXT   NOT NULL DEFAULT '',
    backend    TEXT   NOT NULL DEFAULT '',
    memory_mb  BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE INDEX sandboxes_agent ON sandboxes (agent_id);

CREATE TABLE agents (
    id         TEXT   NOT NULL PRIMARY KEY,
    policy     TEXT   NOT NULL DEFAULT '{}',
    updated_at BIGINT NOT NULL
);
