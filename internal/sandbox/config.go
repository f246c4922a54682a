package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/vmexec/vmexec/api"
	"github.com/vmexec/vmexec/internal/policy"
	"github.com/vmexec/vmexec/internal/redact"
)

// Config configures the service. Zero fields take the defaults of DefaultConfig.
type Config struct {
	// Defaults apply to a run that leaves a limit at zero.
	Defaults api.Limits `json:"defaults" yaml:"defaults"`
	// Max bounds what a request may ask for.
	Max api.Limits `json:"max" yaml:"max"`
	// MaxCodeBytes refuses larger code before it reaches a sandbox.
	MaxCodeBytes int `json:"max_code_bytes" yaml:"max_code_bytes"`
	// IdleTimeout is how long an unused sandbox lives; 0 takes the default, negative
	// never reaps.
	IdleTimeout time.Duration `json:"idle_timeout" yaml:"idle_timeout"`
	// MaxSandboxes bounds the live sandboxes of this server. The daemon's default
	// comes from the host's memory (internal/config DefaultMaxSandboxes); 0 here
	// takes DefaultConfig's.
	MaxSandboxes int `json:"max_sandboxes" yaml:"max_sandboxes"`
	// PoolSize is how many ready sandboxes are kept waiting for new agents.
	PoolSize int `json:"pool_size" yaml:"pool_size"`
	// TemplateSnapshot restores new sandboxes (the pool's, and a new agent's) from a
	// snapshot of a warmed sandbox made once per template, so that a new agent's
	// first run takes no checkpoint and finds the python zygote ready (see pool.go).
	// Default on, where the default backend can (gVisor); false boots each from the
	// template.
	TemplateSnapshot *bool `json:"template_snapshot,omitempty" yaml:"template_snapshot,omitempty"`
	// QueueDepth bounds the requests waiting for one busy sandbox.
	QueueDepth int `json:"queue_depth" yaml:"queue_depth"`
	// HostMaxPIDs is the host-side task cap of a whole sandbox (a backstop).
	HostMaxPIDs int64 `json:"host_max_pids" yaml:"host_max_pids"`
	// History is the server's transaction policy; agents and requests may override
	// it. Unset fields take the built-in defaults (snapshot before each run, roll
	// back on failure, keep failed states, 1000 runs and 20 snapshots per sandbox).
	History api.ExecPolicy `json:"history" yaml:"history"`
	// MaxStoredOutput caps each output stream stored in the history, in bytes.
	MaxStoredOutput int `json:"max_stored_output" yaml:"max_stored_output"`
	// Policy is the pre-run check of code: allowed languages, size, dangerous
	// patterns. Agents may narrow languages and disable rules for themselves.
	Policy policy.Config `json:"policy" yaml:"policy"`
	// Redact replaces secrets in output, in results and in the history.
	Redact redact.Config `json:"redact" yaml:"redact"`

	// MemoryBudgetMB bounds the memory all live sandboxes are given together (their
	// memory_mb, pool included); at the bound the least recently used idle sandbox is
	// suspended. 0 takes the host's memory (MemTotal of /proc/meminfo); negative: none.
	MemoryBudgetMB int64 `json:"memory_budget_mb" yaml:"memory_budget_mb"`
	// SandboxSnapshotBytes bounds the disk one sandbox's snapshots use, pinned ones
	// included; TotalSnapshotBytes bounds all of them. Past a budget the sandbox's
	// oldest unpinned snapshots are removed, and if that is not enough the snapshot
	// (and the run that needs it) is refused with ErrStorage. 0 takes the default;
	// negative: none.
	SandboxSnapshotBytes int64 `json:"sandbox_snapshot_bytes" yaml:"sandbox_snapshot_bytes"`
	TotalSnapshotBytes   int64 `json:"total_snapshot_bytes" yaml:"total_snapshot_bytes"`
	// MaxSnapshotsLimit and MaxHistoryLimit bound what a policy may set as
	// max_snapshots and max_history_entries.
	MaxSnapshotsLimit int `json:"max_snapshots_limit" yaml:"max_snapshots_limit"`
	MaxHistoryLimit   int `json:"max_history_limit" yaml:"max_history_limit"`
	// ShutdownTimeout is the budget of Close (the daemon's shutdown): runs in flight
	// are interrupted and rolled back, then sandboxes are suspended, each within
	// SuspendTimeout.
	ShutdownTimeout time.Duration `json:"shutdown_timeout" yaml:"shutdown_timeout"`
	SuspendTimeout  time.Duration `json:"suspend_timeout" yaml:"suspend_timeout"`
	// Changes sets the runs' change sets (see changes.go): on by default.
	Changes ChangesConfig `json:"changes" yaml:"changes"`
}

// limitSpec is one per-run limit: its name on the wire, its minimum, and its field in
// api.Limits. It is the one list the defaults, the maximums, Validate and resolve
// walk.
type limitSpec struct {
	name  string
	min   int64
	field func(*api.Limits) *int64
}

var limitSpecs = []limitSpec{
	{"timeout_ms", 1, func(l *api.Limits) *int64 { return &l.TimeoutMS }},
	{"max_output_bytes", 1, func(l *api.Limits) *int64 { return &l.MaxOutputBytes }},
	{"memory_mb", 64, func(l *api.Limits) *int64 { return &l.MemoryMB }},
	{"max_procs", 8, func(l *api.Limits) *int64 { return &l.MaxProcs }},
	{"max_file_bytes", 1, func(l *api.Limits) *int64 { return &l.MaxFileBytes }},
}

// DefaultConfig returns the defaults: 30 s, 1 MiB per stream, 512 MiB, 256 processes,
// 1 GiB files; maximums 10 min, 16 MiB, 4 GiB, 4096, 8 GiB; code up to 1 MiB (the
// policy's own, lower, limit of 100 KB blocks with a reason before that); snapshots up
// to 4 GiB per sandbox and 32 GiB in all, max_snapshots at most 100; a 30 s shutdown
// with 10 s per suspension.
func DefaultConfig() Config {
	return Config{
		Defaults:        api.Limits{TimeoutMS: 30_000, MaxOutputBytes: 1 << 20, MemoryMB: 512, MaxProcs: 256, MaxFileBytes: 1 << 30},
		Max:             api.Limits{TimeoutMS: 600_000, MaxOutputBytes: 16 << 20, MemoryMB: 4096, MaxProcs: 4096, MaxFileBytes: 8 << 30},
		MaxCodeBytes:    1 << 20,
		IdleTimeout:     15 * time.Minute,
		MaxSandboxes:    64,
		PoolSize:        2,
		QueueDepth:      16,
		HostMaxPIDs:     8192,
		MaxStoredOutput: 64 << 10,
		Policy:          policy.DefaultConfig(),
		Redact:          redact.DefaultConfig(),

		SandboxSnapshotBytes: 4 << 30,
		TotalSnapshotBytes:   32 << 30,
		MaxSnapshotsLimit:    100,
		MaxHistoryLimit:      100_000,
		ShutdownTimeout:      30 * time.Second,
		SuspendTimeout:       10 * time.Second,
	}
}

// withDefaults fills zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	for _, l := range limitSpecs {
		orDefault(l.field(&c.Defaults), *l.field(&d.Defaults))
		orDefault(l.field(&c.Max), *l.field(&d.Max))
	}
	orDefault(&c.HostMaxPIDs, d.HostMaxPIDs)
	orDefault(&c.MaxCodeBytes, d.MaxCodeBytes)
	orDefault(&c.IdleTimeout, d.IdleTimeout)
	orDefault(&c.MaxSandboxes, d.MaxSandboxes)
	orDefault(&c.QueueDepth, d.QueueDepth)
	orDefault(&c.MaxStoredOutput, d.MaxStoredOutput)
	orDefault(&c.SandboxSnapshotBytes, d.SandboxSnapshotBytes)
	orDefault(&c.TotalSnapshotBytes, d.TotalSnapshotBytes)
	orDefault(&c.MaxSnapshotsLimit, d.MaxSnapshotsLimit)
	orDefault(&c.MaxHistoryLimit, d.MaxHistoryLimit)
	orDefault(&c.ShutdownTimeout, d.ShutdownTimeout)
	orDefault(&c.SuspendTimeout, d.SuspendTimeout)
	return c
}

// orDefault sets *dst to v when *dst is its type's zero value.
func orDefault[T comparable](dst *T, v T) {
	var zero T
	if *dst == zero {
		*dst = v
	}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	check := func(name string, def, max int64) {
		if def < 0 || max < 0 {
			errs = append(errs, fmt.Errorf("%s: negative limit", name))
		}
		if def > max {
			errs = append(errs, fmt.Errorf("%s: default %d exceeds maximum %d", name, def, max))
		}
	}
	for _, l := range limitSpecs {
		def, max := *l.field(&c.Defaults), *l.field(&c.Max)
		check(l.name, def, max)
		if def < l.min {
			errs = append(errs, fmt.Errorf("%s: default %d is below the minimum %d", l.name, def, l.min))
		}
	}
	if c.MaxSnapshotsLimit < 1 || c.MaxHistoryLimit < 1 {
		errs = append(errs, fmt.Errorf("max_snapshots_limit and max_history_limit must be at least 1"))
	}
	if c.ShutdownTimeout < 0 || c.SuspendTimeout < 0 || c.SuspendTimeout > c.ShutdownTimeout {
		errs = append(errs, fmt.Errorf("suspend_timeout %v must be positive and within shutdown_timeout %v", c.SuspendTimeout, c.ShutdownTimeout))
	}
	if c.MemoryBudgetMB > 0 && c.MemoryBudgetMB < c.Max.MemoryMB {
		errs = append(errs, fmt.Errorf("memory_budget_mb %d is below max.memory_mb %d: the largest sandbox could never start", c.MemoryBudgetMB, c.Max.MemoryMB))
	}
	if err := c.Policy.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("policy: %w", err))
	}
	if err := c.Changes.validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Redact.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("redact: %w", err))
	}
	if err := c.validatePolicy(&c.History); err != nil {
		errs = append(errs, fmt.Errorf("history: %w", err))
	}
	if c.PoolSize < 0 || c.PoolSize > c.MaxSandboxes {
		errs = append(errs, fmt.Errorf("pool_size %d: must be between 0 and max_sandboxes (%d)", c.PoolSize, c.MaxSandboxes))
	}
	return errors.Join(errs...)
}

// resolve applies defaults to req and checks it against the minimums and maximums.
func (c Config) resolve(req api.Limits) (api.Limits, error) {
	out := req
	for _, l := range limitSpecs {
		v, def, max := l.field(&out), *l.field(&c.Defaults), *l.field(&c.Max)
		switch {
		case *v == 0:
			*v = def
		case *v < l.min:
			return out, fmt.Errorf("limit %s=%d is below the minimum %d: %w", l.name, *v, l.min, ErrInvalid)
		case *v > max:
			return out, fmt.Errorf("limit %s=%d exceeds the server maximum %d: %w", l.name, *v, max, ErrInvalid)
		}
	}
	return out, nil
}

// hostMemoryMB is the host's memory (MemTotal of /proc/meminfo) in MiB, or 0 when
// it cannot be read (then memory is not budgeted).
func hostMemoryMB() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
			return kb >> 10
		}
	}
	return 0
}

// Limits returns the server's default and maximum per-run limits.
func (s *Service) Limits() (defaults, max api.Limits) { return s.cfg.Defaults, s.cfg.Max }
