package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/history"
)

// Conversations (migration 0007) are the agent loop's store (internal/agent.Store).
// A conversation's messages are appended, never changed. AppendMessages locks the
// conversation's row (Dialect.ForUpdate; SQLite's transactions take the write lock
// at BEGIN), then numbers the messages after its last one in the same transaction,
// so concurrent appends to one conversation queue instead of colliding.

// CreateConversation records a new, empty conversation of agentID;
// history.ErrExists if id is taken.
func (s *Store) CreateConversation(ctx context.Context, id, agentID string) error {
	if id == "" || agentID == "" {
		return fmt.Errorf("create conversation: empty id or agent: %w", history.ErrInvalid)
	}
	t := Nanos(now())
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO conversations (id, agent_id, created_at, updated_at) VALUES (?, ?, ?, ?)`), id, agentID, t, t)
	if s.isUnique(err) {
		return fmt.Errorf("create conversation %q: %w", id, history.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create conversation %q: %w", id, err)
	}
	return nil
}

// AppendMessages adds msgs to conversation id, numbering them (Seq) after its last
// message; history.ErrNotFound if there is no such conversation.
func (s *Store) AppendMessages(ctx context.Context, id string, msgs []api.ConversationMessage) (err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("append to conversation %q: %w", id, err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	// Lock the conversation's row (SQLite's BEGIN IMMEDIATE already holds the write
	// lock), then number the messages after its last one.
	var locked string
	if err := tx.QueryRowContext(ctx, s.q(`SELECT id FROM conversations WHERE id = ?`+s.d.ForUpdate), id).Scan(&locked); errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("append to conversation %q: %w", id, history.ErrNotFound)
	} else if err != nil {
		return fmt.Errorf("append to conversation %q: %w", id, err)
	}
	var next int
	if err := tx.QueryRowContext(ctx, s.q(`SELECT COALESCE(MAX(seq), 0) + 1 FROM conversation_messages WHERE conversation_id = ?`), id).Scan(&next); err != nil {
		return fmt.Errorf("append to conversation %q: %w", id, err)
	}
	t := now()
	for i, m := range msgs {
		calls, runs := "", ""
		if len(m.ToolCalls) > 0 {
			b, _ := json.Marshal(m.ToolCalls)
			calls = string(b)
		}
		if len(m.RunIDs) > 0 {
			b, _ := json.Marshal(m.RunIDs)
			runs = string(b)
		}
		at := m.CreatedAt
		if at.IsZero() {
			at = t
		}
		if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO conversation_messages
			(conversation_id, seq, role, content, tool_calls, tool_call_id, step, run_ids, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`),
			id, next+i, m.Role, m.Content, calls, m.ToolCallID, m.Step, runs, Nanos(at)); err != nil {
			return fmt.Errorf("append to conversation %q: %w", id, err)
		}
	}
	if _, err := tx.ExecContext(ctx, s.q(`UPDATE conversations SET updated_at = ? WHERE id = ?`), Nanos(t), id); err != nil {
		return fmt.Errorf("append to conversation %q: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("append to conversation %q: %w", id, err)
	}
	return nil
}

// GetConversation returns conversation id with its messages in order;
// history.ErrNotFound if there is none.
func (s *Store) GetConversation(ctx context.Context, id string) (api.Conversation, error) {
	c := api.Conversation{Messages: []api.ConversationMessage{}}
	var created, updated int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT id, agent_id, created_at, updated_at FROM conversations WHERE id = ?`), id).
		Scan(&c.ID, &c.AgentID, &created, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("conversation %q: %w", id, history.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("conversation %q: %w", id, err)
	}
	c.CreatedAt, c.UpdatedAt = FromNanos(created), FromNanos(updated)
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT seq, role, content, tool_calls, tool_call_id, step, run_ids, created_at
		FROM conversation_messages WHERE conversation_id = ? ORDER BY seq`), id)
	if err != nil {
		return c, fmt.Errorf("conversation %q: %w", id, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			m           api.ConversationMessage
			calls, runs string
			at          int64
		)
		if err := rows.Scan(&m.Seq, &m.Role, &m.Content, &calls, &m.ToolCallID, &m.Step, &runs, &at); err != nil {
			return c, fmt.Errorf("conversation %q: %w", id, err)
		}
		if calls != "" {
			if err := json.Unmarshal([]byte(calls), &m.ToolCalls); err != nil {
				return c, fmt.Errorf("conversation %q message %d: %w", id, m.Seq, err)
			}
		}
		if runs != "" {
			if err := json.Unmarshal([]byte(runs), &m.RunIDs); err != nil {
				return c, fmt.Errorf("conversation %q message %d: %w", id, m.Seq, err)
			}
		}
		m.CreatedAt = FromNanos(at)
		c.Messages = append(c.Messages, m)
	}
	if err := rows.Err(); err != nil {
		return c, fmt.Errorf("conversation %q: %w", id, err)
	}
	return c, nil
}
