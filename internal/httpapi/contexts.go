package httpapi

import (
	"fmt"
	"net/http"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// Interpreter contexts (sandbox/contexts.go): long-lived python and javascript
// interpreters in a sandbox, and their cells. The acting agent comes from the body's
// agent_id (the query's for GET and DELETE) or, for a key scoped to agents, from the
// sandbox's owner, as for the files routes. A cell's run streams as Server-Sent Events
// with Accept: text/event-stream, like exec: stdout and stderr events, a display event
// per rich result, then one result (the body the plain call answers) or one error.

func (s *Server) contextRoutes() {
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/contexts", s.createContext)
	s.mux.HandleFunc("GET /v1/sandboxes/{id}/contexts", s.listContexts)
	s.mux.HandleFunc("DELETE /v1/sandboxes/{id}/contexts/{ctx}", s.deleteContext)
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/contexts/{ctx}/restart", s.restartContext)
	s.mux.HandleFunc("POST /v1/sandboxes/{id}/contexts/{ctx}/run", s.runCell)
}

// EventDisplay is the SSE event of one rich result of a cell (a CellOutput).
const EventDisplay = "display"

// createContextRequest is the body of POST /v1/sandboxes/{id}/contexts.
type createContextRequest struct {
	Language string `json:"language"`
	Cwd      string `json:"cwd,omitempty"`
	AgentID  string `json:"agent_id,omitempty"`
}

// contextList is the body of GET /v1/sandboxes/{id}/contexts.
type contextList struct {
	Contexts []sandbox.Context `json:"contexts"`
}

// agentRequest is a body naming only the acting agent (restart).
type agentRequest struct {
	AgentID string `json:"agent_id,omitempty"`
}

// runCellRequest is the body of POST /v1/sandboxes/{id}/contexts/{ctx}/run.
type runCellRequest struct {
	Code      string            `json:"code"`
	Env       map[string]string `json:"env,omitempty"`
	TimeoutMS int               `json:"timeout_ms,omitempty"`
	// Rollback forces auto-rollback on or off for this cell (absent: the agent's policy).
	Rollback *bool  `json:"rollback,omitempty"`
	AgentID  string `json:"agent_id,omitempty"`
}

// cellResult is the answer of a cell's run.
type cellResult struct {
	RunID          string               `json:"run_id"`
	ContextID      string               `json:"context_id"`
	Stdout         string               `json:"stdout"`
	Stderr         string               `json:"stderr"`
	Results        []sandbox.CellOutput `json:"results"`
	Error          *sandbox.CellError   `json:"error,omitempty"`
	ExecutionCount int                  `json:"execution_count"`
	Verdict        string               `json:"verdict"`
	RolledBack     bool                 `json:"rolled_back"`
	Restarted      bool                 `json:"restarted,omitempty"`
	SnapshotID     string               `json:"snapshot_id,omitempty"`
	Warnings       []string             `json:"warnings,omitempty"`
}

func cellAPI(r sandbox.CellResult) cellResult {
	return cellResult{RunID: r.RunID, ContextID: r.ContextID, Stdout: r.Stdout, Stderr: r.Stderr, Results: r.Results,
		Error: r.Error, ExecutionCount: r.ExecutionCount, Verdict: r.Verdict, RolledBack: r.RolledBack,
		Restarted: r.Restarted, SnapshotID: r.SnapshotID, Warnings: r.Warnings}
}

func (s *Server) createContext(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusCreated, func(r *http.Request, req createContextRequest) (sandbox.Context, error) {
		id := r.PathValue("id")
		agent, err := s.actingAgent(r, req.AgentID, sandboxTarget(id))
		if err != nil {
			return sandbox.Context{}, err
		}
		return s.svc.CreateContext(r.Context(), id, agent, sandbox.ContextSpec{Language: req.Language, Cwd: req.Cwd})
	})(w, r)
}

func (s *Server) listContexts(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, _ struct{}) (contextList, error) {
		id := r.PathValue("id")
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), sandboxTarget(id))
		if err != nil {
			return contextList{}, err
		}
		list, err := s.svc.ListContexts(r.Context(), id, agent)
		return contextList{Contexts: list}, err
	})(w, r)
}

func (s *Server) deleteContext(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusNoContent, func(r *http.Request, _ struct{}) (struct{}, error) {
		id := r.PathValue("id")
		agent, err := s.actingAgent(r, r.URL.Query().Get("agent_id"), sandboxTarget(id))
		if err != nil {
			return struct{}{}, err
		}
		return struct{}{}, s.svc.DeleteContext(r.Context(), id, agent, r.PathValue("ctx"))
	})(w, r)
}

func (s *Server) restartContext(w http.ResponseWriter, r *http.Request) {
	handle(s, http.StatusOK, func(r *http.Request, req agentRequest) (sandbox.Context, error) {
		id := r.PathValue("id")
		agent, err := s.actingAgent(r, req.AgentID, sandboxTarget(id))
		if err != nil {
			return sandbox.Context{}, err
		}
		return s.svc.RestartContext(r.Context(), id, agent, r.PathValue("ctx"))
	})(w, r)
}

func (req runCellRequest) cell() sandbox.CellRequest {
	return sandbox.CellRequest{Code: req.Code, Env: req.Env, TimeoutMS: req.TimeoutMS, Rollback: req.Rollback}
}

// Validate implements the decode rule for request types.
func (req runCellRequest) Validate() error {
	if req.TimeoutMS < 0 {
		return fmt.Errorf("timeout_ms %d is negative", req.TimeoutMS)
	}
	return nil
}

func (s *Server) runCell(w http.ResponseWriter, r *http.Request) {
	if wantsEvents(r) {
		s.runCellEvents(w, r)
		return
	}
	handle(s, http.StatusOK, func(r *http.Request, req runCellRequest) (cellResult, error) {
		id := r.PathValue("id")
		agent, err := s.actingAgent(r, req.AgentID, sandboxTarget(id))
		if err != nil {
			return cellResult{}, err
		}
		res, err := s.svc.RunCell(r.Context(), id, agent, r.PathValue("ctx"), req.cell(), nil)
		return cellAPI(res), err
	})(w, r)
}

// runCellEvents serves a cell's run as a stream (see stream.go).
func (s *Server) runCellEvents(w http.ResponseWriter, r *http.Request) {
	var req runCellRequest
	derr := decode(r, &req) // read the whole body before answering
	es, ctx := s.openStream(w, r)
	defer es.close()
	if derr != nil {
		es.fail(derr)
		return
	}
	id := r.PathValue("id")
	agent, err := s.actingAgent(r, req.AgentID, sandboxTarget(id))
	if err != nil {
		es.fail(err)
		return
	}
	res, err := s.svc.RunCell(ctx, id, agent, r.PathValue("ctx"), req.cell(), func(ev sandbox.CellEvent) {
		switch ev.Kind {
		case sandbox.CellStdout, sandbox.CellStderr:
			es.send(ev.Kind, api.OutputChunk{Data: ev.Text})
		case sandbox.CellResultEvent:
			es.send(EventDisplay, ev.Result)
		}
	})
	if err != nil {
		es.fail(err)
		return
	}
	es.send(api.EventResult, cellAPI(res))
}
