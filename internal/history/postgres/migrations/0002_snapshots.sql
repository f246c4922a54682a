-- Snapshots: records of saved sandbox states. The files live elsewhere.
CREATE TABLE snapshots (
    id          TEXT    NOT NULL PRIMARY KEY,
    sandbox_id  TEXT    NOT NULL,
    agent_id    TEXT    NOT NULL DEFAULT '',
    name        TEXT    NOT NULL DEFAULT '',
    description TEXT    NOT NULL DEFAULT '',
    kind        TEXT    NOT NULL,
    run_id      TEXT    NOT NULL DEFAULT '',
    path        TEXT    NOT NULL DEFAULT '',
    size_bytes  BIGINT  NOT NULL DEFAULT 0,
    pinned      BOOLEAN NOT NULL DEFAULT false,
    created_at  BIGINT  NOT NULL
);

CREATE INDEX snapshots_sandbox_created ON snapshots (sandbox_id, created_at, id COLLATE "C");
