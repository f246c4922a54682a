package httpapi

import (
	"io"
	"mime"
	"net/http"
	"strings"
)

// The diff of one file a run changed (see sandbox.RunChangeDiff).

func (s *Server) changeRoutes() {
	s.mux.HandleFunc("GET /v1/runs/{id}/changes", s.runChangeDiff)
}

// runChangeDiff answers GET /v1/runs/{id}/changes?path=P[&agent_id=A]: JSON
// (api.ChangeDiff) by default, the bare unified diff as text/x-diff when the request
// accepts text/x-diff and not application/json.
func (s *Server) runChangeDiff(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	agent, err := s.actingAgent(r, q.Get("agent_id"), target{"run", r.PathValue("id")})
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	d, err := s.svc.RunChangeDiff(r.Context(), r.PathValue("id"), agent, q.Get("path"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if wantsDiffText(r.Header.Get("Accept")) {
		w.Header().Set("Content-Type", "text/x-diff; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, d.Diff)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// wantsDiffText reports whether an Accept header names text/x-diff (or text/plain)
// and not JSON.
func wantsDiffText(accept string) bool {
	text := false
	for _, part := range strings.Split(accept, ",") {
		mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		switch mt {
		case "application/json":
			return false
		case "text/x-diff", "text/x-patch", "text/plain":
			text = true
		}
	}
	return text
}
