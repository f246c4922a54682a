package main

import (
	"context"
	"fmt"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

// printChanges measures what a run's change set costs: the guest's own figure
// (changes_scan_us: reading the inotify events and stat-ing what they name, or the two
// metadata scans where the guest falls back to scanning; inside the sandbox)
// for an empty home and for a home of 1,000 files, and, as a check from outside, the
// latency of the same run with change sets on and off (no snapshot, so the
// checkpoint's noise stays out).
func printChanges(tmp, runsc, tplDir string, n int) error {
	d, err := startDaemon(tmp, runsc, tplDir)
	if err != nil {
		return err
	}
	defer d.stop()
	c := client.New(d.url)
	ctx := context.Background()
	off := false
	noSnap := &api.ExecPolicy{SnapshotBeforeExecution: &off, AutoRollbackOnFailure: &off, SnapshotOnFailure: &off}
	homes := []struct{ agent, setup string }{
		{"changes-empty", "true"},
		{"changes-1000", "mkdir -p ~/proj && cd ~/proj && for d in $(seq 1 10); do mkdir -p d$d; for f in $(seq 1 99); do echo $f > d$d/f$f.txt; done; done"},
	}
	fmt.Printf("\n%-34s %6s %10s %10s %10s\n", "change sets (per run)", "n", "p50", "p95", "mean")
	for _, h := range homes {
		setup, err := c.Exec(ctx, api.ExecRequest{AgentID: h.agent, Language: "bash", Code: h.setup, History: noSnap})
		if err != nil {
			return err
		}
		// The sandbox's first run builds the guest's baseline (a full scan) and, here,
		// walks the 1,000 files it created.
		fmt.Printf("%-34s %6d %10s\n", h.agent+": first run (baseline)", 1, (time.Duration(setup.ChangesScanUS) * time.Microsecond).Round(10*time.Microsecond))
		var scan []time.Duration
		runs := func(on bool) (series, error) {
			name := fmt.Sprintf("%s run, changes %s", h.agent, map[bool]string{true: "on", false: "off"}[on])
			return measure(name, n, func(int) error {
				r, err := c.Exec(ctx, api.ExecRequest{AgentID: h.agent, Language: "bash", Code: "echo x > ~/out.txt",
					History: noSnap, Changes: &api.ChangesOptions{Enabled: &on}})
				if err != nil {
					return err
				}
				if r.Verdict != api.VerdictOK || on && len(r.Changes) == 0 {
					return fmt.Errorf("unexpected result %+v", r)
				}
				if on {
					scan = append(scan, time.Duration(r.ChangesScanUS)*time.Microsecond)
				}
				return nil
			})
		}
		onS, err := runs(true)
		if err != nil {
			return err
		}
		offS, err := runs(false)
		if err != nil {
			return err
		}
		sc := series{name: h.agent + ": scan cost in guest", d: scan}
		for _, s := range []series{sc, onS, offS} {
			fmt.Printf("%-34s %6d %10s %10s %10s\n", s.name, len(s.d), s.pct(0.5).Round(10*time.Microsecond),
				s.pct(0.95).Round(10*time.Microsecond), mean(s.d).Round(10*time.Microsecond))
		}
		fmt.Printf("%-34s %6s %10s\n", h.agent+": on - off (p50)", "", (onS.pct(0.5) - offS.pct(0.5)).Round(10*time.Microsecond))
	}
	return nil
}
