package llm_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/llm"
	"github.com/vmexec/vmexec/internal/llm/llmtest"
)

func chat(t *testing.T, srv *llmtest.Server, stream bool) (llm.Response, string, error) {
	t.Helper()
	c := llm.New(llm.Config{BaseURL: srv.URL, Model: "m", Backoff: time.Millisecond, Timeout: 10 * time.Second})
	var got strings.Builder
	req := llm.Request{Messages: []llm.Message{{Role: "user", Content: "hi"}}}
	if stream {
		req.OnDelta = func(s string) { got.WriteString(s) }
	}
	res, err := c.Chat(context.Background(), req)
	return res, got.String(), err
}

// What a user of the agent relies on: the answer arrives whole, streamed or not, with
// tool-call arguments joined across chunks, and only the failures where the server
// did not take the request are retried.
func TestChat(t *testing.T) {
	args := `{"language":"python","code":"print('héllo wörld')\n"}`
	tests := []struct {
		name     string
		script   []llmtest.Turn
		stream   bool
		content  string
		args     string
		requests int
		err      error
	}{
		{name: "plain", script: []llmtest.Turn{{Content: "hello"}}, content: "hello", requests: 1},
		{name: "streamed", script: []llmtest.Turn{{Content: "hello there, streamed", Chunk: 3}}, stream: true, content: "hello there, streamed", requests: 1},
		{name: "tool call split across chunks", stream: true, requests: 1, args: args,
			script: []llmtest.Turn{{ToolCalls: []llmtest.Call{{Name: "run_code", Arguments: args}}, Chunk: 2}}},
		{name: "tool call not streamed", requests: 1, args: args,
			script: []llmtest.Turn{{ToolCalls: []llmtest.Call{{Name: "run_code", Arguments: args}}}}},
		{name: "malformed arguments passed as written", stream: true, requests: 1, args: `{"language": "py`,
			script: []llmtest.Turn{{ToolCalls: []llmtest.Call{{Name: "run_code", Arguments: `{"language": "py`}}}}},
		{name: "429 with Retry-After is retried", requests: 2, content: "ok",
			script: []llmtest.Turn{{Status: 429, RetryAfter: "0", Content: "slow"}, {Content: "ok"}}},
		{name: "500 is retried", stream: true, requests: 3, content: "ok",
			script: []llmtest.Turn{{Status: 500}, {Status: 502}, {Content: "ok"}}},
		{name: "500 forever gives up", requests: 4, err: llm.ErrUnavailable,
			script: []llmtest.Turn{{Status: 500, Content: "boom"}}},
		{name: "400 is not retried", requests: 1,
			script: []llmtest.Turn{{Status: 400, Content: "bad model"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := llmtest.Start(llmtest.Script(tc.script...))
			defer srv.Close()
			res, streamed, err := chat(t, srv, tc.stream)
			if n := len(srv.Requests()); n != tc.requests {
				t.Errorf("%d requests, want %d", n, tc.requests)
			}
			if tc.err != nil || tc.name == "400 is not retried" {
				if err == nil || (tc.err != nil && !errors.Is(err, tc.err)) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Message.Content != tc.content {
				t.Errorf("content %q, want %q", res.Message.Content, tc.content)
			}
			if tc.stream && streamed != tc.content {
				t.Errorf("streamed %q, want %q", streamed, tc.content)
			}
			if tc.args != "" {
				if len(res.Message.ToolCalls) != 1 || res.Message.ToolCalls[0].Function.Arguments != tc.args || res.Message.ToolCalls[0].Function.Name != "run_code" {
					t.Fatalf("tool calls %+v, want run_code(%s)", res.Message.ToolCalls, tc.args)
				}
			}
			if r := srv.Requests()[0]; r.Stream != tc.stream || r.Model != "m" {
				t.Errorf("request stream=%v model=%q", r.Stream, r.Model)
			}
		})
	}
}

// A server that is not running is named in the error, with what to start.
func TestChatServerDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := llm.New(llm.Config{BaseURL: "http://" + addr + "/v1", Backoff: time.Millisecond})
	_, err = c.Chat(context.Background(), llm.Request{Messages: []llm.Message{{Role: "user", Content: "hi"}}})
	if !errors.Is(err, llm.ErrUnavailable) || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "ollama serve") {
		t.Fatalf("err = %v; want ErrUnavailable naming %s and what to start", err, addr)
	}
}

// A server that takes the request and never answers is cut off by Timeout.
func TestChatTimeout(t *testing.T) {
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-stop:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(stop)
	c := llm.New(llm.Config{BaseURL: srv.URL + "/v1", Timeout: 200 * time.Millisecond, MaxRetries: -1})
	_, err := c.Chat(context.Background(), llm.Request{Messages: []llm.Message{{Role: "user", Content: "hi"}}})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
}

func TestToolsUnsupported(t *testing.T) {
	srv := llmtest.Start(llmtest.Script(llmtest.Turn{ToolsUnsupported: true, Content: "x"}))
	defer srv.Close()
	c := llm.New(llm.Config{BaseURL: srv.URL})
	_, err := c.Chat(context.Background(), llm.Request{Messages: []llm.Message{{Role: "user", Content: "hi"}},
		Tools: []llm.Tool{{Type: "function", Function: llm.ToolFunction{Name: "run_code"}}}})
	if !llm.ToolsUnsupported(err) {
		t.Fatalf("err = %v; want one ToolsUnsupported recognises", err)
	}
}

func TestEndpoint(t *testing.T) {
	for in, want := range map[string]string{
		"":                          "http://127.0.0.1:11434/v1/chat/completions",
		"http://127.0.0.1:11434":    "http://127.0.0.1:11434/v1/chat/completions",
		"http://127.0.0.1:11434/":   "http://127.0.0.1:11434/v1/chat/completions",
		"http://h:1/v1/":            "http://h:1/v1/chat/completions",
		"https://api.openai.com/v1": "https://api.openai.com/v1/chat/completions",
		"http://h/openai/v1":        "http://h/openai/v1/chat/completions",
	} {
		if got := llm.Endpoint(in); got != want {
			t.Errorf("Endpoint(%q) = %q, want %q", in, got, want)
		}
	}
}
