-- API keys (internal/auth). Only the SHA-256 of a key's secret is stored. A revoked
-- key keeps its row (revoked_at > 0) so `keys list` can show it; a name is unique
-- among live keys only, so it can be reused after a revocation.
CREATE TABLE api_keys (
    id            TEXT             PRIMARY KEY,
    name          TEXT             NOT NULL,
    hash          TEXT             NOT NULL UNIQUE,
    admin         BOOLEAN          NOT NULL DEFAULT false,
    agents        TEXT             NOT NULL DEFAULT '[]',  -- JSON array of path.Match patterns
    rate          DOUBLE PRECISION NOT NULL DEFAULT 0,     -- requests per second; 0: unlimited
    max_sandboxes BIGINT           NOT NULL DEFAULT 0,
    max_runs      BIGINT           NOT NULL DEFAULT 0,
    created_at    BIGINT           NOT NULL,
    last_used_at  BIGINT           NOT NULL DEFAULT 0,
    revoked_at    BIGINT           NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at = 0;

-- The name of the key that made each run ('' for none: an open daemon).
ALTER TABLE runs ADD COLUMN key_name TEXT NOT NULL DEFAULT '';
