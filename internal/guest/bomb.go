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
// bomb, and a bomb that fills the limit within the run's drain grace is killed before
// the run returns (verdict killed). The thresholds are below 100% because a bash bomb
// at the limit ebbs and flows: its processes give up after failed fork retries.
const (
	bombWatchTime  = 30 * time.Second
	bombWatchEvery = 200 * time.Millisecond
	// A group left growing, or with bombSuspect or more tasks, is looked at for up
	// to bombSettle before the run returns, so a bomb still growing is caught with
	// the run.
	bombSuspect = 8
	bombSettle  = 3 * time.Second
	// A look can take seconds while a bomb keeps the sandbox's CPU quota busy (reading
	// /proc competes with its forks), so a group still growing gets at least
	// bombMinLooks looks, however long they take.
	bombMinLooks = 4
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

// procCounts counts tasks by real uid and by process group as RLIMIT_NPROC does:
// threads count, and so do zombies until they are reaped.
type procCounts struct {
	byUID  map[uint32]int64
	byPgrp map[int]int64
}

func (p procCounts) isBomb(pgid int, uid uint32, limit int64) bool {
	return p.byUID[uid] >= limit*3/4 && p.byPgrp[pgid] >= max(limit/2, 2)
}

func scanProcs() procCounts {
	p := procCounts{byUID: map[uint32]int64{}, byPgrp: map[int]int64{}}
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
