package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

// printDensity is the density mode (-density N): one daemon holds N idle sandboxes.
// It reports the start rate (N sandboxes created through the API, four at a time),
// the latency of one run in each (print(1), a transaction like any: its pre-run
// snapshot is the template snapshot), the host memory per sandbox (the PSS of every
// runsc process of the daemon, from /proc/*/smaps_rollup, divided by the sandboxes
// running, the pool's included) and the daemon's own, the host CPU and wake-ups
// (context switches) per idle sandbox, by kind of process, and the daemon's, over
// idleWindow with nothing polling it, and the daemon's health latency (GET /health
// every 20 ms) while it starts them, runs in them and holds them.
//
// Then suspension: a second daemon with a short idle timeout runs one run in each of
// a few sandboxes, waits until the reaper has suspended them all, reports the host
// memory they still use (their runsc processes: none) and times one run in each,
// which resumes it from its snapshot.
//
// The daemon's memory budget counts each sandbox's memory limit (memory_mb), not
// what it uses, so density mode turns it off (memory_budget_mb: -1) and sets
// max_sandboxes to fit N; everything else is the default.
func printDensity(tmp, runsc, tplDir string, n int) error {
	restored, err := holdIdle(tmp, runsc, tplDir, n, true)
	if err != nil {
		return err
	}
	// The old way side by side, fewer (booting is slower): booted from the template.
	booted, err := holdIdle(tmp, runsc, tplDir, min(n, 20), false)
	if err != nil {
		return err
	}
	for _, r := range []densityResult{restored, booted} {
		fmt.Printf("\n%-36s\n", fmt.Sprintf("density: %d idle sandboxes, %s", r.n, r.mode))
		fmt.Printf("%-36s %d in %s: %.1f sandboxes/s\n", "start rate (4 at a time)", r.n, r.startTook.Round(time.Millisecond), float64(r.n)/r.startTook.Seconds())
		fmt.Printf("%-36s %.1f MiB (runsc PSS %.0f MiB over %d processes, %d sandboxes); daemon %.0f MiB\n", "host memory per idle sandbox",
			r.pss/float64(r.live), r.pss, r.procs, r.live, r.daemonPSS)
		var per []string
		for _, k := range r.kinds {
			per = append(per, fmt.Sprintf("%s %.1f", k.name, k.mib/float64(r.live)))
		}
		fmt.Printf("%-36s %s MiB\n", "  of which, per sandbox", strings.Join(per, ", "))
		r.idle.print(r.live)
		fmt.Printf("%-36s %s\n", "runs' background snapshots done", r.settle.Round(100*time.Millisecond).String()+" after the last run")
		fmt.Printf("%-36s %6s %10s %10s %10s\n", "", "n", "p50", "p95", "p99")
		for _, s := range r.series {
			fmt.Printf("%-36s %6d %10s %10s %10s\n", s.name, len(s.d), s.pct(0.5).Round(100*time.Microsecond), s.pct(0.95).Round(100*time.Microsecond), s.pct(0.99).Round(100*time.Microsecond))
		}
	}
	return printSuspended(tmp, runsc, tplDir, min(n, 10))
}

// densityResult is what holdIdle measured.
type densityResult struct {
	mode           string
	n, live, procs int
	startTook      time.Duration
	settle         time.Duration // from the last run to the last background snapshot
	pss, daemonPSS float64       // MiB
	kinds          []pssKind
	idle           idleUsage
	series         []series
}

// holdIdle starts a daemon (sandboxes restored from the template snapshot, or
// booted), creates n sandboxes four at a time, runs one run in each, lets them idle
// and measures their memory, with the health latency throughout.
func holdIdle(tmp, runsc, tplDir string, n int, tsnap bool) (densityResult, error) {
	r := densityResult{mode: "restored from the template snapshot", n: n, live: n + 2} // the pool's two
	cfg := filepath.Join(tmp, fmt.Sprintf("density-%v.yaml", tsnap))
	body := fmt.Sprintf("sandbox:\n  max_sandboxes: %d\n  memory_budget_mb: -1\n", n+8)
	if !tsnap {
		r.mode = "booted (old)"
		body += "  template_snapshot: false\n"
	}
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		return r, err
	}
	d, err := startDaemon(tmp, runsc, tplDir, "--config", cfg)
	if err != nil {
		return r, err
	}
	defer d.stop()
	c := client.New(d.url)
	ctx := context.Background()

	startHealth := pollHealth(d.url, "health while starting")
	t0 := time.Now()
	ids := make([]string, n)
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
		next     = make(chan int)
	)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Name: fmt.Sprintf("density-%d", i)})
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = fmt.Errorf("sandbox %d of %d: %w", i+1, n, err)
				}
				ids[i] = sb.ID
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	r.startTook = time.Since(t0)
	starting := startHealth()
	if firstErr != nil {
		return r, firstErr
	}

	runHealth := pollHealth(d.url, "health while running")
	runs, err := measure("one run in each", n, func(i int) error {
		res, err := c.Exec(ctx, api.ExecRequest{SandboxID: ids[i], Language: "python", Code: "print(1)"})
		if err == nil && strings.TrimSpace(res.Stdout) != "1" {
			err = fmt.Errorf("unexpected result %+v", res)
		}
		return err
	})
	running := runHealth()
	if err != nil {
		return r, err
	}

	// Each run's background snapshot (the next run's pre-run snapshot; a booted
	// sandbox's first run took one before it too): once all are taken, the sandboxes
	// are idle.
	want := n
	if !tsnap {
		want = 2 * n
	}
	settle := time.Now()
	for time.Since(settle) < 5*time.Minute && countImages(d.dataDir) < want {
		time.Sleep(200 * time.Millisecond)
	}
	r.settle = time.Since(settle)
	time.Sleep(2 * time.Second)
	// Idle CPU first, with nothing polling the daemon; then the health latency while
	// it holds them.
	r.idle = measureIdle(d, idleWindow)
	holdHealth := pollHealth(d.url, "health while holding")
	time.Sleep(holdWindow)
	holding := holdHealth()
	r.kinds = runscPSSKinds(d.dataDir)
	for _, k := range r.kinds {
		r.pss += k.mib
		r.procs += k.procs
	}
	r.daemonPSS = procPSS(d.cmd.Process.Pid)
	r.series = []series{runs, starting, running, holding}
	return r, nil
}

// idleWindow is how long density mode watches the idle sandboxes' CPU use (nothing
// polls the daemon meanwhile), and holdWindow how long it then polls its health.
const (
	idleWindow = 20 * time.Second
	holdWindow = 10 * time.Second
)

// idleUsage is what a daemon's sandboxes (by kind of process, see runscUsage) and the
// daemon itself used over a while when nothing ran.
type idleUsage struct {
	took   time.Duration
	kinds  map[string]procUsage
	daemon procUsage
}

// measureIdle watches d's sandboxes and d for window.
func measureIdle(d *daemon, window time.Duration) idleUsage {
	k0, d0, t0 := runscUsage(d.dataDir), usageOf(d.cmd.Process.Pid), time.Now()
	time.Sleep(window)
	k1, d1 := runscUsage(d.dataDir), usageOf(d.cmd.Process.Pid)
	u := idleUsage{took: time.Since(t0), kinds: map[string]procUsage{}, daemon: d1.sub(d0)}
	for kind, v := range k1 {
		u.kinds[kind] = v.sub(k0[kind])
	}
	return u
}

// print prints u for live sandboxes: CPU in milliseconds per second (1000: a core).
func (u idleUsage) print(live int) {
	var all procUsage
	for _, v := range u.kinds {
		all = all.add(v)
	}
	sec := u.took.Seconds()
	perSec := func(d time.Duration) float64 { return float64(d.Milliseconds()) / sec }
	fmt.Printf("%-36s %.0f%% of a core, all of them together (over %s): %.2f ms/s per sandbox (%.2f%% of a core), %.1f wake-ups/s; the daemon %.1f ms/s, %.0f wake-ups/s\n",
		"host CPU while they idle", perSec(all.cpu)/10, u.took.Round(time.Second), perSec(all.cpu)/float64(live), perSec(all.cpu)/float64(live)/10,
		float64(all.wakes)/sec/float64(live), perSec(u.daemon.cpu), float64(u.daemon.wakes)/sec)
	var per []string
	for _, kind := range usageKinds {
		v := u.kinds[kind]
		per = append(per, fmt.Sprintf("%s %.2f ms/s %.1f wake-ups/s", kind, perSec(v.cpu)/float64(live), float64(v.wakes)/sec/float64(live)))
	}
	fmt.Printf("%-36s %s\n", "  of which, per sandbox", strings.Join(per, "; "))
}

// printSuspended measures suspended sandboxes: their host memory and their resume.
func printSuspended(tmp, runsc, tplDir string, k int) error {
	d, err := startDaemon(tmp, runsc, tplDir, "--idle-timeout", "2s", "--pool-size", "0")
	if err != nil {
		return err
	}
	defer d.stop()
	c := client.New(d.url)
	ctx := context.Background()
	var ids []string
	for i := 0; i < k; i++ {
		r, err := c.Exec(ctx, api.ExecRequest{AgentID: fmt.Sprintf("suspend-%d", i), Language: "python", Code: "x = 41\nprint(x + 1)"})
		if err != nil {
			return err
		}
		ids = append(ids, r.SandboxID)
	}
	pssLive, procsLive := runscPSS(d.dataDir)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		all := true
		for _, id := range ids {
			sb, err := c.GetSandbox(ctx, id)
			if err != nil {
				return err
			}
			all = all && sb.Status == "suspended"
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the sandboxes were not suspended within 2 minutes")
		}
		time.Sleep(200 * time.Millisecond)
	}
	pss, procs := runscPSS(d.dataDir)
	resume, err := measure("resume + run (suspended)", k, func(i int) error {
		r, err := c.Exec(ctx, api.ExecRequest{SandboxID: ids[i], Language: "python", Code: "print(1)"})
		if err == nil && strings.TrimSpace(r.Stdout) != "1" {
			err = fmt.Errorf("unexpected result %+v", r)
		}
		return err
	})
	if err != nil {
		return err
	}
	// The rollback bound, side by side: a rollback of a live sandbox (API).
	sn, err := c.CreateSnapshot(ctx, ids[0], api.CreateSnapshotRequest{})
	if err != nil {
		return err
	}
	rb, err := measure("rollback (API), same daemon", k, func(int) error {
		_, err := c.Rollback(ctx, ids[0], api.RollbackRequest{SnapshotID: sn.ID})
		return err
	})
	if err != nil {
		return err
	}
	fmt.Printf("\n%-36s %.0f MiB over %d runsc processes (%d running: %.0f MiB over %d)\n", fmt.Sprintf("%d suspended sandboxes: host memory", k), pss, procs, k, pssLive, procsLive)
	for _, s := range []series{resume, rb} {
		fmt.Printf("%-36s %6d %10s %10s\n", s.name, len(s.d), s.pct(0.5).Round(100*time.Microsecond), s.pct(0.95).Round(100*time.Microsecond))
	}
	return nil
}

// countImages counts the whole snapshot images (not the shared one) in a daemon's
// gVisor image directory.
func countImages(dataDir string) int {
	ents, _ := os.ReadDir(filepath.Join(dataDir, "gvisor", "images"))
	n := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "img-") && !strings.HasSuffix(e.Name(), ".tmp") {
			n++
		}
	}
	return n
}

// pollHealth polls GET /health every 20 ms until the returned function is called,
// which returns the latencies.
func pollHealth(url, name string) func() series {
	s := series{name: name}
	stop := make(chan struct{})
	done := make(chan struct{})
	hc := &http.Client{Timeout: 10 * time.Second}
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			t := time.Now()
			resp, err := hc.Get(url + "/health")
			if err == nil {
				resp.Body.Close()
			}
			s.d = append(s.d, time.Since(t))
		}
	}()
	return func() series {
		close(stop)
		<-done
		if len(s.d) == 0 {
			s.d = []time.Duration{0}
		}
		return s
	}
}

// runscPSS sums the PSS (MiB) of the runsc processes whose command line names a path
// under dataDir (one daemon's: its runsc root is there).
func runscPSS(dataDir string) (mib float64, procs int) {
	for _, k := range runscPSSKinds(dataDir) {
		mib += k.mib
		procs += k.procs
	}
	return mib, procs
}

// usageKinds are the kinds of process runscUsage tells apart.
var usageKinds = []string{"sentry", "guest stubs", "gofer", "runsc run/restore"}

// procUsage is what a set of processes used: CPU time (user and system) and context
// switches of all their threads, voluntary or not, which count their wake-ups.
type procUsage struct {
	cpu   time.Duration
	wakes int64
	procs int
}

func (u procUsage) add(v procUsage) procUsage {
	return procUsage{cpu: u.cpu + v.cpu, wakes: u.wakes + v.wakes, procs: u.procs + v.procs}
}

func (u procUsage) sub(v procUsage) procUsage {
	return procUsage{cpu: u.cpu - v.cpu, wakes: u.wakes - v.wakes, procs: u.procs}
}

// runscUsage is what the runsc processes of a daemon (those whose command line names a
// path under dataDir: its runsc root is there) and their descendants have used so far,
// by kind (usageKinds). The descendants of the sentry are the platform's stub processes,
// in which the guest's own code runs.
func runscUsage(dataDir string) map[string]procUsage {
	type info struct {
		ppid int
		kind string
	}
	procs := map[int]info{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := procStatFields(pid)
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		kind := ""
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil {
			cl := string(b)
			if strings.Contains(cl, "runsc") && strings.Contains(cl, dataDir+"/") {
				switch {
				case strings.HasPrefix(cl, "runsc-sandbox"):
					kind = "sentry"
				case strings.HasPrefix(cl, "runsc-gofer"):
					kind = "gofer"
				default:
					kind = "runsc run/restore"
				}
			}
		}
		procs[pid] = info{ppid: ppid, kind: kind}
	}
	// kindOf is a process's kind, or that of its nearest runsc ancestor: a stub if that
	// is the sentry, "" if it has none.
	var kindOf func(pid, depth int) string
	kindOf = func(pid, depth int) string {
		p, ok := procs[pid]
		switch {
		case !ok || depth > 8:
			return ""
		case p.kind != "":
			return p.kind
		}
		switch k := kindOf(p.ppid, depth+1); k {
		case "sentry", "guest stubs":
			return "guest stubs"
		default:
			return ""
		}
	}
	out := map[string]procUsage{}
	for pid := range procs {
		kind := kindOf(pid, 0)
		if kind == "" {
			continue
		}
		out[kind] = out[kind].add(usageOf(pid))
	}
	return out
}

// usageOf is what one process has used so far (zero if it is gone).
func usageOf(pid int) procUsage {
	f := procStatFields(pid)
	if len(f) < 13 {
		return procUsage{}
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	use := procUsage{cpu: time.Duration(u+k) * time.Second / 100, procs: 1} // USER_HZ
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				use.wakes += n
			} else if v, ok := strings.CutPrefix(line, "nonvoluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				use.wakes += n
			}
		}
	}
	return use
}

// procStatFields are the fields of /proc/PID/stat after the command name, from the
// state on (f[1] is the parent, f[11] and f[12] utime and stime); nil if it is gone.
func procStatFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}

// pssKind is the PSS of one kind of runsc process.
type pssKind struct {
	name  string
	mib   float64
	procs int
}

// runscPSSKinds is runscPSS by kind of process: the sentry (runsc-sandbox), the gofer
// and the supervising runsc run/restore.
func runscPSSKinds(dataDir string) []pssKind {
	kinds := []pssKind{{name: "sentry"}, {name: "gofer"}, {name: "runsc run/restore"}}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cl := strings.ReplaceAll(string(b), "\x00", " ")
		if !strings.Contains(cl, "runsc") || !strings.Contains(cl, dataDir+"/") {
			continue
		}
		k := &kinds[2]
		switch {
		case strings.HasPrefix(cl, "runsc-sandbox"):
			k = &kinds[0]
		case strings.HasPrefix(cl, "runsc-gofer"):
			k = &kinds[1]
		}
		k.mib += procPSS(pid)
		k.procs++
	}
	return kinds
}

// procPSS is a process's PSS in MiB (smaps_rollup), 0 when it cannot be read.
func procPSS(pid int) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Pss:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}
