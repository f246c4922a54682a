package sandbox

import (
	"context"
	"errors"
	"fmt"
)

// Fencer guards an agent's runs and its sandboxes' durable state in cluster mode,
// where several daemons share one history and each agent is owned by one node at a
// time (internal/cluster.Fence is the implementation). Deps.Fencer is nil on a
// single host: nothing is checked.
//
// The service calls Hold before a run finds or creates its sandbox (a refused run
// never starts, and creates nothing); again after the run, with the sandbox's turn
// held, before it is acknowledged (a run refused then is recorded as an error, its
// state is not made the sandbox's durable head, and the caller gets the refusal
// instead of the result); and before it writes a sandbox's durable state (current
// snapshot, head run) to the shared history, which it skips, logging, when refused.
// Runs that never execute (blocked by policy) are not fenced, nor are the file,
// snapshot and rollback routes themselves.
type Fencer interface {
	// Hold returns nil while this node owns agentID, claiming the agent first if no
	// node owns it. sandboxID, when not empty, is the agent's default sandbox, for
	// the ownership record ("" when not known yet, or not the default sandbox). A refusal — another node owns the agent, or took it over since
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
