package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
)

// The template snapshot (internal/sandbox/pool.go): one warmed sandbox saved once as a
// shared image, which pool sandboxes and new agents' sandboxes are restored from.

// sharedImages lists the shared images in the daemon's gVisor image directory.
func sharedImages(t *testing.T, d *daemon) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(d.dataDir, "gvisor", "images"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "shared-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func waitTemplateSnapshot(t *testing.T, d *daemon) {
	t.Helper()
	waitUntil(t, "the template snapshot is settled", func() bool {
		l := d.log.String()
		return strings.Contains(l, "template snapshot ready") || strings.Contains(l, "template snapshot found") || strings.Contains(l, "no template snapshot")
	})
	if strings.Contains(d.log.String(), "no template snapshot") {
		t.Fatalf("the template snapshot was not made; log:\n%s", tail(d.log.String(), 40))
	}
}

// The template snapshot is made once: a second daemon on the same data dir finds it
// and does not make it again, and it is the only shared image (one of an older build
// that no snapshot names is removed).
func TestTemplateSnapshotMadeOnce(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, daemonOpts{dataDir: dir, extra: []string{"--pool-size", "1"}})
	waitTemplateSnapshot(t, d)
	first := sharedImages(t, d)
	if len(first) != 1 {
		t.Fatalf("shared images after the first start: %v, want one", first)
	}
	wantOK(t, d.exec(t, "once", "python", "print(6*7)"), "42")
	d.stop()
	// A template snapshot of an older build that no snapshot names: removed at start.
	old := filepath.Join(dir, "gvisor", "images", "shared-0123456789abcdef01234567")
	if err := os.MkdirAll(old, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(old, "checkpoint.img"), []byte("old"), 0o600)

	d2 := startDaemon(t, daemonOpts{dataDir: dir, extra: []string{"--pool-size", "1"}})
	waitTemplateSnapshot(t, d2)
	if strings.Contains(d2.log.String(), "making the template snapshot") {
		t.Fatalf("the second start made the template snapshot again; log:\n%s", tail(d2.log.String(), 30))
	}
	if got := sharedImages(t, d2); len(got) != 1 || got[0] != first[0] {
		t.Fatalf("shared images after the second start: %v, want %v", got, first)
	}
	wantOK(t, d2.exec(t, "twice", "python", "print(6*7)"), "42")
}

// A new agent's first run takes no checkpoint of its own: its pre-run snapshot is the
// shared image (no new image on disk), the python zygote is ready in it (the run is
// forked from it), and a failed first run rolls back to it.
func TestFirstRunFromTemplateSnapshot(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "1"}})
	waitTemplateSnapshot(t, d)
	ctx := bg(t)

	// Forked from the zygote: a forked run's /proc/self/cmdline is the zygote's.
	r := d.execReq(t, api.ExecRequest{AgentID: "first-ok", Language: "python",
		Code: "print('python-zygote' in open('/proc/self/cmdline').read())", History: &api.ExecPolicy{SnapshotOnFailure: ptr(false)}})
	wantOK(t, r, "True")
	l, err := d.client.ListSnapshots(ctx, r.SandboxID, "first-ok")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Snapshots) == 0 || l.Snapshots[0].ID != r.PreSnapshotID || l.Snapshots[0].SizeBytes != 0 || l.Snapshots[0].Kind != api.SnapshotPreRun {
		t.Fatalf("snapshots %+v: want the first pre-run snapshot %s to be the shared template snapshot (pre_run, 0 bytes)", l.Snapshots, r.PreSnapshotID)
	}

	// A failed first run: rolled back to the shared image, with nothing checkpointed.
	r = d.execReq(t, api.ExecRequest{AgentID: "first-fail", Language: "bash", Code: "echo junk > ~/junk.txt; exit 3",
		History: &api.ExecPolicy{SnapshotOnFailure: ptr(false)}})
	if r.Verdict != api.VerdictNonzeroExit || !r.RolledBack || r.RestoredSnapshotID != r.PreSnapshotID {
		t.Fatalf("failed first run: %s pre=%s restored=%s", describe(r), r.PreSnapshotID, r.RestoredSnapshotID)
	}
	l, err = d.client.ListSnapshots(ctx, r.SandboxID, "first-fail")
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Snapshots) != 1 || l.Snapshots[0].ID != r.PreSnapshotID || l.Snapshots[0].SizeBytes != 0 {
		t.Fatalf("snapshots after a failed first run: %+v, want only the shared one", l.Snapshots)
	}
	wantOK(t, d.exec(t, "first-fail", "bash", "test -e ~/junk.txt && echo kept || echo gone"), "gone")
}

// The shared image belongs to no sandbox: neither retention (max_snapshots) nor
// deleting a sandbox that started from it removes it, and new agents still start
// from it afterwards.
func TestSharedImageSurvivesRetentionAndDeletion(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "1"}})
	waitTemplateSnapshot(t, d)
	ctx := bg(t)
	img := sharedImages(t, d)
	if len(img) != 1 {
		t.Fatalf("shared images %v, want one", img)
	}
	a := "retained"
	pol := &api.ExecPolicy{MaxSnapshots: ptr(1)}
	var r *api.ExecResult
	for i := 0; i < 4; i++ { // each run's pre-run snapshot pushes the oldest out
		r = d.execReq(t, api.ExecRequest{AgentID: a, Language: "bash", Code: "echo $RANDOM >> ~/log; echo ok", History: pol})
		wantOK(t, r, "ok")
	}
	waitUntil(t, "retention removed the template snapshot's record", func() bool {
		l, err := d.client.ListSnapshots(ctx, r.SandboxID, a)
		if err != nil {
			return false
		}
		for _, s := range l.Snapshots {
			if s.SizeBytes == 0 {
				return false
			}
		}
		return true
	})
	if got := sharedImages(t, d); len(got) != 1 || got[0] != img[0] {
		t.Fatalf("after retention: shared images %v, want %v", got, img)
	}
	if err := d.client.DeleteSandbox(ctx, r.SandboxID); err != nil {
		t.Fatal(err)
	}
	// A sandbox deleted while its record of the shared image is still there.
	r2 := d.exec(t, "deleted-early", "bash", "echo ok")
	wantOK(t, r2, "ok")
	if err := d.client.DeleteSandbox(ctx, r2.SandboxID); err != nil {
		t.Fatal(err)
	}
	if got := sharedImages(t, d); len(got) != 1 || got[0] != img[0] {
		t.Fatalf("after deleting sandboxes: shared images %v, want %v", got, img)
	}
	// Still usable: a new agent's failed first run rolls back to it.
	r3 := d.execReq(t, api.ExecRequest{AgentID: "after", Language: "bash", Code: "touch ~/x; exit 1"})
	if !r3.RolledBack {
		t.Fatalf("first run after deletions: %s", describe(r3))
	}
	wantOK(t, d.exec(t, "after", "bash", "test -e ~/x && echo kept || echo gone"), "gone")
}

// What must differ between sandboxes restored from one image differs: the kernel's
// random bytes, python's random, uuid4 and temporary names — for two agents' sandboxes
// restored from the template snapshot, and for two forks of one snapshot. (The
// hostname is "sandbox" in every sandbox, restored or booted, so it is not compared.)
func TestRestoresOfOneImageDiffer(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "2"}})
	waitTemplateSnapshot(t, d)
	ctx := bg(t)
	const py = "import os, random, uuid, tempfile\n" +
		"print(os.urandom(16).hex(), random.random(), uuid.uuid4(), os.path.basename(tempfile.mktemp()), tempfile.mkdtemp())"
	const sh = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
	probe := func(req api.ExecRequest) []string {
		t.Helper()
		req.Language, req.Code = "python", py
		p := d.execReq(t, req)
		req.Language, req.Code = "bash", sh
		b := d.execReq(t, req)
		if p.Verdict != api.VerdictOK || b.Verdict != api.VerdictOK {
			t.Fatalf("probe: %s / %s", describe(p), describe(b))
		}
		return append(strings.Fields(p.Stdout), strings.TrimSpace(b.Stdout))
	}
	names := []string{"os.urandom", "random.random", "uuid4", "tempfile.mktemp", "tempfile.mkdtemp", "/dev/urandom"}
	differ := func(what string, a, b []string) {
		t.Helper()
		if len(a) != len(names) || len(b) != len(names) {
			t.Fatalf("%s: probe output %q / %q", what, a, b)
		}
		for i, n := range names {
			if a[i] == b[i] {
				t.Errorf("%s: %s is the same in both: %s", what, n, a[i])
			}
		}
	}
	// Two new agents: both restored from the template snapshot.
	a := probe(api.ExecRequest{AgentID: "differ-a"})
	b := probe(api.ExecRequest{AgentID: "differ-b"})
	differ("two restores of the template snapshot", a, b)

	// Two forks of one snapshot.
	r := d.exec(t, "differ-src", "bash", "echo ok")
	sn, err := d.client.CreateSnapshot(ctx, r.SandboxID, api.CreateSnapshotRequest{AgentID: "differ-src"})
	if err != nil {
		t.Fatal(err)
	}
	var forks [][]string
	for i := 0; i < 2; i++ {
		f, err := d.client.Fork(ctx, sn.ID, api.ForkRequest{AgentID: "differ-src"})
		if err != nil {
			t.Fatal(err)
		}
		forks = append(forks, probe(api.ExecRequest{AgentID: "differ-src", SandboxID: f.ID}))
	}
	differ("two forks of one snapshot", forks[0], forks[1])
}
