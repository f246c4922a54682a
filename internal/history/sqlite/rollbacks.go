package sqlite

import (
	"context"
	"fmt"

	"github.com/vmexec/vmexec/internal/history"
)

// RecordRollback implements history.Store.
func (s *Store) RecordRollback(ctx context.Context, rb history.Rollback) error {
	switch {
	case rb.ID == "":
		return fmt.Errorf("record rollback: empty id: %w", history.ErrInvalid)
	case rb.SandboxID == "":
		return fmt.Errorf("record rollback %q: empty sandbox id: %w", rb.ID, history.ErrInvalid)
	case rb.SnapshotID == "":
		return fmt.Errorf("record rollback %q: empty snapshot id: %w", rb.ID, history.ErrInvalid)
	}
	if rb.At.IsZero() {
		rb.At = now()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO rollbacks (id, sandbox_id, agent_id, snapshot_id, reason, run_id, at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`,
		rb.ID, rb.SandboxID, rb.AgentID, rb.SnapshotID, rb.Reason, rb.RunID, nanos(rb.At))
	if isConstraint(err) {
		return fmt.Errorf("record rollback %q: %w", rb.ID, history.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("record rollback %q: %w", rb.ID, err)
	}
	return nil
}

// ListRollbacks implements history.Store.
func (s *Store) ListRollbacks(ctx context.Context, sandboxID string) ([]history.Rollback, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, sandbox_id, agent_id, snapshot_id, reason, run_id, at
		FROM rollbacks WHERE sandbox_id = ? ORDER BY at, id`, sandboxID)
	if err != nil {
		return nil, fmt.Errorf("list rollbacks of sandbox %q: %w", sandboxID, err)
	}
	defer rows.Close()
	rbs := []history.Rollback{}
	for rows.Next() {
		var (
			rb history.Rollback
			at int64
		)
		if err := rows.Scan(&rb.ID, &rb.SandboxID, &rb.AgentID, &rb.SnapshotID, &rb.Reason, &rb.RunID, &at); err != nil {
			return nil, fmt.Errorf("list rollbacks of sandbox %q: %w", sandboxID, err)
		}
		rb.At = fromNanos(at)
		rbs = append(rbs, rb)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list rollbacks of sandbox %q: %w", sandboxID, err)
	}
	return rbs, nil
}
