package history

import "time"

// Run statuses. A run is "running" only while in flight; the others are
// final.
const (
	StatusRunning = "running"
	StatusDone    = "done"    // the code ran to a verdict other than blocked
	StatusBlocked = "blocked" // policy refused the code; it never ran
	StatusError   = "error"   // the service failed to run the code
)

// Run verdicts: what happened to the code. The verdict is "" while running.
const (
	VerdictOK          = "ok"
	VerdictNonzeroExit = "nonzero_exit"
	VerdictTimeout     = "timeout"
	VerdictOutputLimit = "output_limit"
	VerdictMemoryLimit = "memory_limit"
	VerdictKilled      = "killed"
	VerdictBlocked     = "blocked"
	VerdictError       = "error"
	VerdictCanceled    = "canceled" // the caller went away mid-run
)

// Snapshot kinds: why a snapshot was taken.
const (
	SnapshotManual   = "manual"    // asked for by the agent or an operator
	SnapshotPreRun   = "pre_run"   // taken before a run, to roll back to
	SnapshotFailure  = "failure"   // the state a failed run left, for inspection
	SnapshotForkBase = "fork_base" // the base a forked sandbox starts from
	SnapshotSuspend  = "suspend"   // taken when a sandbox is stopped, to resume it from
)

// Sandbox is the durable record of a sandbox: it outlives the daemon, so an agent
// finds its sandbox (resumed from its newest snapshot) after a restart.
type Sandbox struct {
	ID, AgentID, Name, Backend string
	MemoryMB                   int64
	CreatedAt                  time.Time
	SandboxState
}

// SandboxState is what a sandbox resumes from, kept durable so that a crash cannot
// undo what the API acknowledged (a rollback, a fork, a committed run).
type SandboxState struct {
	// CurrentSnapshotID is the snapshot the sandbox resumes from: the newest one
	// taken of its live state, the target of its last rollback, or its fork's source.
	// Empty: none yet (the sandbox resumes fresh).
	CurrentSnapshotID string
	// HeadRunID is the newest acknowledged run whose effects the live state holds
	// ("" before any). When it differs from the current snapshot's StateRunID, runs
	// acknowledged after that snapshot are not in it.
	HeadRunID string
}

// Run is one execution attempt of code in a sandbox.
type Run struct {
	ID        string
	AgentID   string
	SandboxID string
	Language  string
	Code      string

	// Status is one of the Status constants.
	Status string
	// Verdict is one of the Verdict constants, or "" while running.
	Verdict string

	ExitCode int
	// Stdout and Stderr are the captured output, capped by the caller
	// (see Capped); the Truncated flags say whether output was cut.
	Stdout, Stderr                   string
	StdoutTruncated, StderrTruncated bool

	// BlockedRule and BlockedReason name the policy rule that refused the
	// code and why; empty unless Status is "blocked".
	BlockedRule, BlockedReason string

	// PreSnapshotID is the snapshot taken before the run, FailureSnapshotID
	// the one taken of the state a failed run left, RestoredSnapshotID the
	// one the sandbox was rolled back to; RolledBack says whether that
	// rollback happened.
	PreSnapshotID, FailureSnapshotID, RestoredSnapshotID string
	RolledBack                                           bool

	StartedAt, CompletedAt time.Time
	DurationMS             int64

	// Metadata is the caller's JSON object (values of any JSON type; numbers read
	// back as json.Number, exactly as written); an empty map is returned as nil.
	Metadata map[string]any

	// Changes is what the run created, modified and deleted (nil: none, or not
	// computed); ChangesTruncated says the list is incomplete, ChangesUndone that the
	// run was rolled back.
	Changes                         []Change
	ChangesTruncated, ChangesUndone bool
	// KeyName names the API key that made the run ("" for none: an open daemon).
	KeyName string
}

// Change is one path a run changed: Kind is created, modified or deleted; Type file,
// dir, symlink or other.
type Change struct {
	Path string `json:"path"`
	Kind string `json:"kind"`
	Type string `json:"type"`
	Size int64  `json:"size"`
	Mode uint32 `json:"mode"`
}

// WithMetadata returns a copy of m with key set to v; m is not changed.
func WithMetadata(m map[string]any, key string, v any) map[string]any {
	out := make(map[string]any, len(m)+1)
	for k, x := range m {
		out[k] = x
	}
	out[key] = v
	return out
}

// Snapshot is the record of a saved sandbox state.
type Snapshot struct {
	ID, SandboxID, AgentID, Name, Description string
	// Kind is one of the Snapshot kind constants.
	Kind string
	// RunID is the run the snapshot was taken for, if any.
	RunID     string
	Path      string
	SizeBytes int64
	// Pinned snapshots are exempt from retention; the store only records
	// the flag.
	Pinned    bool
	CreatedAt time.Time
	// StateRunID is the run whose end state the image holds ("" for a state
	// before any run).
	StateRunID string
}

// Rollback is the record of a sandbox restored to a snapshot.
type Rollback struct {
	ID, SandboxID, AgentID, SnapshotID, Reason string
	// RunID is the run whose failure caused the rollback, if any.
	RunID string
	At    time.Time
}

// RunFilter selects runs for ListRuns and CountRuns. Zero fields do not
// filter.
type RunFilter struct {
	AgentID, SandboxID string
	// FailuresOnly keeps finished runs whose verdict is not "ok".
	FailuresOnly bool
	// Since and Until bound StartedAt to the half-open range
	// [Since, Until).
	Since, Until time.Time
	// Limit is the page size; see DefaultListLimit and MaxListLimit.
	Limit int
	// Cursor is the next value returned by a previous ListRuns call.
	Cursor string
}

// ValidStatus reports whether status is one of the Status constants.
func ValidStatus(status string) bool {
	switch status {
	case StatusRunning, StatusDone, StatusBlocked, StatusError:
		return true
	}
	return false
}

// ValidSnapshotKind reports whether kind is one of the Snapshot kind
// constants.
func ValidSnapshotKind(kind string) bool {
	switch kind {
	case SnapshotManual, SnapshotPreRun, SnapshotFailure, SnapshotForkBase, SnapshotSuspend:
		return true
	}
	return false
}
