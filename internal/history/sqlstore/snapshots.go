package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/vmexec/vmexec/internal/history"
)

const snapshotColumns = `id, sandbox_id, agent_id, name, description, kind, run_id,
	path, size_bytes, pinned, created_at, state_run`

// oldestFirst orders snapshots (and rollbacks, on their at column) as the contract
// says: creation time, then ID.
func (s *Store) oldestFirst(timeColumn string) string {
	return ` ORDER BY ` + timeColumn + `, ` + s.d.IDOrder
}

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
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO snapshots (`+snapshotColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET
			sandbox_id = excluded.sandbox_id, agent_id = excluded.agent_id,
			name = excluded.name, description = excluded.description,
			kind = excluded.kind, run_id = excluded.run_id, path = excluded.path,
			size_bytes = excluded.size_bytes, pinned = excluded.pinned,
			created_at = excluded.created_at, state_run = excluded.state_run`),
		snap.ID, snap.SandboxID, snap.AgentID, snap.Name, snap.Description, snap.Kind, snap.RunID,
		snap.Path, snap.SizeBytes, snap.Pinned, Nanos(snap.CreatedAt), snap.StateRunID)
	if err != nil {
		return fmt.Errorf("put snapshot %q: %w", snap.ID, err)
	}
	return nil
}

// GetSnapshot implements history.Store.
func (s *Store) GetSnapshot(ctx context.Context, id string) (history.Snapshot, error) {
	snap, err := scanSnapshot(s.db.QueryRowContext(ctx, s.q(`SELECT `+snapshotColumns+` FROM snapshots WHERE id = ?`), id))
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
	snaps, err := s.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots WHERE sandbox_id = ?`+s.oldestFirst("created_at"), sandboxID)
	if err != nil {
		return nil, fmt.Errorf("list snapshots of sandbox %q: %w", sandboxID, err)
	}
	return snaps, nil
}

// ListAllSnapshots implements history.Store.
func (s *Store) ListAllSnapshots(ctx context.Context) ([]history.Snapshot, error) {
	snaps, err := s.querySnapshots(ctx, `SELECT `+snapshotColumns+` FROM snapshots`+s.oldestFirst("created_at"))
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	return snaps, nil
}

func (s *Store) querySnapshots(ctx context.Context, query string, args ...any) ([]history.Snapshot, error) {
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	snaps := []history.Snapshot{}
	for rows.Next() {
		snap, err := scanSnapshot(rows)
		if err != nil {
			return nil, err
		}
		snaps = append(snaps, snap)
	}
	return snaps, rows.Err()
}

// DeleteSnapshot implements history.Store.
func (s *Store) DeleteSnapshot(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, s.q(`DELETE FROM snapshots WHERE id = ?`), id)
	if err != nil {
		return fmt.Errorf("delete snapshot %q: %w", id, err)
	}
	if err := affected(res); err != nil {
		return fmt.Errorf("delete snapshot %q: %w", id, err)
	}
	return nil
}

func scanSnapshot(sc scanner) (history.Snapshot, error) {
	var (
		snap    history.Snapshot
		created int64
	)
	err := sc.Scan(&snap.ID, &snap.SandboxID, &snap.AgentID, &snap.Name, &snap.Description, &snap.Kind, &snap.RunID,
		&snap.Path, &snap.SizeBytes, &snap.Pinned, &created, &snap.StateRunID)
	if err != nil {
		return history.Snapshot{}, err
	}
	snap.CreatedAt = FromNanos(created)
	return snap, nil
}

// SnapshotBytes implements history.Store.
func (s *Store) SnapshotBytes(ctx context.Context, sandboxID string) (int64, error) {
	// PostgreSQL's SUM of a BIGINT is a NUMERIC: cast it back.
	query, args := `SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM snapshots`, []any{}
	if sandboxID != "" {
		query, args = query+` WHERE sandbox_id = ?`, append(args, sandboxID)
	}
	var n int64
	if err := s.db.QueryRowContext(ctx, s.q(query), args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("snapshot bytes of %q: %w", sandboxID, err)
	}
	return n, nil
}

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
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO rollbacks (id, sandbox_id, agent_id, snapshot_id, reason, run_id, at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`),
		rb.ID, rb.SandboxID, rb.AgentID, rb.SnapshotID, rb.Reason, rb.RunID, Nanos(rb.At))
	if s.isUnique(err) {
		return fmt.Errorf("record rollback %q: %w", rb.ID, history.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("record rollback %q: %w", rb.ID, err)
	}
	return nil
}

// ListRollbacks implements history.Store.
func (s *Store) ListRollbacks(ctx context.Context, sandboxID string) ([]history.Rollback, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id, sandbox_id, agent_id, snapshot_id, reason, run_id, at
		FROM rollbacks WHERE sandbox_id = ?`+s.oldestFirst("at")), sandboxID)
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
		rb.At = FromNanos(at)
		rbs = append(rbs, rb)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list rollbacks of sandbox %q: %w", sandboxID, err)
	}
	return rbs, nil
}
