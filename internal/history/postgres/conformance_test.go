package postgres

import (
	"context"
	"testing"

	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/history/postgres/pgtest"
	"github.com/vmexec/vmexec/internal/history/storetest"
)

// TestStore runs the history.Store conformance suite on a real PostgreSQL: one
// server for the suite, a fresh database per test, reopened by connecting again.
func TestStore(t *testing.T) {
	srv := pgtest.Start(t)
	storetest.RunStore(t, func(t *testing.T) storetest.Open {
		url := srv.NewDatabase(t)
		return func(ctx context.Context) (history.Store, error) { return Open(ctx, url) }
	})
}
