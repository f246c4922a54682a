package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/vmexec/vmexec/internal/history"
)

// PutSandbox implements history.Store.
func (s *Store) PutSandbox(ctx context.Context, sb history.Sandbox) error {
	if sb.ID == "" {
		return fmt.Errorf("put sandbox: empty id: %w", history.ErrInvalid)
	}
	if sb.CreatedAt.IsZero() {
		sb.CreatedAt = now()
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO sandboxes (id, agent_id, name, backend, memory_mb, created_at, current_snapshot, head_run)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (id) DO UPDATE SET agent_id = excluded.agent_id, name = excluded.name,
			backend = excluded.backend, memory_mb = excluded.memory_mb, created_at = excluded.created_at,
			current_snapshot = excluded.current_snapshot, head_run = excluded.head_run`,
		sb.ID, sb.AgentID, sb.Name, sb.Backend, sb.MemoryMB, nanos(sb.CreatedAt), sb.CurrentSnapshotID, sb.HeadRunID)
	if err != nil {
		return fmt.Errorf("put sandbox %q: %w", sb.ID, err)
	}
	return nil
}

// ListSandboxes implements history.Store.
func (s *Store) ListSandboxes(ctx context.Context) ([]history.Sandbox, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, agent_id, name, backend, memory_mb, created_at, current_snapshot, head_run
		FROM sandboxes ORDER BY created_at, id COLLATE "C"`)
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	defer rows.Close()
	out := []history.Sandbox{}
	for rows.Next() {
		var (
			sb      history.Sandbox
			created int64
		)
		if err := rows.Scan(&sb.ID, &sb.AgentID, &sb.Name, &sb.Backend, &sb.MemoryMB, &created, &sb.CurrentSnapshotID, &sb.HeadRunID); err != nil {
			return nil, fmt.Errorf("list sandboxes: %w", err)
		}
		sb.CreatedAt = fromNanos(created)
		out = append(out, sb)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	return out, nil
}

// SetSandboxState implements history.Store.
func (s *Store) SetSandboxState(ctx context.Context, id string, st history.SandboxState) error {
	tag, err := s.pool.Exec(ctx, `UPDATE sandboxes SET current_snapshot = $1, head_run = $2 WHERE id = $3`,
		st.CurrentSnapshotID, st.HeadRunID, id)
	if err != nil {
		return fmt.Errorf("set state of sandbox %q: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("set state of sandbox %q: %w", id, history.ErrNotFound)
	}
	return nil
}

// DeleteSandbox implements history.Store.
func (s *Store) DeleteSandbox(ctx context.Context, id string) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM sandboxes WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete sandbox %q: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete sandbox %q: %w", id, history.ErrNotFound)
	}
	return nil
}

// PutAgentPolicy implements history.Store.
func (s *Store) PutAgentPolicy(ctx context.Context, agentID, policy string) error {
	if agentID == "" {
		return fmt.Errorf("put agent policy: empty agent id: %w", history.ErrInvalid)
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO agents (id, policy, updated_at) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at`,
		agentID, policy, nanos(now()))
	if err != nil {
		return fmt.Errorf("put agent policy %q: %w", agentID, err)
	}
	return nil
}

// GetAgentPolicy implements history.Store.
func (s *Store) GetAgentPolicy(ctx context.Context, agentID string) (string, error) {
	var p string
	err := s.pool.QueryRow(ctx, `SELECT policy FROM agents WHERE id = $1`, agentID).Scan(&p)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("agent policy %q: %w", agentID, history.ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("agent policy %q: %w", agentID, err)
	}
	return p, nil
}
