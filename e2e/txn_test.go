package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/backend/backendtest"
)

func ptr[T any](v T) *T { return &v }

func bg(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// The state test: write 1, snapshot, write 2, roll back, read 1 — for a file and for
// a running background process's in-memory counter.
func TestSnapshotRollbackState(t *testing.T) {
	d := shared(t)
	ctx := bg(t)
	a := "state"
	wantOK(t, d.exec(t, a, "bash", backendtest.MemStart), "0")
	r := d.exec(t, a, "bash", "echo 1 > ~/v.txt\n"+backendtest.MemBump)
	wantOK(t, r, "1")
	sb := r.SandboxID
	snap, err := d.client.CreateSnapshot(ctx, sb, api.CreateSnapshotRequest{AgentID: a, Name: "one"})
	if err != nil {
		t.Fatal(err)
	}
	wantOK(t, d.exec(t, a, "bash", "echo 2 > ~/v.txt\n"+backendtest.MemBump), "2")
	res, err := d.client.Rollback(ctx, sb, api.RollbackRequest{AgentID: a, SnapshotID: snap.ID})
	if err != nil || res.SnapshotID != snap.ID {
		t.Fatalf("rollback: %+v %v", res, err)
	}
	wantOK(t, d.exec(t, a, "bash", "cat ~/v.txt"), "1")
	wantOK(t, d.exec(t, a, "bash", backendtest.MemRead), "1") // the process's memory, as it was
	list, err := d.client.ListSnapshots(ctx, sb, a)
	if err != nil || len(list.Snapshots) == 0 || list.DiskBytes <= 0 {
		t.Fatalf("snapshots: %+v %v", list, err)
	}
}

// A failing run is rolled back automatically: the file it deleted is back and the
// result names the snapshots. The same for a timeout.
func TestAutoRollback(t *testing.T) {
	d := shared(t)
	a := "autorollback"
	wantOK(t, d.exec(t, a, "bash", "echo precious > ~/keep.txt; echo ok"), "ok")
	for _, c := range []struct {
		name, code string
		lim        api.Limits
		verdict    string
	}{
		{"exit 1", "rm ~/keep.txt; exit 1", api.Limits{}, api.VerdictNonzeroExit},
		{"timeout", "rm ~/keep.txt; sleep 30", api.Limits{TimeoutMS: 1000}, api.VerdictTimeout},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := d.execReq(t, api.ExecRequest{AgentID: a, Language: "bash", Code: c.code, Limits: c.lim})
			if r.Verdict != c.verdict || !r.RolledBack || r.PreSnapshotID == "" || r.RestoredSnapshotID != r.PreSnapshotID || r.FailureSnapshotID == "" {
				t.Fatalf("result: %s pre=%s restored=%s failure=%s", describe(r), r.PreSnapshotID, r.RestoredSnapshotID, r.FailureSnapshotID)
			}
			wantOK(t, d.exec(t, a, "bash", "cat ~/keep.txt"), "precious")
		})
	}
}

// With auto-rollback off the failed state stays, and snapshot_on_failure kept an
// image of it that can be rolled back to.
func TestNoAutoRollback(t *testing.T) {
	d := shared(t)
	ctx := bg(t)
	a := "no-autorollback"
	wantOK(t, d.exec(t, a, "bash", "echo v1 > ~/f.txt; echo ok"), "ok")
	r := d.execReq(t, api.ExecRequest{AgentID: a, Language: "bash", Code: "echo broken > ~/f.txt; exit 2",
		History: &api.ExecPolicy{AutoRollbackOnFailure: ptr(false)}})
	if r.RolledBack || r.FailureSnapshotID == "" || r.ExitCode != 2 {
		t.Fatalf("result: %s failure=%s", describe(r), r.FailureSnapshotID)
	}
	wantOK(t, d.exec(t, a, "bash", "cat ~/f.txt"), "broken")
	sn, err := d.client.ListSnapshots(ctx, r.SandboxID, a)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range sn.Snapshots {
		found = found || s.ID == r.FailureSnapshotID && s.Kind == api.SnapshotFailure
	}
	if !found {
		t.Fatalf("failure snapshot %s not listed: %+v", r.FailureSnapshotID, sn)
	}
}

// Rollback to the last success after two failures, with the agent's policy set to
// keep failed states.
func TestRollbackToLastSuccess(t *testing.T) {
	d := shared(t)
	ctx := bg(t)
	a := "last-success"
	if _, err := d.client.SetAgentPolicy(ctx, a, api.ExecPolicy{AutoRollbackOnFailure: ptr(false)}); err != nil {
		t.Fatal(err)
	}
	p, err := d.client.GetAgentPolicy(ctx, a)
	if err != nil || *p.Effective.AutoRollbackOnFailure || !*p.Effective.SnapshotBeforeExecution {
		t.Fatalf("policy: %+v %v (a partial policy keeps the other defaults)", p, err)
	}
	wantOK(t, d.exec(t, a, "bash", "echo good > ~/s.txt; echo ok"), "ok")
	r1 := d.exec(t, a, "bash", "echo bad1 > ~/s.txt; exit 1")
	r2 := d.exec(t, a, "python", "open('/home/user/s.txt','w').write('bad2'); raise SystemExit(1)")
	if r1.RolledBack || r2.RolledBack {
		t.Fatal("rolled back despite the agent's policy")
	}
	if r2.Verdict != api.VerdictNonzeroExit {
		t.Fatalf("second failure: %s", describe(r2))
	}
	if _, err := d.client.Rollback(ctx, r2.SandboxID, api.RollbackRequest{AgentID: a, LastSuccess: true}); err != nil {
		t.Fatal(err)
	}
	wantOK(t, d.exec(t, a, "bash", "cat ~/s.txt"), "good")
}

// A fork is an independent copy, and another agent can neither fork nor roll back to
// this agent's snapshot.
func TestForkAndOwnership(t *testing.T) {
	d := shared(t)
	ctx := bg(t)
	a := "fork-owner"
	r := d.exec(t, a, "bash", "echo original > ~/x.txt; echo ok")
	wantOK(t, r, "ok")
	sn, err := d.client.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: a})
	if err != nil {
		t.Fatal(err)
	}
	fork, err := d.client.Fork(ctx, sn.ID, api.ForkRequest{AgentID: a, Name: "copy"})
	if err != nil {
		t.Fatal(err)
	}
	if fork.ID == r.SandboxID || fork.AgentID != a {
		t.Fatalf("fork: %+v", fork)
	}
	wantOK(t, d.execReq(t, api.ExecRequest{AgentID: a, SandboxID: fork.ID, Language: "bash", Code: "cat ~/x.txt; echo changed > ~/x.txt"}), "original")
	wantOK(t, d.exec(t, a, "bash", "cat ~/x.txt"), "original")

	intruder := "fork-intruder"
	d.exec(t, intruder, "bash", "true")
	_, err = d.client.Fork(ctx, sn.ID, api.ForkRequest{AgentID: intruder})
	if !isStatus(err, http.StatusNotFound) {
		t.Fatalf("another agent's fork: %v, want 404", err)
	}
	_, err = d.client.Rollback(ctx, r.SandboxID, api.RollbackRequest{AgentID: intruder, SnapshotID: sn.ID})
	if !isStatus(err, http.StatusForbidden) {
		t.Fatalf("another agent's rollback: %v, want 403", err)
	}
	if _, err := d.client.ListSnapshots(ctx, r.SandboxID, intruder); !isStatus(err, http.StatusForbidden) {
		t.Fatalf("another agent's snapshot list: %v, want 403", err)
	}
}

func isStatus(err error, status int) bool {
	var e *client.Error
	return errors.As(err, &e) && e.Status == status
}

// History records every run with its transaction, filters failures, pages with a
// cursor, and the compatible route shows the seed's shape.
func TestHistory(t *testing.T) {
	d := shared(t)
	ctx := bg(t)
	a := "history"
	for i := 0; i < 5; i++ {
		d.exec(t, a, "python", fmt.Sprintf("import sys; print(%d); sys.exit(%d)", i, i%2))
	}
	all, err := d.client.History(ctx, client.HistoryQuery{AgentID: a})
	if err != nil || all.Total != 5 || len(all.Runs) != 5 {
		t.Fatalf("history: %+v %v", all, err)
	}
	if all.Runs[0].Stdout != "4\n" || all.Runs[0].Code == "" || all.Runs[0].PreSnapshotID == "" {
		t.Fatalf("newest run: %+v", all.Runs[0])
	}
	fails, err := d.client.History(ctx, client.HistoryQuery{AgentID: a, FailuresOnly: true})
	if err != nil || fails.Total != 2 {
		t.Fatalf("failures: %+v %v", fails, err)
	}
	for _, f := range fails.Runs {
		if !f.RolledBack || f.Verdict != api.VerdictNonzeroExit {
			t.Fatalf("failed run not rolled back: %+v", f)
		}
	}
	seen := map[string]bool{}
	q := client.HistoryQuery{AgentID: a, Limit: 2}
	for page := 0; ; page++ {
		l, err := d.client.History(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range l.Runs {
			if seen[r.ID] {
				t.Fatalf("run %s on two pages", r.ID)
			}
			seen[r.ID] = true
		}
		if l.NextCursor == "" {
			break
		}
		q.Cursor = l.NextCursor
	}
	if len(seen) != 5 {
		t.Fatalf("paging saw %d runs, want 5", len(seen))
	}
	// A policy-blocked attempt is in the history too, with no snapshot: its key is
	// there, null, as the seed's clients read every key of an entry.
	if r := d.exec(t, a, "bash", "rm -rf /"); r.Verdict != api.VerdictBlocked {
		t.Fatalf("rm -rf / not blocked: %s", describe(r))
	}
	compat := func(query string) (h struct {
		History []map[string]any `json:"history"`
		Total   int              `json:"total"`
	}) {
		t.Helper()
		resp, err := http.Get(d.url + "/api/vms/" + all.Runs[0].SandboxID + "/history?" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("compat history %s: status %d", query, resp.StatusCode)
		}
		if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
			t.Fatal(err)
		}
		for _, e := range h.History {
			for _, k := range []string{"id", "command", "timestamp", "success", "exit_code", "stdout", "stderr", "snapshot_id"} {
				if _, ok := e[k]; !ok {
					t.Fatalf("compat history entry lacks %s: %v", k, e)
				}
			}
		}
		return h
	}
	if h := compat("limit=2&failures_only=true"); h.Total != 3 || len(h.History) != 2 || h.History[0]["verdict"] != api.VerdictBlocked {
		t.Fatalf("compat history, failures (two failed runs and the blocked attempt), a page of 2: %+v", h)
	}
	h := compat("limit=3")
	if h.Total != 6 || len(h.History) != 3 || h.History[0]["snapshot_id"] != nil || h.History[1]["snapshot_id"] == nil {
		t.Fatalf("compat history, limit 3 (newest: the blocked attempt, then a run with its snapshot): %+v", h)
	}
}

// The compatible snapshot and rollback routes answer with the seed's shapes.
func TestCompatSnapshotRollback(t *testing.T) {
	d := shared(t)
	r := d.exec(t, "compat-snap", "bash", "echo 1 > ~/c.txt; echo ok")
	vm := r.SandboxID
	resp, err := http.Post(d.url+"/api/vms/"+vm+"/snapshots", "application/json", strings.NewReader(`{"name":"cp","description":"before 2"}`))
	if err != nil {
		t.Fatal(err)
	}
	var snap map[string]any
	json.NewDecoder(resp.Body).Decode(&snap)
	resp.Body.Close()
	id, _ := snap["snapshot_id"].(string)
	if resp.StatusCode/100 != 2 || id == "" {
		t.Fatalf("snapshot: %d %v", resp.StatusCode, snap)
	}
	d.exec(t, "compat-snap", "bash", "echo 2 > ~/c.txt")
	resp, err = http.Post(d.url+"/api/vms/"+vm+"/rollback/"+id, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	var rb map[string]any
	json.NewDecoder(resp.Body).Decode(&rb)
	resp.Body.Close()
	if resp.StatusCode != 200 || rb["snapshot_id"] != id || rb["vm_id"] != vm || rb["message"] == "" {
		t.Fatalf("rollback: %d %v", resp.StatusCode, rb)
	}
	wantOK(t, d.exec(t, "compat-snap", "bash", "cat ~/c.txt"), "1")
	resp, _ = http.Post(d.url+"/api/vms/"+vm+"/rollback/snap-nope", "application/json", nil)
	if resp.StatusCode != 404 {
		t.Fatalf("rollback to unknown snapshot: %d", resp.StatusCode)
	}
	resp.Body.Close()
}

// Requests to one busy sandbox queue up to the bound and are refused with 429 past
// it; other agents are not held up.
func TestQueueBound(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "vmexec.yaml")
	os.WriteFile(cfg, []byte("sandbox:\n  queue_depth: 1\n"), 0o644)
	d := startDaemon(t, daemonOpts{extra: []string{"--config", cfg, "--pool-size", "0"}})
	d.client.MaxRetries = -1
	warm := d.exec(t, "q", "bash", "echo warm")
	wantOK(t, warm, "warm")
	var wg sync.WaitGroup
	results := make([]error, 3)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, results[i] = d.client.Exec(context.Background(), api.ExecRequest{AgentID: "q", Language: "bash", Code: "sleep 3"})
		}(i)
		if i == 0 { // the others arrive while it runs: one queues, one is refused
			waitUntil(t, "the first run is in flight", func() bool {
				sb, err := d.client.GetSandbox(bg(t), warm.SandboxID)
				return err == nil && sb.Status == "busy"
			})
		}
	}
	other := d.exec(t, "q-other", "bash", "echo free")
	wg.Wait()
	wantOK(t, other, "free")
	busy := 0
	for _, err := range results {
		if isStatus(err, http.StatusTooManyRequests) {
			busy++
		} else if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if busy != 1 {
		t.Fatalf("%d requests refused as busy, want 1 (queue depth 1): %v", busy, results)
	}
}

// Fault 12: wherever agent_id is given, it is checked: another agent's sandbox cannot
// be deleted (403), its runs cannot be read (404 for one run, 403 for its sandbox's
// history), its policy cannot be rewritten (403); and an agent whose sandbox was
// deleted is told on its next run (sandbox_recreated).
func TestOwnershipWhereverAgentIDIsGiven(t *testing.T) {
	d := shared(t)
	owner := "owner-12"
	r := d.exec(t, owner, "bash", "echo mine > ~/f.txt; echo ok")
	wantOK(t, r, "ok")
	call := func(method, path, body string) int {
		t.Helper()
		req, err := http.NewRequestWithContext(bg(t), method, d.url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		method, path, body string
		want               int
	}{
		{"DELETE", "/v1/sandboxes/" + r.SandboxID + "?agent_id=intruder", "", http.StatusForbidden},
		{"GET", "/v1/runs/" + r.ExecutionID + "?agent_id=intruder", "", http.StatusNotFound},
		{"GET", "/v1/runs/" + r.ExecutionID + "?agent_id=" + owner, "", http.StatusOK},
		{"GET", "/v1/history?agent_id=intruder&sandbox_id=" + r.SandboxID, "", http.StatusForbidden},
		{"GET", "/api/vms/" + r.SandboxID + "/history?agent_id=intruder", "", http.StatusForbidden},
		{"PUT", "/v1/agents/" + owner + "/policy?agent_id=intruder", `{"auto_rollback_on_failure":false}`, http.StatusForbidden},
		{"GET", "/v1/agents/" + owner + "/policy?agent_id=intruder", "", http.StatusForbidden},
		{"DELETE", "/v1/sandboxes/" + r.SandboxID + "?agent_id=" + owner, "", http.StatusNoContent},
	} {
		if got := call(c.method, c.path, c.body); got != c.want {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, got, c.want)
		}
	}
	next := d.exec(t, owner, "bash", "cat ~/f.txt 2>/dev/null; echo ok")
	if !next.SandboxRecreated || next.SandboxID == r.SandboxID {
		t.Fatalf("the run after the owner's sandbox was deleted: %s", describe(next))
	}
}

// Fault 5: past its snapshot byte budget a sandbox's run that needs a new pre-run
// snapshot is refused with 507 naming the budget, instead of filling the disk.
func TestSnapshotBudgetRefuses(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "vmexec.yaml")
	os.WriteFile(cfg, []byte("sandbox:\n  sandbox_snapshot_bytes: 1\n"), 0o644)
	d := startDaemon(t, daemonOpts{extra: []string{"--config", cfg, "--pool-size", "0"}})
	d.client.MaxRetries = -1
	a := "budget"
	r := d.exec(t, a, "bash", "echo one")
	wantOK(t, r, "one")
	// The first snapshot fits (the sandbox had none); it is the current one, which is
	// never pruned, so the next snapshot has no room.
	_, err := d.client.Exec(bg(t), api.ExecRequest{AgentID: a, Language: "bash", Code: "echo two"})
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != http.StatusInsufficientStorage || !strings.Contains(ce.Message, "1 byte budget") {
		t.Fatalf("a run past the snapshot budget: %v, want 507 naming the budget", err)
	}
	if _, err := d.client.CreateSnapshot(bg(t), r.SandboxID, api.CreateSnapshotRequest{AgentID: a, Pinned: true}); !isStatus(err, http.StatusInsufficientStorage) {
		t.Fatalf("a pinned snapshot past the budget: %v, want 507", err)
	}
}
