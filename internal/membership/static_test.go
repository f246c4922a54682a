package membership

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmexec/vmexec/api"
)

// fakeDaemon is a real HTTP server on loopback answering GET /health as a vmexec daemon
// does, with a switch to answer 503 and a sandbox count.
type fakeDaemon struct {
	srv       *httptest.Server
	sick      atomic.Bool
	sandboxes atomic.Int64
	probes    atomic.Int64
}

func newFakeDaemon(t *testing.T) *fakeDaemon {
	d := &fakeDaemon{}
	d.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.probes.Add(1)
		if r.URL.Path != "/health" || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		if d.sick.Load() {
			http.Error(w, `{"error":"shutting down","code":"unavailable"}`, http.StatusServiceUnavailable)
			return
		}
		json.NewEncoder(w).Encode(api.Health{Service: "vmexec", Status: "healthy", Sandboxes: int(d.sandboxes.Load())})
	}))
	t.Cleanup(d.srv.Close)
	return d
}

func (d *fakeDaemon) addr() string { return d.srv.Listener.Addr().String() }

// waitFor waits, following Changed, until the view satisfies ok; it fails the test
// after a generous bound (no timing is asserted).
func waitFor(t *testing.T, m Members, what string, ok func([]Node) bool) []Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var last []Node
	for {
		ch := m.Changed()
		nodes, err := m.Nodes(ctx)
		if err != nil {
			t.Fatalf("waiting for %s: %v (last view %+v)", what, err, last)
		}
		last = nodes
		if ok(nodes) {
			return nodes
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v; last view %+v", what, ctx.Err(), last)
		}
	}
}

func byName(nodes []Node) map[string]Node {
	m := map[string]Node{}
	for _, n := range nodes {
		m[n.Name] = n
	}
	return m
}

// A router on bare hosts sees which daemons answer: a node is ready after a healthy
// probe, a daemon that dies (its listener closed) or answers 503 becomes not ready after
// the failure threshold, and one that comes back is ready again.
func TestStaticProbesRealServers(t *testing.T) {
	a, b := newFakeDaemon(t), newFakeDaemon(t)
	a.sandboxes.Store(3)
	// c is an address where nothing listens: a port that was free a moment ago.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := l.Addr().String()
	l.Close()

	m, err := NewStatic(StaticConfig{
		Nodes:    []string{"node-a=" + a.addr(), "http://" + b.addr(), "node-c=" + deadAddr},
		Interval: 20 * time.Millisecond, Timeout: 10 * time.Second, FailureThreshold: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	nodes := waitFor(t, m, "a and b ready", func(ns []Node) bool {
		n := byName(ns)
		return n["node-a"].Ready && n[b.addr()].Ready
	})
	got := byName(nodes)
	if len(nodes) != 3 || got["node-c"].Ready {
		t.Fatalf("want three nodes with node-c not ready, got %+v", nodes)
	}
	if got["node-a"].Address != a.addr() || got["node-a"].Load != 3 || got[b.addr()].Load != 0 {
		t.Fatalf("addresses or loads wrong: %+v", nodes)
	}
	if got["node-c"].Load != -1 {
		t.Fatalf("a never-reached node's load should be unknown (-1): %+v", got["node-c"])
	}
	for i := 1; i < len(nodes); i++ {
		if nodes[i-1].Name >= nodes[i].Name {
			t.Fatalf("nodes not sorted by name: %+v", nodes)
		}
	}

	// Load changes are seen.
	a.sandboxes.Store(5)
	waitFor(t, m, "node-a's load 5", func(ns []Node) bool { return byName(ns)["node-a"].Load == 5 })

	// b answers 503: not ready once the threshold is reached; a stays ready.
	b.sick.Store(true)
	waitFor(t, m, "b not ready after 503s", func(ns []Node) bool { return !byName(ns)[b.addr()].Ready })
	if !byName(mustNodes(t, m))["node-a"].Ready {
		t.Fatal("node-a became not ready when only b failed")
	}
	b.sick.Store(false)
	waitFor(t, m, "b ready again", func(ns []Node) bool { return byName(ns)[b.addr()].Ready })

	// a dies: its server is closed, connections refused.
	a.srv.Close()
	waitFor(t, m, "a not ready after it died", func(ns []Node) bool { return !byName(ns)["node-a"].Ready })
}

// One failed probe is not enough to drop a ready node (a blip), FailureThreshold in a
// row are.
func TestStaticThreshold(t *testing.T) {
	m := &Static{view: newView("test"), cfg: StaticConfig{FailureThreshold: 3, Logger: discardLogger()},
		nodes: []staticNode{{name: "n", address: "127.0.0.1:1"}}, state: map[string]Node{"n": {Name: "n", Address: "127.0.0.1:1", Load: -1}}, probed: map[string]bool{}}
	n := m.nodes[0]
	fail := errTest("refused")
	steps := []struct {
		err      error
		failures int
		want     bool
	}{
		{fail, 1, false}, // never succeeded: not ready
		{nil, 0, true},   // one success: ready
		{fail, 1, true},  // a blip
		{fail, 2, true},
		{fail, 3, false}, // threshold
		{nil, 0, true},
	}
	for i, s := range steps {
		m.record(n, 1, s.err, s.failures)
		if got := m.state["n"].Ready; got != s.want {
			t.Fatalf("step %d (err %v, failures %d): ready %v, want %v", i, s.err, s.failures, got, s.want)
		}
	}
}

// A wrong node list is refused with what is wrong, before anything starts.
func TestStaticConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		nodes []string
		want  string
	}{
		{nil, "no nodes given"},
		{[]string{"10.0.0.1"}, "needs a port"},
		{[]string{"ftp://h:1"}, "want host:port"},
		{[]string{"http://h:1/path"}, "want host:port"},
		{[]string{"a=h:1", "a=h:2"}, "given twice"},
		{[]string{"=h:1"}, "empty"},
	} {
		_, err := NewStatic(StaticConfig{Nodes: tc.nodes})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("nodes %q: err %v, want one saying %q", tc.nodes, err, tc.want)
		}
	}
}

// Nodes waits for every node's first probe, bounded by its context; after Close it
// fails with ErrClosed and Changed's channel is closed, so watcher loops end.
func TestStaticLifecycle(t *testing.T) {
	// A server that never answers holds the first probe round open.
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(hang)
	m, err := NewStatic(StaticConfig{Nodes: []string{srv.Listener.Addr().String()}, Interval: time.Minute, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := m.Nodes(ctx); !isNotSynced(err) {
		t.Fatalf("Nodes before the first probe: err %v, want ErrNotSynced", err)
	}
	ch := m.Changed()
	m.Close()
	m.Close() // idempotent
	select {
	case <-ch:
	default:
		t.Fatal("Changed's channel not closed by Close")
	}
	if _, err := m.Nodes(context.Background()); !isClosed(err) {
		t.Fatalf("Nodes after Close: err %v, want ErrClosed", err)
	}
}

func mustNodes(t *testing.T, m Members) []Node {
	t.Helper()
	n, err := m.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}
