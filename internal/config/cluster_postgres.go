package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// Cluster configures cluster mode (several daemons on more than one host); its zero
// value is single-host mode. Its PostgreSQL settings are ClusterPostgres's, inline;
// the snapshot store's are configured beside them.
type Cluster struct {
	ClusterPostgres `yaml:",inline"`
}

// ClusterPostgres is cluster mode's database: several daemons share one PostgreSQL
// database for history and agent ownership (internal/history/postgres,
// internal/cluster). With no postgres_url the daemon runs on one host as before:
// SQLite history, no ownership.
type ClusterPostgres struct {
	// PostgresURL is the database (postgres://user:password@host:5432/db?sslmode=...);
	// VMEXEC_POSTGRES_URL overrides it, so the password can come from a secret.
	PostgresURL string `yaml:"postgres_url"`
	// NodeName names this daemon in the cluster (default: the host name); it must be
	// unique among the cluster's daemons. VMEXEC_NODE_NAME overrides it.
	NodeName string `yaml:"node_name"`
	// Address is where routers reach this daemon's API (host:port); default: the
	// listen address. VMEXEC_NODE_ADDRESS overrides it.
	Address string `yaml:"address"`
}

// PostgresEnabled reports whether cluster mode's PostgreSQL is configured.
func (c ClusterPostgres) PostgresEnabled() bool { return c.PostgresURL != "" }

// validatePostgres reports what is wrong with c, without the password in any message.
func (c ClusterPostgres) validatePostgres() error {
	if !c.PostgresEnabled() {
		return nil
	}
	var errs []error
	u, err := url.Parse(c.PostgresURL)
	switch {
	case err != nil && strings.Contains(c.PostgresURL, "://"):
		errs = append(errs, errors.New("cluster.postgres_url: not a URL (want postgres://user:password@host:5432/db)"))
	case err == nil && u.Scheme != "" && u.Scheme != "postgres" && u.Scheme != "postgresql":
		errs = append(errs, fmt.Errorf("cluster.postgres_url: scheme %q, want postgres://", u.Scheme))
	}
	if strings.ContainsAny(c.NodeName, " \t\n/") {
		errs = append(errs, fmt.Errorf("cluster.node_name %q: want a name without spaces or '/'", c.NodeName))
	}
	return errors.Join(errs...)
}

// resolvePostgres fills the node name from the host name.
func (c *ClusterPostgres) resolvePostgres() error {
	if !c.PostgresEnabled() || c.NodeName != "" {
		return nil
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return fmt.Errorf("cluster.node_name: not set, and the host name is unknown (%v): set it", err)
	}
	c.NodeName = h
	return nil
}
