package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/mcpserver"
	"github.com/vmexec/vmexec/internal/testenv"
)

// The MCP server against the real daemon, through the official Go SDK's client over
// its three transports: the command transport running `vmexec mcp` (stdio), the
// streamable HTTP transport against the daemon's /mcp, and the in-memory transport
// with the server package in this process. Each acts as its own agent and goes
// through the same scenario: the tools an agent in an MCP host would use.

var mcpTools = []string{"create_sandbox", "delete_sandbox", "fork", "history", "list_files", "list_sandboxes",
	"list_snapshots", "read_file", "rollback", "run_code", "run_reply", "snapshot", "write_file"}

// mcpProgress collects one session's progress notifications.
type mcpProgress struct {
	mu    sync.Mutex
	notes []*mcp.ProgressNotificationParams
	at    []time.Time // when each arrived
}

func (p *mcpProgress) handler(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.notes = append(p.notes, req.Params)
	p.at = append(p.at, time.Now())
}

func (p *mcpProgress) forToken(token string) (msgs []string, at []time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, n := range p.notes {
		if n.ProgressToken == token {
			msgs, at = append(msgs, n.Message), append(at, p.at[i])
		}
	}
	return msgs, at
}

func mcpConnect(t *testing.T, tr mcp.Transport, p *mcpProgress) *mcp.ClientSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "vmexec-e2e", Version: "test"}, &mcp.ClientOptions{ProgressNotificationHandler: p.handler})
	cs, err := c.Connect(ctx, tr, nil)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// mcpCall calls a tool; a protocol error fails the test (tool errors are results).
func mcpCall(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) *mcp.CallToolResult {
	t.Helper()
	return mcpCallMeta(t, cs, name, args, nil)
}

func mcpCallMeta(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any, meta mcp.Meta) *mcp.CallToolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args, Meta: meta})
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return res
}

func mcpText(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// mcpOut decodes a result's structured content; an error result fails the test.
func mcpOut[T any](t *testing.T, res *mcp.CallToolResult) T {
	t.Helper()
	if res.IsError {
		t.Fatalf("unexpected tool error: %s", mcpText(res))
	}
	return mcpStructured[T](t, res)
}

func mcpStructured[T any](t *testing.T, res *mcp.CallToolResult) T {
	t.Helper()
	var v T
	b, err := json.Marshal(res.StructuredContent)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("structured content %s: %v", b, err)
	}
	return v
}

func mcpRunCode(t *testing.T, cs *mcp.ClientSession, lang, code string, extra ...any) api.ExecResult {
	t.Helper()
	args := map[string]any{"language": lang, "code": code}
	for i := 0; i+1 < len(extra); i += 2 {
		args[extra[i].(string)] = extra[i+1]
	}
	return mcpOut[api.ExecResult](t, mcpCall(t, cs, "run_code", args))
}

func TestMCP(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--allowed-hosts", "rebind.example"}})
	bin := testenv.Vmexec(t)

	transports := []struct {
		name    string
		connect func(t *testing.T, agent string, p *mcpProgress) *mcp.ClientSession
	}{
		{"stdio", func(t *testing.T, agent string, p *mcpProgress) *mcp.ClientSession {
			return mcpConnect(t, &mcp.CommandTransport{Command: exec.Command(bin, "mcp", "--url", d.url, "--agent", agent)}, p)
		}},
		{"http", func(t *testing.T, agent string, p *mcpProgress) *mcp.ClientSession {
			return mcpConnect(t, &mcp.StreamableClientTransport{Endpoint: d.url + "/mcp?agent=" + agent}, p)
		}},
		{"inmemory", func(t *testing.T, agent string, p *mcpProgress) *mcp.ClientSession {
			srv := mcpserver.New(mcpserver.Options{Client: func(*mcp.CallToolRequest) (*client.Client, error) { return d.client, nil },
				Agent: func(*mcp.CallToolRequest) string { return agent }})
			st, ct := mcp.NewInMemoryTransports()
			ss, err := srv.Connect(context.Background(), st, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ss.Close() })
			return mcpConnect(t, ct, p)
		}},
	}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			agent := "mcp-" + tr.name
			p := &mcpProgress{}
			cs := tr.connect(t, agent, p)
			mcpScenario(t, d, cs, agent, p)
			// Another session as the same agent finds the same sandbox and its files.
			cs.Close()
			cs2 := tr.connect(t, agent, &mcpProgress{})
			if r := mcpRunCode(t, cs2, "bash", "cat state.txt"); r.Stdout != "one\n" {
				t.Errorf("a new session's run sees state.txt = %q, want the earlier session's \"one\\n\"", r.Stdout)
			}
		})
	}

	t.Run("http boundary", func(t *testing.T) {
		for _, tc := range []struct {
			name, method, host string
			want               int
		}{
			{"GET stream not offered", http.MethodGet, "", http.StatusMethodNotAllowed},
			// rebind.example passes the daemon's Host check (--allowed-hosts), and the
			// SDK's DNS-rebinding protection still refuses it on a loopback address.
			{"rebinding host refused by the SDK", http.MethodPost, "rebind.example", http.StatusForbidden},
			{"foreign host refused by the daemon", http.MethodPost, "evil.example", http.StatusForbidden},
		} {
			t.Run(tc.name, func(t *testing.T) {
				body := strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}`)
				req, _ := http.NewRequest(tc.method, d.url+"/mcp", body)
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				if tc.host != "" {
					req.Host = tc.host
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != tc.want {
					t.Errorf("%s /mcp Host %q: %d, want %d", tc.method, tc.host, resp.StatusCode, tc.want)
				}
			})
		}
		// The same allowed host reaches the rest of the API: the 403 above is the SDK's.
		req, _ := http.NewRequest(http.MethodGet, d.url+"/v1/health", nil)
		req.Host = "rebind.example"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET /v1/health Host rebind.example: %d, want 200", resp.StatusCode)
		}
	})
}

// mcpScenario is what an agent does through the tools, checking what it sees.
func mcpScenario(t *testing.T, d *daemon, cs *mcp.ClientSession, agent string, p *mcpProgress) {
	ctx := context.Background()
	t.Run("list tools", func(t *testing.T) {
		l, err := cs.ListTools(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		byName := map[string]*mcp.Tool{}
		for _, tool := range l.Tools {
			names = append(names, tool.Name)
			byName[tool.Name] = tool
			if tool.OutputSchema == nil || tool.InputSchema == nil || tool.Annotations == nil || tool.Description == "" {
				t.Errorf("tool %s lacks a schema, annotations or description", tool.Name)
			}
		}
		slices.Sort(names)
		if !slices.Equal(names, mcpTools) {
			t.Fatalf("tools %v, want %v", names, mcpTools)
		}
		for _, n := range []string{"list_sandboxes", "list_snapshots", "history", "read_file", "list_files"} {
			if !byName[n].Annotations.ReadOnlyHint {
				t.Errorf("%s is not marked read-only", n)
			}
		}
		for _, n := range []string{"rollback", "delete_sandbox", "write_file", "run_code"} {
			a := byName[n].Annotations
			if a.ReadOnlyHint || a.DestructiveHint == nil || !*a.DestructiveHint {
				t.Errorf("%s is not marked destructive", n)
			}
		}
		for _, n := range []string{"snapshot", "fork", "create_sandbox"} {
			if a := byName[n].Annotations; a.DestructiveHint == nil || *a.DestructiveHint {
				t.Errorf("%s is marked destructive; it only adds", n)
			}
		}
	})

	var own string
	t.Run("run code and state across calls", func(t *testing.T) {
		r := mcpRunCode(t, cs, "python", "open('state.txt','w').write('one\\n'); print('hello')")
		if r.Verdict != api.VerdictOK || r.Stdout != "hello\n" || r.AgentID != agent {
			t.Fatalf("first run: %+v", r)
		}
		own = r.SandboxID
		if r := mcpRunCode(t, cs, "bash", "cat state.txt"); r.Stdout != "one\n" || r.SandboxID != own {
			t.Fatalf("the next call does not see the file: %+v", r)
		}
	})
	if own == "" {
		t.FailNow()
	}

	t.Run("failed run is a result, rolled back", func(t *testing.T) {
		res := mcpCall(t, cs, "run_code", map[string]any{"language": "bash", "code": "echo two > state.txt; echo oops >&2; exit 3"})
		if res.IsError {
			t.Fatalf("a program that fails is a normal result, got isError: %s", mcpText(res))
		}
		r := mcpStructured[api.ExecResult](t, res)
		if r.Verdict != api.VerdictNonzeroExit || r.ExitCode != 3 || !r.RolledBack || r.Stderr != "oops\n" || r.RestoredSnapshotID == "" {
			t.Fatalf("failed run: %+v", r)
		}
		if txt := mcpText(res); !strings.Contains(txt, "rolled back") || !strings.Contains(txt, "exit 3") || !strings.Contains(txt, "oops") {
			t.Errorf("summary does not say what happened:\n%s", txt)
		}
		if r := mcpRunCode(t, cs, "bash", "cat state.txt"); r.Stdout != "one\n" {
			t.Errorf("after the rollback state.txt = %q, want \"one\\n\"", r.Stdout)
		}
	})

	t.Run("blocked run is isError with rule and reason", func(t *testing.T) {
		res := mcpCall(t, cs, "run_code", map[string]any{"language": "bash", "code": "rm -rf /home/user"})
		r := mcpStructured[api.ExecResult](t, res)
		if !res.IsError || r.Verdict != api.VerdictBlocked || r.BlockedRule == "" || r.BlockedReason == "" {
			t.Fatalf("blocked run: isError=%v %+v", res.IsError, r)
		}
		if txt := mcpText(res); !strings.Contains(txt, r.BlockedRule) || !strings.Contains(txt, "Hint:") {
			t.Errorf("summary lacks the rule or a hint:\n%s", txt)
		}
	})

	t.Run("bad arguments are isError with a hint", func(t *testing.T) {
		for _, c := range []struct {
			tool string
			args map[string]any
		}{
			{"rollback", map[string]any{"snapshot_id": "snap-x", "last_success": true}},
			{"run_code", map[string]any{"language": "cobol", "code": "x"}},
			{"run_code", map[string]any{"language": "bash", "code": "true", "sandbox_id": "sb-nosuch"}},
			{"write_file", map[string]any{"path": "x", "content": "%%%", "encoding": "base64"}},
		} {
			res := mcpCall(t, cs, c.tool, c.args)
			if !res.IsError || mcpText(res) == "" {
				t.Errorf("%s %v: isError=%v %q", c.tool, c.args, res.IsError, mcpText(res))
			}
		}
		res := mcpCall(t, cs, "run_code", map[string]any{"language": "bash", "code": "true", "sandbox_id": "sb-nosuch"})
		if !strings.Contains(mcpText(res), "Hint:") {
			t.Errorf("a missing sandbox gives no hint: %s", mcpText(res))
		}
	})

	var snap string
	t.Run("snapshot and rollback", func(t *testing.T) {
		sn := mcpOut[api.Snapshot](t, mcpCall(t, cs, "snapshot", map[string]any{"name": "clean"}))
		if sn.SandboxID != own || sn.ID == "" {
			t.Fatalf("snapshot: %+v", sn)
		}
		snap = sn.ID
		l := mcpOut[api.SnapshotList](t, mcpCall(t, cs, "list_snapshots", nil))
		if !slices.ContainsFunc(l.Snapshots, func(s api.Snapshot) bool { return s.ID == snap && s.Name == "clean" }) {
			t.Errorf("list_snapshots lacks %s: %+v", snap, l.Snapshots)
		}
		mcpRunCode(t, cs, "bash", "echo three > state.txt")
		rb := mcpOut[api.RollbackResult](t, mcpCall(t, cs, "rollback", map[string]any{"snapshot_id": snap}))
		if rb.SnapshotID != snap || rb.SandboxID != own {
			t.Errorf("rollback: %+v", rb)
		}
		if r := mcpRunCode(t, cs, "bash", "cat state.txt"); r.Stdout != "one\n" {
			t.Errorf("after rollback to %s: state.txt = %q, want \"one\\n\"", snap, r.Stdout)
		}
		mcpRunCode(t, cs, "bash", "echo four > last.txt")
		mcpOut[api.RollbackResult](t, mcpCall(t, cs, "rollback", map[string]any{"last_success": true}))
		if r := mcpRunCode(t, cs, "bash", "cat last.txt"); r.Stdout != "four\n" {
			t.Errorf("after rollback to the last success: last.txt = %q, want \"four\\n\"", r.Stdout)
		}
	})

	t.Run("fork", func(t *testing.T) {
		if snap == "" {
			t.Skip("no snapshot (the snapshot test failed)")
		}
		sb := mcpOut[api.Sandbox](t, mcpCall(t, cs, "fork", map[string]any{"snapshot_id": snap}))
		if sb.ID == "" || sb.ID == own || sb.AgentID != agent {
			t.Fatalf("fork: %+v", sb)
		}
		if r := mcpRunCode(t, cs, "bash", "cat state.txt; echo forked > state.txt", "sandbox_id", sb.ID); r.Stdout != "one\n" || r.SandboxID != sb.ID {
			t.Errorf("the fork does not start from the snapshot: %+v", r)
		}
		if r := mcpRunCode(t, cs, "bash", "cat state.txt"); r.Stdout != "one\n" || r.SandboxID != own {
			t.Errorf("writing in the fork changed the own sandbox: %+v", r)
		}
		l := mcpOut[api.SandboxList](t, mcpCall(t, cs, "list_sandboxes", nil))
		if len(l.Sandboxes) != 2 || l.Sandboxes[0].ID != own || l.Sandboxes[1].ID != sb.ID {
			t.Errorf("list_sandboxes: %+v, want [%s %s]", l.Sandboxes, own, sb.ID)
		}
		// Another agent may not delete it; its owner may.
		if res := mcpCall(t, cs, "delete_sandbox", map[string]any{"sandbox_id": sb.ID, "agent_id": agent + "-other"}); !res.IsError {
			t.Errorf("another agent deleted the fork: %s", mcpText(res))
		}
		mcpOut[mcpserver.Deleted](t, mcpCall(t, cs, "delete_sandbox", map[string]any{"sandbox_id": sb.ID}))
		if _, err := d.client.GetSandbox(ctx, sb.ID); !client.IsNotFound(err) {
			t.Errorf("the deleted fork is still there: %v", err)
		}
	})

	t.Run("history", func(t *testing.T) {
		h := mcpOut[mcpserver.HistoryOut](t, mcpCall(t, cs, "history", map[string]any{"failures_only": true, "limit": 10}))
		var exit3, blocked bool
		for _, r := range h.Runs {
			if r.AgentID != agent || r.Verdict == api.VerdictOK {
				t.Errorf("failures_only of %s returned %+v", agent, r)
			}
			exit3 = exit3 || r.ExitCode == 3 && r.RolledBack
			blocked = blocked || r.Status == "blocked"
		}
		if !exit3 || !blocked {
			t.Errorf("history lacks the failed (%v) or the blocked (%v) run: %+v", exit3, blocked, h.Runs)
		}
	})

	t.Run("files", func(t *testing.T) {
		fi := mcpOut[api.FileInfo](t, mcpCall(t, cs, "write_file", map[string]any{"path": "dir/run.sh", "content": "echo from-file\n", "mode": "755"}))
		if fi.Size != 15 || fi.Mode != 0o755 {
			t.Errorf("write_file: %+v", fi)
		}
		if r := mcpRunCode(t, cs, "bash", "./dir/run.sh"); r.Stdout != "from-file\n" {
			t.Errorf("the written script: %+v", r)
		}
		fc := mcpOut[mcpserver.FileContent](t, mcpCall(t, cs, "read_file", map[string]any{"path": "state.txt"}))
		if fc.Content != "one\n" || fc.Encoding != "utf8" || fc.Truncated {
			t.Errorf("read_file: %+v", fc)
		}
		mcpRunCode(t, cs, "python", "open('bin.dat','wb').write(bytes(range(256)))")
		fc = mcpOut[mcpserver.FileContent](t, mcpCall(t, cs, "read_file", map[string]any{"path": "bin.dat"}))
		if fc.Encoding != "base64" || fc.Size != 256 {
			t.Errorf("read_file of bytes: %+v", fc)
		}
		l := mcpOut[api.FileList](t, mcpCall(t, cs, "list_files", map[string]any{"depth": 2}))
		var paths []string
		for _, e := range l.Entries {
			paths = append(paths, e.Path)
		}
		for _, want := range []string{"/home/user/state.txt", "/home/user/dir/run.sh", "/home/user/bin.dat"} {
			if !slices.Contains(paths, want) {
				t.Errorf("list_files lacks %s: %v", want, paths)
			}
		}
		if res := mcpCall(t, cs, "read_file", map[string]any{"path": "no/such"}); !res.IsError {
			t.Errorf("reading a missing file is not an error: %s", mcpText(res))
		}
	})

	t.Run("run_reply", func(t *testing.T) {
		reply := "First:\n\n```python\nprint(6*7)\n```\n\nThen:\n\n```bash\necho done\n```\n"
		res := mcpOut[api.ParseExecuteResult](t, mcpCall(t, cs, "run_reply", map[string]any{"text": reply}))
		if !res.Success || res.Executed != 2 || res.Blocks[0].Result.Stdout != "42\n" || res.Blocks[1].Result.Stdout != "done\n" {
			t.Errorf("run_reply: %+v", res)
		}
	})

	t.Run("cancelling the call cancels the run", func(t *testing.T) {
		// The run announces itself, then sleeps; the call is cancelled once the first
		// line has arrived, and the run must end as canceled and rolled back.
		const token = "tok-cancel"
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			for cctx.Err() == nil {
				if msgs, _ := p.forToken(token); len(msgs) > 0 {
					cancel()
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
		_, err := cs.CallTool(cctx, &mcp.CallToolParams{Name: "run_code", Meta: mcp.Meta{"progressToken": token},
			Arguments: map[string]any{"language": "bash", "code": "touch cancelled.txt; echo started; sleep 120", "timeout_seconds": 300}})
		if err == nil {
			t.Fatal("the cancelled call returned a result")
		}
		var run api.Run
		waitUntil(t, "the cancelled run is recorded", func() bool {
			l, err := d.client.History(ctx, client.HistoryQuery{AgentID: agent, Limit: 1})
			if err != nil || len(l.Runs) == 0 || l.Runs[0].Status == "running" {
				return false
			}
			run = l.Runs[0]
			return true
		})
		if !strings.Contains(run.Code, "cancelled.txt") || run.Verdict != api.VerdictCanceled || !run.RolledBack {
			t.Errorf("the cancelled run: %+v", run)
		}
		if r := mcpRunCode(t, cs, "bash", "test -e cancelled.txt && echo there || echo gone"); r.Stdout != "gone\n" {
			t.Errorf("the cancelled run's file is %s", r.Stdout)
		}
	})

	t.Run("progress while it runs", func(t *testing.T) {
		// Each line carries the time it was printed (the sandbox shares the host's
		// clock): the first line's notification must arrive before the last line was
		// printed, which output sent only at the end could not do.
		const token = "tok-progress"
		code := "for i in 1 2 3 4; do echo line $i $(date +%s%N); sleep 1; done"
		res := mcpCallMeta(t, cs, "run_code", map[string]any{"language": "bash", "code": code, "timeout_seconds": 60}, mcp.Meta{"progressToken": token})
		r := mcpOut[api.ExecResult](t, res)
		msgs, at := p.forToken(token)
		if len(msgs) != 4 {
			t.Fatalf("progress messages %q, want 4 lines (stdout %q)", msgs, r.Stdout)
		}
		for i, m := range msgs {
			if !strings.HasPrefix(m, "line "+strconv.Itoa(i+1)+" ") {
				t.Errorf("message %d = %q", i, m)
			}
		}
		f := strings.Fields(msgs[3])
		ns, err := strconv.ParseInt(f[len(f)-1], 10, 64)
		if err != nil {
			t.Fatalf("last line %q: %v", msgs[3], err)
		}
		if lastPrinted := time.Unix(0, ns); !at[0].Before(lastPrinted) {
			t.Errorf("the first line arrived at %v, after the last was printed at %v: output was not live", at[0], lastPrinted)
		}
	})
}
