package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/vmexec/vmexec/api"
)

// Streaming calls: the run routes answered as Server-Sent Events (see api/stream.go).
// Output reaches the callbacks as the program writes it; the call returns the same
// result as its plain counterpart. Cancelling the call's context disconnects, and the
// server then cancels the run: it ends with verdict canceled and is rolled back.
//
// Callbacks are called one at a time, from the calling goroutine, in the order of the
// events. A streaming call is retried only when nothing ran: the connection was
// refused, or the server answered busy or unavailable before any output.

// Output receives a run's output as the program writes it; nil fields are skipped.
// A chunk never ends inside a UTF-8 character.
type Output struct {
	Stdout func(text string)
	Stderr func(text string)
}

// ParseOutput receives a streaming parse-execute's events; nil fields are skipped.
type ParseOutput struct {
	// Stdout and Stderr receive the output of the block with index block.
	Stdout func(block int, text string)
	Stderr func(block int, text string)
	// Block receives each block's outcome as soon as it is known, in document order.
	Block func(api.BlockResult)
}

// Event is one Server-Sent Event of a streaming call.
type Event struct {
	Name string // stdout, stderr, block, result, error
	Data []byte // one JSON value
}

// maxEvent bounds one event: a result carries two output streams of up to 16 MiB,
// JSON-escaped.
const maxEvent = 256 << 20

// ExecStream runs code like Exec, passing its output to out as the program writes it.
func (c *Client) ExecStream(ctx context.Context, req api.ExecRequest, out Output) (*api.ExecResult, error) {
	path := "/v1/exec"
	if req.SandboxID != "" {
		path = "/v1/sandboxes/" + url.PathEscape(req.SandboxID) + "/exec"
	}
	var res api.ExecResult
	err := c.Stream(ctx, path, req, func(ev Event) error {
		switch ev.Name {
		case api.EventStdout, api.EventStderr:
			var ch api.OutputChunk
			if err := json.Unmarshal(ev.Data, &ch); err != nil {
				return fmt.Errorf("vmexec: decode %s event: %w", ev.Name, err)
			}
			if f := pick(ev.Name, out.Stdout, out.Stderr); f != nil {
				f(ch.Data)
			}
		case api.EventResult:
			if err := json.Unmarshal(ev.Data, &res); err != nil {
				return fmt.Errorf("vmexec: decode result: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// ParseExecuteStream runs the code blocks of an LLM's reply like ParseExecute, passing
// each block's output and outcome to out as they come.
func (c *Client) ParseExecuteStream(ctx context.Context, req api.ParseExecuteRequest, out ParseOutput) (api.ParseExecuteResult, error) {
	var res api.ParseExecuteResult
	err := c.Stream(ctx, "/v1/parse-execute", req, func(ev Event) error {
		switch ev.Name {
		case api.EventStdout, api.EventStderr:
			var ch api.OutputChunk
			if err := json.Unmarshal(ev.Data, &ch); err != nil {
				return fmt.Errorf("vmexec: decode %s event: %w", ev.Name, err)
			}
			block := -1
			if ch.Block != nil {
				block = *ch.Block
			}
			if f := pick(ev.Name, out.Stdout, out.Stderr); f != nil {
				f(block, ch.Data)
			}
		case api.EventBlock:
			var b api.BlockResult
			if err := json.Unmarshal(ev.Data, &b); err != nil {
				return fmt.Errorf("vmexec: decode block: %w", err)
			}
			if out.Block != nil {
				out.Block(b)
			}
		case api.EventResult:
			if err := json.Unmarshal(ev.Data, &res); err != nil {
				return fmt.Errorf("vmexec: decode result: %w", err)
			}
		}
		return nil
	})
	return res, err
}

func pick[F any](name string, stdout, stderr F) F {
	if name == api.EventStderr {
		return stderr
	}
	return stdout
}

// Stream POSTs in to a streaming route and calls fn with each event, in order, until
// the stream ends. An error event is returned as an *Error (fn does not see it); a
// stream that ends without a result or error event is an error. An error fn returns
// stops the stream (and so cancels the run).
func (c *Client) Stream(ctx context.Context, path string, in any, fn func(Event) error) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("encode request: %w", err)
	}
	var lastErr error
	for attempt := 0; attempt <= c.retries(); attempt++ {
		if attempt > 0 {
			backoff := time.Duration(100<<(attempt-1)) * time.Millisecond
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
		}
		retry, err := c.streamOnce(ctx, path, body, fn)
		if err == nil || !retry {
			return err
		}
		lastErr = err
	}
	return lastErr
}

func (c *Client) streamOnce(ctx context.Context, path string, body []byte, fn func(Event) error) (retry bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // closes the connection, which cancels the run, when fn fails
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base()+path, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("vmexec: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	c.authorize(req)
	resp, err := c.httpClient().Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return true, fmt.Errorf("vmexec: cannot reach %s (is `vmexec serve` running?): %w", c.base(), err)
		}
		return false, fmt.Errorf("vmexec: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return errorOf(resp)
	}
	seen := false // an event other than the final error
	err = readEvents(resp.Body, func(ev Event) (bool, error) {
		switch ev.Name {
		case api.EventError:
			var e api.Error
			json.Unmarshal(ev.Data, &e)
			status := statusOf(e.Code)
			retry = !seen && (status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable)
			return true, &Error{Status: status, Code: e.Code, Message: e.Error}
		case api.EventResult:
			return true, fn(ev)
		}
		seen = true
		return false, fn(ev)
	})
	return retry, err
}

// readEvents parses a text/event-stream body, calling fn with each event until fn says
// the stream is done or fails.
func readEvents(r io.Reader, fn func(Event) (done bool, err error)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var ev Event
	var data bytes.Buffer
	for {
		line, err := readLine(br)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("vmexec: the stream ended without a result")
			}
			return fmt.Errorf("vmexec: read stream: %w", err)
		}
		switch {
		case len(line) == 0: // dispatch
			if data.Len() == 0 && ev.Name == "" {
				continue
			}
			ev.Data = bytes.TrimSuffix(data.Bytes(), []byte("\n"))
			done, err := fn(ev)
			if done || err != nil {
				return err
			}
			ev, data = Event{}, bytes.Buffer{}
		case line[0] == ':': // a comment: keep-alive
		default:
			field, value, _ := strings.Cut(string(line), ":")
			value = strings.TrimPrefix(value, " ")
			switch field {
			case "event":
				ev.Name = value
			case "data":
				if data.Len()+len(value) > maxEvent {
					return fmt.Errorf("vmexec: an event is over %d bytes", maxEvent)
				}
				data.WriteString(value)
				data.WriteByte('\n')
			}
		}
	}
}

// readLine reads one line without its line end, however long (up to maxEvent).
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if err == bufio.ErrBufferFull {
			if len(line) > maxEvent {
				return nil, fmt.Errorf("a line is over %d bytes", maxEvent)
			}
			continue
		}
		if err != nil {
			if err == io.EOF && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		return bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r")), nil
	}
}

// statusOf is the HTTP status the plain call would have answered with an error code.
func statusOf(code string) int {
	switch code {
	case api.CodeBadRequest, api.CodeInvalidJSON:
		return http.StatusBadRequest
	case api.CodeNotFound:
		return http.StatusNotFound
	case api.CodeForbidden:
		return http.StatusForbidden
	case api.CodeBusy:
		return http.StatusTooManyRequests
	case api.CodeConflict:
		return http.StatusConflict
	case api.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case api.CodeUnsupported:
		return http.StatusNotImplemented
	case api.CodeLimit, api.CodeUnavailable:
		return http.StatusServiceUnavailable
	case api.CodeTimeout:
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

// errorOf reads a non-2xx answer as an *Error, and whether it is worth a retry.
func errorOf(resp *http.Response) (retry bool, err error) {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e api.Error
	if json.Unmarshal(data, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(data))
		if e.Error == "" {
			e.Error = resp.Status
		}
	}
	retry = resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable
	return retry, &Error{Status: resp.StatusCode, Code: e.Code, Message: e.Error}
}
