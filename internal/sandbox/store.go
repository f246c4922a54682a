package sandbox

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/snapstore"
)

// The snapshot store (Deps.Store; cluster mode) keeps sandboxes' snapshots where they
// outlive this host. The backend's own images stay the hot cache: runs, rollbacks and
// resumes use them, and the store is read only when a snapshot's local image is gone
// (a new node, a lost disk). Without a store the service behaves as on a single host.
//
// Uploads: when a snapshot becomes a sandbox's current one (by the store's policy:
// every one, after_run; suspensions only, on_suspend), it is queued for upload. One
// upload per sandbox runs at a time, off the sandbox's turn (a run never waits for
// it); while it runs, newer snapshots replace each other in the queue, so only the
// newest waiting is uploaded next (coalescing: only the latest state matters), after
// any manual snapshot waiting (those are uploaded each: someone asked for them). The
// stored copy's key is derived from the snapshot (snapstore.Key), so the history's
// record names it; its manifest's presence says the upload is whole. Deleting a
// snapshot record deletes its stored copy.
//
// Restores: forkSnapshot starts from the local image; when the backend reports it
// gone (ErrNotFound) and the store has the snapshot, the image is fetched into the
// backend's scope (checked against this host first: backend, runtime version,
// platform, CPU features, template), the record re-pointed at the new image, and the
// sandbox started from it; a log line and the next result (and a rollback's message)
// say so.
type storeState struct {
	st *snapstore.Store // nil: single-host mode

	wg      sync.WaitGroup // uploads in flight; Close waits for them
	mu      sync.Mutex
	pending map[string]*uploadQueue // sandbox id → its snapshots waiting for upload
	active  map[string]bool         // sandbox id → its upload loop runs
	fetched map[string]string       // sandbox id → key of the stored snapshot its last restore fetched
	// hook, if set (tests), is told each step, in order.
	hook func(storeEvent)
}

// storeEvent is a step of an upload or a fetch, for tests' ordering checks.
type storeEvent struct {
	Kind              string // upload_started, uploaded, upload_failed, fetched
	Sandbox, Snapshot string
	Key               string
	Err               error
}

// uploadQueue is one sandbox's snapshots waiting for upload: the manual ones (which
// an agent or operator asked for by name, to come back to) each in turn, then only
// the newest of the others.
type uploadQueue struct {
	manual []uploadJob
	latest *uploadJob
}

func (q *uploadQueue) next() (uploadJob, bool) {
	if len(q.manual) > 0 {
		j := q.manual[0]
		q.manual = q.manual[1:]
		return j, true
	}
	if q.latest != nil {
		j := *q.latest
		q.latest = nil
		return j, true
	}
	return uploadJob{}, false
}

type uploadJob struct {
	snap              history.Snapshot
	parent            string
	backend, template string
	memoryMB          int64
}

func (s *Service) initStore(st *snapstore.Store) {
	s.store = &storeState{st: st, pending: map[string]*uploadQueue{}, active: map[string]bool{}, fetched: map[string]string{}}
}

func (st *storeState) event(ev storeEvent) {
	if st.hook != nil {
		st.hook(ev)
	}
}

// stored queues snapshot rec of e for upload when the store's policy wants it; it is
// called once rec has become e's current snapshot (parent is the one before); turn
// held.
func (s *Service) stored(e *entry, rec history.Snapshot, parent string) {
	if s.store.st == nil {
		return
	}
	switch s.store.st.Policy() {
	case snapstore.UploadNever:
		return
	case snapstore.UploadOnSuspend:
		if rec.Kind != history.SnapshotSuspend {
			return
		}
	}
	if _, ok := s.backendOf(e).(backend.ImageExporter); !ok {
		return
	}
	j := uploadJob{snap: rec, parent: parent, backend: e.backend, template: s.tpl.Name + "-" + s.tpl.Hash, memoryMB: e.memoryMB}
	if rec.Kind == history.SnapshotForkBase {
		j.parent = firstNonEmpty(parent, rec.StateRunID)
	}
	st := s.store
	st.mu.Lock()
	defer st.mu.Unlock()
	q := st.pending[rec.SandboxID]
	if q == nil {
		q = &uploadQueue{}
		st.pending[rec.SandboxID] = q
	}
	if rec.Kind == history.SnapshotManual {
		q.manual = append(q.manual, j)
	} else {
		q.latest = &j // replaces an older one still waiting
	}
	if st.active[rec.SandboxID] {
		return
	}
	// Also while Close runs: the snapshots it waits for (a run's background one, the
	// suspensions) are what the next node resumes from; Close waits for their uploads
	// (waitUploads, after every snapshot it waits for), within its budget.
	st.active[rec.SandboxID] = true
	st.wg.Add(1)
	go s.uploadLoop(rec.SandboxID)
}

// uploadLoop uploads sandbox id's newest waiting snapshot until none waits.
func (s *Service) uploadLoop(id string) {
	defer s.store.wg.Done()
	for {
		st := s.store
		st.mu.Lock()
		var j uploadJob
		ok := false
		if q := st.pending[id]; q != nil {
			j, ok = q.next()
		}
		if !ok {
			delete(st.pending, id)
			delete(st.active, id)
			st.mu.Unlock()
			return
		}
		st.mu.Unlock()
		s.upload(j)
	}
}

// upload stores one snapshot. The image is read outside the sandbox's turn; if
// retention deletes it meanwhile the upload fails (and a newer snapshot follows).
func (s *Service) upload(j uploadJob) {
	ctx, cancel := context.WithTimeout(s.work, 30*time.Minute)
	defer cancel()
	key := snapstore.Key(j.snap.SandboxID, j.snap.ID)
	ev := storeEvent{Sandbox: j.snap.SandboxID, Snapshot: j.snap.ID, Key: key}
	ev.Kind = "upload_started"
	s.store.event(ev)
	exp := s.backends[j.backend].(backend.ImageExporter)
	start := time.Now()
	m, err := s.store.st.Upload(ctx, exp, j.snap.Path, snapstore.Manifest{
		Key: key, SnapshotID: j.snap.ID, SandboxID: j.snap.SandboxID, AgentID: j.snap.AgentID, Kind: j.snap.Kind,
		Parent: j.parent, StateRunID: j.snap.StateRunID, Template: j.template, TemplateHash: s.tpl.Hash,
		MemoryMB: j.memoryMB, TakenAt: j.snap.CreatedAt,
	})
	if err != nil {
		s.log.Warn("snapshot upload failed; the next snapshot is uploaded in its place", "sandbox", j.snap.SandboxID, "snapshot", j.snap.ID, "store", s.store.st.String(), "err", err)
		ev.Kind, ev.Err = "upload_failed", err
		s.store.event(ev)
		return
	}
	// The record may have been deleted while its copy was uploading: delete the copy.
	if _, err := s.hist.GetSnapshot(ctx, j.snap.ID); errors.Is(err, history.ErrNotFound) {
		s.store.st.Delete(ctx, key)
	}
	s.log.Info("snapshot uploaded", "sandbox", j.snap.SandboxID, "snapshot", j.snap.ID, "key", key,
		"image_bytes", m.ImageBytes, "archive_bytes", m.ArchiveBytes, "seconds", time.Since(start).Seconds())
	if f := s.store.st.Uploaded; f != nil && j.snap.Kind != history.SnapshotManual {
		f(m)
	}
	ev.Kind = "uploaded"
	s.store.event(ev)
}

// waitUploads waits for the uploads in flight (Close, after the suspensions).
func (s *Service) waitUploads() { s.store.wg.Wait() }

// unstore deletes snapshot sn's stored copy, if there is a store, in the background.
func (s *Service) unstore(sn history.Snapshot) {
	if s.store.st == nil {
		return
	}
	key := snapstore.Key(sn.SandboxID, sn.ID)
	s.store.wg.Add(1)
	go func() {
		defer s.store.wg.Done()
		ctx, cancel := context.WithTimeout(s.work, time.Minute)
		defer cancel()
		if err := s.store.st.Delete(ctx, key); err != nil {
			s.log.Warn("deleting a stored snapshot", "key", key, "err", err)
		}
	}()
}

// inStore reports whether snapshot sn has a whole stored copy (false without a
// store). An unreachable store counts as having it, so a record is not dropped for
// a network failure.
func (s *Service) inStore(ctx context.Context, sn history.Snapshot) bool {
	if s.store.st == nil {
		return false
	}
	ok, err := s.store.st.Exists(ctx, snapstore.Key(sn.SandboxID, sn.ID))
	if err != nil {
		s.log.Warn("snapshot store unreachable; keeping the record of a snapshot whose local image is gone", "snapshot", sn.ID, "err", err)
		return true
	}
	return ok
}

// forkSnapshot starts a sandbox for e (described by spec) from snapshot sn: from its
// local image, else from the store's copy (see storeState); turn held. On a fetch it
// updates *sn (and its record) to the new local image.
func (s *Service) forkSnapshot(ctx context.Context, e *entry, sn *history.Snapshot, spec backend.Spec) (backend.Sandbox, error) {
	s.takeFetched(e) // what an earlier restore fetched is not this one's news
	snapper := s.snapperOf(e)
	sb, err := snapper.Fork(ctx, sn.Path, spec) // Path is the image's reference
	if err == nil || !errors.Is(err, backend.ErrNotFound) || s.store.st == nil {
		return sb, err
	}
	imp, ok := s.backendOf(e).(backend.ImageExporter)
	if !ok {
		return nil, err
	}
	key := snapstore.Key(sn.SandboxID, sn.ID)
	compat, cerr := imp.ImageCompat(ctx)
	if cerr != nil {
		return nil, fmt.Errorf("snapshot %s: local image gone; %w", sn.ID, cerr)
	}
	start := time.Now()
	img, _, ferr := s.store.st.Fetch(ctx, imp, key, snapstore.Host{Compat: compat, TemplateHash: s.tpl.Hash})
	switch {
	case errors.Is(ferr, snapstore.ErrNotFound):
		return nil, err // not stored either: the local error stands
	case errors.Is(ferr, snapstore.ErrIncompatible):
		s.log.Warn("the stored copy of a snapshot cannot be restored on this host", "snapshot", sn.ID, "key", key, "err", ferr)
		e.note("snapshot " + sn.ID + "'s local image is gone and its stored copy cannot be restored on this host: " + ferr.Error())
		return nil, fmt.Errorf("snapshot %s: %w: %w", sn.ID, ErrConflict, ferr)
	case ferr != nil:
		return nil, fmt.Errorf("snapshot %s: local image gone, and fetching its stored copy failed: %w", sn.ID, ferr)
	}
	old := sn.Path
	sn.Path, sn.SizeBytes = img.Ref, img.SizeBytes
	if err := s.hist.PutSnapshot(ctx, *sn); err != nil {
		s.log.Warn("recording a fetched snapshot image; the next start removes it", "snapshot", sn.ID, "err", err)
	}
	s.log.Info("snapshot restored from the snapshot store: its local image was gone", "sandbox", e.id, "snapshot", sn.ID,
		"key", key, "store", s.store.st.String(), "old_image", old, "image", img.Ref, "seconds", time.Since(start).Seconds())
	s.store.event(storeEvent{Kind: "fetched", Sandbox: e.id, Snapshot: sn.ID, Key: key})
	if sb, err = snapper.Fork(ctx, img.Ref, spec); err != nil {
		return nil, err
	}
	e.note("snapshot " + sn.ID + "'s local image was gone; it was restored from the snapshot store (" + key + ")")
	s.store.mu.Lock()
	s.store.fetched[e.id] = key
	s.store.mu.Unlock()
	return sb, nil
}

// takeFetched returns (and forgets) the key of the stored snapshot e's last restore
// fetched, if it did.
func (s *Service) takeFetched(e *entry) string {
	s.store.mu.Lock()
	defer s.store.mu.Unlock()
	k := s.store.fetched[e.id]
	delete(s.store.fetched, e.id)
	return k
}
