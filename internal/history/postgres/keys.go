package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

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
	_, err := s.pool.Exec(ctx, `INSERT INTO api_keys (id, name, hash, admin, agents, rate, max_sandboxes, max_runs, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, k.ID, k.Name, k.Hash, k.Admin, string(agents), k.Rate, k.MaxSandboxes, k.MaxRuns, nanos(k.CreatedAt))
	if isUnique(err) {
		return fmt.Errorf("key %s: %w", k.Name, auth.ErrExists)
	}
	if err != nil {
		return fmt.Errorf("create key %s: %w", k.Name, err)
	}
	return nil
}

// ListKeys implements auth.Store.
func (s *Store) ListKeys(ctx context.Context) ([]auth.Key, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, name, hash, admin, agents, rate, max_sandboxes, max_runs,
		created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at, id COLLATE "C"`)
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
		k.CreatedAt, k.LastUsedAt, k.RevokedAt = fromNanos(created), fromNanos(used), fromNanos(revoked)
		out = append(out, k)
	}
	return out, rows.Err()
}

// RevokeKey implements auth.Store.
func (s *Store) RevokeKey(ctx context.Context, name string, at time.Time) error {
	tag, err := s.pool.Exec(ctx, `UPDATE api_keys SET revoked_at = $1 WHERE name = $2 AND revoked_at = 0`, nanos(at), name)
	if err != nil {
		return fmt.Errorf("revoke key %s: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("key %s: %w", name, auth.ErrNotFound)
	}
	return nil
}

// TouchKeys implements auth.Store.
func (s *Store) TouchKeys(ctx context.Context, used map[string]time.Time) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		for id, at := range used {
			if _, err := tx.Exec(ctx, `UPDATE api_keys SET last_used_at = GREATEST(last_used_at, $1) WHERE id = $2`, nanos(at), id); err != nil {
				return fmt.Errorf("touch key %s: %w", id, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("touch keys: %w", err)
	}
	return nil
}
