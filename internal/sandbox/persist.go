package sandbox

import (
	"context"
	"fmt"
	"time"

	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history"
)

// recover brings the service's state in line with the history after a restart (or a
// crash): runs left "running" are closed as errors, snapshot images without a record
// (a crash mid-snapshot) and records without an image are removed (reconcileImages), and the sandboxes
// the history knows come back as suspended, to resume from their newest snapshot.
func (s *Service) recover(ctx context.Context) error {
	if n, err := s.hist.AbortRunning(ctx, "the daemon stopped during the run"); err != nil {
		return fmt.Errorf("close interrupted runs: %w", err)
	} else if n > 0 {
		s.log.Warn("closed runs interrupted by a daemon crash", "runs", n)
	}
	recs, err := s.hist.ListSandboxes(ctx)
	if err != nil {
		return fmt.Errorf("list sandboxes: %w", err)
	}
	if err := s.reconcileImages(ctx, recs); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		if _, ok := s.backends[r.Backend]; !ok {
			s.log.Warn("sandbox of a backend not enabled now; it stays in the history until that backend is back", "id", r.ID, "backend", r.Backend)
			continue
		}
		e := s.makeEntry(r.ID, r.Name, r.AgentID, r.Backend, r.MemoryMB, r.CreatedAt)
		e.loaded(r.SandboxState)
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

// reconcileImages brings snapshot records and the backends' images in line: an image
// no record names (a crash between a snapshot and its record, or between a record's
// deletion and its image's) is deleted, and a record whose image no backend has is
// dropped. Records of sandboxes on a backend not enabled now are left alone, and so,
// in cluster mode (a Fencer is set), are records whose image this node lacks.
func (s *Service) reconcileImages(ctx context.Context, sandboxes []history.Sandbox) error {
	snaps, err := s.hist.ListAllSnapshots(ctx)
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	backendOf := map[string]string{} // sandbox id → backend name
	for _, r := range sandboxes {
		backendOf[r.ID] = r.Backend
	}
	listed := map[string]map[string]bool{} // backend → refs of its images
	shared := map[string]bool{}            // shared images: pool.go's to prune
	for name, be := range s.backends {
		sn, ok := be.(backend.Snapshotter)
		if !ok {
			continue
		}
		imgs, err := sn.ListImages(ctx)
		if err != nil {
			return fmt.Errorf("list %s snapshot images: %w", name, err)
		}
		listed[name] = map[string]bool{}
		for _, img := range imgs {
			listed[name][img.Ref] = true
			if img.Shared {
				shared[img.Ref] = true
			}
		}
	}
	recorded := map[string]bool{}
	for _, sn := range snaps {
		name, known := backendOf[sn.SandboxID]
		if _, enabled := s.backends[name]; known && !enabled {
			recorded[sn.Path] = true // its backend may come back
			continue
		}
		found := false
		for _, refs := range listed {
			found = found || refs[sn.Path]
		}
		if !found && s.fencer == nil && s.inStore(ctx, sn) { // (cluster mode keeps them all, below)
			s.log.Info("snapshot image missing here but kept in the snapshot store; it is fetched when needed", "snapshot", sn.ID, "image", sn.Path)
			continue
		}
		if !found {
			if s.fencer != nil {
				// Cluster mode: the history is shared, and the image may be another
				// node's (or in the snapshot store); it is not this node's to drop.
				continue
			}
			s.log.Warn("snapshot image missing; dropping its record", "snapshot", sn.ID, "image", sn.Path)
			s.hist.DeleteSnapshot(ctx, sn.ID)
			continue
		}
		recorded[sn.Path] = true
	}
	s.unnamedShared = map[string][]string{}
	for name, refs := range listed {
		for ref := range refs {
			if shared[ref] && !recorded[ref] {
				s.unnamedShared[name] = append(s.unnamedShared[name], ref)
			}
			if recorded[ref] || shared[ref] {
				continue
			}
			s.log.Warn("removing snapshot image without a record", "backend", name, "image", ref)
			if err := s.backends[name].(backend.Snapshotter).DeleteImage(ctx, ref); err != nil {
				s.log.Warn("removing snapshot image", "image", ref, "err", err)
			}
		}
	}
	return nil
}

// suspendLocked stops e's sandbox, saving its state first; turn held (see
// entry.suspend).
func (s *Service) suspendLocked(ctx context.Context, e *entry) error { return e.suspend(ctx) }

// resumeLocked makes sure e has a running sandbox; turn held (see entry.resume). It
// reports whether the sandbox is fresh, i.e. earlier state is gone.
func (s *Service) resumeLocked(ctx context.Context, e *entry) (fresh bool, err error) {
	return e.resume(ctx)
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
		if v := e.view.Load(); e.live.Load() && e.waiting() == 0 && !e.busy.Load() && v != nil && time.Since(v.lastUsed) > s.cfg.IdleTimeout {
			idle = append(idle, e)
		}
	}
	s.mu.Unlock()
	for _, e := range idle {
		if !e.tryLock() {
			continue // a run arrived meanwhile
		}
		if !e.deleted && e.sb != nil && time.Since(e.lastUsed) > s.cfg.IdleTimeout {
			s.log.Info("suspending idle sandbox", "id", e.id, "agent", e.agentID, "idle", time.Since(e.lastUsed).Round(time.Second))
			ctx, cancel := context.WithTimeout(s.work, s.cfg.SuspendTimeout)
			if err := e.suspend(ctx); err != nil {
				s.log.Warn("suspend", "id", e.id, "err", err)
			}
			cancel()
		}
		e.unlock()
	}
}
