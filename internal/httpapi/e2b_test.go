package httpapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/internal/auth"
)

// TestE2BAuth: with keys in force, the E2B control plane takes the key as X-API-KEY
// (the SDKs' header) in its e2b_ form, and a sandbox's traffic, which carries no key,
// passes with the sandbox's access token and is 401 without it.
func TestE2BAuth(t *testing.T) {
	e := newAuthEnv(t)
	key := auth.E2BForm(e.key(t, auth.Key{Name: "ops", Admin: true}))
	do := func(method, path string, hdr map[string]string, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		r.Host = "127.0.0.1:8080"
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		e.srv.ServeHTTP(rec, r)
		return rec
	}
	json := map[string]string{"Content-Type": "application/json"}
	if rec := do("POST", "/e2b/api/v2/sandboxes", json, `{}`); rec.Code != http.StatusUnauthorized {
		t.Fatalf("create without a key: %d %s", rec.Code, rec.Body)
	}
	rec := do("POST", "/e2b/api/v2/sandboxes", map[string]string{"Content-Type": "application/json", "X-API-KEY": key}, `{}`)
	if rec.Code != http.StatusCreated {
		t.Fatalf("create with X-API-KEY: %d %s", rec.Code, rec.Body)
	}
	var sb struct{ SandboxID, EnvdAccessToken string }
	decodeInto(t, rec, &sb)
	for _, tc := range []struct {
		name   string
		hdr    map[string]string
		status int
	}{
		{"no token", map[string]string{"E2b-Sandbox-Id": sb.SandboxID}, 401},
		{"wrong token", map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "X-Access-Token": strings.Repeat("0", 40)}, 401},
		{"its token", map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "X-Access-Token": sb.EnvdAccessToken}, 204},
		{"the key instead", map[string]string{"E2b-Sandbox-Id": sb.SandboxID, "Authorization": "Bearer " + key}, 204},
	} {
		if rec := do("GET", "/e2b/envd/health", tc.hdr, ""); rec.Code != tc.status {
			t.Errorf("envd %s: %d %s, want %d", tc.name, rec.Code, rec.Body, tc.status)
		}
	}
	// A page's CORS "simple request" cannot reach the surface: a text/plain body is 415.
	if rec := do("POST", "/e2b/envd/process.Process/Start", map[string]string{"Content-Type": "text/plain", "E2b-Sandbox-Id": sb.SandboxID, "X-Access-Token": sb.EnvdAccessToken}, "x"); rec.Code != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain to envd: %d %s", rec.Code, rec.Body)
	}
}

func decodeInto(t *testing.T, rec *httptest.ResponseRecorder, v any) {
	t.Helper()
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("%s: %v", rec.Body, err)
	}
}
