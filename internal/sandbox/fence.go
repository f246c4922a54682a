package sandbox

import (
	"context"
	"errors"
	"fmt"
)

// Fencer guards an agent's runs in cluster mode, where several daemons share one
// history and each agent is owned by one node at a time (internal/cluster.Fence is
// the implementation). Deps.Fencer is nil on a single host: every run proceeds.
//
// The service calls Hold twice per run: before it finds or creates the sandbox (a
// refused run never starts, and creates nothing) and again after the run, with the
// sandbox's turn held, before it is acknowledged (a run refused then is recorded as an error, its state is not made
// the sandbox's durable head, and the caller gets the refusal instead of the
// result). Runs that never execute (blocked by policy) are not fenced.
type Fencer interface {
	// Hold returns nil while this node owns agentID, claiming the agent first if no
	// node owns it. sandboxID is the sandbox the run uses ("" before it is known:
	// the first call of a run for the agent's default sandbox), for the ownership
	// record. A refusal — another node owns the agent, or took it over since
	// this node claimed it — is an error with a method Fenced() bool returning true,
	// whose message names the node that owns the agent now; it becomes ErrConflict
	// (HTTP 409). Any other error means ownership could not be checked (the
	// database is unreachable); it becomes ErrUnavailable (HTTP 503).
	Hold(ctx context.Context, agentID, sandboxID string) error
}

// fence asks the Fencer, if any, whether this node may run for agentID, and
// classifies its refusal.
func (s *Service) fence(ctx context.Context, agentID, sandboxID string) error {
	if s.fencer == nil {
		return nil
	}
	err := s.fencer.Hold(ctx, agentID, sandboxID)
	if err == nil {
		return nil
	}
	var f interface{ Fenced() bool }
	if errors.As(err, &f) && f.Fenced() {
		return fmt.Errorf("run refused: %w: %w", err, ErrConflict)
	}
	return fmt.Errorf("run refused: cannot check which node owns agent %q: %w: %w", agentID, err, ErrUnavailable)
}
