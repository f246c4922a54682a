package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
)

// rawCall sends one request exactly as given (body bytes, headers) and decodes the
// JSON answer with numbers kept as written.
func rawCall(t *testing.T, method, url, body string, header map[string]string) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil && resp.StatusCode != http.StatusNoContent {
		t.Fatalf("%s %s: %d, answer is not JSON: %q", method, url, resp.StatusCode, b)
	}
	return resp.StatusCode, m
}

var jsonHeader = map[string]string{"Content-Type": "application/json"}

func parseJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	return m
}

// TestSeedClientWire replays, byte for byte, the requests the seed system's
// JavaScript VmExecutionClient sends for each of its methods (../shared/wire-compat.md)
// against the real daemon: executeCode (metadata an object with a null and a number,
// vm_id, working_dir null, requirements []), createSnapshot, rollbackToSnapshot (no
// body), getExecutionHistory (reading .history[].snapshot_id) and parseAndExecute (its
// blocks through /api/llm/execute, and the server's own parse-execute route). Every one
// must succeed, and the metadata must come back from the history as it was sent.
func TestSeedClientWire(t *testing.T) {
	d := shared(t)
	agent := "workflow-agent-wire"

	// executeCode, first call: no VM known yet.
	first := `{"agent_id":"` + agent + `","language":"python","code":"print(6*7)","vm_id":null,` +
		`"requirements":[],"timeout_seconds":30,"working_dir":null,` +
		`"metadata":{"execution_id":"exec-1796160161448-4c710fkkq","snapshot_id":null,` +
		`"workflow_timestamp":1796160161448}}`
	st, r := rawCall(t, "POST", d.url+"/api/llm/execute", first, jsonHeader)
	if st != 200 || r["stdout"] != "42\n" || r["exit_code"] != json.Number("0") {
		t.Fatalf("executeCode: %d %v", st, r)
	}
	vm, _ := r["vm_id"].(string)
	if vm == "" {
		t.Fatalf("executeCode: no vm_id: %v", r)
	}
	firstID := r["execution_id"].(string)

	// createSnapshot before the next execution.
	st, sn := rawCall(t, "POST", d.url+"/api/vms/"+vm+"/snapshots",
		`{"name":"pre-execution-exec-1796160161449-abcdefghi","description":"Workflow snapshot: pre-execution-exec-1796160161449-abcdefghi"}`, jsonHeader)
	snap, _ := sn["snapshot_id"].(string)
	if st/100 != 2 || snap == "" {
		t.Fatalf("createSnapshot: %d %v", st, sn)
	}

	// executeCode again, now with the vm_id and the caller's own metadata keys of
	// every JSON type.
	second := `{"agent_id":"` + agent + `","language":"python",` +
		`"code":"open('/home/user/after-snapshot.txt','w').write('x')\nprint('wrote')","vm_id":"` + vm + `",` +
		`"requirements":[],"timeout_seconds":30,"working_dir":null,` +
		`"metadata":{"execution_id":"exec-1796160161449-abcdefghi","snapshot_id":"` + snap + `",` +
		`"workflow_timestamp":1796160161449,"attempt":1,"ratio":0.5,"retry":false,"tags":["a",2,null],` +
		`"caller":{"workflow":"demo","step":{"n":3,"ids":[12345678901234567890]}}}}`
	st, r = rawCall(t, "POST", d.url+"/api/llm/execute", second, jsonHeader)
	if st != 200 || r["stdout"] != "wrote\n" || r["vm_id"] != vm {
		t.Fatalf("executeCode with vm_id: %d %v", st, r)
	}
	secondID := r["execution_id"].(string)

	// rollbackToSnapshot: a POST with no body, as the client sends it (with and
	// without its JSON Content-Type header).
	for _, h := range []map[string]string{nil, jsonHeader} {
		st, rb := rawCall(t, "POST", d.url+"/api/vms/"+vm+"/rollback/"+snap, "", h)
		if st != 200 || rb["snapshot_id"] != snap || rb["vm_id"] != vm || rb["message"] == nil {
			t.Fatalf("rollbackToSnapshot (headers %v): %d %v", h, st, rb)
		}
	}
	st, r = rawCall(t, "POST", d.url+"/api/llm/execute", `{"agent_id":"`+agent+`","language":"bash",`+
		`"code":"test -e /home/user/after-snapshot.txt && echo present || echo gone","vm_id":"`+vm+`","requirements":[],`+
		`"timeout_seconds":30,"working_dir":null,"metadata":{"execution_id":"exec-3","snapshot_id":null,"workflow_timestamp":3}}`, jsonHeader)
	if st != 200 || r["stdout"] != "gone\n" {
		t.Fatalf("after the rollback the file written after the snapshot must be gone: %d %v", st, r)
	}

	// getExecutionHistory: the client reads .history and each entry's snapshot_id.
	st, h := rawCall(t, "GET", d.url+"/api/vms/"+vm+"/history", "", nil)
	hist, _ := h["history"].([]any)
	if st != 200 || len(hist) < 3 {
		t.Fatalf("getExecutionHistory: %d %v", st, h)
	}
	withSnap := 0
	for _, e := range hist {
		entry := e.(map[string]any)
		sid, present := entry["snapshot_id"]
		if !present {
			t.Errorf("history entry without the snapshot_id key: %v", entry)
		}
		if s, ok := sid.(string); ok && strings.HasPrefix(s, "snap-") {
			withSnap++
		}
		for _, k := range []string{"id", "command", "timestamp", "success", "exit_code", "stdout", "stderr"} {
			if _, ok := entry[k]; !ok {
				t.Errorf("history entry lacks %s: %v", k, entry)
			}
		}
	}
	if withSnap == 0 {
		t.Errorf("no history entry has a snapshot_id: %v", hist)
	}

	// The metadata is stored with each run and returned as sent, numbers exactly.
	for id, body := range map[string]string{firstID: first, secondID: second} {
		run, err := d.client.GetRun(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		st, raw := rawCall(t, "GET", d.url+"/v1/runs/"+id, "", nil)
		want := parseJSON(t, body)["metadata"]
		if diff := cmp.Diff(want, raw["metadata"]); st != 200 || diff != "" {
			t.Errorf("run %s metadata (-sent +stored):\n%s", id, diff)
		}
		if len(run.Metadata) == 0 {
			t.Errorf("run %s: the Go client sees no metadata", id)
		}
	}
	st, list := rawCall(t, "GET", d.url+"/v1/history?sandbox_id="+vm, "", nil)
	found := false
	for _, e := range list["runs"].([]any) {
		run := e.(map[string]any)
		if run["id"] == secondID {
			found = true
			if diff := cmp.Diff(parseJSON(t, second)["metadata"], run["metadata"]); diff != "" {
				t.Errorf("history metadata (-sent +stored):\n%s", diff)
			}
		}
	}
	if st != 200 || !found {
		t.Errorf("/v1/history lacks run %s: %d", secondID, st)
	}

	// parseAndExecute: the client extracts the blocks itself and runs each through
	// /api/llm/execute; the server's route takes the seed's body with nulls too.
	for i, code := range []string{"print(2+2)", "print(sum(range(10)))"} {
		c, _ := json.Marshal(code)
		body := fmt.Sprintf(`{"agent_id":%q,"language":"python","code":%s,"vm_id":%q,"requirements":[],`+
			`"timeout_seconds":30,"working_dir":null,"metadata":{"execution_id":"exec-block-%d","snapshot_id":null,`+
			`"workflow_timestamp":1796160161450,"block_index":%d}}`, agent, c, vm, i, i)
		if st, r := rawCall(t, "POST", d.url+"/api/llm/execute", body, jsonHeader); st != 200 || r["exit_code"] != json.Number("0") {
			t.Fatalf("parseAndExecute block %d: %d %v", i, st, r)
		}
	}
	st, pe := rawCall(t, "POST", d.url+"/api/llm/parse-execute", `{"agent_id":"`+agent+`",`+
		`"llm_response":"Here:\n\n`+"```python\\nprint(7*6)\\n```"+`\n","auto_execute":true,"auto_execute_threshold":null,"vm_config":null}`, jsonHeader)
	res, _ := pe["execution_results"].([]any)
	if st != 200 || len(res) != 1 || res[0].(map[string]any)["stdout"] != "42\n" {
		t.Fatalf("parse-execute: %d %v", st, pe)
	}
}

// TestWebPageAttackRefusedE2E replays issue 8 #11's attack on the real daemon: a web
// page's CORS simple request (text/plain, a foreign Origin, a rebound Host) is
// refused, and nothing ran: the agent has no history.
func TestWebPageAttackRefusedE2E(t *testing.T) {
	d := shared(t)
	body := `{"agent_id":"attack-victim","language":"bash","code":"echo pwned"}`
	for _, h := range []map[string]string{
		{"Content-Type": "text/plain", "Origin": "http://evil.example", "Host": "evil.example"},
		{"Content-Type": "text/plain"},
		{"Content-Type": "application/json", "Origin": "http://evil.example"},
		{"Content-Type": "application/json", "Host": "evil.example"},
	} {
		st, e := rawCall(t, "POST", d.url+"/v1/exec", body, h)
		if st != 403 && st != 415 {
			t.Errorf("headers %v: %d %v, want 403 or 415", h, st, e)
		}
	}
	runs, err := d.client.History(t.Context(), client.HistoryQuery{AgentID: "attack-victim"})
	if err != nil {
		t.Fatal(err)
	}
	if len(runs.Runs) != 0 {
		t.Fatalf("a refused request ran: %+v", runs.Runs)
	}
	// The daemon's own clients still get through.
	wantOK(t, d.exec(t, "attack-victim-ok", "bash", "echo fine"), "fine")
}

// TestBadRequestsNotRuns guards issue 8 #15 (host side) on the real daemon: requests
// that cannot be run as asked are 400s, not runs reported as killed, and nothing is
// recorded for them.
func TestBadRequestsNotRuns(t *testing.T) {
	d := shared(t)
	const agent = "bad-requests"
	exec := func(extra string) string {
		return `{"agent_id":"` + agent + `","language":"bash","code":"echo ran",` + extra + `}`
	}
	for _, c := range []struct{ path, body, want string }{
		{"/v1/exec", exec(`"env":{"A=B":"1"}`), "'='"},
		{"/v1/exec", exec(`"env":{"":"1"}`), "empty"},
		{"/v1/exec", exec(`"env":{"PATH":""}`), "PATH is empty"},
		{"/v1/exec", exec(`"limits":{"timeout_ms":-1}`), "negative"},
		{"/api/llm/execute", exec(`"timeout_seconds":-5`), "negative"},
		{"/api/llm/execute", exec(`"timeout_seconds":5,"timeout_ms":5000`), "not both"},
		{"/api/llm/execute", exec(`"timeout_seconds":"30"`), `field "timeout_seconds": expected a number`},
		{"/v1/exec", exec(`"limits":{"timeout_ms":"5s"}`), `field "limits.timeout_ms": expected an integer`},
	} {
		st, e := rawCall(t, "POST", d.url+c.path, c.body, jsonHeader)
		msg, _ := e["error"].(string)
		if st != 400 || !strings.Contains(msg, c.want) {
			t.Errorf("%s %s: %d %v, want 400 saying %q", c.path, c.body, st, e, c.want)
		}
	}
	runs, err := d.client.History(t.Context(), client.HistoryQuery{AgentID: agent})
	if err != nil {
		t.Fatal(err)
	}
	if len(runs.Runs) != 0 {
		t.Fatalf("refused requests were run: %+v", runs.Runs)
	}
}

// nullBody returns a JSON object with every field of struct type t null except those
// in set (written as given), with nested structs' fields null inside them.
func nullBody(t reflect.Type, set map[string]string) string {
	var parts []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		v, ok := set[name]
		if !ok {
			v = "null"
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				v = nullBody(ft, nil)
			}
		}
		parts = append(parts, fmt.Sprintf("%q:%s", name, v))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// TestNullFieldsAreAbsent guards "null means absent" on the real daemon: a run
// request with every optional field null (nested ones too) runs as if they were
// left out.
func TestNullFieldsAreAbsent(t *testing.T) {
	d := shared(t)
	required := map[string]string{"agent_id": `"null-fields"`, "language": `"python"`, "code": `"print('nulls ok')"`}
	for path, typ := range map[string]reflect.Type{
		"/v1/exec":         reflect.TypeOf(api.ExecRequest{}),
		"/api/llm/execute": reflect.TypeOf(api.CompatExecRequest{}),
	} {
		body := nullBody(typ, required)
		st, r := rawCall(t, "POST", d.url+path, body, jsonHeader)
		if st != 200 || r["stdout"] != "nulls ok\n" || r["verdict"] != "ok" {
			t.Errorf("%s %s: %d %v", path, body, st, r)
		}
	}
}
