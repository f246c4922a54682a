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
//   - List reports every sandbox the backend finds in its own scope, including those a
//     crashed predecessor left; DestroyID removes one by id.
//
// # Scope
//
// A backend's scope is the state it was configured with (its state directory: the
// gVisor backend's runsc root and bundles, the microVM backend's sandbox and image
// directories). Each daemon has its own data directory, so its own scope: List reports
// only the sandboxes (and ListImages only the images) of this scope, and DestroyID and
// DeleteImage never touch another scope's, whatever the id. Two daemons on one host do
// not see, or remove, each other's sandboxes.
//
// # Templates
//
// A Spec names its template (template.Template: name, hash, and where internal/template
// built it). A local backend starts from the template's tree (RootFS) or builds what it
// needs from it (the microVM backend's disk image); a remote one resolves it by its
// name and hash ("<name>-<hash>", the same on every host). No backend works out a template from a path.
//
// # Optional capabilities
//
// A backend may declare more by implementing these interfaces; callers ask with a
// type assertion and must not assume them:
//
//   - [Snapshotter]: save a sandbox's whole state to an image the backend owns, start
//     new sandboxes from it, delete it. Images are opaque references: the caller
//     stores the reference, never a path, and never touches the image's files. A
//     snapshot is taken only while no call is in flight; the sandbox started from an
//     image is reached over a new connection, which begins with a new handshake.
//   - [SharedImager]: keep shared images, saved once and started from by many
//     sandboxes (the template snapshot: a sandbox booted from the template, warmed and
//     saved once; see internal/sandbox/pool.go). DeleteImage leaves a shared image
//     alone, so one sandbox's retention or deletion never removes another's state.
//   - [Preparer]: do slow one-off work for a template (build an image, probe an
//     accelerator) before the first Create.
//   - [Accelerated]: report the accelerator a backend (or one sandbox) uses.
//   - [ImageExporter]: stream an image out of the scope and into another one (a
//     snapshot store, another daemon), and say what restoring it needs of a host
//     (ImageCompat), so a sandbox outlives the host its image was taken on.
//
// # Adding a backend
//
// See NEW_BACKEND.md in this directory, and run backendtest.Run against it.
package backend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/template"
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
	// List reports the sandboxes in the backend's scope (see Scope), running or not,
	// including those a crashed predecessor left; never another scope's.
	List(ctx context.Context) ([]Info, error)
	// DestroyID stops and removes a sandbox of the backend's scope by id, including one
	// this process did not create (recovery after a crash). It returns nil if it does
	// not exist there.
	DestroyID(ctx context.Context, id string) error
}

// Spec describes a sandbox to create.
type Spec struct {
	// ID names the sandbox; unique among live sandboxes of the backend. Letters,
	// digits, '-' and '_' only.
	ID string
	// Template is the template the sandbox starts from (never modified by it), as
	// internal/template resolved it: Name and Hash name it, RootFS is its tree on
	// this host.
	Template template.Template
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
	if s.Template.RootFS == "" && s.Template.Name == "" {
		return errors.New("spec: no template")
	}
	return nil
}

// ValidRef reports whether ref can name an image or a sandbox: non-empty, letters,
// digits, '-' and '_' only (so a reference never walks out of a backend's directory).
func ValidRef(ref string) bool {
	if ref == "" || len(ref) > 128 {
		return false
	}
	for _, r := range ref {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
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
	// Info reports the sandbox's state; it does not wait for a call in flight, and
	// may ask the host (not the guest) within ctx.
	Info(ctx context.Context) Info
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

// Image is a snapshot image, as its backend reports it.
type Image struct {
	// Ref is the image's opaque reference, unique in the backend's scope (see
	// ValidRef); the caller stores it and gives it back to Fork and DeleteImage.
	Ref string `json:"ref"`
	// SizeBytes is what the image uses on the backend's storage.
	SizeBytes int64 `json:"size_bytes"`
	// CreatedAt is when it was taken, when the backend knows.
	CreatedAt time.Time `json:"created_at,omitempty"`
	// Shared marks a shared image (see SharedImager): DeleteImage does not remove it.
	Shared bool `json:"shared,omitempty"`
}

// Snapshotter is the optional capability of saving a sandbox's whole state (files,
// memory, processes) to an image the backend owns, and starting sandboxes from it.
//
// Crash safety: Snapshot makes an image appear whole or not at all (an image half
// written by a crash is not listed, and is removed by the backend). The caller records
// the returned reference; after a crash it lists the images (ListImages) and deletes
// those it has no record of, and drops records whose image is not listed.
type Snapshotter interface {
	// Snapshot saves sb's state into a new image and returns it; sb keeps running. It
	// fails with a *DeadError when sb is dead; on any error no image is left.
	Snapshot(ctx context.Context, sb Sandbox) (Image, error)
	// Fork starts a new sandbox described by spec from the image ref (spec's memory
	// may be ignored: the image holds the memory it was saved with). A ref that names
	// no image (deleted, never taken, malformed) is ErrNotFound. The new sandbox does
	// not depend on the image afterwards: the image may be deleted while it runs.
	// The new sandbox's ID may differ from spec.ID (a backend that restores into a
	// container made ahead gives it that container's unique id): callers use the
	// returned sandbox's ID.
	Fork(ctx context.Context, ref string, spec Spec) (Sandbox, error)
	// DeleteImage removes an image; one that does not exist is not an error. A shared
	// image (Image.Shared, see SharedImager) is left in place: it is not one sandbox's,
	// and only DeleteShared removes it.
	DeleteImage(ctx context.Context, ref string) error
	// ListImages reports the images in the backend's scope, shared ones included
	// (with Shared set).
	ListImages(ctx context.Context) ([]Image, error)
}

// SharedImager is the optional capability of a Snapshotter to keep shared images: an
// image saved once and used as the starting state of any number of sandboxes, whose
// records (one per sandbox that started from it) all name the same reference.
//
// # Terms
//
// A shared image is named by the caller's key (what the caller put into the state it
// saved: for the template snapshot, the template's hash and the warm-up recipe) and
// by what the backend itself puts into every sandbox (for gVisor: the runsc version
// and the guest agent binary). Its reference is derived from both, so when either
// changes the old reference is simply not found any more and a new image is made;
// the old one stays until DeleteShared removes it.
//
// # Lifecycle
//
//	SharedImage(key) ─ErrNotFound─▶ (boot, warm) SaveShared(sb, key) ─▶ Fork(ref)* ─▶ DeleteShared(ref)
//
// Fork, ListImages and the image's files work as for any image; DeleteImage is a
// no-op for a shared reference (so the caller may treat a record naming it like any
// other, and its retention never removes it); DeleteShared is for the caller that
// knows no record names it any more.
//
// # Failure semantics
//
// SaveShared writes the image whole or not at all (as Snapshot); two SaveShared calls
// for one key leave one image. SharedImage fails with ErrNotFound when no whole image
// exists for key and the backend's current inputs.
type SharedImager interface {
	// SharedImage returns the shared image saved for key, or ErrNotFound.
	SharedImage(ctx context.Context, key string) (Image, error)
	// SaveShared saves sb's state as the shared image for key (sb keeps running) and
	// returns it, replacing one saved before for the same key and inputs.
	SaveShared(ctx context.Context, sb Sandbox, key string) (Image, error)
	// DeleteShared removes a shared image; one that does not exist is not an error.
	DeleteShared(ctx context.Context, ref string) error
}

// Preparer is the optional capability of getting ready for a template ahead of the
// first Create (building a disk image, settling an accelerator), so that Create is
// as fast as it will be. Create works without it; Prepare is an optimisation and may
// be called again (it is then cheap). Progress lines go to progress (may be nil).
type Preparer interface {
	Prepare(ctx context.Context, tpl template.Template, progress io.Writer) error
}

// Accelerated is the optional capability of a backend, or of one of its sandboxes,
// to say which accelerator it runs on ("kvm", "tcg"; "auto" while not yet settled).
type Accelerated interface {
	Accel() string
}
