package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

// firstRunSeries measures a new agent's first run side by side, in one bench run:
// sandboxes restored from the template snapshot (the default) against sandboxes
// booted from the template (sandbox.template_snapshot: false, the old way), each with
// a pool of 2 and without a pool. Its phases: the whole first run as the client sees
// it, the guest's part (the program's own run, duration_ms), and the daemon's part
// (the rest: taking a pool sandbox, records, the pre-run checkpoint when there is
// one, HTTP); without a pool, also the sandbox's start on its own (POST
// /v1/sandboxes: a restore of the template snapshot against a boot). It also says how
// often the first pre-run snapshot was the shared image (no checkpoint).
func firstRunSeries(tmp, runsc, tplDir string, n int) ([]series, error) {
	off := filepath.Join(tmp, "template-snapshot-off.yaml")
	if err := os.WriteFile(off, []byte("sandbox:\n  template_snapshot: false\n"), 0o644); err != nil {
		return nil, err
	}
	m := max(3, n/2)
	var out []series
	for _, mode := range []struct {
		name  string
		pool  int
		extra []string
	}{
		{"tpl snapshot", 2, nil},
		{"boot (old)", 2, []string{"--config", off}},
		{"tpl snapshot", 0, nil},
		{"boot (old)", 0, []string{"--config", off}},
	} {
		d, err := startDaemon(tmp, runsc, tplDir, append([]string{"--pool-size", fmt.Sprint(mode.pool)}, mode.extra...)...)
		if err != nil {
			return out, err
		}
		if t := d.log.template(); t != "" && mode.pool > 0 {
			fmt.Fprintf(os.Stderr, "template snapshot: %s\n", t)
		}
		more, err := firstRuns(d, fmt.Sprintf("first run, pool=%d, %s", mode.pool, mode.name), mode.pool, m)
		out = append(out, more...)
		if err == nil && mode.pool == 0 {
			var s series
			s, err = sandboxStarts(d, "start: "+strings.TrimSuffix(mode.name, " (old)"), m)
			out = append(out, s)
		}
		d.stop()
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// firstRuns times m new agents' first runs (print(1)), with time for the pool to
// refill between them, and splits each into the guest's run and the daemon's rest.
func firstRuns(d *daemon, name string, pool, m int) ([]series, error) {
	c := client.New(d.url)
	ctx := context.Background()
	total, guest, rest := series{name: name}, series{name: "  guest: the run itself"}, series{name: "  daemon: the rest"}
	native := series{name: "  native spawn, interleaved"}
	shared := 0
	for i := 0; i < m; i++ {
		if pool > 0 {
			time.Sleep(time.Second) // let the pool refill (a restore and a warm-up run), as between real agents
		}
		// A native spawn right before each first run: on a machine whose load moves,
		// the ratio of the two p50s is the fairer one.
		t0, err := timed(func() error { return exec.Command(nativePython(), "-c", "print(1)").Run() })
		if err != nil {
			return nil, err
		}
		native.d = append(native.d, t0)
		agent := fmt.Sprintf("first-%d-%d", time.Now().UnixNano(), i)
		t := time.Now()
		r, err := c.Exec(ctx, api.ExecRequest{AgentID: agent, Language: "python", Code: "print(1)"})
		el := time.Since(t)
		if err == nil && strings.TrimSpace(r.Stdout) != "1" {
			err = fmt.Errorf("unexpected result %+v", r)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		run := time.Duration(r.DurationMS) * time.Millisecond
		total.d, guest.d, rest.d = append(total.d, el), append(guest.d, run), append(rest.d, el-run)
		if l, err := c.ListSnapshots(ctx, r.SandboxID, agent); err == nil {
			for _, sn := range l.Snapshots {
				if sn.ID == r.PreSnapshotID && sn.SizeBytes == 0 {
					shared++
				}
			}
		}
	}
	fmt.Fprintf(os.Stderr, "%s: the first pre-run snapshot was the shared template snapshot in %d of %d runs; p50 %.2fx the interleaved native spawn's\n",
		name, shared, m, float64(total.pct(0.5))/float64(native.pct(0.5)))
	return []series{total, guest, rest, native}, nil
}

// sandboxStarts times m sandbox starts through the API (no pool), each deleted
// before the next (untimed).
func sandboxStarts(d *daemon, name string, m int) (series, error) {
	c := client.New(d.url)
	ctx := context.Background()
	var last string
	return measureWith(name, m, func(int) {
		if last != "" {
			c.DeleteSandbox(ctx, last)
		}
	}, func(int) error {
		sb, err := c.CreateSandbox(ctx, api.CreateSandboxRequest{})
		last = sb.ID
		return err
	})
}

// daemonLog is a daemon's stderr: warnings and errors (and anything not a log line)
// go on to the bench's stderr; the template snapshot's settling is noted.
type daemonLog struct {
	mu      sync.Mutex
	buf     []byte
	making  bool
	tpl     string        // how the template snapshot settled, for the report
	settled chan struct{} // closed once it has
	once    sync.Once
}

func newDaemonLog() *daemonLog { return &daemonLog{settled: make(chan struct{})} }

var tookRE = regexp.MustCompile(`(image|took|bytes)=(\S+)`)

func (l *daemonLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	eachLine(&l.buf, p, func(line string) {
		switch {
		case strings.Contains(line, "making the template snapshot"):
			l.making = true
		case strings.Contains(line, "template snapshot: saved"), strings.Contains(line, "template snapshot found"):
			var parts []string
			for _, m := range tookRE.FindAllStringSubmatch(line, -1) {
				parts = append(parts, m[1]+" "+m[2])
			}
			l.tpl = strings.Join(parts, ", ")
			if strings.Contains(line, "found") {
				l.tpl = "found on disk: " + l.tpl
			}
		}
		if strings.Contains(line, "template snapshot ready") || strings.Contains(line, "template snapshot found") || strings.Contains(line, "no template snapshot") {
			l.once.Do(func() { close(l.settled) })
		}
		if !strings.Contains(line, "level=") || strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			fmt.Fprintln(os.Stderr, line)
		}
	})
	return len(p), nil
}

// eachLine appends p to *buf and calls each with every whole line in it (without its
// newline), keeping the unfinished rest in *buf: a log writer's line splitting.
func eachLine(buf *[]byte, p []byte, each func(line string)) {
	*buf = append(*buf, p...)
	for {
		i := bytes.IndexByte(*buf, '\n')
		if i < 0 {
			return
		}
		line := string((*buf)[:i])
		*buf = (*buf)[i+1:]
		each(line)
	}
}

// waitTemplate waits (at most max) for the template snapshot to settle, if the daemon
// is making one.
func (l *daemonLog) waitTemplate(max time.Duration) {
	l.mu.Lock()
	making := l.making
	l.mu.Unlock()
	if !making {
		return
	}
	select {
	case <-l.settled:
	case <-time.After(max):
	}
}

// template says how the template snapshot was made (or found), for the report.
func (l *daemonLog) template() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tpl
}
