package httpapi

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"time"

	"github.com/vmexec/vmexec/web"
)

// The web page (package web): GET / is index.html, exactly (any other unknown path is
// still the JSON 404 of the catch-all), and GET /ui/{file} its assets. The page talks
// to the API of the daemon that served it, through the JavaScript client at
// /js/vmexec.js; it holds no data of its own, so it needs no key to load (a key the
// API asks for is entered in the page and kept in the tab's sessionStorage).

// pageCSP keeps the page to its own origin: scripts, styles and requests only from
// the daemon, no inline script, and no framing by another site (a framed page could be
// clicked into running code).
const pageCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"

var webTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".svg":  "image/svg+xml",
}

type webFile struct {
	body  []byte
	etag  string
	ctype string
}

func (s *Server) webRoutes() {
	files := map[string]webFile{}
	err := fs.WalkDir(web.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := web.FS.ReadFile(p)
		if err != nil {
			return err
		}
		ctype, ok := webTypes[path.Ext(p)]
		if !ok {
			return fmt.Errorf("web: %s: no content type for %q", p, path.Ext(p))
		}
		sum := sha256.Sum256(b)
		files[p] = webFile{body: b, etag: `"` + hex.EncodeToString(sum[:8]) + `"`, ctype: ctype}
		return nil
	})
	if err != nil || files["index.html"].body == nil {
		panic(fmt.Sprintf("httpapi: embedded web page is incomplete: %v", err)) // a build defect
	}
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		serveWebFile(w, r, files["index.html"], "index.html")
	})
	s.mux.HandleFunc("GET /ui/{file}", func(w http.ResponseWriter, r *http.Request) {
		name := "ui/" + r.PathValue("file")
		f, ok := files[name]
		if !ok {
			writeError(w, r, s.log, fmt.Errorf("no page asset %s: %w", r.URL.Path, errNoRoute))
			return
		}
		serveWebFile(w, r, f, name)
	})
}

// serveWebFile answers with one embedded file, revalidated by its ETag (the page and
// its modules change together with the binary, so browsers never mix versions).
func serveWebFile(w http.ResponseWriter, r *http.Request, f webFile, name string) {
	h := w.Header()
	h.Set("Content-Type", f.ctype)
	h.Set("ETag", f.etag)
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	if f.ctype == webTypes[".html"] {
		h.Set("Content-Security-Policy", pageCSP)
		h.Set("X-Frame-Options", "DENY")
	}
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(f.body))
}
