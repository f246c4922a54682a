package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/testenv"
)

// vmexec runs the CLI binary with args (and env added to this process's) and returns
// its stdout, stderr and exit code.
func vmexec(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(testenv.Vmexec(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return o.String(), e.String(), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("vmexec %v: %v", args, err)
	}
	return o.String(), e.String(), 0
}

// mustVmexec runs `vmexec --url d.url args...` and fails the test unless it exits 0.
func mustVmexec(t *testing.T, d *daemon, args ...string) string {
	t.Helper()
	out, errOut, code := vmexec(t, nil, append([]string{"--url", d.url}, args...)...)
	if code != 0 {
		t.Fatalf("vmexec %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// lineWith returns the first line of out containing s, or "".
func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// The transaction commands an operator types — snapshot, snapshot list, rollback (to a
// snapshot and to the last success), fork, history, sandboxes rm — do what they say to
// the sandbox's files, as the real binary against a real daemon.
func TestCLICommands(t *testing.T) {
	d := shared(t)
	a := "cli-cmds"
	run := func(code string) *api.ExecResult { return d.exec(t, a, "bash", code) }
	first := run("echo 1 > ~/v.txt; echo ok")
	wantOK(t, first, "ok")
	sb := first.SandboxID

	// snapshot --name prints the new snapshot's id, and snapshot list shows it named.
	snap := strings.TrimSpace(mustVmexec(t, d, "snapshot", sb, "--name", "cli-v1"))
	if !strings.HasPrefix(snap, "snap-") || strings.ContainsAny(snap, " \n") {
		t.Fatalf("snapshot printed %q, want just the snapshot id", snap)
	}
	out := mustVmexec(t, d, "snapshot", "list", sb)
	if l := lineWith(out, snap); !strings.Contains(l, "cli-v1") || !strings.Contains(l, api.SnapshotManual) {
		t.Fatalf("snapshot list lacks %s as a named manual snapshot:\n%s", snap, out)
	}

	// rollback SANDBOX SNAPSHOT brings the file back.
	wantOK(t, run("echo 2 > ~/v.txt; cat ~/v.txt"), "2")
	if out := mustVmexec(t, d, "rollback", sb, snap); !strings.Contains(out, snap) {
		t.Fatalf("rollback output does not name the snapshot: %q", out)
	}
	wantOK(t, run("cat ~/v.txt"), "1")

	// rollback --last-success undoes a failed run that was kept (auto-rollback off).
	good := run("echo good > ~/v.txt; echo ok")
	wantOK(t, good, "ok")
	off := false
	bad := d.execReq(t, api.ExecRequest{AgentID: a, Language: "bash", Code: "echo bad > ~/v.txt; exit 3",
		History: &api.ExecPolicy{AutoRollbackOnFailure: &off}})
	if bad.Verdict != api.VerdictNonzeroExit || bad.RolledBack || bad.PreSnapshotID == "" {
		t.Fatalf("kept failure: %s", describe(bad))
	}
	if out := mustVmexec(t, d, "rollback", sb, "--last-success"); !strings.Contains(out, bad.PreSnapshotID) {
		t.Fatalf("rollback --last-success restored %q, want the failed run's pre-snapshot %s", out, bad.PreSnapshotID)
	}
	wantOK(t, run("cat ~/v.txt"), "good")
	if _, errOut, code := vmexec(t, nil, "--url", d.url, "rollback", sb); code == 0 || !strings.Contains(errOut, "--last-success") {
		t.Fatalf("rollback without a target: exit %d %q, want an error naming --last-success", code, errOut)
	}

	// fork SNAPSHOT prints a new sandbox that has the snapshot's file.
	fork := strings.TrimSpace(mustVmexec(t, d, "fork", snap))
	if !strings.HasPrefix(fork, "sb-") || fork == sb {
		t.Fatalf("fork printed %q, want a new sandbox id", fork)
	}
	wantOK(t, d.execReq(t, api.ExecRequest{AgentID: a, SandboxID: fork, Language: "bash", Code: "cat ~/v.txt"}), "1")

	// history --agent lists this agent's runs and no one else's; --failures only the failure.
	other := d.exec(t, a+"-other", "bash", "true")
	out = mustVmexec(t, d, "history", "--agent", a)
	for _, id := range []string{first.ExecutionID, good.ExecutionID, bad.ExecutionID} {
		if lineWith(out, id) == "" {
			t.Fatalf("history --agent %s lacks run %s:\n%s", a, id, out)
		}
	}
	if strings.Contains(out, other.ExecutionID) {
		t.Fatalf("history --agent %s shows another agent's run %s:\n%s", a, other.ExecutionID, out)
	}
	out = mustVmexec(t, d, "history", "--agent", a, "--failures")
	if l := lineWith(out, bad.ExecutionID); !strings.Contains(l, api.VerdictNonzeroExit) || strings.Contains(out, good.ExecutionID) {
		t.Fatalf("history --failures: want %s as nonzero_exit and not %s:\n%s", bad.ExecutionID, good.ExecutionID, out)
	}

	// sandboxes rm destroys the fork: gone from the list, the original stays.
	if out := strings.TrimSpace(mustVmexec(t, d, "sandboxes", "rm", fork)); out != fork {
		t.Fatalf("sandboxes rm printed %q, want %s", out, fork)
	}
	out = mustVmexec(t, d, "sandboxes", "list")
	if strings.Contains(out, fork) || !strings.Contains(out, sb) {
		t.Fatalf("after rm %s, sandboxes list:\n%s", fork, out)
	}
}

// The host tools: `template list` shows the built template as current, and `doctor`
// passes on this host and reports the daemon it is pointed at (and a dead one as such).
func TestCLIHostTools(t *testing.T) {
	d := shared(t)
	tpl := testenv.Template(t)
	out, errOut, code := vmexec(t, nil, "template", "list", "--data-dir", testenv.DataDir())
	if l := lineWith(out, tpl.Name+"-"+tpl.Hash); code != 0 || !strings.Contains(l, "yes") || !strings.Contains(l, tpl.RootFS) {
		t.Fatalf("template list: exit %d, want %s-%s current at %s:\n%s%s", code, tpl.Name, tpl.Hash, tpl.RootFS, out, errOut)
	}

	// The host as the daemon sees it: its data dir, runsc and guest agent.
	env := []string{"VMEXEC_DATA_DIR=" + testenv.DataDir(), "VMEXEC_RUNSC=" + testenv.Runsc(t), "VMEXEC_AGENT=" + testenv.Agent(t)}
	for _, c := range []struct {
		name, url string
		daemon    []string // what the daemon line says
	}{
		{"daemon up", d.url, []string{"[ok  ]", "backend gvisor"}},
		// A daemon that is down is a finding, not a host requirement: still exit 0.
		{"daemon down", "http://" + freeAddr(t), []string{"[FAIL]", "not reachable"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := vmexec(t, env, "--url", c.url, "doctor")
			if code != 0 {
				t.Fatalf("doctor: exit %d on a set-up host:\n%s%s", code, out, errOut)
			}
			l := lineWith(out, "] daemon")
			for _, w := range c.daemon {
				if !strings.Contains(l, w) {
					t.Fatalf("doctor's daemon line %q lacks %q:\n%s", l, w, out)
				}
			}
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if strings.HasPrefix(l, "[FAIL]") && !strings.Contains(l, "daemon") && !strings.Contains(l, "(microVM backend)") {
					t.Errorf("doctor fails a host check on a set-up host: %s", l)
				}
			}
		})
	}
}

// Every command, found by walking the root's help, answers --help with exit 0 and its
// usage, so no command's help is broken by a flag or argument change.
func TestCLIHelp(t *testing.T) {
	testenv.Vmexec(t)
	seen := map[string]bool{}
	var walk func(path []string)
	walk = func(path []string) {
		name := strings.Join(append([]string{"vmexec"}, path...), " ")
		seen[name] = true
		out, errOut, code := vmexec(t, nil, append(path, "--help")...)
		if code != 0 || !strings.Contains(out, "Usage:\n  "+name) {
			t.Errorf("%s --help: exit %d, want 0 and usage:\n%s%s", name, code, out, errOut)
			return
		}
		_, cmds, _ := strings.Cut(out, "Available Commands:\n")
		cmds, _, _ = strings.Cut(cmds, "\n\n")
		for _, l := range strings.Split(cmds, "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[0] != "help" && f[0] != "completion" {
				walk(append(append([]string{}, path...), f[0]))
			}
		}
	}
	walk(nil)
	for _, want := range []string{"vmexec serve", "vmexec exec", "vmexec run-reply", "vmexec sandboxes list", "vmexec sandboxes create",
		"vmexec sandboxes rm", "vmexec backends", "vmexec snapshot", "vmexec snapshot list", "vmexec snapshot rm", "vmexec rollback",
		"vmexec fork", "vmexec history", "vmexec template build", "vmexec template list", "vmexec doctor",
		"vmexec files put", "vmexec files get", "vmexec files ls", "vmexec files rm"} {
		if !seen[want] {
			t.Errorf("%s not reached from the root's help (seen %v)", want, seen)
		}
	}
}
