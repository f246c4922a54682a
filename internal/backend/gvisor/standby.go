package gvisor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
)

// Standbys: restores into a container created ahead.
//
// A restore (Fork, and so every rollback) is one `runsc restore`, which first creates
// the sandbox — the cgroup, the gofer and sandbox processes, the sentry's kernel up to
// its control server: about half of the restore's time — and then loads the image
// into it. The first half does not depend on the image. So the backend keeps, per
// sandbox shape (template, memory limit, process limit), one standby: a container
// made with `runsc create` whose agent's pipes the backend holds, never started.
// Fork of a spec of that shape takes it and runs `runsc restore` into it (runsc
// restores into a created container when one with the id exists): that process only
// loads the image, and supervises the sandbox as `runsc run` does. A new standby is
// made in the background once the restore that took one is done, off the rollback's
// path (and off its CPU).
//
// A Fork that takes a standby returns a sandbox whose ID is the standby's (a fresh,
// unique "standby-…" id), not spec.ID; callers use the returned sandbox's ID (the
// service only uses spec.ID to make ids unique). A standby that cannot be restored
// into is destroyed and the Fork starts afresh, so a standby never makes a Fork fail.
//
// Life: standbys live until taken or until Close; one a crash left is in the
// backend's scope (List reports it, status "created"), so the next start's clean-up
// removes it like any orphan. Config.NoStandby turns them off (bench measures both,
// with VMEXEC_GVISOR_STANDBY=off).

// standbyKey is the shape of the sandboxes a standby can become.
type standbyKey struct {
	rootfs       string
	memory, pids int64
	templateName string
	templateHash string
}

func keyOf(spec backend.Spec) standbyKey {
	return standbyKey{rootfs: spec.Template.RootFS, memory: spec.MemoryBytes, pids: spec.MaxPIDs,
		templateName: spec.Template.Name, templateHash: spec.Template.Hash}
}

// standby is a created container waiting for a restore.
type standby struct {
	spec  backend.Spec
	pipes []*os.File // host ends: the agent's stdin writer, stdout reader
}

// standbys is the backend's set of standbys; its zero value is empty.
type standbys struct {
	mu      sync.Mutex
	ready   map[standbyKey]*standby
	filling map[standbyKey]bool
	closed  bool
	wg      sync.WaitGroup
}

// takeStandby returns the standby of spec's shape, if one is ready.
func (b *Backend) takeStandby(spec backend.Spec) *standby {
	if b.cfg.NoStandby {
		return nil
	}
	k := keyOf(spec)
	s := &b.standbys
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.ready[k]
	delete(s.ready, k)
	return sb
}

// refillStandby starts making the standby of spec's shape in the background unless
// one is ready or being made. Fork calls it once its restore is done, so that the
// two do not compete for the CPU.
func (b *Backend) refillStandby(spec backend.Spec) {
	if b.cfg.NoStandby {
		return
	}
	k := keyOf(spec)
	s := &b.standbys
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.ready[k] != nil {
		return
	}
	if !s.filling[k] {
		if s.filling == nil {
			s.filling = map[standbyKey]bool{}
		}
		s.filling[k] = true
		s.wg.Add(1)
		go b.fillStandby(k, spec)
	}
}

// fillStandby makes the standby of shape k, like spec but with an id of its own.
func (b *Backend) fillStandby(k standbyKey, spec backend.Spec) {
	defer b.standbys.wg.Done()
	spec.ID = "standby-" + backend.NewImageRef()
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.StartTimeout)
	defer cancel()
	sb, err := b.createStandby(ctx, spec)
	s := &b.standbys
	s.mu.Lock()
	delete(s.filling, k)
	keep := err == nil && !s.closed && s.ready[k] == nil
	if keep {
		if s.ready == nil {
			s.ready = map[standbyKey]*standby{}
		}
		s.ready[k] = sb
	}
	s.mu.Unlock()
	switch {
	case err != nil:
		b.log.Warn("standby for restores", "err", err)
	case !keep:
		b.destroyStandby(sb)
	}
}

// createStandby runs `runsc create` for spec, with the agent's stdio on new pipes.
func (b *Backend) createStandby(ctx context.Context, spec backend.Spec) (_ *standby, err error) {
	dir := b.cfg.bundle(spec.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("bundle dir: %w", err)
	}
	sb := &standby{spec: spec}
	defer func() {
		if err != nil {
			b.destroyStandby(sb)
		}
	}()
	console, err := b.writeBundle(dir, spec)
	if err != nil {
		return nil, err
	}
	defer console.Close()
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	defer inR.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		inW.Close()
		return nil, fmt.Errorf("pipe: %w", err)
	}
	defer outW.Close()
	sb.pipes = []*os.File{inW, outR}
	cmd := exec.CommandContext(ctx, b.cfg.Runsc, append(b.globalArgs(), "create", "--bundle", dir, spec.ID)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, console
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("runsc create %s: %w; console: %s", spec.ID, err, b.consoleTail(spec.ID))
	}
	return sb, nil
}

// writeBundle writes spec's OCI config into the bundle dir and opens its
// console log for appending; the caller closes the log.
func (b *Backend) writeBundle(dir string, spec backend.Spec) (*os.File, error) {
	cfgJSON, err := json.MarshalIndent(b.ociSpec(spec), "", "  ")
	if err != nil {
		return nil, fmt.Errorf("oci spec: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfgJSON, 0o600); err != nil {
		return nil, fmt.Errorf("write oci spec: %w", err)
	}
	console, err := os.OpenFile(filepath.Join(dir, "console.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	return console, nil
}

// destroyStandby removes a standby's container, pipes and bundle.
func (b *Backend) destroyStandby(sb *standby) {
	for _, p := range sb.pipes {
		p.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.DestroyID(ctx, sb.spec.ID); err != nil {
		b.log.Warn("destroy standby", "id", sb.spec.ID, "err", err)
	}
}

// restoreInto restores the image in imageDir into the standby st: `runsc restore`
// finds the created container and only loads the image; it then supervises the
// sandbox. On any error the standby is destroyed.
func (b *Backend) restoreInto(ctx context.Context, st *standby, imageDir string) (_ *Sandbox, err error) {
	t := time.Now()
	id := st.spec.ID
	dir := b.cfg.bundle(id)
	console, err := os.OpenFile(filepath.Join(dir, "console.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		b.destroyStandby(st)
		return nil, fmt.Errorf("console log: %w", err)
	}
	defer console.Close()
	cmd := exec.Command(b.cfg.Runsc, append(b.globalArgs(), "restore", "--image-path", imageDir, "--bundle", dir, id)...)
	cmd.Stdout, cmd.Stderr = console, console
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		b.destroyStandby(st)
		return nil, fmt.Errorf("start runsc restore: %w", err)
	}
	inW, outR := st.pipes[0], st.pipes[1]
	sb := &Sandbox{b: b, id: id, created: time.Now(), cmd: cmd, pipes: st.pipes, exited: make(chan struct{})}
	go func() {
		sb.waitErr = cmd.Wait()
		close(sb.exited)
	}()
	defer func() {
		if err != nil {
			sb.kill()
			os.RemoveAll(dir)
		}
	}()
	hctx, cancel := context.WithTimeout(ctx, b.cfg.StartTimeout)
	defer cancel()
	go func() {
		select {
		case <-sb.exited:
			outR.Close()
		case <-hctx.Done():
		}
	}()
	client, err := agentproto.Dial(hctx, outR, inW, closerFunc(sb.closePipes))
	if err != nil {
		return nil, fmt.Errorf("restore into standby %s: %w; console: %s", id, err, b.consoleTail(id))
	}
	sb.client = client
	sb.GuestFiles = backend.GuestFiles{Client: client, Do: sb.do}
	b.observe("restore", "runsc restore into standby until handshake", t)
	return sb, nil
}

// Close implements the service's optional backend closer: it removes the standbys,
// waiting for those being made. Sandboxes are not touched. Safe to call twice.
func (b *Backend) Close(ctx context.Context) error {
	s := &b.standbys
	s.mu.Lock()
	s.closed = true
	ready := s.ready
	s.ready = nil
	s.mu.Unlock()
	for _, sb := range ready {
		b.destroyStandby(sb)
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }() // a fill in flight destroys its own (closed)
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("gvisor standbys: %w", ctx.Err())
	}
}
