package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/auth"
)

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
