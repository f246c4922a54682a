package e2e

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/testenv"
)

// qemuProcs lists QEMU processes whose command line mentions dir.
func qemuProcs(dir string) []string {
	out, _ := exec.Command("pgrep", "-af", "qemu-system").Output()
	var procs []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, dir) {
			procs = append(procs, l)
		}
	}
	return procs
}

// Both backends serve at once: a microVM sandbox made through the compatible route
// runs code through /api/llm/execute, keeps its files, rolls back a failed run, and
// reports its accelerator; the daemon leaves no QEMU behind, even after a crash.
// Here QEMU runs under TCG (no usable KVM), so this is slow but the same code path.
func TestMicroVMBackend(t *testing.T) {
	testenv.MicroVM(t)
	dir := t.TempDir()
	d := startDaemon(t, daemonOpts{dataDir: dir, extra: []string{"--backends", "gvisor,microvm"}})
	ctx := bg(t)
	backends, err := d.client.Backends(ctx)
	if err != nil || len(backends) != 2 || backends[0].Name != "gvisor" || !backends[0].Default || backends[1].Name != "microvm" {
		t.Fatalf("backends: %+v %v", backends, err)
	}

	resp, err := http.Post(d.url+"/api/vms", "application/json", strings.NewReader(`{"vm_type":"microvm","name":"vm1"}`))
	if err != nil {
		t.Fatal(err)
	}
	var vm api.CompatVM
	json.NewDecoder(resp.Body).Decode(&vm)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || vm.VMType != "microvm" || vm.ID == "" {
		t.Fatalf("create microvm: %d %+v", resp.StatusCode, vm)
	}
	exec1, err := d.client.CompatExecute(ctx, api.CompatExecRequest{AgentID: "mv", VMID: vm.ID, Language: "python",
		Code: "import math\nopen('/home/user/f.txt','w').write('one')\nprint(math.factorial(10))", TimeoutSeconds: 120})
	if err != nil || exec1.VMID != vm.ID || strings.TrimSpace(exec1.Stdout) != "3628800" {
		t.Fatalf("execute in microvm: %+v %v", exec1, err)
	}
	// The same guest agent computes change sets in a microVM (a real Linux kernel's inotify).
	if len(exec1.Changes) != 1 || exec1.Changes[0].Path != "/home/user/f.txt" || exec1.Changes[0].Kind != api.ChangeCreated {
		t.Errorf("changes in the microvm: %+v, want /home/user/f.txt created", exec1.Changes)
	}
	sb, err := d.client.GetSandbox(ctx, vm.ID)
	if err != nil || sb.Backend != "microvm" || (sb.Accel != "tcg" && sb.Accel != "kvm") {
		t.Fatalf("sandbox info: %+v %v", sb, err)
	}
	t.Logf("microvm accelerator: %s", sb.Accel)
	// Once a microVM has booted, GET /v1/backends reports the accelerator the backend
	// settled on (no longer "auto"), the same one its sandboxes run under: it is what
	// `vmexec backends` and `vmexec doctor` tell the operator.
	backends, err = d.client.Backends(ctx)
	if err != nil || len(backends) != 2 || backends[1].Name != "microvm" || backends[1].Accel != sb.Accel {
		t.Fatalf("backends after a microVM booted: %+v %v; want microvm with accel %q", backends, err, sb.Accel)
	}
	run := func(code string) *api.ExecResult {
		return d.execReq(t, api.ExecRequest{AgentID: "mv", SandboxID: vm.ID, Language: "bash", Code: code, Limits: api.Limits{TimeoutMS: 120_000}})
	}
	r := run("rm /home/user/f.txt; exit 1")
	if !r.RolledBack || r.RestoredSnapshotID == "" {
		t.Fatalf("failed run not rolled back: %s", describe(r))
	}
	wantOK(t, run("cat /home/user/f.txt"), "one")

	// The state test, by hand: write 1, snapshot, write 2, roll back, read 1.
	wantOK(t, run("echo 1 > ~/v.txt; echo ok"), "ok")
	snap, err := d.client.CreateSnapshot(ctx, vm.ID, api.CreateSnapshotRequest{AgentID: "mv"})
	if err != nil {
		t.Fatal(err)
	}
	wantOK(t, run("echo 2 > ~/v.txt; cat ~/v.txt"), "2")
	if _, err := d.client.Rollback(ctx, vm.ID, api.RollbackRequest{AgentID: "mv", SnapshotID: snap.ID}); err != nil {
		t.Fatal(err)
	}
	wantOK(t, run("cat ~/v.txt"), "1")

	// An agent whose policy picks the microvm backend gets a microVM on first use.
	if _, err := d.client.SetAgentPolicy(ctx, "mv-agent", api.ExecPolicy{Backend: "microvm"}); err != nil {
		t.Fatal(err)
	}
	r = d.execReq(t, api.ExecRequest{AgentID: "mv-agent", Language: "bash", Code: "echo from-vm", Limits: api.Limits{TimeoutMS: 120_000}})
	wantOK(t, r, "from-vm")
	if sb, _ := d.client.GetSandbox(ctx, r.SandboxID); sb.Backend != "microvm" {
		t.Fatalf("agent policy backend ignored: %+v", sb)
	}

	if len(qemuProcs(dir)) == 0 {
		t.Fatal("no QEMU process found for running microVMs; the check itself is broken")
	}
	if err := d.client.DeleteSandbox(ctx, r.SandboxID); err != nil {
		t.Fatal(err)
	}
	d.kill() // a crash leaves QEMU running
	if len(qemuProcs(dir)) == 0 {
		t.Fatal("expected the crashed daemon's microVMs to linger")
	}
	d.start()
	deadline := time.Now().Add(20 * time.Second)
	for len(qemuProcs(dir+"/microvm/sandboxes/"+vm.ID)) > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if p := qemuProcs(dir + "/microvm/sandboxes/" + vm.ID); len(p) > 0 {
		t.Fatalf("QEMU of the crashed daemon still running: %v", p)
	}
	// The microVM resumes from its newest snapshot after the crash.
	wantOK(t, run("cat ~/v.txt"), "1")
	d.stop()
	deadline = time.Now().Add(20 * time.Second)
	for len(qemuProcs(dir)) > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if p := qemuProcs(dir); len(p) > 0 {
		t.Fatalf("QEMU left after the daemon stopped: %v", p)
	}
}
