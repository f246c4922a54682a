package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

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
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO sandboxes (id, agent_id, name, backend, memory_mb, created_at, current_snapshot, head_run)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET agent_id = excluded.agent_id, name = excluded.name,
			backend = excluded.backend, memory_mb = excluded.memory_mb, created_at = excluded.created_at,
			current_snapshot = excluded.current_snapshot, head_run = excluded.head_run`),
		sb.ID, sb.AgentID, sb.Name, sb.Backend, sb.MemoryMB, Nanos(sb.CreatedAt), sb.CurrentSnapshotID, sb.HeadRunID)
	if err != nil {
		return fmt.Errorf("put sandbox %q: %w", sb.ID, err)
	}
	return nil
}

// ListSandboxes implements history.Store.
func (s *Store) ListSandboxes(ctx context.Context) ([]history.Sandbox, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id, agent_id, name, backend, memory_mb, created_at, current_snapshot, head_run
		FROM sandboxes`+s.oldestFirst("created_at")))
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
		sb.CreatedAt = FromNanos(created)
		out = append(out, sb)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	return out, nil
}

// SetSandboxState implements history.Store.
func (s *Store) SetSandboxState(ctx context.Context, id string, st history.SandboxState) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE sandboxes SET current_snapshot = ?, head_run = ? WHERE id = ?`),
		st.CurrentSnapshotID, st.HeadRunID, id)
	if err != nil {
		return fmt.Errorf("set state of sandbox %q: %w", id, err)
	}
	if err := affected(res); err != nil {
		return fmt.Errorf("set state of sandbox %q: %w", id, err)
	}
	return nil
}

// DeleteSandbox implements history.Store.
func (s *Store) DeleteSandbox(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM sandboxes WHERE id = ?`), id)
	if err != nil {
		return fmt.Errorf("delete sandbox %q: %w", id, err)
	}
	if err := affected(res); err != nil {
		return fmt.Errorf("delete sandbox %q: %w", id, err)
	}
	return nil
}

// PutAgentPolicy implements history.Store.
func (s *Store) PutAgentPolicy(ctx context.Context, agentID, policy string) error {
	if agentID == "" {
		return fmt.Errorf("put agent policy: empty agent id: %w", history.ErrInvalid)
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO agents (id, policy, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at`),
		agentID, policy, Nanos(now()))
	if err != nil {
		return fmt.Errorf("put agent policy %q: %w", agentID, err)
	}
	return nil
}

// GetAgentPolicy implements history.Store.
func (s *Store) GetAgentPolicy(ctx context.Context, agentID string) (string, error) {
	var p string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT policy FROM agents WHERE id = ?`), agentID).Scan(&p)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("agent policy %q: %w", agentID, history.ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("agent policy %q: %w", agentID, err)
	}
	return p, nil
}

// affected turns an UPDATE or DELETE that matched no row into history.ErrNotFound.
func affected(res sql.Result) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return history.ErrNotFound
	}
	return nil
}
