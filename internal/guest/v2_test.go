package guest

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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// events records what the host saw of a run, in order.
type events struct {
	mu  sync.Mutex
	log []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	e.log = append(e.log, s)
	e.mu.Unlock()
}

func (e *events) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.log, " | ")
}

// waitForFile is a bash fragment that waits (at most 20 s) for ~/$1 to exist and says
// whether it did.
const waitForFile = `i=0; while [ ! -e ~/"$F" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
[ -e ~/"$F" ] && echo two || echo "two (the host never saw one)"`

// Output reaches the host while the program runs: the program prints a line, then
// waits until the host has answered that line (by writing a file, over the same
// connection) before it prints the next. Without streaming it would wait in vain.
func TestStreamingOutput(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	ctx := context.Background()
	var ev events
	res, err := c.Exec(ctx, &agentproto.ExecRequest{Language: "bash", Code: "echo one\n" + waitForFile,
		Env: map[string]string{"F": "go-on"}, Limits: agentproto.Limits{TimeoutMS: 30000}},
		func(stream string, p []byte) {
			ev.add(stream + ":" + strings.TrimSpace(string(p)))
			if string(p) == "one\n" {
				if err := c.WriteFile(ctx, "go-on", 0, strings.NewReader("")); err != nil {
					t.Errorf("write go-on: %v", err)
				}
				ev.add("host wrote go-on")
			}
		})
	if err != nil {
		t.Fatal(err)
	}
	if want := "stdout:one | host wrote go-on | stdout:two"; ev.String() != want || string(res.Stdout) != "one\ntwo\n" || res.Verdict != agentproto.VerdictOK {
		t.Errorf("events %q, want %q; %s", ev.String(), want, describe(res))
	}
}

// A cancelled run is killed with its whole process group and ends canceled; the
// agent serves the next run as usual.
func TestCancelRun(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var pid int
	res, err := c.Exec(ctx, &agentproto.ExecRequest{Language: "bash", Code: "sleep 60 & echo $!; wait",
		Limits: agentproto.Limits{TimeoutMS: 60000}}, func(stream string, p []byte) {
		pid, _ = strconv.Atoi(strings.TrimSpace(string(p)))
		cancel()
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != agentproto.VerdictCanceled {
		t.Errorf("got %s, want canceled", describe(res))
	}
	if pid == 0 {
		t.Fatalf("no pid in %q", res.Stdout)
	}
	waitFor(t, "the run's background sleep to die", func() bool { return !aliveNotZombie(pid) })
	if r := run(t, c, &agentproto.ExecRequest{Language: "bash", Code: "echo after"}); r.Verdict != agentproto.VerdictOK || string(r.Stdout) != "after\n" {
		t.Errorf("run after the cancel: %s", describe(r))
	}

	// A python run, forked by the zygote once it is warm, is cancelled the same way.
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		res, err := c.Exec(ctx, &agentproto.ExecRequest{Language: "python", Code: "import time\nprint('x', flush=True)\ntime.sleep(60)\n",
			Limits: agentproto.Limits{TimeoutMS: 60000}}, func(string, []byte) { cancel() })
		cancel()
		if err != nil || res.Verdict != agentproto.VerdictCanceled {
			t.Errorf("python run %d: %v, %v; want canceled", i, res, err)
		}
	}
}

// A run cancelled while the agent looks at the background processes it left (whether
// they are a fork bomb) stops the look at once and ends canceled, its group killed, as
// a run cancelled while it runs.
func TestCancelDuringLeftoverLook(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var pid int
	cancelledAt := make(chan time.Time, 1)
	var once sync.Once
	// Never steady: one task always running, the other's tasks changing.
	res, err := c.Exec(ctx, &agentproto.ExecRequest{Language: "bash",
		Code:   "(while :; do :; done) & echo $$ $!; (while :; do sleep 0.05; done) &",
		Limits: agentproto.Limits{TimeoutMS: 60000}}, func(stream string, p []byte) {
		once.Do(func() {
			var pgid int
			fmt.Sscan(string(p), &pgid, &pid)
			t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) }) // without the fix the group stays
			time.AfterFunc(500*time.Millisecond, func() { cancelledAt <- time.Now(); cancel() })
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-cancelledAt:
		if d := time.Since(at); d > time.Second {
			t.Errorf("the run returned %v after the cancel", d)
		}
	default:
		t.Fatalf("the run returned before the cancel: %s", describe(res))
	}
	if res.Verdict != agentproto.VerdictCanceled {
		t.Errorf("got %s, want canceled", describe(res))
	}
	if pid == 0 {
		t.Fatalf("no pid in %q", res.Stdout)
	}
	waitFor(t, "the run's background loop to die", func() bool { return !aliveNotZombie(pid) })
}

// A signal reaches the run's process group; the program handles it as it likes.
func TestSignalRun(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	var r *agentproto.Run
	var once sync.Once
	r, err := c.Start(&agentproto.ExecRequest{Language: "bash",
		Code:   "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.05; done",
		Limits: agentproto.Limits{TimeoutMS: 30000}}, func(stream string, p []byte) {
		if string(p) == "ready\n" {
			once.Do(func() { r.Signal("TERM") })
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Wait(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 7 || string(res.Stdout) != "ready\ngot TERM\n" {
		t.Errorf("got %s; want exit 7 after the trap", describe(res))
	}
}

// max_output_bytes up to the server's maximum works: 8 MiB under a 16 MiB limit is
// all there and ok; past the limit the run is cut exactly at it and killed.
func TestLargeOutput(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	const mib = 1 << 20
	for _, tc := range []struct {
		name    string
		write   int
		verdict string
		want    int
	}{
		{"8 MiB under 16 MiB", 8 * mib, agentproto.VerdictOK, 8 * mib},
		{"20 MiB over 16 MiB", 20 * mib, agentproto.VerdictOutputLimit, 16 * mib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var streamed int
			code := "import sys\nfor _ in range(" + strconv.Itoa(tc.write/mib) + "):\n    sys.stdout.write('y' * 1048575 + '\\n')\n"
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			res, err := c.Exec(ctx, &agentproto.ExecRequest{Language: "python", Code: code,
				Limits: agentproto.Limits{MaxOutputBytes: 16 * mib, TimeoutMS: 60000}}, func(_ string, p []byte) {
				streamed += len(p)
				if len(p) > agentproto.ChunkSize {
					t.Errorf("a chunk of %d bytes", len(p))
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			truncated := tc.verdict == agentproto.VerdictOutputLimit
			if res.Verdict != tc.verdict || len(res.Stdout) != tc.want || streamed != tc.want || res.StdoutTruncated != truncated {
				t.Errorf("verdict %s, %d bytes (%d streamed), truncated %v; want %s, %d bytes, truncated %v; error %q stderr %q",
					res.Verdict, len(res.Stdout), streamed, res.StdoutTruncated, tc.verdict, tc.want, truncated, res.Error, clip(res.Stderr))
			}
		})
	}
}

// A request the agent cannot honour is refused as invalid, and never runs.
func TestInvalidRequests(t *testing.T) {
	opts := testOptions(t, sandboxUser())
	c := startAgent(t, opts)
	if err := os.WriteFile(filepath.Join(opts.Home, "a-file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		req  agentproto.ExecRequest
	}{
		{"missing workdir", agentproto.ExecRequest{WorkDir: "no/such/dir"}},
		{"workdir is a file", agentproto.ExecRequest{WorkDir: "a-file"}},
		{"empty env name", agentproto.ExecRequest{Env: map[string]string{"": "x"}}},
		{"env name with =", agentproto.ExecRequest{Env: map[string]string{"A=B": "x"}}},
		{"env name with NUL", agentproto.ExecRequest{Env: map[string]string{"A\x00": "x"}}},
		{"empty PATH", agentproto.ExecRequest{Env: map[string]string{"PATH": ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req
			req.Language, req.Code = "bash", "touch ~/ran"
			res, err := c.Exec(context.Background(), &req, nil)
			if !errors.Is(err, agentproto.ErrInvalidRequest) {
				t.Errorf("got %v, %v; want ErrInvalidRequest", res, err)
			}
			if _, err := os.Stat(filepath.Join(opts.Home, "ran")); err == nil {
				t.Error("the program ran")
			}
		})
	}
}

// Files go in and out whole, owned by the run user; what is not there, or not what the
// call expects, is the matching error.
func TestFiles(t *testing.T) {
	opts := testOptions(t, sandboxUser())
	c := startAgent(t, opts)
	ctx := context.Background()

	// A 50 MiB file, into a directory that does not exist yet, and back.
	data := make([]byte, 50<<20)
	rand.New(rand.NewSource(7)).Read(data)
	if err := c.WriteFile(ctx, "deep/er/big.bin", 0o640, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(opts.Home, "deep/er/big.bin")
	for _, p := range []string{path, filepath.Dir(path), filepath.Dir(filepath.Dir(path))} {
		if fi, err := os.Stat(p); err != nil || fileUID(fi) != opts.RunUser.UID {
			t.Errorf("%s: %v, owner %d, want %d", p, err, fileUID(fi), opts.RunUser.UID)
		}
	}
	fi, rc, err := c.OpenFile(ctx, "/"+strings.TrimPrefix(path, "/"))
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, err := io.Copy(h, rc)
	rc.Close()
	if sum := sha256.Sum256(data); err != nil || n != int64(len(data)) || !bytes.Equal(h.Sum(nil), sum[:]) {
		t.Fatalf("read back %d bytes, %v; identical: %v", n, err, bytes.Equal(h.Sum(nil), sum[:]))
	}
	if fi.Type != agentproto.FileTypeFile || fi.Size != int64(len(data)) || fi.Mode != 0o640 || fi.Path != path || fi.Name != "big.bin" {
		t.Errorf("info %+v", fi)
	}
	// The run user can use it, and a program sees it.
	r := run(t, c, &agentproto.ExecRequest{Language: "bash", Code: "wc -c < deep/er/big.bin; echo x >> deep/er/big.bin && echo appended"})
	if string(r.Stdout) != strconv.Itoa(len(data))+"\nappended\n" {
		t.Errorf("program on the written file: %s", describe(r))
	}

	// An early close stops the stream; the connection goes on.
	_, rc, err = c.OpenFile(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	rc.Read(make([]byte, 100))
	rc.Close()
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping after an early close: %v", err)
	}

	if err := c.MakeDir(ctx, "made/a/b"); err != nil {
		t.Fatal(err)
	}
	if err := c.MakeDir(ctx, "made/a/b"); err != nil {
		t.Errorf("mkdir of an existing dir: %v", err)
	}
	if err := c.WriteFile(ctx, "made/a/f.txt", 0, strings.NewReader("hello")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("f.txt", filepath.Join(opts.Home, "made/a/link")); err != nil {
		t.Fatal(err)
	}
	list, err := c.ListFiles(ctx, "made", 3)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range list {
		got = append(got, strings.TrimPrefix(e.Path, opts.Home+"/")+":"+e.Type)
	}
	if want := "made/a:dir made/a/b:dir made/a/f.txt:file made/a/link:symlink"; strings.Join(got, " ") != want {
		t.Errorf("list: %q, want %q", strings.Join(got, " "), want)
	}
	if list, err := c.ListFiles(ctx, "made", 1); err != nil || len(list) != 1 {
		t.Errorf("list depth 1: %+v, %v", list, err)
	}
	if fi, err := c.StatFile(ctx, "made/a/f.txt"); err != nil || fi.Size != 5 || fi.Mode != 0o644 {
		t.Errorf("stat: %+v, %v", fi, err)
	}
	if fi, err := c.StatFile(ctx, "made/a/link"); err != nil || fi.Type != agentproto.FileTypeSymlink {
		t.Errorf("stat of a symlink: %+v, %v", fi, err)
	}

	errCases := []struct {
		name string
		call func() error
		want error
	}{
		{"open missing", func() error { _, _, err := c.OpenFile(ctx, "nope"); return err }, agentproto.ErrNotExist},
		{"stat missing", func() error { _, err := c.StatFile(ctx, "nope"); return err }, agentproto.ErrNotExist},
		{"list missing", func() error { _, err := c.ListFiles(ctx, "nope", 1); return err }, agentproto.ErrNotExist},
		{"remove missing", func() error { return c.RemoveFile(ctx, "nope", false) }, agentproto.ErrNotExist},
		{"open a dir", func() error { _, _, err := c.OpenFile(ctx, "made"); return err }, agentproto.ErrIsDir},
		{"write over a dir", func() error { return c.WriteFile(ctx, "made", 0, strings.NewReader("x")) }, agentproto.ErrIsDir},
		{"remove a full dir", func() error { return c.RemoveFile(ctx, "made", false) }, agentproto.ErrIsDir},
		{"list a file", func() error { _, err := c.ListFiles(ctx, "made/a/f.txt", 1); return err }, agentproto.ErrNotDir},
		{"write under a file", func() error { return c.WriteFile(ctx, "made/a/f.txt/x", 0, strings.NewReader("x")) }, agentproto.ErrNotDir},
		{"mkdir over a file", func() error { return c.MakeDir(ctx, "made/a/f.txt") }, agentproto.ErrNotDir},
		{"empty path", func() error { _, err := c.StatFile(ctx, ""); return err }, agentproto.ErrInvalidPath},
		{"remove /", func() error { return c.RemoveFile(ctx, "/", true) }, agentproto.ErrInvalidPath},
	}
	for _, tc := range errCases {
		if err := tc.call(); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
	// A write whose body fails half-way leaves nothing: neither the file nor a
	// temporary one.
	broken := io.MultiReader(bytes.NewReader(data[:1<<20]), errReader{})
	if err := c.WriteFile(ctx, "made/half.bin", 0, broken); err == nil {
		t.Error("a write with a failing body succeeded")
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatalf("ping after a failed write: %v", err)
	}
	waitFor(t, "the failed write's temporary file to go", func() bool {
		ents, _ := os.ReadDir(filepath.Join(opts.Home, "made"))
		for _, e := range ents {
			if e.Name() != "a" {
				return false
			}
		}
		return true
	})

	if err := c.RemoveFile(ctx, "made", true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(opts.Home, "made")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("made after a recursive remove: %v", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("the body broke") }

// waitFor polls cond until it holds (at most 10 s).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Errorf("timed out waiting for %s", what)
			return
		}
	}
}

// aliveNotZombie reports whether pid is a live process (a zombie is dead, only not
// yet reaped: the agent under test is not PID 1).
func aliveNotZombie(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !bytes.Contains(b, []byte(") Z "))
}

// A slow host slows the program down instead of filling the agent's memory: while the
// host holds on to the first chunk, the program ends up blocked writing to its stdout
// pipe, having written only a little of its 4 MiB; once the host reads on, all of it
// arrives.
func TestFlowControl(t *testing.T) {
	opts := testOptions(t, sandboxUser())
	c := startAgent(t, opts)
	code := `import os, sys
home = os.path.expanduser('~')
open(home + '/pid.tmp', 'w').write(str(os.getpid()))
os.rename(home + '/pid.tmp', home + '/pid')
for i in range(64):
    sys.stdout.buffer.write(b'z' * 65536)
    sys.stdout.flush()
    open(home + '/progress.tmp', 'w').write(str(i + 1))
    os.rename(home + '/progress.tmp', home + '/progress')
`
	t0 := time.Now()
	release := make(chan struct{})
	var once sync.Once
	done := make(chan *agentproto.ExecResult, 1)
	go func() {
		res, err := c.Exec(context.Background(), &agentproto.ExecRequest{Language: "python", Code: code,
			Limits: agentproto.Limits{TimeoutMS: 60000, MaxOutputBytes: 16 << 20}}, func(string, []byte) {
			once.Do(func() { <-release })
		})
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	defer once.Do(func() {})
	var pid int
	waitFor(t, "the program's pid", func() bool {
		b, err := os.ReadFile(filepath.Join(opts.Home, "pid"))
		pid, _ = strconv.Atoi(string(b))
		return err == nil && pid > 0
	})
	wchan := func() string {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/wchan")
		return string(b)
	}
	for end := time.Now().Add(10 * time.Second); !strings.Contains(wchan(), "pipe_write"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			close(release)
			<-done
			t.Skipf("the program was never seen blocked in a pipe write (wchan %q): this kernel may not report it", wchan())
		}
	}
	b, _ := os.ReadFile(filepath.Join(opts.Home, "progress"))
	written, _ := strconv.Atoi(string(b))
	if written > 16 {
		t.Errorf("the program wrote %d of its 64 chunks while the host read none: output is buffered without bound", written)
	}
	t.Logf("blocked after %d chunks of 64 KiB (%v)", written, time.Since(t0))
	close(release)
	res := <-done
	t.Logf("done (%v)", time.Since(t0))
	if res == nil || res.Verdict != agentproto.VerdictOK || len(res.Stdout) != 4<<20 {
		t.Fatalf("after the host read on: %v", res)
	}
}

// A new connection starts a new session: a run the previous host left behind is killed,
// and nothing of it reaches the new host, whose operation IDs start again from the
// same numbers (as a restored sandbox's new host's do).
func TestNewSessionEndsOldRuns(t *testing.T) {
	opts := testOptions(t, sandboxUser())
	opts.Persistent = true
	var stdio reattachable
	hostR, hostW := stdio.attach()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, &stdio, &stdio, opts) }()
	defer func() {
		cancel()
		<-done
	}()

	c1, err := agentproto.Dial(ctx, hostR, hostW, nil)
	if err != nil {
		t.Fatal(err)
	}
	pids := make(chan int, 1)
	go c1.Exec(ctx, &agentproto.ExecRequest{Language: "bash", Code: "sleep 60 & echo $!; wait; echo old-run-finished",
		Limits: agentproto.Limits{TimeoutMS: 60000}}, func(_ string, p []byte) {
		pid, _ := strconv.Atoi(strings.TrimSpace(string(p)))
		pids <- pid
	})
	pid := <-pids
	hostW.Close() // the first host goes away mid-run

	hostR2, hostW2 := stdio.attach()
	c2, err := agentproto.Dial(ctx, hostR2, hostW2, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The same operation ID as the old run's (2): only this run's frames may come.
	if r := run(t, c2, &agentproto.ExecRequest{Language: "bash", Code: "echo new"}); string(r.Stdout) != "new\n" || r.Verdict != agentproto.VerdictOK {
		t.Errorf("run on the new connection: %s", describe(r))
	}
	waitFor(t, "the old run's sleep to be killed", func() bool { return !aliveNotZombie(pid) })
	hostR.Close()
}

// A host slow to take the output still gets all of it: the program has long written
// its last bytes and exited while the host is still reading chunks, and the drain at
// the end waits for the host rather than dropping what is still in the pipe.
func TestSlowHostGetsAllOutput(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	res, err := c.Exec(context.Background(), &agentproto.ExecRequest{Language: "python",
		Code:   "import sys\nsys.stdout.write('s' * (1 << 20))\n",
		Limits: agentproto.Limits{TimeoutMS: 60000, MaxOutputBytes: 16 << 20}}, func(string, []byte) {
		time.Sleep(150 * time.Millisecond) // a slow host: longer than the 100 ms drain grace per chunk
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != agentproto.VerdictOK || len(res.Stdout) != 1<<20 {
		t.Errorf("verdict %s, %d of %d bytes", res.Verdict, len(res.Stdout), 1<<20)
	}
}
