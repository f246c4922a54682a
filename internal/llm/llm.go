// Package llm is a client of the OpenAI-compatible chat completions API
// (POST {base}/chat/completions), which Ollama, llama.cpp's server, vLLM, LM Studio
// and OpenAI all speak. It needs no SDK.
//
// Terms:
//
//   - The base URL ends before /chat/completions: Ollama's is http://127.0.0.1:11434/v1
//     (DefaultBaseURL). A base URL without a path gets /v1 (Ollama's native root,
//     http://127.0.0.1:11434, is what the seed's configs name).
//   - A tool call is the model asking to call a function (here run_code) with JSON
//     arguments; streamed, its arguments arrive split across chunks and are joined by
//     the call's index.
//
// Failure semantics: a request is retried, with exponential backoff and full jitter
// (honouring Retry-After), only when the server did not take it: a connection refused
// or reset before any answer, 429, or 5xx. Everything else fails at once. An
// unreachable server is ErrUnavailable with a message naming the URL and what to
// start; a server that answers with an error is *StatusError (ErrUnavailable for 429
// and 5xx once retries are spent). A streamed answer cut off half-way is not retried:
// the caller has already been handed part of it.
package llm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Defaults: a local Ollama with a small model.
const (
	DefaultBaseURL = "http://127.0.0.1:11434/v1"
	DefaultModel   = "llama3.2:3b"
	// DefaultTimeout bounds one request, including a streamed answer.
	DefaultTimeout = 5 * time.Minute
)

// Error classes.
var (
	// ErrUnavailable: the server could not be reached, or kept answering 429/5xx.
	ErrUnavailable = errors.New("llm server unavailable")
	// ErrBadResponse: the server's answer could not be understood.
	ErrBadResponse = errors.New("malformed llm response")
)

// Config says which server and model to use.
type Config struct {
	// BaseURL of the API (DefaultBaseURL when empty).
	BaseURL string `json:"base_url,omitempty" yaml:"base_url,omitempty"`
	// Model name (DefaultModel when empty).
	Model string `json:"model,omitempty" yaml:"model,omitempty"`
	// APIKeyEnv names the environment variable holding the API key, sent as a
	// bearer token; empty sends none (local servers need none).
	APIKeyEnv string `json:"api_key_env,omitempty" yaml:"api_key_env,omitempty"`
	// Timeout bounds one request (DefaultTimeout when 0).
	Timeout time.Duration `json:"timeout,omitempty" yaml:"timeout,omitempty"`
	// MaxRetries is how many times a request the server did not take is retried
	// (3 when 0; negative for none).
	MaxRetries int `json:"max_retries,omitempty" yaml:"max_retries,omitempty"`
	// Backoff is the first retry's delay bound, doubled each time (500ms when 0).
	Backoff time.Duration `json:"backoff,omitempty" yaml:"backoff,omitempty"`
	// Temperature, when set, is sent with each request.
	Temperature *float64 `json:"temperature,omitempty" yaml:"temperature,omitempty"`
}

// Client talks to one server. Its zero value uses the defaults; it is safe for
// concurrent use.
type Client struct {
	Config
	// HTTP is the HTTP client (http.DefaultClient's transport when nil).
	HTTP *http.Client
}

// New returns a client for c.
func New(c Config) *Client { return &Client{Config: c} }

// Message is one chat message. Content is empty for an assistant message that only
// calls tools.
type Message struct {
	Role       string     `json:"role"` // system, user, assistant, tool
	Content    string     `json:"content"`
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
	Name       string     `json:"name,omitempty"`
}

// ToolCall is the model asking to call a function.
type ToolCall struct {
	ID       string       `json:"id"`
	Type     string       `json:"type"` // "function"
	Function FunctionCall `json:"function"`
}

// FunctionCall names the function and carries its arguments, a JSON text as the
// model wrote it (which may not be valid JSON).
type FunctionCall struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// Tool is a function the model may call.
type Tool struct {
	Type     string       `json:"type"` // "function"
	Function ToolFunction `json:"function"`
}

// ToolFunction describes a tool: its parameters are a JSON Schema.
type ToolFunction struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
}

// Request is one chat completion request.
type Request struct {
	// Model overrides the client's model for this request.
	Model    string
	Messages []Message
	Tools    []Tool
	// OnDelta, when set, streams the answer: it receives the text as it comes
	// (tool calls are joined and returned in the Response only).
	OnDelta func(text string)
}

// Response is the model's answer.
type Response struct {
	Message      Message
	FinishReason string
	Model        string
}

// StatusError is an error answer from the server.
type StatusError struct {
	URL     string
	Status  int
	Message string
	// RetryAfter is the server's Retry-After (0 when absent).
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("llm server %s answered %d: %s", e.URL, e.Status, e.Message)
}

// Unwrap classifies 429 and 5xx as ErrUnavailable.
func (e *StatusError) Unwrap() error {
	if e.retryable() {
		return ErrUnavailable
	}
	return nil
}

func (e *StatusError) retryable() bool { return e.Status == 429 || e.Status >= 500 }

// ToolsUnsupported reports whether err says the model cannot call tools (Ollama,
// vLLM and llama.cpp answer 400 with a message naming tools).
func ToolsUnsupported(err error) bool {
	var se *StatusError
	if !errors.As(err, &se) || se.Status != http.StatusBadRequest {
		return false
	}
	m := strings.ToLower(se.Message)
	return strings.Contains(m, "tool") || strings.Contains(m, "function")
}

// Endpoint is the chat completions URL of the client's base URL.
func (c *Client) Endpoint() string { return Endpoint(c.BaseURL) }

// Endpoint returns base's chat completions URL.
func Endpoint(base string) string {
	if base == "" {
		base = DefaultBaseURL
	}
	base = strings.TrimRight(base, "/")
	if u, err := url.Parse(base); err == nil && (u.Path == "" || u.Path == "/") {
		base += "/v1"
	}
	if strings.HasSuffix(base, "/chat/completions") {
		return base
	}
	return base + "/chat/completions"
}

// ModelName is the model a request without its own uses.
func (c *Client) ModelName() string {
	if c.Model != "" {
		return c.Model
	}
	return DefaultModel
}

type wireRequest struct {
	Model       string    `json:"model"`
	Messages    []Message `json:"messages"`
	Tools       []Tool    `json:"tools,omitempty"`
	Stream      bool      `json:"stream"`
	Temperature *float64  `json:"temperature,omitempty"`
}

// Chat sends req and returns the model's answer.
func (c *Client) Chat(ctx context.Context, req Request) (Response, error) {
	model := req.Model
	if model == "" {
		model = c.ModelName()
	}
	body, err := json.Marshal(wireRequest{Model: model, Messages: req.Messages, Tools: req.Tools, Stream: req.OnDelta != nil, Temperature: c.Temperature})
	if err != nil {
		return Response{}, fmt.Errorf("encode llm request: %w", err)
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	retries := c.MaxRetries
	if retries == 0 {
		retries = 3
	}
	for attempt := 0; ; attempt++ {
		resp, err := c.once(ctx, body, req.OnDelta)
		if err == nil {
			if resp.Model == "" {
				resp.Model = model
			}
			return resp, nil
		}
		wait, retry := c.retryDelay(err, attempt)
		if !retry || attempt >= retries || ctx.Err() != nil {
			return Response{}, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return Response{}, err
		case <-t.C:
		}
	}
}

// retryDelay says whether err is worth another attempt and how long to wait first:
// Retry-After when the server gave one (capped at 30 s), else full jitter over an
// exponentially growing bound.
func (c *Client) retryDelay(err error, attempt int) (time.Duration, bool) {
	var se *StatusError
	var ue *unreachable
	switch {
	case errors.As(err, &se) && se.retryable():
		if se.RetryAfter > 0 {
			return min(se.RetryAfter, 30*time.Second), true
		}
	case errors.As(err, &ue):
	default:
		return 0, false
	}
	base := c.Backoff
	if base <= 0 {
		base = 500 * time.Millisecond
	}
	bound := min(base<<min(attempt, 10), 20*time.Second)
	return time.Duration(rand.Int64N(int64(bound)) + 1), true
}

// unreachable is a request that got no answer at all.
type unreachable struct {
	url string
	err error
}

func (e *unreachable) Error() string {
	return fmt.Sprintf("cannot reach the LLM server at %s (%v): start it (for Ollama: `ollama serve`, then `ollama pull %s`) or point the agent's llm base_url at a running OpenAI-compatible server",
		e.url, e.err, DefaultModel)
}

func (e *unreachable) Unwrap() []error { return []error{ErrUnavailable, e.err} }

// noAnswer reports whether err means the request never reached a server that took it.
func noAnswer(err error) bool {
	var oe *net.OpError
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		(errors.As(err, &oe) && oe.Op == "dial") || errors.Is(err, io.EOF) && !errors.Is(err, context.Canceled)
}

func (c *Client) once(ctx context.Context, body []byte, onDelta func(string)) (Response, error) {
	endpoint := c.Endpoint()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return Response{}, fmt.Errorf("llm base url %q: %w", c.BaseURL, err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	if onDelta != nil {
		hreq.Header.Set("Accept", "text/event-stream")
	}
	if c.APIKeyEnv != "" {
		if key := os.Getenv(c.APIKeyEnv); key != "" {
			hreq.Header.Set("Authorization", "Bearer "+key)
		}
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(hreq)
	if err != nil {
		if ctx.Err() != nil {
			return Response{}, fmt.Errorf("llm request to %s: %w", endpoint, ctx.Err())
		}
		if noAnswer(err) {
			return Response{}, &unreachable{url: endpoint, err: err}
		}
		return Response{}, fmt.Errorf("llm request to %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return Response{}, statusError(endpoint, resp)
	}
	if onDelta != nil && strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return readStream(resp.Body, onDelta)
	}
	// A server that ignored stream: true answers with one JSON body.
	out, err := readWhole(resp.Body)
	if err == nil && onDelta != nil && out.Message.Content != "" {
		onDelta(out.Message.Content)
	}
	return out, err
}

func statusError(endpoint string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	msg := strings.TrimSpace(string(b))
	var e struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && len(e.Error) > 0 {
		var obj struct {
			Message string `json:"message"`
		}
		var s string
		switch {
		case json.Unmarshal(e.Error, &obj) == nil && obj.Message != "":
			msg = obj.Message
		case json.Unmarshal(e.Error, &s) == nil:
			msg = s
		}
	}
	if len(msg) > 500 {
		msg = msg[:500] + "…"
	}
	return &StatusError{URL: endpoint, Status: resp.StatusCode, Message: msg, RetryAfter: retryAfter(resp.Header.Get("Retry-After"))}
}

// retryAfter parses a Retry-After header: seconds or an HTTP date.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

type wireChoice struct {
	Message      *Message `json:"message"`
	Delta        *delta   `json:"delta"`
	FinishReason string   `json:"finish_reason"`
}

type wireResponse struct {
	Model   string          `json:"model"`
	Choices []wireChoice    `json:"choices"`
	Error   json.RawMessage `json:"error"`
}

func readWhole(r io.Reader) (Response, error) {
	var w wireResponse
	if err := json.NewDecoder(io.LimitReader(r, 16<<20)).Decode(&w); err != nil {
		return Response{}, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	if len(w.Error) > 0 && string(w.Error) != "null" {
		return Response{}, fmt.Errorf("%w: the server sent an error: %s", ErrBadResponse, w.Error)
	}
	if len(w.Choices) == 0 || w.Choices[0].Message == nil {
		return Response{}, fmt.Errorf("%w: no choices in the answer", ErrBadResponse)
	}
	m := *w.Choices[0].Message
	if m.Role == "" {
		m.Role = "assistant"
	}
	for i := range m.ToolCalls { // a tool result must name its call
		if m.ToolCalls[i].ID == "" {
			m.ToolCalls[i].ID = fmt.Sprintf("call_%d", i)
		}
		if m.ToolCalls[i].Type == "" {
			m.ToolCalls[i].Type = "function"
		}
	}
	return Response{Message: m, FinishReason: w.Choices[0].FinishReason, Model: w.Model}, nil
}
