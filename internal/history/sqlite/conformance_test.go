package sqlite

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/history/storetest"
)

// TestStore runs the history.Store conformance suite on SQLite: a fresh file per
// test, reopened by opening the same path again.
func TestStore(t *testing.T) {
	storetest.RunStore(t, func(t *testing.T) storetest.Open {
		path := filepath.Join(t.TempDir(), "history.db")
		return func(ctx context.Context) (history.Store, error) { return Open(ctx, path) }
	})
}
