package guest

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// forkedProbe prints True when the run was forked by the python zygote.
const forkedProbe = `import os
try:
    print("python-zygote" in open("/proc/%d/cmdline" % os.getppid()).read())
except OSError:
    print(False)
`

// pythonAgents starts two agents for the same user: one that starts every python run
// directly (the reference) and one with the zygote, whose debug log is in fastLog.
func pythonAgents(t *testing.T) (slow, fast *agentproto.Client, slowOpts, fastOpts Options) {
	t.Helper()
	if _, _, err := findExecutable("python3", hostPath()); err != nil {
		t.Skipf("python3 is not installed: %v", err)
	}
	user := sandboxUser()
	slowOpts = testOptions(t, user)
	slowOpts.DisableZygote = true
	fastOpts = testOptions(t, user)
	fastOpts.Logger = slog.New(slog.NewTextHandler(&fastLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", fastLog.String())
		}
		fastLog.Reset()
	})
	return startAgent(t, slowOpts), startAgent(t, fastOpts), slowOpts, fastOpts
}

// fastLog is the log of pythonAgents' agent with the zygote.
var fastLog syncBuffer

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

func (s *syncBuffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}

// forks counts the runs the zygote has forked so far.
func forks() int { return strings.Count(fastLog.String(), "python run forked by the zygote") }

// warmZygote runs probes with req's key (env and limits) until one is forked.
func warmZygote(t *testing.T, c *agentproto.Client, req agentproto.ExecRequest) {
	t.Helper()
	req.Code, req.Stdin, req.Language = forkedProbe, nil, "python"
	deadline := time.Now().Add(20 * time.Second)
	for {
		probe := req
		res := run(t, c, &probe)
		if string(res.Stdout) == "True\n" {
			return
		}
		if log := fastLog.String(); strings.Contains(log, "start: unfit") {
			// Runs as root (no uid-1000 user here; scripts/test makes one): every
			// start-up file is the run user's to change, so the zygote declines.
			t.Skipf("the zygote declines to serve runs as this user: %s", lineWith(log, "start: unfit"))
		}
		if time.Now().After(deadline) {
			t.Fatalf("no run was forked by the zygote within 20s; last probe: %s", describe(res))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lineWith returns the first line of s that contains sub.
func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

// forked runs the probe once and reports whether the zygote forked it.
func forked(t *testing.T, c *agentproto.Client, req agentproto.ExecRequest) bool {
	t.Helper()
	req.Code, req.Stdin, req.Language = forkedProbe, nil, "python"
	return string(run(t, c, &req).Stdout) == "True\n"
}

var runDirRE = regexp.MustCompile(`run-[0-9]+`)

// normalize removes what differs between two agents: their directories, run numbers.
func normalize(b []byte, opts Options) string {
	s := strings.ReplaceAll(string(b), opts.RunBase, "<runbase>")
	s = strings.ReplaceAll(s, opts.Home, "<home>")
	return runDirRE.ReplaceAllString(s, "run-N")
}

// The fast path is invisible: each program gives the same result (output, exit code,
// signal, verdict) when forked by the zygote as when started as python3 -u main.py.
func TestZygoteEquivalence(t *testing.T) {
	slow, fast, slowOpts, fastOpts := pythonAgents(t)
	// The working directories of the requests below (a missing one is refused).
	for _, o := range []Options{slowOpts, fastOpts} {
		for _, d := range []string{"project/sub", "state"} {
			if err := os.MkdirAll(filepath.Join(o.Home, d), 0o777); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name string
		req  agentproto.ExecRequest
	}{
		{"output", agentproto.ExecRequest{Code: "import sys\nprint('out 1')\nprint('err 1', file=sys.stderr)\nsys.stdout.write('no newline')\nprint('héllo ✓', end='')\nsys.stdout.buffer.write(b'\\xff\\n')\nprint('\\udcff')\n"}},
		{"exit code", agentproto.ExecRequest{Code: "import sys\nprint('x')\nsys.exit(3)\n"}},
		{"SystemExit message", agentproto.ExecRequest{Code: "import sys\nsys.exit('bye now')\n"}},
		{"SystemExit None", agentproto.ExecRequest{Code: "raise SystemExit\n"}},
		{"SystemExit 256", agentproto.ExecRequest{Code: "raise SystemExit(256)\n"}},
		{"SystemExit -1", agentproto.ExecRequest{Code: "raise SystemExit(-1)\n"}},
		{"SystemExit tuple", agentproto.ExecRequest{Code: "raise SystemExit(1, 2)\n"}},
		{"os._exit", agentproto.ExecRequest{Code: "import os\nprint('before')\nos._exit(5)\n"}},
		{"uncaught exception", agentproto.ExecRequest{Code: "def f(x):\n    return {}[x]\n\ndef g():\n    try:\n        f('k')\n    except KeyError as e:\n        raise ValueError('wrapped') from e\n\nprint('start')\ng()\n"}},
		{"exception in context", agentproto.ExecRequest{Code: "try:\n    1/0\nexcept ZeroDivisionError:\n    undefined_name\n"}},
		{"syntax error", agentproto.ExecRequest{Code: "print('a')\nprint(\n"}},
		{"indentation error", agentproto.ExecRequest{Code: "if True:\nprint(1)\n"}},
		{"NUL byte", agentproto.ExecRequest{Code: "print(1)\x00print(2)\n"}},
		{"KeyboardInterrupt", agentproto.ExecRequest{Code: "print('x')\nraise KeyboardInterrupt\n"}},
		{"excepthook", agentproto.ExecRequest{Code: "import sys\nsys.excepthook = lambda t, v, tb: print('hook', t.__name__, v)\nraise RuntimeError('boom')\n"}},
		{"excepthook fails", agentproto.ExecRequest{Code: "import sys\ndef h(t, v, tb):\n    raise TypeError('in hook')\nsys.excepthook = h\nraise RuntimeError('boom')\n"}},
		{"excepthook exits", agentproto.ExecRequest{Code: "import sys\nsys.excepthook = lambda *a: sys.exit(7)\nraise RuntimeError('boom')\n"}},
		{"excepthook missing", agentproto.ExecRequest{Code: "import sys\ndel sys.excepthook\nraise RuntimeError('boom')\n"}},
		{"traceback module", agentproto.ExecRequest{Code: "import traceback\ntry:\n    int('x')\nexcept ValueError:\n    traceback.print_exc()\n"}},
		{"warning", agentproto.ExecRequest{Code: "import warnings\nwarnings.warn('careful')\n"}},
		{"stdin", agentproto.ExecRequest{Code: "import sys\nfirst = input()\nrest = sys.stdin.read()\nprint(repr(first), repr(rest))\n", Stdin: []byte("line one\nline two\nthree")}},
		{"empty stdin", agentproto.ExecRequest{Code: "import sys\nprint(repr(sys.stdin.read()))\ntry:\n    input()\nexcept EOFError as e:\n    print('EOF', e)\n"}},
		{"env", agentproto.ExecRequest{Code: "import os\nfor k in sorted(os.environ):\n    print(k, os.environ[k])\n", Env: map[string]string{"GREETING": "hi there", "LANG": "C.UTF-8"}}},
		{"cwd", agentproto.ExecRequest{Code: "import os\nprint(os.getcwd())\nopen('made-here', 'w').close()\nprint(os.listdir('.'))\n", WorkDir: "project/sub"}},
		{"threads and atexit", agentproto.ExecRequest{Code: "import atexit, threading, time\natexit.register(lambda: print('atexit', '__file__' in globals()))\ndef w():\n    time.sleep(0.2)\n    print('thread done')\nthreading.Thread(target=w).start()\nprint('main done', '__file__' in globals())\n"}},
		{"atexit after exception", agentproto.ExecRequest{Code: "import atexit\natexit.register(print, 'bye')\n1/0\n"}},
		// A forked run's exit (zygote.py's _exit): what finalization shows is kept.
		{"finalized at exit", agentproto.ExecRequest{Code: "import sys, weakref, os\nclass A:\n    def __del__(self):\n        print('del', self.n)\na = A(); a.n = 'global'\nc = A(); c.n = 'cycle'; c.me = c; del c\nclass O: pass\no = O()\nweakref.finalize(o, print, 'weakref.finalize')\nf = os.fdopen(os.dup(1), 'w')\nf.write('unclosed file\\n')\nsys.stdout.write('buffered, no newline')\n"}},
		{"file in a traceback's frame", agentproto.ExecRequest{Code: "import os\ndef f():\n    out = os.fdopen(os.dup(1), 'w')\n    out.write('kept alive by sys.last_traceback until exit\\n')\n    1/0\nf()\n"}},
		{"exit status after atexit error", agentproto.ExecRequest{Code: "import atexit, sys\nclass Bad:\n    def __repr__(self):\n        return 'Bad()'\n    def __call__(self):\n        raise ValueError('in atexit')\natexit.register(Bad())\nsys.exit(4)\n"}},
		{"subprocess", agentproto.ExecRequest{Code: "import subprocess, sys\nprint('parent')\nsubprocess.run([sys.executable, '-c', 'print(\"child\")'])\nsubprocess.run('echo shell; echo err >&2', shell=True)\nprint('end')\n"}},
		{"multiprocessing", agentproto.ExecRequest{Code: "import multiprocessing as mp\n\ndef sq(x):\n    return x * x\n\nif __name__ == '__main__':\n    with mp.Pool(2) as p:\n        print(p.map(sq, range(5)))\n    with mp.get_context('spawn').Pool(1) as p:\n        print(p.map(sq, range(3)))\n"}},
		{"file size limit", agentproto.ExecRequest{Code: "open('big', 'wb').write(b'x' * 200000)\n", Limits: agentproto.Limits{MaxFileBytes: 100000}}},
		{"signal", agentproto.ExecRequest{Code: "import os, signal\nprint('x', flush=True)\nos.kill(os.getpid(), signal.SIGSEGV)\n"}},
		{"interpreter state", agentproto.ExecRequest{Code: stateDump, WorkDir: "state"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.req
			req.Language = "python"
			warmZygote(t, fast, req)
			want := run(t, slow, ptr(req))
			n := forks()
			got := run(t, fast, ptr(req))
			if n, nul := forks()-n, strings.Contains(req.Code, "\x00"); n != 1 && !nul || n != 0 && nul {
				t.Errorf("%d forked runs, want %d", n, map[bool]int{true: 0, false: 1}[nul])
			}
			if tt.name == "interpreter state" {
				t.Logf("state:\n%s", normalize(got.Stdout, fastOpts))
			}
			ws, gs := normalize(want.Stdout, slowOpts), normalize(got.Stdout, fastOpts)
			we, ge := normalize(want.Stderr, slowOpts), normalize(got.Stderr, fastOpts)
			if ws != gs || we != ge || want.ExitCode != got.ExitCode || want.Signal != got.Signal ||
				want.Verdict != got.Verdict || want.Error != got.Error {
				t.Errorf("forked run differs\nwant %s\nstdout: %s\nstderr: %s\n got %s\nstdout: %s\nstderr: %s",
					describe(want), ws, we, describe(got), gs, ge)
			}
			if !strings.Contains(req.Code, "\x00") && !forked(t, fast, req) {
				t.Errorf("the zygote is gone after the run")
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// stateDump prints what a script can see of its interpreter's start.
const stateDump = `import sys, os
print("name", __name__, "file", __file__, "argv", sys.argv, "orig", sys.orig_argv)
print("path", sys.path)
print("globals", list(globals()))
print("dunders", type(__loader__).__name__, __loader__.name, __loader__.path, __spec__, __package__, __doc__, __cached__, __annotations__, __builtins__)
print("main", sys.modules["__main__"] is sys.modules[__name__])
print("modules", sorted(sys.modules))
print("flags", sys.flags, sys.executable, sys.dont_write_bytecode, sys.warnoptions, sys._xoptions)
for s in (sys.stdin, sys.stdout, sys.stderr):
    print(repr(s), s.encoding, s.errors, s.line_buffering, s.write_through, s.mode, s.name,
          type(s.buffer).__name__, getattr(s.buffer, "raw", s.buffer).name, s.isatty(), s.fileno(), s.closed)
print("same", sys.stdin is sys.__stdin__, sys.stdout is sys.__stdout__, sys.stderr is sys.__stderr__)
print("fds", sorted(os.listdir("/proc/self/fd")))
print("importers", sorted((k, type(v).__name__) for k, v in sys.path_importer_cache.items()))
print("hooks", [type(f).__name__ for f in sys.meta_path], len(sys.path_hooks))
print("encodings", sys.getfilesystemencoding(), sys.getfilesystemencodeerrors(), sys.getdefaultencoding())
import signal, resource, locale
print("signals", [(n, signal.getsignal(n)) for n in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP)])
print("mask", signal.pthread_sigmask(signal.SIG_BLOCK, []))
print("rlimits", [resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_NPROC, resource.RLIMIT_FSIZE, resource.RLIMIT_CORE, resource.RLIMIT_NOFILE, resource.RLIMIT_STACK)])
print("ids", os.getresuid(), os.getresgid(), os.getgroups())
print("group", os.getpgrp() == os.getpid(), os.getsid(0))
um = os.umask(0)
os.umask(um)
print("umask", oct(um), "cwd", os.getcwd())
print("locale", locale.getlocale(), locale.getpreferredencoding(False))
print("env", sorted(os.environ.items()))
`

// Timeouts and output limits kill the forked run's process group, children included,
// and the zygote takes the next run.
func TestZygoteKills(t *testing.T) {
	_, fast, _, _ := pythonAgents(t)

	timeout := agentproto.ExecRequest{Language: "python", Limits: agentproto.Limits{TimeoutMS: 1000},
		Code: "import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', 'while True: pass'])\nprint(p.pid, flush=True)\nwhile True:\n    pass\n"}
	warmZygote(t, fast, timeout)
	start := time.Now()
	res := run(t, fast, &timeout)
	if res.Verdict != agentproto.VerdictTimeout || time.Since(start) > 2*time.Second {
		t.Errorf("timeout: got %s after %v", describe(res), time.Since(start))
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout))); err != nil {
		t.Errorf("no child pid: %s", describe(res))
	} else if alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("the timed-out run's child %d survived", pid)
	}
	if !forked(t, fast, timeout) {
		t.Errorf("the next run was not forked")
	}

	const limit = 64 << 10
	flood := agentproto.ExecRequest{Language: "python", Limits: agentproto.Limits{MaxOutputBytes: limit, TimeoutMS: 10000},
		Code: "while True:\n    print('x' * 1000)\n"}
	warmZygote(t, fast, flood)
	res = run(t, fast, &flood)
	if res.Verdict != agentproto.VerdictOutputLimit || len(res.Stdout) != limit || !res.StdoutTruncated {
		t.Errorf("output limit: got %s (stdout %d bytes)", describe(res), len(res.Stdout))
	}
	if !forked(t, fast, flood) {
		t.Errorf("the next run was not forked")
	}
}

// alive reports whether pid runs (a zombie does not count).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !bytes.Contains(b, []byte(") Z "))
}

// A memory bomb in a forked run is killed by the memory watch as it is in python3.
func TestZygoteMemoryBomb(t *testing.T) {
	_, fast, _, _ := pythonAgents(t)
	req := agentproto.ExecRequest{Language: "python",
		Code:   "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n",
		Limits: agentproto.Limits{MemoryBytes: 256 << 20, TimeoutMS: 20000}}
	warmZygote(t, fast, req)
	res := run(t, fast, &req)
	if res.Verdict != agentproto.VerdictMemoryLimit || !bytes.Contains(res.Stderr, []byte("over its memory limit of 256 MiB")) {
		t.Errorf("got %s", describe(res))
	}
	if !forked(t, fast, req) {
		t.Errorf("the next run was not forked")
	}
}

// A background process started by a forked run outlives the run, as agents expect.
func TestZygoteBackgroundSurvives(t *testing.T) {
	_, fast, _, _ := pythonAgents(t)
	req := agentproto.ExecRequest{Language: "python",
		Code: "import subprocess\np = subprocess.Popen(['sh', '-c', 'sleep 1; echo late; sleep 30'])\nprint(p.pid)\n"}
	warmZygote(t, fast, req)
	start := time.Now()
	res := run(t, fast, &req)
	if res.Verdict != agentproto.VerdictOK || time.Since(start) > time.Second {
		t.Fatalf("got %s after %v", describe(res), time.Since(start))
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	if err != nil {
		t.Fatalf("no pid: %s", describe(res))
	}
	defer killGroupOf(pid)
	time.Sleep(1300 * time.Millisecond) // past its late write
	if !alive(pid) {
		t.Errorf("background process %d is gone", pid)
	}
}

// Fork bombs in forked runs are contained as in directly started ones, and once a bomb
// is gone python runs are forked again (the zygote is a process of the same user).
func TestZygoteForkBomb(t *testing.T) {
	if sandboxUser() == nil && os.Geteuid() == 0 {
		t.Skip("running as root without a uid 1000 user: RLIMIT_NPROC would not bound the bomb")
	}
	_, fast, _, _ := pythonAgents(t)
	limits := agentproto.Limits{MaxProcs: 50, TimeoutMS: 3000}
	settle := func() {
		if u := sandboxUser(); u != nil {
			waitUserProcs(t, u.UID, int(limits.MaxProcs)/5)
		}
	}
	settle() // an earlier test's bomb, still being reaped

	busy := agentproto.ExecRequest{Language: "python", Limits: limits,
		Code: "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"}
	warmZygote(t, fast, busy)
	start := time.Now()
	res := run(t, fast, &busy)
	if res.Verdict == agentproto.VerdictOK {
		t.Errorf("busy bomb ended ok: %s", describe(res))
	}
	t.Logf("busy bomb: %s after %v", res.Verdict, time.Since(start).Round(time.Millisecond))
	afterBomb(t, fast)
	settle()

	// The script exits at once; its child multiplies in the background.
	bg := agentproto.ExecRequest{Language: "python", Limits: limits,
		Code: "import os\nprint(os.getpgrp(), flush=True)\nif os.fork() == 0:\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"}
	warmZygote(t, fast, bg)
	start = time.Now()
	res = run(t, fast, &bg)
	awaitBombGone(t, "background bomb", res, start)
	// Until the bomb's processes are reaped the zygote cannot fork (it refuses runs,
	// which then start directly); then it serves again.
	settle()
	warmZygote(t, fast, bg)
}

// A killed zygote costs nothing but speed: the next run starts python directly and
// succeeds, and a new zygote takes over.
func TestZygoteKilledRecovers(t *testing.T) {
	_, fast, _, _ := pythonAgents(t)
	req := agentproto.ExecRequest{Language: "python", Code: "import os\nprint(os.getppid())\n"}
	warmZygote(t, fast, req)
	res := run(t, fast, ptr(req))
	zpid, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	if err != nil || zpid <= 1 {
		t.Fatalf("no zygote pid: %s", describe(res))
	}
	if err := syscall.Kill(zpid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// As when a run kills it: the next request comes once it is gone.
	for deadline := time.Now().Add(5 * time.Second); alive(zpid) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	for i := 0; i < 3; i++ {
		res = run(t, fast, &agentproto.ExecRequest{Language: "python", Code: "print('still here')\n"})
		if res.Verdict != agentproto.VerdictOK || string(res.Stdout) != "still here\n" {
			t.Errorf("run %d after the zygote was killed: %s", i, describe(res))
		}
	}
	warmZygote(t, fast, req)

	// Killed by its own run (the script kills its parent): the run is lost, not the agent.
	suicide := agentproto.ExecRequest{Language: "python", Code: "import os, signal, time\n" +
		"if 'python-zygote' in open('/proc/%d/cmdline' % os.getppid()).read():\n" +
		"    os.kill(os.getppid(), signal.SIGKILL)\n    time.sleep(5)\nprint('not forked')\n"}
	warmZygote(t, fast, suicide)
	start := time.Now()
	res = run(t, fast, &suicide)
	if res.Verdict != agentproto.VerdictKilled || res.Error == "" || time.Since(start) > 3*time.Second {
		t.Errorf("run that killed its zygote: got %s after %v; want killed with an error, at once", describe(res), time.Since(start))
	}
	warmZygote(t, fast, req)
}

// What python3 reads at start-up from the file system is honoured: a user site-packages
// directory made by one run is on sys.path in the next, forked or not; and a zygote whose
// start-up would run the user's own code (usercustomize) is not used.
func TestZygoteStartupFiles(t *testing.T) {
	slow, fast, _, _ := pythonAgents(t)
	for _, c := range []*agentproto.Client{slow, fast} {
		req := agentproto.ExecRequest{Language: "python"}
		if c == fast {
			warmZygote(t, fast, req)
		}
		mk := run(t, c, &agentproto.ExecRequest{Language: "python", Code: "import os, site\n" +
			"os.makedirs(site.getusersitepackages())\n" +
			"open(os.path.join(site.getusersitepackages(), 'mymod.py'), 'w').write('X = 42\\n')\n"})
		if mk.Verdict != agentproto.VerdictOK {
			t.Fatalf("make user site: %s", describe(mk))
		}
		use := agentproto.ExecRequest{Language: "python", Code: "import mymod\nprint(mymod.X)\n"}
		for i := 0; i < 3; i++ {
			if res := run(t, c, ptr(use)); string(res.Stdout) != "42\n" {
				t.Errorf("import from the user site, run %d: %s", i, describe(res))
			}
		}
		if c == fast {
			warmZygote(t, fast, req)
			if res := run(t, c, ptr(use)); string(res.Stdout) != "42\n" {
				t.Errorf("import from the user site, forked: %s", describe(res))
			}
		}

		custom := run(t, c, &agentproto.ExecRequest{Language: "python", Code: "import os, site\n" +
			"open(os.path.join(site.getusersitepackages(), 'usercustomize.py'), 'w').write('print(\"custom\")\\n')\n"})
		if custom.Verdict != agentproto.VerdictOK {
			t.Fatalf("make usercustomize: %s", describe(custom))
		}
		for i := 0; i < 3; i++ {
			res := run(t, c, &agentproto.ExecRequest{Language: "python", Code: "print('main')\n"})
			if string(res.Stdout) != "custom\nmain\n" {
				t.Errorf("with usercustomize, run %d: %s", i, describe(res))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// Runs whose environments or limits keep changing are all right, and a key that stays
// gets the fast path.
func TestZygoteChangingKeys(t *testing.T) {
	_, fast, _, _ := pythonAgents(t)
	for i := 0; i < 12; i++ {
		v := strconv.Itoa(i % 3)
		res := run(t, fast, &agentproto.ExecRequest{Language: "python", Code: "import os\nprint(os.environ['V'])\n",
			Env: map[string]string{"V": v}, Limits: agentproto.Limits{MaxProcs: int64(100 + i%2)}})
		if res.Verdict != agentproto.VerdictOK || string(res.Stdout) != v+"\n" {
			t.Errorf("run %d: %s", i, describe(res))
		}
	}
	warmZygote(t, fast, agentproto.ExecRequest{Env: map[string]string{"V": "x"}})
	if forked(t, fast, agentproto.ExecRequest{Env: map[string]string{"V": "y"}}) {
		t.Errorf("a run with another environment was forked")
	}
}

// A run that the waiting zygote would push past the user's process limit gets the room:
// the zygote (a process of the run user) yields, and the run starts.
func TestZygoteYieldsToProcessLimit(t *testing.T) {
	user := sandboxUser()
	if user == nil {
		t.Skip("no uid 1000 user to run as: RLIMIT_NPROC would not bind")
	}
	slow, fast, _, _ := pythonAgents(t)
	waitUserProcs(t, user.UID, 1) // earlier tests' processes, still being reaped
	// max_procs 1: the run's own process and nothing else (the launcher's other threads
	// do not count; see dropTo).
	const limit = 1
	bash := func(c *agentproto.Client) *agentproto.ExecResult {
		return run(t, c, &agentproto.ExecRequest{Language: "bash", Code: "echo started", Limits: agentproto.Limits{MaxProcs: limit}})
	}
	if res := bash(slow); res.Verdict != agentproto.VerdictOK || string(res.Stdout) != "started\n" {
		t.Fatalf("run under max_procs %d, no zygote: %s", limit, describe(res))
	}
	warmZygote(t, fast, agentproto.ExecRequest{})
	// The zygote and its forked spare leave no room for bash under that limit, unless
	// they go.
	if res := bash(fast); res.Verdict != agentproto.VerdictOK || string(res.Stdout) != "started\n" {
		t.Fatalf("run at the process limit (%d): %s", limit, describe(res))
	}
	if !strings.Contains(fastLog.String(), "stopping the python zygote: the run user is at its process limit") {
		t.Errorf("the run started without the zygote yielding; agent log:\n%s", fastLog.String())
	}
}

// The zygote file is only there while a zygote starts; no run directories are left.
func TestZygoteLeavesNothing(t *testing.T) {
	_, fast, _, fastOpts := pythonAgents(t)
	warmZygote(t, fast, agentproto.ExecRequest{})
	ents, err := os.ReadDir(fastOpts.RunBase)
	if err != nil || len(ents) != 0 {
		t.Errorf("run base holds %v (%v)", ents, err)
	}
}

// The zygote's freeze before a fork (zygote.py's _before_fork) does not freeze the
// cyclic garbage the zygote made after the first one: a later fork's collection frees
// it, and the frozen objects do not grow.
func TestZygoteFreezeLeavesGarbageCollectable(t *testing.T) {
	if _, _, err := findExecutable("python3", hostPath()); err != nil {
		t.Skipf("python3 is not installed: %v", err)
	}
	script := `import ast, gc, sys, weakref
src = sys.stdin.read()
fn = [n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "_before_fork"]
ns = {"gc": gc, "_frozen": False}
exec(compile(ast.Module(body=fn, type_ignores=[]), "zygote.py", "exec"), ns)
ns["_before_fork"]()  # the first fork
frozen = gc.get_freeze_count()
class Cycle: pass
refs = []
for i in range(1000):
    c = Cycle(); c.me = c; refs.append(weakref.ref(c)); del c
for i in range(3):
    ns["_before_fork"]()  # the next forks
alive = sum(r() is not None for r in refs)
print(alive, gc.get_freeze_count() - frozen)
`
	cmd := exec.Command("python3", "-c", script)
	cmd.Stdin = bytes.NewReader(zygoteSource)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python3: %v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "0 0" {
		t.Errorf("cycles still alive and objects frozen since the first fork: %q, want \"0 0\"", got)
	}
}
