package e2e

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
)

// Interpreter contexts through the HTTP API of a real daemon, on real gVisor
// sandboxes: state across cells, rich results, errors, the rollback of a failing cell,
// interrupts, restarts of the interpreter and of the daemon, forks, bad input.

type ctxInfo struct {
	ID             string `json:"id"`
	Language       string `json:"language"`
	Cwd            string `json:"cwd"`
	ExecutionCount int    `json:"execution_count"`
}

type cellOut struct {
	Text         string `json:"text"`
	HTML         string `json:"html"`
	PNG          string `json:"png"`
	IsMainResult bool   `json:"is_main_result"`
}

type cellRes struct {
	RunID     string    `json:"run_id"`
	ContextID string    `json:"context_id"`
	Stdout    string    `json:"stdout"`
	Stderr    string    `json:"stderr"`
	Results   []cellOut `json:"results"`
	Error     *struct {
		Name, Value, Traceback string
	} `json:"error"`
	ExecutionCount int    `json:"execution_count"`
	Verdict        string `json:"verdict"`
	RolledBack     bool   `json:"rolled_back"`
	Restarted      bool   `json:"restarted"`
}

func (r cellRes) main() string {
	for _, o := range r.Results {
		if o.IsMainResult {
			return o.Text
		}
	}
	return ""
}

// call sends a JSON request and decodes the answer into out (when not nil); it
// returns the status and, for an error answer, its body.
func (d *daemon) call(t *testing.T, method, path, body string, out any) (int, api.Error) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(bg(t), method, d.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e api.Error
	if resp.StatusCode >= 300 {
		json.Unmarshal(b, &e)
		return resp.StatusCode, e
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode, e
}

func (d *daemon) newSandbox(t *testing.T, agent string) string {
	t.Helper()
	var sb api.Sandbox
	if st, e := d.call(t, "POST", "/v1/sandboxes", `{"agent_id":"`+agent+`"}`, &sb); st != http.StatusCreated {
		t.Fatalf("create sandbox: %d %s", st, e.Error)
	}
	return sb.ID
}

func (d *daemon) newContext(t *testing.T, sb, lang string) ctxInfo {
	t.Helper()
	var c ctxInfo
	if st, e := d.call(t, "POST", "/v1/sandboxes/"+sb+"/contexts", `{"language":"`+lang+`"}`, &c); st != http.StatusCreated {
		t.Fatalf("create context: %d %s", st, e.Error)
	}
	return c
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func (d *daemon) cell(t *testing.T, sb, ctx, code string, extra string) cellRes {
	t.Helper()
	var r cellRes
	body := `{"code":` + jsonString(code) + extra + `}`
	if st, e := d.call(t, "POST", "/v1/sandboxes/"+sb+"/contexts/"+ctx+"/run", body, &r); st != http.StatusOK {
		t.Fatalf("run %q: %d %s", code, st, e.Error)
	}
	return r
}

func (r cellRes) String() string {
	b, _ := json.Marshal(r)
	if len(b) > 600 {
		b = append(b[:600], "…"...)
	}
	return string(b)
}

// A python context: state across cells, the final expression's value, an exception's
// name, value and traceback, and the rollback of a failing cell, which leaves the
// interpreter exactly as it was.
func TestPythonContextCells(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	sb := d.newSandbox(t, "ctx-py")
	c := d.newContext(t, sb, "python")
	if c.Language != "python" || !strings.HasPrefix(c.ID, "ctx_") || c.Cwd != "/home/user" {
		t.Fatalf("context: %+v", c)
	}
	if r := d.cell(t, sb, c.ID, "x = 1\nprint('set')", ""); r.Verdict != "ok" || r.Stdout != "set\n" || len(r.Results) != 0 || r.ExecutionCount != 1 {
		t.Fatalf("x = 1: %s", r)
	}
	if r := d.cell(t, sb, c.ID, "x + 41", ""); r.main() != "42" || r.ExecutionCount != 2 {
		t.Fatalf("x + 41: %s", r)
	}
	r := d.cell(t, sb, c.ID, "x = 2\nraise ValueError('no good')", "")
	if r.Verdict != "error" || r.Error == nil || r.Error.Name != "ValueError" || r.Error.Value != "no good" ||
		!strings.Contains(r.Error.Traceback, "raise ValueError('no good')") || !r.RolledBack {
		t.Fatalf("failing cell: %s", r)
	}
	if r := d.cell(t, sb, c.ID, "x", ""); r.main() != "1" {
		t.Fatalf("after the rollback x is %q, want 1: %s", r.main(), r)
	}
	// rollback: false keeps the failed state.
	d.cell(t, sb, c.ID, "x = 3\nraise KeyError('k')", `,"rollback":false`)
	if r := d.cell(t, sb, c.ID, "x", ""); r.main() != "3" {
		t.Fatalf("without rollback x is %q, want 3: %s", r.main(), r)
	}
	// Rich results: html from _repr_html_, and the cell is recorded as a run.
	r = d.cell(t, sb, c.ID, "class T:\n    def _repr_html_(self): return '<table></table>'\n    def __repr__(self): return 'T()'\nT()", "")
	if len(r.Results) != 1 || r.Results[0].HTML != "<table></table>" || r.Results[0].Text != "T()" {
		t.Fatalf("html result: %s", r)
	}
	run, err := d.client.GetRun(bg(t), r.RunID)
	if err != nil || run.Language != "python" || !strings.Contains(run.Code, "_repr_html_") || run.Verdict != "ok" {
		t.Fatalf("history run %s: %+v %v", r.RunID, run, err)
	}
	// Restart clears the state; delete kills it.
	var rc ctxInfo
	if st, e := d.call(t, "POST", "/v1/sandboxes/"+sb+"/contexts/"+c.ID+"/restart", "", &rc); st != http.StatusOK || rc.ID != c.ID {
		t.Fatalf("restart: %d %s %+v", st, e.Error, rc)
	}
	if r := d.cell(t, sb, c.ID, "'x' in dir()", ""); r.main() != "False" || r.ExecutionCount != 1 {
		t.Fatalf("after restart: %s", r)
	}
	pids := d.cell(t, sb, c.ID, "import os\nos.getpid()", "").main()
	if st, e := d.call(t, "DELETE", "/v1/sandboxes/"+sb+"/contexts/"+c.ID, "", nil); st != http.StatusNoContent {
		t.Fatalf("delete: %d %s", st, e.Error)
	}
	var list struct{ Contexts []ctxInfo }
	d.call(t, "GET", "/v1/sandboxes/"+sb+"/contexts", "", &list)
	if len(list.Contexts) != 0 {
		t.Fatalf("contexts after delete: %+v", list)
	}
	res := d.execReq(t, api.ExecRequest{AgentID: "ctx-py", SandboxID: sb, Language: "bash",
		Code: "test -d /proc/" + pids + " && echo alive || echo gone"})
	if strings.TrimSpace(res.Stdout) != "gone" {
		t.Fatalf("the deleted context's interpreter (pid %s) is still there: %s", pids, describe(res))
	}
}

// matplotlib figures become png results and a pandas DataFrame html; skipped on a
// template without them.
func TestPythonContextFigure(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	sb := d.newSandbox(t, "ctx-fig")
	c := d.newContext(t, sb, "python")
	if r := d.cell(t, sb, c.ID, "import importlib.util\nimportlib.util.find_spec('matplotlib') is not None", ""); r.main() != "True" {
		t.Skipf("the template has no matplotlib (python3-matplotlib): %s", r)
	}
	r := d.cell(t, sb, c.ID, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nNone", `,"timeout_ms":120000`)
	var png []byte
	for _, o := range r.Results {
		if o.PNG != "" {
			png, _ = base64.StdEncoding.DecodeString(o.PNG)
		}
	}
	if r.Verdict != "ok" || !bytes.HasPrefix(png, []byte("\x89PNG\r\n")) {
		t.Fatalf("figure: %s", r)
	}
	if r := d.cell(t, sb, c.ID, "len(plt.get_fignums())", ""); r.main() != "0" {
		t.Fatalf("the figure was not closed: %s", r)
	}
	// A pandas DataFrame comes back as html too; numpy is there.
	r = d.cell(t, sb, c.ID, "import numpy as np, pandas as pd\npd.DataFrame({'a': np.arange(3)})", "")
	if len(r.Results) != 1 || !strings.Contains(r.Results[0].HTML, "<table") || !strings.Contains(r.Results[0].Text, "a") {
		t.Fatalf("DataFrame: %s", r)
	}
}

// A timeout interrupts the cell and the interpreter keeps its state (with rollback
// off, so what survives is the interpreter's own doing); a cell that ignores SIGINT
// gets its interpreter killed and a fresh one, and the verdict says timeout.
func TestContextTimeoutInterrupts(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	sb := d.newSandbox(t, "ctx-timeout")
	c := d.newContext(t, sb, "python")
	d.cell(t, sb, c.ID, "x = 7", "")
	r := d.cell(t, sb, c.ID, "import time\nx = 8\nwhile True: time.sleep(0.01)", `,"timeout_ms":1000,"rollback":false`)
	if r.Verdict != "timeout" || r.Restarted || r.Error == nil || r.Error.Name != "KeyboardInterrupt" {
		t.Fatalf("interrupted cell: %s", r)
	}
	if r := d.cell(t, sb, c.ID, "x", ""); r.main() != "8" {
		t.Fatalf("after the interrupt: %s", r)
	}
	r = d.cell(t, sb, c.ID, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.01)", `,"timeout_ms":1000,"rollback":false`)
	if r.Verdict != "timeout" || !r.Restarted || !strings.Contains(r.Stderr, "killed") {
		t.Fatalf("stubborn cell: %s", r)
	}
	if r := d.cell(t, sb, c.ID, "'x' in dir()", ""); r.main() != "False" || r.Verdict != "ok" {
		t.Fatalf("after the kill: %s", r)
	}
	// With auto-rollback (the default policy), the same stubborn cell is undone: the
	// old interpreter comes back with its state.
	d.cell(t, sb, c.ID, "y = 5", "")
	r = d.cell(t, sb, c.ID, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.01)", `,"timeout_ms":1000`)
	if r.Verdict != "timeout" || !r.RolledBack {
		t.Fatalf("stubborn cell with rollback: %s", r)
	}
	if r := d.cell(t, sb, c.ID, "y", ""); r.main() != "5" {
		t.Fatalf("after the rollback: %s", r)
	}
}

// A javascript context: top-level await, the last expression's value, state across
// cells, an error's name.
func TestJavaScriptContextCells(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	sb := d.newSandbox(t, "ctx-js")
	c := d.newContext(t, sb, "js")
	if c.Language != "javascript" {
		t.Fatalf("context: %+v", c)
	}
	r := d.cell(t, sb, c.ID, "const v = await new Promise(r => setTimeout(() => r(20), 10));\nconsole.log('v is', v)\nv + 1", "")
	if r.Verdict != "ok" || r.Stdout != "v is 20\n" || r.main() != "21" {
		t.Fatalf("await cell: %s", r)
	}
	if r := d.cell(t, sb, c.ID, "v * 2", ""); r.main() != "40" {
		t.Fatalf("state: %s", r)
	}
	r = d.cell(t, sb, c.ID, "null.x", `,"rollback":false`)
	if r.Verdict != "error" || r.Error == nil || r.Error.Name != "TypeError" {
		t.Fatalf("error: %s", r)
	}
	if r := d.cell(t, sb, c.ID, "while (true) {}", `,"timeout_ms":1000,"rollback":false`); r.Verdict != "timeout" || r.Restarted {
		t.Fatalf("interrupted loop: %s", r)
	}
	if r := d.cell(t, sb, c.ID, "v", ""); r.main() != "20" {
		t.Fatalf("after the interrupt: %s", r)
	}
}

// A context survives a restart of the daemon: its sandbox is suspended with it and
// resumed with it, state included. A fork of the sandbox gets a copy, and a rollback
// restores it.
func TestContextSurvivesRestartAndFork(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	a := "ctx-restart"
	sb := d.newSandbox(t, a)
	c := d.newContext(t, sb, "python")
	d.cell(t, sb, c.ID, "data = [1, 2, 3]", "")
	d.stop()
	d.start()
	var list struct{ Contexts []ctxInfo }
	if st, e := d.call(t, "GET", "/v1/sandboxes/"+sb+"/contexts", "", &list); st != 200 || len(list.Contexts) != 1 || list.Contexts[0].ID != c.ID {
		t.Fatalf("contexts after restart: %d %s %+v", st, e.Error, list)
	}
	if r := d.cell(t, sb, c.ID, "sum(data)", ""); r.main() != "6" {
		t.Fatalf("state after restart: %s", r)
	}
	sn, err := d.client.CreateSnapshot(bg(t), sb, api.CreateSnapshotRequest{AgentID: a})
	if err != nil {
		t.Fatal(err)
	}
	fork, err := d.client.Fork(bg(t), sn.ID, api.ForkRequest{AgentID: a})
	if err != nil {
		t.Fatal(err)
	}
	d.cell(t, fork.ID, c.ID, "data.append(4)", "")
	if r := d.cell(t, fork.ID, c.ID, "sum(data)", ""); r.main() != "10" {
		t.Fatalf("fork's state: %s", r)
	}
	if r := d.cell(t, sb, c.ID, "sum(data)", ""); r.main() != "6" {
		t.Fatalf("the original after the fork changed: %s", r)
	}
	// An explicit rollback to the snapshot brings the interpreter back as it was, and a
	// context deleted since comes back with it.
	d.cell(t, sb, c.ID, "data = []", "")
	if st, e := d.call(t, "DELETE", "/v1/sandboxes/"+sb+"/contexts/"+c.ID, "", nil); st != http.StatusNoContent {
		t.Fatalf("delete: %d %s", st, e.Error)
	}
	if _, err := d.client.Rollback(bg(t), sb, api.RollbackRequest{AgentID: a, SnapshotID: sn.ID}); err != nil {
		t.Fatal(err)
	}
	if r := d.cell(t, sb, c.ID, "sum(data)", ""); r.main() != "6" {
		t.Fatalf("after the rollback: %s", r)
	}
}

// Bad input gets clear errors: an unknown language, an unknown context or sandbox,
// fields of the wrong JSON type.
func TestContextBadInput(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	sb := d.newSandbox(t, "ctx-bad")
	c := d.newContext(t, sb, "python")
	cases := []struct {
		method, path, body string
		status             int
		code, says         string
	}{
		{"POST", "/v1/sandboxes/" + sb + "/contexts", `{"language":"cobol"}`, 400, api.CodeBadRequest, `not "cobol"`},
		{"POST", "/v1/sandboxes/" + sb + "/contexts", `{"language":"bash"}`, 400, api.CodeBadRequest, "python or javascript"},
		{"POST", "/v1/sandboxes/" + sb + "/contexts", `{}`, 400, api.CodeBadRequest, "language is required"},
		{"POST", "/v1/sandboxes/" + sb + "/contexts", `{"language":"python","cwd":"/nope"}`, 400, api.CodeBadRequest, "/nope"},
		{"POST", "/v1/sandboxes/" + sb + "/contexts", `{"language":5}`, 400, api.CodeInvalidJSON, `field "language": expected a string`},
		{"POST", "/v1/sandboxes/sb-000000000000/contexts", `{"language":"python"}`, 404, api.CodeNotFound, "sb-000000000000"},
		{"POST", "/v1/sandboxes/" + sb + "/contexts/ctx_nope/run", `{"code":"1"}`, 404, api.CodeNotFound, "ctx_nope"},
		{"DELETE", "/v1/sandboxes/" + sb + "/contexts/ctx_nope", "", 404, api.CodeNotFound, "ctx_nope"},
		{"POST", "/v1/sandboxes/" + sb + "/contexts/ctx_nope/restart", "", 404, api.CodeNotFound, "ctx_nope"},
		{"POST", "/v1/sandboxes/" + sb + "/contexts/" + c.ID + "/run", `{"code":1}`, 400, api.CodeInvalidJSON, `field "code": expected a string`},
		{"POST", "/v1/sandboxes/" + sb + "/contexts/" + c.ID + "/run", `{"code":"1","timeout_ms":"x"}`, 400, api.CodeInvalidJSON, `field "timeout_ms": expected an integer`},
		{"POST", "/v1/sandboxes/" + sb + "/contexts/" + c.ID + "/run", `{"code":"1","env":{"A":1}}`, 400, api.CodeInvalidJSON, `field "env": expected an object whose values are strings`},
		{"POST", "/v1/sandboxes/" + sb + "/contexts/" + c.ID + "/run", `{"code":"  "}`, 400, api.CodeBadRequest, "code is empty"},
		{"POST", "/v1/sandboxes/" + sb + "/contexts/" + c.ID + "/run", `{"code":"1","env":{"A=B":"1"}}`, 400, api.CodeBadRequest, "environment variable"},
	}
	for _, tc := range cases {
		st, e := d.call(t, tc.method, tc.path, tc.body, nil)
		if st != tc.status || e.Code != tc.code || !strings.Contains(e.Error, tc.says) {
			t.Errorf("%s %s %s: %d %s %q; want %d %s saying %q", tc.method, tc.path, tc.body, st, e.Code, e.Error, tc.status, tc.code, tc.says)
		}
	}
	// The context is unharmed.
	if r := d.cell(t, sb, c.ID, "1 + 1", ""); r.main() != "2" {
		t.Fatalf("after the bad requests: %s", r)
	}
}

// A cell streams as Server-Sent Events: output as it is written, display events,
// then the result.
func TestContextCellStream(t *testing.T) {
	d := startDaemon(t, daemonOpts{extra: []string{"--pool-size", "0"}})
	sb := d.newSandbox(t, "ctx-sse")
	c := d.newContext(t, sb, "python")
	req, _ := http.NewRequestWithContext(bg(t), "POST", d.url+"/v1/sandboxes/"+sb+"/contexts/"+c.ID+"/run",
		strings.NewReader(`{"code":"print('one', flush=True)\ndisplay(7)\n'done'"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var events []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			events = append(events, event+" "+strings.TrimPrefix(line, "data: "))
		}
	}
	got := strings.Join(events, "\n")
	for _, want := range []string{`stdout {"data":"one\n"}`, `display {"text":"7","is_main_result":false}`, `display {"text":"'done'","is_main_result":true}`, `result {"run_id":`} {
		if !strings.Contains(got, want) {
			t.Errorf("stream lacks %s:\n%s", want, got)
		}
	}
	if !strings.HasPrefix(events[len(events)-1], "result ") {
		t.Errorf("the last event is not the result:\n%s", got)
	}
}
