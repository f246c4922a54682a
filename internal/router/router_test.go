package router

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/cluster"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/history/postgres"
	"github.com/vmexec/vmexec/internal/history/postgres/pgtest"
	"github.com/vmexec/vmexec/internal/membership"
)

// The router's unit tests run on a real PostgreSQL (the cluster's tables and the
// history's) with nodes that are small HTTP servers answering for a daemon: the
// router's job is to pick the right one, which they report. The real daemons
// behind a router are e2e/cluster's.

// fakeNode answers like a daemon would for the router's purposes: every request
// with its name (and the agent header the router saw), the health probe, its
// compatibility, and adopt calls, which it counts.
type fakeNode struct {
	name   string
	compat string
	hs     *httptest.Server
	adopts atomic.Int64
	mu     sync.Mutex
	auths  []string // Authorization headers received
	stream chan string
}

func (n *fakeNode) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/v1/health", "/health":
		json.NewEncoder(w).Encode(api.Health{Service: "vmexec", Status: "healthy", Timestamp: time.Now()})
		return
	case "/v1/cluster/node":
		json.NewEncoder(w).Encode(api.NodeInfo{Node: n.name, Compat: n.compat})
		return
	case "/v1/cluster/adopt":
		n.adopts.Add(1)
		w.Write([]byte(`{}`))
		return
	case "/v1/stream":
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for ev := range n.stream {
			fmt.Fprintf(w, "data: %s\n\n", ev)
			w.(http.Flusher).Flush()
		}
		return
	}
	n.mu.Lock()
	n.auths = append(n.auths, r.Header.Get("Authorization"))
	n.mu.Unlock()
	b, _ := io.ReadAll(r.Body)
	json.NewEncoder(w).Encode(map[string]string{"node": n.name, "host": r.Host, "body": string(b)})
}

type cluster_ struct {
	t      *testing.T
	url    string
	hist   *postgres.Store
	pg     *cluster.Postgres
	nodes  map[string]*fakeNode
	router *Router
	// routers are those made for this cluster, whose connections down closes.
	routers []*Router
}

// newCluster starts nodes (registered and ready) on a fresh database and a router.
func newCluster(t *testing.T, names ...string) *cluster_ {
	t.Helper()
	s := pgtest.Start(t)
	url := s.NewDatabase(t)
	ctx := context.Background()
	hist, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hist.Close() })
	pg, err := cluster.NewPostgres(ctx, hist.Pool())
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster_{t: t, url: url, hist: hist, pg: pg, nodes: map[string]*fakeNode{}}
	for _, name := range names {
		c.addNode(name, "gvisor/v1/systrap", 10, 0)
	}
	c.router = c.newRouter(nil)
	return c
}

func (c *cluster_) addNode(name, compat string, capacity, load int64) *fakeNode {
	n := &fakeNode{name: name, compat: compat, stream: make(chan string)}
	n.hs = httptest.NewServer(n)
	c.t.Cleanup(n.hs.Close)
	c.nodes[name] = n
	if err := c.pg.Register(context.Background(), cluster.Node{Name: name, Address: n.hs.Listener.Addr().String(), Capacity: capacity, Load: load}); err != nil {
		c.t.Fatal(err)
	}
	return n
}

func (c *cluster_) newRouter(keys *auth.Cache) *Router {
	rt, err := New(Config{Owners: c.pg, Members: Registry{Reg: c.pg}, Lookup: PGLookup{Pool: c.hist.Pool()},
		Keys: keys, TakeoverWait: 2 * time.Second, CacheTTL: time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		c.t.Fatal(err)
	}
	c.routers = append(c.routers, rt)
	return rt
}

// kill stops node name answering and makes its heartbeat stale.
func (c *cluster_) kill(name string) {
	c.down(name)
	c.stale(name)
}

// down stops node name answering, as a node that died: its listener is gone, and
// so are the routers' kept-alive connections to it. (A router that wrote into one
// the node had just closed could not tell whether the node read it, and answers
// 502 rather than resend it; that is TestPartlyWrittenIsNotResent's case, not the
// takeover's.)
func (c *cluster_) down(name string) {
	c.nodes[name].hs.Close()
	for _, rt := range c.routers {
		if t, ok := rt.cfg.Transport.(*http.Transport); ok {
			t.CloseIdleConnections()
		}
	}
}

func (c *cluster_) stale(name string) {
	if _, err := c.hist.Pool().Exec(context.Background(), `UPDATE cluster_nodes SET last_ready = clock_timestamp() - interval '1 hour' WHERE name = $1`, name); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster_) claim(agent, node string) cluster.Owner {
	o, err := c.pg.Claim(context.Background(), agent, node)
	if err != nil {
		c.t.Fatal(err)
	}
	return o
}

func (c *cluster_) owner(agent string) cluster.Owner {
	o, err := c.pg.Get(context.Background(), agent)
	if err != nil {
		c.t.Fatal(err)
	}
	return o
}

type reply struct {
	status int
	node   string // X-Vmexec-Node
	from   string // X-Vmexec-Taken-Over-From
	body   string
}

func do(t *testing.T, h http.Handler, method, target, body string, hdr ...string) reply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	req.Host = "localhost"
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return reply{status: w.Code, node: w.Header().Get(HeaderNode), from: w.Header().Get(HeaderTakenOver), body: w.Body.String()}
}

// TestRoutingRules guards where each kind of request goes: the agent named by a
// header, a body, the path or the query, or owning the object the path names; a
// request naming no agent in a cluster of several nodes is refused with a message
// saying how to name it, and one concerning no agent goes to any node.
func TestRoutingRules(t *testing.T) {
	c := newCluster(t, "n1", "n2")
	ctx := context.Background()
	c.claim("alice", "n1")
	c.claim("bob", "n2")
	now := time.Now().UTC()
	if err := c.hist.PutSandbox(ctx, history.Sandbox{ID: "sb-bob", AgentID: "bob", Backend: "gvisor", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := c.hist.PutSnapshot(ctx, history.Snapshot{ID: "snap-bob", SandboxID: "sb-bob", AgentID: "bob", Kind: history.SnapshotManual, Path: "x", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, method, target, body string
		hdr                        []string
		status                     int
		node                       string // "" with 200: any node
		errHas                     string
	}{
		{"body agent_id", "POST", "/v1/exec", `{"agent_id":"alice","language":"python","code":"1"}`, nil, 200, "n1", ""},
		{"body agent_id other", "POST", "/v1/exec", `{"agent_id":"bob","language":"python","code":"1"}`, nil, 200, "n2", ""},
		{"compat route body", "POST", "/api/llm/execute", `{"agent_id":"bob","code":"1"}`, nil, 200, "n2", ""},
		{"body sandbox_id", "POST", "/v1/exec", `{"sandbox_id":"sb-bob","code":"1"}`, nil, 200, "n2", ""},
		{"header wins", "POST", "/v1/exec", `{"agent_id":"bob"}`, []string{HeaderAgent, "alice"}, 200, "n1", ""},
		{"sandbox in path", "POST", "/v1/sandboxes/sb-bob/exec", `{"code":"1"}`, nil, 200, "n2", ""},
		{"compat vm in path", "GET", "/api/vms/sb-bob/history", "", nil, 200, "n2", ""},
		{"files of a sandbox", "GET", "/v1/sandboxes/sb-bob/files?path=/x", "", nil, 200, "n2", ""},
		{"snapshot in path", "POST", "/v1/snapshots/snap-bob/fork", `{}`, nil, 200, "n2", ""},
		{"agent in path", "GET", "/v1/agents/alice/policy", "", nil, 200, "n1", ""},
		{"query agent", "GET", "/v1/history?agent_id=bob", "", nil, 200, "n2", ""},
		{"query sandbox", "GET", "/v1/history?sandbox_id=sb-bob", "", nil, 200, "n2", ""},
		{"mcp names agent by query", "POST", "/mcp?agent_id=alice", `{}`, nil, 200, "n1", ""},
		{"unknown sandbox", "POST", "/v1/sandboxes/sb-nope/exec", `{}`, nil, 404, "", "sandbox sb-nope"},
		{"unknown run", "GET", "/v1/runs/ex-nope", "", nil, 404, "", "run ex-nope"},
		{"no agent, two nodes", "GET", "/v1/sandboxes", "", nil, 400, "", "names no agent"},
		{"mcp without agent", "POST", "/mcp", `{}`, nil, 400, "", "X-Vmexec-Agent"},
		{"no agent's data", "GET", "/v1/languages", "", nil, 200, "", ""},
		{"e2b create", "POST", "/e2b/api/v2/sandboxes", `{"templateID":"base","metadata":{"agent_id":"bob"}}`, nil, 200, "n2", ""},
		{"e2b sandbox", "POST", "/e2b/api/sandboxes/sb-bob/timeout", `{"timeout":60}`, nil, 200, "n2", ""},
		{"e2b envd", "POST", "/e2b/envd/process.Process/Start", `{}`, []string{"E2b-Sandbox-Id", "sb-bob"}, 200, "n2", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := do(t, c.router, tt.method, tt.target, tt.body, tt.hdr...)
			if got.status != tt.status {
				t.Fatalf("status %d, want %d (%s)", got.status, tt.status, got.body)
			}
			if tt.node != "" && got.node != tt.node {
				t.Errorf("served by %q, want %q", got.node, tt.node)
			}
			if tt.status == 200 && got.node == "" {
				t.Errorf("no %s header", HeaderNode)
			}
			if !strings.Contains(got.body, tt.errHas) {
				t.Errorf("body %q lacks %q", got.body, tt.errHas)
			}
			if tt.status == 200 && tt.body != "" && !strings.Contains(got.body, strings.ReplaceAll(tt.body, `"`, `\"`)) {
				t.Errorf("the node did not get the body: %s", got.body)
			}
		})
	}
}

// TestOneNodeTakesAgentless guards the single-node convenience: a request naming
// no agent goes to the only node.
func TestOneNodeTakesAgentless(t *testing.T) {
	c := newCluster(t, "solo")
	if got := do(t, c.router, "GET", "/v1/sandboxes", ""); got.status != 200 || got.node != "solo" {
		t.Fatalf("got %+v", got)
	}
}

// TestPlacement guards best-of-K placement: a new agent is claimed for a ready node
// with room, never a full one, a stale one, or — with K=2 of three nodes — the most
// loaded; the claim makes every router agree.
func TestPlacement(t *testing.T) {
	c := newCluster(t)
	c.addNode("light", "c", 10, 1)
	c.addNode("medium", "c", 10, 5)
	c.addNode("heavy", "c", 10, 9)
	c.addNode("full", "c", 4, 4)
	c.addNode("gone", "c", 100, 0)
	c.stale("gone")
	counts := map[string]int{}
	for i := range 40 {
		agent := fmt.Sprintf("agent-%d", i)
		got := do(t, c.router, "POST", "/v1/exec", fmt.Sprintf(`{"agent_id":%q}`, agent))
		if got.status != 200 {
			t.Fatalf("status %d: %s", got.status, got.body)
		}
		if o := c.owner(agent); o.Node != got.node || o.Epoch != 1 {
			t.Fatalf("agent %s served by %s but owned by %+v", agent, got.node, o)
		}
		// A second router sends the agent's next request to the same node.
		if again := do(t, c.newRouter(nil), "POST", "/v1/exec", fmt.Sprintf(`{"agent_id":%q}`, agent)); again.node != got.node {
			t.Fatalf("second router sent %s to %s, first to %s", agent, again.node, got.node)
		}
		counts[got.node]++
	}
	for _, never := range []string{"full", "gone", "heavy"} {
		if counts[never] > 0 {
			t.Errorf("placed %d agents on %s: %v", counts[never], never, counts)
		}
	}
	if counts["light"] <= counts["medium"] {
		t.Errorf("the lighter node got no more agents than the heavier: %v", counts)
	}
}

// TestPlacementNoRoom guards the refusal when every node is full: 503, no row.
func TestPlacementNoRoom(t *testing.T) {
	c := newCluster(t)
	c.addNode("full", "c", 2, 2)
	got := do(t, c.router, "POST", "/v1/exec", `{"agent_id":"x"}`)
	if got.status != 503 || !strings.Contains(got.body, "with room") {
		t.Fatalf("got %+v", got)
	}
	if _, err := c.pg.Get(context.Background(), "x"); err == nil {
		t.Error("an agent with nowhere to go was claimed")
	}
}

// TestTakeoverDecision guards when the router takes an agent over: an owner that
// answers keeps it; one that does not answer but still heartbeats keeps it (503,
// retry); one that neither answers nor heartbeats loses it to a compatible node,
// exactly once however many requests (on however many routers) meet it at once,
// and every one of those requests lands on the new owner, which was asked to
// adopt the agent.
func TestTakeoverDecision(t *testing.T) {
	c := newCluster(t, "n1")
	c.addNode("n2", "gvisor/v1/systrap", 10, 0)
	c.addNode("odd", "gvisor/v0/ptrace", 10, 0) // incompatible: never a new owner
	c.claim("a", "n1")
	routers := []*Router{c.router, c.newRouter(nil), c.newRouter(nil)}
	for _, rt := range routers { // each router learns n1's compatibility while it lives
		rt.compatOf(context.Background(), cluster.Node{Name: "n1", Address: c.nodes["n1"].hs.Listener.Addr().String()})
	}

	if got := do(t, c.router, "POST", "/v1/exec", `{"agent_id":"a"}`); got.node != "n1" || got.from != "" {
		t.Fatalf("a live owner lost its agent: %+v", got)
	}

	c.down("n1") // unreachable, still heartbeating
	if got := do(t, c.router, "POST", "/v1/exec", `{"agent_id":"a"}`); got.status != 503 || !strings.Contains(got.body, "heartbeated") {
		t.Fatalf("owner still heartbeating: got %+v", got)
	}
	if o := c.owner("a"); o.Node != "n1" || o.Epoch != 1 {
		t.Fatalf("taken over from a heartbeating node: %+v", o)
	}

	c.stale("n1")
	const reqs = 12
	var wg sync.WaitGroup
	replies := make([]reply, reqs)
	for i := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			replies[i] = do(t, routers[i%len(routers)], "POST", "/v1/exec", fmt.Sprintf(`{"agent_id":"a","code":"%d"}`, i))
		}()
	}
	wg.Wait()
	o := c.owner("a")
	if o.Epoch != 2 || o.Node != "n2" {
		t.Fatalf("after the takeover the row is %+v, want n2 at epoch 2 (one takeover)", o)
	}
	for i, r := range replies {
		if r.status != 200 || r.node != "n2" {
			t.Errorf("request %d: %+v", i, r)
		}
	}
	if n := c.nodes["n2"].adopts.Load(); n < 1 || n > int64(len(routers)) {
		t.Errorf("n2 was asked to adopt %d times, want 1..%d (once per router at most)", n, len(routers))
	}
	if c.nodes["odd"].adopts.Load() != 0 {
		t.Error("an incompatible node was asked to adopt")
	}
	withFrom := 0
	for _, r := range replies {
		if r.from == "n1" {
			withFrom++
		}
	}
	if withFrom == 0 {
		t.Errorf("no reply said the agent was taken over from n1")
	}
}

// TestDeregisteredOwner guards an owner that shut down cleanly (its registry row
// is gone): the next request takes the agent over at once.
func TestDeregisteredOwner(t *testing.T) {
	c := newCluster(t, "n1", "n2")
	c.claim("a", "n1")
	c.down("n1")
	if err := c.pg.Deregister(context.Background(), "n1"); err != nil {
		t.Fatal(err)
	}
	got := do(t, c.router, "POST", "/v1/exec", `{"agent_id":"a"}`)
	if got.status != 200 || got.node != "n2" || got.from != "n1" {
		t.Fatalf("got %+v", got)
	}
}

// TestSSEPassThrough guards streaming through the router: each event reaches the
// client as the node flushes it, before the node sends the next.
func TestSSEPassThrough(t *testing.T) {
	c := newCluster(t, "n1")
	c.claim("a", "n1")
	front := httptest.NewServer(c.router)
	defer front.Close()
	resp, err := http.Get(front.URL + "/v1/stream?agent_id=a")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	rd := bufio.NewReader(resp.Body)
	n := c.nodes["n1"]
	for _, ev := range []string{"one", "two", "three"} {
		n.stream <- ev // the node sends one event and waits for the next turn
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line != "data: "+ev+"\n" {
			t.Fatalf("got %q, want event %s", line, ev)
		}
		rd.ReadString('\n')
	}
	close(n.stream)
}

// TestAuth guards the router's key check against the cluster's keys in
// PostgreSQL: no key is 401 (nothing reaches a node), a key scoped to other agents
// may neither reach nor place an agent (403, no row), a valid key is forwarded with
// its Authorization header for the daemon to check again, and health needs none.
func TestAuth(t *testing.T) {
	c := newCluster(t, "n1")
	ctx := context.Background()
	mk := func(name string, admin bool, agents ...string) string {
		secret, hash, err := auth.Generate()
		if err != nil {
			t.Fatal(err)
		}
		if err := c.hist.CreateKey(ctx, auth.Key{ID: auth.NewID(), Name: name, Hash: hash, Admin: admin, Agents: agents, CreatedAt: time.Now().UTC()}); err != nil {
			t.Fatal(err)
		}
		return secret
	}
	admin := mk("ops", true)
	scoped := mk("team", false, "team-*")
	keys := auth.NewCache(c.hist, false, nil)
	if err := keys.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	rt := c.newRouter(keys)
	cases := []struct {
		name, key, agent string
		status           int
	}{
		{"no key", "", "team-1", 401},
		{"wrong key", "vmx_0000000000000000000000000000000000000000", "team-1", 401},
		{"scoped, out of scope", scoped, "other", 403},
		{"scoped, in scope", scoped, "team-1", 200},
		{"admin", admin, "other-2", 200},
	}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			var hdr []string
			if tt.key != "" {
				hdr = []string{"Authorization", "Bearer " + tt.key}
			}
			got := do(t, rt, "POST", "/v1/exec", fmt.Sprintf(`{"agent_id":%q}`, tt.agent), hdr...)
			if got.status != tt.status {
				t.Fatalf("status %d, want %d: %s", got.status, tt.status, got.body)
			}
			_, err := c.pg.Get(ctx, tt.agent)
			if placed := err == nil; placed != (tt.status == 200) {
				t.Errorf("agent %s placed: %v, want %v", tt.agent, placed, tt.status == 200)
			}
		})
	}
	n := c.nodes["n1"]
	n.mu.Lock()
	auths := n.auths
	n.mu.Unlock()
	if len(auths) != 2 || auths[0] != "Bearer "+scoped || auths[1] != "Bearer "+admin {
		t.Errorf("the node got Authorization headers %q, want the two accepted keys", auths)
	}
	if got := do(t, rt, "GET", "/health", ""); got.status != 200 {
		t.Errorf("health without a key: %+v", got)
	}
	// E2B's envd traffic carries the sandbox's access token, not a key (the daemon
	// checks it); its control plane sends the key as X-API-KEY.
	if got := do(t, rt, "POST", "/e2b/envd/files", `{}`, HeaderAgent, "team-1"); got.status != 200 {
		t.Errorf("envd traffic without a key: %+v", got)
	}
	if got := do(t, rt, "POST", "/e2b/envd/files", `{}`, HeaderAgent, "nobody-yet"); got.status != 404 {
		t.Errorf("a request without a key placed an agent: %+v", got)
	}
	if got := do(t, rt, "POST", "/e2b/api/v2/sandboxes", `{"metadata":{"agent_id":"team-2"}}`, "X-API-KEY", scoped); got.status != 200 {
		t.Errorf("E2B create with X-API-KEY: %+v", got)
	}
}

// TestStaticMembers guards the router on a membership source other than the
// registry (a static list probed on /health, as on bare hosts): it routes by the
// source's addresses, and a node the probes find gone loses its agents to a ready
// one.
func TestStaticMembers(t *testing.T) {
	c := newCluster(t, "n1", "n2")
	c.claim("a", "n1")
	var list []string
	for _, name := range []string{"n1", "n2"} {
		list = append(list, name+"="+c.nodes[name].hs.Listener.Addr().String())
	}
	m, err := membership.NewStatic(membership.StaticConfig{Nodes: list, Interval: 20 * time.Millisecond, FailureThreshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	rt, err := New(Config{Owners: c.pg, Members: Sourced{Src: m, Reg: c.pg}, Lookup: PGLookup{Pool: c.hist.Pool()},
		TakeoverWait: 5 * time.Second, CacheTTL: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if got := do(t, rt, "POST", "/v1/exec", `{"agent_id":"a"}`); got.node != "n1" {
		t.Fatalf("got %+v, want n1", got)
	}
	c.routers = append(c.routers, rt)
	c.down("n1")
	got := do(t, rt, "POST", "/v1/exec", `{"agent_id":"a"}`)
	if got.status != 200 || got.node != "n2" || got.from != "n1" {
		t.Fatalf("after n1 went away: %+v", got)
	}
	if o := c.owner("a"); o.Node != "n2" || o.Epoch != 2 {
		t.Errorf("owner %+v", o)
	}
}

// queryCounter counts the SQL statements run on a pool, by the table they name.
type queryCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (q *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, table := range []string{"cluster_nodes", "cluster_owners", "sandboxes", "snapshots", "runs"} {
		if strings.Contains(d.SQL, " "+table) {
			q.n[table]++
		}
	}
	return ctx
}

func (q *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (q *queryCounter) take() map[string]int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.n
	q.n = map[string]int{}
	return n
}

// TestQueriesPerRequest guards the router's read caches: many requests for one
// sandbox read the node list, the sandbox's agent and the owner row once (within
// the caches' lifetimes), not once or twice per request; a node that does not
// answer makes the next request read the node list again; the object → agent map is
// bounded.
func TestQueriesPerRequest(t *testing.T) {
	c := newCluster(t, "n1", "n2")
	ctx := context.Background()
	c.claim("bob", "n2")
	if err := c.hist.PutSandbox(ctx, history.Sandbox{ID: "sb-bob", AgentID: "bob", Backend: "gvisor", CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(c.url)
	if err != nil {
		t.Fatal(err)
	}
	qc := &queryCounter{n: map[string]int{}}
	cfg.ConnConfig.Tracer = qc
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	pg, err := cluster.NewPostgres(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := New(Config{Owners: pg, Members: Registry{Reg: pg}, Lookup: PGLookup{Pool: pool},
		CacheTTL: time.Hour, NodesTTL: time.Hour, LookupCacheSize: 2, TakeoverWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c.routers = append(c.routers, rt)
	qc.take()
	const reqs = 25
	for range reqs {
		if got := do(t, rt, "POST", "/v1/sandboxes/sb-bob/exec", `{"code":"1"}`); got.status != 200 || got.node != "n2" {
			t.Fatalf("got %+v", got)
		}
	}
	// One node-list read is Registry's two ListReady queries (every node, and the
	// ready ones).
	want := map[string]int{"cluster_nodes": 2, "sandboxes": 1, "cluster_owners": 1}
	if got := qc.take(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%d requests ran queries %v, want %v", reqs, got, want)
	}

	// A node that does not answer: the list is read again at once (and the
	// takeover reads it afresh), even though NodesTTL has not passed.
	c.kill("n2")
	if got := do(t, rt, "POST", "/v1/sandboxes/sb-bob/exec", `{"code":"1"}`); got.status != 200 || got.node != "n1" || got.from != "n2" {
		t.Fatalf("after n2 died: %+v", got)
	}
	if got := qc.take(); got["cluster_nodes"] < 2 || got["sandboxes"] != 0 {
		t.Errorf("a failed proxy ran queries %v: want the node list read again, the sandbox's agent from memory", got)
	}
	for range reqs {
		if got := do(t, rt, "POST", "/v1/sandboxes/sb-bob/exec", `{"code":"1"}`); got.node != "n1" {
			t.Fatalf("got %+v", got)
		}
	}
	if got := qc.take(); got["cluster_nodes"] > 2 || got["sandboxes"] != 0 || got["cluster_owners"] != 0 {
		t.Errorf("%d requests after the takeover ran queries %v, want at most one node-list read", reqs, got)
	}

	// Unknown objects are not remembered (one may be created next); known ones are,
	// up to LookupCacheSize.
	for range 3 {
		if got := do(t, rt, "GET", "/v1/runs/ex-later", ""); got.status != 404 {
			t.Fatalf("unknown run: %+v", got)
		}
	}
	if got := qc.take(); got["runs"] != 3 {
		t.Errorf("3 requests for an unknown run read it %d times, want 3", got["runs"])
	}
	if err := c.hist.PutSandbox(ctx, history.Sandbox{ID: "sb-2", AgentID: "bob", Backend: "gvisor", CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	if err := c.hist.PutSandbox(ctx, history.Sandbox{ID: "sb-3", AgentID: "bob", Backend: "gvisor", CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	for _, sb := range []string{"sb-2", "sb-3", "sb-bob"} {
		if got := do(t, rt, "GET", "/v1/sandboxes/"+sb, ""); got.node != "n1" {
			t.Fatalf("sandbox %s: %+v", sb, got)
		}
	}
	if got := qc.take(); got["sandboxes"] != 3 {
		t.Errorf("with room for 2 mappings, sb-2, sb-3 then sb-bob ran %d sandbox lookups, want 3 (sb-bob was evicted)", got["sandboxes"])
	}
	if n := rt.cfg.Lookup.(*cachedLookup).len(); n != 2 {
		t.Errorf("the lookup cache holds %d mappings, want 2", n)
	}
}

// TestPartlyWrittenIsNotResent guards the router's one resend: a request is sent
// again (to the owner once it answers, or to a node that took the agent over) only
// when none of it reached the node. A node that reads a request's head and then
// resets the connection while the body is still being written (alive: it answers
// the router's probe) got the request in part and may have acted on it: the router
// answers 502 and never sends it a second time.
func TestPartlyWrittenIsNotResent(t *testing.T) {
	c := newCluster(t, "n1")
	n := &fakeNode{name: "n2", compat: "gvisor/v1/systrap", stream: make(chan string)}
	var execs atomic.Int64
	n.hs = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/exec") {
			n.ServeHTTP(w, r)
			return
		}
		execs.Add(1)
		io.CopyN(io.Discard, r.Body, 1<<10) // a little of the body, then a reset
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	}))
	t.Cleanup(n.hs.Close)
	c.nodes["n2"] = n
	if err := c.pg.Register(context.Background(), cluster.Node{Name: "n2", Address: n.hs.Listener.Addr().String(), Capacity: 10}); err != nil {
		t.Fatal(err)
	}
	c.claim("bob", "n2")
	body := `{"agent_id":"bob","code":"` + strings.Repeat("x", 4<<20-64) + `"}`
	for i := range 5 {
		execs.Store(0)
		got := do(t, c.router, "POST", "/v1/exec", body)
		if got.status != http.StatusBadGateway || !strings.Contains(got.body, "it may have run") {
			t.Errorf("attempt %d: status %d (%.200s), want 502 saying the request may have run", i, got.status, got.body)
		}
		if n := execs.Load(); n != 1 {
			t.Fatalf("attempt %d: the node got the request %d times, want once", i, n)
		}
	}
	if o := c.owner("bob"); o.Node != "n2" || o.Epoch != 1 {
		t.Errorf("a node that answers lost its agent: %+v", o)
	}
}

// downMembers is a node registry that is down: each read takes a while, then fails.
type downMembers struct{ reads atomic.Int64 }

func (m *downMembers) Nodes(ctx context.Context) ([]cluster.Node, map[string]bool, error) {
	m.reads.Add(1)
	time.Sleep(300 * time.Millisecond)
	return nil, nil, errors.New("registry down")
}

// TestMembersOutage guards the node list's cache with the registry down: requests
// that queued behind a read that failed get its error, rather than each reading in
// turn (the last one waiting for all the reads before it).
func TestMembersOutage(t *testing.T) {
	c := newCluster(t, "n1")
	m := &downMembers{}
	rt, err := New(Config{Owners: c.pg, Members: m, Lookup: PGLookup{Pool: c.hist.Pool()},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	const reqs = 8
	start := time.Now()
	var wg sync.WaitGroup
	statuses := make([]int, reqs)
	for i := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = do(t, rt, "POST", "/v1/exec", `{"agent_id":"a"}`).status
		}()
	}
	wg.Wait()
	took := time.Since(start)
	for i, s := range statuses {
		if s < 500 {
			t.Errorf("request %d: status %d with the registry down, want a server error", i, s)
		}
	}
	if n := m.reads.Load(); n > 2 || took > 2*time.Second {
		t.Errorf("%d requests read the registry %d times and took %s, want at most 2 reads (those that queued share one)", reqs, n, took)
	}
}
