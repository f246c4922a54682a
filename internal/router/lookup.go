package router

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PGLookup is Lookup over the shared history's tables in PostgreSQL
// (internal/history/postgres): one indexed read by primary key per call.
type PGLookup struct{ Pool *pgxpool.Pool }

func (l PGLookup) agentOf(ctx context.Context, table, id string) (string, error) {
	var agent string
	err := l.Pool.QueryRow(ctx, `SELECT agent_id FROM `+table+` WHERE id = $1`, id).Scan(&agent)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("no %s %q: %w", table, id, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("reading %s %q: %w", table, id, err)
	}
	return agent, nil
}

// SandboxAgent implements Lookup.
func (l PGLookup) SandboxAgent(ctx context.Context, id string) (string, error) {
	return l.agentOf(ctx, "sandboxes", id)
}

// SnapshotAgent implements Lookup.
func (l PGLookup) SnapshotAgent(ctx context.Context, id string) (string, error) {
	return l.agentOf(ctx, "snapshots", id)
}

// RunAgent implements Lookup.
func (l PGLookup) RunAgent(ctx context.Context, id string) (string, error) {
	return l.agentOf(ctx, "runs", id)
}

// ConversationAgent implements Lookup.
func (l PGLookup) ConversationAgent(ctx context.Context, id string) (string, error) {
	return l.agentOf(ctx, "conversations", id)
}
