package httpapi

import (
	"net/http"
	"time"

	"github.com/vmexec/vmexec/api"
)

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.Health{
		Service: "vmexec", Status: "healthy", Timestamp: time.Now().UTC(), Version: s.version,
		Backend: s.svc.BackendName(), Sandboxes: len(s.svc.List()),
	})
}

func (s *Server) languages(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string][]string{"languages": api.Languages})
}

func (s *Server) runExec(w http.ResponseWriter, r *http.Request, req api.ExecRequest) (*api.ExecResult, bool) {
	res, err := s.svc.Exec(r.Context(), req)
	if err != nil {
		writeError(w, r, s.log, err)
		return nil, false
	}
	s.metrics.observe(res)
	return res, true
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	var req api.ExecRequest
	if err := decode(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	if res, ok := s.runExec(w, r, req); ok {
		writeJSON(w, http.StatusOK, res)
	}
}

func (s *Server) execIn(w http.ResponseWriter, r *http.Request) {
	var req api.ExecRequest
	if err := decode(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	req.SandboxID = r.PathValue("id")
	if res, ok := s.runExec(w, r, req); ok {
		writeJSON(w, http.StatusOK, res)
	}
}

func (s *Server) createSandbox(w http.ResponseWriter, r *http.Request) {
	var req api.CreateSandboxRequest
	if err := decode(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	sb, err := s.svc.Create(r.Context(), req)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusCreated, sb)
}

func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.SandboxList{Sandboxes: s.svc.List()})
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request) {
	sb, err := s.svc.Get(r.PathValue("id"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, sb)
}

func (s *Server) deleteSandbox(w http.ResponseWriter, r *http.Request) {
	if err := s.svc.Delete(r.Context(), r.PathValue("id")); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
