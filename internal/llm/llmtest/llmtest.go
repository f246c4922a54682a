// Package llmtest is a scripted fake of an OpenAI-compatible chat completions server,
// for tests of the LLM client and the agent loop, and (through ./cmd) for the JS and
// UI suites. Its answers come from a Responder: a script of turns, a fixed turn
// repeated forever, or one of the named Scenarios that react to what the model is
// told (the fix loop answers a failed run's error with corrected code).
//
// It can stream (content and tool-call arguments cut into pieces of Turn.Chunk
// bytes, so arguments are split across chunks), answer any status with Retry-After,
// send malformed tool arguments (Turn.ToolCalls[i].Arguments is sent as given), and
// records every request it got.
package llmtest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"

	"github.com/vmexec/vmexec/internal/llm"
)

// Turn is one scripted answer.
type Turn struct {
	// Content is the assistant's text.
	Content string `json:"content,omitempty"`
	// ToolCalls are tool calls, their arguments sent as written.
	ToolCalls []Call `json:"tool_calls,omitempty"`
	// Status, when not 0 or 200, is answered with {"error":{"message":Content}}.
	Status int `json:"status,omitempty"`
	// RetryAfter is sent as the Retry-After header with a Status.
	RetryAfter string `json:"retry_after,omitempty"`
	// Chunk is the size of the pieces a streamed answer is cut into (default 7).
	Chunk int `json:"chunk,omitempty"`
	// ToolsUnsupported answers 400 "does not support tools" to a request with tools,
	// as Ollama does for models that cannot call them.
	ToolsUnsupported bool `json:"tools_unsupported,omitempty"`
}

// Call is a scripted tool call.
type Call struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// RunCode is a run_code call with well-formed arguments.
func RunCode(language, code string) Call {
	b, _ := json.Marshal(map[string]string{"language": language, "code": code})
	return Call{Name: "run_code", Arguments: string(b)}
}

// Request is a request the server got.
type Request struct {
	Model    string        `json:"model"`
	Messages []llm.Message `json:"messages"`
	Tools    []llm.Tool    `json:"tools"`
	Stream   bool          `json:"stream"`
}

// Last is the request's last message.
func (r Request) Last() llm.Message {
	if len(r.Messages) == 0 {
		return llm.Message{}
	}
	return r.Messages[len(r.Messages)-1]
}

// Responder chooses the answer to the n-th request (from 0).
type Responder func(req Request, n int) Turn

// Script answers the turns in order, then repeats the last one.
func Script(turns ...Turn) Responder {
	return func(_ Request, n int) Turn {
		if len(turns) == 0 {
			return Turn{Content: "no script"}
		}
		return turns[min(n, len(turns)-1)]
	}
}

// Forever answers t to every request: a model that never stops writing code.
func Forever(t Turn) Responder { return func(Request, int) Turn { return t } }

// Server is a running fake.
type Server struct {
	// URL is the base URL to configure (…/v1).
	URL string
	srv *httptest.Server
	h   *Handler
}

// Start starts a fake on a loopback port; Close stops it.
func Start(r Responder) *Server {
	h := NewHandler(r)
	srv := httptest.NewServer(h)
	return &Server{URL: srv.URL + "/v1", srv: srv, h: h}
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// Requests returns the requests so far.
func (s *Server) Requests() []Request { return s.h.Requests() }

// Handler serves POST /v1/chat/completions (and GET /v1/models).
type Handler struct {
	respond Responder
	mu      sync.Mutex
	reqs    []Request
}

// NewHandler returns a handler answering with r.
func NewHandler(r Responder) *Handler { return &Handler{respond: r} }

// Requests returns the requests so far.
func (h *Handler) Requests() []Request {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Request(nil), h.reqs...)
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/models"):
		writeJSON(w, 200, map[string]any{"object": "list", "data": []any{map[string]string{"id": "fake", "object": "model"}}})
		return
	case r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/chat/completions"):
		writeJSON(w, 404, map[string]any{"error": map[string]string{"message": "no route " + r.URL.Path}})
		return
	}
	var req Request
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSON(w, 400, map[string]any{"error": map[string]string{"message": "bad json: " + err.Error()}})
		return
	}
	h.mu.Lock()
	n := len(h.reqs)
	h.reqs = append(h.reqs, req)
	h.mu.Unlock()
	t := h.respond(req, n)
	if t.ToolsUnsupported && len(req.Tools) > 0 {
		writeJSON(w, 400, map[string]any{"error": map[string]string{"message": "registry.ollama.ai/library/" + req.Model + " does not support tools"}})
		return
	}
	if t.Status != 0 && t.Status != 200 {
		if t.RetryAfter != "" {
			w.Header().Set("Retry-After", t.RetryAfter)
		}
		writeJSON(w, t.Status, map[string]any{"error": map[string]string{"message": t.Content}})
		return
	}
	model := req.Model
	if model == "" {
		model = "fake"
	}
	if !req.Stream {
		writeJSON(w, 200, map[string]any{"id": fmt.Sprintf("chatcmpl-%d", n), "object": "chat.completion", "model": model,
			"choices": []any{map[string]any{"index": 0, "message": message(t), "finish_reason": finish(t)}}})
		return
	}
	stream(w, t, n, model)
}

func message(t Turn) map[string]any {
	m := map[string]any{"role": "assistant", "content": t.Content}
	if len(t.ToolCalls) > 0 {
		var calls []any
		for i, c := range t.ToolCalls {
			calls = append(calls, map[string]any{"id": fmt.Sprintf("call_%d", i), "type": "function",
				"function": map[string]string{"name": c.Name, "arguments": c.Arguments}})
		}
		m["tool_calls"] = calls
	}
	return m
}

func finish(t Turn) string {
	if len(t.ToolCalls) > 0 {
		return "tool_calls"
	}
	return "stop"
}

func stream(w http.ResponseWriter, t Turn, n int, model string) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(200)
	fl, _ := w.(http.Flusher)
	size := t.Chunk
	if size <= 0 {
		size = 7
	}
	send := func(d map[string]any, fin any) {
		b, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("chatcmpl-%d", n), "object": "chat.completion.chunk", "model": model,
			"choices": []any{map[string]any{"index": 0, "delta": d, "finish_reason": fin}}})
		fmt.Fprintf(w, "data: %s\n\n", b)
		if fl != nil {
			fl.Flush()
		}
	}
	send(map[string]any{"role": "assistant", "content": ""}, nil)
	for _, p := range pieces(t.Content, size) {
		send(map[string]any{"content": p}, nil)
	}
	for i, c := range t.ToolCalls {
		send(map[string]any{"tool_calls": []any{map[string]any{"index": i, "id": fmt.Sprintf("call_%d", i), "type": "function",
			"function": map[string]string{"name": c.Name, "arguments": ""}}}}, nil)
		for _, p := range pieces(c.Arguments, size) {
			send(map[string]any{"tool_calls": []any{map[string]any{"index": i, "function": map[string]string{"arguments": p}}}}, nil)
		}
	}
	send(map[string]any{}, finish(t))
	fmt.Fprint(w, "data: [DONE]\n\n")
	if fl != nil {
		fl.Flush()
	}
}

// pieces cuts s into pieces of about size bytes, never inside a UTF-8 character.
func pieces(s string, size int) []string {
	var out []string
	for len(s) > 0 {
		n := min(size, len(s))
		for n < len(s) && !utf8Start(s[n]) {
			n++
		}
		out = append(out, s[:n])
		s = s[n:]
	}
	return out
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
