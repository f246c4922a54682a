package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/history/storetest"
)

// The run helpers are the conformance suite's.
var (
	t0          = storetest.T0
	finishedRun = storetest.FinishedRun
	ids         = storetest.IDs
)

// openTest opens a store on a fresh file and closes it when the test ends.
func openTest(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "history.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

// mustRecord stores complete runs.
func mustRecord(t *testing.T, s *Store, runs ...history.Run) {
	t.Helper()
	storetest.MustRecord(t, s, runs...)
}
