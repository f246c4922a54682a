package guest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The agent sees POSIX message queues (through the helper's mqueue mount) come and go.
func TestPosixQueues(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a mount namespace)")
	}
	a := &agent{opts: Options{}.withDefaults(), log: slog.Default(), reaper: newReaper(false, slog.Default())}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.reaper.run(ctx)
	if a.posixQueues() {
		if mqView.dir == nil {
			t.Fatal("the helper could not open the mqueue filesystem")
		}
		t.Skip("this host has POSIX message queues already")
	}
	name, err := unix.BytePtrFromString("vmexec-guest-test")
	if err != nil {
		t.Fatal(err)
	}
	fd, _, e := unix.Syscall6(unix.SYS_MQ_OPEN, uintptr(unsafe.Pointer(name)), unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o600, 0, 0, 0)
	if e != 0 {
		t.Fatalf("mq_open: %v", e)
	}
	unlink := func() { unix.Syscall(unix.SYS_MQ_UNLINK, uintptr(unsafe.Pointer(name)), 0, 0) }
	defer unlink()
	syscall.Close(int(fd)) // the queue outlives its descriptor
	if !a.posixQueues() {
		t.Fatal("a queue exists, but posixQueues says none")
	}
	unlink()
	if a.posixQueues() {
		t.Fatal("the queue is gone, but posixQueues still sees one")
	}
}

// A helper that hangs instead of answering is killed after mqueueWait: the settled
// check (and every run waiting on it) does not wait for it forever.
func TestMqueueHelperHangs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a mount namespace)")
	}
	hang := filepath.Join(t.TempDir(), "hang")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	defer func(w time.Duration) { mqueueWait = w }(mqueueWait)
	mqueueWait = 300 * time.Millisecond
	opts := Options{}.withDefaults()
	opts.Launcher = hang
	a := &agent{opts: opts, log: slog.Default(), reaper: newReaper(false, slog.Default())}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.reaper.run(ctx)
	start := time.Now()
	f, err := a.openMqueue()
	if err == nil {
		f.Close()
		t.Fatal("a helper that never answers gave a directory")
	}
	// Two attempts (with and without a user namespace), each killed after mqueueWait;
	// a helper not killed would hold its attempt for exitWait (5 s) more.
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("openMqueue took %v: the hung helper was not killed", d)
	}
	t.Logf("%v: %v", time.Since(start).Round(time.Millisecond), err)
}

// A helper that failed is tried again mqueueRetry later, not never: a passing failure
// does not leave the agent (and its snapshots) unable to settle any run.
func TestMqueueRetry(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a mount namespace)")
	}
	reset := func() {
		mqView.mu.Lock()
		defer mqView.mu.Unlock()
		if mqView.dir != nil {
			mqView.dir.Close()
		}
		mqView.dir, mqView.failedAt = nil, time.Time{}
	}
	reset()
	defer reset()
	opts := Options{}.withDefaults()
	broken := opts
	broken.Launcher = "/bin/false"
	a := &agent{opts: broken, log: slog.Default(), reaper: newReaper(false, slog.Default())}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.reaper.run(ctx)
	if !a.posixQueues() || mqView.dir != nil || mqView.failedAt.IsZero() {
		t.Fatal("a failed helper: posixQueues must say it cannot tell, and remember the failure")
	}
	a.opts = opts
	if !a.posixQueues() || mqView.dir != nil {
		t.Fatal("the helper was tried again at once")
	}
	mqView.failedAt = time.Now().Add(-mqueueRetry)
	if a.posixQueues() {
		t.Skip("this host has POSIX message queues already")
	}
	if mqView.dir == nil {
		t.Fatal("the helper was not tried again after mqueueRetry")
	}
}
