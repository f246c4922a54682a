// Package mcpserver is vmexec's Model Context Protocol server: tools that let an agent
// in any MCP host (Claude Desktop, Claude Code, IDEs, hosts built on an MCP SDK) run
// code in its own persistent sandbox, as transactions, and undo a bad step.
//
// The server speaks to the daemon only through the Go client (package client), so the
// same tools serve both transports: `vmexec mcp` over stdio, with a client of a running
// daemon, and the daemon's own /mcp route (internal/httpapi), with a client of the
// daemon itself over loopback.
//
// Identity: each call acts as one agent, Options.Agent's answer for the call unless
// the call names another in its agent_id argument. An agent's sandbox is created on
// its first run and persists across calls and sessions, as over the HTTP API.
//
// Results: every tool returns structured content (its output schema) and a short text
// summary. A program that fails is a normal result (its verdict, exit code, output and
// the rollback that undid it). isError is set for a run the policy blocked (its rule
// and reason), for bad arguments and for infrastructure failures, each with a hint of
// what to do next.
package mcpserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

// DefaultAgent is the agent a session acts as when nothing names one.
const DefaultAgent = "mcp"

// Options configures a server.
type Options struct {
	// Version is reported to clients as the server's version.
	Version string
	// Client returns the client one tool call uses, or why there is none. Required.
	Client func(req *mcp.CallToolRequest) (*client.Client, error)
	// Agent returns the agent a call acts as when its arguments name none; nil or
	// an empty answer is DefaultAgent.
	Agent func(req *mcp.CallToolRequest) string
	// Logger for the SDK's own messages; nil logs nothing.
	Logger *slog.Logger
}

// instructions tell the model what the server is for.
const instructions = `vmexec runs code in your own isolated sandbox (python, javascript, bash, rust, go).
The sandbox persists: files and installed state from one call are there in the next,
across sessions. Each run is a transaction: the sandbox is snapshotted first and a run
that fails (non-zero exit, timeout, a limit) is rolled back automatically, so a bad run
cannot break it. Use snapshot/rollback to undo several steps, fork to try something in a
copy, history to see past failures, and read_file/write_file/list_files to move files.
The sandbox has no network.`

// New returns the MCP server with vmexec's tools.
func New(opt Options) *mcp.Server {
	if opt.Client == nil {
		panic("mcpserver: Options.Client is required")
	}
	if opt.Version == "" {
		opt.Version = "dev"
	}
	s := mcp.NewServer(&mcp.Implementation{Name: "vmexec", Title: "vmexec sandboxes", Version: opt.Version},
		&mcp.ServerOptions{Instructions: instructions, Logger: opt.Logger, Capabilities: &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}}})
	t := &tools{opt: opt}
	t.register(s)
	return s
}

// tools holds the tool handlers' shared parts.
type tools struct {
	opt Options
}

// call is what one tool call acts with: its client and agent.
type call struct {
	c     *client.Client
	agent string
}

func (t *tools) call(req *mcp.CallToolRequest, agentArg string) (call, error) {
	agent := strings.TrimSpace(agentArg)
	if agent == "" && t.opt.Agent != nil {
		agent = t.opt.Agent(req)
	}
	if agent == "" {
		agent = DefaultAgent
	}
	c, err := t.opt.Client(req)
	if err != nil {
		return call{}, &toolError{what: "no connection to the vmexec daemon: " + err.Error(), hint: "this is a server-side failure; report it", err: err}
	}
	return call{c: c, agent: agent}, nil
}

// toolError is a tool failure a model can act on: what happened and what to do.
type toolError struct {
	what, hint string
	err        error
}

func (e *toolError) Error() string {
	if e.hint == "" {
		return e.what
	}
	return e.what + "\nHint: " + e.hint
}

func (e *toolError) Unwrap() error { return e.err }

// badArg is an argument error.
func badArg(hint, format string, args ...any) error {
	return &toolError{what: "bad arguments: " + fmt.Sprintf(format, args...), hint: hint}
}

// failed describes a failed call to the daemon, doing what, with a hint by its kind.
func failed(doing string, err error) error {
	var ce *client.Error
	if errors.As(err, &ce) {
		hint := ""
		switch ce.Status {
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
			hint = "fix the arguments as the message says and call again"
		case http.StatusNotFound:
			hint = "check the id: list_sandboxes and list_snapshots show the ones that exist"
		case http.StatusForbidden:
			hint = "that belongs to another agent; use your own sandbox (list_sandboxes) or pass the owner's agent_id"
		case http.StatusConflict:
			hint = "the sandbox is in a state that does not allow this now; check list_sandboxes and try again"
		case http.StatusTooManyRequests, http.StatusServiceUnavailable:
			hint = "the server is busy or at capacity; wait a few seconds and call again"
		case http.StatusUnauthorized:
			hint = "the server wants an API key: set VMEXEC_API_KEY (stdio) or an Authorization header (HTTP)"
		case http.StatusInsufficientStorage:
			hint = "the snapshot disk budget is full; delete or unpin old snapshots"
		case http.StatusNotImplemented:
			hint = "this backend does not support it; use the default backend"
		default:
			hint = "this is a server-side failure; the daemon's log has the details. Try again, or report it"
		}
		return &toolError{what: fmt.Sprintf("%s failed: %s (%s)", doing, ce.Message, codeOr(ce)), hint: hint, err: err}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return &toolError{what: doing + " was cancelled", hint: "call again with a longer request timeout if it was cut short", err: err}
	}
	return &toolError{what: fmt.Sprintf("%s failed: %v", doing, err), hint: "is the vmexec daemon running and reachable (`vmexec serve`; --url or $VMEXEC_URL)?", err: err}
}

func codeOr(e *client.Error) string {
	if e.Code != "" {
		return e.Code
	}
	return fmt.Sprintf("HTTP %d", e.Status)
}

// sandboxFor picks the sandbox a call means: the one it names, else the agent's own
// (the oldest of the agent's sandboxes, which is the one its runs use). With none,
// create makes the agent's sandbox (it becomes the one runs use); otherwise the call
// fails with a hint.
func (cl call) sandboxFor(ctx context.Context, named string, create bool) (string, error) {
	if named != "" {
		return named, nil
	}
	all, err := cl.c.ListSandboxes(ctx)
	if err != nil {
		return "", failed("finding your sandbox", err)
	}
	for _, sb := range all { // oldest first
		if sb.AgentID == cl.agent {
			return sb.ID, nil
		}
	}
	if !create {
		return "", &toolError{what: fmt.Sprintf("agent %q has no sandbox yet", cl.agent),
			hint: "run_code creates it on its first run (or call create_sandbox); then call this again"}
	}
	sb, err := cl.c.CreateSandbox(ctx, api.CreateSandboxRequest{AgentID: cl.agent})
	if err != nil {
		return "", failed("creating your sandbox", err)
	}
	return sb.ID, nil
}

// owned checks that sandboxID is the agent's, for calls whose API route takes no
// agent (delete): another agent's sandbox is refused as the API would.
func (cl call) owned(ctx context.Context, sandboxID string) error {
	all, err := cl.c.ListSandboxes(ctx)
	if err != nil {
		return failed("looking up the sandbox", err)
	}
	for _, sb := range all {
		if sb.ID != sandboxID {
			continue
		}
		if sb.AgentID != "" && sb.AgentID != cl.agent {
			return &toolError{what: fmt.Sprintf("sandbox %s belongs to agent %q, not %q", sandboxID, sb.AgentID, cl.agent),
				hint: "use your own sandbox (list_sandboxes), or pass agent_id to act as its owner"}
		}
		return nil
	}
	return &toolError{what: fmt.Sprintf("no sandbox %s", sandboxID), hint: "list_sandboxes shows the ones that exist"}
}

func text(s string) []mcp.Content { return []mcp.Content{&mcp.TextContent{Text: s}} }

func ptr[T any](v T) *T { return &v }
