package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/history"
)

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
