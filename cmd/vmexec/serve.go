package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/internal/agent"
	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/backend"
	"github.com/vmexec/vmexec/internal/backend/gvisor"
	"github.com/vmexec/vmexec/internal/backend/microvm"
	"github.com/vmexec/vmexec/internal/config"
	"github.com/vmexec/vmexec/internal/httpapi"
	"github.com/vmexec/vmexec/internal/sandbox"
	"github.com/vmexec/vmexec/internal/template"
)

func newServeCmd() *cobra.Command {
	var (
		cfgPath      string
		flags        config.Config
		backendsFlag string
		hostsFlag    string
		originsFlag  string
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the vmexec daemon (as root)",
		Long: `Run the daemon: the HTTP API on --addr, sandboxes with gVisor (runsc).

On first start it builds the sandbox template (debootstrap, about a minute) into the
data dir and reuses it afterwards. It removes sandboxes a crashed predecessor left, and
suspends all of its sandboxes when it stops (SIGINT or SIGTERM) within the shutdown
budget (sandbox.shutdown_timeout, 30 s): runs in flight are interrupted and rolled
back, then each sandbox is snapshotted (sandbox.suspend_timeout, 10 s each) and
stopped, and the next run for its agent resumes it.

Configuration: built-in defaults, then the --config YAML file, then VMEXEC_*
environment variables (VMEXEC_ADDR, VMEXEC_DATA_DIR, VMEXEC_RUNSC, VMEXEC_AGENT,
VMEXEC_BACKENDS, VMEXEC_MICROVM_ACCEL,
VMEXEC_TEMPLATE_DIR, VMEXEC_LOG_LEVEL, VMEXEC_POOL_SIZE, VMEXEC_IDLE_TIMEOUT,
VMEXEC_ALLOWED_HOSTS, VMEXEC_ALLOWED_ORIGINS, VMEXEC_TLS_CERT, VMEXEC_TLS_KEY,
VMEXEC_AUTH_REQUIRED, VMEXEC_INSECURE_NO_AUTH), then flags.

Who may call: requests must name the server in Host (localhost, 127.0.0.1, [::1] or
the listen address, with its port; or one of --allowed-hosts), and a browser page
must be the server's own origin or one of --allowed-origins. This keeps web pages
from using a loopback daemon; it is not authentication.

API keys (vmexec keys create) are authentication: once one exists in the data dir
(or with --auth-required), every route but GET /health needs
"Authorization: Bearer KEY", and a key scoped to agents acts only as them. On an
address other than loopback the daemon refuses to start without keys unless
--insecure-no-auth is given. --tls-cert/--tls-key serve HTTPS.`,
		Example: `  sudo vmexec serve
  sudo vmexec serve --addr 127.0.0.1:9090 --data-dir /srv/vmexec
  sudo vmexec serve --config /etc/vmexec.yaml
  sudo vmexec serve --backends gvisor,microvm     # microVMs too (QEMU; KVM, else TCG)
  sudo vmexec serve --addr 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem   # after vmexec keys create`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			fl := cmd.Flags()
			set := func(name string, dst *string, v string) {
				if fl.Changed(name) {
					*dst = v
				}
			}
			set("addr", &cfg.Addr, flags.Addr)
			set("data-dir", &cfg.DataDir, flags.DataDir)
			set("runsc", &cfg.Runsc, flags.Runsc)
			set("template-dir", &cfg.TemplateDir, flags.TemplateDir)
			set("agent", &cfg.Agent, flags.Agent)
			set("log-level", &cfg.LogLevel, flags.LogLevel)
			set("agents-config", &cfg.AgentsConfig, flags.AgentsConfig)
			if fl.Changed("backends") {
				cfg.Backends = config.SplitList(backendsFlag)
			}
			if fl.Changed("allowed-hosts") {
				cfg.HTTP.AllowedHosts = config.SplitList(hostsFlag)
			}
			if fl.Changed("allowed-origins") {
				cfg.HTTP.AllowedOrigins = config.SplitList(originsFlag)
			}
			set("microvm-accel", &cfg.MicroVM.Accel, flags.MicroVM.Accel)
			if fl.Changed("pool-size") {
				cfg.Sandbox.PoolSize = flags.Sandbox.PoolSize
			}
			if fl.Changed("idle-timeout") {
				cfg.Sandbox.IdleTimeout = flags.Sandbox.IdleTimeout
			}
			set("tls-cert", &cfg.TLS.Cert, flags.TLS.Cert)
			set("tls-key", &cfg.TLS.Key, flags.TLS.Key)
			if fl.Changed("auth-required") {
				cfg.Auth.Required = flags.Auth.Required
			}
			if fl.Changed("insecure-no-auth") {
				cfg.Auth.InsecureNoAuth = flags.Auth.InsecureNoAuth
			}
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("invalid configuration:\n%w", err)
			}
			if err := cfg.Resolve(); err != nil {
				return err
			}
			return serve(cfg)
		},
	}
	f := cmd.Flags()
	d := config.Default()
	f.StringVar(&cfgPath, "config", "", "YAML configuration file")
	f.StringVar(&flags.Addr, "addr", d.Addr, "HTTP listen address")
	f.StringVar(&flags.DataDir, "data-dir", d.DataDir, "templates, tools and sandbox state")
	f.StringVar(&flags.TemplateDir, "template-dir", "", "built templates (default <data-dir>/templates)")
	f.StringVar(&flags.Runsc, "runsc", "", "runsc binary (default <data-dir>/tools/runsc, else $PATH)")
	f.StringVar(&flags.Agent, "agent", "", "guest agent binary (default vmexec-agent beside vmexec, else $PATH)")
	f.StringVar(&flags.LogLevel, "log-level", d.LogLevel, "debug, info, warn or error")
	f.StringVar(&flags.AgentsConfig, "agents-config", "", "the seed's role config file (JSON): each role becomes an agent at /v1/agents/{role}/chat and POST /chat")
	f.StringVar(&backendsFlag, "backends", strings.Join(d.Backends, ","), "enabled backends, the default first: gvisor, microvm")
	f.StringVar(&hostsFlag, "allowed-hosts", "", "more names accepted in Host, comma-separated: name (any port) or name:port")
	f.StringVar(&originsFlag, "allowed-origins", "", "web origins whose pages may call the API, comma-separated: scheme://host[:port]")
	f.StringVar(&flags.MicroVM.Accel, "microvm-accel", d.MicroVM.Accel, "microVM accelerator: auto (KVM if it boots a guest, else TCG), kvm, tcg")
	f.IntVar(&flags.Sandbox.PoolSize, "pool-size", d.Sandbox.PoolSize, "ready sandboxes kept for new agents")
	f.DurationVar(&flags.Sandbox.IdleTimeout, "idle-timeout", d.Sandbox.IdleTimeout, "suspend (snapshot and stop) sandboxes unused this long")
	f.StringVar(&flags.TLS.Cert, "tls-cert", "", "serve HTTPS with this PEM certificate (chain); needs --tls-key")
	f.StringVar(&flags.TLS.Key, "tls-key", "", "the PEM private key of --tls-cert")
	f.BoolVar(&flags.Auth.Required, "auth-required", false, "require an API key on every route but GET /health, even before the first key is created")
	f.BoolVar(&flags.Auth.InsecureNoAuth, "insecure-no-auth", false, "allow a non-loopback --addr with no API keys (anyone who can reach it can run code)")
	return cmd
}

func serve(cfg config.Config) error {
	level, _ := config.ParseLevel(cfg.LogLevel)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	hist, clu, err := openHistory(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer hist.Close()
	keys := auth.NewCache(hist, cfg.Auth.Required, log)
	if err := keys.Refresh(ctx); err != nil {
		return fmt.Errorf("API keys: %w", err)
	}
	if err := checkExposure(cfg, keys); err != nil {
		return err
	}
	var tlsCert []byte
	if cfg.TLS.Enabled() {
		pair, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		tlsCert = pair.Certificate[0]
	}

	tpls := &template.Store{Dir: cfg.TemplatesDir()}
	tpl, err := tpls.Ensure(ctx, template.Default, os.Stderr)
	if err != nil {
		return fmt.Errorf("sandbox template: %w", err)
	}
	backends, err := openBackends(ctx, cfg, log)
	if err != nil {
		return fmt.Errorf("%w\n(run `vmexec doctor` to see what this host lacks)", err)
	}
	store, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	clu.storeHooks(store, log)
	svc, err := sandbox.New(cfg.Sandbox, sandbox.Deps{Backends: backends, Template: tpl, History: hist, Store: store, Logger: log, Fencer: clu.fencer()})
	if err != nil {
		return err
	}
	if err := svc.Start(ctx); err != nil {
		return err
	}
	// Snapshot images used to live in <data_dir>/snapshots; they are the backends' now
	// (under each backend's state dir), and Start has dropped the records that named
	// the old ones.
	if legacy := cfg.SnapshotDir(); fileExists(legacy) {
		log.Warn("removing snapshot images of the old layout (their records were dropped)", "dir", legacy)
		if err := os.RemoveAll(legacy); err != nil {
			log.Warn("removing old snapshot images", "dir", legacy, "err", err)
		}
	}
	agents, err := newAgents(cfg, svc, hist, log)
	if err != nil {
		return err
	}
	// shutdown stops the service and the HTTP server within the shutdown budget
	// (shutdown_timeout, 30 s by default): the service refuses new work (503),
	// interrupts runs in flight (recorded as interrupted, rolled back), which lets
	// their handlers answer, then suspends each sandbox within suspend_timeout.
	var shutdownOnce sync.Once
	shutdown := func(srv *http.Server) {
		shutdownOnce.Do(func() {
			start := time.Now()
			sctx, cancel := context.WithTimeout(context.Background(), svc.ShutdownTimeout())
			defer cancel()
			closed := make(chan error, 1)
			go func() { closed <- svc.Close(sctx) }()
			if srv != nil {
				if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
					log.Warn("http shutdown", "err", err)
				}
			}
			if err := <-closed; err != nil {
				log.Error("suspending sandboxes", "err", err)
			}
			log.Info("stopped; sandboxes suspended", "took", time.Since(start).Round(time.Millisecond), "budget", svc.ShutdownTimeout())
		})
	}
	defer shutdown(nil)

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := newHTTPServer(httpapi.New(svc, httpapi.Options{Version: version, Logger: log, Addr: ln.Addr().String(),
		AllowedHosts: cfg.HTTP.AllowedHosts, AllowedOrigins: cfg.HTTP.AllowedOrigins, BodyTimeout: cfg.HTTP.ReadBodyTimeout, Agents: agents, Keys: keys, TLSCert: tlsCert, DataDir: cfg.DataDir}), cfg.HTTP)
	defer keys.Start()()
	actx, stopAnnounce := context.WithCancel(context.Background())
	announced := make(chan struct{})
	go func() { defer close(announced); clu.announce(actx, cfg, ln.Addr().String(), svc, log) }()
	defer func() { stopAnnounce(); <-announced }()
	errc := make(chan error, 1)
	scheme := "http"
	if cfg.TLS.Enabled() {
		scheme = "https"
		go func() { errc <- srv.ServeTLS(ln, cfg.TLS.Cert, cfg.TLS.Key) }()
	} else {
		go func() { errc <- srv.Serve(ln) }()
	}
	// Backends that can prepare (the microVM's image and accelerator) do so ahead of
	// their first sandbox; the work is cancelled, and waited for, when the daemon stops.
	pctx, stopPrepare := context.WithCancel(context.Background())
	var preparing sync.WaitGroup
	defer func() { stopPrepare(); preparing.Wait() }()
	for _, be := range backends {
		if p, ok := be.(backend.Preparer); ok {
			preparing.Add(1)
			go func() { defer preparing.Done(); prepareBackend(pctx, be, p, tpl, log) }()
		}
	}
	log.Info("vmexec serving", "addr", scheme+"://"+ln.Addr().String(), "keys", keys.Enforced(), "backends", strings.Join(cfg.Backends, ","), "template", tpl.Name+"-"+tpl.Hash, "data_dir", cfg.DataDir)

	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "budget", svc.ShutdownTimeout())
	shutdown(srv)
	return nil
}

// newAgents makes the agent runner: the config's agents, then the roles of the seed's
// role config file.
func newAgents(cfg config.Config, svc *sandbox.Service, hist agent.Store, log *slog.Logger) (*agent.Runner, error) {
	agents := cfg.Agents
	if cfg.AgentsConfig != "" {
		roles, err := agent.LoadSeedRoles(cfg.AgentsConfig)
		if err != nil {
			return nil, err
		}
		agents = append(append([]agent.Config(nil), agents...), roles...)
	}
	r, err := agent.New(agents, agent.Deps{Exec: svc, Store: hist, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("agents: %w", err)
	}
	for _, a := range r.Agents() {
		log.Info("agent", "id", a.ID, "model", r.Model(a.ID), "llm", a.LLM.BaseURL, "runs_code", a.VMExecution != nil && a.VMExecution.Enabled)
	}
	return r, nil
}

// newHTTPServer is the daemon's http.Server. Slow clients are cut off by the header
// timeout, the per-request body deadline (httpapi's read_body_timeout) and the idle
// timeout between requests. There is deliberately no ReadTimeout or WriteTimeout:
// they would bound the whole request, and runs (up to 10 min), event streams and
// large file transfers last longer than any such bound should.
func newHTTPServer(h http.Handler, c config.HTTP) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: c.ReadHeaderTimeout, IdleTimeout: c.IdleTimeout, MaxHeaderBytes: c.MaxHeaderBytes}
}

// openBackends makes the enabled backends, the default first.
func openBackends(ctx context.Context, cfg config.Config, log *slog.Logger) ([]backend.Backend, error) {
	var out []backend.Backend
	for _, name := range cfg.Backends {
		switch name {
		case gvisor.Name:
			be, err := gvisor.New(gvisor.Config{Runsc: cfg.Runsc, StateDir: cfg.GVisorDir(), AgentPath: cfg.Agent, CPUs: cfg.CPUs, Logger: log})
			if err != nil {
				return nil, err
			}
			out = append(out, be)
		case microvm.Name:
			be, err := microvm.New(microvm.Config{StateDir: cfg.MicroVMDir(), AgentPath: cfg.Agent, Accel: cfg.MicroVM.Accel, CPUQuota: cfg.CPUs,
				CPUs: cfg.MicroVM.CPUs, Logger: log, Progress: os.Stderr})
			if err != nil {
				return nil, err
			}
			out = append(out, be)
		}
	}
	return out, nil
}

// prepareBackend lets a backend that declares backend.Preparer get ready for the
// template (the microVM backend builds its guest image and settles its accelerator).
func prepareBackend(ctx context.Context, be backend.Backend, p backend.Preparer, tpl template.Template, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	start := time.Now()
	if err := p.Prepare(ctx, tpl, os.Stderr); err != nil {
		log.Warn("backend not ready; its first sandbox will try again", "backend", be.Name(), "err", err)
		return
	}
	attrs := []any{"backend", be.Name(), "took", time.Since(start).Round(time.Millisecond)}
	if a, ok := be.(backend.Accelerated); ok {
		attrs = append(attrs, "accel", a.Accel())
	}
	log.Info("backend ready", attrs...)
}

// checkExposure refuses a non-loopback listen address with no keys in force:
// anyone who could reach it could run code as any agent.
func checkExposure(cfg config.Config, keys *auth.Cache) error {
	host, _, _ := net.SplitHostPort(cfg.Addr)
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() || keys.Enforced() || cfg.Auth.InsecureNoAuth {
		return nil
	}
	return fmt.Errorf("refusing to listen on %s without API keys: anyone who can reach it could run code as any agent and read every agent's history.\n"+
		"Create a key first (vmexec keys create --data-dir %s --name admin --admin), or set auth: required, "+
		"or bind to 127.0.0.1, or pass --insecure-no-auth if something in front of vmexec authenticates", cfg.Addr, cfg.DataDir)
}

// lockDataDir makes sure only one daemon uses a data dir.
func lockDataDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "vmexec.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another vmexec serve is using %s (stop it, or use --data-dir)", dir)
	}
	return func() { f.Close() }, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
