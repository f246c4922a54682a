// Package client is the Go client of vmexec's HTTP API. The CLI, the MCP server and the
// end-to-end tests speak to the daemon only through it. The zero Client is usable: it
// talks to $VMEXEC_URL, or http://127.0.0.1:8080, with the key in $VMEXEC_API_KEY if
// any.
//
// Retries: a request is retried (with exponential backoff and jitter) only when it
// cannot have run — the connection was refused — or when the server said so with 429 or
// 503. A program that ran and failed is a result, never retried.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/vmexec/vmexec/api"
)

// DefaultURL is used when neither Client.BaseURL nor $VMEXEC_URL is set.
const DefaultURL = "http://127.0.0.1:8080"

// Client calls a vmexec server.
type Client struct {
	// BaseURL of the server; empty means $VMEXEC_URL or DefaultURL.
	BaseURL string
	// HTTPClient to use; nil means one without a timeout (runs bound themselves).
	HTTPClient *http.Client
	// APIKey is sent as a bearer token (Authorization: Bearer KEY); empty means
	// $VMEXEC_API_KEY, and no header when that is empty too.
	APIKey string
	// MaxRetries for refused connections, 429 and 503; negative disables. Default 2.
	MaxRetries int
}

// New returns a Client for baseURL.
func New(baseURL string) *Client { return &Client{BaseURL: baseURL} }

// Error is a non-2xx answer of the server.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("vmexec: %s (HTTP %d %s)", e.Message, e.Status, e.Code)
}

// IsNotFound reports whether err is the server's 404.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

func (c *Client) base() string {
	if c.BaseURL != "" {
		return strings.TrimRight(c.BaseURL, "/")
	}
	if u := os.Getenv("VMEXEC_URL"); u != "" {
		return strings.TrimRight(u, "/")
	}
	return DefaultURL
}

// authorize sets req's Authorization header from the client's key.
func (c *Client) authorize(req *http.Request) {
	key := c.APIKey
	if key == "" {
		key = os.Getenv("VMEXEC_API_KEY")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
}

func (c *Client) httpClient() *http.Client {
	if c.HTTPClient != nil {
		return c.HTTPClient
	}
	return http.DefaultClient
}

func (c *Client) retries() int {
	switch {
	case c.MaxRetries < 0:
		return 0
	case c.MaxRetries == 0:
		return 2
	}
	return c.MaxRetries
}

// do sends one request and decodes a 2xx JSON answer into out (unless nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
	}
	var lastErr error
	for attempt := 0; attempt <= c.retries(); attempt++ {
		if attempt > 0 {
			backoff := time.Duration(100<<(attempt-1)) * time.Millisecond
			backoff += time.Duration(rand.Int64N(int64(backoff)))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
		}
		retry, err := c.once(ctx, method, path, body, out)
		if err == nil || !retry {
			return err
		}
		lastErr = err
	}
	return lastErr
}

func (c *Client) once(ctx context.Context, method, path string, body []byte, out any) (retry bool, err error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base()+path, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("vmexec: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	c.authorize(req)
	resp, err := c.httpClient().Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return true, fmt.Errorf("vmexec: cannot reach %s (is `vmexec serve` running?): %w", c.base(), err)
		}
		return false, fmt.Errorf("vmexec: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return false, fmt.Errorf("vmexec: read response: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
		}
		retry = resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable
		return retry, &Error{Status: resp.StatusCode, Code: e.Code, Message: e.Error}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return false, fmt.Errorf("vmexec: decode response: %w", err)
		}
	}
	return false, nil
}

// Health asks whether the server is up.
func (c *Client) Health(ctx context.Context) (api.Health, error) {
	var h api.Health
	err := c.do(ctx, http.MethodGet, "/health", nil, &h)
	return h, err
}

// Exec runs code for req.AgentID (in req.SandboxID when set).
func (c *Client) Exec(ctx context.Context, req api.ExecRequest) (*api.ExecResult, error) {
	var res api.ExecResult
	path := "/v1/exec"
	if req.SandboxID != "" {
		path = "/v1/sandboxes/" + url.PathEscape(req.SandboxID) + "/exec"
	}
	if err := c.do(ctx, http.MethodPost, path, req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// CreateSandbox creates a sandbox.
func (c *Client) CreateSandbox(ctx context.Context, req api.CreateSandboxRequest) (api.Sandbox, error) {
	var sb api.Sandbox
	err := c.do(ctx, http.MethodPost, "/v1/sandboxes", req, &sb)
	return sb, err
}

// ListSandboxes lists the server's sandboxes.
func (c *Client) ListSandboxes(ctx context.Context) ([]api.Sandbox, error) {
	var l api.SandboxList
	err := c.do(ctx, http.MethodGet, "/v1/sandboxes", nil, &l)
	return l.Sandboxes, err
}

// GetSandbox describes one sandbox.
func (c *Client) GetSandbox(ctx context.Context, id string) (api.Sandbox, error) {
	var sb api.Sandbox
	err := c.do(ctx, http.MethodGet, "/v1/sandboxes/"+url.PathEscape(id), nil, &sb)
	return sb, err
}

// DeleteSandbox destroys a sandbox.
func (c *Client) DeleteSandbox(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/sandboxes/"+url.PathEscape(id), nil, nil)
}

// CompatExecute calls the fcctl-web compatible POST /api/llm/execute.
func (c *Client) CompatExecute(ctx context.Context, req api.CompatExecRequest) (*api.CompatExecResponse, error) {
	var res api.CompatExecResponse
	if err := c.do(ctx, http.MethodPost, "/api/llm/execute", req, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// ParseExecute runs the code blocks of an LLM's reply in document order.
func (c *Client) ParseExecute(ctx context.Context, req api.ParseExecuteRequest) (api.ParseExecuteResult, error) {
	var res api.ParseExecuteResult
	err := c.do(ctx, http.MethodPost, "/v1/parse-execute", req, &res)
	return res, err
}

// Backends lists the server's enabled backends, the default first.
func (c *Client) Backends(ctx context.Context) ([]api.Backend, error) {
	var l api.BackendList
	err := c.do(ctx, http.MethodGet, "/v1/backends", nil, &l)
	return l.Backends, err
}
