package e2e

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

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
	time.Sleep(1500 * time.Millisecond)
	d.kill()
	// Leave a half-written snapshot image, as a crash during a checkpoint would.
	half := filepath.Join(dir, "snapshots", r.SandboxID, "snap-halfwritten.tmp")
	os.MkdirAll(half, 0o700)
	os.WriteFile(filepath.Join(half, "checkpoint.img"), []byte("partial"), 0o600)

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
	if h.Runs[0].Status != "error" {
		t.Fatalf("the interrupted run should be closed as an error: %+v", h.Runs[0])
	}
	list, err := d.client.ListSnapshots(ctx, r.SandboxID, a)
	if err != nil {
		t.Fatal(err)
	}
	var recorded, onDisk []string
	for _, s := range list.Snapshots {
		recorded = append(recorded, s.ID)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "snapshots", r.SandboxID))
	for _, e := range ents {
		onDisk = append(onDisk, e.Name())
	}
	sort.Strings(recorded)
	sort.Strings(onDisk)
	if len(recorded) != len(onDisk) {
		t.Fatalf("images on disk %v, recorded %v", onDisk, recorded)
	}
	for i := range recorded {
		if recorded[i] != onDisk[i] {
			t.Fatalf("images on disk %v, recorded %v", onDisk, recorded)
		}
	}
	// The agent resumes from the snapshot taken before the interrupted run.
	wantOK(t, d.exec(t, a, "bash", "cat ~/f.txt"), "before")
}
