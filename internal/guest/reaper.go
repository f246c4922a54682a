package guest

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// procExit is how a started process ended: its wait status, or Err if it could not be
// waited for (someone else reaped it).
type procExit struct {
	Status syscall.WaitStatus
	Err    error
}

// reaper collects the exit statuses of child processes.
//
// It is the only code in the agent that waits for children: the agent never uses
// exec.Cmd.Wait, because a wait4(-1) reaper and Cmd.Wait race for the same statuses.
// On every SIGCHLD it waits, without blocking, for every child that has exited:
//
//   - In reap-all mode (the agent is PID 1, so every orphan in the sandbox becomes its
//     child) it loops on wait4(-1, WNOHANG). The statuses of processes started through
//     start are delivered to their starter; all others (orphaned background processes,
//     fork-bomb debris) are discarded — reaping them is the point.
//   - Otherwise it waits only for the pids it started, with wait4(pid, WNOHANG), so it can
//     live in a process that has other children it must not steal (tests, a debugging run
//     outside a sandbox). A parent reaping only its own children needs nothing more.
//
// SIGCHLD alone is enough, and the reaper has no timer: an idle sandbox then costs no
// wake-ups (a one-second tick here was most of an idle sandbox's CPU). The kernel (Linux,
// and gVisor alike) sends SIGCHLD for every child that exits, and again to the new
// parent of a zombie that is reparented (an orphan that died before its parent); an
// orphan's termination signal is reset to SIGCHLD. Signals that arrive together
// coalesce (the channel holds one), which loses nothing: each one received is followed
// by a loop that collects every child exited by then, and one arriving during that loop
// waits in the channel for the next.
//
// start holds the reaper's lock across the fork and the registration of the new pid.
// The reaper delivers statuses under the same lock, so a child that exits at once, even
// one reaped by wait4(-1) before start has registered it, is delivered to its starter
// and never discarded. Because of that lock, any status the reaper might have kept for an
// unregistered pid would belong to an earlier process that had the same pid; the reaper
// therefore keeps no unclaimed statuses (keeping them would hand a new run the stale
// status of a reused pid).
type reaper struct {
	all bool
	log *slog.Logger

	mu      sync.Mutex
	waiting map[int]chan procExit
}

func newReaper(all bool, log *slog.Logger) *reaper {
	return &reaper{all: all, log: log, waiting: make(map[int]chan procExit)}
}

// run reaps until ctx ends.
func (r *reaper) run(ctx context.Context) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGCHLD)
	defer signal.Stop(sig)
	for {
		r.reap() // the first one: what exited before Notify
		select {
		case <-ctx.Done():
			return
		case <-sig:
		}
	}
}

// start runs fork (which must start exactly one child and return its pid) and registers
// the child. The returned channel receives the child's exit exactly once.
func (r *reaper) start(fork func() (int, error)) (int, <-chan procExit, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := fork()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan procExit, 1)
	r.waiting[pid] = ch
	return pid, ch, nil
}

// adopt registers pid, a process the agent did not start, for its exit status, which
// comes if the agent inherits it (its parent died first). Only in reap-all mode, where
// the agent inherits orphans; nil otherwise, or if pid is registered already.
func (r *reaper) adopt(pid int) chan procExit {
	if !r.all {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.waiting[pid]; ok {
		return nil
	}
	ch := make(chan procExit, 1)
	r.waiting[pid] = ch
	return ch
}

// forget unregisters an adopted pid whose status came another way.
func (r *reaper) forget(pid int, ch chan procExit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waiting[pid] == ch {
		delete(r.waiting, pid)
	}
}

// reap collects every exited child without blocking.
func (r *reaper) reap() {
	if !r.all {
		r.reapRegistered()
		return
	}
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 { // ECHILD: no children; 0: none exited yet
			return
		}
		r.deliver(pid, procExit{Status: ws})
	}
}

func (r *reaper) reapRegistered() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for pid, ch := range r.waiting {
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		for errors.Is(err, syscall.EINTR) {
			got, err = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		}
		switch {
		case err != nil:
			r.log.Error("cannot wait for run process", "pid", pid, "err", err)
			ch <- procExit{Err: err}
			delete(r.waiting, pid)
		case got == pid:
			ch <- procExit{Status: ws}
			delete(r.waiting, pid)
		}
	}
}

func (r *reaper) deliver(pid int, e procExit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ch, ok := r.waiting[pid]; ok {
		ch <- e
		delete(r.waiting, pid)
	}
}
