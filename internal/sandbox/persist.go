package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vmexec/vmexec/internal/history"
)

// recover brings the service's state in line with the history after a restart (or a
// crash): runs left "running" are closed as errors, snapshot images without a record
// (a crash mid-snapshot) and records without an image are removed, and the sandboxes
// the history knows come back as suspended, to resume from their newest snapshot.
func (s *Service) recover(ctx context.Context) error {
	if n, err := s.hist.AbortRunning(ctx, "the daemon stopped during the run"); err != nil {
		return fmt.Errorf("close interrupted runs: %w", err)
	} else if n > 0 {
		s.log.Warn("closed runs interrupted by a daemon crash", "runs", n)
	}
	snaps, err := s.hist.ListAllSnapshots(ctx)
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	known := map[string]bool{}
	for _, sn := range snaps {
		if _, err := os.Stat(sn.Path); err != nil {
			s.log.Warn("snapshot image missing; dropping its record", "snapshot", sn.ID, "path", sn.Path)
			s.hist.DeleteSnapshot(ctx, sn.ID)
			continue
		}
		known[sn.Path] = true
	}
	if s.snaps != "" {
		dirs, _ := filepath.Glob(filepath.Join(s.snaps, "*", "*"))
		for _, d := range dirs {
			if !known[d] {
				s.log.Warn("removing snapshot image without a record", "path", d)
				os.RemoveAll(d)
			}
		}
	}
	recs, err := s.hist.ListSandboxes(ctx)
	if err != nil {
		return fmt.Errorf("list sandboxes: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		if _, ok := s.backends[r.Backend]; !ok {
			s.log.Warn("sandbox of a backend not enabled now; it stays in the history until that backend is back", "id", r.ID, "backend", r.Backend)
			continue
		}
		e := &entry{id: r.ID, name: r.Name, agentID: r.AgentID, backend: r.Backend, memoryMB: r.MemoryMB, created: r.CreatedAt,
			suspended: true, lastUsed: time.Now(), gen: 1}
		e.run.Lock()
		e.unlock() // publishes its view
		s.sandboxes[r.ID] = e
		if _, ok := s.byAgent[r.AgentID]; r.AgentID != "" && !ok {
			s.byAgent[r.AgentID] = r.ID
		}
	}
	if len(recs) > 0 {
		s.log.Info("sandboxes known from before the restart; they resume on next use", "count", len(recs))
	}
	return nil
}

// suspendLocked stops e's sandbox, first saving it to a suspend snapshot when it can,
// so the next use resumes it; e.run held.
func (s *Service) suspendLocked(ctx context.Context, e *entry) error {
	if e.sb == nil {
		return nil
	}
	if s.snapperOf(e) != nil && e.sb.Info().Status == "running" {
		if _, err := s.takeSnapshot(ctx, e, history.SnapshotSuspend, "", apiNoMeta); err != nil {
			s.log.Warn("suspend snapshot failed; the sandbox's state is lost", "id", e.id, "err", err)
		}
	}
	err := e.sb.Destroy(ctx)
	e.sb, e.suspended = nil, true
	return err
}

// resumeLocked makes sure e has a running sandbox; e.run held. A suspended sandbox is
// restored from its newest snapshot that is not a failure's (a fresh one if there is
// none); a dead one is replaced by a fresh one. It reports whether the sandbox is
// fresh, i.e. earlier state is gone.
func (s *Service) resumeLocked(ctx context.Context, e *entry) (fresh bool, err error) {
	if e.sb != nil {
		return false, nil
	}
	if e.suspended && s.snapperOf(e) != nil {
		snaps, err := s.hist.ListSnapshots(ctx, e.id)
		if err != nil {
			return false, err
		}
		for i := len(snaps) - 1; i >= 0; i-- {
			if snaps[i].Kind == history.SnapshotFailure {
				continue
			}
			if err := s.restoreLocked(ctx, e, snaps[i]); err != nil {
				s.log.Warn("resume from snapshot failed; trying an older one", "id", e.id, "snapshot", snaps[i].ID, "err", err)
				continue
			}
			s.log.Info("resumed suspended sandbox", "id", e.id, "snapshot", snaps[i].ID)
			return false, nil
		}
	}
	e.gen++
	sb, err := s.backendOf(e).Create(ctx, s.specFor(e))
	if err != nil {
		return false, fmt.Errorf("start sandbox %s: %w", e.id, classifyBackend(err))
	}
	e.sb, e.suspended, e.cleanSnap = sb, false, ""
	s.log.Info("started a fresh sandbox", "id", e.id, "agent", e.agentID)
	return true, nil
}

// reaper suspends sandboxes idle for longer than IdleTimeout.
func (s *Service) reaper() {
	defer s.wg.Done()
	every := s.cfg.IdleTimeout / 4
	if every > 30*time.Second {
		every = 30 * time.Second
	}
	if every < 10*time.Millisecond {
		every = 10 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.reapIdle()
		}
	}
}

func (s *Service) reapIdle() {
	s.mu.Lock()
	var idle []*entry
	for _, e := range s.sandboxes {
		if e.waiting > 0 || !e.run.TryLock() {
			continue
		}
		if e.sb != nil && time.Since(e.lastUsed) > s.cfg.IdleTimeout {
			idle = append(idle, e)
		}
		e.unlock()
	}
	s.mu.Unlock()
	for _, e := range idle {
		if !e.run.TryLock() {
			continue // a run arrived meanwhile
		}
		if !e.deleted && e.sb != nil {
			s.log.Info("suspending idle sandbox", "id", e.id, "agent", e.agentID, "idle", time.Since(e.lastUsed).Round(time.Second))
			if err := s.suspendLocked(context.Background(), e); err != nil {
				s.log.Warn("suspend", "id", e.id, "err", err)
			}
		}
		e.unlock()
	}
}
