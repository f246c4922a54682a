// Package storetest is the conformance suite of history.Store: every implementation
// (internal/history/sqlite, internal/history/postgres) runs the same tests, with the
// same assertions, through RunStore. It also covers what the daemon asks of the
// object it uses as its history besides history.Store: the API keys (auth.Store)
// and the agent loop's conversations.
//
// A backend supplies a NewDB: a fresh, empty database per test, and a way to open
// several stores on it (as several processes, or a restarted daemon, would).
package storetest

import (
	"context"
	"testing"

	"github.com/vmexec/vmexec/internal/history"
)

// Open opens a new store on one database; every call opens another store on the
// same database. The caller closes what it opens.
type Open func(ctx context.Context) (history.Store, error)

// NewDB makes a fresh, empty database that lives until t ends and returns how to
// open stores on it.
type NewDB func(t *testing.T) Open

// RunStore runs the conformance suite, each test as a subtest with its own database.
func RunStore(t *testing.T, newDB NewDB) {
	tests := []struct {
		name string
		fn   func(*testing.T, NewDB)
	}{
		{"RunRoundTrip", testRunRoundTrip},
		{"FinishRunOverwrites", testFinishRunOverwrites},
		{"RunErrors", testRunErrors},
		{"RecordRunDefaults", testRecordRunDefaults},
		{"ListRunsFilters", testListRunsFilters},
		{"ListRunsPagination", testListRunsPagination},
		{"ListRunsLimit", testListRunsLimit},
		{"AbortRunning", testAbortRunning},
		{"PruneRuns", testPruneRuns},
		{"LastSuccessfulRun", testLastSuccessfulRun},
		{"RunMetadataAnyJSON", testRunMetadataAnyJSON},
		{"SnapshotCRUD", testSnapshotCRUD},
		{"PutSnapshotInvalid", testPutSnapshotInvalid},
		{"ListSnapshotsOrder", testListSnapshotsOrder},
		{"Rollbacks", testRollbacks},
		{"SandboxesAndAgentsPersist", testSandboxesAndAgentsPersist},
		{"SandboxStatePersists", testSandboxStatePersists},
		{"Persistence", testPersistence},
		{"ConcurrentWriters", testConcurrentWriters},
		{"Keys", testKeys},
		{"Conversations", testConversations},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newDB) })
	}
}
