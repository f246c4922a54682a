package sandbox

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/vmexec/vmexec/internal/backend"
)

// Capacity: how many sandboxes live at once and how much memory they are given.
// Every start (a new sandbox, a resume, a rollback of a suspended one, a fork) is
// admitted first; the pool fills only with room to spare; at a bound the least
// recently used idle sandbox is suspended rather than a request refused.

// usage counts the live sandboxes (pooled, filling and starting ones included, and
// the backends' standbys) and the memory they were given; s.mu held.
func (s *Service) usage() (n int, memMB int64) {
	n, memMB = s.standbyUsage()
	n += len(s.pool) + s.filling + s.startingN
	memMB += int64(len(s.pool)+s.filling)*s.cfg.Defaults.MemoryMB + s.startingMB
	for _, e := range s.sandboxes {
		if e.live.Load() {
			n++
			memMB += e.memoryMB
		}
	}
	return n, memMB
}

// admit reserves room for one more sandbox of memMB: under MaxSandboxes and within
// the memory budget (the host's memory by default). At the bound it makes room: the
// backends' standbys are dropped first, then a pool sandbox is destroyed, else the least recently used idle sandbox (not
// except) is suspended. It refuses with ErrLimit when nothing can give way. The
// caller calls release once its sandbox is live (or failed to start).
func (s *Service) admit(ctx context.Context, memMB int64, except *entry) (release func(), err error) {
	for attempt := 0; ; attempt++ {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, fmt.Errorf("the server is shutting down: %w", ErrClosed)
		}
		n, used := s.usage()
		fitsN := n+1 <= s.cfg.MaxSandboxes
		fitsMem := s.memBudgetMB <= 0 || used+memMB <= s.memBudgetMB
		if fitsN && fitsMem {
			s.startingN++
			s.startingMB += memMB
			s.mu.Unlock()
			var once sync.Once
			return func() {
				once.Do(func() {
					s.mu.Lock()
					s.startingN--
					s.startingMB -= memMB
					s.mu.Unlock()
				})
			}, nil
		}
		if s.memBudgetMB > 0 && memMB > s.memBudgetMB {
			s.mu.Unlock()
			return nil, fmt.Errorf("a sandbox of %d MiB does not fit the server's memory budget of %d MiB: %w", memMB, s.memBudgetMB, ErrLimit)
		}
		if k, _ := s.standbyUsage(); k > 0 {
			s.mu.Unlock()
			s.dropStandbys(ctx)
			if err := ctx.Err(); err != nil { // standbys being made still count: do not ask again and again
				return nil, fmt.Errorf("making room for a sandbox (standbys giving way): %w", err)
			}
			continue
		}
		if len(s.pool) > 0 {
			p := s.pool[len(s.pool)-1]
			s.pool = s.pool[:len(s.pool)-1]
			s.mu.Unlock()
			p.sb.Destroy(context.Background())
			continue
		}
		victim := s.idlest(except)
		s.mu.Unlock()
		if victim == nil || attempt >= 8 {
			why := fmt.Sprintf("%d sandboxes are running, the configured maximum (max_sandboxes)", n)
			if fitsN {
				why = fmt.Sprintf("running sandboxes hold %d MiB of the %d MiB memory budget (memory_budget_mb), %d MiB more do not fit", used, s.memBudgetMB, memMB)
			}
			return nil, fmt.Errorf("%s, and none is idle to suspend: %w", why, ErrLimit)
		}
		if victim.tryLock() {
			if !victim.deleted && victim.sb != nil && victim.waiting() == 0 {
				s.log.Info("suspending the least recently used sandbox to make room", "id", victim.id, "agent", victim.agentID)
				sctx, cancel := context.WithTimeout(ctx, s.cfg.SuspendTimeout)
				if err := victim.suspend(sctx); err != nil {
					s.log.Warn("suspend", "id", victim.id, "err", err)
				}
				cancel()
			}
			victim.unlock()
		}
	}
}

// Count is how many sandboxes the service knows (running, suspended or starting),
// as List would list, without describing each: GET /health asks it on every probe,
// and a host holding hundreds of sandboxes must answer probes at once.
func (s *Service) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sandboxes)
}

// idlest is the least recently used live sandbox that no request uses or waits for,
// other than except; s.mu held.
func (s *Service) idlest(except *entry) *entry {
	var best *entry
	var bestUsed time.Time
	for _, e := range s.sandboxes {
		if e == except || !e.live.Load() || e.busy.Load() || e.waiting() > 0 {
			continue
		}
		v := e.view.Load()
		if v == nil {
			continue // starting
		}
		if best == nil || v.lastUsed.Before(bestUsed) {
			best, bestUsed = e, v.lastUsed
		}
	}
	return best
}

// fillPool starts background creation of pool sandboxes up to PoolSize, as far as
// they fit under the cap and the memory budget without making anything give way.
func (s *Service) fillPool() {
	for {
		s.mu.Lock()
		n, used := s.usage()
		if s.closed || len(s.pool)+s.filling >= s.cfg.PoolSize || n+1 > s.cfg.MaxSandboxes ||
			s.memBudgetMB > 0 && used+s.cfg.Defaults.MemoryMB > s.memBudgetMB {
			s.mu.Unlock()
			return
		}
		s.filling++
		s.mu.Unlock()
		if !s.goBackground(s.fillOne) {
			s.mu.Lock()
			s.filling--
			s.mu.Unlock()
			return
		}
	}
}

// fillOne creates one pool sandbox: a restore of the template snapshot, once it is
// settled, else a boot (see startPooled).
func (s *Service) fillOne() {
	ctx, cancel := context.WithTimeout(s.work, 2*time.Minute)
	defer cancel()
	p, err := s.startPooled(ctx, randID("sb-", 6))
	s.mu.Lock()
	s.filling--
	if err != nil {
		s.mu.Unlock()
		s.log.Warn("pool sandbox failed to start", "err", err)
		return
	}
	if s.closed {
		s.mu.Unlock()
		p.sb.Destroy(context.Background())
		return
	}
	s.pool = append(s.pool, p)
	s.mu.Unlock()
}

// Standbys (backend.StandbyHolder): sandboxes a backend makes ahead of the restores
// they will receive. They hold processes and memory like any sandbox, so they count
// in usage, one is made only with room to spare (as a pool sandbox), and they are
// the first to give way at the bound.

// standbyUsage is how many standbys the backends hold and the memory they were
// given, in MiB.
func (s *Service) standbyUsage() (n int, memMB int64) {
	for _, be := range s.backends {
		if h, ok := be.(backend.StandbyHolder); ok {
			k, bytes := h.Standbys()
			n += k
			memMB += (bytes + 1<<20 - 1) >> 20
		}
	}
	return n, memMB
}

// standbyRoom is the backends' check before they make a standby: with it counted
// (backend.StandbyHolder counts the standby asked about in Standbys, so usage has
// it), the sandboxes are within MaxSandboxes and the memory budget without
// anything giving way.
func (s *Service) standbyRoom(memBytes int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	n, used := s.usage()
	return n <= s.cfg.MaxSandboxes && (s.memBudgetMB <= 0 || used <= s.memBudgetMB)
}

// dropStandbys has every backend drop its standbys, to make room; s.mu not held.
func (s *Service) dropStandbys(ctx context.Context) {
	for _, be := range s.backends {
		if h, ok := be.(backend.StandbyHolder); ok {
			if n := h.DropStandbys(ctx); n > 0 {
				s.log.Info("dropped standbys to make room", "backend", be.Name(), "standbys", n)
			}
		}
	}
}
