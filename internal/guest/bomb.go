package guest

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"sync"
	"time"
)

// Fork bombs that outlive their run.
//
// A run's background processes are left alone when the run exits: they are usually
// servers or counters the agent wants in its next turn. But the classic bash fork bomb,
// `:(){ :|:& };:`, exits at once and multiplies in the background, holding the run
// user at its process limit so that no later run can start. So a run's process group
// that is still alive when the run returns is watched for bombWatchTime: if meanwhile
// the run user reaches 75% of the run's max_procs and the group itself holds at least
// half of it, the group is killed. A server (a few processes) is not mistaken for a
// bomb. Before the run returns, its group is looked at until it is steady (see
// settleGroup): a bomb never is, so it is killed with the run (verdict killed),
// however slowly it grows, up to bombSettleMax; so is a group whose shell already
// reported a fork failing at the limit on stderr (see forkFailures). The thresholds are below 100% because
// a bash bomb at the limit ebbs and flows: its processes give up after failed fork
// retries.
const (
	bombWatchTime  = 30 * time.Second
	bombWatchEvery = 200 * time.Millisecond
	// Before the run returns, its group is looked at every bombLookEvery until it is
	// steady (see steady), for up to bombSettle, so that a bomb still growing is
	// caught with the run; a group whose tasks want to run but got no CPU (the sandbox
	// is starved) is looked at for up to bombSettleMax.
	bombLookEvery = 100 * time.Millisecond
	bombSuspect   = 8
	bombSettle    = 3 * time.Second
	bombSettleMax = 10 * time.Second
	// A look can take seconds while a bomb keeps the sandbox's CPU quota busy (reading
	// /proc competes with its forks), so a group still growing gets at least
	// bombMinLooks looks, however long they take.
	bombMinLooks = 4
	// steadyCPU is the CPU time (clock ticks, 10 ms) the group's running tasks must
	// have had between two looks that found the same tasks for the group to count as
	// steady: a bomb's task forks (or exits) within far less.
	steadyCPU = 5
)

type watchedGroup struct {
	uid   uint32
	limit int64
	until time.Time
}

type bombWatch struct {
	mu     sync.Mutex
	groups map[int]watchedGroup
	wake   chan struct{}
}

func newBombWatch() *bombWatch {
	return &bombWatch{groups: make(map[int]watchedGroup), wake: make(chan struct{}, 1)}
}

func (w *bombWatch) add(pgid int, uid uint32, limit int64) {
	w.mu.Lock()
	w.groups[pgid] = watchedGroup{uid: uid, limit: limit, until: time.Now().Add(bombWatchTime)}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// watchBombs checks the watched groups until ctx ends; it sleeps while there are none.
func (a *agent) watchBombs(ctx context.Context) {
	w := a.bombs
	for {
		w.mu.Lock()
		n := len(w.groups)
		w.mu.Unlock()
		if n == 0 {
			select {
			case <-ctx.Done():
				return
			case <-w.wake:
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(bombWatchEvery):
		}
		a.checkBombs()
	}
}

func (a *agent) checkBombs() {
	w := a.bombs
	w.mu.Lock()
	groups := make(map[int]watchedGroup, len(w.groups))
	for pgid, g := range w.groups {
		groups[pgid] = g
	}
	w.mu.Unlock()

	procs := scanProcs()
	now := time.Now()
	for pgid, g := range groups {
		done := now.After(g.until) || !groupAlive(pgid)
		if !done && procs.isBomb(pgid, g.uid, g.limit) {
			killGroup(pgid)
			sweepGroup(pgid)
			a.log.Warn("killed a fork bomb left behind by a run", "pgid", pgid,
				"user_tasks", procs.byUID[g.uid], "limit", g.limit)
			done = true
		}
		if done {
			w.mu.Lock()
			if cur, ok := w.groups[pgid]; ok && cur == g {
				delete(w.groups, pgid)
			}
			w.mu.Unlock()
		}
	}
}

// settleGroup looks at the process group pgid that a run left behind when it
// returned, with the run user uid and its process limit, until the group is steady
// (a server, a counter, a busy loop: see steady) or gone, and reports whether it
// behaved as a fork bomb meanwhile:
//
//   - the run user reached 75% of the limit, and the group half of it, at some look
//     (isBomb on the peaks of the looks, which a bomb that ebbs and flows at the
//     limit reaches at some point);
//   - the group still grew past half the limit;
//   - the group started as many processes as the limit (distinct pids seen) and held
//     a quarter of it at once at some look: a bomb that burned out (its processes
//     giving up at the limit) between two looks.
//
// A bomb cannot look steady: its tasks run and fork, so either the set of its tasks
// changes between two looks or they got no CPU to fork with, in which case the looks
// go on (up to bombSettleMax) until they get some.
//
// It stops looking when ctx ends (the run is cancelled), and then returns ctx's error
// with what the looks so far found (not a bomb, unless one already said so).
func (a *agent) settleGroup(ctx context.Context, pgid int, uid uint32, limit int64) (bool, error) {
	w := groupWatch{pgid: pgid, uid: uid, limit: limit, seen: map[int]bool{}}
	look := w.look()
	if w.bomb(look, look) {
		return true, nil
	}
	start := time.Now()
	tick := time.NewTimer(bombLookEvery)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return false, ctx.Err()
		}
		cur := w.look()
		if w.bomb(look, cur) || cur.byPgrp[pgid] == 0 {
			return w.isBomb, nil
		}
		steady, starved := steady(look, cur, pgid)
		look = cur
		since := time.Since(start)
		switch {
		case steady:
		case n < bombMinLooks || since < bombSettle:
			tick.Reset(bombLookEvery)
			continue
		case starved && since < bombSettleMax:
			tick.Reset(bombLookEvery)
			continue
		}
		a.log.Debug("a run's background processes are not a fork bomb", "pgid", pgid, "steady", steady,
			"looks", n+2, "tasks", cur.byPgrp[pgid], "peak_tasks", w.peakGrp, "peak_user_tasks", w.peakUID,
			"pids_seen", len(w.seen), "ms", since.Milliseconds())
		return false, nil
	}
}

// groupWatch is what settleGroup learnt of a group.
type groupWatch struct {
	pgid             int
	uid              uint32
	limit            int64
	peakUID, peakGrp int64
	seen             map[int]bool // the group's pids at any look
	isBomb           bool
}

func (w *groupWatch) look() procCounts {
	p := scanGroup(w.pgid)
	w.peakUID = max(w.peakUID, p.byUID[w.uid])
	w.peakGrp = max(w.peakGrp, p.byPgrp[w.pgid])
	for pid := range p.members {
		w.seen[pid] = true
	}
	return p
}

// bomb applies settleGroup's rules to the looks so far, prev and cur the last two.
func (w *groupWatch) bomb(prev, cur procCounts) bool {
	peaks := procCounts{byUID: map[uint32]int64{w.uid: w.peakUID}, byPgrp: map[int]int64{w.pgid: w.peakGrp}}
	n, m := prev.byPgrp[w.pgid], cur.byPgrp[w.pgid]
	w.isBomb = peaks.isBomb(w.pgid, w.uid, w.limit) ||
		m > n && m >= w.limit/2 ||
		int64(len(w.seen)) >= w.limit && w.peakGrp >= max(w.limit/4, 2)
	return w.isBomb
}

// steady reports whether group pgid, at two looks, is steady: small (fewer than
// bombSuspect tasks) and no bigger than before, with every task asleep (or stopped,
// or a zombie) at the second look; or the same tasks at both looks, which had CPU
// time meanwhile (steadyCPU) if any of them is running. starved says that the same
// tasks were there and some wanted to run, but they got (almost) no CPU.
func steady(prev, cur procCounts, pgid int) (ok, starved bool) {
	asleep := true
	for _, m := range cur.members {
		asleep = asleep && !m.running
	}
	if asleep && cur.byPgrp[pgid] < bombSuspect && cur.byPgrp[pgid] <= prev.byPgrp[pgid] {
		return true, false
	}
	if len(cur.members) != len(prev.members) {
		return false, false
	}
	var cpu int64
	for pid, m := range cur.members {
		p, ok := prev.members[pid]
		if !ok {
			return false, false
		}
		cpu += m.cpu - p.cpu
	}
	if asleep || cpu >= steadyCPU {
		return true, false
	}
	return false, true
}

// procCounts counts tasks by real uid and by process group as RLIMIT_NPROC does:
// threads count, and so do zombies until they are reaped. members, from scanGroup,
// are one group's processes.
type procCounts struct {
	byUID   map[uint32]int64
	byPgrp  map[int]int64
	members map[int]member
}

// member is a process of a watched group: whether it is running (or waiting to
// run, or in an uninterruptible wait) and its CPU time so far in clock ticks.
type member struct {
	running bool
	cpu     int64
}

func (p procCounts) isBomb(pgid int, uid uint32, limit int64) bool {
	return p.byUID[uid] >= limit*3/4 && p.byPgrp[pgid] >= max(limit/2, 2)
}

func scanProcs() procCounts { return scanGroup(0) }

// scanGroup is scanProcs that also lists the members of process group pgid (0: none).
func scanGroup(pgid int) procCounts {
	p := procCounts{byUID: map[uint32]int64{}, byPgrp: map[int]int64{}, members: map[int]member{}}
	eachProc(func(pid string, f [][]byte) {
		if len(f) < 18 || string(f[0]) == "X" {
			return
		}
		status, err := os.ReadFile("/proc/" + pid + "/status")
		if err != nil {
			return // gone meanwhile
		}
		uid, ok := statusUID(status)
		if !ok {
			return
		}
		pgrp, _ := strconv.Atoi(string(f[2]))
		threads, _ := strconv.ParseInt(string(f[17]), 10, 64)
		threads = max(threads, 1)
		p.byUID[uid] += threads
		p.byPgrp[pgrp] += threads
		if pgid != 0 && pgrp == pgid {
			n, _ := strconv.Atoi(pid)
			utime, _ := strconv.ParseInt(string(f[11]), 10, 64)
			stime, _ := strconv.ParseInt(string(f[12]), 10, 64)
			st := string(f[0])
			p.members[n] = member{running: st == "R" || st == "D", cpu: utime + stime}
		}
	})
	return p
}

// eachProc calls fn with the pid and statFields of every process in /proc, skipping
// those gone meanwhile.
func eachProc(fn func(pid string, stat [][]byte)) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		name := e.Name()
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		if f, ok := statFields(name); ok {
			fn(name, f)
		}
	}
}

// statFields returns the fields of /proc/PID/stat after the command name, from the
// state on: "state ppid pgrp ... num_threads (f[17]) ...". The name may contain spaces
// and parentheses, so the fields start after the last ')'.
func statFields(pid string) ([][]byte, bool) {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	i := bytes.LastIndexByte(stat, ')')
	if err != nil || i < 0 {
		return nil, false
	}
	return bytes.Fields(stat[i+1:]), true
}

// statusUID returns the real uid from /proc/PID/status.
func statusUID(status []byte) (uint32, bool) {
	for _, line := range bytes.Split(status, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("Uid:")); ok {
			f := bytes.Fields(v)
			if len(f) == 0 {
				return 0, false
			}
			uid, err := strconv.ParseUint(string(f[0]), 10, 32)
			return uint32(uid), err == nil
		}
	}
	return 0, false
}

// forkFailures end the lines shells print when a fork fails at the process limit
// (EAGAIN), after the shell's name or the script's and line: "main.sh: line 1: fork:
// retry: Resource temporarily unavailable", "sh: 1: Cannot fork".
var forkFailures = [][]byte{
	[]byte(": fork: retry: Resource temporarily unavailable"), // bash, retrying
	[]byte(": fork: Resource temporarily unavailable"),        // bash, giving up
	[]byte(": Cannot fork"),                                   // dash
}

// hasForkFailure reports whether stderr (a tail) has a line in which a shell says its
// fork hit the limit. Whole lines only: a run that merely mentions such a failure (a
// log it prints) must not have its background processes killed as a bomb.
func hasForkFailure(stderr []byte) bool {
	for len(stderr) > 0 {
		line := stderr
		if i := bytes.IndexByte(stderr, '\n'); i >= 0 {
			line, stderr = stderr[:i], stderr[i+1:]
		} else {
			stderr = nil
		}
		for _, m := range forkFailures {
			if bytes.HasSuffix(line, m) {
				return true
			}
		}
	}
	return false
}
