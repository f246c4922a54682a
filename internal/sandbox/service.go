// Package sandbox is vmexec's core service: it gives each agent a sandbox (created on
// first use and reused so files persist between turns), runs code in it within limits,
// replaces a sandbox that a run killed, reaps idle ones, and keeps a pool of ready
// sandboxes so a new agent's first run does not wait for a boot. It knows nothing of
// HTTP; errors are classified with the ErrX values below and translated at the edge.
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/backend"
)

// Error classes; the HTTP layer maps each to a status code.
var (
	ErrInvalid     = errors.New("invalid request")
	ErrNotFound    = errors.New("not found")
	ErrForbidden   = errors.New("forbidden")
	ErrBusy        = errors.New("sandbox busy")
	ErrLimit       = errors.New("server limit reached")
	ErrUnavailable = errors.New("unavailable")
	ErrClosed      = errors.New("service closed")
)

// Service runs agents' code in sandboxes of one backend.
type Service struct {
	cfg    Config
	be     backend.Backend
	rootfs string
	log    *slog.Logger

	mu        sync.Mutex
	sandboxes map[string]*entry // by sandbox id
	byAgent   map[string]string // agent id → sandbox id of its default sandbox
	pool      []backend.Sandbox
	filling   int // pool sandboxes being created
	closed    bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// entry is one sandbox the service manages. run serialises everything done to the
// backend sandbox; waiting counts the requests queued on it.
type entry struct {
	id, name, agentID string
	memoryMB          int64
	created           time.Time

	run     sync.Mutex
	waiting int // guarded by Service.mu

	// Guarded by run.
	sb       backend.Sandbox // nil when dead and not yet replaced
	lastUsed time.Time
	runs     int
	deleted  bool
}

// New returns a service over backend be whose sandboxes start from rootfs. Call Start
// before use and Close when done.
func New(cfg Config, be backend.Backend, rootfs string, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sandbox config: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Service{
		cfg: cfg.withDefaults(), be: be, rootfs: rootfs, log: log.With("component", "sandbox"),
		sandboxes: map[string]*entry{}, byAgent: map[string]string{}, stop: make(chan struct{}),
	}, nil
}

// Start removes sandboxes a previous process left behind, then starts the idle reaper
// and fills the pool of ready sandboxes.
func (s *Service) Start(ctx context.Context) error {
	orphans, err := s.be.List(ctx)
	if err != nil {
		return fmt.Errorf("list leftover sandboxes: %w", err)
	}
	for _, o := range orphans {
		s.log.Info("removing sandbox left by a previous run", "id", o.ID, "status", o.Status)
		if err := s.be.DestroyID(ctx, o.ID); err != nil {
			return fmt.Errorf("remove leftover sandbox %s: %w", o.ID, err)
		}
	}
	if s.cfg.IdleTimeout > 0 {
		s.wg.Add(1)
		go s.reaper()
	}
	s.fillPool()
	return nil
}

// Close destroys every sandbox, pooled ones included, and waits for background work.
func (s *Service) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	entries := make([]*entry, 0, len(s.sandboxes))
	for _, e := range s.sandboxes {
		entries = append(entries, e)
	}
	pool := s.pool
	s.pool = nil
	s.mu.Unlock()
	s.wg.Wait() // pool fillers and the reaper
	s.mu.Lock()
	pool = append(pool, s.pool...)
	s.pool = nil
	s.mu.Unlock()

	var errs []error
	for _, sb := range pool {
		errs = append(errs, sb.Destroy(ctx))
	}
	for _, e := range entries {
		e.run.Lock()
		if e.sb != nil {
			errs = append(errs, e.sb.Destroy(ctx))
			e.sb = nil
		}
		e.deleted = true
		e.run.Unlock()
	}
	return errors.Join(errs...)
}

func newID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "sb-" + hex.EncodeToString(b)
}

func newExecutionID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "ex-" + hex.EncodeToString(b)
}

func (s *Service) spec(id string, memoryMB int64) backend.Spec {
	return backend.Spec{ID: id, RootFS: s.rootfs, MemoryBytes: memoryMB << 20, MaxPIDs: s.cfg.HostMaxPIDs}
}

// Create makes a sandbox explicitly. With an AgentID it becomes that agent's default
// sandbox if the agent has none.
func (s *Service) Create(ctx context.Context, req api.CreateSandboxRequest) (api.Sandbox, error) {
	lim, err := s.cfg.resolve(api.Limits{MemoryMB: req.MemoryMB})
	if err != nil {
		return api.Sandbox{}, err
	}
	e, err := s.newEntry(ctx, req.AgentID, req.Name, lim.MemoryMB, false)
	if err != nil {
		return api.Sandbox{}, err
	}
	return s.describe(e), nil
}

// newEntry registers a sandbox and starts it (from the pool when it can). It becomes
// the agent's default sandbox if the agent has none. With asDefault, an existing
// default sandbox of the agent is returned instead of a new one.
func (s *Service) newEntry(ctx context.Context, agentID, name string, memoryMB int64, asDefault bool) (*entry, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	if existing, ok := s.sandboxes[s.byAgent[agentID]]; asDefault && ok {
		s.mu.Unlock() // a concurrent first request of the same agent made it
		return existing, nil
	}
	if len(s.sandboxes) >= s.cfg.MaxSandboxes {
		s.mu.Unlock()
		return nil, fmt.Errorf("%d sandboxes are running, the configured maximum: %w", len(s.sandboxes), ErrLimit)
	}
	var sb backend.Sandbox
	if memoryMB == s.cfg.Defaults.MemoryMB && len(s.pool) > 0 {
		sb = s.pool[0]
		s.pool = s.pool[1:]
	}
	id := newID()
	if sb != nil {
		id = sb.ID()
	}
	if name == "" {
		name = id
	}
	e := &entry{id: id, name: name, agentID: agentID, memoryMB: memoryMB, created: time.Now()}
	e.run.Lock() // held until the sandbox is up, so a concurrent run waits for it
	s.sandboxes[id] = e
	if _, ok := s.byAgent[agentID]; agentID != "" && !ok {
		s.byAgent[agentID] = id
	}
	s.mu.Unlock()
	defer e.run.Unlock()
	s.fillPool()

	if sb == nil {
		var err error
		sb, err = s.be.Create(ctx, s.spec(id, memoryMB))
		if err != nil {
			s.forget(e)
			return nil, fmt.Errorf("start sandbox: %w", classifyBackend(err))
		}
	}
	e.sb = sb
	e.lastUsed = time.Now()
	s.log.Info("sandbox ready", "id", id, "agent", agentID)
	return e, nil
}

func classifyBackend(err error) error {
	if errors.Is(err, backend.ErrUnavailable) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// forget removes e from the maps.
func (s *Service) forget(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sandboxes, e.id)
	if s.byAgent[e.agentID] == e.id {
		delete(s.byAgent, e.agentID)
	}
}

// fillPool starts background creation of pool sandboxes up to PoolSize.
func (s *Service) fillPool() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.closed && len(s.pool)+s.filling < s.cfg.PoolSize && len(s.sandboxes)+len(s.pool)+s.filling < s.cfg.MaxSandboxes {
		s.filling++
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			sb, err := s.be.Create(ctx, s.spec(newID(), s.cfg.Defaults.MemoryMB))
			s.mu.Lock()
			s.filling--
			if err != nil {
				s.mu.Unlock()
				s.log.Warn("pool sandbox failed to start", "err", err)
				return
			}
			if s.closed {
				s.mu.Unlock()
				sb.Destroy(context.Background())
				return
			}
			s.pool = append(s.pool, sb)
			s.mu.Unlock()
		}()
	}
}

// lookup finds a sandbox by id and checks that agentID may use it.
func (s *Service) lookup(id, agentID string) (*entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.sandboxes[id]
	if !ok {
		return nil, fmt.Errorf("sandbox %s: %w", id, ErrNotFound)
	}
	if agentID != "" && e.agentID != "" && e.agentID != agentID {
		return nil, fmt.Errorf("sandbox %s belongs to another agent: %w", id, ErrForbidden)
	}
	return e, nil
}

// Get describes one sandbox.
func (s *Service) Get(id string) (api.Sandbox, error) {
	e, err := s.lookup(id, "")
	if err != nil {
		return api.Sandbox{}, err
	}
	return s.describe(e), nil
}

// List describes every sandbox, oldest first.
func (s *Service) List() []api.Sandbox {
	s.mu.Lock()
	entries := make([]*entry, 0, len(s.sandboxes))
	for _, e := range s.sandboxes {
		entries = append(entries, e)
	}
	s.mu.Unlock()
	sort.Slice(entries, func(i, j int) bool { return entries[i].created.Before(entries[j].created) })
	out := make([]api.Sandbox, 0, len(entries))
	for _, e := range entries {
		out = append(out, s.describe(e))
	}
	return out
}

// describe reads e without waiting for a run in progress.
func (s *Service) describe(e *entry) api.Sandbox {
	d := api.Sandbox{ID: e.id, Name: e.name, AgentID: e.agentID, Backend: s.be.Name(), MemoryMB: e.memoryMB, CreatedAt: e.created.UTC(), Status: "running"}
	if e.run.TryLock() {
		d.Runs, d.LastUsedAt = e.runs, e.lastUsed.UTC()
		if e.sb == nil {
			d.Status = "dead"
		} else if e.sb.Info().Status != "running" {
			d.Status = "dead"
		}
		e.run.Unlock()
	} else {
		d.Status = "busy"
	}
	return d
}

// Delete destroys a sandbox, waiting for a run in progress to finish.
func (s *Service) Delete(ctx context.Context, id string) error {
	e, err := s.lookup(id, "")
	if err != nil {
		return err
	}
	s.forget(e)
	return s.destroy(ctx, e)
}

func (s *Service) destroy(ctx context.Context, e *entry) error {
	e.run.Lock()
	defer e.run.Unlock()
	e.deleted = true
	if e.sb == nil {
		return nil
	}
	err := e.sb.Destroy(ctx)
	e.sb = nil
	s.log.Info("sandbox destroyed", "id", e.id)
	return err
}

// reaper destroys sandboxes idle for longer than IdleTimeout.
func (s *Service) reaper() {
	defer s.wg.Done()
	every := s.cfg.IdleTimeout / 4
	if every > 30*time.Second {
		every = 30 * time.Second
	}
	if every < 10*time.Millisecond {
		every = 10 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.reapIdle()
		}
	}
}

func (s *Service) reapIdle() {
	s.mu.Lock()
	var idle []*entry
	for _, e := range s.sandboxes {
		if e.waiting > 0 || !e.run.TryLock() {
			continue
		}
		if time.Since(e.lastUsed) > s.cfg.IdleTimeout {
			idle = append(idle, e)
			delete(s.sandboxes, e.id)
			if s.byAgent[e.agentID] == e.id {
				delete(s.byAgent, e.agentID)
			}
		}
		e.run.Unlock()
	}
	s.mu.Unlock()
	for _, e := range idle {
		s.log.Info("reaping idle sandbox", "id", e.id, "agent", e.agentID, "idle", time.Since(e.lastUsed).Round(time.Second))
		s.destroy(context.Background(), e)
	}
}

// BackendName is the name of the backend sandboxes run on.
func (s *Service) BackendName() string { return s.be.Name() }
