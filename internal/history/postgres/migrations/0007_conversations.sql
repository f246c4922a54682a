-- Conversations with agents (internal/agent): a conversation is an agent's thread of
-- messages, continued by id (see sqlite/migrations/0007_conversations.sql).
CREATE TABLE conversations (
    id         TEXT   NOT NULL PRIMARY KEY,
    agent_id   TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX conversations_agent ON conversations (agent_id, updated_at);

CREATE TABLE conversation_messages (
    conversation_id TEXT    NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             BIGINT  NOT NULL,
    role            TEXT    NOT NULL,
    content         TEXT    NOT NULL,
    tool_calls      TEXT    NOT NULL DEFAULT '',
    tool_call_id    TEXT    NOT NULL DEFAULT '',
    step            BIGINT  NOT NULL DEFAULT 0,
    run_ids         TEXT    NOT NULL DEFAULT '',
    created_at      BIGINT  NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
