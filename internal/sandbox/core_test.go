package sandbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/history"
)

// Guards fault 1: a rollback is durable. After a rollback to S and a crash before any
// further run, the sandbox comes back in S's state, not the newer one it was rolled
// back from.
func TestRollbackSurvivesCrash(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	r := h.run(t, "rb", "set x 1", nil)
	sn, err := h.svc.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: "rb"})
	if err != nil {
		t.Fatal(err)
	}
	h.run(t, "rb", "set x 2", nil)
	h.svc.bg.Wait() // the background snapshot of x=2 exists
	if _, err := h.svc.Rollback(ctx, r.SandboxID, api.RollbackRequest{AgentID: "rb", SnapshotID: sn.ID}); err != nil {
		t.Fatal(err)
	}
	h2 := h.crash(t, nil, nil)
	got := h2.run(t, "rb", "print x", nil)
	if got.Stdout != "1\n" || got.SandboxRecreated || got.StateRestoredFrom != "" {
		t.Fatalf("after rollback and crash: %+v; want x=1 from the rolled-back state", got)
	}
}

// Guards fault 2: an ok run whose state was not yet saved when the server crashed is
// not lost silently: the next result names the run whose state came back
// (state_restored_from). With durable: true the state is saved before the answer and
// survives.
func TestCommitLostIsReported(t *testing.T) {
	h := newHarness(t, nil)
	first := h.run(t, "cm", "set x 1", nil)
	h.svc.bg.Wait()
	gate := make(chan struct{})
	h.be.mu.Lock()
	h.be.snapGate = gate // the background snapshot after the next run never completes
	h.be.mu.Unlock()
	h.run(t, "cm", "set x 2", nil)
	h2 := h.crash(t, gate, nil)
	got := h2.run(t, "cm", "print x", nil)
	if got.Stdout != "1\n" || got.StateRestoredFrom != first.ExecutionID || len(got.Warnings) == 0 {
		t.Fatalf("after a lost commit: %+v; want x=1 with state_restored_from=%s and a warning", got, first.ExecutionID)
	}
	if again := h2.run(t, "cm", "print x", nil); again.StateRestoredFrom != "" {
		t.Fatalf("told twice: %+v", again)
	}

	res, err := h2.svc.Exec(context.Background(), api.ExecRequest{AgentID: "cm", Language: "bash", Code: "set x 3", Durable: true})
	if err != nil || !res.Durable {
		t.Fatalf("durable run: %+v %v", res, err)
	}
	h2.be.mu.Lock()
	h2.be.snapGate = make(chan struct{}) // nothing after the answer gets saved
	h2.be.mu.Unlock()
	h3 := h2.crash(t, h2.be.snapGate, nil)
	if got := h3.run(t, "cm", "print x", nil); got.Stdout != "3\n" || got.StateRestoredFrom != "" {
		t.Fatalf("after a durable run and a crash: %+v; want x=3", got)
	}
}

// Guards fault 4: a fork killed by a crash before its first run comes back with its
// source's state.
func TestForkSurvivesCrash(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	r := h.run(t, "fk", "set x 7", nil)
	sn, err := h.svc.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: "fk"})
	if err != nil {
		t.Fatal(err)
	}
	fork, err := h.svc.Fork(ctx, sn.ID, api.ForkRequest{AgentID: "fk"})
	if err != nil {
		t.Fatal(err)
	}
	h2 := h.crash(t, nil, nil)
	got, err := h2.svc.Exec(ctx, api.ExecRequest{AgentID: "fk", SandboxID: fork.ID, Language: "bash", Code: "print x"})
	if err != nil || got.Stdout != "7\n" || got.SandboxRecreated {
		t.Fatalf("fork after a crash: %+v %v; want its source's x=7", got, err)
	}
}

// Guards fault 3: shutdown does not wait for a long run. The run is interrupted,
// recorded as such and rolled back, its caller gets ErrClosed, and after a restart
// the state is the pre-run one.
func TestShutdownInterruptsRun(t *testing.T) {
	h := newHarness(t, nil)
	r := h.run(t, "sd", "set x 1", nil)
	e := h.entryOf(t, r.SandboxID)
	h.svc.bg.Wait()
	errc := make(chan error, 1)
	go func() {
		_, err := h.svc.Exec(context.Background(), api.ExecRequest{AgentID: "sd", Language: "bash", Code: "set x 2\nsleep 600000"})
		errc <- err
	}()
	waitUntil(t, "the long run is in flight", e.busy.Load)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := h.svc.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("the interrupted run's caller got %v, want ErrClosed saying interrupted", err)
	}
	list, _, err := h.hist.ListRuns(context.Background(), history.RunFilter{AgentID: "sd"})
	if err != nil || len(list) != 2 {
		t.Fatalf("history: %+v %v", list, err)
	}
	if run := list[0]; run.Status != history.StatusError || !run.RolledBack || !strings.Contains(fmt.Sprint(run.Metadata["error"]), "interrupted") || run.ExitCode != -1 {
		t.Fatalf("the interrupted run's row: %+v", run)
	}
	h.hist.Close()
	h2 := startHarness(t, h.dir, newFake(), nil)
	if got := h2.run(t, "sd", "print x", nil); got.Stdout != "1\n" {
		t.Fatalf("after the restart: %+v; want the pre-run x=1", got)
	}
}

// Guards fault 17: requests queued or arriving during shutdown are told the server is
// shutting down (ErrClosed, 503), not that their sandbox was deleted; and background
// work racing Close (rollbacks destroying old incarnations) neither panics nor leaks.
func TestRequestsDuringShutdown(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	r := h.run(t, "cl", "set x 1", nil)
	e := h.entryOf(t, r.SandboxID)
	h.svc.bg.Wait()
	go h.svc.Exec(ctx, api.ExecRequest{AgentID: "cl", Language: "bash", Code: "sleep 600000"})
	waitUntil(t, "the run is in flight", e.busy.Load)
	queued := make(chan error, 1)
	go func() {
		_, err := h.svc.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: "cl"})
		queued <- err
	}()
	waitUntil(t, "the snapshot request is queued", func() bool { return e.waiting() == 1 })
	// Rollbacks of another sandbox race Close.
	other := h.run(t, "cl2", "set y 1", nil)
	sn, err := h.svc.CreateSnapshot(ctx, other.SandboxID, api.CreateSnapshotRequest{AgentID: "cl2"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				if _, err := h.svc.Rollback(ctx, other.SandboxID, api.RollbackRequest{SnapshotID: sn.ID}); err != nil {
					if !errors.Is(err, ErrClosed) {
						t.Errorf("rollback during shutdown: %v, want ErrClosed", err)
					}
					return
				}
			}
		}()
	}
	if err := h.svc.Close(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := <-queued; !errors.Is(err, ErrClosed) {
		t.Fatalf("a request queued during shutdown got %v, want ErrClosed", err)
	}
	if _, err := h.svc.Exec(ctx, api.ExecRequest{AgentID: "cl", Language: "bash", Code: "print x"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("a request after shutdown got %v, want ErrClosed", err)
	}
	if n := h.be.count(); n != 0 {
		t.Fatalf("%d backend sandboxes left after Close", n)
	}
}

// Guards fault 16: a sandbox whose start fails is removed for good: a request that
// queued on it fails too, and no backend sandbox is left that no map holds.
func TestFailedStartLeaksNothing(t *testing.T) {
	h := newHarness(t, nil)
	gate := make(chan struct{})
	h.be.mu.Lock()
	h.be.createGate, h.be.failCreate = gate, 1
	h.be.mu.Unlock()
	ctx := context.Background()
	errs := make(chan error, 2)
	exec := func() {
		_, err := h.svc.Exec(ctx, api.ExecRequest{AgentID: "fs", Language: "bash", Code: "set x 1"})
		errs <- err
	}
	go exec()
	var e *entry
	waitUntil(t, "the first start is under way", func() bool {
		h.svc.mu.Lock()
		defer h.svc.mu.Unlock()
		e = h.svc.sandboxes[h.svc.byAgent["fs"]]
		return e != nil
	})
	go exec()
	waitUntil(t, "the second request is queued on the starting sandbox", func() bool { return e.waiting() == 1 })
	h.be.mu.Lock()
	h.be.createGate = nil
	h.be.mu.Unlock()
	close(gate)
	for i := 0; i < 2; i++ {
		if err := <-errs; err == nil {
			t.Fatal("a request on a sandbox that failed to start succeeded")
		}
	}
	if n, listed := h.be.count(), len(h.svc.List()); n != 0 || listed != 0 {
		t.Fatalf("%d backend sandboxes, %d listed after a failed start; want none", n, listed)
	}
	if r := h.run(t, "fs", "set x 1", nil); r.Verdict != api.VerdictOK {
		t.Fatalf("the agent's next request: %+v", r)
	}
}

// Guards fault 15 (last part): a sandbox that died while idle (killed from outside) is
// not blamed on the next run: the run finds it dead first, restores it and says so.
func TestIdleDeathNotBlamed(t *testing.T) {
	h := newHarness(t, nil)
	h.run(t, "id", "set x 1", nil)
	h.svc.bg.Wait()
	for _, sb := range h.be.sandboxes() {
		sb.kill()
	}
	got := h.run(t, "id", "print x", nil)
	if got.Verdict != api.VerdictOK || got.Stdout != "1\n" || got.SandboxLost || !strings.Contains(strings.Join(got.Warnings, " "), "died while idle") {
		t.Fatalf("run after an idle death: %+v; want ok, x=1 and a warning", got)
	}
}

// Guards fault 5: snapshot byte budgets, pinned snapshots included, refuse with
// ErrStorage naming the budget; unpinned ones are pruned to make room; max_snapshots
// has an upper bound.
func TestSnapshotBudgets(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.SandboxSnapshotBytes = 3500; c.TotalSnapshotBytes = 6000 })
	h.be.snapPad = 1000
	ctx := context.Background()
	r := h.run(t, "bu", "set x 1", nil)
	for i := 0; i < 8; i++ { // unpinned snapshots are pruned to stay in the budget
		h.run(t, "bu", "set x 2\nexit 1", nil)
	}
	h.svc.bg.Wait()
	if n, _ := h.hist.SnapshotBytes(ctx, r.SandboxID); n > 3500+1100 {
		t.Fatalf("sandbox snapshots use %d bytes, budget 3500", n)
	}
	var err error
	for i := 0; i < 5 && err == nil; i++ {
		_, err = h.svc.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{Pinned: true})
	}
	if !errors.Is(err, ErrStorage) || !strings.Contains(err.Error(), "3500") {
		t.Fatalf("pinned snapshots past the budget: %v, want ErrStorage naming 3500", err)
	}
	h.run(t, "bu", "set x 9", nil) // its pre-run state is the last pinned snapshot
	h.svc.bg.Wait()
	if _, err := h.svc.Exec(ctx, api.ExecRequest{AgentID: "bu", Language: "bash", Code: "set x 10"}); !errors.Is(err, ErrStorage) {
		t.Fatalf("a run that cannot take its pre-run snapshot: %v, want ErrStorage", err)
	}
	// The server's budget: another sandbox fills what is left.
	r2 := h.run(t, "bu2", "set y 1", nil)
	err = nil
	for i := 0; i < 5 && err == nil; i++ {
		_, err = h.svc.CreateSnapshot(ctx, r2.SandboxID, api.CreateSnapshotRequest{Pinned: true})
	}
	if !errors.Is(err, ErrStorage) || !strings.Contains(err.Error(), "6000") {
		t.Fatalf("past the server's budget: %v, want ErrStorage naming 6000", err)
	}
	if _, err := h.svc.SetAgentPolicy(ctx, "bu", api.ExecPolicy{MaxSnapshots: ptr(1_000_000)}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("max_snapshots 1000000: %v, want ErrInvalid", err)
	}
	if err := (Config{SuspendTimeout: time.Hour}).Validate(); err == nil {
		t.Fatal("a suspend timeout past the shutdown budget validated")
	}
}

// Guards fault 7: pool sandboxes are handed out before the cap is checked; at the cap
// the least recently used idle sandbox is suspended (and resumes with its state)
// instead of refusing; sandbox memory is budgeted.
func TestCapSuspendsLeastRecentlyUsed(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxSandboxes = 2; c.PoolSize = 2 })
	waitUntil(t, "the pool is full", func() bool { return h.be.count() == 2 })
	h.run(t, "a", "set x a", nil) // from the pool, though two pool sandboxes fill the cap
	h.run(t, "b", "set x b", nil)
	h.svc.bg.Wait()
	h.run(t, "c", "set x c", nil) // the cap: a is the least recently used
	status := map[string]string{}
	for _, sb := range h.svc.List() {
		status[sb.AgentID] = sb.Status
	}
	if status["a"] != "suspended" || status["c"] != "running" {
		t.Fatalf("statuses at the cap: %v; want a suspended", status)
	}
	if got := h.run(t, "a", "print x", nil); got.Stdout != "a\n" || got.SandboxRecreated {
		t.Fatalf("a after its suspension: %+v", got)
	}
	if n := h.be.count(); n > 2 {
		t.Fatalf("%d sandboxes live, cap 2", n)
	}

	m := newHarness(t, func(c *Config) { c.MemoryBudgetMB = 1024; c.Max.MemoryMB = 1024 })
	m.run(t, "a", "set x a", nil)
	m.run(t, "b", "set x b", nil)
	m.svc.bg.Wait()
	res, err := m.svc.Exec(context.Background(), api.ExecRequest{AgentID: "big", Language: "bash", Code: "set x 1", Limits: api.Limits{MemoryMB: 1024}})
	if err != nil || res.Verdict != api.VerdictOK {
		t.Fatalf("a 1 GiB sandbox in a 1 GiB budget: %+v %v", res, err)
	}
	var live int64
	for _, sb := range m.svc.List() {
		if sb.Status == "running" {
			live += sb.MemoryMB
		}
	}
	if live > 1024 {
		t.Fatalf("%d MiB given to live sandboxes, budget 1024", live)
	}
	if hostMemoryMB() <= 0 {
		t.Fatal("the host's memory could not be read from /proc/meminfo")
	}
}

// Guards fault 12 (service half): with an agent id, another agent's sandbox cannot be
// deleted and its runs cannot be read; an agent whose sandbox was deleted is told on
// its next run.
func TestOwnershipEverywhere(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	r := h.run(t, "own", "set x 1", nil)
	if err := h.svc.DeleteFor(ctx, r.SandboxID, "intruder"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("delete by another agent: %v, want ErrForbidden", err)
	}
	if _, err := h.svc.GetRunFor(ctx, r.ExecutionID, "intruder"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another agent's run: %v, want ErrNotFound", err)
	}
	if run, err := h.svc.GetRunFor(ctx, r.ExecutionID, "own"); err != nil || run.ID != r.ExecutionID {
		t.Fatalf("own run: %+v %v", run, err)
	}
	if _, err := h.svc.History(ctx, history.RunFilter{AgentID: "intruder", SandboxID: r.SandboxID}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("another agent's sandbox history: %v, want ErrForbidden", err)
	}
	if err := h.svc.Delete(ctx, r.SandboxID); err != nil { // the operator may
		t.Fatal(err)
	}
	got := h.run(t, "own", "print x", nil)
	if !got.SandboxRecreated || got.SandboxID == r.SandboxID || got.Stdout != "\n" {
		t.Fatalf("the run after its sandbox was deleted: %+v; want sandbox_recreated", got)
	}
}

// countingStore counts reads of agent policies.
type countingStore struct {
	history.Store
	reads atomic.Int32
}

func (c *countingStore) GetAgentPolicy(ctx context.Context, agentID string) (string, error) {
	c.reads.Add(1)
	return c.Store.GetAgentPolicy(ctx, agentID)
}

// Guards that an agent's settings are read once per request (they were read and
// decoded three times per run).
func TestAgentSettingsReadOnce(t *testing.T) {
	var cs *countingStore
	h := startHarnessWith(t, t.TempDir(), newFake(), nil, func(s history.Store) history.Store {
		cs = &countingStore{Store: s}
		return cs
	})
	if _, err := h.svc.SetAgentPolicy(context.Background(), "once", api.ExecPolicy{AutoRollbackOnFailure: ptr(false)}); err != nil {
		t.Fatal(err)
	}
	for _, code := range []string{"set x 1", "set x 2\nexit 1"} {
		cs.reads.Store(0)
		r := h.run(t, "once", code, nil)
		h.svc.bg.Wait()
		if n := cs.reads.Load(); n != 1 {
			t.Fatalf("%q read the agent's policy %d times, want 1", code, n)
		}
		if r.RolledBack {
			t.Fatalf("the agent's policy (no rollback) was not applied: %+v", r)
		}
	}
}

// Guards the turn: queued requests run in arrival order, and a queued request whose
// context ends leaves the queue at once.
func TestQueueFIFOAndContext(t *testing.T) {
	h := newHarness(t, nil)
	r := h.run(t, "ff", "set x 0", nil)
	e := h.entryOf(t, r.SandboxID)
	h.svc.bg.Wait()
	ctx := context.Background()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h.svc.Exec(ctx, api.ExecRequest{AgentID: "ff", Language: "bash", Code: "sleep 300"})
	}()
	waitUntil(t, "the first run is in flight", e.busy.Load)
	cctx, cancel := context.WithCancel(ctx)
	cancelled := make(chan error, 1)
	go func() {
		_, err := h.svc.Exec(cctx, api.ExecRequest{AgentID: "ff", Language: "bash", Code: "set x never"})
		cancelled <- err
	}()
	waitUntil(t, "the cancellable request is queued", func() bool { return e.waiting() == 1 })
	for i := 1; i <= 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.svc.Exec(ctx, api.ExecRequest{AgentID: "ff", Language: "bash", Code: "set x " + string(rune('0'+i)), Metadata: map[string]any{"i": string(rune('0' + i))}})
		}()
		waitUntil(t, "request queued", func() bool { return e.waiting() == i+1 })
	}
	cancel()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled queued request: %v", err)
	}
	wg.Wait()
	runs, _, err := h.hist.ListRuns(ctx, history.RunFilter{AgentID: "ff", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for i := len(runs) - 1; i >= 0; i-- {
		if v, _ := runs[i].Metadata["i"].(string); v != "" {
			order = append(order, v)
		}
	}
	if strings.Join(order, "") != "12345" {
		t.Fatalf("queued requests ran in order %v, want 1..5", order)
	}
}

// Guards the turn itself: FIFO hand-over, a waiter whose context ends leaves the
// queue (and one handed the turn as it left passes it on), the request bound.
func TestTurn(t *testing.T) {
	var tu turn
	ctx := context.Background()
	if err := tu.lock(ctx, 1); err != nil {
		t.Fatal(err)
	}
	order := make(chan int, 3)
	for i := 1; i <= 2; i++ {
		go func() {
			if err := tu.lock(ctx, 2); err == nil {
				order <- i
				tu.unlock()
			}
		}()
		waitUntil(t, "queued", func() bool { return tu.waiters() == i })
	}
	if err := tu.lock(ctx, 2); !errors.Is(err, errQueueFull) {
		t.Fatalf("a third request past a bound of 2: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	left := make(chan error, 1)
	go func() { left <- tu.lock(cctx, 0) }() // background work: not bounded, not counted
	waitUntil(t, "the background waiter is queued", func() bool {
		tu.mu.Lock()
		defer tu.mu.Unlock()
		return len(tu.queue) == 3
	})
	cancel()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Fatalf("a waiter whose context ended: %v", err)
	}
	tu.unlock()
	if a, b := <-order, <-order; a != 1 || b != 2 {
		t.Fatalf("served %d then %d, want 1 then 2", a, b)
	}
	if !tu.tryLock() {
		t.Fatal("the turn is not free after everyone left")
	}
}

// Guards durable: true on a run that fails and is rolled back (its state is already a
// snapshot) and with snapshots before runs turned off (the commit snapshot is still
// taken).
func TestDurableVariants(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	h.run(t, "du", "set x 1", nil)
	res, err := h.svc.Exec(ctx, api.ExecRequest{AgentID: "du", Language: "bash", Code: "set x 2\nexit 1", Durable: true})
	if err != nil || !res.RolledBack || !res.Durable {
		t.Fatalf("a rolled-back durable run: %+v %v", res, err)
	}
	off := &api.ExecPolicy{SnapshotBeforeExecution: ptr(false)}
	res, err = h.svc.Exec(ctx, api.ExecRequest{AgentID: "du", Language: "bash", Code: "set x 3", Durable: true, History: off})
	if err != nil || !res.Durable || res.PreSnapshotID != "" {
		t.Fatalf("a durable run without a pre-run snapshot: %+v %v", res, err)
	}
	h2 := h.crash(t, nil, nil)
	if got := h2.run(t, "du", "print x", nil); got.Stdout != "3\n" || got.StateRestoredFrom != "" {
		t.Fatalf("after a crash: %+v", got)
	}
}
