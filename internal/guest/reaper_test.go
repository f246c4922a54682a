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
	eachReaperMode(t, func(t *testing.T, r *reaper) {
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

// Children that exit together send SIGCHLDs that coalesce; the reaper, which has no
// timer to fall back on, still delivers every status at once.
func TestReaperCoalescedExits(t *testing.T) {
	eachReaperMode(t, func(t *testing.T, r *reaper) {
		// Each child waits on a pipe that closes when the test closes its end, so
		// that all of them exit at the same moment.
		var fds [2]int
		if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		const n = 40
		chans := make([]<-chan procExit, n)
		for i := range chans {
			_, ch, err := r.start(func() (int, error) {
				return syscall.ForkExec("/bin/sh", []string{"sh", "-c", "read x; exit 3"},
					&syscall.ProcAttr{Files: []uintptr{uintptr(fds[0])}})
			})
			if err != nil {
				t.Fatal(err)
			}
			chans[i] = ch
		}
		syscall.Close(fds[0])
		start := time.Now()
		syscall.Close(fds[1])
		for i, ch := range chans {
			select {
			case e := <-ch:
				if e.Err != nil || !e.Status.Exited() || e.Status.ExitStatus() != 3 {
					t.Errorf("child %d: got %+v, want exit 3", i, e)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("child %d: no status after %v", i, time.Since(start))
			}
		}
		t.Logf("%d statuses in %v", n, time.Since(start).Round(time.Millisecond))
	})
}

// eachReaperMode runs f as a subtest for each mode of the reaper (own children, reap
// all), with a reaper running.
func eachReaperMode(t *testing.T, f func(t *testing.T, r *reaper)) {
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
			f(t, r)
		})
	}
}
