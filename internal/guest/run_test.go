package guest

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// Each language runs a real program and prints the expected answer.
func TestLanguages(t *testing.T) {
	tests := []struct {
		lang, tool, code, want string
		timeout                time.Duration
	}{
		{"python", "python3", "import math\nprint(math.factorial(10))\n", "3628800\n", 0},
		{"javascript", "node", "const f = n => n <= 1 ? 1 : n * f(n - 1);\nconsole.log(f(10));\n", "3628800\n", 0},
		{"bash", "bash", "f=1; for i in $(seq 1 10); do f=$((f*i)); done; echo $f\n", "3628800\n", 0},
		{"rust", "rustc", `fn main() {
    let primes: Vec<String> = (2..50u32)
        .filter(|n| (2..*n).all(|d| n % d != 0))
        .map(|n| n.to_string())
        .collect();
    println!("{}", primes.join(" "));
}
`, "2 3 5 7 11 13 17 19 23 29 31 37 41 43 47\n", 0},
		// A cold build cache compiles the standard library first.
		{"go", "go", "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hello from go\") }\n", "hello from go\n", 3 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.lang, func(t *testing.T) {
			c := agentFor(t, tt.tool)
			start := time.Now()
			res := run(t, c, &agentproto.ExecRequest{Language: tt.lang, Code: tt.code,
				Limits: agentproto.Limits{TimeoutMS: tt.timeout.Milliseconds()}})
			if res.Verdict != agentproto.VerdictOK || string(res.Stdout) != tt.want || res.ExitCode != 0 {
				t.Fatalf("want %q, got %s", tt.want, describe(res))
			}
			t.Logf("%s: %d ms in the guest, %v round trip", tt.lang, res.DurationMS, time.Since(start).Round(time.Millisecond))
		})
	}
}

// A program that does not compile ends nonzero_exit with the compiler's diagnostics.
func TestRustCompileError(t *testing.T) {
	c := agentFor(t, "rustc")
	res := run(t, c, &agentproto.ExecRequest{Language: "rust", Code: "fn main() { let x: i32 = \"no\"; }\n"})
	if res.Verdict != agentproto.VerdictNonzeroExit || res.ExitCode == 0 || !bytes.Contains(res.Stderr, []byte("error")) {
		t.Errorf("got %s", describe(res))
	}
}

// Program behaviour a user sees directly: exit codes, signals, stdin, env, workdir.
func TestRunBehaviour(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	tests := []struct {
		name    string
		req     agentproto.ExecRequest
		verdict string
		exit    int
		signal  string
		stdout  string
		stderr  string // substring
	}{
		{name: "python NameError", req: agentproto.ExecRequest{Language: "python", Code: "print(undefined_name)\n"},
			verdict: agentproto.VerdictNonzeroExit, exit: 1, stderr: "NameError"},
		{name: "exit code", req: agentproto.ExecRequest{Language: "bash", Code: "echo out; echo err >&2; exit 3"},
			verdict: agentproto.VerdictNonzeroExit, exit: 3, stdout: "out\n", stderr: "err"},
		{name: "stdin", req: agentproto.ExecRequest{Language: "python", Code: "import sys\nprint(sys.stdin.read().upper(), end='')\n", Stdin: []byte("hello\nworld\n")},
			verdict: agentproto.VerdictOK, stdout: "HELLO\nWORLD\n"},
		{name: "empty stdin is EOF", req: agentproto.ExecRequest{Language: "bash", Code: "cat; echo done"},
			verdict: agentproto.VerdictOK, stdout: "done\n"},
		{name: "env", req: agentproto.ExecRequest{Language: "bash", Code: `echo "$GREETING $LANG $USER"`, Env: map[string]string{"GREETING": "hi there"}},
			verdict: agentproto.VerdictOK, stdout: "hi there C.UTF-8 user\n"},
		{name: "workdir", req: agentproto.ExecRequest{Language: "bash", Code: `echo "$PWD"; touch made-here`, WorkDir: "/tmp"},
			verdict: agentproto.VerdictOK, stdout: "/tmp\n"},
		{name: "signal", req: agentproto.ExecRequest{Language: "bash", Code: "kill -SEGV $$"},
			verdict: agentproto.VerdictKilled, exit: 128 + 11, signal: "SIGSEGV"},
		{name: "file size limit", req: agentproto.ExecRequest{Language: "bash", Code: "exec head -c 200000 /dev/zero > big",
			Limits: agentproto.Limits{MaxFileBytes: 100000}},
			verdict: agentproto.VerdictKilled, exit: 128 + 25, signal: "SIGXFSZ"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := run(t, c, &tt.req)
			t.Logf("%d ms", res.DurationMS)
			if res.Verdict != tt.verdict || res.ExitCode != tt.exit || res.Signal != tt.signal ||
				(tt.stdout != "" && string(res.Stdout) != tt.stdout) || !bytes.Contains(res.Stderr, []byte(tt.stderr)) {
				t.Errorf("want verdict=%s exit=%d signal=%q stdout=%q stderr~%q; got %s",
					tt.verdict, tt.exit, tt.signal, tt.stdout, tt.stderr, describe(res))
			}
		})
	}
}

// An endless loop is stopped at the timeout, promptly.
func TestTimeout(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	start := time.Now()
	res := run(t, c, &agentproto.ExecRequest{Language: "python", Code: "while True:\n    pass\n",
		Limits: agentproto.Limits{TimeoutMS: 1000}})
	elapsed := time.Since(start)
	if res.Verdict != agentproto.VerdictTimeout || elapsed > 2*time.Second {
		t.Errorf("got %s after %v; want timeout within 2s", describe(res), elapsed)
	}
	t.Logf("timeout after %v (guest %d ms)", elapsed.Round(time.Millisecond), res.DurationMS)
}

// An output flood is cut at the limit and the program is stopped.
func TestOutputLimit(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	const limit = 64 << 10
	start := time.Now()
	res := run(t, c, &agentproto.ExecRequest{Language: "python", Code: "while True:\n    print('x' * 1000)\n",
		Limits: agentproto.Limits{MaxOutputBytes: limit, TimeoutMS: 10000}})
	if res.Verdict != agentproto.VerdictOutputLimit || len(res.Stdout) != limit || !res.StdoutTruncated || res.StderrTruncated {
		t.Errorf("got %s (stdout %d bytes, truncated %v)", describe(res), len(res.Stdout), res.StdoutTruncated)
	}
	t.Logf("output limit after %v", time.Since(start).Round(time.Millisecond))
}

// A background process neither delays the run's result nor dies with it: agents
// start servers and expect them in the next turn. Output it writes later must not
// kill it either.
func TestBackgroundProcessSurvives(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	start := time.Now()
	res := run(t, c, &agentproto.ExecRequest{Language: "bash",
		Code: "(sleep 1; echo late; echo late >&2; sleep 30) &\necho $!"})
	elapsed := time.Since(start)
	if res.Verdict != agentproto.VerdictOK || elapsed > time.Second {
		t.Fatalf("got %s after %v; want ok within 1s", describe(res), elapsed)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	if err != nil {
		t.Fatalf("no pid in %q", res.Stdout)
	}
	defer killGroupOf(pid)
	time.Sleep(1300 * time.Millisecond) // past its late writes
	if err := syscall.Kill(pid, 0); err != nil {
		t.Errorf("background process %d is gone: %v", pid, err)
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err == nil {
		if b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); bytes.Contains(b, []byte(") Z ")) {
			t.Errorf("background process %d is a zombie", pid)
		}
	}
	t.Logf("run returned in %v with a live background process", elapsed.Round(time.Millisecond))
}

// Fork bombs end, and the sandbox user can run programs again afterwards. RLIMIT_NPROC
// does not bind root, so this needs a non-root run user.
func TestForkBomb(t *testing.T) {
	user := sandboxUser()
	if user == nil && os.Geteuid() == 0 {
		t.Skip("running as root without a uid 1000 user: RLIMIT_NPROC would not bound the bomb")
	}
	c := startAgent(t, testOptions(t, user))
	limits := agentproto.Limits{MaxProcs: 50, TimeoutMS: 3000}
	if user != nil {
		waitUserProcs(t, user.UID, int(limits.MaxProcs)/5) // an earlier bomb, still being reaped
	}

	// The script stays busy while its children multiply: the timeout ends it.
	start := time.Now()
	res := run(t, c, &agentproto.ExecRequest{Language: "bash", Limits: limits,
		Code: "bomb() { bomb | bomb & }; bomb; while :; do :; done"})
	if res.Verdict == agentproto.VerdictOK {
		t.Errorf("busy fork bomb ended ok: %s", describe(res))
	}
	t.Logf("busy bomb: verdict %s after %v", res.Verdict, time.Since(start).Round(time.Millisecond))
	afterBomb(t, c)
	// Outside a sandbox the killed bomb's orphans are reaped by the host's init, not by
	// the agent, and count against the user's process limit until then.
	if user != nil {
		waitUserProcs(t, user.UID, int(limits.MaxProcs)/5)
	}

	// The classic: the script exits at once and the bomb multiplies in the background.
	// The agent looks at the group until it is steady, which a bomb never is: it is
	// killed before the run returns, and the run is not ok.
	start = time.Now()
	res = run(t, c, &agentproto.ExecRequest{Language: "bash", Limits: limits,
		Code: "echo $$; :(){ :|:& };:"})
	if res.Verdict == agentproto.VerdictOK {
		t.Errorf("classic fork bomb ended ok: %s", describe(res))
	}
	awaitBombGone(t, "classic bomb", res, start)
	afterBomb(t, c)
}

// awaitBombGone waits (up to 10s) until the process group whose id a bomb's run printed
// first has no live member.
func awaitBombGone(t *testing.T, name string, res *agentproto.ExecResult, start time.Time) {
	t.Helper()
	pgid, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	if err != nil {
		t.Fatalf("%s: no pgid: %s", name, describe(res))
	}
	defer syscall.Kill(-pgid, syscall.SIGKILL)
	for liveMembers(pgid) > 0 {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("%s still running after 10s (verdict %s)", name, res.Verdict)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%s: verdict %s, returned after %d ms, gone after %v", name, res.Verdict, res.DurationMS, time.Since(start).Round(time.Millisecond))
}

// killGroupOf kills the process group pid is in (a run's group, which the test's
// background processes stay in).
func killGroupOf(pid int) {
	if _, pgrp, ok := procParent(pid); ok && pgrp > 1 {
		syscall.Kill(-pgrp, syscall.SIGKILL)
	}
}

// waitUserProcs waits (up to 10s) until uid has fewer than n tasks, counted as
// RLIMIT_NPROC counts them (zombies included).
func waitUserProcs(t *testing.T, uid uint32, n int) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		k := scanProcs().byUID[uid]
		if k < int64(n) {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("uid %d still has %d tasks", uid, k)
		}
	}
}

// liveMembers counts the processes of group pgid that are not zombies.
func liveMembers(pgid int) int {
	n := 0
	eachProc(func(_ string, f [][]byte) {
		if len(f) > 2 && string(f[0]) != "Z" && string(f[2]) == strconv.Itoa(pgid) {
			n++
		}
	})
	return n
}

func afterBomb(t *testing.T, c *agentproto.Client) {
	t.Helper()
	next := run(t, c, &agentproto.ExecRequest{Language: "python", Code: "print('still here')"})
	if next.Verdict != agentproto.VerdictOK || string(next.Stdout) != "still here\n" {
		t.Errorf("run after the bomb: %s", describe(next))
	}
}

// A memory bomb ends memory_limit, not by taking the sandbox down.
func TestMemoryBomb(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	start := time.Now()
	res := run(t, c, &agentproto.ExecRequest{Language: "python",
		Code:   "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n",
		Limits: agentproto.Limits{MemoryBytes: 256 << 20, TimeoutMS: 20000}})
	if res.Verdict != agentproto.VerdictMemoryLimit {
		t.Errorf("got %s", describe(res))
	}
	t.Logf("memory bomb: %s after %v", res.Verdict, time.Since(start).Round(time.Millisecond))
}

// A run that cannot start says why, and the agent keeps serving.
func TestCannotStart(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	for _, req := range []*agentproto.ExecRequest{
		{Language: "cobol", Code: "DISPLAY 'HI'."},
		{Language: "python", Code: "print(1)", Env: map[string]string{"PATH": "/nonexistent"}},
	} {
		res := run(t, c, req)
		if res.Error == "" || res.ExitCode != -1 || res.Verdict != agentproto.VerdictKilled {
			t.Errorf("%s: got %s; want an error, exit -1, verdict killed", req.Language, describe(res))
		}
	}
	if res := run(t, c, &agentproto.ExecRequest{Language: "python", Code: "print(1)"}); res.Verdict != agentproto.VerdictOK {
		t.Errorf("run after failures: %s", describe(res))
	}
}

// Runs leave no run directories behind, and the home directory is the run user's.
func TestRunDirs(t *testing.T) {
	opts := testOptions(t, sandboxUser())
	c := startAgent(t, opts)
	res := run(t, c, &agentproto.ExecRequest{Language: "bash", Code: `echo "$0"; touch "$HOME/mine"`})
	if res.Verdict != agentproto.VerdictOK || !strings.HasPrefix(string(res.Stdout), opts.RunBase+"/run-") {
		t.Fatalf("got %s", describe(res))
	}
	ents, err := os.ReadDir(opts.RunBase)
	if err != nil || len(ents) != 0 {
		t.Errorf("run base after the run: %v %v", ents, err)
	}
	fi, err := os.Stat(opts.RunBase)
	if err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("run base: %v %v, want mode 0711", fi.Mode(), err)
	}
	fi, err = os.Stat(opts.Home)
	if err != nil || fileUID(fi) != opts.RunUser.UID {
		t.Errorf("home: %v, owner %d, want %d", err, fileUID(fi), opts.RunUser.UID)
	}
}
