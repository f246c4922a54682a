package storetest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/internal/history"
)

// testPersistence guards durability across restarts: everything written
// before Close is read back after Open, and a closed store refuses calls.
func testPersistence(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s, reopen := openTest(t, newDB)
	run := finishedRun("r1", "a", "sb", 1, history.VerdictOK)
	run.Metadata = map[string]any{"k": "v"}
	snap := history.Snapshot{ID: "s1", SandboxID: "sb", Kind: history.SnapshotManual, Pinned: true, CreatedAt: t0}
	rb := history.Rollback{ID: "rb1", SandboxID: "sb", SnapshotID: "s1", At: t0}
	mustRecord(t, s, run)
	if err := s.BeginRun(ctx, history.Run{ID: "live", SandboxID: "sb", StartedAt: t0}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordRollback(ctx, rb); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := s.GetRun(ctx, "r1"); err == nil {
		t.Error("GetRun on a closed store succeeded")
	}

	s2, err := reopen(ctx)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	gotRun, err := s2.GetRun(ctx, "r1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(run, gotRun); diff != "" {
		t.Errorf("run after reopen (-want +got):\n%s", diff)
	}
	if live, err := s2.GetRun(ctx, "live"); err != nil || live.Status != history.StatusRunning {
		t.Errorf("running run after reopen: %+v, %v", live, err)
	}
	gotSnap, err := s2.GetSnapshot(ctx, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(snap, gotSnap); diff != "" {
		t.Errorf("snapshot after reopen (-want +got):\n%s", diff)
	}
	gotRbs, err := s2.ListRollbacks(ctx, "sb")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]history.Rollback{rb}, gotRbs); diff != "" {
		t.Errorf("rollbacks after reopen (-want +got):\n%s", diff)
	}
}

// testConcurrentWriters guards the service's concurrency: 8 goroutines writing at
// once, split over two stores on the same database as two processes would be, all
// succeed (no SQLITE_BUSY, no serialization failure) and no write is lost.
func testConcurrentWriters(t *testing.T, newDB NewDB) {
	ctx := context.Background()
	s1, reopen := openTest(t, newDB)
	s2, err := reopen(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	stores := []history.Store{s1, s2}

	const writers, perWriter = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, writers*perWriter)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			s := stores[w%len(stores)]
			sb := fmt.Sprintf("sb%d", w)
			for i := 0; i < perWriter; i++ {
				id := fmt.Sprintf("w%d-r%d", w, i)
				if err := s.BeginRun(ctx, history.Run{ID: id, AgentID: "a", SandboxID: sb}); err != nil {
					errs <- fmt.Errorf("begin %s: %w", id, err)
					continue
				}
				if err := s.PutSnapshot(ctx, history.Snapshot{ID: id, SandboxID: sb, Kind: history.SnapshotPreRun, RunID: id}); err != nil {
					errs <- fmt.Errorf("snapshot %s: %w", id, err)
				}
				if err := s.FinishRun(ctx, history.Run{ID: id, Status: history.StatusDone, Verdict: history.VerdictOK, Stdout: strings.Repeat("x", 4096)}); err != nil {
					errs <- fmt.Errorf("finish %s: %w", id, err)
				}
				if _, _, err := s.ListRuns(ctx, history.RunFilter{SandboxID: sb, Limit: 5}); err != nil {
					errs <- fmt.Errorf("list %s: %w", sb, err)
				}
				if i%10 == 9 {
					if err := s.PruneRuns(ctx, sb, 1000); err != nil {
						errs <- fmt.Errorf("prune %s: %w", sb, err)
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n, err := s1.CountRuns(ctx, history.RunFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if n != writers*perWriter {
		t.Errorf("CountRuns = %d, want %d", n, writers*perWriter)
	}
	if n, err := s2.CountRuns(ctx, history.RunFilter{FailuresOnly: true}); err != nil || n != 0 {
		t.Errorf("failures = %d, %v; want 0 (every run finished ok)", n, err)
	}
}
