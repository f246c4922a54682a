package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

// txnConfig is one way of running transactions, selected by the daemon's
// environment: the measured changes can be turned off one by one, so that one bench
// run shows each one's effect side by side.
type txnConfig struct {
	name string
	env  []string
}

var txnConfigs = []txnConfig{
	{"before", []string{"VMEXEC_GVISOR_CHECKPOINT=runsc", "VMEXEC_SKIP_UNCHANGED_SNAPSHOTS=off", "VMEXEC_GVISOR_STANDBY=off"}},
	{"+control-server ckpt", []string{"VMEXEC_SKIP_UNCHANGED_SNAPSHOTS=off", "VMEXEC_GVISOR_STANDBY=off"}},
	{"+unchanged keep image", []string{"VMEXEC_GVISOR_STANDBY=off"}},
	{"+restore standby", []string{"VMEXEC_GVISOR_RESTORE=runsc", "VMEXEC_GVISOR_STANDBYS=1", "VMEXEC_GVISOR_STANDBY_WAIT=off"}},
	{"+control restore (now)", nil}, // rollback.go: restore call, two standbys, wait for one
}

// throughput runs agents agents in parallel, each sending perAgent runs of code back to
// back, and returns the runs per second of the whole. Each agent's sandbox is warmed
// first with the same policy (three runs, then a pause for its background snapshot).
func throughput(ctx context.Context, c *client.Client, prefix string, agents, perAgent int, code func(i int) string, pol *api.ExecPolicy) (float64, error) {
	run := func(agent string, i int) error {
		r, err := c.Exec(ctx, api.ExecRequest{AgentID: agent, Language: "python", Code: code(i), History: pol})
		if err == nil && r.Verdict != api.VerdictOK {
			err = fmt.Errorf("unexpected result %+v", r)
		}
		return err
	}
	var wg sync.WaitGroup
	errs := make(chan error, agents)
	for a := 0; a < agents; a++ {
		wg.Add(1)
		go func(agent string) {
			defer wg.Done()
			for i := 0; i < 3; i++ {
				if err := run(agent, i); err != nil {
					errs <- err
					return
				}
			}
		}(fmt.Sprintf("%s-%d", prefix, a))
	}
	wg.Wait()
	time.Sleep(time.Second)
	var done atomic.Int64
	start := time.Now()
	for a := 0; a < agents; a++ {
		wg.Add(1)
		go func(agent string) {
			defer wg.Done()
			for i := 0; i < perAgent; i++ {
				if err := run(agent, i); err != nil {
					errs <- err
					return
				}
				done.Add(1)
			}
		}(fmt.Sprintf("%s-%d", prefix, a))
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(done.Load()) / elapsed.Seconds(), nil
}

// txnBench is one daemon measured by printTxn.
type txnBench struct {
	ctx     context.Context
	c       *client.Client
	sandbox string // t-write's sandbox
	snap    string // a snapshot of it, for API rollbacks
}

func (b *txnBench) run(agent, code string, pol *api.ExecPolicy) (*api.ExecResult, error) {
	r, err := b.c.Exec(b.ctx, api.ExecRequest{AgentID: agent, Language: "python", Code: code, History: pol})
	if err == nil && r.Verdict != api.VerdictOK {
		err = fmt.Errorf("unexpected result %+v", r)
	}
	return r, err
}

// timed runs f and returns how long it took.
func timed(f func() error) (time.Duration, error) {
	t := time.Now()
	err := f()
	return time.Since(t), err
}

// backToBack runs f k+1 times in a row and returns the last k durations: the first
// follows a pause, the others follow a run.
func backToBack(k int, f func(i int) error) ([]time.Duration, error) {
	var d []time.Duration
	for i := 0; i <= k; i++ {
		t, err := timed(func() error { return f(i) })
		if err != nil {
			return d, err
		}
		if i > 0 {
			d = append(d, t)
		}
	}
	return d, nil
}

// afterThinking sleeps 300 ms (an agent between turns) before each of k timed calls.
func afterThinking(k int, before, f func(i int) error) ([]time.Duration, error) {
	var d []time.Duration
	for i := 0; i < k; i++ {
		if before != nil {
			if err := before(i); err != nil {
				return d, err
			}
		}
		time.Sleep(300 * time.Millisecond)
		t, err := timed(func() error { return f(i) })
		if err != nil {
			return d, err
		}
		d = append(d, t)
	}
	return d, nil
}

// txnMeasure is one row of the transactions table: burst measures some samples in
// one daemon.
type txnMeasure struct {
	name  string
	burst func(b *txnBench, round int) ([]time.Duration, error)
}

func print1(b *txnBench, agent string) func(int) error {
	return func(int) error {
		r, err := b.run(agent, "print(1)", nil)
		if err == nil && strings.TrimSpace(r.Stdout) != "1" {
			err = fmt.Errorf("unexpected result %+v", r)
		}
		return err
	}
}

func writeFile(b *txnBench, agent string) func(int) error {
	return func(i int) error {
		_, err := b.run(agent, fmt.Sprintf("open('/home/user/n.txt', 'w').write('%d')", i), nil)
		return err
	}
}

// failing is a run that fails (and is rolled back) after running code.
func failing(b *txnBench, code string) func(int) error {
	return func(int) error {
		r, err := b.c.Exec(b.ctx, api.ExecRequest{AgentID: "t-write", Language: "python", Code: code + "\nraise SystemExit(1)"})
		if err == nil && (!r.RolledBack || r.Verdict == api.VerdictOK) {
			err = fmt.Errorf("not rolled back: %+v", r)
		}
		return err
	}
}

// nativeRow is txnMeasures' first row: the baseline, sampled in the same turns.
const nativeRow = 0

var txnMeasures = []txnMeasure{
	{"native python3 -c print(1), same turns", func(b *txnBench, _ int) ([]time.Duration, error) {
		return backToBack(3, func(int) error { return exec.Command(nativePython(), "-c", "print(1)").Run() })
	}},
	{"warm print(1), back to back", func(b *txnBench, _ int) ([]time.Duration, error) {
		return backToBack(3, print1(b, "t-warm"))
	}},
	{"warm print(1), 300ms between", func(b *txnBench, _ int) ([]time.Duration, error) {
		return afterThinking(2, nil, print1(b, "t-warm"))
	}},
	{"  the same, the guest's own duration_ms", func(b *txnBench, _ int) ([]time.Duration, error) {
		var d []time.Duration
		for i := 0; i < 2; i++ {
			time.Sleep(300 * time.Millisecond)
			r, err := b.run("t-warm", "print(1)", nil)
			if err != nil {
				return d, err
			}
			d = append(d, time.Duration(r.DurationMS)*time.Millisecond)
		}
		return d, nil
	}},
	{"warm file write, back to back", func(b *txnBench, _ int) ([]time.Duration, error) {
		return backToBack(3, writeFile(b, "t-write"))
	}},
	{"warm file write, 300ms between", func(b *txnBench, _ int) ([]time.Duration, error) {
		return afterThinking(2, nil, writeFile(b, "t-write"))
	}},
	{"failed run + rollback (wrote a file)", func(b *txnBench, _ int) ([]time.Duration, error) {
		return afterThinking(1, nil, failing(b, "open('/home/user/n.txt', 'w').write('x')"))
	}},
	{"failed run + rollback (changed nothing)", func(b *txnBench, _ int) ([]time.Duration, error) {
		return afterThinking(1, nil, failing(b, "pass"))
	}},
	{"rollback (API), back to back", func(b *txnBench, _ int) ([]time.Duration, error) {
		time.Sleep(500 * time.Millisecond) // the burst starts with the standbys made
		return backToBack(3, func(int) error {
			_, err := b.c.Rollback(b.ctx, b.sandbox, api.RollbackRequest{SnapshotID: b.snap})
			return err
		})
	}},
	{"rollback (API), after a file write", func(b *txnBench, _ int) ([]time.Duration, error) {
		return afterThinking(1, writeFile(b, "t-write"), func(int) error {
			_, err := b.c.Rollback(b.ctx, b.sandbox, api.RollbackRequest{SnapshotID: b.snap})
			return err
		})
	}},
}

// setup warms the daemon's sandboxes (zygote up, snapshot taken) and takes the
// snapshot API rollbacks go back to.
func (b *txnBench) setup() error {
	for _, a := range []string{"t-warm", "t-write"} {
		for i := 0; i < 3; i++ {
			if _, err := b.run(a, "print(0)", nil); err != nil {
				return err
			}
		}
	}
	r, err := b.run("t-write", "print(0)", nil)
	if err != nil {
		return err
	}
	sn, err := b.c.CreateSnapshot(b.ctx, r.SandboxID, api.CreateSnapshotRequest{Pinned: true}) // kept by retention
	b.sandbox, b.snap = r.SandboxID, sn.ID
	return err
}

// printTxn measures transactions in one daemon per configuration (all of txnConfigs
// with compare, else only the current one), running at once, with every
// measurement's samples taken in turns across them (a burst in one, then in the
// next), so that the host's load, which swings on these shared machines, weighs on
// them alike. It prints p50, p95 and ratios to the native spawn measured in the same
// run, and ten agents' throughput.
func printTxn(tmp, runsc, tplDir string, n int, native time.Duration, compare bool) error {
	cfgs := txnConfigs[len(txnConfigs)-1:]
	if compare {
		cfgs = txnConfigs
	}
	var benches []*txnBench
	for _, cfg := range cfgs {
		d, err := startDaemonEnv(tmp, runsc, tplDir, cfg.env, "--pool-size", "0")
		if err != nil {
			return err
		}
		defer d.stop()
		b := &txnBench{ctx: context.Background(), c: client.New(d.url)}
		if err := b.setup(); err != nil {
			return fmt.Errorf("%s: %w", cfg.name, err)
		}
		benches = append(benches, b)
	}
	time.Sleep(time.Second)
	rounds := max(n/3, 2)
	rows := make([][]series, len(txnMeasures)) // [measure][config]
	for m, tm := range txnMeasures {
		rows[m] = make([]series, len(cfgs))
		for r := 0; r < rounds; r++ {
			for i, b := range benches {
				d, err := tm.burst(b, r)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", cfgs[i].name, tm.name, err)
				}
				rows[m][i].d = append(rows[m][i].d, d...)
			}
		}
	}
	// Throughput: ten agents per daemon, snapshot on and off, in turns.
	off := false
	noSnap := &api.ExecPolicy{SnapshotBeforeExecution: &off}
	printI := func(i int) string { return fmt.Sprintf("print(%d)", i) }
	write := func(i int) string { return fmt.Sprintf("open('/home/user/n.txt', 'w').write('%d')", i) }
	kinds := []struct {
		name string
		code func(int) string
		pol  *api.ExecPolicy
	}{
		{"10 agents print(i), snapshot on", printI, nil},
		{"10 agents print(i), snapshot off", printI, noSnap},
		{"10 agents file write, snapshot on", write, nil},
		{"10 agents file write, snapshot off", write, noSnap},
	}
	// [kind][config]: runs/s, mean of the turns; on and off of one code share agents.
	rates := make([][]float64, len(kinds))
	for k := range kinds {
		rates[k] = make([]float64, len(cfgs))
	}
	const turns = 2
	for t := 0; t < turns; t++ {
		for k, kind := range kinds {
			for i, b := range benches {
				per, err := throughput(b.ctx, b.c, fmt.Sprintf("tp%d", k/2), 10, max(n, 10), kind.code, kind.pol)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", cfgs[i].name, kind.name, err)
				}
				rates[k][i] += per / turns
			}
		}
	}

	// The baseline: the native spawns sampled in the same turns, all columns pooled.
	var nat series
	for _, v := range rows[nativeRow] {
		nat.d = append(nat.d, v.d...)
	}
	fmt.Printf("\ntransactions: p50 ms, p50/native, p95 ms; samples taken in turns across the columns;\n")
	fmt.Printf("native = %s, the p50 of the first row's spawns, all columns (%s at the start of the run)\n",
		nat.pct(0.5).Round(100*time.Microsecond), native.Round(100*time.Microsecond))
	native = nat.pct(0.5)
	fmt.Printf("%-44s", "")
	for _, cfg := range cfgs {
		fmt.Printf(" | %-24.24s", cfg.name)
	}
	fmt.Println()
	for m, tm := range txnMeasures {
		fmt.Printf("%-44s", fmt.Sprintf("%s (n=%d)", tm.name, len(rows[m][0].d)))
		for _, v := range rows[m] {
			fmt.Printf(" | %7.1f %6.2fx %8.1f", ms(v.pct(0.5)), float64(v.pct(0.5))/float64(native), ms(v.pct(0.95)))
		}
		fmt.Println()
	}
	for k, kind := range kinds {
		fmt.Printf("%-44s", kind.name)
		for _, r := range rates[k] {
			fmt.Printf(" | %7.1f runs/s %9s", r, "")
		}
		fmt.Println()
	}
	for _, pair := range [][2]int{{0, 1}, {2, 3}} {
		fmt.Printf("%-44s", strings.TrimSuffix(kinds[pair[0]].name, ", snapshot on")+": on/off")
		for i := range cfgs {
			fmt.Printf(" | %7.0f %% %14s", 100*rates[pair[0]][i]/rates[pair[1]][i], "")
		}
		fmt.Println()
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
