package sandbox

import (
	"context"
	"sync"
)

// turn is a FIFO lock whose waiters honour their context: each waiter queues a
// channel and the holder hands the turn to the first one by closing it, so arrival
// order is service order and nobody barges in. A waiter whose context ends leaves
// the queue; if the turn was handed to it meanwhile, it passes it on. Its zero
// value is free.
type turn struct {
	mu       sync.Mutex
	held     bool
	queue    []waiter
	requests int // queued waiters that are requests (they count against the bound)
}

type waiter struct {
	ch      chan struct{}
	request bool
}

// lock takes the turn, waiting in arrival order until ctx ends. A request (limit >
// 0) is refused with errQueueFull when limit requests are already queued; other
// waiters (background work, Close) are never refused and do not count.
func (t *turn) lock(ctx context.Context, limit int) error {
	t.mu.Lock()
	if !t.held {
		t.held = true
		t.mu.Unlock()
		return nil
	}
	if limit > 0 && t.requests >= limit {
		t.mu.Unlock()
		return errQueueFull
	}
	w := waiter{ch: make(chan struct{}), request: limit > 0}
	t.queue = append(t.queue, w)
	if w.request {
		t.requests++
	}
	t.mu.Unlock()
	select {
	case <-w.ch:
		return nil
	case <-ctx.Done():
	}
	t.mu.Lock()
	for i, q := range t.queue {
		if q.ch == w.ch {
			t.queue = append(t.queue[:i], t.queue[i+1:]...)
			if w.request {
				t.requests--
			}
			t.mu.Unlock()
			return ctx.Err()
		}
	}
	t.mu.Unlock()
	t.unlock() // handed over as ctx ended: pass it on
	return ctx.Err()
}

// tryLock takes the turn if it is free.
func (t *turn) tryLock() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.held {
		return false
	}
	t.held = true
	return true
}

// unlock hands the turn to the first waiter, or frees it.
func (t *turn) unlock() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.queue) == 0 {
		t.held = false
		return
	}
	next := t.queue[0]
	t.queue = t.queue[1:]
	if next.request {
		t.requests--
	}
	close(next.ch)
}

// waiters is how many requests are queued for the turn.
func (t *turn) waiters() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.requests
}
