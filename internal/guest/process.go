package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// Timings of the end of a process.
const (
	// drainGrace is how long output is still collected after the program exits, for
	// output its background children write (or buffered in the pipe) right away.
	// Background processes that keep the pipes open longer do not delay the result.
	drainGrace = 100 * time.Millisecond
	// maxDrain bounds the wait for output after the program's end when the host is slow
	// to take it: the grace does not run down while a chunk has been waiting for the
	// host for stallTime or more (a fast host takes a chunk in microseconds, so a
	// chatty background process does not delay the result).
	maxDrain  = 5 * time.Second
	stallTime = 5 * time.Millisecond
	// sweepTime bounds the repeated SIGKILLs of a killed run's process group. The
	// kernel's group kill already stops forks racing it, and the sweep ends as soon as
	// the group is empty; but killed members stay in the group as zombies until they are
	// reaped, which is prompt only when the agent is PID 1.
	sweepTime = 250 * time.Millisecond
	// exitWait bounds the wait for the exit status after a SIGKILL (normally instant).
	exitWait = 5 * time.Second
)

// proc describes one program to start: a compile or a run step.
type proc struct {
	spec   launchSpec
	env    []string
	stdin  []byte
	outMax int64 // per stream
	memory int64 // bytes the run's processes may hold (see memwatch.go); 0: not watched
	// emit sends a chunk of output as it is read; nil keeps the output in the result
	// (a compile step).
	emit func(stream string, p []byte)
	// handle, when set, holds the running process group, for signals.
	handle *runHandle
	// interpreter is the resolved python3 of a python run, which may then be forked from
	// the python zygote (see zygote.go), and what stat said of it; empty for anything else.
	interpreter     string
	interpreterInfo os.FileInfo
	// trace records the run's phases (nil: not traced).
	trace *runTrace
}

// procResult is how a proc ended.
type procResult struct {
	exit        procExit
	timedOut    bool // the deadline passed; the group was killed
	outputLimit bool // a stream passed its limit; the group was killed
	cancelled   bool // ctx ended; the group was killed
	hostCancel  bool // ... because the host cancelled the run
	contained   bool // exited, but its background processes were killed as a fork bomb
	// memoryLimit: its processes held memoryUsed bytes, over p.memory (memoryMax), and
	// the memory watch killed them (see memwatch.go).
	memoryLimit           bool
	memoryUsed, memoryMax int64

	stdout      []byte // kept output (when not emitted)
	stderr      []byte
	stderrTail  []byte // the end of stderr, emitted or not, for the memory markers
	stdoutTrunc bool
	stderrTrunc bool
}

// errStart marks a failure to start a program at all.
var errStart = errors.New("cannot start program")

// started is a program that is running: the agent's ends of its pipes and its exit.
type started struct {
	pid    int // also its process group
	exit   <-chan procExit
	stdin  *os.File
	stdout *os.File
	stderr *os.File
}

// runProc starts p through the launcher, collects its output and waits for it to exit
// or for the deadline, whichever comes first. A non-nil error (wrapping errStart) means
// the program never ran.
func (a *agent) runProc(ctx context.Context, p *proc, deadline time.Time) (*procResult, error) {
	if p.interpreter != "" && !a.opts.DisableZygote {
		return a.runPython(ctx, p, deadline)
	}
	sp, err := a.startDirect(p, deadline)
	if err != nil {
		return nil, err
	}
	return a.waitProc(ctx, p, sp, deadline), nil
}

// startProc forks the launcher for p and waits until it has exec'd the program.
func (a *agent) startProc(p *proc, deadline time.Time) (*started, error) {
	pipes, err := newRunPipes()
	if err != nil {
		return nil, fmt.Errorf("%w: pipes: %v", errStart, err)
	}
	p.trace.mark("launching")
	pid, exitCh, err := a.launch(p.spec, p.env, pipes.child(), nil, deadline)
	p.trace.mark("launched")
	// The child has its copies; the agent keeps only its own ends.
	pipes.closeChild()
	if err != nil {
		pipes.closeAll()
		return nil, err
	}
	return pipes.started(pid, exitCh), nil
}

// startDirect is startProc, tried once more if the run user was at its process limit
// while the python zygote, whose processes are the run user's, was kept: it yields.
func (a *agent) startDirect(p *proc, deadline time.Time) (*started, error) {
	sp, err := a.startProc(p, deadline)
	if errors.As(err, new(nprocError)) && a.yieldZygote() {
		sp, err = a.startProc(p, deadline)
	}
	return sp, err
}

// launch forks the launcher for spec, in a new process group, with stdio as its fds 0-2,
// the status pipe as fd 3 and extra from fd 4 on, and waits until it has exec'd the
// program. The caller still owns the files it passed.
func (a *agent) launch(spec launchSpec, env []string, stdio [3]*os.File, extra []*os.File, deadline time.Time) (int, <-chan procExit, error) {
	arg, err := json.Marshal(spec)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %v", errStart, err)
	}
	statR, statW, err := os.Pipe()
	if err != nil {
		return 0, nil, fmt.Errorf("%w: pipes: %v", errStart, err)
	}
	files := []uintptr{stdio[0].Fd(), stdio[1].Fd(), stdio[2].Fd(), statW.Fd()}
	for _, f := range extra {
		files = append(files, f.Fd())
	}
	attr := &syscall.ProcAttr{
		Env:   env,
		Files: files,
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	}
	argv := []string{"vmexec-launch", LaunchCommand, string(arg)}
	pid, exitCh, err := a.reaper.start(func() (int, error) {
		return syscall.ForkExec(a.opts.Launcher, argv, attr)
	})
	runtime.KeepAlive(stdio)
	runtime.KeepAlive(extra)
	statW.Close()
	if err != nil {
		statR.Close()
		return 0, nil, fmt.Errorf("%w: start launcher: %v", errStart, err)
	}

	// The status pipe closes when the program is exec'd, or carries the reason why not.
	statR.SetReadDeadline(deadline)
	msg, _ := io.ReadAll(io.LimitReader(statR, 4096))
	statR.Close()
	if len(msg) > 0 {
		a.awaitExit(exitCh, pid)
		err := fmt.Errorf("%w: %s", errStart, msg)
		if bytes.Contains(msg, []byte(nprocExhausted)) {
			err = nprocError{err}
		}
		return 0, nil, err
	}
	return pid, exitCh, nil
}

// nprocError is a launch that failed because the run user was at its process limit.
type nprocError struct{ error }

func (e nprocError) Unwrap() error { return e.error }

// runPipes are a run's stdin, stdout and stderr pipes: the program gets the child's ends
// (child), the agent keeps the others.
type runPipes struct {
	inR, inW, outR, outW, errR, errW *os.File
}

func newRunPipes() (*runPipes, error) {
	var p runPipes
	var errs [3]error
	p.inR, p.inW, errs[0] = os.Pipe()
	p.outR, p.outW, errs[1] = os.Pipe()
	p.errR, p.errW, errs[2] = os.Pipe()
	if err := errors.Join(errs[:]...); err != nil {
		p.closeAll()
		return nil, err
	}
	return &p, nil
}

// child returns the program's ends: its stdin, stdout and stderr.
func (p *runPipes) child() [3]*os.File { return [3]*os.File{p.inR, p.outW, p.errW} }

// closeChild closes the agent's copies of the program's ends once the program has them.
func (p *runPipes) closeChild() {
	for _, f := range p.child() {
		if f != nil {
			f.Close()
		}
	}
}

func (p *runPipes) closeAll() {
	for _, f := range []*os.File{p.inR, p.inW, p.outR, p.outW, p.errR, p.errW} {
		if f != nil {
			f.Close()
		}
	}
}

// started returns the running program pid with the agent's ends of its pipes.
func (p *runPipes) started(pid int, exit <-chan procExit) *started {
	return &started{pid: pid, exit: exit, stdin: p.inW, stdout: p.outR, stderr: p.errR}
}

// waitProc feeds a started program its stdin, collects its output and waits for its
// end: exit, deadline, output limit or ctx, the last three killing its process group.
func (a *agent) waitProc(ctx context.Context, p *proc, sp *started, deadline time.Time) *procResult {
	res := &procResult{}
	overCh := make(chan struct{}, 2)
	over := func() { overCh <- struct{}{} }
	var emitOut, emitErr func([]byte)
	if p.emit != nil {
		emitOut = func(b []byte) { p.emit(agentproto.StreamStdout, b) }
		emitErr = func(b []byte) { p.emit(agentproto.StreamStderr, b) }
		if tr := p.trace; tr != nil {
			var once sync.Once
			emitOut = func(b []byte) {
				once.Do(func() { tr.mark("first stdout") })
				p.emit(agentproto.StreamStdout, b)
			}
		}
	}
	stdout := newCapture(p.outMax, over, emitOut)
	stderr := newCapture(p.outMax, over, emitErr)
	if p.handle != nil {
		p.handle.set(sp.pid)
		defer p.handle.set(0)
	}
	go stdout.pump(sp.stdout)
	go stderr.pump(sp.stderr)
	if tr := p.trace; tr != nil {
		go func() { <-stdout.done; tr.mark("stdout closed") }()
	}
	go func() {
		if len(p.stdin) > 0 {
			sp.stdin.Write(p.stdin) // fails harmlessly if the program exits without reading
		}
		sp.stdin.Close()
	}()

	mem := a.watchMemory(sp.pid, p.memory)
	defer mem.stop()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	killed := false
	p.trace.mark("waiting")
	select {
	case res.exit = <-sp.exit:
		p.trace.mark("exit status")
	case <-timer.C:
		res.timedOut, killed = true, true
	case <-overCh:
		res.outputLimit, killed = true, true
	case <-ctx.Done():
		res.cancelled, killed = true, true
		res.hostCancel = errors.Is(context.Cause(ctx), errHostCancel)
	}
	if killed {
		killGroup(sp.pid)
		res.exit = a.awaitExit(sp.exit, sp.pid)
		sweepGroup(sp.pid)
		a.log.Debug("killed process group", "pgid", sp.pid, "timeout", res.timedOut, "output_limit", res.outputLimit)
	}
	res.memoryLimit, res.memoryUsed = mem.stop()
	res.memoryMax = p.memory
	// Unblock a stdin writer whose reader never read (a background process may still
	// hold the read end).
	sp.stdin.Close()

	// Collect what is already written; do not wait for background processes. The grace
	// is shared by the two streams, and is extended while the host is slow to take a
	// chunk (see maxDrain).
	grace := time.NewTimer(drainGrace)
	defer grace.Stop()
	drainEnd := time.Now().Add(maxDrain)
	for _, c := range []*capture{stdout, stderr} {
	wait:
		for {
			select {
			case <-c.done:
				break wait
			case <-grace.C:
				if (stdout.stalled() || stderr.stalled()) && time.Now().Before(drainEnd) {
					grace.Reset(10 * time.Millisecond)
					continue
				}
				grace.Reset(0) // the other stream gets what is left: nothing
				break wait
			}
		}
	}
	p.trace.mark("output drained")
	if !killed {
		var err error
		res.contained, err = a.checkLeftovers(ctx, p, sp.pid, stderr.tailNow())
		if err != nil {
			res.cancelled, res.hostCancel = true, errors.Is(context.Cause(ctx), errHostCancel)
		}
		p.trace.mark("leftovers checked")
	}
	res.stdout, _, res.stdoutTrunc = stdout.detach()
	res.stderr, res.stderrTail, res.stderrTrunc = stderr.detach()
	// The two streams are raced: a stream that passed its limit while the program was
	// exiting still makes the verdict output_limit.
	if !killed && (res.stdoutTrunc || res.stderrTrunc) {
		res.outputLimit = true
	}
	return res
}

// checkLeftovers looks at what a run that exited normally left running. Background
// processes are kept, unless they are a fork bomb (see bomb.go): killed now if it
// already fills the process limit, or its processes ran into the limit (a shell's
// fork failure in stderrTail), or it behaves as a bomb before the run returns (the
// result says so); watched for a while otherwise. A run cancelled (ctx ended) while
// its group is looked at has the group killed, as one cancelled while it runs, and
// gets ctx's error.
func (a *agent) checkLeftovers(ctx context.Context, p *proc, pgid int, stderrTail []byte) (killed bool, err error) {
	if !p.spec.Setuid || p.spec.NProc <= 0 || !groupAlive(pgid) {
		return false, nil
	}
	bomb := hasForkFailure(stderrTail)
	if !bomb {
		bomb, err = a.settleGroup(ctx, pgid, p.spec.UID, p.spec.NProc)
	}
	switch {
	case bomb:
		killGroup(pgid)
		sweepGroup(pgid)
		a.log.Warn("killed a fork bomb left by a run", "pgid", pgid)
		return true, nil
	case err != nil:
		killGroup(pgid)
		sweepGroup(pgid)
		a.log.Debug("killed the process group of a run cancelled while its leftovers were looked at", "pgid", pgid)
		return false, fmt.Errorf("looking at the run's leftover processes: %w", err)
	}
	a.bombs.add(pgid, p.spec.UID, p.spec.NProc)
	return false, nil
}

// awaitExit waits for a killed (or failed) child's status, bounded by exitWait.
func (a *agent) awaitExit(ch <-chan procExit, pid int) procExit {
	select {
	case e := <-ch:
		return e
	case <-time.After(exitWait):
		a.log.Error("run process did not exit after SIGKILL", "pid", pid)
		return procExit{Err: fmt.Errorf("process %d did not exit", pid)}
	}
}

// killGroup sends SIGKILL to the process group pgid.
func killGroup(pgid int) {
	syscall.Kill(-pgid, syscall.SIGKILL)
}

// sweepGroup kills the group until it is empty (or sweepTime passes): a fork bomb can
// race a single kill, and zombies keep the group alive until they are reaped.
func sweepGroup(pgid int) {
	end := time.Now().Add(sweepTime)
	wait := time.Millisecond
	for time.Now().Before(end) {
		if err := syscall.Kill(-pgid, syscall.SIGKILL); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(wait)
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// runHandle is the process group of a run's current step, for signals from the host.
type runHandle struct {
	mu   sync.Mutex
	pgid int // 0 between steps
}

func (h *runHandle) set(pgid int) {
	h.mu.Lock()
	h.pgid = pgid
	h.mu.Unlock()
}

// signal sends sig to the running step's process group, if there is one.
func (h *runHandle) signal(sig syscall.Signal) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pgid <= 0 {
		return false
	}
	return syscall.Kill(-h.pgid, sig) == nil
}

// groupAlive reports whether the process group pgid still has members.
func groupAlive(pgid int) bool {
	return syscall.Kill(-pgid, 0) == nil
}
