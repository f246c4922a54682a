package sandbox

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmexec/vmexec/internal/backend"
)

// stuckStandbys is a backend holding one standby that is still being made and does
// not finish: DropStandbys waits for it as the gVisor backend's does, until ctx ends.
type stuckStandbys struct {
	*fakeBackend
	drops atomic.Int64
}

var _ backend.StandbyHolder = (*stuckStandbys)(nil)

func (b *stuckStandbys) Name() string                             { return "stuck" }
func (b *stuckStandbys) Standbys() (int, int64)                   { return 1, 0 }
func (b *stuckStandbys) SetStandbyRoom(func(memBytes int64) bool) {}
func (b *stuckStandbys) DropStandbys(ctx context.Context) int {
	b.drops.Add(1)
	<-ctx.Done()
	return 1
}

// At the bound, a start has the standbys give way first; when they do not go before
// the caller's context ends, it is refused with that context's error, at once,
// rather than asking them again and again (a loop that spun on the CPU for as long as
// the standby took to be made).
func TestAdmitStopsWhenTheStandbysDoNotGo(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxSandboxes = 1 })
	held := &stuckStandbys{fakeBackend: newFake()}
	h.svc.mu.Lock()
	h.svc.backends[held.Name()] = held
	h.svc.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		release, err := h.svc.admit(ctx, 0, nil)
		if release != nil {
			release()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("admit: %v, want the context's deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("admit did not return; it asked the standbys to go %d times", held.drops.Load())
	}
	if n := held.drops.Load(); n != 1 {
		t.Errorf("admit asked the standbys to go %d times, want once", n)
	}
}
