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
// sandbox shape (template, memory limit, process limit), Config.Standbys standbys:
// containers made with `runsc create` whose agent's pipes the backend holds, never
// started. Fork of a spec of that shape takes one and restores into it (restore.go:
// through the container's control server, or with `runsc restore`, which restores
// into a created container when one with the id exists): that only loads the image.
// When none is ready but one is being made, Fork waits for it rather than restore
// afresh, which would make a container itself. New standbys are made in the
// background once the restore that took one is done, off the rollback's path (and
// off its CPU); the second standby serves a rollback that follows at once.
//
// Standbys are sandboxes of the host like any other: the service counts them in its
// bounds, asks before one is made (SetStandbyRoom) and drops them first when a
// start needs the room (backend.StandbyHolder).
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
	pid   int        // the sandbox process's (runsc create --pid-file)
}

// standbys is the backend's set of standbys; its zero value is empty.
type standbys struct {
	mu      sync.Mutex
	ready   map[standbyKey][]*standby
	filling map[standbyKey]int
	memory  int64         // the memory limits of the ready and filling ones
	n       int           // how many are ready or filling
	changed chan struct{} // closed (and replaced) when a fill ends
	gen     int           // DropStandbys's count: a fill of an older one is dropped
	room    func(memoryBytes int64) bool
	closed  bool
	wg      sync.WaitGroup
}

// awaitChange waits, with s.mu held, which it releases, until a fill ends; false
// when ctx or timeout ends first.
func (s *standbys) awaitChange(ctx context.Context, timeout *time.Timer) bool {
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	ch := s.changed
	s.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		return false
	case <-timeout.C:
		return false
	}
}

// DefaultStandbys is Config.Standbys when it is 0: two per shape, so that a rollback
// right after another finds one ready while the one it used is being replaced.
const DefaultStandbys = 2

// standbyWait bounds how long a Fork waits for a standby being made rather than
// restoring afresh (which makes a container itself, so takes longer still).
const standbyWait = 5 * time.Second

// takeStandby returns a standby of spec's shape: a ready one, else the next one
// being made once it is (a fresh restore would make a container too, and take
// longer); nil when none is ready or coming, or ctx ends first.
func (b *Backend) takeStandby(ctx context.Context, spec backend.Spec) *standby {
	if b.cfg.NoStandby {
		return nil
	}
	k := keyOf(spec)
	s := &b.standbys
	timeout := time.NewTimer(standbyWait)
	defer timeout.Stop()
	for {
		s.mu.Lock()
		if q := s.ready[k]; len(q) > 0 {
			sb := q[len(q)-1]
			s.ready[k] = q[:len(q)-1]
			s.n--
			s.memory -= sb.spec.MemoryBytes
			s.mu.Unlock()
			return sb
		}
		if s.closed || s.filling[k] == 0 || b.cfg.NoStandbyWait {
			s.mu.Unlock()
			return nil
		}
		if !s.awaitChange(ctx, timeout) {
			return nil
		}
	}
}

// refillStandby starts making standbys of spec's shape in the background, up to
// Config.Standbys ready or being made, as far as the service's room check allows.
// Fork calls it once its restore is done, so that the two do not compete for the
// CPU.
func (b *Backend) refillStandby(spec backend.Spec) {
	if b.cfg.NoStandby {
		return
	}
	k := keyOf(spec)
	s := &b.standbys
	for {
		s.mu.Lock()
		if s.closed || len(s.ready[k])+s.filling[k] >= b.cfg.Standbys {
			s.mu.Unlock()
			return
		}
		// Counted before the service is asked (its room check sees it in Standbys),
		// so that neither another refill nor a start admitted meanwhile takes the
		// same room.
		if s.filling == nil {
			s.filling = map[standbyKey]int{}
		}
		s.filling[k]++
		s.n++
		s.memory += spec.MemoryBytes
		room, gen := s.room, s.gen
		s.mu.Unlock()
		ok := room == nil || room(spec.MemoryBytes) // without s.mu: room locks the service
		s.mu.Lock()
		if !ok || s.closed || s.gen != gen {
			s.filling[k]--
			s.n--
			s.memory -= spec.MemoryBytes
			s.signalLocked()
			s.mu.Unlock()
			return
		}
		s.wg.Add(1)
		go b.fillStandby(k, spec, gen)
		s.mu.Unlock()
	}
}

// signalLocked wakes those waiting for a fill to end (takeStandby, DropStandbys);
// s.mu held.
func (s *standbys) signalLocked() {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

// fillStandby makes a standby of shape k, like spec but with an id of its own; gen
// is DropStandbys's count when it started.
func (b *Backend) fillStandby(k standbyKey, spec backend.Spec, gen int) {
	defer b.standbys.wg.Done()
	spec.ID = "standby-" + backend.NewImageRef()
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.StartTimeout)
	defer cancel()
	sb, err := b.createStandby(ctx, spec)
	s := &b.standbys
	s.mu.Lock()
	s.filling[k]--
	keep := err == nil && !s.closed && s.gen == gen
	if keep {
		if s.ready == nil {
			s.ready = map[standbyKey][]*standby{}
		}
		s.ready[k] = append(s.ready[k], sb)
	} else {
		s.n--
		s.memory -= spec.MemoryBytes
	}
	s.signalLocked()
	s.mu.Unlock()
	switch {
	case err != nil:
		b.log.Warn("standby for restores", "err", err)
	case !keep:
		b.destroyStandby(sb)
	}
}

// Standbys implements backend.StandbyHolder.
func (b *Backend) Standbys() (n int, memoryBytes int64) {
	s := &b.standbys
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n, s.memory
}

// SetStandbyRoom implements backend.StandbyHolder.
func (b *Backend) SetStandbyRoom(room func(memoryBytes int64) bool) {
	s := &b.standbys
	s.mu.Lock()
	defer s.mu.Unlock()
	s.room = room
}

// DropStandbys implements backend.StandbyHolder: the ready standbys are destroyed,
// and those being made destroy themselves once made; it returns when they have
// (or ctx ends, or after standbyWait).
func (b *Backend) DropStandbys(ctx context.Context) int {
	s := &b.standbys
	s.mu.Lock()
	s.gen++
	var drop []*standby
	for k, q := range s.ready {
		drop = append(drop, q...)
		delete(s.ready, k)
	}
	dropped := len(drop)
	for _, n := range s.filling {
		dropped += n
	}
	for _, sb := range drop {
		s.n--
		s.memory -= sb.spec.MemoryBytes
	}
	s.mu.Unlock()
	for _, sb := range drop {
		b.destroyStandby(sb)
	}
	// The ones being made count until they are made (and destroyed): wait for
	// them, so that a caller making room sees it made.
	timeout := time.NewTimer(standbyWait)
	defer timeout.Stop()
	for {
		s.mu.Lock()
		filling := 0
		for _, n := range s.filling {
			filling += n
		}
		if filling == 0 {
			s.mu.Unlock()
			return dropped
		}
		if !s.awaitChange(ctx, timeout) {
			return dropped
		}
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
	pidFile := filepath.Join(dir, "sandbox.pid")
	cmd := exec.CommandContext(ctx, b.cfg.Runsc, append(b.globalArgs(), "create", "--bundle", dir, "--pid-file", pidFile, spec.ID)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, console
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("runsc create %s: %w; console: %s", spec.ID, err, b.consoleTail(spec.ID))
	}
	if sb.pid, err = readPIDFile(pidFile); err != nil {
		return nil, err
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

// restoreInto restores the image in imageDir into the standby st: through its
// control server (Config.Restore, restore.go), or with `runsc restore`, which
// finds the created container and only loads the image; it then supervises the
// sandbox. On any error the standby is destroyed.
func (b *Backend) restoreInto(ctx context.Context, st *standby, imageDir string) (_ *Sandbox, err error) {
	if b.cfg.Restore == RestoreControl {
		return b.restoreDirect(ctx, st, imageDir) // restore.go: no runsc process
	}
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
	sb := &Sandbox{b: b, id: id, created: time.Now(), cmd: cmd, pid: cmd.Process.Pid, pipes: st.pipes, exited: make(chan struct{})}
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
	s.mu.Unlock()
	b.DropStandbys(ctx)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }() // a fill in flight destroys its own (closed)
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("gvisor standbys: %w", ctx.Err())
	}
}
