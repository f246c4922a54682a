-- Rollbacks: a sandbox restored to a snapshot.
CREATE TABLE rollbacks (
    id          TEXT   NOT NULL PRIMARY KEY,
    sandbox_id  TEXT   NOT NULL,
    agent_id    TEXT   NOT NULL DEFAULT '',
    snapshot_id TEXT   NOT NULL,
    reason      TEXT   NOT NULL DEFAULT '',
    run_id      TEXT   NOT NULL DEFAULT '',
    at          BIGINT NOT NULL
);

CREATE INDEX rollbacks_sandbox_at ON rollbacks (sandbox_id, at, id COLLATE "C");
