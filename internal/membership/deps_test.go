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

// The membership links client-go's REST client and one API group, not the full
// clientset (every API group's types and scheme: 15 MB more in the binary).
func TestMembershipLinksOneAPIGroup(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/vmexec/vmexec/internal/membership").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "k8s.io/client-go/kubernetes/scheme" || strings.HasPrefix(pkg, "k8s.io/client-go/informers") || pkg == "k8s.io/api/apps/v1" {
			t.Errorf("internal/membership links %s", pkg)
		}
	}
}
