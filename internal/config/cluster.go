package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/vmexec/vmexec/internal/snapstore"
)

// Cluster configures cluster mode: several daemons sharing one PostgreSQL database
// for history and agent ownership (internal/history/postgres, internal/cluster) and
// an S3-compatible store for snapshots (the s3 field, beside these). With no
// postgres_url the daemon runs on one host as before: SQLite history, no ownership.
type Cluster struct {
	// PostgresURL is the database (postgres://user:password@host:5432/db?sslmode=...);
	// VMEXEC_POSTGRES_URL overrides it, so the password can come from a secret.
	PostgresURL string `yaml:"postgres_url"`
	// NodeName names this daemon in the cluster (default: the host name); it must be
	// unique among the cluster's daemons. VMEXEC_NODE_NAME overrides it.
	NodeName string `yaml:"node_name"`
	// Address is where routers reach this daemon's API (host:port); default: the
	// listen address. VMEXEC_NODE_ADDRESS overrides it.
	Address string `yaml:"address"`
	// S3 is the snapshot store: sandboxes' snapshots are uploaded there so that they
	// outlive this host (see internal/snapstore). Off when s3.bucket is empty.
	S3 S3 `yaml:"s3"`
}

// Enabled reports whether cluster mode's PostgreSQL is configured.
func (c Cluster) Enabled() bool { return c.PostgresURL != "" }

// Validate reports what is wrong with c, without the password in any message.
func (c Cluster) Validate() error {
	if !c.Enabled() {
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

// resolve fills the node name from the host name.
func (c *Cluster) resolve() error {
	if !c.Enabled() || c.NodeName != "" {
		return nil
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return fmt.Errorf("cluster.node_name: not set, and the host name is unknown (%v): set it", err)
	}
	c.NodeName = h
	return nil
}

// S3 configures the S3-compatible snapshot store.
type S3 struct {
	// Endpoint is the service's base URL (http://127.0.0.1:8333); empty means AWS.
	Endpoint string `yaml:"endpoint"`
	// Bucket holds the snapshots; empty turns the store off.
	Bucket string `yaml:"bucket"`
	// Region is the bucket's region (default us-east-1).
	Region string `yaml:"region"`
	// AccessKeyID and SecretAccessKey sign requests; when empty they are read from
	// VMEXEC_S3_ACCESS_KEY_ID / VMEXEC_S3_SECRET_ACCESS_KEY, else AWS_ACCESS_KEY_ID /
	// AWS_SECRET_ACCESS_KEY.
	AccessKeyID     string `yaml:"access_key_id"`
	SecretAccessKey string `yaml:"secret_access_key"`
	// Prefix goes before every key (e.g. "vmexec/").
	Prefix string `yaml:"prefix"`
	// PathStyle addresses endpoint/bucket/key (self-hosted servers need it);
	// default true.
	PathStyle *bool `yaml:"path_style"`
	// Upload is when snapshots are uploaded: after_run (default: each new current
	// snapshot, coalesced), on_suspend, or never (the store is only read).
	Upload string `yaml:"upload"`
}

// Enabled reports whether the snapshot store is configured.
func (s S3) Enabled() bool { return s.Bucket != "" }

// Validate reports what is wrong with s.
func (s S3) Validate() error {
	if !s.Enabled() {
		if s.Endpoint != "" {
			return errors.New("cluster.s3: endpoint given without a bucket")
		}
		return nil
	}
	var errs []error
	if s.Endpoint != "" {
		if u, err := url.Parse(s.Endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("cluster.s3.endpoint %q: want http(s)://host[:port]", s.Endpoint))
		}
	}
	if (s.AccessKeyID == "") != (s.SecretAccessKey == "") {
		errs = append(errs, errors.New("cluster.s3: give both access_key_id and secret_access_key (or their environment variables), or neither"))
	}
	if s.Upload != "" && !snapstore.Policy(s.Upload).Valid() {
		errs = append(errs, fmt.Errorf("cluster.s3.upload %q: want after_run, on_suspend or never", s.Upload))
	}
	if s.Prefix != "" && !snapstore.ValidKey(s.Prefix+"x") {
		errs = append(errs, fmt.Errorf("cluster.s3.prefix %q: letters, digits, '.', '-', '_' and '/' only", s.Prefix))
	}
	return errors.Join(errs...)
}

// applyEnv fills the credentials from the environment when the file gives none.
func (s *S3) applyEnv(lookup func(string) (string, bool)) {
	get := func(keys ...string) string {
		for _, k := range keys {
			if v, ok := lookup(k); ok && v != "" {
				return v
			}
		}
		return ""
	}
	if s.AccessKeyID == "" && s.SecretAccessKey == "" {
		s.AccessKeyID = get("VMEXEC_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
		s.SecretAccessKey = get("VMEXEC_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
	}
	if v := get("VMEXEC_S3_ENDPOINT"); v != "" {
		s.Endpoint = v
	}
	if v := get("VMEXEC_S3_BUCKET"); v != "" {
		s.Bucket = v
	}
}

// Blobs returns the S3 client for s (nil when the store is off); it contacts nothing.
func (s S3) Blobs() (*snapstore.S3, error) {
	if !s.Enabled() {
		return nil, nil
	}
	ps := s.PathStyle == nil || *s.PathStyle
	return snapstore.NewS3(snapstore.S3Config{Endpoint: s.Endpoint, Bucket: s.Bucket, Region: s.Region,
		AccessKeyID: s.AccessKeyID, SecretAccessKey: s.SecretAccessKey, Prefix: s.Prefix, PathStyle: ps})
}
