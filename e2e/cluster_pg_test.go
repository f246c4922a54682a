package e2e

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/client"
	"github.com/vmexec/vmexec/internal/cluster"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/history/postgres"
	"github.com/vmexec/vmexec/internal/history/postgres/pgtest"
)

// TestClusterPostgresFencing guards cluster mode on one real daemon and a real
// PostgreSQL: with cluster.postgres_url set the daemon keeps its history there,
// claims an agent on its first run and registers its node; once the agent is taken
// over by another node (as a router would), the daemon refuses the agent's runs with
// 409 naming the new owner, before and after a restart, while other agents run.
func TestClusterPostgresFencing(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	cfgPath := filepath.Join(t.TempDir(), "vmexec.yaml")
	if err := os.WriteFile(cfgPath, []byte("cluster:\n  postgres_url: "+url+"\n  node_name: node-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, daemonOpts{extra: []string{"--config", cfgPath}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run := func(agent, code string) (*api.ExecResult, error) {
		return d.client.Exec(ctx, api.ExecRequest{AgentID: agent, Language: "bash", Code: code})
	}

	res, err := run("agent-a", "echo kept > /tmp/f; cat /tmp/f")
	if err != nil || res.Verdict != api.VerdictOK || strings.TrimSpace(res.Stdout) != "kept" {
		t.Fatalf("first run: %+v, %v", res, err)
	}

	hist, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	if r, err := hist.GetRun(ctx, res.ExecutionID); err != nil || r.Verdict != history.VerdictOK || r.AgentID != "agent-a" {
		t.Fatalf("the run in PostgreSQL: %+v, %v", r, err)
	}
	own := clusterOwnership(t, ctx, url)
	o, err := own.Get(ctx, "agent-a")
	if err != nil || o.Node != "node-1" || o.Epoch != 1 || o.Sandbox != res.SandboxID {
		t.Fatalf("owner after the first run: %+v, %v; want node-1 at epoch 1 with sandbox %s", o, err, res.SandboxID)
	}
	nodes, err := own.ListReady(ctx, cluster.ReadyWithin)
	if err != nil || len(nodes) != 1 || nodes[0].Name != "node-1" || nodes[0].Address == "" {
		t.Errorf("ready nodes: %+v, %v; want node-1 with its address", nodes, err)
	}

	// node-1 is cut off (not dead); a router moves agent-a to node-2.
	if _, err := own.Takeover(ctx, "agent-a", "node-2", o.Epoch); err != nil {
		t.Fatal(err)
	}
	refused := func(when string) {
		t.Helper()
		_, err := run("agent-a", "echo stale >> /tmp/f")
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Status != http.StatusConflict || !strings.Contains(ce.Message, `"node-2"`) {
			t.Fatalf("%s: run for a taken-over agent: %v; want 409 naming node-2", when, err)
		}
	}
	refused("cut off")
	if res, err := run("agent-b", "echo b"); err != nil || res.Verdict != api.VerdictOK {
		t.Errorf("another agent's run on node-1: %+v, %v", res, err)
	}

	// agent-c is taken over while its run is in flight: the run is not acknowledged.
	type answer struct {
		res *api.ExecResult
		err error
	}
	answered := make(chan answer, 1)
	go func() {
		res, err := run("agent-c", "touch /tmp/mine; sleep 5; echo done")
		answered <- answer{res, err}
	}()
	var inFlight history.Run
	waitUntil(t, "agent-c's run is in flight", func() bool {
		runs, _, err := hist.ListRuns(ctx, history.RunFilter{AgentID: "agent-c"})
		if err == nil && len(runs) == 1 && runs[0].Status == history.StatusRunning {
			inFlight = runs[0]
			return true
		}
		return false
	})
	oc, err := own.Get(ctx, "agent-c")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := own.Takeover(ctx, "agent-c", "node-3", oc.Epoch); err != nil {
		t.Fatal(err)
	}
	a := <-answered
	var ce *client.Error
	if !errors.As(a.err, &ce) || ce.Status != http.StatusConflict || !strings.Contains(ce.Message, `"node-3"`) {
		t.Fatalf("run whose agent was taken over mid-run: %+v, %v; want 409 naming node-3", a.res, a.err)
	}
	if r, err := hist.GetRun(ctx, inFlight.ID); err != nil || r.Status != history.StatusError {
		t.Errorf("the unacknowledged run is recorded as %+v, %v; want status error", r, err)
	}
	sbs, err := hist.ListSandboxes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sb := range sbs {
		if sb.AgentID == "agent-c" && sb.HeadRunID == inFlight.ID {
			t.Errorf("sandbox %s's durable head is the unacknowledged run %s", sb.ID, inFlight.ID)
		}
	}

	d.stop()
	d.start()
	refused("after a restart")
	n, err := hist.CountRuns(ctx, history.RunFilter{AgentID: "agent-a"})
	if err != nil || n != 1 {
		t.Errorf("agent-a has %d runs in the history (%v); the refused ones must not run", n, err)
	}
}

// TestClusterTwoNodes guards two real daemons sharing one PostgreSQL: the second's
// start leaves the first's snapshot records alone; each refuses the agent the other
// owns, naming it; after a takeover (as a router would do) the agent runs on the new
// node with its history continuous (the first node's runs listed there), and the old
// node refuses it.
func TestClusterTwoNodes(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewDatabase(t)
	node := func(name string) *daemon {
		p := filepath.Join(t.TempDir(), "vmexec.yaml")
		if err := os.WriteFile(p, []byte("cluster:\n  postgres_url: "+url+"\n  node_name: "+name+"\nsandbox:\n  pool_size: 0\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return startDaemon(t, daemonOpts{extra: []string{"--config", p}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run := func(d *daemon, code string) (*api.ExecResult, error) {
		return d.client.Exec(ctx, api.ExecRequest{AgentID: "agent-a", Language: "bash", Code: code})
	}
	refusedBy := func(d *daemon, owner string) {
		t.Helper()
		_, err := run(d, "echo no")
		var ce *client.Error
		if !errors.As(err, &ce) || ce.Status != http.StatusConflict || !strings.Contains(ce.Message, `"`+owner+`"`) {
			t.Fatalf("run on the node that does not own agent-a: %v; want 409 naming %s", err, owner)
		}
	}

	n1 := node("node-1")
	first, err := run(n1, "echo one > /tmp/f")
	if err != nil || first.Verdict != api.VerdictOK {
		t.Fatalf("first run on node-1: %+v, %v", first, err)
	}
	hist, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer hist.Close()
	before, err := hist.ListAllSnapshots(ctx)
	if err != nil || len(before) == 0 {
		t.Fatalf("node-1's snapshots: %v, %v", before, err)
	}

	n2 := node("node-2")
	for _, sn := range before {
		if _, err := hist.GetSnapshot(ctx, sn.ID); err != nil {
			t.Errorf("node-1's snapshot record %s after node-2 started: %v; want it kept", sn.ID, err)
		}
	}
	refusedBy(n2, "node-1")

	own := clusterOwnership(t, ctx, url)
	o, err := own.Get(ctx, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := own.Takeover(ctx, "agent-a", "node-2", o.Epoch); err != nil {
		t.Fatal(err)
	}
	second, err := run(n2, "echo two")
	if err != nil || second.Verdict != api.VerdictOK {
		t.Fatalf("run on node-2 after the takeover: %+v, %v", second, err)
	}
	list, err := n2.client.History(ctx, client.HistoryQuery{AgentID: "agent-a"})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range list.Runs {
		ids = append(ids, r.ID)
	}
	if !strings.Contains(strings.Join(ids, " "), first.ExecutionID) || !strings.Contains(strings.Join(ids, " "), second.ExecutionID) {
		t.Errorf("node-2's history of agent-a: %v; want node-1's run %s and its own %s", ids, first.ExecutionID, second.ExecutionID)
	}
	refusedBy(n1, "node-2")
	nodes, err := own.ListReady(ctx, cluster.ReadyWithin)
	if err != nil || len(nodes) != 2 {
		t.Errorf("ready nodes: %+v, %v; want node-1 and node-2", nodes, err)
	}
}

// clusterOwnership opens the ownership and node tables of the cluster database at
// url, as a router would, closed when t ends.
func clusterOwnership(t *testing.T, ctx context.Context, url string) *cluster.Postgres {
	t.Helper()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	own, err := cluster.NewPostgres(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	return own
}
