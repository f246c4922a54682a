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
)

// Limits bound one run. Zero fields take the server's defaults; values above the
// server's maximums are refused.
type Limits struct {
	TimeoutMS      int64 `json:"timeout_ms,omitempty"`
	MaxOutputBytes int64 `json:"max_output_bytes,omitempty"` // per stream
	MemoryMB       int64 `json:"memory_mb,omitempty"`
	MaxProcs       int64 `json:"max_procs,omitempty"`
	MaxFileBytes   int64 `json:"max_file_bytes,omitempty"`
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
	Metadata  map[string]string `json:"metadata,omitempty"`
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
}

// Success reports whether the run exited 0 within its limits.
func (r *ExecResult) Success() bool { return r.Verdict == VerdictOK }

// CreateSandboxRequest creates a sandbox explicitly.
type CreateSandboxRequest struct {
	AgentID  string `json:"agent_id,omitempty"`
	Name     string `json:"name,omitempty"`
	MemoryMB int64  `json:"memory_mb,omitempty"`
}

// Sandbox describes a sandbox.
type Sandbox struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	AgentID    string    `json:"agent_id,omitempty"`
	Backend    string    `json:"backend"`
	Status     string    `json:"status"` // running, busy (a run or start in progress), dead
	MemoryMB   int64     `json:"memory_mb"`
	Runs       int       `json:"runs"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at"`
}

// SandboxList is GET /v1/sandboxes.
type SandboxList struct {
	Sandboxes []Sandbox `json:"sandboxes"`
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
	CodeNotFound    = "not_found"
	CodeForbidden   = "forbidden"
	CodeBusy        = "busy"
	CodeConflict    = "conflict"
	CodeUnavailable = "unavailable"
	CodeInternal    = "internal"
	CodeTimeout     = "timeout"
	CodeLimit       = "limit"
)
