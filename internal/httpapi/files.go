package httpapi

import (
	"github.com/vmexec/vmexec/internal/e2b"

	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// Files in and out of a sandbox: raw bodies, streamed both ways (never held whole),
// paths and the acting agent in the query (?path=, ?agent_id=). An upload is bounded
// by the server's max_file_bytes maximum, not by MaxBodyBytes.

func (s *Server) fileRoutes() {
	s.mux.HandleFunc("PUT /v1/sandboxes/{id}/files", s.putFile)
	s.mux.HandleFunc("GET /v1/sandboxes/{id}/files", s.getFile)
	s.mux.HandleFunc("DELETE /v1/sandboxes/{id}/files", s.deleteFile)
	s.mux.HandleFunc("GET /v1/sandboxes/{id}/files/list", s.listFiles)
}

// isUpload reports a request whose body is a file (see putFile), exempt from
// MaxBodyBytes.
func isUpload(r *http.Request) bool {
	return r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v1/sandboxes/") && strings.HasSuffix(r.URL.Path, "/files") ||
		r.Method == http.MethodPost && r.URL.Path == e2b.EnvdPrefix+"/files" // checked in internal/e2b

}

func (s *Server) putFile(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if max := s.svc.MaxFileBytes(); r.ContentLength > max {
		writeError(w, r, s.log, fmt.Errorf("the body is %d bytes, over the %d byte file limit: %w", r.ContentLength, max, sandbox.ErrTooLarge))
		return
	}
	var mode uint64
	if m := q.Get("mode"); m != "" {
		var err error
		if mode, err = strconv.ParseUint(m, 8, 32); err != nil {
			writeError(w, r, s.log, fmt.Errorf("mode %q: want octal permission bits such as 644: %w", m, sandbox.ErrInvalid))
			return
		}
	}
	agent, err := s.actingAgent(r, q.Get("agent_id"), sandboxTarget(r.PathValue("id")))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	body := &deadlineReader{r: r.Body, rc: http.NewResponseController(w)}
	info, err := s.svc.PutFile(r.Context(), r.PathValue("id"), agent, q.Get("path"), uint32(mode), body)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

// errStreaming marks a failure after a file's bytes began to go out: the status is
// sent, so the connection is cut short instead (the client sees fewer bytes than
// Content-Length said).
type errStreaming struct{ err error }

func (e errStreaming) Error() string { return e.err.Error() }

func (s *Server) getFile(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	id, p := r.PathValue("id"), q.Get("path")
	agent, err := s.actingAgent(r, q.Get("agent_id"), sandboxTarget(id))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if r.Method == http.MethodHead {
		info, err := s.svc.StatFile(r.Context(), id, agent, p)
		if err == nil && info.Type == api.FileTypeDir {
			err = fmt.Errorf("%s is a directory: %w", info.Path, sandbox.ErrInvalid)
		}
		if err != nil {
			writeError(w, r, s.log, err)
			return
		}
		fileHeaders(w, info)
		w.WriteHeader(http.StatusOK)
		return
	}
	err = s.svc.OpenFile(r.Context(), id, agent, p, func(info api.FileInfo, body io.Reader) error {
		fileHeaders(w, info)
		w.WriteHeader(http.StatusOK)
		if _, err := io.CopyN(&deadlineWriter{w: w, rc: http.NewResponseController(w)}, body, info.Size); err != nil {
			return errStreaming{err}
		}
		return nil
	})
	var es errStreaming
	switch {
	case errors.As(err, &es):
		s.log.Warn("file download cut short", "sandbox", id, "path", p, "err", es.err)
	case err != nil:
		writeError(w, r, s.log, err)
	}
}

// A file transfer holds its sandbox (other requests queue behind it), so a client that
// stops sending or reading for writeTimeout is cut off rather than waited for.
type deadlineReader struct {
	r  io.Reader
	rc *http.ResponseController
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	d.rc.SetReadDeadline(time.Now().Add(writeTimeout)) // not every connection supports it
	return d.r.Read(p)
}

type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.rc.SetWriteDeadline(time.Now().Add(writeTimeout))
	return d.w.Write(p)
}

func fileHeaders(w http.ResponseWriter, info api.FileInfo) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(info.Size, 10))
	h.Set("Last-Modified", info.MTime.UTC().Format(http.TimeFormat))
	h.Set("X-Vmexec-File-Mode", strconv.FormatUint(uint64(info.Mode), 8))
}

func (s *Server) listFiles(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (api.FileList, error) {
		q := r.URL.Query()
		depth := 0
		if d := q.Get("depth"); d != "" {
			var err error
			if depth, err = strconv.Atoi(d); err != nil {
				return api.FileList{}, fmt.Errorf("depth %q: want a number: %w", d, sandbox.ErrInvalid)
			}
		}
		agent, err := s.actingAgent(r, q.Get("agent_id"), sandboxTarget(r.PathValue("id")))
		if err != nil {
			return api.FileList{}, err
		}
		return s.svc.ListFiles(r.Context(), r.PathValue("id"), agent, q.Get("path"), depth)
	})(w, r)
}

func (s *Server) deleteFile(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusNoContent, func(r *http.Request, _ struct{}) (struct{}, error) {
		q := r.URL.Query()
		recursive, err := queryBool(q.Get("recursive"))
		if err != nil {
			return struct{}{}, err
		}
		agent, err := s.actingAgent(r, q.Get("agent_id"), sandboxTarget(r.PathValue("id")))
		if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, s.svc.RemoveFile(r.Context(), r.PathValue("id"), agent, q.Get("path"), recursive)
	})(w, r)
}

func queryBool(v string) (bool, error) {
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%q: want true or false: %w", v, sandbox.ErrInvalid)
	}
	return b, nil
}
