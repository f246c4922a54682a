// Package api holds the JSON shapes of vmexec's HTTP API: the versioned /v1 routes and
// the fcctl-web compatible routes existing clients speak. The server, the Go client and
// the CLI share these types; api/openapi.yaml documents the same shapes for everyone
// else.
package api

import "time"

// Languages vmexec runs, by canonical name.
var Languages = []string{"python", "javascript", "bash", "rust", "go"}

// Verdicts: how a run ended.
const (
	VerdictOK          = "ok"
	VerdictNonzeroExit = "nonzero_exit"
	VerdictTimeout     = "timeout"
	VerdictOutputLimit = "output_limit"
	VerdictMemoryLimit = "memory_limit"
	VerdictKilled      = "killed"
	VerdictBlocked     = "blocked" // refused by policy; never ran
	VerdictError       = "error"   // a cell of an interpreter context raised an exception
	// VerdictCanceled: the caller went away (a streaming client disconnected) and the
	// run was stopped; it is rolled back like any failure.
	VerdictCanceled = "canceled"
)

// Limits bound one run. Zero fields take the server's defaults; values above the
// server's maximums are refused.
type Limits struct {
	TimeoutMS      int64 `json:"timeout_ms,omitempty" yaml:"timeout_ms,omitempty"`
	MaxOutputBytes int64 `json:"max_output_bytes,omitempty" yaml:"max_output_bytes,omitempty"` // per stream
	MemoryMB       int64 `json:"memory_mb,omitempty" yaml:"memory_mb,omitempty"`
	MaxProcs       int64 `json:"max_procs,omitempty" yaml:"max_procs,omitempty"`
	MaxFileBytes   int64 `json:"max_file_bytes,omitempty" yaml:"max_file_bytes,omitempty"`
}

// ExecRequest runs code for an agent. With SandboxID it runs in that sandbox;
// otherwise in the agent's own sandbox, created on first use.
type ExecRequest struct {
	AgentID   string            `json:"agent_id"`
	SandboxID string            `json:"sandbox_id,omitempty"`
	Language  string            `json:"language"`
	Code      string            `json:"code"`
	Stdin     string            `json:"stdin,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
	WorkDir   string            `json:"working_dir,omitempty"`
	Limits    Limits            `json:"limits,omitempty"`
	// Metadata is the caller's own: any JSON object (values of any JSON type), stored
	// with the run and returned with it in the history.
	Metadata map[string]any `json:"metadata,omitempty"`
	// History overrides the transaction policy for this run only.
	History *ExecPolicy `json:"history,omitempty"`
	// Durable saves the state the run leaves (a snapshot) before the answer, so a
	// crash right after it cannot lose the run's effects; it costs one snapshot.
	Durable bool `json:"durable,omitempty"`
	// Changes turns the run's change set off or sets the areas it covers; nil takes
	// the server's sandbox.changes.
	Changes *ChangesOptions `json:"changes,omitempty"`
}

// ChangesOptions is an ExecRequest's choice of change set.
type ChangesOptions struct {
	// Enabled false: no change set for this run (and no scan). Unset: the server's.
	Enabled *bool `json:"enabled,omitempty"`
	// Paths are the areas scanned, absolute or relative to /home/user; empty: the
	// server's (by default /home/user, /tmp and the working directory).
	Paths []string `json:"paths,omitempty"`
}

// Change kinds of FileChange.Kind. A rename is a delete and a create.
const (
	ChangeCreated  = "created"
	ChangeModified = "modified"
	ChangeDeleted  = "deleted"
)

// FileChange is one path a run created, modified or deleted, found by comparing the
// files' metadata (type, size, mode, mtime, ctime, inode) before and after the run;
// contents are not read. Size and Mode are the file's after the run (before it, for a
// deleted one).
type FileChange struct {
	Path string `json:"path"`
	Kind string `json:"kind"` // created, modified, deleted
	Type string `json:"type"` // file, dir, symlink, other
	Size int64  `json:"size"`
	Mode uint32 `json:"mode"` // permission bits
}

// ChangeDiff is GET /v1/runs/{id}/changes?path=P: what a run did to one file.
type ChangeDiff struct {
	RunID string `json:"run_id"`
	Path  string `json:"path"`
	Kind  string `json:"kind"`
	// Binary: one side is not text (or is over the diff size bound); only the sizes
	// are reported.
	Binary  bool  `json:"binary"`
	OldSize int64 `json:"old_size"`
	NewSize int64 `json:"new_size"`
	// Diff is a unified diff (a/path → b/path), empty for a binary file.
	Diff string `json:"diff"`
	// NewFrom says where the file after the run was read: "sandbox" (the run's state is
	// the sandbox's current one) or "failure_snapshot" (the failed state it kept).
	NewFrom string `json:"new_from"`
}

// ExecResult is the outcome of one run. A program that fails is still a result (with
// its exit code and verdict), not an HTTP error.
type ExecResult struct {
	ExecutionID     string    `json:"execution_id"`
	SandboxID       string    `json:"sandbox_id"`
	AgentID         string    `json:"agent_id,omitempty"`
	Language        string    `json:"language"`
	ExitCode        int       `json:"exit_code"`
	Verdict         string    `json:"verdict"`
	Signal          string    `json:"signal,omitempty"`
	Stdout          string    `json:"stdout"`
	Stderr          string    `json:"stderr"`
	StdoutTruncated bool      `json:"stdout_truncated"`
	StderrTruncated bool      `json:"stderr_truncated"`
	DurationMS      int64     `json:"duration_ms"`
	StartedAt       time.Time `json:"started_at"`
	CompletedAt     time.Time `json:"completed_at"`
	// SandboxRecreated: the run found its sandbox dead (a previous run hit a limit that
	// ends the sandbox) and ran in a fresh one with the same id; earlier files are gone.
	SandboxRecreated bool `json:"sandbox_recreated"`
	// SandboxLost: this run ended its sandbox; the next run gets a fresh one.
	SandboxLost bool `json:"sandbox_lost"`
	// Error explains a run that could not start or whose sandbox died.
	Error string `json:"error,omitempty"`

	// StateRestoredFrom is set when the server stopped (a crash) before the state of
	// an earlier acknowledged run was saved: the sandbox came back with the state
	// after this run ("none": the state before any run); later runs' effects are gone.
	StateRestoredFrom string `json:"state_restored_from,omitempty"`
	// Durable: the state this run left was saved before the answer (durable: true).
	Durable bool `json:"durable,omitempty"`

	// The run's transaction: the snapshot taken before it, the one keeping the
	// state it left when it failed (the pre-run one itself when the failed run
	// provably changed nothing), and the one the sandbox was rolled back to.
	PreSnapshotID      string `json:"pre_snapshot_id,omitempty"`
	FailureSnapshotID  string `json:"failure_snapshot_id,omitempty"`
	RestoredSnapshotID string `json:"restored_snapshot_id,omitempty"`
	RolledBack         bool   `json:"rolled_back"`
	// Warnings report a part of the transaction that could not be done (for
	// example a snapshot that failed); the run's own result is still valid.
	Warnings []string `json:"warnings,omitempty"`

	// Blocked: policy refused the code before it reached a sandbox (verdict
	// "blocked", exit code -1); BlockedRule and BlockedReason say why and what to do.
	Blocked       bool   `json:"blocked,omitempty"`
	BlockedRule   string `json:"blocked_rule,omitempty"`
	BlockedReason string `json:"blocked_reason,omitempty"`
	// Redactions lists the secret rules whose matches were replaced by
	// [REDACTED:rule] in stdout and stderr.
	Redactions []string `json:"redactions,omitempty"`

	// Changes lists what the run created, modified and deleted under the scanned
	// areas, sorted by path (absent when none, or when change sets are off);
	// ChangesTruncated says the list is incomplete (over the bound); ChangesUndone says
	// the run was rolled back, so these changes are no longer in the sandbox.
	// ChangesScanUS is what computing them cost inside the sandbox.
	Changes          []FileChange `json:"changes,omitempty"`
	ChangesTruncated bool         `json:"changes_truncated,omitempty"`
	ChangesUndone    bool         `json:"changes_undone,omitempty"`
	ChangesScanUS    int64        `json:"changes_scan_us,omitempty"`
}

// Success reports whether the run exited 0 within its limits.
func (r *ExecResult) Success() bool { return r.Verdict == VerdictOK }

// CreateSandboxRequest creates a sandbox explicitly.
type CreateSandboxRequest struct {
	AgentID  string `json:"agent_id,omitempty"`
	Name     string `json:"name,omitempty"`
	MemoryMB int64  `json:"memory_mb,omitempty"`
	// Backend names the backend (gvisor, microvm); empty is the server's default.
	Backend string `json:"backend,omitempty"`
}

// Sandbox describes a sandbox.
type Sandbox struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	AgentID string `json:"agent_id,omitempty"`
	Backend string `json:"backend"`
	// Accel is the accelerator of a microVM sandbox: kvm or tcg.
	Accel string `json:"accel,omitempty"`
	// Status: starting; running; busy (a run or start in progress); dead (a run ended it; the
	// next run replaces it); suspended (stopped to save resources or by a daemon
	// restart; the next run resumes it from its newest snapshot).
	Status   string `json:"status"`
	MemoryMB int64  `json:"memory_mb"`
	Runs     int    `json:"runs"`
	// Snapshots and SnapshotBytes count the sandbox's snapshot images on disk.
	Snapshots     int       `json:"snapshots"`
	SnapshotBytes int64     `json:"snapshot_bytes"`
	CreatedAt     time.Time `json:"created_at"`
	LastUsedAt    time.Time `json:"last_used_at"`
}

// SandboxList is GET /v1/sandboxes.
type SandboxList struct {
	Sandboxes []Sandbox `json:"sandboxes"`
}

// Backend describes one enabled backend: GET /v1/backends.
type Backend struct {
	Name    string `json:"name"`
	Default bool   `json:"default"`
	// Accel is the accelerator a microVM backend settled on (kvm, tcg), or auto
	// before its first sandbox probed it.
	Accel     string `json:"accel,omitempty"`
	Snapshots bool   `json:"snapshots"`
}

// BackendList is GET /v1/backends.
type BackendList struct {
	Backends []Backend `json:"backends"`
}

// Health is GET /health.
type Health struct {
	Service   string    `json:"service"`
	Status    string    `json:"status"`
	Timestamp time.Time `json:"timestamp"`
	Version   string    `json:"version,omitempty"`
	Backend   string    `json:"backend,omitempty"`
	Sandboxes int       `json:"sandboxes"`
}

// Error is the body of every non-2xx response.
type Error struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// Error codes.
const (
	CodeBadRequest  = "bad_request"
	CodeInvalidJSON = "invalid_json"
	CodeTooLarge    = "too_large"
	// CodeUnsupportedMediaType: a JSON route got a body that is not
	// Content-Type application/json (415).
	CodeUnsupportedMediaType = "unsupported_media_type"
	CodeNotFound             = "not_found"
	CodeForbidden            = "forbidden"
	CodeBusy                 = "busy"
	CodeConflict             = "conflict"
	CodeUnavailable          = "unavailable"
	CodeInternal             = "internal"
	CodeTimeout              = "timeout"
	CodeLimit                = "limit"
	CodeUnsupported          = "unsupported"
	// CodeUnauthorized: no valid API key (missing, malformed, unknown or revoked; 401).
	CodeUnauthorized = "unauthorized"
	// CodeRateLimited: the key's request rate is spent (429, with Retry-After).
	CodeRateLimited = "rate_limited"
	// CodeQuota: the key's cap on concurrent runs or on sandboxes is reached (429).
	CodeQuota = "quota"
)

// ExecPolicy is the transaction policy of runs: the seed's `history` block. Unset
// fields keep the value of the layer below (server defaults, then the agent's policy,
// then the request's).
type ExecPolicy struct {
	// SnapshotBeforeExecution takes a snapshot before each run (default true).
	SnapshotBeforeExecution *bool `json:"snapshot_before_execution,omitempty" yaml:"snapshot_before_execution,omitempty"`
	// AutoRollbackOnFailure returns the sandbox to its pre-run snapshot when a run
	// fails: non-zero exit, timeout or any limit (default true).
	AutoRollbackOnFailure *bool `json:"auto_rollback_on_failure,omitempty" yaml:"auto_rollback_on_failure,omitempty"`
	// SnapshotOnFailure keeps the state a failed run left as a snapshot, for
	// inspection or a later rollback to it (default true).
	SnapshotOnFailure *bool `json:"snapshot_on_failure,omitempty" yaml:"snapshot_on_failure,omitempty"`
	// MaxHistoryEntries keeps at most this many runs per sandbox (default 1000).
	MaxHistoryEntries *int `json:"max_history_entries,omitempty" yaml:"max_history_entries,omitempty"`
	// MaxSnapshots keeps at most this many snapshots per sandbox; the oldest
	// unpinned go first (default 20).
	MaxSnapshots *int `json:"max_snapshots,omitempty" yaml:"max_snapshots,omitempty"`

	// Backend is where the agent's own sandbox is created on first use: gvisor or
	// microvm (agent policy only; ignored on a request). Empty is the server's default.
	Backend string `json:"backend,omitempty" yaml:"backend,omitempty"`
	// AllowedLanguages narrows the languages the agent may run (agent policy only;
	// ignored on a request).
	AllowedLanguages []string `json:"allowed_languages,omitempty" yaml:"allowed_languages,omitempty"`
	// DisabledRules turns pre-run policy rules off for the agent, by id (agent
	// policy only; ignored on a request).
	DisabledRules []string `json:"disabled_rules,omitempty" yaml:"disabled_rules,omitempty"`
}

// Snapshot kinds.
const (
	SnapshotManual   = "manual"
	SnapshotPreRun   = "pre_run"
	SnapshotFailure  = "failure"
	SnapshotForkBase = "fork_base"
	SnapshotSuspend  = "suspend"
)

// Snapshot is a saved sandbox state: files, memory and running processes.
type Snapshot struct {
	ID          string    `json:"id"`
	SandboxID   string    `json:"sandbox_id"`
	AgentID     string    `json:"agent_id,omitempty"`
	Name        string    `json:"name,omitempty"`
	Description string    `json:"description,omitempty"`
	Kind        string    `json:"kind"`
	RunID       string    `json:"run_id,omitempty"`
	SizeBytes   int64     `json:"size_bytes"`
	Pinned      bool      `json:"pinned"`
	CreatedAt   time.Time `json:"created_at"`
}

// SnapshotList is GET /v1/sandboxes/{id}/snapshots.
type SnapshotList struct {
	Snapshots []Snapshot `json:"snapshots"`
	// DiskBytes is the disk the sandbox's snapshot images use.
	DiskBytes int64 `json:"disk_bytes"`
}

// CreateSnapshotRequest is POST /v1/sandboxes/{id}/snapshots.
type CreateSnapshotRequest struct {
	AgentID     string `json:"agent_id,omitempty"`
	Name        string `json:"name,omitempty"`
	Description string `json:"description,omitempty"`
	// Pinned snapshots are never removed by retention.
	Pinned bool `json:"pinned,omitempty"`
}

// RollbackRequest is POST /v1/sandboxes/{id}/rollback. Exactly one of SnapshotID and
// LastSuccess is set.
type RollbackRequest struct {
	AgentID    string `json:"agent_id,omitempty"`
	SnapshotID string `json:"snapshot_id,omitempty"`
	// LastSuccess rolls back to the state right after the sandbox's last
	// successful run.
	LastSuccess bool `json:"last_success,omitempty"`
}

// RollbackResult says what a rollback restored.
type RollbackResult struct {
	SandboxID  string `json:"sandbox_id"`
	SnapshotID string `json:"snapshot_id"`
	Message    string `json:"message"`
}

// ForkRequest is POST /v1/snapshots/{id}/fork: a new sandbox starting from the
// snapshot, owned by the snapshot's agent.
type ForkRequest struct {
	AgentID string `json:"agent_id,omitempty"`
	Name    string `json:"name,omitempty"`
}

// Run is one recorded run (or blocked attempt) in the history.
type Run struct {
	ID                 string         `json:"id"`
	AgentID            string         `json:"agent_id"`
	SandboxID          string         `json:"sandbox_id"`
	Language           string         `json:"language"`
	Code               string         `json:"code"`
	Status             string         `json:"status"` // running, done, blocked, error
	Verdict            string         `json:"verdict"`
	ExitCode           int            `json:"exit_code"`
	Stdout             string         `json:"stdout"`
	Stderr             string         `json:"stderr"`
	StdoutTruncated    bool           `json:"stdout_truncated"`
	StderrTruncated    bool           `json:"stderr_truncated"`
	BlockedRule        string         `json:"blocked_rule,omitempty"`
	BlockedReason      string         `json:"blocked_reason,omitempty"`
	PreSnapshotID      string         `json:"pre_snapshot_id,omitempty"`
	FailureSnapshotID  string         `json:"failure_snapshot_id,omitempty"`
	RestoredSnapshotID string         `json:"restored_snapshot_id,omitempty"`
	RolledBack         bool           `json:"rolled_back"`
	StartedAt          time.Time      `json:"started_at"`
	CompletedAt        time.Time      `json:"completed_at"`
	DurationMS         int64          `json:"duration_ms"`
	Metadata           map[string]any `json:"metadata,omitempty"`
	// KeyName names the API key that made the run; absent on a daemon without keys.
	KeyName string `json:"key_name,omitempty"`
	// The run's change set, as in ExecResult.
	Changes          []FileChange `json:"changes,omitempty"`
	ChangesTruncated bool         `json:"changes_truncated,omitempty"`
	ChangesUndone    bool         `json:"changes_undone,omitempty"`
}

// RunList is GET /v1/history: newest first.
type RunList struct {
	Runs       []Run  `json:"runs"`
	NextCursor string `json:"next_cursor,omitempty"`
	Total      int    `json:"total"`
}

// ParseExecuteRequest is POST /v1/parse-execute: find the code blocks in an LLM's
// reply and run them in document order in the agent's sandbox.
type ParseExecuteRequest struct {
	AgentID   string `json:"agent_id"`
	SandboxID string `json:"sandbox_id,omitempty"`
	// Text is the reply, Markdown.
	Text string `json:"text"`
	// Execute runs the blocks (default true); false only extracts them.
	Execute *bool `json:"execute,omitempty"`
	// StopOnFailure skips the blocks after the first that fails (default true).
	StopOnFailure *bool `json:"stop_on_failure,omitempty"`
	// IncludeIndented also runs indented code blocks (default false).
	IncludeIndented bool `json:"include_indented,omitempty"`
	// RunUnlabeled runs fences without a language when their language could be
	// detected (default true); false skips them.
	RunUnlabeled *bool       `json:"run_unlabeled,omitempty"`
	Limits       Limits      `json:"limits,omitempty"`
	History      *ExecPolicy `json:"history,omitempty"`
}

// CodeBlock is one code block found in a reply.
type CodeBlock struct {
	Index int `json:"index"`
	// Language is canonical (python, javascript, bash, rust, go) when Known.
	Language    string `json:"language"`
	RawLanguage string `json:"raw_language,omitempty"`
	Info        string `json:"info,omitempty"`
	Code        string `json:"code"`
	// Detected: the fence had no language and it was guessed from the code.
	Detected  bool `json:"detected"`
	Known     bool `json:"known"`
	StartLine int  `json:"start_line"`
	EndLine   int  `json:"end_line"`
	// Closed is false for a final fence the reply never closed (a truncated reply).
	Closed bool   `json:"closed"`
	Fence  string `json:"fence"`
}

// Block outcomes in a ParseExecuteResult.
const (
	BlockExecuted    = "executed"    // ran; see Result
	BlockBlocked     = "blocked"     // refused by policy; see Result
	BlockSkipped     = "skipped"     // not run: an earlier block failed, or execute was false
	BlockUnsupported = "unsupported" // its language is not one vmexec runs, or unknown
	BlockError       = "error"       // could not be run; see Reason
)

// BlockResult is what happened to one block.
type BlockResult struct {
	Block  CodeBlock   `json:"block"`
	Status string      `json:"status"`
	Reason string      `json:"reason,omitempty"`
	Result *ExecResult `json:"result,omitempty"`
}

// ParseExecuteResult is the answer of POST /v1/parse-execute, blocks in document order.
type ParseExecuteResult struct {
	Blocks   []BlockResult `json:"blocks"`
	Executed int           `json:"executed"`
	Failed   int           `json:"failed"`
	Skipped  int           `json:"skipped"`
	// Success: at least one block ran and every block that ran succeeded.
	Success bool `json:"success"`
}
