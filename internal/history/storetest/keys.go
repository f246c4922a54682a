package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/internal/auth"
)

// testKeys: keys round-trip; a live name is unique; a revoked key stays listed and
// its name can be reused; last use is recorded; only the hash is stored.
func testKeys(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	st, _ := openTest(t, newDB)
	s := keyStore(t, st)
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
