// Package sandbox is vmexec's core service: it gives each agent a sandbox (created on
// first use and reused so files persist between turns) and runs code in it as a
// transaction — snapshot before, roll back automatically on failure, record every run
// in the history. It replaces a sandbox that a run killed, suspends idle ones to a
// snapshot and resumes them on next use (across daemon restarts too), and keeps a pool
// of ready sandboxes so a new agent's first run does not wait for a boot.
//
// It knows nothing of HTTP; errors are classified with the ErrX values below and
// translated at the edge.
//
// Concurrency: everything done to one sandbox (runs, snapshots, rollbacks) holds that
// sandbox's run lock, so they never interleave; requests queue for it up to
// Config.QueueDepth and are refused with ErrBusy past that. Different sandboxes proceed
// in parallel.
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/redact"
)

// Error classes; the HTTP layer maps each to a status code.
var (
	ErrInvalid     = errors.New("invalid request")
	ErrNotFound    = errors.New("not found")
	ErrForbidden   = errors.New("forbidden")
	ErrBusy        = errors.New("sandbox busy")
	ErrConflict    = errors.New("conflict")
	ErrLimit       = errors.New("server limit reached")
	ErrUnavailable = errors.New("unavailable")
	ErrUnsupported = errors.New("not supported by this backend")
	ErrClosed      = errors.New("service closed")
)

// Deps are the parts a Service is built from.
type Deps struct {
	// Backends run the sandboxes; the first is the default, the others serve
	// sandboxes that ask for them by name. Snapshots, rollbacks and suspension need a
	// backend that implements backend.Snapshotter.
	Backends []backend.Backend
	// RootFS is the template tree sandboxes start from.
	RootFS string
	// History records runs, snapshots and sandboxes durably.
	History history.Store
	// SnapshotDir holds snapshot images.
	SnapshotDir string
	Logger      *slog.Logger
}

// Service runs agents' code in sandboxes of one backend.
type Service struct {
	cfg      Config
	backends map[string]backend.Backend
	def      backend.Backend // the default backend; the pool holds its sandboxes
	rootfs   string
	hist     history.Store
	snaps    string
	log      *slog.Logger

	redactor *redact.Redactor

	mu        sync.Mutex
	sandboxes map[string]*entry // by sandbox id
	byAgent   map[string]string // agent id → sandbox id of its default sandbox
	pool      []pooled
	filling   int // pool sandboxes being created
	closed    bool

	stop chan struct{}
	wg   sync.WaitGroup // the reaper
	bg   sync.WaitGroup // background work: pool fills, snapshots, destroys, retention
}

type pooled struct {
	id string
	sb backend.Sandbox
}

// entry is one sandbox the service manages. run serialises everything done to the
// backend sandbox; waiting counts the requests queued on it.
type entry struct {
	id, name, agentID string
	backend           string
	memoryMB          int64
	created           time.Time

	run     sync.Mutex
	waiting int // guarded by Service.mu

	// view is what describe reports, published by unlock so that reading it never
	// waits for a run; busy is set while a run is in flight.
	view atomic.Pointer[entryView]
	busy atomic.Bool

	// Guarded by run.
	sb        backend.Sandbox // nil when dead, suspended, or not yet started
	gen       int             // incarnation: the backend id is id-gen
	suspended bool            // sb is nil because it was suspended: resume from a snapshot
	cleanSnap string          // a snapshot equal to the current state, if known
	lastUsed  time.Time
	runs      int
	deleted   bool
}

type entryView struct {
	status   string // starting, running, dead, suspended
	runs     int
	lastUsed time.Time
	accel    string // the accelerator, for backends that have one
}

// unlock publishes e's state for describe and releases e.run; e.run held.
func (e *entry) unlock() {
	v := &entryView{status: "running", runs: e.runs, lastUsed: e.lastUsed}
	if a, ok := e.sb.(accelerated); ok && e.sb != nil {
		v.accel = a.Accel()
	}
	switch {
	case e.suspended:
		v.status = "suspended"
	case e.sb == nil || e.sb.Info().Status != "running":
		v.status = "dead"
	}
	e.view.Store(v)
	e.run.Unlock()
}

// New returns a service. Call Start before use and Close when done.
func New(cfg Config, d Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sandbox config: %w", err)
	}
	if len(d.Backends) == 0 || d.History == nil || d.RootFS == "" {
		return nil, errors.New("sandbox: a backend, the history and a root filesystem are required")
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	s := &Service{
		cfg: cfg.withDefaults(), backends: map[string]backend.Backend{}, def: d.Backends[0], rootfs: d.RootFS,
		hist: d.History, snaps: d.SnapshotDir, log: d.Logger.With("component", "sandbox"),
		sandboxes: map[string]*entry{}, byAgent: map[string]string{}, stop: make(chan struct{}),
	}
	for _, b := range d.Backends {
		s.backends[b.Name()] = b
	}
	var err error
	if s.redactor, err = redact.New(s.cfg.Redact); err != nil {
		return nil, fmt.Errorf("redact config: %w", err)
	}
	return s, nil
}

// Start removes sandboxes a previous process left running, reconciles the history
// with the snapshot images on disk, loads the sandboxes the history knows (suspended,
// to be resumed on next use), then starts the idle reaper and fills the pool.
func (s *Service) Start(ctx context.Context) error {
	for _, be := range s.backends {
		orphans, err := be.List(ctx)
		if err != nil {
			return fmt.Errorf("list leftover %s sandboxes: %w", be.Name(), err)
		}
		for _, o := range orphans {
			s.log.Info("removing sandbox left by a previous run", "id", o.ID, "backend", be.Name(), "status", o.Status)
			if err := be.DestroyID(ctx, o.ID); err != nil {
				return fmt.Errorf("remove leftover sandbox %s: %w", o.ID, err)
			}
		}
	}
	if err := s.recover(ctx); err != nil {
		return err
	}
	if s.cfg.IdleTimeout > 0 {
		s.wg.Add(1)
		go s.reaper()
	}
	s.fillPool()
	return nil
}

// Close suspends every running sandbox to a snapshot (so agents resume where they
// were after a restart), destroys all backend sandboxes, pooled ones included, and
// waits for background work.
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
	s.mu.Unlock()
	s.wg.Wait() // the reaper
	s.bg.Wait() // pool fillers, background snapshots, destroys, retention
	s.mu.Lock()
	pool := s.pool
	s.pool = nil
	s.mu.Unlock()

	var errs []error
	for _, p := range pool {
		errs = append(errs, p.sb.Destroy(ctx))
	}
	for _, e := range entries {
		e.run.Lock()
		errs = append(errs, s.suspendLocked(ctx, e))
		e.deleted = true
		e.unlock()
	}
	return errors.Join(errs...)
}

func randID(prefix string, n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// specFor describes the backend sandbox of e's current incarnation.
func (s *Service) specFor(e *entry) backend.Spec {
	return s.spec(fmt.Sprintf("%s-%d", e.id, e.gen), e.memoryMB)
}

func (s *Service) spec(backendID string, memoryMB int64) backend.Spec {
	return backend.Spec{ID: backendID, RootFS: s.rootfs, MemoryBytes: memoryMB << 20, MaxPIDs: s.cfg.HostMaxPIDs}
}

// backendOf is the backend e runs on.
func (s *Service) backendOf(e *entry) backend.Backend { return s.backends[e.backend] }

// snapperOf is e's backend's snapshot capability, or nil.
func (s *Service) snapperOf(e *entry) backend.Snapshotter {
	if sn, ok := s.backendOf(e).(backend.Snapshotter); ok && s.snaps != "" {
		return sn
	}
	return nil
}

// backendFor resolves a backend name ("" is the default).
func (s *Service) backendFor(name string) (string, error) {
	if name == "" {
		return s.def.Name(), nil
	}
	if _, ok := s.backends[name]; !ok {
		return "", fmt.Errorf("backend %q is not enabled on this server (enabled: %s): %w", name, strings.Join(s.backendNames(), ", "), ErrInvalid)
	}
	return name, nil
}

func (s *Service) backendNames() []string {
	names := []string{s.def.Name()}
	for n := range s.backends {
		if n != s.def.Name() {
			names = append(names, n)
		}
	}
	sort.Strings(names[1:])
	return names
}

// Create makes a sandbox explicitly. With an AgentID it becomes that agent's default
// sandbox if the agent has none.
func (s *Service) Create(ctx context.Context, req api.CreateSandboxRequest) (api.Sandbox, error) {
	lim, err := s.cfg.resolve(api.Limits{MemoryMB: req.MemoryMB})
	if err != nil {
		return api.Sandbox{}, err
	}
	be, err := s.backendFor(req.Backend)
	if err != nil {
		return api.Sandbox{}, err
	}
	e, err := s.newEntry(ctx, newEntryReq{agentID: req.AgentID, name: req.Name, backend: be, memoryMB: lim.MemoryMB})
	if err != nil {
		return api.Sandbox{}, err
	}
	return s.describe(e), nil
}

// newEntryReq describes a sandbox newEntry makes.
type newEntryReq struct {
	agentID, name, backend string
	memoryMB               int64
	// asDefault returns the agent's existing default sandbox, if it has one,
	// instead of making a new one.
	asDefault bool
	// from starts the sandbox from a snapshot image (a fork).
	from *history.Snapshot
}

// newEntry registers a sandbox and starts it: from a snapshot image (a fork), else
// from the pool when it can, else anew. It becomes the agent's default sandbox if the
// agent has none.
func (s *Service) newEntry(ctx context.Context, r newEntryReq) (*entry, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	if existing, ok := s.sandboxes[s.byAgent[r.agentID]]; r.asDefault && ok {
		s.mu.Unlock() // a concurrent first request of the same agent made it
		return existing, nil
	}
	if n := s.live(); n >= s.cfg.MaxSandboxes {
		s.mu.Unlock()
		return nil, fmt.Errorf("%d sandboxes are running, the configured maximum: %w", n, ErrLimit)
	}
	var p pooled
	if r.from == nil && r.backend == s.def.Name() && r.memoryMB == s.cfg.Defaults.MemoryMB && len(s.pool) > 0 {
		p, s.pool = s.pool[0], s.pool[1:]
	}
	id := p.id
	if id == "" {
		id = randID("sb-", 6)
	}
	if r.name == "" {
		r.name = id
	}
	e := &entry{id: id, name: r.name, agentID: r.agentID, backend: r.backend, memoryMB: r.memoryMB, created: time.Now()}
	e.run.Lock() // held until the sandbox is up, so a concurrent run waits for it
	s.sandboxes[id] = e
	if _, ok := s.byAgent[r.agentID]; r.agentID != "" && !ok {
		s.byAgent[r.agentID] = id
	}
	s.mu.Unlock()
	defer e.unlock()
	s.fillPool()

	sb := p.sb
	var err error
	switch {
	case r.from != nil:
		sn := s.snapperOf(e)
		if sn == nil {
			err = fmt.Errorf("fork: %w", ErrUnsupported)
			break
		}
		sb, err = sn.Fork(ctx, r.from.Path, s.specFor(e))
	case sb == nil:
		sb, err = s.backendOf(e).Create(ctx, s.specFor(e))
	}
	if err != nil {
		s.forget(e)
		return nil, fmt.Errorf("start sandbox: %w", classifyBackend(err))
	}
	e.sb = sb
	e.lastUsed = time.Now()
	if err := s.hist.PutSandbox(ctx, history.Sandbox{ID: id, AgentID: r.agentID, Name: r.name, Backend: r.backend, MemoryMB: r.memoryMB, CreatedAt: e.created}); err != nil {
		s.log.Error("recording sandbox", "id", id, "err", err)
	}
	s.log.Info("sandbox ready", "id", id, "agent", r.agentID, "backend", r.backend, "pooled", p.sb != nil, "forked", r.from != nil)
	return e, nil
}

// live counts running sandboxes (pooled and starting ones included); s.mu held.
func (s *Service) live() int {
	n := len(s.pool) + s.filling
	for _, e := range s.sandboxes {
		if v := e.view.Load(); v == nil || v.status == "running" || e.busy.Load() {
			n++
		}
	}
	return n
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
	for !s.closed && len(s.pool)+s.filling < s.cfg.PoolSize && s.live() < s.cfg.MaxSandboxes {
		s.filling++
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			id := randID("sb-", 6)
			sb, err := s.def.Create(ctx, s.spec(id+"-0", s.cfg.Defaults.MemoryMB))
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
			s.pool = append(s.pool, pooled{id: id, sb: sb})
			s.mu.Unlock()
		}()
	}
}

// lookup finds a sandbox by id and checks that agentID may use it. An empty agentID
// is the operator, who may use any sandbox.
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
	d := api.Sandbox{ID: e.id, Name: e.name, AgentID: e.agentID, Backend: e.backend, MemoryMB: e.memoryMB, CreatedAt: e.created.UTC(), Status: "starting"}
	if v := e.view.Load(); v != nil {
		d.Status, d.Runs, d.LastUsedAt, d.Accel = v.status, v.runs, v.lastUsed.UTC(), v.accel
	}
	if e.busy.Load() {
		d.Status = "busy"
	}
	if snaps, err := s.hist.ListSnapshots(context.Background(), e.id); err == nil {
		d.Snapshots = len(snaps)
		for _, sn := range snaps {
			d.SnapshotBytes += sn.SizeBytes
		}
	}
	return d
}

// Delete destroys a sandbox and its snapshots, waiting for a run in progress to
// finish. Its run history stays.
func (s *Service) Delete(ctx context.Context, id string) error {
	e, err := s.lookup(id, "")
	if err != nil {
		return err
	}
	s.forget(e)
	e.run.Lock()
	defer e.unlock()
	e.deleted = true
	var errs []error
	if e.sb != nil {
		errs = append(errs, e.sb.Destroy(ctx))
		e.sb = nil
	}
	errs = append(errs, s.deleteSnapshots(ctx, e.id))
	if err := s.hist.DeleteSandbox(ctx, e.id); err != nil && !errors.Is(err, history.ErrNotFound) {
		errs = append(errs, err)
	}
	s.log.Info("sandbox deleted", "id", e.id)
	return errors.Join(errs...)
}

// BackendName is the name of the default backend.
func (s *Service) BackendName() string { return s.def.Name() }

// accelerated is what a backend or sandbox may say about its accelerator.
type accelerated interface{ Accel() string }

// Backends describes the enabled backends, the default first.
func (s *Service) Backends() []api.Backend {
	var out []api.Backend
	for i, n := range s.backendNames() {
		be := s.backends[n]
		_, snaps := be.(backend.Snapshotter)
		b := api.Backend{Name: n, Default: i == 0, Snapshots: snaps && s.snaps != ""}
		if a, ok := be.(accelerated); ok {
			b.Accel = a.Accel()
		}
		out = append(out, b)
	}
	return out
}
