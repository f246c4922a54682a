package guest

import (
	"bufio"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// Interpreter contexts: long-lived interpreters that run cells (see agentproto's
// contexts.go for the protocol).
//
// # Life
//
// A context's interpreter is started through the launcher like a run (the run user,
// its rlimits and environment, its own process group, the context's working
// directory), running a small driver (ctxdriver.py, ctxdriver.js) with stdin on
// /dev/null, stdout and stderr on pipes the agent reads for as long as it lives, and
// its end of a control socket (a SOCK_STREAM socketpair) at fd 4. It is not an
// operation: it outlives the connection, a new session, a checkpoint and a restore,
// and ends only when the host stops it (or it dies). Stopping closes the control
// socket (the driver exits at its end) and kills the group after ctxStopWait.
//
// # Cells
//
// Cells take the run token like every run, so they never overlap a run or each other.
// The agent sends the cell ({code, env, marker}) on the control socket and, while it
// runs, passes the interpreter's stdout and stderr to the cell's output, each rich
// result to the host as one StreamResult frame; the driver's "done" ends it. The
// marker, random per cell, is what the driver writes to both pipes after "done": the
// agent takes everything before it as the cell's output, so output the cell wrote
// just before it ended is never lost or given to the next cell (output written
// between cells, by a background thread, is dropped). Likewise the cell's sync marker,
// which the driver writes to both pipes before it sends a result, numbering the
// result with the count of sync markers written so far: the agent holds the result
// until both streams have passed that many (dropping the markers), so output written
// before a result is streamed before it, although the pipes and the control socket
// are separate channels.
//
// # Limits
//
// The deadline, an output stream over its limit and a cancel from the host interrupt
// the cell: SIGINT to the interpreter's group (KeyboardInterrupt in python; in node,
// the evaluator's breakOnSigint or the abandoned await). The interpreter keeps its
// state. If the cell does not end within InterruptGrace (it ignores SIGINT), the
// group is killed and a fresh interpreter started in its place: the result says
// Restarted. The memory watch (memwatch.go) watches the interpreter's group during the
// cell: over the limit it kills it, and the context is restarted likewise.

//go:embed ctxdriver.py
var ctxDriverPython []byte

//go:embed ctxdriver.js
var ctxDriverJS []byte

const (
	ctxCtrlFD     = 4
	ctxStartWait  = 30 * time.Second // launcher, interpreter and driver start-up
	ctxStopWait   = time.Second      // for an interpreter to exit when its socket closes
	ctxMarkerWait = 2 * time.Second  // in all, per stream and cell, for its sync and end markers
	ctxMaxLine    = agentproto.MaxResultBytes + 64<<10
)

// ctxTable holds the live contexts by id. Its zero value is empty.
type ctxTable struct {
	mu   sync.Mutex
	byID map[string]*interp
}

// interp is one context's interpreter.
type interp struct {
	info agentproto.ContextInfo
	spec agentproto.ContextSpec
	pid  int
	conn *net.UnixConn
	msgs chan ctxMsg   // from the driver; closed when the socket ends
	gone chan struct{} // closed when the interpreter has exited
	out  [2]*ctxStream // stdout, stderr
}

// ctxMsg is one message of a driver.
type ctxMsg struct {
	Type   string                 `json:"type"`
	PID    int                    `json:"pid"`
	Count  int                    `json:"count"`
	Sync   int                    `json:"sync"` // a result's: sync markers written before it
	Error  *agentproto.CellError  `json:"error"`
	Result json.RawMessage        `json:"result"`
	parsed *agentproto.CellOutput // Result, checked
}

// serveContext answers a context request.
func (a *agent) serveContext(o *op, e *agentproto.Envelope) {
	req := e.Context
	var list []agentproto.ContextInfo
	var err error
	switch req.Op {
	case agentproto.ContextStart:
		if req.Spec == nil {
			err = invalid("context start without a spec")
			break
		}
		// Starting takes the run token: it shares the process limit with runs.
		select {
		case a.execs <- struct{}{}:
		case <-o.ctx.Done():
			err = errors.New("canceled")
		}
		if err != nil {
			break
		}
		var it *interp
		it, _, err = a.contextFor(*req.Spec)
		<-a.execs
		if err == nil {
			list = []agentproto.ContextInfo{a.infoOf(it)}
		}
	case agentproto.ContextStop:
		a.stopContext(req.ID)
	case agentproto.ContextList:
		list = a.listContexts()
	default:
		err = invalid("unknown context operation %q", req.Op)
	}
	if err != nil {
		a.replyErr(o, err)
		return
	}
	a.reply(o, &agentproto.Envelope{Type: agentproto.TypeContexts, Contexts: list})
}

// infoOf describes it (its count changes under the table's lock).
func (a *agent) infoOf(it *interp) agentproto.ContextInfo {
	a.contexts.mu.Lock()
	defer a.contexts.mu.Unlock()
	return it.info
}

// listContexts returns the live contexts, oldest first.
func (a *agent) listContexts() []agentproto.ContextInfo {
	a.contexts.mu.Lock()
	defer a.contexts.mu.Unlock()
	out := make([]agentproto.ContextInfo, 0, len(a.contexts.byID))
	for _, it := range a.contexts.byID {
		out = append(out, it.info)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// contextFor returns the context spec names, started if the agent has none by that
// id (or, for a default spec, no default context of its language); run token held.
func (a *agent) contextFor(spec agentproto.ContextSpec) (it *interp, started bool, err error) {
	lang := lookupLanguage(spec.Language)
	if lang == nil || lang.name != "python" && lang.name != "javascript" {
		return nil, false, invalid("contexts run python or javascript, not %q", spec.Language)
	}
	spec.Language = lang.name
	if !validCtxID(spec.ID) {
		return nil, false, invalid("invalid context id %q", spec.ID)
	}
	a.contexts.mu.Lock()
	it = a.contexts.byID[spec.ID]
	if it == nil && spec.Default {
		for _, c := range a.contexts.byID {
			if c.info.Default && c.info.Language == spec.Language {
				it = c
			}
		}
	}
	a.contexts.mu.Unlock()
	if it != nil {
		if it.info.Language != spec.Language {
			return nil, false, invalid("context %s runs %s, not %s", it.info.ID, it.info.Language, spec.Language)
		}
		if !it.dead() {
			return it, false, nil
		}
		a.dropContext(it)
		spec, started = it.spec, true
	}
	it, err = a.startInterp(spec, time.Now().UTC())
	if err != nil {
		return nil, false, err
	}
	a.contexts.mu.Lock()
	if a.contexts.byID == nil {
		a.contexts.byID = map[string]*interp{}
	}
	a.contexts.byID[spec.ID] = it
	a.contexts.mu.Unlock()
	return it, true, nil
}

func validCtxID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// startInterp starts an interpreter for spec and waits for its driver to be ready.
func (a *agent) startInterp(spec agentproto.ContextSpec, created time.Time) (_ *interp, err error) {
	lang := lookupLanguage(spec.Language)
	workDir, err := a.workDir(spec.Cwd)
	if err != nil {
		return nil, err
	}
	lim := withDefaults(agentproto.Limits{})
	env, err := a.runEnv(lang, lim, nil)
	if err != nil {
		return nil, err
	}
	run := env.run
	driver := ctxDriverJS
	if lang.name == "python" {
		driver = ctxDriverPython
		run = append(run, "MPLBACKEND=Agg")
	}
	dir, err := a.makeRunDir(lang.file, string(driver))
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir) // read at start-up only

	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("context: socketpair: %w", err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "context-control")
	defer theirs.Close()
	ours := os.NewFile(uintptr(fds[0]), "context-control")
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("context: %w", err)
	}
	conn := c.(*net.UnixConn)
	pipes, err := newRunPipes()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("context: pipes: %w", err)
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		conn.Close()
		pipes.closeAll()
		return nil, err
	}
	defer devNull.Close()
	ls := launchSpec{
		Argv: lang.run(dir, lim.MemoryBytes), Dir: workDir,
		Setuid: a.setuid, UID: a.opts.RunUser.UID, GID: a.opts.RunUser.GID,
		FileSize: lim.MaxFileBytes, NProc: lim.MaxProcs,
	}
	deadline := time.Now().Add(ctxStartWait)
	pid, exit, err := a.launch(ls, run, [3]*os.File{devNull, pipes.outW, pipes.errW}, []*os.File{theirs}, deadline)
	pipes.inR.Close()
	pipes.inW.Close()
	pipes.outW.Close()
	pipes.errW.Close()
	if err != nil {
		pipes.outR.Close()
		pipes.errR.Close()
		conn.Close()
		return nil, fmt.Errorf("start %s context: %w", lang.name, err)
	}
	it := &interp{spec: spec, pid: pid, conn: conn, msgs: make(chan ctxMsg, 16), gone: make(chan struct{}),
		info: agentproto.ContextInfo{ID: spec.ID, Language: lang.name, Cwd: workDir, Default: spec.Default, Created: created, PID: pid}}
	it.out[0] = &ctxStream{}
	it.out[1] = &ctxStream{}
	go func() {
		<-exit
		close(it.gone)
		conn.Close()
	}()
	go it.pump(pipes.outR, it.out[0])
	go it.pump(pipes.errR, it.out[1])
	go it.readControl(a)
	defer func() {
		if err != nil {
			a.killInterp(it)
		}
	}()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case m, ok := <-it.msgs:
		if !ok || m.Type != "ready" {
			return nil, fmt.Errorf("start %s context: the interpreter ended during start-up", lang.name)
		}
	case <-timer.C:
		return nil, fmt.Errorf("start %s context: not ready within %s", lang.name, ctxStartWait)
	}
	a.log.Info("context started", "id", spec.ID, "language", lang.name, "pid", pid)
	return it, nil
}

// readControl reads the driver's messages into it.msgs until the socket ends.
func (it *interp) readControl(a *agent) {
	defer close(it.msgs)
	r := bufio.NewReaderSize(it.conn, 64<<10)
	for {
		line, tooLong, err := readLine(r, ctxMaxLine)
		if err != nil {
			return
		}
		var m ctxMsg
		if tooLong {
			m = ctxMsg{Type: "result", parsed: &agentproto.CellOutput{Text: "<result too large to send>"}}
		} else if err := json.Unmarshal(line, &m); err != nil {
			a.log.Warn("context driver sent a malformed message", "id", it.info.ID, "err", err)
			continue
		}
		if m.Type == "result" && m.parsed == nil {
			var out agentproto.CellOutput
			if err := json.Unmarshal(m.Result, &out); err != nil {
				out = agentproto.CellOutput{Text: "<malformed result>"}
			}
			m.parsed = &out
		}
		it.msgs <- m
	}
}

// readLine reads one line of at most max bytes (the rest of a longer one is skipped).
func readLine(r *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(chunk) > max {
			tooLong = true
		} else {
			line = append(line, chunk...)
		}
		switch {
		case err == nil:
			return line, tooLong, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, false, err
		}
	}
}

func (it *interp) dead() bool {
	select {
	case <-it.gone:
		return true
	default:
		return false
	}
}

// stopContext stops and forgets the context id (nothing if there is none).
func (a *agent) stopContext(id string) {
	a.contexts.mu.Lock()
	it := a.contexts.byID[id]
	delete(a.contexts.byID, id)
	a.contexts.mu.Unlock()
	if it != nil {
		a.killInterp(it)
		a.log.Info("context stopped", "id", id)
	}
}

// dropContext forgets it (if it is still the context of its id) and kills it.
func (a *agent) dropContext(it *interp) {
	a.contexts.mu.Lock()
	if a.contexts.byID[it.info.ID] == it {
		delete(a.contexts.byID, it.info.ID)
	}
	a.contexts.mu.Unlock()
	a.killInterp(it)
}

// stopContexts stops every context (the agent is stopping).
func (a *agent) stopContexts() {
	a.contexts.mu.Lock()
	all := a.contexts.byID
	a.contexts.byID = nil
	a.contexts.mu.Unlock()
	for _, it := range all {
		a.killInterp(it)
	}
}

// killInterp ends it: its socket closed, then its group killed if it is still there
// after ctxStopWait; it waits for the exit.
func (a *agent) killInterp(it *interp) {
	it.conn.Close()
	select {
	case <-it.gone:
	case <-time.After(ctxStopWait):
	}
	killGroup(it.pid)
	select {
	case <-it.gone:
	case <-time.After(exitWait):
		a.log.Error("context interpreter did not exit after SIGKILL", "pid", it.pid)
	}
	sweepGroup(it.pid)
}

// runCell runs the cell req (an exec with a context) and reports its outcome. Its
// output goes to emit: the streams, and each rich result as a StreamResult frame. It
// fails only for a request it refuses; run token held.
func (a *agent) runCell(ctx context.Context, req *agentproto.ExecRequest, emit func(string, []byte)) (*agentproto.ExecResult, error) {
	start := time.Now()
	spec := *req.Context
	if req.Language != "" {
		if l, c := lookupLanguage(req.Language), lookupLanguage(spec.Language); l == nil || c == nil || l != c {
			return nil, invalid("the cell's language %q is not its context's (%q)", req.Language, spec.Language)
		}
	}
	lim := withDefaults(req.Limits)
	if lookupLanguage(spec.Language) != nil {
		if err := checkEnv(req.Env); err != nil {
			return nil, err
		}
	}
	it, started, err := a.contextFor(spec)
	switch {
	case errors.Is(err, agentproto.ErrInvalidRequest):
		return nil, err
	case err != nil:
		return startFailure(err), nil
	}
	res := a.cellIn(ctx, it, req, lim, emit)
	res.Cell.Started = res.Cell.Started || started
	res.DurationMS = time.Since(start).Milliseconds()
	return res, nil
}

// cellIn runs one cell in it.
func (a *agent) cellIn(ctx context.Context, it *interp, req *agentproto.ExecRequest, lim agentproto.Limits, emit func(string, []byte)) *agentproto.ExecResult {
	res := &agentproto.ExecResult{Verdict: agentproto.VerdictOK, Cell: &agentproto.CellOutcome{Context: it.info.ID}}
	var mb [12]byte
	rand.Read(mb[:])
	marker := []byte("\x1evmexec-cell-end-" + hex.EncodeToString(mb[:]) + "\x1e")
	syncMarker := []byte("\x1evmexec-cell-sync-" + hex.EncodeToString(mb[:]) + "\x1e")
	over := make(chan struct{}, 2)
	var ended [2]<-chan struct{}
	for i, stream := range []string{agentproto.StreamStdout, agentproto.StreamStderr} {
		left := lim.MaxOutputBytes
		truncated := &res.StdoutTruncated
		if i == 1 {
			truncated = &res.StderrTruncated
		}
		ended[i] = it.out[i].begin(marker, syncMarker, func(p []byte) {
			if *truncated {
				return
			}
			if int64(len(p)) > left {
				p, *truncated = p[:left], true
				over <- struct{}{}
			}
			left -= int64(len(p))
			if len(p) > 0 {
				emit(stream, p)
			}
		})
	}
	defer func() {
		it.out[0].finish()
		it.out[1].finish()
	}()
	msg, _ := json.Marshal(map[string]any{"code": req.Code, "env": req.Env, "marker": string(marker), "sync": string(syncMarker)})
	it.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := it.conn.Write(append(msg, '\n')); err != nil {
		it.conn.SetWriteDeadline(time.Time{})
		return a.cellLost(it, res, agentproto.VerdictKilled, "the interpreter is gone: "+err.Error(), emit)
	}
	it.conn.SetWriteDeadline(time.Time{})

	mem := a.watchMemory(it.pid, lim.MemoryBytes)
	deadline := time.NewTimer(time.Duration(lim.TimeoutMS) * time.Millisecond)
	defer deadline.Stop()
	var grace <-chan time.Time
	ctxDone := ctx.Done()
	interrupted := ""
	interrupt := func(verdict string) {
		if interrupted != "" {
			return
		}
		interrupted = verdict
		syscall.Kill(-it.pid, syscall.SIGINT)
		t := time.NewTimer(agentproto.InterruptGrace)
		grace = t.C
	}
	// A result waits for the output written before it, and the cell's end for the rest
	// of it; a stream's waits in a cell (for its sync markers and its end marker) take
	// at most ctxMarkerWait in all. One that does not bring its sync marker in time (the
	// cell redirected it) has used it up: it is not waited for again in this cell.
	budget := [2]time.Duration{ctxMarkerWait, ctxMarkerWait}
	done := false
	for !done {
		select {
		case m, ok := <-it.msgs:
			if !ok {
				memOver, used := mem.stop()
				verdict, why := agentproto.VerdictKilled, "the interpreter died during the cell"
				switch {
				case memOver:
					verdict, why = agentproto.VerdictMemoryLimit, fmt.Sprintf("the interpreter used %d MiB, over the cell's %d MiB memory limit, and was killed", used>>20, lim.MemoryBytes>>20)
				case interrupted != "":
					verdict = interrupted
				}
				return a.cellLost(it, res, verdict, why, emit)
			}
			switch m.Type {
			case "result":
				for i, s := range it.out {
					if budget[i] <= 0 {
						continue
					}
					t0 := time.Now()
					if s.waitSynced(m.Sync, budget[i]) {
						budget[i] -= time.Since(t0)
					} else {
						budget[i] = 0
					}
				}
				if b, err := json.Marshal(m.parsed); err == nil {
					emit(agentproto.StreamResult, b)
				}
			case "done":
				res.Cell.ExecutionCount, res.Cell.Error = m.Count, m.Error
				a.contexts.mu.Lock()
				it.info.Count = m.Count
				a.contexts.mu.Unlock()
				done = true
			}
		case <-deadline.C:
			interrupt(agentproto.VerdictTimeout)
		case <-over:
			interrupt(agentproto.VerdictOutputLimit)
		case <-ctxDone:
			ctxDone = nil
			interrupt(agentproto.VerdictCanceled)
		case <-grace:
			mem.stop()
			a.log.Info("cell did not stop after the interrupt; killing its interpreter", "id", it.info.ID, "pid", it.pid)
			return a.cellLost(it, res, interrupted, "the cell did not stop when interrupted, so its interpreter was killed", emit)
		}
	}
	mem.stop()
	// Everything the cell wrote comes before its markers: each stream's is waited for
	// with what is left of its budget (both at once).
	now := time.Now()
	for i, ch := range ended {
		select {
		case <-ch:
			continue
		default:
		}
		left := time.Until(now.Add(budget[i]))
		if left <= 0 {
			continue
		}
		wait := time.NewTimer(left)
		select {
		case <-ch:
		case <-wait.C:
		}
		wait.Stop()
	}
	switch {
	case interrupted != "":
		res.Verdict, res.ExitCode = interrupted, 1
	case res.Cell.Error != nil:
		res.Verdict, res.ExitCode = agentproto.VerdictError, 1
	}
	return res
}

// cellLost ends a cell whose interpreter died or was killed: a fresh one takes its
// place (the context keeps its id; its state is gone).
func (a *agent) cellLost(it *interp, res *agentproto.ExecResult, verdict, why string, emit func(string, []byte)) *agentproto.ExecResult {
	a.dropContext(it)
	res.Verdict, res.ExitCode, res.Signal = verdict, 137, "SIGKILL"
	res.Cell.Restarted = true
	msg := why + "; a new interpreter was started in its place: the context's state is gone"
	fresh, err := a.startInterp(it.spec, it.info.Created)
	if err != nil {
		msg = why + "; a new interpreter could not be started (" + err.Error() + "): the context is gone"
	} else {
		a.contexts.mu.Lock()
		if a.contexts.byID == nil {
			a.contexts.byID = map[string]*interp{}
		}
		a.contexts.byID[it.info.ID] = fresh
		a.contexts.mu.Unlock()
	}
	res.Error = msg
	emit(agentproto.StreamStderr, []byte("\n[vmexec] "+msg+"\n"))
	return res
}
