package postgres

import (
	"context"
	"testing"

	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/history/postgres/pgtest"
	"github.com/vmexec/vmexec/internal/history/storetest"
)

// TestStore runs the history.Store conformance suite on a real PostgreSQL: one
// server for the suite, a fresh database per test (a copy of one migrated once; the
// migrations have their own tests), reopened by connecting again.
func TestStore(t *testing.T) {
	srv := pgtest.Start(t)
	migrated := srv.NewDatabase(t)
	s, err := Open(context.Background(), migrated)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	storetest.RunStore(t, func(t *testing.T) storetest.Open {
		url := srv.CloneDatabase(t, migrated)
		return func(ctx context.Context) (history.Store, error) { return Open(ctx, url) }
	})
}
