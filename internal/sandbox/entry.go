package sandbox

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history"
)

// entry is one sandbox the service manages, and the one owner of its state. Other
// files ask it (lock, resume, suspend, snapshot, restore, remove); they do not
// mutate its fields.
//
// # Turn
//
// Everything done to the backend sandbox (a run, a snapshot, a rollback, a suspension)
// holds the entry's turn (see turn): waiting for it honours the caller's context, and
// waiters are served in arrival order, so a request never overtakes one that came
// before it.
//
// # State
//
//	starting ──► running ──suspend──► suspended ──resume──► running
//	                │  ▲                                        │
//	   run ends it  ▼  │ resume (fresh)                         │
//	              dead ┘                 remove (any state) ──► deleted
//
// current is the snapshot the sandbox resumes from, kept durable in the history
// with headRun (the newest acknowledged run whose effects the live state holds):
// every snapshot of the live state, rollback and fork updates it, so a crash
// cannot undo what the API acknowledged, and when a crash loses acknowledged runs
// (a commit not yet snapshotted) the next result says so (state_restored_from).
//
// deleted is set by every removal (Delete, a failed start, Close): a request that
// was queued on the entry finds it and fails with gone, never touching a sandbox no
// map holds.
type entry struct {
	s                          *Service
	id, name, agentID, backend string
	memoryMB                   int64
	created                    time.Time

	turn turn // held by whoever acts on the sandbox; FIFO, context-aware

	// view is what describe reports, published by unlock so that reading it never
	// waits for a run; busy is set while a run is in flight; live while a backend
	// sandbox exists (it counts against the cap and the memory budget).
	view atomic.Pointer[entryView]
	busy atomic.Bool
	live atomic.Bool

	// Guarded by the turn.
	sb        backend.Sandbox  // nil when dead, suspended, or not yet started
	gen       int              // incarnation: the backend id is id-gen
	suspended bool             // sb is nil because it was suspended: resume from current
	cleanSnap string           // a snapshot equal to the live state, if known
	cleanRec  history.Snapshot // cleanSnap's record, when it is known (see cleanRecord)
	settle    settleState      // whether runs and images are quiet (settle.go)
	current   string           // the snapshot to resume from (durable)
	headRun   string           // the newest acknowledged run in the live state (durable)
	pol       txPolicy         // the policy of its latest request, for retention
	lastUsed  time.Time
	runs      int
	deleted   bool
	gone      error // why the entry was removed, for requests that queued on it
	// notes are told to the next run's result: a sandbox found dead while idle, a
	// sandbox deleted under its agent, runs a crash lost.
	notes        []string
	recreated    bool   // the next result says sandbox_recreated
	restoredFrom string // the next result's state_restored_from
}

type entryView struct {
	status   string // starting, running, dead, suspended
	runs     int
	lastUsed time.Time
	accel    string // the accelerator, for backends that have one
}

// makeEntry returns an entry whose turn the caller holds.
func (s *Service) makeEntry(id, name, agentID, be string, memoryMB int64, created time.Time) *entry {
	e := &entry{s: s, id: id, name: name, agentID: agentID, backend: be, memoryMB: memoryMB, created: created,
		pol: s.policyFor(settings{}, nil), lastUsed: time.Now()}
	e.turn.tryLock()
	return e
}

// lock waits for e's turn, in arrival order, until ctx ends.
func (e *entry) lock(ctx context.Context) error {
	if err := e.turn.lock(ctx, 0); err != nil {
		return fmt.Errorf("waiting for sandbox %s: %w", e.id, err)
	}
	return nil
}

// tryLock takes e's turn if it is free.
func (e *entry) tryLock() bool { return e.turn.tryLock() }

// waiting is how many requests are queued for e's turn.
func (e *entry) waiting() int { return e.turn.waiters() }

// unlock publishes e's state for describe and gives up the turn; turn held.
func (e *entry) unlock() {
	v := &entryView{status: "running", runs: e.runs, lastUsed: e.lastUsed}
	if a, ok := e.sb.(backend.Accelerated); ok && e.sb != nil {
		v.accel = a.Accel()
	}
	switch {
	case e.suspended:
		v.status = "suspended"
	case e.sb == nil || e.sb.Info(context.Background()).Status != "running":
		v.status = "dead"
	}
	e.view.Store(v)
	e.turn.unlock()
}

// setSandbox replaces the backend sandbox handle; turn held.
func (e *entry) setSandbox(sb backend.Sandbox) {
	e.sb = sb
	e.live.Store(sb != nil)
	e.settle.newSandbox()
}

// drop destroys the backend sandbox, if any; turn held.
func (e *entry) drop() {
	if e.sb != nil {
		e.sb.Destroy(context.Background())
		e.setSandbox(nil)
	}
}

// remove marks e deleted for the reason gone; turn held. The caller has taken it out
// of the service's maps.
func (e *entry) remove(gone error) {
	e.deleted, e.gone = true, gone
}

// usable reports why e cannot be used any more, if it cannot; turn held.
func (e *entry) usable() error {
	if e.s.isClosed() {
		return fmt.Errorf("sandbox %s: the server is shutting down: %w", e.id, ErrClosed)
	}
	if e.deleted {
		return e.gone
	}
	return nil
}

// persist writes e's durable state (current snapshot and head run); turn held.
func (e *entry) persist(ctx context.Context) {
	// Cluster mode: the record is shared; a node that does not hold the agent (cut
	// off, or never its owner) must not move the sandbox's durable state.
	if e.agentID != "" {
		if err := e.s.fence(ctx, e.agentID, ""); err != nil {
			e.s.log.Warn("not recording sandbox state", "id", e.id, "err", err)
			return
		}
	}
	e.writeState(ctx)
}

// writeState writes e's durable state without asking the Fencer, for a caller that
// has just been told this node holds the agent; turn held.
func (e *entry) writeState(ctx context.Context) {
	st := history.SandboxState{CurrentSnapshotID: e.current, HeadRunID: e.headRun}
	if err := e.s.hist.SetSandboxState(ctx, e.id, st); err != nil && !errors.Is(err, history.ErrNotFound) {
		e.s.log.Error("recording sandbox state", "id", e.id, "err", err)
	}
}

// loaded sets the durable state of an entry recovered after a restart: it resumes
// from its current snapshot on next use.
func (e *entry) loaded(st history.SandboxState) {
	e.suspended, e.gen, e.current, e.headRun = true, 1, st.CurrentSnapshotID, st.HeadRunID
}

// forkedFrom records that e starts in the state of snapshot from (a fork); turn held.
func (e *entry) forkedFrom(from history.Snapshot) { e.headRun = from.StateRunID }

// replaces records that e is its agent's new sandbox because old was deleted: the
// next result says sandbox_recreated; turn held.
func (e *entry) replaces(old string) {
	e.recreated = true
	e.note("sandbox " + old + " was deleted; this run is in a new sandbox, " + e.id)
}

// beginRun marks the live state as changing under a run of policy pol; turn held.
func (e *entry) beginRun(pol txPolicy) {
	e.pol = pol
	e.cleanSnap = ""
}

// used counts a run's round trip to the sandbox; turn held.
func (e *entry) used() {
	e.lastUsed = time.Now()
	e.runs++
}

// ran records that the live state holds run's effects, if the sandbox survived it;
// turn held.
func (e *entry) ran(run string) {
	if e.sb != nil {
		e.headRun = run
	}
}

// lost records that a run ended the sandbox and it was not restored; turn held. When
// the server's shutdown interrupted the run (and its rollback did not fit in the
// budget), the sandbox resumes from its pre-run snapshot; otherwise its state is
// gone and the next run starts fresh.
func (e *entry) lost(pre history.Snapshot, shutdown bool) {
	if pre.ID != "" && shutdown {
		e.current, e.headRun, e.suspended = pre.ID, pre.StateRunID, true
		return
	}
	e.current, e.headRun = "", ""
}

// forgetSnapshot drops a snapshot about to be deleted from e's state; turn held. The
// live state is kept; if it was the current snapshot, a crash now resumes fresh.
func (e *entry) forgetSnapshot(ctx context.Context, id string) {
	if e.cleanSnap == id {
		e.cleanSnap = ""
	}
	e.settle.forget(id)
	if e.current == id {
		e.current = ""
		e.persist(ctx)
	}
}

// cleanRecord returns the record of cleanSnap, the snapshot equal to the live state,
// when e holds it: the record read or written when cleanSnap was set, so that a run
// after a run that changed nothing need not read it again. It is valid exactly as
// long as cleanSnap names it: a snapshot is deleted only after forgetSnapshot
// dropped it from cleanSnap, or not at all while it is cleanSnap (retention and the
// budgets keep it), and its fields that a run uses (id, state run, image) never
// change; turn held.
func (e *entry) cleanRecord() (history.Snapshot, bool) {
	if !daemonFast || e.cleanSnap == "" || e.cleanRec.ID != e.cleanSnap {
		return history.Snapshot{}, false
	}
	return e.cleanRec, true
}

// note adds a message for the next run's result; turn held.
func (e *entry) note(msg string) { e.notes = append(e.notes, msg) }

// takeNotes moves what the next result must tell into out; turn held.
func (e *entry) takeNotes(out *api.ExecResult) {
	out.Warnings = append(out.Warnings, e.notes...)
	out.SandboxRecreated = out.SandboxRecreated || e.recreated
	out.StateRestoredFrom = e.restoredFrom
	e.notes, e.recreated, e.restoredFrom = nil, false, ""
}

// snapshot saves e's live state as a snapshot of the given kind, which becomes e's
// current snapshot; turn held and e.sb running. The backend writes the image whole or
// not at all and returns its reference, which is recorded after: a crash in between
// leaves at worst an image without a record, which Start deletes. It refuses with
// ErrStorage when the sandbox's or the server's snapshot budget is spent.
func (e *entry) snapshot(ctx context.Context, kind, runID string, meta api.CreateSnapshotRequest) (history.Snapshot, error) {
	s := e.s
	snapper := s.snapperOf(e)
	if snapper == nil {
		return history.Snapshot{}, fmt.Errorf("snapshots of %s sandboxes: %w", e.backend, ErrUnsupported)
	}
	if e.sb == nil {
		return history.Snapshot{}, fmt.Errorf("sandbox %s is not running: %w", e.id, ErrConflict)
	}
	if err := e.makeRoom(ctx); err != nil {
		return history.Snapshot{}, err
	}
	img, err := snapper.Snapshot(ctx, e.sb)
	if err != nil {
		return history.Snapshot{}, fmt.Errorf("snapshot sandbox %s: %w", e.id, err)
	}
	rec := history.Snapshot{
		ID: randID("snap-", 8), SandboxID: e.id, AgentID: e.agentID, Name: meta.Name, Description: meta.Description, Kind: kind,
		RunID: runID, Path: img.Ref, SizeBytes: img.SizeBytes, Pinned: meta.Pinned, CreatedAt: time.Now().UTC(),
		StateRunID: e.headRun,
	}
	if err := s.hist.PutSnapshot(ctx, rec); err != nil {
		if derr := snapper.DeleteImage(context.WithoutCancel(ctx), img.Ref); derr != nil {
			s.log.Warn("deleting an unrecorded image; the next start removes it", "image", img.Ref, "err", derr)
		}
		return history.Snapshot{}, fmt.Errorf("record snapshot: %w", err)
	}
	parent := e.current
	e.cleanSnap, e.current, e.cleanRec = rec.ID, rec.ID, rec
	e.settle.taken(rec.ID)
	e.persist(ctx)
	s.retain(e, e.pol, rec.ID)
	s.stored(e, rec, parent)
	return rec, nil
}

// makeRoom checks the snapshot budgets before a snapshot of e, first removing e's
// oldest unpinned snapshots (never its current one) while a budget is spent; turn
// held. Pinned snapshots count: when they alone fill a budget, it refuses.
func (e *entry) makeRoom(ctx context.Context) error {
	s := e.s
	for {
		mine, err := s.hist.SnapshotBytes(ctx, e.id)
		if err != nil {
			return err
		}
		all, err := s.hist.SnapshotBytes(ctx, "")
		if err != nil {
			return err
		}
		over := ""
		switch {
		case s.cfg.SandboxSnapshotBytes > 0 && mine >= s.cfg.SandboxSnapshotBytes:
			over = fmt.Sprintf("sandbox %s's snapshots use %d bytes of its %d byte budget (sandbox_snapshot_bytes)", e.id, mine, s.cfg.SandboxSnapshotBytes)
		case s.cfg.TotalSnapshotBytes > 0 && all >= s.cfg.TotalSnapshotBytes:
			over = fmt.Sprintf("the server's snapshots use %d bytes of its %d byte budget (total_snapshot_bytes)", all, s.cfg.TotalSnapshotBytes)
		}
		if over == "" {
			return nil
		}
		snaps, err := s.hist.ListSnapshots(ctx, e.id)
		if err != nil {
			return err
		}
		freed := false
		for _, sn := range snaps { // oldest first
			if sn.Pinned || sn.ID == e.current || sn.ID == e.cleanSnap {
				continue
			}
			if err := s.removeSnapshot(ctx, e, sn); err != nil {
				return err
			}
			freed = true
			break
		}
		if !freed {
			return fmt.Errorf("%s; delete or unpin snapshots: %w", over, ErrStorage)
		}
	}
}

// restore replaces e's sandbox by one restored from snap, which becomes e's current
// snapshot; turn held. The new incarnation starts before the old one is destroyed (in
// the background), so a rollback costs one restore.
func (e *entry) restore(ctx context.Context, snap history.Snapshot) error {
	s := e.s
	snapper := s.snapperOf(e)
	if snapper == nil {
		return fmt.Errorf("rollback of %s sandboxes: %w", e.backend, ErrUnsupported)
	}
	old := e.sb
	e.gen++
	sb, err := s.forkSnapshot(ctx, e, &snap, s.specFor(e))
	if err != nil {
		return fmt.Errorf("restore snapshot %s: %w", snap.ID, classifyBackend(err))
	}
	e.setSandbox(sb)
	e.settle.restored(snap.ID)
	e.suspended, e.cleanSnap, e.current, e.headRun = false, snap.ID, snap.ID, snap.StateRunID
	e.cleanRec = snap
	e.persist(ctx)
	if old != nil {
		if !s.goBackground(func() { old.Destroy(context.Background()) }) {
			old.Destroy(context.Background()) // shutting down: no new background work
		}
	}
	return nil
}

// suspend stops e's sandbox, first saving its state to a snapshot unless one equal
// to it exists, so the next use resumes it; turn held.
func (e *entry) suspend(ctx context.Context) error {
	if e.sb == nil {
		return nil
	}
	if e.s.snapperOf(e) != nil && e.sb.Info(ctx).Status == "running" && e.cleanSnap == "" {
		if _, err := e.snapshot(ctx, history.SnapshotSuspend, "", apiNoMeta); err != nil {
			e.s.log.Warn("suspend snapshot failed; the sandbox resumes from its last snapshot", "id", e.id, "current", e.current, "err", err)
		}
	}
	err := e.sb.Destroy(ctx)
	e.setSandbox(nil)
	e.suspended = true
	return err
}

// resume makes sure e has a running sandbox; turn held. A sandbox found dead while
// idle (killed from outside) is not blamed on the next run: it is restored like a
// suspended one, and the result says so. A suspended sandbox is restored from its
// current snapshot; a dead one, or one whose snapshot cannot be restored, is replaced
// by a fresh one. It reports whether the sandbox is fresh, i.e. earlier state is gone.
func (e *entry) resume(ctx context.Context) (fresh bool, err error) {
	s := e.s
	if e.sb != nil {
		alive := e.sb.Info(ctx).Status == "running"
		if alive && time.Since(e.lastUsed) >= time.Second { // idle a while: ask the guest
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			perr := e.sb.Ping(pctx)
			cancel()
			if ctx.Err() != nil {
				return false, fmt.Errorf("sandbox %s: %w", e.id, ctx.Err())
			}
			alive = perr == nil
		}
		if alive {
			return false, nil
		}
		s.log.Warn("sandbox died while idle; restoring it", "id", e.id, "agent", e.agentID)
		e.drop()
		e.suspended = true
		defer func() {
			switch {
			case err != nil:
			case fresh:
				e.note("the sandbox had died while idle (ended from outside, not by a run) and could not be restored; this run is in a fresh sandbox")
			default:
				e.note("the sandbox had died while idle (ended from outside, not by a run); it was restored from its last snapshot")
			}
		}()
	}
	release, err := s.admit(ctx, e.memoryMB, e)
	if err != nil {
		return false, err
	}
	defer release()
	if e.suspended && s.snapperOf(e) != nil && e.current != "" {
		sn, err := s.hist.GetSnapshot(ctx, e.current)
		if err == nil {
			lost := e.headRun
			if err = e.restore(ctx, sn); err == nil {
				if lost != "" && sn.StateRunID != lost {
					e.restoredFrom = firstNonEmpty(sn.StateRunID, "none")
					e.note(fmt.Sprintf("the server stopped before run %s was saved: the state is the one after run %s (state_restored_from); later runs' effects are gone",
						lost, e.restoredFrom))
				}
				s.log.Info("resumed sandbox", "id", e.id, "snapshot", sn.ID)
				return false, nil
			}
		}
		s.log.Warn("resume from snapshot failed; starting a fresh sandbox", "id", e.id, "snapshot", e.current, "err", err)
	}
	e.gen++
	sb, err := s.backendOf(e).Create(ctx, s.specFor(e))
	if err != nil {
		return false, fmt.Errorf("start sandbox %s: %w", e.id, classifyBackend(err))
	}
	e.setSandbox(sb)
	wasSuspended := e.suspended
	e.suspended, e.cleanSnap, e.current, e.headRun = false, "", "", ""
	e.persist(ctx)
	s.log.Info("started a fresh sandbox", "id", e.id, "agent", e.agentID, "was_suspended", wasSuspended)
	return true, nil
}
