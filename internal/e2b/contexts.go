package e2b

import (
	"context"
	"encoding/json"

	"github.com/vmexec/vmexec/internal/sandbox"
)

// serviceInterpreter adapts the service's interpreter contexts (internal/sandbox,
// contexts.go) to the interface the code interpreter's routes use.
func serviceInterpreter(s *sandbox.Service) interpreter {
	if s == nil {
		return nil
	}
	return svcInterpreter{s}
}

type svcInterpreter struct{ s *sandbox.Service }

func info(c sandbox.Context) ctxInfo { return ctxInfo{ID: c.ID, Language: c.Language, Cwd: c.Cwd} }

func (v svcInterpreter) CreateContext(ctx context.Context, sandboxID, agentID, language, cwd string) (ctxInfo, error) {
	c, err := v.s.CreateContext(ctx, sandboxID, agentID, sandbox.ContextSpec{Language: language, Cwd: cwd})
	return info(c), err
}

func (v svcInterpreter) ListContexts(ctx context.Context, sandboxID, agentID string) ([]ctxInfo, error) {
	list, err := v.s.ListContexts(ctx, sandboxID, agentID)
	out := make([]ctxInfo, 0, len(list))
	for _, c := range list {
		out = append(out, info(c))
	}
	return out, err
}

func (v svcInterpreter) DeleteContext(ctx context.Context, sandboxID, agentID, id string) error {
	return v.s.DeleteContext(ctx, sandboxID, agentID, id)
}

func (v svcInterpreter) RestartContext(ctx context.Context, sandboxID, agentID, id string) (ctxInfo, error) {
	c, err := v.s.RestartContext(ctx, sandboxID, agentID, id)
	return info(c), err
}

func cellErr(e *sandbox.CellError) *cellError {
	if e == nil {
		return nil
	}
	return &cellError{Name: e.Name, Value: e.Value, Traceback: e.Traceback}
}

func (v svcInterpreter) RunCell(ctx context.Context, sandboxID, agentID string, c cell, emit func(cellEvent)) (cellResult, error) {
	req := sandbox.CellRequest{Code: c.Code, Env: c.Env, TimeoutMS: c.TimeoutMS, Rollback: c.Rollback, Language: c.Language}
	res, err := v.s.RunCell(ctx, sandboxID, agentID, c.ContextID, req, func(ev sandbox.CellEvent) {
		out := cellEvent{Kind: ev.Kind, Text: ev.Text, Error: cellErr(ev.Error)}
		if ev.Result != nil {
			out.Result, _ = json.Marshal(ev.Result)
		}
		emit(out)
	})
	return cellResult{ExecutionCount: res.ExecutionCount, Error: cellErr(res.Error), Verdict: res.Verdict}, err
}
