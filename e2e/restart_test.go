package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

// waitUntil polls cond (instead of sleeping for ordering); it fails the test after 2
// minutes.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRunning waits until agent has a run in flight.
func waitRunning(t *testing.T, d *daemon, agent string) {
	t.Helper()
	waitUntil(t, "a run of "+agent+" is in flight", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h, err := d.client.History(ctx, client.HistoryQuery{AgentID: agent})
		return err == nil && len(h.Runs) > 0 && h.Runs[0].Status == "running"
	})
}

// waitSnapshots waits until sandbox has more than n snapshots (the background
// snapshot after a run).
func waitSnapshots(t *testing.T, d *daemon, sandbox, agent string, n int) {
	t.Helper()
	waitUntil(t, "sandbox "+sandbox+" has more than "+strconv.Itoa(n)+" snapshots", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l, err := d.client.ListSnapshots(ctx, sandbox, agent)
		return err == nil && len(l.Snapshots) > n
	})
}

// Fault 1: a rollback the API acknowledged survives a SIGKILL: after the restart the
// sandbox is in the rolled-back state, not the newer one it was rolled back from.
func TestRollbackSurvivesSIGKILL(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	ctx := bg(t)
	a := "rb-crash"
	r := d.exec(t, a, "bash", "echo v1 > ~/f.txt; echo ok")
	wantOK(t, r, "ok")
	sn, err := d.client.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: a})
	if err != nil {
		t.Fatal(err)
	}
	l, _ := d.client.ListSnapshots(ctx, r.SandboxID, a)
	wantOK(t, d.exec(t, a, "bash", "echo v2 > ~/f.txt; echo ok"), "ok")
	waitSnapshots(t, d, r.SandboxID, a, len(l.Snapshots)) // the v2 state is saved too
	if _, err := d.client.Rollback(ctx, r.SandboxID, api.RollbackRequest{AgentID: a, SnapshotID: sn.ID}); err != nil {
		t.Fatal(err)
	}
	d.kill()
	d.start()
	got := d.exec(t, a, "bash", "cat ~/f.txt")
	wantOK(t, got, "v1")
	if got.SandboxRecreated || got.StateRestoredFrom != "" {
		t.Fatalf("after rollback and SIGKILL: %s", describe(got))
	}
}

// Fault 2: durable: true saves the run's state before the answer, so a SIGKILL right
// after it loses nothing; without it, a run whose state was not saved yet is either
// kept or reported (state_restored_from), never lost silently.
func TestCommitSurvivesSIGKILL(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	a := "commit-crash"
	first := d.exec(t, a, "bash", "echo base > ~/f.txt; echo ok")
	wantOK(t, first, "ok")
	waitSnapshots(t, d, first.SandboxID, a, 1)
	dur := d.execReq(t, api.ExecRequest{AgentID: a, Language: "bash", Code: "echo durable > ~/f.txt; echo ok", Durable: true})
	wantOK(t, dur, "ok")
	if !dur.Durable {
		t.Fatalf("durable run not saved: %s %v", describe(dur), dur.Warnings)
	}
	d.kill()
	d.start()
	kept := d.exec(t, a, "bash", "cat ~/f.txt")
	wantOK(t, kept, "durable")

	// A large memory makes the background snapshot slow, so the kill lands before it.
	l, _ := d.client.ListSnapshots(bg(t), first.SandboxID, a)
	big := d.exec(t, a, "bash", "head -c 150M /dev/urandom > /tmp/big; echo lost > ~/f.txt; echo ok")
	d.kill()
	d.start()
	got := d.exec(t, a, "bash", "cat ~/f.txt")
	switch strings.TrimSpace(got.Stdout) {
	case "lost":
		t.Logf("the background snapshot won the race (%d snapshots before)", len(l.Snapshots))
		if got.StateRestoredFrom != "" {
			t.Fatalf("state kept but reported lost: %s", describe(got))
		}
	case "durable":
		if got.StateRestoredFrom != kept.ExecutionID { // the last run whose state was saved
			t.Fatalf("run %s's state was lost silently: %s state_restored_from=%q", big.ExecutionID, describe(got), got.StateRestoredFrom)
		}
		if !strings.Contains(strings.Join(got.Warnings, " "), big.ExecutionID) {
			t.Fatalf("the warning does not name the lost run %s: %v", big.ExecutionID, got.Warnings)
		}
	default:
		t.Fatalf("after SIGKILL: %s", describe(got))
	}
}

// Fault 4: a fork killed by a crash before its first run comes back with its source's
// state, not empty.
func TestForkSurvivesSIGKILL(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	ctx := bg(t)
	a := "fork-crash"
	r := d.exec(t, a, "bash", "echo src > ~/f.txt; echo ok")
	wantOK(t, r, "ok")
	sn, err := d.client.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: a})
	if err != nil {
		t.Fatal(err)
	}
	fork, err := d.client.Fork(ctx, sn.ID, api.ForkRequest{AgentID: a})
	if err != nil {
		t.Fatal(err)
	}
	d.kill()
	d.start()
	got := d.execReq(t, api.ExecRequest{AgentID: a, SandboxID: fork.ID, Language: "bash", Code: "cat ~/f.txt"})
	wantOK(t, got, "src")
	if got.SandboxRecreated {
		t.Fatalf("fork after SIGKILL: %s", describe(got))
	}
}

// Fault 3: SIGTERM during a long run: the daemon exits within its shutdown budget
// (30 s) instead of waiting for the run; the run's caller gets 503, its row says it
// was interrupted, and after a restart the state is the pre-run one.
func TestSIGTERMDuringLongRun(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	a := "sigterm"
	wantOK(t, d.exec(t, a, "bash", "echo before > ~/f.txt; echo ok"), "ok")
	errc := make(chan error, 1)
	once := client.New(d.url)
	once.MaxRetries = -1 // the 503 itself is what the test reads
	go func() {
		_, err := once.Exec(context.Background(), api.ExecRequest{AgentID: a, Language: "bash",
			Code: "echo during > ~/f.txt; sleep 120", Limits: api.Limits{TimeoutMS: 180_000}})
		errc <- err
	}()
	waitRunning(t, d, a)
	exited := d.signal(syscall.SIGTERM)
	const budget = 30 * time.Second
	select {
	case <-exited:
	case <-time.After(budget + 15*time.Second): // the budget plus process start-up slack
		t.Fatalf("the daemon did not exit within its %v shutdown budget", budget)
	}
	d.kill() // reaps it
	var ce *client.Error
	if err := <-errc; !errors.As(err, &ce) || ce.Status != http.StatusServiceUnavailable || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("the interrupted run's caller got %v, want 503 saying interrupted", err)
	}
	d.start()
	ctx := bg(t)
	h, err := d.client.History(ctx, client.HistoryQuery{AgentID: a})
	if err != nil || len(h.Runs) != 2 {
		t.Fatalf("history: %+v %v", h, err)
	}
	if run := h.Runs[0]; run.Status != "error" || !run.RolledBack || !strings.Contains(fmt.Sprint(run.Metadata["error"]), "interrupted") {
		t.Fatalf("the interrupted run's row: %+v", run)
	}
	wantOK(t, d.exec(t, a, "bash", "cat ~/f.txt"), "before")
}

// Fault 15: an idle sandbox killed from outside is not blamed on the next run: the
// run finds it dead, restores it from its snapshot and says so.
func TestIdleSandboxKilledFromOutside(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	a := "outside-kill"
	r := d.exec(t, a, "bash", "echo kept > ~/f.txt; echo ok")
	wantOK(t, r, "ok")
	waitSnapshots(t, d, r.SandboxID, a, 1)
	procs := runscProcs(r.SandboxID + "-")
	if len(procs) == 0 {
		t.Fatal("no runsc process found for the sandbox")
	}
	for _, p := range procs {
		pid, _ := strconv.Atoi(strings.SplitN(p, ":", 2)[0])
		syscall.Kill(pid, syscall.SIGKILL)
	}
	waitUntil(t, "the sandbox's processes are gone", func() bool { return len(runscProcs(r.SandboxID+"-")) == 0 })
	got := d.exec(t, a, "bash", "cat ~/f.txt")
	wantOK(t, got, "kept")
	if got.SandboxLost || !strings.Contains(strings.Join(got.Warnings, " "), "died while idle") {
		t.Fatalf("run after an outside kill: %s warnings=%v", describe(got), got.Warnings)
	}
}

// History and snapshots survive a daemon restart: the agent's sandbox resumes with
// its files, and a rollback to a snapshot taken before the restart works.
func TestStateSurvivesRestart(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	ctx := bg(t)
	a := "survivor"
	r := d.exec(t, a, "bash", "echo v1 > ~/f.txt; echo ok")
	wantOK(t, r, "ok")
	sn, err := d.client.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: a, Name: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	wantOK(t, d.exec(t, a, "bash", "echo v2 > ~/f.txt; echo ok"), "ok")
	d.stop()
	d.start()

	h, err := d.client.History(ctx, client.HistoryQuery{AgentID: a})
	if err != nil || h.Total != 2 {
		t.Fatalf("history after restart: %+v %v", h, err)
	}
	sb, err := d.client.GetSandbox(ctx, r.SandboxID)
	if err != nil || sb.Status != "suspended" || sb.AgentID != a {
		t.Fatalf("sandbox after restart: %+v %v", sb, err)
	}
	r2 := d.exec(t, a, "bash", "cat ~/f.txt")
	wantOK(t, r2, "v2")
	if r2.SandboxID != r.SandboxID || r2.SandboxRecreated {
		t.Fatalf("the agent did not get its sandbox back: %s", describe(r2))
	}
	if _, err := d.client.Rollback(ctx, r.SandboxID, api.RollbackRequest{AgentID: a, SnapshotID: sn.ID}); err != nil {
		t.Fatalf("rollback to a snapshot from before the restart: %v", err)
	}
	wantOK(t, d.exec(t, a, "bash", "cat ~/f.txt"), "v1")
}

// A daemon killed in the middle of a run leaves, after restart, no half-written
// history rows, no orphan sandboxes and no orphan snapshot images.
func TestCrashMidRun(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, daemonOpts{dataDir: dir, extra: []string{"--pool-size", "0"}})
	a := "crash"
	r := d.exec(t, a, "bash", "echo before > ~/f.txt; echo ok")
	wantOK(t, r, "ok")
	go d.client.Exec(context.Background(), api.ExecRequest{AgentID: a, Language: "bash", Code: "echo during > ~/f.txt; sleep 30"})
	waitRunning(t, d, a)
	d.kill()
	// Leave a half-written snapshot image, as a crash during a checkpoint would, and a
	// whole one without a record, as a crash between a checkpoint and its record would.
	images := filepath.Join(dir, "gvisor", "images") // the gVisor backend's images
	for _, img := range []string{"img-halfwritten.tmp", "img-unrecorded"} {
		os.MkdirAll(filepath.Join(images, img), 0o700)
		os.WriteFile(filepath.Join(images, img, "checkpoint.img"), []byte("partial"), 0o600)
	}

	d.start()
	ctx := bg(t)
	if procs := runscProcs(r.SandboxID + "-"); len(procs) > 0 {
		t.Fatalf("sandbox of the crashed daemon still running: %v", procs)
	}
	h, err := d.client.History(ctx, client.HistoryQuery{AgentID: a})
	if err != nil || h.Total != 2 {
		t.Fatalf("history: %+v %v", h, err)
	}
	for _, run := range h.Runs {
		if run.Status == "running" {
			t.Fatalf("half-written row after the crash: %+v", run)
		}
	}
	if h.Runs[0].Status != "error" || h.Runs[0].ExitCode != -1 {
		t.Fatalf("the interrupted run should be closed as an error with exit code -1 (it never exited): %+v", h.Runs[0])
	}
	list, err := d.client.ListSnapshots(ctx, r.SandboxID, a)
	if err != nil {
		t.Fatal(err)
	}
	// Images are the backend's (their names are its references, not snapshot ids):
	// one per recorded snapshot, the crash's leftovers gone.
	var recorded, onDisk []string
	for _, s := range list.Snapshots {
		recorded = append(recorded, s.ID)
	}
	ents, _ := os.ReadDir(images)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "shared-") { // the template snapshot is no sandbox's
			onDisk = append(onDisk, e.Name())
		}
	}
	sort.Strings(onDisk)
	if len(recorded) == 0 || len(recorded) != len(onDisk) {
		t.Fatalf("images on disk %v, recorded snapshots %v", onDisk, recorded)
	}
	for _, name := range onDisk {
		if name == "img-halfwritten.tmp" || name == "img-unrecorded" {
			t.Fatalf("the crash's leftover image %s is still on disk: %v", name, onDisk)
		}
	}
	// The agent resumes from the snapshot taken before the interrupted run.
	wantOK(t, d.exec(t, a, "bash", "cat ~/f.txt"), "before")
}
