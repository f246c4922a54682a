package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// DefaultPath is the PATH of every run.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// RunUser is the user programs run as.
type RunUser struct {
	UID, GID uint32
	Name     string // USER in the run's environment
}

// Options configure Serve. The zero value is an agent that is not PID 1, running
// programs as uid/gid 1000 when it is root and as itself otherwise.
type Options struct {
	// Version is the agent's build; the handshake reports "vmexec-agent/<Version>".
	// Default "dev".
	Version string
	// RunUser runs the programs. Default: uid/gid 1000 named "user" when the agent
	// runs as root; the agent's own user otherwise. Only a root agent can switch
	// users: when not root, programs always run as the agent's user.
	RunUser *RunUser
	// Home is the run user's home and the default working directory, created (and
	// given to the run user) if missing. Default /home/user.
	Home string
	// RunBase holds the runs' directories (run-N, one per run, removed after it).
	// Default /tmp/.vmexec.
	RunBase string
	// Path is the PATH of runs; a request's env may override it. Default DefaultPath.
	Path string
	// Launcher is the agent's own binary, re-executed as the launcher of every program
	// (see LaunchCommand). Default /proc/self/exe.
	Launcher string
	// Persistent keeps serving when the input ends or fails, and never returns except
	// when ctx ends. Set it when the agent is PID 1 (see Serve).
	Persistent bool
	// ReapAll reaps every child process, not just the runs' (wait4(-1)). Set it when
	// the agent is PID 1, and only in a process that starts no children of its own
	// outside Serve: they would be reaped from under their waiters.
	ReapAll bool
	// Logger receives diagnostics. Default slog.Default().
	Logger *slog.Logger
	// DisableZygote starts every python run as a new python3 process instead of forking
	// it from a waiting interpreter (the fast path; see zygote.go).
	DisableZygote bool
	// DisableChangeWatch computes change sets by scanning the areas before and after
	// every run instead of keeping inotify watches across runs (see watch.go).
	DisableChangeWatch bool
}

func (o Options) withDefaults() Options {
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.RunUser == nil {
		if os.Geteuid() == 0 {
			o.RunUser = &RunUser{UID: 1000, GID: 1000, Name: "user"}
		} else {
			o.RunUser = &RunUser{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Name: "user"}
		}
	}
	if o.RunUser.Name == "" {
		ru := *o.RunUser
		ru.Name = "user"
		o.RunUser = &ru
	}
	if o.Home == "" {
		o.Home = "/home/user"
	}
	if o.RunBase == "" {
		o.RunBase = "/tmp/.vmexec"
	}
	if o.Path == "" {
		o.Path = DefaultPath
	}
	if o.Launcher == "" {
		o.Launcher = "/proc/self/exe"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// Serve answers agentproto requests read from r with frames written to w, until r
// ends (or, when opts.Persistent, until ctx ends).
//
// # Operations
//
// Every request is an operation of its own, served on its own goroutine, so that
// operations overlap: a cancel, a signal, a ping or a file operation is answered while
// a run is in progress. Runs themselves take turns (one at a time, in no promised
// order): they share the run user's process limit and the python zygote. Frames to the
// host are written one at a time; each blocks until the transport takes it, which is
// the protocol's flow control (see agentproto). A hello starts a new session: the
// operations of the previous connection are cancelled and what they still had to say
// is dropped, so a restored sandbox's new host never sees frames meant for the old one.
//
// # End of input
//
// When the agent is not PID 1, the end of r means the host is gone: Serve cancels the
// operations in flight, waits for them, and returns nil at a clean EOF between frames
// and an error for anything else (as it does when a write to w fails).
//
// As PID 1 (opts.Persistent) the agent must outlive its connection. Exiting would end
// the sandbox, and the end of input is not the end of the sandbox: a gVisor sandbox
// that is checkpointed and later restored gets new pipes — after `runsc restore` the
// restored init's fd 0 and fd 1 are the new runsc process's pipes, and reads on fd 0
// continue there. An agent checkpointed while blocked reading the next frame simply
// goes on reading from the new pipe; but if the old writer closed first (the host's
// runsc process went away before the checkpoint), the agent sees EOF. So, when
// persistent, EOF and read errors are retried after a short sleep (backing off from
// 10 ms to 100 ms, so a restored agent answers its first hello within 100 ms even if
// it saw EOF; ten empty reads a second cost nothing), and are logged once per outage.
// A frame cut off by the end of input is dropped: each new connection starts with a
// fresh handshake. Malformed frames get an error reply (ID 0) and the agent keeps
// reading; a host that corrupted the stream should replace the sandbox. Write errors
// (the host vanished) are logged and the frame is lost.
//
// If ctx ends, Serve kills the runs in progress and returns ctx.Err(); a goroutine
// blocked reading r stays blocked until r is closed or yields data.
func Serve(ctx context.Context, r io.Reader, w io.Writer, opts Options) error {
	opts = opts.withDefaults()
	a := &agent{opts: opts, log: opts.Logger, reaper: newReaper(opts.ReapAll, opts.Logger), bombs: newBombWatch(),
		execs: make(chan struct{}, 1)}
	a.setuid = os.Geteuid() == 0 &&
		(opts.RunUser.UID != uint32(os.Getuid()) || opts.RunUser.GID != uint32(os.Getgid()))
	if os.Geteuid() != 0 && opts.RunUser.UID != uint32(os.Getuid()) {
		a.log.Warn("not root: programs run as the agent's own user", "uid", os.Getuid(), "requested_uid", opts.RunUser.UID)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go a.reaper.run(ctx)
	defer a.stopZygotes()  // before cancel: the reaper must see them go
	defer a.stopContexts() // likewise
	go a.watchBombs(ctx)
	if err := a.prepare(); err != nil {
		a.log.Error("cannot prepare directories (retried before each run)", "err", err)
	}
	a.log.Info("guest agent serving", "version", opts.Version, "pid", os.Getpid(),
		"run_uid", opts.RunUser.UID, "setuid", a.setuid, "persistent", opts.Persistent,
		"languages", availableLanguages(opts.Path))

	conn := agentproto.NewConn(r, w)
	a.out = &sender{conn: conn, log: a.log, failed: make(chan error, 1)}
	a.ops.init()
	// The operations end first (their runs killed), then the zygotes, then the reaper.
	opsCtx, cancelOps := context.WithCancel(ctx)
	defer func() { a.watch.close() }() // after the operations: no run uses it any more
	defer a.ops.wait()
	defer cancelOps()
	frames := make(chan frame)
	go a.readLoop(ctx, conn, frames)
	var writeFailed <-chan error
	if !opts.Persistent {
		writeFailed = a.out.failed
	}
	for {
		var f frame
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-writeFailed:
			return err
		case f = <-frames:
		}
		if f.end {
			return f.err
		}
		if f.env == nil {
			a.out.sendAny(&agentproto.Envelope{Type: agentproto.TypeError, Error: f.err.Error()})
			continue
		}
		a.dispatch(opsCtx, f.env)
	}
}

// frame is one event of the read loop: a request, a malformed frame (env nil, err set)
// or the end of serving (end, with err nil at a clean EOF).
type frame struct {
	env *agentproto.Envelope
	err error
	end bool
}

func (a *agent) readLoop(ctx context.Context, conn *agentproto.Conn, out chan<- frame) {
	put := func(f frame) bool {
		select {
		case out <- f:
			return true
		case <-ctx.Done():
			return false
		}
	}
	const minBackoff, maxBackoff = 10 * time.Millisecond, 100 * time.Millisecond
	backoff, outage := minBackoff, false
	for {
		env, err := conn.Recv()
		switch {
		case err == nil:
			if outage {
				a.log.Info("input is back")
			}
			backoff, outage = minBackoff, false
			if !put(frame{env: env}) {
				return
			}
		case isMalformed(err):
			a.log.Warn("malformed frame", "err", err)
			if !put(frame{err: fmt.Errorf("malformed frame: %w", err)}) {
				return
			}
			// An oversize length leaves the stream out of step; only PID 1 carries on.
			if errors.Is(err, agentproto.ErrFrameTooLarge) && !a.opts.Persistent {
				put(frame{end: true, err: err})
				return
			}
		case !a.opts.Persistent:
			if errors.Is(err, io.EOF) {
				err = nil
			}
			put(frame{end: true, err: err})
			return
		default:
			if !outage {
				a.log.Info("input ended or failed; waiting for it to be reattached", "err", err)
				outage = true
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(2*backoff, maxBackoff)
		}
	}
}

// isMalformed reports whether err is about a frame's content rather than the stream.
func isMalformed(err error) bool {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	return errors.Is(err, agentproto.ErrFrameTooLarge) || errors.Is(err, agentproto.ErrMalformed) ||
		errors.As(err, &syn) || errors.As(err, &typ)
}
