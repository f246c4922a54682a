package membership

import (
	"os/exec"
	"strings"
	"testing"
)

// The envtest control plane is for tests only: the vmexec binary (daemon and router)
// must not link controller-runtime, which kubetest imports.
func TestDaemonDoesNotLinkEnvtest(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/vmexec/vmexec/cmd/vmexec").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "sigs.k8s.io/controller-runtime") || strings.HasSuffix(pkg, "/membership/kubetest") {
			t.Errorf("cmd/vmexec links %s (test-only)", pkg)
		}
	}
}
