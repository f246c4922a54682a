package microvm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Files in a sandbox's directory. Sockets are named relative to the directory (QEMU
// runs in it), which keeps them clear of the 108-byte limit of unix socket paths.
const (
	metaFile    = "meta.json"
	pidFile     = "qemu.pid"
	diskFile    = "disk.qcow2"
	lowerFile   = "lower.qcow2"
	kernelFile  = "vmlinuz"
	initrdFile  = "initrd.cpio"
	agentSock   = "agent.sock"
	qmpSock     = "qmp.sock"
	consoleFile = "console.log"
	qemuLogFile = "qemu.log"
)

// vmMeta is how a sandbox's VM was started; saved as meta.json in its directory and
// inside each of its snapshots, whose restore must start an identical machine.
type vmMeta struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Accel   string    `json:"accel"`
	CPU     string    `json:"cpu,omitempty"`
	// MemoryMiB is the guest's RAM, CPUs its vCPUs.
	MemoryMiB int `json:"memory_mib"`
	CPUs      int `json:"cpus"`
	// ThreadsMax caps the guest's tasks (kernel.threads-max); 0 leaves the default.
	ThreadsMax int64 `json:"threads_max,omitempty"`
	// Kernel and Initrd are links (or copies) of the guest image's, kept in the
	// sandbox's directory and in each snapshot so that both outlive the image's
	// files. Base is the image's read-only disk image, in BaseFormat.
	Kernel     string `json:"kernel"`
	Initrd     string `json:"initrd"`
	Base       string `json:"base"`
	BaseFormat string `json:"base_format"`
	// TSCkHz, under TCG, is the host's TSC frequency, which TCG guests read as
	// their own: given to the kernel, it spares a calibration that fails when the
	// host is busy (and then the boot hangs).
	TSCkHz int64 `json:"tsc_khz,omitempty"`
	// KernelArgs are extra kernel command line arguments.
	KernelArgs []string `json:"kernel_args,omitempty"`
	// Lower is set for a restored sandbox: its snapshot's disk layer, over Base.
	Lower bool `json:"lower,omitempty"`
}

func readMeta(dir string) (vmMeta, error) {
	var m vmMeta
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("parse %s: %w", filepath.Join(dir, metaFile), err)
	}
	return m, nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// kernelCmdline is the guest kernel's command line. panic=-1 with QEMU's -no-reboot
// turns a guest panic (the agent, PID 1, died) into QEMU's exit; the i8042 options skip
// probing for a keyboard controller microvm does not have.
func (m vmMeta) kernelCmdline() string {
	args := []string{"console=ttyS0", "quiet", "panic=-1", "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd",
		"cryptomgr.notests", "random.trust_cpu=on"}
	if m.TSCkHz > 0 {
		args = append(args, "tsc_early_khz="+strconv.FormatInt(m.TSCkHz, 10), "tsc=reliable")
	}
	if m.ThreadsMax > 0 {
		args = append(args, "sysctl.kernel.threads-max="+strconv.FormatInt(m.ThreadsMax, 10))
	}
	return strings.Join(append(args, m.KernelArgs...), " ")
}

// qemuArgs is QEMU's command line for the sandbox in dir. With incoming set, QEMU waits
// for a migrate-incoming command instead of booting.
func qemuArgs(dir string, m vmMeta, incoming bool) []string {
	disk, _ := json.Marshal(map[string]any{
		"driver": "qcow2", "node-name": "disk0",
		"file": map[string]any{"driver": "file", "filename": filepath.Join(dir, diskFile)},
	})
	args := []string{
		"-name", "vmexec-" + m.ID,
		"-machine", "microvm,acpi=on,rtc=on",
		"-accel", m.Accel,
	}
	if m.CPU != "" {
		args = append(args, "-cpu", m.CPU)
	}
	args = append(args,
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
		"-m", strconv.Itoa(m.MemoryMiB), "-smp", strconv.Itoa(m.CPUs),
		"-kernel", m.Kernel, "-initrd", m.Initrd, "-append", m.kernelCmdline(),
		"-blockdev", string(disk),
		"-device", "virtio-blk-device,drive=disk0",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path="+agentSock+",server=on,wait=off",
		"-device", "virtserialport,chardev=agent,name=vmexec",
		"-qmp", "unix:"+qmpSock+",server=on,wait=off",
		"-serial", "file:"+consoleFile,
	)
	if incoming {
		args = append(args, "-incoming", "defer")
	}
	return args
}

// vmProc is a QEMU process this process started.
type vmProc struct {
	cmd     *exec.Cmd
	pid     int
	exited  chan struct{}
	waitErr error // set before exited closes
}

// startQEMU starts QEMU in dir, in its own process group (a signal to the daemon's
// terminal must not reach sandboxes behind the daemon's back), and records its pid.
func (b *Backend) startQEMU(dir string, args []string) (*vmProc, error) {
	logf, err := os.OpenFile(filepath.Join(dir, qemuLogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("qemu log: %w", err)
	}
	defer logf.Close()
	// Not CommandContext: a context bounds start-up, not the sandbox's life.
	cmd := exec.Command(b.cfg.QEMU, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	p := &vmProc{cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{})}
	cg := cpuCgroupOf(dir)
	if b.cfg.CPUQuota > 0 {
		// QEMU runs for a moment before it is moved: a few ms of start-up, not a leak.
		if err := cg.limit(p.pid, b.cfg.CPUQuota); err != nil {
			b.log.Warn("cannot cap the microVM's CPU time; only its vCPU count bounds it", "dir", dir, "err", err)
		}
	}
	go func() {
		p.waitErr = cmd.Wait()
		cg.remove()
		close(p.exited)
	}()
	if err := os.WriteFile(filepath.Join(dir, pidFile), []byte(strconv.Itoa(p.pid)+"\n"), 0o600); err != nil {
		p.killNow()
		return nil, fmt.Errorf("pid file: %w", err)
	}
	return p, nil
}

func (p *vmProc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// killNow kills QEMU and its process group (a migration's helper, say) and waits for
// QEMU. Once QEMU is reaped its pid may be reused, so the group is signalled only
// while it is alive.
func (p *vmProc) killNow() {
	if p.alive() {
		syscall.Kill(-p.pid, syscall.SIGKILL)
		p.cmd.Process.Kill()
	}
	<-p.exited
}

func (p *vmProc) exitStatus() string {
	if p.alive() {
		return "qemu running"
	}
	if p.waitErr != nil {
		return "qemu exited: " + p.waitErr.Error()
	}
	return "qemu exited"
}

var errQEMUExited = errors.New("qemu exited")

// dialUnix connects to the socket name in QEMU's directory dir, retrying until QEMU
// has created it, QEMU exits or ctx ends.
func dialUnix(ctx context.Context, dir, name string, p *vmProc) (net.Conn, error) {
	path := filepath.Join(dir, name)
	if len(path) >= 104 {
		// Too long for sockaddr_un: reach it through QEMU's working directory.
		path = fmt.Sprintf("/proc/%d/cwd/%s", p.pid, name)
	}
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return conn, nil
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("connect %s: %w", name, errQEMUExited)
		case <-ctx.Done():
			return nil, fmt.Errorf("connect %s: %w (last error: %v)", name, ctx.Err(), err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// readPID returns the pid recorded in dir.
func readPID(dir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}

// isOurQEMU reports whether pid is a live QEMU running the sandbox in dir: pids are
// reused, so a pid file alone never justifies a kill.
func isOurQEMU(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 { // gone, or a zombie
		return false
	}
	args := bytes.Split(bytes.TrimRight(b, "\x00"), []byte{0})
	if !strings.HasPrefix(filepath.Base(string(args[0])), "qemu-system") {
		return false
	}
	disk := filepath.Join(dir, diskFile)
	for _, a := range args[1:] {
		if bytes.Contains(a, []byte(disk)) {
			return true
		}
	}
	return false
}

// killVerified stops the QEMU with pid if it runs the sandbox in dir: SIGTERM (QEMU
// exits cleanly), then SIGKILL to its process group, waiting for it to be gone.
func killVerified(pid int, dir string) error {
	if !isOurQEMU(pid, dir) {
		return nil
	}
	syscall.Kill(pid, syscall.SIGTERM)
	if waitGone(pid, dir, 3*time.Second) {
		return nil
	}
	if isOurQEMU(pid, dir) {
		syscall.Kill(-pid, syscall.SIGKILL)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if waitGone(pid, dir, 5*time.Second) {
		cpuCgroupOf(dir).remove()
		return nil
	}
	return fmt.Errorf("qemu pid %d does not exit", pid)
}

// cpuCgroup is the host cgroup that caps one sandbox's QEMU process at a CPU quota:
// vmexec/microvm-<id> in the cpu controller's hierarchy (cgroup v1) or in the unified
// one (v2). A guest busy on all its vCPUs, and processes it keeps running in the
// background, then cost the host at most the quota. The cgroup is removed when QEMU
// exits; without a usable cpu controller (a host that does not delegate it) the
// sandbox is bounded by its vCPU count only.
type cpuCgroup struct {
	name string // relative to the hierarchy's root
}

// cpuCgroupOf is the cgroup of the sandbox whose directory is dir.
func cpuCgroupOf(dir string) cpuCgroup {
	return cpuCgroup{name: filepath.Join("vmexec", "microvm-"+filepath.Base(dir))}
}

// cgroupRoots: the v1 cpu hierarchy, else the v2 unified one.
const (
	cgroupV1CPU = "/sys/fs/cgroup/cpu"
	cgroupV2    = "/sys/fs/cgroup"
)

// cpuPeriodUS is the CFS period of the quota (the kernel's default, 100 ms).
const cpuPeriodUS = 100_000

// limit creates the cgroup with a quota of cpus cores and moves pid (all its threads)
// into it.
func (c cpuCgroup) limit(pid int, cpus float64) error {
	quota := max(int64(cpus*cpuPeriodUS), 1000) // the kernel's minimum is 1 ms
	var dir string
	var settings [][2]string
	switch {
	case exists(filepath.Join(cgroupV1CPU, "cpu.cfs_quota_us")):
		dir = filepath.Join(cgroupV1CPU, c.name)
		settings = [][2]string{{"cpu.cfs_period_us", strconv.Itoa(cpuPeriodUS)}, {"cpu.cfs_quota_us", strconv.FormatInt(quota, 10)}}
	case exists(filepath.Join(cgroupV2, "cgroup.controllers")):
		// The cpu controller must be enabled for the children of every ancestor.
		for _, d := range []string{cgroupV2, filepath.Join(cgroupV2, filepath.Dir(c.name))} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+cpu"), 0o644); err != nil {
				return fmt.Errorf("enable the cpu controller in %s: %w", d, err)
			}
		}
		dir = filepath.Join(cgroupV2, c.name)
		settings = [][2]string{{"cpu.max", fmt.Sprintf("%d %d", quota, cpuPeriodUS)}}
	default:
		return errors.New("no cgroup cpu controller mounted")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, s := range settings {
		if err := os.WriteFile(filepath.Join(dir, s[0]), []byte(s[1]), 0o644); err != nil {
			c.remove()
			return fmt.Errorf("%s: %w", s[0], err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		c.remove()
		return fmt.Errorf("move qemu into %s: %w", dir, err)
	}
	return nil
}

// remove deletes the cgroup (it must be empty: QEMU has exited); a missing one is fine.
func (c cpuCgroup) remove() {
	for _, root := range []string{cgroupV1CPU, cgroupV2} {
		os.Remove(filepath.Join(root, c.name))
	}
}

func waitGone(pid int, dir string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !isOurQEMU(pid, dir) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return !isOurQEMU(pid, dir)
}

// qemuImg runs one qemu-img command.
func (b *Backend) qemuImg(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, b.cfg.QEMUImg, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// createOverlay makes dir's writable disk layer over backing.
func (b *Backend) createOverlay(ctx context.Context, dir, backing, backingFormat string) error {
	path := filepath.Join(dir, diskFile)
	os.Remove(path)
	return b.qemuImg(ctx, "create", "-q", "-f", "qcow2", "-b", backing, "-F", backingFormat, path)
}

// tailFile returns the last n lines of a file, or "(empty)".
func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(none)"
	}
	defer f.Close()
	const max = 16 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, 0)
	}
	buf := make([]byte, max)
	k, _ := f.Read(buf)
	s := strings.TrimSpace(strings.ToValidUTF8(string(buf[:k]), "?"))
	if s == "" {
		return "(empty)"
	}
	return lastLines(s, n)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
