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
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/gvisor"
	"github.com/vmexec/vmexec/internal/template"
)

var warmDaemon = flag.Bool("warm-daemon", false, "with -warm-only: measure only a warm print(1) through the daemon's API against the backend used directly, "+
	"with the daemon's run path as it is and as it was (VMEXEC_DAEMON_FAST=off), side by side, with the daemon's steps (hostpath.go)")

// stepLog collects the daemon's "exec steps" debug lines (internal/sandbox/steps.go):
// per step, the durations of the runs it saw.
type stepLog struct {
	mu    sync.Mutex
	buf   []byte
	order []string
	steps map[string][]time.Duration
}

func (l *stepLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	eachLine(&l.buf, p, func(line string) {
		if strings.Contains(line, `msg=request`) && strings.Contains(line, "path=/v1/exec ") {
			if i := strings.Index(line, " duration="); i >= 0 {
				if d, err := time.ParseDuration(strings.Fields(line[i+len(" duration="):])[0]); err == nil {
					l.add("http: ServeHTTP", d)
				}
			}
			return
		}
		if !strings.Contains(line, `msg="exec steps"`) {
			if strings.Contains(line, "level=ERROR") || strings.Contains(line, "level=WARN") {
				fmt.Fprintln(os.Stderr, "daemon:", line)
			}
			return
		}
		for _, f := range strings.Fields(line) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				continue
			}
			d, err := time.ParseDuration(v)
			if err != nil {
				continue
			}
			l.add(k, d)
		}
	})
	return len(p), nil
}

func (l *stepLog) add(k string, d time.Duration) {
	if l.steps == nil {
		l.steps = map[string][]time.Duration{}
	}
	if _, seen := l.steps[k]; !seen {
		l.order = append(l.order, k)
	}
	l.steps[k] = append(l.steps[k], d)
}

// reset forgets what was collected (the warm-up runs).
func (l *stepLog) reset() {
	l.mu.Lock()
	l.order, l.steps = nil, nil
	l.mu.Unlock()
}

// startStepDaemon starts a daemon at debug level whose step lines go to a stepLog.
func startStepDaemon(tmp, runsc, tplDir string, env []string) (*daemon, *stepLog, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	dir, err := os.MkdirTemp(tmp, "data-")
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(filepath.Join(tmp, "vmexec"), "serve", "--addr", addr, "--data-dir", dir, "--template-dir", filepath.Dir(tplDir),
		"--runsc", runsc, "--agent", filepath.Join(tmp, "vmexec-agent"), "--log-level", "debug")
	cmd.Env = append(os.Environ(), env...)
	sl := &stepLog{}
	cmd.Stderr = sl
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	d := &daemon{cmd: cmd, url: "http://" + addr, dataDir: dir}
	for i := 0; i < 1200; i++ {
		if resp, err := http.Get(d.url + "/health"); err == nil {
			resp.Body.Close()
			return d, sl, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.stop()
	return nil, nil, fmt.Errorf("daemon did not start")
}

// printWarmDaemon measures, in turns, 300 ms apart: a native spawn, a warm print(1)
// on the gVisor backend used directly, and the same run through the API of a daemon
// whose run path is as it is ("new") and of one as it was ("old",
// VMEXEC_DAEMON_FAST=off). Then where each daemon's time went, per step.
func printWarmDaemon(tmp, runsc string, tpl template.Template, n int) error {
	ctx := context.Background()
	b, err := gvisor.New(gvisor.Config{Runsc: runsc, StateDir: filepath.Join(tmp, "hostpath-backend"), AgentPath: filepath.Join(tmp, "vmexec-agent")})
	if err != nil {
		return err
	}
	defer b.Close(ctx)
	sb, err := b.Create(ctx, backend.Spec{ID: "hostpath-direct", Template: tpl, MemoryBytes: 512 << 20})
	if err != nil {
		return err
	}
	defer sb.Destroy(ctx)
	span := series{name: "  of which the guest's span"}
	back := series{name: "  the result's way back"}
	outside := series{name: "  the Exec call outside the span"}
	runDirect := func() error {
		t0 := time.Now()
		res, err := sb.Exec(ctx, warmReq(), nil)
		if err == nil && strings.TrimSpace(string(res.Stdout)) != "1" {
			err = fmt.Errorf("unexpected result %+v", res)
		}
		if err == nil && len(res.Trace) > 0 {
			last := res.Trace[len(res.Trace)-1].US
			span.d = append(span.d, time.Duration(last)*time.Microsecond)
			back.d = append(back.d, time.Since(time.UnixMicro(res.TraceStartUS+last)))
			outside.d = append(outside.d, time.Since(t0)-time.Duration(last)*time.Microsecond)
		}
		return err
	}
	type side struct {
		name string
		c    *client.Client
		log  *stepLog
		s    series
	}
	var sides []*side
	for _, v := range []struct{ name, env string }{{"new", ""}, {"old", "off"}} {
		d, sl, err := startStepDaemon(tmp, runsc, tpl.Dir, []string{"VMEXEC_DAEMON_FAST=" + v.env})
		if err != nil {
			return err
		}
		defer d.stop()
		sides = append(sides, &side{name: v.name, c: client.New(d.url), log: sl, s: series{name: "daemon API, " + v.name}})
	}
	agent := fmt.Sprintf("hostpath-%d", time.Now().UnixNano())
	viaAPI := func(s *side) error {
		r, err := s.c.Exec(ctx, api.ExecRequest{AgentID: agent, Language: "python", Code: "print(1)"})
		if err == nil && strings.TrimSpace(r.Stdout) != "1" {
			err = fmt.Errorf("unexpected result %+v", r)
		}
		return err
	}
	for i := 0; i < 4; i++ { // the zygote starts after the first python run; the first runs snapshot
		if err := runDirect(); err != nil {
			return err
		}
		for _, s := range sides {
			if err := viaAPI(s); err != nil {
				return fmt.Errorf("daemon %s: %w", s.name, err)
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	for _, s := range sides {
		s.log.reset()
	}
	span.d, back.d, outside.d = nil, nil, nil
	python := nativePython()
	native, direct := series{name: "native python3 spawn"}, series{name: "gvisor backend, no daemon"}
	health := series{name: "GET /health (new daemon)"}
	last := make([]time.Time, 3+len(sides)) // when each side's previous run ended
	for i := 0; i < n; i++ {
		// Each in turn, 300 ms after its own previous run (an agent between turns), in
		// an order that rotates so no side always follows the same one.
		turns := []func() error{
			func() error {
				d, err := timed(func() error { return exec.Command(python, "-c", "print(1)").Run() })
				native.d = append(native.d, d)
				return err
			},
			func() error {
				d, err := timed(runDirect)
				direct.d = append(direct.d, d)
				return err
			},
		}
		for _, s := range sides {
			turns = append(turns, func() error {
				d, err := timed(func() error { return viaAPI(s) })
				s.s.d = append(s.s.d, d)
				return err
			})
		}
		turns = append(turns, func() error { // the HTTP round trip alone, for scale
			d, err := timed(func() error { _, err := sides[0].c.Health(ctx); return err })
			health.d = append(health.d, d)
			return err
		})
		for j := range turns {
			k := (i + j) % len(turns)
			time.Sleep(time.Until(last[k].Add(300 * time.Millisecond)))
			err := turns[k]()
			last[k] = time.Now()
			if err != nil {
				return err
			}
		}
	}
	base := native.pct(0.5)
	fmt.Printf("\nwarm print(1), 300 ms between runs, in turns\n%-34s %6s %10s %10s %12s\n", "", "n", "p50", "p95", "p50/native")
	printRow(34, native, 100*time.Microsecond, base)
	printRow(34, direct, 100*time.Microsecond, base)
	printRow(34, span, 100*time.Microsecond, base)
	printRow(34, back, 100*time.Microsecond, base)
	printRow(34, outside, 100*time.Microsecond, base)
	for _, s := range sides {
		printRow(34, s.s, 100*time.Microsecond, base)
	}
	printRow(34, health, 100*time.Microsecond, base)
	fmt.Printf("\nthe daemon's steps (p50 of each; internal/sandbox/steps.go)\n%-22s", "step")
	for _, s := range sides {
		fmt.Printf(" %10s", s.name)
	}
	fmt.Println()
	var order []string
	seen := map[string]bool{}
	for _, s := range sides {
		for _, k := range s.log.order {
			if !seen[k] {
				seen[k] = true
				order = append(order, k)
			}
		}
	}
	for _, k := range order {
		fmt.Printf("%-22s", k)
		for _, s := range sides {
			s.log.mu.Lock()
			d := s.log.steps[k]
			s.log.mu.Unlock()
			if len(d) == 0 {
				fmt.Printf(" %10s", "-")
				continue
			}
			fmt.Printf(" %10s", series{d: d}.pct(0.5).Round(10*time.Microsecond))
		}
		fmt.Println()
	}
	return nil
}
