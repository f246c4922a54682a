package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Fence is a daemon's guard on its agents' runs (it implements sandbox.Fencer): it
// claims an agent on the first run for it, remembers the epoch it holds, checks that
// epoch against the database before a run starts and before it is acknowledged, and
// records in the agent's row the sandbox the runs use.
type Fence struct {
	own  Ownership
	node string

	mu   sync.Mutex
	held map[string]holding // by agent
}

// holding is what this node holds an agent at: the epoch, and the sandbox its row
// names.
type holding struct {
	epoch   int64
	sandbox string
}

// NewFence returns the fence of node on own.
func NewFence(own Ownership, node string) *Fence {
	return &Fence{own: own, node: node, held: map[string]holding{}}
}

// Node is the name of the node the fence guards.
func (f *Fence) Node() string { return f.node }

// Hold returns nil while this node holds agent: at the epoch it remembers, or,
// remembering none, by claiming the agent (which succeeds when no node owns it or
// this node does). When sandbox is not empty and differs from the one the agent's
// row names, it writes it there (fenced by the epoch). A refusal is an *OwnerError
// (ErrOwned: another node owns the agent; ErrStale: it was taken over since this
// node claimed it, and the node forgets its epoch, so the next Hold claims afresh
// and is refused while the other node owns it). Any other error is a failure to
// reach the database.
func (f *Fence) Hold(ctx context.Context, agent, sandbox string) error {
	f.mu.Lock()
	h, ok := f.held[agent]
	f.mu.Unlock()
	var o Owner
	var err error
	if ok {
		o, err = f.own.Check(ctx, agent, f.node, h.epoch)
		var oe *OwnerError
		if errors.As(err, &oe) || errors.Is(err, ErrNotFound) {
			f.forget(agent, h.epoch)
		}
		if errors.Is(err, ErrNotFound) {
			return &OwnerError{Owner: Owner{Agent: agent, Node: "(none: the agent was released)"}, Err: ErrStale, Epoch: h.epoch}
		}
	} else {
		o, err = f.own.Claim(ctx, agent, f.node)
	}
	if err != nil {
		return err
	}
	if sandbox != "" && o.Sandbox != sandbox {
		if o, err = f.own.Update(ctx, Owner{Agent: agent, Node: f.node, Epoch: o.Epoch, Sandbox: sandbox}); err != nil {
			return err
		}
	}
	f.mu.Lock()
	if cur, ok := f.held[agent]; !ok || cur.epoch <= o.Epoch {
		f.held[agent] = holding{epoch: o.Epoch, sandbox: o.Sandbox}
	}
	f.mu.Unlock()
	return nil
}

// Epoch returns the epoch this node holds agent at (0: none remembered).
func (f *Fence) Epoch(agent string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held[agent].epoch
}

func (f *Fence) forget(agent string, epoch int64) {
	f.mu.Lock()
	if f.held[agent].epoch == epoch {
		delete(f.held, agent)
	}
	f.mu.Unlock()
}

// RecordDurable makes key (an upload of sandbox's newest state to the snapshot
// store) agent's durable snapshot key, with a write fenced by the epoch this node
// holds: a node that lost the agent writes nothing (an *OwnerError). It writes
// nothing, and returns nil, when this node holds no epoch for agent or when the
// agent's row names another sandbox of record.
func (f *Fence) RecordDurable(ctx context.Context, agent, sandbox, key string) error {
	epoch := f.Epoch(agent)
	if agent == "" || epoch == 0 {
		return nil
	}
	if o, err := f.own.Get(ctx, agent); err == nil && o.Sandbox != "" && o.Sandbox != sandbox {
		return nil // not the agent's sandbox of record
	}
	_, err := f.own.Update(ctx, Owner{Agent: agent, Node: f.node, Epoch: epoch, DurableSnapshotKey: key})
	return err
}

// String describes the fence for logs.
func (f *Fence) String() string { return fmt.Sprintf("cluster fence of node %q", f.node) }
