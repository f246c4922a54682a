package mcpserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

func TestProgressLines(t *testing.T) {
	long := strings.Repeat("é", maxLineRune) // 2 bytes each: cut in pieces, never inside one
	tests := []struct {
		name   string
		stdout []string
		stderr []string
		want   []string
	}{
		{"lines across chunks", []string{"a\nb", "c\n", "x"}, nil, []string{"a", "bc", "x"}},
		{"stderr marked", nil, []string{"oops\r\n"}, []string{"stderr: oops"}},
		{"empty lines kept", []string{"\n\n"}, nil, []string{"", ""}},
		{"long line in pieces", []string{long + "\n"}, nil, []string{long[:maxLineRune], long[maxLineRune:]}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			p := &progress{emit: func(_ int, m string) { got = append(got, m) }}
			out := p.output()
			for _, s := range tc.stdout {
				out.Stdout(s)
			}
			for _, s := range tc.stderr {
				out.Stderr(s)
			}
			p.flush()
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("messages (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("bounded", func(t *testing.T) {
		var got []string
		p := &progress{emit: func(_ int, m string) { got = append(got, m) }}
		p.output().Stdout(strings.Repeat("x\n", 3*maxNotes))
		if len(got) != maxNotes+1 || !strings.Contains(got[maxNotes], "more output") {
			t.Errorf("%d messages, last %q; want %d and a note that there is more", len(got), got[len(got)-1], maxNotes+1)
		}
	})
	t.Run("no token is a no-op", func(t *testing.T) {
		var p *progress
		p.output() // nil callbacks
		p.flush()
		p.send("x")
	})
}

func TestSummarizeRun(t *testing.T) {
	tests := []struct {
		name string
		res  api.ExecResult
		want []string
	}{
		{"ok", api.ExecResult{Verdict: "ok", SandboxID: "sb-1", Stdout: "42\n", DurationMS: 5}, []string{"ok: exit 0", "sb-1", "--- stdout ---\n42\n"}},
		{"failed and rolled back", api.ExecResult{Verdict: "nonzero_exit", ExitCode: 2, RolledBack: true, RestoredSnapshotID: "snap-a", FailureSnapshotID: "snap-b", Stderr: "boom"},
			[]string{"failed: nonzero_exit, exit 2", "rolled back to snap-a", "kept as snapshot snap-b", "--- stderr ---\nboom\n"}},
		{"timeout not rolled back", api.ExecResult{Verdict: "timeout", ExitCode: -1, Signal: "SIGKILL"}, []string{"timeout", "SIGKILL", "not rolled back"}},
		{"blocked", api.ExecResult{Verdict: "blocked", BlockedRule: "destructive_rm", BlockedReason: "removes home"}, []string{"blocked by policy rule destructive_rm", "removes home", "Hint:"}},
		{"truncated", api.ExecResult{Verdict: "output_limit", Stdout: strings.Repeat("x", maxTextOutput+10), StdoutTruncated: true}, []string{"shortened here", "truncated at the run's output limit"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := summarizeRun(&tc.res)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("summary lacks %q:\n%s", w, got)
				}
			}
			if len(got) > maxTextOutput*2+1024 {
				t.Errorf("summary is %d bytes", len(got))
			}
		})
	}
}

func TestFailedHints(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{&client.Error{Status: 404, Code: "not_found", Message: "no sandbox sb-x"}, "list_sandboxes"},
		{&client.Error{Status: 403, Code: "forbidden", Message: "another agent's"}, "another agent"},
		{&client.Error{Status: 429, Code: "busy", Message: "queue full"}, "wait a few seconds"},
		{&client.Error{Status: 401, Message: "no key"}, "VMEXEC_API_KEY"},
		{&client.Error{Status: 500, Code: "internal", Message: "x"}, "daemon's log"},
		{fmt.Errorf("dial: %w", errors.New("connection refused")), "is the vmexec daemon running"},
		{context.DeadlineExceeded, "longer request timeout"},
	}
	for _, tc := range tests {
		got := failed("run_code", tc.err).Error()
		if !strings.Contains(got, "\nHint: ") || !strings.Contains(got, tc.want) {
			t.Errorf("failed(%v) = %q, want a hint with %q", tc.err, got, tc.want)
		}
	}
}

// connect returns a session with a server whose client talks to addr.
func connect(t *testing.T, addr string) *mcp.ClientSession {
	t.Helper()
	c := &client.Client{BaseURL: "http://" + addr, MaxRetries: -1}
	srv := New(Options{Client: func(*mcp.CallToolRequest) (*client.Client, error) { return c, nil }})
	st, ct := mcp.NewInMemoryTransports()
	ss, err := srv.Connect(context.Background(), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ss.Close() })
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).Connect(context.Background(), ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func resultText(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// TestToolErrors: bad arguments are refused before any request, and a daemon that is
// down is an infrastructure error; both are isError results with a hint.
func TestToolErrors(t *testing.T) {
	cs := connect(t, closedAddr(t))
	tests := []struct {
		name, tool string
		args       map[string]any
		want       string
	}{
		{"unknown language", "run_code", map[string]any{"language": "cobol", "code": "x"}, "language"},
		{"empty code", "run_code", map[string]any{"language": "bash", "code": "  "}, "code is empty"},
		{"negative timeout", "run_code", map[string]any{"language": "bash", "code": "true", "timeout_seconds": -1}, "negative"},
		{"unknown argument", "run_code", map[string]any{"language": "bash", "code": "true", "lang": "x"}, "lang"},
		{"rollback with both", "rollback", map[string]any{"snapshot_id": "snap-1", "last_success": true}, "exactly one"},
		{"rollback with neither", "rollback", map[string]any{}, "exactly one"},
		{"bad base64", "write_file", map[string]any{"path": "a", "content": "%%", "encoding": "base64"}, "not base64"},
		{"bad mode", "write_file", map[string]any{"path": "a", "content": "x", "mode": "rwx"}, "octal"},
		{"bad encoding", "write_file", map[string]any{"path": "a", "content": "x", "encoding": "utf16"}, "unknown encoding"},
		{"fork without snapshot", "fork", map[string]any{"snapshot_id": ""}, "snapshot_id is empty"},
		{"daemon down", "run_code", map[string]any{"language": "bash", "code": "true"}, "is the vmexec daemon running"},
		{"daemon down, listing", "list_sandboxes", map[string]any{}, "is the vmexec daemon running"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: tc.tool, Arguments: tc.args})
			if err != nil {
				t.Fatalf("protocol error: %v", err)
			}
			if txt := resultText(res); !res.IsError || !strings.Contains(txt, tc.want) {
				t.Errorf("isError=%v %q; want an error containing %q", res.IsError, txt, tc.want)
			}
		})
	}
}

// TestNotADaemon: something that is not vmexec answering is a failure with a hint, not
// a crash or a result.
func TestNotADaemon(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "teapot", http.StatusTeapot)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	cs := connect(t, ln.Addr().String())
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "history", Arguments: map[string]any{}})
	if err != nil {
		t.Fatal(err)
	}
	if txt := resultText(res); !res.IsError || !strings.Contains(txt, "teapot") || !strings.Contains(txt, "Hint:") {
		t.Errorf("isError=%v %q", res.IsError, txt)
	}
}
