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
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/history/sqlite"
)

type harness struct {
	svc  *Service
	be   *fakeBackend
	hist *sqlite.Store
	dir  string
	cfg  Config
}

func newHarness(t *testing.T, mod func(*Config)) *harness {
	t.Helper()
	dir := t.TempDir()
	return startHarness(t, dir, newFake(), mod)
}

func startHarness(t *testing.T, dir string, be *fakeBackend, mod func(*Config)) *harness {
	return startHarnessWith(t, dir, be, mod, nil)
}

// startHarnessWith is startHarness with the history store wrapped by wrap.
func startHarnessWith(t *testing.T, dir string, be *fakeBackend, mod func(*Config), wrap func(history.Store) history.Store) *harness {
	t.Helper()
	ctx := context.Background()
	hist, err := sqlite.Open(ctx, filepath.Join(dir, "history.db"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.PoolSize = 0
	if mod != nil {
		mod(&cfg)
	}
	if be.dir == "" { // its images survive a crash, as a real backend's
		be.dir = filepath.Join(dir, "fake-images")
		if err := os.MkdirAll(be.dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var store history.Store = hist
	if wrap != nil {
		store = wrap(hist)
	}
	svc, err := New(cfg, Deps{Backends: []backend.Backend{be}, Template: fakeTemplate, History: store,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h := &harness{svc: svc, be: be, hist: hist, dir: dir, cfg: cfg}
	t.Cleanup(func() { h.close() })
	return h
}

func (h *harness) close() {
	h.svc.Close(context.Background())
	h.hist.Close()
}

func (h *harness) run(t *testing.T, agent, code string, pol *api.ExecPolicy) *api.ExecResult {
	t.Helper()
	res, err := h.svc.Exec(context.Background(), api.ExecRequest{AgentID: agent, Language: "bash", Code: code, History: pol})
	if err != nil {
		t.Fatalf("exec %q: %v", code, err)
	}
	return res
}

func ptr[T any](v T) *T { return &v }

// waitUntil waits for cond, which tests use to order steps instead of sleeping; it
// fails the test after 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// entryOf is the service's entry of a sandbox.
func (h *harness) entryOf(t *testing.T, id string) *entry {
	t.Helper()
	e, err := h.svc.lookup(id, "")
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// crash abandons h's service as a SIGKILL would (no Close: its sandboxes and
// background work are simply gone to the next process) and starts a new service on
// the same data dir with a new backend. The abandoned service is closed when the test
// ends, after release (if given) is closed.
func (h *harness) crash(t *testing.T, release chan struct{}, mod func(*Config)) *harness {
	t.Helper()
	old := h
	t.Cleanup(func() {
		if release != nil {
			close(release)
		}
		old.svc.cancelWork()
	})
	return startHarness(t, h.dir, newFake(), mod)
}

// Guards the transaction: a failed run is rolled back to the pre-run snapshot, its
// failed state kept; a successful one is committed.
func TestTransaction(t *testing.T) {
	h := newHarness(t, nil)
	h.run(t, "a", "set x 1", nil)
	r := h.run(t, "a", "set x 2\nexit 3", nil)
	if !r.RolledBack || r.PreSnapshotID == "" || r.RestoredSnapshotID != r.PreSnapshotID || r.FailureSnapshotID == "" || r.ExitCode != 3 {
		t.Fatalf("failed run: %+v", r)
	}
	if got := h.run(t, "a", "print x", nil).Stdout; got != "1\n" {
		t.Fatalf("after rollback x = %q, want 1", got)
	}
	h.run(t, "a", "set x 5", nil)
	if got := h.run(t, "a", "print x", nil).Stdout; got != "5\n" {
		t.Fatalf("committed x = %q, want 5", got)
	}
}

// Guards the policy layers: server config, then the agent's, then the request's; a
// partial object keeps the lower layers' fields.
func TestPolicyLayers(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.History.SnapshotOnFailure = ptr(false) })
	ctx := context.Background()
	if _, err := h.svc.SetAgentPolicy(ctx, "b", api.ExecPolicy{AutoRollbackOnFailure: ptr(false)}); err != nil {
		t.Fatal(err)
	}
	h.run(t, "b", "set x 1", nil)
	r := h.run(t, "b", "set x 2\nexit 1", nil)
	if r.RolledBack || r.FailureSnapshotID != "" || r.PreSnapshotID == "" {
		t.Fatalf("agent policy (no rollback) over server (no failure snapshot): %+v", r)
	}
	r = h.run(t, "b", "set x 3\nexit 1", &api.ExecPolicy{AutoRollbackOnFailure: ptr(true)})
	if !r.RolledBack {
		t.Fatalf("request override ignored: %+v", r)
	}
	if got := h.run(t, "b", "print x", nil).Stdout; got != "2\n" {
		t.Fatalf("x = %q, want 2 (the unrolled failure's state)", got)
	}
	eff, own, err := h.svc.AgentPolicy(ctx, "b")
	if err != nil || *eff.AutoRollbackOnFailure || *eff.SnapshotOnFailure || !*eff.SnapshotBeforeExecution || own.SnapshotBeforeExecution != nil {
		t.Fatalf("effective %+v own %+v %v", eff, own, err)
	}
	if _, err := h.svc.SetAgentPolicy(ctx, "b", api.ExecPolicy{MaxSnapshots: ptr(0)}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("max_snapshots 0: %v", err)
	}
}

// Guards that a run that kills its sandbox is restored from its pre-run snapshot, and
// without one the next run says it got a fresh sandbox.
func TestDeadSandbox(t *testing.T) {
	h := newHarness(t, nil)
	h.run(t, "c", "set x 1", nil)
	r := h.run(t, "c", "die", nil)
	if r.Verdict != api.VerdictMemoryLimit || r.SandboxLost || !r.RolledBack {
		t.Fatalf("death with a snapshot: %+v", r)
	}
	if got := h.run(t, "c", "print x", nil).Stdout; got != "1\n" {
		t.Fatalf("x = %q after restore", got)
	}
	off := &api.ExecPolicy{SnapshotBeforeExecution: ptr(false)}
	r = h.run(t, "c", "die", off)
	if !r.SandboxLost || r.RolledBack {
		t.Fatalf("death without a snapshot: %+v", r)
	}
	next := h.run(t, "c", "print x", off)
	if !next.SandboxRecreated || next.Stdout != "\n" {
		t.Fatalf("next run: %+v", next)
	}
}

// Guards rollback to the last success: the state right after it, through failures
// that were not rolled back; and that another agent may not use the snapshots.
func TestRollbackLastSuccessAndOwnership(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	keep := &api.ExecPolicy{AutoRollbackOnFailure: ptr(false)}
	r := h.run(t, "d", "set x good", nil)
	h.run(t, "d", "set x bad1\nexit 1", keep)
	h.run(t, "d", "set x bad2\nexit 1", keep)
	if _, err := h.svc.Rollback(ctx, r.SandboxID, api.RollbackRequest{AgentID: "intruder", LastSuccess: true}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("intruder rollback: %v", err)
	}
	if _, err := h.svc.Rollback(ctx, r.SandboxID, api.RollbackRequest{AgentID: "d", LastSuccess: true}); err != nil {
		t.Fatal(err)
	}
	if got := h.run(t, "d", "print x", nil).Stdout; got != "good\n" {
		t.Fatalf("x = %q", got)
	}
	if _, err := h.svc.Rollback(ctx, r.SandboxID, api.RollbackRequest{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("rollback without a target: %v", err)
	}
	sn, err := h.svc.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: "d"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Fork(ctx, sn.ID, api.ForkRequest{AgentID: "intruder"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("intruder fork: %v", err)
	}
	fork, err := h.svc.Fork(ctx, sn.ID, api.ForkRequest{AgentID: "d"})
	if err != nil || fork.AgentID != "d" {
		t.Fatalf("fork: %+v %v", fork, err)
	}
}

// Guards retention: past max_snapshots the oldest unpinned snapshots go, pinned stay.
func TestRetention(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.History.MaxSnapshots = ptr(3) })
	ctx := context.Background()
	r := h.run(t, "e", "set x 0", nil)
	pinned, err := h.svc.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{Pinned: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		h.run(t, "e", "set x 1\nexit 1", nil) // failure snapshot each time
	}
	h.svc.bg.Wait() // retention runs in the background
	list, err := h.svc.ListSnapshots(ctx, r.SandboxID, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Snapshots) > 3 {
		t.Fatalf("%d snapshots kept, want at most 3", len(list.Snapshots))
	}
	found := false
	for _, s := range list.Snapshots {
		found = found || s.ID == pinned.ID
	}
	if !found {
		t.Fatal("the pinned snapshot was removed")
	}
}

// Guards the queue bound: past queue_depth waiting requests, a request is refused
// with ErrBusy rather than queued without limit.
func TestQueueBound(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.QueueDepth = 1 })
	e := h.entryOf(t, h.run(t, "q", "set x 1", nil).SandboxID)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, errs[i] = h.svc.Exec(context.Background(), api.ExecRequest{AgentID: "q", Language: "bash", Code: "sleep 300"})
		}(i)
		switch i {
		case 0:
			waitUntil(t, "the first run is in flight", e.busy.Load)
		case 1:
			waitUntil(t, "the second run is queued", func() bool { return e.waiting() == 1 })
		}
	}
	wg.Wait()
	busy := 0
	for _, err := range errs {
		if errors.Is(err, ErrBusy) {
			busy++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if busy != 1 {
		t.Fatalf("busy = %d, want 1: %v", busy, errs)
	}
}

// Guards that runs, snapshots and rollbacks of one sandbox never interleave: a
// snapshot asked for during a run waits for it and holds the run's end state, and a
// rollback asked for during a run comes after it.
func TestSnapshotWaitsForRun(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	r := h.run(t, "s", "set x 0", nil)
	e := h.entryOf(t, r.SandboxID)
	h.svc.bg.Wait()
	done := make(chan *api.ExecResult, 1)
	go func() { done <- h.run(t, "s", "set x half\nsleep 200\nset x 1", nil) }()
	waitUntil(t, "the run is in flight", e.busy.Load)
	sn, err := h.svc.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	run := <-done
	if !sn.CreatedAt.After(run.CompletedAt) {
		t.Fatalf("the snapshot (%v) was taken before the run it was queued behind ended (%v)", sn.CreatedAt, run.CompletedAt)
	}
	h.svc.bg.Wait()
	go func() { done <- h.run(t, "s", "set x half\nsleep 200\nset x 2", nil) }()
	waitUntil(t, "the second run is in flight", e.busy.Load)
	if _, err := h.svc.Rollback(ctx, r.SandboxID, api.RollbackRequest{AgentID: "s", SnapshotID: sn.ID}); err != nil {
		t.Fatal(err)
	}
	<-done
	if got := h.run(t, "s", "print x", nil).Stdout; got != "1\n" {
		t.Fatalf("x = %q after the rollback to the snapshot taken during the first run, want the run's end state 1", got)
	}
}

// Guards max_history_entries: an agent's history keeps only the newest runs.
func TestHistoryPruned(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.History.MaxHistoryEntries = ptr(3) })
	ctx := context.Background()
	for i := 0; i < 6; i++ {
		h.run(t, "p", fmt.Sprintf("set x %d", i), nil)
	}
	h.svc.bg.Wait() // pruning runs in the background
	list, err := h.svc.History(ctx, history.RunFilter{AgentID: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Runs) != 3 || list.Runs[0].Code != "set x 5" {
		t.Fatalf("history: %d runs, newest %q; want the 3 newest", len(list.Runs), list.Runs[0].Code)
	}
}

// Guards request validation: each bad request is ErrInvalid with a message naming
// what is wrong.
func TestValidation(t *testing.T) {
	h := newHarness(t, nil)
	for _, c := range []struct {
		req     api.ExecRequest
		mention string
	}{
		{api.ExecRequest{Language: "python", Code: "x"}, "agent_id"},
		{api.ExecRequest{AgentID: "v", Code: "x"}, "language"},
		{api.ExecRequest{AgentID: "v", Language: "cobol", Code: "x"}, "cobol"},
		{api.ExecRequest{AgentID: "v", Language: "python", Code: "  "}, "empty"},
		{api.ExecRequest{AgentID: "v", Language: "python", Code: strings.Repeat("x", 2<<20)}, "limit"},
		{api.ExecRequest{AgentID: "v", Language: "python", Code: "x", Limits: api.Limits{TimeoutMS: 1 << 40}}, "maximum"},
		{api.ExecRequest{AgentID: "v", Language: "python", Code: "x", Limits: api.Limits{MemoryMB: 1}}, "minimum"},
		{api.ExecRequest{AgentID: "v", Language: "python", Code: "x", History: &api.ExecPolicy{MaxHistoryEntries: ptr(-1)}}, "max_history_entries"},
	} {
		_, err := h.svc.Exec(context.Background(), c.req)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.mention) {
			t.Errorf("%+v: %v, want ErrInvalid mentioning %q", c.req.Limits, err, c.mention)
		}
	}
	if h.be.count() != 0 {
		t.Fatalf("invalid requests started %d sandboxes", h.be.count())
	}
}

// Guards that policy refuses before any sandbox exists and records the attempt.
func TestBlockedRecorded(t *testing.T) {
	h := newHarness(t, nil)
	r := h.run(t, "p", "rm -rf /", nil)
	if !r.Blocked || r.BlockedRule != "destroy_root" || h.be.count() != 0 {
		t.Fatalf("blocked: %+v, sandboxes %d", r, h.be.count())
	}
	list, err := h.svc.History(context.Background(), history.RunFilter{AgentID: "p"})
	if err != nil || list.Total != 1 || list.Runs[0].Status != history.StatusBlocked {
		t.Fatalf("history: %+v %v", list, err)
	}
}

// Guards suspend and resume: an idle sandbox is snapshotted and stopped, and its next
// run resumes with the state it had — also across a restart of the service.
func TestSuspendResume(t *testing.T) {
	dir := t.TempDir()
	be := newFake()
	h := startHarness(t, dir, be, func(c *Config) { c.IdleTimeout = 50 * time.Millisecond })
	h.run(t, "s", "set x kept", nil)
	waitUntil(t, "the idle sandbox is suspended", func() bool { return be.count() == 0 })
	if sb := h.svc.List(); len(sb) != 1 || sb[0].Status != "suspended" {
		t.Fatalf("list: %+v", sb)
	}
	if r := h.run(t, "s", "print x", nil); r.Stdout != "kept\n" || r.SandboxRecreated {
		t.Fatalf("resume: %+v", r)
	}
	h.close()
	h2 := startHarness(t, dir, be, nil)
	if r := h2.run(t, "s", "print x", nil); r.Stdout != "kept\n" {
		t.Fatalf("after restart: %+v", r)
	}
}

// Guards that an agent's language list narrows the server's, never widens it, and that
// a policy naming unknown languages or rules is refused.
func TestAgentLanguagesNarrow(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Policy.AllowedLanguages = []string{"python", "bash"} })
	ctx := context.Background()
	if _, err := h.svc.SetAgentPolicy(ctx, "n", api.ExecPolicy{AllowedLanguages: []string{"bash", "rust"}}); err != nil {
		t.Fatal(err)
	}
	if r := h.run(t, "n", "echo ok", nil); r.Blocked {
		t.Fatalf("bash is allowed by both: %+v", r)
	}
	r, err := h.svc.Exec(ctx, api.ExecRequest{AgentID: "n", Language: "rust", Code: "fn main(){}"})
	if err != nil || !r.Blocked || r.BlockedRule != "language_not_allowed" {
		t.Fatalf("rust is not allowed by the server: %+v %v", r, err)
	}
	if _, err := h.svc.SetAgentPolicy(ctx, "n", api.ExecPolicy{DisabledRules: []string{"no_such_rule"}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown rule: %v", err)
	}
	if _, err := h.svc.SetAgentPolicy(ctx, "n", api.ExecPolicy{AllowedLanguages: []string{"cobol"}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown language: %v", err)
	}
}
