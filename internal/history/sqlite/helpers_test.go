package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/history"
)

// t0 has a nanosecond part, so round trips prove nothing is rounded.
var t0 = time.Date(2025, 3, 4, 5, 6, 7, 891011121, time.UTC)

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

// finishedRun returns a complete run of sandbox sb, started i seconds
// after t0.
func finishedRun(id, agent, sb string, i int, verdict string) history.Run {
	status := history.StatusDone
	if verdict == history.VerdictBlocked {
		status = history.StatusBlocked
	}
	return history.Run{
		ID:          id,
		AgentID:     agent,
		SandboxID:   sb,
		Language:    "python",
		Code:        fmt.Sprintf("print(%d)", i),
		Status:      status,
		Verdict:     verdict,
		Stdout:      fmt.Sprintf("%d\n", i),
		StartedAt:   t0.Add(time.Duration(i) * time.Second),
		CompletedAt: t0.Add(time.Duration(i)*time.Second + 500*time.Millisecond),
		DurationMS:  500,
	}
}

// mustRecord stores complete runs.
func mustRecord(t *testing.T, s *Store, runs ...history.Run) {
	t.Helper()
	for _, r := range runs {
		if err := s.RecordRun(context.Background(), r); err != nil {
			t.Fatalf("RecordRun(%s): %v", r.ID, err)
		}
	}
}

// ids returns the IDs of runs, in order.
func ids(runs []history.Run) []string {
	out := make([]string, len(runs))
	for i, r := range runs {
		out[i] = r.ID
	}
	return out
}
