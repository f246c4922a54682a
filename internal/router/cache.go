package router

import (
	"container/list"
	"context"
	"sync"
	"time"

	"github.com/vmexec/vmexec/internal/cluster"
)

// The router's two read caches in front of PostgreSQL (the owner rows have their
// own, in serve.go): the node list, trusted for NodesTTL and dropped when a node
// does not answer, and the object → agent map, which needs no expiry because an
// object's agent never changes once the object exists.

// nodeCache holds the last Members.Nodes answer.
type nodeCache struct {
	mu    sync.Mutex // held across a refresh: concurrent requests share one read
	at    time.Time  // zero: empty or dropped
	all   []cluster.Node
	ready map[string]bool
	err   error     // the last read's failure, at errAt
	errAt time.Time // (requests that waited for that read share its answer)
}

// members returns the cluster's nodes, from the cache when younger than NodesTTL.
// A request that waited for a read that failed gets that read's error rather than
// read again: with the registry down, queued requests would otherwise each wait
// for all the reads before theirs. Callers must not modify what it returns (it is
// shared).
func (rt *Router) members(ctx context.Context) ([]cluster.Node, map[string]bool, error) {
	c := &rt.nodes
	asked := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < rt.cfg.NodesTTL {
		return c.all, c.ready, nil
	}
	if c.err != nil && !c.errAt.Before(asked) {
		return nil, nil, c.err
	}
	return rt.readMembersLocked(ctx)
}

// freshMembers reads the cluster's nodes now (a takeover decides on what the
// registry says at this moment) and keeps the answer for the next requests.
func (rt *Router) freshMembers(ctx context.Context) ([]cluster.Node, map[string]bool, error) {
	rt.nodes.mu.Lock()
	defer rt.nodes.mu.Unlock()
	return rt.readMembersLocked(ctx)
}

func (rt *Router) readMembersLocked(ctx context.Context) ([]cluster.Node, map[string]bool, error) {
	c := &rt.nodes
	all, ready, err := rt.cfg.Members.Nodes(ctx)
	if err != nil {
		c.at, c.err, c.errAt = time.Time{}, err, time.Now()
		return nil, nil, err
	}
	c.all, c.ready, c.at, c.err = all, ready, time.Now(), nil
	return all, ready, nil
}

// dropMembers makes the next request read the node list again (a node did not
// answer: the list may be out of date).
func (rt *Router) dropMembers() {
	rt.nodes.mu.Lock()
	rt.nodes.at = time.Time{}
	rt.nodes.mu.Unlock()
}

// cachedLookup is Lookup with a bounded, least-recently-used memory of the agents
// found. Only answers naming an agent (or the operator's "") are kept: an object
// not found may be created a moment later.
type cachedLookup struct {
	inner Lookup
	max   int

	mu    sync.Mutex
	order *list.List // of *lookupEntry, most recently used first
	byKey map[lookupKey]*list.Element
}

type lookupKey struct{ kind, id string }

type lookupEntry struct {
	key   lookupKey
	agent string
}

func newCachedLookup(inner Lookup, max int) *cachedLookup {
	return &cachedLookup{inner: inner, max: max, order: list.New(), byKey: map[lookupKey]*list.Element{}}
}

func (c *cachedLookup) find(ctx context.Context, kind, id string, read func(context.Context, string) (string, error)) (string, error) {
	k := lookupKey{kind, id}
	c.mu.Lock()
	if e, ok := c.byKey[k]; ok {
		c.order.MoveToFront(e)
		a := e.Value.(*lookupEntry).agent
		c.mu.Unlock()
		return a, nil
	}
	c.mu.Unlock()
	a, err := read(ctx, id)
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[k]; ok { // a concurrent request read it too
		c.order.MoveToFront(e)
		return a, nil
	}
	c.byKey[k] = c.order.PushFront(&lookupEntry{key: k, agent: a})
	for c.order.Len() > c.max {
		old := c.order.Remove(c.order.Back()).(*lookupEntry)
		delete(c.byKey, old.key)
	}
	return a, nil
}

// len is how many mappings the cache holds.
func (c *cachedLookup) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// SandboxAgent implements Lookup.
func (c *cachedLookup) SandboxAgent(ctx context.Context, id string) (string, error) {
	return c.find(ctx, "sandbox", id, c.inner.SandboxAgent)
}

// SnapshotAgent implements Lookup.
func (c *cachedLookup) SnapshotAgent(ctx context.Context, id string) (string, error) {
	return c.find(ctx, "snapshot", id, c.inner.SnapshotAgent)
}

// RunAgent implements Lookup.
func (c *cachedLookup) RunAgent(ctx context.Context, id string) (string, error) {
	return c.find(ctx, "run", id, c.inner.RunAgent)
}

// ConversationAgent implements Lookup.
func (c *cachedLookup) ConversationAgent(ctx context.Context, id string) (string, error) {
	return c.find(ctx, "conversation", id, c.inner.ConversationAgent)
}
