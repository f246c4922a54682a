package mcpserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

// Inputs. Every tool takes an optional agent_id: act as that agent instead of the
// session's.

// LimitsIn bounds one run; zero fields take the server's defaults.
type LimitsIn struct {
	MemoryMB       int64 `json:"memory_mb,omitempty" jsonschema:"memory limit in MiB"`
	MaxOutputBytes int64 `json:"max_output_bytes,omitempty" jsonschema:"bytes kept of stdout and of stderr, each"`
	MaxProcs       int64 `json:"max_procs,omitempty" jsonschema:"processes and threads the run may have"`
	MaxFileBytes   int64 `json:"max_file_bytes,omitempty" jsonschema:"largest file the run may write, in bytes"`
}

// RunCodeIn is run_code's input.
type RunCodeIn struct {
	Language       string            `json:"language" jsonschema:"python, javascript, bash, rust or go"`
	Code           string            `json:"code" jsonschema:"the program's source"`
	Stdin          string            `json:"stdin,omitempty" jsonschema:"sent to the program's standard input"`
	TimeoutSeconds float64           `json:"timeout_seconds,omitempty" jsonschema:"wall-clock limit of the run in seconds (default 30, at most 600)"`
	Limits         *LimitsIn         `json:"limits,omitempty" jsonschema:"more limits of the run"`
	WorkingDir     string            `json:"working_dir,omitempty" jsonschema:"directory to run in (default /home/user)"`
	Env            map[string]string `json:"env,omitempty" jsonschema:"environment variables of the run"`
	SandboxID      string            `json:"sandbox_id,omitempty" jsonschema:"run in this sandbox (default: your own, created on first use)"`
	AgentID        string            `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// RunReplyIn is run_reply's input.
type RunReplyIn struct {
	Text           string    `json:"text" jsonschema:"an LLM reply in Markdown; its fenced code blocks are run in order"`
	StopOnFailure  *bool     `json:"stop_on_failure,omitempty" jsonschema:"skip the blocks after the first that fails (default true)"`
	TimeoutSeconds float64   `json:"timeout_seconds,omitempty" jsonschema:"wall-clock limit of each block in seconds"`
	Limits         *LimitsIn `json:"limits,omitempty" jsonschema:"more limits of each block"`
	SandboxID      string    `json:"sandbox_id,omitempty" jsonschema:"run in this sandbox (default: your own)"`
	AgentID        string    `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// ListSandboxesIn is list_sandboxes's input.
type ListSandboxesIn struct {
	All     bool   `json:"all,omitempty" jsonschema:"list every agent's sandboxes, not only yours"`
	AgentID string `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// CreateSandboxIn is create_sandbox's input.
type CreateSandboxIn struct {
	Name     string `json:"name,omitempty" jsonschema:"a name for it"`
	MemoryMB int64  `json:"memory_mb,omitempty" jsonschema:"its memory in MiB (default: the server's)"`
	Backend  string `json:"backend,omitempty" jsonschema:"gvisor or microvm, when the server enables it (default: the server's)"`
	AgentID  string `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// SandboxIn names a sandbox.
type SandboxIn struct {
	SandboxID string `json:"sandbox_id" jsonschema:"the sandbox"`
	AgentID   string `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// OptSandboxIn optionally names a sandbox.
type OptSandboxIn struct {
	SandboxID string `json:"sandbox_id,omitempty" jsonschema:"the sandbox; default: your own (the one run_code uses)"`
	AgentID   string `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// SnapshotIn is snapshot's input.
type SnapshotIn struct {
	SandboxID   string `json:"sandbox_id,omitempty" jsonschema:"the sandbox; default: your own (the one run_code uses)"`
	Name        string `json:"name,omitempty" jsonschema:"a name for the snapshot"`
	Description string `json:"description,omitempty" jsonschema:"what state it keeps"`
	Pinned      bool   `json:"pinned,omitempty" jsonschema:"never removed by retention"`
	AgentID     string `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// RollbackIn is rollback's input: exactly one of snapshot_id and last_success.
type RollbackIn struct {
	SandboxID   string `json:"sandbox_id,omitempty" jsonschema:"the sandbox; default: your own (the one run_code uses)"`
	SnapshotID  string `json:"snapshot_id,omitempty" jsonschema:"return to this snapshot (list_snapshots)"`
	LastSuccess bool   `json:"last_success,omitempty" jsonschema:"return to the state right after the last successful run"`
	AgentID     string `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// ForkIn is fork's input.
type ForkIn struct {
	SnapshotID string `json:"snapshot_id" jsonschema:"the snapshot the new sandbox starts from"`
	Name       string `json:"name,omitempty" jsonschema:"a name for the new sandbox"`
	AgentID    string `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// HistoryIn is history's input.
type HistoryIn struct {
	FailuresOnly bool   `json:"failures_only,omitempty" jsonschema:"only runs that failed or were blocked"`
	Limit        int    `json:"limit,omitempty" jsonschema:"at most this many runs, newest first (default 20)"`
	SandboxID    string `json:"sandbox_id,omitempty" jsonschema:"only this sandbox's runs (default: all of yours)"`
	AgentID      string `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// ReadFileIn is read_file's input.
type ReadFileIn struct {
	Path      string `json:"path" jsonschema:"absolute, or relative to /home/user"`
	MaxBytes  int64  `json:"max_bytes,omitempty" jsonschema:"read at most this many bytes (default 1 MiB)"`
	SandboxID string `json:"sandbox_id,omitempty" jsonschema:"the sandbox; default: your own (the one run_code uses)"`
	AgentID   string `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// WriteFileIn is write_file's input.
type WriteFileIn struct {
	Path      string `json:"path" jsonschema:"absolute, or relative to /home/user; missing directories are created"`
	Content   string `json:"content" jsonschema:"the file's content"`
	Encoding  string `json:"encoding,omitempty" jsonschema:"utf8 (default) or base64, how content is encoded"`
	Mode      string `json:"mode,omitempty" jsonschema:"permission bits in octal, e.g. 755 (default 644)"`
	SandboxID string `json:"sandbox_id,omitempty" jsonschema:"the sandbox; default: your own (created if you have none)"`
	AgentID   string `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// ListFilesIn is list_files's input.
type ListFilesIn struct {
	Path      string `json:"path,omitempty" jsonschema:"the directory (default /home/user)"`
	Depth     int    `json:"depth,omitempty" jsonschema:"levels to recurse (default 1: the entries only)"`
	SandboxID string `json:"sandbox_id,omitempty" jsonschema:"the sandbox; default: your own (the one run_code uses)"`
	AgentID   string `json:"agent_id,omitempty" jsonschema:"act as this agent instead of the session's own (optional)"`
}

// Outputs beyond the API's own shapes.

// Deleted is delete_sandbox's output.
type Deleted struct {
	SandboxID string `json:"sandbox_id"`
	Deleted   bool   `json:"deleted"`
}

// FileContent is read_file's output.
type FileContent struct {
	Path string `json:"path"`
	Size int64  `json:"size" jsonschema:"the file's size in bytes"`
	// Encoding is utf8 when the bytes read are valid UTF-8 text, else base64.
	Encoding  string `json:"encoding" jsonschema:"utf8 or base64: how content is encoded"`
	Content   string `json:"content"`
	Truncated bool   `json:"truncated" jsonschema:"only the first max_bytes were read"`
}

// HistoryOut is history's output.
type HistoryOut struct {
	Runs  []api.Run `json:"runs"`
	Total int       `json:"total"`
}

// defaultReadBytes bounds read_file by default; maxReadBytes always.
const (
	defaultReadBytes = 1 << 20
	maxReadBytes     = 8 << 20
	defaultHistory   = 20
)

var (
	yes = ptr(true)
	no  = ptr(false)
)

func (t *tools) register(s *mcp.Server) {
	runSchema := inputSchema[RunCodeIn](func(sc *jsonschema.Schema) {
		sc.Properties["language"].Enum = anys(api.Languages)
	})
	mcp.AddTool(s, &mcp.Tool{Name: "run_code", Title: "Run code in your sandbox", InputSchema: runSchema,
		Description: "Run a program in your persistent sandbox (python, javascript, bash, rust, go) and get its exit code, " +
			"verdict, stdout and stderr. Files and state persist between calls. The run is a transaction: a run that fails " +
			"(non-zero exit, timeout, a limit) is rolled back, so it leaves the sandbox as it was. Output lines come as " +
			"progress notifications while it runs when you send a progress token.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: yes, OpenWorldHint: no}}, t.runCode)
	mcp.AddTool(s, &mcp.Tool{Name: "run_reply", Title: "Run an LLM reply's code blocks",
		Description: "Find the fenced code blocks in a Markdown reply and run them in order in your sandbox, each as a transaction " +
			"(a failed block is rolled back; by default the blocks after it are skipped).",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: yes, OpenWorldHint: no}}, t.runReply)
	mcp.AddTool(s, &mcp.Tool{Name: "list_sandboxes", Title: "List sandboxes",
		Description: "List your sandboxes (all: every agent's) with their status, runs and snapshots.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: no}}, t.listSandboxes)
	mcp.AddTool(s, &mcp.Tool{Name: "create_sandbox", Title: "Create a sandbox",
		Description: "Create a new empty sandbox for you. Your first one becomes the sandbox run_code uses by default; " +
			"run in others with sandbox_id.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: no, OpenWorldHint: no}}, t.createSandbox)
	mcp.AddTool(s, &mcp.Tool{Name: "delete_sandbox", Title: "Delete a sandbox",
		Description: "Destroy one of your sandboxes and its snapshots (its run history stays). Your next run_code without " +
			"sandbox_id starts a fresh sandbox if it was your own.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: yes, IdempotentHint: true, OpenWorldHint: no}}, t.deleteSandbox)
	mcp.AddTool(s, &mcp.Tool{Name: "snapshot", Title: "Snapshot a sandbox",
		Description: "Save the sandbox's whole state (files, memory, running processes) as a snapshot you can roll back to or fork.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: no, OpenWorldHint: no}}, t.snapshot)
	mcp.AddTool(s, &mcp.Tool{Name: "list_snapshots", Title: "List snapshots",
		Description: "List a sandbox's snapshots, oldest first: manual ones, and those taken before runs and of failed runs.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: no}}, t.listSnapshots)
	mcp.AddTool(s, &mcp.Tool{Name: "rollback", Title: "Roll a sandbox back",
		Description: "Return the sandbox to a snapshot (snapshot_id) or to the state right after its last successful run " +
			"(last_success: true). What happened since is discarded.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: yes, IdempotentHint: true, OpenWorldHint: no}}, t.rollback)
	mcp.AddTool(s, &mcp.Tool{Name: "fork", Title: "Fork a snapshot",
		Description: "Start a new sandbox from a snapshot, to try something in a copy; run in it with its sandbox_id.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: no, OpenWorldHint: no}}, t.fork)
	mcp.AddTool(s, &mcp.Tool{Name: "history", Title: "Run history",
		Description: "Your recorded runs, newest first, with code, verdict, output and snapshot ids; failures_only for the failed and blocked ones.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: no}}, t.history)
	mcp.AddTool(s, &mcp.Tool{Name: "read_file", Title: "Read a file",
		Description: "Read a file from the sandbox: text as is, other bytes as base64.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: no}}, t.readFile)
	mcp.AddTool(s, &mcp.Tool{Name: "write_file", Title: "Write a file",
		Description: "Write a file into the sandbox (replacing one that is there), creating missing directories.",
		Annotations: &mcp.ToolAnnotations{DestructiveHint: yes, IdempotentHint: true, OpenWorldHint: no}}, t.writeFile)
	mcp.AddTool(s, &mcp.Tool{Name: "list_files", Title: "List files",
		Description: "List a directory of the sandbox (default /home/user), with sizes and types.",
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: no}}, t.listFiles)
}

// inputSchema is T's inferred schema, adjusted by edit.
func inputSchema[T any](edit func(*jsonschema.Schema)) *jsonschema.Schema {
	sc, err := jsonschema.For[T](nil)
	if err != nil {
		panic(fmt.Sprintf("mcpserver: schema of %T: %v", *new(T), err))
	}
	edit(sc)
	return sc
}

func anys(xs []string) []any {
	out := make([]any, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

func limits(timeoutSeconds float64, l *LimitsIn) (api.Limits, error) {
	if timeoutSeconds < 0 {
		return api.Limits{}, badArg("pass a positive timeout_seconds, or none for the default", "timeout_seconds is negative")
	}
	out := api.Limits{TimeoutMS: int64(timeoutSeconds * 1000)}
	if timeoutSeconds > 0 && out.TimeoutMS == 0 {
		out.TimeoutMS = 1
	}
	if l != nil {
		out.MemoryMB, out.MaxOutputBytes, out.MaxProcs, out.MaxFileBytes = l.MemoryMB, l.MaxOutputBytes, l.MaxProcs, l.MaxFileBytes
	}
	return out, nil
}

func (t *tools) runCode(ctx context.Context, req *mcp.CallToolRequest, in RunCodeIn) (*mcp.CallToolResult, *api.ExecResult, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	if strings.TrimSpace(in.Code) == "" {
		return nil, nil, badArg("pass the program in code", "code is empty")
	}
	lim, err := limits(in.TimeoutSeconds, in.Limits)
	if err != nil {
		return nil, nil, err
	}
	p := newProgress(ctx, req)
	res, err := cl.c.ExecStream(ctx, api.ExecRequest{AgentID: cl.agent, SandboxID: in.SandboxID, Language: in.Language, Code: in.Code,
		Stdin: in.Stdin, Env: in.Env, WorkDir: in.WorkingDir, Limits: lim}, p.output())
	p.flush()
	if err != nil {
		return nil, nil, failed("run_code", err)
	}
	return runResult(res), res, nil
}

// runResult is the text of a run, and isError for a blocked one.
func runResult(res *api.ExecResult) *mcp.CallToolResult {
	r := &mcp.CallToolResult{Content: text(summarizeRun(res))}
	if res.Verdict == api.VerdictBlocked {
		r.IsError = true
	}
	return r
}

func (t *tools) runReply(ctx context.Context, req *mcp.CallToolRequest, in RunReplyIn) (*mcp.CallToolResult, *api.ParseExecuteResult, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	if strings.TrimSpace(in.Text) == "" {
		return nil, nil, badArg("pass the reply's Markdown in text", "text is empty")
	}
	lim, err := limits(in.TimeoutSeconds, in.Limits)
	if err != nil {
		return nil, nil, err
	}
	p := newProgress(ctx, req)
	var out client.ParseOutput
	if p != nil {
		o := p.output()
		out.Stdout = func(_ int, s string) { o.Stdout(s) }
		out.Stderr = func(_ int, s string) { o.Stderr(s) }
		out.Block = func(b api.BlockResult) {
			p.flush()
			p.send(fmt.Sprintf("block %d (%s): %s", b.Block.Index, b.Block.Language, b.Status))
		}
	}
	res, err := cl.c.ParseExecuteStream(ctx, api.ParseExecuteRequest{AgentID: cl.agent, SandboxID: in.SandboxID, Text: in.Text,
		StopOnFailure: in.StopOnFailure, Limits: lim}, out)
	p.flush()
	if err != nil {
		return nil, nil, failed("run_reply", err)
	}
	r := &mcp.CallToolResult{Content: text(summarizeReply(res))}
	for _, b := range res.Blocks {
		if b.Status == api.BlockBlocked {
			r.IsError = true
		}
	}
	return r, &res, nil
}

func (t *tools) listSandboxes(ctx context.Context, req *mcp.CallToolRequest, in ListSandboxesIn) (*mcp.CallToolResult, *api.SandboxList, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	all, err := cl.c.ListSandboxes(ctx)
	if err != nil {
		return nil, nil, failed("list_sandboxes", err)
	}
	out := &api.SandboxList{Sandboxes: []api.Sandbox{}}
	for _, sb := range all {
		if in.All || sb.AgentID == cl.agent {
			out.Sandboxes = append(out.Sandboxes, sb)
		}
	}
	return &mcp.CallToolResult{Content: text(summarizeSandboxes(cl.agent, in.All, out.Sandboxes))}, out, nil
}

func (t *tools) createSandbox(ctx context.Context, req *mcp.CallToolRequest, in CreateSandboxIn) (*mcp.CallToolResult, *api.Sandbox, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	sb, err := cl.c.CreateSandbox(ctx, api.CreateSandboxRequest{AgentID: cl.agent, Name: in.Name, MemoryMB: in.MemoryMB, Backend: in.Backend})
	if err != nil {
		return nil, nil, failed("create_sandbox", err)
	}
	return &mcp.CallToolResult{Content: text(fmt.Sprintf("created sandbox %s (%s, %d MiB) for agent %s; run in it with sandbox_id %q",
		sb.ID, sb.Backend, sb.MemoryMB, cl.agent, sb.ID))}, &sb, nil
}

func (t *tools) deleteSandbox(ctx context.Context, req *mcp.CallToolRequest, in SandboxIn) (*mcp.CallToolResult, *Deleted, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	if in.SandboxID == "" {
		return nil, nil, badArg("pass the sandbox_id to delete (list_sandboxes)", "sandbox_id is empty")
	}
	if err := cl.owned(ctx, in.SandboxID); err != nil {
		return nil, nil, err
	}
	if err := cl.c.DeleteSandbox(ctx, in.SandboxID); err != nil {
		return nil, nil, failed("delete_sandbox", err)
	}
	return &mcp.CallToolResult{Content: text("deleted sandbox " + in.SandboxID + " and its snapshots; its history stays")},
		&Deleted{SandboxID: in.SandboxID, Deleted: true}, nil
}

func (t *tools) snapshot(ctx context.Context, req *mcp.CallToolRequest, in SnapshotIn) (*mcp.CallToolResult, *api.Snapshot, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	id, err := cl.sandboxFor(ctx, in.SandboxID, false)
	if err != nil {
		return nil, nil, err
	}
	sn, err := cl.c.CreateSnapshot(ctx, id, api.CreateSnapshotRequest{AgentID: cl.agent, Name: in.Name, Description: in.Description, Pinned: in.Pinned})
	if err != nil {
		return nil, nil, failed("snapshot", err)
	}
	return &mcp.CallToolResult{Content: text(fmt.Sprintf("snapshot %s of sandbox %s saved (%s); undo to it with rollback {snapshot_id: %q}",
		sn.ID, id, humanBytes(sn.SizeBytes), sn.ID))}, &sn, nil
}

func (t *tools) listSnapshots(ctx context.Context, req *mcp.CallToolRequest, in OptSandboxIn) (*mcp.CallToolResult, *api.SnapshotList, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	id, err := cl.sandboxFor(ctx, in.SandboxID, false)
	if err != nil {
		return nil, nil, err
	}
	l, err := cl.c.ListSnapshots(ctx, id, cl.agent)
	if err != nil {
		return nil, nil, failed("list_snapshots", err)
	}
	if l.Snapshots == nil {
		l.Snapshots = []api.Snapshot{}
	}
	return &mcp.CallToolResult{Content: text(summarizeSnapshots(id, l))}, &l, nil
}

func (t *tools) rollback(ctx context.Context, req *mcp.CallToolRequest, in RollbackIn) (*mcp.CallToolResult, *api.RollbackResult, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	if (in.SnapshotID == "") == !in.LastSuccess {
		return nil, nil, badArg("pass either snapshot_id (list_snapshots shows them) or last_success: true", "rollback needs exactly one of snapshot_id and last_success")
	}
	id, err := cl.sandboxFor(ctx, in.SandboxID, false)
	if err != nil {
		return nil, nil, err
	}
	res, err := cl.c.Rollback(ctx, id, api.RollbackRequest{AgentID: cl.agent, SnapshotID: in.SnapshotID, LastSuccess: in.LastSuccess})
	if err != nil {
		return nil, nil, failed("rollback", err)
	}
	msg := res.Message // the server's: it also says when there was nothing to undo
	if msg == "" {
		msg = fmt.Sprintf("sandbox %s rolled back to snapshot %s", res.SandboxID, res.SnapshotID)
	}
	return &mcp.CallToolResult{Content: text(msg)}, &res, nil
}

func (t *tools) fork(ctx context.Context, req *mcp.CallToolRequest, in ForkIn) (*mcp.CallToolResult, *api.Sandbox, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	if in.SnapshotID == "" {
		return nil, nil, badArg("pass the snapshot_id to start from (list_snapshots)", "snapshot_id is empty")
	}
	sb, err := cl.c.Fork(ctx, in.SnapshotID, api.ForkRequest{AgentID: cl.agent, Name: in.Name})
	if err != nil {
		return nil, nil, failed("fork", err)
	}
	return &mcp.CallToolResult{Content: text(fmt.Sprintf("forked snapshot %s into new sandbox %s; run in it with sandbox_id %q (your own sandbox is unchanged)",
		in.SnapshotID, sb.ID, sb.ID))}, &sb, nil
}

func (t *tools) history(ctx context.Context, req *mcp.CallToolRequest, in HistoryIn) (*mcp.CallToolResult, *HistoryOut, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	if in.Limit < 0 {
		return nil, nil, badArg("pass a positive limit", "limit is negative")
	}
	if in.Limit == 0 {
		in.Limit = defaultHistory
	}
	l, err := cl.c.History(ctx, client.HistoryQuery{AgentID: cl.agent, SandboxID: in.SandboxID, FailuresOnly: in.FailuresOnly, Limit: in.Limit})
	if err != nil {
		return nil, nil, failed("history", err)
	}
	out := &HistoryOut{Runs: l.Runs, Total: l.Total}
	if out.Runs == nil {
		out.Runs = []api.Run{}
	}
	return &mcp.CallToolResult{Content: text(summarizeHistory(cl.agent, in.FailuresOnly, out))}, out, nil
}

func (t *tools) readFile(ctx context.Context, req *mcp.CallToolRequest, in ReadFileIn) (*mcp.CallToolResult, *FileContent, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	if in.Path == "" {
		return nil, nil, badArg("pass the file's path", "path is empty")
	}
	if in.MaxBytes <= 0 {
		in.MaxBytes = defaultReadBytes
	}
	in.MaxBytes = min(in.MaxBytes, maxReadBytes)
	id, err := cl.sandboxFor(ctx, in.SandboxID, false)
	if err != nil {
		return nil, nil, err
	}
	rc, size, err := cl.c.GetFile(ctx, id, in.Path, client.FileOptions{AgentID: cl.agent})
	if err != nil {
		return nil, nil, failed("read_file", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, in.MaxBytes+1))
	if err != nil {
		return nil, nil, failed("read_file", err)
	}
	out := &FileContent{Path: in.Path, Size: size, Encoding: "utf8"}
	if int64(len(b)) > in.MaxBytes {
		b, out.Truncated = b[:in.MaxBytes], true
	}
	if size < 0 {
		out.Size = int64(len(b))
	}
	if utf8.Valid(b) && !bytes.ContainsRune(b, 0) {
		out.Content = string(b)
	} else if t := trimPartialRune(b); out.Truncated && utf8.Valid(t) && !bytes.ContainsRune(t, 0) {
		out.Content = string(t)
	} else {
		out.Encoding, out.Content = "base64", base64.StdEncoding.EncodeToString(b)
	}
	return &mcp.CallToolResult{Content: text(summarizeFile(id, out))}, out, nil
}

// trimPartialRune drops a UTF-8 character cut at the end of b.
func trimPartialRune(b []byte) []byte {
	for i := 0; i < utf8.UTFMax && i < len(b); i++ {
		if utf8.Valid(b[:len(b)-i]) {
			return b[:len(b)-i]
		}
	}
	return b
}

func (t *tools) writeFile(ctx context.Context, req *mcp.CallToolRequest, in WriteFileIn) (*mcp.CallToolResult, *api.FileInfo, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	if in.Path == "" {
		return nil, nil, badArg("pass the file's path", "path is empty")
	}
	data := []byte(in.Content)
	switch in.Encoding {
	case "", "utf8", "utf-8":
	case "base64":
		var err error
		if data, err = base64.StdEncoding.DecodeString(in.Content); err != nil {
			return nil, nil, badArg("pass content as standard base64, or encoding utf8 for text", "content is not base64: %v", err)
		}
	default:
		return nil, nil, badArg("use encoding utf8 or base64", "unknown encoding %q", in.Encoding)
	}
	var mode uint32
	if in.Mode != "" {
		var m uint64
		if _, err := fmt.Sscanf(in.Mode, "%o", &m); err != nil || m > 0o7777 || !isOctal(in.Mode) {
			return nil, nil, badArg("pass mode as octal permission bits, e.g. \"755\"", "mode %q is not octal permission bits", in.Mode)
		}
		mode = uint32(m)
	}
	id, err := cl.sandboxFor(ctx, in.SandboxID, true)
	if err != nil {
		return nil, nil, err
	}
	info, err := cl.c.PutFile(ctx, id, in.Path, bytes.NewReader(data), client.FileOptions{AgentID: cl.agent, Mode: mode})
	if err != nil {
		return nil, nil, failed("write_file", err)
	}
	return &mcp.CallToolResult{Content: text(fmt.Sprintf("wrote %s (%s, mode %o) in sandbox %s", info.Path, humanBytes(info.Size), info.Mode, id))}, &info, nil
}

func isOctal(s string) bool {
	return s != "" && !strings.ContainsFunc(s, func(r rune) bool { return r < '0' || r > '7' })
}

func (t *tools) listFiles(ctx context.Context, req *mcp.CallToolRequest, in ListFilesIn) (*mcp.CallToolResult, *api.FileList, error) {
	cl, err := t.call(req, in.AgentID)
	if err != nil {
		return nil, nil, err
	}
	if in.Depth < 0 {
		return nil, nil, badArg("pass depth 1 or more", "depth is negative")
	}
	id, err := cl.sandboxFor(ctx, in.SandboxID, false)
	if err != nil {
		return nil, nil, err
	}
	entries, err := cl.c.ListFiles(ctx, id, in.Path, in.Depth, client.FileOptions{AgentID: cl.agent})
	if err != nil {
		return nil, nil, failed("list_files", err)
	}
	if entries == nil {
		entries = []api.FileInfo{}
	}
	slices.SortFunc(entries, func(a, b api.FileInfo) int { return strings.Compare(a.Path, b.Path) })
	return &mcp.CallToolResult{Content: text(summarizeFiles(id, in.Path, entries))}, &api.FileList{Entries: entries}, nil
}
