// Package config is the daemon's configuration: a struct with defaults, read from a
// YAML file, then overridden by VMEXEC_* environment variables, then by flags (which
// cmd/vmexec applies), validated, and with its paths made absolute once.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/vmexec/vmexec/internal/agent"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// Config is everything `vmexec serve` needs.
type Config struct {
	// Addr is the HTTP listen address.
	Addr string `yaml:"addr"`
	// HTTP configures who may call the HTTP API and the server's timeouts.
	HTTP HTTP `yaml:"http"`
	// DataDir holds templates, tools, sandbox state, snapshots and the history database.
	DataDir string `yaml:"data_dir"`
	// TemplateDir holds built templates; empty means <data_dir>/templates.
	TemplateDir string `yaml:"template_dir"`
	// Runsc is the runsc binary; empty means <data_dir>/tools/runsc, else $PATH.
	Runsc string `yaml:"runsc"`
	// Agent is the static guest agent binary; empty means vmexec-agent beside the
	// vmexec executable, else $PATH.
	Agent string `yaml:"agent"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level"`
	// Backends are the enabled sandbox backends, "gvisor" and/or "microvm"; the
	// first is the default.
	Backends []string `yaml:"backends"`
	// CPUs is each sandbox's CPU quota in cores (fractions allowed), enforced by the
	// host cgroup on everything the sandbox runs, background processes included.
	CPUs float64 `yaml:"cpus"`
	// MicroVM configures the microvm backend when it is enabled.
	MicroVM MicroVM `yaml:"microvm"`
	// Sandbox configures limits, pool and reaping.
	Sandbox sandbox.Config `yaml:"sandbox"`
	// Auth configures API keys (internal/auth; `vmexec keys` manages them).
	Auth Auth `yaml:"auth"`
	// TLS serves HTTPS directly when both files are given.
	TLS TLS `yaml:"tls"`
	// Agents are the LLM agents served at /v1/agents/{id}/chat (see internal/agent);
	// serve --agents-config adds the roles of a seed role config file.
	Agents []agent.Config `yaml:"agents"`
	// AgentsConfig is a seed role config file (JSON) whose roles become agents.
	AgentsConfig string `yaml:"agents_config"`
	// Cluster configures multi-host mode (cluster.go); absent: single host.
	Cluster Cluster `yaml:"cluster"`
}

// Auth configures who may call the API. Keys are required once any key has been
// created in the data dir, or when Required is set (then even before the first).
type Auth struct {
	// Required makes every route but the public ones need a key, keys or not.
	Required bool `yaml:"required"`
	// InsecureNoAuth lets the daemon listen on a non-loopback address with no keys
	// in force, where anyone who can reach it can run code.
	InsecureNoAuth bool `yaml:"insecure_no_auth"`
}

// TLS names a PEM certificate (chain) and its private key.
type TLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Enabled reports whether HTTPS is configured.
func (t TLS) Enabled() bool { return t.Cert != "" }

// HTTP configures the HTTP server's boundary (see internal/httpapi) and timeouts.
type HTTP struct {
	// AllowedHosts are names accepted in the Host header besides localhost,
	// 127.0.0.1, [::1] and the listen address (all with the listen port): "name" for
	// any port, "name:port" for one. Needed for a proxy's public name.
	AllowedHosts []string `yaml:"allowed_hosts"`
	// AllowedOrigins are web origins (scheme://host[:port]) whose pages may call the
	// API from a browser; pages of any other origin are refused.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// ReadHeaderTimeout bounds the time a client may take to send a request's headers.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// ReadBodyTimeout bounds the time a client may take to send a request's body.
	ReadBodyTimeout time.Duration `yaml:"read_body_timeout"`
	// IdleTimeout closes a kept-alive connection idle this long between requests.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
}

// DefaultHTTP returns the HTTP defaults.
func DefaultHTTP() HTTP {
	return HTTP{ReadHeaderTimeout: 10 * time.Second, ReadBodyTimeout: 60 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
}

// Validate reports what is wrong with h.
func (h HTTP) Validate() error {
	var errs []error
	for name, d := range map[string]time.Duration{"read_header_timeout": h.ReadHeaderTimeout,
		"read_body_timeout": h.ReadBodyTimeout, "idle_timeout": h.IdleTimeout} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("http.%s %s: want a positive duration", name, d))
		}
	}
	if h.MaxHeaderBytes < 4<<10 || h.MaxHeaderBytes > 1<<20 {
		errs = append(errs, fmt.Errorf("http.max_header_bytes %d: want between 4096 and 1048576", h.MaxHeaderBytes))
	}
	for _, o := range h.AllowedOrigins {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" {
			errs = append(errs, fmt.Errorf("http.allowed_origins: %q is not an origin (want scheme://host[:port], e.g. https://ui.example)", o))
		}
	}
	for _, host := range h.AllowedHosts {
		if host == "" || strings.ContainsAny(host, "/ \t") {
			errs = append(errs, fmt.Errorf("http.allowed_hosts: %q is not a host name (want name or name:port)", host))
		}
	}
	return errors.Join(errs...)
}

// MicroVM configures the QEMU microvm backend.
type MicroVM struct {
	// Accel is auto (KVM when a probe boot works, else TCG), kvm or tcg.
	Accel string `yaml:"accel"`
	// CPUs is the number of vCPUs per microVM (their time together is still capped
	// by Config.CPUs).
	CPUs int `yaml:"cpus"`
}

// Default returns the built-in defaults; sandbox.max_sandboxes comes from the host's
// memory (see DefaultMaxSandboxes).
func Default() Config {
	c := Config{Addr: "127.0.0.1:8080", HTTP: DefaultHTTP(), DataDir: "/var/lib/vmexec", LogLevel: "info", Backends: []string{"gvisor"}, CPUs: 1,
		MicroVM: MicroVM{Accel: "auto", CPUs: 1}, Sandbox: sandbox.DefaultConfig()}
	c.Sandbox.MaxSandboxes = DefaultMaxSandboxes(hostMemTotalMiB())
	return c
}

// Load reads path (if not empty) over the defaults, then applies the environment.
func Load(path string) (Config, error) {
	c := Default()
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return c, fmt.Errorf("config: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(b)))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil && !errors.Is(err, errEOF(err)) {
			return c, fmt.Errorf("config %s: %w", path, err)
		}
	}
	if err := c.applyEnv(os.LookupEnv); err != nil {
		return c, err
	}
	if c.Sandbox.MaxSandboxes == 0 { // written as 0: the host's default, as when left out
		c.Sandbox.MaxSandboxes = DefaultMaxSandboxes(hostMemTotalMiB())
	}
	return c, nil
}

func errEOF(err error) error {
	if err != nil && err.Error() == "EOF" {
		return err
	}
	return errors.New("not eof")
}

// applyEnv overrides fields from VMEXEC_* variables.
func (c *Config) applyEnv(lookup func(string) (string, bool)) error {
	str := map[string]*string{
		"VMEXEC_ADDR": &c.Addr, "VMEXEC_DATA_DIR": &c.DataDir, "VMEXEC_RUNSC": &c.Runsc,
		"VMEXEC_AGENT": &c.Agent, "VMEXEC_TEMPLATE_DIR": &c.TemplateDir, "VMEXEC_LOG_LEVEL": &c.LogLevel,
		"VMEXEC_TLS_CERT": &c.TLS.Cert, "VMEXEC_TLS_KEY": &c.TLS.Key,
		"VMEXEC_POSTGRES_URL": &c.Cluster.PostgresURL, "VMEXEC_NODE_NAME": &c.Cluster.NodeName, "VMEXEC_NODE_ADDRESS": &c.Cluster.Address,
	}
	for k, p := range str {
		if v, ok := lookup(k); ok && v != "" {
			*p = v
		}
	}
	c.Cluster.S3.applyEnv(lookup)
	if v, ok := lookup("VMEXEC_BACKENDS"); ok && v != "" {
		c.Backends = SplitList(v)
	}
	if v, ok := lookup("VMEXEC_ALLOWED_HOSTS"); ok && v != "" {
		c.HTTP.AllowedHosts = SplitList(v)
	}
	if v, ok := lookup("VMEXEC_ALLOWED_ORIGINS"); ok && v != "" {
		c.HTTP.AllowedOrigins = SplitList(v)
	}
	for k, p := range map[string]*bool{"VMEXEC_AUTH_REQUIRED": &c.Auth.Required, "VMEXEC_INSECURE_NO_AUTH": &c.Auth.InsecureNoAuth} {
		if v, ok := lookup(k); ok && v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%s=%q: want true or false", k, v)
			}
			*p = b
		}
	}
	if v, ok := lookup("VMEXEC_MICROVM_ACCEL"); ok && v != "" {
		c.MicroVM.Accel = v
	}
	if v, ok := lookup("VMEXEC_CPUS"); ok && v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return fmt.Errorf("VMEXEC_CPUS=%q: %w", v, err)
		}
		c.CPUs = f
	}
	if v, ok := lookup("VMEXEC_POOL_SIZE"); ok && v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("VMEXEC_POOL_SIZE=%q: %w", v, err)
		}
		c.Sandbox.PoolSize = n
	}
	if v, ok := lookup("VMEXEC_IDLE_TIMEOUT"); ok && v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("VMEXEC_IDLE_TIMEOUT=%q: %w", v, err)
		}
		c.Sandbox.IdleTimeout = d
	}
	return nil
}

// Validate reports what is wrong, all at once.
func (c Config) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		errs = append(errs, fmt.Errorf("addr %q: want host:port", c.Addr))
	}
	if err := c.HTTP.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir is empty"))
	}
	if _, err := ParseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	seen := map[string]bool{}
	for _, b := range c.Backends {
		if b != "gvisor" && b != "microvm" {
			errs = append(errs, fmt.Errorf("backends: %q is not a backend (gvisor, microvm)", b))
		}
		if seen[b] {
			errs = append(errs, fmt.Errorf("backends: %q is listed twice", b))
		}
		seen[b] = true
	}
	if len(c.Backends) == 0 {
		errs = append(errs, errors.New("backends: enable at least one (gvisor, microvm)"))
	}
	if !(c.CPUs >= 0.01 && c.CPUs <= 1024) { // also NaN
		errs = append(errs, fmt.Errorf("cpus %v: want a CPU quota between 0.01 and 1024 cores", c.CPUs))
	}
	switch c.MicroVM.Accel {
	case "auto", "kvm", "tcg":
	default:
		errs = append(errs, fmt.Errorf("microvm.accel %q: want auto, kvm or tcg", c.MicroVM.Accel))
	}
	if c.MicroVM.CPUs < 1 {
		errs = append(errs, fmt.Errorf("microvm.cpus %d: want at least 1", c.MicroVM.CPUs))
	}
	if err := c.Sandbox.Validate(); err != nil {
		errs = append(errs, err)
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		errs = append(errs, errors.New("tls: give both cert and key (--tls-cert, --tls-key), or neither"))
	}
	if err := c.Cluster.S3.Validate(); err != nil {
		errs = append(errs, err)
	}
	ids := map[string]bool{}
	for _, a := range c.Agents {
		if err := a.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("agents: %w", err))
		}
		if ids[a.ID] {
			errs = append(errs, fmt.Errorf("agents: %q is configured twice", a.ID))
		}
		ids[a.ID] = true
	}
	if err := c.Cluster.validatePostgres(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Resolve makes paths absolute and fills the binaries' defaults.
func (c *Config) Resolve() error {
	var err error
	if c.DataDir, err = filepath.Abs(c.DataDir); err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	if c.Runsc == "" {
		c.Runsc = filepath.Join(c.DataDir, "tools", "runsc")
		if _, err := os.Stat(c.Runsc); err != nil {
			c.Runsc = "runsc"
		}
	}
	if c.Agent == "" {
		c.Agent = DefaultAgentPath()
	}
	if err := c.Cluster.resolvePostgres(); err != nil {
		return err
	}
	for _, p := range []*string{&c.TLS.Cert, &c.TLS.Key} {
		if *p != "" {
			if *p, err = filepath.Abs(*p); err != nil {
				return fmt.Errorf("tls: %w", err)
			}
		}
	}
	if c.Agent != "" {
		if c.Agent, err = filepath.Abs(c.Agent); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	return nil
}

// DefaultAgentPath finds vmexec-agent beside the running executable, else on $PATH.
func DefaultAgentPath() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "vmexec-agent")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := execLookPath("vmexec-agent"); err == nil {
		return p
	}
	return ""
}

// ParseLevel parses a log level name.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("log_level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// Paths under the data dir.
func (c Config) TemplatesDir() string {
	if c.TemplateDir != "" {
		return c.TemplateDir
	}
	return filepath.Join(c.DataDir, "templates")
}
func (c Config) GVisorDir() string { return filepath.Join(c.DataDir, "gvisor") }

// SplitList splits a comma-separated list, dropping blanks.
func SplitList(v string) []string {
	var out []string
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// MicroVMDir holds the microvm backend's state.
func (c Config) MicroVMDir() string { return filepath.Join(c.DataDir, "microvm") }

// SnapshotDir held snapshot images before the backends owned them (see
// internal/backend); the daemon removes it.
func (c Config) SnapshotDir() string { return filepath.Join(c.DataDir, "snapshots") }

// HistoryPath is the SQLite history database.
func (c Config) HistoryPath() string { return filepath.Join(c.DataDir, "history.db") }
