package sqlstore

import (
	"context"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"

	"github.com/vmexec/vmexec/internal/history"
)

// ListRuns implements history.Store. Pages are keyset-paginated on
// (started_at, id), so the cursor names the last run returned and the next
// page starts strictly after it. The cursor's format is the same in every dialect.
func (s *Store) ListRuns(ctx context.Context, f history.RunFilter) ([]history.Run, string, error) {
	where, args, err := s.runWhere(f, true)
	if err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	limit := f.Limit
	switch {
	case limit <= 0:
		limit = history.DefaultListLimit
	case limit > history.MaxListLimit:
		limit = history.MaxListLimit
	}
	// One extra row says whether another page follows.
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT `+runColumns+` FROM runs`+where+s.newestFirst()+` LIMIT ?`), append(args, limit+1)...)
	if err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	defer rows.Close()
	runs := []history.Run{}
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, "", fmt.Errorf("list runs: %w", err)
		}
		runs = append(runs, r)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	var next string
	if len(runs) > limit {
		runs = runs[:limit]
		last := runs[limit-1]
		next = encodeCursor(Nanos(last.StartedAt), last.ID)
	}
	return runs, next, nil
}

// CountRuns implements history.Store.
func (s *Store) CountRuns(ctx context.Context, f history.RunFilter) (int, error) {
	where, args, err := s.runWhere(f, false)
	if err != nil {
		return 0, fmt.Errorf("count runs: %w", err)
	}
	var n int
	if err := s.db.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM runs`+where), args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count runs: %w", err)
	}
	return n, nil
}

// runWhere builds the WHERE clause for f, with the cursor condition if
// withCursor is set.
func (s *Store) runWhere(f history.RunFilter, withCursor bool) (string, []any, error) {
	var (
		conds []string
		args  []any
	)
	if f.AgentID != "" {
		conds = append(conds, "agent_id = ?")
		args = append(args, f.AgentID)
	}
	if f.SandboxID != "" {
		conds = append(conds, "sandbox_id = ?")
		args = append(args, f.SandboxID)
	}
	if f.FailuresOnly {
		conds = append(conds, "status <> ? AND verdict <> ?")
		args = append(args, history.StatusRunning, history.VerdictOK)
	}
	if !f.Since.IsZero() {
		conds = append(conds, "started_at >= ?")
		args = append(args, Nanos(f.Since))
	}
	if !f.Until.IsZero() {
		conds = append(conds, "started_at < ?")
		args = append(args, Nanos(f.Until))
	}
	if withCursor && f.Cursor != "" {
		started, id, err := decodeCursor(f.Cursor)
		if err != nil {
			return "", nil, err
		}
		conds = append(conds, "(started_at < ? OR (started_at = ? AND "+s.d.IDOrder+" < ?))")
		args = append(args, started, started, id)
	}
	if len(conds) == 0 {
		return "", nil, nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args, nil
}

// encodeCursor makes the opaque cursor naming the run (started, id).
func encodeCursor(started int64, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(started, 10) + ":" + id))
}

func decodeCursor(c string) (int64, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return 0, "", fmt.Errorf("malformed cursor: %w", history.ErrInvalid)
	}
	ts, id, ok := strings.Cut(string(b), ":")
	started, err := strconv.ParseInt(ts, 10, 64)
	if !ok || err != nil || id == "" {
		return 0, "", fmt.Errorf("malformed cursor: %w", history.ErrInvalid)
	}
	return started, id, nil
}
