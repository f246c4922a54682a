package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/vmexec/vmexec/internal/history"
)

const snapshotColumns = `id, sandbox_id, agent_id, name, description, kind, run_id,
	path, size_bytes, pinned, created_at, state_run`

// PutSnapshot implements history.Store.
func (s *Store) PutSnapshot(ctx context.Context, snap history.Snapshot) error {
	switch {
	case snap.ID == "":
		return fmt.Errorf("put snapshot: empty id: %w", history.ErrInvalid)
	case snap.SandboxID == "":
		return fmt.Errorf("put snapshot %q: empty sandbox id: %w", snap.ID, history.ErrInvalid)
	case !history.ValidSnapshotKind(snap.Kind):
		return fmt.Errorf("put snapshot %q: unknown kind %q: %w", snap.ID, snap.Kind, history.ErrInvalid)
	}
	if snap.CreatedAt.IsZero() {
		snap.CreatedAt = now()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO snapshots (`+snapshotColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET
			sandbox_id = excluded.sandbox_id, agent_id = excluded.agent_id,
			name = excluded.name, description = excluded.description,
			kind = excluded.kind, run_id = excluded.run_id, path = excluded.path,
			size_bytes = excluded.size_bytes, pinned = excluded.pinned,
			created_at = excluded.created_at, state_run = excluded.state_run`,
		snap.ID, snap.SandboxID, snap.AgentID, snap.Name, snap.Description, snap.Kind, snap.RunID,
		snap.Path, snap.SizeBytes, b2i(snap.Pinned), nanos(snap.CreatedAt), snap.StateRunID)
	if err != nil {
		return fmt.Errorf("put snapshot %q: %w", snap.ID, err)
	}
	return nil
}

// GetSnapshot implements history.Store.
func (s *Store) GetSnapshot(ctx context.Context, id string) (history.Snapshot, error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE id = ?`, id)
	snap, err := scanSnapshot(row)
	if errors.Is(err, sql.ErrNoRows) {
		return history.Snapshot{}, fmt.Errorf("get snapshot %q: %w", id, history.ErrNotFound)
	}
	if err != nil {
		return history.Snapshot{}, fmt.Errorf("get snapshot %q: %w", id, err)
	}
	return snap, nil
}

// ListSnapshots implements history.Store.
func (s *Store) ListSnapshots(ctx context.Context, sandboxID string) ([]history.Snapshot, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots
		WHERE sandbox_id = ? ORDER BY created_at, id`, sandboxID)
	if err != nil {
		return nil, fmt.Errorf("list snapshots of sandbox %q: %w", sandboxID, err)
	}
	defer rows.Close()
	snaps := []history.Snapshot{}
	for rows.Next() {
		snap, err := scanSnapshot(rows)
		if err != nil {
			return nil, fmt.Errorf("list snapshots of sandbox %q: %w", sandboxID, err)
		}
		snaps = append(snaps, snap)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list snapshots of sandbox %q: %w", sandboxID, err)
	}
	return snaps, nil
}

// DeleteSnapshot implements history.Store.
func (s *Store) DeleteSnapshot(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM snapshots WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete snapshot %q: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("delete snapshot %q: %w", id, err)
	} else if n == 0 {
		return fmt.Errorf("delete snapshot %q: %w", id, history.ErrNotFound)
	}
	return nil
}

func scanSnapshot(sc scanner) (history.Snapshot, error) {
	var (
		snap    history.Snapshot
		pinned  int
		created int64
	)
	err := sc.Scan(&snap.ID, &snap.SandboxID, &snap.AgentID, &snap.Name, &snap.Description, &snap.Kind, &snap.RunID,
		&snap.Path, &snap.SizeBytes, &pinned, &created, &snap.StateRunID)
	if err != nil {
		return history.Snapshot{}, err
	}
	snap.Pinned = pinned != 0
	snap.CreatedAt = fromNanos(created)
	return snap, nil
}

// SnapshotBytes implements history.Store.
func (s *Store) SnapshotBytes(ctx context.Context, sandboxID string) (int64, error) {
	q, args := `SELECT COALESCE(SUM(size_bytes), 0) FROM snapshots`, []any{}
	if sandboxID != "" {
		q, args = q+` WHERE sandbox_id = ?`, append(args, sandboxID)
	}
	var n int64
	if err := s.db.QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("snapshot bytes of %q: %w", sandboxID, err)
	}
	return n, nil
}
