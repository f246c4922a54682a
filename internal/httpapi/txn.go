package httpapi

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// Snapshots, rollback, fork, history and per-agent policy: the transactional half of
// the API. Reads take the acting agent from ?agent_id=, writes from the body; without
// one the caller acts as the operator.

func (s *Server) txnRoutes() {
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/snapshots", s.createSnapshot)
	s.mux.HandleFunc("GET /v1/sandboxes/{id}/snapshots", s.listSnapshots)
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/rollback", s.rollback)
	s.mux.HandleFunc("GET /v1/snapshots/{id}", s.getSnapshot)
	s.mux.HandleFunc("DELETE /v1/snapshots/{id}", s.deleteSnapshot)
	s.mux.HandleFunc("POST /v1/snapshots/{id}/fork", s.fork)
	s.mux.HandleFunc("GET /v1/history", s.history)
	s.mux.HandleFunc("GET /v1/runs/{id}", s.getRun)
	s.mux.HandleFunc("GET /v1/agents/{id}/policy", s.getPolicy)
	s.mux.HandleFunc("PUT /v1/agents/{id}/policy", s.putPolicy)
	// fcctl-web compatible.
	s.mux.HandleFunc("POST /api/vms/{vm}/snapshots", s.compatSnapshot)
	s.mux.HandleFunc("POST /api/vms/{vm}/rollback/{snapshot}", s.compatRollback)
	s.mux.HandleFunc("GET /api/vms/{vm}/history", s.compatHistory)
}

func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusCreated, func(r *http.Request, in api.CreateSnapshotRequest) (api.Snapshot, error) {
		var err error
		if in.AgentID, err = s.actingAgent(r, in.AgentID, sandboxTarget(r.PathValue("id"))); err != nil {
			return api.Snapshot{}, err
		}
		return s.svc.CreateSnapshot(r.Context(), r.PathValue("id"), in)
	})(w, r)
}

func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (api.SnapshotList, error) {
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), sandboxTarget(r.PathValue("id")))
		if err != nil {
			return api.SnapshotList{}, err
		}
		return s.svc.ListSnapshots(r.Context(), r.PathValue("id"), agent)
	})(w, r)
}

func (s *Server) rollback(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, in api.RollbackRequest) (api.RollbackResult, error) {
		var err error
		if in.AgentID, err = s.actingAgent(r, in.AgentID, sandboxTarget(r.PathValue("id"))); err != nil {
			return api.RollbackResult{}, err
		}
		return s.svc.Rollback(r.Context(), r.PathValue("id"), in)
	})(w, r)
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (api.Snapshot, error) {
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), target{"snapshot", r.PathValue("id")})
		if err != nil {
			return api.Snapshot{}, err
		}
		return s.svc.GetSnapshot(r.Context(), r.PathValue("id"), agent)
	})(w, r)
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusNoContent, func(r *http.Request, _ struct{}) (struct{}, error) {
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), target{"snapshot", r.PathValue("id")})
		if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, s.svc.DeleteSnapshot(r.Context(), r.PathValue("id"), agent)
	})(w, r)
}

func (s *Server) fork(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusCreated, func(r *http.Request, in api.ForkRequest) (api.Sandbox, error) {
		var err error
		if in.AgentID, err = s.actingAgent(r, in.AgentID, target{"snapshot", r.PathValue("id")}); err != nil {
			return api.Sandbox{}, err
		}
		release, err := s.reserveSandbox(r, "")
		if err != nil {
			return api.Sandbox{}, err
		}
		defer release()
		return s.svc.Fork(r.Context(), r.PathValue("id"), in)
	})(w, r)
}

func (s *Server) getRun(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (api.Run, error) {
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), target{"run", r.PathValue("id")})
		if err != nil {
			return api.Run{}, err
		}
		return s.svc.GetRunFor(r.Context(), r.PathValue("id"), agent)
	})(w, r)
}

// runFilter reads the history query parameters.
func runFilter(q url.Values) (history.RunFilter, error) {
	f := history.RunFilter{AgentID: q.Get("agent_id"), SandboxID: q.Get("sandbox_id"), Cursor: q.Get("cursor")}
	var err error
	if v := q.Get("failures_only"); v != "" {
		if f.FailuresOnly, err = strconv.ParseBool(v); err != nil {
			return f, fmt.Errorf("failures_only=%q: want true or false: %w", v, sandbox.ErrInvalid)
		}
	}
	if v := q.Get("limit"); v != "" {
		if f.Limit, err = strconv.Atoi(v); err != nil || f.Limit < 1 {
			return f, fmt.Errorf("limit=%q: want a positive number: %w", v, sandbox.ErrInvalid)
		}
	}
	for name, dst := range map[string]*time.Time{"since": &f.Since, "until": &f.Until} {
		if v := q.Get(name); v != "" {
			if *dst, err = time.Parse(time.RFC3339Nano, v); err != nil {
				return f, fmt.Errorf("%s=%q: want an RFC 3339 time: %w", name, v, sandbox.ErrInvalid)
			}
		}
	}
	return f, nil
}

func (s *Server) history(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (api.RunList, error) {
		f, err := runFilter(r.URL.Query())
		if err != nil {
			return api.RunList{}, err
		}
		t := target{}
		if f.SandboxID != "" {
			t = sandboxTarget(f.SandboxID)
		}
		if f.AgentID, err = s.actingAgent(r, f.AgentID, t); err != nil {
			return api.RunList{}, err
		}
		return s.svc.History(r.Context(), f)
	})(w, r)
}

type policyResponse struct {
	AgentID   string         `json:"agent_id"`
	Effective api.ExecPolicy `json:"effective"`
	Own       api.ExecPolicy `json:"own"`
}

func (s *Server) getPolicy(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (policyResponse, error) {
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), target{"agent", r.PathValue("id")})
		if err != nil {
			return policyResponse{}, err
		}
		if err := sandbox.CheckAgent(agent, r.PathValue("id")); err != nil {
			return policyResponse{}, err
		}
		eff, own, err := s.svc.AgentPolicy(r.Context(), r.PathValue("id"))
		return policyResponse{AgentID: r.PathValue("id"), Effective: eff, Own: own}, err
	})(w, r)
}

func (s *Server) putPolicy(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, in api.ExecPolicy) (policyResponse, error) {
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), target{"agent", r.PathValue("id")})
		if err != nil {
			return policyResponse{}, err
		}
		if err := sandbox.CheckAgent(agent, r.PathValue("id")); err != nil {
			return policyResponse{}, err
		}
		eff, err := s.svc.SetAgentPolicy(r.Context(), r.PathValue("id"), in)
		return policyResponse{AgentID: r.PathValue("id"), Effective: eff, Own: in}, err
	})(w, r)
}

// Compatible shapes.

type compatSnapshotRequest struct {
	Name        string `json:"name"`
	Description string `json:"description"`
}

type compatSnapshotResponse struct {
	SnapshotID string    `json:"snapshot_id"`
	VMID       string    `json:"vm_id"`
	Name       string    `json:"name,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
}

func (s *Server) compatSnapshot(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusCreated, func(r *http.Request, in compatSnapshotRequest) (compatSnapshotResponse, error) {
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), sandboxTarget(r.PathValue("vm")))
		if err != nil {
			return compatSnapshotResponse{}, err
		}
		sn, err := s.svc.CreateSnapshot(r.Context(), r.PathValue("vm"), api.CreateSnapshotRequest{Name: in.Name, Description: in.Description, AgentID: agent})
		return compatSnapshotResponse{SnapshotID: sn.ID, VMID: sn.SandboxID, Name: sn.Name, CreatedAt: sn.CreatedAt}, err
	})(w, r)
}

type compatRollbackResponse struct {
	Message    string `json:"message"`
	SnapshotID string `json:"snapshot_id"`
	VMID       string `json:"vm_id"`
}

func (s *Server) compatRollback(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (compatRollbackResponse, error) {
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), sandboxTarget(r.PathValue("vm")))
		if err != nil {
			return compatRollbackResponse{}, err
		}
		res, err := s.svc.Rollback(r.Context(), r.PathValue("vm"), api.RollbackRequest{SnapshotID: r.PathValue("snapshot"), AgentID: agent})
		return compatRollbackResponse{Message: res.Message, SnapshotID: res.SnapshotID, VMID: res.SandboxID}, err
	})(w, r)
}

type compatHistoryEntry struct {
	ID         string    `json:"id"`
	Command    string    `json:"command"`
	Language   string    `json:"language"`
	Timestamp  time.Time `json:"timestamp"`
	Success    bool      `json:"success"`
	ExitCode   int       `json:"exit_code"`
	Stdout     string    `json:"stdout"`
	Stderr     string    `json:"stderr"`
	SnapshotID *string   `json:"snapshot_id"` // taken before the run; null if none
	Verdict    string    `json:"verdict"`
	RolledBack bool      `json:"rolled_back"`
}

// nonEmpty is s, or nil for "" (a JSON null where clients expect the key).
func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

type compatHistory struct {
	History []compatHistoryEntry `json:"history"`
	Total   int                  `json:"total"`
}

func (s *Server) compatHistory(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (compatHistory, error) {
		vm := r.PathValue("vm")
		f, err := runFilter(r.URL.Query())
		if err != nil {
			return compatHistory{}, err
		}
		if f.AgentID, err = s.actingAgent(r, f.AgentID, sandboxTarget(vm)); err != nil {
			return compatHistory{}, err
		}
		if _, err := s.svc.GetFor(vm, f.AgentID); err != nil {
			return compatHistory{}, err
		}
		f.SandboxID = vm // with agent_id, History checks that the sandbox is the agent's
		list, err := s.svc.History(r.Context(), f)
		out := compatHistory{History: make([]compatHistoryEntry, 0, len(list.Runs)), Total: list.Total}
		for _, run := range list.Runs {
			out.History = append(out.History, compatHistoryEntry{ID: run.ID, Command: run.Code, Language: run.Language,
				Timestamp: run.StartedAt, Success: run.Verdict == api.VerdictOK, ExitCode: run.ExitCode, Stdout: run.Stdout,
				Stderr: run.Stderr, SnapshotID: nonEmpty(run.PreSnapshotID), Verdict: run.Verdict, RolledBack: run.RolledBack})
		}
		return out, err
	})(w, r)
}
