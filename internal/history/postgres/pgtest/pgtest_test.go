package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestStart guards the harness itself: a server starts, a fresh database accepts
// a table, two databases do not share rows, and a clone has its source's rows.
func TestStart(t *testing.T) {
	s := Start(t)
	ctx := context.Background()
	a, b := s.NewDatabase(t), s.NewDatabase(t)
	if a == b {
		t.Fatalf("two databases share the URL %s", a)
	}
	s.Exec(t, DatabaseName(a), "CREATE TABLE x (v int); INSERT INTO x VALUES (1)")
	c, err := pgx.Connect(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'x'").Scan(&n); err != nil || n != 0 {
		t.Errorf("the second database sees the first's table: %d, %v", n, err)
	}
	clone := s.CloneDatabase(t, a)
	cc, err := pgx.Connect(ctx, clone)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close(ctx)
	if err := cc.QueryRow(ctx, "SELECT v FROM x").Scan(&n); err != nil || n != 1 {
		t.Errorf("the clone's row: %d, %v; want 1", n, err)
	}
}
