package guest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// Causes of an operation's cancellation.
var (
	errHostCancel = errors.New("canceled by the host")
	errNewSession = errors.New("a new connection started")
	errOpDone     = errors.New("operation over")
)

// sender writes frames to the host, one at a time, each for the session it belongs to:
// a frame of an earlier session is dropped.
type sender struct {
	mu      sync.Mutex
	conn    *agentproto.Conn
	session uint64
	log     *slog.Logger
	broken  bool       // a write failed: logged once until one succeeds
	failed  chan error // the first write error (buffered, 1)
}

// send writes e for session; it blocks until the transport has taken the frame.
func (s *sender) send(session uint64, e *agentproto.Envelope) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if session != s.session {
		return errNewSession
	}
	return s.write(e)
}

// sendAny writes e whatever the session (an error frame for a malformed request).
func (s *sender) sendAny(e *agentproto.Envelope) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.write(e)
}

// newSession starts a session and writes its first frame (the hello reply) before any
// other frame of it.
func (s *sender) newSession(reply func(session uint64) *agentproto.Envelope) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.session++
	s.write(reply(s.session))
	return s.session
}

func (s *sender) write(e *agentproto.Envelope) error {
	err := s.conn.Send(e)
	if errors.Is(err, agentproto.ErrFrameTooLarge) {
		// It cannot be (frames are chunked), but the host must get an answer.
		err = s.conn.Send(&agentproto.Envelope{Type: agentproto.TypeError, ID: e.ID, Error: err.Error()})
	}
	switch {
	case err != nil && !s.broken:
		s.broken = true
		s.log.Error("cannot send to the host", "type", e.Type, "id", e.ID, "err", err)
		select {
		case s.failed <- err:
		default:
		}
	case err == nil:
		s.broken = false
	}
	return err
}

// op is one operation in flight.
type op struct {
	id      uint64
	session uint64
	ctx     context.Context
	cancel  context.CancelCauseFunc
	data    chan *agentproto.Envelope // a write's body
	run     *runHandle                // an exec's process group
}

// opTable holds the operations of the current session, by ID.
type opTable struct {
	mu      sync.Mutex
	session uint64
	ops     map[uint64]*op
	wg      sync.WaitGroup
}

func (t *opTable) init() { t.ops = map[uint64]*op{} }

func (t *opTable) get(id uint64) *op {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ops[id]
}

// done removes o and releases its context.
func (t *opTable) done(o *op) {
	t.mu.Lock()
	if t.ops[o.id] == o {
		delete(t.ops, o.id)
	}
	t.mu.Unlock()
	o.cancel(errOpDone)
	t.wg.Done()
}

// reset starts session: the operations of the previous one are cancelled.
func (t *opTable) reset(session uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, o := range t.ops {
		o.cancel(errNewSession)
		delete(t.ops, id)
	}
	t.session = session
}

func (t *opTable) wait() { t.wg.Wait() }

// dispatch starts serving one request. It blocks only to hand a write's body to its
// operation (the body's flow control) and to send short replies.
func (a *agent) dispatch(ctx context.Context, e *agentproto.Envelope) {
	session := a.ops.currentSession()
	errReply := func(msg string) {
		a.out.send(session, &agentproto.Envelope{Type: agentproto.TypeError, ID: e.ID, Error: msg})
	}
	switch e.Type {
	case agentproto.TypeHello:
		if e.Hello != nil && e.Hello.Version != agentproto.Version {
			a.log.Warn("host speaks another protocol version", "host", e.Hello.Version, "guest", agentproto.Version)
		}
		if e.Hello != nil {
			a.reseed(e.Hello.Entropy) // before the reply: see reseed.go
		}
		// The table first: no operation of the new session may be dropped as stale.
		a.out.newSession(func(session uint64) *agentproto.Envelope {
			a.ops.reset(session)
			return &agentproto.Envelope{Type: agentproto.TypeHello, ID: e.ID, Hello: &agentproto.Hello{
				Version:   agentproto.Version,
				Agent:     "vmexec-agent/" + a.opts.Version,
				Languages: availableLanguages(a.opts.Path),
			}}
		})
	case agentproto.TypePing:
		a.out.send(session, &agentproto.Envelope{Type: agentproto.TypePong, ID: e.ID})
	case agentproto.TypeCancel:
		if o := a.ops.get(e.ID); o != nil {
			o.cancel(errHostCancel)
		}
	case agentproto.TypeSignal:
		o := a.ops.get(e.ID)
		sig := unix.SignalNum(strings.ToUpper(e.Signal))
		if sig == 0 {
			sig = unix.SignalNum("SIG" + strings.ToUpper(e.Signal))
		}
		switch {
		case sig == 0:
			a.log.Warn("unknown signal", "id", e.ID, "signal", e.Signal)
		case o != nil && o.run != nil:
			o.run.signal(sig)
		}
	case agentproto.TypeData:
		o := a.ops.get(e.ID)
		if o == nil || o.data == nil {
			return // the rest of a refused or cancelled write
		}
		select {
		case o.data <- e:
		case <-o.ctx.Done():
		}
	case agentproto.TypeExec:
		if e.Exec == nil {
			errReply("exec without a request")
			return
		}
		a.start(ctx, e, func(o *op) { o.run = &runHandle{} }, a.serveExec)
	case agentproto.TypeContext:
		if e.Context == nil {
			errReply("context without a request")
			return
		}
		a.start(ctx, e, nil, a.serveContext) // see contexts.go
	case agentproto.TypeWrite:
		a.start(ctx, e, func(o *op) { o.data = make(chan *agentproto.Envelope, 4) }, a.serveFile)
	case agentproto.TypeRead, agentproto.TypeStat, agentproto.TypeList, agentproto.TypeMkdir, agentproto.TypeRemove:
		a.start(ctx, e, nil, a.serveFile)
	default:
		errReply(fmt.Sprintf("unknown message type %q", e.Type))
	}
}

func (t *opTable) currentSession() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.session
}

// start registers e as an operation (setup prepares it before anyone can see it) and
// serves it on a goroutine of its own.
func (a *agent) start(ctx context.Context, e *agentproto.Envelope, setup func(*op), serve func(*op, *agentproto.Envelope)) {
	o, ok := a.ops.addWith(ctx, e.ID, setup)
	if !ok {
		a.out.send(a.ops.currentSession(), &agentproto.Envelope{Type: agentproto.TypeError, ID: e.ID,
			Error: fmt.Sprintf("operation %d is already in flight", e.ID)})
		return
	}
	go func() {
		defer a.ops.done(o)
		defer func() {
			if p := recover(); p != nil {
				a.log.Error("operation panicked", "type", e.Type, "id", e.ID, "panic", p)
				a.reply(o, &agentproto.Envelope{Type: agentproto.TypeError, Error: fmt.Sprintf("internal error: %v", p)})
			}
		}()
		serve(o, e)
	}()
}

// addWith is add with setup run under the table's lock.
func (t *opTable) addWith(parent context.Context, id uint64, setup func(*op)) (*op, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, dup := t.ops[id]; dup {
		return nil, false
	}
	ctx, cancel := context.WithCancelCause(parent)
	o := &op{id: id, session: t.session, ctx: ctx, cancel: cancel}
	if setup != nil {
		setup(o)
	}
	t.ops[id] = o
	t.wg.Add(1)
	return o, true
}

// reply sends a frame of o.
func (a *agent) reply(o *op, e *agentproto.Envelope) error {
	e.ID = o.id
	return a.out.send(o.session, e)
}

// replyErr ends o with an error frame carrying err's code.
func (a *agent) replyErr(o *op, err error) {
	a.reply(o, &agentproto.Envelope{Type: agentproto.TypeError, Error: err.Error(), Code: agentproto.CodeOf(err)})
}

// serveExec runs an exec request, streaming its output, once it has the run token.
func (a *agent) serveExec(o *op, e *agentproto.Envelope) {
	req := e.Exec
	select {
	case a.execs <- struct{}{}:
		defer func() { <-a.execs }()
	case <-o.ctx.Done():
		a.reply(o, &agentproto.Envelope{Type: agentproto.TypeResult, Result: queuedResult(o.ctx)})
		return
	}
	emit := func(stream string, p []byte) {
		a.reply(o, &agentproto.Envelope{Type: agentproto.TypeOutput, Stream: stream, Data: p})
	}
	exec := a.exec
	if req.Context != nil {
		exec = func(ctx context.Context, req *agentproto.ExecRequest, emit func(string, []byte), _ *runHandle) (*agentproto.ExecResult, error) {
			return a.runCell(ctx, req, emit) // a cell (see contexts.go)
		}
	}
	res, err := exec(o.ctx, req, emit, o.run)
	if err != nil {
		a.log.Info("run refused", "id", o.id, "language", req.Language, "err", err)
		a.replyErr(o, err)
		return
	}
	a.log.Info("run", "id", o.id, "language", req.Language, "verdict", res.Verdict,
		"exit_code", res.ExitCode, "signal", res.Signal, "duration_ms", res.DurationMS, "error", res.Error)
	a.reply(o, &agentproto.Envelope{Type: agentproto.TypeResult, Result: res})
	a.zygoteHint() // the result is out: the zygote may fork its next spare
}

// queuedResult is the result of a run cancelled before it started.
func queuedResult(ctx context.Context) *agentproto.ExecResult {
	r := &agentproto.ExecResult{ExitCode: -1, Verdict: agentproto.VerdictKilled, Error: "agent stopping"}
	if errors.Is(context.Cause(ctx), errHostCancel) {
		r.Verdict, r.Error = agentproto.VerdictCanceled, "canceled by the host before it started"
	}
	return r
}
