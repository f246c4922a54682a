package router

import (
	"context"
	"time"

	"github.com/vmexec/vmexec/internal/cluster"
	"github.com/vmexec/vmexec/internal/membership"
)

// Members says which nodes exist and which are ready. The node registry in
// PostgreSQL (Registry) is the default; a Kubernetes EndpointSlices informer or a
// static list with health probes (internal/membership) can stand in its place.
type Members interface {
	// Nodes returns every node known, ready or not (a node that stopped
	// heartbeating is still listed, so the router can find its address to probe
	// it), and the names of those ready now.
	Nodes(ctx context.Context) (all []cluster.Node, ready map[string]bool, err error)
}

// Registry is Members over cluster.Nodes: ready means a heartbeat within Within
// (cluster.ReadyWithin when zero), by the database's clock.
type Registry struct {
	Reg    cluster.Nodes
	Within time.Duration
}

// forever is the window that lists every registered node.
const forever = 100 * 365 * 24 * time.Hour

// Nodes implements Members.
func (g Registry) Nodes(ctx context.Context) ([]cluster.Node, map[string]bool, error) {
	within := g.Within
	if within <= 0 {
		within = cluster.ReadyWithin
	}
	all, err := g.Reg.ListReady(ctx, forever)
	if err != nil {
		return nil, nil, err
	}
	ready, err := g.Reg.ListReady(ctx, within)
	if err != nil {
		return nil, nil, err
	}
	out := map[string]bool{}
	for _, n := range ready {
		out[n.Name] = true
	}
	return all, out, nil
}

// Sourced is Members over a membership source (internal/membership: Kubernetes
// EndpointSlices, or a static list probed on /health): which nodes exist, where
// and whether they are ready come from it; load and capacity from the node registry
// (Reg, optional) when the node is registered there, else from the source.
type Sourced struct {
	Src membership.Members
	Reg cluster.Nodes
}

// Nodes implements Members.
func (s Sourced) Nodes(ctx context.Context) ([]cluster.Node, map[string]bool, error) {
	ms, err := s.Src.Nodes(ctx)
	if err != nil {
		return nil, nil, err
	}
	reg := map[string]cluster.Node{}
	if s.Reg != nil {
		if rs, err := s.Reg.ListReady(ctx, forever); err == nil {
			for _, r := range rs {
				reg[r.Name] = r
			}
		}
	}
	all := make([]cluster.Node, 0, len(ms))
	ready := map[string]bool{}
	for _, m := range ms {
		n := cluster.Node{Name: m.Name, Address: m.Address, Capacity: int64(m.Capacity), Load: int64(max(m.Load, 0))}
		if r, ok := reg[m.Name]; ok {
			n.Capacity, n.Load, n.LastReady = r.Capacity, r.Load, r.LastReady
		}
		all = append(all, n)
		ready[m.Name] = m.Ready
	}
	return all, ready, nil
}
