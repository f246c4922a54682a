package httpapi

import (
	"context"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/history/sqlite"
	"github.com/vmexec/vmexec/internal/memtest"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// authEnv is a Server over the mem backend with API keys in a real SQLite store.
type authEnv struct {
	srv   *Server
	svc   *sandbox.Service
	hist  *sqlite.Store
	cache *auth.Cache
}

func newAuthEnv(t *testing.T) *authEnv {
	t.Helper()
	svc, hist := memtest.Service(t, nil)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cache := auth.NewCache(hist, false, log)
	if err := cache.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &authEnv{srv: New(svc, Options{Logger: log, Keys: cache}), svc: svc, hist: hist, cache: cache}
}

// key creates a key and reloads the cache; it returns the secret.
func (e *authEnv) key(t *testing.T, k auth.Key) string {
	t.Helper()
	secret, hash, err := auth.Generate()
	if err != nil {
		t.Fatal(err)
	}
	k.ID, k.Hash, k.CreatedAt = auth.NewID(), hash, time.Now()
	if err := e.hist.CreateKey(context.Background(), k); err != nil {
		t.Fatal(err)
	}
	if err := e.cache.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	return secret
}

func (e *authEnv) revoke(t *testing.T, name string) {
	t.Helper()
	if err := e.hist.RevokeKey(context.Background(), name, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := e.cache.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// do sends one request with key (none when "") and returns the recorder.
func (e *authEnv) do(method, path, key, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Host = "localhost"
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		r.Header.Set("Authorization", "Bearer "+key)
	}
	rec := httptest.NewRecorder()
	e.srv.ServeHTTP(rec, r)
	return rec
}

func errCode(rec *httptest.ResponseRecorder) string {
	var e api.Error
	json.Unmarshal(rec.Body.Bytes(), &e)
	return e.Code
}

// registeredRoutes reads every "METHOD /path" route registered by the non-test files
// of this package (calls of Handle or HandleFunc with a literal pattern), as the
// OpenAPI drift test does, so a route added later is walked without being listed.
func registeredRoutes(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var routes []string
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || (sel.Sel.Name != "Handle" && sel.Sel.Name != "HandleFunc") || len(call.Args) != 2 {
				return true
			}
			lit, ok := call.Args[0].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				t.Errorf("%s: route pattern is not a string literal; the auth route walk cannot read it", fset.Position(call.Pos()))
				return true
			}
			p, _ := strconv.Unquote(lit.Value)
			routes = append(routes, p)
			return true
		})
	}
	if len(routes) < 20 {
		t.Fatalf("found only %d routes; has the registration style changed?", len(routes))
	}
	return routes
}

var pathParam = regexp.MustCompile(`\{[^}]*\}`)

// concrete turns a pattern into a request: wildcards become "x", {$} nothing, a
// pattern without a method is a GET.
func concrete(pattern string) (method, path string) {
	method, path, ok := strings.Cut(pattern, " ")
	if !ok {
		method, path = "GET", pattern
	}
	path = strings.ReplaceAll(path, "{$}", "")
	path = pathParam.ReplaceAllString(path, "x")
	return method, path
}

// TestEveryRouteNeedsAKey walks every registered route — present and future — and
// checks that without a key, with a key that is not one, with a malformed one and
// with a revoked one it is 401 with WWW-Authenticate and the same body, unless it is
// one of the public routes; and that an admin key gets past authentication.
func TestEveryRouteNeedsAKey(t *testing.T) {
	e := newAuthEnv(t)
	admin := e.key(t, auth.Key{Name: "ops", Admin: true})
	revoked := e.key(t, auth.Key{Name: "old", Admin: true})
	e.revoke(t, "old")
	wrong, _, _ := auth.Generate()
	e2bForm := "e2b_" + strings.TrimPrefix(admin, "vmx_")

	// The only routes that need no key, decided here and not by the code under test:
	// a route made public by mistake fails below.
	wantPublic := map[string]bool{"GET /health": true, "GET /js/vmexec.js": true, "GET /js/index.d.ts": true, "GET /{$}": true, "GET /ui/{file}": true}
	routes := append(registeredRoutes(t), "GET /no/such/route")
	for _, pattern := range routes {
		if pattern == "/" {
			continue // the catch-all; GET / is the web page, "GET /no/such/route" reaches it
		}
		method, path := concrete(pattern)
		public := wantPublic[pattern]
		t.Run(pattern, func(t *testing.T) {
			var first string
			for name, key := range map[string]string{"none": "", "wrong": wrong, "revoked": revoked,
				"malformed": "vmx_nothex", "basic": "Zm9vOmJhcg=="} {
				rec := e.do(method, path, key, "{}")
				if public {
					if rec.Code == http.StatusUnauthorized {
						t.Errorf("%s key: public route answered 401", name)
					}
					continue
				}
				if rec.Code != http.StatusUnauthorized || rec.Header().Get("WWW-Authenticate") == "" || errCode(rec) != api.CodeUnauthorized {
					t.Errorf("%s key: %d %.200q (WWW-Authenticate %q), want 401 unauthorized with WWW-Authenticate", name, rec.Code, rec.Body.String(), rec.Header().Get("WWW-Authenticate"))
				}
				if first == "" {
					first = rec.Body.String()
				} else if rec.Body.String() != first {
					t.Errorf("%s key: body %q differs from %q: a caller could tell the cases apart", name, rec.Body.String(), first)
				}
			}
			for _, key := range []string{admin, e2bForm} {
				if rec := e.do(method, path, key, "{}"); rec.Code == http.StatusUnauthorized {
					t.Errorf("admin key: 401 %s", rec.Body.String())
				}
			}
		})
	}
}

// TestOpenWithoutKeys: a daemon where no key was ever created serves as before.
func TestOpenWithoutKeys(t *testing.T) {
	e := newAuthEnv(t)
	if rec := e.do("GET", "/v1/sandboxes", "", ""); rec.Code != http.StatusOK {
		t.Fatalf("no keys: %d %s", rec.Code, rec.Body)
	}
	e.key(t, auth.Key{Name: "ops", Admin: true})
	if rec := e.do("GET", "/v1/sandboxes", "", ""); rec.Code != http.StatusUnauthorized {
		t.Fatalf("after a key was created: %d, want 401", rec.Code)
	}
	e.revoke(t, "ops")
	if rec := e.do("GET", "/v1/sandboxes", "", ""); rec.Code != http.StatusUnauthorized {
		t.Fatalf("after the last key was revoked: %d, want 401 (revoking must not open the daemon)", rec.Code)
	}
}

// TestScopedKey checks what a key scoped to team-a-* may do on the routes the mem
// backend serves (sandboxes, runs, files, history, policy); e2e/keys_test.go covers
// snapshots, rollback and fork on a real backend.
func TestScopedKey(t *testing.T) {
	e := newAuthEnv(t)
	admin := e.key(t, auth.Key{Name: "ops", Admin: true})
	a := e.key(t, auth.Key{Name: "team-a", Agents: []string{"team-a-*"}})

	run := func(key, agent string) api.ExecResult {
		t.Helper()
		rec := e.do("POST", "/v1/exec", key, `{"agent_id":"`+agent+`","language":"bash","code":"echo hi"}`)
		if rec.Code != 200 {
			t.Fatalf("exec as %s: %d %s", agent, rec.Code, rec.Body)
		}
		var res api.ExecResult
		json.Unmarshal(rec.Body.Bytes(), &res)
		return res
	}
	mine := run(a, "team-a-1")
	theirs := run(admin, "team-b-1")
	ownerless := e.do("POST", "/v1/sandboxes", admin, `{}`)
	var ol api.Sandbox
	json.Unmarshal(ownerless.Body.Bytes(), &ol)

	cases := []struct {
		name, method, path, body string
		status                   int
	}{
		{"exec as another agent", "POST", "/v1/exec", `{"agent_id":"team-b-1","language":"bash","code":"echo x"}`, 403},
		{"exec without agent", "POST", "/v1/exec", `{"language":"bash","code":"echo x"}`, 400},
		{"exec in their sandbox", "POST", "/v1/sandboxes/" + theirs.SandboxID + "/exec", `{"language":"bash","code":"echo x"}`, 404},
		{"exec in an ownerless sandbox", "POST", "/v1/sandboxes/" + ol.ID + "/exec", `{"language":"bash","code":"echo x"}`, 404},
		{"exec in my sandbox, agent from it", "POST", "/v1/sandboxes/" + mine.SandboxID + "/exec", `{"language":"bash","code":"echo x"}`, 200},
		{"get their sandbox", "GET", "/v1/sandboxes/" + theirs.SandboxID, "", 404},
		{"get my sandbox", "GET", "/v1/sandboxes/" + mine.SandboxID, "", 200},
		{"delete their sandbox", "DELETE", "/v1/sandboxes/" + theirs.SandboxID, "", 404},
		{"compat get their vm", "GET", "/api/vms/" + theirs.SandboxID, "", 404},
		{"compat delete their vm", "DELETE", "/api/vms/" + theirs.SandboxID, "", 404},
		{"compat execute in their vm", "POST", "/api/llm/execute", `{"agent_id":"team-a-1","vm_id":"` + theirs.SandboxID + `","language":"bash","code":"echo x"}`, 404},
		{"compat create without agent", "POST", "/api/vms", `{}`, 400},
		{"compat create for my agent", "POST", "/api/vms?agent_id=team-a-2", `{}`, 201},
		{"compat snapshot of their vm", "POST", "/api/vms/" + theirs.SandboxID + "/snapshots", `{}`, 404},
		{"compat rollback of their vm", "POST", "/api/vms/" + theirs.SandboxID + "/rollback/snap-x", "", 404},
		{"compat parse-execute in their vm", "POST", "/api/llm/parse-execute", `{"agent_id":"team-a-1","llm_response":"x","vm_config":{"vm_id":"` + theirs.SandboxID + `"}}`, 404},
		{"parse-execute as their agent", "POST", "/v1/parse-execute", `{"agent_id":"team-b-1","text":"x"}`, 403},
		{"their run", "GET", "/v1/runs/" + theirs.ExecutionID, "", 404},
		{"my run", "GET", "/v1/runs/" + mine.ExecutionID, "", 200},
		{"history of another agent", "GET", "/v1/history?agent_id=team-b-1", "", 403},
		{"history without agent", "GET", "/v1/history", "", 400},
		{"history of their sandbox", "GET", "/v1/history?agent_id=team-a-1&sandbox_id=" + theirs.SandboxID, "", 404},
		{"compat history of their vm", "GET", "/api/vms/" + theirs.SandboxID + "/history", "", 404},
		{"their policy", "GET", "/v1/agents/team-b-1/policy", "", 404},
		{"set their policy", "PUT", "/v1/agents/team-b-1/policy", `{"max_snapshots":3}`, 404},
		{"my policy", "GET", "/v1/agents/team-a-1/policy", "", 200},
		{"their file", "GET", "/v1/sandboxes/" + theirs.SandboxID + "/files?path=a", "", 404},
		{"put their file", "PUT", "/v1/sandboxes/" + theirs.SandboxID + "/files?path=a", "", 404},
		{"list their files", "GET", "/v1/sandboxes/" + theirs.SandboxID + "/files/list?path=.", "", 404},
		{"rm their file", "DELETE", "/v1/sandboxes/" + theirs.SandboxID + "/files?path=a", "", 404},
		{"their snapshots", "GET", "/v1/sandboxes/" + theirs.SandboxID + "/snapshots", "", 404},
		{"snapshot their sandbox", "POST", "/v1/sandboxes/" + theirs.SandboxID + "/snapshots", `{}`, 404},
		{"roll back their sandbox", "POST", "/v1/sandboxes/" + theirs.SandboxID + "/rollback", `{"last_success":true}`, 404},
		{"metrics need an admin key", "GET", "/metrics", "", 403},
		{"languages", "GET", "/v1/languages", "", 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if rec := e.do(c.method, c.path, a, c.body); rec.Code != c.status {
				t.Errorf("%s %s: %d %s, want %d", c.method, c.path, rec.Code, rec.Body, c.status)
			}
		})
	}

	// A streamed run is scoped the same way: its refusal is the stream's error event.
	r := httptest.NewRequest("POST", "/v1/exec", strings.NewReader(`{"agent_id":"team-b-1","language":"bash","code":"echo x"}`))
	r.Host = "localhost"
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Accept", "text/event-stream")
	r.Header.Set("Authorization", "Bearer "+a)
	rec := httptest.NewRecorder()
	e.srv.ServeHTTP(rec, r)
	if body := rec.Body.String(); !strings.Contains(body, "event: error") || !strings.Contains(body, `"code":"forbidden"`) {
		t.Errorf("streamed exec as another agent: %q, want an error event forbidden", body)
	}

	// Listings show only what is in scope.
	for _, path := range []string{"/v1/sandboxes", "/api/vms"} {
		body := e.do("GET", path, a, "").Body.String()
		if !strings.Contains(body, mine.SandboxID) || strings.Contains(body, theirs.SandboxID) || strings.Contains(body, ol.ID) {
			t.Errorf("%s under the scoped key: %s; want only %s", path, body, mine.SandboxID)
		}
	}
	// The history records the key's name.
	var got api.Run
	json.Unmarshal(e.do("GET", "/v1/runs/"+mine.ExecutionID, admin, "").Body.Bytes(), &got)
	if got.KeyName != "team-a" {
		t.Errorf("run's key_name %q, want team-a", got.KeyName)
	}
}

// TestRateLimit: past its rate a key gets 429 rate_limited with Retry-After, and
// other keys are not affected.
func TestRateLimit(t *testing.T) {
	e := newAuthEnv(t)
	slow := e.key(t, auth.Key{Name: "slow", Admin: true, Rate: 0.5}) // a burst of 1, then one per 2 s
	other := e.key(t, auth.Key{Name: "other", Admin: true})
	if rec := e.do("GET", "/v1/languages", slow, ""); rec.Code != 200 {
		t.Fatalf("first request: %d", rec.Code)
	}
	rec := e.do("GET", "/v1/languages", slow, "")
	if rec.Code != http.StatusTooManyRequests || errCode(rec) != api.CodeRateLimited {
		t.Fatalf("second request: %d %s, want 429 rate_limited", rec.Code, rec.Body)
	}
	if ra, _ := strconv.Atoi(rec.Header().Get("Retry-After")); ra < 1 || ra > 2 {
		t.Errorf("Retry-After %q, want 1 or 2 (seconds)", rec.Header().Get("Retry-After"))
	}
	if rec := e.do("GET", "/v1/languages", other, ""); rec.Code != 200 {
		t.Errorf("another key: %d, want 200", rec.Code)
	}
}

// TestQuotas: a key's cap on runs in progress and on sandboxes in its scope.
func TestQuotas(t *testing.T) {
	e := newAuthEnv(t)
	k := e.key(t, auth.Key{Name: "q", Agents: []string{"q-*"}, MaxRuns: 1, MaxSandboxes: 2})

	// One run waits (the mem backend's "wait" blocks until cancelled); a second is refused.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		r := httptest.NewRequest("POST", "/v1/exec", strings.NewReader(`{"agent_id":"q-1","language":"bash","code":"wait"}`)).WithContext(ctx)
		r.Host = "localhost"
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Authorization", "Bearer "+k)
		rec := httptest.NewRecorder()
		e.srv.ServeHTTP(rec, r)
		done <- rec.Code
	}()
	waitFor(t, func() bool {
		for _, sb := range e.svc.List() {
			if sb.Status == "busy" {
				return true
			}
		}
		return false
	})
	rec := e.do("POST", "/v1/exec", k, `{"agent_id":"q-2","language":"bash","code":"echo x"}`)
	if rec.Code != http.StatusTooManyRequests || errCode(rec) != api.CodeQuota {
		t.Fatalf("second concurrent run: %d %s, want 429 quota", rec.Code, rec.Body)
	}
	cancel()
	<-done
	// The slot is back.
	if rec := e.do("POST", "/v1/exec", k, `{"agent_id":"q-2","language":"bash","code":"echo x"}`); rec.Code != 200 {
		t.Fatalf("run after the first ended: %d %s", rec.Code, rec.Body)
	}
	// q-1 and q-2 have a sandbox each: the cap of 2 is reached.
	if rec := e.do("POST", "/v1/exec", k, `{"agent_id":"q-3","language":"bash","code":"echo x"}`); rec.Code != http.StatusTooManyRequests || errCode(rec) != api.CodeQuota {
		t.Fatalf("a third agent's first run: %d %s, want 429 quota", rec.Code, rec.Body)
	}
	if rec := e.do("POST", "/v1/sandboxes", k, `{"agent_id":"q-1"}`); rec.Code != http.StatusTooManyRequests {
		t.Fatalf("explicit create at the cap: %d %s, want 429", rec.Code, rec.Body)
	}
	// Runs in existing sandboxes go on.
	if rec := e.do("POST", "/v1/exec", k, `{"agent_id":"q-1","language":"bash","code":"echo x"}`); rec.Code != 200 {
		t.Fatalf("run in an existing sandbox at the cap: %d %s", rec.Code, rec.Body)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
