package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/history"
)

// retain applies the retention policy pol to a sandbox in the background, off the
// path of the run or snapshot that triggered it: past max_history_entries the oldest
// runs are deleted, and past max_snapshots, in the sandbox's turn (queued like a
// request), the oldest unpinned snapshots. keep (the snapshot just taken), the current
// snapshot (what the sandbox resumes from) and one equal to the live state are never
// deleted, so neither a rollback in progress nor a resume loses its image.
func (s *Service) retain(e *entry, pol txPolicy, keep string) {
	sandboxID := e.id
	s.goBackground(func() {
		ctx, cancel := context.WithTimeout(s.work, time.Minute)
		defer cancel()
		if err := s.hist.PruneRuns(ctx, sandboxID, pol.maxHistory); err != nil {
			s.log.Warn("retention: prune history", "sandbox", sandboxID, "err", err)
		}
		if keep == "" {
			return
		}
		if err := e.lock(ctx); err != nil { // snapshots: in the sandbox's turn
			return
		}
		defer e.unlock()
		if e.deleted {
			return
		}
		snaps, err := s.hist.ListSnapshots(ctx, sandboxID)
		if err != nil {
			s.log.Warn("retention: list snapshots", "sandbox", sandboxID, "err", err)
			return
		}
		excess := len(snaps) - pol.maxSnapshots
		for _, sn := range snaps { // oldest first
			if excess <= 0 {
				break
			}
			if sn.Pinned || sn.ID == keep || sn.ID == e.current || sn.ID == e.cleanSnap {
				continue
			}
			if err := s.removeSnapshot(ctx, e, sn); err != nil {
				s.log.Warn("retention: delete snapshot", "snapshot", sn.ID, "err", err)
				continue
			}
			excess--
		}
	})
}

// removeSnapshot deletes snapshot sn of e: its record first, then its image, so
// that a crash between the two leaves an image without a record (which Start
// deletes), never a record without an image.
func (s *Service) removeSnapshot(ctx context.Context, e *entry, sn history.Snapshot) error {
	e.settle.forget(sn.ID)
	if err := s.hist.DeleteSnapshot(ctx, sn.ID); err != nil && !errors.Is(err, history.ErrNotFound) {
		return err
	}
	s.unstore(sn)
	snapper := s.snapperOf(e)
	if snapper == nil {
		return nil
	}
	if err := snapper.DeleteImage(ctx, sn.Path); err != nil {
		return fmt.Errorf("delete snapshot %s: %w", sn.ID, err)
	}
	return nil
}

// deleteSnapshots deletes all of e's snapshots.
func (s *Service) deleteSnapshots(ctx context.Context, e *entry) error {
	snaps, err := s.hist.ListSnapshots(ctx, e.id)
	if err != nil {
		return err
	}
	var errs []error
	for _, sn := range snaps {
		errs = append(errs, s.removeSnapshot(ctx, e, sn))
	}
	return errors.Join(errs...)
}

// withEntry runs f with e's turn held, queueing like a run does; a sandbox deleted
// meanwhile is ErrNotFound, a server shutting down ErrClosed.
func (s *Service) withEntry(ctx context.Context, sandboxID, agentID string, f func(e *entry) error) error {
	e, err := s.lookup(sandboxID, agentID)
	if err != nil {
		return err
	}
	if err := s.acquire(ctx, e); err != nil {
		return err
	}
	defer e.unlock()
	return f(e)
}

// CreateSnapshot saves a sandbox's whole state (files, memory, processes).
func (s *Service) CreateSnapshot(ctx context.Context, sandboxID string, req api.CreateSnapshotRequest) (api.Snapshot, error) {
	var out api.Snapshot
	err := s.withEntry(ctx, sandboxID, req.AgentID, func(e *entry) error {
		if _, err := s.resumeLocked(ctx, e); err != nil {
			return err
		}
		rec, err := e.snapshot(ctx, history.SnapshotManual, "", req)
		out = snapshotAPI(rec)
		return err
	})
	return out, err
}

// ListSnapshots lists a sandbox's snapshots, oldest first, with their disk use.
func (s *Service) ListSnapshots(ctx context.Context, sandboxID, agentID string) (api.SnapshotList, error) {
	if _, err := s.lookup(sandboxID, agentID); err != nil {
		return api.SnapshotList{}, err
	}
	snaps, err := s.hist.ListSnapshots(ctx, sandboxID)
	if err != nil {
		return api.SnapshotList{}, err
	}
	out := api.SnapshotList{Snapshots: make([]api.Snapshot, 0, len(snaps))}
	for _, sn := range snaps {
		out.Snapshots = append(out.Snapshots, snapshotAPI(sn))
		out.DiskBytes += sn.SizeBytes
	}
	return out, nil
}

// snapshotFor finds a snapshot that agentID may use. Another agent's snapshot is
// reported as not found, so its existence does not leak.
func (s *Service) snapshotFor(ctx context.Context, id, agentID string) (history.Snapshot, error) {
	sn, err := s.hist.GetSnapshot(ctx, id)
	if errors.Is(err, history.ErrNotFound) || err == nil && agentID != "" && sn.AgentID != "" && sn.AgentID != agentID {
		return history.Snapshot{}, fmt.Errorf("snapshot %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return history.Snapshot{}, err
	}
	return sn, nil
}

// GetSnapshot describes one snapshot.
func (s *Service) GetSnapshot(ctx context.Context, id, agentID string) (api.Snapshot, error) {
	sn, err := s.snapshotFor(ctx, id, agentID)
	return snapshotAPI(sn), err
}

// DeleteSnapshot removes a snapshot's image and record.
func (s *Service) DeleteSnapshot(ctx context.Context, id, agentID string) error {
	sn, err := s.snapshotFor(ctx, id, agentID)
	if err != nil {
		return err
	}
	return s.withEntry(ctx, sn.SandboxID, agentID, func(e *entry) error {
		e.forgetSnapshot(ctx, sn.ID)
		return s.removeSnapshot(ctx, e, sn)
	})
}

// Rollback returns a sandbox to one of its snapshots, or to the state right after its
// last successful run.
func (s *Service) Rollback(ctx context.Context, sandboxID string, req api.RollbackRequest) (api.RollbackResult, error) {
	if (req.SnapshotID == "") == !req.LastSuccess {
		return api.RollbackResult{}, fmt.Errorf("give either snapshot_id or last_success: %w", ErrInvalid)
	}
	var out api.RollbackResult
	err := s.withEntry(ctx, sandboxID, req.AgentID, func(e *entry) error {
		var sn history.Snapshot
		var err error
		reason := "manual"
		if req.LastSuccess {
			sn, err = s.lastSuccessSnapshot(ctx, e)
			reason = "last_success"
		} else {
			sn, err = s.snapshotFor(ctx, req.SnapshotID, req.AgentID)
			if err == nil && sn.SandboxID != e.id {
				err = fmt.Errorf("snapshot %s belongs to sandbox %s, not %s (fork it instead): %w", sn.ID, sn.SandboxID, e.id, ErrInvalid)
			}
		}
		if err != nil {
			return err
		}
		if sn.ID == "" {
			out = api.RollbackResult{SandboxID: e.id, Message: "sandbox " + e.id + " is already in the state of its last successful run"}
			return nil
		}
		if e.sb == nil { // suspended: restoring starts a sandbox
			release, err := s.admit(ctx, e.memoryMB, e)
			if err != nil {
				return err
			}
			defer release()
		}
		if err := e.restore(ctx, sn); err != nil {
			return err
		}
		s.recordRollback(ctx, e, sn.ID, reason, "")
		out = api.RollbackResult{SandboxID: e.id, SnapshotID: sn.ID, Message: "sandbox " + e.id + " rolled back to snapshot " + sn.ID}
		if key := s.takeFetched(e); key != "" {
			out.Message += " (its local image was gone: restored from the snapshot store, " + key + ")"
		}
		return nil
	})
	return out, err
}

// lastSuccessSnapshot finds the state right after the newest successful run: the
// snapshot taken before the run that followed it. When the newest run is the
// successful one there is nothing to undo, and it returns a zero Snapshot.
func (s *Service) lastSuccessSnapshot(ctx context.Context, e *entry) (history.Snapshot, error) {
	ok, err := s.hist.LastSuccessfulRun(ctx, e.id)
	if errors.Is(err, history.ErrNotFound) {
		return history.Snapshot{}, fmt.Errorf("sandbox %s has no successful run to roll back to: %w", e.id, ErrNotFound)
	}
	if err != nil {
		return history.Snapshot{}, err
	}
	runs, _, err := s.hist.ListRuns(ctx, history.RunFilter{SandboxID: e.id, Since: ok.StartedAt, Limit: history.MaxListLimit})
	if err != nil {
		return history.Snapshot{}, err
	}
	// runs are newest first; the successor of ok is the one just before it.
	if len(runs) > 0 && runs[0].ID == ok.ID {
		return history.Snapshot{}, nil // the last run succeeded: nothing to undo
	}
	for i := len(runs) - 1; i > 0; i-- {
		if runs[i].ID == ok.ID {
			for j := i - 1; j >= 0; j-- {
				if runs[j].PreSnapshotID != "" {
					if sn, err := s.hist.GetSnapshot(ctx, runs[j].PreSnapshotID); err == nil {
						return sn, nil
					}
				}
				if runs[j].Status != history.StatusBlocked {
					break // a run without a usable pre-snapshot changed the state
				}
			}
			break
		}
	}
	return history.Snapshot{}, fmt.Errorf("no snapshot of the state after run %s survives (snapshot_before_execution off, or retention removed it): %w", ok.ID, ErrNotFound)
}

func (s *Service) recordRollback(ctx context.Context, e *entry, snapID, reason, runID string) {
	err := s.hist.RecordRollback(ctx, history.Rollback{ID: randID("rb-", 8), SandboxID: e.id, AgentID: e.agentID, SnapshotID: snapID, Reason: reason, RunID: runID})
	if err != nil {
		s.log.Warn("recording rollback", "sandbox", e.id, "err", err)
	}
}

// Fork starts a new sandbox from a snapshot. The new sandbox belongs to the
// snapshot's agent; its state is an independent copy.
func (s *Service) Fork(ctx context.Context, snapshotID string, req api.ForkRequest) (api.Sandbox, error) {
	sn, err := s.snapshotFor(ctx, snapshotID, req.AgentID)
	if err != nil {
		return api.Sandbox{}, err
	}
	src, err := s.lookup(sn.SandboxID, "")
	if err != nil {
		return api.Sandbox{}, fmt.Errorf("fork: the snapshot's sandbox is gone: %w", ErrNotFound)
	}
	// A restored image needs the backend and memory it was saved with.
	e, err := s.newEntry(ctx, newEntryReq{agentID: sn.AgentID, name: req.Name, backend: src.backend, memoryMB: src.memoryMB, from: &sn})
	if err != nil {
		return api.Sandbox{}, err
	}
	return s.describe(e), nil
}

func snapshotAPI(sn history.Snapshot) api.Snapshot {
	return api.Snapshot{ID: sn.ID, SandboxID: sn.SandboxID, AgentID: sn.AgentID, Name: sn.Name, Description: sn.Description,
		Kind: sn.Kind, RunID: sn.RunID, SizeBytes: sn.SizeBytes, Pinned: sn.Pinned, CreatedAt: sn.CreatedAt}
}
