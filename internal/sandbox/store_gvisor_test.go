package sandbox

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/backendtest"
	"github.com/vmexec/vmexec/internal/backend/gvisor"
	"github.com/vmexec/vmexec/internal/history/sqlite"
	"github.com/vmexec/vmexec/internal/snapstore"
	"github.com/vmexec/vmexec/internal/snapstore/snapstoretest"
	"github.com/vmexec/vmexec/internal/testenv"
)

// gvisorNode starts a service on the history in dir with a gVisor backend whose state
// dir is stateDir (a node: its own images) and the snapshot store st.
func gvisorNode(t *testing.T, dir, stateDir string, st *snapstore.Store) (*Service, *events) {
	t.Helper()
	ctx := context.Background()
	be, err := gvisor.New(gvisor.Config{Runsc: testenv.Runsc(t), StateDir: stateDir, AgentPath: testenv.Agent(t)})
	if err != nil {
		t.Fatal(err)
	}
	hist, err := sqlite.Open(ctx, filepath.Join(dir, "history.db"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.PoolSize = 0
	svc, err := New(cfg, Deps{Backends: []backend.Backend{be}, Template: testenv.Template(t), History: hist, Store: st,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	svc.store.hook = ev.add
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close(context.Background()); hist.Close() })
	return svc, ev
}

func execOK(t *testing.T, svc *Service, req api.ExecRequest) *api.ExecResult {
	t.Helper()
	res, err := svc.Exec(context.Background(), req)
	if err != nil {
		t.Fatalf("exec %q: %v", req.Code, err)
	}
	if res.Verdict != "ok" {
		t.Fatalf("exec %q: %+v", req.Code, res)
	}
	return res
}

// Guards cluster mode part 1 end to end on real parts (gVisor, SQLite, SeaweedFS's S3):
// a sandbox's snapshot is uploaded, its node's images are all lost, and another node
// with the same history restores it from S3 with its file, a background process
// still running and that process's memory (a python global) intact; the result says
// it came from the store. A stored manifest that does not match the node (another
// runsc version) is refused with an error naming the field.
func TestGVisorRestoreFromS3(t *testing.T) {
	testenv.Root(t)
	testenv.Runsc(t)
	testenv.Template(t)
	blobs := snapstoretest.S3(t)
	st := &snapstore.Store{Blobs: blobs}
	dir := t.TempDir()
	ctx := context.Background()

	a, _ := gvisorNode(t, dir, filepath.Join(t.TempDir(), "node-a"), st)
	r := execOK(t, a, api.ExecRequest{AgentID: "s3", Language: "bash", Code: backendtest.MemStart})
	execOK(t, a, api.ExecRequest{AgentID: "s3", Language: "bash", Code: "echo kept > ~/kept.txt\n" + backendtest.MemBump, Durable: true})
	a.Close(ctx) // suspends it; the suspend snapshot is uploaded before Close returns
	e := a.sandboxes[r.SandboxID]
	key := snapstore.Key(r.SandboxID, e.current)
	if ok, err := st.Exists(ctx, key); !ok || err != nil {
		t.Fatalf("the suspended sandbox's snapshot %s is not in S3: %v %v", key, ok, err)
	}

	// Node B: the same history, none of node A's images.
	b, evB := gvisorNode(t, dir, filepath.Join(t.TempDir(), "node-b"), st)
	got := execOK(t, b, api.ExecRequest{AgentID: "s3", Language: "bash", Code: "cat ~/kept.txt\n" + backendtest.MemRead})
	if got.Stdout != "kept\n1" && got.Stdout != "kept\n1\n" {
		t.Fatalf("on node B: stdout %q; want the file and the process's number (1)", got.Stdout)
	}
	if got.SandboxID != r.SandboxID || got.SandboxRecreated || !strings.Contains(strings.Join(got.Warnings, "\n"), "restored from the snapshot store") {
		t.Fatalf("on node B: %+v; want the same sandbox, restored from the store, saying so", got)
	}
	if len(evB.of("fetched")) != 1 {
		t.Fatalf("node B's store events: %+v", evB.evs)
	}
	// The process still runs: it answers another signal.
	if out := execOK(t, b, api.ExecRequest{AgentID: "s3", Language: "bash", Code: backendtest.MemBump}).Stdout; strings.TrimSpace(out) != "2" {
		t.Fatalf("the background process after the restore: %q, want 2", out)
	}
	b.Close(ctx)

	// Node C's runsc "differs": the stored manifest is rewritten to say so.
	eb := b.sandboxes[r.SandboxID]
	key = snapstore.Key(r.SandboxID, eb.current)
	m, err := st.Manifest(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	m.Compat.Version = "v0.0.0-another-build"
	mb, _ := json.Marshal(m)
	if _, err := blobs.Put(ctx, key+".json", strings.NewReader(string(mb))); err != nil {
		t.Fatal(err)
	}
	c, evC := gvisorNode(t, dir, filepath.Join(t.TempDir(), "node-c"), st)
	res, err := c.Exec(ctx, api.ExecRequest{AgentID: "s3", Language: "bash", Code: "cat ~/kept.txt || echo gone"})
	if err != nil {
		t.Fatal(err)
	}
	warn := strings.Join(res.Warnings, "\n")
	if !strings.Contains(warn, "version") || !strings.Contains(warn, "v0.0.0-another-build") || strings.Contains(res.Stdout, "kept") {
		t.Fatalf("on a node that does not match the manifest: %+v; want the restore refused with a warning naming the version", res)
	}
	if len(evC.of("fetched")) != 0 {
		t.Fatalf("an incompatible image was fetched: %+v", evC.evs)
	}
}
