// Package history defines the durable record of what agents did in their
// sandboxes: every run (a transaction of code executed in a sandbox, including
// attempts blocked by policy), every snapshot taken, and every rollback
// performed.
//
// The package holds the contract only: the record types and the [Store]
// interface. The implementations live in the sqlite subpackage (one host) and the
// postgres subpackage (cluster mode); storetest is the conformance suite both pass.
//
// # Terms
//
//   - A run is one execution attempt. It is created by [Store.BeginRun] in
//     status "running" and completed by [Store.FinishRun], or recorded
//     complete in one step by [Store.RecordRun] (used for attempts that never
//     executed, such as those blocked by policy).
//   - A snapshot record describes a saved sandbox state on disk; the store
//     records it, it does not create or delete the files.
//   - A rollback record notes that a sandbox was restored to a snapshot.
//
// # Lifecycle of a run
//
//	BeginRun ──► running ──FinishRun──► done | blocked | error
//	                 │
//	                 └──AbortRunning (after a crash)──► error
//
// A "running" row exists only while a run is in flight. After a crash, the
// service calls [Store.AbortRunning] at startup, so no row stays "running"
// for a run that will never finish.
//
// # References
//
// Records refer to one another by ID (a run's snapshot IDs, a snapshot's
// RunID, a rollback's SnapshotID and RunID). These references are weak: the
// store does not enforce them, because runs are pruned and snapshots deleted
// on independent schedules, so a reference may dangle.
//
// # Errors
//
// Methods return errors wrapping [ErrNotFound], [ErrExists] or [ErrInvalid]
// where the cause is the caller's; any other error is an internal failure of
// the store (I/O, a closed store, a cancelled context). Test with
// [errors.Is].
//
// # Durability
//
// Each mutating method is atomic: when it returns nil the change is durable
// against a process crash, and a crash during the call leaves either the whole
// change or none of it, never part of a row.
//
// # Times
//
// Times are stored with nanosecond precision and returned in UTC. The zero
// [time.Time] means "not set"; methods that need a time and are given the
// zero value use the store's clock, as documented per method.
package history

import (
	"context"
	"errors"
)

// Sentinel errors. Implementations wrap them with detail; test with
// errors.Is.
var (
	// ErrNotFound means the record named by ID does not exist, or, for
	// queries such as LastSuccessfulRun, that no record matches.
	ErrNotFound = errors.New("not found")
	// ErrExists means a record with the same ID was already stored.
	ErrExists = errors.New("already exists")
	// ErrInvalid means the argument is malformed: a required field is
	// empty, a status or kind is unknown, a cursor was not produced by
	// ListRuns, or a count is negative.
	ErrInvalid = errors.New("invalid argument")
)

// Limits on the number of runs ListRuns returns per page.
const (
	// DefaultListLimit applies when RunFilter.Limit is zero or negative.
	DefaultListLimit = 50
	// MaxListLimit caps RunFilter.Limit; larger values are reduced to it.
	MaxListLimit = 1000
)

// Store is the durable history of runs, snapshots and rollbacks.
//
// All methods are safe for concurrent use by multiple goroutines. The context
// bounds the call only. After Close, every method returns an error.
type Store interface {
	// BeginRun inserts r with Status "running" and Verdict "", whatever
	// those fields hold; all other fields are stored as given. If
	// r.StartedAt is zero the store's clock is used.
	//
	// r.ID and r.SandboxID are required (ErrInvalid). An existing ID
	// yields ErrExists and changes nothing.
	BeginRun(ctx context.Context, r Run) error

	// FinishRun completes the run with ID r.ID, overwriting its result
	// fields: Status, Verdict, ExitCode, Stdout, Stderr, StdoutTruncated,
	// StderrTruncated, BlockedRule, BlockedReason, RolledBack,
	// CompletedAt and DurationMS. The snapshot IDs and Metadata are
	// overwritten only when non-empty, so a caller need not repeat what
	// it passed to BeginRun. The identity fields (AgentID, SandboxID,
	// Language, Code, StartedAt) are fixed by BeginRun and ignored here.
	// If r.CompletedAt is zero the store's clock is used.
	//
	// r.Status must be "done", "blocked" or "error" and r.Verdict must
	// be non-empty (ErrInvalid). If no run has ID r.ID it returns
	// ErrNotFound. Finishing a run twice overwrites the first result.
	FinishRun(ctx context.Context, r Run) error

	// RecordRun inserts a complete run in one step, for attempts that
	// never ran (for example, blocked by policy). r.Status must be
	// "done", "blocked" or "error" and r.Verdict non-empty; r.ID and
	// r.SandboxID are required (ErrInvalid), except that a blocked attempt
	// of an agent that has no sandbox yet may leave SandboxID empty. A zero StartedAt is set
	// from the store's clock, and a zero CompletedAt to StartedAt. An
	// existing ID yields ErrExists.
	RecordRun(ctx context.Context, r Run) error

	// GetRun returns the run with the given ID, or ErrNotFound.
	GetRun(ctx context.Context, id string) (Run, error)

	// ListRuns returns the runs matching f, newest first (by StartedAt,
	// ties broken by ID descending), at most f.Limit of them (see
	// DefaultListLimit and MaxListLimit). next is non-empty when more
	// runs may follow: pass it as f.Cursor, with the other filter fields
	// unchanged, to get the next page. Runs inserted while paging never
	// cause a run to be returned twice. A cursor not produced by
	// ListRuns yields ErrInvalid. No match is not an error: it returns
	// an empty slice.
	ListRuns(ctx context.Context, f RunFilter) (runs []Run, next string, err error)

	// CountRuns returns how many runs match f, ignoring f.Limit and
	// f.Cursor.
	CountRuns(ctx context.Context, f RunFilter) (int, error)

	// AbortRunning marks every "running" run as Status "error", Verdict
	// "error", ExitCode -1 (the run never reported one), completed now, with reason stored in Metadata under the
	// key "abort_reason". It is meant for startup after a crash, before
	// any new run begins. It returns how many runs it marked.
	AbortRunning(ctx context.Context, reason string) (int, error)

	// PruneRuns deletes the runs of sandboxID other than the newest keep
	// (by StartedAt, then ID). Running rows are never deleted, but do
	// count among the newest keep. keep < 0 yields ErrInvalid; keep == 0
	// deletes every finished run of the sandbox. Pruning a sandbox with
	// no runs is not an error.
	PruneRuns(ctx context.Context, sandboxID string, keep int) error

	// PutSnapshot stores s, replacing every field of an existing
	// snapshot with the same ID (use it to pin or rename). s.ID,
	// s.SandboxID and a known s.Kind are required (ErrInvalid). If
	// s.CreatedAt is zero the store's clock is used.
	PutSnapshot(ctx context.Context, s Snapshot) error

	// GetSnapshot returns the snapshot with the given ID, or ErrNotFound.
	GetSnapshot(ctx context.Context, id string) (Snapshot, error)

	// ListSnapshots returns the snapshots of sandboxID, oldest first (by
	// CreatedAt, then ID). No snapshots is an empty slice, not an error.
	ListSnapshots(ctx context.Context, sandboxID string) ([]Snapshot, error)

	// DeleteSnapshot deletes the snapshot record with the given ID, or
	// returns ErrNotFound. It does not check Pinned: retention is the
	// caller's policy. Runs and rollbacks that refer to the snapshot
	// keep the ID.
	DeleteSnapshot(ctx context.Context, id string) error

	// LastSuccessfulRun returns the newest finished run of sandboxID
	// whose Verdict is "ok", or ErrNotFound if there is none. Rollback
	// uses it to find the last known-good state; it does not check that
	// the run's snapshots still exist.
	LastSuccessfulRun(ctx context.Context, sandboxID string) (Run, error)

	// RecordRollback inserts rb. rb.ID, rb.SandboxID and rb.SnapshotID
	// are required (ErrInvalid); an existing ID yields ErrExists. If
	// rb.At is zero the store's clock is used.
	RecordRollback(ctx context.Context, rb Rollback) error

	// ListRollbacks returns the rollbacks of sandboxID, oldest first (by
	// At, then ID). None is an empty slice, not an error.
	ListRollbacks(ctx context.Context, sandboxID string) ([]Rollback, error)

	// PutSandbox stores sb, replacing a record with the same ID. sb.ID is
	// required (ErrInvalid); a zero CreatedAt is set from the store's clock.
	PutSandbox(ctx context.Context, sb Sandbox) error

	// ListSandboxes returns every sandbox record, oldest first.
	ListSandboxes(ctx context.Context) ([]Sandbox, error)

	// SetSandboxState updates the durable state of sandbox id (see
	// SandboxState), or returns ErrNotFound.
	SetSandboxState(ctx context.Context, id string, st SandboxState) error

	// SnapshotBytes returns the total SizeBytes of the snapshots of
	// sandboxID, or of every snapshot when sandboxID is "".
	SnapshotBytes(ctx context.Context, sandboxID string) (int64, error)

	// DeleteSandbox deletes a sandbox record, or returns ErrNotFound. Its
	// runs and snapshots are the caller's to remove.
	DeleteSandbox(ctx context.Context, id string) error

	// PutAgentPolicy stores an agent's execution policy (opaque JSON text).
	PutAgentPolicy(ctx context.Context, agentID, policy string) error

	// GetAgentPolicy returns the agent's stored policy, or ErrNotFound.
	GetAgentPolicy(ctx context.Context, agentID string) (string, error)

	// ListAllSnapshots returns every snapshot record, oldest first; startup
	// uses it to reconcile records with the images on disk.
	ListAllSnapshots(ctx context.Context) ([]Snapshot, error)

	// Close releases the store's resources. Calls in flight may fail.
	// Closing twice is harmless.
	Close() error
}
