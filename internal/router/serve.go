package router

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/cluster"
)

// serve sends r to the node wt resolves to, taking the agent over first when its
// owner is gone.
func (rt *Router) serve(w http.ResponseWriter, r *http.Request, body []byte, wt want) {
	ctx := r.Context()
	all, ready, err := rt.members(ctx)
	if err != nil {
		writeError(w, rt.log, fmt.Errorf("listing the cluster's nodes: %w", err))
		return
	}
	if wt.agent == "" {
		rt.serveAny(w, r, body, wt, all, ready)
		return
	}
	n, from, err := rt.ownerNode(ctx, wt.agent, all, ready, rt.mayPlace(r))
	if err != nil {
		writeError(w, rt.log, err)
		return
	}
	if n.Name != "" {
		dialErr := rt.forward(w, r, body, n, wt.agent, from)
		if dialErr == nil {
			return
		}
		rt.log.Warn("owner unreachable", "agent", wt.agent, "node", n.Name, "address", n.Address, "err", dialErr)
		rt.dropMembers()
	}
	rt.forget(wt.agent)
	n, from, err = rt.recover(ctx, wt.agent)
	if err != nil {
		writeError(w, rt.log, err)
		return
	}
	if dialErr := rt.forward(w, r, body, n, wt.agent, from); dialErr != nil {
		writeError(w, rt.log, fmt.Errorf("node %s (%s), which now owns agent %s, does not answer either: %v: %w", n.Name, n.Address, wt.agent, dialErr, ErrUpstream))
	}
}

// serveAny sends a request that names no agent to one ready node: any, if it
// concerns no agent, else the only one.
func (rt *Router) serveAny(w http.ResponseWriter, r *http.Request, body []byte, wt want, all []cluster.Node, ready map[string]bool) {
	up := readyNodes(all, ready)
	if !wt.any && len(up) > 1 {
		writeError(w, rt.log, fmt.Errorf("%s %s names no agent and the cluster has %d nodes: name it with agent_id (in the JSON body or the query) or the %s header: %w",
			r.Method, r.URL.Path, len(up), HeaderAgent, ErrNoAgent))
		return
	}
	rand.Shuffle(len(up), func(i, j int) { up[i], up[j] = up[j], up[i] })
	for _, n := range up {
		if rt.forward(w, r, body, n, "", "") == nil {
			return
		}
		rt.dropMembers()
	}
	writeError(w, rt.log, fmt.Errorf("%d ready nodes, none answering: %w", len(up), ErrNoNode))
}

// ownerNode returns the node owning agent, placing the agent first if no node
// does. A zero Node (with no error) means the owner is not in the registry (it
// deregistered): the caller takes the agent over.
func (rt *Router) ownerNode(ctx context.Context, agent string, all []cluster.Node, ready map[string]bool, mayPlace bool) (cluster.Node, string, error) {
	o, err := rt.owner(ctx, agent)
	if errors.Is(err, cluster.ErrNotFound) && !mayPlace {
		return cluster.Node{}, "", fmt.Errorf("agent %s is on no node, and a request without a key places none: %w", agent, ErrNotFound)
	}
	if errors.Is(err, cluster.ErrNotFound) {
		return rt.place(ctx, agent, all, ready)
	}
	if err != nil {
		return cluster.Node{}, "", fmt.Errorf("reading the owner of agent %s: %w", agent, err)
	}
	n, _ := byName(all, o.Node)
	return n, "", nil
}

// mayPlace reports whether r may place a new agent: not when keys are in force and
// r came through without one (a public route, E2B's envd traffic).
func (rt *Router) mayPlace(r *http.Request) bool {
	return !rt.cfg.Keys.Enforced() || auth.FromContext(r.Context()) != nil
}

// place claims a new agent for the best of K ready nodes with room.
func (rt *Router) place(ctx context.Context, agent string, all []cluster.Node, ready map[string]bool) (cluster.Node, string, error) {
	n, err := rt.pick(ctx, readyNodes(all, ready), "", "")
	if err != nil {
		return cluster.Node{}, "", fmt.Errorf("placing agent %s: %w", agent, err)
	}
	o, err := rt.cfg.Owners.Claim(ctx, agent, n.Name)
	var oe *cluster.OwnerError
	if errors.As(err, &oe) { // another router (or node) placed it first: use its choice
		o, err = oe.Owner, nil
	}
	if err != nil {
		return cluster.Node{}, "", fmt.Errorf("claiming agent %s for node %s: %w", agent, n.Name, err)
	}
	rt.remember(o)
	if o.Node != n.Name {
		n, _ = byName(all, o.Node)
	} else {
		rt.log.Info("placed agent", "agent", agent, "node", n.Name, "load", n.Load, "capacity", n.Capacity)
	}
	return n, "", nil
}

// pick is placement: of the nodes with room (load < capacity; capacity 0 is
// unbounded), except `except`, and compatible with compat when it is known, it
// draws K at random and returns the least loaded (relative to capacity).
func (rt *Router) pick(ctx context.Context, nodes []cluster.Node, except, compat string) (cluster.Node, error) {
	cands := []cluster.Node{}
	for _, n := range nodes {
		if n.Name == except || n.Capacity > 0 && n.Load >= n.Capacity {
			continue
		}
		if compat != "" && rt.compatOf(ctx, n) != compat {
			continue
		}
		cands = append(cands, n)
	}
	if len(cands) == 0 {
		why := "with room"
		if compat != "" {
			why += " and snapshot compatibility " + compat
		}
		return cluster.Node{}, fmt.Errorf("none of %d ready nodes %s: %w", len(nodes), why, ErrNoNode)
	}
	return bestOf(cands, rt.cfg.K), nil
}

// bestOf draws k of nodes at random and returns the least loaded.
func bestOf(nodes []cluster.Node, k int) cluster.Node {
	perm := rand.Perm(len(nodes))
	best := nodes[perm[0]]
	for _, i := range perm[1:min(k, len(nodes))] {
		if lighter(nodes[i], best) {
			best = nodes[i]
		}
	}
	return best
}

// lighter reports whether a is less loaded than b, relative to capacity.
func lighter(a, b cluster.Node) bool {
	ra, rb := ratio(a), ratio(b)
	if ra != rb {
		return ra < rb
	}
	return a.Load < b.Load
}

func ratio(n cluster.Node) float64 {
	if n.Capacity <= 0 {
		return 0
	}
	return float64(n.Load) / float64(n.Capacity)
}

func readyNodes(all []cluster.Node, ready map[string]bool) []cluster.Node {
	out := []cluster.Node{}
	for _, n := range all {
		if ready[n.Name] {
			out = append(out, n)
		}
	}
	return out
}

func byName(all []cluster.Node, name string) (cluster.Node, bool) {
	for _, n := range all {
		if n.Name == name {
			return n, true
		}
	}
	return cluster.Node{}, false
}

// owner reads agent's row, from the cache when fresh.
func (rt *Router) owner(ctx context.Context, agent string) (cluster.Owner, error) {
	rt.mu.Lock()
	c, ok := rt.owners[agent]
	rt.mu.Unlock()
	if ok && time.Since(c.at) < rt.cfg.CacheTTL {
		return c.o, nil
	}
	o, err := rt.cfg.Owners.Get(ctx, agent)
	if err == nil {
		rt.remember(o)
	}
	return o, err
}

func (rt *Router) remember(o cluster.Owner) {
	rt.mu.Lock()
	rt.owners[o.Agent] = cachedOwner{o: o, at: time.Now()}
	rt.mu.Unlock()
}

func (rt *Router) forget(agent string) {
	rt.mu.Lock()
	delete(rt.owners, agent)
	rt.mu.Unlock()
}

// nodeURL is the base URL of a node's address ("host:port" or a URL).
func nodeURL(addr string) (*url.URL, error) {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return url.Parse(addr)
}

// forward proxies r (its body from body) to n. It returns the error of a
// connection that failed before any of the request was sent (notSent: nothing ran,
// the caller may send it elsewhere); any other failure is answered here.
func (rt *Router) forward(w http.ResponseWriter, r *http.Request, body []byte, n cluster.Node, agent, from string) error {
	target, err := nodeURL(n.Address)
	if err != nil || n.Address == "" {
		return fmt.Errorf("node %s has no usable address %q", n.Name, n.Address)
	}
	var failed error
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = target.Host
		},
		Transport:     rt.cfg.Transport,
		FlushInterval: -1, // SSE and every other body: write through, never buffer
		ModifyResponse: func(resp *http.Response) error {
			resp.Header.Set(HeaderNode, n.Name)
			if from != "" {
				resp.Header.Set(HeaderTakenOver, from)
			}
			if resp.StatusCode == http.StatusConflict && agent != "" {
				rt.forget(agent) // the node refused: its ownership moved on
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) { failed = err },
	}
	var wrote sentBytes
	r = r.WithContext(httptrace.WithClientTrace(r.Context(), wrote.trace()))
	if body != nil {
		r.Body = io.NopCloser(bytes.NewReader(body))
		// With GetBody the transport may resend the request on a new connection when
		// a kept-alive one turns out closed before any byte went out (a node that
		// just died): the new connection's dial error then decides on a takeover.
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	p.ServeHTTP(w, r)
	if failed == nil {
		return nil
	}
	if notSent(failed, wrote.none()) {
		return failed
	}
	if errors.Is(failed, context.Canceled) && r.Context().Err() != nil {
		return nil // the caller went away
	}
	writeError(w, rt.log, fmt.Errorf("node %s failed the request (it may have run; retry only if that is safe): %v: %w", n.Name, failed, ErrUpstream))
	return nil
}

// notSent reports a failure to connect, or to write the request when none of it
// went out (nothingWritten: a kept-alive connection the node closed as it died):
// the node got nothing, so nothing ran. A write that failed after some bytes went
// out is not one: the node may have read the request's head and started on it.
func notSent(err error, nothingWritten bool) bool {
	for {
		var op *net.OpError
		if !errors.As(err, &op) {
			return false
		}
		if op.Op == "dial" || op.Op == "write" && nothingWritten {
			return true
		}
		err = op.Err // "readfrom" (the body's copy) wraps the write that failed
	}
}

// sentBytes tells whether any byte of a request went out on the last connection
// the transport gave it (a countingConn, made by DefaultTransport's dialer). With
// another transport's connections it cannot tell, and says some did.
type sentBytes struct {
	mu    sync.Mutex
	conn  *countingConn
	start int64
}

func (s *sentBytes) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.conn, _ = info.Conn.(*countingConn)
		if s.conn != nil {
			s.start = s.conn.written.Load()
		}
	}}
}

// none reports that the request's last connection took none of its bytes.
func (s *sentBytes) none() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn != nil && s.conn.written.Load() == s.start
}

// countingConn is a connection to a node that counts the bytes written to it.
type countingConn struct {
	net.Conn
	written atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// DefaultTransport is the transport to nodes: connecting is bounded (a dead host
// is noticed in seconds), a response is not (runs and streams take their time).
func DefaultTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	d := &net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c}, nil // forward tells a request that went out in part (notSent)
	}
	t.MaxIdleConnsPerHost = 64
	return t
}

// health is GET /router/health: the router's own state, for load balancers.
func (rt *Router) health(w http.ResponseWriter, r *http.Request) {
	all, ready, err := rt.members(r.Context())
	if err != nil {
		writeError(w, rt.log, fmt.Errorf("listing the cluster's nodes: %w", err))
		return
	}
	names := []string{}
	for n := range ready {
		names = append(names, n)
	}
	sort.Strings(names)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"status": "ok", "nodes": len(all), "ready": names})
}
