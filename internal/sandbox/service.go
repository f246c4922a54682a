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
// sandbox's turn (see entry), so they never interleave; requests queue for it in
// arrival order up to Config.QueueDepth and are refused with ErrBusy past that.
// Different sandboxes proceed in parallel. Work off a request's path (pool fills,
// snapshots after a run, retention, destroys) goes through goBackground, which
// refuses once Close has begun.
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
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/redact"
	"github.com/vmexec/vmexec/internal/snapstore"
	"github.com/vmexec/vmexec/internal/template"
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
	// ErrStorage: a snapshot byte budget is spent (HTTP 507).
	ErrStorage = errors.New("snapshot storage budget exceeded")

	errQueueFull = errors.New("queue full")
)

// Deps are the parts a Service is built from.
type Deps struct {
	// Fencer, in cluster mode, refuses runs for agents this node does not own (see
	// Fencer); nil on a single host.
	Fencer Fencer
	// Backends run the sandboxes; the first is the default, the others serve
	// sandboxes that ask for them by name. Snapshots, rollbacks and suspension need a
	// backend that implements backend.Snapshotter, which owns the images: the
	// service keeps only their references (history.Snapshot.Path).
	Backends []backend.Backend
	// Template is the template sandboxes start from.
	Template template.Template
	// History records runs, snapshots and sandboxes durably.
	History history.Store
	// Store, if set, keeps snapshots where they outlive this host (cluster mode;
	// see store.go); nil is single-host mode.
	Store  *snapstore.Store
	Logger *slog.Logger
}

// Service runs agents' code in sandboxes of one backend.
type Service struct {
	cfg      Config
	backends map[string]backend.Backend
	def      backend.Backend // the default backend; the pool holds its sandboxes
	fencer   Fencer          // nil: single host
	adoptMu  sync.Mutex
	adopted  map[string]int64 // agent → the epoch this node adopted it at (adopt.go)
	tpl      template.Template
	hist     history.Store
	log      *slog.Logger

	redactor *redact.Redactor
	store    *storeState // the snapshot store's uploads and fetches (store.go)

	memBudgetMB int64 // the memory all live sandboxes may be given together; 0: no bound

	mu         sync.Mutex
	sandboxes  map[string]*entry // by sandbox id
	byAgent    map[string]string // agent id → sandbox id of its default sandbox
	deletedFor map[string]string // agent id → its default sandbox deleted since its last run
	pool       []pooled
	filling    int   // pool sandboxes being created
	startingN  int   // sandboxes admitted and starting (see admit)
	startingMB int64 // their memory
	closed     bool

	tsnap templateSnap // the template snapshot (pool.go)
	// unnamedShared is, per backend, the shared images no snapshot record named at
	// start (reconcileImages lists them; pruneShared removes all but the current one).
	unnamedShared map[string][]string

	// runs is cancelled when Close begins: in-flight runs are interrupted and rolled
	// back. work is cancelled when Close's budget ends: background work stops.
	runs       context.Context
	cancelRuns context.CancelFunc
	work       context.Context
	cancelWork context.CancelFunc

	stop chan struct{}
	wg   sync.WaitGroup // the reaper
	bg   sync.WaitGroup // background work, started only by goBackground
}

type pooled struct {
	id   string
	sb   backend.Sandbox
	base string // the shared image it was restored from, untouched since (pool.go)
}

// New returns a service. Call Start before use and Close when done.
func New(cfg Config, d Deps) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("sandbox config: %w", err)
	}
	if len(d.Backends) == 0 || d.History == nil || d.Template.RootFS == "" && d.Template.Name == "" {
		return nil, errors.New("sandbox: a backend, the history and a template are required")
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	s := &Service{
		cfg: cfg.withDefaults(), backends: map[string]backend.Backend{}, def: d.Backends[0], tpl: d.Template,
		hist: d.History, log: d.Logger.With("component", "sandbox"), fencer: d.Fencer,
		sandboxes: map[string]*entry{}, byAgent: map[string]string{}, deletedFor: map[string]string{}, stop: make(chan struct{}),
	}
	s.runs, s.cancelRuns = context.WithCancel(context.Background())
	s.work, s.cancelWork = context.WithCancel(context.Background())
	s.memBudgetMB = s.cfg.MemoryBudgetMB
	if s.memBudgetMB == 0 {
		s.memBudgetMB = hostMemoryMB()
	}
	for _, b := range d.Backends {
		s.backends[b.Name()] = b
		if h, ok := b.(backend.StandbyHolder); ok {
			h.SetStandbyRoom(s.standbyRoom) // capacity.go
		}
	}
	s.initStore(d.Store)
	var err error
	if s.redactor, err = redact.New(s.cfg.Redact); err != nil {
		return nil, fmt.Errorf("redact config: %w", err)
	}
	return s, nil
}

// Start removes sandboxes a previous process left running, reconciles the history
// with the snapshot images on disk, loads the sandboxes the history knows (suspended,
// to be resumed on next use), then starts the idle reaper, finds or starts making the
// template snapshot (pool.go) and fills the pool.
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
	s.startTemplateSnapshot(ctx)
	s.fillPool()
	return nil
}

// Close stops the service within ctx's deadline (the daemon gives it
// Config.ShutdownTimeout): it refuses new work (ErrClosed, 503), interrupts runs in
// flight (each is recorded as an error "interrupted by shutdown" and rolled back to its
// pre-run snapshot, and its caller gets ErrClosed), then suspends every sandbox to a
// snapshot, each within Config.SuspendTimeout, so agents resume where they were after a
// restart. A sandbox whose suspension does not fit in the budget is stopped without
// one and resumes from its current snapshot. Pool sandboxes are destroyed.
func (s *Service) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.stop)
	s.cancelRuns()
	entries := make([]*entry, 0, len(s.sandboxes))
	for _, e := range s.sandboxes {
		entries = append(entries, e)
	}
	pool := s.pool
	s.pool = nil
	s.mu.Unlock()
	stopWork := context.AfterFunc(ctx, s.cancelWork) // past the budget, background work stops
	defer stopWork()
	s.wg.Wait() // the reaper

	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 4) // suspensions in parallel
	)
	add := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for _, p := range pool {
		add(p.sb.Destroy(context.Background()))
	}
	for _, e := range entries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := e.lock(ctx); err != nil {
				// A run that does not give its sandbox back in the budget: its backend
				// sandbox is removed by the next start; it resumes from its current
				// snapshot, which is its pre-run state.
				add(fmt.Errorf("sandbox %s not suspended within the shutdown budget: %w", e.id, err))
				return
			}
			defer e.unlock()
			if !e.deleted {
				sctx, cancel := context.WithTimeout(ctx, s.cfg.SuspendTimeout)
				add(e.suspend(sctx))
				cancel()
			}
			e.remove(fmt.Errorf("sandbox %s: the server is shutting down: %w", e.id, ErrClosed))
		}()
	}
	wg.Wait()
	s.bg.Wait() // snapshots, retention and destroys started before Close
	s.waitUploads()
	// What a backend keeps of its own (gvisor's standbys) goes last.
	for _, be := range s.backends {
		if c, ok := be.(interface{ Close(context.Context) error }); ok {
			add(c.Close(ctx))
		}
	}
	s.cancelWork()
	return errors.Join(errs...)
}

// ShutdownTimeout is the budget Close should be given (Config.ShutdownTimeout).
func (s *Service) ShutdownTimeout() time.Duration { return s.cfg.ShutdownTimeout }

// isClosed reports whether Close has begun.
func (s *Service) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// goBackground runs f in the background, unless Close has begun (it reports whether
// f was started). All background work goes through it, so Close waits for all of it
// and none starts after Close began waiting.
func (s *Service) goBackground(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		f()
	}()
	return true
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
	return backend.Spec{ID: backendID, Template: s.tpl, MemoryBytes: memoryMB << 20, MaxPIDs: s.cfg.HostMaxPIDs}
}

// backendOf is the backend e runs on.
func (s *Service) backendOf(e *entry) backend.Backend { return s.backends[e.backend] }

// snapperOf is e's backend's snapshot capability, or nil.
func (s *Service) snapperOf(e *entry) backend.Snapshotter {
	return s.snapperFor(e.backend)
}

// snapperFor is the named backend's snapshot capability, or nil.
func (s *Service) snapperFor(name string) backend.Snapshotter {
	if sn, ok := s.backends[name].(backend.Snapshotter); ok {
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
// agent has none. A pool sandbox is handed out before the cap is checked (it already
// counts); otherwise admit makes room, suspending the least recently used idle
// sandbox at the cap. A failed start removes the entry (deleted, so a request queued
// on it fails instead of starting a sandbox no map holds).
func (s *Service) newEntry(ctx context.Context, r newEntryReq) (*entry, error) {
	var release func()
	unreserve := func() {
		if release != nil {
			release()
		}
	}
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			unreserve()
			return nil, fmt.Errorf("the server is shutting down: %w", ErrClosed)
		}
		if existing, ok := s.sandboxes[s.byAgent[r.agentID]]; r.asDefault && ok {
			s.mu.Unlock() // a concurrent first request of the same agent made it
			unreserve()
			return existing, nil
		}
		if release != nil || r.from == nil && r.backend == s.def.Name() && r.memoryMB == s.cfg.Defaults.MemoryMB && len(s.pool) > 0 {
			break // admitted, or served from the pool
		}
		s.mu.Unlock()
		var err error
		if release, err = s.admit(ctx, r.memoryMB, nil); err != nil {
			return nil, err
		}
	}
	var p pooled
	if release == nil {
		p, s.pool = s.pool[0], s.pool[1:]
		release = func() {}
	}
	defer release()
	id := p.id
	if id == "" {
		id = randID("sb-", 6)
	}
	if r.name == "" {
		r.name = id
	}
	e := s.makeEntry(id, r.name, r.agentID, r.backend, r.memoryMB, time.Now())
	if p.sb != nil {
		e.setSandbox(p.sb) // counted from here on, not as a pool sandbox
	}
	// The turn is held until the sandbox is up, so a concurrent run waits for it.
	s.sandboxes[id] = e
	if _, ok := s.byAgent[r.agentID]; r.agentID != "" && !ok {
		s.byAgent[r.agentID] = id
		if old, ok := s.deletedFor[r.agentID]; ok && r.asDefault {
			delete(s.deletedFor, r.agentID)
			e.replaces(old)
		}
	}
	s.mu.Unlock()
	defer e.unlock()
	if p.sb != nil {
		s.refillPool() // after the first run, which the refill would slow down (pool.go)
	} else {
		s.fillPool()
	}

	sb, base := p.sb, p.base
	var err error
	switch {
	case r.from != nil:
		sn := s.snapperOf(e)
		if sn == nil {
			err = fmt.Errorf("fork: %w", ErrUnsupported)
			break
		}
		sb, err = s.forkSnapshot(ctx, e, r.from, s.specFor(e))
	case sb == nil:
		sb, base, err = s.startFresh(ctx, e)
	}
	if err != nil {
		s.forget(e)
		err = fmt.Errorf("start sandbox %s: %w", id, classifyBackend(err))
		e.remove(err)
		return nil, err
	}
	e.setSandbox(sb)
	if err := s.hist.PutSandbox(ctx, history.Sandbox{ID: id, AgentID: r.agentID, Name: r.name, Backend: r.backend, MemoryMB: r.memoryMB, CreatedAt: e.created}); err != nil {
		s.log.Error("recording sandbox", "id", id, "err", err)
	}
	if base != "" {
		e.startedFrom(ctx, base)
	}
	if r.from != nil {
		// The fork's own image of its starting state, taken now: a crash before its
		// first run brings it back with its source's state, not empty, and that run's
		// pre-run snapshot reuses it.
		e.forkedFrom(*r.from)
		if _, err := e.snapshot(ctx, history.SnapshotForkBase, "", apiNoMeta); err != nil {
			s.log.Warn("fork base snapshot; the fork resumes empty after a crash before its first snapshot", "id", id, "err", err)
		}
	}
	s.log.Info("sandbox ready", "id", id, "agent", r.agentID, "backend", r.backend, "pooled", p.sb != nil, "forked", r.from != nil)
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

// CheckAgent is the ownership rule: an agent acting (actor) may use what belongs to
// owner. An empty actor is the operator, who may use anything; a thing without an
// owner is anyone's.
func CheckAgent(actor, owner string) error {
	if actor != "" && owner != "" && actor != owner {
		return fmt.Errorf("agent %s may not act for agent %s: %w", actor, owner, ErrForbidden)
	}
	return nil
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
	if CheckAgent(agentID, e.agentID) != nil {
		return nil, fmt.Errorf("sandbox %s belongs to another agent: %w", id, ErrForbidden)
	}
	return e, nil
}

// acquire queues for e's turn like a run, refusing past the queue bound, and checks
// that e is still usable; on success the caller holds the turn.
func (s *Service) acquire(ctx context.Context, e *entry) error {
	if err := e.turn.lock(ctx, s.cfg.QueueDepth); errors.Is(err, errQueueFull) {
		return fmt.Errorf("sandbox %s has %d requests waiting; retry later: %w", e.id, s.cfg.QueueDepth, ErrBusy)
	} else if err != nil {
		return fmt.Errorf("waiting for sandbox %s: %w", e.id, err)
	}
	if err := ctx.Err(); err != nil { // the turn came as the caller left
		e.unlock()
		return fmt.Errorf("waiting for sandbox %s: %w", e.id, err)
	}
	if err := e.usable(); err != nil {
		e.unlock()
		return err
	}
	return nil
}

// Get describes one sandbox, as the operator.
func (s *Service) Get(id string) (api.Sandbox, error) { return s.GetFor(id, "") }

// GetFor describes one sandbox for agentID (ErrForbidden for another agent's).
func (s *Service) GetFor(id, agentID string) (api.Sandbox, error) {
	e, err := s.lookup(id, agentID)
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

// Delete destroys a sandbox and its snapshots as the operator; see DeleteFor.
func (s *Service) Delete(ctx context.Context, id string) error { return s.DeleteFor(ctx, id, "") }

// DeleteFor destroys a sandbox and its snapshots for agentID (ErrForbidden for
// another agent's sandbox), waiting for a run in progress to finish. Its run history
// stays. Its agent's next run is in a new sandbox and says so (sandbox_recreated).
func (s *Service) DeleteFor(ctx context.Context, id, agentID string) error {
	e, err := s.lookup(id, agentID)
	if err != nil {
		return err
	}
	if err := e.lock(ctx); err != nil {
		return err
	}
	defer e.unlock()
	if e.deleted {
		return e.gone
	}
	s.forget(e)
	s.mu.Lock()
	if e.agentID != "" {
		s.deletedFor[e.agentID] = e.id
	}
	s.mu.Unlock()
	e.remove(fmt.Errorf("sandbox %s was deleted: %w", e.id, ErrNotFound))
	var errs []error
	if e.sb != nil {
		errs = append(errs, e.sb.Destroy(ctx))
		e.setSandbox(nil)
	}
	errs = append(errs, s.deleteSnapshots(ctx, e))
	if err := s.hist.DeleteSandbox(ctx, e.id); err != nil && !errors.Is(err, history.ErrNotFound) {
		errs = append(errs, err)
	}
	s.log.Info("sandbox deleted", "id", e.id, "by", agentID)
	return errors.Join(errs...)
}

// BackendName is the name of the default backend.
func (s *Service) BackendName() string { return s.def.Name() }

// Backends describes the enabled backends, the default first.
func (s *Service) Backends() []api.Backend {
	var out []api.Backend
	for i, n := range s.backendNames() {
		be := s.backends[n]
		_, snaps := be.(backend.Snapshotter)
		b := api.Backend{Name: n, Default: i == 0, Snapshots: snaps}
		if a, ok := be.(backend.Accelerated); ok {
			b.Accel = a.Accel()
		}
		out = append(out, b)
	}
	return out
}
