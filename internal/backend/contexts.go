package backend

import (
	"context"

	"github.com/vmexec/vmexec/internal/agentproto"
)

// Interpreters is the optional capability of keeping interpreter contexts in a
// sandbox (see agentproto's contexts.go): long-lived interpreters whose cells run
// through Exec with ExecRequest.Context set. A context lives in the sandbox's memory,
// so snapshots, restores and forks carry it. Errors are those of the file methods: the
// guest's refusals wrap agentproto.ErrInvalidRequest, a dead sandbox is a *DeadError.
type Interpreters interface {
	// StartContext starts a context (one by that id already running is returned).
	StartContext(ctx context.Context, spec agentproto.ContextSpec) (agentproto.ContextInfo, error)
	// StopContext kills a context's interpreter; an unknown id is not an error.
	StopContext(ctx context.Context, id string) error
	// ListContexts lists the live contexts, oldest first.
	ListContexts(ctx context.Context) ([]agentproto.ContextInfo, error)
}

// StartContext implements Interpreters.
func (g *GuestFiles) StartContext(ctx context.Context, spec agentproto.ContextSpec) (info agentproto.ContextInfo, err error) {
	err = g.Do(ctx, func() error {
		info, err = g.Client.StartContext(ctx, spec)
		return err
	})
	return info, err
}

// StopContext implements Interpreters.
func (g *GuestFiles) StopContext(ctx context.Context, id string) error {
	return g.Do(ctx, func() error { return g.Client.StopContext(ctx, id) })
}

// ListContexts implements Interpreters.
func (g *GuestFiles) ListContexts(ctx context.Context) (list []agentproto.ContextInfo, err error) {
	err = g.Do(ctx, func() error {
		list, err = g.Client.ListContexts(ctx)
		return err
	})
	return list, err
}
