package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/vmexec/vmexec/internal/auth"
)

// The API keys (auth.Store), in the api_keys table of migration 0006.

var _ auth.Store = (*Store)(nil)

// CreateKey implements auth.Store.
func (s *Store) CreateKey(ctx context.Context, k auth.Key) error {
	if err := k.Validate(); err != nil {
		return err
	}
	agents, _ := json.Marshal(k.Agents)
	if k.Agents == nil {
		agents = []byte("[]")
	}
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO api_keys (id, name, hash, admin, agents, rate, max_sandboxes, max_runs, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`), k.ID, k.Name, k.Hash, k.Admin, string(agents), k.Rate, k.MaxSandboxes, k.MaxRuns, Nanos(k.CreatedAt))
	if s.isUnique(err) {
		return fmt.Errorf("key %s: %w", k.Name, auth.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create key %s: %w", k.Name, err)
	}
	return nil
}

// ListKeys implements auth.Store.
func (s *Store) ListKeys(ctx context.Context) ([]auth.Key, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT id, name, hash, admin, agents, rate, max_sandboxes, max_runs,
		created_at, last_used_at, revoked_at FROM api_keys`+s.oldestFirst("created_at")))
	if err != nil {
		return nil, fmt.Errorf("list keys: %w", err)
	}
	defer rows.Close()
	var out []auth.Key
	for rows.Next() {
		var (
			k                      auth.Key
			agents                 string
			created, used, revoked int64
		)
		if err := rows.Scan(&k.ID, &k.Name, &k.Hash, &k.Admin, &agents, &k.Rate, &k.MaxSandboxes, &k.MaxRuns, &created, &used, &revoked); err != nil {
			return nil, fmt.Errorf("list keys: %w", err)
		}
		if err := json.Unmarshal([]byte(agents), &k.Agents); err != nil {
			return nil, fmt.Errorf("key %s: stored agent patterns: %w", k.Name, err)
		}
		k.CreatedAt, k.LastUsedAt, k.RevokedAt = FromNanos(created), FromNanos(used), FromNanos(revoked)
		out = append(out, k)
	}
	return out, rows.Err()
}

// RevokeKey implements auth.Store.
func (s *Store) RevokeKey(ctx context.Context, name string, at time.Time) error {
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at = 0`), Nanos(at), name)
	if err != nil {
		return fmt.Errorf("revoke key %s: %w", name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("key %s: %w", name, auth.ErrNotFound)
	}
	return nil
}

// TouchKeys implements auth.Store. A key's last use only moves forward.
func (s *Store) TouchKeys(ctx context.Context, used map[string]time.Time) (err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("touch keys: %w", err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	for id, at := range used {
		t := Nanos(at)
		if _, err := tx.ExecContext(ctx, s.q(`UPDATE api_keys SET last_used_at = ? WHERE id = ? AND last_used_at < ?`), t, id, t); err != nil {
			return fmt.Errorf("touch keys: touch key %s: %w", id, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("touch keys: %w", err)
	}
	return nil
}
