package gvisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
)

// Sandbox is one runsc container and what supervises it: the `runsc run` (or `runsc
// restore`) process, or, for a restore through the control server (restore.go), the
// daemon's own Wait call.
type Sandbox struct {
	backend.GuestFiles // Ping and the file methods, through do

	b       *Backend
	id      string
	created time.Time

	cmd     *exec.Cmd     // nil when restored through the control server
	pid     int           // the supervising process's, else the sandbox process's
	watch   *net.UnixConn // the Wait call's connection when cmd is nil
	client  *agentproto.Client
	pipes   []*os.File // host ends: stdin writer, stdout reader
	exited  chan struct{}
	waitErr error // set before exited closes

	destroyOnce sync.Once
	destroyErr  error
}

var _ backend.Sandbox = (*Sandbox)(nil)

// Create implements backend.Backend.
func (b *Backend) Create(ctx context.Context, spec backend.Spec) (backend.Sandbox, error) {
	return b.start(ctx, spec, "")
}

// start launches `runsc run`, or `runsc restore` from imageDir when it is set, and
// performs the agent handshake. On any error everything it made is removed.
func (b *Backend) start(ctx context.Context, spec backend.Spec, imageDir string) (_ *Sandbox, err error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("create %s: %w", spec.ID, err)
	}
	op := "create"
	if imageDir != "" {
		op = "restore"
	}
	t := time.Now()
	dir := b.cfg.bundle(spec.ID)
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("bundle dir: %w", err)
	}
	undo = append(undo, func() { os.RemoveAll(dir) })
	console, err := b.writeBundle(dir, spec)
	if err != nil {
		return nil, err
	}
	defer console.Close()

	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("pipe: %w", err)
	}
	args := b.globalArgs()
	if imageDir != "" {
		args = append(args, "restore", "--image-path", imageDir, "--bundle", dir, spec.ID)
	} else {
		args = append(args, "run", "--bundle", dir, spec.ID)
	}
	// Not CommandContext: ctx bounds start-up, not the sandbox's life.
	cmd := exec.Command(b.cfg.Runsc, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, console
	cmd.Dir = dir
	// Own process group: a Ctrl-C to the daemon's terminal must not kill sandboxes
	// behind the daemon's back; the daemon destroys them itself.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("start runsc: %w", err)
	}
	inR.Close()
	outW.Close()
	t = b.observe(op, "bundle and spawn", t)
	sb := &Sandbox{b: b, id: spec.ID, created: time.Now(), cmd: cmd, pid: cmd.Process.Pid, pipes: []*os.File{inW, outR}, exited: make(chan struct{})}
	go func() {
		sb.waitErr = cmd.Wait()
		close(sb.exited)
	}()
	undo = append(undo, func() {
		sb.kill()
		// A `runsc run` stopped while still creating the container (a start-up whose
		// context ended) can register it after kill's delete: delete again now that
		// it has exited, or it is left in the runsc root.
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := b.runsc(dctx, "delete", "--force", spec.ID); err != nil && !isNotExist(err) {
			b.log.Warn("runsc delete", "id", spec.ID, "err", err)
		}
	})

	hctx, cancel := context.WithTimeout(ctx, b.cfg.StartTimeout)
	defer cancel()
	// Stop waiting for the handshake as soon as runsc exits.
	go func() {
		select {
		case <-sb.exited:
			outR.Close()
		case <-hctx.Done():
		}
	}()
	client, err := agentproto.Dial(hctx, outR, inW, closerFunc(sb.closePipes))
	if err != nil {
		return nil, fmt.Errorf("sandbox %s did not start: %w; console: %s", spec.ID, err, b.consoleTail(spec.ID))
	}
	b.observe(op, "runsc until handshake", t)
	sb.client = client
	sb.GuestFiles = backend.GuestFiles{Client: client, Do: sb.do}
	b.log.Debug("sandbox started", "id", spec.ID, "restored", imageDir != "", "agent", client.Guest.Agent)
	return sb, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

func (sb *Sandbox) closePipes() error {
	for _, p := range sb.pipes {
		p.Close()
	}
	return nil
}

func (b *Backend) consoleTail(id string) string {
	data, _ := os.ReadFile(filepath.Join(b.cfg.bundle(id), "console.log"))
	if len(data) == 0 {
		return "(empty)"
	}
	return lastLines(string(data), 8)
}

// ID implements backend.Sandbox.
func (sb *Sandbox) ID() string { return sb.id }

// Info implements backend.Sandbox.
func (sb *Sandbox) Info(ctx context.Context) backend.Info {
	status := "running"
	select {
	case <-sb.exited:
		status = "dead"
	default:
	}
	return backend.Info{ID: sb.id, Backend: Name, Status: status, CreatedAt: sb.created, PID: sb.pid}
}

// Exec implements backend.Sandbox.
func (sb *Sandbox) Exec(ctx context.Context, req *agentproto.ExecRequest, out agentproto.OutputFunc) (res *agentproto.ExecResult, err error) {
	err = sb.do(ctx, func() error {
		res, err = sb.client.Exec(ctx, req, out)
		return err
	})
	return res, err
}

// do runs one call to the guest agent, failing fast when the sandbox is dead and
// classifying a failed call (see classify).
func (sb *Sandbox) do(ctx context.Context, call func() error) error {
	select {
	case <-sb.exited:
		return sb.deadError()
	default:
	}
	if err := call(); err != nil {
		return sb.classify(ctx, err)
	}
	return nil
}

// classify turns a call that failed because the connection broke into a DeadError
// when the sandbox died. Errors the guest reported (a missing file, an invalid
// request) and ctx's own error are returned as they are.
func (sb *Sandbox) classify(ctx context.Context, err error) error {
	if !errors.Is(err, agentproto.ErrClosed) {
		return err
	}
	// The pipe broke: give runsc a moment to exit so the cause can be read.
	select {
	case <-sb.exited:
	case <-time.After(2 * time.Second):
		sb.kill()
	}
	return sb.deadError()
}

func (sb *Sandbox) deadError() error {
	verdict := agentproto.VerdictKilled
	if sb.b.cfg.oomKilled(sb.id) {
		verdict = agentproto.VerdictMemoryLimit
	}
	detail := "runsc exited"
	if sb.waitErr != nil {
		detail = sb.waitErr.Error()
	}
	return &backend.DeadError{Verdict: verdict, Detail: detail + "; console: " + sb.b.consoleTail(sb.id)}
}

// kill stops the container and its supervising process and waits for it.
func (sb *Sandbox) kill() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sb.closePipes()
	if _, err := sb.b.runsc(ctx, "delete", "--force", sb.id); err != nil && !isNotExist(err) {
		sb.b.log.Warn("runsc delete", "id", sb.id, "err", err)
	}
	select {
	case <-sb.exited:
	case <-time.After(3 * time.Second):
		// Its process group: runsc's, or the sandbox process's own session.
		syscall.Kill(-sb.pid, syscall.SIGKILL)
		if sb.watch != nil {
			sb.watch.Close()
		}
		<-sb.exited
	}
}

// Destroy implements backend.Sandbox.
func (sb *Sandbox) Destroy(ctx context.Context) error {
	sb.destroyOnce.Do(func() {
		sb.kill()
		sb.b.restored.Delete(sb.id)
		if err := os.RemoveAll(sb.b.cfg.bundle(sb.id)); err != nil {
			sb.destroyErr = fmt.Errorf("remove bundle: %w", err)
		}
		sb.b.log.Debug("sandbox destroyed", "id", sb.id)
	})
	return sb.destroyErr
}
