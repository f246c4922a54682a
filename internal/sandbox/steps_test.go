package sandbox

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/vmexec/vmexec/internal/history"
)

// snapReadStore counts reads of snapshot records.
type snapReadStore struct {
	history.Store
	reads atomic.Int32
}

func (c *snapReadStore) GetSnapshot(ctx context.Context, id string) (history.Snapshot, error) {
	c.reads.Add(1)
	return c.Store.GetSnapshot(ctx, id)
}

// Guards entry.cleanRecord: a run whose state equals a snapshot (here, the one taken
// after the previous run) reuses it as its pre-run snapshot without reading its
// record again; once that snapshot is deleted, the next run takes a new one instead
// of naming the deleted one.
func TestPreSnapshotReusesCleanRecord(t *testing.T) {
	var cs *snapReadStore
	h := startHarnessWith(t, t.TempDir(), newFake(), nil, func(s history.Store) history.Store {
		cs = &snapReadStore{Store: s}
		return cs
	})
	ctx := context.Background()
	h.run(t, "cr", "set x 1", nil)
	h.svc.bg.Wait() // the snapshot after the run: the state's clean snapshot
	cs.reads.Store(0)
	r := h.run(t, "cr", "set x 2", nil)
	if r.PreSnapshotID == "" {
		t.Fatalf("no pre-run snapshot: %+v", r)
	}
	if n := cs.reads.Load(); n != 0 {
		t.Fatalf("the pre-run snapshot's record was read %d times, want 0 (it is the one just taken)", n)
	}
	h.svc.bg.Wait()
	list, err := h.svc.ListSnapshots(ctx, r.SandboxID, "cr")
	if err != nil || len(list.Snapshots) == 0 {
		t.Fatalf("snapshots: %+v %v", list, err)
	}
	clean := list.Snapshots[len(list.Snapshots)-1].ID // the newest: taken after run 2
	if err := h.svc.DeleteSnapshot(ctx, clean, "cr"); err != nil {
		t.Fatal(err)
	}
	r3 := h.run(t, "cr", "print x", nil)
	if r3.PreSnapshotID == "" || r3.PreSnapshotID == clean {
		t.Fatalf("pre-run snapshot %q after deleting %q: want a new one", r3.PreSnapshotID, clean)
	}
	if _, err := h.hist.GetSnapshot(ctx, r3.PreSnapshotID); err != nil {
		t.Fatalf("the pre-run snapshot has no record: %v", err)
	}
	if r3.Stdout != "2\n" {
		t.Fatalf("state after the deletion: %+v", r3)
	}
}
