package e2b

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/vmexec/vmexec/internal/sandbox"
)

// fakeInterp is an interpreter for the routes' tests: contexts in a map; a cell
// "print X" writes X to stdout, "warn X" to stderr, "value X" is a result with text
// X, "raise N V" an error, and each cell counts.
type fakeInterp struct {
	mu    sync.Mutex
	ctxs  map[string]ctxInfo
	count int
	last  cell
}

func (f *fakeInterp) CreateContext(ctx context.Context, sandboxID, agentID, language, cwd string) (ctxInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := ctxInfo{ID: fmt.Sprintf("ctx-%d", len(f.ctxs)+1), Language: language, Cwd: cwd}
	f.ctxs[c.ID] = c
	return c, nil
}

func (f *fakeInterp) ListContexts(ctx context.Context, sandboxID, agentID string) ([]ctxInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []ctxInfo
	for _, c := range f.ctxs {
		out = append(out, c)
	}
	return out, nil
}

func (f *fakeInterp) DeleteContext(ctx context.Context, sandboxID, agentID, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.ctxs[id]; !ok {
		return fmt.Errorf("context %s: %w", id, sandbox.ErrNotFound)
	}
	delete(f.ctxs, id)
	return nil
}

func (f *fakeInterp) RestartContext(ctx context.Context, sandboxID, agentID, id string) (ctxInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.ctxs[id]
	if !ok {
		return c, fmt.Errorf("context %s: %w", id, sandbox.ErrNotFound)
	}
	return c, nil
}

func (f *fakeInterp) RunCell(ctx context.Context, sandboxID, agentID string, c cell, emit func(cellEvent)) (cellResult, error) {
	f.mu.Lock()
	_, known := f.ctxs[c.ContextID]
	f.last = c
	f.count++
	n := f.count
	f.mu.Unlock()
	if c.ContextID != "" && !known {
		return cellResult{}, fmt.Errorf("context %s: %w", c.ContextID, sandbox.ErrNotFound)
	}
	res := cellResult{ExecutionCount: n, Verdict: "ok"}
	for _, line := range strings.Split(c.Code, "\n") {
		op, arg, _ := strings.Cut(line, " ")
		switch op {
		case "print":
			emit(cellEvent{Kind: "stdout", Text: arg + "\n"})
		case "warn":
			emit(cellEvent{Kind: "stderr", Text: arg + "\n"})
		case "value":
			b, _ := json.Marshal(map[string]any{"text": arg, "is_main_result": true})
			emit(cellEvent{Kind: "result", Result: b})
		case "raise":
			name, value, _ := strings.Cut(arg, " ")
			res.Error, res.Verdict = &cellError{Name: name, Value: value, Traceback: "Traceback:\n" + name + ": " + value}, "error"
			emit(cellEvent{Kind: "error", Error: res.Error})
			return res, nil
		}
	}
	return res, nil
}

// ndjsonLines parses an /execute body, one JSON object a line, no blank line.
func ndjsonLines(t *testing.T, body []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func types(lines []map[string]any) string {
	var ts []string
	for _, l := range lines {
		ts = append(ts, l["type"].(string))
	}
	return strings.Join(ts, ",")
}

// TestExecuteStream: /execute streams NDJSON in the SDK's shapes: output and results
// as they come, an error with name, value and traceback (once), then
// number_of_executions and end_of_execution; the cell gets the sandbox's envVars
// under its own, and no rollback (E2B semantics) for an agent without the policy.
func TestExecuteStream(t *testing.T) {
	e := newEnv(t, "")
	f := &fakeInterp{ctxs: map[string]ctxInfo{}}
	e.h.interp = f
	sb := e.create(t, `{"envVars":{"A":"sandbox","B":"sandbox"}}`)
	hdr := envdHeaders(sb, interpreterPort)
	hdr["Content-Type"] = "application/json"

	res, body := e.do(t, "POST", "/e2b/envd/execute", hdr, strings.NewReader(`{"code":"print hi\nwarn careful\nvalue 42","env_vars":{"B":"cell"}}`))
	lines := ndjsonLines(t, body)
	if res.StatusCode != 200 || types(lines) != "stdout,stderr,result,number_of_executions,end_of_execution" {
		t.Fatalf("%d %s", res.StatusCode, body)
	}
	if lines[0]["text"] != "hi\n" || lines[2]["text"] != "42" || lines[2]["is_main_result"] != true || lines[3]["execution_count"] != 1.0 {
		t.Fatalf("lines %v", lines)
	}
	if f.last.Env["A"] != "sandbox" || f.last.Env["B"] != "cell" || f.last.Language != "python" || f.last.Rollback == nil || *f.last.Rollback {
		t.Fatalf("cell %+v", f.last)
	}

	res, body = e.do(t, "POST", "/e2b/envd/execute", hdr, strings.NewReader(`{"code":"print a\nraise ValueError bad","language":"js"}`))
	lines = ndjsonLines(t, body)
	if types(lines) != "stdout,error,number_of_executions,end_of_execution" || lines[1]["name"] != "ValueError" || lines[1]["value"] != "bad" || !strings.Contains(lines[1]["traceback"].(string), "ValueError") {
		t.Fatalf("%d %s", res.StatusCode, body)
	}
	if f.last.Language != "javascript" {
		t.Fatalf("js cell ran as %q", f.last.Language)
	}

	for _, tc := range []struct {
		body   string
		status int
	}{
		{`{"code":"1","context_id":"ctx-1","language":"python"}`, 400},
		{`{"code":"1","context_id":"ctx-404"}`, 404},
		{`{"code":"1","language":"cobol"}`, 501},
		{`{"code":`, 400},
	} {
		if res, body := e.do(t, "POST", "/e2b/envd/execute", hdr, strings.NewReader(tc.body)); res.StatusCode != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.body, res.StatusCode, body, tc.status)
		}
	}
	// On envd's port the interpreter's routes do not exist.
	if res, _ := e.do(t, "POST", "/e2b/envd/execute", envdHeaders(sb, envdPort), strings.NewReader(`{}`)); res.StatusCode != 404 {
		t.Errorf("/execute on port 49983: %d", res.StatusCode)
	}
}

// TestContextsRoutes: create answers {id, language, cwd}; list, restart and delete
// work with the traffic token alone (all the SDK sends there); a deleted context is
// 404 after.
func TestContextsRoutes(t *testing.T) {
	e := newEnv(t, "")
	e.h.interp = &fakeInterp{ctxs: map[string]ctxInfo{}}
	sb := e.create(t, `{}`)
	hdr := map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "E2b-Sandbox-Port": interpreterPort, "E2B-Traffic-Access-Token": sb.TrafficAccessToken, "Content-Type": "application/json"}
	res, body := e.do(t, "POST", "/e2b/envd/contexts", hdr, strings.NewReader(`{"language":"typescript","cwd":"/tmp"}`))
	var c ctxInfo
	json.Unmarshal(body, &c)
	if res.StatusCode != 200 || c.ID == "" || c.Language != "javascript" || c.Cwd != "/tmp" {
		t.Fatalf("create: %d %s", res.StatusCode, body)
	}
	res, body = e.do(t, "GET", "/e2b/envd/contexts", hdr, nil)
	if res.StatusCode != 200 || !strings.Contains(string(body), `"id":"`+c.ID+`"`) {
		t.Fatalf("list: %d %s", res.StatusCode, body)
	}
	if res, body := e.do(t, "POST", "/e2b/envd/contexts/"+c.ID+"/restart", hdr, nil); res.StatusCode/100 != 2 {
		t.Fatalf("restart: %d %s", res.StatusCode, body)
	}
	if res, body := e.do(t, "DELETE", "/e2b/envd/contexts/"+c.ID, hdr, nil); res.StatusCode/100 != 2 {
		t.Fatalf("delete: %d %s", res.StatusCode, body)
	}
	if res, body := e.do(t, "DELETE", "/e2b/envd/contexts/"+c.ID, hdr, nil); res.StatusCode != 404 {
		t.Fatalf("delete again: %d %s", res.StatusCode, body)
	}
	delete(hdr, "E2B-Traffic-Access-Token")
	if res, _ := e.do(t, "GET", "/e2b/envd/contexts", hdr, nil); res.StatusCode != 401 {
		t.Fatalf("no token: %d", res.StatusCode)
	}
}
