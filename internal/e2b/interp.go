package e2b

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The code interpreter (E2b-Sandbox-Port 49999): /execute runs a cell in an
// interpreter context and streams its outcome as NDJSON; /contexts manages contexts.
// Both are the service's interpreter contexts (internal/sandbox, contexts.go),
// reached through the interpreter interface below so that this file knows only what
// it needs of them.

// ctxInfo is a context as the SDK sees it (its JSON is the SDK's Context).
type ctxInfo struct {
	ID       string `json:"id"`
	Language string `json:"language"`
	Cwd      string `json:"cwd"`
}

// cell is one /execute request for the service.
type cell struct {
	ContextID string // "" = the sandbox's default context of Language
	Language  string // canonical: python, javascript
	Code      string
	Env       map[string]string
	TimeoutMS int
	Rollback  *bool // nil: the agent's policy
}

// cellEvent is streamed while the cell runs. Result is the result's MIME fields as
// the service encodes them (text, html, png, …, is_main_result).
type cellEvent struct {
	Kind   string // stdout, stderr, result, error
	Text   string
	Result json.RawMessage
	Error  *cellError
}

type cellError struct {
	Name      string `json:"name"`
	Value     string `json:"value"`
	Traceback string `json:"traceback"`
}

type cellResult struct {
	ExecutionCount int
	Error          *cellError
	Verdict        string
}

// interpreter is the part of the service's contexts API the routes use.
type interpreter interface {
	CreateContext(ctx context.Context, sandboxID, agentID, language, cwd string) (ctxInfo, error)
	ListContexts(ctx context.Context, sandboxID, agentID string) ([]ctxInfo, error)
	DeleteContext(ctx context.Context, sandboxID, agentID, id string) error
	RestartContext(ctx context.Context, sandboxID, agentID, id string) (ctxInfo, error)
	RunCell(ctx context.Context, sandboxID, agentID string, c cell, emit func(cellEvent)) (cellResult, error)
}

// interpLanguage maps the SDK's language to a context language: python by default,
// js and ts (run as JavaScript) to javascript.
func interpLanguage(l string) (string, error) {
	switch strings.ToLower(l) {
	case "", "python", "python3", "py":
		return "python", nil
	case "javascript", "js", "typescript", "ts", "node":
		return "javascript", nil
	}
	return "", fmt.Errorf("language %q: the code interpreter runs python and javascript (typescript as javascript): %w", l, errUnsupported)
}

func (h *Handler) needInterp(w http.ResponseWriter, r *http.Request) bool {
	if h.interp == nil {
		h.writeAPIError(w, r, fmt.Errorf("interpreter contexts are not available in this build: %w", errUnsupported))
		return false
	}
	return true
}

// execute runs one cell and streams, one JSON object a line: stdout, stderr,
// result and error as they come, then number_of_executions and end_of_execution.
// Errors before the cell starts (unknown context, bad language) are a status: 404
// is the SDK's NotFoundError. The cell's time limit is the server's maximum: the
// SDK bounds it itself (timeoutMs), by closing the request, which interrupts it.
func (h *Handler) execute(w http.ResponseWriter, r *http.Request) {
	if !h.needInterp(w, r) {
		return
	}
	var in struct {
		Code      string            `json:"code"`
		ContextID string            `json:"context_id"`
		Language  string            `json:"language"`
		EnvVars   map[string]string `json:"env_vars"`
	}
	if err := decodeJSON(r, &in); err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	if in.ContextID != "" && in.Language != "" {
		h.writeAPIError(w, r, fmt.Errorf("give context_id or language, not both: %w", errBadRequest))
		return
	}
	lang, err := interpLanguage(in.Language)
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	rec := recOf(r)
	env := maps.Clone(rec.EnvVars)
	if env == nil {
		env = map[string]string{}
	}
	maps.Copy(env, in.EnvVars)
	_, max := h.svc.Limits()
	c := cell{ContextID: in.ContextID, Language: lang, Code: in.Code, Env: env, TimeoutMS: int(max.TimeoutMS)}
	if !h.rollbackFor(r.Context(), rec.AgentID) {
		no := false
		c.Rollback = &no
	}

	out := &ndjson{w: w, rc: http.NewResponseController(w)}
	res, err := h.interp.RunCell(r.Context(), rec.ID, rec.AgentID, c, func(ev cellEvent) {
		ts := time.Now().UTC().Format(time.RFC3339Nano)
		switch ev.Kind {
		case "stdout", "stderr":
			out.line(map[string]any{"type": ev.Kind, "text": ev.Text, "timestamp": ts})
		case "result":
			out.result(ev.Result)
		case "error":
			if ev.Error != nil {
				out.errored = true
				out.line(map[string]any{"type": "error", "name": ev.Error.Name, "value": ev.Error.Value, "traceback": ev.Error.Traceback})
			}
		}
	})
	if err != nil {
		if !out.started() {
			h.writeAPIError(w, r, err)
			return
		}
		out.line(map[string]any{"type": "error", "name": "vmexecError", "value": err.Error(), "traceback": ""})
		return
	}
	if !out.errored && res.Error != nil {
		out.line(map[string]any{"type": "error", "name": res.Error.Name, "value": res.Error.Value, "traceback": res.Error.Traceback})
	} else if !out.errored && res.Verdict != "" && res.Verdict != "ok" && res.Verdict != "error" {
		out.line(map[string]any{"type": "error", "name": "vmexec." + res.Verdict, "value": "the cell ended with verdict " + res.Verdict, "traceback": ""})
	}
	out.line(map[string]any{"type": "number_of_executions", "execution_count": res.ExecutionCount})
	out.line(map[string]any{"type": "end_of_execution"})
}

// ndjson writes the /execute stream, sending the 200 with the first line.
type ndjson struct {
	mu      sync.Mutex
	w       http.ResponseWriter
	rc      *http.ResponseController
	begun   bool
	errored bool
}

func (n *ndjson) started() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.begun
}

func (n *ndjson) line(v any) {
	b, _ := json.Marshal(v)
	n.write(b)
}

// result writes a result line: the service's MIME fields with "type": "result".
func (n *ndjson) result(raw json.RawMessage) {
	m := map[string]any{}
	json.Unmarshal(raw, &m)
	m["type"] = "result"
	n.line(m)
}

func (n *ndjson) write(b []byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.begun {
		n.w.Header().Set("Content-Type", "application/x-ndjson")
		n.w.WriteHeader(http.StatusOK)
		n.begun = true
	}
	n.w.Write(append(b, '\n'))
	n.rc.Flush()
}

func (h *Handler) createContext(w http.ResponseWriter, r *http.Request) {
	if !h.needInterp(w, r) {
		return
	}
	var in struct {
		Language string `json:"language"`
		Cwd      string `json:"cwd"`
	}
	if err := decodeJSON(r, &in); err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	lang, err := interpLanguage(in.Language)
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	rec := recOf(r)
	c, err := h.interp.CreateContext(r.Context(), rec.ID, rec.AgentID, lang, in.Cwd)
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (h *Handler) listContexts(w http.ResponseWriter, r *http.Request) {
	if !h.needInterp(w, r) {
		return
	}
	rec := recOf(r)
	list, err := h.interp.ListContexts(r.Context(), rec.ID, rec.AgentID)
	if err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	if list == nil {
		list = []ctxInfo{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (h *Handler) deleteContext(w http.ResponseWriter, r *http.Request) {
	if !h.needInterp(w, r) {
		return
	}
	rec := recOf(r)
	if err := h.interp.DeleteContext(r.Context(), rec.ID, rec.AgentID, r.PathValue("id")); err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) restartContext(w http.ResponseWriter, r *http.Request) {
	if !h.needInterp(w, r) {
		return
	}
	rec := recOf(r)
	if _, err := h.interp.RestartContext(r.Context(), rec.ID, rec.AgentID, r.PathValue("id")); err != nil {
		h.writeAPIError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
