package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// netLab is a private network the cluster test builds and tears down: a hub
// namespace holding a bridge, and one namespace per host (PostgreSQL, the S3
// server, each daemon, each router, the test's client) joined to the bridge by a
// veth pair and given an address in 10.213.0.0/24 inside its namespace only. The
// host's own namespace gets no address and no route into it, so no traffic leaves
// the lab; the test reaches it by dialing from inside the client namespace.
type netLab struct {
	t      *testing.T
	prefix string // namespace names begin with it
	hub    string
	mu     sync.Mutex
	procs  []*labProc
}

const labNet = "10.213.0"

// labPrefix begins the namespaces of every lab, so a run can clear what a killed
// earlier run left behind.
const labPrefix = "vmxc"

// labProc is a process running in a lab namespace.
type labProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  *syncBuffer
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// newNetLab creates the hub namespace and its bridge; everything is removed when
// the test ends, pass or fail.
func newNetLab(t *testing.T) *netLab {
	t.Helper()
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("the cluster test needs iproute2's ip (network namespaces)")
	}
	clearStaleLabs()
	b := make([]byte, 2)
	rand.Read(b)
	l := &netLab{t: t, prefix: labPrefix + hex.EncodeToString(b)}
	l.hub = l.prefix + "-hub"
	if err := ipCmd("netns", "add", l.hub); err != nil {
		t.Skipf("cannot create network namespaces here: %v", err)
	}
	t.Cleanup(l.close)
	for _, args := range [][]string{
		{"-n", l.hub, "link", "add", "br0", "type", "bridge"},
		{"-n", l.hub, "link", "set", "br0", "up"},
		{"-n", l.hub, "link", "set", "lo", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// clearStaleLabs deletes namespaces a killed earlier run of this test left.
func clearStaleLabs() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		name := strings.Fields(line + " x")[0]
		if strings.HasPrefix(name, labPrefix) && len(name) > len(labPrefix)+4 && name[len(labPrefix)+4] == '-' {
			// Only namespaces no live process of ours uses: `ip netns pids` lists them.
			pids, _ := exec.Command("ip", "netns", "pids", name).Output()
			if len(strings.TrimSpace(string(pids))) == 0 {
				exec.Command("ip", "netns", "del", name).Run()
			}
		}
	}
}

// host adds namespace name with address 10.213.0.<octet> and returns the address.
func (l *netLab) host(name string, octet int) string {
	l.t.Helper()
	ns := l.ns(name)
	hv := fmt.Sprintf("vh%s%d", l.prefix[len(labPrefix):], octet)
	addr := fmt.Sprintf("%s.%d", labNet, octet)
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"link", "add", hv, "netns", l.hub, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", l.hub, "link", "set", hv, "master", "br0", "up"},
		{"-n", ns, "addr", "add", addr + "/24", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			l.t.Fatal(err)
		}
	}
	return addr
}

func (l *netLab) ns(name string) string { return l.prefix + "-" + name }

// start runs argv in network namespace ns (via nsenter --net, which execs it: the
// process is argv[0] itself; not `ip netns exec`, whose fresh /sys hides the
// cgroup hierarchy runsc needs), in its own process group, logging to a buffer.
func (l *netLab) start(name, ns string, env []string, argv ...string) *labProc {
	l.t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + filepath.Join("/var/run/netns", l.ns(ns)), "--"}, argv...)...)
	cmd.Env = append(os.Environ(), env...)
	p := &labProc{name: name, cmd: cmd, done: make(chan struct{}), log: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", name, err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	l.mu.Lock()
	l.procs = append(l.procs, p)
	l.mu.Unlock()
	return p
}

// kill SIGKILLs p's process group and waits for it.
func (p *labProc) kill() {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// stop SIGTERMs p, then kills it after grace.
func (p *labProc) stop(grace time.Duration) {
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

func (p *labProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// close stops every process (newest first), then deletes the namespaces.
func (l *netLab) close() {
	l.mu.Lock()
	procs := l.procs
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop(30 * time.Second)
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], l.prefix+"-") {
			if err := ipCmd("netns", "del", f[0]); err != nil {
				l.t.Logf("cleanup: %v", err)
			}
		}
	}
}

// dial connects from inside namespace ns: a goroutine locked to its OS thread
// enters the namespace, creates the socket there (it stays in that namespace for
// its whole life), and returns to the host's namespace; a thread that cannot
// return is never reused (it ends with its goroutine).
func (l *netLab) dial(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	path := filepath.Join("/var/run/netns", l.ns(ns))
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		ch := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			orig, err := os.Open("/proc/thread-self/ns/net")
			if err != nil {
				ch <- result{nil, err}
				runtime.UnlockOSThread()
				return
			}
			defer orig.Close()
			target, err := os.Open(path)
			if err != nil {
				ch <- result{nil, err}
				runtime.UnlockOSThread()
				return
			}
			defer target.Close()
			if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
				ch <- result{nil, fmt.Errorf("setns %s: %w", ns, err)}
				runtime.UnlockOSThread()
				return
			}
			c, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
			ch <- result{c, err}
		}()
		r := <-ch
		return r.c, r.err
	}
}
