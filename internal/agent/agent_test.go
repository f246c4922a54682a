package agent_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/agent"
	"github.com/vmexec/vmexec/internal/history/sqlite"
	"github.com/vmexec/vmexec/internal/llm"
	"github.com/vmexec/vmexec/internal/llm/llmtest"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// fakeExec stands in for the sandbox service: the scenarios' broken code fails with
// a NameError and is rolled back, `exit 1` fails, everything else prints "ran".
type fakeExec struct {
	mu   sync.Mutex
	reqs []api.ExecRequest
}

func (f *fakeExec) ExecStream(_ context.Context, req api.ExecRequest, out sandbox.OutputFunc) (*api.ExecResult, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	n := len(f.reqs)
	f.mu.Unlock()
	res := &api.ExecResult{ExecutionID: "ex-" + string(rune('a'+n)), AgentID: req.AgentID, Language: req.Language, Verdict: api.VerdictOK}
	switch {
	case req.Code == llmtest.BrokenCode:
		res.Verdict, res.ExitCode, res.RolledBack = api.VerdictNonzeroExit, 1, true
		res.Stderr = "Traceback (most recent call last):\nNameError: name 'n' is not defined\n"
	case req.Code == llmtest.FixedCode:
		res.Stdout = llmtest.FixedOut + "\n"
	case strings.Contains(req.Code, "exit 1"):
		res.Verdict, res.ExitCode, res.RolledBack = api.VerdictNonzeroExit, 1, true
	default:
		res.Stdout = "ran\n"
	}
	if out != nil {
		out("stdout", []byte(res.Stdout))
	}
	return res, nil
}

func (f *fakeExec) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

func newRunner(t *testing.T, cfg agent.Config) (*agent.Runner, *fakeExec) { return newRunnerB(t, cfg) }

func newRunnerB(t testing.TB, cfg agent.Config) (*agent.Runner, *fakeExec) {
	t.Helper()
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "h.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ex := &fakeExec{}
	cfg.LLM.Backoff = time.Millisecond
	r, err := agent.New([]agent.Config{cfg}, agent.Deps{Exec: ex, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	return r, ex
}

func coder(id, url string) agent.Config {
	return agent.Config{ID: id, LLM: llm.Config{BaseURL: url}, VMExecution: &agent.VMExecution{Enabled: true}}
}

func statuses(res api.ChatResult) []string {
	var out []string
	for _, s := range res.Steps {
		for _, r := range s.Runs {
			v := r.Status
			if r.Result != nil {
				v = r.Result.Verdict
			}
			out = append(out, v)
		}
	}
	return out
}

// The loop a user relies on: the model's first code fails, the model is shown the
// error, fixes it, sees the output and answers — for models that write fenced blocks
// and for models that call run_code (arguments streamed in pieces).
func TestFixLoop(t *testing.T) {
	for _, tc := range []struct {
		name   string
		model  llmtest.Responder
		stream bool
	}{{"fenced blocks", llmtest.FixFenced, false}, {"tool calls, streamed", llmtest.FixTools, true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := llmtest.Start(tc.model)
			defer srv.Close()
			r, ex := newRunner(t, coder("dev", srv.URL))
			var deltas strings.Builder
			var ev agent.Events
			if tc.stream {
				ev.Delta = func(d api.ChatDelta) { deltas.WriteString(d.Text) }
			}
			res, err := r.Chat(context.Background(), "dev", api.ChatRequest{Message: "What is 10 factorial? Compute it."}, ev)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Steps) != 3 || res.StopReason != api.StopAnswered || !res.Success || res.Message != llmtest.FinalText {
				t.Fatalf("result %+v; want 3 steps ending answered with %q", res, llmtest.FinalText)
			}
			if got := strings.Join(statuses(res), ","); got != "nonzero_exit,ok" {
				t.Fatalf("runs %s, want nonzero_exit,ok", got)
			}
			reqs := srv.Requests()
			if len(reqs) != 3 || ex.count() != 2 {
				t.Fatalf("%d llm requests, %d runs; want 3 and 2", len(reqs), ex.count())
			}
			// The second request shows the model the failure: the error and the rollback.
			if last := reqs[1].Last().Content; !strings.Contains(last, "NameError") || !strings.Contains(last, "rolled back") {
				t.Fatalf("second request's last message %q does not report the error and the rollback", last)
			}
			if sys := reqs[0].Messages[0]; sys.Role != "system" || !strings.Contains(sys.Content, "rolled back") {
				t.Fatalf("system prompt %q does not describe the sandbox", sys.Content)
			}
			if tc.stream && !strings.Contains(deltas.String(), "Fixing it.") {
				t.Errorf("streamed deltas %q", deltas.String())
			}
			// Each run is linked to its conversation and step.
			if md := ex.reqs[1].Metadata; md["conversation_id"] != res.ConversationID || md["step"] != 2 {
				t.Errorf("run metadata %v", md)
			}
			// The conversation is stored and continues: the next turn's request holds it.
			conv, err := r.Conversation(context.Background(), res.ConversationID)
			if err != nil {
				t.Fatal(err)
			}
			if len(conv.Messages) < 6 || conv.Messages[0].Role != "user" {
				t.Fatalf("stored conversation: %+v", conv.Messages)
			}
			if _, err := r.Chat(context.Background(), "dev", api.ChatRequest{Message: "thanks", ConversationID: res.ConversationID}, agent.Events{}); err != nil {
				t.Fatal(err)
			}
			next := srv.Requests()[3]
			if len(next.Messages) != 1+len(conv.Messages)+1 || next.Last().Content != "thanks" {
				t.Fatalf("continued request has %d messages, want the system prompt, %d stored and the new one", len(next.Messages), len(conv.Messages))
			}
		})
	}
}

// The loop ends: a model that writes code forever is capped, and one that repeats
// the same failure is stopped; a malformed tool call is refused with a reason the
// model is shown, and nothing runs.
func TestLoopEnds(t *testing.T) {
	tests := []struct {
		name     string
		model    llmtest.Responder
		maxSteps int
		stop     string
		steps    int
		runs     int
	}{
		{"max_steps caps a model that never stops", llmtest.Forever(llmtest.Turn{Content: "```bash\necho again\n```"}), 4, api.StopMaxSteps, 4, 4},
		{"an identical failure twice stops", llmtest.Forever(llmtest.Turn{Content: "```bash\nexit 1\n```"}), 10, api.StopRepeatedFailure, 2, 2},
		{"malformed tool arguments are refused", llmtest.Script(
			llmtest.Turn{ToolCalls: []llmtest.Call{{Name: "run_code", Arguments: `{"language": "python", "code": "print(1)"`}}, Chunk: 4},
			llmtest.Turn{Content: "Sorry."}), 10, api.StopAnswered, 2, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := llmtest.Start(tc.model)
			defer srv.Close()
			r, ex := newRunner(t, coder("dev", srv.URL))
			res, err := r.Chat(context.Background(), "dev", api.ChatRequest{Message: "go", MaxSteps: tc.maxSteps}, agent.Events{})
			if err != nil {
				t.Fatal(err)
			}
			if res.StopReason != tc.stop || len(res.Steps) != tc.steps || ex.count() != tc.runs {
				t.Fatalf("stop %s after %d steps and %d runs; want %s, %d, %d", res.StopReason, len(res.Steps), ex.count(), tc.stop, tc.steps, tc.runs)
			}
			if tc.stop != api.StopAnswered && res.Success {
				t.Error("success on a turn that did not end with an answer")
			}
			if tc.runs == 0 {
				run := res.Steps[0].Runs[0]
				told := srv.Requests()[1].Last()
				if run.Status != api.ChatRunRefused || told.Role != "tool" || !strings.Contains(told.Content, "not valid JSON") {
					t.Fatalf("run %+v; model told %+v", run, told)
				}
			}
		})
	}
}

// A model that cannot call tools gets fenced-block instructions instead, and its
// blocks run.
func TestToolsUnsupportedFallsBack(t *testing.T) {
	srv := llmtest.Start(func(r llmtest.Request, n int) llmtest.Turn {
		t := llmtest.FixFenced(r, n)
		t.ToolsUnsupported = true
		return t
	})
	defer srv.Close()
	r, _ := newRunner(t, coder("dev", srv.URL))
	res, err := r.Chat(context.Background(), "dev", api.ChatRequest{Message: "10!"}, agent.Events{})
	if err != nil || !res.Success {
		t.Fatalf("%v %+v", err, res)
	}
	reqs := srv.Requests()
	if len(reqs[0].Tools) == 0 || len(reqs[1].Tools) != 0 || len(reqs[len(reqs)-1].Tools) != 0 {
		t.Fatal("tools were not dropped after the model refused them")
	}
}

// Execute mode runs the message's own blocks without the LLM; an agent without
// vm_execution chats and runs nothing.
func TestExecuteModeAndChatOnly(t *testing.T) {
	r, ex := newRunner(t, coder("dev", "http://127.0.0.1:1"))
	res, err := r.Chat(context.Background(), "dev", api.ChatRequest{Mode: "execute",
		Message: "```python\nprint(1)\n```\n```bash\nexit 1\n```\n```cobol\nDISPLAY 'x'.\n```\n"}, agent.Events{})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(statuses(res), ","); got != "ok,nonzero_exit,refused" || res.Success || ex.count() != 2 {
		t.Fatalf("runs %s (%d), success %v", got, ex.count(), res.Success)
	}
	if !strings.Contains(res.Message, "ran") || !strings.Contains(res.Message, "rolled back") {
		t.Errorf("summary %q", res.Message)
	}

	srv := llmtest.Start(llmtest.Forever(llmtest.Turn{Content: "```python\nprint(1)\n```"}))
	defer srv.Close()
	chatty, ex2 := newRunner(t, agent.Config{ID: "simple", LLM: llm.Config{BaseURL: srv.URL}})
	res, err = chatty.Chat(context.Background(), "simple", api.ChatRequest{Message: "hi"}, agent.Events{})
	if err != nil || len(res.Steps) != 1 || ex2.count() != 0 || len(srv.Requests()[0].Tools) != 0 || !res.Success {
		t.Fatalf("chat-only agent: %v %+v, %d runs", err, res, ex2.count())
	}
	if _, err := chatty.Chat(context.Background(), "simple", api.ChatRequest{Message: "```python\nprint(1)\n```", Mode: "execute"}, agent.Events{}); !errors.Is(err, sandbox.ErrInvalid) {
		t.Fatalf("execute on a chat-only agent: %v", err)
	}
}

// An LLM server that is not running ends the turn with an error naming it; the
// user's message is kept in the conversation.
func TestLLMDown(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	r, _ := newRunner(t, coder("dev", "http://"+addr))
	_, err := r.Chat(context.Background(), "dev", api.ChatRequest{Message: "hi"}, agent.Events{})
	if !errors.Is(err, agent.ErrLLM) || !errors.Is(err, llm.ErrUnavailable) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("err %v", err)
	}
	if _, err := r.Chat(context.Background(), "nobody", api.ChatRequest{Message: "hi"}, agent.Events{}); !errors.Is(err, sandbox.ErrNotFound) {
		t.Fatalf("unknown agent: %v", err)
	}
	if _, err := r.Chat(context.Background(), "dev", api.ChatRequest{Message: "hi", ConversationID: "conv-none"}, agent.Events{}); !errors.Is(err, sandbox.ErrNotFound) {
		t.Fatalf("unknown conversation: %v", err)
	}
	if _, err := r.Chat(context.Background(), "dev", api.ChatRequest{Message: "hi", Mode: "plan"}, agent.Events{}); !errors.Is(err, sandbox.ErrInvalid) {
		t.Fatalf("unknown mode: %v", err)
	}
}

// The seed's role config file loads as it is: each role an agent, its LLM settings
// and vm_execution honoured, unknown fields ignored.
func TestParseSeedRoles(t *testing.T) {
	b, err := os.ReadFile("testdata/seed-roles.json")
	if err != nil {
		t.Fatal(err)
	}
	agents, err := agent.ParseSeedRoles(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(agents) != 2 || agents[0].ID != "DevelopmentAgent" || agents[1].ID != "SimpleTaskAgent" {
		t.Fatalf("agents %+v", agents)
	}
	dev, simple := agents[0], agents[1]
	if dev.LLM.Model != "llama3.2:3b" || llm.Endpoint(dev.LLM.BaseURL) != "http://127.0.0.1:11434/v1/chat/completions" ||
		!strings.Contains(dev.SystemPrompt, "DevelopmentAgent") || dev.VMExecution == nil || !dev.VMExecution.Enabled ||
		dev.VMExecution.ExecutionTimeoutMS != 30000 || dev.VMExecution.MaxCodeLength != 10000 || len(dev.VMExecution.AllowedLanguages) != 5 ||
		*dev.VMExecution.History.SnapshotOnFailure != true {
		t.Fatalf("DevelopmentAgent: %+v %+v", dev, dev.VMExecution)
	}
	if simple.VMExecution != nil || simple.LLM.Model != "some-model" || simple.LLM.APIKeyEnv != "OPENAI_API_KEY" {
		t.Fatalf("SimpleTaskAgent: %+v", simple)
	}
	if _, err := agent.ParseSeedRoles([]byte(`{"roles":{"X":{"extra":{"vm_execution":{"enabled":true,"allowed_languages":["cobol"]}}}}}`)); err == nil {
		t.Fatal("a role allowing an unknown language loaded")
	}
}
