package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/testenv"
)

const fourLanguages = "Here is the plan.\n\n" +
	"```python\nprint('one')\nopen('order.txt','a').write('py ')\n```\n\n" +
	"Then JavaScript:\n\n" +
	"~~~js\nconsole.log('two'); require('fs').appendFileSync('order.txt', 'js ')\n~~~\n\n" +
	"1. a list item with bash:\n\n   ```bash\n   echo three; printf 'sh ' >> order.txt\n   ```\n\n" +
	"> and rust, quoted:\n>\n> ```rust\n> fn main() { println!(\"four\"); }\n> ```\n\n" +
	"```cobol\nDISPLAY 'no'.\n```\n\n" +
	"Finally:\n\n```python\nprint(open('order.txt').read())\n"

// The seed's case: python, javascript, bash and rust in one message run in document
// order in one sandbox; an unknown language is reported, not dropped; a reply cut off
// before its last fence closed still runs that block.
func TestParseExecute(t *testing.T) {
	d := shared(t)
	ctx := bg(t)
	res, err := d.client.ParseExecute(ctx, api.ParseExecuteRequest{AgentID: "reply", Text: fourLanguages})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ lang, status, out string }{
		{"python", api.BlockExecuted, "one"},
		{"javascript", api.BlockExecuted, "two"},
		{"bash", api.BlockExecuted, "three"},
		{"rust", api.BlockExecuted, "four"},
		{"cobol", api.BlockUnsupported, ""},
		{"python", api.BlockExecuted, "py js sh"},
	}
	if len(res.Blocks) != len(want) {
		t.Fatalf("%d blocks, want %d: %+v", len(res.Blocks), len(want), res)
	}
	for i, w := range want {
		b := res.Blocks[i]
		if b.Block.Index != i || b.Status != w.status || b.Block.Language != w.lang {
			t.Fatalf("block %d: %+v, want %s %s", i, b, w.lang, w.status)
		}
		if w.out != "" && (b.Result == nil || strings.TrimSpace(b.Result.Stdout) != w.out) {
			t.Fatalf("block %d output: %+v, want %q", i, b.Result, w.out)
		}
	}
	if res.Blocks[5].Block.Closed || res.Blocks[0].Block.StartLine != 3 {
		t.Fatalf("positions: %+v", res.Blocks)
	}
	if res.Executed != 5 || !res.Success {
		t.Fatalf("summary: %+v", res)
	}
	// The history has one row per executed block, with the block's code; the
	// unsupported block left none.
	wantBlockRuns(t, d, "reply", res)
}

// wantBlockRuns checks that agent's history holds exactly the runs of res's executed
// blocks, each with its block's language and code.
func wantBlockRuns(t *testing.T, d *daemon, agent string, res api.ParseExecuteResult) {
	t.Helper()
	h, err := d.client.History(bg(t), client.HistoryQuery{AgentID: agent})
	if err != nil {
		t.Fatal(err)
	}
	runs := map[string]api.Run{}
	for _, r := range h.Runs {
		runs[r.ID] = r
	}
	if h.Total != res.Executed || len(runs) != res.Executed {
		t.Fatalf("history of %s: %d runs (total %d), want one per executed block (%d): %+v", agent, len(runs), h.Total, res.Executed, h.Runs)
	}
	for _, b := range res.Blocks {
		if b.Status != api.BlockExecuted {
			continue
		}
		if r, ok := runs[b.Result.ExecutionID]; !ok || r.Language != b.Block.Language || r.Code != b.Block.Code || r.Verdict != b.Result.Verdict {
			t.Fatalf("block %d (%s): history row %+v, want its language, code and verdict", b.Block.Index, b.Result.ExecutionID, r)
		}
	}
}

// stop_on_failure (the default) skips the blocks after a failure; turned off, they run.
func TestParseExecuteStopOnFailure(t *testing.T) {
	d := shared(t)
	ctx := bg(t)
	text := "```python\nprint('ok')\n```\n```python\nprint(undefined)\n```\n```bash\necho after\n```\n"
	res, err := d.client.ParseExecute(ctx, api.ParseExecuteRequest{AgentID: "reply-stop", Text: text})
	if err != nil {
		t.Fatal(err)
	}
	if res.Blocks[1].Result == nil || res.Blocks[1].Result.Verdict != api.VerdictNonzeroExit || !res.Blocks[1].Result.RolledBack ||
		res.Blocks[2].Status != api.BlockSkipped || res.Success {
		t.Fatalf("stop on failure: %+v", res)
	}
	wantBlockRuns(t, d, "reply-stop", res) // the skipped block is not a run
	keep := false
	res, err = d.client.ParseExecute(ctx, api.ParseExecuteRequest{AgentID: "reply-stop", Text: text, StopOnFailure: &keep})
	if err != nil || res.Blocks[2].Status != api.BlockExecuted || strings.TrimSpace(res.Blocks[2].Result.Stdout) != "after" {
		t.Fatalf("keep going: %+v %v", res, err)
	}
}

// Policy blocks destructive code with a rule and a reason, before any sandbox sees it;
// the attempt is in the history as blocked; harmless look-alikes run.
func TestPolicyBlocks(t *testing.T) {
	d := shared(t)
	ctx := bg(t)
	a := "policy"
	wantOK(t, d.exec(t, a, "bash", "mkdir -p ~/build && echo kept > ~/keep.txt && echo ok"), "ok")
	r := d.exec(t, a, "bash", "rm -rf /home/user")
	if !r.Blocked || r.Verdict != api.VerdictBlocked || r.BlockedRule == "" || r.BlockedReason == "" || r.ExitCode == 0 {
		t.Fatalf("rm -rf /home/user: %s rule=%q reason=%q", describe(r), r.BlockedRule, r.BlockedReason)
	}
	wantOK(t, d.exec(t, a, "bash", "cat ~/keep.txt"), "kept")
	for _, c := range []struct{ lang, code string }{
		{"bash", "rm -rf ./build && echo removed"},
		{"javascript", "const m = /a(b)/.exec('xab'); console.log(m[1])"},
		{"python", "import subprocess; print(subprocess.run(['ls', '/'], capture_output=True).returncode)"},
		{"python", "print('{} format'.format('string'))"},
	} {
		if res := d.exec(t, a, c.lang, c.code); res.Blocked || res.Verdict != api.VerdictOK {
			t.Errorf("harmless %s %q: %s", c.lang, c.code, describe(res))
		}
	}
	h, err := d.client.History(ctx, client.HistoryQuery{AgentID: a, FailuresOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, run := range h.Runs {
		found = found || run.Status == "blocked" && run.BlockedRule == r.BlockedRule && run.Code == "rm -rf /home/user"
	}
	if !found {
		t.Fatalf("blocked attempt not in history: %+v", h.Runs)
	}
	// A block of the agent's own: only python allowed.
	if _, err := d.client.SetAgentPolicy(ctx, "python-only", api.ExecPolicy{AllowedLanguages: []string{"python"}}); err != nil {
		t.Fatal(err)
	}
	if res := d.exec(t, "python-only", "bash", "echo hi"); !res.Blocked || res.BlockedRule != "language_not_allowed" {
		t.Fatalf("language outside the agent's list: %s", describe(res))
	}
	wantOK(t, d.exec(t, "python-only", "python", "print('fine')"), "fine")
	// Code over the policy's 100 KB is refused with a reason.
	if res := d.exec(t, a, "python", "x = 1\n"+strings.Repeat("# pad\n", 20000)); !res.Blocked || res.BlockedRule != "code_too_large" {
		t.Fatalf("large code: %s", describe(res))
	}
}

// Secrets in output are redacted in the response and in the history, not suppressed,
// on stderr (a traceback quoting a token) as on stdout.
func TestRedaction(t *testing.T) {
	d := shared(t)
	ctx := bg(t)
	for _, c := range []struct {
		name, code, kept string
		secrets          []string
		stderr           bool
	}{
		{"stdout", `print("key: sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6")
print("password=hunter2-very-secret")
print("ordinary line")`, "ordinary line", []string{"A1b2C3d4", "hunter2"}, false},
		{"stderr", `import sys
print("ordinary line", file=sys.stderr)
raise ValueError("bad token ghp_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2")`, "ValueError", []string{"ghp_Z9y8"}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := d.exec(t, "redact", "python", c.code)
			out, other := r.Stdout, r.Stderr
			if c.stderr {
				out, other = r.Stderr, r.Stdout
			}
			if containsAny(out, c.secrets) || !strings.Contains(out, "[REDACTED:") ||
				!strings.Contains(out, c.kept) || strings.Contains(other, "[REDACTED:") || len(r.Redactions) == 0 {
				t.Fatalf("redaction: stdout %q stderr %q %v", r.Stdout, r.Stderr, r.Redactions)
			}
			run, err := d.client.GetRun(ctx, r.ExecutionID)
			stored := run.Stdout
			if c.stderr {
				stored = run.Stderr
			}
			if err != nil || containsAny(stored, c.secrets) || !strings.Contains(stored, "[REDACTED:") {
				t.Fatalf("history: stdout %q stderr %q %v", run.Stdout, run.Stderr, err)
			}
		})
	}
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// The compatible parse-execute route answers in the seed's shape.
func TestCompatParseExecute(t *testing.T) {
	d := shared(t)
	body := `{"agent_id":"compat-reply","llm_response":"Try:\n` + "```python\\nprint(2+2)\\n```" + `\nand\n` + "```\\nunlabeled text that is no code\\n```" + `","auto_execute":true}`
	resp, err := http.Post(d.url+"/api/llm/parse-execute", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		CodeBlocks       []map[string]any `json:"code_blocks"`
		ExecutionResults []map[string]any `json:"execution_results"`
		Errors           []string         `json:"errors"`
	}
	json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode != 200 || len(out.CodeBlocks) != 2 || len(out.ExecutionResults) != 1 || out.ExecutionResults[0]["stdout"] != "4\n" || len(out.Errors) != 1 {
		t.Fatalf("compat parse-execute: %d %+v", resp.StatusCode, out)
	}
}

// The CLI runs a reply from stdin and reports each block.
func TestCLIRunReply(t *testing.T) {
	d := shared(t)
	cmd := exec.Command(testenv.Vmexec(t), "--url", d.url, "run-reply", "--agent", "cli-reply")
	cmd.Stdin = strings.NewReader("```python\nprint(6*7)\n```\n\n```bash\nexit 3\n```\n\n```bash\necho never\n```\n")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v\n%s", err, out)
	}
	for _, want := range []string{"42", "block 3", "skipped", "2 run, 1 failed, 1 skipped"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
}

// Policy is a seat belt, not the isolation: with policy off, destructive code runs and
// the sandbox still holds — the host and the template are untouched, the next run works.
func TestPolicyOffSandboxHolds(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "vmexec.yaml")
	os.WriteFile(cfg, []byte("sandbox:\n  policy:\n    enabled: false\n"), 0o644)
	d := startDaemon(t, daemonOpts{extra: []string{"--config", cfg, "--pool-size", "0"}})
	marker := filepath.Join(t.TempDir(), "host-marker")
	os.WriteFile(marker, []byte("intact"), 0o644)
	tpl := testenv.Template(t)
	r := d.exec(t, "reckless", "bash", "rm -rf --no-preserve-root / 2>/dev/null; rm -rf /home/user "+marker+"; ls /usr/bin | wc -l")
	if r.Blocked {
		t.Fatalf("policy is off but the run was blocked: %s", describe(r))
	}
	if b, err := os.ReadFile(marker); err != nil || string(b) != "intact" {
		t.Fatalf("host file touched: %v %q", err, b)
	}
	if _, err := os.Stat(filepath.Join(tpl.RootFS, "usr", "bin", "python3")); err != nil {
		t.Fatalf("template damaged: %v", err)
	}
	next := d.exec(t, "reckless", "python", "print('alive')")
	wantOK(t, next, "alive")
}
