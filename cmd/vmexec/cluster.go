package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/vmexec/vmexec/internal/agent"
	"github.com/vmexec/vmexec/internal/auth"
	"github.com/vmexec/vmexec/internal/cluster"
	"github.com/vmexec/vmexec/internal/config"
	"github.com/vmexec/vmexec/internal/history"
	"github.com/vmexec/vmexec/internal/history/postgres"
	"github.com/vmexec/vmexec/internal/history/sqlite"
	"github.com/vmexec/vmexec/internal/sandbox"
)

// historyStore is what the daemon keeps in its history database: runs, snapshots
// and sandboxes, API keys, and conversations. *sqlite.Store and *postgres.Store are.
type historyStore interface {
	history.Store
	auth.Store
	agent.Store
}

// clusterParts is what cluster mode adds to the daemon; all nil on one host.
type clusterParts struct {
	owners *cluster.Postgres
	fence  *cluster.Fence
}

// openHistory opens the history: PostgreSQL, with agent ownership beside it, when
// cluster.postgres_url is set; the SQLite file in the data dir otherwise.
func openHistory(ctx context.Context, cfg config.Config, log *slog.Logger) (historyStore, clusterParts, error) {
	if !cfg.Cluster.PostgresEnabled() {
		hist, err := sqlite.Open(ctx, cfg.HistoryPath())
		if err != nil {
			return nil, clusterParts{}, fmt.Errorf("history database: %w", err)
		}
		return hist, clusterParts{}, nil
	}
	// Bounded: an unreachable server fails the start instead of hanging it.
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	hist, err := postgres.Open(octx, cfg.Cluster.PostgresURL)
	if err != nil {
		return nil, clusterParts{}, fmt.Errorf("history database (cluster.postgres_url): %w\n(run `vmexec doctor` to check the database)", err)
	}
	owners, err := cluster.NewPostgres(octx, hist.Pool())
	if err != nil {
		hist.Close()
		return nil, clusterParts{}, err
	}
	log.Info("cluster mode", "node", cfg.Cluster.NodeName, "postgres", postgres.Redact(cfg.Cluster.PostgresURL))
	return hist, clusterParts{owners: owners, fence: cluster.NewFence(owners, cfg.Cluster.NodeName)}, nil
}

// fencer is the sandbox service's Fencer: nil on one host (a nil *cluster.Fence in
// the interface would not be).
func (c clusterParts) fencer() sandbox.Fencer {
	if c.fence == nil {
		return nil
	}
	return c.fence
}

// announce registers this node and heartbeats until ctx ends (no-op on one host).
func (c clusterParts) announce(ctx context.Context, cfg config.Config, listenAddr string, svc *sandbox.Service, log *slog.Logger) {
	if c.owners == nil {
		return
	}
	addr := cfg.Cluster.Address
	if addr == "" {
		addr = listenAddr
	}
	n := cluster.Node{Name: cfg.Cluster.NodeName, Address: addr, Capacity: int64(cfg.Sandbox.MaxSandboxes)}
	cluster.Announce(ctx, c.owners, n, cluster.HeartbeatEvery, func() int64 { return int64(len(svc.List())) }, log)
}

// maxClockSkew is how far this host's clock may be from the database's before
// doctor fails: readiness uses the database's clock, but logs, snapshot times and
// the history's times come from the nodes'.
const maxClockSkew = 2 * time.Second

// clusterChecks are doctor's checks of cluster mode's PostgreSQL: reachable, the
// schema migrated (or migratable), the clocks close. None on one host.
func clusterChecks(cfg config.Config) []check {
	if !cfg.Cluster.PostgresEnabled() {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	where := postgres.Redact(cfg.Cluster.PostgresURL)
	pg := check{name: "postgres"}
	in, err := postgres.Inspect(ctx, cfg.Cluster.PostgresURL)
	switch {
	case errors.Is(err, history.ErrInvalid):
		pg.info = err.Error() + " (cluster.postgres_url or VMEXEC_POSTGRES_URL)"
		return []check{pg}
	case postgres.IsAuthError(err):
		pg.info = fmt.Sprintf("%s refused the login (%v): check the user and password in cluster.postgres_url (or VMEXEC_POSTGRES_URL) and the server's pg_hba.conf", where, err)
		return []check{pg}
	case err != nil:
		pg.info = fmt.Sprintf("cannot reach %s (%v): check that PostgreSQL runs there, the host and port in cluster.postgres_url, and that this host may connect (firewall, listen_addresses, pg_hba.conf)", where, err)
		return []check{pg}
	}
	pg.ok, pg.info = true, fmt.Sprintf("PostgreSQL %s at %s, as %s", strings.Fields(in.ServerVersion + " ?")[1], where, in.User)

	mig := check{name: "postgres schema"}
	grant := fmt.Sprintf("user %s may not create tables in database %s: GRANT CREATE ON SCHEMA public TO %s (as the database's owner), or start the first daemon as a user that may", in.User, in.Database, in.User)
	switch {
	case in.SchemaVersion > in.Known:
		mig.info = fmt.Sprintf("at version %d, newer than this binary's %d: upgrade vmexec on this node (an older binary refuses a newer schema)", in.SchemaVersion, in.Known)
	case in.SchemaVersion < in.Known && !in.CanCreate:
		mig.info = fmt.Sprintf("at version %d of %d, and %s", in.SchemaVersion, in.Known, grant)
	case in.SchemaVersion < in.Known:
		mig.ok, mig.info = true, fmt.Sprintf("at version %d of %d: `vmexec serve` applies the rest when it starts", in.SchemaVersion, in.Known)
	default:
		mig.ok, mig.info = true, fmt.Sprintf("all %d migrations applied", in.Known)
	}

	clock := check{name: "clock"}
	skew := in.ClockSkew.Round(time.Millisecond)
	if skew.Abs() > maxClockSkew {
		clock.info = fmt.Sprintf("this host's clock is %v off the database server's (more than %v): run time sync on both (chrony or systemd-timesyncd)", -skew, maxClockSkew)
	} else {
		clock.ok, clock.info = true, fmt.Sprintf("within %v of the database server's", skew.Abs())
	}
	node := check{name: "node name", ok: cfg.Cluster.NodeName != "", info: cfg.Cluster.NodeName}
	if !node.ok {
		node.info = "empty: set cluster.node_name (unique per daemon)"
	}
	return []check{pg, mig, clock, node}
}
