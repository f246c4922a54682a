// Package e2e holds the end-to-end tests: each starts the real vmexec daemon (built
// from this tree) with real runsc sandboxes and the real template, and talks to it
// through the real Go client, the CLI binary, or raw HTTP for the compatible routes.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/testenv"
)

// daemon is one running `vmexec serve`.
type daemon struct {
	t       *testing.T
	mu      sync.Mutex // guards cmd and exited
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited (one goroutine waits for it)
	url     string
	dataDir string
	log     *syncBuffer
	args    []string
	client  *client.Client
}

// syncBuffer is the daemon's log: written by the process's output copier while the
// test reads it, so it is locked.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testTimeout bounds one test that starts its own daemon, inside the binary's
// -timeout: past it the test fails with the daemon's log and the daemon is killed, so
// one hung test does not take the whole run down with no clue.
const testTimeout = 8 * time.Minute

type daemonOpts struct {
	dataDir string
	extra   []string
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startDaemon starts vmexec serve on a free port with its own data dir and the shared
// template, and waits until /health answers.
func startDaemon(t *testing.T, o daemonOpts) *daemon {
	t.Helper()
	if o.dataDir == "" {
		o.dataDir = t.TempDir()
	}
	d := startDaemonRaw(t, o)
	watchdog := time.AfterFunc(testTimeout, func() {
		t.Errorf("test still running after %v; daemon log:\n%s", testTimeout, tail(d.log.String(), 60))
		if p := d.proc(); p != nil {
			p.Kill()
		}
	})
	t.Cleanup(func() {
		watchdog.Stop()
		d.stop()
		if t.Failed() {
			t.Logf("daemon log:\n%s", tail(d.log.String(), 60))
		}
	})
	return d
}

// startDaemonRaw starts a daemon the caller must stop.
func startDaemonRaw(t *testing.T, o daemonOpts) *daemon {
	t.Helper()
	testenv.Root(t)
	runsc := testenv.Runsc(t)
	tpl := testenv.Template(t)
	agent := testenv.Agent(t)
	addr := freeAddr(t)
	args := append([]string{"serve", "--addr", addr, "--data-dir", o.dataDir, "--template-dir", filepath.Dir(tpl.Dir),
		"--runsc", runsc, "--agent", agent, "--log-level", "debug"}, o.extra...)
	d := &daemon{t: t, url: "http://" + addr, dataDir: o.dataDir, log: &syncBuffer{}, args: args}
	d.client = client.New(d.url)
	d.start()
	return d
}

// start starts the daemon and waits until /health answers; a daemon that exits
// first fails the test at once, with its log.
func (d *daemon) start() {
	d.t.Helper()
	cmd := exec.Command(testenv.Vmexec(d.t), d.args...)
	cmd.Stdout, cmd.Stderr = d.log, d.log
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	d.mu.Lock()
	d.cmd, d.exited = cmd, exited
	d.mu.Unlock()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := d.client.Health(ctx)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-exited:
			d.t.Fatalf("daemon exited at start (%v); log:\n%s", cmd.ProcessState, tail(d.log.String(), 40))
		case <-time.After(50 * time.Millisecond):
		}
	}
	d.t.Fatalf("daemon did not become healthy; log:\n%s", tail(d.log.String(), 40))
}

// proc is the running daemon's process, or nil.
func (d *daemon) proc() *os.Process {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return nil
	}
	return d.cmd.Process
}

// signal sends sig to the daemon and returns a channel closed when it has exited.
func (d *daemon) signal(sig os.Signal) <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	d.cmd.Process.Signal(sig)
	return d.exited
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop() {
	if d.proc() == nil {
		return
	}
	select {
	case <-d.signal(syscall.SIGTERM):
	case <-time.After(60 * time.Second):
		<-d.signal(syscall.SIGKILL)
		d.t.Errorf("daemon did not stop within 60s of SIGTERM")
	}
	d.mu.Lock()
	d.cmd = nil
	d.mu.Unlock()
}

// kill ends the daemon with SIGKILL, as a crash would.
func (d *daemon) kill() {
	<-d.signal(syscall.SIGKILL)
	d.mu.Lock()
	d.cmd = nil
	d.mu.Unlock()
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// runscProcs lists host processes whose command line mentions dir (runsc's --root
// lives under the daemon's data dir).
func runscProcs(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		cl := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cl, "runsc") && strings.Contains(cl, dir) {
			out = append(out, e.Name()+": "+cl)
		}
	}
	return out
}

func (d *daemon) exec(t *testing.T, agent, lang, code string) *api.ExecResult {
	t.Helper()
	return d.execReq(t, api.ExecRequest{AgentID: agent, Language: lang, Code: code})
}

func (d *daemon) execReq(t *testing.T, req api.ExecRequest) *api.ExecResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := d.client.Exec(ctx, req)
	if err != nil {
		t.Fatalf("exec %s %.60q: %v", req.Language, req.Code, err)
	}
	return res
}

func wantOK(t *testing.T, res *api.ExecResult, stdout string) {
	t.Helper()
	if res.Verdict != api.VerdictOK || strings.TrimSpace(res.Stdout) != stdout {
		t.Fatalf("verdict %s exit %d stdout %q stderr %q; want ok with %q", res.Verdict, res.ExitCode, res.Stdout, tail(res.Stderr, 10), stdout)
	}
}

func describe(res *api.ExecResult) string {
	return fmt.Sprintf("verdict=%s exit=%d lost=%v recreated=%v stdout=%.200q stderr=%.300q err=%q",
		res.Verdict, res.ExitCode, res.SandboxLost, res.SandboxRecreated, res.Stdout, res.Stderr, res.Error)
}
