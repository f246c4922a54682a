package guest

import (
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Memory limits by accounting.
//
// A run's memory limit (Limits.MemoryBytes) bounds what its processes hold, not their
// address space: an address-space limit (RLIMIT_AS) also counts the stacks of threads
// and the arenas malloc reserves for them, so that, say, python could start only a dozen
// threads under 1.5 GiB. So while a run step runs, a watcher sums the resident memory
// (RSS, from /proc/PID/stat) of the run's processes every 2 to 100 ms (see below) and,
// when the sum passes the limit, kills them all with SIGKILL; the run ends with verdict
// memory_limit and a note on stderr (see resultOf).
//
// The run's processes are its process group (the launcher makes the program a group
// leader), every process whose parent is one of them when the watcher first sees it, and
// every process in a group led by one of them: a child that calls setsid or setpgid is
// still counted. A process that leaves before the watcher has seen it (a double fork
// whose middle process exits between two looks) escapes, and so does what the run
// holds outside its processes (files in the in-memory /tmp and root overlay, pipes):
// those are bounded by the sandbox's own memory cap (the host cgroup of the gVisor
// sandbox, the microVM's RAM), which may end the sandbox instead. Pages shared between
// processes (a forked interpreter's, say) count once per process, so the sum errs on
// the high side. The watcher stops when the run step ends: background processes left
// running after it are bounded by the sandbox's cap only. Compile steps are not watched.
//
// The watcher reads /proc/PID/stat of the run's processes on each look, and of other
// processes only once (pids are allocated in sequence, so a pid seen outside the run
// is not reused by the run while it lasts). Each look costs CPU inside the sandbox
// (every 5 ms, a quarter of a core in gVisor), so the next look comes when the run could
// have reached its limit allocating at memWatchRate from what it holds now: every
// memWatchMax while far below the limit, down to every memWatchMin close to it.
const (
	memWatchMin  = 2 * time.Millisecond
	memWatchMax  = 100 * time.Millisecond
	memWatchRate = 4 << 30 // bytes per second, faster than a process faults pages in
)

// memWatchNext is how long the watcher may wait before its next look, with used of
// limit bytes held.
func memWatchNext(used, limit int64) time.Duration {
	d := time.Duration(float64(limit-used) / memWatchRate * float64(time.Second))
	return min(max(d, memWatchMin), memWatchMax)
}

// memWatch watches one run's memory. A nil *memWatch watches nothing.
type memWatch struct {
	pgid  int
	limit int64
	quit  chan struct{}
	done  chan struct{}
	once  sync.Once
	// Set by the watcher before done is closed.
	over bool
	used int64 // bytes, when over
}

// watchMemory starts watching the process group pgid (a run just started) against
// limit bytes; limit <= 0 watches nothing. Stop the watch with stop.
func (a *agent) watchMemory(pgid int, limit int64) *memWatch {
	if limit <= 0 || pgid <= 1 {
		return nil
	}
	w := &memWatch{pgid: pgid, limit: limit, quit: make(chan struct{}), done: make(chan struct{})}
	go a.runMemWatch(w)
	return w
}

// stop ends the watch and reports whether it killed the run, and how much memory the
// run's processes held when it did. It waits for a kill in progress to finish.
func (w *memWatch) stop() (over bool, used int64) {
	if w == nil {
		return false, 0
	}
	w.once.Do(func() { close(w.quit) })
	<-w.done
	return w.over, w.used
}

func (a *agent) runMemWatch(w *memWatch) {
	defer close(w.done)
	s := newRunMembers(w.pgid)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-w.quit:
			return
		case <-timer.C:
		}
		used, ok := s.scan(w.quit)
		if !ok {
			return
		}
		if used > w.limit {
			s.kill()
			w.over, w.used = true, used
			a.log.Info("killed a run over its memory limit", "pgid", w.pgid, "used_bytes", used, "limit_bytes", w.limit)
			return
		}
		timer.Reset(memWatchNext(used, w.limit))
	}
}

// runMembers finds a run's processes in /proc (see the doc at the top of memwatch.go).
type runMembers struct {
	pgid    int
	members map[int]bool // the run's processes at the last scan
	outside map[int]bool // processes seen that are not the run's
	page    int64
}

func newRunMembers(pgid int) *runMembers {
	return &runMembers{pgid: pgid, members: map[int]bool{}, outside: map[int]bool{}, page: int64(os.Getpagesize())}
}

type procStat struct {
	pid, ppid, pgrp int
	rss             int64 // pages
}

// scan updates the run's processes and returns the bytes they hold. It gives up (not
// ok) as soon as quit is closed: the first scan reads every process in /proc.
func (r *runMembers) scan(quit <-chan struct{}) (used int64, ok bool) {
	d, err := os.Open("/proc")
	if err != nil {
		return 0, true
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	var cands []procStat
	for i, name := range names {
		if i%64 == 63 {
			select {
			case <-quit:
				return 0, false
			default:
			}
		}
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		pid, err := strconv.Atoi(name)
		if err != nil || r.outside[pid] {
			continue
		}
		f, ok := statFields(name)
		if !ok || len(f) < 22 {
			continue // gone meanwhile
		}
		ppid, _ := strconv.Atoi(string(f[1]))
		pgrp, _ := strconv.Atoi(string(f[2]))
		rss, _ := strconv.ParseInt(string(f[21]), 10, 64)
		cands = append(cands, procStat{pid: pid, ppid: ppid, pgrp: pgrp, rss: rss})
	}

	// A candidate is the run's if it was, if it is in the run's group or a group one of
	// the run's processes leads, or if its parent is the run's; repeat until no more join
	// (a child may be listed before its parent).
	now := make(map[int]bool, len(r.members))
	isMember := func(c procStat) bool {
		return r.members[c.pid] || c.pgrp == r.pgid || c.pid == r.pgid || now[c.ppid] || now[c.pgrp] || r.members[c.ppid] || r.members[c.pgrp]
	}
	for changed := true; changed; {
		changed = false
		for _, c := range cands {
			if !now[c.pid] && isMember(c) {
				now[c.pid] = true
				changed = true
			}
		}
	}
	for _, c := range cands {
		if now[c.pid] {
			used += c.rss * r.page
		} else {
			r.outside[c.pid] = true
		}
	}
	r.members = now
	return used, true
}

// kill SIGKILLs the run's processes and the groups they lead, and sweeps those groups
// until they are empty.
func (r *runMembers) kill() {
	groups := []int{r.pgid}
	for pid := range r.members {
		if _, pgrp, ok := procParent(pid); ok && pgrp == pid && pid != r.pgid {
			groups = append(groups, pid)
		}
	}
	for _, g := range groups {
		killGroup(g)
	}
	for pid := range r.members {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, g := range groups {
		sweepGroup(g)
	}
}
