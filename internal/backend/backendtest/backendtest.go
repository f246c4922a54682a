// Package backendtest is the conformance suite every sandbox backend passes: the same
// tests, run against gVisor, the microVM backend and the service's in-memory fake
// alike, pin down the behaviour the backend.Backend contract promises.
//
// It has two tiers:
//
//   - RunContract: the contract itself — lifecycle, error classes, scope, snapshot
//     images — with nothing asked of the guest but the trivial program "true" (bash).
//     A backend without a real guest (an in-memory fake, a remote stub) passes it.
//   - RunGuest: what a real guest does — the five languages, state between runs,
//     isolation, no network, streaming, cancellation, limits, files, snapshots that
//     hold a process's memory.
//
// Run runs both; every real backend passes both.
package backendtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/template"
)

// Env is what the suite needs from the backend under test.
type Env struct {
	Backend backend.Backend
	// Template is a built template with the five languages (the guest tier needs its
	// tree; the contract tier only passes it along).
	Template template.Template
	// Timeout bounds each test; slow backends (TCG) need more.
	Timeout time.Duration
	// Peer, if set, is a second backend of the same kind with its own scope (another
	// state directory, as another daemon's): the Scope test checks that neither
	// sees nor removes the other's sandboxes.
	Peer backend.Backend
	// Kill, if set, ends a sandbox from outside (as the host's OOM killer or an
	// operator would). By default the suite sends SIGKILL to Info's PID.
	Kill func(t *testing.T, sb backend.Sandbox)
}

var seq atomic.Int64

func (e *Env) spec(t *testing.T) backend.Spec {
	return backend.Spec{ID: fmt.Sprintf("conf-%d-%d", os.Getpid(), seq.Add(1)), Template: e.Template, MemoryBytes: 512 << 20, MaxPIDs: 4096}
}

func (e *Env) create(t *testing.T, ctx context.Context) backend.Sandbox {
	t.Helper()
	sb, err := e.Backend.Create(ctx, e.spec(t))
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	t.Cleanup(func() { sb.Destroy(context.Background()) })
	return sb
}

func (e *Env) defaults() {
	if e.Timeout == 0 {
		e.Timeout = 2 * time.Minute
	}
}

func (e *Env) ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), e.Timeout)
	t.Cleanup(cancel)
	return ctx
}

// Run runs both tiers: the contract, then the guest.
func Run(t *testing.T, e Env) {
	t.Run("Contract", func(t *testing.T) { RunContract(t, e) })
	t.Run("Guest", func(t *testing.T) { RunGuest(t, e) })
	t.Run("Export", func(t *testing.T) { RunExport(t, e) })
}

func run(t *testing.T, ctx context.Context, sb backend.Sandbox, lang, code string) *agentproto.ExecResult {
	t.Helper()
	res, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: lang, Code: code, Limits: agentproto.Limits{TimeoutMS: 20000}}, nil)
	if err != nil {
		t.Fatalf("exec %s %q: %v", lang, code, err)
	}
	return res
}

func wantOut(t *testing.T, res *agentproto.ExecResult, want string) {
	t.Helper()
	if res.Verdict != agentproto.VerdictOK || strings.TrimSpace(string(res.Stdout)) != want {
		t.Fatalf("got verdict %s exit %d stdout %q stderr %q, want ok %q", res.Verdict, res.ExitCode, res.Stdout, res.Stderr, want)
	}
}

// RunGuest runs the guest tier: what a real guest agent in a real sandbox does.
func RunGuest(t *testing.T, e Env) {
	e.defaults()
	ctxFor := e.ctxFor

	// A created sandbox answers at once and runs each language's program.
	t.Run("CreateExec", func(t *testing.T) {
		ctx := ctxFor(t)
		sb := e.create(t, ctx)
		if err := sb.Ping(ctx); err != nil {
			t.Fatalf("ping: %v", err)
		}
		wantOut(t, run(t, ctx, sb, "python", "import math; print(math.factorial(10))"), "3628800")
		wantOut(t, run(t, ctx, sb, "bash", "echo $((6*7))"), "42")
		res := run(t, ctx, sb, "python", "import sys; print('bad', file=sys.stderr); sys.exit(3)")
		if res.ExitCode != 3 || res.Verdict != agentproto.VerdictNonzeroExit || !strings.Contains(string(res.Stderr), "bad") {
			t.Fatalf("failing program: %+v", res)
		}
		if st := sb.Info(ctx).Status; st != "running" {
			t.Fatalf("status = %s", st)
		}
	})

	// Files written by one run are there for the next: state persists between turns.
	t.Run("StatePersists", func(t *testing.T) {
		ctx := ctxFor(t)
		sb := e.create(t, ctx)
		wantOut(t, run(t, ctx, sb, "bash", "echo turn1 > ~/state.txt && echo ok"), "ok")
		wantOut(t, run(t, ctx, sb, "python", "print(open('/home/user/state.txt').read().strip())"), "turn1")
	})

	// Two sandboxes share nothing.
	t.Run("Isolation", func(t *testing.T) {
		ctx := ctxFor(t)
		a, b := e.create(t, ctx), e.create(t, ctx)
		wantOut(t, run(t, ctx, a, "bash", "echo secret > /tmp/a.txt && echo ok"), "ok")
		wantOut(t, run(t, ctx, b, "bash", "test -e /tmp/a.txt && echo visible || echo absent"), "absent")
	})

	// The host's files are not visible, and the template is never written.
	t.Run("HostInvisible", func(t *testing.T) {
		ctx := ctxFor(t)
		marker, err := os.CreateTemp("", "vmexec-host-marker-")
		if err != nil {
			t.Fatal(err)
		}
		marker.WriteString("host secret")
		marker.Close()
		defer os.Remove(marker.Name())
		sb := e.create(t, ctx)
		code := fmt.Sprintf("cat %s 2>/dev/null || echo unreadable; echo x > /etc/written-by-sandbox && echo wrote", marker.Name())
		res := run(t, ctx, sb, "bash", code)
		if strings.Contains(string(res.Stdout), "host secret") || !strings.Contains(string(res.Stdout), "unreadable") {
			t.Fatalf("host marker readable inside: %q", res.Stdout)
		}
		if _, err := os.Stat(filepath.Join(e.Template.RootFS, "etc", "written-by-sandbox")); err == nil {
			t.Fatal("a write in the sandbox reached the template on the host")
		}
	})

	// No network: neither loopback services of the host nor any outside address.
	t.Run("NoNetwork", func(t *testing.T) {
		ctx := ctxFor(t)
		sb := e.create(t, ctx)
		code := `import socket
for host, port in [("127.0.0.1", 8080), ("10.0.2.2", 80), ("1.1.1.1", 53)]:
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); print("connected", host)
    except OSError as e:
        print("failed", host)
`
		res := run(t, ctx, sb, "python", code)
		if strings.Contains(string(res.Stdout), "connected") || strings.Count(string(res.Stdout), "failed") != 3 {
			t.Fatalf("network reachable: %q %q", res.Stdout, res.Stderr)
		}
	})

	// A template whose tree is missing fails cleanly and leaves nothing behind.
	t.Run("MissingTemplate", func(t *testing.T) {
		ctx := ctxFor(t)
		sp := e.spec(t)
		sp.Template.RootFS = filepath.Join(t.TempDir(), "missing")
		sp.Template.Dir = filepath.Dir(sp.Template.RootFS)
		sb, err := e.Backend.Create(ctx, sp)
		if err == nil {
			sb.Destroy(ctx)
			t.Fatal("create with a missing template tree succeeded")
		}
		if listed(t, ctx, e.Backend, sp.ID) {
			t.Fatalf("failed create left %s behind", sp.ID)
		}
	})

	// Output streams while the program runs: the program prints a line, then waits
	// until the host has seen it (the host answers by writing a file into the sandbox,
	// over the same connection) before it prints the next. Without streaming it would
	// wait in vain and say so.
	t.Run("Streaming", func(t *testing.T) {
		ctx := ctxFor(t)
		sb := e.create(t, ctx)
		var events []string
		code := `echo one
i=0; while [ ! -e ~/go-on ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
[ -e ~/go-on ] && echo two || echo "two (the host never saw one)"`
		res, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "bash", Code: code, Limits: agentproto.Limits{TimeoutMS: 60000}},
			func(stream string, p []byte) {
				events = append(events, stream+":"+strings.TrimSpace(string(p)))
				if string(p) == "one\n" {
					if err := sb.WriteFile(ctx, "go-on", 0, strings.NewReader("")); err != nil {
						t.Errorf("write go-on: %v", err)
					}
					events = append(events, "host wrote go-on")
				}
			})
		if err != nil {
			t.Fatal(err)
		}
		got, want := strings.Join(events, " | "), "stdout:one | host wrote go-on | stdout:two"
		if got != want || string(res.Stdout) != "one\ntwo\n" || res.Verdict != agentproto.VerdictOK {
			t.Fatalf("events %q, want %q; verdict %s stdout %q", got, want, res.Verdict, res.Stdout)
		}
	})

	// A caller that goes away cancels its run: the result says canceled (no error),
	// the run's processes are gone, and the sandbox serves the next run.
	t.Run("Cancel", func(t *testing.T) {
		ctx := ctxFor(t)
		sb := e.create(t, ctx)
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		res, err := sb.Exec(cctx, &agentproto.ExecRequest{Language: "bash", Code: "sleep 300 & echo started; wait",
			Limits: agentproto.Limits{TimeoutMS: 600000}}, func(string, []byte) { cancel() })
		if err != nil {
			t.Fatalf("cancelled exec: %v", err)
		}
		if res.Verdict != agentproto.VerdictCanceled {
			t.Fatalf("verdict %s, want canceled", res.Verdict)
		}
		wantOut(t, run(t, ctx, sb, "bash", `for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = sleep ] && echo sleep-alive; done; echo checked`), "checked")
	})

	// max_output_bytes up to the server's maximum: 8 MiB under 16 MiB is ok and whole.
	t.Run("LargeOutput", func(t *testing.T) {
		ctx := ctxFor(t)
		sb := e.create(t, ctx)
		var streamed int
		res, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "python",
			Code:   "import sys\nfor _ in range(8):\n    sys.stdout.write('y' * 1048575 + '\\n')\n",
			Limits: agentproto.Limits{TimeoutMS: 120000, MaxOutputBytes: 16 << 20}}, func(_ string, p []byte) { streamed += len(p) })
		if err != nil {
			t.Fatal(err)
		}
		if res.Verdict != agentproto.VerdictOK || len(res.Stdout) != 8<<20 || streamed != 8<<20 || res.StdoutTruncated {
			t.Fatalf("verdict %s, %d bytes (%d streamed), truncated %v; want ok, 8 MiB", res.Verdict, len(res.Stdout), streamed, res.StdoutTruncated)
		}
	})

	// A request the guest refuses is ErrInvalidRequest, not a dead sandbox.
	t.Run("InvalidRequest", func(t *testing.T) {
		ctx := ctxFor(t)
		sb := e.create(t, ctx)
		_, err := sb.Exec(ctx, &agentproto.ExecRequest{Language: "bash", Code: "true", WorkDir: "/no/such/dir"}, nil)
		if !errors.Is(err, agentproto.ErrInvalidRequest) || errors.Is(err, backend.ErrSandboxDead) {
			t.Fatalf("exec in a missing working dir: %v, want ErrInvalidRequest", err)
		}
		wantOut(t, run(t, ctx, sb, "bash", "echo fine"), "fine")
	})

	// A 50 MiB file goes in and comes out byte-identical, owned by the run user; file
	// errors are the agentproto sentinels.
	t.Run("Files", func(t *testing.T) {
		ctx := ctxFor(t)
		sb := e.create(t, ctx)
		data := make([]byte, 50<<20)
		rand.New(rand.NewSource(1)).Read(data)
		if err := sb.WriteFile(ctx, "in/big.bin", 0o600, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		wantOut(t, run(t, ctx, sb, "bash", "stat -c '%u %a %s' ~/in/big.bin"), fmt.Sprintf("1000 600 %d", len(data)))
		fi, rc, err := sb.OpenFile(ctx, "/home/user/in/big.bin")
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		if sum := sha256.Sum256(data); err != nil || n != int64(len(data)) || fi.Size != int64(len(data)) || !bytes.Equal(h.Sum(nil), sum[:]) {
			t.Fatalf("read back %d bytes (info %d), %v; identical %v", n, fi.Size, err, bytes.Equal(h.Sum(nil), sum[:]))
		}
		if err := sb.MakeDir(ctx, "in/sub"); err != nil {
			t.Fatal(err)
		}
		list, err := sb.ListFiles(ctx, "in", 1)
		if err != nil || len(list) != 2 || list[0].Name != "big.bin" || list[1].Type != agentproto.FileTypeDir {
			t.Fatalf("list: %+v, %v", list, err)
		}
		if _, err := sb.StatFile(ctx, "in/missing"); !errors.Is(err, agentproto.ErrNotExist) {
			t.Errorf("stat of a missing file: %v, want ErrNotExist", err)
		}
		if _, _, err := sb.OpenFile(ctx, "in/missing"); !errors.Is(err, agentproto.ErrNotExist) {
			t.Errorf("open of a missing file: %v, want ErrNotExist", err)
		}
		if _, _, err := sb.OpenFile(ctx, "in"); !errors.Is(err, agentproto.ErrIsDir) {
			t.Errorf("open of a directory: %v, want ErrIsDir", err)
		}
		if err := sb.RemoveFile(ctx, "in", true); err != nil {
			t.Fatal(err)
		}
		wantOut(t, run(t, ctx, sb, "bash", "test -e ~/in && echo there || echo removed"), "removed")
	})

	t.Run("ForksDiffer", func(t *testing.T) { forksDiffer(t, e) })

	// A snapshot holds files and a running process's memory: write 1, snapshot, write
	// 2, roll back (destroy, then fork from the image under the same id, as the
	// service does), read 1 — for a file and for a background process's counter.
	t.Run("Snapshot", func(t *testing.T) {
		snap, ok := e.Backend.(backend.Snapshotter)
		if !ok {
			t.Skipf("backend %s has no snapshot capability", e.Backend.Name())
		}
		ctx := ctxFor(t)
		sp := e.spec(t)
		sb, err := e.Backend.Create(ctx, sp)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { sb.Destroy(context.Background()) }()
		wantOut(t, run(t, ctx, sb, "bash", MemStart), "0")
		wantOut(t, run(t, ctx, sb, "bash", "echo 1 > ~/v.txt\n"+MemBump), "1")
		img, err := snap.Snapshot(ctx, sb)
		if err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		defer snap.DeleteImage(context.Background(), img.Ref)
		wantOut(t, run(t, ctx, sb, "bash", "echo 2 > ~/v.txt\n"+MemBump), "2")
		if err := sb.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
		if sb, err = snap.Fork(ctx, img.Ref, sp); err != nil {
			t.Fatalf("roll back: %v", err)
		}
		wantOut(t, run(t, ctx, sb, "bash", "cat ~/v.txt"), "1")
		wantOut(t, run(t, ctx, sb, "bash", MemRead), "1") // the process's memory, as it was
		// The restored guest speaks the whole protocol on its new connection.
		if fi, err := sb.StatFile(ctx, "v.txt"); err != nil || fi.Size != 2 {
			t.Fatalf("stat after restore: %+v, %v", fi, err)
		}

		// Fork: an independent copy from the same image, which outlives the image.
		fork, err := snap.Fork(ctx, img.Ref, e.spec(t))
		if err != nil {
			t.Fatalf("fork: %v", err)
		}
		defer fork.Destroy(context.Background())
		if err := snap.DeleteImage(ctx, img.Ref); err != nil {
			t.Fatal(err)
		}
		wantOut(t, run(t, ctx, fork, "bash", "cat ~/v.txt; echo 3 > ~/v.txt"), "1")
		wantOut(t, run(t, ctx, sb, "bash", "cat ~/v.txt"), "1")
	})
}

func listed(t *testing.T, ctx context.Context, b backend.Backend, id string) bool {
	t.Helper()
	infos, err := b.List(ctx)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	for _, i := range infos {
		if i.ID == id {
			return true
		}
	}
	return false
}
