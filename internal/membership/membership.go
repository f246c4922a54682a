// Package membership tells a vmexec router which daemons exist, where they listen and
// which of them are ready to take work.
//
// Terms. A node is one vmexec daemon (`vmexec serve`) that can own agents; its Name is
// the identity it records as cluster.node_name in the ownership table, so a router
// resolves an owner's name to an address through Members. A node is ready when its
// source says it can serve now: the Kubernetes endpoint's ready condition (the kubelet's
// readiness probe on GET /health), or a recent successful GET /health for a static list.
//
// Lifecycle. A constructor (NewKubernetes, NewStatic) starts watching in the background
// and returns at once; Nodes waits, bounded by its context, for the first complete view
// (the informer's initial list, or one probe of every address); Close stops the
// background work and may be called more than once. After Close, Nodes fails with
// ErrClosed and Changed's channel is closed, so a watcher loop ends.
//
// Watching. Changed returns a channel that is closed at the next change of the view
// after the call (a node added or removed, or any field of one changed). Take the
// channel before reading Nodes and no change is missed:
//
//	for {
//		ch := m.Changed()
//		nodes, err := m.Nodes(ctx)
//		if err != nil {
//			return err // ErrClosed, or ctx done before the first view
//		}
//		... use nodes ...
//		select {
//		case <-ch:
//		case <-ctx.Done():
//			return
//		}
//	}
//
// Failure semantics. A source that cannot be reached does not make its nodes vanish:
// the last view stays (Kubernetes' informer keeps its cache and retries; a static
// node becomes not ready only after FailureThreshold failed probes in a row). Nodes
// fails only when the first view has not arrived before ctx is done (wrapping
// ctx.Err() and ErrNotSynced).
package membership

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Node is one daemon as a membership source sees it.
type Node struct {
	// Name identifies the node: its cluster.node_name (on Kubernetes, the name of the
	// Kubernetes node it runs on: one daemon per node, and its hostPath data dir is that
	// node's).
	Name string
	// Address is host:port to dial (the daemon's HTTP listener).
	Address string
	// Ready is whether the node can take work now.
	Ready bool
	// Load is the number of sandboxes the node reported (GET /health's sandboxes), or
	// -1 when the source does not know it (Kubernetes endpoints carry no load).
	Load int
	// Capacity is the most sandboxes the node takes, or 0 when the source does not
	// know it (neither source does yet; the ownership store's nodes table will).
	Capacity int
}

// Members is a live view of the daemons. Implementations are safe for concurrent use.
type Members interface {
	// Nodes returns the current nodes sorted by Name, waiting for the first complete
	// view until ctx is done. The slice is the caller's.
	Nodes(ctx context.Context) ([]Node, error)
	// Changed returns a channel closed at the next change of the view after this call,
	// or when the Members is closed.
	Changed() <-chan struct{}
	// Close stops watching. Idempotent.
	Close() error
}

// Both sources are Members.
var (
	_ Members = (*Kubernetes)(nil)
	_ Members = (*Static)(nil)
)

var (
	// ErrNotSynced is wrapped by Nodes when the first view did not arrive in time.
	ErrNotSynced = errors.New("no complete view of the nodes yet")
	// ErrClosed is wrapped by Nodes after Close.
	ErrClosed = errors.New("membership closed")
)

// view is the state both sources share: the nodes, the change broadcast and the
// first-view latch.
type view struct {
	what string // for errors: "endpointslices of service ns/name", "static nodes"

	mu      sync.Mutex
	nodes   []Node
	changed chan struct{}
	closed  bool
	done    chan struct{} // closed by close
	lastErr error         // the source's last failure, for Nodes' not-synced error
	// diagnose, when set, asks the source directly why there is no view yet (one
	// bounded call, on Nodes' failure path only).
	diagnose func(context.Context) error

	synced   chan struct{}
	syncOnce sync.Once
}

func newView(what string) *view {
	return &view{what: what, changed: make(chan struct{}), synced: make(chan struct{}), done: make(chan struct{})}
}

// set replaces the nodes (sorted here) and wakes watchers if anything differs.
func (v *view) set(nodes []Node) {
	slices.SortFunc(nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed || slices.Equal(v.nodes, nodes) {
		return
	}
	v.nodes = nodes
	close(v.changed)
	v.changed = make(chan struct{})
}

// failed records the source's latest failure (a watch or list error).
func (v *view) failed(err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.lastErr = err
}

// markSynced releases Nodes' callers waiting for the first view.
func (v *view) markSynced() { v.syncOnce.Do(func() { close(v.synced) }) }

func (v *view) Nodes(ctx context.Context) ([]Node, error) {
	select {
	case <-v.synced:
	case <-v.done:
	default:
		select {
		case <-v.synced:
		case <-v.done:
		case <-ctx.Done():
			v.mu.Lock()
			last, diagnose := v.lastErr, v.diagnose
			v.mu.Unlock()
			if diagnose != nil {
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				if err := diagnose(dctx); err != nil {
					last = err
				}
				cancel()
			}
			if last != nil {
				return nil, fmt.Errorf("%s: %w (last error: %v): %w", v.what, ErrNotSynced, last, ctx.Err())
			}
			return nil, fmt.Errorf("%s: %w: %w", v.what, ErrNotSynced, ctx.Err())
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil, fmt.Errorf("%s: %w", v.what, ErrClosed)
	}
	return slices.Clone(v.nodes), nil
}

func (v *view) Changed() <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.changed
}

// close ends the view: watchers wake and see no further change.
func (v *view) close() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.closed {
		v.closed = true
		close(v.changed)
		close(v.done)
	}
}
