package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/gvisor"
	"github.com/vmexec/vmexec/internal/template"
)

var (
	warmOnly = flag.Bool("warm-only", false, "measure only the phases of a warm run and of a restored sandbox's first run (warm.go), against the native spawn")
	warmEach = flag.Bool("warm-each", false, "warm.go: also measure the guest with each of its speed-ups turned off alone")
)

// warmVariant is one configuration of the guest's run path, measured side by side.
type warmVariant struct {
	name string
	env  []string // the guest agent's environment (gvisor.Config.GuestEnv)
}

// warmVariants are the guest's run path as it is and with its fast paths turned off
// (see the guest's VMEXEC_GUEST_* switches).
var warmVariants = []warmVariant{
	{"new", nil},
	{"old", []string{"VMEXEC_GUEST_FAST=off"}},
}

// warmReq is a print(1) as the daemon sends it by default: default limits and the
// default change scan (which the settled check needs), traced.
func warmReq() *agentproto.ExecRequest {
	return &agentproto.ExecRequest{Language: "python", Code: "print(1)", Trace: true,
		Limits:  agentproto.Limits{TimeoutMS: 20000, MaxOutputBytes: 1 << 20, MaxFileBytes: 1 << 30, MaxProcs: 256, MemoryBytes: 512 << 20},
		Changes: &agentproto.ChangeScan{MaxEntries: 1000}}
}

// warmSide is what one variant measured: the host's whole call, the guest's span, and
// each guest phase (the time from the previous trace point to this one).
type warmSide struct {
	order  []string
	phases map[string][]time.Duration
}

func (w *warmSide) add(name string, d time.Duration) {
	if w.phases == nil {
		w.phases = map[string][]time.Duration{}
	}
	if _, ok := w.phases[name]; !ok {
		w.order = append(w.order, name)
	}
	w.phases[name] = append(w.phases[name], d)
}

// record adds one traced run: host is the backend call's time as the host saw it,
// from t0 (the call) to its return.
func (w *warmSide) record(t0 time.Time, host time.Duration, res *agentproto.ExecResult) {
	w.add("host: Exec call", host)
	gstart := time.UnixMicro(res.TraceStartUS)
	w.add("  host → guest: request to the run's start", gstart.Sub(t0))
	var last int64
	for _, p := range res.Trace {
		w.add("  guest: "+p.Name, time.Duration(p.US-last)*time.Microsecond)
		last = p.US
	}
	guest := time.Duration(last) * time.Microsecond
	w.add("  guest → host: the result's way back", t0.Add(host).Sub(gstart.Add(guest)))
	w.add("  guest: total", guest)
	w.add("  host: outside the guest", host-guest)
}

// printWarm measures, on the gVisor backend used directly (no daemon, no HTTP), a
// warm print(1) with 300 ms between runs and a restored sandbox's first run after a
// warm-up run (what a pool sandbox of the template snapshot gives a new agent), once
// per warmVariant, in turns, with the guest's phases (ExecRequest.Trace).
func printWarm(tmp, runsc string, tpl template.Template, n int, native time.Duration) error {
	if *warmDaemon {
		return printWarmDaemon(tmp, runsc, tpl, n) // hostpath.go
	}
	ctx := context.Background()
	type side struct {
		v                      warmVariant
		b                      *gvisor.Backend
		sb                     backend.Sandbox
		img                    backend.Image
		warm, frst, scnd, busy warmSide
	}
	variants := warmVariants
	if *warmEach {
		for _, f := range []string{"exit", "hint", "freeze"} {
			variants = append(variants, warmVariant{"no " + f, []string{"VMEXEC_GUEST_FAST=" + f}})
		}
	}
	var sides []*side
	exec := func(sb backend.Sandbox) (time.Time, time.Duration, *agentproto.ExecResult, error) {
		t := time.Now()
		res, err := sb.Exec(ctx, warmReq(), nil)
		d := time.Since(t)
		if err == nil && (res.Verdict != agentproto.VerdictOK || strings.TrimSpace(string(res.Stdout)) != "1") {
			err = fmt.Errorf("unexpected result %+v", res)
		}
		return t, d, res, err
	}
	for i, v := range variants {
		dir, err := os.MkdirTemp(tmp, "warm-")
		if err != nil {
			return err
		}
		b, err := gvisor.New(gvisor.Config{Runsc: runsc, StateDir: dir, AgentPath: filepath.Join(tmp, "vmexec-agent"), GuestEnv: v.env})
		if err != nil {
			return err
		}
		defer b.Close(ctx)
		sb, err := b.Create(ctx, backend.Spec{ID: fmt.Sprintf("warm-%d", i), Template: tpl, MemoryBytes: 512 << 20})
		if err != nil {
			return err
		}
		defer sb.Destroy(ctx)
		for j := 0; j < 3; j++ { // the zygote starts after the first python run
			if _, _, _, err := exec(sb); err != nil {
				return err
			}
			time.Sleep(300 * time.Millisecond)
		}
		img, err := b.Snapshot(ctx, sb) // the template snapshot's stand-in: a warmed sandbox
		if err != nil {
			return err
		}
		sides = append(sides, &side{v: v, b: b, sb: sb, img: img})
	}
	for i := 0; i < n; i++ {
		for _, s := range sides {
			time.Sleep(300 * time.Millisecond) // an agent between turns
			t, d, res, err := exec(s.sb)
			if err != nil {
				return fmt.Errorf("warm run (%s): %w", s.v.name, err)
			}
			s.warm.record(t, d, res)
		}
	}
	for i := 0; i < max(n/3, 3); i++ {
		for _, s := range sides {
			sb, err := s.b.Fork(ctx, s.img.Ref, backend.Spec{ID: fmt.Sprintf("warm-%s-r%d", strings.ReplaceAll(s.v.name, " ", "-"), i), Template: tpl, MemoryBytes: 512 << 20})
			if err != nil {
				return err
			}
			// As the pool does: a warm-up run right after the restore, then the sandbox
			// waits for its agent.
			w := warmReq()
			w.Code = "pass"
			_, err = sb.Exec(ctx, w, nil)
			if err == nil {
				time.Sleep(time.Second)
				var t time.Time
				var d time.Duration
				var res *agentproto.ExecResult
				if t, d, res, err = exec(sb); err == nil {
					s.frst.record(t, d, res)
					time.Sleep(300 * time.Millisecond)
					if t, d, res, err = exec(sb); err == nil {
						s.scnd.record(t, d, res)
					}
				}
			}
			sb.Destroy(ctx)
			if err != nil {
				return fmt.Errorf("first run (%s): %w", s.v.name, err)
			}
			// The same first run while a pool refill (a restore and its warm-up run)
			// starts next to it, as the daemon did when it refilled at once
			// (VMEXEC_POOL_REFILL_DELAY=0).
			if err := warmBusyFirst(ctx, s.b, s.img, tpl, fmt.Sprintf("%d-%d", i, len(sides)), &s.busy); err != nil {
				return fmt.Errorf("first run next to a refill (%s): %w", s.v.name, err)
			}
		}
	}
	// Through the daemon: a new agent's first run from a pool of 2 whose refill waits
	// (the default) or starts at once, next to the run (as before).
	// And a warm run through the daemon (HTTP, records, the skipped pre-run snapshot),
	// with the guest's speed-ups on and off.
	var pool []series
	for _, mode := range []struct{ name, delay, guest string }{
		{"new", "", ""}, {"new guest, refill at once", "0", ""}, {"old (guest and refill)", "0", "off"},
	} {
		env := []string{"VMEXEC_POOL_REFILL_DELAY=" + mode.delay, "VMEXEC_GUEST_FAST=" + mode.guest}
		d, err := startDaemonEnv(tmp, runsc, tpl.Dir, env, "--pool-size", "2")
		if err != nil {
			return err
		}
		more, err := firstRuns(d, "first run, pool=2, "+mode.name, 2, max(n/3, 3))
		if err == nil && mode.delay == "0" {
			var s series
			s, err = daemonWarm(d, "warm run, 300ms between, "+mode.name, n)
			more = append(more, s)
		}
		d.stop()
		if err != nil {
			return err
		}
		pool = append(pool, more...)
	}
	fmt.Printf("\nwarm print(1) phases (gvisor backend, no daemon; p50, native spawn %s)\n", native.Round(100*time.Microsecond))
	for _, k := range []struct {
		title string
		get   func(*side) *warmSide
	}{{"warm run, 300ms between", func(s *side) *warmSide { return &s.warm }}, {"restored, after a warm-up run", func(s *side) *warmSide { return &s.frst }},
		{"restored: the run after that", func(s *side) *warmSide { return &s.scnd }},
		{"restored, a refill restoring next to it", func(s *side) *warmSide { return &s.busy }}} {
		fmt.Printf("%-34s", k.title)
		for _, s := range sides {
			fmt.Printf(" %10s %6s", s.v.name, "×nat")
		}
		fmt.Println()
		var order []string
		seen := map[string]bool{}
		for _, s := range sides {
			for _, name := range k.get(s).order {
				if !seen[name] {
					seen[name] = true
					order = append(order, name)
				}
			}
		}
		for _, name := range order {
			fmt.Printf("%-34s", name)
			for _, s := range sides {
				d := k.get(s).phases[name]
				if len(d) == 0 {
					fmt.Printf(" %10s %7s", "-", "")
					continue
				}
				p := series{d: d}.pct(0.5)
				fmt.Printf(" %10s %6.2fx", p.Round(10*time.Microsecond), float64(p)/float64(native))
			}
			fmt.Println()
		}
	}
	fmt.Printf("\n%-46s %6s %10s %10s %12s\n", "through the daemon", "n", "p50", "p95", "p50/native")
	for _, s := range pool {
		printRow(46, s, 100*time.Microsecond, native)
	}
	return nil
}

// warmBusyFirst times a restored sandbox's first run (after its warm-up run) while
// another restore of the image, with its warm-up run, starts at the same moment.
func warmBusyFirst(ctx context.Context, b *gvisor.Backend, img backend.Image, tpl template.Template, tag string, w *warmSide) error {
	spec := func(s string) backend.Spec {
		return backend.Spec{ID: "warm-busy-" + s + "-" + tag, Template: tpl, MemoryBytes: 512 << 20}
	}
	sb, err := b.Fork(ctx, img.Ref, spec("a"))
	if err != nil {
		return err
	}
	defer sb.Destroy(ctx)
	up := warmReq()
	up.Code = "pass"
	if _, err := sb.Exec(ctx, up, nil); err != nil {
		return err
	}
	time.Sleep(time.Second)
	refill := make(chan error, 1)
	go func() {
		other, err := b.Fork(ctx, img.Ref, spec("b"))
		if err == nil {
			_, err = other.Exec(ctx, up, nil)
			other.Destroy(ctx)
		}
		refill <- err
	}()
	t := time.Now()
	res, err := sb.Exec(ctx, warmReq(), nil)
	d := time.Since(t)
	if err == nil && (res.Verdict != agentproto.VerdictOK || strings.TrimSpace(string(res.Stdout)) != "1") {
		err = fmt.Errorf("unexpected result %+v", res)
	}
	if rerr := <-refill; err == nil {
		err = rerr
	}
	if err == nil {
		w.record(t, d, res)
	}
	return err
}

// daemonWarm times n warm print(1) runs of one agent through d's API, 300 ms apart.
func daemonWarm(d *daemon, name string, n int) (series, error) {
	c := client.New(d.url)
	ctx := context.Background()
	agent := fmt.Sprintf("warm-%d", time.Now().UnixNano())
	run := func(int) error {
		r, err := c.Exec(ctx, api.ExecRequest{AgentID: agent, Language: "python", Code: "print(1)"})
		if err == nil && strings.TrimSpace(r.Stdout) != "1" {
			err = fmt.Errorf("unexpected result %+v", r)
		}
		return err
	}
	for i := 0; i < 3; i++ {
		if err := run(i); err != nil {
			return series{name: name}, err
		}
		time.Sleep(300 * time.Millisecond)
	}
	return measureWith(name, n, func(int) { time.Sleep(300 * time.Millisecond) }, run)
}
