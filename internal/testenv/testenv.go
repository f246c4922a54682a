// Package testenv finds what the integration tests need on this host — runsc, the
// built template, a freshly built guest agent — and skips a test with a reason that says
// how to get it when something is missing. scripts/setup installs all of it, so in CI
// nothing is skipped.
package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/vmexec/vmexec/internal/template"
)

// DataDir is where scripts/setup put tools and templates: $VMEXEC_DATA_DIR or
// /var/lib/vmexec.
func DataDir() string {
	if d := os.Getenv("VMEXEC_DATA_DIR"); d != "" {
		return d
	}
	return "/var/lib/vmexec"
}

// Runsc returns the runsc binary or skips.
func Runsc(t testing.TB) string {
	t.Helper()
	for _, p := range []string{os.Getenv("VMEXEC_RUNSC"), filepath.Join(DataDir(), "tools", "runsc")} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("runsc"); err == nil {
		return p
	}
	t.Skip("runsc not installed: run scripts/setup (as root)")
	return ""
}

// Root skips unless the test runs as root (runsc needs it).
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("sandbox tests need root (runsc): run scripts/test as root")
	}
}

// Template returns the built default template or skips.
func Template(t testing.TB) template.Template {
	t.Helper()
	s := &template.Store{Dir: filepath.Join(DataDir(), "templates")}
	tpl, err := s.Get(template.Default)
	if err != nil {
		t.Skipf("default template not built (%v): run scripts/setup or `vmexec template build`", err)
	}
	return tpl
}

var (
	agentOnce sync.Once
	agentPath string
	agentErr  error
	binOnce   sync.Once
	binPath   string
	binErr    error
)

// ModuleRoot is the repository's root directory.
func ModuleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func build(out, pkg string, static bool) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = ModuleRoot()
	cmd.Env = os.Environ()
	if static {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return &buildError{pkg, string(b), err}
	}
	return nil
}

type buildError struct {
	pkg, out string
	err      error
}

func (e *buildError) Error() string { return "go build " + e.pkg + ": " + e.err.Error() + "\n" + e.out }

// Agent builds the guest agent once per test binary and returns its path.
func Agent(t testing.TB) string {
	t.Helper()
	agentOnce.Do(func() {
		dir, err := binDir("vmexec-agent-")
		if err != nil {
			agentErr = err
			return
		}
		agentPath = filepath.Join(dir, "vmexec-agent")
		agentErr = build(agentPath, "./cmd/vmexec-agent", true)
	})
	if agentErr != nil {
		t.Fatalf("build guest agent: %v", agentErr)
	}
	return agentPath
}

// Vmexec builds the vmexec binary once per test binary and returns its path.
func Vmexec(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := binDir("vmexec-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "vmexec")
		binErr = build(binPath, "./cmd/vmexec", false)
	})
	if binErr != nil {
		t.Fatalf("build vmexec: %v", binErr)
	}
	return binPath
}

// MicroVM skips unless this host has what the microvm backend needs: QEMU, qemu-img,
// the Debian cloud kernel and a static busybox.
func MicroVM(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed: run scripts/setup", bin)
		}
	}
	if k, _ := filepath.Glob("/boot/vmlinuz-*-cloud-amd64"); len(k) == 0 {
		t.Skip("no Debian cloud kernel in /boot: run scripts/setup (linux-image-cloud-amd64)")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox: run scripts/setup (busybox-static)")
	}
}

// binDir makes the directory a test binary builds prefix's binary into, named by this
// process's pid, and first removes the ones left by test binaries that have exited (a
// test binary has no hook at its end to remove its own, and each build is ~10 MB).
func binDir(prefix string) (string, error) {
	prefix += "pid"
	old, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	for _, d := range old {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), prefix))
		if err != nil || pid == os.Getpid() {
			continue // not named by a pid, or this process's
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(d)
		}
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d", prefix, os.Getpid()))
	return dir, os.MkdirAll(dir, 0o700)
}
