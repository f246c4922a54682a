package k8s

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmexec/vmexec/internal/config"
)

// The example Secret's config.yaml is a config the daemon accepts (unknown keys are
// errors there), and with the DaemonSet's environment the daemon is in cluster mode as
// the node it runs on, with keys required.
func TestExampleSecretIsADaemonConfig(t *testing.T) {
	o := typed(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(o.secret.StringData["config.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	dc := o.daemon.Spec.Template.Spec.Containers[0]
	for _, e := range dc.Env {
		switch {
		case e.ValueFrom != nil: // the downward API, as the kubelet would fill it
			t.Setenv(e.Name, map[string]string{"spec.nodeName": "worker-1", "status.podIP": "10.244.1.7"}[e.ValueFrom.FieldRef.FieldPath])
		default:
			t.Setenv(e.Name, strings.ReplaceAll(e.Value, "$(POD_IP)", "10.244.1.7"))
		}
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("the daemon refuses the example Secret's config.yaml: %v", err)
	}
	cfg.Addr = argValue(dc.Args, "--addr")
	if err := cfg.Validate(); err != nil {
		t.Fatalf("invalid: %v", err)
	}
	c := cfg.Cluster
	if !strings.HasPrefix(c.PostgresURL, "postgres://") || c.NodeName != "worker-1" || c.Address != "10.244.1.7:8080" || c.S3.Bucket == "" || c.S3.Endpoint == "" || c.S3.Region == "" {
		t.Errorf("cluster settings not as the manifests mean them: %+v", c)
	}
	if !cfg.Auth.Required {
		t.Error("the DaemonSet's environment does not require keys")
	}
}
