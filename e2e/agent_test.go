package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/llm/llmtest"
	"github.com/vmexec/vmexec/internal/testenv"
)

// agentDaemon starts a daemon whose agents talk to scripted fake LLM servers (on
// loopback, in this process): agents in the vmexec config file, and the seed's role
// config file (its shape, with the base URLs pointed at fakes) through
// --agents-config. It returns the daemon and the URL of a port nothing listens on.
func agentDaemon(t *testing.T, extraAgents string) (*daemon, string) {
	t.Helper()
	fake := func(r llmtest.Responder) string {
		s := llmtest.Start(r)
		t.Cleanup(s.Close)
		return s.URL
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + ln.Addr().String() + "/v1"
	ln.Close()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`agents:
  - id: fixer-fenced
    tools: "off"
    llm: {base_url: %q}
    vm_execution: {enabled: true}
  - id: fixer-tools
    llm: {base_url: %q}
    vm_execution: {enabled: true}
  - id: looper
    llm: {base_url: %q}
    max_steps: 10
    vm_execution: {enabled: true}
  - id: down
    llm: {base_url: %q, max_retries: 1, backoff: 10ms}
    vm_execution: {enabled: true}
  - id: quick-timeout
    llm: {base_url: %q}
    vm_execution: {enabled: true, execution_timeout_ms: 3000}
%s`, fake(llmtest.FixFenced), fake(llmtest.FixTools), fake(llmtest.Forever(llmtest.Turn{Content: "Once more:\n\n```bash\necho again >> ~/loops.txt; wc -l < ~/loops.txt\n```\n"})),
		down, down, extraAgents)
	if err := os.WriteFile(filepath.Join(dir, "vmexec.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	seed, err := os.ReadFile("../internal/agent/testdata/seed-roles.json")
	if err != nil {
		t.Fatal(err)
	}
	// The seed's file as it is, but for the base URLs: Ollama's root for
	// DevelopmentAgent (no /v1, as the seed writes it), and a chat-only model.
	dev := strings.TrimSuffix(fake(llmtest.FixFenced), "/v1")
	seed = bytes.Replace(seed, []byte(`"http://127.0.0.1:11434"`), []byte(`"`+dev+`"`), 1)
	seed = bytes.Replace(seed, []byte(`"http://127.0.0.1:3456"`), []byte(`"`+fake(llmtest.Forever(llmtest.Turn{Content: "Done, concisely."}))+`"`), 1)
	if err := os.WriteFile(filepath.Join(dir, "roles.json"), seed, 0o644); err != nil {
		t.Fatal(err)
	}
	return startDaemon(t, daemonOpts{extra: []string{"--config", filepath.Join(dir, "vmexec.yaml"), "--agents-config", filepath.Join(dir, "roles.json")}}), down
}

func chat(t *testing.T, d *daemon, agent string, req api.ChatRequest) api.ChatResult {
	t.Helper()
	res, err := d.client.Chat(bg(t), agent, req)
	if err != nil {
		t.Fatalf("chat %s %.60q: %v", agent, req.Message, err)
	}
	return res
}

func runsOf(res api.ChatResult) []api.ChatRun {
	var out []api.ChatRun
	for _, s := range res.Steps {
		out = append(out, s.Runs...)
	}
	return out
}

// transcript is a turn as a reader follows it.
func transcript(res api.ChatResult) string {
	var b strings.Builder
	for _, s := range res.Steps {
		fmt.Fprintf(&b, "step %d, model:\n%s\n", s.Index, strings.TrimSpace(s.Content))
		for _, r := range s.Runs {
			fmt.Fprintf(&b, "  run %d (%s via %s): %s", r.Index+1, r.Language, r.Source, r.Status)
			if r.Result != nil {
				fmt.Fprintf(&b, ", verdict %s, exit %d, rolled back %v\n  stdout: %q\n  stderr: %q\n", r.Result.Verdict, r.Result.ExitCode, r.Result.RolledBack, r.Result.Stdout, tail(r.Result.Stderr, 2))
			} else {
				fmt.Fprintf(&b, " (%s)\n", r.Reason)
			}
		}
	}
	fmt.Fprintf(&b, "stop: %s, success: %v\n", res.StopReason, res.Success)
	return b.String()
}

// The agent layer end to end, against the real daemon, real sandboxes and SQLite, with
// scripted models.
func TestAgents(t *testing.T) {
	d, down := agentDaemon(t, "")

	// The three-step loop: the model's first code fails for real (python's
	// NameError), it is shown the error and the rollback, fixes the code, sees the
	// output and answers — with fenced blocks and with run_code tool calls.
	for _, agent := range []string{"fixer-fenced", "fixer-tools"} {
		t.Run("fix loop "+agent, func(t *testing.T) {
			res := chat(t, d, agent, api.ChatRequest{Message: "What is 10 factorial? Compute it."})
			t.Logf("transcript (%s):\n%s", agent, transcript(res))
			runs := runsOf(res)
			if len(res.Steps) != 3 || res.StopReason != api.StopAnswered || !res.Success || len(runs) != 2 {
				t.Fatalf("want 3 steps, 2 runs, answered:\n%s", transcript(res))
			}
			first, fixed := runs[0].Result, runs[1].Result
			if first.Verdict != api.VerdictNonzeroExit || !strings.Contains(first.Stderr, "NameError") || !first.RolledBack {
				t.Fatalf("first run: %s", describe(first))
			}
			wantOK(t, fixed, llmtest.FixedOut)
			if res.Message != llmtest.FinalText {
				t.Fatalf("final message %q", res.Message)
			}
			// The runs are history rows linked to the conversation and step.
			for i, r := range runs {
				row, err := d.client.GetRun(bg(t), r.Result.ExecutionID)
				if err != nil {
					t.Fatal(err)
				}
				if row.Metadata["conversation_id"] != res.ConversationID || fmt.Sprint(row.Metadata["step"]) != fmt.Sprint(i+1) || row.AgentID != agent {
					t.Fatalf("run %d's row: agent %s metadata %v", i, row.AgentID, row.Metadata)
				}
			}
			conv, err := d.client.Conversation(bg(t), res.ConversationID)
			if err != nil {
				t.Fatal(err)
			}
			if conv.AgentID != agent || len(conv.Messages) < 6 || conv.Messages[0].Content != "What is 10 factorial? Compute it." {
				t.Fatalf("conversation: %+v", conv)
			}
		})
	}

	t.Run("the CLI prints the text, live output and verdicts", func(t *testing.T) {
		out, err := exec.Command(testenv.Vmexec(t), "--url", d.url, "chat", "--agent", "fixer-fenced", "What is 10 factorial? Compute it.").CombinedOutput()
		t.Logf("vmexec chat:\n%s", out)
		if err != nil {
			t.Fatalf("vmexec chat: %v", err)
		}
		for _, want := range []string{"Let me compute it.", "NameError", "nonzero_exit", "rolled back to snap-", "3628800", "python · ok", llmtest.FinalText, "answered · 3 steps · success"} {
			if !bytes.Contains(out, []byte(want)) {
				t.Errorf("output lacks %q", want)
			}
		}
	})

	t.Run("the CLI's interactive session continues one conversation", func(t *testing.T) {
		cmd := exec.Command(testenv.Vmexec(t), "--url", d.url, "chat", "--agent", "fixer-fenced")
		cmd.Stdin = strings.NewReader("What is 10 factorial? Compute it.\nthanks\n\n")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("vmexec chat: %v\n%s", err, out)
		}
		// Two turns; the second (after the answer) is answered without code.
		if n := bytes.Count(out, []byte("answered ·")); n != 2 || !bytes.Contains(out, []byte("3628800")) {
			t.Fatalf("%d turns answered:\n%s", n, out)
		}
		convs := map[string]bool{}
		for _, line := range strings.Split(string(out), "\n") {
			if _, id, ok := strings.Cut(line, "conversation "); ok {
				convs[id] = true
			}
		}
		if len(convs) != 1 {
			t.Fatalf("conversations %v, want one:\n%s", convs, out)
		}
	})

	t.Run("streamed: deltas, live output, runs and steps", func(t *testing.T) {
		var mu sync.Mutex
		var deltas, stdout strings.Builder
		var runs, steps int
		res, err := d.client.ChatStream(bg(t), "fixer-tools", api.ChatRequest{Message: "10!"}, client.ChatOutput{
			Delta:  func(x api.ChatDelta) { mu.Lock(); deltas.WriteString(x.Text); mu.Unlock() },
			Stdout: func(o api.ChatOutput) { mu.Lock(); stdout.WriteString(o.Data); mu.Unlock() },
			Run:    func(api.ChatRun) { runs++ },
			Step:   func(api.ChatStep) { steps++ },
		})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Success || runs != 2 || steps != 3 || !strings.Contains(stdout.String(), llmtest.FixedOut) || !strings.Contains(deltas.String(), llmtest.FinalText) {
			t.Fatalf("success %v, %d runs, %d steps, stdout %q, deltas %q", res.Success, runs, steps, stdout.String(), deltas.String())
		}
	})

	t.Run("max_steps caps a model that never stops", func(t *testing.T) {
		res := chat(t, d, "looper", api.ChatRequest{Message: "loop", MaxSteps: 3})
		if res.StopReason != api.StopMaxSteps || len(res.Steps) != 3 || res.Success {
			t.Fatalf("%s", transcript(res))
		}
		wantOK(t, runsOf(res)[2].Result, "3") // state persisted across the steps
		h, err := d.client.History(bg(t), client.HistoryQuery{AgentID: "looper"})
		if err != nil || h.Total != 3 {
			t.Fatalf("history: %v, %d runs, want 3", err, h.Total)
		}
	})

	t.Run("LLM server down: a clear error", func(t *testing.T) {
		_, err := d.client.Chat(bg(t), "down", api.ChatRequest{Message: "hi"})
		var ce *client.Error
		host := strings.TrimSuffix(strings.TrimPrefix(down, "http://"), "/v1")
		if !asClientError(err, &ce) || ce.Status != http.StatusBadGateway || !strings.Contains(ce.Message, host) || !strings.Contains(ce.Message, "ollama serve") {
			t.Fatalf("err %v; want 502 naming %s and what to start", err, host)
		}
		// The seed's route says so in its own shape.
		status, body := postJSON(t, d.url+"/chat", `{"role":"down","messages":[{"role":"user","content":"hi"}]}`)
		if status != http.StatusBadGateway || body["status"] != "error" || !strings.Contains(fmt.Sprint(body["error"]), host) {
			t.Fatalf("POST /chat: %d %v", status, body)
		}
	})

	t.Run("seed role config: DevelopmentAgent runs code through POST /chat", func(t *testing.T) {
		status, body := postJSON(t, d.url+"/chat", `{"role":"DevelopmentAgent","messages":[{"role":"user","content":"What is 10 factorial?"}]}`)
		msg := fmt.Sprint(body["message"])
		if status != 200 || body["status"] != "success" || body["model_used"] != "llama3.2:3b" {
			t.Fatalf("%d %v", status, body)
		}
		reply, results, ok := strings.Cut(msg, "\n\n--- VM Execution Results ---\n")
		if !ok || reply != llmtest.FinalText || !strings.Contains(results, "NameError") || !strings.Contains(results, llmtest.FixedOut) {
			t.Fatalf("message %q", msg)
		}
		// A role without vm_execution chats and runs nothing.
		status, body = postJSON(t, d.url+"/chat", `{"role":"SimpleTaskAgent","messages":[{"role":"user","content":"hi"}],"model":"other"}`)
		if status != 200 || body["message"] != "Done, concisely." || body["model_used"] != "other" {
			t.Fatalf("SimpleTaskAgent: %d %v", status, body)
		}
		status, body = postJSON(t, d.url+"/chat", `{"role":"NoSuchRole","messages":[{"role":"user","content":"hi"}]}`)
		if status != 404 || body["status"] != "error" {
			t.Fatalf("unknown role: %d %v", status, body)
		}
	})

	t.Run("seed acceptance cases through execute mode", func(t *testing.T) { acceptance(t, d) })
}

func asClientError(err error, ce **client.Error) bool {
	e, ok := err.(*client.Error)
	if ok {
		*ce = e
	}
	return ok
}

func postJSON(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

func fence(lang, code string) string { return "```" + lang + "\n" + code + "\n```\n\n" }

// acceptance runs the seed's agent acceptance cases (wire-compat.md) through execute
// mode of the seed's DevelopmentAgent (and quick-timeout, for the timeout case).
func acceptance(t *testing.T, d *daemon) {
	const dev = "DevelopmentAgent"
	exe := func(t *testing.T, agent, conv, msg string) api.ChatResult {
		t.Helper()
		return chat(t, d, agent, api.ChatRequest{Mode: api.ChatModeExecute, Message: msg, ConversationID: conv})
	}
	verdicts := func(res api.ChatResult) string {
		var v []string
		for _, r := range runsOf(res) {
			if r.Result != nil {
				v = append(v, r.Result.Verdict)
			} else {
				v = append(v, r.Status)
			}
		}
		return strings.Join(v, ",")
	}
	stdout := func(res api.ChatResult, i int) string { return strings.TrimSpace(runsOf(res)[i].Result.Stdout) }
	primes := "fn main() {\n    let v: Vec<String> = (2..=50u32).filter(|n| (2..*n).all(|d| n % d != 0)).map(|n| n.to_string()).collect();\n    println!(\"{}\", v.join(\" \"));\n}"

	t.Run("python factorial(10)", func(t *testing.T) {
		res := exe(t, dev, "", fence("python", "import math\nprint(math.factorial(10))"))
		if !res.Success || stdout(res, 0) != "3628800" {
			t.Fatal(transcript(res))
		}
	})
	t.Run("rust primes up to 50", func(t *testing.T) {
		res := exe(t, dev, "", fence("rust", primes))
		if !res.Success || stdout(res, 0) != "2 3 5 7 11 13 17 19 23 29 31 37 41 43 47" {
			t.Fatal(transcript(res))
		}
	})
	t.Run("rm -rf /home/user is blocked with a reason", func(t *testing.T) {
		res := exe(t, dev, "", fence("bash", "rm -rf /home/user"))
		r := runsOf(res)[0]
		if res.Success || r.Status != api.ChatRunBlocked || r.Reason == "" {
			t.Fatal(transcript(res))
		}
	})
	t.Run("a file written in turn 1 is read in turn 2", func(t *testing.T) {
		one := exe(t, dev, "", fence("python", "open('turns.txt','w').write('from turn 1')"))
		two := exe(t, dev, one.ConversationID, fence("bash", "cat turns.txt"))
		if !one.Success || !two.Success || stdout(two, 0) != "from turn 1" || two.ConversationID != one.ConversationID {
			t.Fatal(transcript(one), transcript(two))
		}
	})
	t.Run("success, then a NameError, then a recovering run", func(t *testing.T) {
		res := exe(t, dev, "", fence("python", "open('keep.txt','w').write('kept')\nprint('ok')")+fence("python", "open('keep.txt','w').write('clobbered')\nprint(undefined_name)")+fence("python", "print(open('keep.txt').read())"))
		if got := verdicts(res); got != "ok,nonzero_exit,ok" || stdout(res, 2) != "kept" || !runsOf(res)[1].Result.RolledBack {
			t.Fatalf("%s: %s", got, transcript(res))
		}
	})
	t.Run("python then javascript", func(t *testing.T) {
		res := exe(t, dev, "", fence("python", "print('py')")+fence("javascript", "console.log('js')"))
		if verdicts(res) != "ok,ok" || stdout(res, 1) != "js" {
			t.Fatal(transcript(res))
		}
	})
	t.Run("python, javascript, bash, rust in one message", func(t *testing.T) {
		res := exe(t, dev, "", "Four:\n\n"+fence("python", "print(1)")+fence("javascript", "console.log(2)")+fence("bash", "echo 3")+fence("rust", "fn main() { println!(\"4\"); }"))
		if verdicts(res) != "ok,ok,ok,ok" || stdout(res, 3) != "4" || !res.Success {
			t.Fatal(transcript(res))
		}
	})
	t.Run("2+2 prints 4", func(t *testing.T) {
		res := exe(t, dev, "", fence("python", "print(2+2)"))
		if stdout(res, 0) != "4" {
			t.Fatal(transcript(res))
		}
	})
	t.Run("10 quick runs", func(t *testing.T) {
		conv := ""
		for i := 0; i < 10; i++ {
			res := exe(t, dev, conv, fence("bash", fmt.Sprintf("echo %d", i)))
			if !res.Success || stdout(res, 0) != fmt.Sprint(i) {
				t.Fatal(transcript(res))
			}
			conv = res.ConversationID
		}
		c, err := d.client.Conversation(bg(t), conv)
		if err != nil || len(c.Messages) != 20 {
			t.Fatalf("conversation: %v, %d messages, want 20", err, len(c.Messages))
		}
	})
	t.Run("3 agents at once", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 3)
		for _, a := range []string{dev, "fixer-fenced", "fixer-tools"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := d.client.Chat(bg(t), a, api.ChatRequest{Mode: api.ChatModeExecute, Message: fence("bash", "echo $((6*7))")})
				if err != nil || !res.Success || strings.TrimSpace(runsOf(res)[0].Result.Stdout) != "42" || runsOf(res)[0].Result.AgentID != a {
					errs <- fmt.Errorf("agent %s: %v %+v", a, err, res)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
	t.Run("a 45 s sleep is cut by the timeout", func(t *testing.T) {
		res := exe(t, "quick-timeout", "", fence("bash", "sleep 45"))
		if r := runsOf(res)[0].Result; r.Verdict != api.VerdictTimeout || !r.RolledBack {
			t.Fatal(transcript(res))
		}
	})
	t.Run("state: write 1, snapshot, write 2, roll back, read 1", func(t *testing.T) {
		one := exe(t, dev, "", fence("bash", "echo 1 > state.txt"))
		sb := runsOf(one)[0].Result.SandboxID
		snap, err := d.client.CreateSnapshot(bg(t), sb, api.CreateSnapshotRequest{AgentID: dev, Name: "one"})
		if err != nil {
			t.Fatal(err)
		}
		exe(t, dev, one.ConversationID, fence("bash", "echo 2 > state.txt"))
		if _, err := d.client.Rollback(bg(t), sb, api.RollbackRequest{AgentID: dev, SnapshotID: snap.ID}); err != nil {
			t.Fatal(err)
		}
		res := exe(t, dev, one.ConversationID, fence("bash", "cat state.txt"))
		if stdout(res, 0) != "1" {
			t.Fatal(transcript(res))
		}
	})
}

// Against a real OpenAI-compatible server (VMEXEC_TEST_LLM_URL, e.g.
// http://127.0.0.1:11434/v1; VMEXEC_TEST_LLM_MODEL, default llama3.2:3b): the model is
// asked for code that prints a known number, and the turn must run code and end.
func TestAgentRealLLM(t *testing.T) {
	url := os.Getenv("VMEXEC_TEST_LLM_URL")
	if url == "" {
		t.Skip("VMEXEC_TEST_LLM_URL is not set: no real LLM server to test against (set it to e.g. http://127.0.0.1:11434/v1 with Ollama running)")
	}
	model := os.Getenv("VMEXEC_TEST_LLM_MODEL")
	if model == "" {
		model = "llama3.2:3b"
	}
	d, _ := agentDaemon(t, fmt.Sprintf("  - id: real\n    llm: {base_url: %q, model: %q}\n    max_steps: 4\n    vm_execution: {enabled: true, allowed_languages: [python]}\n", url, model))
	res := chat(t, d, "real", api.ChatRequest{Message: "Use python to compute 12345 * 6789 and print the result. Run the code."})
	t.Logf("transcript:\n%s", transcript(res))
	found := false
	for _, r := range runsOf(res) {
		if r.Result != nil && strings.Contains(r.Result.Stdout, "83810205") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no run printed 83810205:\n%s", transcript(res))
	}
}
