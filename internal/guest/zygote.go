package guest

import (
	"bufio"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The python zygote: the fast path of python runs.
//
// Most of a warm `print(1)` is python3's own start-up (about 20 ms inside gVisor). So the
// agent keeps one started interpreter, the zygote (zygote.py), and forks each python run
// from it, which takes a few milliseconds.
//
// # Life
//
// The zygote is started in the background after a python run, through the launcher, with
// that run's spec and environment except that the script is zygote.py (written to the run
// base for the moment it takes to start): so it has the run's interpreter and flags,
// rlimits, user and environment. It is used only by runs whose key
// (zygoteKey: those, plus the interpreter file's identity) is equal, and there is at most
// one: a run with another key goes the normal way, and a key seen in two runs in a row
// replaces it. A zygote that fails to start is retried after zygoteRetry. The zygote lives
// in its own process group, has no host pipes, and ends when the agent kills it or closes
// its control socket.
//
// # Protocol
//
// The control socket is a SOCK_SEQPACKET socketpair, the zygote's end at its fd 4
// (zygoteCtrlFD). Messages, one per packet:
//
//	zygote → agent  "ready" | "unfit <why>"            once, after start-up
//	agent → zygote  "run\0<script>\0<cwd>\0<argv>…"     + SCM_RIGHTS stdin, stdout, stderr
//	zygote → agent  "pid <n>", "go", then "exit <wait status>"
//	              | "error <why>" (nothing ran)
//	              | "stale" | "gone" (nothing ran; the zygote exits, or has died)
//	agent → zygote  "spare"                              after a run's result is sent
//
// A fork costs ~7 ms inside gVisor, so the zygote keeps a forked spare waiting on the
// socket, forked while no run is waiting. The spare takes the request (its check that the
// zygote still lives answers "gone"), chdirs to cwd as the run user (failure: "error"),
// puts itself in its own process group (the zygote does too), reports its pid, becomes
// the run and says "go" just before the script runs (after checking once more that the
// zygote lives: a run whose exit nobody would report must not start); the zygote waits
// for it, reports the run's raw wait status and forks the next spare (with the "hint"
// speed-up of fast.go, once the agent says "spare": its result is sent, or after
// zygoteHintWait; a spare ignores a late "spare"). The agent hands the status to
// waitProc as if it had reaped the run itself: timeouts, output limits, group
// kills, leftovers and verdicts work exactly as for a directly started program. The run
// dups the fds onto 0-2, rebuilds sys.stdin/stdout/stderr as python3 -u does, sets
// sys.argv, sys.orig_argv, sys.path[0] and a fresh __main__, and runs the script at the
// top level of zygote.py; uncaught exceptions are printed like PyErr_Print
// (sys.excepthook, zygote frames removed), and the exit does the rest (SystemExit,
// threads, atexit, exit status): the interpreter's own, or with the "exit" speed-up of
// fast.go zygote.py's _exit, which does what Py_FinalizeEx does that a program can
// see (threads joined, atexit handlers, stdio flushed — status 120 if that fails —,
// garbage collected, the run's own modules cleared newest first) and then os._exit,
// without tearing down what the run inherited from the zygote: that touches, and in
// gVisor copies, most of the zygote's pages, and was half of a print(1)'s run.
//
// # Staleness
//
// A forked run differs from a fresh interpreter only in what start-up read. The
// environment, limits, user and interpreter binary are in the key. The file system part
// (sys.path directories, the user's site-packages even if missing, .pth files, the site
// customisation modules) is fingerprinted by the zygote at start (size, mtime and ctime
// of each: not the inode number, which gVisor assigns anew after a restore, so that a
// zygote restored from a snapshot stays fit) and checked before each fork; a change
// (say, pip install --user) makes it answer "stale": that run goes the normal way and
// a new zygote is started. A zygote whose start-up runs the user's own
// code (usercustomize, or a sitecustomize the user can write) declares itself unfit.
//
// # Failure
//
// Anything unexpected before the zygote reports a pid (a dead zygote, an error reply, a
// protocol error, no reply within zygoteReplyWait) makes the run go the normal way, and the
// next python run starts a new zygote. If the request may have reached the zygote, the
// zygote is stopped and any child it forked is killed first, so a script never runs twice.
// A zygote that dies during a run (the script killed it) does not end it: as PID 1 the
// agent inherits the run and waits for it itself (reaper.adopt). Outside a sandbox the
// run's exit status is lost: its group is killed and it reports an error, verdict killed.
//
// # Known differences
//
// A forked run shares the zygote's str hash seed (PYTHONHASHSEED) and address-space
// layout with the other runs of the same zygote; its parent is the zygote, and its
// /proc/self/cmdline is the zygote's; the stack above the script's module frame has one
// frame of zygote.py (traceback.print_stack, sys._getframe(1), warnings' stacklevel); the
// uid runs more processes against max_procs while the zygote exists (the zygote during a
// forked run; the zygote and its spare between runs): a start that fails at the process
// limit stops the zygote and is tried again (startDirect). With the "exit" speed-up, an
// object the run left only in a module that start-up imported (say, an open file stored
// in sys or os) is not finalized at exit: its __del__ does not run and, if it is a file,
// its buffer is not flushed (python promises neither for objects alive at exit);
// with "freeze", gc.get_freeze_count() is not 0 in a forked run.
// Options.DisableZygote turns the fast path off.

//go:embed zygote.py
var zygoteSource []byte

const (
	zygoteCtrlFD    = 4 // the zygote's end of its control socket
	zygoteFile      = "python-zygote.py"
	zygoteStartWait = 10 * time.Second       // launcher + interpreter start-up
	zygoteReplyWait = 2 * time.Second        // a reply to a run request (one fork)
	zygoteRetry     = 30 * time.Second       // after a zygote failed to start
	zygoteStopWait  = time.Second            // for a zygote to exit when told to
	zygoteHintWait  = 100 * time.Millisecond // zygote.py's _HINT_WAIT: at most this for "spare"
)

// errZygote marks zygote failures; they are never a run's result. errZygoteRefused is a
// zygote's "error" reply: nothing ran, and the zygote can take the next run.
var (
	errZygote        = errors.New("python zygote")
	errZygoteRefused = fmt.Errorf("%w refused the run", errZygote)
)

// zygoteKey is what a run must share with a zygote to be forked from it.
type zygoteKey struct {
	setuid      bool
	uid, gid    uint32
	fsize       int64
	nproc       int64
	flags       string // the interpreter's argv without the script, NUL-separated
	env         string // NUL-separated
	interpreter string // path, size and mtime
}

// zygoteKeyOf returns p's key, or false if p cannot go through a zygote.
func zygoteKeyOf(p *proc) (zygoteKey, bool) {
	argv := p.spec.Argv
	fi := p.interpreterInfo
	if p.interpreter == "" || fi == nil || len(argv) < 2 {
		return zygoteKey{}, false
	}
	return zygoteKey{
		setuid: p.spec.Setuid, uid: p.spec.UID, gid: p.spec.GID,
		fsize: p.spec.FileSize, nproc: p.spec.NProc,
		flags:       strings.Join(argv[:len(argv)-1], "\x00"),
		env:         strings.Join(p.env, "\x00"),
		interpreter: fmt.Sprintf("%s %d %d", p.interpreter, fi.Size(), fi.ModTime().UnixNano()),
	}, true
}

// zygote is one started zygote process.
type zygote struct {
	key  zygoteKey
	pid  int
	conn *net.UnixConn

	gone     chan struct{} // closed when the zygote has exited (see watch)
	runDone  chan struct{} // closed when the current run's exit status arrived (or never will)
	runClean bool          // the last run ended with a proper exit message
	// hintDue: the zygote waits for "spare" before it forks the next spare (see
	// sendHint). Set before runDone closes; then read and cleared under the pool's lock.
	hintDue bool
}

// zygotePool holds the zygote. Its zero value is an empty pool.
type zygotePool struct {
	mu       sync.Mutex
	idle     *zygote       // ready, not running anything
	starting *zygote       // being started (after launch, before ready)
	warming  chan struct{} // closed when the start in progress ends; nil if none
	last     *zygoteKey    // the key of the latest python run
	failedAt time.Time     // the latest failed start, or yield: none before zygoteRetry
	stopped  bool
	wg       sync.WaitGroup // starts and retirements in the background
}

// runPython is runProc for a python run: forked from the zygote when there is one for it,
// else started directly. Either way the zygote for this run's key is warmed afterwards.
func (a *agent) runPython(ctx context.Context, p *proc, deadline time.Time) (*procResult, error) {
	key, ok := zygoteKeyOf(p)
	var z *zygote
	var sp *started
	if ok {
		if z = a.zygotes.take(key); z != nil {
			var err error
			sp, err = a.startForked(z, p, deadline)
			switch {
			case errors.Is(err, errZygoteRefused):
				a.log.Info("python fast path not possible; starting python directly", "err", err)
			case err != nil:
				a.log.Warn("python fast path failed; starting python directly", "err", err)
				a.retireZygote(z)
				z = nil
			}
		}
	}
	if sp == nil {
		var err error
		if sp, err = a.startDirect(p, deadline); err != nil {
			return nil, err
		}
	}
	res := a.waitProc(ctx, p, sp, deadline)
	if ok {
		a.afterPython(key, p, z)
	}
	return res, nil
}

// take returns the idle zygote if it has key and is alive; the caller then owns it.
func (pool *zygotePool) take(key zygoteKey) *zygote {
	pool.mu.Lock()
	defer pool.mu.Unlock()
	z := pool.idle
	if z == nil || z.key != key || z.dead() {
		return nil
	}
	pool.idle = nil
	z.sendHint() // a run not served by serveExec: its zygote still waits
	return z
}

// zygoteHint tells the idle zygote, once a run's result is sent, that it may fork the
// next spare now (the "hint" speed-up in fast.go).
func (a *agent) zygoteHint() {
	pool := &a.zygotes
	pool.mu.Lock()
	defer pool.mu.Unlock()
	if z := pool.idle; z != nil {
		z.sendHint()
	}
}

// sendHint sends "spare" if the zygote waits for it; the pool's lock held. The zygote
// waits zygoteHintWait at most, and a spare ignores a hint that comes late.
func (z *zygote) sendHint() {
	if !z.hintDue {
		return
	}
	z.hintDue = false
	z.conn.SetWriteDeadline(time.Now().Add(zygoteReplyWait))
	z.conn.Write([]byte("spare")) // a zygote gone or stuck: the next run finds out
}

// afterPython returns the run's zygote z (nil if the run did not use one) to the pool and
// starts a zygote for key in the background if the pool should have one.
func (a *agent) afterPython(key zygoteKey, p *proc, z *zygote) {
	pool := &a.zygotes
	pool.mu.Lock()
	defer pool.mu.Unlock()
	if z != nil && !pool.stopped && pool.idle == nil && z.reusable() {
		pool.idle, z = z, nil
	}
	if z != nil {
		a.retireZygoteLocked(z)
	}
	if pool.idle != nil && pool.idle.dead() {
		a.retireZygoteLocked(pool.idle)
		pool.idle = nil
	}
	// One zygote: replace one of another key only when this key comes twice in a row,
	// so that runs with ever-changing environments do not churn.
	want := !pool.stopped && pool.warming == nil &&
		(pool.idle == nil || pool.idle.key != key && pool.last != nil && *pool.last == key) &&
		(pool.failedAt.IsZero() || time.Since(pool.failedAt) >= zygoteRetry)
	pool.last = &key
	if !want {
		return
	}
	done := make(chan struct{})
	pool.warming = done
	pool.wg.Add(1)
	warm := *p
	go func() {
		defer pool.wg.Done()
		defer close(done)
		z, err := a.startZygote(key, &warm)
		pool.mu.Lock()
		defer pool.mu.Unlock()
		pool.warming = nil
		switch {
		case err != nil:
			pool.failedAt = time.Now()
			a.log.Warn("cannot start the python zygote; python runs start directly", "err", err)
		case pool.stopped:
			a.retireZygoteLocked(z)
		default:
			if pool.idle != nil {
				a.retireZygoteLocked(pool.idle)
			}
			pool.idle = z
			a.log.Debug("python zygote ready", "pid", z.pid)
		}
	}()
}

// stopZygotes kills the zygotes and waits for everything in the background to end.
func (a *agent) stopZygotes() {
	pool := &a.zygotes
	pool.mu.Lock()
	pool.stopped = true
	if pool.idle != nil {
		a.retireZygoteLocked(pool.idle)
		pool.idle = nil
	}
	if pool.starting != nil {
		pool.starting.conn.Close() // abort its start
	}
	pool.mu.Unlock()
	pool.wg.Wait()
}

// yieldZygote stops the zygote (once started, if it is starting) and reports whether
// there was one; no new one starts before zygoteRetry.
func (a *agent) yieldZygote() bool {
	pool := &a.zygotes
	pool.mu.Lock()
	pool.failedAt = time.Now()
	warming := pool.warming
	pool.mu.Unlock()
	if warming != nil {
		select {
		case <-warming:
		case <-time.After(zygoteStartWait):
		}
	}
	pool.mu.Lock()
	z := pool.idle
	pool.idle = nil
	pool.mu.Unlock()
	if z == nil {
		return warming != nil
	}
	a.log.Info("stopping the python zygote: the run user is at its process limit", "pid", z.pid)
	a.killZygote(z)
	return true
}

// retireZygote kills z and reaps it in the background.
func (a *agent) retireZygote(z *zygote) {
	a.zygotes.mu.Lock()
	defer a.zygotes.mu.Unlock()
	a.retireZygoteLocked(z)
}

func (a *agent) retireZygoteLocked(z *zygote) {
	a.zygotes.wg.Add(1)
	go func() {
		defer a.zygotes.wg.Done()
		a.killZygote(z)
	}()
}

// killZygote ends z and waits for its exit: it hangs up, so that the spare exits and the
// zygote reaps it and exits; then SIGKILL if that takes longer than zygoteStopWait.
func (a *agent) killZygote(z *zygote) {
	z.conn.Close()
	select {
	case <-z.gone:
		return
	case <-time.After(zygoteStopWait):
	}
	syscall.Kill(z.pid, syscall.SIGKILL)
	select {
	case <-z.gone:
	case <-time.After(exitWait):
		a.log.Error("python zygote did not exit after SIGKILL", "pid", z.pid)
	}
}

// watch waits for the zygote's exit, then closes its control socket: its spare, if any,
// sees the end of input and exits too (for a run in progress, see runExit).
func (z *zygote) watch(exit <-chan procExit) {
	<-exit
	close(z.gone)
	z.conn.Close()
}

// dead reports whether z has exited.
func (z *zygote) dead() bool {
	select {
	case <-z.gone:
		return true
	default:
		return false
	}
}

// reusable reports whether z can take another run: it reported its last run's end.
func (z *zygote) reusable() bool {
	select {
	case <-z.runDone:
		return z.runClean && !z.dead()
	default:
		return false
	}
}

// startZygote starts a zygote for runs like p and waits until it is ready.
func (a *agent) startZygote(key zygoteKey, p *proc) (_ *zygote, err error) {
	deadline := time.Now().Add(zygoteStartWait)
	file := filepath.Join(a.opts.RunBase, zygoteFile)
	if err := os.WriteFile(file, zygoteSource, 0o644); err != nil {
		return nil, fmt.Errorf("%w: %v", errZygote, err)
	}
	defer os.Remove(file)
	if err := os.Chmod(file, 0o644); err != nil { // whatever the umask
		return nil, fmt.Errorf("%w: %v", errZygote, err)
	}

	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: socketpair: %v", errZygote, err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "zygote-control")
	defer theirs.Close()
	ours := os.NewFile(uintptr(fds[0]), "zygote-control")
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errZygote, err)
	}
	conn := c.(*net.UnixConn)
	devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: %v", errZygote, err)
	}
	defer devNull.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: %v", errZygote, err)
	}

	spec := p.spec
	spec.Argv = append(append(append([]string(nil), p.spec.Argv[:len(p.spec.Argv)-1]...), file), zygoteArgs()...)
	spec.Dir = "/"
	pid, exit, err := a.launch(spec, p.env, [3]*os.File{devNull, devNull, errW}, []*os.File{theirs}, deadline)
	errW.Close()
	if err != nil {
		errR.Close()
		conn.Close()
		return nil, fmt.Errorf("%w: %v", errZygote, err)
	}
	go a.logZygote(pid, errR)
	z := &zygote{key: key, pid: pid, conn: conn, gone: make(chan struct{})}
	go z.watch(exit)

	pool := &a.zygotes
	pool.mu.Lock()
	stopped := pool.stopped
	pool.starting = z
	pool.mu.Unlock()
	defer func() {
		pool.mu.Lock()
		pool.starting = nil
		pool.mu.Unlock()
		if err != nil {
			a.killZygote(z)
		}
	}()
	if stopped {
		return nil, fmt.Errorf("%w: agent stopping", errZygote)
	}
	msg, err := z.recv(deadline)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: start: %v", errZygote, err)
	case msg != "ready":
		return nil, fmt.Errorf("%w: start: %s", errZygote, msg)
	}
	z.runDone = make(chan struct{})
	close(z.runDone)
	z.runClean = true
	return z, nil
}

// logZygote logs what a zygote writes to its stderr (nothing, unless it fails).
func (a *agent) logZygote(pid int, r *os.File) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	for n := 0; sc.Scan(); n++ {
		if n < 50 {
			a.log.Warn("python zygote", "pid", pid, "stderr", sc.Text())
		}
	}
}

// recv reads one message from z, waiting until deadline at most (zero: no limit).
func (z *zygote) recv(deadline time.Time) (string, error) {
	z.conn.SetReadDeadline(deadline)
	b := make([]byte, 4096)
	n, err := z.conn.Read(b)
	if err != nil {
		return "", err
	}
	return string(b[:n]), nil
}

// startForked asks z to fork p's script. On success the run's exit arrives on the
// returned started's exit channel, as if the agent had reaped it; on error nothing runs.
func (a *agent) startForked(z *zygote, p *proc, deadline time.Time) (*started, error) {
	pipes, err := newRunPipes()
	if err != nil {
		return nil, fmt.Errorf("%w: pipes: %v", errZygote, err)
	}
	argv := p.spec.Argv
	req := "run\x00" + argv[len(argv)-1] + "\x00" + p.spec.Dir + "\x00" + strings.Join(argv, "\x00")
	child := pipes.child()
	rights := unix.UnixRights(int(child[0].Fd()), int(child[1].Fd()), int(child[2].Fd()))
	z.conn.SetWriteDeadline(time.Now().Add(zygoteReplyWait))
	p.trace.mark("zygote: asking")
	_, _, err = z.conn.WriteMsgUnix([]byte(req), rights, nil)
	pipes.closeChild() // in flight or delivered: the zygote has its own references
	if err != nil {
		pipes.closeAll()
		return nil, fmt.Errorf("%w: send: %v", errZygote, err)
	}

	wait := earliest(deadline, time.Now().Add(zygoteReplyWait))
	msg, err := z.recv(wait)
	var pid int
	if err == nil {
		p.trace.mark("zygote: pid")
		pid, err = z.parsePid(msg, !a.opts.ReapAll)
	}
	if err != nil {
		pipes.closeAll()
		if msg != "stale" && msg != "gone" && !errors.Is(err, errZygoteRefused) {
			a.abortZygote(z) // the request may have been served: kill what it forked
		}
		return nil, err
	}
	// "go" comes just before the script runs. Without it, the script did not run.
	if msg, err = z.recv(wait); err == nil && msg != "go" {
		err = fmt.Errorf("%w: unexpected reply %q", errZygote, msg)
	}
	if err != nil {
		pipes.closeAll()
		killGroup(pid)
		a.abortZygote(z)
		return nil, fmt.Errorf("%w: run %d did not start: %v", errZygote, pid, err)
	}
	p.trace.mark("zygote: go")

	exit := make(chan procExit, 1)
	z.runDone = make(chan struct{})
	z.runClean = false
	adopted := a.reaper.adopt(pid) // if the zygote dies, the agent inherits the run
	go func() {
		e, clean, pending := z.runExit(pid, adopted)
		if clean && adopted != nil {
			a.reaper.forget(pid, adopted)
		}
		z.runClean = clean
		z.hintDue = clean && fast("hint")
		close(z.runDone) // before the exit is seen, so that the zygote is reusable at once
		if pending {
			a.log.Warn("python zygote ended during a run; waiting for the run itself", "pid", pid, "zygote", z.pid)
			e = <-adopted
		}
		exit <- e
	}()
	a.log.Debug("python run forked by the zygote", "pid", pid, "zygote", z.pid)
	return pipes.started(pid, exit), nil
}

// runExit waits for the zygote's report of run pid's exit (clean). If the zygote ends
// first and adopted is set, the run is the agent's: its status, or pending if that is
// still to come on adopted. Otherwise the run is killed and the result is an error.
func (z *zygote) runExit(pid int, adopted chan procExit) (e procExit, clean, pending bool) {
	msg, err := z.recv(time.Time{})
	if s, ok := strings.CutPrefix(msg, "exit "); err == nil && ok {
		if status, err := strconv.ParseUint(s, 10, 32); err == nil {
			return procExit{Status: syscall.WaitStatus(status)}, true, false
		}
	}
	if err == nil {
		err = fmt.Errorf("unexpected message %q", msg)
	}
	if adopted != nil {
		select {
		case e := <-adopted:
			return e, false, false
		default:
		}
		// The zygote is gone: a run that still exists can only be reaped by the agent.
		if syscall.Kill(pid, 0) == nil {
			return procExit{}, false, true
		}
		select {
		case e := <-adopted:
			return e, false, false
		default:
		}
	}
	killGroup(pid)
	return procExit{Err: fmt.Errorf("%w ended during the run: %v", errZygote, err)}, false, false
}

// parsePid checks a "pid" reply: the agent may kill that process group, as root. The
// process must lead its own group (unless it is gone already); with strict (outside a
// sandbox, where other processes are at stake) it must be the zygote's child, too.
func (z *zygote) parsePid(msg string, strict bool) (int, error) {
	s, ok := strings.CutPrefix(msg, "pid ")
	if !ok {
		if why, ok := strings.CutPrefix(msg, "error "); ok {
			return 0, fmt.Errorf("%w: %s", errZygoteRefused, why)
		}
		switch msg {
		case "stale":
			return 0, fmt.Errorf("%w is stale (start-up files changed)", errZygote)
		case "gone":
			return 0, fmt.Errorf("%w has died", errZygote)
		}
		return 0, fmt.Errorf("%w: unexpected reply %q", errZygote, msg)
	}
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 1 || pid == os.Getpid() || pid == z.pid {
		return 0, fmt.Errorf("%w: bad pid in %q", errZygote, msg)
	}
	if pgid, err := unix.Getpgid(pid); err == nil && pgid != pid {
		return 0, fmt.Errorf("%w: pid %d does not lead its process group", errZygote, pid)
	}
	if !strict {
		return pid, nil
	}
	// Still there (not reaped yet, or this cannot tell): it must be the zygote's child.
	if ppid, pgrp, ok := procParent(pid); ok && (ppid != z.pid || pgrp != pid) {
		return 0, fmt.Errorf("%w: pid %d is not its child (parent %d, group %d)", errZygote, pid, ppid, pgrp)
	}
	return pid, nil
}

// abortZygote ends a zygote that failed in the middle of a request, and whatever it may
// have forked for it: stopped first so that it cannot fork meanwhile.
func (a *agent) abortZygote(z *zygote) {
	if z.dead() {
		return
	}
	syscall.Kill(z.pid, syscall.SIGSTOP)
	for _, pid := range childrenOf(z.pid) {
		killGroup(pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	killGroup(z.pid) // the zygote, and a child not yet in its own group
}

// procParent returns the parent and process group of pid from /proc.
func procParent(pid int) (ppid, pgrp int, ok bool) {
	f, ok := statFields(strconv.Itoa(pid))
	if !ok || len(f) < 3 {
		return 0, 0, false
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	pgrp, err2 := strconv.Atoi(string(f[2]))
	return ppid, pgrp, err1 == nil && err2 == nil
}

// childrenOf lists the processes whose parent is pid.
func childrenOf(pid int) []int {
	var out []int
	eachProc(func(name string, f [][]byte) {
		if len(f) < 2 || string(f[1]) != strconv.Itoa(pid) {
			return
		}
		if child, err := strconv.Atoi(name); err == nil {
			out = append(out, child)
		}
	})
	return out
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
