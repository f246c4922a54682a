-- Ownership: which node runs each agent, under which epoch. The epoch only grows;
-- every change of owner is one compare-and-set on it (see cluster.go).
CREATE TABLE cluster_owners (
    agent                TEXT        NOT NULL PRIMARY KEY,
    sandbox              TEXT        NOT NULL DEFAULT '',
    node                 TEXT        NOT NULL,
    epoch                BIGINT      NOT NULL CHECK (epoch > 0),
    state                TEXT        NOT NULL,
    durable_snapshot_key TEXT        NOT NULL DEFAULT '',
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX cluster_owners_node ON cluster_owners (node);

-- Nodes: the daemons of the cluster, where the router reaches them, how much they
-- take and carry, and when each last said it was ready (the database's clock).
CREATE TABLE cluster_nodes (
    name       TEXT        NOT NULL PRIMARY KEY,
    address    TEXT        NOT NULL,
    capacity   BIGINT      NOT NULL DEFAULT 0,
    load       BIGINT      NOT NULL DEFAULT 0,
    last_ready TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
