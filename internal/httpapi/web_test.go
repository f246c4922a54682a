package httpapi

import (
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/web"
)

// TestWebPageRoutes: the page is served at exactly GET /, its assets under /ui/, with
// the content types browsers need for a module page and a CSP keeping it to its own
// origin; every other unknown path, and a missing asset, is still the API's JSON 404.
func TestWebPageRoutes(t *testing.T) {
	s := testServer(t, Options{})
	get := func(path string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", path, nil)
		r.Host = "127.0.0.1:8080"
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, r)
		return rec
	}
	for _, tc := range []struct {
		path, ctype, contains string
	}{
		{"/", "text/html; charset=utf-8", `<script type="module" src="/ui/app.js">`},
		{"/ui/app.js", "text/javascript; charset=utf-8", `from '/js/vmexec.js'`},
		{"/ui/style.css", "text/css; charset=utf-8", "--accent"},
	} {
		rec := get(tc.path)
		if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != tc.ctype || !strings.Contains(rec.Body.String(), tc.contains) {
			t.Errorf("GET %s: %d %q (%d bytes); want 200 %q containing %q", tc.path, rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len(), tc.ctype, tc.contains)
		}
		if rec.Header().Get("X-Content-Type-Options") != "nosniff" || rec.Header().Get("ETag") == "" {
			t.Errorf("GET %s: headers %v; want nosniff and an ETag", tc.path, rec.Header())
		}
	}
	if csp := get("/").Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("GET /: Content-Security-Policy %q; want scripts from the daemon only and no framing", csp)
	}
	for _, path := range []string{"/nope", "/index.html", "/ui/nope.js", "/ui/", "/v1/nope"} {
		rec := get(path)
		var e api.Error
		if err := json.Unmarshal(rec.Body.Bytes(), &e); rec.Code != http.StatusNotFound || err != nil || e.Code != api.CodeNotFound {
			t.Errorf("GET %s: %d %q; want the JSON 404 (code not_found)", path, rec.Code, rec.Body.String())
		}
	}
	// A revalidation by ETag is a 304.
	r := httptest.NewRequest("GET", "/ui/app.js", nil)
	r.Host = "127.0.0.1:8080"
	r.Header.Set("If-None-Match", get("/ui/app.js").Header().Get("ETag"))
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, r)
	if rec.Code != http.StatusNotModified {
		t.Errorf("GET /ui/app.js with its ETag: %d, want 304", rec.Code)
	}
}

// TestWebPageReferencesResolve: every /ui/ and /js/ file the page and its modules name
// is served, so no asset is missing from the embed (the browser suite would see a
// console error, this catches it without a browser).
func TestWebPageReferencesResolve(t *testing.T) {
	s := testServer(t, Options{})
	ref := regexp.MustCompile(`(?:src|href)="(/[^"]+)"|from '(\.?/[^']+)'`)
	seen := map[string]bool{}
	fs.WalkDir(web.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := web.FS.ReadFile(p)
		for _, m := range ref.FindAllStringSubmatch(string(b), -1) {
			u := m[1] + m[2]
			if strings.HasPrefix(u, "./") {
				u = "/ui/" + strings.TrimPrefix(u, "./")
			}
			seen[u] = true
		}
		return nil
	})
	if len(seen) < 5 {
		t.Fatalf("found only %v referenced; has the page's import style changed?", seen)
	}
	for u := range seen {
		r := httptest.NewRequest("GET", u, nil)
		r.Host = "127.0.0.1:8080"
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, r)
		if rec.Code != http.StatusOK {
			t.Errorf("the page references %s, which answers %d", u, rec.Code)
		}
	}
}
