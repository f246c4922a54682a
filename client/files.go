package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"syscall"

	"github.com/vmexec/vmexec/api"
)

// Files in and out of a sandbox. Paths are absolute, or relative to /home/user, and
// are resolved inside the sandbox. Bodies stream both ways; nothing is held whole.
// A missing file is a 404 (IsNotFound), a directory where a file is expected a 400, a
// file over the server's limit a 413.

// FileOptions qualify a file call; the zero value is the operator with defaults.
type FileOptions struct {
	// AgentID acts as this agent: another agent's sandbox is refused (403).
	AgentID string
	// Mode of a file PutFile writes (permission bits); 0 is 0644.
	Mode uint32
	// Recursive lets RemoveFile remove a non-empty directory.
	Recursive bool
}

func filesPath(sandboxID, suffix string, q url.Values) string {
	return "/v1/sandboxes/" + url.PathEscape(sandboxID) + "/files" + suffix + "?" + q.Encode()
}

func (o FileOptions) query(path string) url.Values {
	q := url.Values{"path": {path}}
	if o.AgentID != "" {
		q.Set("agent_id", o.AgentID)
	}
	return q
}

// PutFile writes body to path in a sandbox, creating missing parent directories. The
// body is streamed; it is not retried (it cannot be replayed).
func (c *Client) PutFile(ctx context.Context, sandboxID, path string, body io.Reader, opt FileOptions) (api.FileInfo, error) {
	q := opt.query(path)
	if opt.Mode != 0 {
		q.Set("mode", strconv.FormatUint(uint64(opt.Mode), 8))
	}
	resp, err := c.raw(ctx, http.MethodPut, filesPath(sandboxID, "", q), body)
	if err != nil {
		return api.FileInfo{}, err
	}
	defer resp.Body.Close()
	var info api.FileInfo
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		return api.FileInfo{}, fmt.Errorf("vmexec: decode response: %w", err)
	}
	return info, nil
}

// GetFile opens path in a sandbox for reading; the caller must Close the reader. Its
// content streams from the sandbox, which serves nothing else until it is closed.
// The returned size is the file's (the response's Content-Length).
func (c *Client) GetFile(ctx context.Context, sandboxID, path string, opt FileOptions) (io.ReadCloser, int64, error) {
	resp, err := c.raw(ctx, http.MethodGet, filesPath(sandboxID, "", opt.query(path)), nil)
	if err != nil {
		return nil, 0, err
	}
	return resp.Body, resp.ContentLength, nil
}

// ListFiles lists directory path's entries ("" is /home/user), recursing depth levels
// (0 or 1: the entries only).
func (c *Client) ListFiles(ctx context.Context, sandboxID, path string, depth int, opt FileOptions) ([]api.FileInfo, error) {
	q := opt.query(path)
	if depth > 0 {
		q.Set("depth", strconv.Itoa(depth))
	}
	var l api.FileList
	err := c.do(ctx, http.MethodGet, filesPath(sandboxID, "/list", q), nil, &l)
	return l.Entries, err
}

// RemoveFile removes path; a non-empty directory only with opt.Recursive.
func (c *Client) RemoveFile(ctx context.Context, sandboxID, path string, opt FileOptions) error {
	q := opt.query(path)
	if opt.Recursive {
		q.Set("recursive", "true")
	}
	return c.do(ctx, http.MethodDelete, filesPath(sandboxID, "", q), nil, nil)
}

// raw sends one request with a raw body and returns a 2xx response for the caller to
// read and close; other answers are an *Error.
func (c *Client) raw(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base()+path, body)
	if err != nil {
		return nil, fmt.Errorf("vmexec: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	c.authorize(req)
	resp, err := c.httpClient().Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("vmexec: cannot reach %s (is `vmexec serve` running?): %w", c.base(), err)
		}
		return nil, fmt.Errorf("vmexec: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		_, err := errorOf(resp)
		return nil, err
	}
	return resp, nil
}
