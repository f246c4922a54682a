package sandbox

// Change sets and diffs.
//
// Each run's result and history row carry the run's change set: the paths under the
// scanned areas it created, modified and deleted, computed by the guest agent from
// metadata before and after the run (internal/guest/changes.go). A run that was rolled
// back keeps its change set, with changes_undone: the list says what the rollback
// undid.
//
// A diff of one changed file (RunChangeDiff) needs the file before and after the run.
// Before: the run's pre-run snapshot, if it is still held, is forked into a temporary
// sandbox (counted against the server's capacity while it lives, destroyed at once)
// and the file read through the files API. After: the run's own sandbox while its
// state is still the run's (no later run, not rolled back), else the failure snapshot
// the run kept, forked the same way. Neither available → ErrConflict with the reason.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"unicode/utf8"

	udiff "github.com/aymanbagabas/go-udiff"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history"
)

// ChangesConfig is the server's change-set setting (sandbox.changes).
type ChangesConfig struct {
	// Enabled computes a change set for every run (default true); a request may turn
	// it off for itself.
	Enabled *bool `json:"enabled,omitempty" yaml:"enabled,omitempty"`
	// Paths are the areas scanned (absolute, or relative to /home/user). Empty:
	// /home/user, /tmp (without the agent's own /tmp/.vmexec) and the run's working
	// directory.
	Paths []string `json:"paths,omitempty" yaml:"paths,omitempty"`
	// MaxEntries bounds a run's change set (default 1000); past it the result says
	// changes_truncated.
	MaxEntries int `json:"max_entries,omitempty" yaml:"max_entries,omitempty"`
}

// Bounds of change sets and diffs.
const (
	defaultMaxChanges = 1000
	maxMaxChanges     = 100_000
	maxChangePaths    = 16
	// maxDiffBytes bounds each side of a diff; a larger file reports sizes only.
	maxDiffBytes = 1 << 20
)

func (c ChangesConfig) validate() error {
	if c.MaxEntries < 0 || c.MaxEntries > maxMaxChanges {
		return fmt.Errorf("changes.max_entries %d: must be between 0 and %d", c.MaxEntries, maxMaxChanges)
	}
	return checkChangePaths(c.Paths)
}

func checkChangePaths(paths []string) error {
	if len(paths) > maxChangePaths {
		return fmt.Errorf("changes.paths: %d paths, at most %d", len(paths), maxChangePaths)
	}
	for _, p := range paths {
		if strings.TrimSpace(p) == "" || strings.ContainsRune(p, 0) {
			return fmt.Errorf("changes.paths: invalid path %q", p)
		}
	}
	return nil
}

// validateChanges checks a request's change-set option.
func validateChanges(o *api.ChangesOptions) error {
	if o == nil {
		return nil
	}
	if err := checkChangePaths(o.Paths); err != nil {
		return fmt.Errorf("%w: %w", err, ErrInvalid)
	}
	return nil
}

// changeScan is what the guest is asked to scan for req, or nil for no change set.
func (s *Service) changeScan(req api.ExecRequest) *agentproto.ChangeScan {
	cfg := s.cfg.Changes
	on := cfg.Enabled == nil || *cfg.Enabled
	paths := cfg.Paths
	if o := req.Changes; o != nil {
		if o.Enabled != nil {
			on = *o.Enabled
		}
		if len(o.Paths) > 0 {
			paths = o.Paths
		}
	}
	if !on {
		return nil
	}
	max := cfg.MaxEntries
	if max == 0 {
		max = defaultMaxChanges
	}
	scan := &agentproto.ChangeScan{MaxEntries: max}
	scan.Paths = append(scan.Paths, paths...) // empty: the guest's defaults
	return scan
}

// setChanges copies the guest's change set into out.
func setChanges(out *api.ExecResult, res *agentproto.ExecResult) {
	if len(res.Changes) > 0 {
		out.Changes = make([]api.FileChange, len(res.Changes))
		for i, c := range res.Changes {
			out.Changes[i] = api.FileChange{Path: c.Path, Kind: c.Kind, Type: c.Type, Size: c.Size, Mode: c.Mode}
		}
	}
	out.ChangesTruncated, out.ChangesScanUS = res.ChangesTruncated, res.ChangesScanUS
}

// changesRecord is out's change set as the history stores it.
func changesRecord(out *api.ExecResult) ([]history.Change, bool, bool) {
	var cs []history.Change
	for _, c := range out.Changes {
		cs = append(cs, history.Change(c))
	}
	return cs, out.ChangesTruncated, out.ChangesUndone
}

// changesAPI is a stored change set as the API shows it.
func changesAPI(cs []history.Change) []api.FileChange {
	var out []api.FileChange
	for _, c := range cs {
		out = append(out, api.FileChange(c))
	}
	return out
}

// RunChangeDiff returns what run runID did to the file p (absolute, or relative to
// /home/user), which must be in the run's change set: ErrNotFound for a run agentID
// cannot see or a path the run did not change, ErrInvalid for a directory, ErrConflict
// when a side of the diff is no longer held (see the file comment).
func (s *Service) RunChangeDiff(ctx context.Context, runID, agentID, p string) (api.ChangeDiff, error) {
	r, err := s.hist.GetRun(ctx, runID)
	if errors.Is(err, history.ErrNotFound) || err == nil && CheckAgent(agentID, r.AgentID) != nil {
		return api.ChangeDiff{}, fmt.Errorf("run %s: %w", runID, ErrNotFound)
	}
	if err != nil {
		return api.ChangeDiff{}, fmt.Errorf("run %s: %w", runID, err)
	}
	if p == "" {
		return api.ChangeDiff{}, fmt.Errorf("path is required: %w", ErrInvalid)
	}
	if !path.IsAbs(p) {
		p = path.Join("/home/user", p)
	}
	p = path.Clean(p)
	var ch *history.Change
	for i := range r.Changes {
		if r.Changes[i].Path == p {
			ch = &r.Changes[i]
		}
	}
	if ch == nil {
		return api.ChangeDiff{}, fmt.Errorf("run %s did not change %s (or it is past the change set's bound): %w", runID, p, ErrNotFound)
	}
	if ch.Type == agentproto.FileTypeDir {
		return api.ChangeDiff{}, fmt.Errorf("%s is a directory: %w", p, ErrInvalid)
	}
	out := api.ChangeDiff{RunID: runID, Path: p, Kind: ch.Kind}
	var before, after side
	if ch.Kind != api.ChangeCreated {
		if before, err = s.readFromSnapshot(ctx, r, r.PreSnapshotID, p); err != nil {
			return api.ChangeDiff{}, fmt.Errorf("the file before the run: %w", err)
		}
	}
	if ch.Kind != api.ChangeDeleted {
		if after, out.NewFrom, err = s.readAfter(ctx, r, p); err != nil {
			return api.ChangeDiff{}, fmt.Errorf("the file after the run: %w", err)
		}
	}
	out.OldSize, out.NewSize = before.size, after.size
	if !before.text() || !after.text() {
		out.Binary = true
		return out, nil
	}
	out.Diff = udiff.Unified("a"+p, "b"+p, string(before.data), string(after.data))
	return out, nil
}

// side is one version of a file: its size, and its content when not over the bound.
type side struct {
	size int64
	data []byte
	over bool
}

func (s side) text() bool {
	return !s.over && utf8.Valid(s.data) && !bytes.ContainsRune(s.data, 0)
}

// readSide reads p's size and up to maxDiffBytes of its content from sb.
func readSide(ctx context.Context, sb backend.Sandbox, p string) (side, error) {
	fi, rc, err := sb.OpenFile(ctx, p)
	if err != nil {
		return side{}, classifyFileErr(err)
	}
	defer rc.Close()
	out := side{size: fi.Size}
	if fi.Size > maxDiffBytes {
		out.over = true
		return out, nil
	}
	out.data, err = io.ReadAll(io.LimitReader(rc, maxDiffBytes+1))
	if err != nil {
		return side{}, classifyFileErr(err)
	}
	out.over = len(out.data) > maxDiffBytes
	return out, nil
}

// readAfter reads p as the run left it: from the run's sandbox if its state is still
// the run's, else from the run's failure snapshot.
func (s *Service) readAfter(ctx context.Context, r history.Run, p string) (side, string, error) {
	if !r.RolledBack {
		var out side
		current := false
		err := s.withFiles(ctx, r.SandboxID, "", func(e *entry) error {
			if e.headRun != r.ID {
				return nil // a later run (or a rollback) came since
			}
			current = true
			var err error
			out, err = readSide(ctx, e.sb, p)
			return err
		})
		if current || err != nil && !errors.Is(err, ErrNotFound) {
			return out, "sandbox", err
		}
	}
	if r.FailureSnapshotID == "" {
		return side{}, "", fmt.Errorf("the state the run left is no longer held (a later run changed the sandbox, and no failure snapshot was kept): %w", ErrConflict)
	}
	out, err := s.readFromSnapshot(ctx, r, r.FailureSnapshotID, p)
	return out, "failure_snapshot", err
}

// readFromSnapshot reads p from snapshot snapID of r's sandbox, forked into a
// temporary sandbox that is destroyed before it returns.
func (s *Service) readFromSnapshot(ctx context.Context, r history.Run, snapID, p string) (side, error) {
	if snapID == "" {
		return side{}, fmt.Errorf("the run had no snapshot: %w", ErrConflict)
	}
	sn, err := s.hist.GetSnapshot(ctx, snapID)
	if errors.Is(err, history.ErrNotFound) {
		return side{}, fmt.Errorf("snapshot %s is no longer held (retention removed it): %w", snapID, ErrConflict)
	}
	if err != nil {
		return side{}, fmt.Errorf("snapshot %s: %w", snapID, err)
	}
	src, err := s.lookup(sn.SandboxID, "")
	if err != nil {
		return side{}, fmt.Errorf("the snapshot's sandbox is gone: %w", ErrConflict)
	}
	snapper := s.snapperOf(src)
	if snapper == nil {
		return side{}, fmt.Errorf("fork: %w", ErrUnsupported)
	}
	release, err := s.admit(ctx, src.memoryMB, nil)
	if err != nil {
		return side{}, err
	}
	defer release()
	sb, err := snapper.Fork(ctx, sn.Path, s.spec(randID("diff-", 6), src.memoryMB))
	if err != nil {
		return side{}, fmt.Errorf("fork snapshot %s: %w", snapID, classifyBackend(err))
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.SuspendTimeout)
		defer cancel()
		if err := sb.Destroy(dctx); err != nil {
			s.log.Warn("destroying a diff's temporary sandbox", "id", sb.ID(), "err", err)
		}
	}()
	return readSide(ctx, sb, p)
}
