package sandbox

import (
	"context"
	"fmt"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history"
)

// Adoption (cluster mode): a router took an agent over for this node, because the
// node that owned it died, and asks this node to become the agent's home. The
// agent's sandboxes are known from the shared history (their records and current
// snapshots, written by the old owner while it held the agent); adopting loads them
// here, discards whatever stale copy this node had of them (a node that once owned
// the agent), and resumes the agent's default sandbox from its current snapshot,
// fetched from the snapshot store when this node lacks its image (store.go). The
// next run's result says it was taken over.
//
// Adopt is idempotent per epoch: routers racing over one takeover may all call it;
// the first does the work, the others find it done. A run that reaches this node
// for an agent it never heard of (a router that took the agent over died before
// asking for the adoption) loads the agent's sandboxes the same way first
// (adoptKnown), so it resumes the agent's state rather than starting afresh.

// epochHolder is the Fencer's optional report of the epoch this node holds an
// agent at (cluster.Fence has it).
type epochHolder interface{ Epoch(agent string) int64 }

// Adopt makes this node the live home of agentID, which it holds at epoch.
func (s *Service) Adopt(ctx context.Context, agentID string, epoch int64) (api.AdoptResult, error) {
	out := api.AdoptResult{AgentID: agentID, Epoch: epoch}
	if agentID == "" || epoch < 1 {
		return out, fmt.Errorf("adopt: agent_id and an epoch ≥ 1 are required: %w", ErrInvalid)
	}
	if s.fencer == nil {
		return out, fmt.Errorf("adopt: this daemon is not in cluster mode (no cluster.postgres_url), so it adopts nothing: %w", ErrUnsupported)
	}
	if err := s.fence(ctx, agentID, ""); err != nil {
		return out, err
	}
	if f, ok := s.fencer.(epochHolder); ok {
		if held := f.Epoch(agentID); held != epoch {
			return out, fmt.Errorf("adopt agent %s at epoch %d: this node holds it at epoch %d: %w", agentID, epoch, held, ErrConflict)
		}
	}
	ents, err := s.loadAgent(ctx, agentID, epoch)
	if err != nil {
		return out, err
	}
	s.mu.Lock()
	def := s.sandboxes[s.byAgent[agentID]]
	s.mu.Unlock()
	if def == nil {
		s.log.Info("adopted an agent with no sandbox yet", "agent", agentID, "epoch", epoch)
		return out, nil // nothing ran for it yet: its first run creates its sandbox here
	}
	if err := def.lock(ctx); err != nil {
		return out, err
	}
	defer def.unlock()
	if def.deleted {
		return out, fmt.Errorf("adopt agent %s: sandbox %s: %w", agentID, def.id, def.gone)
	}
	out.SandboxID, out.SnapshotID = def.id, def.current
	fresh, err := def.resume(ctx)
	if err != nil {
		return out, fmt.Errorf("adopt agent %s: resuming sandbox %s: %w", agentID, def.id, err)
	}
	out.Restored = !fresh && out.SnapshotID != ""
	node := ""
	if n, ok := s.fencer.(interface{ Node() string }); ok {
		node = n.Node()
	}
	if out.Restored {
		def.note(fmt.Sprintf("agent %s was taken over by node %s (epoch %d) after its node stopped answering; its sandbox was restored from snapshot %s", agentID, node, epoch, out.SnapshotID))
	} else {
		def.note(fmt.Sprintf("agent %s was taken over by node %s (epoch %d) after its node stopped answering; it had no snapshot to restore, so this sandbox is fresh", agentID, node, epoch))
	}
	s.log.Info("adopted agent", "agent", agentID, "epoch", epoch, "sandbox", def.id, "snapshot", out.SnapshotID, "restored", out.Restored, "sandboxes", len(ents))
	return out, nil
}

// loadAgent brings agentID's sandboxes from the history into this node's maps, as
// suspended entries resuming from their current snapshots, replacing any copy this
// node kept from an earlier epoch. Once per epoch: later calls change nothing.
func (s *Service) loadAgent(ctx context.Context, agentID string, epoch int64) ([]*entry, error) {
	s.adoptMu.Lock()
	defer s.adoptMu.Unlock()
	if s.adopted == nil {
		s.adopted = map[string]int64{}
	}
	if s.adopted[agentID] == epoch && epoch != 0 {
		return nil, nil
	}
	recs, err := s.hist.ListSandboxes(ctx)
	if err != nil {
		return nil, fmt.Errorf("adopt agent %s: list sandboxes: %w", agentID, err)
	}
	var out []*entry
	for _, r := range recs {
		if r.AgentID != agentID {
			continue
		}
		if _, ok := s.backends[r.Backend]; !ok {
			s.log.Warn("an adopted agent's sandbox is of a backend not enabled here", "agent", agentID, "sandbox", r.ID, "backend", r.Backend)
			continue
		}
		if e := s.refresh(ctx, r, epoch != 0); e != nil {
			out = append(out, e)
		}
	}
	if epoch != 0 {
		s.adopted[agentID] = epoch
	}
	return out, nil
}

// refresh makes this node's entry for sandbox record r resume from r's durable
// state: a new suspended entry, or (with replace) an existing one whose live
// sandbox (from an earlier epoch of this node's) is dropped.
func (s *Service) refresh(ctx context.Context, r history.Sandbox, replace bool) *entry {
	s.mu.Lock()
	e, ok := s.sandboxes[r.ID]
	if !ok {
		e = s.makeEntry(r.ID, r.Name, r.AgentID, r.Backend, r.MemoryMB, r.CreatedAt)
		e.loaded(r.SandboxState)
		s.sandboxes[r.ID] = e
		if _, ok := s.byAgent[r.AgentID]; !ok {
			s.byAgent[r.AgentID] = r.ID
		}
		s.mu.Unlock()
		e.unlock() // publishes its view
		return e
	}
	s.mu.Unlock()
	if !replace {
		return e
	}
	if err := e.lock(ctx); err != nil {
		return nil
	}
	defer e.unlock()
	if e.deleted {
		return nil
	}
	e.drop()
	e.loaded(r.SandboxState)
	return e
}

// adoptKnown loads agentID's sandboxes from the history when this node (in cluster
// mode) has none for it: a run reaching a node that took the agent over without an
// adoption resumes the agent's state instead of starting afresh.
func (s *Service) adoptKnown(ctx context.Context, agentID string) {
	if s.fencer == nil || agentID == "" {
		return
	}
	if _, err := s.loadAgent(ctx, agentID, 0); err != nil {
		s.log.Warn("loading an agent's sandboxes from the history", "agent", agentID, "err", err)
	}
}

// NodeName is this node's name in the cluster ("" on a single host).
func (s *Service) NodeName() string {
	if n, ok := s.fencer.(interface{ Node() string }); ok && s.fencer != nil {
		return n.Node()
	}
	return ""
}

// Compat is the snapshot compatibility of the default backend's images,
// "backend/version/platform" ("" when the backend cannot say): a router moves an
// agent only between nodes whose Compat is equal.
func (s *Service) Compat(ctx context.Context) string {
	exp, ok := s.def.(backend.ImageExporter)
	if !ok {
		return ""
	}
	c, err := exp.ImageCompat(ctx)
	if err != nil {
		s.log.Warn("the backend cannot say what its snapshots need", "backend", s.def.Name(), "err", err)
		return ""
	}
	return c.Backend + "/" + c.Version + "/" + c.Platform
}
