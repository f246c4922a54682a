package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/internal/history"
)

// TestPersistence guards durability across restarts: everything written
// before Close is read back after Open, and a closed store refuses calls.
func TestPersistence(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
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

	s2, err := Open(ctx, path)
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

// TestConcurrentWriters guards the service's concurrency: 8 goroutines
// writing at once, split over two stores on the same file as two processes
// would be, all succeed with no SQLITE_BUSY and no lost writes.
func TestConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	s1, path := openTest(t)
	s2, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	stores := []*Store{s1, s2}

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

// crashChildEnv names the database the crash child writes to.
const crashChildEnv = "VMEXEC_HISTORY_CRASH_CHILD_DB"

// crashStdout is what every finished run in the crash test stores; large,
// so the child is often killed mid-write.
var crashStdout = strings.Repeat("0123456789abcdef", 16<<10)

// TestCrashLeavesNoHalfRows guards the durability promise: a process killed
// with SIGKILL in the middle of writing leaves a sound database where every
// run is either as BeginRun wrote it or as FinishRun completed it, and the
// next start closes the in-flight ones with AbortRunning.
func TestCrashLeavesNoHalfRows(t *testing.T) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		return
	}
	if testing.Short() {
		t.Skip("skipping crash test in short mode: it runs a child process for about a second")
	}
	ctx := context.Background()
	_, path := openTest(t)

	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashLeavesNoHalfRows$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until the child has written for a while, then kill it.
	ready := make([]byte, 1)
	if _, err := stdout.Read(ready); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child did not start writing: %v", err)
	}
	time.Sleep(700 * time.Millisecond)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()

	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open after crash: %v", err)
	}
	defer s.Close()
	var integrity string
	if err := s.db.QueryRow(`PRAGMA integrity_check`).Scan(&integrity); err != nil || integrity != "ok" {
		t.Fatalf("integrity_check = %q, %v", integrity, err)
	}
	total, err := s.CountRuns(ctx, history.RunFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if total < 2 {
		t.Fatalf("child wrote only %d runs before the kill", total)
	}
	running := 0
	f := history.RunFilter{Limit: history.MaxListLimit}
	for {
		runs, next, err := s.ListRuns(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range runs {
			switch {
			case r.Status == history.StatusRunning && r.Verdict == "" && r.Stdout == "" && r.CompletedAt.IsZero() && r.Code == "print('x')":
				running++
			case r.Status == history.StatusDone && r.Verdict == history.VerdictOK && r.Stdout == crashStdout &&
				r.ExitCode == 0 && !r.CompletedAt.IsZero() && r.Code == "print('x')":
			default:
				t.Errorf("half-written run %s: status %q verdict %q stdout %d bytes completed %v",
					r.ID, r.Status, r.Verdict, len(r.Stdout), r.CompletedAt)
			}
		}
		if next == "" {
			break
		}
		f.Cursor = next
	}
	t.Logf("child wrote %d runs, %d in flight at the kill", total, running)
	if n, err := s.AbortRunning(ctx, "crash"); err != nil || n != running {
		t.Errorf("AbortRunning = %d, %v; want %d", n, err, running)
	}
}

// crashChild writes runs to the database at path until it is killed. It
// prints one byte once the first run is finished.
func crashChild(path string) {
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		id := fmt.Sprintf("crash-%06d", i)
		if err := s.BeginRun(ctx, history.Run{ID: id, SandboxID: "sb", Code: "print('x')"}); err != nil && !errors.Is(err, history.ErrExists) {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := s.FinishRun(ctx, history.Run{ID: id, Status: history.StatusDone, Verdict: history.VerdictOK, Stdout: crashStdout}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if i == 0 {
			os.Stdout.Write([]byte{'.'})
		}
	}
}
