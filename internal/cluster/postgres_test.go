package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/vmexec/vmexec/internal/history/postgres/pgtest"
)

// newCluster returns `nodes` handles on one fresh database, each with its own
// connection pool, as separate daemons would have.
func newCluster(t *testing.T, srv *pgtest.Server, nodes int) []*Postgres {
	t.Helper()
	url := srv.NewDatabase(t)
	var out []*Postgres
	for range nodes {
		pool, err := pgxpool.New(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		p, err := NewPostgres(context.Background(), pool)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// TestConcurrentTakeovers guards the compare-and-set a router's takeover relies on:
// of many nodes racing to take one agent over from the epoch they all read, exactly
// one wins, the others are refused with the winner's row, and the epoch grows by one.
func TestConcurrentTakeovers(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	const n = 16
	ps := newCluster(t, srv, 4)
	first, err := ps[0].Claim(ctx, "agent-a", "node-0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ps[0].Update(ctx, Owner{Agent: "agent-a", Node: "node-0", Epoch: first.Epoch, Sandbox: "sb-1", DurableSnapshotKey: "snap/key-1"}); err != nil {
		t.Fatal(err)
	}
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		winners = make(chan Owner, n)
		refused = make(chan *OwnerError, n)
		failed  = make(chan error, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			o, err := ps[i%len(ps)].Takeover(ctx, "agent-a", fmt.Sprintf("node-%d", i+1), first.Epoch)
			var oe *OwnerError
			switch {
			case err == nil:
				winners <- o
			case errors.As(err, &oe) && errors.Is(err, ErrStale):
				refused <- oe
			default:
				failed <- err
			}
		}()
	}
	close(start)
	wg.Wait()
	close(winners)
	close(refused)
	close(failed)
	for err := range failed {
		t.Errorf("takeover failed other than by losing: %v", err)
	}
	var won []Owner
	for o := range winners {
		won = append(won, o)
	}
	if len(won) != 1 {
		t.Fatalf("%d takeovers won, want exactly 1: %+v", len(won), won)
	}
	w := won[0]
	if w.Epoch != first.Epoch+1 || w.State != StateActive || w.DurableSnapshotKey != "snap/key-1" || w.Sandbox != "sb-1" {
		t.Errorf("winner's row %+v: want epoch %d, active, the durable snapshot key and sandbox kept", w, first.Epoch+1)
	}
	losers := 0
	for oe := range refused {
		losers++
		if oe.Owner.Node != w.Node || oe.Owner.Epoch != w.Epoch {
			t.Errorf("a loser was told %q owns it at epoch %d; the winner is %q at %d", oe.Owner.Node, oe.Owner.Epoch, w.Node, w.Epoch)
		}
	}
	if losers != n-1 {
		t.Errorf("%d refused, want %d", losers, n-1)
	}
	if got, err := ps[1].Get(ctx, "agent-a"); err != nil || got.Node != w.Node || got.Epoch != w.Epoch {
		t.Errorf("row after the race: %+v, %v; want the winner's", got, err)
	}
}

// TestConcurrentClaims guards a new agent's first runs landing on several nodes at
// once: one node gets it at epoch 1, the others are told which node owns it.
func TestConcurrentClaims(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	ps := newCluster(t, srv, 4)
	const n = 12
	var wg sync.WaitGroup
	type result struct {
		node string
		o    Owner
		err  error
	}
	results := make([]result, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := fmt.Sprintf("node-%d", i)
			o, err := ps[i%len(ps)].Claim(ctx, "agent-new", node)
			results[i] = result{node, o, err}
		}()
	}
	wg.Wait()
	var owner string
	for _, r := range results {
		if r.err == nil {
			if owner != "" {
				t.Fatalf("both %s and %s claimed the agent", owner, r.node)
			}
			owner = r.node
			if r.o.Epoch != 1 {
				t.Errorf("first claim at epoch %d, want 1", r.o.Epoch)
			}
		}
	}
	if owner == "" {
		t.Fatal("no claim won")
	}
	for _, r := range results {
		if r.err == nil {
			continue
		}
		var oe *OwnerError
		if !errors.As(r.err, &oe) || !errors.Is(r.err, ErrOwned) || oe.Owner.Node != owner {
			t.Errorf("%s: %v; want ErrOwned naming %s", r.node, r.err, owner)
		}
		if !strings.Contains(r.err.Error(), owner) {
			t.Errorf("refusal %q does not name the owner %s", r.err, owner)
		}
	}
	// Claiming again from the owner is idempotent.
	if o, err := ps[0].Claim(ctx, "agent-new", owner); err != nil || o.Epoch != 1 || o.Node != owner {
		t.Errorf("owner claims again: %+v, %v", o, err)
	}
}

// TestFencedWrites guards the fence: after a takeover, the old owner's checks,
// updates and releases are refused with the new owner named, and leave the row as
// the new owner wrote it.
func TestFencedWrites(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	p := newCluster(t, srv, 1)[0]
	o1, err := p.Claim(ctx, "a", "n1")
	if err != nil {
		t.Fatal(err)
	}
	if o, err := p.Check(ctx, "a", "n1", o1.Epoch); err != nil || o.Node != "n1" {
		t.Fatalf("owner's check: %+v, %v", o, err)
	}
	o2, err := p.Takeover(ctx, "a", "n2", o1.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	if o2, err = p.Update(ctx, Owner{Agent: "a", Node: "n2", Epoch: o2.Epoch, Sandbox: "sb-2", State: StateSuspended, DurableSnapshotKey: "k2"}); err != nil {
		t.Fatalf("new owner's update: %v", err)
	}
	// Empty fields keep their value.
	if o, err := p.Update(ctx, Owner{Agent: "a", Node: "n2", Epoch: o2.Epoch}); err != nil || o.Sandbox != "sb-2" || o.DurableSnapshotKey != "k2" || o.State != StateSuspended {
		t.Fatalf("update with empty fields: %+v, %v; want the row unchanged", o, err)
	}
	stale := []struct {
		name string
		call func() error
	}{
		{"check", func() error { _, err := p.Check(ctx, "a", "n1", o1.Epoch); return err }},
		{"update", func() error {
			_, err := p.Update(ctx, Owner{Agent: "a", Node: "n1", Epoch: o1.Epoch, Sandbox: "sb-old", DurableSnapshotKey: "old"})
			return err
		}},
		{"release", func() error { return p.Release(ctx, "a", "n1", o1.Epoch) }},
		{"second takeover from the old epoch", func() error {
			_, err := p.Takeover(ctx, "a", "n3", o1.Epoch)
			return err
		}},
	}
	for _, tc := range stale {
		err := tc.call()
		var oe *OwnerError
		if !errors.As(err, &oe) || !errors.Is(err, ErrStale) || oe.Owner.Node != "n2" {
			t.Errorf("%s by the old owner: %v; want ErrStale naming n2", tc.name, err)
		}
	}
	got, err := p.Get(ctx, "a")
	if err != nil || got.Node != "n2" || got.Epoch != o2.Epoch || got.Sandbox != "sb-2" || got.DurableSnapshotKey != "k2" || got.State != StateSuspended {
		t.Errorf("row after refused writes: %+v, %v; want the new owner's %+v", got, err, o2)
	}
	if _, err := p.Takeover(ctx, "missing", "n1", 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("takeover of an unowned agent: %v, want ErrNotFound", err)
	}
	if err := p.Release(ctx, "a", "n2", o2.Epoch); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after release: %v, want ErrNotFound", err)
	}
	if o, err := p.Claim(ctx, "a", "n3"); err != nil || o.Epoch != 1 {
		t.Errorf("claim after release: %+v, %v", o, err)
	}
}

// TestFence guards the daemon's view: a node claims on first use, another node is
// refused naming the owner, a node cut off and taken over from is refused (stale)
// and, restarted or not, stays refused while the other node owns the agent, told
// that its claim is stale.
func TestFence(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	ps := newCluster(t, srv, 3)
	n1, n2 := NewFence(ps[0], "node-1"), NewFence(ps[1], "node-2")
	if err := n1.Hold(ctx, "a", ""); err != nil {
		t.Fatalf("first hold: %v", err)
	}
	if err := n1.Hold(ctx, "a", "sb-1"); err != nil || n1.Epoch("a") != 1 {
		t.Fatalf("holding again: %v, epoch %d", err, n1.Epoch("a"))
	}
	if o, err := ps[2].Get(ctx, "a"); err != nil || o.Sandbox != "sb-1" {
		t.Errorf("the row after a hold for sandbox sb-1: %+v, %v; want it to name sb-1", o, err)
	}
	err := n2.Hold(ctx, "a", "sb-x")
	if !errors.Is(err, ErrOwned) || !strings.Contains(err.Error(), "node-1") {
		t.Fatalf("other node's hold: %v; want ErrOwned naming node-1", err)
	}
	// The router takes the agent over for node-2 (node-1 is cut off, not dead).
	if _, err := ps[2].Takeover(ctx, "a", "node-2", 1); err != nil {
		t.Fatal(err)
	}
	err = n1.Hold(ctx, "a", "sb-1")
	if !errors.Is(err, ErrStale) || !strings.Contains(err.Error(), `"node-2"`) {
		t.Fatalf("cut-off node's hold: %v; want ErrStale naming node-2", err)
	}
	var f interface{ Fenced() bool }
	if !errors.As(err, &f) || !f.Fenced() {
		t.Errorf("a refusal does not say it is one (Fenced): %T", err)
	}
	// Once it forgot its epoch (the next hold, or a restart), the node is refused as
	// any other node would be, and told that its own claim is the stale one.
	stale := `this node's claim (epoch 1) is stale: agent "a" was taken over by node "node-2" at epoch 2`
	if err := n1.Hold(ctx, "a", "sb-1"); !errors.Is(err, ErrOwned) || err.Error() != stale {
		t.Errorf("cut-off node's next hold: %v; want ErrOwned saying %q", err, stale)
	}
	restarted := NewFence(ps[0], "node-1")
	if err := restarted.Hold(ctx, "a", ""); !errors.Is(err, ErrOwned) || err.Error() != stale {
		t.Errorf("restarted node's hold: %v; want ErrOwned saying %q", err, stale)
	}
	never := NewFence(ps[2], "node-3")
	if err := never.Hold(ctx, "a", ""); !errors.Is(err, ErrOwned) || err.Error() != `agent "a" is owned by node "node-2" (epoch 2)` {
		t.Errorf("a node that never held the agent: %v; want the plain refusal", err)
	}
	if err := n2.Hold(ctx, "a", "sb-2"); err != nil || n2.Epoch("a") != 2 {
		t.Errorf("new owner's hold: %v, epoch %d; want nil at epoch 2", err, n2.Epoch("a"))
	}
	if o, err := ps[2].Get(ctx, "a"); err != nil || o.Sandbox != "sb-2" || o.Node != "node-2" {
		t.Errorf("the row after the new owner's hold: %+v, %v; want node-2's sandbox sb-2", o, err)
	}
}

// TestNodes guards the registry the router places agents with: registered nodes are
// listed ready with their address, capacity and load; a heartbeat updates the load;
// a node that stopped heartbeating drops out; an unknown node's heartbeat is refused.
func TestNodes(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	p := newCluster(t, srv, 1)[0]
	for _, n := range []Node{{Name: "n2", Address: "127.0.0.2:8080", Capacity: 20}, {Name: "n1", Address: "127.0.0.1:8080", Capacity: 10, Load: 3}} {
		if err := p.Register(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Heartbeat(ctx, "n2", 7); err != nil {
		t.Fatal(err)
	}
	if err := p.Heartbeat(ctx, "nope", 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("heartbeat of an unknown node: %v, want ErrNotFound", err)
	}
	got, err := p.ListReady(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "n1" || got[0].Load != 3 || got[0].Capacity != 10 || got[0].Address != "127.0.0.1:8080" ||
		got[1].Name != "n2" || got[1].Load != 7 || got[1].LastReady.IsZero() {
		t.Fatalf("ready nodes: %+v", got)
	}
	// n1 last said it was ready an hour ago (by the database's clock).
	if _, err := p.pool.Exec(ctx, `UPDATE cluster_nodes SET last_ready = clock_timestamp() - interval '1 hour' WHERE name = 'n1'`); err != nil {
		t.Fatal(err)
	}
	got, err = p.ListReady(ctx, time.Minute)
	if err != nil || len(got) != 1 || got[0].Name != "n2" {
		t.Errorf("ready within a minute: %+v, %v; want only n2", got, err)
	}
	if err := p.Register(ctx, Node{Name: "n1", Address: "127.0.0.9:8080", Capacity: 10}); err != nil {
		t.Fatal(err)
	}
	got, _ = p.ListReady(ctx, time.Minute)
	if len(got) != 2 || got[0].Address != "127.0.0.9:8080" {
		t.Errorf("after n1 re-registered at a new address: %+v", got)
	}
	if err := p.Deregister(ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	if got, _ := p.ListReady(ctx, time.Hour); len(got) != 1 {
		t.Errorf("after deregistering n2: %+v", got)
	}
}

// TestRecordDurable guards the durable snapshot key a daemon records on each
// upload: an upload of the agent's sandbox of record becomes the key, one of another
// sandbox of the agent does not, an agent this node holds no epoch for is skipped,
// and once another node took the agent over this node writes nothing (fenced).
func TestRecordDurable(t *testing.T) {
	srv := pgtest.Start(t)
	ctx := context.Background()
	ps := newCluster(t, srv, 2)
	fence := NewFence(ps[0], "node-a")
	if err := fence.Hold(ctx, "agent-1", "sb-1"); err != nil {
		t.Fatal(err)
	}
	key := func() string {
		o, err := ps[1].Get(ctx, "agent-1")
		if err != nil {
			t.Fatal(err)
		}
		return o.DurableSnapshotKey
	}
	if err := fence.RecordDurable(ctx, "agent-1", "sb-1", "sb-1/snap-1"); err != nil || key() != "sb-1/snap-1" {
		t.Fatalf("an upload of the agent's sandbox: %v, key %q", err, key())
	}
	if err := fence.RecordDurable(ctx, "agent-1", "sb-other", "sb-other/snap-9"); err != nil || key() != "sb-1/snap-1" {
		t.Fatalf("an upload of another sandbox of the agent: %v, key %q", err, key())
	}
	if err := fence.RecordDurable(ctx, "agent-2", "sb-2", "sb-2/snap-1"); err != nil {
		t.Fatalf("an agent this node does not hold: %v", err)
	}
	if _, err := ps[1].Get(ctx, "agent-2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("recording for an agent this node does not hold made a row: %v", err)
	}
	if _, err := ps[1].Takeover(ctx, "agent-1", "node-b", 1); err != nil {
		t.Fatal(err)
	}
	err := fence.RecordDurable(ctx, "agent-1", "sb-1", "sb-1/snap-2")
	if !errors.Is(err, ErrStale) || key() != "sb-1/snap-1" {
		t.Fatalf("a node that lost the agent: %v, key %q; want ErrStale and the key unchanged", err, key())
	}
}
