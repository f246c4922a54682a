// Package microvm is the sandbox backend that runs each sandbox as a QEMU `microvm`
// machine: its own guest kernel, no PCI, no firmware to speak of, no network device,
// and the same guest agent as the gVisor backend as PID 1.
//
// # Design
//
// The guest image (see template.Store.EnsureImage) is the template tree as a read-only
// ext4 disk image plus a Debian cloud kernel and a small initramfs. Each sandbox gets a
// state directory holding a qcow2 overlay backed by that disk image, so its writes never
// reach the template or other sandboxes, and one supervising qemu-system-x86_64 process
// booted with -kernel/-initrd. The initramfs loads the virtio modules, mounts the overlay
// as / and execs the agent, which serves agentproto over a virtio-serial port named
// "vmexec"; on the host that port is a unix socket (a QEMU chardev in server mode) that
// the backend connects to. QEMU's QMP socket (see package qmp) drives snapshots and
// shutdown; the serial console goes to console.log, whose last lines are quoted when a
// guest fails to start or dies.
//
// # Accelerator
//
// KVM when it works, else TCG (full emulation, several times slower). Config.Accel
// "auto" probes once per process: the first sandbox boots under KVM (-cpu host, then
// -cpu host,-arch-capabilities, which some nested hosts need) and must reach the agent
// handshake within Config.ProbeTimeout, or it is killed and booted again under TCG; the
// outcome is kept for the process's later sandboxes. Nested KVM that hangs a stock
// kernel is the case this guards against.
//
// # Snapshots
//
// A snapshot image is a directory, images/<ref>/ under the state dir (written as
// images/<ref>.tmp and renamed when whole), with the VM's full state (RAM, CPU and
// devices, saved with QMP `migrate` to a file while the VM is stopped), a copy of the disk's writable layer
// rebased directly onto the image's disk (so every snapshot stands alone, whatever
// chain of restores the sandbox came from), links to the kernel and initramfs the VM
// booted, and meta.json, written last. Fork (also a rollback's) starts QEMU with -incoming from
// that state, on a new overlay over a hard link (or copy) of the snapshot's disk layer,
// and handshake with the restored agent over the new socket: the agent, blocked reading
// its port when the snapshot was taken, carries on with the new connection. A forked
// sandbox does not depend on its image afterwards (DeleteImage may remove it).
//
// The guest's clock is part of the saved state: after a restore it runs behind the
// host's by the time the snapshot sat on disk.
//
// # TCG
//
// Under TCG the guest reads the host's TSC, whose frequency (measured once) is given
// to the kernel: its own calibration fails on a busy host and the boot then hangs. And
// since the first python run in a new QEMU costs about 1.5 s of code translation, a
// freshly booted TCG sandbox runs one `python3 -c pass` in the background (Exec and
// Snapshot wait for it), which a pooled sandbox has long finished when it is used.
//
// # Layout under Config.StateDir
//
//	sandboxes/<id>/meta.json    how the VM was started (accelerator, memory, image files)
//	sandboxes/<id>/qemu.pid     QEMU's pid, checked against /proc/<pid>/cmdline before a kill
//	sandboxes/<id>/disk.qcow2   the sandbox's writable disk layer
//	sandboxes/<id>/lower.qcow2  a restored sandbox's read-only snapshot layer
//	sandboxes/<id>/vmlinuz, initrd.cpio   links to the guest image's
//	sandboxes/<id>/agent.sock, qmp.sock, console.log, qemu.log
//	images/<ref>/               snapshot images (see Snapshots)
//
// The state dir is the backend's scope (see package backend): List and ListImages
// report only what is in it.
//
// A daemon that crashed leaves QEMU processes running; List finds them by these
// directories and DestroyID kills them.
package microvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/template"
)

// Name is the backend's name.
const Name = "microvm"

// Accelerators.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Config configures the microVM backend. Zero fields take defaults.
type Config struct {
	// QEMU is the qemu-system-x86_64 binary; default: found in PATH.
	QEMU string
	// QEMUImg is the qemu-img binary; default: found in PATH.
	QEMUImg string
	// StateDir holds the sandboxes' directories and the snapshot images (required); it
	// is the backend's scope (one per daemon).
	StateDir string
	// AgentPath is the host path of the static vmexec-agent binary, which is built into
	// the guest image (required).
	AgentPath string
	// Accel is "auto" (default: KVM if a probe boot reaches the agent, else TCG),
	// "kvm" or "tcg".
	Accel string
	// Image overrides the guest kernel, its modules directory and busybox; its
	// AgentPath is ignored (AgentPath above is used).
	Image template.ImageOptions
	// CPUs is the number of vCPUs per sandbox; default 1. The guest never runs on
	// more host cores than that.
	CPUs int
	// CPUQuota caps each sandbox's QEMU process (its vCPUs, device emulation and I/O
	// threads together) at this many cores of CPU time, through a host cgroup (see
	// qemu.go's cpuCgroup); 0 sets no cap beyond CPUs.
	CPUQuota float64
	// DefaultMemoryBytes is a sandbox's memory when its spec sets none; default 512 MiB.
	DefaultMemoryBytes int64
	// KernelOverheadBytes is added to a spec's memory for the guest kernel and the
	// agent; default 64 MiB.
	KernelOverheadBytes int64
	// StartTimeout bounds a boot (or restore) up to the agent's handshake; default 60s.
	StartTimeout time.Duration
	// ProbeTimeout bounds the KVM probe boot of Accel "auto"; default 5s.
	ProbeTimeout time.Duration
	// KernelArgs are appended to the guest kernel's command line (say "loglevel=7" to
	// see the boot on the console).
	KernelArgs []string
	// NoWarmUp skips the python run that warms up each new TCG guest in the
	// background (see warmUpRun).
	NoWarmUp bool
	// Progress receives the guest image's build progress; default: logged at info level.
	Progress io.Writer
	// Logger receives diagnostics; default slog.Default().
	Logger *slog.Logger
}

// Validate reports whether the configuration can be used, after defaults.
func (c Config) Validate() error {
	switch c.Accel {
	case "", AccelAuto, AccelKVM, AccelTCG:
	default:
		return fmt.Errorf("microvm: accel %q: want auto, kvm or tcg", c.Accel)
	}
	if c.StateDir == "" {
		return errors.New("microvm: no state dir")
	}
	if c.AgentPath == "" {
		return errors.New("microvm: no guest agent path")
	}
	if c.CPUs < 0 || c.CPUQuota < 0 || c.DefaultMemoryBytes < 0 || c.KernelOverheadBytes < 0 || c.StartTimeout < 0 || c.ProbeTimeout < 0 {
		return errors.New("microvm: negative size or timeout")
	}
	return nil
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Accel == "" {
		c.Accel = AccelAuto
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.DefaultMemoryBytes == 0 {
		c.DefaultMemoryBytes = 512 << 20
	}
	if c.KernelOverheadBytes == 0 {
		c.KernelOverheadBytes = 64 << 20
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 60 * time.Second
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = 5 * time.Second
	}
	if c.QEMU == "" {
		c.QEMU = "qemu-system-x86_64"
	}
	if c.QEMUImg == "" {
		c.QEMUImg = "qemu-img"
	}
}

// Backend runs sandboxes as QEMU microVMs. It implements backend.Backend and
// backend.Snapshotter.
type Backend struct {
	cfg Config
	log *slog.Logger

	imgMu  sync.Mutex
	images map[string]template.Image // by template directory
}

var (
	_ backend.Backend     = (*Backend)(nil)
	_ backend.Snapshotter = (*Backend)(nil)
	_ backend.Preparer    = (*Backend)(nil)
	_ backend.Accelerated = (*Backend)(nil)
)

// New checks the configuration and the host and returns a Backend. It fails with
// backend.ErrUnavailable when QEMU, qemu-img, the guest kernel or the agent binary is
// missing. The guest image is built on first use (or by Prepare).
func New(cfg Config) (*Backend, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var err error
	for _, p := range []*string{&cfg.QEMU, &cfg.QEMUImg} {
		if *p, err = exec.LookPath(*p); err != nil {
			return nil, fmt.Errorf("%s not found (run scripts/setup, or apt-get install qemu-system-x86 qemu-utils): %w", *p, backend.ErrUnavailable)
		}
	}
	if fi, err := os.Stat(cfg.AgentPath); err != nil || fi.IsDir() {
		return nil, fmt.Errorf("guest agent %q not found (build cmd/vmexec-agent): %w", cfg.AgentPath, backend.ErrUnavailable)
	}
	if cfg.Image.Kernel == "" {
		if cfg.Image.Kernel, err = template.FindKernel("/boot"); err != nil {
			return nil, fmt.Errorf("%w: %w", err, backend.ErrUnavailable)
		}
	}
	if cfg.AgentPath, err = filepath.Abs(cfg.AgentPath); err != nil {
		return nil, fmt.Errorf("agent path: %w", err)
	}
	if cfg.StateDir, err = filepath.Abs(cfg.StateDir); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	cfg.Image.AgentPath = cfg.AgentPath
	for _, d := range []string{cfg.sandboxes(), cfg.images()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("state dir: %w", err)
		}
	}
	b := &Backend{cfg: cfg, log: cfg.Logger.With("backend", Name), images: map[string]template.Image{}}
	return b, nil
}

// Name implements backend.Backend.
func (b *Backend) Name() string { return Name }

// Accel reports the accelerator sandboxes use: "kvm" or "tcg", or "auto" while the
// probe has not run yet (it runs with the first Create, or with Prepare).
func (b *Backend) Accel() string {
	if c, ok := b.knownAccel(); ok {
		return c.Accel
	}
	return b.cfg.Accel
}

// Prepare implements backend.Preparer: it builds (or finds) the guest image of
// template tpl and settles the accelerator by booting one throwaway sandbox, so that
// the first Create is as fast as the others. Image build progress goes to progress
// (may be nil).
func (b *Backend) Prepare(ctx context.Context, tpl template.Template, progress io.Writer) error {
	if _, err := b.imageFor(ctx, tpl, progress); err != nil {
		return err
	}
	if _, ok := b.knownAccel(); ok {
		return nil
	}
	sb, err := b.Create(ctx, backend.Spec{ID: fmt.Sprintf("prepare-%d", os.Getpid()), Template: tpl})
	if err != nil {
		return err
	}
	return sb.Destroy(ctx)
}

func (c Config) sandboxes() string           { return filepath.Join(c.StateDir, "sandboxes") }
func (c Config) sandboxDir(id string) string { return filepath.Join(c.sandboxes(), id) }
func (c Config) images() string              { return filepath.Join(c.StateDir, "images") }
func (c Config) image(ref string) string     { return filepath.Join(c.images(), ref) }

// imageFor returns the guest image of template tpl, building it if needed.
func (b *Backend) imageFor(ctx context.Context, tpl template.Template, progress io.Writer) (template.Image, error) {
	key := filepath.Clean(tpl.Dir)
	b.imgMu.Lock()
	defer b.imgMu.Unlock()
	if img, ok := b.images[key]; ok && exists(img.RootFS) && exists(img.Initrd) {
		return img, nil
	}
	if fi, err := os.Stat(tpl.RootFS); tpl.Dir == "" || err != nil || !fi.IsDir() {
		return template.Image{}, fmt.Errorf("template %s-%s (root %q): %w", tpl.Name, tpl.Hash, tpl.RootFS, backend.ErrNotFound)
	}
	if progress == nil {
		progress = b.cfg.Progress
	}
	if progress == nil {
		progress = &logWriter{log: b.log}
	}
	img, err := (&template.Store{}).EnsureImage(ctx, tpl, b.cfg.Image, progress)
	if err != nil {
		if errors.Is(err, template.ErrNoKernel) {
			err = fmt.Errorf("%w: %w", err, backend.ErrUnavailable)
		}
		return template.Image{}, fmt.Errorf("guest image: %w", err)
	}
	b.images[key] = img
	return img, nil
}

// logWriter turns progress lines into log records.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.log.Info("guest image: " + strings.TrimSpace(l))
	}
	return len(p), nil
}

// List implements backend.Backend: every sandbox directory, with the state of its
// QEMU process.
func (b *Backend) List(ctx context.Context) ([]backend.Info, error) {
	ents, err := os.ReadDir(b.cfg.sandboxes())
	if err != nil {
		return nil, fmt.Errorf("list sandboxes: %w", err)
	}
	var infos []backend.Info
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := b.cfg.sandboxDir(e.Name())
		info := backend.Info{ID: e.Name(), Backend: Name, Status: "stopped"}
		if m, err := readMeta(dir); err == nil {
			info.CreatedAt = m.Created
		}
		if pid, ok := readPID(dir); ok {
			if isOurQEMU(pid, dir) {
				info.Status, info.PID = "running", pid
			} else {
				info.Status = "dead"
			}
		}
		infos = append(infos, info)
	}
	return infos, nil
}

// DestroyID implements backend.Backend: it stops the sandbox's QEMU, found by its pid
// file and verified by its command line, and removes its directory.
func (b *Backend) DestroyID(ctx context.Context, id string) error {
	if !backend.ValidRef(id) {
		return fmt.Errorf("destroy: invalid id %q", id)
	}
	dir := b.cfg.sandboxDir(id)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if pid, ok := readPID(dir); ok {
		if err := killVerified(pid, dir); err != nil {
			return fmt.Errorf("destroy %s: %w", id, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("destroy %s: %w", id, err)
	}
	b.log.Debug("sandbox destroyed by id", "id", id)
	return nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
