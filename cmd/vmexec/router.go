package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"

	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/cluster"
	"github.com/vmexec/vmexec/internal/config"
	"github.com/vmexec/vmexec/internal/history/postgres"
	"github.com/vmexec/vmexec/internal/membership"
	"github.com/vmexec/vmexec/internal/router"
)

// routerOptions are `vmexec router`'s flags.
type routerOptions struct {
	addr, configPath, postgresURL, adminKey, logLevel string
	k                                                 int
	readyWithin, takeoverWait                         time.Duration
	authRequired                                      bool
	// Membership: registry (PostgreSQL), kubernetes, static.
	members, service, namespace, portName string
	nodes                                 []string
	probeInterval                         time.Duration
	probeFailures                         int
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newRouterCmd() *cobra.Command {
	o := routerOptions{}
	cmd := &cobra.Command{
		Use:   "router",
		Short: "Run a cluster router: send each request to the daemon owning its agent",
		Long: `Run a stateless router in front of cluster-mode daemons (vmexec serve with
cluster.postgres_url). Run as many as you like: they agree through PostgreSQL.

Each request goes to the node owning the agent it names (an X-Vmexec-Agent header,
else agent_id in the JSON body or the query, else the agent of the sandbox,
snapshot, run or conversation in its path). A new agent is placed on the least
loaded of --k random ready nodes with room. When an agent's node stops answering
and heartbeating, the router moves the agent to another compatible node (one
compare-and-set on its epoch in PostgreSQL) and has that node restore the agent's
durable snapshot; the response then carries X-Vmexec-Taken-Over-From. A request
naming no agent goes to any node if it concerns none (health, languages), else it
is refused when the cluster has several nodes.

The daemons are found in PostgreSQL's node registry (--members registry, the
default: ready while they heartbeat), a Kubernetes headless Service's EndpointSlices
(--members kubernetes --service NAME), or a static list probed on GET /health
(--members static --nodes NAME=HOST:PORT,...).

Keys are the cluster's (vmexec keys with VMEXEC_POSTGRES_URL set): the router checks
them, and the daemons check them again. --admin-key is the key the router uses for
its own calls to daemons (adopting an agent); it must be an admin key when the
daemons have keys.`,
		Example: `  VMEXEC_POSTGRES_URL=postgres://vmexec:PASSWORD@db:5432/vmexec \
  VMEXEC_ROUTER_ADMIN_KEY=vmx_... vmexec router --addr 0.0.0.0:8090 \\
    --members static --nodes node-1=10.0.0.11:8080,node-2=10.0.0.12:8080

  curl -s router:8090/v1/exec -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $KEY" -d '{"agent_id":"demo","language":"python","code":"print(1)"}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runRouter(o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.addr, "addr", envOr("VMEXEC_ROUTER_ADDR", "127.0.0.1:8090"), "address to listen on ($VMEXEC_ROUTER_ADDR)")
	f.StringVar(&o.configPath, "config", "", "the daemons' config file: the router reads cluster.postgres_url from it")
	f.StringVar(&o.postgresURL, "postgres-url", "", "the cluster's PostgreSQL (default $VMEXEC_POSTGRES_URL, else --config's cluster.postgres_url)")
	f.StringVar(&o.members, "members", "registry", "where the daemons are: registry (PostgreSQL's node registry), kubernetes (--service's EndpointSlices) or static (--nodes)")
	f.StringVar(&o.service, "service", "", "with --members kubernetes: the daemons' headless Service")
	f.StringVar(&o.namespace, "namespace", "", "with --members kubernetes: its namespace (default: the pod's own)")
	f.StringVar(&o.portName, "port-name", "http", "with --members kubernetes: the Service port to dial")
	f.StringSliceVar(&o.nodes, "nodes", nil, "with --members static: NAME=HOST:PORT,... (each probed on GET /health)")
	f.DurationVar(&o.probeInterval, "probe-interval", 2*time.Second, "with --members static: time between two probes of a node")
	f.IntVar(&o.probeFailures, "probe-failures", 3, "with --members static: failed probes in a row that make a node not ready")
	f.StringVar(&o.adminKey, "admin-key", os.Getenv("VMEXEC_ROUTER_ADMIN_KEY"), "admin key for the router's own calls to daemons ($VMEXEC_ROUTER_ADMIN_KEY)")
	f.IntVar(&o.k, "k", 2, "placement compares this many random ready nodes")
	f.DurationVar(&o.readyWithin, "ready-within", cluster.ReadyWithin, "a node is ready if it heartbeated this recently")
	f.DurationVar(&o.takeoverWait, "takeover-wait", cluster.ReadyWithin+cluster.HeartbeatEvery, "how long a request waits on an unreachable node that still heartbeats")
	authEnv, _ := strconv.ParseBool(os.Getenv("VMEXEC_AUTH_REQUIRED"))
	f.BoolVar(&o.authRequired, "auth-required", authEnv, "require keys even before the first is created ($VMEXEC_AUTH_REQUIRED)")
	f.StringVar(&o.logLevel, "log-level", envOr("VMEXEC_LOG_LEVEL", "info"), "debug, info, warn or error")
	return cmd
}

func runRouter(o routerOptions) error {
	if o.postgresURL == "" {
		o.postgresURL = os.Getenv("VMEXEC_POSTGRES_URL")
	}
	if o.postgresURL == "" && o.configPath != "" {
		cfg, err := config.Load(o.configPath)
		if err != nil {
			return err
		}
		o.postgresURL = cfg.Cluster.PostgresURL
	}
	if o.postgresURL == "" {
		return errors.New("vmexec router needs the cluster's PostgreSQL: --postgres-url, VMEXEC_POSTGRES_URL or cluster.postgres_url in --config")
	}
	level, err := config.ParseLevel(o.logLevel)
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	hist, err := postgres.Open(octx, o.postgresURL)
	cancel()
	if err != nil {
		return fmt.Errorf("cluster database (%s): %w", postgres.Redact(o.postgresURL), err)
	}
	defer hist.Close()
	owners, err := cluster.NewPostgres(ctx, hist.Pool())
	if err != nil {
		return err
	}
	keys := auth.NewCache(hist, o.authRequired, log)
	if err := keys.Refresh(ctx); err != nil {
		return fmt.Errorf("loading the cluster's keys: %w", err)
	}
	defer keys.Start()()

	members, closeMembers, err := routerMembers(o, owners, log)
	if err != nil {
		return err
	}
	defer closeMembers()
	rt, err := router.New(router.Config{Owners: owners, Members: members,
		Lookup: router.PGLookup{Pool: hist.Pool()}, Keys: keys, AdminKey: o.adminKey, K: o.k,
		TakeoverWait: o.takeoverWait, Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: rt, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("vmexec router serving", "addr", "http://"+ln.Addr().String(), "postgres", postgres.Redact(o.postgresURL), "keys", keys.Enforced(), "k", o.k, "members", o.members)
	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	log.Info("router shutting down")
	return srv.Shutdown(sctx)
}

// routerMembers is the router's view of the daemons, by --members.
func routerMembers(o routerOptions, reg cluster.Nodes, log *slog.Logger) (router.Members, func(), error) {
	switch o.members {
	case "registry", "":
		return router.Registry{Reg: reg, Within: o.readyWithin}, func() {}, nil
	case "static":
		if len(o.nodes) == 0 {
			return nil, nil, errors.New("--members static needs --nodes NAME=HOST:PORT,...")
		}
		m, err := membership.NewStatic(membership.StaticConfig{Nodes: o.nodes, Interval: o.probeInterval, FailureThreshold: o.probeFailures, Logger: log})
		if err != nil {
			return nil, nil, err
		}
		return router.Sourced{Src: m, Reg: reg}, func() { m.Close() }, nil
	case "kubernetes":
		if o.service == "" {
			return nil, nil, errors.New("--members kubernetes needs --service (the daemons' headless Service)")
		}
		rc, err := rest.InClusterConfig()
		if err != nil {
			return nil, nil, fmt.Errorf("--members kubernetes: not in a pod (%w)", err)
		}
		cs, err := membership.NewEndpointSliceClient(rc)
		if err != nil {
			return nil, nil, err
		}
		ns := o.namespace
		if ns == "" {
			b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
			if err != nil {
				return nil, nil, fmt.Errorf("--members kubernetes: no --namespace and the pod's is unknown: %w", err)
			}
			ns = strings.TrimSpace(string(b))
		}
		m, err := membership.NewKubernetes(membership.KubernetesConfig{Client: cs, Namespace: ns, Service: o.service, PortName: o.portName, Logger: log})
		if err != nil {
			return nil, nil, err
		}
		return router.Sourced{Src: m, Reg: reg}, func() { m.Close() }, nil
	}
	return nil, nil, fmt.Errorf("--members %q: want registry, kubernetes or static", o.members)
}
