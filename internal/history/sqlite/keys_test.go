package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/internal/auth"
)

// TestKeys: keys round-trip; a live name is unique; a revoked key stays listed and
// its name can be reused; last use is recorded; only the hash is stored.
func TestKeys(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "h.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	created := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	k := auth.Key{ID: "key-1", Name: "team-a", Hash: "h1", Agents: []string{"team-a-*"}, Rate: 2.5, MaxSandboxes: 3, MaxRuns: 2, CreatedAt: created}
	if err := s.CreateKey(ctx, k); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKey(ctx, auth.Key{ID: "key-2", Name: "team-a", Hash: "h2", Admin: true, CreatedAt: created}); !errors.Is(err, auth.ErrExists) {
		t.Fatalf("second live key named team-a: %v, want ErrExists", err)
	}
	used := created.Add(time.Hour)
	if err := s.TouchKeys(ctx, map[string]time.Time{"key-1": used}); err != nil {
		t.Fatal(err)
	}
	got, err := s.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k.LastUsedAt = used
	if diff := cmp.Diff([]auth.Key{k}, got); diff != "" {
		t.Fatalf("ListKeys (-want +got):\n%s", diff)
	}
	if err := s.RevokeKey(ctx, "team-a", used); err != nil {
		t.Fatal(err)
	}
	if err := s.RevokeKey(ctx, "team-a", used); !errors.Is(err, auth.ErrNotFound) {
		t.Fatalf("revoking twice: %v, want ErrNotFound", err)
	}
	if err := s.CreateKey(ctx, auth.Key{ID: "key-3", Name: "team-a", Hash: "h3", Admin: true, CreatedAt: used}); err != nil {
		t.Fatalf("reusing a revoked key's name: %v", err)
	}
	got, _ = s.ListKeys(ctx)
	if len(got) != 2 || !got[0].Revoked() || got[1].Revoked() {
		t.Fatalf("after revoke and re-create: %+v", got)
	}
}

// TestReservedMigrationReplaced: a database that recorded version 6 as the
// placeholder 0006_reserved.sql (built between the conversations and keys branches)
// gets the keys migration when it is opened.
func TestReservedMigrationReplaced(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "h.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db := openRaw(t, path)
	for _, q := range []string{`DROP TABLE api_keys`, `ALTER TABLE runs DROP COLUMN key_name`,
		`UPDATE schema_migrations SET name = '0006_reserved.sql' WHERE version = 6`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CreateKey(ctx, auth.Key{ID: "k", Name: "ops", Hash: "h", Admin: true, CreatedAt: time.Now()}); err != nil {
		t.Fatalf("keys after reopening a database with the placeholder: %v", err)
	}
}
