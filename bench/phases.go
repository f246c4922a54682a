package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/gvisor"
	"github.com/vmexec/vmexec/internal/template"
)

// phaseLog collects the phases the gVisor backend reports (Config.Observe).
type phaseLog struct {
	mu    sync.Mutex
	order []string
	d     map[string][]time.Duration
}

func (p *phaseLog) observe(op, phase string, d time.Duration) { p.add(op+": "+phase, d) }

func (p *phaseLog) add(name string, d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.d == nil {
		p.d = map[string][]time.Duration{}
	}
	if _, ok := p.d[name]; !ok {
		p.order = append(p.order, name)
	}
	p.d[name] = append(p.d[name], d)
}

// printPhases measures where a checkpoint's and a restore's time goes, on the gVisor
// backend used directly (no daemon, no HTTP): the cost of starting a runsc process at
// all (`runsc state`), pausing and resuming (`runsc pause` + `runsc resume`), a
// checkpoint by each way (Config.Checkpoint: `runsc checkpoint`, or one call to the
// sandbox's control server) split into its steps, and a restore (the `runsc restore`
// process until the restored agent's handshake), afresh and into a standby container
// (the gvisor backend's standby.go).
func printPhases(tmp, runsc string, tpl template.Template, n int) error {
	ctx := context.Background()
	var log phaseLog
	img := map[string]backend.Image{}
	var sizes []int64
	for _, way := range []string{gvisor.CheckpointRunsc, gvisor.CheckpointControl} {
		dir, err := os.MkdirTemp(tmp, "phases-")
		if err != nil {
			return err
		}
		// The runsc way is the old path throughout: restores afresh, no standby.
		old := way == gvisor.CheckpointRunsc
		b, err := gvisor.New(gvisor.Config{Runsc: runsc, StateDir: dir, AgentPath: filepath.Join(tmp, "vmexec-agent"), Checkpoint: way, NoStandby: old, Observe: log.observe})
		if err != nil {
			return err
		}
		defer b.Close(ctx)
		sb, err := b.Create(ctx, backend.Spec{ID: "phases-" + way, Template: tpl, MemoryBytes: 512 << 20})
		if err != nil {
			return err
		}
		defer sb.Destroy(ctx)
		// A warm sandbox as a transaction sees it: python has run (its zygote is up).
		for i := 0; i < 2; i++ {
			if _, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "python", Code: "print(1)", Limits: agentproto.Limits{TimeoutMS: 20000}}, nil); err != nil {
				return err
			}
		}
		time.Sleep(300 * time.Millisecond) // let the zygote's spare settle
		rsc := func(args ...string) error {
			out, err := exec.Command(runsc, append([]string{"--root", filepath.Join(dir, "runsc")}, args...)...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("runsc %s: %v: %s", args[0], err, out)
			}
			return nil
		}
		for i := 0; i < n; i++ {
			if way == gvisor.CheckpointRunsc { // the process's own costs, once
				t := time.Now()
				if err := rsc("state", sb.ID()); err != nil {
					return err
				}
				log.add("runsc process: `runsc state`", time.Since(t))
				t = time.Now()
				if err := rsc("pause", sb.ID()); err != nil {
					return err
				}
				if err := rsc("resume", sb.ID()); err != nil {
					return err
				}
				log.add("runsc process: pause + resume", time.Since(t))
			}
			t := time.Now()
			im, err := b.Snapshot(ctx, sb)
			if err != nil {
				return err
			}
			log.add("snapshot: total ("+way+")", time.Since(t))
			sizes = append(sizes, im.SizeBytes)
			if old, ok := img[way]; ok {
				b.DeleteImage(ctx, old.Ref)
			}
			img[way] = im
		}
		restore := "restore: total (standby)"
		if old {
			restore = "restore: total (afresh)"
		}
		for i := 0; i < max(n/2, 3); i++ {
			time.Sleep(300 * time.Millisecond) // a standby is made after each restore
			t := time.Now()
			fork, err := b.Fork(ctx, img[way].Ref, backend.Spec{ID: fmt.Sprintf("phases-%s-r%d", way, i), Template: tpl, MemoryBytes: 512 << 20})
			if err != nil {
				return err
			}
			log.add(restore, time.Since(t))
			fork.Destroy(ctx)
		}
	}
	sort.Slice(sizes, func(i, j int) bool { return sizes[i] < sizes[j] })
	fmt.Printf("\n%-44s %6s %10s %10s   (image p50 %.1f MB)\n", "phases (gvisor backend, no daemon)", "n", "p50", "p95", float64(sizes[len(sizes)/2])/1e6)
	for _, name := range log.order {
		s := series{name: name, d: log.d[name]}
		fmt.Printf("%-44s %6d %10s %10s\n", name, len(s.d), s.pct(0.5).Round(100*time.Microsecond), s.pct(0.95).Round(100*time.Microsecond))
	}
	return nil
}
