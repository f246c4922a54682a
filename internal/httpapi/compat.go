package httpapi

import (
	"net/http"

	"github.com/vmexec/vmexec/api"
)

// The fcctl-web compatible routes: same paths and JSON shapes as the seed's server.

func (s *Server) compatExecute(w http.ResponseWriter, r *http.Request) {
	var req api.CompatExecRequest
	if err := decode(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	lim := api.Limits{TimeoutMS: req.TimeoutMS}
	if lim.TimeoutMS == 0 && req.TimeoutSeconds > 0 {
		lim.TimeoutMS = int64(req.TimeoutSeconds * 1000)
	}
	res, ok := s.runExec(w, r, api.ExecRequest{
		AgentID: req.AgentID, SandboxID: req.VMID, Language: req.Language, Code: req.Code,
		WorkDir: req.WorkingDir, Metadata: req.Metadata, Limits: lim,
	})
	if ok {
		writeJSON(w, http.StatusOK, api.CompatExecResponse{ExecResult: *res, VMID: res.SandboxID})
	}
}

func (s *Server) compatVM(sb api.Sandbox) api.CompatVM {
	return api.CompatVM{ID: sb.ID, Name: sb.Name, Status: sb.Status, VMType: sb.Backend, CreatedAt: sb.CreatedAt, UpdatedAt: sb.LastUsedAt}
}

func (s *Server) compatCreateVM(w http.ResponseWriter, r *http.Request) {
	var req api.CompatCreateVM
	if err := decode(r, &req); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	sb, err := s.svc.Create(r.Context(), api.CreateSandboxRequest{Name: req.Name})
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusCreated, s.compatVM(sb))
}

func (s *Server) compatListVMs(w http.ResponseWriter, r *http.Request) {
	list := s.svc.List()
	out := api.CompatVMList{VMs: make([]api.CompatVM, 0, len(list)), Total: len(list)}
	for _, sb := range list {
		out.VMs = append(out.VMs, s.compatVM(sb))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) compatGetVM(w http.ResponseWriter, r *http.Request) {
	sb, err := s.svc.Get(r.PathValue("id"))
	if err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, s.compatVM(sb))
}

func (s *Server) compatDeleteVM(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.svc.Delete(r.Context(), id); err != nil {
		writeError(w, r, s.log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"message": "VM deleted", "id": id})
}
