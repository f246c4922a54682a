package guest

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// TestMain lets the test binary act as the launcher: the agent under test re-executes
// /proc/self/exe, which here is this binary.
func TestMain(m *testing.M) {
	MaybeLaunch()
	os.Exit(m.Run())
}

// sandboxUser is the non-root user tests run programs as: uid 1000 when the tests run
// as root and that user exists, else nil (programs run as the current user).
func sandboxUser() *RunUser {
	if os.Geteuid() != 0 {
		return nil
	}
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) >= 4 && fields[2] == "1000" {
			gid, err := strconv.Atoi(fields[3])
			if err != nil {
				return nil
			}
			return &RunUser{UID: 1000, GID: uint32(gid), Name: "user"}
		}
	}
	return nil
}

// testOptions returns Options for an agent whose home and run dirs are in a fresh
// temporary directory, whose runs can reach the host's toolchains, and whose programs
// run as user (nil: the current user).
func testOptions(t *testing.T, user *RunUser) Options {
	t.Helper()
	// Not t.TempDir: its parents are mode 0700, which the run user cannot traverse.
	base, err := os.MkdirTemp("", "vmexec-guest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if user == nil {
		user = &RunUser{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Name: "user"}
	}
	return Options{
		Version: "test",
		RunUser: user,
		Home:    filepath.Join(base, "home", "user"),
		RunBase: filepath.Join(base, "tmp", ".vmexec"),
		Path:    hostPath(),
	}
}

// hostPath is DefaultPath plus wherever this host keeps its toolchains.
func hostPath() string {
	dirs := filepath.SplitList(DefaultPath)
	for _, tool := range []string{"python3", "node", "rustc", "go", "bash"} {
		if p, err := exec.LookPath(tool); err == nil {
			dirs = appendNew(dirs, filepath.Dir(p))
		}
	}
	return strings.Join(dirs, string(filepath.ListSeparator))
}

func appendNew(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// toolEnv is environment the host's toolchains need in a run whose HOME is elsewhere
// (a rustup installation finds its toolchains through RUSTUP_HOME).
func toolEnv() map[string]string {
	env := map[string]string{}
	home, _ := os.UserHomeDir()
	for _, v := range []struct{ key, dir string }{{"RUSTUP_HOME", ".rustup"}, {"CARGO_HOME", ".cargo"}} {
		if val := os.Getenv(v.key); val != "" {
			env[v.key] = val
		} else if fi, err := os.Stat(filepath.Join(home, v.dir)); err == nil && fi.IsDir() {
			env[v.key] = filepath.Join(home, v.dir)
		}
	}
	return env
}

// startAgent serves opts over in-memory pipes and returns a connected client. At the
// end of the test the host closes its side and the agent must return nil.
func startAgent(t *testing.T, opts Options) *agentproto.Client {
	t.Helper()
	guestR, hostW := io.Pipe()
	hostR, guestW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- Serve(context.Background(), guestR, guestW, opts) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agentproto.Dial(ctx, hostR, hostW, hostW)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() {
		hostW.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve returned %v after EOF, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after EOF")
		}
		hostR.Close()
	})
	return c
}

// versionCmd prints a toolchain's version.
var versionCmd = map[string]string{"go": "go version"}

// agentFor starts an agent whose run user can run tool: the sandbox user if it can
// (the usual case), else the current user (a toolchain installed under /root, say).
func agentFor(t *testing.T, tool string) *agentproto.Client {
	t.Helper()
	users := []*RunUser{sandboxUser()}
	if users[0] != nil {
		users = append(users, nil)
	}
	var last *agentproto.ExecResult
	for _, u := range users {
		c := startAgent(t, testOptions(t, u))
		cmd, ok := versionCmd[tool]
		if !ok {
			cmd = tool + " --version"
		}
		last = run(t, c, &agentproto.ExecRequest{Language: "bash", Code: cmd})
		if last.Verdict == agentproto.VerdictOK {
			if u == nil && users[0] != nil {
				t.Logf("%s is not usable by uid %d on this host; running as uid %d", tool, users[0].UID, os.Getuid())
			}
			return c
		}
	}
	t.Skipf("%s is not installed on this host: %s %s", tool, last.Stderr, last.Error)
	return nil
}

// run executes req (with the host's toolchain env added) and fails the test if the
// protocol fails.
func run(t *testing.T, c *agentproto.Client, req *agentproto.ExecRequest) *agentproto.ExecResult {
	t.Helper()
	env := toolEnv()
	for k, v := range req.Env {
		env[k] = v
	}
	req.Env = env
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := c.Exec(ctx, req, nil)
	if err != nil {
		t.Fatalf("exec %s: %v", req.Language, err)
	}
	return res
}

func describe(r *agentproto.ExecResult) string {
	return "verdict=" + r.Verdict + " exit=" + strconv.Itoa(r.ExitCode) + " signal=" + r.Signal +
		" error=" + r.Error + " duration=" + strconv.FormatInt(r.DurationMS, 10) + "ms" +
		"\nstdout: " + clip(r.Stdout) + "\nstderr: " + clip(r.Stderr)
}

func clip(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "…"
	}
	return string(b)
}

// reattachable is an agent's input and output whose underlying pipes the test can
// replace, as `runsc restore` replaces a restored init's stdio.
type reattachable struct {
	mu sync.Mutex
	r  io.Reader
	w  io.Writer
}

func (s *reattachable) Read(p []byte) (int, error) {
	s.mu.Lock()
	r := s.r
	s.mu.Unlock()
	return r.Read(p)
}

func (s *reattachable) Write(p []byte) (int, error) {
	s.mu.Lock()
	w := s.w
	s.mu.Unlock()
	return w.Write(p)
}

// attach gives the agent a new connection and returns the host's ends.
func (s *reattachable) attach() (hostR *io.PipeReader, hostW *io.PipeWriter) {
	guestR, hostW := io.Pipe()
	hostR, guestW := io.Pipe()
	s.mu.Lock()
	s.r, s.w = guestR, guestW
	s.mu.Unlock()
	return hostR, hostW
}
