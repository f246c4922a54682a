package httpapi

import (
	"net/http"

	"github.com/vmexec/vmexec/api"
)

// The fcctl-web compatible routes: same paths and JSON shapes as the seed's server.

func (s *Server) compatExecute(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, req api.CompatExecRequest) (api.CompatExecResponse, error) {
		res, err := s.runExec(r, api.ExecRequest{
			AgentID: req.AgentID, SandboxID: req.VMID, Language: req.Language, Code: req.Code,
			WorkDir: req.WorkingDir, Metadata: req.Metadata, Limits: req.Limits(),
		})
		if err != nil {
			return api.CompatExecResponse{}, err
		}
		return api.CompatExecResponse{ExecResult: *res, VMID: res.SandboxID}, nil
	})(w, r)
}

func compatVM(sb api.Sandbox) api.CompatVM {
	return api.CompatVM{ID: sb.ID, Name: sb.Name, Status: sb.Status, VMType: sb.Backend, CreatedAt: sb.CreatedAt, UpdatedAt: sb.LastUsedAt}
}

func (s *Server) compatCreateVM(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusCreated, func(r *http.Request, req api.CompatCreateVM) (api.CompatVM, error) {
		be := req.VMType
		if be == "default" { // vm_type names a backend or a template; "default" is the template
			be = ""
		}
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), target{}) // fcctl-web's body has no agent
		if err != nil {
			return api.CompatVM{}, err
		}
		release, err := s.reserveSandbox(r, "")
		if err != nil {
			return api.CompatVM{}, err
		}
		defer release()
		sb, err := s.svc.Create(r.Context(), api.CreateSandboxRequest{Name: req.Name, Backend: be, AgentID: agent})
		return compatVM(sb), err
	})(w, r)
}

func (s *Server) compatListVMs(w http.ResponseWriter, r *http.Request) {
	list, err := s.scopedSandboxes(r)
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	out := api.CompatVMList{VMs: make([]api.CompatVM, 0, len(list)), Total: len(list)}
	for _, sb := range list {
		out.VMs = append(out.VMs, compatVM(sb))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) compatGetVM(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (api.CompatVM, error) {
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), sandboxTarget(r.PathValue("id")))
		if err != nil {
			return api.CompatVM{}, err
		}
		sb, err := s.svc.GetFor(r.PathValue("id"), agent)
		return compatVM(sb), err
	})(w, r)
}

func (s *Server) compatDeleteVM(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (map[string]string, error) {
		id := r.PathValue("id")
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), sandboxTarget(id))
		if err != nil {
			return nil, err
		}
		return map[string]string{"message": "VM deleted", "id": id}, s.svc.DeleteFor(r.Context(), id, agent)
	})(w, r)
}
