package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/testenv"
)

var (
	sharedOnce sync.Once
	sharedD    *daemon
)

// shared returns one daemon for the tests that do not restart it.
func shared(t *testing.T) *daemon {
	t.Helper()
	testenv.Root(t)
	testenv.Runsc(t)
	testenv.Template(t)
	sharedOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vmexec-e2e-")
		if err != nil {
			t.Fatal(err)
		}
		sharedD = startDaemonRaw(t, daemonOpts{dataDir: dir}) // TestMain stops it
	})
	if sharedD == nil {
		t.Fatal("shared daemon failed to start")
	}
	return sharedD
}

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedD != nil {
		sharedD.stop()
		os.RemoveAll(sharedD.dataDir)
	}
	os.Exit(code)
}

// The seed's acceptance cases, each in every language it names.
func TestLanguages(t *testing.T) {
	d := shared(t)
	cases := []struct {
		name, lang, code, want string
	}{
		{"python factorial", "python", "import math\nprint(math.factorial(10))", "3628800"},
		{"python 2+2", "python", "print(2+2)", "4"},
		{"javascript", "javascript", "console.log([1,2,3].map(x => x * 2).join(','))", "2,4,6"},
		{"bash", "bash", "for i in 1 2 3; do printf '%s' $i; done; echo", "123"},
		{"rust primes", "rust", `fn main() {
    let v: Vec<String> = (2..=50u32).filter(|n| (2..*n).all(|d| n % d != 0)).map(|n| n.to_string()).collect();
    println!("{}", v.join(" "));
}`, "2 3 5 7 11 13 17 19 23 29 31 37 41 43 47"},
		{"go", "go", "package main\nimport \"fmt\"\nfunc main() { fmt.Println(\"hello from go\") }", "hello from go"},
		{"alias py", "py", "print('alias')", "alias"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantOK(t, d.exec(t, "lang-"+strings.ReplaceAll(c.name, " ", "-"), c.lang, c.code), c.want)
		})
	}
}

// A compile error is the program's failure: a non-zero exit with the compiler's
// message, not an API error.
func TestCompileError(t *testing.T) {
	d := shared(t)
	res := d.exec(t, "compile-err", "rust", "fn main() { let x: i32 = \"no\"; }")
	if res.Verdict != api.VerdictNonzeroExit || res.ExitCode == 0 || !strings.Contains(res.Stderr, "error") {
		t.Fatalf("rust compile error: %s", describe(res))
	}
	res = d.exec(t, "compile-err", "go", "package main\nfunc main() { undefined() }")
	if res.Verdict != api.VerdictNonzeroExit || !strings.Contains(res.Stderr, "undefined") {
		t.Fatalf("go compile error: %s", describe(res))
	}
}

// Multi-turn state: a file written in turn 1 is read in turn 2; python then
// javascript share the sandbox; a failure does not lose the state.
func TestTurns(t *testing.T) {
	d := shared(t)
	a := "turns"
	wantOK(t, d.exec(t, a, "python", "open('notes.txt','w').write('from turn 1')\nprint('written')"), "written")
	wantOK(t, d.exec(t, a, "javascript", "console.log(require('fs').readFileSync('notes.txt','utf8'))"), "from turn 1")
	res := d.exec(t, a, "python", "print(undefined_name)")
	if res.Verdict != api.VerdictNonzeroExit || res.ExitCode != 1 || !strings.Contains(res.Stderr, "NameError") {
		t.Fatalf("NameError run: %s", describe(res))
	}
	wantOK(t, d.exec(t, a, "python", "print(open('notes.txt').read())"), "from turn 1")
}

// Ten quick runs in a row all succeed in the same sandbox.
func TestQuickRuns(t *testing.T) {
	d := shared(t)
	var sandbox string
	for i := 0; i < 10; i++ {
		res := d.exec(t, "quick", "python", fmt.Sprintf("print(%d*%d)", i, i))
		wantOK(t, res, fmt.Sprint(i*i))
		if sandbox != "" && res.SandboxID != sandbox {
			t.Fatalf("run %d moved to sandbox %s from %s", i, res.SandboxID, sandbox)
		}
		sandbox = res.SandboxID
	}
}

// Three agents at once: each sees only its own files.
func TestConcurrentAgents(t *testing.T) {
	d := shared(t)
	var wg sync.WaitGroup
	errs := make(chan string, 3)
	sandboxes := make([]string, 3)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			agent := fmt.Sprintf("concurrent-%d", i)
			r1, err := d.client.Exec(t.Context(), api.ExecRequest{AgentID: agent, Language: "bash", Code: fmt.Sprintf("echo %s > /tmp/who; ls /tmp", agent)})
			if err != nil {
				errs <- err.Error()
				return
			}
			r2, err := d.client.Exec(t.Context(), api.ExecRequest{AgentID: agent, Language: "bash", Code: "cat /tmp/who"})
			if err != nil {
				errs <- err.Error()
				return
			}
			if strings.TrimSpace(r2.Stdout) != agent {
				errs <- fmt.Sprintf("%s read %q: crosstalk (%s)", agent, r2.Stdout, r1.Stdout)
			}
			sandboxes[i] = r2.SandboxID
		}(i)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if sandboxes[0] == sandboxes[1] || sandboxes[1] == sandboxes[2] || sandboxes[0] == sandboxes[2] {
		t.Fatalf("agents shared a sandbox: %v", sandboxes)
	}
}

// The CLI runs code through the daemon and exits with the program's exit code.
func TestCLI(t *testing.T) {
	d := shared(t)
	bin := testenv.Vmexec(t)
	cmd := exec.Command(bin, "--url", d.url, "exec", "--agent", "cli-test", "--lang", "python", "-c", "import math; print(math.factorial(10))")
	out, err := cmd.Output()
	if err != nil || strings.TrimSpace(string(out)) != "3628800" {
		t.Fatalf("vmexec exec: %v %q", err, out)
	}
	cmd = exec.Command(bin, "--url", d.url, "exec", "--agent", "cli-test", "--lang", "bash")
	cmd.Stdin = strings.NewReader("echo from-stdin; exit 7")
	out, err = cmd.Output()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 || strings.TrimSpace(string(out)) != "from-stdin" {
		t.Fatalf("exit code not passed through: %v %q", err, out)
	}
	out, err = exec.Command(bin, "--url", d.url, "sandboxes", "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "cli-test") {
		t.Fatalf("sandboxes list: %v %s", err, out)
	}
	out, _ = exec.Command(bin, "--url", d.url, "exec", "--agent", "x", "-c", "print(1)").CombinedOutput()
	if !strings.Contains(string(out), "--lang") {
		t.Fatalf("missing language should say to use --lang: %s", out)
	}
}

// The fcctl-web compatible routes answer with the shapes existing clients read.
func TestCompatRoutes(t *testing.T) {
	d := shared(t)
	post := func(path, body string) (int, map[string]any) {
		resp, err := http.Post(d.url+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		b, _ := io.ReadAll(resp.Body)
		json.Unmarshal(b, &m)
		return resp.StatusCode, m
	}
	get := func(path string) (int, map[string]any) {
		resp, err := http.Get(d.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	st, h := get("/health")
	if st != 200 || h["status"] != "healthy" || h["service"] == nil || h["timestamp"] == nil {
		t.Fatalf("/health: %d %v", st, h)
	}
	st, r := post("/api/llm/execute", `{"agent_id":"compat","language":"python","code":"print(2+2)","timeout_seconds":30}`)
	for _, k := range []string{"execution_id", "vm_id", "exit_code", "stdout", "stderr", "duration_ms", "started_at", "completed_at"} {
		if _, ok := r[k]; !ok {
			t.Errorf("execute response lacks %s: %v", k, r)
		}
	}
	if st != 200 || r["stdout"] != "4\n" || r["exit_code"] != 0.0 {
		t.Fatalf("execute: %d %v", st, r)
	}
	st, r = post("/api/llm/execute", `{"agent_id":"compat","language":"python","code":"raise SystemExit(3)","timeout_ms":5000}`)
	if st != 200 || r["exit_code"] != 3.0 {
		t.Fatalf("a failing program must be 200 with its exit code: %d %v", st, r)
	}
	st, vm := post("/api/vms", `{"vm_type":"gvisor","name":"compat-vm"}`)
	if st/100 != 2 || vm["id"] == nil || vm["name"] != "compat-vm" || vm["status"] == nil || vm["vm_type"] == nil || vm["created_at"] == nil {
		t.Fatalf("create vm: %d %v", st, vm)
	}
	id := vm["id"].(string)
	st, r = post("/api/llm/execute", fmt.Sprintf(`{"agent_id":"compat","language":"bash","code":"echo in-vm","vm_id":%q}`, id))
	if st != 200 || r["vm_id"] != id || r["stdout"] != "in-vm\n" {
		t.Fatalf("execute in vm: %d %v", st, r)
	}
	st, l := get("/api/vms")
	if st != 200 || l["total"] == nil || l["vms"] == nil {
		t.Fatalf("list vms: %d %v", st, l)
	}
	st, g := get("/api/vms/" + id)
	if st != 200 || g["id"] != id || g["status"] != "running" {
		t.Fatalf("get vm: %d %v", st, g)
	}
	req, _ := http.NewRequest(http.MethodDelete, d.url+"/api/vms/"+id, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode/100 != 2 {
		t.Fatalf("delete vm: %v %v", err, resp)
	}
	resp.Body.Close()
	if st, _ := get("/api/vms/" + id); st != 404 {
		t.Fatalf("deleted vm still there: %d", st)
	}
}

// Bad input gets a clear 4xx with {error, code}, and the daemon keeps serving.
func TestBadInput(t *testing.T) {
	d := shared(t)
	cases := []struct {
		name, path, body string
		status           int
		code, mention    string
	}{
		{"malformed json", "/api/llm/execute", `{"agent_id": "x", "language": `, 400, api.CodeInvalidJSON, "JSON"},
		{"unknown language", "/api/llm/execute", `{"agent_id":"x","language":"cobol","code":"DISPLAY 1"}`, 400, api.CodeBadRequest, "cobol"},
		{"missing language", "/v1/exec", `{"agent_id":"x","code":"print(1)"}`, 400, api.CodeBadRequest, "language"},
		{"missing code", "/v1/exec", `{"agent_id":"x","language":"python"}`, 400, api.CodeBadRequest, "code"},
		{"missing agent", "/v1/exec", `{"language":"python","code":"print(1)"}`, 400, api.CodeBadRequest, "agent_id"},
		{"oversize code", "/v1/exec", `{"agent_id":"x","language":"python","code":"` + strings.Repeat("#", 1500<<10) + `"}`, 400, api.CodeBadRequest, "limit"},
		{"body over limit", "/v1/exec", `{"agent_id":"x","language":"python","code":"` + strings.Repeat("#", 5<<20) + `"}`, 413, api.CodeTooLarge, "bytes"},
		{"limit over max", "/v1/exec", `{"agent_id":"x","language":"python","code":"print(1)","limits":{"timeout_ms":99999999}}`, 400, api.CodeBadRequest, "maximum"},
		{"unknown sandbox", "/v1/sandboxes/sb-nope/exec", `{"agent_id":"x","language":"python","code":"print(1)"}`, 404, api.CodeNotFound, "sb-nope"},
		{"wrong type", "/v1/exec", `{"agent_id":"x","language":"python","code":42}`, 400, api.CodeInvalidJSON, "JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, err := http.Post(d.url+c.path, "application/json", bytes.NewReader([]byte(c.body)))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e api.Error
			json.NewDecoder(resp.Body).Decode(&e)
			if resp.StatusCode != c.status || e.Code != c.code || !strings.Contains(e.Error, c.mention) {
				t.Fatalf("got %d %+v; want %d %s mentioning %q", resp.StatusCode, e, c.status, c.code, c.mention)
			}
		})
	}
	wantOK(t, d.exec(t, "after-bad-input", "python", "print('still serving')"), "still serving")
}
