package sqlite

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/internal/history"
)

// TestOldMetadataRows guards rows written before metadata took any JSON (string
// values only): they still read. (The conformance suite covers any JSON; this row
// shape exists only in SQLite databases of older versions.)
func TestOldMetadataRows(t *testing.T) {
	ctx := context.Background()
	s, _ := openTest(t)
	mustRecord(t, s, finishedRun("m1", "a", "sb-1", 1, history.VerdictOK))
	if _, err := s.db.ExecContext(ctx, `UPDATE runs SET metadata = ? WHERE id = ?`, `{"model":"m1","turn":"7"}`, "m1"); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetRun(ctx, "m1")
	if err != nil {
		t.Fatalf("old row: %v", err)
	}
	if diff := cmp.Diff(map[string]any{"model": "m1", "turn": "7"}, got.Metadata); diff != "" {
		t.Errorf("old row metadata (-want +got):\n%s", diff)
	}
}
