package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Guards the cluster section: it loads from the file, the environment overrides the
// URL (a secret) and the node name, the node name defaults to the host name, an
// absent section leaves single-host mode, and a bad URL is refused without echoing
// its password.
func TestClusterConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmexec.yaml")
	os.WriteFile(p, []byte("cluster:\n  postgres_url: postgres://vmexec:file@db:5432/vmexec\n  address: 127.0.0.1:8080\n"), 0o644)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Cluster.PostgresEnabled() || c.Cluster.PostgresURL != "postgres://vmexec:file@db:5432/vmexec" || c.Cluster.Address != "127.0.0.1:8080" {
		t.Fatalf("cluster = %+v", c.Cluster)
	}
	if err := c.Resolve(); err != nil {
		t.Fatal(err)
	}
	if h, _ := os.Hostname(); c.Cluster.NodeName != h {
		t.Errorf("node_name = %q, want the host name %q", c.Cluster.NodeName, h)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("valid cluster config refused: %v", err)
	}

	t.Setenv("VMEXEC_POSTGRES_URL", "postgres://vmexec:env@db/vmexec")
	t.Setenv("VMEXEC_NODE_NAME", "node-7")
	c, err = Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster.PostgresURL != "postgres://vmexec:env@db/vmexec" || c.Cluster.NodeName != "node-7" {
		t.Errorf("environment did not win: %+v", c.Cluster)
	}

	if d := Default(); d.Cluster.PostgresEnabled() {
		t.Errorf("cluster mode on by default: %+v", d.Cluster)
	}

	for _, bad := range []ClusterPostgres{
		{PostgresURL: "mysql://u:hunter2@db/x"},
		{PostgresURL: "postgres://u:hunter2@db/x", NodeName: "has space"},
	} {
		c := Default()
		c.Cluster.ClusterPostgres = bad
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), "cluster.") {
			t.Errorf("Validate(%+v) = %v, want a cluster error", bad, err)
		} else if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}
