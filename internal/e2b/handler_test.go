package e2b

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/memtest"
	"github.com/vmexec/vmexec/internal/sandbox"
)

type env struct {
	svc  *sandbox.Service
	h    *Handler
	url  string
	dir  string
	http *http.Client
}

// newEnv serves a Handler over a service of the in-memory backend
// (internal/memtest); dataDir "" keeps the E2B state in memory.
func newEnv(t *testing.T, dataDir string) *env {
	t.Helper()
	svc, _ := memtest.Service(t, nil)
	e := &env{svc: svc, dir: dataDir, http: &http.Client{}}
	e.serve(t)
	t.Cleanup(func() { e.h.Close() })
	return e
}

// serve starts a (new) Handler for e's service, as a daemon restart would.
func (e *env) serve(t *testing.T) {
	if e.h != nil {
		e.h.Close()
	}
	e.h = New(e.svc, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), DataDir: e.dir})
	mux := http.NewServeMux()
	mux.Handle(APIPrefix+"/", e.h.API())
	mux.Handle(EnvdPrefix+"/", e.h.Envd())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	e.url = srv.URL
}

func (e *env) do(t *testing.T, method, p string, hdr map[string]string, body io.Reader) (*http.Response, []byte) {
	t.Helper()
	r, _ := http.NewRequest(method, e.url+p, body)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	res, err := e.http.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, b
}

func (e *env) create(t *testing.T, body string) sandboxJSON {
	t.Helper()
	res, b := e.do(t, "POST", "/e2b/api/v2/sandboxes", map[string]string{"Content-Type": "application/json"}, strings.NewReader(body))
	if res.StatusCode != 201 {
		t.Fatalf("create: %d %s", res.StatusCode, b)
	}
	var sb sandboxJSON
	json.Unmarshal(b, &sb)
	return sb
}

func envdHeaders(sb sandboxJSON, port string) map[string]string {
	return map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "E2b-Sandbox-Port": port, "X-Access-Token": sb.EnvdAccessToken}
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); !f(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestControlPlaneLifecycle: create answers E2B's Sandbox (201, envd version, tokens);
// get, list and connect know it; kill removes it from vmexec too, and then get and
// kill are 404 with E2B's error body.
func TestControlPlaneLifecycle(t *testing.T) {
	e := newEnv(t, "")
	sb := e.create(t, `{"templateID":"code-interpreter-v1","timeout":60,"metadata":{"k":"v"}}`)
	if sb.SandboxID == "" || sb.TemplateID != "code-interpreter-v1" || sb.EnvdVersion != EnvdVersion || sb.EnvdAccessToken == "" || sb.TrafficAccessToken == "" {
		t.Fatalf("create answer %+v", sb)
	}
	if _, err := e.svc.Get(sb.SandboxID); err != nil {
		t.Fatalf("not a vmexec sandbox: %v", err)
	}
	res, b := e.do(t, "GET", "/e2b/api/sandboxes/"+sb.SandboxID, nil, nil)
	var d detailJSON
	json.Unmarshal(b, &d)
	if res.StatusCode != 200 || d.SandboxID != sb.SandboxID || d.State != "running" || d.Metadata["k"] != "v" || d.EndAt.Sub(d.StartedAt) != time.Minute {
		t.Fatalf("get: %d %s", res.StatusCode, b)
	}
	res, b = e.do(t, "GET", "/e2b/api/v2/sandboxes?metadata="+`k%3Dv`, nil, nil)
	var list []detailJSON
	json.Unmarshal(b, &list)
	if res.StatusCode != 200 || len(list) != 1 || list[0].SandboxID != sb.SandboxID {
		t.Fatalf("list: %d %s", res.StatusCode, b)
	}
	for _, p := range []string{"/e2b/api/v2/sandboxes/", "/e2b/api/sandboxes/"} {
		res, b = e.do(t, "POST", p+sb.SandboxID+"/connect", map[string]string{"Content-Type": "application/json"}, strings.NewReader(`{"timeout":120}`))
		var c sandboxJSON
		json.Unmarshal(b, &c)
		if res.StatusCode != 201 || c.EnvdAccessToken != sb.EnvdAccessToken {
			t.Fatalf("connect %s: %d %s", p, res.StatusCode, b)
		}
	}
	if res, b := e.do(t, "DELETE", "/e2b/api/sandboxes/"+sb.SandboxID, nil, nil); res.StatusCode != 204 {
		t.Fatalf("kill: %d %s", res.StatusCode, b)
	}
	if _, err := e.svc.Get(sb.SandboxID); err == nil {
		t.Fatal("killed, but still a vmexec sandbox")
	}
	for _, m := range []string{"GET", "DELETE"} {
		res, b := e.do(t, m, "/e2b/api/sandboxes/"+sb.SandboxID, nil, nil)
		var ae apiError
		json.Unmarshal(b, &ae)
		if res.StatusCode != 404 || ae.Code != 404 || ae.Message == "" {
			t.Errorf("%s after kill: %d %s, want 404 {code: 404}", m, res.StatusCode, b)
		}
	}
}

// TestCreateRefusals: bad bodies and options vmexec cannot honour are refused with
// a clear error, and nothing is created.
func TestCreateRefusals(t *testing.T) {
	e := newEnv(t, "")
	for _, tc := range []struct {
		ct, body string
		status   int
	}{
		{"application/json", `{"timeout":-1}`, 400},
		{"application/json", `{"timeout":999999999}`, 400},
		{"application/json", `{"autoPause":true}`, 501},
		{"application/json", `{"templateID":`, 400},
		{"text/plain", `{}`, 400},
	} {
		res, b := e.do(t, "POST", "/e2b/api/v2/sandboxes", map[string]string{"Content-Type": tc.ct}, strings.NewReader(tc.body))
		if res.StatusCode != tc.status || !strings.Contains(string(b), `"message"`) {
			t.Errorf("%s %s: %d %s, want %d", tc.ct, tc.body, res.StatusCode, b, tc.status)
		}
	}
	if n := len(e.svc.List()); n != 0 {
		t.Fatalf("%d sandboxes created by refused requests", n)
	}
}

// TestTimeoutKills: a sandbox whose timeout passes is killed; setTimeout moves the
// end of life (here to now).
func TestTimeoutKills(t *testing.T) {
	e := newEnv(t, "")
	short := e.create(t, `{"timeout":1}`)
	long := e.create(t, `{"timeout":3600}`)
	waitFor(t, "the 1 s sandbox to be killed", func() bool { _, err := e.svc.Get(short.SandboxID); return err != nil })
	if _, err := e.svc.Get(long.SandboxID); err != nil {
		t.Fatalf("the 1 h sandbox went too: %v", err)
	}
	res, b := e.do(t, "POST", "/e2b/api/sandboxes/"+long.SandboxID+"/timeout", map[string]string{"Content-Type": "application/json"}, strings.NewReader(`{"timeout":0}`))
	if res.StatusCode != 204 {
		t.Fatalf("setTimeout: %d %s", res.StatusCode, b)
	}
	waitFor(t, "the sandbox whose timeout was set to 0 to be killed", func() bool { _, err := e.svc.Get(long.SandboxID); return err != nil })
}

// TestStateSurvivesRestart: a new Handler on the same data dir (a daemon restart)
// keeps the records, the tokens and the timers.
func TestStateSurvivesRestart(t *testing.T) {
	e := newEnv(t, t.TempDir())
	sb := e.create(t, `{"timeout":2,"metadata":{"k":"v"}}`)
	e.serve(t)
	if res, b := e.do(t, "GET", "/health", nil, nil); res.StatusCode != 404 {
		t.Fatalf("sanity: %d %s", res.StatusCode, b)
	}
	res, b := e.do(t, "GET", "/e2b/envd/health", envdHeaders(sb, envdPort), nil)
	if res.StatusCode != 204 {
		t.Fatalf("the token after a restart: %d %s", res.StatusCode, b)
	}
	res, b = e.do(t, "GET", "/e2b/api/sandboxes/"+sb.SandboxID, nil, nil)
	if res.StatusCode != 200 || !strings.Contains(string(b), `"k":"v"`) {
		t.Fatalf("the record after a restart: %d %s", res.StatusCode, b)
	}
	waitFor(t, "the timer armed again after the restart to kill the sandbox", func() bool { _, err := e.svc.Get(sb.SandboxID); return err != nil })
}

// TestEnvdNeedsToken: without an API key, a sandbox's traffic needs its token (the
// envd token, or the traffic token the interpreter SDK sends on /contexts); another
// sandbox's token is refused.
func TestEnvdNeedsToken(t *testing.T) {
	e := newEnv(t, "")
	a, b := e.create(t, `{}`), e.create(t, `{}`)
	for _, tc := range []struct {
		name   string
		hdr    map[string]string
		status int
	}{
		{"no token", map[string]string{"E2b-Sandbox-Id": a.SandboxID}, 401},
		{"another sandbox's token", map[string]string{"E2b-Sandbox-Id": a.SandboxID, "X-Access-Token": b.EnvdAccessToken}, 401},
		{"the traffic token as the envd token", map[string]string{"E2b-Sandbox-Id": a.SandboxID, "X-Access-Token": a.TrafficAccessToken}, 401},
		{"no sandbox id", map[string]string{"X-Access-Token": a.EnvdAccessToken}, 400},
		{"its token", envdHeaders(a, envdPort), 204},
		{"its traffic token", map[string]string{"E2b-Sandbox-Id": a.SandboxID, "E2B-Traffic-Access-Token": a.TrafficAccessToken}, 204},
		{"a port that serves nothing", envdHeaders(a, "8080"), 404},
	} {
		res, body := e.do(t, "GET", "/e2b/envd/health", tc.hdr, nil)
		if res.StatusCode != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, res.StatusCode, body, tc.status)
		}
	}
	// A Connect call is refused with the Connect code the SDK maps to AuthenticationError.
	res, body := e.do(t, "POST", "/e2b/envd/filesystem.Filesystem/Stat", map[string]string{"E2b-Sandbox-Id": a.SandboxID, "Content-Type": "application/json"}, strings.NewReader(`{"path":"x"}`))
	var ce connectError
	json.Unmarshal(body, &ce)
	if res.StatusCode != 401 || ce.Code != codeUnauthenticated {
		t.Errorf("RPC without a token: %d %s", res.StatusCode, body)
	}
}

// readStream returns the data messages and the end message of a Connect stream.
func readStream(t *testing.T, body []byte) (msgs []map[string]any, end string) {
	t.Helper()
	r := bytes.NewReader(body)
	for {
		flags, msg, err := readEnvelope(r)
		if err == io.EOF {
			t.Fatalf("no end-of-stream envelope in %q", body)
		}
		if err != nil {
			t.Fatal(err)
		}
		if flags&flagEndStream != 0 {
			if r.Len() != 0 {
				t.Fatalf("%d bytes after the end-of-stream envelope", r.Len())
			}
			return msgs, string(msg)
		}
		var m map[string]any
		json.Unmarshal(msg, &m)
		msgs = append(msgs, m["event"].(map[string]any))
	}
}

// TestProcessStart: a command is a Connect stream: start (with a pid) first, the
// output as base64 data events, then end with the exit code; an unknown sandbox is a
// 200 stream ending in not_found (what the SDK needs to raise its error).
func TestProcessStart(t *testing.T) {
	e := newEnv(t, "")
	sb := e.create(t, `{"envVars":{"A":"1"}}`)
	hdr := envdHeaders(sb, envdPort)
	hdr["Content-Type"] = ctConnectJSON
	req := appendEnvelope(nil, 0, []byte(`{"process":{"cmd":"/bin/bash","args":["-l","-c","echo out\nwarn err\nexit 3"]}}`))
	res, body := e.do(t, "POST", "/e2b/envd/process.Process/Start", hdr, bytes.NewReader(req))
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != ctConnectJSON {
		t.Fatalf("%d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	msgs, end := readStream(t, body)
	var kinds []string
	var stdout, stderr string
	for _, m := range msgs {
		for k, v := range m {
			kinds = append(kinds, k)
			if k == "data" {
				for s, b64 := range v.(map[string]any) {
					var b []byte
					json.Unmarshal([]byte(strconv.Quote(b64.(string))), &b)
					if s == "stdout" {
						stdout += string(b)
					} else {
						stderr += string(b)
					}
				}
			}
		}
	}
	last := msgs[len(msgs)-1]["end"].(map[string]any)
	if kinds[0] != "start" || kinds[len(kinds)-1] != "end" || stdout != "out\n" || stderr != "err\n" || last["exitCode"] != 3.0 || end != "{}" {
		t.Fatalf("events %v stdout %q stderr %q end %v / %s", kinds, stdout, stderr, last, end)
	}

	hdr["E2b-Sandbox-Id"] = "sb-000000000000"
	res, body = e.do(t, "POST", "/e2b/envd/process.Process/Start", map[string]string{"Content-Type": ctConnectJSON, "E2b-Sandbox-Id": "sb-000000000000", "X-Access-Token": e.h.reg.token("envd", "sb-000000000000")}, bytes.NewReader(req))
	if _, end := readStream(t, body); res.StatusCode != 200 || !strings.Contains(end, `"code":"not_found"`) {
		t.Fatalf("unknown sandbox: %d %s", res.StatusCode, end)
	}
}

// TestFilesRoundTrip: uploads as multipart (one file, or several named by their
// part's file name) and as octet-stream; downloads give the bytes back; a missing
// file is 404 (FileNotFoundError) and Stat of it not_found.
func TestFilesRoundTrip(t *testing.T) {
	e := newEnv(t, "")
	sb := e.create(t, `{}`)
	hdr := envdHeaders(sb, envdPort)
	blob := []byte{0, 1, 2, 255, '\n'}

	var mp bytes.Buffer
	w := multipart.NewWriter(&mp)
	fw, _ := w.CreateFormFile("file", "/home/user/d/one.bin")
	fw.Write(blob)
	fw, _ = w.CreateFormFile("file", "/home/user/d/two.txt")
	fw.Write([]byte("two"))
	w.Close()
	h := map[string]string{"Content-Type": w.FormDataContentType()}
	for k, v := range hdr {
		h[k] = v
	}
	res, body := e.do(t, "POST", "/e2b/envd/files", h, &mp)
	var infos []writeInfo
	json.Unmarshal(body, &infos)
	if res.StatusCode != 200 || len(infos) != 2 || infos[0].Path != "/home/user/d/one.bin" || infos[1].Path != "/home/user/d/two.txt" {
		t.Fatalf("multipart: %d %s", res.StatusCode, body)
	}
	h["Content-Type"] = "application/octet-stream"
	if res, body := e.do(t, "POST", "/e2b/envd/files?path=rel.txt", h, strings.NewReader("relative")); res.StatusCode != 200 || !strings.Contains(string(body), "/home/user/rel.txt") {
		t.Fatalf("octet-stream: %d %s", res.StatusCode, body)
	}
	for p, want := range map[string]string{"/home/user/d/one.bin": string(blob), "/home/user/d/two.txt": "two", "/home/user/rel.txt": "relative"} {
		if res, body := e.do(t, "GET", "/e2b/envd/files?path="+p, hdr, nil); res.StatusCode != 200 || string(body) != want {
			t.Errorf("download %s: %d %q, want %q", p, res.StatusCode, body, want)
		}
	}
	if res, body := e.do(t, "GET", "/e2b/envd/files?path=/home/user/missing", hdr, nil); res.StatusCode != 404 {
		t.Errorf("missing file: %d %s", res.StatusCode, body)
	}
	h["Content-Type"] = "application/json"
	res, body = e.do(t, "POST", "/e2b/envd/filesystem.Filesystem/Stat", h, strings.NewReader(`{"path":"/home/user/missing"}`))
	var ce connectError
	json.Unmarshal(body, &ce)
	if res.StatusCode != 404 || ce.Code != codeNotFound {
		t.Errorf("Stat of a missing file: %d %s", res.StatusCode, body)
	}
	res, body = e.do(t, "POST", "/e2b/envd/filesystem.Filesystem/ListDir", h, strings.NewReader(`{"path":"/home/user/d","depth":1}`))
	if res.StatusCode != 200 || !strings.Contains(string(body), `"name":"one.bin","type":"FILE_TYPE_FILE","path":"/home/user/d/one.bin","size":"5"`) {
		t.Errorf("ListDir: %d %s", res.StatusCode, body)
	}
}
