package sandbox

import (
	"errors"
	"fmt"
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
	// MaxSandboxes bounds the live sandboxes of this server.
	MaxSandboxes int `json:"max_sandboxes" yaml:"max_sandboxes"`
	// PoolSize is how many ready sandboxes are kept waiting for new agents.
	PoolSize int `json:"pool_size" yaml:"pool_size"`
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
}

// DefaultConfig returns the defaults: 30 s, 1 MiB per stream, 512 MiB, 256 processes,
// 1 GiB files; maximums 10 min, 16 MiB, 4 GiB, 4096, 8 GiB; code up to 1 MiB (the
// policy's own, lower, limit of 100 KB blocks with a reason before that).
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
	}
}

// withDefaults fills zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	fill := func(dst *int64, v int64) {
		if *dst == 0 {
			*dst = v
		}
	}
	fill(&c.Defaults.TimeoutMS, d.Defaults.TimeoutMS)
	fill(&c.Defaults.MaxOutputBytes, d.Defaults.MaxOutputBytes)
	fill(&c.Defaults.MemoryMB, d.Defaults.MemoryMB)
	fill(&c.Defaults.MaxProcs, d.Defaults.MaxProcs)
	fill(&c.Defaults.MaxFileBytes, d.Defaults.MaxFileBytes)
	fill(&c.Max.TimeoutMS, d.Max.TimeoutMS)
	fill(&c.Max.MaxOutputBytes, d.Max.MaxOutputBytes)
	fill(&c.Max.MemoryMB, d.Max.MemoryMB)
	fill(&c.Max.MaxProcs, d.Max.MaxProcs)
	fill(&c.Max.MaxFileBytes, d.Max.MaxFileBytes)
	fill(&c.HostMaxPIDs, d.HostMaxPIDs)
	if c.MaxCodeBytes == 0 {
		c.MaxCodeBytes = d.MaxCodeBytes
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = d.IdleTimeout
	}
	if c.MaxSandboxes == 0 {
		c.MaxSandboxes = d.MaxSandboxes
	}
	if c.QueueDepth == 0 {
		c.QueueDepth = d.QueueDepth
	}
	if c.MaxStoredOutput == 0 {
		c.MaxStoredOutput = d.MaxStoredOutput
	}
	return c
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
	check("timeout_ms", c.Defaults.TimeoutMS, c.Max.TimeoutMS)
	check("max_output_bytes", c.Defaults.MaxOutputBytes, c.Max.MaxOutputBytes)
	check("memory_mb", c.Defaults.MemoryMB, c.Max.MemoryMB)
	check("max_procs", c.Defaults.MaxProcs, c.Max.MaxProcs)
	check("max_file_bytes", c.Defaults.MaxFileBytes, c.Max.MaxFileBytes)
	if c.Defaults.MemoryMB < 64 {
		errs = append(errs, fmt.Errorf("memory_mb: %d is below the 64 MiB a sandbox needs", c.Defaults.MemoryMB))
	}
	if err := c.Policy.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("policy: %w", err))
	}
	if err := c.Redact.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("redact: %w", err))
	}
	if err := validatePolicy(&c.History); err != nil {
		errs = append(errs, fmt.Errorf("history: %w", err))
	}
	if c.PoolSize < 0 || c.PoolSize > c.MaxSandboxes {
		errs = append(errs, fmt.Errorf("pool_size %d: must be between 0 and max_sandboxes (%d)", c.PoolSize, c.MaxSandboxes))
	}
	return errors.Join(errs...)
}

// resolve applies defaults to req and checks it against the maximums.
func (c Config) resolve(req api.Limits) (api.Limits, error) {
	out := req
	type lim struct {
		name          string
		v             *int64
		def, max, min int64
	}
	for _, l := range []lim{
		{"timeout_ms", &out.TimeoutMS, c.Defaults.TimeoutMS, c.Max.TimeoutMS, 1},
		{"max_output_bytes", &out.MaxOutputBytes, c.Defaults.MaxOutputBytes, c.Max.MaxOutputBytes, 1},
		{"memory_mb", &out.MemoryMB, c.Defaults.MemoryMB, c.Max.MemoryMB, 64},
		{"max_procs", &out.MaxProcs, c.Defaults.MaxProcs, c.Max.MaxProcs, 8},
		{"max_file_bytes", &out.MaxFileBytes, c.Defaults.MaxFileBytes, c.Max.MaxFileBytes, 1},
	} {
		switch {
		case *l.v == 0:
			*l.v = l.def
		case *l.v < l.min:
			return out, fmt.Errorf("limit %s=%d is below the minimum %d: %w", l.name, *l.v, l.min, ErrInvalid)
		case *l.v > l.max:
			return out, fmt.Errorf("limit %s=%d exceeds the server maximum %d: %w", l.name, *l.v, l.max, ErrInvalid)
		}
	}
	return out, nil
}
