package sandbox

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history/sqlite"
	"github.com/vmexec/vmexec/internal/snapstore"
)

// exportingFake is the fake backend with backend.ImageExporter: an export is the
// image file's bytes.
type exportingFake struct {
	*fakeBackend
	// snapshotting, if set, is told each Snapshot call as it begins.
	snapshotting *atomic.Int64
}

var _ backend.ImageExporter = exportingFake{}

func (f exportingFake) Snapshot(ctx context.Context, s backend.Sandbox) (backend.Image, error) {
	if f.snapshotting != nil {
		f.snapshotting.Add(1)
	}
	return f.fakeBackend.Snapshot(ctx, s)
}

func (f exportingFake) ExportImage(ctx context.Context, ref string, w io.Writer) error {
	if !backend.ValidRef(ref) {
		return backend.ErrNotFound
	}
	fh, err := os.Open(filepath.Join(f.dir, ref))
	if err != nil {
		return fmt.Errorf("image %s: %w", ref, backend.ErrNotFound)
	}
	defer fh.Close()
	_, err = io.Copy(w, fh)
	return err
}

func (f exportingFake) ImportImage(ctx context.Context, r io.Reader) (backend.Image, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return backend.Image{}, err
	}
	ref := randID("fake-img-", 8)
	if err := os.WriteFile(filepath.Join(f.dir, ref), b, 0o600); err != nil {
		return backend.Image{}, err
	}
	return backend.Image{Ref: ref, SizeBytes: int64(len(b))}, nil
}

func (f exportingFake) ImageCompat(context.Context) (backend.ImageCompat, error) {
	return backend.ImageCompat{Backend: "fake", Version: "1", Platform: "mem"}, nil
}

// gatedBlobs holds every archive Put until gate is closed.
type gatedBlobs struct {
	snapstore.Blobs
	gate chan struct{}
}

func (g gatedBlobs) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if strings.HasSuffix(key, ".tar.zst") && g.gate != nil {
		select {
		case <-g.gate:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	return g.Blobs.Put(ctx, key, r)
}

// events records the store's steps.
type events struct {
	mu  sync.Mutex
	evs []storeEvent
}

func (e *events) add(ev storeEvent) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }
func (e *events) of(kind string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.evs {
		if ev.Kind == kind {
			out = append(out, ev.Snapshot)
		}
	}
	return out
}

type storeHarness struct {
	*harness
	store        *snapstore.Store
	ev           *events
	snapshotting *atomic.Int64 // Snapshot calls begun
}

// startStoreHarness starts a service on dir with a fresh exporting fake (its own
// image dir: a new node, when imagesDir is new) and the store st.
func startStoreHarness(t *testing.T, dir, imagesDir string, st *snapstore.Store) *storeHarness {
	t.Helper()
	ctx := context.Background()
	hist, err := sqlite.Open(ctx, filepath.Join(dir, "history.db"))
	if err != nil {
		t.Fatal(err)
	}
	be := newFake()
	be.dir = imagesDir
	os.MkdirAll(imagesDir, 0o700)
	cfg := DefaultConfig()
	cfg.PoolSize = 0
	var snaps atomic.Int64
	svc, err := New(cfg, Deps{Backends: []backend.Backend{exportingFake{be, &snaps}}, Template: fakeTemplate, History: hist, Store: st,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	svc.store.hook = ev.add
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h := &harness{svc: svc, be: be, hist: hist, dir: dir, cfg: cfg}
	t.Cleanup(h.close)
	return &storeHarness{harness: h, store: st, ev: ev, snapshotting: &snaps}
}

func (h *storeHarness) idle() bool {
	h.svc.store.mu.Lock()
	defer h.svc.store.mu.Unlock()
	return len(h.svc.store.active) == 0
}

// Guards the run's latency against the store: runs complete while an upload is
// stuck, and the automatic snapshots that waited meanwhile are coalesced into the
// newest one, while a manual snapshot is uploaded all the same.
// Ordering is checked through the store's events, not by timing.
func TestUploadDoesNotBlockRun(t *testing.T) {
	gate := make(chan struct{})
	var told []string
	var toldMu sync.Mutex
	st := &snapstore.Store{Blobs: gatedBlobs{snapstore.Dir(t.TempDir()), gate}, Uploaded: func(m snapstore.Manifest) {
		toldMu.Lock()
		told = append(told, m.Key)
		toldMu.Unlock()
	}}
	h := startStoreHarness(t, t.TempDir(), filepath.Join(t.TempDir(), "images"), st)
	ctx := context.Background()
	r := h.run(t, "up", "set x 1", nil)
	waitUntil(t, "the first upload is under way", func() bool { return len(h.ev.of("upload_started")) == 1 })
	first := h.ev.of("upload_started")[0]
	// These runs complete while the upload cannot.
	h.run(t, "up", "set x 2", nil)
	manual, err := h.svc.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: "up", Name: "keep me"})
	if err != nil {
		t.Fatal(err)
	}
	h.run(t, "up", "set x 3", nil)
	last, err := h.svc.Exec(ctx, api.ExecRequest{AgentID: "up", Language: "bash", Code: "set x 4", Durable: true})
	if err != nil || !last.Durable {
		t.Fatalf("durable run: %+v %v", last, err)
	}
	if got := h.ev.of("uploaded"); len(got) != 0 {
		t.Fatalf("uploads finished before the store let them: %v", got)
	}
	h.svc.bg.Wait()
	close(gate)
	waitUntil(t, "the uploads are done", h.idle)
	e := h.entryOf(t, r.SandboxID)
	if err := e.lock(ctx); err != nil {
		t.Fatal(err)
	}
	cur := struct{ CurrentSnapshotID string }{e.current}
	e.unlock()
	got := h.ev.of("uploaded")
	if len(got) != 3 || got[0] != first || got[1] != manual.ID || got[2] != cur.CurrentSnapshotID {
		t.Fatalf("uploaded %v; want the first (%s), the manual one (%s), then only the newest (%s): the automatic ones between coalesced",
			got, first, manual.ID, cur.CurrentSnapshotID)
	}
	if ok, err := st.Exists(ctx, snapstore.Key(r.SandboxID, cur.CurrentSnapshotID)); !ok || err != nil {
		t.Fatalf("current snapshot not in the store: %v %v", ok, err)
	}
	toldMu.Lock()
	defer toldMu.Unlock()
	if len(told) != 2 || told[1] != snapstore.Key(r.SandboxID, cur.CurrentSnapshotID) {
		t.Fatalf("Uploaded told %v; want the two uploads of the newest state (not the manual one), the current snapshot's last", told)
	}
}

// Guards part 1's promise on the service: a sandbox whose local images are gone (a
// new node with the same history) comes back from the store with its state, and the
// result says so; a rollback to a snapshot only the store has works and says so too.
func TestRestoreFromStore(t *testing.T) {
	ctx := context.Background()
	dir, store := t.TempDir(), snapstore.Dir(t.TempDir())
	st := &snapstore.Store{Blobs: store}
	h := startStoreHarness(t, dir, filepath.Join(dir, "images-a"), st)
	r := h.run(t, "rs", "set x 1", nil)
	sn, err := h.svc.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: "rs"})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := h.svc.Exec(ctx, api.ExecRequest{AgentID: "rs", Language: "bash", Code: "set x 2", Durable: true}); err != nil || !res.Durable {
		t.Fatalf("durable run: %+v %v", res, err)
	}
	waitUntil(t, "the uploads are done", h.idle)
	h.close()

	// Another node: same history, no local images.
	h2 := startStoreHarness(t, dir, filepath.Join(dir, "images-b"), st)
	got := h2.run(t, "rs", "print x", nil)
	if got.Stdout != "2\n" || got.SandboxRecreated || !strings.Contains(strings.Join(got.Warnings, "\n"), "restored from the snapshot store") {
		t.Fatalf("after losing the local images: %+v; want x=2, restored from the store, and a warning saying so", got)
	}
	if len(h2.ev.of("fetched")) != 1 {
		t.Fatalf("fetches: %v", h2.ev.evs)
	}
	rb, err := h2.svc.Rollback(ctx, r.SandboxID, api.RollbackRequest{AgentID: "rs", SnapshotID: sn.ID})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rb.Message, "snapshot store") {
		t.Errorf("rollback message %q does not say the image came from the store", rb.Message)
	}
	if got := h2.run(t, "rs", "print x", nil); got.Stdout != "1\n" {
		t.Fatalf("after rollback to a stored snapshot: %+v; want x=1", got)
	}
	// Deleting the snapshot deletes its stored copy.
	if err := h2.svc.DeleteSnapshot(ctx, sn.ID, "rs"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the stored copy is deleted", func() bool {
		ok, _ := st.Exists(ctx, snapstore.Key(r.SandboxID, sn.ID))
		return !ok
	})
}

// Guards single-host mode: without a store nothing is uploaded and a missing image
// still means what it meant (the record is dropped at start, a fresh sandbox).
func TestNoStoreUnchanged(t *testing.T) {
	h := newHarness(t, nil)
	if h.svc.store.st != nil {
		t.Fatal("a store without configuration")
	}
	r := h.run(t, "ns", "set x 1", nil)
	h.svc.bg.Wait()
	if got := h.run(t, "ns", "print x", nil); got.Stdout != "1\n" || got.SandboxID != r.SandboxID {
		t.Fatalf("%+v", got)
	}
}

// Guards the shutdown's uploads: a run's background snapshot that is being taken when
// Close begins, and completes after (so Close's suspension reuses it), is still uploaded before Close
// returns, so the next node resumes from the latest state. Failed before the fix:
// snapshots taken during Close were not uploaded.
func TestCloseUploadsLatest(t *testing.T) {
	st := &snapstore.Store{Blobs: snapstore.Dir(t.TempDir())}
	h := startStoreHarness(t, t.TempDir(), filepath.Join(t.TempDir(), "images"), st)
	r := h.run(t, "cl", "set x 1", nil)
	h.svc.bg.Wait() // the background snapshot after the first run
	waitUntil(t, "the first uploads are done", h.idle)
	gate := make(chan struct{})
	h.be.mu.Lock()
	h.be.snapGate = gate // the next run's background snapshot waits
	h.be.mu.Unlock()
	before := h.snapshotting.Load()
	h.run(t, "cl", "set x 2", nil)
	waitUntil(t, "the background snapshot is being taken", func() bool { return h.snapshotting.Load() > before })
	closed := make(chan struct{})
	go func() { h.svc.Close(context.Background()); close(closed) }()
	waitUntil(t, "Close has begun", h.svc.isClosed)
	close(gate)
	<-closed
	e := h.svc.sandboxes[r.SandboxID]
	if e == nil || e.current == "" {
		t.Fatal("no current snapshot after Close")
	}
	if ok, err := st.Exists(context.Background(), snapstore.Key(r.SandboxID, e.current)); !ok || err != nil {
		t.Fatalf("the snapshot the sandbox resumes from (%s) is not in the store after Close: %v %v; uploaded: %v", e.current, ok, err, h.ev.of("uploaded"))
	}
}
