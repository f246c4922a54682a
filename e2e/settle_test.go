package e2e

import (
	"testing"

	"github.com/vmexec/vmexec/api"
)

// A run that changed nothing keeps its pre-run snapshot as the state's image (no
// checkpoint after it, none before the next), and every kind of change still gets
// its own: a file in the home, a file outside the change set's areas, a process left
// running (state held in memory only), a System V shared memory segment. Each change
// is checked the way a user would lose it: a failing run rolls back to its pre-run
// snapshot (a real restore: it changed a file), and the change must still be there
// afterwards.
func TestUnchangedRunsKeepTheirSnapshot(t *testing.T) {
	d := shared(t)
	a := "settle"
	durable := func(lang, code string) *api.ExecResult {
		t.Helper()
		return d.execReq(t, api.ExecRequest{AgentID: a, Language: lang, Code: code, Durable: true})
	}
	wantOK(t, durable("python", "print(1)"), "1") // the sandbox's first run: its state is new
	first := durable("python", "print(2)")
	wantOK(t, first, "2")
	snaps := func() int {
		l, err := d.client.ListSnapshots(bg(t), first.SandboxID, a)
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Snapshots)
	}
	n := snaps()
	pre := ""
	for _, code := range []string{"print(3)", "import json; json.dumps({'a': [1]}); x = 42", "import os; print(len(os.listdir('/')) > 0)"} {
		r := durable("python", code)
		if r.Verdict != api.VerdictOK || !r.Durable || pre != "" && r.PreSnapshotID != pre {
			t.Fatalf("run %q: %s durable=%v pre=%s, want %s", code, describe(r), r.Durable, r.PreSnapshotID, pre)
		}
		pre = r.PreSnapshotID
	}
	if got := snaps(); got != n {
		t.Fatalf("%d snapshots after three runs that changed nothing, want %d (no new checkpoint)", got, n)
	}
	// A failed run that changed nothing is rolled back with nothing to restore, and
	// its failed state (snapshot_on_failure, on by default) is the pre-run image: no
	// checkpoint is taken for it.
	if r := durable("python", "import sys; sys.exit(3)"); !r.RolledBack || r.RestoredSnapshotID != r.PreSnapshotID || r.FailureSnapshotID != r.PreSnapshotID {
		t.Fatalf("failed run: %s rolled_back=%v pre=%s restored=%s failure=%s", describe(r), r.RolledBack, r.PreSnapshotID, r.RestoredSnapshotID, r.FailureSnapshotID)
	}
	if got := snaps(); got != n {
		t.Fatalf("%d snapshots after a failed run that changed nothing, want %d (no failure checkpoint)", got, n)
	}
	wantOK(t, durable("python", "print(4)"), "4")

	// Each change stays, and keeps every later run from being settled: so the changes
	// only the agent's look at the sandbox sees (IPC objects) come before the file
	// outside the change set and the process left running, which would hide them.
	changes := []struct{ name, lang, change, check string }{
		{"home file", "bash", "echo kept > ~/f.txt", "cat ~/f.txt"},
		// gVisor implements mq_open but not mq_send (ENOSYS): the queue is the state.
		{"POSIX message queue", "python",
			"import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nq = libc.mq_open(b'/vmexec-e2e', os.O_CREAT | os.O_RDWR, 0o600, None)\n" +
				"assert q >= 0, os.strerror(ctypes.get_errno())\nlibc.mq_send(q, b'kept', 4, 0)",
			"import ctypes, os\nlibc = ctypes.CDLL(None)\nprint('kept' if libc.mq_open(b'/vmexec-e2e', os.O_RDWR) >= 0 else 'lost')"},
		{"System V shared memory", "python",
			"import ctypes\nlibc = ctypes.CDLL(None)\nassert libc.shmget(4242, 4096, 0o1600) >= 0",
			"import ctypes\nlibc = ctypes.CDLL(None)\nprint('kept' if libc.shmget(4242, 0, 0) >= 0 else 'lost')"},
		{"file outside the change set's areas", "bash", "echo kept > /var/tmp/f.txt", "cat /var/tmp/f.txt"},
		{"process left running", "bash", "nohup sleep 1000 >/dev/null 2>&1 &",
			"for f in /proc/[0-9]*/comm; do cat $f; done | grep -qx sleep && echo kept"},
	}
	for _, c := range changes {
		t.Run(c.name, func(t *testing.T) {
			if r := durable(c.lang, c.change); r.Verdict != api.VerdictOK {
				t.Fatalf("change: %s", describe(r))
			}
			// A failing run that changes a file, so that its rollback restores the image.
			if r := durable("bash", "echo junk > ~/junk.txt; exit 1"); !r.RolledBack {
				t.Fatalf("failing run not rolled back: %s", describe(r))
			}
			wantOK(t, durable(c.lang, c.check), "kept")
			wantOK(t, durable("bash", "test -e ~/junk.txt || echo undone"), "undone")
		})
	}
}
