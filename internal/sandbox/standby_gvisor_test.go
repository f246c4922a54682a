package sandbox

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/gvisor"
	"github.com/vmexec/vmexec/internal/history/sqlite"
	"github.com/vmexec/vmexec/internal/testenv"
)

// The gVisor backend's standbys (containers made ahead of restores) are sandboxes of
// the host: with max_sandboxes 2 and one agent's sandbox live, a rollback leaves at
// most one standby (the room there is), counted in the service's usage; a second
// agent's start then has the standby give way instead of suspending the first
// agent, and the bound holds throughout.
func TestStandbysCountInTheBounds(t *testing.T) {
	testenv.Root(t)
	ctx := context.Background()
	dir := t.TempDir()
	be, err := gvisor.New(gvisor.Config{Runsc: testenv.Runsc(t), StateDir: filepath.Join(dir, "gvisor"), AgentPath: testenv.Agent(t)})
	if err != nil {
		t.Fatal(err)
	}
	hist, err := sqlite.Open(ctx, filepath.Join(dir, "history.db"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.PoolSize = 0
	cfg.MaxSandboxes = 2
	svc, err := New(cfg, Deps{Backends: []backend.Backend{be}, Template: testenv.Template(t), History: hist,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close(context.Background()); hist.Close() })
	svc.templateRef(ctx, true) // its warm-up sandbox counts in the bound while it is made

	a := execOK(t, svc, api.ExecRequest{AgentID: "a", Language: "bash", Code: "echo one > ~/f.txt"})
	sn, err := svc.CreateSnapshot(ctx, a.SandboxID, api.CreateSnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	execOK(t, svc, api.ExecRequest{AgentID: "a", Language: "bash", Code: "echo two > ~/f.txt"})
	if _, err := svc.Rollback(ctx, a.SandboxID, api.RollbackRequest{SnapshotID: sn.ID}); err != nil {
		t.Fatal(err)
	}
	// The standby the rollback leaves behind is made in the background: wait for it,
	// and check the bound meanwhile.
	deadline := time.Now().Add(time.Minute)
	for {
		n, _ := be.Standbys()
		svc.mu.Lock()
		used, _ := svc.usage()
		svc.mu.Unlock()
		if used > cfg.MaxSandboxes {
			t.Fatalf("usage %d (standbys %d) over max_sandboxes %d", used, n, cfg.MaxSandboxes)
		}
		if n == 1 && used == 2 {
			break
		}
		if n > 1 {
			t.Fatalf("%d standbys made with room for one", n)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no standby after a rollback: standbys %d, usage %d", n, used)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := execOK(t, svc, api.ExecRequest{AgentID: "a", Language: "bash", Code: "cat ~/f.txt"}); got.Stdout != "one\n" {
		t.Fatalf("after the rollback: %q", got.Stdout)
	}
	execOK(t, svc, api.ExecRequest{AgentID: "b", Language: "bash", Code: "echo b"})
	status := map[string]string{}
	for _, sb := range svc.List() {
		status[sb.AgentID] = sb.Status
	}
	if status["a"] != "running" || status["b"] != "running" {
		t.Fatalf("statuses after b's start: %v; want both running (the standby gives way)", status)
	}
	svc.mu.Lock()
	used, _ := svc.usage()
	svc.mu.Unlock()
	if n, _ := be.Standbys(); used > cfg.MaxSandboxes || n != 0 {
		t.Fatalf("after b's start: usage %d, standbys %d; want 2 sandboxes and no standby", used, n)
	}
}
