package guest

import (
	"context"
	"log/slog"
	"syscall"
	"testing"
	"time"
)

// A child that exits before its starter has even registered it is still delivered:
// the reaper cannot hand out (or discard) a status while start holds its lock.
func TestReaperEarlyExit(t *testing.T) {
	for _, all := range []bool{false, true} {
		name := "own children"
		if all {
			name = "reap all"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r := newReaper(all, slog.Default())
			go r.run(ctx)
			for i := 0; i < 3; i++ {
				pid, ch, err := r.start(func() (int, error) {
					pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "exit 7"}, &syscall.ProcAttr{})
					time.Sleep(100 * time.Millisecond) // the child is long gone, its SIGCHLD sent
					return pid, err
				})
				if err != nil {
					t.Fatal(err)
				}
				select {
				case e := <-ch:
					if e.Err != nil || !e.Status.Exited() || e.Status.ExitStatus() != 7 {
						t.Errorf("pid %d: got %+v, want exit 7", pid, e)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("pid %d: no status", pid)
				}
			}
		})
	}
}
