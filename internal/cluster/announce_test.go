package cluster

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/history/postgres/pgtest"
)

// waitUntil polls cond (tests order steps by it, not by sleeping); it fails the
// test after 20 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAnnounce guards a daemon's presence in the registry: it is listed ready with
// its load while it runs, comes back if its row is deleted, and is gone as soon as
// it stops.
func TestAnnounce(t *testing.T) {
	srv := pgtest.Start(t)
	p := newCluster(t, srv, 1)[0]
	ctx, cancel := context.WithCancel(context.Background())
	var load atomic.Int64
	load.Store(2)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Announce(ctx, p, Node{Name: "n1", Address: "127.0.0.1:8080", Capacity: 64}, 20*time.Millisecond, load.Load, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	defer func() { cancel(); <-done }()
	ready := func(load int64) func() bool {
		return func() bool {
			ns, err := p.ListReady(context.Background(), time.Minute)
			return err == nil && len(ns) == 1 && ns[0].Name == "n1" && ns[0].Load == load && ns[0].Capacity == 64
		}
	}
	waitUntil(t, "n1 is ready with load 2", ready(2))
	load.Store(5)
	waitUntil(t, "a heartbeat carries load 5", ready(5))
	if err := p.Deregister(context.Background(), "n1"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "n1 registers again after its row was deleted", ready(5))
	cancel()
	<-done
	if ns, err := p.ListReady(context.Background(), time.Hour); err != nil || len(ns) != 0 {
		t.Errorf("after the daemon stopped: %+v, %v; want no node", ns, err)
	}
}
