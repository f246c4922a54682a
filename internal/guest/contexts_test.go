package guest

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// cellRun is what the host saw of one cell.
type cellRun struct {
	res     *agentproto.ExecResult
	results []agentproto.CellOutput
}

func (r cellRun) main() string {
	for _, o := range r.results {
		if o.IsMainResult {
			return o.Text
		}
	}
	return ""
}

func cell(t *testing.T, c *agentproto.Client, spec agentproto.ContextSpec, code string, timeoutMS int64) cellRun {
	t.Helper()
	var out cellRun
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := c.Exec(ctx, &agentproto.ExecRequest{Language: spec.Language, Code: code, Context: &spec,
		Limits: agentproto.Limits{TimeoutMS: timeoutMS}}, func(stream string, p []byte) {
		if stream == agentproto.StreamResult {
			o, err := agentproto.DecodeResult(p)
			if err != nil {
				t.Errorf("result: %v", err)
			}
			out.results = append(out.results, o)
		}
	})
	if err != nil {
		t.Fatalf("cell %q: %v", code, err)
	}
	out.res = res
	return out
}

func needTool(t *testing.T, c *agentproto.Client, tool string) {
	t.Helper()
	if r := run(t, c, &agentproto.ExecRequest{Language: "bash", Code: tool + " --version"}); r.Verdict != agentproto.VerdictOK {
		t.Skipf("%s is not usable here: %s", tool, r.Stderr)
	}
}

// A python context keeps its state across cells, returns the final expression's value
// and the exception a cell raised, and streams the cell's output as its own.
func TestPythonContext(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	needTool(t, c, "python3")
	spec := agentproto.ContextSpec{ID: "ctx_py", Language: "python"}
	if _, err := c.StartContext(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		code, stdout, main, verdict, errName string
	}{
		{code: "x = 1\nprint('hi')", stdout: "hi\n", verdict: "ok"},
		{code: "x + 1", main: "2", verdict: "ok"},
		{code: "import sys\nprint('err', file=sys.stderr)\nraise ValueError('bad')", verdict: "error", errName: "ValueError"},
		{code: "class A:\n    def _repr_html_(self): return '<b>A</b>'\nA()", verdict: "ok", main: "<__main__.A object"},
		{code: "[x, 'a']", main: "[1, 'a']", verdict: "ok"},
	}
	for i, st := range steps {
		r := cell(t, c, spec, st.code, 20000)
		if r.res.Verdict != st.verdict || string(r.res.Stdout) != st.stdout || !strings.HasPrefix(r.main(), st.main) {
			t.Errorf("step %d %q: verdict %s stdout %q main %q; want %s %q %q (%s)", i, st.code, r.res.Verdict, r.res.Stdout, r.main(), st.verdict, st.stdout, st.main, describe(r.res))
		}
		if got := r.res.Cell.ExecutionCount; got != i+1 {
			t.Errorf("step %d: execution count %d, want %d", i, got, i+1)
		}
		if st.errName != "" {
			e := r.res.Cell.Error
			if e == nil || e.Name != st.errName || e.Value != "bad" || !strings.Contains(e.Traceback, "raise ValueError('bad')") {
				t.Errorf("step %d: error %+v, want %s with its traceback", i, e, st.errName)
			}
			if string(r.res.Stderr) != "err\n" {
				t.Errorf("step %d: stderr %q", i, r.res.Stderr)
			}
		}
		if i == 3 && (len(r.results) != 1 || r.results[0].HTML != "<b>A</b>") {
			t.Errorf("html result: %+v", r.results)
		}
	}
	list, err := c.ListContexts(context.Background())
	if err != nil || len(list) != 1 || list[0].ID != "ctx_py" || list[0].Count != len(steps) {
		t.Errorf("list: %+v %v", list, err)
	}
}

// A timeout interrupts the cell and keeps the interpreter's state; a cell that
// ignores the interrupt gets its interpreter killed and replaced.
func TestContextTimeout(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	needTool(t, c, "python3")
	spec := agentproto.ContextSpec{ID: "ctx_t", Language: "python"}
	cell(t, c, spec, "x = 41", 20000)
	r := cell(t, c, spec, "import time\nwhile True: time.sleep(0.01)", 500)
	if r.res.Verdict != agentproto.VerdictTimeout || r.res.Cell.Restarted || r.res.Cell.Error == nil || r.res.Cell.Error.Name != "KeyboardInterrupt" {
		t.Fatalf("interrupted cell: %s restarted=%v error=%+v", describe(r.res), r.res.Cell.Restarted, r.res.Cell.Error)
	}
	if r := cell(t, c, spec, "x + 1", 20000); r.main() != "42" {
		t.Fatalf("after the interrupt: %q (%s)", r.main(), describe(r.res))
	}
	list, _ := c.ListContexts(context.Background())
	oldPID := list[0].PID
	r = cell(t, c, spec, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.01)", 500)
	if r.res.Verdict != agentproto.VerdictTimeout || !r.res.Cell.Restarted || !strings.Contains(string(r.res.Stderr), "killed") {
		t.Fatalf("stubborn cell: %s restarted=%v", describe(r.res), r.res.Cell.Restarted)
	}
	if syscall.Kill(oldPID, 0) == nil && aliveNotZombie(oldPID) {
		t.Errorf("the killed interpreter %d is still running", oldPID)
	}
	if r := cell(t, c, spec, "'x' in dir()", 20000); r.main() != "False" || r.res.Verdict != "ok" {
		t.Errorf("after the restart: %q (%s)", r.main(), describe(r.res))
	}
}

// Stopping a context kills its interpreter.
func TestStopContext(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	needTool(t, c, "python3")
	info, err := c.StartContext(context.Background(), agentproto.ContextSpec{ID: "ctx_s", Language: "python"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.StopContext(context.Background(), "ctx_s"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the interpreter to end", func() bool { return !aliveNotZombie(info.PID) })
	if list, _ := c.ListContexts(context.Background()); len(list) != 0 {
		t.Errorf("contexts after stop: %+v", list)
	}
	if _, err := c.StartContext(context.Background(), agentproto.ContextSpec{ID: "ctx_s", Language: "ruby"}); err == nil {
		t.Errorf("a ruby context started")
	}
}

// A javascript context: top-level await, the last expression's value, state across
// cells, errors with their name.
func TestJavaScriptContext(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	needTool(t, c, "node")
	spec := agentproto.ContextSpec{ID: "ctx_js", Language: "javascript"}
	steps := []struct{ code, stdout, main, verdict string }{
		{code: "const a = await new Promise(r => setTimeout(() => r(20), 10));\nconsole.log('got', a)\na + 1", stdout: "got 20\n", main: "21", verdict: "ok"},
		{code: "a * 2", main: "40", verdict: "ok"},
		{code: "throw new TypeError('nope')", verdict: "error"},
		{code: "while (true) {}", verdict: "timeout"},
		{code: "a", main: "20", verdict: "ok"},
	}
	for i, st := range steps {
		r := cell(t, c, spec, st.code, 2000)
		if r.res.Verdict != st.verdict || string(r.res.Stdout) != st.stdout || r.main() != st.main {
			t.Errorf("step %d %q: verdict %s stdout %q main %q; want %s %q %q (%s)", i, st.code, r.res.Verdict, r.res.Stdout, r.main(), st.verdict, st.stdout, st.main, describe(r.res))
		}
		if i == 2 && (r.res.Cell.Error == nil || r.res.Cell.Error.Name != "TypeError" || r.res.Cell.Error.Value != "nope") {
			t.Errorf("error: %+v", r.res.Cell.Error)
		}
		if i == 3 && r.res.Cell.Restarted {
			t.Errorf("the interrupted loop restarted the interpreter")
		}
	}
}

// An output flood is cut at the limit and interrupted (the interpreter keeps its
// state); a memory bomb is killed by the memory watch and the context restarted.
func TestContextLimits(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	needTool(t, c, "python3")
	spec := agentproto.ContextSpec{ID: "ctx_lim", Language: "python"}
	cell(t, c, spec, "keep = 'me'", 20000)
	ctx := context.Background()
	res, err := c.Exec(ctx, &agentproto.ExecRequest{Language: "python", Context: &spec,
		Code:   "while True: print('x' * 1000)",
		Limits: agentproto.Limits{TimeoutMS: 20000, MaxOutputBytes: 100000}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != agentproto.VerdictOutputLimit || !res.StdoutTruncated || len(res.Stdout) != 100000 || res.Cell.Restarted {
		t.Fatalf("flood: %s truncated=%v len=%d restarted=%v", describe(res), res.StdoutTruncated, len(res.Stdout), res.Cell.Restarted)
	}
	if r := cell(t, c, spec, "keep", 20000); r.main() != "'me'" {
		t.Fatalf("after the flood: %q (%s)", r.main(), describe(r.res))
	}
	res, err = c.Exec(ctx, &agentproto.ExecRequest{Language: "python", Context: &spec,
		Code:   "hog = []\nwhile True: hog.append(bytearray(10 << 20))",
		Limits: agentproto.Limits{TimeoutMS: 60000, MemoryBytes: 200 << 20}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != agentproto.VerdictMemoryLimit || !res.Cell.Restarted {
		t.Fatalf("memory bomb: %s restarted=%v", describe(res), res.Cell.Restarted)
	}
	if r := cell(t, c, spec, "'keep' in dir()", 20000); r.main() != "False" || r.res.Verdict != "ok" {
		t.Fatalf("after the memory bomb: %q (%s)", r.main(), describe(r.res))
	}
}

// A cell's output written before a result comes before that result in the streamed
// frames: the driver's pipes and its control socket are separate channels, so the
// agent holds each result until the pipes have passed what was written before it.
func TestCellOutputBeforeResult(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	cases := []struct {
		lang, code string
		results    int
	}{
		// stdout well past a pipe's buffer, then display() and more, then the value.
		{lang: "python", results: 2, code: "import sys\nfor i in range(100): print('a%d' % i + 'y' * 2000)\n" +
			"print('e' * 3000, file=sys.stderr)\ndisplay('mid')\nprint('b' + 'z' * 70000)\n42"},
		{lang: "javascript", results: 1, code: "for (let i = 0; i < 100; i++) console.log('a' + i + 'y'.repeat(2000))\n" +
			"console.error('e'.repeat(3000))\nconsole.log('b' + 'z'.repeat(70000))\n42"},
	}
	for _, tc := range cases {
		t.Run(tc.lang, func(t *testing.T) {
			needTool(t, c, map[string]string{"python": "python3", "javascript": "node"}[tc.lang])
			spec := agentproto.ContextSpec{ID: "ctx_order_" + tc.lang, Language: tc.lang}
			for n := 0; n < 25; n++ {
				// What each result saw streamed before it, per stream.
				var out, errb strings.Builder
				type seen struct{ stdout, stderr int }
				var at []seen
				res, err := c.Exec(context.Background(), &agentproto.ExecRequest{Language: tc.lang, Code: tc.code, Context: &spec,
					Limits: agentproto.Limits{TimeoutMS: 30000}}, func(stream string, p []byte) {
					switch stream {
					case agentproto.StreamStdout:
						out.Write(p)
					case agentproto.StreamStderr:
						errb.Write(p)
					case agentproto.StreamResult:
						at = append(at, seen{out.Len(), errb.Len()})
					}
				})
				if err != nil {
					t.Fatal(err)
				}
				if res.Verdict != agentproto.VerdictOK || len(at) != tc.results {
					t.Fatalf("run %d: %s, %d results, want %d", n, describe(res), len(at), tc.results)
				}
				stdout := out.String()
				// Everything printed before the first result ends with the 'b' line's start.
				first := strings.Index(stdout, "b")
				if first < 0 || errb.Len() != 3001 {
					t.Fatalf("run %d: stdout %d bytes, stderr %d", n, len(stdout), errb.Len())
				}
				if at[0].stdout < first || at[0].stderr != 3001 {
					t.Fatalf("run %d: the first result came after %d bytes of stdout and %d of stderr, want %d and 3001", n, at[0].stdout, at[0].stderr, first)
				}
				if last := at[len(at)-1]; last.stdout != len(stdout) {
					t.Fatalf("run %d: the last result came after %d of %d bytes of stdout", n, last.stdout, len(stdout))
				}
			}
		})
	}
}

// The stream drops the cell's sync markers, counting them, and stops at its end marker,
// however the pipe splits them.
func TestCtxStreamMarkers(t *testing.T) {
	end, syn := "\x1evmexec-cell-end-ab\x1e", "\x1evmexec-cell-sync-ab\x1e"
	data := "one\x1evm" + syn + "two" + syn + syn + "three\x1e" + end + "next cell"
	for _, size := range []int{1, 2, 3, 7, len(data)} {
		var s ctxStream
		var got strings.Builder
		ended := s.begin([]byte(end), []byte(syn), func(p []byte) { got.Write(p) })
		for i := 0; i < len(data); i += size {
			s.feed([]byte(data[i:min(i+size, len(data))]))
			if i+size <= strings.Index(data, syn) && !s.waitSynced(0, 0) {
				t.Fatalf("size %d: waitSynced(0) failed", size)
			}
		}
		select {
		case <-ended:
		default:
			t.Fatalf("size %d: the end marker was not seen", size)
		}
		if got.String() != "one\x1evmtwothree\x1e" {
			t.Errorf("size %d: output %q", size, got.String())
		}
		if s.synced != 3 || !s.waitSynced(3, 0) {
			t.Errorf("size %d: %d syncs", size, s.synced)
		}
	}
	var s ctxStream
	s.begin([]byte(end), []byte(syn), func([]byte) {})
	s.feed([]byte("x" + syn))
	if !s.waitSynced(1, time.Second) || s.waitSynced(2, 10*time.Millisecond) {
		t.Errorf("waitSynced: want the first sync and a timeout for the second")
	}
}

// Markers of an earlier cell that come late (after that cell's waits gave up on them)
// are not passed on as output, however the pipe splits them; text that merely looks
// like one is.
func TestCtxStreamDropsStaleMarkers(t *testing.T) {
	hexa, hexb := strings.Repeat("ab", 12), strings.Repeat("0f", 12)
	end, syn := "\x1evmexec-cell-end-"+hexa+"\x1e", "\x1evmexec-cell-sync-"+hexa+"\x1e"
	oldEnd, oldSyn := "\x1evmexec-cell-end-"+hexb+"\x1e", "\x1evmexec-cell-sync-"+hexb+"\x1e"
	notOne := "\x1evmexec-cell-end-" + hexb[:23] + "g\x1e" + "\x1evmexec-cell-sync-" + hexb[:12] + "\x1e"
	data := oldSyn + oldEnd + "one" + oldSyn + syn + "two" + notOne + oldEnd + "\x1e" + end + "next"
	for _, size := range []int{1, 2, 5, 17, 42, len(data)} {
		var s ctxStream
		var got strings.Builder
		ended := s.begin([]byte(end), []byte(syn), func(p []byte) { got.Write(p) })
		for i := 0; i < len(data); i += size {
			s.feed([]byte(data[i:min(i+size, len(data))]))
		}
		select {
		case <-ended:
		default:
			t.Fatalf("size %d: the end marker was not seen", size)
		}
		if want := "onetwo" + notOne + "\x1e"; got.String() != want {
			t.Errorf("size %d: output %q, want %q", size, got.String(), want)
		}
		if s.synced != 1 {
			t.Errorf("size %d: %d syncs, want 1", size, s.synced)
		}
	}
}

// A javascript cell that replaces process.stdout.write (to silence or capture output)
// does not hold up the driver's markers: its cells and the ones after it end at once,
// not after the marker waits, and output flows again once the cell puts it back.
func TestCellMarkersWithPatchedWrite(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	needTool(t, c, "node")
	spec := agentproto.ContextSpec{ID: "ctx_patched_write", Language: "javascript"}
	for _, tc := range []struct{ code, main, stdout, stderr string }{
		{"const orig = process.stdout.write; process.stdout.write = function () { return true }; 1", "1", "", ""},
		{"console.log('dropped'); console.error('err'); 2", "2", "", "err\n"},
		{"process.stdout.write = orig; console.log('back'); 3", "3", "back\n", ""},
	} {
		start := time.Now()
		r := cell(t, c, spec, tc.code, 20000)
		if d := time.Since(start); d >= ctxMarkerWait {
			t.Errorf("%q took %v: a marker was waited for", tc.code, d)
		}
		if r.res.Verdict != agentproto.VerdictOK || r.main() != tc.main || string(r.res.Stdout) != tc.stdout || string(r.res.Stderr) != tc.stderr {
			t.Errorf("%q: main %q, %s", tc.code, r.main(), describe(r.res))
		}
	}
}

// A python cell that points fd 1 elsewhere (os.dup2) waits for its stdout markers at
// most ctxMarkerWait in all, not that for the sync marker and that again for the end
// marker; so does each cell after it while fd 1 stays redirected, and output flows
// again once it is put back.
func TestCellMarkerWaitsShareOneBudget(t *testing.T) {
	c := startAgent(t, testOptions(t, sandboxUser()))
	needTool(t, c, "python3")
	spec := agentproto.ContextSpec{ID: "ctx_dup2", Language: "python"}
	for _, tc := range []struct{ code, main, stdout string }{
		{"import os, tempfile\nsaved = os.dup(1)\nf = tempfile.TemporaryFile()\nos.dup2(f.fileno(), 1)\nprint('hidden', flush=True)\n1", "1", ""},
		{"print('hidden too', flush=True)\n2", "2", ""},
		{"os.dup2(saved, 1)\nprint('back', flush=True)\n3", "3", "back\n"},
		// The earlier cells' markers, in the file, are not output when it is printed.
		{"f.seek(0)\nsys = __import__('sys')\nsys.stdout.write(f.read().decode())\n4", "4", "hidden\nhidden too\n"},
	} {
		start := time.Now()
		r := cell(t, c, spec, tc.code, 20000)
		if d := time.Since(start); d >= ctxMarkerWait+time.Second {
			t.Errorf("%q took %v: its stdout markers were waited for more than %v in all", tc.code, d, ctxMarkerWait)
		}
		if r.res.Verdict != agentproto.VerdictOK || r.main() != tc.main || string(r.res.Stdout) != tc.stdout {
			t.Errorf("%q: main %q, %s", tc.code, r.main(), describe(r.res))
		}
	}
}
