package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/gvisor"
	"github.com/vmexec/vmexec/internal/history/sqlite"
	"github.com/vmexec/vmexec/internal/sandbox"
	"github.com/vmexec/vmexec/internal/template"
)

// The rollback section: where a rollback's time goes, and each change to it side by
// side. Each way is a sandbox service (no daemon, no HTTP; the transactions table
// has the API's figures) on a gVisor backend of its own configuration whose phases
// are observed (Config.Observe); the samples are taken in turns across the ways, with
// the native spawn sampled in the same turns as the baseline.

// rollbackWay is one configuration of the restore path.
type rollbackWay struct {
	name string
	cfg  func(*gvisor.Config)

	svc     *sandbox.Service
	be      *gvisor.Backend
	sandbox string // the agent's sandbox
	snap    string // its snapshot the rollbacks go back to
	mu      sync.Mutex
	phases  map[string][]time.Duration // "restore: ..." phases, by name
	order   []string
	fork    time.Duration // the last Fork's total (backend)
}

var rollbackWays = []*rollbackWay{
	{name: "before: runsc restore", cfg: func(c *gvisor.Config) {
		c.Restore, c.Standbys, c.NoStandbyWait = gvisor.RestoreRunsc, 1, true
	}},
	{name: "+control restore", cfg: func(c *gvisor.Config) {
		c.Restore, c.Standbys, c.NoStandbyWait = gvisor.RestoreControl, 1, true
	}},
	{name: "+wait, 2 standbys (now)", cfg: func(c *gvisor.Config) {}},
}

func (w *rollbackWay) observe(op, phase string, d time.Duration) {
	if op != "restore" {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.phases == nil {
		w.phases = map[string][]time.Duration{}
	}
	if _, ok := w.phases[phase]; !ok {
		w.order = append(w.order, phase)
	}
	w.phases[phase] = append(w.phases[phase], d)
	if strings.HasPrefix(phase, "total") {
		w.fork = d
	}
}

func (w *rollbackWay) lastFork() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	d := w.fork
	w.fork = 0
	return d
}

// start makes w's service and its agent's sandbox, warm (python's zygote up), and a
// pinned snapshot of it.
func (w *rollbackWay) start(ctx context.Context, tmp, runsc string, tpl template.Template) error {
	dir, err := os.MkdirTemp(tmp, "rollback-")
	if err != nil {
		return err
	}
	cfg := gvisor.Config{Runsc: runsc, StateDir: filepath.Join(dir, "gvisor"), AgentPath: filepath.Join(tmp, "vmexec-agent"), Observe: w.observe}
	w.cfg(&cfg)
	if w.be, err = gvisor.New(cfg); err != nil {
		return err
	}
	hist, err := sqlite.Open(ctx, filepath.Join(dir, "history.db"))
	if err != nil {
		return err
	}
	scfg := sandbox.DefaultConfig()
	scfg.PoolSize = 0
	w.svc, err = sandbox.New(scfg, sandbox.Deps{Backends: []backend.Backend{w.be}, Template: tpl, History: hist,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	if err := w.svc.Start(ctx); err != nil {
		return err
	}
	for i := 0; i < 3; i++ {
		r, err := w.exec(ctx, "print(0)")
		if err != nil {
			return err
		}
		w.sandbox = r.SandboxID
	}
	sn, err := w.svc.CreateSnapshot(ctx, w.sandbox, api.CreateSnapshotRequest{Pinned: true})
	w.snap = sn.ID
	return err
}

func (w *rollbackWay) exec(ctx context.Context, code string) (*api.ExecResult, error) {
	r, err := w.svc.Exec(ctx, api.ExecRequest{AgentID: "rb", Language: "python", Code: code})
	if err == nil && r.Verdict != api.VerdictOK {
		err = fmt.Errorf("unexpected result %+v", r)
	}
	return r, err
}

func (w *rollbackWay) rollback(ctx context.Context) error {
	_, err := w.svc.Rollback(ctx, w.sandbox, api.RollbackRequest{SnapshotID: w.snap})
	return err
}

func (w *rollbackWay) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if w.svc != nil {
		w.svc.Close(ctx)
	}
}

// printRollback prints the rollback section: the service's Rollback back to back and
// 300 ms after a run that wrote a file, what the service adds to the backend's
// restore (the Fork), and the restore's phases, for each way side by side.
func printRollback(tmp, runsc string, tpl template.Template, n int) error {
	ctx := context.Background()
	for _, w := range rollbackWays {
		defer w.stop()
		if err := w.start(ctx, tmp, runsc, tpl); err != nil {
			return fmt.Errorf("rollback, %s: %w", w.name, err)
		}
	}
	time.Sleep(time.Second)
	type row struct {
		name string
		d    [][]time.Duration // [way]
	}
	rows := []*row{
		{name: "native python3 -c print(1), same turns"},
		{name: "rollback, back to back"},
		{name: "  of which the service (rollback - Fork)"},
		{name: "rollback, 300ms after a file write"},
		{name: "  of which the service (rollback - Fork)"},
	}
	for _, r := range rows {
		r.d = make([][]time.Duration, len(rollbackWays))
	}
	timedRollback := func(i int, w *rollbackWay, total, service *row) error {
		w.lastFork()
		t := time.Now()
		if err := w.rollback(ctx); err != nil {
			return fmt.Errorf("rollback, %s: %w", w.name, err)
		}
		d := time.Since(t)
		total.d[i] = append(total.d[i], d)
		if f := w.lastFork(); f > 0 {
			service.d[i] = append(service.d[i], d-f)
		}
		return nil
	}
	rounds := max(n/3, 3)
	for r := 0; r < rounds; r++ {
		for i, w := range rollbackWays {
			for k := 0; k < 3; k++ {
				t := time.Now()
				if err := exec.Command(nativePython(), "-c", "print(1)").Run(); err != nil {
					return err
				}
				rows[0].d[i] = append(rows[0].d[i], time.Since(t))
			}
			time.Sleep(500 * time.Millisecond) // standbys made: the first of a burst finds one
			for k := 0; k < 4; k++ {
				if err := timedRollback(i, w, rows[1], rows[2]); err != nil {
					return err
				}
			}
			for k := 0; k < 2; k++ {
				if _, err := w.exec(ctx, fmt.Sprintf("open('/home/user/n.txt', 'w').write('%d')", k)); err != nil {
					return fmt.Errorf("rollback, %s: %w", w.name, err)
				}
				time.Sleep(300 * time.Millisecond)
				if err := timedRollback(i, w, rows[3], rows[4]); err != nil {
					return err
				}
			}
		}
	}
	var nat series
	for _, d := range rows[0].d {
		nat.d = append(nat.d, d...)
	}
	native := nat.pct(0.5)
	fmt.Printf("\nrollback (sandbox service, no HTTP): p50 ms, p50/native, p95 ms; samples in turns across the columns;\n")
	fmt.Printf("native = %s (p50 of the first row, all columns)\n", native.Round(100*time.Microsecond))
	fmt.Printf("%-44s", "")
	for _, w := range rollbackWays {
		fmt.Printf(" | %-24.24s", w.name)
	}
	fmt.Println()
	cell := func(d []time.Duration) {
		if len(d) == 0 {
			fmt.Printf(" | %24s", "-")
			return
		}
		s := series{d: d}
		fmt.Printf(" | %7.1f %6.2fx %8.1f", ms(s.pct(0.5)), float64(s.pct(0.5))/float64(native), ms(s.pct(0.95)))
	}
	for _, r := range rows {
		fmt.Printf("%-44s", fmt.Sprintf("%s (n=%d)", r.name, len(r.d[0])))
		for _, d := range r.d {
			cell(d)
		}
		fmt.Println()
	}
	// The backend's phases, every restore of the section (both kinds of turn).
	var names []string
	seen := map[string]bool{}
	for _, w := range rollbackWays {
		for _, p := range w.order {
			if !seen[p] {
				seen[p] = true
				names = append(names, p)
			}
		}
	}
	sort.SliceStable(names, func(i, j int) bool {
		return strings.HasPrefix(names[i], "total") && !strings.HasPrefix(names[j], "total")
	})
	for _, p := range names {
		fmt.Printf("%-44s", "restore: "+p)
		for _, w := range rollbackWays {
			cell(w.phases[p])
		}
		fmt.Println()
	}
	return nil
}
