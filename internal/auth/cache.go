package auth

import (
	"context"
	"crypto/subtle"
	"log/slog"
	"math"
	"path"
	"sync"
	"time"
)

// RefreshEvery is how often a daemon reloads the keys from the database.
const RefreshEvery = time.Second

// Principal is who a request acts as. A nil *Principal is "no key on an open
// daemon": the operator, as an admin key is.
type Principal struct {
	Key
	state *keyState
}

// Scoped reports whether p is limited to agent patterns (not nil, not admin).
func (p *Principal) Scoped() bool { return p != nil && !p.Admin }

// IsAdmin reports whether p acts as the operator: an admin key, or no key on an open
// daemon.
func (p *Principal) IsAdmin() bool { return p == nil || p.Admin }

// Allows reports whether p may act as agent. Admins may act as anyone; a scoped key
// only as a non-empty agent id matching one of its patterns (a thing without an owner
// is the operator's, outside every scope).
func (p *Principal) Allows(agent string) bool {
	if p.IsAdmin() {
		return true
	}
	if agent == "" {
		return false
	}
	for _, pat := range p.Agents {
		if ok, _ := path.Match(pat, agent); ok {
			return true
		}
	}
	return false
}

// Name is the key's name, "" for no key.
func (p *Principal) Name() string {
	if p == nil {
		return ""
	}
	return p.Key.Name
}

// keyState is a key's runtime state: its token bucket and runs in flight. It is
// kept by key id across refreshes.
type keyState struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
	runs   int
	used   time.Time // last use not yet written to the database
	// pending are the sandbox creations in progress, by agent ("" for an explicit
	// create), each until its request is done.
	pending map[int]string
	nextID  int
}

// Allow takes one token from p's bucket. When it is empty it returns false and how
// long until a token is back. No key, or a key without a rate, is never limited.
func (p *Principal) Allow(now time.Time) (bool, time.Duration) {
	if p == nil || p.state == nil {
		return true, 0
	}
	st := p.state
	st.mu.Lock()
	defer st.mu.Unlock()
	st.used = now
	if p.Rate <= 0 {
		return true, 0
	}
	burst := p.Burst()
	if st.last.IsZero() {
		st.tokens = burst
	} else {
		st.tokens = math.Min(burst, st.tokens+now.Sub(st.last).Seconds()*p.Rate)
	}
	st.last = now
	if st.tokens >= 1 {
		st.tokens--
		return true, 0
	}
	wait := time.Duration((1 - st.tokens) / p.Rate * float64(time.Second))
	return false, wait
}

// StartRun counts a run in progress against MaxRuns; ok is false at the cap. The
// caller calls release once the run is over.
func (p *Principal) StartRun() (release func(), ok bool) {
	if p == nil || p.state == nil {
		return func() {}, true
	}
	st := p.state
	st.mu.Lock()
	defer st.mu.Unlock()
	if p.MaxRuns > 0 && st.runs >= p.MaxRuns {
		return nil, false
	}
	st.runs++
	var once sync.Once
	return func() {
		once.Do(func() {
			st.mu.Lock()
			st.runs--
			st.mu.Unlock()
		})
	}, true
}

// ReserveSandbox holds a place under MaxSandboxes for a request that may create a
// sandbox for agent. inUse counts the sandboxes that count against the cap, given
// the agents of the reservations already in progress; it is called with
// the key's lock held, so concurrent reservations of one key are counted one at a
// time. ok is false at the cap; the caller calls release when its request is done.
func (p *Principal) ReserveSandbox(agent string, inUse func(pending []string) int) (release func(), ok bool) {
	if p == nil || p.state == nil || p.MaxSandboxes <= 0 {
		return func() {}, true
	}
	st := p.state
	st.mu.Lock()
	defer st.mu.Unlock()
	pending := make([]string, 0, len(st.pending))
	for _, a := range st.pending {
		pending = append(pending, a)
	}
	if inUse(pending) >= p.MaxSandboxes {
		return nil, false
	}
	if st.pending == nil {
		st.pending = map[int]string{}
	}
	id := st.nextID
	st.nextID++
	st.pending[id] = agent
	var once sync.Once
	return func() {
		once.Do(func() {
			st.mu.Lock()
			delete(st.pending, id)
			st.mu.Unlock()
		})
	}, true
}

// Cache is a daemon's view of the keys, reloaded from a Store every RefreshEvery.
// It is safe for concurrent use.
type Cache struct {
	store    Store
	log      *slog.Logger
	required bool

	mu       sync.RWMutex
	live     []*Principal         // keys not revoked
	any      bool                 // some key was ever created (revoked ones count)
	state    map[string]*keyState // by key id
	loaded   bool
	lastLoad error
}

// NewCache returns a cache over store. With required, keys are needed even before
// the first one is created.
func NewCache(store Store, required bool, log *slog.Logger) *Cache {
	if log == nil {
		log = slog.Default()
	}
	return &Cache{store: store, required: required, log: log.With("component", "auth"), state: map[string]*keyState{}}
}

// Refresh reloads the keys, and writes the last-use times gathered since the last
// call. On a failed load the previous keys stay in force (a fresh cache that never
// loaded refuses every request: it fails closed).
func (c *Cache) Refresh(ctx context.Context) error {
	c.flushUsed(ctx)
	keys, err := c.store.ListKeys(ctx)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if c.lastLoad == nil {
			c.log.Error("reloading API keys; the previous keys stay in force", "err", err)
		}
		c.lastLoad = err
		return err
	}
	c.lastLoad = nil
	live := make([]*Principal, 0, len(keys))
	seen := map[string]bool{}
	for _, k := range keys {
		if k.Revoked() {
			continue
		}
		st := c.state[k.ID]
		if st == nil {
			st = &keyState{}
			c.state[k.ID] = st
		}
		seen[k.ID] = true
		live = append(live, &Principal{Key: k, state: st})
	}
	for id := range c.state {
		if !seen[id] {
			delete(c.state, id)
		}
	}
	c.live, c.any, c.loaded = live, len(keys) > 0, true
	return nil
}

func (c *Cache) flushUsed(ctx context.Context) {
	c.mu.RLock()
	used := map[string]time.Time{}
	for _, p := range c.live {
		p.state.mu.Lock()
		if !p.state.used.IsZero() {
			used[p.ID] = p.state.used
			p.state.used = time.Time{}
		}
		p.state.mu.Unlock()
	}
	c.mu.RUnlock()
	if len(used) > 0 {
		if err := c.store.TouchKeys(ctx, used); err != nil {
			c.log.Warn("recording keys' last use", "err", err)
		}
	}
}

// Start runs Run in the background; stop ends it and waits for its last flush of
// the keys' use.
func (c *Cache) Start() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	return func() { cancel(); <-done }
}

// Run refreshes the cache every RefreshEvery until ctx ends.
func (c *Cache) Run(ctx context.Context) {
	t := time.NewTicker(RefreshEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			c.flushUsed(fctx)
			cancel()
			return
		case <-t.C:
			c.Refresh(ctx)
		}
	}
}

// Enforced reports whether requests need a key: auth is required, or some key was
// ever created, or the keys could never be read (fail closed).
func (c *Cache) Enforced() bool {
	if c == nil {
		return false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.required || c.any || !c.loaded
}

// Live reports whether some key is live (not revoked).
func (c *Cache) Live() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.live) > 0
}

// Authenticate finds the live key whose secret is presented. Every live key's hash
// is compared, in constant time, so the time taken does not depend on which key
// matched or how much of a hash did.
func (c *Cache) Authenticate(secret string) (*Principal, error) {
	h, err := HashSecret(secret)
	if err != nil {
		return nil, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	var found *Principal
	for _, p := range c.live {
		if subtle.ConstantTimeCompare([]byte(p.Hash), []byte(h)) == 1 {
			found = p
		}
	}
	if found == nil {
		return nil, ErrUnauthenticated
	}
	return found, nil
}

type ctxKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// FromContext is the Principal a request acts as; nil for none (an open daemon).
func FromContext(ctx context.Context) *Principal {
	p, _ := ctx.Value(ctxKey{}).(*Principal)
	return p
}
