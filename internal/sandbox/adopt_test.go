package sandbox

import (
	"context"
	"errors"
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

// heldFence is a Fencer that lets this node run every agent, at the epoch set for
// it (1 by default), as internal/cluster.Fence does once it holds an agent.
type heldFence struct {
	node string
	mu   sync.Mutex
	at   map[string]int64
}

func (f *heldFence) Hold(context.Context, string, string) error { return nil }
func (f *heldFence) Node() string                               { return f.node }
func (f *heldFence) Epoch(agent string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e, ok := f.at[agent]; ok {
		return e
	}
	return 1
}

// startNode is one daemon of a cluster in-process: its own images, the shared
// history (one SQLite file, as PostgreSQL would be) and the shared store.
func startNode(t *testing.T, dir, name string, st *snapstore.Store) (*storeHarness, *heldFence) {
	t.Helper()
	ctx := context.Background()
	hist, err := sqlite.Open(ctx, filepath.Join(dir, "history.db"))
	if err != nil {
		t.Fatal(err)
	}
	be := newFake()
	be.dir = filepath.Join(dir, "images-"+name)
	os.MkdirAll(be.dir, 0o700)
	cfg := DefaultConfig()
	cfg.PoolSize = 0
	f := &heldFence{node: name, at: map[string]int64{}}
	svc, err := New(cfg, Deps{Backends: []backend.Backend{exportingFake{be, new(atomic.Int64)}}, Template: fakeTemplate, History: hist, Store: st,
		Fencer: f, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
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
	return &storeHarness{harness: h, store: st, ev: ev}, f
}

// Guards adoption, the daemon's half of a takeover: a node that started before the
// agent ever ran, asked to adopt it, restores its sandbox from the durable snapshot
// (the old node's images are not there: from the store), its next run has the
// state and says it was taken over; a second adopt at the same epoch (racing
// routers) changes nothing; an adopt at an epoch this node does not hold is
// refused; a run reaching a node that was never asked to adopt still resumes the
// agent's state; and a single host refuses adopt.
func TestAdopt(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := &snapstore.Store{Blobs: snapstore.Dir(t.TempDir())}
	n1, _ := startNode(t, dir, "n1", st)
	n2, f2 := startNode(t, dir, "n2", st)
	n3, _ := startNode(t, dir, "n3", st)

	r := n1.run(t, "ad", "set x 1", nil)
	if res, err := n1.svc.Exec(ctx, api.ExecRequest{AgentID: "ad", Language: "bash", Code: "set y 2", Durable: true}); err != nil || !res.Durable {
		t.Fatalf("durable run: %+v %v", res, err)
	}
	waitUntil(t, "the uploads are done", n1.idle)
	n1.close() // node 1 is gone, and its images with it
	os.RemoveAll(filepath.Join(dir, "images-n1"))

	f2.mu.Lock()
	f2.at["ad"] = 2
	f2.mu.Unlock()
	got, err := n2.svc.Adopt(ctx, "ad", 2)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Restored || got.SandboxID != r.SandboxID {
		t.Fatalf("adopt = %+v, want sandbox %s restored", got, r.SandboxID)
	}
	if again, err := n2.svc.Adopt(ctx, "ad", 2); err != nil || again.SandboxID != r.SandboxID {
		t.Fatalf("second adopt: %+v %v", again, err)
	}
	res := n2.run(t, "ad", "print x", nil)
	if res.Stdout != "1\n" || res.SandboxID != r.SandboxID || res.SandboxRecreated {
		t.Fatalf("after adoption: %+v; want x=1 in sandbox %s", res, r.SandboxID)
	}
	if !strings.Contains(strings.Join(res.Warnings, "\n"), "taken over by node n2 (epoch 2)") {
		t.Errorf("the run does not say it was taken over: %q", res.Warnings)
	}
	if _, err := n2.svc.Adopt(ctx, "ad", 3); !errors.Is(err, ErrConflict) {
		t.Errorf("adopt at an epoch not held: %v, want ErrConflict", err)
	}
	if res := n3.run(t, "ad", "print y", nil); res.Stdout != "2\n" || res.SandboxID != r.SandboxID {
		t.Errorf("a run on a node never asked to adopt: %+v; want the agent's state (y=2)", res)
	}

	single := newHarness(t, nil)
	if _, err := single.svc.Adopt(ctx, "ad", 2); !errors.Is(err, ErrUnsupported) {
		t.Errorf("adopt on a single host: %v, want ErrUnsupported", err)
	}
}
