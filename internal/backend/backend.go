// Package backend is the contract between the sandbox service and the isolation
// technologies that run agents' code (gVisor, QEMU microVMs).
//
// # Terms
//
// A Backend creates Sandboxes. A Sandbox is one isolated machine: its own root
// filesystem (a template with a private writable layer that the host never sees), its
// own process tree whose PID 1 is the vmexec guest agent, no network, and memory and
// process limits. The service talks to the guest agent only through the Sandbox's
// methods — Exec, the file methods and Ping — which both backends implement with one
// agentproto.Client (protocol v2: multiplexed, streamed; see agentproto) over whatever
// channel the backend provides, so their behaviour is the same.
//
// # Lifecycle
//
//	Create ──▶ ready (handshake done) ──Exec*, files*──▶ Destroy
//	                 │
//	                 └─ dies (limit, crash) ─▶ calls return a *DeadError; Destroy still required
//
// Create returns only once the guest agent has answered the protocol handshake, so a
// returned Sandbox is ready to Exec. The context passed to Create bounds start-up only;
// the sandbox lives until Destroy, whatever happens to that context.
//
// # Runs
//
// Exec streams: out (may be nil) receives each chunk of stdout and stderr as the guest
// reads it from the program, on the caller's goroutine, in order per stream; the result
// still carries the whole captured output, up to the run's max_output_bytes (which the
// guest enforces by counting: past it the stream is cut and the run killed, verdict
// output_limit). out is called synchronously: while it blocks, the connection does too
// (and, through the transport's back-pressure, the program's writes), so it should
// return promptly, and wait for another call on the same sandbox only while the run
// writes nothing more (the conformance suite's streaming test does just that).
//
// # Files
//
// Paths are absolute, or relative to /home/user; they are resolved inside the sandbox
// (whose filesystem holds nothing of the host's), so ".." and symlinks stay in it. File
// contents stream in bounded chunks both ways; a WriteFile appears whole or not at all.
//
// # Failure semantics
//
//   - Create cleans up everything it allocated when it fails (no processes, mounts or
//     directories are left behind) and wraps the cause.
//   - Exec returns the program's own failure (non-zero exit, timeout, limit) as a result
//     with a verdict, never as an error. It returns an error only when the sandbox could
//     not run the request: an error wrapping agentproto.ErrInvalidRequest when the guest
//     refused the request itself (a missing working directory, an invalid environment
//     variable name, an empty PATH; the sandbox is fine), a *DeadError (errors.Is
//     ErrSandboxDead) when the sandbox itself has died, or the context's error when ctx
//     ended and the guest did not answer the cancel within agentproto.CancelGrace (the
//     sandbox is then in an unknown state and should be destroyed). When ctx ends and the
//     guest does answer, the run's result has verdict agentproto.VerdictCanceled, with a
//     nil error: its process group was killed and the sandbox is usable.
//   - The file methods return errors wrapping the agentproto sentinels (ErrNotExist,
//     ErrIsDir, ErrNotDir, ErrFileTooLarge, ErrInvalidPath) for what the guest reports,
//     a *DeadError when the sandbox died, or ctx's error.
//   - Calls may overlap (the protocol multiplexes them and the guest runs one program at
//     a time); the service still serialises each sandbox's runs and file operations, and
//     an OpenFile reader must be closed before the next call.
//   - Destroy is idempotent and safe to call on a dead sandbox.
//   - List reports every sandbox the backend finds on the host in its own state,
//     including those a crashed predecessor left; DestroyID removes one by id.
//
// # Optional capabilities
//
// Snapshots are a capability a backend may declare by also implementing [Snapshotter];
// callers ask with a type assertion and must not assume it. A snapshot is taken only
// while no call is in flight; the restored sandbox's agent is reached over a new
// connection, which begins with a new handshake.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// Errors every backend classifies its failures into.
var (
	// ErrSandboxDead means the sandbox stopped running (its limit was hit, or it crashed).
	ErrSandboxDead = errors.New("sandbox is dead")
	// ErrNotFound means no sandbox (or snapshot image) with that id exists.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable means the backend cannot run here (a missing binary, template or device).
	ErrUnavailable = errors.New("backend unavailable")
)

// Backend creates and finds sandboxes of one kind.
type Backend interface {
	// Name is the backend's short name ("gvisor", "microvm").
	Name() string
	// Create starts a sandbox and waits for its guest agent's handshake.
	Create(ctx context.Context, spec Spec) (Sandbox, error)
	// List reports the sandboxes found in the backend's state on this host.
	List(ctx context.Context) ([]Info, error)
	// DestroyID stops and removes a sandbox by id, including one this process did not
	// create (recovery after a crash). It returns nil if it does not exist.
	DestroyID(ctx context.Context, id string) error
}

// Spec describes a sandbox to create.
type Spec struct {
	// ID names the sandbox; unique among live sandboxes of the backend. Letters,
	// digits, '-' and '_' only.
	ID string
	// RootFS is the template's root filesystem tree, never modified by the sandbox.
	RootFS string
	// MemoryBytes caps the whole sandbox's memory (guest processes, its page cache and
	// the in-memory writable layer).
	MemoryBytes int64
	// MaxPIDs caps the sandbox's tasks as seen by the host; a backstop above the
	// guest's own per-run process limit.
	MaxPIDs int64
}

// Validate reports whether the spec can be used.
func (s Spec) Validate() error {
	if s.ID == "" {
		return errors.New("spec: empty id")
	}
	for _, r := range s.ID {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("spec: id %q: invalid character %q", s.ID, r)
		}
	}
	if s.RootFS == "" {
		return errors.New("spec: empty root filesystem")
	}
	return nil
}

// Info describes a sandbox as the backend sees it.
type Info struct {
	ID        string    `json:"id"`
	Backend   string    `json:"backend"`
	Status    string    `json:"status"` // running, stopped, dead
	CreatedAt time.Time `json:"created_at"`
	// PID is the host process id of the sandbox's supervisor, when there is one.
	PID int `json:"pid,omitempty"`
}

// Sandbox is one running sandbox.
type Sandbox interface {
	ID() string
	// Exec runs one program. out (may be nil) receives output as it is written; the
	// result still carries the whole captured stdout/stderr (up to the limit).
	// If ctx ends first, Exec asks the guest to cancel the run and returns its result
	// with verdict agentproto.VerdictCanceled and a nil error when the guest answers
	// within a short grace period; otherwise it returns ctx's error (the sandbox is then
	// in an unknown state and should be destroyed).
	Exec(ctx context.Context, req *agentproto.ExecRequest, out agentproto.OutputFunc) (*agentproto.ExecResult, error)
	// WriteFile writes r's content to path (mode 0 means 0o644), creating missing
	// parents. Paths are absolute, or relative to /home/user. Written files and
	// created dirs are owned by the run user (uid 1000).
	WriteFile(ctx context.Context, path string, mode uint32, r io.Reader) error
	// OpenFile returns the file's info and a reader of its content that streams from
	// the guest; the caller must Close it (and must not issue other calls on the
	// sandbox until it has). A directory is ErrIsDir.
	OpenFile(ctx context.Context, path string) (agentproto.FileInfo, io.ReadCloser, error)
	// StatFile describes path (a symlink is described, not followed).
	StatFile(ctx context.Context, path string) (agentproto.FileInfo, error)
	// ListFiles lists a directory's entries, recursing depth levels (depth 1 = entries only).
	ListFiles(ctx context.Context, path string, depth int) ([]agentproto.FileInfo, error)
	// MakeDir creates a directory with its parents; one that exists is ok.
	MakeDir(ctx context.Context, path string) error
	// RemoveFile removes a file, or a directory (recursive removes a non-empty one).
	RemoveFile(ctx context.Context, path string, recursive bool) error
	// Ping checks that the guest agent answers.
	Ping(ctx context.Context) error
	// Info reports the sandbox's state.
	Info() Info
	// Destroy stops the sandbox and removes everything it used on the host.
	Destroy(ctx context.Context) error
}

// DeadError reports a sandbox that died while (or before) serving a request.
type DeadError struct {
	// Verdict is how the run that was in flight ended: agentproto.VerdictMemoryLimit
	// when the host's memory limit killed the sandbox, else agentproto.VerdictKilled.
	Verdict string
	// Detail says what was seen (exit status, the last lines of the sandbox's log).
	Detail string
}

func (e *DeadError) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("sandbox is dead (%s)", e.Verdict)
	}
	return fmt.Sprintf("sandbox is dead (%s): %s", e.Verdict, e.Detail)
}

// Is makes errors.Is(err, ErrSandboxDead) true for a *DeadError.
func (e *DeadError) Is(target error) bool { return target == ErrSandboxDead }

// Snapshotter is the optional capability of saving a sandbox's whole state (files,
// memory, processes) to an image directory and restoring it.
type Snapshotter interface {
	// Snapshot saves sb's state into dir (which it creates); sb keeps running.
	Snapshot(ctx context.Context, sb Sandbox, dir string) error
	// Restore replaces sb by a sandbox restored from the image in dir, with the same
	// id; sb must not be used afterwards. On error sb is destroyed as well.
	Restore(ctx context.Context, sb Sandbox, dir string, spec Spec) (Sandbox, error)
	// Fork starts a new sandbox described by spec from the image in dir.
	Fork(ctx context.Context, dir string, spec Spec) (Sandbox, error)
}
