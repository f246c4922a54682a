package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/history/sqlite"
)

// refusal is a Fencer's refusal: another node owns the agent.
type refusal struct{ owner string }

func (r refusal) Error() string { return fmt.Sprintf("agent is owned by node %q now", r.owner) }
func (r refusal) Fenced() bool  { return true }

// switchFencer refuses an agent with the error set for it (nil: holds it), which a
// test changes as it goes; it counts the calls per agent.
type switchFencer struct {
	mu     sync.Mutex
	refuse map[string]error
	calls  map[string]int
}

func newSwitchFencer() *switchFencer {
	return &switchFencer{refuse: map[string]error{}, calls: map[string]int{}}
}

func (f *switchFencer) set(agent string, err error) {
	f.mu.Lock()
	f.refuse[agent] = err
	f.mu.Unlock()
}

func (f *switchFencer) Hold(ctx context.Context, agent, sandbox string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[agent]++
	return f.refuse[agent]
}

func fencedService(t *testing.T, f Fencer) (*Service, *fakeBackend, *sqlite.Store) {
	t.Helper()
	return fencedServiceOn(t, filepath.Join(t.TempDir(), "history.db"), f)
}

// fencedServiceOn starts a service (a node) with its own backend and images on the
// history database at histPath, which other nodes may share.
func fencedServiceOn(t *testing.T, histPath string, f Fencer) (*Service, *fakeBackend, *sqlite.Store) {
	t.Helper()
	dir := t.TempDir()
	hist, err := sqlite.Open(context.Background(), histPath)
	if err != nil {
		t.Fatal(err)
	}
	be := newFake()
	be.dir = filepath.Join(dir, "fake-images")
	if err := os.MkdirAll(be.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.PoolSize = 0
	svc, err := New(cfg, Deps{Backends: []backend.Backend{be}, Template: fakeTemplate, History: hist,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Fencer: f})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		svc.Close(context.Background())
		hist.Close()
	})
	return svc, be, hist
}

// TestFencedRuns guards cluster mode's fence in the service: a run for an agent
// another node owns is refused before it starts (409, naming the owner); a run
// during which the agent was taken over is not acknowledged — recorded as an error
// and its state not made the sandbox's durable head; a fence that cannot be checked
// is 503; an agent this node holds runs as on a single host.
func TestFencedRuns(t *testing.T) {
	ctx := context.Background()
	f := newSwitchFencer()
	f.set("theirs", refusal{"node-2"})
	f.set("nocheck", errors.New("connect to postgres: connection refused"))
	svc, be, hist := fencedService(t, f)
	exec := func(agent, code string) (*api.ExecResult, error) {
		return svc.Exec(ctx, api.ExecRequest{AgentID: agent, Language: "bash", Code: code})
	}

	_, err := exec("theirs", "set x 1")
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), `"node-2"`) {
		t.Fatalf("run for another node's agent: %v; want ErrConflict naming node-2", err)
	}
	if n := be.count(); n != 0 {
		t.Errorf("a refused run started %d sandboxes", n)
	}
	if n, _ := hist.CountRuns(ctx, history.RunFilter{AgentID: "theirs"}); n != 0 {
		t.Errorf("a refused run left %d history rows", n)
	}

	if _, err := exec("nocheck", "set x 1"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("fence unreachable: %v; want ErrUnavailable", err)
	}

	first, err := exec("lost", "set x 1")
	if err != nil {
		t.Fatalf("run while holding the agent: %v", err)
	}
	// The agent is taken over while the second run is in flight.
	answered := make(chan error, 1)
	go func() {
		_, err := exec("lost", "set x 2\nsleep 3000")
		answered <- err
	}()
	waitUntil(t, "the second run is in flight", func() bool {
		runs, _, _ := hist.ListRuns(ctx, history.RunFilter{AgentID: "lost", Limit: 1})
		return len(runs) == 1 && runs[0].Status == history.StatusRunning
	})
	f.set("lost", refusal{"node-3"})
	err = <-answered
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), `"node-3"`) {
		t.Fatalf("run whose agent was taken over meanwhile: %v; want ErrConflict naming node-3", err)
	}
	runs, _, err := hist.ListRuns(ctx, history.RunFilter{AgentID: "lost"})
	if err != nil || len(runs) != 2 {
		t.Fatalf("runs of the agent: %v, %v", runs, err)
	}
	if r := runs[0]; r.Status != history.StatusError || !strings.Contains(fmt.Sprint(r.Metadata["error"]), "node-3") {
		t.Errorf("the unacknowledged run is recorded as %s / %v; want an error naming node-3", r.Status, r.Metadata)
	}
	after, err := hist.ListSandboxes(ctx)
	if err != nil || len(after) != 1 {
		t.Fatalf("sandboxes: %+v, %v", after, err)
	}
	if after[0].HeadRunID != first.ExecutionID {
		t.Errorf("durable head %q after the refused run; want the last acknowledged run %s", after[0].HeadRunID, first.ExecutionID)
	}
	if cur, err := hist.GetSnapshot(ctx, after[0].CurrentSnapshotID); err == nil && cur.StateRunID == runs[0].ID {
		t.Errorf("the sandbox resumes from %s, a snapshot of the refused run's state", cur.ID)
	}
}

// TestClusterStartKeepsOtherNodesSnapshots guards a shared history: a node that
// starts does not drop the snapshot records of images it lacks, since in cluster
// mode they are another node's (on one host, TestImagesReconciledAtStart drops them).
func TestClusterStartKeepsOtherNodesSnapshots(t *testing.T) {
	ctx := context.Background()
	shared := filepath.Join(t.TempDir(), "history.db")
	allow := newSwitchFencer()
	node1, _, hist := fencedServiceOn(t, shared, allow)
	res, err := node1.Exec(ctx, api.ExecRequest{AgentID: "a", Language: "bash", Code: "set x 1"})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := node1.CreateSnapshot(ctx, res.SandboxID, api.CreateSnapshotRequest{AgentID: "a", Name: "kept"})
	if err != nil {
		t.Fatal(err)
	}
	fencedServiceOn(t, shared, allow) // node 2: its own, empty, image store
	if _, err := hist.GetSnapshot(ctx, snap.ID); err != nil {
		t.Errorf("node 1's snapshot record after node 2 started: %v; want it kept", err)
	}
}

// TestFencedStateWrites guards the shared sandbox record: once another node holds
// the agent, what this node still does to the sandbox (here a snapshot through the
// API, as an idle suspension would) does not move the sandbox's durable state.
func TestFencedStateWrites(t *testing.T) {
	ctx := context.Background()
	f := newSwitchFencer()
	svc, _, hist := fencedService(t, f)
	res, err := svc.Exec(ctx, api.ExecRequest{AgentID: "a", Language: "bash", Code: "set x 1"})
	if err != nil {
		t.Fatal(err)
	}
	held, err := svc.CreateSnapshot(ctx, res.SandboxID, api.CreateSnapshotRequest{AgentID: "a", Name: "while held"})
	if err != nil {
		t.Fatal(err)
	}
	state := func() history.SandboxState {
		sbs, err := hist.ListSandboxes(ctx)
		if err != nil || len(sbs) != 1 {
			t.Fatalf("sandboxes: %+v, %v", sbs, err)
		}
		return sbs[0].SandboxState
	}
	if st := state(); st.CurrentSnapshotID != held.ID {
		t.Fatalf("state while held: %+v; want current snapshot %s", st, held.ID)
	}
	f.set("a", refusal{"node-2"})
	if _, err := svc.CreateSnapshot(ctx, res.SandboxID, api.CreateSnapshotRequest{AgentID: "a", Name: "after takeover"}); err != nil {
		t.Fatal(err)
	}
	if st := state(); st.CurrentSnapshotID != held.ID {
		t.Errorf("state after another node took the agent: %+v; want it unmoved (current snapshot %s)", st, held.ID)
	}
}
