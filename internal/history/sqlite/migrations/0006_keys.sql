-- API keys (internal/auth). Only the SHA-256 of a key's secret is stored. A revoked
-- key keeps its row (revoked_at > 0) so `keys list` can show it; a name is unique
-- among live keys only, so it can be reused after a revocation.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    hash          TEXT NOT NULL UNIQUE,
    admin         INTEGER NOT NULL DEFAULT 0,
    agents        TEXT NOT NULL DEFAULT '[]',  -- JSON array of path.Match patterns
    rate          REAL NOT NULL DEFAULT 0,     -- requests per second; 0: unlimited
    max_sandboxes INTEGER NOT NULL DEFAULT 0,
    max_runs      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER NOT NULL DEFAULT 0,
    revoked_at    INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at = 0;

-- The name of the key that made each run ('' for none: an open daemon).
ALTER TABLE runs ADD COLUMN key_name TEXT NOT NULL DEFAULT '';
