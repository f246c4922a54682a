package main

import (
	"context"
	"fmt"
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
	{"+restore standby (now)", nil},
}

// txnFigures are a transaction configuration's figures.
type txnFigures struct {
	series []series
	rates  []rate
}

type rate struct {
	name string
	per  float64 // runs per second
}

// throughput runs agents agents in parallel, each sending perAgent runs of code back to
// back, and returns the runs per second of the whole. Each agent's sandbox is warmed
// first (two runs, then a pause for its background snapshot).
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
			for i := 0; i < 2; i++ {
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

// txnSeries measures, in the daemon at c, what transactions cost: warm runs back to
// back and with an agent's pause between them, runs that change a file, rollbacks,
// and the throughput of ten agents with the pre-run snapshot on and off.
func txnSeries(ctx context.Context, c *client.Client, tag string, n int) (txnFigures, error) {
	var f txnFigures
	run := func(agent, code string, pol *api.ExecPolicy) (*api.ExecResult, error) {
		r, err := c.Exec(ctx, api.ExecRequest{AgentID: agent, Language: "python", Code: code, History: pol})
		if err == nil && r.Verdict != api.VerdictOK {
			err = fmt.Errorf("unexpected result %+v", r)
		}
		return r, err
	}
	print1 := func(agent string) func(int) error {
		return func(int) error {
			r, err := run(agent, "print(1)", nil)
			if err == nil && strings.TrimSpace(r.Stdout) != "1" {
				err = fmt.Errorf("unexpected result %+v", r)
			}
			return err
		}
	}
	write := func(agent string) func(int) error {
		return func(i int) error {
			_, err := run(agent, fmt.Sprintf("open('/home/user/n.txt', 'w').write('%d')", i), nil)
			return err
		}
	}
	add := func(s series, err error) error {
		f.series = append(f.series, s)
		return err
	}
	think := func(int) { time.Sleep(300 * time.Millisecond) }
	for _, a := range []string{"t-warm", "t-write"} { // warm both sandboxes: zygote up, snapshot taken
		for i := 0; i < 3; i++ {
			if _, err := run(a, "print(0)", nil); err != nil {
				return f, err
			}
		}
	}
	time.Sleep(500 * time.Millisecond)
	if err := add(measure(tag+"warm print(1), back to back", n, print1("t-warm"))); err != nil {
		return f, err
	}
	if err := add(measureWith(tag+"warm print(1), 300ms between", n, think, print1("t-warm"))); err != nil {
		return f, err
	}
	if err := add(measure(tag+"warm file write, back to back", n, write("t-write"))); err != nil {
		return f, err
	}
	if err := add(measureWith(tag+"warm file write, 300ms between", n, think, write("t-write"))); err != nil {
		return f, err
	}
	// Rollback: of a run that failed having changed a file (the transaction's own
	// rollback: a restore), and of one that changed nothing.
	failing := func(code string) func(int) error {
		return func(int) error {
			r, err := c.Exec(ctx, api.ExecRequest{AgentID: "t-write", Language: "python", Code: code})
			if err == nil && (!r.RolledBack || r.Verdict == api.VerdictOK) {
				err = fmt.Errorf("not rolled back: %+v", r)
			}
			return err
		}
	}
	off := false
	if err := add(measureWith(tag+"failed run + rollback (wrote a file)", n/2, think,
		failing("open('/home/user/n.txt', 'w').write('x'); raise SystemExit(1)"))); err != nil {
		return f, err
	}
	if err := add(measureWith(tag+"failed run + rollback (changed nothing)", n/2, think,
		failing("raise SystemExit(1)"))); err != nil {
		return f, err
	}
	sb, err := run("t-write", "print(0)", nil)
	if err != nil {
		return f, err
	}
	snap, err := c.CreateSnapshot(ctx, sb.SandboxID, api.CreateSnapshotRequest{})
	if err != nil {
		return f, err
	}
	if err := add(measureWith(tag+"rollback (API), after a file write", n/2, func(i int) {
		write("t-write")(i)
		time.Sleep(300 * time.Millisecond)
	}, func(int) error {
		_, err := c.Rollback(ctx, sb.SandboxID, api.RollbackRequest{SnapshotID: snap.ID})
		return err
	})); err != nil {
		return f, err
	}
	const agents = 10
	per := max(n/2, 5)
	noSnap := &api.ExecPolicy{SnapshotBeforeExecution: &off}
	for _, c2 := range []struct {
		name string
		code func(int) string
		pol  *api.ExecPolicy
	}{
		{"10 agents print(i), snapshot on", func(i int) string { return fmt.Sprintf("print(%d)", i) }, nil},
		{"10 agents print(i), snapshot off", func(i int) string { return fmt.Sprintf("print(%d)", i) }, noSnap},
		{"10 agents file write, snapshot on", func(i int) string { return fmt.Sprintf("open('/home/user/n.txt', 'w').write('%d')", i) }, nil},
		{"10 agents file write, snapshot off", func(i int) string { return fmt.Sprintf("open('/home/user/n.txt', 'w').write('%d')", i) }, noSnap},
	} {
		per, err := throughput(ctx, c, strings.ReplaceAll(c2.name, " ", "-")[:12], agents, per, c2.code, c2.pol)
		if err != nil {
			return f, fmt.Errorf("%s: %w", c2.name, err)
		}
		f.rates = append(f.rates, rate{tag + c2.name, per})
	}
	return f, nil
}

// printTxn measures txnSeries in a daemon per configuration (all of txnConfigs with
// compare, else only the current one) and prints them with ratios to the native
// spawn measured in the same run.
func printTxn(tmp, runsc, tplDir string, n int, native time.Duration, compare bool) error {
	cfgs := txnConfigs[len(txnConfigs)-1:]
	if compare {
		cfgs = txnConfigs
	}
	var all []txnFigures
	for _, cfg := range cfgs {
		d, err := startDaemonEnv(tmp, runsc, tplDir, cfg.env, "--pool-size", "0")
		if err != nil {
			return err
		}
		f, err := txnSeries(context.Background(), client.New(d.url), "", n)
		d.stop()
		if err != nil {
			return fmt.Errorf("%s: %w", cfg.name, err)
		}
		all = append(all, f)
	}
	fmt.Printf("\ntransactions: p50 ms, p50/native (native %s), p95 ms; then runs per second\n", native.Round(100*time.Microsecond))
	fmt.Printf("%-44s", "")
	for _, cfg := range cfgs {
		fmt.Printf(" | %-24.24s", cfg.name)
	}
	fmt.Println()
	for i, s := range all[0].series {
		fmt.Printf("%-44s", s.name)
		for _, f := range all {
			v := f.series[i]
			fmt.Printf(" | %7.1f %6.2fx %8.1f", ms(v.pct(0.5)), float64(v.pct(0.5))/float64(native), ms(v.pct(0.95)))
		}
		fmt.Println()
	}
	for i, r := range all[0].rates {
		fmt.Printf("%-44s", r.name)
		for _, f := range all {
			fmt.Printf(" | %7.1f runs/s %9s", f.rates[i].per, "")
		}
		fmt.Println()
	}
	for _, pair := range [][2]int{{0, 1}, {2, 3}} {
		fmt.Printf("%-44s", strings.TrimSuffix(all[0].rates[pair[0]].name, ", snapshot on")+": on/off")
		for _, f := range all {
			fmt.Printf(" | %7.0f %% %14s", 100*f.rates[pair[0]].per/f.rates[pair[1]].per, "")
		}
		fmt.Println()
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
