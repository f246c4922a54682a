package httpapi

import (
	"net/http"
	"time"

	"github.com/vmexec/vmexec/api"
)

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.Health{
		Service: "vmexec", Status: "healthy", Timestamp: time.Now().UTC(), Version: s.version,
		Backend: s.svc.BackendName(), Sandboxes: s.svc.Count(),
	})
}

func (s *Server) languages(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string][]string{"languages": api.Languages})
}

func (s *Server) listBackends(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.BackendList{Backends: s.svc.Backends()})
}

// runExec runs one request, as the agent actingAgent settles, and counts it in the
// metrics.
func (s *Server) runExec(r *http.Request, req api.ExecRequest) (*api.ExecResult, error) {
	release, err := s.prepareRun(r, &req.AgentID, &req.SandboxID)
	if err != nil {
		return nil, err
	}
	defer release()
	res, err := s.svc.Exec(r.Context(), req)
	if err == nil {
		s.metrics.observe(res)
	}
	return res, err
}

func (s *Server) exec(w http.ResponseWriter, r *http.Request) {
	if wantsEvents(r) {
		s.execEvents(w, r)
		return
	}
	handle(s, http.StatusOK, func(r *http.Request, req api.ExecRequest) (*api.ExecResult, error) {
		return s.runExec(r, req)
	})(w, r)
}

func (s *Server) execIn(w http.ResponseWriter, r *http.Request) {
	if wantsEvents(r) {
		s.execEvents(w, r)
		return
	}
	handle(s, http.StatusOK, func(r *http.Request, req api.ExecRequest) (*api.ExecResult, error) {
		req.SandboxID = r.PathValue("id")
		return s.runExec(r, req)
	})(w, r)
}

func (s *Server) createSandbox(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusCreated, func(r *http.Request, req api.CreateSandboxRequest) (api.Sandbox, error) {
		var err error
		if req.AgentID, err = s.actingAgent(r, req.AgentID, target{}); err != nil {
			return api.Sandbox{}, err
		}
		release, err := s.reserveSandbox(r, "")
		if err != nil {
			return api.Sandbox{}, err
		}
		defer release()
		return s.svc.Create(r.Context(), req)
	})(w, r)
}

func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request) {
	list, err := s.scopedSandboxes(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, api.SandboxList{Sandboxes: list})
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (api.Sandbox, error) {
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), sandboxTarget(r.PathValue("id")))
		if err != nil {
			return api.Sandbox{}, err
		}
		return s.svc.GetFor(r.PathValue("id"), agent)
	})(w, r)
}

func (s *Server) deleteSandbox(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusNoContent, func(r *http.Request, _ struct{}) (struct{}, error) {
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), sandboxTarget(r.PathValue("id")))
		if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, s.svc.DeleteFor(r.Context(), r.PathValue("id"), agent)
	})(w, r)
}
