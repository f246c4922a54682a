package guest

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// Settled: whether a run left the sandbox as it found it.
//
// The host snapshots the sandbox after a run so that the next run can be rolled back
// to the state this one left. When this run changed nothing, that snapshot would equal
// the one taken before it, and the host can keep that one instead (ExecResult.Settled).
// The claim must never be wrong: a wrong one loses the run's effects on the next
// rollback or crash. So the agent claims it only when, after the run:
//
//   - no process is alive in the sandbox but the agent itself and its python zygote
//     with the zygote's forked spare (a cache, see zygote.go: a sandbox restored
//     without it behaves the same). A process a run left behind (a server, a `sleep &`,
//     a python REPL holding globals) can change memory and files at any time, so while
//     one lives, no two moments are equal;
//   - no System V IPC object (shared memory, semaphore set, message queue) and no
//     POSIX message queue exists: they outlive their processes (see mqueue.go);
//   - the writable areas the run's change set did not scan are empty. The run user
//     can write only to its home and the world-writable directories (settledAreas,
//     those of the template); the change set covers the home, /tmp and the working
//     directory by default, and an empty one says they did not change.
//
// The host adds what only it knows: that the change set was empty and whole, and that
// the state before the run was itself settled and equal to the image it holds.
var settledAreas = []string{"/tmp", "/var/tmp", "/dev/shm", "/run/lock"}

// quiet reports whether nothing runs in the sandbox but the agent's own processes
// and no IPC object (System V, or a POSIX message queue) exists. It is checked before the change set is read: once
// nothing else runs, nothing else can write, so the change set read after it misses
// nothing.
func (a *agent) quiet() bool {
	return a.onlyOwnProcesses() && !ipcObjects() && !a.posixQueues()
}

// emptyAreas reports whether the writable areas outside roots (the change set's) are
// empty, but for the agent's own run base.
func (a *agent) emptyAreas(roots []string) bool {
	for _, area := range append([]string{a.opts.Home}, settledAreas...) {
		if underAny(area, roots) {
			continue
		}
		ents, err := os.ReadDir(area)
		if err != nil && !os.IsNotExist(err) {
			return false
		}
		for _, e := range ents {
			if p := filepath.Join(area, e.Name()); p != filepath.Clean(a.opts.RunBase) {
				return false
			}
		}
	}
	return true
}

// underAny reports whether path is one of roots or inside one.
func underAny(path string, roots []string) bool {
	for _, r := range roots {
		if path == r || strings.HasPrefix(path, strings.TrimSuffix(r, "/")+"/") {
			return true
		}
	}
	return false
}

// pfKthread is the kernel-thread bit of /proc/PID/stat's flags (PF_KTHREAD).
const pfKthread = 0x00200000

// onlyOwnProcesses reports whether every live process is the agent (pid 1, or this
// process when it is not pid 1, as in tests), a zygote of the pool, or a child of
// one (its spare). Zombies, exiting processes and kernel threads do not count.
func (a *agent) onlyOwnProcesses() bool {
	self := strconv.Itoa(os.Getpid())
	own := map[string]bool{"1": true, self: true}
	pool := &a.zygotes
	pool.mu.Lock()
	for _, z := range []*zygote{pool.idle, pool.starting} {
		if z != nil && z.pid > 0 {
			own[strconv.Itoa(z.pid)] = true
		}
	}
	pool.mu.Unlock()
	ok := true
	eachProc(func(pid string, f [][]byte) {
		if own[pid] {
			return
		}
		if len(f) < 7 {
			ok = false // cannot tell what it is
			return
		}
		if st := string(f[0]); st == "Z" || st == "X" {
			return
		}
		if flags, err := strconv.ParseUint(string(f[6]), 10, 64); err == nil && flags&pfKthread != 0 {
			return // a kernel thread (a microVM's kernel): no user state
		}
		if ppid := string(f[1]); own[ppid] && ppid != "1" && ppid != self {
			return // a zygote's child: its spare (a run has been reaped by now)
		}
		ok = false
	})
	return ok
}

// ipcObjects reports whether any System V IPC object exists (or it cannot tell).
func ipcObjects() bool {
	// IPC_INFO-style calls: SHM_INFO fills a shm_info (used_ids first), SEM_INFO a
	// seminfo (semusz, the sets in use, eighth), MSG_INFO a msginfo (msgpool, the
	// queues in use, first).
	const shmInfo, semInfo, msgInfo = 14, 19, 12
	var buf [64]int32
	p := uintptr(unsafe.Pointer(&buf[0]))
	if _, _, e := unix.Syscall(unix.SYS_SHMCTL, 0, shmInfo, p); e != 0 || buf[0] != 0 {
		return true
	}
	buf = [64]int32{}
	if _, _, e := unix.Syscall6(unix.SYS_SEMCTL, 0, 0, semInfo, p, 0, 0); e != 0 || buf[7] != 0 {
		return true
	}
	buf = [64]int32{}
	if _, _, e := unix.Syscall(unix.SYS_MSGCTL, 0, msgInfo, p); e != 0 || buf[0] != 0 {
		return true
	}
	return false
}

// markSettled sets res.Settled after a run whose change set t computed; quiet is
// what quiet said before the change set was read.
func (a *agent) markSettled(t *changeTracker, quiet bool, res *agentproto.ExecResult) {
	if t == nil || res == nil {
		return
	}
	res.Settled = quiet && a.emptyAreas(t.roots)
}
