package gvisor

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/testenv"
)

// Two refills asking the service for room at the same moment do not both get the
// one room there is: each standby is counted (in Standbys) before the service is
// asked, so the second asks with the first counted. The room check here is the
// service's: at most one standby.
func TestRefillsShareTheRoom(t *testing.T) {
	testenv.Root(t)
	b, err := New(Config{Runsc: testenv.Runsc(t), StateDir: t.TempDir(), AgentPath: testenv.Agent(t), Standbys: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	var arrived sync.WaitGroup
	arrived.Add(2)
	both := make(chan struct{})
	go func() { arrived.Wait(); close(both) }()
	b.SetStandbyRoom(func(int64) bool {
		arrived.Done() // each refill's first question: hold both until both have asked
		select {
		case <-both:
		case <-time.After(10 * time.Second):
			t.Error("the two refills did not ask for room at the same time")
		}
		b.SetStandbyRoom(func(int64) bool { return false }) // later questions: no room
		n, _ := b.Standbys()
		return n <= 1
	})
	spec := backend.Spec{ID: "unused", Template: testenv.Template(t), MemoryBytes: 256 << 20}
	var refills sync.WaitGroup
	for range 2 {
		refills.Add(1)
		go func() { defer refills.Done(); b.refillStandby(spec) }()
	}
	refills.Wait()
	if n, mem := b.Standbys(); n != 1 || mem != 256<<20 {
		t.Errorf("after two refills with room for one standby: %d standbys, %d bytes", n, mem)
	}
	b.standbys.wg.Wait() // the fill made, and kept
	if n, _ := b.Standbys(); n != 1 {
		t.Errorf("once made: %d standbys, want 1", n)
	}
}
