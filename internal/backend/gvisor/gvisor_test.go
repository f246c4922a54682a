package gvisor_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/backendtest"
	"github.com/vmexec/vmexec/internal/backend/gvisor"
	"github.com/vmexec/vmexec/internal/template"
	"github.com/vmexec/vmexec/internal/testenv"
)

func newBackend(t *testing.T) (*gvisor.Backend, template.Template) {
	testenv.Root(t)
	runsc := testenv.Runsc(t)
	tpl := testenv.Template(t)
	b, err := gvisor.New(gvisor.Config{Runsc: runsc, StateDir: t.TempDir(), AgentPath: testenv.Agent(t)})
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, b)
	return b, tpl
}

// closeAtEnd closes b when the test ends: its standbys are removed.
func closeAtEnd(t *testing.T, b *gvisor.Backend) {
	t.Cleanup(func() {
		if err := b.Close(context.Background()); err != nil {
			t.Errorf("close backend: %v", err)
		}
	})
}

// The gVisor backend passes the backend conformance suite.
func TestConformance(t *testing.T) {
	b, tpl := newBackend(t)
	peer, _ := newBackend(t) // another daemon's: its own state dir
	backendtest.Run(t, backendtest.Env{Backend: b, Template: tpl, Peer: peer})
}

// Guards the host's memory: a sandbox whose processes exceed its memory cap does not
// take more, and what happened is reported as a memory verdict, never as success.
func TestMemoryCap(t *testing.T) {
	b, tpl := newBackend(t)
	ctx := context.Background()
	sb, err := b.Create(ctx, backend.Spec{ID: "memcap", Template: tpl, MemoryBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(ctx)
	res, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "python", Code: "a=[]\nwhile True: a.append(bytearray(10**7))",
		Limits: agentproto.Limits{TimeoutMS: 30000, MemoryBytes: 1 << 30}}, nil)
	if err != nil {
		var dead *backend.DeadError
		if !errors.As(err, &dead) {
			t.Fatalf("exec: %v", err)
		}
		t.Logf("sandbox died: %v", dead)
		return
	}
	if res.Verdict == agentproto.VerdictOK {
		t.Fatalf("memory bomb ended ok: %+v", res)
	}
	t.Logf("verdict %s exit %d", res.Verdict, res.ExitCode)
}

// Guards the host's CPUs: a sandbox gets at most its CPU quota, and so do processes that
// outlive their run. An ok run leaves two busy loops behind (the case of an agent's
// forgotten `while :; do :; done &`): they keep running, but the whole sandbox's CPU
// time, as the host cgroup counts it, stays within the quota; after a snapshot and a
// fork from it (a suspend and resume) the loops are back, still within it.
func TestCPUQuota(t *testing.T) {
	testenv.Root(t)
	const cpus = 0.5
	b, err := gvisor.New(gvisor.Config{Runsc: testenv.Runsc(t), StateDir: t.TempDir(), AgentPath: testenv.Agent(t), CPUs: cpus})
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, b)
	tpl := testenv.Template(t)
	ctx := context.Background()
	sb, err := b.Create(ctx, backend.Spec{ID: "cpuquota", Template: tpl, MemoryBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(ctx)
	res, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "bash",
		Code: "for i in 1 2; do (while :; do :; done) & done; echo started"}, nil)
	if err != nil || res.Verdict != agentproto.VerdictOK {
		t.Fatalf("leaving busy loops: %v %+v", err, res)
	}
	checkCPU(t, "cpuquota", cpus)

	// Suspend and resume: the loops come back with the sandbox, under the same quota.
	img, err := b.Snapshot(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	sb.Destroy(ctx)
	fork, err := b.Fork(ctx, img.Ref, backend.Spec{ID: "cpuquota-resumed", Template: tpl, MemoryBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer fork.Destroy(ctx)
	res, err = fork.Exec(ctx, &agentproto.ExecRequest{Language: "bash", Code: "grep -l 'run-[1]/main.sh' /proc/[0-9]*/cmdline | wc -l"}, nil)
	if err != nil || strings.TrimSpace(string(res.Stdout)) != "2" {
		t.Fatalf("the busy loops did not come back with the sandbox: %v %s %s", err, res.Stdout, res.Stderr)
	}
	checkCPU(t, "cpuquota-resumed", cpus)
}

// checkCPU measures sandbox id's CPU time over a window in which it is busy and checks
// that it stays within cpus cores (with 20% slack for the cgroup's accounting) and that
// the sandbox was really busy (else the check proves nothing).
func checkCPU(t *testing.T, id string, cpus float64) {
	t.Helper()
	const window = 2 * time.Second
	before, start := sandboxCPUTime(t, id), time.Now()
	time.Sleep(window)
	used, elapsed := sandboxCPUTime(t, id)-before, time.Since(start)
	limit := time.Duration(cpus * 1.2 * float64(elapsed))
	t.Logf("%s: %v of CPU time in %v (quota %.2f cores)", id, used.Round(time.Millisecond), elapsed.Round(time.Millisecond), cpus)
	if used > limit {
		t.Errorf("sandbox %s used %v of CPU in %v, over its quota of %.2f cores (%v with slack)", id, used, elapsed, cpus, limit)
	}
	if used < elapsed/10 {
		t.Errorf("sandbox %s used only %v of CPU in %v: its busy loops are not running", id, used, elapsed)
	}
	// On a busy host the sandbox may get less than its quota anyway: the cgroup's
	// throttling shows that the quota itself holds it.
	if n := throttled(t, id); n == 0 {
		t.Errorf("the cgroup never throttled sandbox %s: its quota does not hold it", id)
	}
}

// throttled is how many periods the host cgroup /vmexec/<id> throttled (cpu.stat's
// nr_throttled, cgroup v1 or v2).
func throttled(t *testing.T, id string) int64 {
	t.Helper()
	for _, f := range []string{"/sys/fs/cgroup/cpu/vmexec/" + id + "/cpu.stat", "/sys/fs/cgroup/vmexec/" + id + "/cpu.stat"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "nr_throttled "); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
	}
	t.Fatalf("no cpu.stat for the cgroup of sandbox %s", id)
	return 0
}

// sandboxCPUTime is the CPU time the host cgroup of sandbox id has used (the backend's
// cgroup is /vmexec/<id>): cgroup v1's cpuacct.usage, else v2's cpu.stat.
func sandboxCPUTime(t *testing.T, id string) time.Duration {
	t.Helper()
	if b, err := os.ReadFile("/sys/fs/cgroup/cpuacct/vmexec/" + id + "/cpuacct.usage"); err == nil {
		ns, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return time.Duration(ns)
	}
	b, err := os.ReadFile("/sys/fs/cgroup/vmexec/" + id + "/cpu.stat")
	if err != nil {
		t.Fatalf("no CPU accounting for sandbox %s: %v", id, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return time.Duration(us) * time.Microsecond
		}
	}
	t.Fatalf("no usage_usec in cpu.stat of sandbox %s", id)
	return 0
}

// A run in a real sandbox has no privileges and cannot gain any: no_new_privs is set,
// every capability set (the bounding set included) is empty, and the template's
// setuid-root su runs as the run user. The probe starts su blocked on a FIFO, waits
// until it has been exec'd and prints its ids.
func TestRunHasNoPrivileges(t *testing.T) {
	b, tpl := newBackend(t)
	ctx := context.Background()
	sb, err := b.Create(ctx, backend.Spec{ID: "noprivs", Template: tpl, MemoryBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(ctx)
	probe := `grep -E '^(NoNewPrivs|Cap(Inh|Prm|Eff|Bnd|Amb)):' /proc/self/status
test -u /usr/bin/su && test "$(stat -c %u /usr/bin/su)" = 0 || { echo "no setuid-root su in the template"; exit 3; }
f=$(mktemp -u); mkfifo "$f"; exec 3<>"$f"
su -c id root <&3 >/dev/null 2>&1 &
pid=$!
until grep -qE '^Name:[[:space:]]+su$' /proc/$pid/status 2>/dev/null; do sleep 0.01; done
grep '^Uid:' /proc/$pid/status
kill $pid; wait; rm -f "$f"`
	res, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "bash", Code: probe, Limits: agentproto.Limits{TimeoutMS: 20000}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != agentproto.VerdictOK {
		t.Fatalf("probe: %s exit %d: %s %s", res.Verdict, res.ExitCode, res.Stdout, res.Stderr)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(res.Stdout)), "\n") {
		k, v, _ := strings.Cut(line, ":")
		got[k] = strings.Join(strings.Fields(v), " ")
	}
	for k, v := range map[string]string{
		"NoNewPrivs": "1", "CapInh": "0000000000000000", "CapPrm": "0000000000000000",
		"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "CapAmb": "0000000000000000",
		"Uid": "1000 1000 1000 1000", // su's real, effective, saved and filesystem uids
	} {
		if got[k] != v {
			t.Errorf("%s: %q, want %q (output:\n%s)", k, got[k], v, res.Stdout)
		}
	}
}

// Inside a real sandbox, memory is limited by what a run's processes hold, not by
// address space: 32 python threads start under 512 MiB, and a memory bomb is killed
// by the guest's memory watch with verdict memory_limit while the sandbox lives on.
func TestRunMemoryByAccounting(t *testing.T) {
	b, tpl := newBackend(t)
	ctx := context.Background()
	sb, err := b.Create(ctx, backend.Spec{ID: "memwatch", Template: tpl, MemoryBytes: 512 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(ctx)
	threads := `import threading
from concurrent.futures import ThreadPoolExecutor
barrier = threading.Barrier(32)
def work(i):
    barrier.wait(timeout=20)  # all 32 threads exist at once
    return i
with ThreadPoolExecutor(32) as pool:
    print(sum(pool.map(work, range(32))), threading.active_count())
`
	cases := []struct {
		name, code, verdict, out string
	}{
		{"32 threads", threads, agentproto.VerdictOK, "496 33"},
		{"memory bomb", "a = []\nwhile True: a.append(bytearray(50 << 20))\n", agentproto.VerdictMemoryLimit, ""},
		{"after the bomb", "print('alive')", agentproto.VerdictOK, "alive"},
	}
	for _, c := range cases {
		res, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "python", Code: c.code,
			Limits: agentproto.Limits{MemoryBytes: 256 << 20, TimeoutMS: 30000}}, nil)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if res.Verdict != c.verdict || strings.TrimSpace(string(res.Stdout)) != c.out {
			t.Errorf("%s: verdict %s, stdout %q, stderr %q; want %s, %q", c.name, res.Verdict, res.Stdout, res.Stderr, c.verdict, c.out)
		}
		if c.verdict == agentproto.VerdictMemoryLimit && !strings.Contains(string(res.Stderr), "over its memory limit of 256 MiB") {
			t.Errorf("%s: stderr %q does not say the memory watch killed it", c.name, res.Stderr)
		}
	}
}

// Both ways of taking a checkpoint (the control server, and `runsc checkpoint`) save the
// whole state: a sandbox forked from the image has the file and the process the
// original had when it was taken, and the original keeps running.
func TestCheckpointWays(t *testing.T) {
	testenv.Root(t)
	tpl := testenv.Template(t)
	for _, way := range []string{gvisor.CheckpointControl, gvisor.CheckpointRunsc} {
		t.Run(way, func(t *testing.T) {
			b, err := gvisor.New(gvisor.Config{Runsc: testenv.Runsc(t), StateDir: t.TempDir(), AgentPath: testenv.Agent(t), Checkpoint: way})
			if err != nil {
				t.Fatal(err)
			}
			closeAtEnd(t, b)
			ctx := context.Background()
			sb, err := b.Create(ctx, backend.Spec{ID: "ckpt-" + way, Template: tpl, MemoryBytes: 256 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer sb.Destroy(ctx)
			runBash(t, sb, "echo saved > ~/f.txt; nohup sleep 1000 >/dev/null 2>&1 &")
			img, err := b.Snapshot(ctx, sb)
			if err != nil {
				t.Fatal(err)
			}
			check := "cat ~/f.txt; for f in /proc/[0-9]*/comm; do cat $f; done | grep -cx sleep"
			if got := runBash(t, sb, check); got != "saved\n1" {
				t.Fatalf("original after the snapshot: %q", got)
			}
			fork, err := b.Fork(ctx, img.Ref, backend.Spec{ID: "ckpt-" + way + "-fork", Template: tpl, MemoryBytes: 256 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer fork.Destroy(ctx)
			if got := runBash(t, fork, check); got != "saved\n1" {
				t.Fatalf("fork: %q, want the file and the process", got)
			}
		})
	}
}

// runBash runs code with bash in sb, fails the test unless the run is OK, and
// returns its trimmed stdout.
func runBash(t *testing.T, sb backend.Sandbox, code string) string {
	t.Helper()
	res, err := sb.Exec(context.Background(), &agentproto.ExecRequest{Language: "bash", Code: code, Limits: agentproto.Limits{TimeoutMS: 20000}}, nil)
	if err != nil || res.Verdict != agentproto.VerdictOK {
		t.Fatalf("%q: %+v %v", code, res, err)
	}
	return strings.TrimSpace(string(res.Stdout))
}

// A restore goes into a standby container made ahead when one is ready, by either
// way (the control server, or `runsc restore`): the restored sandbox has the image's
// state (a file and a process), works like any other and is listed as running; a
// sandbox whose agent dies is seen dead; standbys that broke meanwhile (removed
// from outside) do not make the restore fail; Close leaves no standby behind.
func TestRestoreIntoStandby(t *testing.T) {
	testenv.Root(t)
	tpl := testenv.Template(t)
	runsc := testenv.Runsc(t)
	for _, way := range []string{gvisor.RestoreControl, gvisor.RestoreRunsc} {
		t.Run(way, func(t *testing.T) { testRestoreIntoStandby(t, runsc, tpl, way) })
	}
}

func testRestoreIntoStandby(t *testing.T, runsc string, tpl template.Template, way string) {
	state := t.TempDir()
	b, err := gvisor.New(gvisor.Config{Runsc: runsc, StateDir: state, AgentPath: testenv.Agent(t), Restore: way})
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, b)
	ctx := context.Background()
	spec := func(id string) backend.Spec { return backend.Spec{ID: id, Template: tpl, MemoryBytes: 256 << 20} }
	sb, err := b.Create(ctx, spec("standby-src"))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(ctx)
	runBash(t, sb, "echo saved > ~/f.txt; nohup sleep 1000 >/dev/null 2>&1 &")
	img, err := b.Snapshot(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	list := func() map[string]string {
		t.Helper()
		infos, err := b.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		status := map[string]string{}
		for _, i := range infos {
			status[i.ID] = i.Status
		}
		return status
	}
	standbys := func() []string {
		t.Helper()
		var ids []string
		for id, st := range list() {
			if strings.HasPrefix(id, "standby-") && st == "created" {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		return ids
	}
	// waitStandbys waits until every standby the backend counts is made.
	waitStandbys := func() []string {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			n, mem := b.Standbys()
			ids := standbys()
			if n > 0 && len(ids) == n {
				if mem != int64(n)*(256<<20) {
					t.Fatalf("standbys hold %d bytes of memory limits, want %d × 256 MiB", mem, n)
				}
				return ids
			}
			if time.Now().After(deadline) {
				t.Fatalf("standbys after a restore: %d counted, %v made", n, ids)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	check := "cat ~/f.txt; for f in /proc/[0-9]*/comm; do cat $f; done | grep -cx sleep"
	first, err := b.Fork(ctx, img.Ref, spec("standby-f1")) // no standby yet: afresh
	if err != nil {
		t.Fatal(err)
	}
	defer first.Destroy(ctx)
	ids := waitStandbys()
	second, err := b.Fork(ctx, img.Ref, spec("standby-f2"))
	if err != nil {
		t.Fatal(err)
	}
	defer second.Destroy(ctx)
	if !slices.Contains(ids, second.ID()) {
		t.Fatalf("second restore is %s, want one of the standbys %v", second.ID(), ids)
	}
	for _, s := range []backend.Sandbox{first, second} {
		if got := runBash(t, s, check); got != "saved\n1" {
			t.Fatalf("%s: %q, want the image's file and process", s.ID(), got)
		}
	}
	if st := list()[second.ID()]; st != "running" {
		t.Fatalf("the restored standby %s is listed %q, want running", second.ID(), st)
	}
	if st := second.Info(ctx); st.Status != "running" || st.PID <= 0 {
		t.Fatalf("the restored standby's info: %+v", st)
	}
	// Its agent killed (from outside: PID 1 ignores a SIGKILL from inside): the
	// sandbox is seen dead, as any other.
	if out, err := exec.Command(runsc, "--root", filepath.Join(state, "runsc"), "kill", second.ID(), "KILL").CombinedOutput(); err != nil {
		t.Fatalf("runsc kill: %v: %s", err, out)
	}
	_, err = second.Exec(ctx, &agentproto.ExecRequest{Language: "bash", Code: "echo alive", Limits: agentproto.Limits{TimeoutMS: 20000}}, nil)
	if !errors.Is(err, backend.ErrSandboxDead) {
		t.Fatalf("exec that kills the agent: %v, want a dead sandbox", err)
	}
	if st := second.Info(ctx).Status; st != "dead" {
		t.Fatalf("after its agent died: %q, want dead", st)
	}
	if err := second.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	// Standbys removed from outside: the restore still succeeds, afresh.
	for _, broken := range waitStandbys() {
		if out, err := exec.Command(runsc, "--root", filepath.Join(state, "runsc"), "delete", "--force", broken).CombinedOutput(); err != nil {
			t.Fatalf("runsc delete: %v: %s", err, out)
		}
	}
	third, err := b.Fork(ctx, img.Ref, spec("standby-f3"))
	if err != nil {
		t.Fatalf("restore after its standby broke: %v", err)
	}
	defer third.Destroy(ctx)
	if got := runBash(t, third, check); got != "saved\n1" {
		t.Fatalf("%s: %q", third.ID(), got)
	}
	for deadline := time.Now().Add(time.Minute); len(standbys()) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no standby made after the restore that found its standby broken")
		}
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if left := standbys(); len(left) > 0 {
		t.Fatalf("standbys left after Close: %v", left)
	}
	if n, mem := b.Standbys(); n != 0 || mem != 0 {
		t.Fatalf("after Close the backend counts %d standbys (%d bytes)", n, mem)
	}
}
