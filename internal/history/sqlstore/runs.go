package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/vmexec/vmexec/internal/history"
)

// runColumns lists the runs columns in the order scanRun reads and
// insertRun writes them.
const runColumns = `id, agent_id, sandbox_id, language, code, status, verdict, exit_code,
	stdout, stderr, stdout_truncated, stderr_truncated, blocked_rule, blocked_reason,
	pre_snapshot_id, failure_snapshot_id, restored_snapshot_id, rolled_back,
	started_at, completed_at, duration_ms, metadata, key_name, changes, changes_truncated, changes_undone`

// BeginRun implements history.Store.
func (s *Store) BeginRun(ctx context.Context, r history.Run) error {
	r.Status = history.StatusRunning
	r.Verdict = ""
	if r.StartedAt.IsZero() {
		r.StartedAt = now()
	}
	if err := checkRunIdentity(r); err != nil {
		return fmt.Errorf("begin run: %w", err)
	}
	if err := s.insertRun(ctx, r); err != nil {
		return fmt.Errorf("begin run %q: %w", r.ID, err)
	}
	return nil
}

// RecordRun implements history.Store.
func (s *Store) RecordRun(ctx context.Context, r history.Run) error {
	if r.StartedAt.IsZero() {
		r.StartedAt = now()
	}
	if r.CompletedAt.IsZero() {
		r.CompletedAt = r.StartedAt
	}
	if err := checkRunIdentity(r); err != nil {
		return fmt.Errorf("record run: %w", err)
	}
	if err := checkFinal(r); err != nil {
		return fmt.Errorf("record run %q: %w", r.ID, err)
	}
	if err := s.insertRun(ctx, r); err != nil {
		return fmt.Errorf("record run %q: %w", r.ID, err)
	}
	return nil
}

func (s *Store) insertRun(ctx context.Context, r history.Run) error {
	meta, err := encodeMetadata(r.Metadata)
	if err != nil {
		return err
	}
	changes, err := encodeChanges(r.Changes)
	if err != nil {
		return err
	}
	_, err = s.db.ExecContext(ctx, s.q(`INSERT INTO runs (`+runColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		r.ID, r.AgentID, r.SandboxID, r.Language, r.Code, r.Status, r.Verdict, r.ExitCode,
		r.Stdout, r.Stderr, r.StdoutTruncated, r.StderrTruncated, r.BlockedRule, r.BlockedReason,
		r.PreSnapshotID, r.FailureSnapshotID, r.RestoredSnapshotID, r.RolledBack,
		Nanos(r.StartedAt), Nanos(r.CompletedAt), r.DurationMS, meta, r.KeyName,
		changes, r.ChangesTruncated, r.ChangesUndone)
	if s.isUnique(err) {
		return history.ErrExists
	}
	return err
}

// FinishRun implements history.Store.
func (s *Store) FinishRun(ctx context.Context, r history.Run) error {
	if r.ID == "" {
		return fmt.Errorf("finish run: empty id: %w", history.ErrInvalid)
	}
	if err := checkFinal(r); err != nil {
		return fmt.Errorf("finish run %q: %w", r.ID, err)
	}
	if r.CompletedAt.IsZero() {
		r.CompletedAt = now()
	}
	var meta any // NULL keeps the stored metadata
	if len(r.Metadata) > 0 {
		m, err := encodeMetadata(r.Metadata)
		if err != nil {
			return fmt.Errorf("finish run %q: %w", r.ID, err)
		}
		meta = m
	}
	changes, err := encodeChanges(r.Changes)
	if err != nil {
		return fmt.Errorf("finish run %q: %w", r.ID, err)
	}
	res, err := s.db.ExecContext(ctx, s.q(`UPDATE runs SET
		status = ?, verdict = ?, exit_code = ?,
		stdout = ?, stderr = ?, stdout_truncated = ?, stderr_truncated = ?,
		blocked_rule = ?, blocked_reason = ?,
		pre_snapshot_id = COALESCE(NULLIF(CAST(? AS TEXT), ''), pre_snapshot_id),
		failure_snapshot_id = COALESCE(NULLIF(CAST(? AS TEXT), ''), failure_snapshot_id),
		restored_snapshot_id = COALESCE(NULLIF(CAST(? AS TEXT), ''), restored_snapshot_id),
		rolled_back = ?, completed_at = ?, duration_ms = ?,
		metadata = COALESCE(CAST(? AS TEXT), metadata),
		changes = ?, changes_truncated = ?, changes_undone = ?
		WHERE id = ?`),
		r.Status, r.Verdict, r.ExitCode,
		r.Stdout, r.Stderr, r.StdoutTruncated, r.StderrTruncated,
		r.BlockedRule, r.BlockedReason,
		r.PreSnapshotID, r.FailureSnapshotID, r.RestoredSnapshotID,
		r.RolledBack, Nanos(r.CompletedAt), r.DurationMS,
		meta, changes, r.ChangesTruncated, r.ChangesUndone, r.ID)
	if err != nil {
		return fmt.Errorf("finish run %q: %w", r.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("finish run %q: %w", r.ID, err)
	} else if n == 0 {
		return fmt.Errorf("finish run %q: %w", r.ID, history.ErrNotFound)
	}
	return nil
}

// GetRun implements history.Store.
func (s *Store) GetRun(ctx context.Context, id string) (history.Run, error) {
	row := s.db.QueryRowContext(ctx, s.q(`SELECT `+runColumns+` FROM runs WHERE id = ?`), id)
	r, err := scanRun(row)
	if errors.Is(err, sql.ErrNoRows) {
		return history.Run{}, fmt.Errorf("get run %q: %w", id, history.ErrNotFound)
	}
	if err != nil {
		return history.Run{}, fmt.Errorf("get run %q: %w", id, err)
	}
	return r, nil
}

// LastSuccessfulRun implements history.Store.
func (s *Store) LastSuccessfulRun(ctx context.Context, sandboxID string) (history.Run, error) {
	row := s.db.QueryRowContext(ctx, s.q(`SELECT `+runColumns+` FROM runs
		WHERE sandbox_id = ? AND verdict = ? AND status <> ?`+s.newestFirst()+` LIMIT 1`),
		sandboxID, history.VerdictOK, history.StatusRunning)
	r, err := scanRun(row)
	if errors.Is(err, sql.ErrNoRows) {
		return history.Run{}, fmt.Errorf("last successful run of sandbox %q: %w", sandboxID, history.ErrNotFound)
	}
	if err != nil {
		return history.Run{}, fmt.Errorf("last successful run of sandbox %q: %w", sandboxID, err)
	}
	return r, nil
}

// AbortRunning implements history.Store.
func (s *Store) AbortRunning(ctx context.Context, reason string) (int, error) {
	t := Nanos(now())
	res, err := s.db.ExecContext(ctx, s.q(s.d.AbortRunning),
		history.StatusError, history.VerdictError, t, t, reason, history.StatusRunning)
	if err != nil {
		return 0, fmt.Errorf("abort running runs: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("abort running runs: %w", err)
	}
	return int(n), nil
}

// PruneRuns implements history.Store.
func (s *Store) PruneRuns(ctx context.Context, sandboxID string, keep int) error {
	if keep < 0 {
		return fmt.Errorf("prune runs of sandbox %q: keep %d: %w", sandboxID, keep, history.ErrInvalid)
	}
	_, err := s.db.ExecContext(ctx, s.q(`DELETE FROM runs
		WHERE sandbox_id = ? AND status <> ? AND id NOT IN (
			SELECT id FROM runs WHERE sandbox_id = ?`+s.newestFirst()+` LIMIT ?)`),
		sandboxID, history.StatusRunning, sandboxID, keep)
	if err != nil {
		return fmt.Errorf("prune runs of sandbox %q: %w", sandboxID, err)
	}
	return nil
}

// checkRunIdentity checks the fields an inserted run needs.
func checkRunIdentity(r history.Run) error {
	if r.ID == "" {
		return fmt.Errorf("empty id: %w", history.ErrInvalid)
	}
	if r.SandboxID == "" && !(r.Status == history.StatusBlocked && r.AgentID != "") {
		return fmt.Errorf("run %q: empty sandbox id: %w", r.ID, history.ErrInvalid)
	}
	return nil
}

// checkFinal checks that r carries a final status and a verdict.
func checkFinal(r history.Run) error {
	if !history.ValidStatus(r.Status) || r.Status == history.StatusRunning {
		return fmt.Errorf("status %q is not a final status: %w", r.Status, history.ErrInvalid)
	}
	if r.Verdict == "" {
		return fmt.Errorf("empty verdict: %w", history.ErrInvalid)
	}
	return nil
}

func scanRun(sc scanner) (history.Run, error) {
	var (
		r                  history.Run
		started, completed int64
		meta, changes      string
	)
	err := sc.Scan(&r.ID, &r.AgentID, &r.SandboxID, &r.Language, &r.Code, &r.Status, &r.Verdict, &r.ExitCode,
		&r.Stdout, &r.Stderr, &r.StdoutTruncated, &r.StderrTruncated, &r.BlockedRule, &r.BlockedReason,
		&r.PreSnapshotID, &r.FailureSnapshotID, &r.RestoredSnapshotID, &r.RolledBack,
		&started, &completed, &r.DurationMS, &meta, &r.KeyName, &changes, &r.ChangesTruncated, &r.ChangesUndone)
	if err != nil {
		return history.Run{}, err
	}
	r.StartedAt = FromNanos(started)
	r.CompletedAt = FromNanos(completed)
	if r.Metadata, err = decodeMetadata(meta); err != nil {
		return history.Run{}, fmt.Errorf("run %q: %w", r.ID, err)
	}
	if changes != "" {
		if err := json.Unmarshal([]byte(changes), &r.Changes); err != nil {
			return history.Run{}, fmt.Errorf("run %q: decode changes: %w", r.ID, err)
		}
	}
	return r, nil
}

// encodeChanges stores a change set as JSON; none is "".
func encodeChanges(cs []history.Change) (string, error) {
	if len(cs) == 0 {
		return "", nil
	}
	b, err := json.Marshal(cs)
	if err != nil {
		return "", fmt.Errorf("encode changes: %w", err)
	}
	return string(b), nil
}

func encodeMetadata(m map[string]any) (string, error) {
	if len(m) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("encode metadata: %w", err)
	}
	return string(b), nil
}

// decodeMetadata reads a stored JSON object: older rows hold string values, newer
// ones any JSON; numbers come back as json.Number so they keep every digit.
func decodeMetadata(s string) (map[string]any, error) {
	if s == "" || strings.TrimSpace(s) == "{}" {
		return nil, nil
	}
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode metadata: %w", err)
	}
	if len(m) == 0 {
		return nil, nil
	}
	return m, nil
}
