package microvm_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/backendtest"
	"github.com/vmexec/vmexec/internal/backend/microvm"
	"github.com/vmexec/vmexec/internal/template"
	"github.com/vmexec/vmexec/internal/testenv"
)

// requireHost skips unless this host can boot microVMs from the built template: QEMU,
// qemu-img, mkfs.ext4, the cloud kernel, a static busybox and root (the guest image is
// made from the root-owned template tree). scripts/setup installs all of it.
func requireHost(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"qemu-system-x86_64", "qemu-img", "mkfs.ext4"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed: run scripts/setup (apt-get install qemu-system-x86 qemu-utils e2fsprogs)", bin)
		}
	}
	if _, err := template.FindKernel("/boot"); err != nil {
		t.Skipf("no guest kernel (%v): run scripts/setup", err)
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("busybox-static not installed: run scripts/setup")
	}
	if os.Geteuid() != 0 {
		t.Skip("microVM tests need root: the guest image is built from the root-owned template")
	}
}

// accel is the accelerator the tests ask for: $VMEXEC_MICROVM_ACCEL, default auto.
func accel() string {
	if a := os.Getenv("VMEXEC_MICROVM_ACCEL"); a != "" {
		return a
	}
	return microvm.AccelAuto
}

func newBackend(t *testing.T, cfg microvm.Config) (*microvm.Backend, template.Template) {
	t.Helper()
	requireHost(t)
	tpl := testenv.Template(t)
	if cfg.AgentPath == "" {
		cfg.AgentPath = testenv.Agent(t)
	}
	if cfg.Accel == "" {
		cfg.Accel = accel()
	}
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	b, err := microvm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The first build of the guest image takes a while; keep it out of the tests' timings.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := b.Prepare(ctx, tpl, testWriter{t}); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	t.Logf("accelerator: %s", b.Accel())
	return b, tpl
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// The microVM backend passes the backend conformance suite (under TCG on hosts
// without a usable KVM, hence the generous timeout).
func TestConformance(t *testing.T) {
	b, tpl := newBackend(t, microvm.Config{})
	peer, _ := newBackend(t, microvm.Config{}) // another daemon's: its own state dir
	backendtest.Run(t, backendtest.Env{Backend: b, Template: tpl, Peer: peer, Timeout: 10 * time.Minute})
}

// Guards the host against leaked VMs: after Destroy no QEMU process of the sandbox is
// left, and neither is its directory.
func TestDestroyLeavesNoQEMU(t *testing.T) {
	b, tpl := newBackend(t, microvm.Config{})
	ctx := context.Background()
	sb, err := b.Create(ctx, backend.Spec{ID: "leak-check", Template: tpl})
	if err != nil {
		t.Fatal(err)
	}
	pid := sb.Info(ctx).PID
	if pid == 0 || len(qemuProcesses(t, "leak-check")) != 1 {
		t.Fatalf("pid %d, qemu processes %v", pid, qemuProcesses(t, "leak-check"))
	}
	if err := sb.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	if ps := qemuProcesses(t, "leak-check"); len(ps) != 0 {
		t.Fatalf("qemu still running after destroy: %v", ps)
	}
	if infos, _ := b.List(ctx); len(infos) != 0 {
		t.Fatalf("still listed: %+v", infos)
	}
}

// Guards recovery after a daemon crash: a new backend on the same state directory
// finds the VM the old one left running, reports its QEMU, and kills it.
func TestCrashedDaemonOrphan(t *testing.T) {
	state := t.TempDir()
	old, tpl := newBackend(t, microvm.Config{StateDir: state})
	ctx := context.Background()
	sb, err := old.Create(ctx, backend.Spec{ID: "orphan", Template: tpl})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(ctx)
	restarted, err := microvm.New(microvm.Config{StateDir: state, AgentPath: testenv.Agent(t), Accel: accel()})
	if err != nil {
		t.Fatal(err)
	}
	infos, err := restarted.List(ctx)
	if err != nil || len(infos) != 1 || infos[0].ID != "orphan" || infos[0].Status != "running" || infos[0].PID != sb.Info(ctx).PID {
		t.Fatalf("list after restart: %+v, %v", infos, err)
	}
	if err := restarted.DestroyID(ctx, "orphan"); err != nil {
		t.Fatal(err)
	}
	if ps := qemuProcesses(t, "orphan"); len(ps) != 0 {
		t.Fatalf("orphan qemu still running: %v", ps)
	}
	if _, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "bash", Code: "true"}, nil); !errors.Is(err, backend.ErrSandboxDead) {
		t.Fatalf("exec in a sandbox destroyed by id: %v", err)
	}
}

// Guards against killing a stranger: a pid file whose pid now belongs to another
// process (pids are reused) is not acted on; the directory still goes.
func TestDestroyIDSparesReusedPID(t *testing.T) {
	requireHost(t)
	state := t.TempDir()
	b, err := microvm.New(microvm.Config{StateDir: state, AgentPath: testenv.Agent(t), Accel: microvm.AccelTCG})
	if err != nil {
		t.Fatal(err)
	}
	stranger := exec.Command("sleep", "60")
	if err := stranger.Start(); err != nil {
		t.Fatal(err)
	}
	defer stranger.Process.Kill()
	dir := filepath.Join(state, "sandboxes", "stale")
	os.MkdirAll(dir, 0o700)
	os.WriteFile(filepath.Join(dir, "qemu.pid"), []byte(strconv.Itoa(stranger.Process.Pid)), 0o600)
	ctx := context.Background()
	if infos, _ := b.List(ctx); len(infos) != 1 || infos[0].Status != "dead" {
		t.Fatalf("list: %+v", infos)
	}
	if err := b.DestroyID(ctx, "stale"); err != nil {
		t.Fatal(err)
	}
	if err := stranger.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the unrelated process was killed: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("stale dir left: %v", err)
	}
}

// qemuProcesses returns the pids of live QEMU processes whose command line names
// the sandbox id.
func qemuProcesses(t *testing.T, id string) []int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(cmd) == 0 {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		if strings.HasPrefix(filepath.Base(args[0]), "qemu-system") && strings.Contains(string(cmd), "vmexec-"+id+"\x00") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Guards the diagnosis of a guest that boots but never answers: Create gives up after
// StartTimeout with the console's last lines in the error, and leaves nothing behind.
func TestSilentGuestReportsConsole(t *testing.T) {
	requireHost(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	os.WriteFile(src, []byte(`package main

import (
	"fmt"
	"os"
	"time"
)

func main() {
	fmt.Fprintln(os.Stderr, "silent agent: not answering")
	time.Sleep(time.Hour)
}
`), 0o644)
	silent := filepath.Join(dir, "silent-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-o", silent, src)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build silent agent: %v\n%s", err, out)
	}
	tpl := testenv.Template(t)
	// TCG: a silent guest would otherwise be mistaken for a failed KVM probe.
	b, err := microvm.New(microvm.Config{StateDir: t.TempDir(), AgentPath: silent, Accel: microvm.AccelTCG, StartTimeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err = b.Create(ctx, backend.Spec{ID: "silent", Template: tpl})
	if err == nil {
		t.Fatal("a guest that never answers started")
	}
	if !strings.Contains(err.Error(), "silent agent: not answering") {
		t.Fatalf("error does not quote the console: %v", err)
	}
	t.Logf("error: %v", err)
	if ps := qemuProcesses(t, "silent"); len(ps) != 0 {
		t.Fatalf("failed create left qemu running: %v", ps)
	}
	if infos, _ := b.List(ctx); len(infos) != 0 {
		t.Fatalf("failed create left %+v", infos)
	}
}

// Guards snapshots against the service pruning its history: a sandbox restored from
// a snapshot keeps working after that snapshot is deleted, and its own snapshots (of
// a disk layered over the deleted one's) restore with every file.
func TestSnapshotStandsAlone(t *testing.T) {
	b, tpl := newBackend(t, microvm.Config{})
	ctx := context.Background()
	spec := backend.Spec{ID: "alone", Template: tpl}
	var sb backend.Sandbox
	sb, err := b.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { sb.Destroy(ctx) }()
	run := func(code, want string) {
		t.Helper()
		res, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "bash", Code: code, Limits: agentproto.Limits{TimeoutMS: 30000}}, nil)
		if err != nil || strings.TrimSpace(string(res.Stdout)) != want {
			t.Fatalf("%q: %+v, %v", code, res, err)
		}
	}
	run("echo one > ~/one; echo ok", "ok")
	rollback := func(ref string) {
		t.Helper()
		sb.Destroy(ctx)
		if sb, err = b.Fork(ctx, ref, spec); err != nil {
			t.Fatal(err)
		}
	}
	first, err := b.Snapshot(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	rollback(first.Ref)
	if err := b.DeleteImage(ctx, first.Ref); err != nil {
		t.Fatal(err)
	}
	run("echo two > ~/two; cat ~/one", "one")
	second, err := b.Snapshot(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	run("rm ~/one ~/two; echo gone", "gone")
	rollback(second.Ref)
	run("cat ~/one ~/two | tr '\\n' ' '", "one two")
}

// TestTimings logs what users wait for: a cold boot to the agent's handshake, a warm
// python run, a snapshot and a restore. It asserts only that they work.
func TestTimings(t *testing.T) {
	if testing.Short() {
		t.Skip("timings in -short mode")
	}
	b, tpl := newBackend(t, microvm.Config{})
	ctx := context.Background()
	t0 := time.Now()
	sb, err := b.Create(ctx, backend.Spec{ID: "timing", Template: tpl, MemoryBytes: 512 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { sb.Destroy(ctx) }()
	boot := time.Since(t0)
	py := func() time.Duration {
		t0 := time.Now()
		res, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "python", Code: "print(6*7)", Limits: agentproto.Limits{TimeoutMS: 60000}}, nil)
		if err != nil || strings.TrimSpace(string(res.Stdout)) != "42" {
			t.Fatalf("python: %+v, %v", res, err)
		}
		return time.Since(t0)
	}
	first, warm := py(), py()
	t0 = time.Now()
	image, err := b.Snapshot(ctx, sb)
	if err != nil {
		t.Fatal(err)
	}
	snap := time.Since(t0)
	t0 = time.Now()
	sb.Destroy(ctx)
	sb, err = b.Fork(ctx, image.Ref, backend.Spec{ID: "timing", Template: tpl})
	if err != nil {
		t.Fatal(err)
	}
	restore := time.Since(t0)
	afterRestore := py()
	t.Logf("accel %s: cold boot to handshake %v; python run first %v, warm %v, after restore %v; snapshot %v (image %.0f MiB); restore to handshake %v",
		b.Accel(), boot.Round(time.Millisecond), first.Round(time.Millisecond), warm.Round(time.Millisecond), afterRestore.Round(time.Millisecond),
		snap.Round(time.Millisecond), float64(image.SizeBytes)/(1<<20), restore.Round(time.Millisecond))
}

// Guards the host's CPUs: a microVM's QEMU process gets at most its CPU quota, even with
// the guest busy in processes that outlived their run, and its cgroup goes with it.
func TestCPUQuota(t *testing.T) {
	const quota = 0.25
	state := t.TempDir()
	b, tpl := newBackend(t, microvm.Config{StateDir: state, CPUs: 1, CPUQuota: quota, NoWarmUp: true})
	ctx := context.Background()
	id := "cpuquota-" + strconv.Itoa(os.Getpid())
	sb, err := b.Create(ctx, backend.Spec{ID: id, Template: tpl, MemoryBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Destroy(ctx)
	res, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "bash",
		Code: "for i in 1 2; do (while :; do :; done) & done; echo started"}, nil)
	if err != nil || res.Verdict != agentproto.VerdictOK {
		t.Fatalf("leaving busy loops: %v %+v", err, res)
	}
	pidb, err := os.ReadFile(filepath.Join(state, "sandboxes", id, "qemu.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
	const window = 3 * time.Second
	before, start := processCPUTime(t, pid), time.Now()
	time.Sleep(window)
	used, elapsed := processCPUTime(t, pid)-before, time.Since(start)
	t.Logf("qemu used %v of CPU time in %v (quota %.2f cores)", used, elapsed.Round(time.Millisecond), quota)
	if limit := time.Duration(quota * 1.2 * float64(elapsed)); used > limit {
		t.Errorf("qemu used %v of CPU in %v, over its quota of %.2f cores (%v with slack)", used, elapsed, quota, limit)
	}
	if used < elapsed/20 {
		t.Errorf("qemu used only %v of CPU in %v: the guest's busy loops are not running", used, elapsed)
	}
	// On a busy host the process may get less than its quota anyway: the cgroup's
	// throttling shows that the quota itself holds it.
	if n := throttled(t, "microvm-"+id); n == 0 {
		t.Errorf("the cgroup never throttled qemu: its quota does not hold it")
	}
	if err := sb.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"/sys/fs/cgroup/cpu/vmexec/microvm-" + id, "/sys/fs/cgroup/vmexec/microvm-" + id} {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s left after the sandbox was destroyed", d)
		}
	}
}

// throttled is how many periods the host cgroup vmexec/<name> throttled (cpu.stat's
// nr_throttled, cgroup v1 or v2).
func throttled(t *testing.T, name string) int64 {
	t.Helper()
	for _, f := range []string{"/sys/fs/cgroup/cpu/vmexec/" + name + "/cpu.stat", "/sys/fs/cgroup/vmexec/" + name + "/cpu.stat"} {
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
	t.Fatalf("no cpu.stat for the cgroup vmexec/%s", name)
	return 0
}

// processCPUTime is the user and system CPU time of process pid, all its threads.
func processCPUTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}
