package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/history"
)

// Conversations (migration 0007) are the agent loop's store (internal/agent.Store).
// A conversation's messages are appended, never changed. AppendMessages locks the
// conversation's row, then numbers the messages after its last one, so concurrent
// appends to one conversation queue instead of colliding.

// CreateConversation records a new, empty conversation of agentID;
// history.ErrExists if id is taken.
func (s *Store) CreateConversation(ctx context.Context, id, agentID string) error {
	if id == "" || agentID == "" {
		return fmt.Errorf("create conversation: empty id or agent: %w", history.ErrInvalid)
	}
	t := nanos(now())
	_, err := s.pool.Exec(ctx, `INSERT INTO conversations (id, agent_id, created_at, updated_at) VALUES ($1, $2, $3, $3)`, id, agentID, t)
	if isUnique(err) {
		return fmt.Errorf("create conversation %q: %w", id, history.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create conversation %q: %w", id, err)
	}
	return nil
}

// AppendMessages adds msgs to conversation id, numbering them (Seq) after its last
// message; history.ErrNotFound if there is no such conversation.
func (s *Store) AppendMessages(ctx context.Context, id string, msgs []api.ConversationMessage) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var locked string
		if err := tx.QueryRow(ctx, `SELECT id FROM conversations WHERE id = $1 FOR UPDATE`, id).Scan(&locked); errors.Is(err, pgx.ErrNoRows) {
			return history.ErrNotFound
		} else if err != nil {
			return err
		}
		var next int
		if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(seq), 0) + 1 FROM conversation_messages WHERE conversation_id = $1`, id).Scan(&next); err != nil {
			return err
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
			if _, err := tx.Exec(ctx, `INSERT INTO conversation_messages
				(conversation_id, seq, role, content, tool_calls, tool_call_id, step, run_ids, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
				id, next+i, m.Role, m.Content, calls, m.ToolCallID, m.Step, runs, nanos(at)); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `UPDATE conversations SET updated_at = $1 WHERE id = $2`, nanos(t), id)
		return err
	})
	if err != nil {
		return fmt.Errorf("append to conversation %q: %w", id, err)
	}
	return nil
}

// GetConversation returns conversation id with its messages in order;
// history.ErrNotFound if there is none.
func (s *Store) GetConversation(ctx context.Context, id string) (api.Conversation, error) {
	c := api.Conversation{Messages: []api.ConversationMessage{}}
	var created, updated int64
	err := s.pool.QueryRow(ctx, `SELECT id, agent_id, created_at, updated_at FROM conversations WHERE id = $1`, id).
		Scan(&c.ID, &c.AgentID, &created, &updated)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("conversation %q: %w", id, history.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("conversation %q: %w", id, err)
	}
	c.CreatedAt, c.UpdatedAt = fromNanos(created), fromNanos(updated)
	rows, err := s.pool.Query(ctx, `SELECT seq, role, content, tool_calls, tool_call_id, step, run_ids, created_at
		FROM conversation_messages WHERE conversation_id = $1 ORDER BY seq`, id)
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
		m.CreatedAt = fromNanos(at)
		c.Messages = append(c.Messages, m)
	}
	if err := rows.Err(); err != nil {
		return c, fmt.Errorf("conversation %q: %w", id, err)
	}
	return c, nil
}
