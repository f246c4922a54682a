package httpapi

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"time"

	jsclient "github.com/vmexec/vmexec/clients/js"
)

// The JavaScript client, served so that pages (the web UI, anyone's) can
// `import ... from "http://vmexec:8080/js/vmexec.js"` the client of the daemon they
// talk to, at its version.

func (s *Server) jsRoutes() {
	s.mux.HandleFunc("GET /js/vmexec.js", staticFile("vmexec.js", "text/javascript; charset=utf-8"))
	s.mux.HandleFunc("GET /js/index.d.ts", staticFile("index.d.ts", "application/typescript; charset=utf-8"))
}

// staticFile serves one embedded file of the JavaScript client with an ETag of its
// content, so browsers revalidate cheaply (If-None-Match → 304) and never keep a stale
// client after an upgrade.
func staticFile(name, contentType string) http.HandlerFunc {
	b, err := jsclient.FS.ReadFile(name)
	if err != nil {
		panic("httpapi: embedded JavaScript client lacks " + name) // a build defect, not a runtime condition
	}
	sum := sha256.Sum256(b)
	etag := `"` + hex.EncodeToString(sum[:8]) + `"`
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("ETag", etag)
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
	}
}
