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
	type way struct {
		name    string // the checkpoint's way
		restore string // the restore's row
		dir     string
		b       *gvisor.Backend
		sb      backend.Sandbox
		img     backend.Image
	}
	// The old path throughout (runsc checkpoint, restores afresh) and the new one,
	// measured in turns, so that the host's swinging load weighs on both alike.
	ways := []*way{{name: gvisor.CheckpointRunsc, restore: "restore: total (afresh)"}, {name: gvisor.CheckpointControl, restore: "restore: total (standby)"}}
	for _, w := range ways {
		dir, err := os.MkdirTemp(tmp, "phases-")
		if err != nil {
			return err
		}
		old := w.name == gvisor.CheckpointRunsc
		w.dir = dir
		w.b, err = gvisor.New(gvisor.Config{Runsc: runsc, StateDir: dir, AgentPath: filepath.Join(tmp, "vmexec-agent"), Checkpoint: w.name, NoStandby: old, Observe: log.observe})
		if err != nil {
			return err
		}
		defer w.b.Close(ctx)
		w.sb, err = w.b.Create(ctx, backend.Spec{ID: "phases-" + w.name, Template: tpl, MemoryBytes: 512 << 20})
		if err != nil {
			return err
		}
		defer w.sb.Destroy(ctx)
		// A warm sandbox as a transaction sees it: python has run (its zygote is up).
		for i := 0; i < 2; i++ {
			if _, err := w.sb.Exec(ctx, &agentproto.ExecRequest{Language: "python", Code: "print(1)", Limits: agentproto.Limits{TimeoutMS: 20000}}, nil); err != nil {
				return err
			}
		}
	}
	time.Sleep(300 * time.Millisecond) // let the zygotes' spares settle
	var sizes []int64
	for i := 0; i < n; i++ {
		for _, w := range ways {
			rsc := func(args ...string) error {
				out, err := exec.Command(runsc, append([]string{"--root", filepath.Join(w.dir, "runsc")}, args...)...).CombinedOutput()
				if err != nil {
					return fmt.Errorf("runsc %s: %v: %s", args[0], err, out)
				}
				return nil
			}
			if w.name == gvisor.CheckpointRunsc { // the process's own costs
				t := time.Now()
				if err := rsc("state", w.sb.ID()); err != nil {
					return err
				}
				log.add("runsc process: `runsc state`", time.Since(t))
				t = time.Now()
				if err := rsc("pause", w.sb.ID()); err != nil {
					return err
				}
				if err := rsc("resume", w.sb.ID()); err != nil {
					return err
				}
				log.add("runsc process: pause + resume", time.Since(t))
			}
			t := time.Now()
			im, err := w.b.Snapshot(ctx, w.sb)
			if err != nil {
				return err
			}
			log.add("snapshot: total ("+w.name+")", time.Since(t))
			sizes = append(sizes, im.SizeBytes)
			if w.img.Ref != "" {
				w.b.DeleteImage(ctx, w.img.Ref)
			}
			w.img = im
		}
	}
	for i := 0; i < max(n/2, 3); i++ {
		for _, w := range ways {
			time.Sleep(500 * time.Millisecond) // a standby is made after each restore
			t := time.Now()
			fork, err := w.b.Fork(ctx, w.img.Ref, backend.Spec{ID: fmt.Sprintf("phases-%s-r%d", w.name, i), Template: tpl, MemoryBytes: 512 << 20})
			if err != nil {
				return err
			}
			log.add(w.restore, time.Since(t))
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
