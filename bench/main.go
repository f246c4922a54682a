// Command bench measures vmexec's run latency against baselines taken in the same run,
// because these machines are noisy: a native `python3 -c 'print(1)'` spawn on the host,
// and `runsc do` per run. It starts its own daemon (built from this tree) on a free
// port with a temporary data dir and the installed template, and prints p50/p95 and
// ratios. It also reports, for streamed runs, the lag from a program's write to the
// client's receipt of that chunk. Not a test: it passes or fails nothing.
//
// It also measures the agent loop's own overhead per step, against a fake model
// (agent.go).
//
// And what a run's change set costs (changes.go).
//
// And, with -cluster, the router's overhead per request and the takeover time from a
// node's death to its agent's next run (cluster.go; needs PostgreSQL and SeaweedFS).
//
// And, with -store, the snapshot store's upload and restore-from-S3 times against a
// local restore (store.go; needs the SeaweedFS that scripts/setup builds).
//
// A new agent's first run is measured side by side from the template snapshot and
// booted the old way, with its phases (firstrun.go); -density N holds N idle
// sandboxes and reports memory, start rate, a run in each, health latency and
// suspension (density.go).
//
// And vmexec through the official E2B SDK (e2b.go; needs Node ≥ 20.18 and npm).
//
// And transactions (txn.go): warm runs that change nothing and runs that write a file,
// rollbacks, and ten agents' throughput with the pre-run snapshot on and off; with
// -compare, once per configuration of the transaction path (the changes made to it
// can be turned off one by one), side by side. And where a checkpoint's and a
// restore's time goes (phases.go).
//
//	sudo go run ./bench [-n 40] [-microvm=false] [-agent=false] [-agent-only] [-changes-only]
//	                    [-first-only] [-density N] [-density-only] [-store] [-store-only] [-store-n 10]
//	                    [-e2b=false] [-e2b-only]
//	                    [-phases=false] [-txn=false] [-compare] [-txn-only]
//	                    [-cluster] [-cluster-only] [-cluster-n 3]
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/template"
)

func main() {
	n := flag.Int("n", 40, "samples per measurement")
	_, qemuErr := exec.LookPath("qemu-system-x86_64")
	withMicroVM := flag.Bool("microvm", qemuErr == nil, "measure the microvm backend too (slow under TCG)")
	dataDir := flag.String("data-dir", envOr("VMEXEC_DATA_DIR", "/var/lib/vmexec"), "where scripts/setup put runsc and the template")
	withAgent := flag.Bool("agent", true, "measure the agent loop's overhead per step (against a fake model)")
	agentOnly := flag.Bool("agent-only", false, "measure only the agent loop")
	changesOnly := flag.Bool("changes-only", false, "measure only the cost of change sets (changes.go)")
	withStore := flag.Bool("store", false, "measure the snapshot store's upload and restore from S3 (store.go)")
	storeOnly := flag.Bool("store-only", false, "measure only the snapshot store")
	storeN := flag.Int("store-n", 10, "samples per snapshot store measurement")
	withCluster := flag.Bool("cluster", false, "measure the router's overhead and the takeover time (cluster.go)")
	clusterOnly := flag.Bool("cluster-only", false, "measure only cluster mode")
	clusterN := flag.Int("cluster-n", 3, "takeovers to time")
	flag.IntVar(&densityN, "density", 20, "density mode: hold this many idle sandboxes (300 on a 24 GiB host); 0 skips it")
	flag.BoolVar(&densityOnly, "density-only", false, "measure only the density mode")
	flag.BoolVar(&firstOnly, "first-only", false, "measure only a new agent's first run (firstrun.go), against the native spawn")
	_, nodeErr := exec.LookPath("node")
	withE2B = flag.Bool("e2b", nodeErr == nil, "measure through the official E2B SDK (e2b.go; needs node and npm)")
	e2bOnly = flag.Bool("e2b-only", false, "measure only through the E2B SDK (and the native baseline)")
	flag.BoolVar(&opts.phases, "phases", true, "measure where a checkpoint's and a restore's time goes (phases.go)")
	flag.BoolVar(&opts.txn, "txn", true, "measure transactions and ten agents' throughput (txn.go)")
	flag.BoolVar(&opts.compare, "compare", false, "measure transactions once per configuration of the transaction path, side by side")
	flag.BoolVar(&opts.txnOnly, "txn-only", false, "measure only the native baseline, phases and transactions")
	flag.Parse()
	clusterFlags = clusterOpts{on: *withCluster || *clusterOnly, only: *clusterOnly, n: *clusterN}
	storeFlags = storeOpts{on: *withStore || *storeOnly, only: *storeOnly, n: *storeN}
	if err := run(*n, *dataDir, *withMicroVM, *withAgent, *agentOnly, *changesOnly); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// Sections beyond the default ones (flags).
var (
	densityN    int
	densityOnly bool
	firstOnly   bool
)

// withE2B and e2bOnly are the E2B flags (e2b.go).
var withE2B, e2bOnly *bool

// opts are the flags of the transaction sections.
var opts struct{ phases, txn, compare, txnOnly bool }

// nativePython is the host's python3 for the native baseline: the interpreter
// itself, not a version manager's shim.
func nativePython() string {
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		return "/usr/bin/python3"
	}
	return "python3"
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

type series struct {
	name string
	d    []time.Duration
}

func (s series) pct(p float64) time.Duration {
	d := append([]time.Duration(nil), s.d...)
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	i := int(float64(len(d)-1) * p)
	return d[i]
}

func measure(name string, n int, f func(i int) error) (series, error) {
	return measureWith(name, n, nil, f)
}

// measureWith times f; before (untimed) runs ahead of each sample.
func measureWith(name string, n int, before func(i int), f func(i int) error) (series, error) {
	s := series{name: name}
	for i := 0; i < n; i++ {
		if before != nil {
			before(i)
		}
		t := time.Now()
		if err := f(i); err != nil {
			return s, fmt.Errorf("%s: %w", name, err)
		}
		s.d = append(s.d, time.Since(t))
	}
	return s, nil
}

func run(n int, dataDir string, withMicroVM, withAgent, agentOnly, changesOnly bool) error {
	runsc := filepath.Join(dataDir, "tools", "runsc")
	tpl, err := (&template.Store{Dir: filepath.Join(dataDir, "templates")}).Get(template.Default)
	if err != nil {
		return fmt.Errorf("%w: run scripts/setup first", err)
	}
	tmp, err := os.MkdirTemp("", "vmexec-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, b := range [][]string{{"vmexec", "./cmd/vmexec", "1"}, {"vmexec-agent", "./cmd/vmexec-agent", "0"}} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(tmp, b[0]), b[1])
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+b[2])
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", b[1], err, out)
		}
	}

	if agentOnly {
		return printAgent(tmp, runsc, tpl.Dir, n)
	}
	if changesOnly {
		return printChanges(tmp, runsc, tpl.Dir, n)
	}
	if clusterFlags.on {
		weed := weedPath(dataDir)
		if weed == "" {
			return fmt.Errorf("-cluster: SeaweedFS (weed) not found under %s/tools: run scripts/setup --tests", dataDir)
		}
		if err := printCluster(tmp, runsc, tpl.Dir, weed, n); err != nil {
			return err
		}
		if clusterFlags.only {
			return nil
		}
	}
	if storeFlags.on {
		weed := weedPath(dataDir)
		if weed == "" {
			return fmt.Errorf("-store: SeaweedFS (weed) not found under %s/tools: run scripts/setup --tests", dataDir)
		}
		if err := printStore(tmp, runsc, filepath.Join(tmp, "vmexec-agent"), tpl, weed, storeFlags.n); err != nil {
			return err
		}
		if storeFlags.only {
			return nil
		}
	}
	if densityOnly {
		return printDensity(tmp, runsc, tpl.Dir, densityN)
	}
	results := []series{}
	python := nativePython()
	native, err := measure("native python3 spawn", n, func(int) error {
		return exec.Command(python, "-c", "print(1)").Run()
	})
	if err != nil {
		return err
	}
	if *e2bOnly {
		fmt.Printf("native python3 spawn p50 %s (the baseline)\n", native.pct(0.5).Round(100*time.Microsecond))
		return printE2B(tmp, runsc, tpl.Dir, n, native.pct(0.5))
	}
	results = append(results, native)
	if firstOnly {
		first, err := firstRunSeries(tmp, runsc, tpl.Dir, n)
		printSeries(native, append(results, first...))
		return err
	}
	if opts.txnOnly {
		return printTxnSections(tmp, runsc, tpl, n, native.pct(0.5))
	}
	if *warmOnly {
		return printWarm(tmp, runsc, tpl, n, native.pct(0.5)) // warm.go
	}
	doRoot := filepath.Join(tmp, "runsc-do")
	rdo, err := measure("runsc do per run", n/2, func(int) error {
		out, err := exec.Command(runsc, "--root", doRoot, "--network=none", "do", "python3", "-c", "print(1)").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	if err != nil {
		return err
	}
	results = append(results, rdo)

	{
		d, err := startDaemon(tmp, runsc, tpl.Dir, "--pool-size", "2")
		if err != nil {
			return err
		}
		more, err := warmSeries(context.Background(), client.New(d.url), n)
		d.stop()
		results = append(results, more...)
		if err != nil {
			return err
		}
	}
	// A new agent's first run, from the template snapshot and the old way (firstrun.go).
	first, err := firstRunSeries(tmp, runsc, tpl.Dir, n)
	results = append(results, first...)
	if err != nil {
		return err
	}

	if withMicroVM {
		more, err := microVMSeries(tmp, runsc, tpl.Dir, n)
		results = append(results, more...)
		if err != nil {
			return err
		}
	}

	printSeries(native, results)
	if err := printTxnSections(tmp, runsc, tpl, n, native.pct(0.5)); err != nil {
		return err
	}
	if err := printWarm(tmp, runsc, tpl, n, native.pct(0.5)); err != nil {
		return fmt.Errorf("warm: %w", err)
	}
	if err := printChanges(tmp, runsc, tpl.Dir, n); err != nil {
		return err
	}
	if densityN > 0 {
		if err := printDensity(tmp, runsc, tpl.Dir, densityN); err != nil {
			return err
		}
	}
	if *withE2B {
		if err := printE2B(tmp, runsc, tpl.Dir, n, native.pct(0.5)); err != nil {
			return err
		}
	}
	if withAgent {
		return printAgent(tmp, runsc, tpl.Dir, n)
	}
	return nil
}

// printSeries prints results with their ratio to the native spawn's p50.
func printSeries(native series, results []series) {
	base := native.pct(0.5)
	fmt.Printf("\n%-36s %6s %10s %10s %12s\n", "measurement", "n", "p50", "p95", "p50/native")
	for _, s := range results {
		printRow(36, s, 100*time.Microsecond, base)
	}
}

// printRow prints one table row: s's name in a column w wide, its n, p50 and p95
// (rounded to round) and its p50's ratio to base.
func printRow(w int, s series, round, base time.Duration) {
	fmt.Printf("%-*s %6d %10s %10s %11.2fx\n", w, s.name, len(s.d), s.pct(0.5).Round(round), s.pct(0.95).Round(round), float64(s.pct(0.5))/float64(base))
}

// printAgent measures and prints the agent loop's section.
func printAgent(tmp, runsc, tplDir string, n int) error {
	agent, overhead, err := agentSeries(tmp, runsc, tplDir, n)
	if err != nil {
		return err
	}
	base := agent[1].pct(0.5) // the warm exec a step contains
	fmt.Printf("\n%-30s %6s %10s %10s %12s\n", "agent loop", "n", "p50", "p95", "p50/exec")
	for _, s := range agent {
		printRow(30, s, 100*time.Microsecond, base)
	}
	fmt.Printf("%-30s %6s %10s\n", "means", "", "")
	for _, s := range agent {
		fmt.Printf("%-30s %6d %10s\n", s.name, len(s.d), mean(s.d).Round(100*time.Microsecond))
	}
	fmt.Printf("agent loop overhead per step (per step - LLM call - warm exec, means): %s\n", overhead.Round(100*time.Microsecond))
	return nil
}

// warmSeries measures runs in a warm sandbox, with and without the transaction's
// snapshot, and snapshot and rollback themselves.
func warmSeries(ctx context.Context, c *client.Client, n int) ([]series, error) {
	run := func(agent string, pol *api.ExecPolicy) (*api.ExecResult, error) {
		r, err := c.Exec(ctx, api.ExecRequest{AgentID: agent, Language: "python", Code: "print(1)", History: pol})
		if err == nil && strings.TrimSpace(r.Stdout) != "1" {
			err = fmt.Errorf("unexpected result %+v", r)
		}
		return r, err
	}
	off := false
	noSnap := &api.ExecPolicy{SnapshotBeforeExecution: &off}
	first, err := run("warm", nil)
	if err != nil {
		return nil, err
	}
	if _, err := run("warm-nosnap", noSnap); err != nil {
		return nil, err
	}
	var out []series
	add := func(s series, err error) error {
		out = append(out, s)
		return err
	}
	think := func(int) { time.Sleep(300 * time.Millisecond) } // an agent between turns
	if err := add(measure("warm run, back to back", n, func(int) error { _, err := run("warm", nil); return err })); err != nil {
		return out, err
	}
	if err := add(measureWith("warm run, 300ms between", n, think, func(int) error { _, err := run("warm", nil); return err })); err != nil {
		return out, err
	}
	if err := add(measure("warm run, no snapshot", n, func(int) error { _, err := run("warm-nosnap", noSnap); return err })); err != nil {
		return out, err
	}
	if err := add(measureWith("warm run, streamed (SSE)", n, think, func(int) error {
		var got string
		r, err := c.ExecStream(ctx, api.ExecRequest{AgentID: "warm", Language: "python", Code: "print(1)"}, client.Output{Stdout: func(s string) { got += s }})
		if err == nil && (strings.TrimSpace(got) != "1" || r.Verdict != api.VerdictOK) {
			err = fmt.Errorf("unexpected result %+v (streamed %q)", r, got)
		}
		return err
	})); err != nil {
		return out, err
	}
	if err := add(streamLag(ctx, c, n)); err != nil {
		return out, err
	}
	var snapID string
	if err := add(measure("snapshot (API)", n, func(int) error {
		sn, err := c.CreateSnapshot(ctx, first.SandboxID, api.CreateSnapshotRequest{})
		snapID = sn.ID
		return err
	})); err != nil {
		return out, err
	}
	err = add(measure("rollback (API)", n, func(int) error {
		_, err := c.Rollback(ctx, first.SandboxID, api.RollbackRequest{SnapshotID: snapID})
		return err
	}))
	return out, err
}

// streamLag measures the lag from a program's write to the client's receipt of that
// chunk: the program prints its clock (time.time_ns) every 20 ms, and the client
// compares each line with the time it received it. Both read the host's one clock
// (gVisor's realtime clock is the host's).
func streamLag(ctx context.Context, c *client.Client, n int) (series, error) {
	s := series{name: "stream lag: write → client"}
	code := fmt.Sprintf("import time\nfor i in range(%d):\n    print(time.time_ns(), flush=True)\n    time.sleep(0.02)\n", n)
	var bad error
	r, err := c.ExecStream(ctx, api.ExecRequest{AgentID: "warm", Language: "python", Code: code}, client.Output{Stdout: func(text string) {
		now := time.Now()
		for _, line := range strings.Fields(text) {
			ns, err := strconv.ParseInt(line, 10, 64)
			if err != nil {
				bad = fmt.Errorf("unexpected line %q", line)
				return
			}
			s.d = append(s.d, now.Sub(time.Unix(0, ns)))
		}
	}})
	switch {
	case err != nil:
		return s, fmt.Errorf("%s: %w", s.name, err)
	case bad != nil:
		return s, fmt.Errorf("%s: %w", s.name, bad)
	case r.Verdict != api.VerdictOK || len(s.d) != n:
		return s, fmt.Errorf("%s: %d lines received, result %+v", s.name, len(s.d), r)
	}
	return s, nil
}

type daemon struct {
	cmd     *exec.Cmd
	url     string
	dataDir string
	log     *daemonLog // its stderr: warnings passed on, the template snapshot's settling seen (firstrun.go)
}

// microVMSeries measures the microvm backend: cold boot to a ready agent, a warm run,
// snapshot and rollback (under TCG where KVM cannot boot a guest).
func microVMSeries(tmp, runsc, tplDir string, n int) ([]series, error) {
	d, err := startDaemon(tmp, runsc, tplDir, "--pool-size", "0", "--backends", "gvisor,microvm")
	if err != nil {
		return nil, err
	}
	defer d.stop()
	c := client.New(d.url)
	ctx := context.Background()
	m := max(3, n/10)
	var out []series
	var ids []string
	boot, err := measure("microvm: cold boot to ready", m, func(int) error {
		sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{Backend: "microvm"})
		ids = append(ids, sb.ID)
		return err
	})
	out = append(out, boot)
	if err != nil {
		return out, err
	}
	bs, _ := c.Backends(ctx)
	for _, b := range bs {
		if b.Name == "microvm" {
			fmt.Fprintf(os.Stderr, "microvm accelerator: %s\n", b.Accel)
		}
	}
	for _, id := range ids[1:] {
		c.DeleteSandbox(ctx, id)
	}
	off := false
	run := func() error {
		r, err := c.Exec(ctx, api.ExecRequest{SandboxID: ids[0], Language: "python", Code: "print(1)", History: &api.ExecPolicy{SnapshotBeforeExecution: &off}})
		if err == nil && strings.TrimSpace(r.Stdout) != "1" {
			err = fmt.Errorf("unexpected result %+v", r)
		}
		return err
	}
	if err := run(); err != nil {
		return out, err
	}
	warm, err := measure("microvm: warm run, no snapshot", m*2, func(int) error { return run() })
	out = append(out, warm)
	if err != nil {
		return out, err
	}
	var snapID string
	snap, err := measure("microvm: snapshot (API)", m, func(int) error {
		sn, err := c.CreateSnapshot(ctx, ids[0], api.CreateSnapshotRequest{})
		snapID = sn.ID
		return err
	})
	out = append(out, snap)
	if err != nil {
		return out, err
	}
	rb, err := measure("microvm: rollback (API)", m, func(int) error {
		_, err := c.Rollback(ctx, ids[0], api.RollbackRequest{SnapshotID: snapID})
		return err
	})
	return append(out, rb), err
}

// printTxnSections prints the phases and transactions sections, as the flags ask.
func printTxnSections(tmp, runsc string, tpl template.Template, n int, native time.Duration) error {
	if opts.phases {
		if err := printPhases(tmp, runsc, tpl, n); err != nil {
			return fmt.Errorf("phases: %w", err)
		}
		if err := printRollback(tmp, runsc, tpl, n); err != nil { // rollback.go
			return err
		}
	}
	if opts.txn {
		return printTxn(tmp, runsc, tpl.Dir, n, native, opts.compare)
	}
	return nil
}

func startDaemon(tmp, runsc, tplDir string, extra ...string) (*daemon, error) {
	return startDaemonEnv(tmp, runsc, tplDir, nil, extra...)
}

// startDaemonEnv is startDaemon with env added to the daemon's environment.
func startDaemonEnv(tmp, runsc, tplDir string, env []string, extra ...string) (*daemon, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	dir, _ := os.MkdirTemp(tmp, "data-")
	args := append([]string{"serve", "--addr", addr, "--data-dir", dir, "--template-dir", filepath.Dir(tplDir),
		"--runsc", runsc, "--agent", filepath.Join(tmp, "vmexec-agent"), "--log-level", "info"}, extra...)
	cmd := exec.Command(filepath.Join(tmp, "vmexec"), args...)
	cmd.Env = append(os.Environ(), env...)
	dl := newDaemonLog()
	cmd.Stderr = dl
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &daemon{cmd: cmd, url: "http://" + addr, dataDir: dir, log: dl}
	for i := 0; i < 600; i++ {
		if resp, err := http.Get(d.url + "/health"); err == nil {
			resp.Body.Close()
			dl.waitTemplate(2 * time.Minute)
			time.Sleep(time.Second) // let the pool fill
			return d, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.stop()
	return nil, fmt.Errorf("daemon did not start")
}

func (d *daemon) stop() {
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Wait()
}
