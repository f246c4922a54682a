// Package kubetest starts a real Kubernetes control plane for tests — kube-apiserver
// and etcd, the binaries scripts/setup builds, through controller-runtime's envtest —
// on loopback, once per test binary. Only tests import it, so the daemon binary does
// not link envtest (TestDaemonDoesNotLinkEnvtest checks).
//
// Lifecycle: the first Config call starts the control plane (about ten seconds); the
// package's TestMain calls Stop after m.Run. Without the binaries, Config skips the
// test and says how to build them.
package kubetest

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// AssetsDir is where the kube-apiserver and etcd binaries are: $KUBEBUILDER_ASSETS, else
// <data dir>/tools/kubebuilder as scripts/setup links them ($VMEXEC_DATA_DIR or
// /var/lib/vmexec).
func AssetsDir() string {
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
		return d
	}
	data := os.Getenv("VMEXEC_DATA_DIR")
	if data == "" {
		data = "/var/lib/vmexec"
	}
	return filepath.Join(data, "tools", "kubebuilder")
}

var (
	once    sync.Once
	env     *envtest.Environment
	cfg     *rest.Config
	skip    string
	errBoot error
)

// Config returns an admin client configuration for the shared control plane, starting
// it on first use, or skips the test when the binaries are absent.
func Config(t testing.TB) *rest.Config {
	t.Helper()
	once.Do(start)
	if skip != "" {
		t.Skip(skip)
	}
	if errBoot != nil {
		t.Fatalf("starting kube-apiserver and etcd: %v", errBoot)
	}
	return rest.CopyConfig(cfg)
}

func start() {
	dir := AssetsDir()
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if fi, err := os.Stat(filepath.Join(dir, bin)); err != nil || fi.Mode()&0o111 == 0 {
			skip = fmt.Sprintf("%s not found in %s: run scripts/setup --tests (as root) to build kube-apiserver and etcd, or set KUBEBUILDER_ASSETS", bin, dir)
			return
		}
	}
	env = &envtest.Environment{
		BinaryAssetsDirectory:    dir,
		ControlPlaneStartTimeout: 3 * time.Minute, // cold on a busy 2-core machine
		ControlPlaneStopTimeout:  time.Minute,
	}
	cfg, errBoot = env.Start()
}

// Stop stops the control plane if Config started it.
func Stop() {
	if env != nil && errBoot == nil {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "kubetest: stopping the control plane:", err)
		}
	}
}
