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

// scriptedFencer answers Hold from a script: the n-th call for an agent returns
// answers[agent][n] (nil past the end).
type scriptedFencer struct {
	mu      sync.Mutex
	answers map[string][]error
	calls   map[string]int
}

func (f *scriptedFencer) Hold(ctx context.Context, agent, sandbox string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.calls[agent]
	f.calls[agent]++
	if a := f.answers[agent]; n < len(a) {
		return a[n]
	}
	return nil
}

func fencedService(t *testing.T, f Fencer) (*Service, *fakeBackend, *sqlite.Store) {
	t.Helper()
	dir := t.TempDir()
	hist, err := sqlite.Open(context.Background(), filepath.Join(dir, "history.db"))
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
	down := errors.New("connect to postgres: connection refused")
	f := &scriptedFencer{calls: map[string]int{}, answers: map[string][]error{
		"theirs":  {refusal{"node-2"}},
		"lost":    {nil, nil, nil, refusal{"node-3"}}, // the second run's commit check
		"nocheck": {down},
	}}
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
	_, err = exec("lost", "set x 2")
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
	sbs, err := hist.ListSandboxes(ctx)
	if err != nil || len(sbs) != 1 {
		t.Fatalf("sandboxes: %+v, %v", sbs, err)
	}
	if sbs[0].HeadRunID != first.ExecutionID {
		t.Errorf("durable head is %q, want the last acknowledged run %q", sbs[0].HeadRunID, first.ExecutionID)
	}
}
