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
	cmd     *exec.Cmd
	url     string
	dataDir string
	log     *bytes.Buffer
	args    []string
	client  *client.Client
}

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
	t.Cleanup(func() {
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
	d := &daemon{t: t, url: "http://" + addr, dataDir: o.dataDir, log: &bytes.Buffer{}, args: args}
	d.client = client.New(d.url)
	d.start()
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	d.cmd = exec.Command(testenv.Vmexec(d.t), d.args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := d.client.Health(ctx)
		cancel()
		if err == nil {
			return
		}
		if d.cmd.ProcessState != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("daemon did not become healthy; log:\n%s", tail(d.log.String(), 40))
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop() {
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		d.cmd.Process.Kill()
		<-done
		d.t.Errorf("daemon did not stop within 60s of SIGTERM")
	}
	d.cmd = nil
}

// kill ends the daemon with SIGKILL, as a crash would.
func (d *daemon) kill() {
	d.cmd.Process.Kill()
	d.cmd.Wait()
	d.cmd = nil
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
