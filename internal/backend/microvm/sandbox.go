package microvm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/microvm/qmp"
	"github.com/vmexec/vmexec/internal/fsutil"
)

// Sandbox is one microVM: a QEMU process, its QMP connection and the guest agent's.
type Sandbox struct {
	backend.GuestFiles // Ping and the file methods, through do

	b    *Backend
	id   string
	dir  string
	meta vmMeta

	proc   *vmProc
	qmp    *qmp.Client
	conn   net.Conn
	client *agentproto.Client

	warm       chan struct{} // closed when the warm-up run is over (see warmUp)
	warmCancel context.CancelFunc

	destroyOnce sync.Once
	destroyErr  error
}

var (
	_ backend.Sandbox     = (*Sandbox)(nil)
	_ backend.Accelerated = (*Sandbox)(nil)
)

// Create implements backend.Backend.
func (b *Backend) Create(ctx context.Context, spec backend.Spec) (backend.Sandbox, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("create %s: %w", spec.ID, err)
	}
	img, err := b.imageFor(ctx, spec.Template, nil)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", spec.ID, err)
	}
	m := vmMeta{
		ID: spec.ID, MemoryMiB: b.memoryMiB(spec), CPUs: b.cfg.CPUs, KernelArgs: b.cfg.KernelArgs,
		Kernel: img.Kernel, Initrd: img.Initrd, Base: img.RootFS, BaseFormat: img.RootFSFormat,
	}
	if spec.MaxPIDs > 0 {
		// Room for the guest's kernel threads and the agent above the spec's cap.
		m.ThreadsMax = spec.MaxPIDs + 256
	}
	return b.start(ctx, m, "")
}

func (b *Backend) memoryMiB(spec backend.Spec) int {
	mem := spec.MemoryBytes
	if mem <= 0 {
		mem = b.cfg.DefaultMemoryBytes
	}
	mem += b.cfg.KernelOverheadBytes
	return int((mem + 1<<20 - 1) >> 20)
}

// start creates the sandbox's directory, with links to the kernel and initramfs and a
// disk overlay, and boots it, or, with snapDir set, restores it from that snapshot (m
// then comes from the snapshot). On any error everything it made is removed.
func (b *Backend) start(ctx context.Context, m vmMeta, snapDir string) (_ *Sandbox, err error) {
	dir := b.cfg.sandboxDir(m.ID)
	if pid, ok := readPID(dir); ok && isOurQEMU(pid, dir) {
		return nil, fmt.Errorf("sandbox %s already exists", m.ID)
	}
	os.RemoveAll(dir) // a leftover of a crash, with no QEMU
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("sandbox dir: %w", err)
	}
	undo = append(undo, func() { os.RemoveAll(dir) })

	// The kernel and initramfs, linked so that the image's may be pruned.
	kernel, initrd := filepath.Join(dir, kernelFile), filepath.Join(dir, initrdFile)
	if err := errors.Join(linkOrCopy(m.Kernel, kernel), linkOrCopy(m.Initrd, initrd)); err != nil {
		return nil, fmt.Errorf("guest image: %w", err)
	}
	m.Kernel, m.Initrd = kernel, initrd
	backing, backingFormat := m.Base, m.BaseFormat
	var attempts []attempt
	probing := false
	if snapDir != "" {
		// The snapshot's disk layer, linked so that the sandbox outlives the snapshot.
		if err := linkOrCopy(filepath.Join(snapDir, diskFile), filepath.Join(dir, lowerFile)); err != nil {
			return nil, fmt.Errorf("snapshot disk: %w", err)
		}
		m.Lower = true
		backing, backingFormat = filepath.Join(dir, lowerFile), "qcow2"
		attempts = []attempt{{accelChoice{m.Accel, m.CPU}, b.cfg.StartTimeout}}
	} else {
		var release func()
		attempts, probing, release = b.plan()
		defer release()
	}

	m.Created = time.Now().UTC()
	var state string
	if snapDir != "" {
		state = filepath.Join(snapDir, stateFile)
	}
	for i, at := range attempts {
		m.Accel, m.CPU = at.Accel, at.CPU
		if snapDir == "" { // a restore keeps the snapshot's
			m.TSCkHz = 0
			if at.Accel == AccelTCG {
				m.TSCkHz = hostTSCkHz()
			}
		}
		if err = b.createOverlay(ctx, dir, backing, backingFormat); err != nil {
			return nil, err
		}
		if err = writeJSON(filepath.Join(dir, metaFile), m); err != nil {
			return nil, fmt.Errorf("sandbox meta: %w", err)
		}
		var sb *Sandbox
		if sb, err = b.boot(ctx, dir, m, state, at.timeout); err == nil {
			sb.startWarmUp(state == "")
			if probing {
				b.settle(at.accelChoice)
			}
			return sb, nil
		}
		if ctx.Err() != nil {
			break
		}
		if i < len(attempts)-1 {
			b.log.Info("microVM boot attempt failed; trying the next accelerator", "id", m.ID, "accel", at.Accel, "cpu", at.CPU, "err", err)
			os.Remove(filepath.Join(dir, consoleFile))
			os.Remove(filepath.Join(dir, qemuLogFile))
		}
	}
	return nil, fmt.Errorf("create %s: %w", m.ID, err)
}

// boot starts QEMU for the sandbox in dir and waits, at most timeout, for the agent's
// handshake; with state set, QEMU first loads that saved VM state. On error QEMU is
// gone and the error quotes the console.
func (b *Backend) boot(ctx context.Context, dir string, m vmMeta, state string, timeout time.Duration) (_ *Sandbox, err error) {
	start := time.Now()
	proc, err := b.startQEMU(dir, qemuArgs(dir, m, state != ""))
	if err != nil {
		return nil, err
	}
	sb := &Sandbox{b: b, id: m.ID, dir: dir, meta: m, proc: proc, warm: make(chan struct{}), warmCancel: func() {}}
	defer func() {
		if err != nil {
			sb.stop()
			err = fmt.Errorf("sandbox %s did not start (accel %s): %w; %s", m.ID, m.Accel, err, sb.diagnostics())
		}
	}()
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	qconn, err := dialUnix(hctx, dir, qmpSock, proc)
	if err != nil {
		return nil, err
	}
	if sb.qmp, err = qmp.NewClient(hctx, qconn); err != nil {
		return nil, err
	}
	if state != "" {
		if err := sb.incoming(hctx, state); err != nil {
			return nil, err
		}
	}
	if sb.conn, err = dialUnix(hctx, dir, agentSock, proc); err != nil {
		return nil, err
	}
	// Stop waiting for the handshake as soon as QEMU exits.
	go func() {
		select {
		case <-proc.exited:
			sb.conn.Close()
		case <-hctx.Done():
		}
	}()
	if sb.client, err = agentproto.Dial(hctx, sb.conn, sb.conn, sb.conn); err != nil {
		if !proc.alive() {
			err = fmt.Errorf("%w: %w", errQEMUExited, err)
		}
		return nil, err
	}
	sb.GuestFiles = backend.GuestFiles{Client: sb.client, Do: sb.do}
	b.log.Debug("sandbox started", "id", m.ID, "accel", m.Accel, "restored", state != "",
		"agent", sb.client.Guest.Agent, "ms", time.Since(start).Milliseconds())
	return sb, nil
}

// warmUpRun is run once in a freshly booted TCG guest. Under TCG the first run of
// python in a VM costs about 1.5 s, nearly all of it QEMU translating python's code for
// the first time (later runs take 0.15 s); doing that while the sandbox waits in the
// service's pool, instead of in the user's first run, is the cheapest place for it.
var warmUpRun = agentproto.ExecRequest{Language: "python", Code: "pass", Limits: agentproto.Limits{TimeoutMS: 60_000}}

// startWarmUp runs warmUpRun in the background when the sandbox was booted (not
// restored) under TCG and Config.NoWarmUp is not set. Exec and Snapshot wait for it.
func (sb *Sandbox) startWarmUp(booted bool) {
	if !booted || sb.meta.Accel != AccelTCG || sb.b.cfg.NoWarmUp {
		close(sb.warm)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	sb.warmCancel = cancel
	go func() {
		defer close(sb.warm)
		defer cancel()
		t0 := time.Now()
		req := warmUpRun
		res, err := sb.client.Exec(ctx, &req, nil)
		if err != nil {
			sb.b.log.Debug("warm-up run failed", "id", sb.id, "err", err)
			return
		}
		sb.b.log.Debug("warm-up run", "id", sb.id, "verdict", res.Verdict, "ms", time.Since(t0).Milliseconds())
	}()
}

// waitWarm waits for the warm-up run to end.
func (sb *Sandbox) waitWarm(ctx context.Context) error {
	select {
	case <-sb.warm:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// diagnostics describes why a guest may have failed: QEMU's state and output, and the
// last lines of the serial console.
func (sb *Sandbox) diagnostics() string {
	s := sb.proc.exitStatus()
	if q := tailFile(filepath.Join(sb.dir, qemuLogFile), 4); q != "(empty)" && q != "(none)" {
		s += "; qemu: " + q
	}
	return s + "; console:\n" + tailFile(filepath.Join(sb.dir, consoleFile), 12)
}

// ID implements backend.Sandbox.
func (sb *Sandbox) ID() string { return sb.id }

// Accel reports the accelerator the sandbox runs under.
func (sb *Sandbox) Accel() string { return sb.meta.Accel }

// Info implements backend.Sandbox.
func (sb *Sandbox) Info(ctx context.Context) backend.Info {
	status := "running"
	if !sb.proc.alive() {
		status = "dead"
	}
	return backend.Info{ID: sb.id, Backend: Name, Status: status, CreatedAt: sb.meta.Created, PID: sb.proc.pid}
}

// Exec implements backend.Sandbox.
func (sb *Sandbox) Exec(ctx context.Context, req *agentproto.ExecRequest, out agentproto.OutputFunc) (res *agentproto.ExecResult, err error) {
	err = sb.do(ctx, func() error {
		res, err = sb.client.Exec(ctx, req, out)
		return err
	})
	return res, err
}

// do runs one call to the guest agent, after the warm-up run, failing fast when the
// VM is dead and classifying a failed call (see classify).
func (sb *Sandbox) do(ctx context.Context, call func() error) error {
	if err := sb.waitWarm(ctx); err != nil {
		return err
	}
	if !sb.proc.alive() {
		return sb.deadError()
	}
	if err := call(); err != nil {
		return sb.classify(ctx, err)
	}
	return nil
}

// classify turns a call that failed because the connection broke into a DeadError
// when the VM died. Errors the guest reported (a missing file, an invalid request)
// and ctx's own error are returned as they are.
func (sb *Sandbox) classify(ctx context.Context, err error) error {
	if !errors.Is(err, agentproto.ErrClosed) {
		return err
	}
	// The connection broke: give QEMU a moment to exit so the cause can be read.
	select {
	case <-sb.proc.exited:
	case <-time.After(2 * time.Second):
		sb.stop()
	}
	return sb.deadError()
}

func (sb *Sandbox) deadError() error {
	console := tailFile(filepath.Join(sb.dir, consoleFile), 8)
	verdict := agentproto.VerdictKilled
	if strings.Contains(console, "Out of memory") || strings.Contains(console, "oom-kill") {
		verdict = agentproto.VerdictMemoryLimit
	}
	return &backend.DeadError{Verdict: verdict, Detail: sb.proc.exitStatus() + "; console: " + console}
}

// stop ends QEMU: a QMP quit, then SIGKILL to its process group if it lingers.
func (sb *Sandbox) stop() {
	if sb.warmCancel != nil {
		sb.warmCancel()
	}
	if sb.conn != nil {
		sb.conn.Close()
	}
	if sb.qmp != nil {
		if sb.proc.alive() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			sb.qmp.Execute(ctx, "quit", nil, nil)
			cancel()
		}
		sb.qmp.Close()
	}
	select {
	case <-sb.proc.exited:
	case <-time.After(3 * time.Second):
		sb.b.log.Warn("qemu did not quit; killing it", "id", sb.id, "pid", sb.proc.pid)
	}
	sb.proc.killNow() // also reaps whatever QEMU left in its group
}

// Destroy implements backend.Sandbox.
func (sb *Sandbox) Destroy(ctx context.Context) error {
	sb.destroyOnce.Do(func() {
		sb.stop()
		// DestroyID may have removed the directory, and a sandbox restored under the
		// same id may own it now: remove it only if it is still this sandbox's.
		if pid, ok := readPID(sb.dir); ok && pid != sb.proc.pid {
			return
		}
		if err := os.RemoveAll(sb.dir); err != nil {
			sb.destroyErr = fmt.Errorf("remove sandbox dir: %w", err)
		}
		sb.b.log.Debug("sandbox destroyed", "id", sb.id)
	})
	return sb.destroyErr
}

// linkOrCopy hard-links src to dst, or copies it when they are on different
// filesystems.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	return fsutil.CopyFile(src, dst, 0o600)
}
