package httpapi

import (
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
)

// TestJSClientServed guards that the daemon serves the JavaScript client as it is in
// clients/js (not a stale copy), with a content type browsers accept for a module, and
// answers a revalidation with 304.
func TestJSClientServed(t *testing.T) {
	for _, tc := range []struct{ file, ctype string }{
		{"vmexec.js", "text/javascript; charset=utf-8"},
		{"index.d.ts", "application/typescript; charset=utf-8"},
	} {
		want, err := os.ReadFile("../../clients/js/" + tc.file)
		if err != nil {
			t.Fatal(err)
		}
		h := staticFile(tc.file, tc.ctype)
		rec := httptest.NewRecorder()
		h(rec, httptest.NewRequest("GET", "/js/"+tc.file, nil))
		if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != tc.ctype || rec.Body.String() != string(want) {
			t.Fatalf("GET /js/%s: %d %q, %d bytes; want 200 %q with the file's %d bytes", tc.file, rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len(), tc.ctype, len(want))
		}
		etag := rec.Header().Get("ETag")
		req := httptest.NewRequest("GET", "/js/"+tc.file, nil)
		req.Header.Set("If-None-Match", etag)
		rec = httptest.NewRecorder()
		h(rec, req)
		if rec.Code != http.StatusNotModified {
			t.Errorf("GET /js/%s with If-None-Match %s: %d, want 304", tc.file, etag, rec.Code)
		}
	}
}
