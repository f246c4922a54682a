package router

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/cluster"
)

// takeover is one router's takeover of one agent, shared by the requests that
// meet the dead owner meanwhile.
type takeover struct {
	done chan struct{}
	node cluster.Node
	from string
	err  error
}

// pollEvery is how often a request waiting on an unreachable owner looks again.
const pollEvery = time.Second

// recover finds where agent's requests go now that its owner did not answer:
// the owner itself if it is back, else a node that took the agent over (this
// router's takeover or another's). Concurrent callers for one agent share one
// attempt.
func (rt *Router) recover(ctx context.Context, agent string) (cluster.Node, string, error) {
	rt.mu.Lock()
	f, ok := rt.flight[agent]
	if !ok {
		f = &takeover{done: make(chan struct{})}
		rt.flight[agent] = f
		rt.mu.Unlock()
		go func() {
			// The takeover outlives a caller that gives up: others wait on it.
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rt.cfg.TakeoverWait+time.Minute)
			defer cancel()
			f.node, f.from, f.err = rt.takeOver(wctx, agent)
			rt.mu.Lock()
			delete(rt.flight, agent)
			rt.mu.Unlock()
			close(f.done)
		}()
	} else {
		rt.mu.Unlock()
	}
	select {
	case <-f.done:
		return f.node, f.from, f.err
	case <-ctx.Done():
		return cluster.Node{}, "", ctx.Err()
	}
}

// takeOver is the decision (see the package doc): wait for the owner to be back
// or gone, then move the agent with one compare-and-set and have the new owner
// adopt it.
func (rt *Router) takeOver(ctx context.Context, agent string) (cluster.Node, string, error) {
	deadline := time.Now().Add(rt.cfg.TakeoverWait)
	var (
		o     cluster.Owner
		all   []cluster.Node
		ready map[string]bool
		err   error
	)
	waited := false
	for {
		if o, err = rt.cfg.Owners.Get(ctx, agent); err != nil {
			return cluster.Node{}, "", fmt.Errorf("reading the owner of agent %s: %w", agent, err)
		}
		if all, ready, err = rt.freshMembers(ctx); err != nil {
			return cluster.Node{}, "", fmt.Errorf("listing the cluster's nodes: %w", err)
		}
		n, known := byName(all, o.Node)
		if known && rt.probe(ctx, n) == nil {
			rt.remember(o)
			return n, "", nil // back, or another router's takeover already moved the agent to a live node
		}
		if !ready[o.Node] {
			break
		}
		if time.Now().After(deadline) {
			return cluster.Node{}, "", fmt.Errorf("node %s owns agent %s and does not answer, but it heartbeated within %s: retry: %w", o.Node, agent, cluster.ReadyWithin, ErrOwnerUnreachable)
		}
		if !waited {
			rt.log.Info("owner unreachable but still heartbeating; waiting for it to answer or age out", "agent", agent, "node", o.Node, "up_to", time.Until(deadline).Round(time.Second))
			waited = true
		}
		select {
		case <-ctx.Done():
			return cluster.Node{}, "", ctx.Err()
		case <-time.After(pollEvery):
		}
	}
	dead := o.Node
	compat := rt.knownCompat(dead)
	tried := map[string]bool{dead: true}
	var lastErr error
	for {
		cands := []cluster.Node{}
		for _, n := range readyNodes(all, ready) {
			if !tried[n.Name] {
				cands = append(cands, n)
			}
		}
		n, err := rt.pick(ctx, cands, dead, compat)
		if err != nil {
			if lastErr != nil {
				err = fmt.Errorf("%w (the last candidate: %v)", err, lastErr)
			}
			return cluster.Node{}, "", fmt.Errorf("taking agent %s over from node %s: %w", agent, dead, err)
		}
		tried[n.Name] = true
		won, err := rt.cfg.Owners.Takeover(ctx, agent, n.Name, o.Epoch)
		var oe *cluster.OwnerError
		if errors.As(err, &oe) && errors.Is(err, cluster.ErrStale) {
			// Another router moved the agent first: go where it went, once that node
			// has adopted it (adopt is idempotent).
			w, ok := byName(all, oe.Owner.Node)
			if !ok || !ready[w.Name] {
				return cluster.Node{}, "", fmt.Errorf("agent %s was taken over by node %s, which is not ready: %w", agent, oe.Owner.Node, ErrNoNode)
			}
			rt.log.Info("another router took the agent over first", "agent", agent, "from", dead, "to", w.Name, "epoch", oe.Owner.Epoch)
			if err := rt.adopt(ctx, w, agent, oe.Owner.Epoch); err != nil {
				return cluster.Node{}, "", err
			}
			rt.remember(oe.Owner)
			return w, dead, nil
		}
		if err != nil {
			return cluster.Node{}, "", fmt.Errorf("taking agent %s over from node %s: %w", agent, dead, err)
		}
		rt.log.Info("took agent over", "agent", agent, "from", dead, "to", n.Name, "epoch", won.Epoch, "durable_snapshot", won.DurableSnapshotKey)
		if err := rt.adopt(ctx, n, agent, won.Epoch); err != nil {
			// The node could not restore the agent (an incompatible image, a failing
			// store): try the next candidate, taking over from the epoch just won.
			rt.log.Warn("new owner could not adopt the agent", "agent", agent, "node", n.Name, "err", err)
			o, lastErr = won, err
			continue
		}
		rt.remember(won)
		return n, dead, nil
	}
}

// probe asks n whether it answers (GET /v1/health), within a few seconds.
func (rt *Router) probe(ctx context.Context, n cluster.Node) error {
	ctx, cancel := context.WithTimeout(ctx, defaultProbeTimout)
	defer cancel()
	_, err := rt.call(ctx, n, http.MethodGet, "/v1/health", nil, nil)
	return err
}

// adopt asks n to restore agent (which n now holds at epoch).
func (rt *Router) adopt(ctx context.Context, n cluster.Node, agent string, epoch int64) error {
	start := time.Now()
	var out api.AdoptResult
	if _, err := rt.call(ctx, n, http.MethodPost, "/v1/cluster/adopt", api.AdoptRequest{AgentID: agent, Epoch: epoch}, &out); err != nil {
		return fmt.Errorf("node %s could not adopt agent %s at epoch %d: %w", n.Name, agent, epoch, err)
	}
	rt.log.Info("new owner adopted the agent", "agent", agent, "node", n.Name, "epoch", epoch,
		"sandbox", out.SandboxID, "snapshot", out.SnapshotID, "restored", out.Restored, "seconds", time.Since(start).Seconds())
	return nil
}

// compatOf returns n's snapshot compatibility, asking it once ("" if it cannot say).
func (rt *Router) compatOf(ctx context.Context, n cluster.Node) string {
	if c := rt.knownCompat(n.Name); c != "" {
		return c
	}
	ctx, cancel := context.WithTimeout(ctx, defaultProbeTimout)
	defer cancel()
	var info api.NodeInfo
	if _, err := rt.call(ctx, n, http.MethodGet, "/v1/cluster/node", nil, &info); err != nil || info.Compat == "" {
		return ""
	}
	rt.mu.Lock()
	rt.compat[n.Name] = info.Compat
	rt.mu.Unlock()
	return info.Compat
}

func (rt *Router) knownCompat(node string) string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.compat[node]
}

// call makes one of the router's own requests to n, with its admin key; a non-2xx
// answer is an error wrapping ErrUpstream with the node's message.
func (rt *Router) call(ctx context.Context, n cluster.Node, method, path string, in, out any) (int, error) {
	base, err := nodeURL(n.Address)
	if err != nil || n.Address == "" {
		return 0, fmt.Errorf("node %s has no usable address %q: %w", n.Name, n.Address, ErrUpstream)
	}
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, base.JoinPath(path).String(), body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if rt.cfg.AdminKey != "" {
		req.Header.Set("Authorization", "Bearer "+rt.cfg.AdminKey)
	}
	resp, err := rt.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = http.StatusText(resp.StatusCode)
		}
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s: %w", method, path, resp.StatusCode, e.Error, ErrUpstream)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %v: %w", method, path, err, ErrUpstream)
		}
	}
	return resp.StatusCode, nil
}
