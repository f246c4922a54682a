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
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/cluster"
	"github.com/vmexec/vmexec/internal/history/postgres"
	"github.com/vmexec/vmexec/internal/router"
)

// routerOptions are `vmexec router`'s flags.
type routerOptions struct {
	listen, postgresURL, adminKey, logLevel string
	k                                       int
	readyWithin, takeoverWait               time.Duration
	authRequired                            bool
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

Keys are the cluster's (vmexec keys with VMEXEC_POSTGRES_URL set): the router checks
them, and the daemons check them again. --admin-key is the key the router uses for
its own calls to daemons (adopting an agent); it must be an admin key when the
daemons have keys.`,
		Example: `  VMEXEC_POSTGRES_URL=postgres://vmexec:PASSWORD@db:5432/vmexec \
  VMEXEC_ROUTER_ADMIN_KEY=vmx_... vmexec router --listen 0.0.0.0:8090

  curl -s router:8090/v1/exec -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $KEY" -d '{"agent_id":"demo","language":"python","code":"print(1)"}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runRouter(o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", envOr("VMEXEC_ROUTER_ADDR", "127.0.0.1:8090"), "address to listen on ($VMEXEC_ROUTER_ADDR)")
	f.StringVar(&o.postgresURL, "postgres-url", os.Getenv("VMEXEC_POSTGRES_URL"), "the cluster's PostgreSQL ($VMEXEC_POSTGRES_URL; required)")
	f.StringVar(&o.adminKey, "admin-key", os.Getenv("VMEXEC_ROUTER_ADMIN_KEY"), "admin key for the router's own calls to daemons ($VMEXEC_ROUTER_ADMIN_KEY)")
	f.IntVar(&o.k, "k", 2, "placement compares this many random ready nodes")
	f.DurationVar(&o.readyWithin, "ready-within", cluster.ReadyWithin, "a node is ready if it heartbeated this recently")
	f.DurationVar(&o.takeoverWait, "takeover-wait", cluster.ReadyWithin+cluster.HeartbeatEvery, "how long a request waits on an unreachable node that still heartbeats")
	f.BoolVar(&o.authRequired, "auth-required", os.Getenv("VMEXEC_AUTH_REQUIRED") == "1", "require keys even before the first is created")
	f.StringVar(&o.logLevel, "log-level", envOr("VMEXEC_LOG_LEVEL", "info"), "debug, info, warn or error")
	return cmd
}

func runRouter(o routerOptions) error {
	if o.postgresURL == "" {
		return errors.New("vmexec router needs the cluster's PostgreSQL: --postgres-url or VMEXEC_POSTGRES_URL")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("--log-level %q: %w", o.logLevel, err)
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
	kctx, stopKeys := context.WithCancel(context.Background())
	keysDone := make(chan struct{})
	go func() { defer close(keysDone); keys.Run(kctx) }()
	defer func() { stopKeys(); <-keysDone }()

	rt, err := router.New(router.Config{Owners: owners, Members: router.Registry{Reg: owners, Within: o.readyWithin},
		Lookup: router.PGLookup{Pool: hist.Pool()}, Keys: keys, AdminKey: o.adminKey, K: o.k,
		TakeoverWait: o.takeoverWait, Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{Handler: rt, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("vmexec router serving", "addr", "http://"+ln.Addr().String(), "postgres", postgres.Redact(o.postgresURL), "keys", keys.Enforced(), "k", o.k)
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
