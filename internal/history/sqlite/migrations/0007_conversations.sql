-- Conversations with agents (internal/agent): a conversation is an agent's thread of
-- messages, continued by id. Each message is stored as the model saw it: role,
-- content, the tool calls an assistant message made (JSON, '' for none), the tool
-- call a tool message answers, the step of the turn it belongs to, and the history
-- rows (runs.id, JSON list) of the runs it reports. A run links back through its
-- metadata (conversation_id, step).
CREATE TABLE conversations (
    id         TEXT    NOT NULL PRIMARY KEY,
    agent_id   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX conversations_agent ON conversations (agent_id, updated_at);

CREATE TABLE conversation_messages (
    conversation_id TEXT    NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    role            TEXT    NOT NULL,
    content         TEXT    NOT NULL,
    tool_calls      TEXT    NOT NULL DEFAULT '',
    tool_call_id    TEXT    NOT NULL DEFAULT '',
    step            INTEGER NOT NULL DEFAULT 0,
    run_ids         TEXT    NOT NULL DEFAULT '',
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) STRICT;
